//! The PostgreSQL backend: the same contract as SQLite for several stateless nodes on one
//! database. Migrations live in `migrations/postgres`.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

use crate::{
    ApiKeyRecord, Doc, DocKind, DocWrite, IDEMPOTENCY_STALE_MS, IDEMPOTENCY_TTL_MS, IdemBegin,
    IdemScope, Result, Signal, Store, StoredResponse, decide_existing,
};

pub struct PgStore {
    pub(crate) writer: PgPool,
    pub(crate) reader: PgPool,
    /// Names this process in definition notifications, so it skips its own.
    pub(crate) origin: String,
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<Self> {
        // No ping before each acquire (a network round trip per query); a connection that
        // broke fails its query, is dropped by the pool, and the writers retry their batch.
        let pool = PgPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self {
            writer: pool.clone(),
            reader: pool,
            origin: uuid::Uuid::new_v4().simple().to_string(),
        })
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (key_hash, owner_id, actor_id, created_at, revoked_at) VALUES ($1, $2, $3, $4, NULL)",
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
            "SELECT key_hash, owner_id, actor_id, created_at, revoked_at FROM api_keys WHERE key_hash = $1",
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
            sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    async fn init_setting(&self, name: &str, value: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.writer)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
                .bind(name)
                .fetch_one(&self.writer)
                .await?,
        )
    }

    async fn load_docs(&self, kind: DocKind) -> Result<Vec<Doc>> {
        let rows =
            sqlx::query("SELECT id, owner_id, doc FROM definitions WHERE kind = $1 ORDER BY id")
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
            sqlx::query("SELECT id, owner_id, doc FROM definitions WHERE kind = $1 AND id = $2")
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

    async fn listen(&self) -> Result<Option<tokio::sync::mpsc::Receiver<Signal>>> {
        Ok(Some(
            crate::pg_notify::listen(&self.writer, self.origin.clone()).await?,
        ))
    }

    async fn write_docs(&self, writes: &[DocWrite]) -> Result<()> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut tx = self.writer.begin().await?;
        for w in writes {
            write_doc(&mut tx, w, now, &self.origin).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn idem_begin(&self, s: &IdemScope, fingerprint: &str, now_ms: i64) -> Result<IdemBegin> {
        let mut tx = self.writer.begin().await?;
        // Expired records and abandoned running ones no longer hold the key.
        sqlx::query(
            "DELETE FROM idempotency WHERE owner_id = $1 AND method = $2 AND route = $3 AND idem_key = $4 \
             AND (created_at < $5 OR (state = 'running' AND created_at < $6))",
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
             VALUES ($1, $2, $3, $4, $5, 'running', $6) ON CONFLICT DO NOTHING",
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
                 WHERE owner_id = $1 AND method = $2 AND route = $3 AND idem_key = $4",
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
            "UPDATE idempotency SET state = 'done', status = $1, body = $2, location = $3 \
             WHERE owner_id = $4 AND method = $5 AND route = $6 AND idem_key = $7",
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

    async fn idem_release(&self, s: &IdemScope) -> Result<()> {
        sqlx::query(
            "DELETE FROM idempotency WHERE owner_id = $1 AND method = $2 AND route = $3 AND idem_key = $4 AND state = 'running'",
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

/// One definition write inside the caller's transaction (shared by `write_docs` and
/// `insert_executions`).
/// Other nodes hear of it when the transaction commits.
pub(crate) async fn write_doc(
    conn: &mut PgConnection,
    w: &DocWrite,
    now: i64,
    origin: &str,
) -> Result<()> {
    match &w.json {
        Some(json) => {
            sqlx::query(
                "INSERT INTO definitions (kind, id, owner_id, doc, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (kind, id) DO UPDATE SET doc = excluded.doc, owner_id = excluded.owner_id, updated_at = excluded.updated_at",
            )
            .bind(w.kind.as_str())
            .bind(&w.id)
            .bind(&w.owner_id)
            .bind(json)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM definitions WHERE kind = $1 AND id = $2")
                .bind(w.kind.as_str())
                .bind(&w.id)
                .execute(&mut *conn)
                .await?;
        }
    }
    let payload = crate::pg_notify::def_payload(origin, w.kind.as_str(), &w.id);
    crate::pg_notify::notify(conn, crate::pg_notify::DEFS, &payload).await
}
