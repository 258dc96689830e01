//! flowrun-store: durable state behind one [`Store`] trait, with an embedded SQLite backend
//! (the default) and a PostgreSQL backend for several nodes.
//!
//! Definitions (triggers, actions, flows, devices) are small, read on every request and on
//! every event, so the server keeps them in memory ([`Registry`]) and writes through to the
//! store; the store is the authority at start-up. Idempotency records and API keys live only
//! in the store.

pub mod artifacts;
mod canonical;
pub mod events;
pub mod executions;
mod pg_artifacts;
mod pg_events;
mod pg_exec;
mod pg_notify;
mod pg_sched;
mod pg_webhooks;
mod postgres;
mod registry;
pub mod schedules;
mod sqlite;
mod sqlite_artifacts;
mod sqlite_batch;
mod sqlite_events;
mod sqlite_exec;
mod sqlite_hot;
mod sqlite_sched;
mod sqlite_webhooks;
pub mod webhooks;

use std::sync::Arc;

use async_trait::async_trait;

pub use artifacts::{ArtifactRow, ArtifactStore, RepairRow};
pub use canonical::{canonical_json, write_canonical};
pub use events::{EventKey, EventRow, EventStore, KeyedEvents};
pub use executions::{
    AbortOutcome, Durable, ExecFilter, ExecMetrics, ExecOrder, ExecOrderBy, ExecUpdate,
    ExecutionRow, ExecutionStore, ReapOutcome,
};
pub use registry::{Change, Defs, Registry};
pub use schedules::{ClaimedSchedule, ScheduleAdvance, ScheduleRow, ScheduleStore};
pub use webhooks::{
    AttemptRow, AttemptWrite, DeliveryFilter, DeliveryRow, EndpointPatch, EndpointRow,
    HealthUpdate, WebhookStore,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// From the hot writes, which run on the SQLite handle directly (see `sqlite_batch`).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt stored document {kind}/{id}: {source}")]
    Corrupt {
        kind: String,
        id: String,
        source: serde_json::Error,
    },
    #[error("unsupported database URL '{0}' (expected sqlite:… or postgres://…)")]
    UnsupportedUrl(String),
    /// Another node changed the rows first (e.g. routed the same events); nothing was written.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A batch this write was part of failed (the batch changed nothing).
    #[error("batch write failed: {0}")]
    Batch(String),
    /// The task that writes for this caller has stopped (shutdown).
    #[error("the store writer has stopped")]
    Closed,
}

/// `cols` (comma-separated) each prefixed with `prefix`.
pub(crate) fn prefixed(prefix: &str, cols: &str) -> String {
    cols.split(',')
        .map(|c| format!("{prefix}{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Splits a batch's row ids into rounds holding each id at most once, in order: a row's writes
/// within one multi-row statement would race, across rounds they apply in order.
pub(crate) fn write_rounds<K: std::hash::Hash + Eq + Copy>(
    ids: impl Iterator<Item = K>,
) -> Vec<Vec<usize>> {
    let ids: Vec<K> = ids.collect();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut rest: Vec<usize> = (0..ids.len()).collect();
    while !rest.is_empty() {
        let mut seen = std::collections::HashSet::new();
        let (round, later): (Vec<usize>, Vec<usize>) =
            rest.iter().partition(|&&i| seen.insert(ids[i]));
        rest = later;
        rounds.push(round);
    }
    rounds
}

/// A change committed by another node, heard through the store (PostgreSQL `LISTEN`).
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    /// A definition document was written or deleted: reload it.
    Definition { kind: DocKind, id: String },
    /// A webhook endpoint was created or deleted.
    Endpoint { id: String },
    /// New `pending` executions.
    Executions,
    /// Events stored, waiting to be routed.
    Events,
    /// This execution was aborted: cancel its run if it is held here.
    Abort(uuid::Uuid),
    /// A webhook delivery was queued.
    Deliveries,
    /// A schedule changed.
    Schedules,
    /// The listening connection was re-established: notifications may have been missed, so
    /// reload every definition and look at every queue.
    Resync,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stored API key (only its hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub key_hash: String,
    pub owner_id: String,
    pub actor_id: String,
    pub created_at_ms: i64,
    pub revoked: bool,
}

/// The kinds of definition documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DocKind {
    Trigger,
    Action,
    Flow,
    Device,
}

impl DocKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Trigger => "trigger",
            DocKind::Action => "action",
            DocKind::Flow => "flow",
            DocKind::Device => "device",
        }
    }
}

/// A stored definition document.
#[derive(Clone, Debug)]
pub struct Doc {
    pub id: String,
    pub owner_id: String,
    pub json: String,
}

/// One write of a definition document; `json: None` deletes it.
#[derive(Clone, Debug)]
pub struct DocWrite {
    pub kind: DocKind,
    pub id: String,
    pub owner_id: String,
    pub json: Option<String>,
}

/// The scope of an idempotency record (§1.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdemScope {
    pub owner_id: String,
    pub method: String,
    pub route: String,
    pub key: String,
}

/// A stored 2xx outcome to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Vec<u8>,
    pub location: Option<String>,
}

