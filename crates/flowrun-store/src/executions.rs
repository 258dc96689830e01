//! Executions: the durable queue and the run history in one table (§5.7).
//!
//! The execution row *is* the queue item: `pending` rows are claimed by a node with a lease
//! (`lease_owner` + `lease_expires_at`), every later write by that node is fenced by
//! `(status = 'running', lease_owner, attempt)`, and a terminal status is written by a
//! compare-and-set from a non-terminal one, so it is written once and never overwritten.
//!
//! A device runs at most one execution at a time: claims skip pending rows whose device has a
//! `running` row (a unique partial index backs this up) and take at most one row per device,
//! the oldest, so waiting runs of a device keep their order.
//!
//! JSON columns are opaque to the store: `snapshot` (what the engine needs to run the row,
//! fixed at enqueue) and `state` (progress, step results, recordings, screenshots …, rewritten
//! as the run advances). `search_text` is the case-folded `flowName`, `triggerName` and
//! `error` joined by `\n`, so `search` is an `instr`/`strpos` on one column in both backends.

use async_trait::async_trait;
use uuid::Uuid;

use crate::{DocWrite, Result};

/// Statuses a row can still leave.
pub const NON_TERMINAL: [&str; 2] = ["pending", "running"];
/// Every status, in the order `byStatus` lists them.
pub const STATUSES: [&str; 7] = [
    "pending",
    "running",
    "success",
    "failed",
    "cancelled",
    "skipped",
    "invalid",
];

pub fn is_terminal(status: &str) -> bool {
    !NON_TERMINAL.contains(&status)
}

/// One stored execution, every column.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutionRow {
    pub id: Uuid,
    pub owner_id: String,
    pub flow_id: Uuid,
    pub trigger_id: Uuid,
    /// `live` | `verification`
    pub kind: String,
    pub status: String,
    pub device_id: Option<Uuid>,
    pub invocation_id: Option<String>,
    pub event_id: Option<String>,
    pub error: Option<String>,
    pub flow_name: Option<String>,
    pub trigger_name: Option<String>,
    pub created_by: Option<String>,
    /// Enqueue time (ms since the epoch); FIFO order of claims is `(enqueued_at, id)`.
    pub enqueued_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// 0-based; incremented each time an expired lease is reclaimed.
    pub attempt: i32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    /// §5.14 graph hash (hex SHA-256) of the flow at enqueue.
    pub graph_hash: Option<String>,
    /// JSON, fixed at enqueue.
    pub snapshot: String,
    /// JSON, rewritten as the run advances.
    pub state: String,
    /// Folded `flowName\ntriggerName\nerror`.
    pub search_text: String,
}

impl ExecutionRow {
    /// The reference time of §1.7: `startedAt`, else the enqueue time.
    pub fn ref_at(&self) -> i64 {
        self.started_at.unwrap_or(self.enqueued_at)
    }

    /// Applies a write of the lease holder to a `running` row that is not stored yet, as the
    /// stores apply it to a stored one (see their `apply_exec_updates`): a row can then be
    /// inserted already past its first write. Returns the write's deliveries, which go into
    /// the same transaction; a write under another lease changes nothing and returns none.
    pub fn apply(&mut self, u: ExecUpdate) -> Vec<crate::webhooks::DeliveryRow> {
        if self.status != "running"
            || self.lease_owner.as_deref() != Some(u.lease_owner.as_str())
            || self.attempt != u.attempt
        {
            return Vec::new();
        }
        self.state = u.state;
        if let Some(status) = u.status.filter(|s| is_terminal(s)) {
            self.status = status;
            self.error = u.error;
            self.finished_at = u.finished_at;
            if let Some(text) = u.search_text {
                self.search_text = text;
            }
            if u.clear_started {
                self.started_at = None;
            }
            self.lease_owner = None;
            self.lease_expires_at = None;
        }
        u.deliveries
    }
}

