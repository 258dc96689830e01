//! The queue consumer and the step loop (§5.7–§5.11).
//!
//! - The dispatcher claims the oldest `pending` rows whose device is free, up to the free
//!   worker slots, and starts one task per row. It sleeps on a [`Notify`](tokio::sync::Notify)
//!   that enqueue and finishing runs ring, with a short poll only as a fallback.
//! - A run executes its top-level steps in order, resuming at the first step that did not
//!   succeed (a reclaimed row never re-runs a committed step). Every write is fenced by the
//!   lease, so after an abort (or a lost lease) the run's writes change nothing and it stops.
//! - Writes go through one writer task that commits whatever is queued in one transaction
//!   (group commit): a step completion waits for its commit before the next step starts.
//! - Abort cancels the run's token: the in-flight step (`flow.wait`, executor calls) returns
//!   at once and no further step starts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flowrun_actions::{FailureClass, Staged, StepCall, StepFailure, StepOutput};
use flowrun_core::Ts;
use flowrun_core::catalog;
use flowrun_core::conditions;
use flowrun_core::execution::{
    ExecState, ExecutionResult, Screenshot, SnapStep, Snapshot, StepResult, step_status,
};
use flowrun_core::keys;
use flowrun_core::params;
use flowrun_core::search::execution_search_text;
use flowrun_core::templates::{self, LoopCtx, StepRef, TemplateScope};
use flowrun_store::{ExecUpdate, ExecutionRow};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::artifacts::{self, ShotPlace};
use crate::health::{self, Outcome};
use crate::webhooks::StagedDelivery;
use crate::{EngineError, RunningEntry, Shared};

/// One fenced write for the writer task; `reply` hears whether it applied.
pub(crate) struct WriteRequest {
    update: ExecUpdate,
    reply: Option<oneshot::Sender<bool>>,
}

/// Commits queued writes in batches (one transaction per batch).
pub(crate) async fn run_writer(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<WriteRequest>) {
    let mut updates = Vec::new();
    let mut replies = Vec::new();
    while let Some(first) = rx.recv().await {
        updates.push(first.update);
        replies.push(first.reply);
        while updates.len() < 512 {
            match rx.try_recv() {
                Ok(r) => {
                    updates.push(r.update);
                    replies.push(r.reply);
                }
                Err(_) => break,
            }
        }
        drop_superseded(&mut updates, &mut replies);
        // A failed batch changed nothing (one transaction); a transient failure is retried so
        // that runs do not stop and wait for their lease to expire.
        let mut attempt = 0;
        let applied = loop {
            match shared.store.apply_exec_updates(&updates).await {
                Ok(a) => break a,
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "execution write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "execution write failed");
                    break vec![false; updates.len()];
                }
            }
        };
        updates.clear();
        for (reply, ok) in replies.drain(..).zip(applied) {
            if let Some(r) = reply {
                let _ = r.send(ok);
            }
        }
    }
}

/// Drops progress writes nobody waits for that a later write of the same run in the batch
/// supersedes: every write carries the whole state under the same fence, so the later one
/// applies exactly when the earlier would have (e.g. a step's `running` mark and its
/// completion, queued together when the step was quick).
fn drop_superseded(
    updates: &mut Vec<ExecUpdate>,
    replies: &mut Vec<Option<oneshot::Sender<bool>>>,
) {
    let mut later = std::collections::HashSet::new();
    let mut keep = vec![true; updates.len()];
    for i in (0..updates.len()).rev() {
        let u = &updates[i];
        let superseded = later.contains(&(u.id, u.attempt));
        if superseded && u.status.is_none() && u.deliveries.is_empty() && replies[i].is_none() {
            keep[i] = false;
        }
        later.insert((u.id, u.attempt));
    }
    if keep.iter().all(|k| *k) {
        return;
    }
    let mut flags = keep.iter();
    updates.retain(|_| *flags.next().unwrap_or(&true));
    let mut flags = keep.iter();
    replies.retain(|_| *flags.next().unwrap_or(&true));
}

/// Reclaims rows of lost workers (expired leases, or at start every row of an earlier
/// process); rows out of attempts end `failed` and count as failures for health.
pub(crate) async fn reap(shared: &Arc<Shared>, all_others: bool) -> Result<(), EngineError> {
    let now = Ts::now();
    let registry = shared.registry.clone();
    let outcome = shared
        .store
        .reap_executions(
            now.millis(),
            shared.config.max_attempts,
            &move |row: &ExecutionRow| {
                let mut state = ExecState::parse(&row.state);
                // The step the lost worker was in (the first one that had not ended).
                let key = state
                    .result
                    .as_ref()
                    .and_then(|r| {
                        r.steps
                            .iter()
                            .find(|s| s.status == step_status::RUNNING)
                            .or_else(|| r.steps.iter().find(|s| s.status == step_status::PENDING))
                    })
                    .map(|s| s.key.clone())
                    .unwrap_or_else(|| "execution".to_string());
                fail_open_steps(&mut state, now);
                artifacts::add_deliveries(&registry, &row.owner_id, row.flow_id, &mut state, now);
                (
                    format!(
                        "{key}: transient: the worker running this execution was lost on every attempt"
                    ),
                    state.to_json(),
                )
            },
            &shared.node_id,
            all_others,
        )
        .await?;
    for row in &outcome.failed {
        if row.kind == "live" {
            let _ = health::record(
                &shared.registry,
                &row.owner_id,
                row.flow_id,
                Outcome::Failure { class: "transient" },
                shared.config.failure_threshold,
            )
            .await;
            crate::webhooks::run_finished(shared, row, "failed").await;
            let (index, key) = artifacts::failed_step(&ExecState::parse(&row.state));
            artifacts::open_repair(shared, row, index, &key).await;
        }
    }
    if !outcome.requeued.is_empty() {
        tracing::info!(
            count = outcome.requeued.len(),
            "re-queued executions of a lost worker"
        );
        shared.rows_claimable();
    }
    Ok(())
}

/// Marks steps that were running when the worker was lost as failed (transient).
fn fail_open_steps(state: &mut ExecState, at: Ts) {
    if let Some(p) = &mut state.progress {
        for s in &mut p.steps {
            if s.status == step_status::RUNNING {
                s.status = step_status::FAILED.into();
                s.finished_at = Some(at);
            } else if s.status == step_status::PENDING {
                s.status = step_status::SKIPPED.into();
            }
        }
    }
    if let Some(r) = &mut state.result {
        for s in &mut r.steps {
            if s.status == step_status::RUNNING {
                s.status = step_status::FAILED.into();
                s.finished_at = Some(at);
                s.error = Some("transient: worker lost".into());
            } else if s.status == step_status::PENDING {
                s.status = step_status::SKIPPED.into();
            }
        }
    }
}

