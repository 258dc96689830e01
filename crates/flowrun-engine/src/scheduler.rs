//! The scheduler (§5.3): schedule triggers fire on time, once, across restarts and nodes.
//!
//! Every schedule trigger has a row in the store's `schedules` table holding its first
//! unhandled occurrence and that occurrence's jittered fire instant
//! ([`flowrun_store::schedules`]). One task per node sleeps until the earliest fire instant
//! (one index probe; [`Engine::schedule_changed`] wakes it early), claims the due rows,
//! works out each row's due occurrences with [`flowrun_core::schedule`], submits them as
//! firings in one transaction and then advances the rows under their claim. There is no scan
//! per tick, so idle schedules cost nothing however many there are.
//!
//! Catch-up: of the due occurrences (fire instant ≤ now, processed in nominal order) the
//! most recent fires when it is less than an hour late; every other one — and that one too
//! when it is later — is recorded per enabled bound flow as `skipped` / `missed`, at most
//! [`MAX_MISSED_ROWS`] rows per trigger and pass; older ones are only counted (logged).
//!
//! Exactly once: a pass's firings and its advance are two transactions. A node that stops
//! between them leaves its claim behind; the next claimer gets the abandoned claim's instant
//! and looks for execution rows of the trigger since then. If the pass landed, the row is
//! only advanced — the pass is recomputed at the abandoned claim's instant, which yields the
//! same occurrences — otherwise the pass is redone.
//!
//! The trigger's `nextFireTime` follows the row: the trigger routes compute it exactly as
//! [`fresh_row`] does, and after a pass the scheduler writes the new value into the
//! definition (only when it changed, and only while the trigger still has the rule the pass
//! used).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use flowrun_core::Ts;
use flowrun_core::model::Trigger;
use flowrun_core::schedule::Schedule;
use flowrun_store::{
    Change, ClaimedSchedule, ExecFilter, ExecOrder, ExecOrderBy, ScheduleAdvance, ScheduleRow,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use crate::enqueue::EnqueueRequest;
use crate::{Engine, EngineError, Firing, Origin, Shared};

/// Rows claimed per round trip.
const CLAIM_BATCH: usize = 256;
/// How long a claim holds a row. A pass takes milliseconds; on a shared database a node that
/// dies mid-pass delays its claimed schedules by at most this much.
const CLAIM_MS: i64 = 20_000;
/// A pass whose claim has less than this left does not submit (another node may take over).
const SUBMIT_MARGIN_MS: i64 = 5_000;
/// The most recent due occurrence fires when it is less late than this (§5.3).
pub const FIRE_IF_LATE_UNDER_MS: i64 = 3_600_000;
/// `missed` rows recorded per trigger and pass (§5.3).
pub const MAX_MISSED_ROWS: usize = 100;
/// Occurrences walked one by one before a far-behind schedule skips ahead.
const SCAN_BUDGET: usize = 20_000;

/// The scheduler of one engine.
pub(crate) struct Scheduler {
    /// Wakes the loop to re-read the earliest due time (a schedule changed).
    wake: Notify,
}

impl Scheduler {
    /// Makes the loop re-read the earliest due time (a schedule changed elsewhere).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }
}

impl Engine {
    /// Call after a trigger was created (`before: None`) or updated (its definition applied,
    /// with the registry lock still held): when its schedule — rule, zone or activation —
    /// changed, a schedule trigger restarts from its `updatedAt` (occurrences before the
    /// change never fire; the first one is the `nextFireTime` the trigger routes computed)
    /// and any other trigger loses its schedule. An unchanged schedule keeps its state.
    pub async fn schedule_changed(
        &self,
        before: Option<&Trigger>,
        trigger: &Trigger,
    ) -> Result<(), EngineError> {
        let key = rule_key(trigger);
        let old = before.map(rule_key);
        if old.as_ref() == Some(&key) || (key.is_none() && old.is_none()) {
            return Ok(());
        }
        let store = &self.shared.store;
        match key {
            Some(key) => {
                store
                    .put_schedules(&[fresh_row(trigger, key, trigger.updated_at)], true)
                    .await?;
            }
            None => {
                store.delete_schedules(&[trigger.id]).await?;
            }
        }
        self.schedules.wake.notify_one();
        Ok(())
    }

    /// Call after a trigger was deleted: its schedule stops.
    pub async fn schedule_removed(&self, trigger_id: Uuid) -> Result<(), EngineError> {
        self.shared.store.delete_schedules(&[trigger_id]).await?;
        self.schedules.wake.notify_one();
        Ok(())
    }
}

/// Reconciles the rows with the definitions, then starts the scheduler task.
pub(crate) async fn start(
    shared: &Arc<Shared>,
    firings: mpsc::Sender<EnqueueRequest>,
) -> Result<Arc<Scheduler>, EngineError> {
    let scheduler = Arc::new(Scheduler {
        wake: Notify::new(),
    });
    reconcile(shared).await?;
    tokio::spawn(run(shared.clone(), scheduler.clone(), firings));
    Ok(scheduler)
}

/// The fingerprint of what a trigger's schedule is computed from, `None` for a trigger that
/// is not (or no longer) a schedule trigger.
pub(crate) fn rule_key(t: &Trigger) -> Option<String> {
    if t.activation != "schedule" {
        return None;
    }
    let rule = t.schedule_rule.as_ref()?;
    let text = serde_json::to_string(&(rule, &t.timezone)).ok()?;
    Some(hex::encode(Sha256::digest(text.as_bytes())))
}

fn compile(t: &Trigger) -> Option<Schedule> {
    let rule = t.schedule_rule.as_ref()?;
    match Schedule::compile(rule, t.timezone.as_deref(), t.created_at.0) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(trigger = %t.id, error = %e, "schedule does not compile; it never fires");
            None
        }
    }
}

