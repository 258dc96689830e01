//! Schedules (§5.3): the durable state of every schedule trigger, one row each.
//!
//! The scheduler sleeps until [`ScheduleStore::next_schedule_wake`] (one index probe), claims
//! the due rows with [`ScheduleStore::claim_due_schedules`], submits their occurrences and
//! then [`advances`](ScheduleStore::advance_schedules) them. An occurrence is identified by
//! (trigger, nominal instant): every nominal instant at or before
//! [`ScheduleRow::last_handled_nominal_at`] is handled, and only the claim holder can move
//! that mark, so each occurrence is handled once across nodes and restarts.
//!
//! A claim that was never advanced (its node stopped mid-pass) expires at `claimed_until`;
//! the next claimer gets the abandoned claim's `claimed_at` with the row
//! ([`ClaimedSchedule::abandoned_claim_at`]) to find out whether that pass's firings landed.

use async_trait::async_trait;
use uuid::Uuid;

use crate::Result;

/// One schedule row, every column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleRow {
    pub trigger_id: Uuid,
    pub owner_id: String,
    /// Fingerprint of what the row was computed from (activation, rule, zone): a trigger
    /// whose fingerprint differs restarts its schedule.
    pub rule_key: String,
    /// When the schedule last (re)started (ms).
    pub started_at: i64,
    /// Every nominal occurrence at or before this instant (ms) is handled — fired, recorded
    /// missed, or earlier than the (re)start.
    pub last_handled_nominal_at: i64,
    /// The first unhandled occurrence: nominal instant (ms), `None` when the rule is
    /// exhausted.
    pub next_nominal_at: Option<i64>,
    /// Its jittered fire instant (ms); the row is due when this is ≤ now.
    pub next_fire_at: Option<i64>,
    pub claimed_by: Option<String>,
    pub claimed_at: Option<i64>,
    pub claimed_until: Option<i64>,
}

/// A row claimed by [`ScheduleStore::claim_due_schedules`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedSchedule {
    /// The row after the claim (`claimed_by` = the caller, `claimed_at` = its `now_ms`).
    pub row: ScheduleRow,
    /// `claimed_at` of an earlier claim that expired without an advance: a node stopped
    /// during a pass that started then (it may or may not have submitted its firings).
    pub abandoned_claim_at: Option<i64>,
}

/// The outcome of one pass over a claimed row. Applied only while the claim is still the
/// caller's (`claimed_by` and `claimed_at` unchanged); it then clears the claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleAdvance {
    pub trigger_id: Uuid,
    pub claimed_by: String,
    pub claimed_at: i64,
    pub last_handled_nominal_at: i64,
    pub next_nominal_at: Option<i64>,
    pub next_fire_at: Option<i64>,
}

#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Creates or restarts rows (every column as given, the claim cleared), in one
    /// transaction. With `only_if_changed`, an existing row with the same `rule_key` is left
    /// as it is. Returns the ids written, in input order.
    async fn put_schedules(&self, rows: &[ScheduleRow], only_if_changed: bool)
    -> Result<Vec<Uuid>>;

    /// Deletes rows; returns how many existed.
    async fn delete_schedules(&self, trigger_ids: &[Uuid]) -> Result<u64>;

    async fn get_schedule(&self, trigger_id: Uuid) -> Result<Option<ScheduleRow>>;

    /// Every row (start-up reconciliation with the definitions).
    async fn list_schedules(&self) -> Result<Vec<ScheduleRow>>;

    /// Claims up to `limit` due rows (`next_fire_at <= now_ms`, not claimed or with an
    /// expired claim `claimed_until < now_ms`), earliest `next_fire_at` first: each gets
    /// `claimed_by = node`, `claimed_at = now_ms`, `claimed_until`. Concurrent claimers never
    /// get the same row.
    async fn claim_due_schedules(
        &self,
        node: &str,
        now_ms: i64,
        claimed_until: i64,
        limit: usize,
    ) -> Result<Vec<ClaimedSchedule>>;

    /// Applies claim-fenced advances in one transaction; returns, per advance, whether it
    /// applied.
    async fn advance_schedules(&self, advances: &[ScheduleAdvance]) -> Result<Vec<bool>>;

    /// Ends every claim now (`claimed_until = now_ms - 1`, holder and `claimed_at` kept, so
    /// the next claimer still sees them as abandoned): start-up of a single-node store, whose
    /// previous process is gone. Returns how many.
    async fn expire_schedule_claims(&self, now_ms: i64) -> Result<u64>;

    /// When a row may next become claimable: the earliest `next_fire_at` of an unclaimed row
    /// or `claimed_until` of a claimed one; `None` when there is none.
    async fn next_schedule_wake(&self) -> Result<Option<i64>>;
}
