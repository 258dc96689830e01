//! Stored artifacts (screenshot bytes, §5.18) and self-healing repair records (§5.15).
//!
//! Artifact bytes live in the database, not on a node's disk, so every node on one database
//! can serve any artifact. A repair episode is opened under a per-flow serialisation (the
//! single SQLite writer; a transaction-scoped advisory lock on PostgreSQL), so two failures
//! finishing at once on different nodes never open two episodes.

use async_trait::async_trait;
use uuid::Uuid;

use crate::Result;

/// One stored artifact, every column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactRow {
    /// Opaque id (also the `Screenshot.id` of a screenshot).
    pub id: String,
    pub owner_id: String,
    pub execution_id: Uuid,
    pub mime_type: String,
    pub bytes: Vec<u8>,
    pub created_at: i64,
}

/// Repair statuses that leave an episode open (§4.8).
pub const OPEN_REPAIR_STATUSES: [&str; 4] = ["pending", "running", "canary", "promoting"];

/// One stored repair record, every column.
#[derive(Clone, Debug, PartialEq)]
pub struct RepairRow {
    pub id: Uuid,
    pub owner_id: String,
    pub flow_id: Uuid,
    pub episode: i64,
    pub attempt: i64,
    pub max_attempts: i64,
    pub status: String,
    pub source_execution_id: Uuid,
    pub failed_step_index: i64,
    pub original_slug: String,
    pub candidate_slug: String,
    pub device_id: Option<Uuid>,
    pub agent_run_id: Option<String>,
    pub chat_session_id: Option<String>,
    /// `Verdict` as JSON.
    pub verdict: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[async_trait]
pub trait ArtifactStore {
    async fn insert_artifact(&self, artifact: &ArtifactRow) -> Result<()>;
    /// The artifact if it exists and belongs to `owner_id`.
    async fn get_artifact(&self, owner_id: &str, id: &str) -> Result<Option<ArtifactRow>>;

    /// Opens a new episode for `repair.flow_id` unless one is still open: the row is stored
    /// with `episode` = the flow's last episode + 1 (the given `episode` is ignored). Returns
    /// the stored row, or `None` when an open episode exists.
    async fn open_repair(&self, repair: &RepairRow) -> Result<Option<RepairRow>>;
    /// The flow's repairs, `episode desc, attempt desc`.
    async fn list_repairs(&self, owner_id: &str, flow_id: Uuid) -> Result<Vec<RepairRow>>;
}

/// `?`-placeholder column list shared by both backends.
pub(crate) const REPAIR_COLS: &str = "id, owner_id, flow_id, episode, attempt, max_attempts, \
     status, source_execution_id, failed_step_index, original_slug, candidate_slug, device_id, \
     agent_run_id, chat_session_id, verdict, error, started_at, finished_at, created_at, \
     updated_at";
