//! Outbound webhook delivery (§5.17) and flow notifications (§5.16).
//!
//! - Every event goes to one explicitly targeted endpoint (a `webhooks.send` step's
//!   `webhookId`, a flow's `notifyWebhookId`, or the endpoint under test) as one durable
//!   delivery row. A delivery whose endpoint is disabled, blocked or not subscribed to the
//!   event type is recorded `skipped` at once.
//! - The delivery worker sleeps until the earliest due row (or until an enqueue wakes it;
//!   never a busy poll), claims due rows under a lease and makes one attempt per claimed
//!   row, in parallel up to a limit. A failed attempt schedules the next one after 30 s,
//!   2 min, 10 min, 1 h, 6 h and 24 h (times a configurable scale); the 7th failure ends the
//!   delivery `dead`. Rows live in the store, so deliveries survive restarts, and a node lost
//!   mid-attempt leaves a row that becomes due again when its lease runs out.
//! - Endpoint health moves with outcomes: a success → `healthy`; a `dead` delivery →
//!   `failing`; 50 consecutive `dead` deliveries, or 24 h failing without a success →
//!   `blocked` (`consecutive_failures`), until a PATCH re-enables it. Test deliveries are
//!   diagnostics and leave health alone.
//! - The HTTP side (SSRF guard at the connected address, signing, response capture) is
//!   [`flowrun_actions::webhook`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use flowrun_actions::{FailureClass, Staged, StepCall, StepFailure, StepOutput};
use flowrun_core::Ts;
use flowrun_store::webhooks::HealthFn;
use flowrun_store::{
    AttemptRow, AttemptWrite, DeliveryRow, EndpointRow, ExecutionRow, HealthUpdate, Store,
    StoreError,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use flowrun_actions::webhook::{
    ADDRESS_NOT_ALLOWED, Cidr, Outbound, Sent, TargetError, TargetPolicy, TestResult,
    WebhookService, delivery_headers, new_secret, parse_cidrs,
};

use crate::Shared;

/// The default retry delays after failed attempts 1‥6 (§5.17), in seconds.
pub const RETRY_DELAYS_SECS: [u64; 6] = [30, 120, 600, 3600, 6 * 3600, 24 * 3600];

/// Event types of flow notifications and `webhooks.send`.
pub const RUN_COMPLETED: &str = "workflow.run.completed";
pub const RUN_FAILED: &str = "workflow.run.failed";
pub const STEP_WEBHOOK: &str = "workflow.step.webhook";
pub const TEST_EVENT: &str = "webhook.test";

/// `lastError` of deliveries that end without an attempt.
pub const ENDPOINT_DISABLED: &str = "endpoint_disabled";
pub const ENDPOINT_BLOCKED: &str = "endpoint_blocked";
pub const NOT_SUBSCRIBED: &str = "not_subscribed";
pub const ENDPOINT_DELETED: &str = "endpoint_deleted";

/// Delivery settings (flags / `FLOWRUN_*` environment of `flowrun serve`).
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Which target addresses are allowed (the SSRF guard).
    pub policy: TargetPolicy,
    /// One attempt's timeout (connect + answer).
    pub timeout: Duration,
    /// Delay before attempt `n + 2` after failed attempt `n + 1`; attempts = delays + 1.
    pub retry_delays: Vec<Duration>,
    /// Consecutive `dead` deliveries that block an endpoint.
    pub block_after_dead: i64,
    /// How long an endpoint may stay `failing` without a success before it is blocked.
    pub block_after_failing: Duration,
    /// How long a claimed delivery belongs to its node (longer than an attempt).
    pub claim_lease: Duration,
    /// Attempts in flight at once on this node.
    pub concurrency: usize,
    /// Only this process uses the store (SQLite): deliveries claimed by a previous process
    /// are due again at start instead of when their lease runs out.
    pub exclusive_store: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            policy: TargetPolicy::default(),
            timeout: flowrun_actions::webhook::DEFAULT_TIMEOUT,
            retry_delays: RETRY_DELAYS_SECS
                .iter()
                .map(|s| Duration::from_secs(*s))
                .collect(),
            block_after_dead: 50,
            block_after_failing: Duration::from_secs(24 * 3600),
            claim_lease: Duration::from_secs(60),
            concurrency: 128,
            exclusive_store: false,
        }
    }
}

impl WebhookConfig {
    /// Multiplies the retry delays by `scale` (tests run the schedule in milliseconds).
    pub fn with_retry_scale(mut self, scale: f64) -> Self {
        let scale = if scale.is_finite() && scale > 0.0 {
            scale
        } else {
            1.0
        };
        self.retry_delays = self.retry_delays.iter().map(|d| d.mul_f64(scale)).collect();
        self
    }

    /// Attempts before a delivery is `dead`.
    pub fn max_attempts(&self) -> i32 {
        self.retry_delays.len() as i32 + 1
    }
}