/// Renews this node's leases and reaps expired ones of other nodes.
pub(crate) async fn run_heartbeat(shared: Arc<Shared>) {
    let period = (shared.config.lease / 6).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shared.shutdown.cancelled() => return,
        }
        let until = Ts::now().millis() + shared.config.lease.as_millis() as i64;
        let ids: Vec<Uuid> = shared.running().keys().copied().collect();
        if let Err(e) = shared
            .store
            .renew_leases(&shared.node_id, &ids, until)
            .await
        {
            tracing::warn!(error = %e, "lease renewal failed");
        }
        if let Err(e) = reap(&shared, false).await {
            tracing::warn!(error = %e, "reaper failed");
        }
    }
}

/// Claims pending rows and starts their runs. A claim is a transaction on the writer, so it
/// is made only when rows may be claimable: the claimable counter moved since the last
/// claim, the last claim filled every free slot (there may be more), or the poll came
/// round. A run ending frees a slot but makes no row claimable by itself.
pub(crate) async fn run_dispatcher(shared: Arc<Shared>) {
    let mut seen: Option<u64> = None;
    let mut more = false;
    let mut polled = true;
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        let (free, busy) = {
            let running = shared.running();
            let busy: Vec<Uuid> = running.values().filter_map(|e| e.device).collect();
            let taken = running.len() + shared.reserved.load(Ordering::SeqCst);
            (shared.config.workers.saturating_sub(taken), busy)
        };
        let hint = shared.claimable.load(Ordering::SeqCst);
        if free > 0 && (more || polled || seen != Some(hint)) {
            seen = Some(hint);
            let now = Ts::now().millis();
            let until = now + shared.config.lease.as_millis() as i64;
            match shared
                .store
                .claim_executions(&shared.node_id, now, until, free, &busy)
                .await
            {
                Ok(rows) => {
                    more = rows.len() == free;
                    for row in rows {
                        start_run(&shared, row);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "claim failed");
                    seen = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if more {
            // Every slot got a row: there may be more; wait for a slot instead of polling.
            polled = false;
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = shared.shutdown.cancelled() => return,
            }
            continue;
        }
        polled = tokio::select! {
            _ = shared.wake.notified() => false,
            _ = tokio::time::sleep(shared.config.poll_interval) => true,
            _ = shared.shutdown.cancelled() => return,
        };
    }
}

/// Rows of an enqueue batch this node runs at once: a `pending` row without a device is
/// written already claimed (`running`, leased to this node) while a worker slot is free, so
/// its run needs no claim and its commit. The slots are reserved here (the dispatcher counts
/// them taken).
///
/// Their runs start before the enqueue commits ([`start_early`]): a run gets as far as its
/// first write (a chain of `webhooks.send` steps runs to its end, in microseconds), hands
/// that write back, and the enqueue inserts the row with it applied and the deliveries it
/// staged, in the same transaction. A fired run thus costs one commit and one write of its
/// row instead of two. The runs join `running` only once committed, so nothing (lease
/// watch, heartbeat, abort) looks for rows not yet stored; until then each waits for the
/// commit. Rows with a device keep the queue, which orders each device's runs.
pub(crate) struct Handed {
    /// Indexes into the batch's rows.
    rows: Vec<usize>,
}

/// Marks the rows that [`Handed`] describes and reserves their slots.
pub(crate) fn hand_over(shared: &Arc<Shared>, rows: &mut [ExecutionRow], now_ms: i64) -> Handed {
    let mut handed = Handed { rows: Vec::new() };
    if shared.shutdown.is_cancelled() {
        return handed;
    }
    let running = shared.running();
    let taken = running.len() + shared.reserved.load(Ordering::SeqCst);
    let mut free = shared.config.workers.saturating_sub(taken);
    for (i, row) in rows.iter_mut().enumerate() {
        if free == 0 {
            break;
        }
        if row.status != "pending" || row.device_id.is_some() {
            continue;
        }
        row.status = "running".to_string();
        row.started_at = Some(now_ms);
        row.lease_owner = Some(shared.node_id.clone());
        row.lease_expires_at = Some(now_ms + shared.config.lease.as_millis() as i64);
        handed.rows.push(i);
        free -= 1;
    }
    shared
        .reserved
        .fetch_add(handed.rows.len(), Ordering::SeqCst);
    handed
}

/// A run's first write, handed back to the enqueue that has not committed its row yet.
pub(crate) struct FirstWrite {
    pub(crate) update: ExecUpdate,
    /// Hears whether the row, with this write applied, committed.
    pub(crate) reply: oneshot::Sender<bool>,
}

/// How a run started before its row's commit gets that commit.
struct Early {
    /// Where the first write goes; the enqueue drops the other end when it stops waiting.
    first: oneshot::Sender<FirstWrite>,
    /// The enqueue's outcome: `Some(true)` once committed (and the run registered).
    committed: watch::Receiver<Option<bool>>,
}

/// The runs of one enqueue batch started before its commit.
pub(crate) struct EarlyRuns {
    runs: Vec<EarlyRun>,
    committed: watch::Sender<Option<bool>>,
}

struct EarlyRun {
    row: usize,
    id: Uuid,
    cancel: CancellationToken,
    /// Set (under the `running` lock) when the run's task ends.
    ended: Arc<AtomicBool>,
    first: Option<oneshot::Receiver<FirstWrite>>,
    /// The run's task, driven by the enqueue up to its first write and then spawned.
    task: Option<RunTask>,
}

/// Starts the runs of the handed rows before their commit (see [`Handed`]).
pub(crate) fn start_early(
    shared: &Arc<Shared>,
    rows: &[ExecutionRow],
    parsed: &mut [Option<Parsed>],
    handed: Handed,
) -> EarlyRuns {
    let (committed, watch_rx) = watch::channel(None);
    let runs = handed
        .rows
        .into_iter()
        .map(|i| {
            let (tx, rx) = oneshot::channel();
            let cancel = CancellationToken::new();
            let ended = Arc::new(AtomicBool::new(false));
            let early = Early {
                first: tx,
                committed: watch_rx.clone(),
            };
            let task = run_task(
                shared,
                rows[i].clone(),
                parsed.get_mut(i).and_then(Option::take),
                cancel.clone(),
                Some(early),
                ended.clone(),
            );
            EarlyRun {
                row: i,
                id: rows[i].id,
                cancel,
                ended,
                first: Some(rx),
                task: Some(task),
            }
        })
        .collect();
    EarlyRuns { runs, committed }
}

impl EarlyRuns {
    /// The first writes handed back before `deadline`, with the indexes of their rows. The
    /// enqueue drives the runs itself up to their first write (no wait for a worker thread
    /// to pick each up), then spawns them. A run that is later sends its write to the
    /// writer once the row committed.
    pub(crate) async fn first_writes(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Vec<(usize, FirstWrite)> {
        let mut out = Vec::with_capacity(self.runs.len());
        let _ = tokio::time::timeout_at(
            deadline,
            std::future::poll_fn(|cx| {
                let mut waiting = false;
                for run in &mut self.runs {
                    let Some(rx) = &mut run.first else { continue };
                    if let Some(task) = &mut run.task
                        && task.as_mut().poll(cx).is_ready()
                    {
                        run.task = None;
                    }
                    match std::pin::Pin::new(rx).poll(cx) {
                        std::task::Poll::Ready(Ok(w)) => {
                            out.push((run.row, w));
                            run.first = None;
                        }
                        std::task::Poll::Ready(Err(_)) => run.first = None,
                        std::task::Poll::Pending => waiting = true,
                    }
                }
                if waiting {
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            }),
        )
        .await;
        for run in &mut self.runs {
            run.first = None;
            if let Some(task) = run.task.take() {
                tokio::spawn(task);
            }
        }
        out
    }

    /// The batch committed: registers the runs and lets them go on.
    pub(crate) fn committed(
        self,
        shared: &Arc<Shared>,
        devices: &[Option<Uuid>],
        replies: Vec<oneshot::Sender<bool>>,
    ) {
        {
            let mut running = shared.running();
            for run in &self.runs {
                if shared.take_recent_abort(run.id) {
                    run.cancel.cancel();
                }
                if !run.ended.load(Ordering::SeqCst) {
                    running.insert(
                        run.id,
                        RunningEntry {
                            cancel: run.cancel.clone(),
                            device: devices[run.row],
                        },
                    );
                }
            }
            shared.reserved.fetch_sub(self.runs.len(), Ordering::SeqCst);
        }
        let _ = self.committed.send(Some(true));
        for r in replies {
            let _ = r.send(true);
        }
    }

    /// The batch failed: nothing of it exists; the runs stop and their slots are free.
    pub(crate) fn failed(self, shared: &Arc<Shared>, replies: Vec<oneshot::Sender<bool>>) {
        shared.reserved.fetch_sub(self.runs.len(), Ordering::SeqCst);
        let _ = self.committed.send(Some(false));
        for r in replies {
            let _ = r.send(false);
        }
        shared.wake.notify_one();
    }
}

fn start_run(shared: &Arc<Shared>, row: ExecutionRow) {
    let cancel = CancellationToken::new();
    {
        let mut running = shared.running();
        if shared.take_recent_abort(row.id) {
            // Aborted between the claim and now: the store already says `cancelled`.
            return;
        }
        running.insert(
            row.id,
            RunningEntry {
                cancel: cancel.clone(),
                device: row.device_id,
            },
        );
    }
    spawn_run(shared, row, cancel, None, Arc::new(AtomicBool::new(false)));
}

/// A run's task before it is spawned.
type RunTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn spawn_run(
    shared: &Arc<Shared>,
    row: ExecutionRow,
    cancel: CancellationToken,
    early: Option<Early>,
    ended: Arc<AtomicBool>,
) {
    tokio::spawn(run_task(shared, row, None, cancel, early, ended));
}

fn run_task(
    shared: &Arc<Shared>,
    row: ExecutionRow,
    parsed: Option<Parsed>,
    cancel: CancellationToken,
    early: Option<Early>,
    ended: Arc<AtomicBool>,
) -> RunTask {
    let shared = shared.clone();
    Box::pin(async move {
        let id = row.id;
        let device = row.device_id;
        let mut early = early;
        match Run::new(shared.clone(), row, parsed, cancel) {
            Ok(mut run) => {
                run.early = early;
                run.execute().await;
            }
            Err(update) => {
                send_write(&shared, &mut early, *update, false).await;
            }
        }
        {
            let mut running = shared.running();
            ended.store(true, Ordering::SeqCst);
            running.remove(&id);
        }
        // A free slot is worth a claim only if rows wait for one (see `run_dispatcher`); a
        // free device may make its next row claimable.
        if device.is_some() {
            shared.rows_claimable();
        } else {
            shared.wake.notify_one();
        }
    })
}

/// Sends a run's write: the first write of a run started before its commit goes back to
/// the enqueue (or, when the enqueue stopped waiting, to the writer once the row committed);
/// every other to the writer. With `wait`, returns whether it applied (false = stop).
async fn send_write(
    shared: &Shared,
    early: &mut Option<Early>,
    update: ExecUpdate,
    wait: bool,
) -> bool {
    let update = match early.take() {
        None => update,
        Some(Early {
            first,
            mut committed,
        }) => {
            let (reply, rx) = oneshot::channel();
            match first.send(FirstWrite { update, reply }) {
                Ok(()) => return rx.await.unwrap_or(false),
                Err(back) => {
                    // Whatever `wait` says: nothing of the run may reach the store before
                    // its row.
                    match committed.wait_for(Option::is_some).await {
                        Ok(outcome) if *outcome == Some(true) => {}
                        _ => return false,
                    }
                    back.update
                }
            }
        }
    };
    if !wait {
        let _ = shared.writer.send(WriteRequest {
            update,
            reply: None,
        });
        return true;
    }
    let (tx, rx) = oneshot::channel();
    if shared
        .writer
        .send(WriteRequest {
            update,
            reply: Some(tx),
        })
        .is_err()
    {
        return false;
    }
    rx.await.unwrap_or(false)
}

/// How a step ended.
enum NodeEnd {
    Ok,
    /// Failed; `key` is the step that failed (a child for a body failure).
    Failed {
        failure: StepFailure,
        key: String,
        tolerated: bool,
    },
    /// Aborted, or the lease is gone: stop without writing.
    Stop,
}

/// Where a step's result lives in `result.steps`.
#[derive(Clone, Copy, Debug)]
enum Loc {
    Top(usize),
    Child {
        top: usize,
        child: usize,
    },
    Iter {
        top: usize,
        iter: usize,
        child: usize,
    },
}

/// A fresh row's snapshot and state as the enqueue built them, so that a run started from
/// the enqueue does not parse back the JSON that was just written from them.
pub(crate) struct Parsed {
    pub(crate) snap: Snapshot,
    pub(crate) state: ExecState,
}

struct Run {
    shared: Arc<Shared>,
    row: ExecutionRow,
    lease_owner: String,
    snap: Arc<Snapshot>,
    state: ExecState,
    cancel: CancellationToken,
    roots: Map<String, Value>,
    steps_seen: Vec<StepRef>,
    prev: Option<Value>,
    results: Vec<Value>,
    loop_ctx: Option<LoopCtx>,
    /// Last step's failure class (health).
    failure_class: Option<FailureClass>,
    /// `seq` of the next screenshot (§5.18).
    next_seq: i64,
    /// Screenshots captured for `captureScreenshots` whose bytes are being stored; a record
    /// joins the state once its bytes are stored (`None` = capture lost).
    pending_shots: JoinSet<Option<Screenshot>>,
    /// Effects of steps that ran but are not committed yet; the next write commits them
    /// with the state and starts them (see [`Staged`]).
    staged: Vec<Staged>,
    /// Started before its row committed: the first write goes back to the enqueue.
    early: Option<Early>,
    /// Params that pre-resolution resolved and validated and that cannot change during the
    /// run (no late token, no `now`), by step key: the step takes them instead of resolving
    /// again.
    pre_resolved: HashMap<String, Value>,
}

impl Run {
    /// The run of a row, or the write that fails a row whose snapshot cannot be read.
    /// `parsed`, when given, is what the row's `snapshot` and `state` hold.
    fn new(
        shared: Arc<Shared>,
        row: ExecutionRow,
        parsed: Option<Parsed>,
        cancel: CancellationToken,
    ) -> Result<Run, Box<ExecUpdate>> {
        let lease_owner = row.lease_owner.clone().unwrap_or_default();
        let (parsed_snap, state) = match parsed {
            Some(p) => (Some(p.snap), p.state),
            None => (None, ExecState::parse(&row.state)),
        };
        let snap: Snapshot =
            match parsed_snap.map_or_else(|| serde_json::from_str(&row.snapshot), Ok) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(id = %row.id, error = %e, "unreadable execution snapshot");
                    return Err(Box::new(ExecUpdate {
                        id: row.id,
                        lease_owner,
                        attempt: row.attempt,
                        status: Some("failed".into()),
                        error: Some(format!("transient: unreadable snapshot: {e}")),
                        finished_at: Some(Ts::now().millis()),
                        clear_started: false,
                        state: row.state.clone(),
                        search_text: Some(row.search_text.clone()),
                        deliveries: Vec::new(),
                    }));
                }
            };
        let mut roots = Map::new();
        roots.insert("event".into(), snap.event.clone());
        roots.insert("trigger".into(), snap.trigger.clone());
        roots.insert("flow".into(), snap.flow.clone());
        roots.insert(
            "execution".into(),
            json!({
                "id": row.id,
                "kind": row.kind,
                "deviceId": row.device_id,
                "invocationId": row.invocation_id,
                "eventId": row.event_id,
                "startedAt": row.started_at.and_then(Ts::from_millis),
                "attempt": row.attempt,
                "device": snap.device.as_ref().map(|d| json!({
                    "id": d.id, "name": d.name, "provider": d.provider, "address": d.address,
                })),
            }),
        );
        roots.insert("schedule".into(), snap.schedule.clone());
        roots.insert("source".into(), Value::String(snap.source.clone()));
        roots.insert("chainDepth".into(), json!(snap.chain_depth));
        roots.insert("owner".into(), json!({ "id": row.owner_id }));
        roots.insert(
            "user".into(),
            snap.user_id
                .as_ref()
                .map(|u| json!({ "id": u }))
                .unwrap_or(Value::Null),
        );
        roots.insert("now".into(), Value::String(Ts::now().to_rfc3339()));
        Ok(Run {
            shared,
            lease_owner,
            snap: Arc::new(snap),
            state,
            cancel,
            roots,
            steps_seen: Vec::new(),
            prev: None,
            results: Vec::new(),
            loop_ctx: None,
            failure_class: None,
            next_seq: 0,
            pending_shots: JoinSet::new(),
            staged: Vec::new(),
            early: None,
            pre_resolved: HashMap::new(),
            row,
        })
        .map(|mut run| {
            run.next_seq = run
                .state
                .screenshots
                .iter()
                .map(|s| s.seq + 1)
                .max()
                .unwrap_or(0);
            run
        })
    }

    fn is_live(&self) -> bool {
        self.row.kind == "live"
    }

    /// Sends the current state; with `wait`, returns whether it applied (false = stop).
    async fn save(&mut self, wait: bool) -> bool {
        while let Some(done) = self.pending_shots.try_join_next() {
            self.add_screenshot(done.ok().flatten());
        }
        let update = ExecUpdate {
            id: self.row.id,
            lease_owner: self.lease_owner.clone(),
            attempt: self.row.attempt,
            status: None,
            error: None,
            finished_at: None,
            clear_started: false,
            state: self.state.to_json(),
            search_text: None,
            deliveries: Vec::new(),
        };
        self.write(update, wait).await
    }

    /// Queues a write with the staged effects; with `wait` (always when effects are staged),
    /// returns whether it applied and starts the effects if it did.
    async fn write(&mut self, mut update: ExecUpdate, wait: bool) -> bool {
        let staged = std::mem::take(&mut self.staged);
        if !staged.is_empty() {
            update.deliveries = staged
                .iter()
                .filter_map(|s| s.0.downcast_ref::<StagedDelivery>())
                .map(|d| d.row.clone())
                .collect();
            let applied = send_write(&self.shared, &mut self.early, update, true).await;
            if applied && let Some(service) = self.shared.executor.webhooks() {
                for s in staged {
                    service.start_staged(s);
                }
            }
            return applied;
        }
        send_write(&self.shared, &mut self.early, update, wait).await
    }

    /// Writes the terminal status; returns whether this write won.
    async fn finish(&mut self, status: &str, error: Option<String>, clear_started: bool) -> bool {
        if let Some(p) = &mut self.state.progress {
            p.current_index = None;
        }
        // Every captured screenshot is stored (and listed) before the row is terminal.
        while let Some(done) = self.pending_shots.join_next().await {
            self.add_screenshot(done.ok().flatten());
        }
        artifacts::add_deliveries(
            &self.shared.registry,
            &self.row.owner_id,
            self.row.flow_id,
            &mut self.state,
            Ts::now(),
        );
        let update = ExecUpdate {
            id: self.row.id,
            lease_owner: self.lease_owner.clone(),
            attempt: self.row.attempt,
            status: Some(status.to_string()),
            search_text: Some(execution_search_text(
                self.row.flow_name.as_deref(),
                self.row.trigger_name.as_deref(),
                error.as_deref(),
            )),
            error,
            finished_at: Some(Ts::now().millis()),
            clear_started,
            state: self.state.to_json(),
            deliveries: Vec::new(),
        };
        let finished_at = update.finished_at;
        let won = self.write(update, true).await;
        if won {
            let started = if clear_started {
                None
            } else {
                self.row.started_at
            };
            crate::telemetry::finished(&self.row.kind, status, started, finished_at);
        }
        won
    }

    async fn skip_at_claim(&mut self, code: &str) {
        self.state = ExecState::default();
        self.finish("skipped", Some(code.to_string()), true).await;
    }

    /// Runs the row to a terminal status (or stops when aborted / fenced out).
    async fn execute(&mut self) {
        let fresh = self.state.result.is_none();
        if fresh {
            if let Some(code) = self.claim_check() {
                self.skip_at_claim(code).await;
                return;
            }
            if let Err(error) = self.pre_resolve() {
                for s in self
                    .state
                    .progress
                    .iter_mut()
                    .flat_map(|p| p.steps.iter_mut())
                {
                    s.status = step_status::SKIPPED.into();
                }
                if self.finish("invalid", Some(error), false).await && self.is_live() {
                    self.record_health(Outcome::Failure {
                        class: "invalid_config",
                    })
                    .await;
                    crate::webhooks::run_finished(&self.shared, &self.row, "invalid").await;
                }
                return;
            }
            self.state.result = Some(ExecutionResult {
                steps: self
                    .snap
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(i, s)| pending_result(i, s))
                    .collect(),
            });
        } else {
            self.restore_records();
        }

        let snap = self.snap.clone();
        let total = snap.steps.len();
        let mut failed: Option<(usize, String, StepFailure)> = None;
        for (i, step) in snap.steps.iter().enumerate() {
            if self.step_result(Loc::Top(i)).status == step_status::SUCCESS
                || (self.step_result(Loc::Top(i)).status == step_status::FAILED
                    && step.continue_on_error)
            {
                continue;
            }
            if failed.is_some() {
                self.set_status(Loc::Top(i), step_status::SKIPPED);
                continue;
            }
            if self.cancel.is_cancelled() {
                return;
            }
            match self.exec_node(step, Loc::Top(i)).await {
                NodeEnd::Stop => return,
                NodeEnd::Ok => {}
                NodeEnd::Failed {
                    failure,
                    key,
                    tolerated,
                } => {
                    self.failure_class = Some(failure.class);
                    if !tolerated {
                        failed = Some((i, key, failure));
                    }
                }
            }
            // Commit the step before the next one starts (a committed step never re-runs),
            // unless the next one only stages its effect too: steps whose effects are held
            // until their commit may run again after a crash without anyone noticing, so a
            // chain of them commits once, with all its effects, when it ends.
            let next_stages = snap
                .steps
                .get(i + 1)
                .is_some_and(|next| stages_only(&next.method) && stages_only(&step.method));
            if i + 1 < total && failed.is_none() && !next_stages && !self.save(true).await {
                return;
            }
        }
        if self.cancel.is_cancelled() {
            return;
        }
        match failed {
            None => {
                if self.finish("success", None, false).await && self.is_live() {
                    self.record_health(Outcome::Success).await;
                    crate::webhooks::run_finished(&self.shared, &self.row, "success").await;
                }
            }
            Some((index, key, failure)) => {
                let error = format!("{key}: {failure}");
                if self.finish("failed", Some(error), false).await && self.is_live() {
                    self.record_health(Outcome::Failure {
                        class: failure.class.as_str(),
                    })
                    .await;
                    crate::webhooks::run_finished(&self.shared, &self.row, "failed").await;
                    artifacts::open_repair(&self.shared, &self.row, index as i64, &key).await;
                }
            }
        }
    }

    async fn record_health(&self, outcome: Outcome<'_>) {
        if let Err(e) = health::record(
            &self.shared.registry,
            &self.row.owner_id,
            self.row.flow_id,
            outcome,
            self.shared.config.failure_threshold,
        )
        .await
        {
            tracing::error!(error = %e, flow = %self.row.flow_id, "health update failed");
        }
    }

    /// Claim-time re-check (§5.7): a reason to skip the row, if any.
    fn claim_check(&self) -> Option<&'static str> {
        let defs = self.shared.registry.read();
        let owner = &self.row.owner_id;
        let Some(flow) = defs.flow_any(owner, self.row.flow_id) else {
            return Some("archived");
        };
        let flow = &flow.flow;
        if flow.is_archived() {
            return Some("archived");
        }
        if let Some(d) = self.row.device_id
            && defs.device(owner, d).is_none()
        {
            return Some("no_device");
        }
        if self.is_live() {
            if flow.status == "blocked" {
                return Some("blocked");
            }
            let automatic = matches!(self.snap.source.as_str(), "event" | "schedule" | "custom");
            if automatic && !flow.enabled {
                return Some("disabled");
            }
        }
        None
    }

    /// Pre-resolution (§5.10): everything that does not depend on step outputs or loop
    /// variables must resolve (and, without late references, validate) before step one.
    fn pre_resolve(&mut self) -> Result<(), String> {
        let scope = TemplateScope {
            version: self.snap.template_version,
            roots: &self.roots,
            steps: &[],
            prev: None,
            results: &[],
            loop_ctx: None,
            late: false,
        };
        fn walk(
            steps: &[SnapStep],
            scope: &TemplateScope,
            fixed: &mut HashMap<String, Value>,
        ) -> Result<(), String> {
            for s in steps {
                let merged = s.merged_params();
                let resolved = templates::resolve(&merged, scope)
                    .map_err(|e| format!("template_error: {}: {}", s.key, e.message()))?;
                let dependence = templates::dependence(&merged, scope.version);
                if !dependence.late
                    && let Some(entry) = catalog::by_method(&s.method)
                {
                    if let Err(errs) =
                        params::validate_resolved(entry, &resolved, &format!("{}.params", s.key))
                    {
                        return Err(format!("invalid_params: {}", join_errors(&errs)));
                    }
                    // Resolved and validated once: the step uses these params as they are.
                    if !dependence.moving {
                        fixed.insert(s.key.clone(), resolved);
                    }
                }
                walk(&s.children, scope, fixed)?;
            }
            Ok(())
        }
        let mut fixed = HashMap::new();
        walk(&self.snap.steps, &scope, &mut fixed)?;
        self.pre_resolved = fixed;
        Ok(())
    }

    /// After a reclaim: rebuild the template records of the steps that already ran.
    fn restore_records(&mut self) {
        let steps = self
            .state
            .result
            .as_ref()
            .map(|r| r.steps.clone())
            .unwrap_or_default();
        for (i, s) in steps.iter().enumerate() {
            let record = s.record();
            if matches!(s.status.as_str(), "success" | "failed") {
                self.remember(i, Loc::Top(i), s, record);
            } else {
                self.results.push(record);
            }
        }
    }

    fn remember(&mut self, _i: usize, loc: Loc, s: &StepResult, record: Value) {
        self.steps_seen.push(StepRef {
            key: s.key.clone(),
            slug: keys::slug(&s.name),
            record: record.clone(),
        });
        if let Loc::Top(i) = loc {
            if self.results.len() <= i {
                self.results.resize(i + 1, Value::Null);
            }
            self.results[i] = record.clone();
        }
        self.prev = Some(record);
    }

    fn step_result(&mut self, loc: Loc) -> &mut StepResult {
        let steps = &mut self
            .state
            .result
            .as_mut()
            .expect("result initialised")
            .steps;
        match loc {
            Loc::Top(i) => &mut steps[i],
            Loc::Child { top, child } => {
                &mut steps[top].children.as_mut().expect("children")[child]
            }
            Loc::Iter { top, iter, child } => {
                &mut steps[top].iterations.as_mut().expect("iterations")[iter][child]
            }
        }
    }

    fn progress_step(&mut self, i: usize) -> Option<&mut flowrun_core::execution::ProgressStep> {
        self.state
            .progress
            .as_mut()
            .and_then(|p| p.steps.get_mut(i))
    }

    fn set_status(&mut self, loc: Loc, status: &str) {
        self.step_result(loc).status = status.to_string();
        if let Loc::Top(i) = loc
            && let Some(p) = self.progress_step(i)
        {
            p.status = status.to_string();
        }
    }

    fn scope(&self) -> TemplateScope<'_> {
        TemplateScope {
            version: self.snap.template_version,
            roots: &self.roots,
            steps: &self.steps_seen,
            prev: self.prev.as_ref(),
            results: &self.results,
            loop_ctx: self.loop_ctx.as_ref(),
            late: true,
        }
    }

    /// Runs one step (and its body); records its result.
    fn exec_node<'a>(
        &'a mut self,
        step: &'a SnapStep,
        loc: Loc,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = NodeEnd> + Send + 'a>> {
        Box::pin(async move {
            let now = Ts::now();
            let attempt = self.row.attempt as i64;
            // A flow.wait interrupted by a lost worker waits only for the remainder.
            let earlier_start = {
                let r = self.step_result(loc);
                (r.status == step_status::RUNNING && r.attempt < attempt)
                    .then_some(r.started_at)
                    .flatten()
            };
            {
                let r = self.step_result(loc);
                r.status = step_status::RUNNING.into();
                r.started_at = Some(now);
                r.finished_at = None;
                r.attempt = attempt;
                r.error = None;
                r.body = None;
            }
            if let Loc::Top(i) = loc
                && let Some(p) = &mut self.state.progress
            {
                p.current_index = Some(i as i64);
                if let Some(ps) = p.steps.get_mut(i) {
                    ps.status = step_status::RUNNING.into();
                    ps.started_at = Some(now);
                    ps.finished_at = None;
                    ps.attempt = attempt;
                }
            }
            self.roots
                .insert("now".into(), Value::String(now.to_rfc3339()));
            // `running` is worth a write for a step that takes time; `webhooks.send` only
            // stages its delivery, which commits with the step's result microseconds later.
            if step.method != "webhooks.send" {
                self.save(false).await;
            }

            let outcome = match self.resolve_params(step) {
                Err(f) => Err(f),
                Ok(resolved) => {
                    self.step_result(loc).params = Some(resolved.clone());
                    match step.method.as_str() {
                        "flow.wait" => self.wait(&resolved, earlier_start.unwrap_or(now)).await,
                        "flow.if" => self.run_if(step, loc, &resolved).await,
                        "flow.for_each" => self.run_for_each(step, loc, &resolved).await,
                        _ => self.call_executor(step, &resolved).await,
                    }
                }
            };
            if self.cancel.is_cancelled() {
                return NodeEnd::Stop;
            }
            let outcome = match outcome {
                Ok(StepBody::Done(out)) => self.store_step_images(step, loc, out).await,
                other => other,
            };
            let end = Ts::now();
            let (end_state, body_failure) = match outcome {
                Ok(StepBody::Done(mut out)) => {
                    if let Some(staged) = out.staged.take() {
                        self.staged.push(staged);
                    }
                    let r = self.step_result(loc);
                    r.status = step_status::SUCCESS.into();
                    r.body = Some(out.body);
                    r.session_id = out.session_id;
                    r.verdict = out.verdict;
                    (NodeEnd::Ok, None)
                }
                Ok(StepBody::Stop) => return NodeEnd::Stop,
                Ok(StepBody::BodyFailed { key, failure, body }) => {
                    let r = self.step_result(loc);
                    r.status = step_status::FAILED.into();
                    r.body = body;
                    r.error = Some(failure.to_string());
                    let tolerated = step.continue_on_error;
                    (
                        NodeEnd::Failed {
                            failure: failure.clone(),
                            key,
                            tolerated,
                        },
                        Some(failure),
                    )
                }
                Err(failure) => {
                    let r = self.step_result(loc);
                    r.status = step_status::FAILED.into();
                    r.error = Some(failure.to_string());
                    r.session_id = failure.session_id.clone();
                    (
                        NodeEnd::Failed {
                            failure: failure.clone(),
                            key: step.key.clone(),
                            tolerated: step.continue_on_error,
                        },
                        Some(failure),
                    )
                }
            };
            let _ = body_failure;
            let (record, status, session) = {
                let r = self.step_result(loc);
                r.finished_at = Some(end);
                (r.record(), r.status.clone(), r.session_id.clone())
            };
            if let Loc::Top(i) = loc
                && let Some(ps) = self.progress_step(i)
            {
                ps.status = status;
                ps.finished_at = Some(end);
                ps.session_id = session;
            }
            let snapshot_of_result = self.step_result(loc).clone();
            let i = match loc {
                Loc::Top(i) => i,
                Loc::Child { top, .. } | Loc::Iter { top, .. } => top,
            };
            self.remember(i, loc, &snapshot_of_result, record);
            if self.snap.capture_screenshots
                && catalog::needs_device(&step.method, &step.service)
                && !self.cancel.is_cancelled()
            {
                // The step's completion commits while the screen is captured.
                self.save(false).await;
                self.capture_after(step, loc).await;
            }
            end_state
        })
    }

    fn shot_place(&self, step: &SnapStep, loc: Loc) -> ShotPlace {
        let (step_index, iteration_index) = match loc {
            Loc::Top(i) | Loc::Child { top: i, .. } => (i as i64, -1),
            Loc::Iter { top, iter, .. } => (top as i64, iter as i64),
        };
        ShotPlace {
            step_index,
            iteration_index,
            step_name: step.name.clone(),
            source: if step.method == "agent.run" {
                "agent"
            } else {
                "task"
            },
        }
    }

    fn add_screenshot(&mut self, shot: Option<Screenshot>) {
        if let Some(shot) = shot {
            let shots = &mut self.state.screenshots;
            let at = shots.partition_point(|s| s.seq < shot.seq);
            shots.insert(at, shot);
        }
    }

    /// Stores the images a step returned before its result is recorded (its output names
    /// them); `devices.screenshot` fails when its image cannot be stored.
    async fn store_step_images(
        &mut self,
        step: &SnapStep,
        loc: Loc,
        mut out: StepOutput,
    ) -> Result<StepBody, StepFailure> {
        let is_screenshot_step = step.method == "devices.screenshot";
        if is_screenshot_step && out.images.is_empty() {
            return Err(StepFailure::new(
                FailureClass::Transient,
                "the device returned no screenshot",
            ));
        }
        let mut first_id = None;
        for image in std::mem::take(&mut out.images) {
            let seq = self.next_seq;
            self.next_seq += 1;
            let stored = artifacts::store_screenshot(
                &self.shared.store,
                &self.row.owner_id,
                self.row.id,
                seq,
                self.shot_place(step, loc),
                image,
                Ts::now(),
            )
            .await;
            match stored {
                Ok(shot) => {
                    first_id.get_or_insert_with(|| shot.id.clone());
                    self.add_screenshot(Some(shot));
                }
                Err(e) if is_screenshot_step => {
                    return Err(StepFailure::new(
                        FailureClass::Transient,
                        format!("storing the screenshot failed: {e}"),
                    ));
                }
                Err(e) => tracing::warn!(error = %e, id = %self.row.id, "storing an image failed"),
            }
        }
        if is_screenshot_step && let (Some(id), Value::Object(body)) = (first_id, &mut out.body) {
            body.insert("screenshotId".into(), Value::String(id));
        }
        Ok(StepBody::Done(out))
    }

    /// `captureScreenshots` (§5.18): one more screenshot after a device step. The capture
    /// precedes the next step (it shows this step's screen); the bytes are stored in the
    /// background. A failure here never fails the step.
    async fn capture_after(&mut self, step: &SnapStep, loc: Loc) {
        let Some(device) = self.snap.device.clone() else {
            return;
        };
        let captured_at = Ts::now();
        let capture = self
            .shared
            .executor
            .capture_screenshot(&device, &self.cancel);
        let image = match tokio::time::timeout(CAPTURE_TIMEOUT, capture).await {
            Ok(Ok(Some(image))) => image,
            Ok(Ok(None)) => return,
            Ok(Err(f)) => {
                tracing::warn!(id = %self.row.id, step = %step.key, error = %f, "screenshot capture failed");
                return;
            }
            Err(_) => {
                tracing::warn!(id = %self.row.id, step = %step.key, "screenshot capture timed out");
                return;
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let store = self.shared.store.clone();
        let owner = self.row.owner_id.clone();
        let execution_id = self.row.id;
        let place = self.shot_place(step, loc);
        self.pending_shots.spawn(async move {
            artifacts::store_screenshot(
                &store,
                &owner,
                execution_id,
                seq,
                place,
                image,
                captured_at,
            )
            .await
            .inspect_err(
                |e| tracing::warn!(error = %e, id = %execution_id, "storing a screenshot failed"),
            )
            .ok()
        });
    }

    fn resolve_params(&mut self, step: &SnapStep) -> Result<Value, StepFailure> {
        if let Some(resolved) = self.pre_resolved.remove(&step.key) {
            return Ok(resolved);
        }
        let merged = step.merged_params();
        let resolved = templates::resolve(&merged, &self.scope()).map_err(|e| {
            StepFailure::new(
                FailureClass::InvalidConfig,
                format!("template_error: {}", e.message()),
            )
        })?;
        let Some(entry) = catalog::by_method(&step.method) else {
            return Err(StepFailure::new(
                FailureClass::InvalidConfig,
                format!("unknown method {}", step.method),
            ));
        };
        params::validate_resolved(entry, &resolved, "params").map_err(|errs| {
            StepFailure::new(
                FailureClass::InvalidConfig,
                format!("invalid_params: {}", join_errors(&errs)),
            )
        })?;
        Ok(resolved)
    }

    async fn wait(&self, params: &Value, started: Ts) -> Result<StepBody, StepFailure> {
        let seconds = params.get("seconds").and_then(Value::as_f64).unwrap_or(0.0);
        let end_ms = started.millis() + (seconds * 1000.0).round() as i64;
        let left = (end_ms - Ts::now().millis()).max(0) as u64;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(left)) => {}
            _ = self.cancel.cancelled() => return Ok(StepBody::Stop),
        }
        Ok(StepBody::Done(StepOutput {
            body: json!({ "waitedSeconds": seconds }),
            ..Default::default()
        }))
    }

    async fn run_if(
        &mut self,
        step: &SnapStep,
        loc: Loc,
        params: &Value,
    ) -> Result<StepBody, StepFailure> {
        let top = match loc {
            Loc::Top(i) => i,
            // Nesting is two levels: a child `flow.if` has no body.
            _ => usize::MAX,
        };
        let condition = params.get("condition").cloned().unwrap_or(Value::Null);
        let result = self.evaluate_condition(&condition);
        if top == usize::MAX {
            return Ok(StepBody::Done(StepOutput {
                body: json!({ "result": result }),
                ..Default::default()
            }));
        }
        self.step_result(loc).children = Some(
            step.children
                .iter()
                .enumerate()
                .map(|(i, c)| pending_result(i, c))
                .collect(),
        );
        let body = json!({ "result": result });
        if !result {
            for c in self.step_result(loc).children.iter_mut().flatten() {
                c.status = step_status::SKIPPED.into();
            }
            return Ok(StepBody::Done(StepOutput {
                body,
                ..Default::default()
            }));
        }
        let locs: Vec<Loc> = (0..step.children.len())
            .map(|child| Loc::Child { top, child })
            .collect();
        self.run_body(&step.children, &locs, body).await
    }

    async fn run_for_each(
        &mut self,
        step: &SnapStep,
        loc: Loc,
        params: &Value,
    ) -> Result<StepBody, StepFailure> {
        let Some(items) = params.get("items").and_then(Value::as_array).cloned() else {
            return Err(StepFailure::new(
                FailureClass::InvalidConfig,
                "invalid_params: items must be an array",
            ));
        };
        let max = params
            .get("maxIterations")
            .and_then(Value::as_u64)
            .unwrap_or(100) as usize;
        let item_variable = params
            .get("itemVariable")
            .and_then(Value::as_str)
            .unwrap_or("item")
            .to_string();
        let truncated = items.len() > max;
        let items: Vec<Value> = items.into_iter().take(max).collect();
        let Loc::Top(top) = loc else {
            return Ok(StepBody::Done(StepOutput {
                body: json!({ "count": items.len(), "truncated": truncated, "iterations": [] }),
                ..Default::default()
            }));
        };
        self.step_result(loc).iterations = Some(Vec::new());
        let mut bodies = Vec::new();
        let n = items.len();
        for (index, item) in items.into_iter().enumerate() {
            if self.cancel.is_cancelled() {
                return Ok(StepBody::Stop);
            }
            self.step_result(loc)
                .iterations
                .as_mut()
                .expect("iterations")
                .push(
                    step.children
                        .iter()
                        .enumerate()
                        .map(|(i, c)| pending_result(i, c))
                        .collect(),
                );
            self.loop_ctx = Some(LoopCtx {
                item,
                index,
                first: index == 0,
                last: index + 1 == n,
                item_variable: item_variable.clone(),
            });
            let locs: Vec<Loc> = (0..step.children.len())
                .map(|child| Loc::Iter {
                    top,
                    iter: index,
                    child,
                })
                .collect();
            let end = self.run_body(&step.children, &locs, Value::Null).await;
            self.loop_ctx = None;
            let iteration: Map<String, Value> = self
                .step_result(loc)
                .iterations
                .as_ref()
                .expect("iterations")[index]
                .iter()
                .map(|r| (r.key.clone(), r.body.clone().unwrap_or(Value::Null)))
                .collect();
            bodies.push(Value::Object(iteration));
            match end {
                Ok(StepBody::Done(_)) => {}
                Ok(StepBody::BodyFailed { key, failure, .. }) => {
                    return Ok(StepBody::BodyFailed {
                        key,
                        failure,
                        body: Some(
                            json!({ "count": index + 1, "truncated": truncated, "iterations": bodies }),
                        ),
                    });
                }
                other => return other,
            }
        }
        Ok(StepBody::Done(StepOutput {
            body: json!({ "count": n, "truncated": truncated, "iterations": bodies }),
            ..Default::default()
        }))
    }

    /// Runs a body (children in order); a non-tolerated failure skips the rest and fails the
    /// parent with the child's failure.
    async fn run_body(
        &mut self,
        children: &[SnapStep],
        locs: &[Loc],
        body: Value,
    ) -> Result<StepBody, StepFailure> {
        let mut failed: Option<(String, StepFailure)> = None;
        for (child, loc) in children.iter().zip(locs) {
            if failed.is_some() {
                self.step_result(*loc).status = step_status::SKIPPED.into();
                continue;
            }
            if self.cancel.is_cancelled() {
                return Ok(StepBody::Stop);
            }
            match self.exec_node(child, *loc).await {
                NodeEnd::Stop => return Ok(StepBody::Stop),
                NodeEnd::Ok => {}
                NodeEnd::Failed {
                    failure,
                    key,
                    tolerated,
                } => {
                    self.failure_class = Some(failure.class);
                    if !tolerated {
                        failed = Some((key, failure));
                    }
                }
            }
            // A child's staged effect commits (and starts) here, before the next child.
            if !self.save(false).await {
                return Ok(StepBody::Stop);
            }
        }
        Ok(match failed {
            None => StepBody::Done(StepOutput {
                body,
                ..Default::default()
            }),
            Some((key, failure)) => StepBody::BodyFailed {
                key,
                failure,
                body: None,
            },
        })
    }

    /// `flow.if` (§5.2): a path whose first segment is a template root resolves in the
    /// template context; any other path resolves under `event.payload`.
    fn evaluate_condition(&self, condition: &Value) -> bool {
        let mut paths = Vec::new();
        collect_paths(condition, &mut paths);
        let scope = self.scope();
        let roots: Vec<String> = templates::template_context(scope.version)["roots"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let is_root = |first: &str| {
            roots.iter().any(|r| r == first)
                || (scope.version < 3 && first == "payload")
                || self
                    .loop_ctx
                    .as_ref()
                    .is_some_and(|l| l.item_variable == first)
        };
        let values: HashMap<String, Value> = paths
            .into_iter()
            .filter_map(|p| {
                let first = conditions::parse_path(&p)?.into_iter().next()?;
                let token = if is_root(&first) {
                    format!("{{{{{p}}}}}")
                } else {
                    format!("{{{{event.payload.{p}}}}}")
                };
                templates::resolve_string(&token, &scope)
                    .ok()
                    .map(|v| (p, v))
            })
            .collect();
        conditions::evaluate(condition, &|p| values.get(p))
    }

    async fn call_executor(
        &self,
        step: &SnapStep,
        params: &Value,
    ) -> Result<StepBody, StepFailure> {
        let call = StepCall {
            owner_id: &self.row.owner_id,
            execution_id: self.row.id,
            flow_id: self.row.flow_id,
            step_key: &step.key,
            method: &step.method,
            params,
            device: self.snap.device.as_ref(),
        };
        let limit = hard_timeout(&step.method, params);
        let fut = self.shared.executor.execute(call, &self.cancel);
        // Whatever the step did, its device's state is worth a fresh look (§5.12).
        let _probe_after = ProbeAfter(
            self.snap
                .device
                .as_ref()
                .filter(|_| catalog::needs_device(&step.method, &step.service))
                .map(|d| (d.id, &self.shared.probes)),
        );
        tokio::select! {
            r = tokio::time::timeout(limit, fut) => match r {
                Ok(Ok(out)) => Ok(StepBody::Done(out)),
                Ok(Err(f)) => Err(f),
                Err(_) => Err(StepFailure::new(
                    FailureClass::Transient,
                    format!("timeout after {} s", limit.as_secs()),
                )),
            },
            _ = self.cancel.cancelled() => Ok(StepBody::Stop),
        }
    }
}