/// Filters of `GET /executions` and `/executions/metrics` (all AND-ed; `None` = no filter).
#[derive(Clone, Debug, Default)]
pub struct ExecFilter {
    pub flow_id: Option<Uuid>,
    pub trigger_id: Option<Uuid>,
    pub invocation_id: Option<String>,
    /// Any of these statuses (empty = all).
    pub statuses: Vec<String>,
    /// `ref_at >= from` (ms).
    pub from: Option<i64>,
    /// `ref_at < to` (ms).
    pub to: Option<i64>,
    /// Already folded needle, matched as a substring of `search_text`.
    pub search: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExecOrderBy {
    /// The reference time (`started_at`, else `enqueued_at`).
    #[default]
    StartedAt,
    /// Nulls last in both directions.
    FinishedAt,
    Status,
}

#[derive(Clone, Copy, Debug)]
pub struct ExecOrder {
    pub by: ExecOrderBy,
    pub desc: bool,
}

/// Aggregates over the filtered rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecMetrics {
    pub total: i64,
    /// Count per status, in [`STATUSES`] order.
    pub by_status: [i64; 7],
    /// Mean of `finished_at - started_at` (ms) over rows having both.
    pub avg_duration_ms: Option<f64>,
    /// Greatest `started_at`.
    pub last_started_at: Option<i64>,
}

/// The outcome of an abort (§5.8).
#[derive(Clone, Debug, PartialEq)]
pub enum AbortOutcome {
    /// This call moved the row from `pending`/`running` to `cancelled`; the row after the
    /// change, with `lease_owner`/`attempt` as they were (so the caller can signal the
    /// worker holding the lease).
    Cancelled(ExecutionRow),
    /// The row was already terminal.
    Terminal(ExecutionRow),
    NotFound,
}

/// Resolves once a committed write is on disk (see
/// [`ExecutionStore::insert_executions_committed`]).
pub type Durable = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

/// A write by the node holding a row's lease. Applied only while the row is still `running`
/// under that lease (`lease_owner` and `attempt` equal); otherwise it changes nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecUpdate {
    pub id: Uuid,
    pub lease_owner: String,
    pub attempt: i32,
    /// `None` keeps `running` (progress write); `Some(terminal)` finishes the row, clears
    /// the lease and frees its device.
    pub status: Option<String>,
    /// Written only with a terminal status.
    pub error: Option<String>,
    /// Written only with a terminal status.
    pub finished_at: Option<i64>,
    /// With a terminal status: `true` sets `started_at` to NULL (a row skipped at claim time
    /// never started).
    pub clear_started: bool,
    pub state: String,
    /// Written only with a terminal status (the error is part of it).
    pub search_text: Option<String>,
    /// Outbox rows (deliveries of `webhooks.send` steps): inserted in the same transaction,
    /// and only when the update applied.
    pub deliveries: Vec<crate::webhooks::DeliveryRow>,
}

/// What the reaper did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReapOutcome {
    /// Rows put back to `pending` with `attempt + 1`.
    pub requeued: Vec<Uuid>,
    /// Rows that had used their last attempt and were set `failed` (the row after the change).
    pub failed: Vec<ExecutionRow>,
}

#[async_trait]
pub trait ExecutionStore: Send + Sync {
    /// Inserts new rows (any status; `pending` ones become claimable) and applies the
    /// definition writes (flow documents with new health / gate state) in one transaction.
    async fn insert_executions(&self, rows: &[ExecutionRow], docs: &[DocWrite]) -> Result<()> {
        self.insert_executions_routed(rows, &[], docs, &[], 0).await
    }

    /// [`insert_executions`](Self::insert_executions) that also inserts the deliveries the
    /// rows' first steps staged (rows that start already past their first write, see
    /// `ExecutionRow::apply`) and marks these ingested events routed (`routed_at = now_ms`)
    /// in the same transaction, so an event's rows exist exactly when the event is marked:
    /// it is routed exactly once, even across restarts.
    async fn insert_executions_routed(
        &self,
        rows: &[ExecutionRow],
        deliveries: &[crate::webhooks::DeliveryRow],
        docs: &[DocWrite],
        routed_events: &[String],
        now_ms: i64,
    ) -> Result<()>;

