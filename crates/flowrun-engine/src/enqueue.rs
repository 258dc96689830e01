//! Fan-out and gates (§5.5, §5.6): turns a firing (fire, run, verify, and later events and
//! schedules) into execution rows, `pending` or `skipped` with a reason.
//!
//! Firings are queued to one task that takes them in batches: every firing of a batch is
//! planned against the in-memory definitions (later firings see the cooldown windows the
//! earlier ones opened), then all rows and the touched flows (gate state, `lastTriggeredAt`)
//! are committed in one transaction. Throughput therefore does not collapse to one commit
//! per request, and a 202 is only answered once its rows are durable.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use flowrun_core::execution::{ExecState, Snapshot};
use flowrun_core::model::FlowRecord;
use flowrun_core::search::execution_search_text;
use flowrun_core::{Ts, new_id};
use flowrun_store::{Change, Defs, ExecutionRow, Registry};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::snapshot::{self, RunInputs};
use crate::{EngineError, Shared};

/// What caused a firing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Event,
    Schedule,
    Fire,
    Run,
    Verify,
}

impl Origin {
    /// Event, schedule and fire pass every gate; run and verify are explicit requests.
    fn automatic(self) -> bool {
        matches!(self, Origin::Event | Origin::Schedule | Origin::Fire)
    }

    fn source(self) -> &'static str {
        match self {
            Origin::Event => "event",
            Origin::Schedule => "schedule",
            Origin::Fire => "custom",
            Origin::Run => "run",
            Origin::Verify => "verification",
        }
    }
}

/// The event that caused a firing (events only).
#[derive(Clone, Debug)]
pub struct EventInfo {
    pub id: String,
    pub event_type: String,
    pub device_id: Option<Uuid>,
    pub received_at: Ts,
}

/// A request to fan a trigger out to its flows.
#[derive(Clone, Debug)]
pub struct Firing {
    pub owner_id: String,
    pub actor_id: Option<String>,
    pub origin: Origin,
    pub trigger_id: Uuid,
    /// `run`/`verify`: only this flow (whatever its trigger binding says).
    pub only_flow: Option<Uuid>,
    pub payload: Value,
    pub invocation_id: Option<String>,
    /// Fire with an `Idempotency-Key`: flows that already have a row with this invocation id
    /// are skipped entirely.
    pub dedupe_invocation: bool,
    pub event: Option<EventInfo>,
    /// Template root `schedule`.
    pub schedule: Value,
    /// `verify`: the single target device.
    pub verify_device: Option<Uuid>,
    pub capture_screenshots: bool,
    /// `receivedAt` of the template root `event` when there is no event (schedules: the fire
    /// instant); default now.
    pub received_at: Option<Ts>,
    /// Record the firing as suppressed: every flow that would run gets one `skipped` row with
    /// this error and `deviceId: null`, and nothing runs (schedules: `missed` occurrences).
    pub suppressed: Option<&'static str>,
}

/// What a firing produced.
#[derive(Clone, Debug, Default)]
pub struct FiringOutcome {
    /// `pending` rows, in fan-out order.
    pub enqueued: Vec<Uuid>,
    /// `skipped` rows.
    pub skipped: Vec<Uuid>,
    /// At least one flow was skipped because it already had this invocation id.
    pub deduplicated: bool,
}

/// Firings committed together, plus the ingested events they route (marked routed in the
/// same transaction).
pub(crate) struct EnqueueRequest {
    pub firings: Vec<Firing>,
    pub routed_events: Vec<String>,
    pub reply: oneshot::Sender<Result<Vec<FiringOutcome>, EngineError>>,
}

/// Per-flow token buckets (§5.6): capacity = refill per minute = the configured rate. Owned
/// by [`Shared`] so dry-runs can read a level without taking a token.
pub(crate) struct Buckets {
    per_minute: f64,
    by_flow: HashMap<Uuid, (f64, Instant)>,
}