// ---------------------------------------------------------------------------------------
// The endpoint index

/// Live (not deleted) endpoint ids of this node and their owners.
///
/// Flow settings are validated synchronously against the in-memory definitions
/// (`notifyWebhookId`), while endpoints live in the store; this index mirrors them: loaded when
/// the delivery service starts and kept by every create and delete. Like the definitions
/// registry, it sees the writes of this node.
static ENDPOINTS: LazyLock<RwLock<HashMap<Uuid, String>>> = LazyLock::new(Default::default);

/// Whether the owner has a live endpoint with this id.
pub fn endpoint_exists(owner_id: &str, id: Uuid) -> bool {
    ENDPOINTS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .is_some_and(|o| o == owner_id)
}

/// Records a created endpoint in the index.
pub fn remember_endpoint(owner_id: &str, id: Uuid) {
    ENDPOINTS
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, owner_id.to_string());
}

/// Brings one endpoint's entry up to date from the store (another node created or deleted it).
pub async fn refresh_endpoint(store: &dyn Store, id: Uuid) -> Result<(), StoreError> {
    match store.get_endpoint(id).await? {
        Some(e) if !e.is_deleted() => remember_endpoint(&e.owner_id, e.id),
        _ => forget_endpoint(id),
    }
    Ok(())
}

/// Re-reads the whole index (notifications may have been missed).
pub async fn refresh_all_endpoints(store: &dyn Store) -> Result<(), StoreError> {
    for e in store.list_endpoints(None, true).await? {
        if e.is_deleted() {
            forget_endpoint(e.id);
        } else {
            remember_endpoint(&e.owner_id, e.id);
        }
    }
    Ok(())
}

/// Removes a deleted endpoint from the index.
pub fn forget_endpoint(id: Uuid) {
    ENDPOINTS
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    endpoint_changed(id);
}

/// Endpoint rows as last read, kept only by a process that is its store's only user
/// (SQLite), so that a `webhooks.send` step does not read its endpoint from the store each
/// time. Every change of this process evicts the row: the API's writes call
/// [`endpoint_changed`], and so does an attempt record that may move health. A read that
/// overlapped an eviction is not kept (the generation moved).
static ROWS: LazyLock<RwLock<HashMap<Uuid, EndpointRow>>> = LazyLock::new(Default::default);
static ROWS_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// An endpoint was written: its cached row (if any) is gone.
pub fn endpoint_changed(id: Uuid) {
    ROWS_GENERATION.fetch_add(1, Ordering::SeqCst);
    ROWS.write().unwrap_or_else(|e| e.into_inner()).remove(&id);
}

// ---------------------------------------------------------------------------------------
// The service

/// One event for one endpoint.
struct Event {
    event_type: &'static str,
    /// `workflows` | `webhooks`
    source: &'static str,
    data: Value,
    is_test: bool,
    created_by: Option<String>,
}

/// A `webhooks.send` delivery staged with its step (see [`Staged`]): the row is inserted by
/// the step's commit. With a `permit` the row is leased to this node from the start and is
/// attempted right after the commit, without a claim; without one (every slot busy) it is an
/// ordinary due row for the worker.
pub(crate) struct StagedDelivery {
    pub(crate) row: DeliveryRow,
    /// The endpoint as read when the step ran (routing was decided on it).
    endpoint: EndpointRow,
    permit: Option<OwnedSemaphorePermit>,
}

/// A health computation for a recorded attempt.
type HealthBox = Box<dyn Fn(&EndpointRow) -> Option<HealthUpdate> + Send + Sync>;

/// One attempt's record for the recorder task.
struct RecordRequest {
    write: AttemptWrite,
    health: Option<HealthBox>,
    reply: oneshot::Sender<Result<bool, StoreError>>,
}

/// The delivery service of this node.
pub struct Webhooks {
    store: Arc<dyn Store>,
    outbound: Outbound,
    config: WebhookConfig,
    node_id: String,
    /// Wakes the worker to look at the store (a due row it did not lease, a retry scheduled).
    wake: Notify,
    /// Rows went into the store without a lease of this node since the worker last claimed.
    backlog: AtomicBool,
    slots: Arc<Semaphore>,
    /// Attempt records, committed in batches.
    records: mpsc::UnboundedSender<RecordRequest>,
    me: Weak<Webhooks>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("node_id", &self.node_id)
            .field("config", &self.config)
            .finish()
    }
}

