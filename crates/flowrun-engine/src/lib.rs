//! flowrun-engine: turns firings into execution rows and runs them.
//!
//! - [`enqueue`]: fan-out and gates, batched into one transaction per batch of firings.
//! - [`worker`]: the dispatcher that claims `pending` rows under a lease (woken at once on
//!   enqueue, polling only as a fallback), the step loop, abort signalling, the lease
//!   heartbeat and the reaper that re-queues rows of a crashed node.
//! - [`health`]: flow health after a terminal live run.
//! - [`scheduler`]: schedule triggers (§5.3), sleeping until the earliest due time.
//! - `probes`: device reachability probes (registration, address change, after device
//!   steps, periodically), off every request and step path.
//! - [`webhooks`]: outbound webhook deliveries (retries, endpoint health) and flow
//!   notifications.
//! - `signals`: with several nodes on one database, other nodes' commits heard through the
//!   store (definition reloads, wake-ups, aborts) and the lease watch.
//!
//! The store is the authority for every status; the engine's in-memory maps (running rows,
//! their cancellation tokens, busy devices) only speed up signalling on this node.

mod artifacts;
pub mod enqueue;
pub mod events;
pub mod health;
mod probes;
pub mod scheduler;
mod signals;
pub mod snapshot;
mod telemetry;
pub mod view;
pub mod webhooks;
pub mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowrun_actions::StepExecutor;
use flowrun_core::Ts;
use flowrun_store::{AbortOutcome, ExecutionRow, IdemBegin, Registry, Store, StoreError};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use enqueue::{EventInfo, Firing, FiringOutcome, GatesReport, Origin, gates_report};
pub use events::{IngestKey, Ingested, NewEvent};

/// Engine settings (flags / `FLOWRUN_*` environment of `flowrun serve`).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Executions run at once on this node.
    pub workers: usize,
    /// A claimed row's lease; renewed every `lease / 6`.
    pub lease: Duration,
    /// Attempts before a row whose worker keeps vanishing ends `failed`.
    pub max_attempts: i32,
    /// Consecutive failures that block a flow (§5.13).
    pub failure_threshold: i64,
    /// Per-flow rate limit (executions per minute; 0 = none).
    pub flow_rate_limit_per_minute: u32,
    /// Fallback poll of the queue (other nodes' enqueues, missed wake-ups).
    pub poll_interval: Duration,
    /// Only this process uses the store (SQLite): rows left `running` by a previous process
    /// are reclaimed at start instead of after their lease expires.
    pub exclusive_store: bool,
    /// Every device is probed this often (§5.12).
    pub probe_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: 64,
            lease: Duration::from_secs(30),
            max_attempts: 3,
            failure_threshold: 5,
            flow_rate_limit_per_minute: 60,
            poll_interval: Duration::from_millis(250),
            exclusive_store: true,
            probe_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum EngineError {
    #[error("store error: {0}")]
    Store(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Store(e.to_string())
    }
}

/// A row this node is running.
pub(crate) struct RunningEntry {
    pub cancel: CancellationToken,
    pub device: Option<Uuid>,
}

/// State shared by the engine's tasks.
pub(crate) struct Shared {
    pub registry: Arc<Registry>,
    pub store: Arc<dyn Store>,
    pub config: EngineConfig,
    pub executor: Arc<dyn StepExecutor>,
    /// This process's lease owner id.
    pub node_id: String,
    /// Wakes the dispatcher (new pending rows, a device or worker slot freed).
    pub wake: Notify,
    /// Wakes the event router (events stored).
    pub route_wake: Notify,
    pub running: Mutex<HashMap<Uuid, RunningEntry>>,
    /// Worker slots taken by rows an enqueue is committing already claimed (they join
    /// `running` once committed; see `worker::hand_over`).
    pub reserved: std::sync::atomic::AtomicUsize,
    /// Bumped by whatever may have made a row claimable (pending rows stored, a device
    /// freed, rows requeued, another node's signal); the dispatcher claims only when it
    /// moved, when its last claim filled every slot, or on its poll (see `run_dispatcher`).
    pub claimable: std::sync::atomic::AtomicU64,
    /// Aborts that found no running entry here: a claim racing the abort must not start the
    /// row. Guarded by the `running` lock's discipline (both taken together in order).
    pub recent_aborts: Mutex<HashMap<Uuid, std::time::Instant>>,
    pub writer: mpsc::UnboundedSender<worker::WriteRequest>,
    pub shutdown: CancellationToken,
    /// Per-flow rate-limit buckets: taken by the enqueuer, read by dry-runs.
    pub buckets: Mutex<enqueue::Buckets>,
    /// Devices to probe (§5.12).
    pub probes: mpsc::UnboundedSender<Uuid>,
}