/// What the store says about an idempotency key at the start of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdemBegin {
    /// First use: the caller executes and then completes or releases.
    New,
    /// Same fingerprint, outcome stored.
    Replay(StoredResponse),
    /// Same fingerprint, recorded without a replayable outcome (fire).
    Seen,
    /// Same fingerprint, first request still executing.
    InProgress,
    /// Same scope, different fingerprint.
    Mismatch,
}

/// Lifetime of an idempotency record.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;
/// A `running` record older than this was left by a crashed request and may be taken over.
pub const IDEMPOTENCY_STALE_MS: i64 = 5 * 60 * 1000;

#[async_trait]
pub trait Store:
    ExecutionStore + EventStore + ScheduleStore + WebhookStore + ArtifactStore + Send + Sync + 'static
{
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Cheap round trip used by `/healthz`.
    async fn ping(&self) -> Result<()>;

    /// `pending` executions of every owner (the queue depth on `/metrics`).
    async fn queue_depth(&self) -> Result<i64>;

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()>;
    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>>;
    async fn count_api_keys(&self) -> Result<i64>;

    async fn get_setting(&self, name: &str) -> Result<Option<String>>;
    /// Stores `value` unless the setting exists; returns the stored value either way.
    async fn init_setting(&self, name: &str, value: &str) -> Result<String>;

    async fn load_docs(&self, kind: DocKind) -> Result<Vec<Doc>>;
    /// One document, `None` when it does not exist (any more).
    async fn load_doc(&self, kind: DocKind, id: &str) -> Result<Option<Doc>>;

    /// Signals of changes other nodes commit; `None` when the store is this process's alone
    /// (SQLite), where every change happens in-process.
    async fn listen(&self) -> Result<Option<tokio::sync::mpsc::Receiver<Signal>>> {
        Ok(None)
    }
    /// Applies every write in one transaction.
    async fn write_docs(&self, writes: &[DocWrite]) -> Result<()>;

    async fn idem_begin(
        &self,
        scope: &IdemScope,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<IdemBegin>;
    /// Stores the outcome; `response: None` records the fingerprint without a replay body.
    async fn idem_complete(
        &self,
        scope: &IdemScope,
        response: Option<&StoredResponse>,
    ) -> Result<()>;
    async fn idem_release(&self, scope: &IdemScope) -> Result<()>;

    /// The group commit of ingest: stores each request's events unless its key is already
    /// recorded, recording the key with its reply. Returns per request `New` (stored) or
    /// what the existing record says. This default claims keys one by one around
    /// [`EventStore::insert_events`]; a backend may write them in the events' transaction.
    async fn insert_keyed_events(
        &self,
        batch: &[KeyedEvents],
        now_ms: i64,
    ) -> Result<Vec<IdemBegin>> {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut rows = Vec::new();
        // Each claimed key with the id of the event it stores.
        let mut claimed: Vec<(&EventKey, &str)> = Vec::new();
        for item in batch {
            let outcome = match &item.key {
                Some(k) => match self.idem_begin(&k.scope, &k.fingerprint, now_ms).await {
                    Ok(o) => o,
                    Err(e) => {
                        for (k, _) in claimed {
                            let _ = self.idem_release(&k.scope).await;
                        }
                        return Err(e);
                    }
                },
                None => IdemBegin::New,
            };
            if matches!(outcome, IdemBegin::New) {
                rows.extend(item.rows.iter().cloned());
                if let (Some(k), Some(row)) = (&item.key, item.rows.first()) {
                    claimed.push((k, &row.id));
                }
            }
            outcomes.push(outcome);
        }
        if let Err(e) = self.insert_events(&rows).await {
            for (k, _) in claimed {
                let _ = self.idem_release(&k.scope).await;
            }
            return Err(e);
        }
        for (k, event_id) in claimed {
            if let Err(e) = self
                .idem_complete(&k.scope, Some(&(k.reply)(event_id)))
                .await
            {
                tracing::error!(error = %e, "storing idempotent response");
            }
        }
        Ok(outcomes)
    }
}

/// Opens the store named by a database URL and applies its migrations.
///
/// `sqlite:path` / `sqlite://path` / a bare file path → SQLite (created when missing);
/// `postgres://…` / `postgresql://…` → PostgreSQL.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(url).await?))
    } else if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        Ok(Arc::new(sqlite::SqliteStore::open(path).await?))
    } else if !url.contains("://") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_string()))
    }
}

/// Decides an idempotency outcome from an existing record (shared by both backends).
pub(crate) fn decide_existing(
    fingerprint: &str,
    stored_fp: &str,
    state: &str,
    status: Option<i32>,
    body: Option<Vec<u8>>,
    location: Option<String>,
) -> IdemBegin {
    if stored_fp != fingerprint {
        return IdemBegin::Mismatch;
    }
    match (state, status) {
        ("done", Some(status)) => IdemBegin::Replay(StoredResponse {
            status: status as u16,
            body: body.unwrap_or_default(),
            location,
        }),
        ("done", None) => IdemBegin::Seen,
        _ => IdemBegin::InProgress,
    }
}

#[cfg(test)]
mod write_rounds_tests {
    #[test]
    fn each_round_holds_an_id_once_and_keeps_order() {
        let rounds = super::write_rounds(["a", "b", "a", "c", "a", "b"].into_iter());
        assert_eq!(rounds, vec![vec![0, 1, 3], vec![2, 5], vec![4]]);
    }
}