impl Buckets {
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            per_minute: per_minute as f64,
            by_flow: HashMap::new(),
        }
    }

    /// The level a bucket would have at `now`, without changing it.
    fn peek(&self, flow: Uuid, now: Instant) -> f64 {
        let cap = self.per_minute;
        match self.by_flow.get(&flow) {
            None => cap,
            Some((tokens, at)) => {
                let refill = now.saturating_duration_since(*at).as_secs_f64() * cap / 60.0;
                (*tokens + refill).min(cap)
            }
        }
    }

    fn level(&mut self, flow: Uuid, now: Instant) -> &mut f64 {
        let level = self.peek(flow, now);
        let entry = self.by_flow.entry(flow).or_insert((level, now));
        *entry = (level, now);
        &mut entry.0
    }

    /// Takes a token when one is left.
    fn take(&mut self, flow: Uuid, now: Instant) -> bool {
        if self.per_minute <= 0.0 {
            return true;
        }
        let t = self.level(flow, now);
        if *t >= 1.0 {
            *t -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether no whole token is left (dry-runs: informational, nothing is taken).
    pub(crate) fn exhausted(&self, flow: Uuid, now: Instant) -> bool {
        self.per_minute > 0.0 && self.peek(flow, now) < 1.0
    }
}

/// The enqueue task: batches firings into transactions.
///
/// Batches are pipelined: while batch K's transaction runs on the store, batch K + 1 is
/// planned and its runs are driven to their first writes, so planning and committing
/// overlap instead of adding up. The task keeps the registry lock from K's planning until
/// K has committed, so no definition write lands between a batch's planning and its
/// commit; it lets the lock go whenever the queue is empty or another writer waits.
/// A batch is not pipelined (it commits before the next one is planned) when ordering
/// matters: it writes definitions (gate state), routes ingested events (arrival order
/// holds across commits), or dedupes invocation ids (the lookup must see the rows before).
pub(crate) async fn run_enqueuer(shared: Arc<Shared>, mut rx: mpsc::Receiver<EnqueueRequest>) {
    let registry: &Registry = &shared.registry;
    let mut held: Option<tokio::sync::MutexGuard<'_, ()>> = None;
    let mut in_flight: Option<oneshot::Receiver<()>> = None;
    loop {
        let first = if in_flight.is_some() {
            match rx.try_recv() {
                Ok(r) => r,
                Err(mpsc::error::TryRecvError::Empty) => {
                    settle(&mut in_flight).await;
                    held = None;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        } else {
            held = None;
            match rx.recv().await {
                Some(r) => r,
                None => break,
            }
        };
        let mut batch = vec![first];
        let mut firings = batch[0].firings.len();
        while firings < 512 {
            match rx.try_recv() {
                Ok(r) => {
                    firings += r.firings.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        // Routed events commit apart from API fires: when another node routed the same
        // events first, only the router's transaction rolls back.
        let (routing, fires): (Vec<_>, Vec<_>) =
            batch.into_iter().partition(|r| !r.routed_events.is_empty());
        for requests in [fires, routing] {
            if requests.is_empty() {
                continue;
            }
            let ordered = requests.iter().any(|r| {
                !r.routed_events.is_empty() || r.firings.iter().any(|f| f.dedupe_invocation)
            });
            if ordered || registry.writers_waiting() {
                settle(&mut in_flight).await;
                held = None;
            }
            let Some((requests, seen)) = dedupe_lookups(&shared, requests).await else {
                continue;
            };
            if held.is_none() {
                held = Some(registry.lock().await);
            }
            let (commit, pipelined) = plan_batch(&shared, requests, seen).await;
            // At most one commit in flight besides the new one: K settles before K + 2 is
            // planned, so the runs and replies of K never wait behind more than one batch.
            settle(&mut in_flight).await;
            in_flight = Some(commit);
            if !pipelined || ordered {
                settle(&mut in_flight).await;
            }
        }
    }
    settle(&mut in_flight).await;
    drop(held);
}

/// Waits until the batch in flight committed or failed (its replies and runs then wait for
/// the fsync on their own).
async fn settle(in_flight: &mut Option<oneshot::Receiver<()>>) {
    if let Some(commit) = in_flight.take() {
        let _ = commit.await;
    }
}

/// The invocation ids the batch's deduplicating firings already have rows for, per firing;
/// `None` when the lookup failed (the requests were answered with the error).
async fn dedupe_lookups(
    shared: &Arc<Shared>,
    requests: Vec<EnqueueRequest>,
) -> Option<(Vec<EnqueueRequest>, Vec<Vec<HashSet<Uuid>>>)> {
    let mut seen: Vec<Vec<HashSet<Uuid>>> = Vec::with_capacity(requests.len());
    let mut failed = None;
    'requests: for r in &requests {
        let mut per_firing = Vec::with_capacity(r.firings.len());
        for f in &r.firings {
            let mut set = HashSet::new();
            if let (true, Some(inv)) = (f.dedupe_invocation, &f.invocation_id) {
                let candidates = {
                    let defs = shared.registry.read();
                    bound_flows(&defs, f)
                        .iter()
                        .map(|r| r.flow.id)
                        .collect::<Vec<_>>()
                };
                if !candidates.is_empty() {
                    match shared.store.flows_with_invocation(&candidates, inv).await {
                        Ok(ids) => set.extend(ids),
                        Err(e) => {
                            failed = Some(e);
                            break 'requests;
                        }
                    }
                }
            }
            per_firing.push(set);
        }
        seen.push(per_firing);
    }
    match failed {
        None => Some((requests, seen)),
        Some(e) => {
            fail_all(requests, e.into());
            None
        }
    }
}

/// Plans a batch (the caller holds the registry lock), drives its early runs to their first
/// writes and starts its commit. Returns what hears when the commit ended (committed or
/// failed), and whether the batch may stay in flight while the next is planned (it writes
/// no definitions).
async fn plan_batch(
    shared: &Arc<Shared>,
    requests: Vec<EnqueueRequest>,
    seen: Vec<Vec<HashSet<Uuid>>>,
) -> (oneshot::Receiver<()>, bool) {
    let registry: &Registry = &shared.registry;
    let now = Ts::now();
    let instant = Instant::now();
    let mut plan = Plan::default();
    let mut outcomes: Vec<Vec<FiringOutcome>> = Vec::with_capacity(requests.len());
    let mut routed: Vec<String> = Vec::new();
    {
        let defs = registry.read();
        let mut buckets = shared.buckets();
        let mut taken: HashSet<(Uuid, String)> = HashSet::new();
        for (r, seen) in requests.iter().zip(&seen) {
            routed.extend(r.routed_events.iter().cloned());
            outcomes.push(
                r.firings
                    .iter()
                    .zip(seen)
                    .map(|(f, seen)| {
                        plan_firing(
                            &defs,
                            &mut plan,
                            &mut buckets,
                            f,
                            seen,
                            &mut taken,
                            now,
                            instant,
                        )
                    })
                    .collect(),
            );
        }
    }
    // A flow whose gate state changed is written with the rows (cooldowns must hold across
    // restarts and nodes); one that only records `lastTriggeredAt` is written behind.
    let (gated, last_triggered): (Vec<FlowRecord>, Vec<FlowRecord>) = {
        let defs = registry.read();
        plan.flows.into_values().partition(|f| {
            defs.flow_any(&f.flow.owner_id, f.flow.id)
                .is_none_or(|stored| stored.gates != f.gates)
        })
    };
    let changes: Vec<Change> = gated.into_iter().map(Change::PutFlow).collect();
    let pipelined = changes.is_empty();
    crate::telemetry::enqueued(&plan.rows);
    let handed = crate::worker::hand_over(shared, &mut plan.rows, now.millis());
    debug_assert_eq!(plan.rows.len(), plan.parsed.len());
    let mut early = crate::worker::start_early(shared, &plan.rows, &mut plan.parsed, handed);
    plan.parsed = Vec::new();
    // The runs hand their first writes back within microseconds (a run's first write comes
    // before any step that waits on the world); one that is later writes after the commit.
    let deadline = tokio::time::Instant::now() + FIRST_WRITE_WAIT;
    let mut replies = Vec::new();
    let mut deliveries = Vec::new();
    for (i, first) in early.first_writes(deadline).await {
        deliveries.extend(plan.rows[i].apply(first.update));
        replies.push(first.reply);
    }
    let has_pending = plan.rows.iter().any(|r| r.status == "pending");
    // The rows move to the store; the early runs need only each row's device afterwards.
    let devices: Vec<Option<Uuid>> = plan.rows.iter().map(|r| r.device_id).collect();
    let rows = std::mem::take(&mut plan.rows);
    let shared = shared.clone();
    let (ended, commit) = oneshot::channel();
    tokio::spawn(async move {
        let result = shared
            .registry
            .apply_enqueue(
                changes,
                last_triggered,
                rows,
                deliveries,
                &routed,
                now.millis(),
            )
            .await;
        let _ = ended.send(());
        match result {
            // Committed: later batches may be planned on what this one changed while this
            // one becomes durable; the replies and the runs wait for that.
            Ok(durable) => {
                if has_pending {
                    shared.rows_claimable();
                }
                match durable.await {
                    Ok(()) => {
                        early.committed(&shared, &devices, replies);
                        for (r, outcome) in requests.into_iter().zip(outcomes) {
                            let _ = r.reply.send(Ok(outcome));
                        }
                    }
                    Err(e) => {
                        early.failed(&shared, replies);
                        tracing::error!(error = %e, "enqueue failed");
                        fail_all(requests, e.into());
                    }
                }
            }
            Err(e) => {
                early.failed(&shared, replies);
                tracing::error!(error = %e, "enqueue failed");
                fail_all(requests, e.into());
            }
        }
    });
    (commit, pipelined)
}

/// How long an enqueue waits for the first writes of the runs it started (see
/// `worker::Handed`) before it commits without them.
const FIRST_WRITE_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

fn fail_all(requests: Vec<EnqueueRequest>, e: EngineError) {
    for r in requests {
        let _ = r.reply.send(Err(e.clone()));
    }
}

/// Builds the rows of one flow of one firing.
struct RowFactory<'a> {
    f: &'a Firing,
    flow_id: Uuid,
    trigger_id: Uuid,
    kind: &'static str,
    flow_name: String,
    trigger_name: String,
    hash: String,
    now_ms: i64,
}

impl RowFactory<'_> {
    fn row(
        &self,
        device: Option<Uuid>,
        status: &str,
        error: Option<&str>,
        snapshot: String,
        state: String,
    ) -> ExecutionRow {
        let f = self.f;
        ExecutionRow {
            id: new_id(),
            owner_id: f.owner_id.clone(),
            flow_id: self.flow_id,
            trigger_id: self.trigger_id,
            kind: self.kind.to_string(),
            status: status.to_string(),
            device_id: device,
            invocation_id: f.invocation_id.clone(),
            event_id: f.event.as_ref().map(|e| e.id.clone()),
            error: error.map(str::to_string),
            flow_name: Some(self.flow_name.clone()),
            trigger_name: Some(self.trigger_name.clone()),
            created_by: f.actor_id.clone(),
            enqueued_at: self.now_ms,
            started_at: None,
            finished_at: (status != "pending").then_some(self.now_ms),
            attempt: 0,
            lease_owner: None,
            lease_expires_at: None,
            graph_hash: Some(self.hash.clone()),
            snapshot,
            state,
            search_text: execution_search_text(
                Some(&self.flow_name),
                Some(&self.trigger_name),
                error,
            ),
        }
    }
}

#[derive(Default)]
struct Plan {
    rows: Vec<ExecutionRow>,
    /// Per row, the snapshot and state it was written from (none for skipped rows).
    parsed: Vec<Option<crate::worker::Parsed>>,
    /// Flows changed by this batch (gate state, `lastTriggeredAt`), newest version.
    flows: HashMap<Uuid, FlowRecord>,
}

/// The flows a firing fans out to, in a stable order.
fn bound_flows(defs: &Defs, f: &Firing) -> Vec<Arc<FlowRecord>> {
    if let Some(id) = f.only_flow {
        return defs.flow(&f.owner_id, id).cloned().into_iter().collect();
    }
    let mut flows: Vec<Arc<FlowRecord>> = defs
        .flows_of_trigger(&f.owner_id, f.trigger_id)
        .cloned()
        .collect();
    flows.sort_by_key(|r| (r.flow.created_at, r.flow.id));
    flows
}

#[allow(clippy::too_many_arguments)]
fn plan_firing(
    defs: &Defs,
    plan: &mut Plan,
    buckets: &mut Buckets,
    f: &Firing,
    already: &HashSet<Uuid>,
    taken: &mut HashSet<(Uuid, String)>,
    now: Ts,
    instant: Instant,
) -> FiringOutcome {
    let mut out = FiringOutcome::default();
    let Some(trigger) = defs.trigger(&f.owner_id, f.trigger_id).cloned() else {
        return out;
    };
    let now_ms = now.millis();
    let received_at = f
        .event
        .as_ref()
        .map(|e| e.received_at)
        .or(f.received_at)
        .unwrap_or(now);
    let received_at = received_at.to_rfc3339();
    for stored in bound_flows(defs, f) {
        let mut rec = plan
            .flows
            .get(&stored.flow.id)
            .cloned()
            .unwrap_or_else(|| (*stored).clone());
        let flow_id = rec.flow.id;
        if f.origin.automatic() && !rec.flow.enabled {
            continue;
        }
        if let (true, Some(inv)) = (f.dedupe_invocation, &f.invocation_id)
            && (already.contains(&flow_id) || !taken.insert((flow_id, inv.clone())))
        {
            out.deduplicated = true;
            continue;
        }
        let steps = snapshot::steps_of(defs, &rec);
        let needs_device = snapshot::needs_device(&steps);
        let kind = if f.origin == Origin::Verify {
            "verification"
        } else {
            "live"
        };
        let inputs = RunInputs {
            source: f.origin.source(),
            payload: &f.payload,
            event_id: f.event.as_ref().map(|e| e.id.as_str()),
            event_type: f.event.as_ref().map(|e| e.event_type.as_str()),
            event_device: f.event.as_ref().and_then(|e| e.device_id),
            received_at: &received_at,
            schedule: f.schedule.clone(),
            user_id: f.actor_id.as_deref(),
            capture_screenshots: f.capture_screenshots,
        };
        let hash = snapshot::graph_hash_cached(defs, &rec, &trigger);
        let base_snap = snapshot::build(&rec, &trigger, steps, None, &inputs);
        let rows = RowFactory {
            f,
            flow_id,
            trigger_id: trigger.id,
            kind,
            flow_name: rec.flow.name.clone(),
            trigger_name: trigger.name.clone(),
            hash,
            now_ms,
        };
        let skip = |plan: &mut Plan, out: &mut FiringOutcome, device: Option<Uuid>, code| {
            let row = rows.row(device, "skipped", Some(code), "{}".into(), "{}".into());
            out.skipped.push(row.id);
            plan.rows.push(row);
            plan.parsed.push(None);
        };
        // The snapshot is moved into the last target's row and cloned for the others.
        let mut base_snap = Some(base_snap);
        let enqueue = |plan: &mut Plan,
                       out: &mut FiringOutcome,
                       device: Option<Uuid>,
                       base: &mut Option<Snapshot>,
                       last: bool| {
            let mut snap = if last {
                base.take()
                    .expect("the snapshot is moved once, into the last target")
            } else {
                base.clone()
                    .expect("the snapshot is there until the last target")
            };
            if let Some(d) = device.and_then(|d| defs.device(&f.owner_id, d)) {
                snap.device = Some(snapshot::device_snap(d));
                if snap.event["deviceId"].is_null() {
                    snap.event["deviceId"] = Value::String(d.id.to_string());
                }
            }
            let state = ExecState {
                progress: Some(snap.initial_progress()),
                ..Default::default()
            };
            let json = serde_json::to_string(&snap).expect("snapshot serialises");
            let row = rows.row(device, "pending", None, json, state.to_json());
            out.enqueued.push(row.id);
            plan.rows.push(row);
            plan.parsed
                .push(Some(crate::worker::Parsed { snap, state }));
        };

        if let Some(code) = f.suppressed {
            skip(plan, &mut out, None, code);
            continue;
        }

        // Targets (§5.5).
        let targets: Vec<Option<Uuid>> = if f.origin == Origin::Verify {
            vec![f.verify_device]
        } else {
            match targets_of(
                &rec,
                needs_device,
                f.event.as_ref().and_then(|e| e.device_id),
            ) {
                Targets::Run(t) => t,
                Targets::NotBound => continue,
                Targets::NoDevice => {
                    skip(plan, &mut out, None, "no_device");
                    continue;
                }
            }
        };
        if f.origin == Origin::Verify {
            enqueue(plan, &mut out, targets[0], &mut base_snap, true);
            continue;
        }

        let run = f.origin == Origin::Run;
        let window_ms = cooldown_ms(&rec);
        let device_scope = rec.flow.cooldown_scope == "device";
        let mut enqueued_here = 0;
        let last_target = targets.len().saturating_sub(1);
        for (t, target) in targets.into_iter().enumerate() {
            // A device deleted since the flow was bound (deletes are refused while in use,
            // but the definition may be mid-change).
            if target.is_some_and(|d| defs.device(&f.owner_id, d).is_none()) {
                skip(plan, &mut out, target, "no_device");
                continue;
            }
            if rec.flow.status == "blocked" {
                skip(plan, &mut out, target, "blocked");
                continue;
            }
            let key = device_key(target);
            if in_cooldown(&rec, target, now_ms) && !run {
                skip(plan, &mut out, target, "cooldown_active");
                continue;
            }
            if !buckets.take(flow_id, instant) && !run {
                skip(plan, &mut out, target, "rate_limited");
                continue;
            }
            enqueue(plan, &mut out, target, &mut base_snap, t == last_target);
            enqueued_here += 1;
            if window_ms > 0 && device_scope {
                rec.gates
                    .device_cooldown_until
                    .insert(key, now_ms + window_ms);
            }
        }
        let mut changed = false;
        if enqueued_here > 0 {
            rec.flow.last_triggered_at = Some(now);
            changed = true;
            if window_ms > 0 && !device_scope {
                rec.gates.cooldown_until = Some(now_ms + window_ms);
            }
            if device_scope {
                // Windows that ended are dropped so the map does not grow without bound.
                rec.gates.device_cooldown_until.retain(|_, u| *u > now_ms);
            }
        }
        if changed {
            plan.flows.insert(flow_id, rec);
        }
    }
    out
}

/// Where a firing of a flow runs (§5.5), before the per-target gates.
enum Targets {
    /// One execution per entry (`None` = the device-free target).
    Run(Vec<Option<Uuid>>),
    /// An event from a device the flow is not bound to: the flow produces nothing.
    NotBound,
    /// No device bound while a step needs one: one `skipped` / `no_device` row.
    NoDevice,
}

fn targets_of(rec: &FlowRecord, needs_device: bool, event_device: Option<Uuid>) -> Targets {
    if !rec.flow.device_ids.is_empty() {
        match event_device {
            Some(d) if rec.flow.device_ids.contains(&d) => Targets::Run(vec![Some(d)]),
            Some(_) => Targets::NotBound,
            None => Targets::Run(rec.flow.device_ids.iter().copied().map(Some).collect()),
        }
    } else if !needs_device {
        Targets::Run(vec![None])
    } else {
        Targets::NoDevice
    }
}

fn cooldown_ms(rec: &FlowRecord) -> i64 {
    rec.flow.cooldown_seconds.unwrap_or(0).max(0) * 1000
}

/// The cooldown key of a target (scope `device`; `""` = the null device).
fn device_key(target: Option<Uuid>) -> String {
    target.map(|d| d.to_string()).unwrap_or_default()
}

/// Whether a cooldown window covering this target is open at `now_ms` (§5.6).
fn in_cooldown(rec: &FlowRecord, target: Option<Uuid>, now_ms: i64) -> bool {
    if cooldown_ms(rec) <= 0 {
        return false;
    }
    if rec.flow.cooldown_scope == "device" {
        rec.gates
            .device_cooldown_until
            .get(&device_key(target))
            .is_some_and(|u| *u > now_ms)
    } else {
        rec.gates.cooldown_until.is_some_and(|u| u > now_ms)
    }
}

/// The gates of one flow for a simulated firing (dry-runs, §5.6), decided exactly as a firing
/// would decide them but without any side effect. `rateLimited` is not part of it (see
/// [`crate::Engine::rate_limited`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatesReport {
    /// Lifecycle `enabled`.
    pub enabled: bool,
    /// At least one target exists (§5.5).
    pub device_attached: bool,
    /// The devices the firing would target (empty for a device-free target).
    pub device_ids: Vec<Uuid>,
    pub blocked: bool,
    /// `None` without a cooldown; scope `device`: true only when every target is cooling
    /// (`None` when there is no target).
    pub cooldown_active: Option<bool>,
    /// The targets that would get a row (`None` = device-free).
    pub targets: Vec<Option<Uuid>>,
}

/// [`GatesReport`] of `rec` for an event from `event_device` (or any other origin: `None`).
pub fn gates_report(
    defs: &Defs,
    rec: &FlowRecord,
    event_device: Option<Uuid>,
    now_ms: i64,
) -> GatesReport {
    let steps = snapshot::steps_of(defs, rec);
    let targets: Vec<Option<Uuid>> =
        match targets_of(rec, snapshot::needs_device(&steps), event_device) {
            // A device deleted since the flow was bound gets a `no_device` row.
            Targets::Run(t) => t
                .into_iter()
                .filter(|d| d.is_none_or(|d| defs.device(&rec.flow.owner_id, d).is_some()))
                .collect(),
            Targets::NotBound | Targets::NoDevice => Vec::new(),
        };
    let cooldown_active = if cooldown_ms(rec) <= 0 {
        None
    } else if rec.flow.cooldown_scope == "device" {
        (!targets.is_empty()).then(|| targets.iter().all(|t| in_cooldown(rec, *t, now_ms)))
    } else {
        Some(in_cooldown(rec, None, now_ms))
    };
    GatesReport {
        enabled: rec.flow.enabled,
        device_attached: !targets.is_empty(),
        device_ids: targets.iter().flatten().copied().collect(),
        blocked: rec.flow.status == "blocked",
        cooldown_active,
        targets,
    }
}