impl Webhooks {
    /// Loads the endpoint index and starts the delivery worker.
    pub async fn start(
        store: Arc<dyn Store>,
        config: WebhookConfig,
    ) -> Result<Arc<Webhooks>, StoreError> {
        for e in store.list_endpoints(None, false).await? {
            remember_endpoint(&e.owner_id, e.id);
        }
        let (records, record_rx) = mpsc::unbounded_channel();
        tokio::spawn(run_recorder(store.clone(), record_rx));
        let hooks = Arc::new_cyclic(|me| Webhooks {
            outbound: Outbound::new(config.policy.clone(), config.timeout),
            slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
            store,
            config,
            node_id: format!("webhooks-{}", Uuid::new_v4()),
            wake: Notify::new(),
            backlog: AtomicBool::new(true),
            records,
            me: me.clone(),
            shutdown: CancellationToken::new(),
        });
        if hooks.config.exclusive_store {
            let released = hooks
                .store
                .release_delivery_claims(&hooks.node_id, Ts::now().millis())
                .await?;
            if released > 0 {
                tracing::info!(
                    count = released,
                    "resuming deliveries of a previous process"
                );
            }
        }
        tokio::spawn(run_worker(hooks.clone()));
        Ok(hooks)
    }

    /// Stops claiming deliveries (claimed ones come back when their lease runs out).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        self.wake.notify_one();
    }

    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    /// The owner's live endpoint.
    async fn endpoint_of(
        &self,
        owner_id: &str,
        id: Uuid,
    ) -> Result<Option<EndpointRow>, StoreError> {
        let live = |e: &EndpointRow| e.owner_id == owner_id && !e.is_deleted();
        if !self.config.exclusive_store {
            return Ok(self.store.get_endpoint(id).await?.filter(live));
        }
        if let Some(e) = ROWS.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return Ok(Some(e.clone()).filter(live));
        }
        let generation = ROWS_GENERATION.load(Ordering::SeqCst);
        let row = self.store.get_endpoint(id).await?;
        if let Some(e) = &row {
            let mut rows = ROWS.write().unwrap_or_else(|e| e.into_inner());
            if ROWS_GENERATION.load(Ordering::SeqCst) == generation {
                rows.insert(id, e.clone());
            }
        }
        Ok(row.filter(live))
    }

    /// Stores a delivery of `event` to `endpoint`: `pending` and due now, or `skipped` when
    /// routing refuses it (§5.17); wakes the worker.
    async fn enqueue(
        &self,
        endpoint: &EndpointRow,
        event: Event,
    ) -> Result<DeliveryRow, StoreError> {
        let is_test = event.is_test;
        let row = self.delivery_row(endpoint, event, is_test);
        self.store.insert_delivery(&row).await?;
        if row.status == "pending" && !is_test {
            self.backlog.store(true, Ordering::SeqCst);
            self.wake.notify_one();
        }
        Ok(row)
    }

    /// A new delivery row of `event` to `endpoint`: `skipped` when routing refuses it
    /// (§5.17), else `pending` — leased to this node when `leased` (its attempt is made by
    /// whoever holds the row now), due now otherwise.
    fn delivery_row(&self, endpoint: &EndpointRow, event: Event, leased: bool) -> DeliveryRow {
        let now = Ts::now().millis();
        let skip = if event.is_test {
            None
        } else {
            routing_skip(endpoint, event.event_type)
        };
        DeliveryRow {
            id: flowrun_core::new_id(),
            owner_id: endpoint.owner_id.clone(),
            endpoint_id: endpoint.id,
            event_id: Uuid::now_v7().to_string(),
            event_type: event.event_type.to_string(),
            source: event.source.to_string(),
            occurred_at: now,
            data: event.data.to_string(),
            status: if skip.is_some() { "skipped" } else { "pending" }.to_string(),
            attempts: 0,
            last_status_code: None,
            last_error: skip.map(str::to_string),
            duration_ms: None,
            is_test: event.is_test,
            created_at: now,
            completed_at: skip.map(|_| now),
            created_by: event.created_by,
            // A leased row is attempted by its holder; the lease only matters if this node
            // dies.
            next_attempt_at: match (skip, leased) {
                (Some(_), _) => None,
                (None, true) => Some(now + self.config.claim_lease.as_millis() as i64),
                (None, false) => Some(now),
            },
            lease_owner: (skip.is_none() && leased).then(|| self.node_id.clone()),
        }
    }

    /// Starts a staged delivery whose step committed: attempts a leased row now, or lets the
    /// worker claim an unleased one.
    fn start_committed(&self, staged: StagedDelivery) {
        let StagedDelivery {
            row,
            endpoint,
            permit,
        } = staged;
        match (permit, self.me.upgrade()) {
            (Some(permit), Some(me)) => {
                tokio::spawn(async move {
                    me.attempt_and_record(row, Some(endpoint), permit).await;
                });
            }
            _ if row.status == "pending" => {
                self.backlog.store(true, Ordering::SeqCst);
                self.wake.notify_one();
            }
            _ => {}
        }
    }

    /// Makes a claimed or staged row's attempt; a retry scheduled (or a backlog waiting for
    /// this slot) wakes the worker.
    async fn attempt_and_record(
        &self,
        row: DeliveryRow,
        endpoint: Option<EndpointRow>,
        slot: OwnedSemaphorePermit,
    ) {
        let id = row.id;
        let last = row.is_test || row.attempts + 1 >= self.config.max_attempts();
        match self.attempt(row, endpoint, Some(slot)).await {
            Ok(sent) => {
                if !last && sent.is_some_and(|s| !s.success()) {
                    self.wake.notify_one();
                }
            }
            Err(e) => {
                tracing::error!(delivery = %id, error = %e, "webhook delivery failed to record");
            }
        }
        if self.backlog.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// Commits an attempt's record with others (one transaction per batch).
    async fn record(
        &self,
        write: AttemptWrite,
        health: Option<HealthBox>,
    ) -> Result<bool, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.records
            .send(RecordRequest {
                write,
                health,
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// One turn of a claimed delivery: re-checks routing, makes the attempt and records it.
    /// Returns what the attempt produced (None when no request was sent). `endpoint` is the
    /// endpoint as just read by the caller, if it has it. The `slot` (a bound on requests in
    /// flight) is given back as soon as the request is done, not after its record commits.
    async fn attempt(
        &self,
        row: DeliveryRow,
        endpoint: Option<EndpointRow>,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<Option<Sent>, StoreError> {
        let endpoint = match endpoint {
            Some(e) => Some(e),
            None => self.store.get_endpoint(row.endpoint_id).await?,
        };
        let skip = match &endpoint {
            None => Some(ENDPOINT_DELETED),
            Some(e) if e.is_deleted() => Some(ENDPOINT_DELETED),
            Some(_) if row.is_test => None,
            Some(e) => routing_skip(e, &row.event_type),
        };
        let now = Ts::now();
        let (Some(endpoint), None) = (endpoint, skip) else {
            let write = AttemptWrite {
                delivery_id: row.id,
                endpoint_id: row.endpoint_id,
                attempt: None,
                expected_attempts: row.attempts,
                attempts: row.attempts,
                status: "skipped".to_string(),
                last_status_code: row.last_status_code,
                last_error: skip.map(str::to_string),
                duration_ms: row.duration_ms,
                completed_at: Some(now.millis()),
                next_attempt_at: None,
            };
            self.record(write, None).await?;
            return Ok(None);
        };
        let body = envelope(&row);
        let url = endpoint.url.clone().unwrap_or_default();
        let headers = delivery_headers(
            Some(&endpoint.secret),
            &row.event_id,
            now.0.timestamp(),
            &body,
        );
        let sent = self.outbound.post(&url, &headers, &body).await;
        drop(slot);
        let attempt_no = row.attempts + 1;
        let finished = Ts::now().millis();
        let success = sent.success();
        let last = row.is_test || attempt_no >= self.config.max_attempts();
        let (status, next_attempt_at) = if success {
            ("success", None)
        } else if last {
            ("dead", None)
        } else {
            let delay = self.config.retry_delays[(attempt_no - 1) as usize];
            ("pending", Some(finished + delay.as_millis() as i64))
        };
        crate::telemetry::webhook_attempt(match status {
            "pending" => "retry",
            "success" => "success",
            _ => "dead",
        });
        let write = AttemptWrite {
            delivery_id: row.id,
            endpoint_id: row.endpoint_id,
            attempt: Some(AttemptRow {
                delivery_id: row.id,
                attempt_no,
                sent_at: now.millis(),
                request_url: url,
                request_method: "POST".to_string(),
                request_headers: Some(headers_json(headers.iter().map(|(k, v)| (k, v)))),
                request_body: Some(body),
                signed: headers.iter().any(|(k, _)| k == "webhook-signature"),
                response_status: sent.status.map(i32::from),
                response_headers: sent.headers.as_ref().map(|h| headers_json(h.iter())),
                response_snippet: sent.snippet.clone(),
                duration_ms: Some(sent.duration_ms),
                error: sent.error.clone(),
            }),
            expected_attempts: row.attempts,
            attempts: attempt_no,
            status: status.to_string(),
            last_status_code: sent.status.map(i32::from),
            last_error: sent.error.clone(),
            duration_ms: Some(sent.duration_ms),
            completed_at: (status != "pending").then_some(finished),
            next_attempt_at,
        };
        let (block_after_dead, block_after_failing) = (
            self.config.block_after_dead,
            self.config.block_after_failing,
        );
        // A success at a clean endpoint changes nothing: the endpoint row is then neither read
        // nor locked (on PostgreSQL every node's deliveries to it would queue on that lock).
        let counts = !row.is_test
            && status != "pending"
            && !(success && health_after(&endpoint, true, finished, 0, Duration::ZERO).is_none());
        let health: Option<HealthBox> = counts.then(|| {
            Box::new(move |e: &EndpointRow| {
                health_after(e, success, finished, block_after_dead, block_after_failing)
            }) as HealthBox
        });
        let moves_health = health.is_some();
        let applied = self.record(write, health).await?;
        if moves_health {
            endpoint_changed(row.endpoint_id);
        }
        if !applied {
            tracing::debug!(delivery = %row.id, "delivery changed during its attempt");
        }
        Ok(Some(sent))
    }
}

/// Why routing refuses an event for an endpoint (§5.17), if it does.
fn routing_skip(e: &EndpointRow, event_type: &str) -> Option<&'static str> {
    if e.state == "DISABLED" {
        Some(ENDPOINT_DISABLED)
    } else if e.health == "blocked" {
        Some(ENDPOINT_BLOCKED)
    } else if !e.event_types.is_empty() && !e.event_types.iter().any(|t| t == event_type) {
        Some(NOT_SUBSCRIBED)
    } else {
        None
    }
}

/// The request body of a delivery (identical on every attempt): the Standard Webhooks
/// envelope `{id, type, occurredAt, source, data}`. Written directly rather than built as a
/// JSON value: `data` is stored as compact JSON already, so it goes in as it is.
fn envelope(row: &DeliveryRow) -> String {
    let mut out = String::with_capacity(row.data.len() + 160);
    out.push_str("{\"id\":");
    push_json_str(&mut out, &row.event_id);
    out.push_str(",\"type\":");
    push_json_str(&mut out, &row.event_type);
    out.push_str(",\"occurredAt\":");
    match Ts::from_millis(row.occurred_at) {
        Some(t) => push_json_str(&mut out, &t.to_rfc3339()),
        None => out.push_str("null"),
    }
    out.push_str(",\"source\":");
    push_json_str(&mut out, &row.source);
    out.push_str(",\"data\":");
    // A row written by an older build could hold anything: only well-formed JSON goes in raw.
    if serde_json::from_str::<serde::de::IgnoredAny>(&row.data).is_ok() {
        out.push_str(&row.data);
    } else {
        out.push_str("null");
    }
    out.push('}');
    out
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    // Serializing a &str cannot fail.
    let mut buf = std::mem::take(out).into_bytes();
    let _ = serde_json::to_writer(&mut buf, s);
    *out = String::from_utf8(buf).expect("JSON output is UTF-8");
}

/// Recorded request or response headers: a JSON object of name → value, in their order.
fn headers_json<'a>(h: impl Iterator<Item = (&'a String, &'a String)>) -> String {
    let mut out = String::with_capacity(256);
    out.push('{');
    for (i, (k, v)) in h.enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, k);
        out.push(':');
        push_json_str(&mut out, v);
    }
    out.push('}');
    out
}