/// Requests a probe of the step's device when the step ends (however it ends).
struct ProbeAfter<'a>(Option<(Uuid, &'a tokio::sync::mpsc::UnboundedSender<Uuid>)>);

impl Drop for ProbeAfter<'_> {
    fn drop(&mut self) {
        if let Some((id, probes)) = self.0 {
            let _ = probes.send(id);
        }
    }
}

/// A step's own outcome before it is recorded.
enum StepBody {
    Done(StepOutput),
    /// A body step failed (not tolerated): the parent fails with it.
    BodyFailed {
        key: String,
        failure: StepFailure,
        body: Option<Value>,
    },
    Stop,
}

fn pending_result(index: usize, s: &SnapStep) -> StepResult {
    StepResult {
        index: index as i64,
        key: s.key.clone(),
        name: s.name.clone(),
        service: s.service.clone(),
        method: s.method.clone(),
        status: step_status::PENDING.into(),
        started_at: None,
        finished_at: None,
        attempt: 0,
        params: None,
        body: None,
        error: None,
        verdict: None,
        session_id: None,
        children: None,
        iterations: None,
    }
}

fn join_errors(errs: &flowrun_core::FieldErrors) -> String {
    errs.0
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

fn collect_paths(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(m) => {
            for k in ["field", "path"] {
                if let Some(Value::String(p)) = m.get(k) {
                    out.push(p.clone());
                }
            }
            for k in ["all", "any"] {
                if let Some(Value::Array(items)) = m.get(k) {
                    for i in items {
                        collect_paths(i, out);
                    }
                }
            }
            if let Some(inner) = m.get("not") {
                collect_paths(inner, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_paths(i, out)),
        _ => {}
    }
}

/// Whether a method's only effect outside the run is staged (see [`Staged`]): it takes no
/// time and reaches the world only after its step commits.
fn stages_only(method: &str) -> bool {
    method == "webhooks.send"
}

/// Longest wait for a `captureScreenshots` capture.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(15);

/// Hard timeouts per method (§5.9).
fn hard_timeout(method: &str, params: &Value) -> Duration {
    let secs =
        |name: &str, default: u64| params.get(name).and_then(Value::as_u64).unwrap_or(default);
    Duration::from_secs(match method {
        "webhooks.send" => 10,
        "devices.wait_for_text" => secs("timeoutSeconds", 30) + 10,
        "tasks.run" => secs("executionTimeout", 900) + 60,
        "agent.run" => secs("timeoutSeconds", 900) + 60,
        _ => 60,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(id: u128, attempt: i32, status: Option<&str>, state: &str) -> ExecUpdate {
        ExecUpdate {
            id: Uuid::from_u128(id),
            lease_owner: "node".into(),
            attempt,
            status: status.map(str::to_string),
            error: None,
            finished_at: None,
            clear_started: false,
            state: state.into(),
            search_text: None,
            deliveries: Vec::new(),
        }
    }

    #[test]
    fn only_unawaited_progress_writes_with_a_later_write_are_dropped() {
        let (tx, _rx) = oneshot::channel();
        let mut updates = vec![
            update(1, 0, None, "1a"), // superseded by 1b: dropped
            update(2, 0, None, "2a"), // awaited: kept
            update(1, 0, None, "1b"), // superseded by the terminal write: dropped
            update(3, 0, None, "3a"), // other attempt than 3b: kept
            update(2, 0, None, "2b"), // last of its run: kept
            update(1, 0, Some("success"), "1c"),
            update(3, 1, None, "3b"),
        ];
        let mut replies: Vec<Option<oneshot::Sender<bool>>> =
            vec![None, Some(tx), None, None, None, None, None];
        drop_superseded(&mut updates, &mut replies);
        let states: Vec<&str> = updates.iter().map(|u| u.state.as_str()).collect();
        assert_eq!(states, ["2a", "3a", "2b", "1c", "3b"]);
        assert!(replies[0].is_some() && replies[1..].iter().all(Option::is_none));
    }
}