    /// [`insert_executions_routed`](Self::insert_executions_routed) in two steps: returns
    /// once the transaction committed (its rows are visible and every later write of this
    /// store is ordered after it) with a future that resolves once it is durable. Nobody
    /// may hear of the rows (a reply, an effect) before that future resolves; meanwhile the
    /// caller may go on to its next write. Takes the rows (the hot path does not need them
    /// back, and a backend may keep them until they are written).
    async fn insert_executions_committed(
        &self,
        rows: Vec<ExecutionRow>,
        deliveries: Vec<crate::webhooks::DeliveryRow>,
        docs: &[DocWrite],
        routed_events: &[String],
        now_ms: i64,
    ) -> Result<Durable> {
        self.insert_executions_routed(&rows, &deliveries, docs, routed_events, now_ms)
            .await?;
        Ok(Box::pin(std::future::ready(Ok(()))))
    }

    /// The flow ids among `flow_ids` that already have a row with this invocation id.
    async fn flows_with_invocation(
        &self,
        flow_ids: &[Uuid],
        invocation_id: &str,
    ) -> Result<Vec<Uuid>>;

    /// One row of this owner.
    async fn get_execution(&self, owner_id: &str, id: Uuid) -> Result<Option<ExecutionRow>>;

    /// One page of this owner's rows and the total matching the filter. Ties break on `id` in
    /// the requested direction.
    async fn list_executions(
        &self,
        owner_id: &str,
        filter: &ExecFilter,
        order: ExecOrder,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<ExecutionRow>, i64)>;

    async fn execution_metrics(&self, owner_id: &str, filter: &ExecFilter) -> Result<ExecMetrics>;