/// An endpoint's health after a delivery ended `success` or `dead` (§5.17); `None` = no change.
pub fn health_after(
    e: &EndpointRow,
    success: bool,
    now_ms: i64,
    block_after_dead: i64,
    block_after_failing: Duration,
) -> Option<HealthUpdate> {
    if success {
        if e.consecutive_dead == 0 && e.failing_since.is_none() && e.health == "healthy" {
            return None;
        }
        return Some(HealthUpdate {
            // A blocked endpoint stays blocked until a PATCH re-enables it.
            health: if e.health == "blocked" {
                "blocked"
            } else {
                "healthy"
            }
            .to_string(),
            consecutive_dead: 0,
            failing_since: None,
            blocked_at: e.blocked_at,
            blocked_reason: e.blocked_reason.clone(),
        });
    }
    let consecutive_dead = e.consecutive_dead + 1;
    let failing_since = e.failing_since.unwrap_or(now_ms);
    if e.health == "blocked" {
        return Some(HealthUpdate {
            health: "blocked".to_string(),
            consecutive_dead,
            failing_since: Some(failing_since),
            blocked_at: e.blocked_at,
            blocked_reason: e.blocked_reason.clone(),
        });
    }
    let block = consecutive_dead >= block_after_dead
        || now_ms - failing_since >= block_after_failing.as_millis() as i64;
    Some(HealthUpdate {
        health: if block { "blocked" } else { "failing" }.to_string(),
        consecutive_dead,
        failing_since: Some(failing_since),
        blocked_at: block.then_some(now_ms),
        blocked_reason: block.then(|| "consecutive_failures".to_string()),
    })
}