/// The row of a schedule (re)started at `from`: nothing at or before it fires.
pub(crate) fn fresh_row(t: &Trigger, key: String, from: Ts) -> ScheduleRow {
    let next = compile(t).and_then(|s| {
        let n = s.next_nominal(from.0)?;
        Some((
            n.timestamp_millis(),
            s.fire_instant(t.id, n).timestamp_millis(),
        ))
    });
    ScheduleRow {
        trigger_id: t.id,
        owner_id: t.owner_id.clone(),
        rule_key: key,
        started_at: from.millis(),
        last_handled_nominal_at: from.millis(),
        next_nominal_at: next.map(|n| n.0),
        next_fire_at: next.map(|n| n.1),
        claimed_by: None,
        claimed_at: None,
        claimed_until: None,
    }
}

fn ts(ms: i64) -> Ts {
    Ts::from_millis(ms).unwrap_or_else(Ts::now)
}

fn now_ms() -> i64 {
    Ts::now().millis()
}

/// Start-up: on a single-node store the previous process's claims end; every schedule
/// trigger gets a row (a missing one starts from now, one computed from another rule
/// restarts from the trigger's last change); rows without a schedule trigger go (single-node
/// store only: another node may know triggers this one does not); and every trigger's
/// `nextFireTime` is set from its row.
async fn reconcile(shared: &Shared) -> Result<(), EngineError> {
    let registry = &shared.registry;
    let store = &shared.store;
    let _guard = registry.lock().await;
    if shared.config.exclusive_store {
        // The previous process is gone: its claims are abandoned now, not in a minute.
        store.expire_schedule_claims(now_ms()).await?;
    }
    let mut rows: HashMap<Uuid, ScheduleRow> = store
        .list_schedules()
        .await?
        .into_iter()
        .map(|r| (r.trigger_id, r))
        .collect();
    let now = Ts::now();
    let mut puts = Vec::new();
    let mut live = HashSet::new();
    {
        let defs = registry.read();
        for t in defs.triggers.values() {
            let Some(key) = rule_key(t) else { continue };
            live.insert(t.id);
            match rows.get(&t.id) {
                None => puts.push(fresh_row(t, key, now)),
                Some(r) if r.rule_key != key => puts.push(fresh_row(t, key, t.updated_at)),
                Some(_) => {}
            }
        }
    }
    if !puts.is_empty() {
        let written: HashSet<Uuid> = store
            .put_schedules(&puts, true)
            .await?
            .into_iter()
            .collect();
        tracing::info!(schedules = written.len(), "schedules (re)started");
        for r in puts {
            if written.contains(&r.trigger_id) {
                rows.insert(r.trigger_id, r);
            }
        }
    }
    let orphans: Vec<Uuid> = rows
        .keys()
        .filter(|id| !live.contains(id))
        .copied()
        .collect();
    if shared.config.exclusive_store && !orphans.is_empty() {
        store.delete_schedules(&orphans).await?;
    }
    let changes: Vec<Change> = {
        let defs = registry.read();
        live.iter()
            .filter_map(|id| {
                let t = defs.triggers.get(id)?;
                let want = rows.get(id)?.next_fire_at.and_then(Ts::from_millis);
                (t.next_fire_time != want).then(|| {
                    let mut t = (**t).clone();
                    t.next_fire_time = want;
                    Change::PutTrigger(t)
                })
            })
            .collect()
    };
    if !changes.is_empty() {
        registry.apply(changes).await?;
    }
    Ok(())
}

