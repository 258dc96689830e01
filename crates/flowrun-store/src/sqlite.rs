//! The embedded SQLite backend: one file, WAL mode, migrations applied at open.
//!
//! SQLite has one writer at a time, so writes go through a pool of exactly one connection
//! (no `SQLITE_BUSY` upgrade races between writers) while reads use their own pool.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

use crate::{
    ApiKeyRecord, Doc, DocKind, DocWrite, IDEMPOTENCY_STALE_MS, IDEMPOTENCY_TTL_MS, IdemBegin,
    IdemScope, KeyedEvents, Result, Store, StoredResponse, decide_existing,
};

pub struct SqliteStore {
    pub(crate) writer: SqlitePool,
    pub(crate) reader: SqlitePool,
    /// The hot writes' group commit (see `sqlite_batch`).
    pub(crate) commits: crate::sqlite_batch::CommitQueue,
}

impl SqliteStore {
    pub async fn open(path: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk when it returns (accepted input is never lost).
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Statement journals (every multi-row or constrained write inside a transaction
            // keeps one, with a copy of each page it touches) and temporary b-trees stay in
            // memory: on a file they cost a write system call per page.
            .pragma("temp_store", "memory");
        // No ping before each acquire: it is a round trip to the connection's thread (two
        // wake-ups) on every write and read, and a broken file fails the query itself anyway.
        // The writer leaves checkpoints to the commit queue's checkpoint thread (see
        // sqlite_batch); an in-memory database has no WAL.
        let checkpointed = wal_path(path).is_some();
        let writer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(if checkpointed {
                opts.clone().pragma("wal_autocheckpoint", "0")
            } else {
                opts.clone()
            })
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(Self {
            commits: crate::sqlite_batch::CommitQueue::start(writer.clone(), wal_path(path)),
            writer,
            reader,
        })
    }
}

/// The WAL file of the database at `path` (a file path or a `file:` URI, maybe with a
/// query); none for an in-memory database.
fn wal_path(path: &str) -> Option<std::path::PathBuf> {
    if path == ":memory:" || path.contains("mode=memory") {
        return None;
    }
    let file = path.strip_prefix("file:").unwrap_or(path);
    let file = file.split('?').next().unwrap_or(file);
    Some(std::path::PathBuf::from(format!("{file}-wal")))
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (key_hash, owner_id, actor_id, created_at, revoked_at) VALUES (?, ?, ?, ?, NULL)",
        )
        .bind(&key.key_hash)
        .bind(&key.owner_id)
        .bind(&key.actor_id)
        .bind(key.created_at_ms)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        let row = sqlx::query(
            "SELECT key_hash, owner_id, actor_id, created_at, revoked_at FROM api_keys WHERE key_hash = ?",
        )
        .bind(key_hash)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(|r| ApiKeyRecord {
            key_hash: r.get(0),
            owner_id: r.get(1),
            actor_id: r.get(2),
            created_at_ms: r.get(3),
            revoked: r.get::<Option<i64>, _>(4).is_some(),
        }))
    }

    async fn queue_depth(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM executions WHERE status = 'pending'")
                .fetch_one(&self.reader)
                .await?,
        )
    }

    async fn count_api_keys(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.reader)
            .await?)
    }

    async fn get_setting(&self, name: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    async fn init_setting(&self, name: &str, value: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.writer)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE name = ?")
                .bind(name)
                .fetch_one(&self.writer)
                .await?,
        )
    }

    async fn load_docs(&self, kind: DocKind) -> Result<Vec<Doc>> {
        let rows =
            sqlx::query("SELECT id, owner_id, doc FROM definitions WHERE kind = ? ORDER BY id")
                .bind(kind.as_str())
                .fetch_all(&self.reader)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| Doc {
                id: r.get(0),
                owner_id: r.get(1),
                json: r.get(2),
            })
            .collect())
    }

    async fn load_doc(&self, kind: DocKind, id: &str) -> Result<Option<Doc>> {
        let row =
            sqlx::query("SELECT id, owner_id, doc FROM definitions WHERE kind = ? AND id = ?")
                .bind(kind.as_str())
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
        Ok(row.map(|r| Doc {
            id: r.get(0),
            owner_id: r.get(1),
            json: r.get(2),
        }))
    }

    async fn write_docs(&self, writes: &[DocWrite]) -> Result<()> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut tx = self.writer.begin().await?;
        for w in writes {
            write_doc(&mut tx, w, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn idem_begin(&self, s: &IdemScope, fingerprint: &str, now_ms: i64) -> Result<IdemBegin> {
        let mut tx = self.writer.begin().await?;
        // Expired records and abandoned running ones no longer hold the key.
        sqlx::query(
            "DELETE FROM idempotency WHERE owner_id = ? AND method = ? AND route = ? AND idem_key = ? \
             AND (created_at < ? OR (state = 'running' AND created_at < ?))",
        )
        .bind(&s.owner_id)
        .bind(&s.method)
        .bind(&s.route)
        .bind(&s.key)
        .bind(now_ms - IDEMPOTENCY_TTL_MS)
        .bind(now_ms - IDEMPOTENCY_STALE_MS)
        .execute(&mut *tx)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO idempotency (owner_id, method, route, idem_key, fingerprint, state, created_at) \
             VALUES (?, ?, ?, ?, ?, 'running', ?) ON CONFLICT DO NOTHING",
        )
        .bind(&s.owner_id)
        .bind(&s.method)
        .bind(&s.route)
        .bind(&s.key)
        .bind(fingerprint)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let outcome = if inserted == 1 {
            IdemBegin::New
        } else {
            let r = sqlx::query(
                "SELECT fingerprint, state, status, body, location FROM idempotency \
                 WHERE owner_id = ? AND method = ? AND route = ? AND idem_key = ?",
            )
            .bind(&s.owner_id)
            .bind(&s.method)
            .bind(&s.route)
            .bind(&s.key)
            .fetch_one(&mut *tx)
            .await?;
            decide_existing(
                fingerprint,
                &r.get::<String, _>(0),
                &r.get::<String, _>(1),
                r.get(2),
                r.get(3),
                r.get(4),
            )
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn idem_complete(&self, s: &IdemScope, response: Option<&StoredResponse>) -> Result<()> {
        sqlx::query(
            "UPDATE idempotency SET state = 'done', status = ?, body = ?, location = ? \
             WHERE owner_id = ? AND method = ? AND route = ? AND idem_key = ?",
        )
        .bind(response.map(|r| r.status as i32))
        .bind(response.map(|r| r.body.clone()))
        .bind(response.and_then(|r| r.location.clone()))
        .bind(&s.owner_id)
        .bind(&s.method)
        .bind(&s.route)
        .bind(&s.key)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn insert_keyed_events(
        &self,
        batch: &[KeyedEvents],
        now_ms: i64,
    ) -> Result<Vec<IdemBegin>> {
        crate::sqlite_events::insert_keyed_events(self, batch, now_ms).await
    }

    async fn idem_release(&self, s: &IdemScope) -> Result<()> {
        sqlx::query(
            "DELETE FROM idempotency WHERE owner_id = ? AND method = ? AND route = ? AND idem_key = ? AND state = 'running'",
        )
        .bind(&s.owner_id)
        .bind(&s.method)
        .bind(&s.route)
        .bind(&s.key)
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}

/// A definition's upsert: kind, id, owner, document, time (here and in `sqlite_hot`).
pub(crate) const PUT_DOC: &str = "INSERT INTO definitions (kind, id, owner_id, doc, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (kind, id) DO UPDATE SET doc = excluded.doc, \
     owner_id = excluded.owner_id, updated_at = excluded.updated_at";
/// A definition's delete: kind, id.
pub(crate) const DELETE_DOC: &str = "DELETE FROM definitions WHERE kind = ?1 AND id = ?2";

pub(crate) async fn write_doc(conn: &mut SqliteConnection, w: &DocWrite, now: i64) -> Result<()> {
    match &w.json {
        Some(json) => {
            sqlx::query(PUT_DOC)
                .bind(w.kind.as_str())
                .bind(&w.id)
                .bind(&w.owner_id)
                .bind(json)
                .bind(now)
                .execute(&mut *conn)
                .await?;
        }
        None => {
            sqlx::query(DELETE_DOC)
                .bind(w.kind.as_str())
                .bind(&w.id)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}