/// Claims due deliveries and attempts them; sleeps until the earliest due one otherwise.
///
/// Deliveries staged with a step never pass through here (their step's commit leased them to
/// this node); the worker looks at the store only when a row went in unleased, a retry was
/// scheduled, a slot freed up while rows were waiting, another node queued one, or its timer
/// for the earliest due row ran out.
async fn run_worker(hooks: Arc<Webhooks>) {
    // Other nodes' rows (and rows of a lost node) are noticed at least this often.
    const MAX_SLEEP: Duration = Duration::from_secs(30);
    loop {
        if hooks.shutdown.is_cancelled() {
            return;
        }
        // Slots are taken before the claim: staged deliveries take them concurrently, and a
        // claimed row without a slot would wait for its lease to run out.
        let mut permits = Vec::new();
        while let Ok(p) = hooks.slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let free = permits.len();
        let mut claimed = 0;
        if free > 0 {
            // Cleared before the claim: a row stored after it sets the flag again.
            hooks.backlog.store(false, Ordering::SeqCst);
            let now = Ts::now().millis();
            let lease_until = now + hooks.config.claim_lease.as_millis() as i64;
            match hooks
                .store
                .claim_deliveries(&hooks.node_id, now, lease_until, free)
                .await
            {
                Ok(rows) => {
                    claimed = rows.len();
                    for (row, permit) in rows.into_iter().zip(permits.drain(..)) {
                        let h = hooks.clone();
                        tokio::spawn(async move {
                            h.attempt_and_record(row, None, permit).await;
                        });
                    }
                    if claimed == free {
                        // There may be more: the next slot to free up looks again.
                        hooks.backlog.store(true, Ordering::SeqCst);
                    }
                }
                Err(e) => {
                    hooks.backlog.store(true, Ordering::SeqCst);
                    tracing::error!(error = %e, "claiming webhook deliveries failed");
                }
            }
            drop(permits);
        } else {
            hooks.backlog.store(true, Ordering::SeqCst);
        }
        let sleep = if hooks.slots.available_permits() == 0 {
            // Every slot is busy: an attempt ending wakes the worker.
            MAX_SLEEP
        } else {
            match hooks.store.next_delivery_due().await {
                Ok(Some(due)) => {
                    let wait = (due - Ts::now().millis()).max(0) as u64;
                    // A row due now that this claim did not get belongs to a racing node.
                    let floor = if claimed == 0 { 5 } else { 0 };
                    Duration::from_millis(wait.max(floor)).min(MAX_SLEEP)
                }
                Ok(None) => MAX_SLEEP,
                Err(e) => {
                    tracing::error!(error = %e, "reading the webhook queue failed");
                    Duration::from_secs(1)
                }
            }
        };
        tokio::select! {
            _ = hooks.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = hooks.shutdown.cancelled() => return,
        }
    }
}