/// The scheduler task: claim what is due, fire it, sleep until the next due time.
async fn run(shared: Arc<Shared>, me: Arc<Scheduler>, firings: mpsc::Sender<EnqueueRequest>) {
    // On a shared database other nodes change schedules without waking this one: look again
    // at least every second (the precision of §5.3). Alone, every change wakes the loop.
    let idle_cap_us: i64 = if shared.config.exclusive_store {
        60_000_000
    } else {
        1_000_000
    };
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        let now = now_ms();
        let claimed = match shared
            .store
            .claim_due_schedules(&shared.node_id, now, now + CLAIM_MS, CLAIM_BATCH)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "claiming due schedules failed");
                backoff(&shared).await;
                continue;
            }
        };
        if !claimed.is_empty() {
            if let Err(e) = pass(&shared, &firings, claimed, now).await {
                tracing::error!(error = %e, "schedule pass failed");
                backoff(&shared).await;
            }
            continue;
        }
        let wait_us = match shared.store.next_schedule_wake().await {
            Ok(Some(at)) => (at * 1000 - Ts::now().0.timestamp_micros()).clamp(0, idle_cap_us),
            Ok(None) => idle_cap_us,
            Err(e) => {
                tracing::error!(error = %e, "reading the next schedule failed");
                1_000_000
            }
        };
        // Due (or a claim just expiring) but nothing claimable: yield a millisecond rather
        // than spin.
        let wait = Duration::from_micros(wait_us.max(1_000) as u64);
        tokio::select! {
            _ = me.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

async fn backoff(shared: &Shared) {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        _ = shared.shutdown.cancelled() => {}
    }
}

/// What one pass does with one schedule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pass {
    /// `(nominal, fire instant)` of the occurrence that fires.
    pub fire: Option<(i64, i64)>,
    /// Occurrences recorded `missed`, in nominal order.
    pub missed: Vec<(i64, i64)>,
    /// Due occurrences beyond the cap: only counted (approximately, when far behind).
    pub uncounted: u64,
    /// The new `last_handled_nominal_at`.
    pub handled_through: i64,
    /// The first occurrence not yet due, `None` when the rule is exhausted.
    pub next: Option<(i64, i64)>,
}