impl Shared {
    pub fn running(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, RunningEntry>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn buckets(&self) -> std::sync::MutexGuard<'_, enqueue::Buckets> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recent_aborts(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, std::time::Instant>> {
        self.recent_aborts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rows may have become claimable: wakes the dispatcher to claim.
    pub fn rows_claimable(&self) {
        self.claimable
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Whether the row was aborted before its run was registered (call with `running` held).
    pub fn take_recent_abort(&self, id: Uuid) -> bool {
        self.recent_aborts().remove(&id).is_some()
    }

    /// Signals the run of a cancelled row: cancels its token, or remembers the abort when
    /// the row is not (yet) registered here.
    pub fn signal_abort(&self, id: Uuid) {
        let running = self.running();
        if let Some(entry) = running.get(&id) {
            entry.cancel.cancel();
            return;
        }
        let mut recent = self.recent_aborts();
        let now = std::time::Instant::now();
        recent.retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
        recent.insert(id, now);
    }
}

/// Commits firings (and marks the events they route) in one transaction.
pub(crate) async fn submit_group(
    firings_tx: &mpsc::Sender<enqueue::EnqueueRequest>,
    firings: Vec<Firing>,
    routed_events: Vec<String>,
) -> Result<Vec<FiringOutcome>, EngineError> {
    let (reply, rx) = oneshot::channel();
    firings_tx
        .send(enqueue::EnqueueRequest {
            firings,
            routed_events,
            reply,
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)?;
    rx.await.map_err(|_| EngineError::ShuttingDown)?
}

/// The running engine of one node.
pub struct Engine {
    shared: Arc<Shared>,
    firings: mpsc::Sender<enqueue::EnqueueRequest>,
    ingest: mpsc::Sender<events::IngestRequest>,
    /// `flowrun_events_ingested_total`, registered once (with the recorder installed before
    /// start) rather than looked up again for every event.
    ingested: metrics::Counter,
    schedules: Arc<scheduler::Scheduler>,
}

impl Engine {
    /// Starts the enqueuer, the dispatcher, the heartbeat and the reaper.
    pub async fn start(
        registry: Arc<Registry>,
        config: EngineConfig,
        executor: Arc<dyn StepExecutor>,
    ) -> Result<Arc<Engine>, EngineError> {
        let store = registry.store().clone();
        let (writer, writes) = mpsc::unbounded_channel();
        let buckets = enqueue::Buckets::new(config.flow_rate_limit_per_minute);
        let (probes, probe_requests) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            registry,
            store,
            config,
            executor,
            node_id: format!("node-{}", Uuid::new_v4()),
            wake: Notify::new(),
            route_wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            reserved: std::sync::atomic::AtomicUsize::new(0),
            claimable: std::sync::atomic::AtomicU64::new(0),
            recent_aborts: Mutex::new(HashMap::new()),
            writer,
            shutdown: CancellationToken::new(),
            buckets: Mutex::new(buckets),
            probes,
        });
        if shared.config.exclusive_store {
            worker::reap(&shared, true).await?;
        }
        let (firings, firing_rx) = mpsc::channel(4096);
        tokio::spawn(worker::run_writer(shared.clone(), writes));
        tokio::spawn(enqueue::run_enqueuer(shared.clone(), firing_rx));
        let (ingest, ingest_rx) = mpsc::channel(16384);
        tokio::spawn(events::run_ingest_writer(shared.clone(), ingest_rx));
        tokio::spawn(events::run_router(shared.clone(), firings.clone()));
        tokio::spawn(worker::run_dispatcher(shared.clone()));
        tokio::spawn(worker::run_heartbeat(shared.clone()));
        tokio::spawn(probes::run_prober(shared.clone(), probe_requests));
        tokio::spawn(run_behind_writer(shared.clone()));
        let schedules = scheduler::start(&shared, firings.clone()).await?;
        if let Some(signals) = shared.store.listen().await? {
            // Changes committed between loading the definitions and listening were not heard.
            signals::resync(&shared, &schedules).await;
            tokio::spawn(signals::run_signals(
                shared.clone(),
                schedules.clone(),
                signals,
            ));
        }
        if !shared.config.exclusive_store {
            tokio::spawn(signals::run_lease_watch(shared.clone()));
        }
        Ok(Arc::new(Engine {
            shared,
            firings,
            ingest,
            ingested: metrics::counter!("flowrun_events_ingested_total"),
            schedules,
        }))
    }

    /// Fans a firing out and commits its rows; returns once they are durable.
    pub async fn submit(&self, firing: Firing) -> Result<FiringOutcome, EngineError> {
        let mut out = submit_group(&self.firings, vec![firing], Vec::new()).await?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Stores an event durably (with any event it derives) and, with a key, the key's record
    /// in the same commit; routing happens afterwards, in arrival order.
    pub async fn ingest(
        &self,
        event: NewEvent,
        key: Option<IngestKey>,
    ) -> Result<Ingested, EngineError> {
        let (id, request) = events::keyed_events(&self.shared.registry, event, key);
        let (tx, rx) = oneshot::channel();
        self.ingest
            .send((request, tx))
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        Ok(match rx.await.map_err(|_| EngineError::ShuttingDown)?? {
            IdemBegin::New => {
                self.ingested.increment(1);
                Ingested::Stored(id)
            }
            taken => Ingested::KeyTaken(taken),
        })
    }

    /// Aborts a row (§5.8): the store decides; a run held by this node is signalled at once.
    pub async fn abort(&self, owner_id: &str, id: Uuid) -> Result<AbortOutcome, EngineError> {
        let asked = std::time::Instant::now();
        let now = Ts::now();
        let registry = self.shared.registry.clone();
        let outcome = self
            .shared
            .store
            .abort_execution(owner_id, id, now.millis(), &move |row: &ExecutionRow| {
                let mut state =
                    flowrun_core::execution::ExecState::parse(&row.state).cancelled(now);
                artifacts::add_deliveries(&registry, &row.owner_id, row.flow_id, &mut state, now);
                state.to_json()
            })
            .await?;
        if let AbortOutcome::Cancelled(row) = &outcome {
            self.shared.signal_abort(id);
            telemetry::aborted(row, asked.elapsed());
        }
        Ok(outcome)
    }

    /// Stops claiming new rows. Rows in flight keep their lease and are reclaimed after a
    /// restart.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.shared.rows_claimable();
    }

    /// Writes what is held in memory only (see [`Registry::flush_behind`]); for a clean stop.
    pub async fn flush(&self) {
        if let Err(e) = self.shared.registry.flush_behind().await {
            tracing::error!(error = %e, "writing lastTriggeredAt failed");
        }
    }

    /// Rows running on this node now.
    pub fn running_count(&self) -> usize {
        self.shared.running().len()
    }

    /// Asks for a probe of the device soon (registration, address change); never waits.
    pub fn probe_device(&self, device_id: Uuid) {
        let _ = self.shared.probes.send(device_id);
    }

    /// Devices leased by a run on this node (`Device.state: "busy"`).
    pub fn busy_devices(&self) -> Vec<Uuid> {
        self.shared
            .running()
            .values()
            .filter_map(|e| e.device)
            .collect()
    }

    /// Whether the flow's rate-limit bucket has no whole token left (§5.6; dry-runs report it
    /// as `rateLimited` and never take one).
    pub fn rate_limited(&self, flow_id: Uuid) -> bool {
        self.shared
            .buckets()
            .exhausted(flow_id, std::time::Instant::now())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// The outbound webhook service of the step executor (§5.17), if it has one.
    pub fn webhooks(&self) -> Option<Arc<dyn webhooks::WebhookService>> {
        self.shared.executor.webhooks()
    }
}

/// How long a flow's `lastTriggeredAt` may be newer in memory than in the store.
const BEHIND_INTERVAL: Duration = Duration::from_millis(100);

/// Writes the flows' `lastTriggeredAt` held in memory (see [`Registry::flush_behind`]).
async fn run_behind_writer(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(BEHIND_INTERVAL) => {}
            _ = shared.shutdown.cancelled() => return,
        }
        if let Err(e) = shared.registry.flush_behind().await {
            tracing::error!(error = %e, "writing lastTriggeredAt failed");
        }
    }
}
