//! Outbound webhooks (§3.10, §5.17): endpoints, deliveries and their attempts.
//!
//! The delivery row *is* the retry queue: a `pending` row is due at `next_attempt_at`. A
//! claim pushes `next_attempt_at` forward by a lease and names the claiming node, so a node
//! that dies mid-attempt leaves a row that becomes due again when the lease runs out. The
//! outcome of an attempt is written by [`WebhookStore::finish_attempt`], fenced by the number
//! of attempts the claimer read: the attempt row, the delivery's new status and the endpoint's
//! health change commit together.
//!
//! Endpoint rows are never removed: `DELETE` sets `state = 'DELETED'`, which hides the endpoint
//! from reads while its deliveries stay in the feed.

use async_trait::async_trait;
use uuid::Uuid;

use crate::Result;

/// Delivery statuses, in the order `byStatus` lists them.
pub const DELIVERY_STATUSES: [&str; 4] = ["pending", "success", "skipped", "dead"];

/// One stored endpoint, every column.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointRow {
    pub id: Uuid,
    pub owner_id: String,
    /// `http` | `integration`
    pub kind: String,
    pub url: Option<String>,
    pub description: Option<String>,
    /// Empty = every event type.
    pub event_types: Vec<String>,
    /// `ACTIVE` | `DISABLED` | `DELETED`
    pub state: String,
    /// `healthy` | `failing` | `blocked`
    pub health: String,
    pub blocked_at: Option<i64>,
    pub blocked_reason: Option<String>,
    /// `whsec_…`
    pub secret: String,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// `dead` deliveries since the last success.
    pub consecutive_dead: i64,
    /// When the endpoint became `failing` (None while healthy).
    pub failing_since: Option<i64>,
}

impl EndpointRow {
    pub fn is_deleted(&self) -> bool {
        self.state == "DELETED"
    }
}

/// A `PATCH /webhooks/{id}`; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointPatch {
    pub event_types: Option<Vec<String>>,
    pub state: Option<String>,
    pub description: Option<Option<String>>,
    /// Re-enable a blocked endpoint: health `healthy`, block and failure bookkeeping cleared.
    pub reenable: bool,
    pub updated_at: i64,
}

/// The health columns of an endpoint after an attempt's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthUpdate {
    pub health: String,
    pub consecutive_dead: i64,
    pub failing_since: Option<i64>,
    pub blocked_at: Option<i64>,
    pub blocked_reason: Option<String>,
}

/// One stored delivery, every column.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub owner_id: String,
    pub endpoint_id: Uuid,
    pub event_id: String,
    pub event_type: String,
    /// `workflows` | `webhooks`
    pub source: String,
    pub occurred_at: i64,
    /// The envelope's `data` (JSON).
    pub data: String,
    /// `pending` | `success` | `skipped` | `dead`
    pub status: String,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub duration_ms: Option<i64>,
    pub is_test: bool,
    pub created_at: i64,
    pub completed_at: Option<i64>,
    pub created_by: Option<String>,
    /// When a `pending` row is due (None: not claimable).
    pub next_attempt_at: Option<i64>,
    pub lease_owner: Option<String>,
}

/// One attempt of a delivery, every column.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptRow {
    pub delivery_id: Uuid,
    /// 1-based.
    pub attempt_no: i32,
    pub sent_at: i64,
    pub request_url: String,
    pub request_method: String,
    /// JSON object.
    pub request_headers: Option<String>,
    pub request_body: Option<String>,
    pub signed: bool,
    pub response_status: Option<i32>,
    /// JSON object.
    pub response_headers: Option<String>,
    pub response_snippet: Option<String>,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
}

/// The outcome of one turn of a claimed delivery: the attempt made (none when the delivery
/// ended without one, e.g. its endpoint was disabled meanwhile) and the delivery's columns
/// after it.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptWrite {
    pub delivery_id: Uuid,
    pub endpoint_id: Uuid,
    pub attempt: Option<AttemptRow>,
    /// The `attempts` the claimer read; the write applies only while it still holds.
    pub expected_attempts: i32,
    /// `attempts` after this turn.
    pub attempts: i32,
    /// The new status; applied only while the row is still `pending` (a delete that skipped
    /// the row meanwhile keeps `skipped`).
    pub status: String,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub duration_ms: Option<i64>,
    pub completed_at: Option<i64>,
    /// When the next attempt is due (a `pending` status only).
    pub next_attempt_at: Option<i64>,
}

/// Filters of the delivery lists and stats (all AND-ed; `None` = no filter).
#[derive(Clone, Debug, Default)]
pub struct DeliveryFilter {
    pub endpoint_id: Option<Uuid>,
    /// Any of these statuses (empty = all).
    pub statuses: Vec<String>,
    /// `created_at >= since` (ms).
    pub since: Option<i64>,
    pub event_id: Option<String>,
    /// The endpoint's kind.
    pub kind: Option<String>,
}