/// Works out a pass at `now` over the occurrences after `last_handled` (§5.3). `max_missed`
/// caps the `missed` occurrences recorded (the newest are kept); `after_ms` is the rule's
/// largest positive jitter.
pub(crate) fn plan_pass(
    s: &Schedule,
    trigger_id: Uuid,
    last_handled: i64,
    now: i64,
    max_missed: usize,
    after_ms: i64,
) -> Pass {
    let keep = max_missed + 1;
    let mut due: VecDeque<(i64, i64)> = VecDeque::new();
    let mut uncounted = 0u64;
    let mut next = None;
    let mut cursor = last_handled;
    let mut scanned = 0usize;
    let mut span_start = cursor;
    while let Some(n) = s.next_nominal(ts(cursor).0) {
        let nominal = n.timestamp_millis();
        let fire = s.fire_instant(trigger_id, n).timestamp_millis();
        if fire > now {
            next = Some((nominal, fire));
            break;
        }
        due.push_back((nominal, fire));
        if due.len() > keep {
            due.pop_front();
            uncounted += 1;
        }
        cursor = nominal;
        scanned += 1;
        if scanned >= SCAN_BUDGET {
            // Far behind (a frequent rule after a long stop): skip to a window just before
            // now. Everything skipped is due (nominal + largest jitter ≤ now), and the window
            // holds enough occurrences for the fire and the missed rows at the current rate.
            let per = ((cursor - span_start) / scanned as i64).max(1);
            let jump_to = now - after_ms - per.saturating_mul(keep as i64 + 2).saturating_mul(4);
            if jump_to > cursor {
                uncounted += ((jump_to - cursor) / per) as u64;
                cursor = jump_to;
            }
            scanned = 0;
            span_start = cursor;
        }
    }
    let handled_through = due.back().map_or(last_handled, |d| d.0);
    let mut fire = None;
    if let Some(latest) = due.pop_back() {
        if now - latest.1 < FIRE_IF_LATE_UNDER_MS {
            fire = Some(latest);
        } else {
            due.push_back(latest);
            if due.len() > max_missed {
                due.pop_front();
                uncounted += 1;
            }
        }
    }
    Pass {
        fire,
        missed: due.into(),
        uncounted,
        handled_through,
        next,
    }
}

fn firing(t: &Trigger, (nominal, fire): (i64, i64), suppressed: Option<&'static str>) -> Firing {
    Firing {
        owner_id: t.owner_id.clone(),
        actor_id: None,
        origin: Origin::Schedule,
        trigger_id: t.id,
        only_flow: None,
        payload: json!({}),
        invocation_id: None,
        dedupe_invocation: false,
        event: None,
        schedule: json!({
            "triggerId": t.id,
            "nominalTime": ts(nominal),
            "fireTime": ts(fire),
        }),
        verify_device: None,
        capture_screenshots: false,
        received_at: Some(ts(fire)),
        suppressed,
    }
}

/// Whether execution rows of the trigger exist since `since` (the pass of an abandoned claim
/// landed).
async fn landed(shared: &Shared, row: &ScheduleRow, since: i64) -> Result<bool, EngineError> {
    let filter = ExecFilter {
        trigger_id: Some(row.trigger_id),
        from: Some(since),
        ..Default::default()
    };
    let order = ExecOrder {
        by: ExecOrderBy::StartedAt,
        desc: false,
    };
    let (_, total) = shared
        .store
        .list_executions(&row.owner_id, &filter, order, 0, 1)
        .await?;
    Ok(total > 0)
}