/// Commits attempt records in batches: whatever is queued goes into one transaction.
async fn run_recorder(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<RecordRequest>) {
    let mut batch: Vec<RecordRequest> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // The writes move to the store; the health closures and replies stay here.
        let mut writes = Vec::with_capacity(batch.len());
        let mut waiting = Vec::with_capacity(batch.len());
        for r in batch.drain(..) {
            writes.push(r.write);
            waiting.push((r.health, r.reply));
        }
        let writes: Vec<(AttemptWrite, Option<HealthFn<'_>>)> = writes
            .into_iter()
            .zip(&waiting)
            .map(|(w, (health, _))| (w, health.as_deref().map(|h| h as HealthFn<'_>)))
            .collect();
        let result = store.finish_attempts(writes).await;
        match result {
            Ok(applied) => {
                for ((_, reply), ok) in waiting.into_iter().zip(applied) {
                    let _ = reply.send(Ok(ok));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (_, reply) in waiting {
                    let _ = reply.send(Err(StoreError::Batch(message.clone())));
                }
            }
        }
    }
}

#[async_trait]
impl WebhookService for Webhooks {
    fn deliveries_due(&self) {
        self.backlog.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn start_staged(&self, staged: Staged) {
        if let Ok(d) = staged.0.downcast::<StagedDelivery>() {
            self.start_committed(*d);
        }
    }

    async fn send_step(&self, call: &StepCall<'_>) -> Result<StepOutput, StepFailure> {
        let raw = call
            .params
            .get("webhookId")
            .and_then(Value::as_str)
            .unwrap_or("");
        let unknown = || {
            StepFailure::new(
                FailureClass::InvalidConfig,
                format!("unknown_webhook: webhook endpoint {raw} does not exist"),
            )
        };
        let id = Uuid::parse_str(raw).map_err(|_| unknown())?;
        let store_failure =
            |e: StoreError| StepFailure::new(FailureClass::Transient, format!("store error: {e}"));
        let endpoint = self
            .endpoint_of(call.owner_id, id)
            .await
            .map_err(store_failure)?
            .filter(|e| e.kind == "http")
            .ok_or_else(unknown)?;
        let payload = call
            .params
            .get("payload")
            .cloned()
            .unwrap_or_else(|| json!({}));
        // A free slot now is this delivery's as soon as the step commits.
        let permit = self.slots.clone().try_acquire_owned().ok();
        let row = self.delivery_row(
            &endpoint,
            Event {
                event_type: STEP_WEBHOOK,
                source: "workflows",
                data: json!({
                    "executionId": call.execution_id,
                    "flowId": call.flow_id,
                    "stepKey": call.step_key,
                    "payload": payload,
                }),
                is_test: false,
                created_by: None,
            },
            permit.is_some(),
        );
        Ok(StepOutput {
            body: json!({ "eventId": row.event_id, "deliveryId": row.id }),
            staged: Some(Staged(Box::new(StagedDelivery {
                row,
                endpoint,
                permit,
            }))),
            ..Default::default()
        })
    }

    async fn notify(&self, owner_id: &str, webhook_id: Uuid, event_type: &str, data: Value) {
        let event_type = match event_type {
            RUN_COMPLETED => RUN_COMPLETED,
            RUN_FAILED => RUN_FAILED,
            other => {
                tracing::warn!(event_type = other, "unknown notification type");
                return;
            }
        };
        let endpoint = match self.endpoint_of(owner_id, webhook_id).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                tracing::debug!(webhook = %webhook_id, "notification dropped: no such endpoint");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "notification lost: store error");
                return;
            }
        };
        let event = Event {
            event_type,
            source: "workflows",
            data,
            is_test: false,
            created_by: None,
        };
        if let Err(e) = self.enqueue(&endpoint, event).await {
            tracing::error!(error = %e, "notification lost: store error");
        }
    }

    async fn check_target(&self, url: &str) -> Result<(), TargetError> {
        self.outbound.policy().check_url(url).await
    }

    async fn send_test(
        &self,
        owner_id: &str,
        webhook_id: Uuid,
        actor_id: Option<&str>,
    ) -> Result<Option<TestResult>, String> {
        let Some(endpoint) = self
            .endpoint_of(owner_id, webhook_id)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let row = self
            .enqueue(
                &endpoint,
                Event {
                    event_type: TEST_EVENT,
                    source: "webhooks",
                    data: json!({ "webhookId": webhook_id }),
                    is_test: true,
                    created_by: actor_id.map(str::to_string),
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        let sent = self
            .attempt(row, Some(endpoint), None)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Some(match sent {
            Some(s) => TestResult {
                success: s.success(),
                status_code: s.status,
                error: s.error,
            },
            None => TestResult {
                success: false,
                status_code: None,
                error: Some(ENDPOINT_DELETED.to_string()),
            },
        }))
    }
}

// ---------------------------------------------------------------------------------------
// Notifications

/// Flow notifications (§5.16) after a live row's terminal write won: `success` with
/// `notifyOnSuccess` → `workflow.run.completed`; `failed`/`invalid` with `notifyOnFailure` →
/// `workflow.run.failed`. Other statuses and verification runs notify nothing.
pub(crate) async fn run_finished(shared: &Shared, row: &ExecutionRow, status: &str) {
    if row.kind != "live" {
        return;
    }
    let event_type = match status {
        "success" => RUN_COMPLETED,
        "failed" | "invalid" => RUN_FAILED,
        _ => return,
    };
    let Some(service) = shared.executor.webhooks() else {
        return;
    };
    let (webhook_id, flow_name) = {
        let defs = shared.registry.read();
        let Some(rec) = defs.flow_any(&row.owner_id, row.flow_id) else {
            return;
        };
        let f = &rec.flow;
        let wanted = if status == "success" {
            f.notify_on_success
        } else {
            f.notify_on_failure
        };
        match (wanted, f.notify_webhook_id) {
            (true, Some(id)) => (id, f.name.clone()),
            _ => return,
        }
    };
    // The row as written (exact times and error).
    let done = match shared.store.get_execution(&row.owner_id, row.id).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, execution = %row.id, "notification lost: store error");
            return;
        }
    };
    let ts = |ms: Option<i64>| ms.and_then(Ts::from_millis);
    let data = json!({
        "executionId": done.id,
        "flowId": done.flow_id,
        "flowName": done.flow_name.clone().unwrap_or(flow_name),
        "triggerId": done.trigger_id,
        "invocationId": done.invocation_id,
        "eventId": done.event_id,
        "deviceId": done.device_id,
        "status": done.status,
        "error": done.error,
        "startedAt": ts(done.started_at),
        "finishedAt": ts(done.finished_at),
    });
    service
        .notify(&row.owner_id, webhook_id, event_type, data)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> EndpointRow {
        EndpointRow {
            id: Uuid::now_v7(),
            owner_id: "o".into(),
            kind: "http".into(),
            url: Some("https://example.com/hook".into()),
            description: None,
            event_types: vec![],
            state: "ACTIVE".into(),
            health: "healthy".into(),
            blocked_at: None,
            blocked_reason: None,
            secret: new_secret(),
            created_by: None,
            created_at: 0,
            updated_at: 0,
            consecutive_dead: 0,
            failing_since: None,
        }
    }

    fn delivery(data: &str) -> DeliveryRow {
        DeliveryRow {
            id: Uuid::now_v7(),
            owner_id: "o".into(),
            endpoint_id: Uuid::now_v7(),
            event_id: "ev \"1\"".into(),
            event_type: "flow.webhook".into(),
            source: "flow/ü".into(),
            occurred_at: 1_765_000_000_123,
            data: data.into(),
            status: "pending".into(),
            attempts: 0,
            last_status_code: None,
            last_error: None,
            duration_ms: None,
            is_test: false,
            created_at: 0,
            completed_at: None,
            created_by: None,
            next_attempt_at: None,
            lease_owner: None,
        }
    }

    #[test]
    fn the_envelope_is_the_json_of_its_fields_with_data_as_stored() {
        let data = json!({"payload": {"seq": 7, "s": "a\nb"}, "n": [1, 2.5, null]});
        let row = delivery(&data.to_string());
        let expected = json!({
            "id": row.event_id,
            "type": row.event_type,
            "occurredAt": Ts::from_millis(row.occurred_at).map(|t| t.to_rfc3339()),
            "source": row.source,
            "data": data,
        })
        .to_string();
        assert_eq!(envelope(&row), expected);
        // Anything but JSON in the row goes out as null rather than as a broken body.
        let broken = envelope(&delivery("{not json"));
        assert_eq!(
            serde_json::from_str::<Value>(&broken).unwrap()["data"],
            Value::Null
        );
    }

    #[test]
    fn recorded_headers_are_a_json_object_in_their_order() {
        let h = [
            ("b".to_string(), "1".to_string()),
            ("a\"".to_string(), "x\ty".to_string()),
        ];
        let json = headers_json(h.iter().map(|(k, v)| (k, v)));
        assert_eq!(json, r#"{"b":"1","a\"":"x\ty"}"#);
        assert_eq!(headers_json(std::iter::empty()), "{}");
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn dead_deliveries_make_an_endpoint_failing_then_blocked() {
        let mut e = endpoint();
        let h = health_after(&e, false, 1000, 3, DAY).unwrap();
        assert_eq!(h.health, "failing");
        assert_eq!(h.failing_since, Some(1000));
        e.health = h.health;
        e.consecutive_dead = h.consecutive_dead;
        e.failing_since = h.failing_since;
        let h = health_after(&e, false, 2000, 3, DAY).unwrap();
        assert_eq!((h.health.as_str(), h.consecutive_dead), ("failing", 2));
        e.consecutive_dead = 2;
        let h = health_after(&e, false, 3000, 3, DAY).unwrap();
        assert_eq!(h.health, "blocked");
        assert_eq!(h.blocked_at, Some(3000));
        assert_eq!(h.blocked_reason.as_deref(), Some("consecutive_failures"));
    }

    #[test]
    fn a_day_failing_without_success_blocks() {
        let mut e = endpoint();
        e.health = "failing".into();
        e.consecutive_dead = 1;
        e.failing_since = Some(0);
        let h = health_after(&e, false, DAY.as_millis() as i64, 50, DAY).unwrap();
        assert_eq!(h.health, "blocked");
    }

    #[test]
    fn success_heals_a_failing_endpoint_but_not_a_blocked_one() {
        let mut e = endpoint();
        assert_eq!(health_after(&e, true, 5, 50, DAY), None);
        e.health = "failing".into();
        e.consecutive_dead = 4;
        e.failing_since = Some(1);
        let h = health_after(&e, true, 5, 50, DAY).unwrap();
        assert_eq!((h.health.as_str(), h.consecutive_dead), ("healthy", 0));
        e.health = "blocked".into();
        assert_eq!(
            health_after(&e, true, 5, 50, DAY).unwrap().health,
            "blocked"
        );
    }

    #[test]
    fn routing_skips_disabled_blocked_and_unsubscribed_endpoints() {
        let mut e = endpoint();
        assert_eq!(routing_skip(&e, RUN_FAILED), None);
        e.event_types = vec![RUN_COMPLETED.into()];
        assert_eq!(routing_skip(&e, RUN_FAILED), Some(NOT_SUBSCRIBED));
        assert_eq!(routing_skip(&e, RUN_COMPLETED), None);
        e.health = "blocked".into();
        assert_eq!(routing_skip(&e, RUN_COMPLETED), Some(ENDPOINT_BLOCKED));
        e.state = "DISABLED".into();
        assert_eq!(routing_skip(&e, RUN_COMPLETED), Some(ENDPOINT_DISABLED));
    }

    #[test]
    fn retry_scale_shrinks_the_schedule() {
        let c = WebhookConfig::default().with_retry_scale(0.001);
        assert_eq!(c.retry_delays[0], Duration::from_millis(30));
        assert_eq!(c.retry_delays[5], Duration::from_millis(86_400));
        assert_eq!(c.max_attempts(), 7);
    }
}