/// Computes an endpoint's health after an attempt from the row as read in the transaction;
/// `None` leaves it unchanged.
pub type HealthFn<'a> = &'a (dyn for<'r> Fn(&'r EndpointRow) -> Option<HealthUpdate> + Send + Sync);

#[async_trait]
pub trait WebhookStore: Send + Sync {
    async fn insert_endpoint(&self, endpoint: &EndpointRow) -> Result<()>;

    /// One endpoint by id, of any owner and state (callers filter).
    async fn get_endpoint(&self, id: Uuid) -> Result<Option<EndpointRow>>;

    /// Endpoints of one owner (or of every owner), oldest first; deleted ones only when asked.
    async fn list_endpoints(
        &self,
        owner_id: Option<&str>,
        include_deleted: bool,
    ) -> Result<Vec<EndpointRow>>;

    /// Applies a patch to a non-deleted endpoint of the owner; returns the row after it.
    async fn patch_endpoint(
        &self,
        owner_id: &str,
        id: Uuid,
        patch: &EndpointPatch,
    ) -> Result<Option<EndpointRow>>;

    /// Replaces the secret of a non-deleted endpoint of the owner; returns the row after it.
    async fn set_endpoint_secret(
        &self,
        owner_id: &str,
        id: Uuid,
        secret: &str,
        now_ms: i64,
    ) -> Result<Option<EndpointRow>>;

    /// Marks a non-deleted endpoint of the owner `DELETED` and ends its pending deliveries
    /// `skipped` (`last_error`), in one transaction; false when there was none.
    async fn delete_endpoint(
        &self,
        owner_id: &str,
        id: Uuid,
        now_ms: i64,
        last_error: &str,
    ) -> Result<bool>;

    async fn insert_delivery(&self, delivery: &DeliveryRow) -> Result<()>;

    /// Claims up to `limit` `pending` rows due at `now_ms`, earliest first: each gets
    /// `lease_owner` and `next_attempt_at = lease_until`. Returns the rows as claimed.
    async fn claim_deliveries(
        &self,
        lease_owner: &str,
        now_ms: i64,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>>;

    /// Makes every `pending` row claimed by another node than `keep_owner` due at `now_ms`
    /// (start-up of a single-node SQLite server, whose previous process is gone); returns
    /// how many.
    async fn release_delivery_claims(&self, keep_owner: &str, now_ms: i64) -> Result<u64>;

    /// The earliest `next_attempt_at` of a `pending` row.
    async fn next_delivery_due(&self) -> Result<Option<i64>>;

    /// Records an attempt and the delivery's columns after it, and applies `health` to the
    /// endpoint, in one transaction; fenced by `expected_attempts` (false = changed nothing).
    async fn finish_attempt(
        &self,
        write: &AttemptWrite,
        health: Option<HealthFn<'_>>,
    ) -> Result<bool> {
        let applied = self.finish_attempts(vec![(write.clone(), health)]).await?;
        Ok(applied.first().copied().unwrap_or(false))
    }

    /// [`finish_attempt`](Self::finish_attempt) for many attempts in one transaction (one
    /// commit for a batch of deliveries); each is fenced on its own.
    async fn finish_attempts(
        &self,
        writes: Vec<(AttemptWrite, Option<HealthFn<'_>>)>,
    ) -> Result<Vec<bool>>;

    /// One delivery of this owner.
    async fn get_delivery(&self, owner_id: &str, id: Uuid) -> Result<Option<DeliveryRow>>;

    /// The attempts of a delivery by ascending number.
    async fn list_attempts(&self, delivery_id: Uuid) -> Result<Vec<AttemptRow>>;

    /// One page of this owner's deliveries (`created_at desc, id desc`) and the total.
    async fn list_deliveries(
        &self,
        owner_id: &str,
        filter: &DeliveryFilter,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<DeliveryRow>, i64)>;

    /// Count per status (in [`DELIVERY_STATUSES`] order) over the filtered deliveries.
    async fn delivery_stats(&self, owner_id: &str, filter: &DeliveryFilter) -> Result<[i64; 4]>;
}

/// `event_types` as stored (a JSON array).
pub(crate) fn event_types_json(types: &[String]) -> String {
    serde_json::to_string(types).unwrap_or_else(|_| "[]".to_string())
}

pub(crate) fn event_types_parse(id: &str, json: &str) -> Result<Vec<String>> {
    serde_json::from_str(json).map_err(|source| crate::StoreError::Corrupt {
        kind: "webhook_endpoint".to_string(),
        id: id.to_string(),
        source,
    })
}