/// Handles claimed rows: their firings in one transaction, then their advances.
async fn pass(
    shared: &Shared,
    firings: &mpsc::Sender<EnqueueRequest>,
    claimed: Vec<ClaimedSchedule>,
    now: i64,
) -> Result<(), EngineError> {
    let exclusive = shared.config.exclusive_store;
    let mut group = Vec::new();
    let mut advances = Vec::new();
    // Per advance: what `nextFireTime` becomes, for the rule the pass used.
    let mut publish = Vec::new();
    let mut restarts = Vec::new();
    let mut deletes = Vec::new();
    for c in claimed {
        let row = c.row;
        let claimed_at = row.claimed_at.unwrap_or(now);
        let trigger = shared
            .registry
            .read()
            .trigger(&row.owner_id, row.trigger_id)
            .cloned();
        let Some(t) = trigger else {
            // Deleted. On a shared database this node may just not know the trigger yet:
            // its claim expires and another node takes the row.
            if exclusive {
                deletes.push(row.trigger_id);
            }
            continue;
        };
        let key = rule_key(&t);
        if key.as_deref() != Some(row.rule_key.as_str()) {
            // The change was not applied to the row (a stop in between): apply it now,
            // unless this node's definition is the older one.
            if exclusive || t.updated_at.millis() > row.started_at {
                match key {
                    Some(key) => restarts.push(fresh_row(&t, key, t.updated_at)),
                    None => deletes.push(row.trigger_id),
                }
            }
            continue;
        }
        let advance = |last: i64, next: Option<(i64, i64)>| ScheduleAdvance {
            trigger_id: row.trigger_id,
            claimed_by: shared.node_id.clone(),
            claimed_at,
            last_handled_nominal_at: last,
            next_nominal_at: next.map(|n| n.0),
            next_fire_at: next.map(|n| n.1),
        };
        let Some(sched) = compile(&t) else {
            advances.push(advance(row.last_handled_nominal_at, None));
            publish.push((row.clone(), None));
            continue;
        };
        let (mut at, mut submit) = (now, true);
        if let Some(abandoned) = c.abandoned_claim_at {
            match landed(shared, &row, abandoned).await {
                Ok(true) => (at, submit) = (abandoned, false),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(trigger = %t.id, error = %e, "checking an abandoned schedule pass failed");
                    continue;
                }
            }
        }
        let flows = shared
            .registry
            .read()
            .flows_of_trigger(&t.owner_id, t.id)
            .filter(|f| f.flow.enabled)
            .count();
        let after_ms = t
            .schedule_rule
            .as_ref()
            .and_then(|r| r.jitter.as_ref())
            .and_then(|j| j.after_minutes)
            .unwrap_or(0)
            .clamp(0, flowrun_core::schedule::MAX_JITTER_MINUTES)
            * 60_000;
        let p = plan_pass(
            &sched,
            t.id,
            row.last_handled_nominal_at,
            at,
            MAX_MISSED_ROWS / flows.max(1),
            after_ms,
        );
        if p.uncounted > 0 {
            tracing::warn!(trigger = %t.id, count = p.uncounted, "missed schedule occurrences not recorded (over the per-pass cap)");
        }
        if !p.missed.is_empty() {
            tracing::info!(trigger = %t.id, count = p.missed.len(), "schedule occurrences missed");
        }
        if submit && flows > 0 {
            for m in &p.missed {
                group.push(firing(&t, *m, Some("missed")));
            }
            if let Some(f) = p.fire {
                tracing::debug!(trigger = %t.id, late_ms = now - f.1, "schedule fires");
                crate::telemetry::schedule_fired(std::time::Duration::from_millis(
                    (now_ms() - f.1).max(0) as u64,
                ));
                group.push(firing(&t, f, None));
            }
        }
        advances.push(advance(p.handled_through, p.next));
        publish.push((row, p.next.map(|n| n.1)));
    }
    if !restarts.is_empty() {
        shared.store.put_schedules(&restarts, true).await?;
        for r in &restarts {
            publish.push((r.clone(), r.next_fire_at));
        }
    }
    if !deletes.is_empty() {
        shared.store.delete_schedules(&deletes).await?;
    }
    if !group.is_empty() {
        if now_ms() > now + CLAIM_MS - SUBMIT_MARGIN_MS {
            // Too slow: the claims may be taken over; they expire and the pass is redone.
            tracing::warn!("schedule pass overran its claims; leaving it to a later pass");
            return Ok(());
        }
        if let Err(e) = crate::submit_group(firings, group, Vec::new()).await {
            // Nothing was committed: release the claims so the rows are retried at once.
            let release: Vec<ScheduleAdvance> = publish
                .iter()
                .filter(|(r, _)| r.claimed_at.is_some())
                .map(|(r, _)| ScheduleAdvance {
                    trigger_id: r.trigger_id,
                    claimed_by: shared.node_id.clone(),
                    claimed_at: r.claimed_at.unwrap_or(now),
                    last_handled_nominal_at: r.last_handled_nominal_at,
                    next_nominal_at: r.next_nominal_at,
                    next_fire_at: r.next_fire_at,
                })
                .collect();
            let _ = shared.store.advance_schedules(&release).await;
            return Err(e);
        }
    }
    let applied = shared.store.advance_schedules(&advances).await?;
    // Restarts were written above (claim-free rows); advances only where the claim held.
    let mut applied = applied.into_iter();
    let published: Vec<(ScheduleRow, Option<i64>)> = publish
        .into_iter()
        .filter(|(r, _)| r.claimed_at.is_none() || applied.next().unwrap_or(false))
        .collect();
    publish_next_fire(shared, published).await;
    Ok(())
}