    /// Compare-and-set `pending`/`running` → `cancelled` with `finished_at = now_ms`,
    /// `started_at` unchanged, the lease cleared and `state = cancelled_state(row as read)`,
    /// all in one transaction holding the row (SQLite: the single writer; PostgreSQL:
    /// `SELECT … FOR UPDATE`), so a progress write cannot slip in between. Exactly one of any
    /// number of concurrent calls wins. The returned row keeps `lease_owner`/`attempt` as they
    /// were before the change, so the caller can signal the worker holding the lease.
    async fn abort_execution(
        &self,
        owner_id: &str,
        id: Uuid,
        now_ms: i64,
        cancelled_state: &(dyn for<'r> Fn(&'r ExecutionRow) -> String + Send + Sync),
    ) -> Result<AbortOutcome>;

    /// Claims up to `limit` `pending` rows, oldest first, at most one per device, skipping
    /// devices that have a `running` row or are listed in `busy_devices`: each becomes
    /// `running` under `lease_owner` until `lease_expires_at`, `started_at` set to `now_ms`
    /// when it was null. Returns the rows after the change.
    async fn claim_executions(
        &self,
        lease_owner: &str,
        now_ms: i64,
        lease_expires_at: i64,
        limit: usize,
        busy_devices: &[Uuid],
    ) -> Result<Vec<ExecutionRow>>;

    /// Applies lease-fenced writes in one transaction; returns, per update, whether it applied.
    async fn apply_exec_updates(&self, updates: &[ExecUpdate]) -> Result<Vec<bool>>;

    /// Extends the leases of these rows while `lease_owner` still holds them (the runs this
    /// node is executing now; a row whose run ended without a terminal write is not renewed,
    /// so its lease expires and the reaper takes it); returns how many were extended.
    async fn renew_leases(
        &self,
        lease_owner: &str,
        ids: &[Uuid],
        lease_expires_at: i64,
    ) -> Result<u64>;

    /// The ids among `ids` that `lease_owner` no longer holds (aborted, finished or reaped by
    /// another node), so their runs stop. A store only this process uses has every change
    /// signalled in-process and answers none.
    async fn lost_leases(&self, lease_owner: &str, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        let _ = (lease_owner, ids);
        Ok(Vec::new())
    }

    /// Reclaims `running` rows whose lease expired before `now_ms` — or, with
    /// `all_of_other_owners`, every `running` row not held by `keep_owner` (start-up of a
    /// single-node SQLite server, whose previous process is gone). A row whose `attempt + 1`
    /// reaches `max_attempts` is set `failed` with `(error, state) = failed(row as read)`,
    /// `finished_at = now_ms` and `search_text` with the error; the others go back to `pending` with `attempt + 1` and no lease.
    async fn reap_executions(
        &self,
        now_ms: i64,
        max_attempts: i32,
        failed: &(dyn for<'r> Fn(&'r ExecutionRow) -> (String, String) + Send + Sync),
        keep_owner: &str,
        all_of_other_owners: bool,
    ) -> Result<ReapOutcome>;

    /// Sets every `pending` row of the flow `skipped` with this error, `finished_at = now_ms`
    /// and `state = "{}"` (archive, §3.5); returns how many.
    async fn skip_pending_of_flow(&self, flow_id: Uuid, error: &str, now_ms: i64) -> Result<u64>;

    /// Count of `pending` rows (queue depth).
    async fn count_pending(&self) -> Result<i64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> ExecutionRow {
        ExecutionRow {
            id: Uuid::from_u128(1),
            owner_id: "o".into(),
            flow_id: Uuid::from_u128(2),
            trigger_id: Uuid::from_u128(3),
            kind: "live".into(),
            status: "running".into(),
            device_id: None,
            invocation_id: None,
            event_id: None,
            error: None,
            flow_name: Some("f".into()),
            trigger_name: Some("t".into()),
            created_by: None,
            enqueued_at: 10,
            started_at: Some(10),
            finished_at: None,
            attempt: 0,
            lease_owner: Some("node".into()),
            lease_expires_at: Some(30_010),
            graph_hash: None,
            snapshot: "{}".into(),
            state: "{\"initial\":true}".into(),
            search_text: "f\nt\n".into(),
        }
    }

    fn write(status: Option<&str>, lease_owner: &str) -> ExecUpdate {
        ExecUpdate {
            id: Uuid::from_u128(1),
            lease_owner: lease_owner.into(),
            attempt: 0,
            status: status.map(str::to_string),
            error: status.map(|_| "step: boom".to_string()),
            finished_at: status.map(|_| 20),
            clear_started: false,
            state: "{\"after\":true}".into(),
            search_text: status.map(|_| "f\nt\nstep: boom".to_string()),
            deliveries: Vec::new(),
        }
    }

    #[test]
    fn a_write_applied_before_the_insert_matches_the_stored_update() {
        let mut progress = running();
        progress.apply(write(None, "node"));
        assert_eq!(progress.status, "running");
        assert_eq!(progress.state, "{\"after\":true}");
        assert_eq!(progress.lease_owner.as_deref(), Some("node"));
        assert_eq!(progress.finished_at, None);

        let mut done = running();
        done.apply(write(Some("failed"), "node"));
        assert_eq!(done.status, "failed");
        assert_eq!(done.error.as_deref(), Some("step: boom"));
        assert_eq!(done.finished_at, Some(20));
        assert_eq!(done.search_text, "f\nt\nstep: boom");
        assert_eq!((done.lease_owner, done.lease_expires_at), (None, None));
        assert_eq!(done.started_at, Some(10));

        let mut skipped = running();
        let mut w = write(Some("skipped"), "node");
        w.clear_started = true;
        skipped.apply(w);
        assert_eq!(skipped.started_at, None);

        // Another lease holder's write changes nothing, and its deliveries are dropped.
        let mut fenced = running();
        assert!(fenced.apply(write(Some("success"), "other")).is_empty());
        assert_eq!(fenced, running());
    }
}