/// Writes `nextFireTime` into the triggers whose schedule advanced, while they still have
/// the rule the pass used.
async fn publish_next_fire(shared: &Shared, updates: Vec<(ScheduleRow, Option<i64>)>) {
    if updates.is_empty() {
        return;
    }
    let registry = &shared.registry;
    let _guard = registry.lock().await;
    let changes: Vec<Change> = {
        let defs = registry.read();
        updates
            .into_iter()
            .filter_map(|(row, next_fire)| {
                let t = defs.trigger(&row.owner_id, row.trigger_id)?;
                if rule_key(t).as_deref() != Some(row.rule_key.as_str()) {
                    return None;
                }
                let want = next_fire.and_then(Ts::from_millis);
                (t.next_fire_time != want).then(|| {
                    let mut t = (**t).clone();
                    t.next_fire_time = want;
                    Change::PutTrigger(t)
                })
            })
            .collect()
    };
    if !changes.is_empty()
        && let Err(e) = registry.apply(changes).await
    {
        tracing::error!(error = %e, "recording nextFireTime failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowrun_core::model::ScheduleRule;

    fn ms(s: &str) -> i64 {
        flowrun_core::time::parse_rfc3339(s).unwrap().millis()
    }

    fn every_minute(created: &str) -> Schedule {
        let rule = ScheduleRule {
            kind: "cron".into(),
            date_time: None,
            expression: Some("* * * * *".into()),
            rrule: None,
            jitter: None,
        };
        Schedule::compile(&rule, Some("UTC"), ts(ms(created)).0).unwrap()
    }

    const ID: Uuid = Uuid::from_u128(7);

    #[test]
    fn on_time_fires_the_one_due_occurrence() {
        let s = every_minute("2026-01-01T00:00:00Z");
        let p = plan_pass(
            &s,
            ID,
            ms("2026-01-01T00:00:00Z"),
            ms("2026-01-01T00:01:00.003Z"),
            100,
            0,
        );
        assert_eq!(
            p,
            Pass {
                fire: Some((ms("2026-01-01T00:01:00Z"), ms("2026-01-01T00:01:00Z"))),
                missed: vec![],
                uncounted: 0,
                handled_through: ms("2026-01-01T00:01:00Z"),
                next: Some((ms("2026-01-01T00:02:00Z"), ms("2026-01-01T00:02:00Z"))),
            }
        );
        // Not due yet: nothing happens, the next stays.
        let p = plan_pass(
            &s,
            ID,
            ms("2026-01-01T00:01:00Z"),
            ms("2026-01-01T00:01:59.999Z"),
            100,
            0,
        );
        assert_eq!(p.fire, None);
        assert!(p.missed.is_empty());
        assert_eq!(p.handled_through, ms("2026-01-01T00:01:00Z"));
        assert_eq!(p.next.unwrap().0, ms("2026-01-01T00:02:00Z"));
    }

    #[test]
    fn catch_up_fires_the_latest_and_records_the_others() {
        let s = every_minute("2026-01-01T00:00:00Z");
        let p = plan_pass(
            &s,
            ID,
            ms("2026-01-01T00:00:00Z"),
            ms("2026-01-01T00:03:30Z"),
            100,
            0,
        );
        assert_eq!(p.fire.unwrap().0, ms("2026-01-01T00:03:00Z"));
        let missed: Vec<i64> = p.missed.iter().map(|m| m.0).collect();
        assert_eq!(
            missed,
            [ms("2026-01-01T00:01:00Z"), ms("2026-01-01T00:02:00Z")]
        );
        assert_eq!(p.handled_through, ms("2026-01-01T00:03:00Z"));
        assert_eq!(p.next.unwrap().0, ms("2026-01-01T00:04:00Z"));
        // Capped: the newest are kept, the rest counted.
        let p = plan_pass(
            &s,
            ID,
            ms("2026-01-01T00:00:00Z"),
            ms("2026-01-01T00:10:30Z"),
            3,
            0,
        );
        assert_eq!(p.fire.unwrap().0, ms("2026-01-01T00:10:00Z"));
        let missed: Vec<i64> = p.missed.iter().map(|m| m.0).collect();
        assert_eq!(
            missed,
            [
                ms("2026-01-01T00:07:00Z"),
                ms("2026-01-01T00:08:00Z"),
                ms("2026-01-01T00:09:00Z")
            ]
        );
        assert_eq!(p.uncounted, 6);
    }

    #[test]
    fn an_hour_late_the_latest_is_recorded_missed_too() {
        let rule = ScheduleRule {
            kind: "cron".into(),
            date_time: None,
            expression: Some("0 0 * * *".into()),
            rrule: None,
            jitter: None,
        };
        let s = Schedule::compile(&rule, Some("UTC"), ts(ms("2026-01-01T00:00:00Z")).0).unwrap();
        let last = ms("2026-01-01T00:00:00Z");
        let p = plan_pass(&s, ID, last, ms("2026-01-04T00:59:59.999Z"), 100, 0);
        assert_eq!(p.fire.unwrap().0, ms("2026-01-04T00:00:00Z"));
        let missed: Vec<i64> = p.missed.iter().map(|m| m.0).collect();
        assert_eq!(
            missed,
            [ms("2026-01-02T00:00:00Z"), ms("2026-01-03T00:00:00Z")]
        );
        // Exactly one hour late: nothing fires, all three are missed.
        let p = plan_pass(&s, ID, last, ms("2026-01-04T01:00:00Z"), 100, 0);
        assert_eq!(p.fire, None);
        let missed: Vec<i64> = p.missed.iter().map(|m| m.0).collect();
        assert_eq!(
            missed,
            [
                ms("2026-01-02T00:00:00Z"),
                ms("2026-01-03T00:00:00Z"),
                ms("2026-01-04T00:00:00Z")
            ]
        );
        assert_eq!(p.handled_through, ms("2026-01-04T00:00:00Z"));
        assert_eq!(p.next.unwrap().0, ms("2026-01-05T00:00:00Z"));
        // With a cap of 2 the newest two are kept.
        let p = plan_pass(&s, ID, last, ms("2026-01-04T01:00:00Z"), 2, 0);
        let missed: Vec<i64> = p.missed.iter().map(|m| m.0).collect();
        assert_eq!(
            missed,
            [ms("2026-01-03T00:00:00Z"), ms("2026-01-04T00:00:00Z")]
        );
        assert_eq!(p.uncounted, 1);
        // No missed rows allowed at all (more than 100 flows): only the fire.
        let p = plan_pass(&s, ID, last, ms("2026-01-04T00:10:00Z"), 0, 0);
        assert_eq!(p.fire.unwrap().0, ms("2026-01-04T00:00:00Z"));
        assert!(p.missed.is_empty());
        assert_eq!(p.uncounted, 2);
    }

    #[test]
    fn jittered_occurrences_are_due_at_their_fire_instant_in_nominal_order() {
        let rule = ScheduleRule {
            kind: "cron".into(),
            date_time: None,
            expression: Some("0 * * * *".into()),
            rrule: None,
            jitter: Some(flowrun_core::model::Jitter {
                before_minutes: Some(10),
                after_minutes: Some(10),
            }),
        };
        let s = Schedule::compile(&rule, Some("UTC"), ts(ms("2026-01-01T00:00:00Z")).0).unwrap();
        let last = ms("2026-01-01T00:00:00Z");
        let first = s.next_nominal(ts(last).0).unwrap();
        let fire = s.fire_instant(ID, first).timestamp_millis();
        assert_ne!(
            fire,
            first.timestamp_millis(),
            "this id jitters the first hour"
        );
        let p = plan_pass(&s, ID, last, fire - 1, 100, 600_000);
        assert_eq!(p.fire, None);
        assert_eq!(p.next, Some((first.timestamp_millis(), fire)));
        let p = plan_pass(&s, ID, last, fire, 100, 600_000);
        assert_eq!(p.fire, Some((first.timestamp_millis(), fire)));
    }

    #[test]
    fn once_fires_once_and_is_then_exhausted() {
        let rule = ScheduleRule {
            kind: "once".into(),
            date_time: Some("2026-01-01T00:00:05Z".into()),
            expression: None,
            rrule: None,
            jitter: None,
        };
        let s = Schedule::compile(&rule, None, ts(ms("2026-01-01T00:00:00Z")).0).unwrap();
        let p = plan_pass(
            &s,
            ID,
            ms("2026-01-01T00:00:00Z"),
            ms("2026-01-01T00:00:05Z"),
            100,
            0,
        );
        assert_eq!(p.fire.unwrap().0, ms("2026-01-01T00:00:05Z"));
        assert_eq!(p.next, None);
        let p = plan_pass(
            &s,
            ID,
            p.handled_through,
            ms("2026-01-02T00:00:00Z"),
            100,
            0,
        );
        assert_eq!(
            p,
            Pass {
                handled_through: ms("2026-01-01T00:00:05Z"),
                ..Pass::default()
            }
        );
    }

    #[test]
    fn far_behind_skips_ahead_but_fires_the_latest() {
        let rule = ScheduleRule {
            kind: "cron".into(),
            date_time: None,
            expression: Some("* * * * * *".into()),
            rrule: None,
            jitter: None,
        };
        let s = Schedule::compile(&rule, Some("UTC"), ts(ms("2026-01-01T00:00:00Z")).0).unwrap();
        // Ten days of seconds behind.
        let now = ms("2026-01-11T00:00:00.500Z");
        let p = plan_pass(&s, ID, ms("2026-01-01T00:00:00Z"), now, 100, 0);
        assert_eq!(p.fire.unwrap().0, ms("2026-01-11T00:00:00Z"));
        assert_eq!(p.missed.len(), 100);
        assert_eq!(p.missed.last().unwrap().0, ms("2026-01-10T23:59:59Z"));
        assert_eq!(p.missed[0].0, ms("2026-01-10T23:58:20Z"));
        assert_eq!(p.handled_through, ms("2026-01-11T00:00:00Z"));
        let total = 10 * 86_400u64;
        assert!(
            p.uncounted.abs_diff(total - 101) < 1_000,
            "{} ≈ {}",
            p.uncounted,
            total - 101
        );
    }
}
