//! Artifacts and repairs on postgres: see [`crate::artifacts`] for the contract. Several nodes
//! share the tables: opening an episode takes a transaction-scoped advisory lock on the flow
//! first, so two nodes cannot both see "no open episode" and insert one each.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::artifacts::*;
use crate::postgres::PgStore;
use crate::{Result, StoreError};

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
}

fn repair_from_row(r: &PgRow) -> Result<RepairRow> {
    Ok(RepairRow {
        id: parse_uuid(&r.get::<String, _>(0))?,
        owner_id: r.get(1),
        flow_id: parse_uuid(&r.get::<String, _>(2))?,
        episode: r.get(3),
        attempt: r.get(4),
        max_attempts: r.get(5),
        status: r.get(6),
        source_execution_id: parse_uuid(&r.get::<String, _>(7))?,
        failed_step_index: r.get(8),
        original_slug: r.get(9),
        candidate_slug: r.get(10),
        device_id: r
            .get::<Option<String>, _>(11)
            .map(|d| parse_uuid(&d))
            .transpose()?,
        agent_run_id: r.get(12),
        chat_session_id: r.get(13),
        verdict: r.get(14),
        error: r.get(15),
        started_at: r.get(16),
        finished_at: r.get(17),
        created_at: r.get(18),
        updated_at: r.get(19),
    })
}

#[async_trait]
impl ArtifactStore for PgStore {
    async fn insert_artifact(&self, a: &ArtifactRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO artifacts (id, owner_id, execution_id, mime_type, bytes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&a.id)
        .bind(&a.owner_id)
        .bind(a.execution_id.to_string())
        .bind(&a.mime_type)
        .bind(&a.bytes)
        .bind(a.created_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn get_artifact(&self, owner_id: &str, id: &str) -> Result<Option<ArtifactRow>> {
        let row = sqlx::query(
            "SELECT id, owner_id, execution_id, mime_type, bytes, created_at FROM artifacts \
             WHERE id = $1 AND owner_id = $2",
        )
        .bind(id)
        .bind(owner_id)
        .fetch_optional(&self.reader)
        .await?;
        row.map(|r| {
            Ok(ArtifactRow {
                id: r.get(0),
                owner_id: r.get(1),
                execution_id: parse_uuid(&r.get::<String, _>(2))?,
                mime_type: r.get(3),
                bytes: r.get(4),
                created_at: r.get(5),
            })
        })
        .transpose()
    }

    async fn open_repair(&self, repair: &RepairRow) -> Result<Option<RepairRow>> {
        let mut tx = self.writer.begin().await?;
        let flow = repair.flow_id.to_string();
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("repairs:{flow}"))
            .execute(&mut *tx)
            .await?;
        let open: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM repairs WHERE flow_id = $1 AND status IN ({})",
            quoted(&OPEN_REPAIR_STATUSES)
        ))
        .bind(&flow)
        .fetch_one(&mut *tx)
        .await?;
        if open > 0 {
            return Ok(None);
        }
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(episode) FROM repairs WHERE flow_id = $1")
                .bind(&flow)
                .fetch_one(&mut *tx)
                .await?;
        let mut row = repair.clone();
        row.episode = last.unwrap_or(0) + 1;
        sqlx::query(&format!(
            "INSERT INTO repairs ({REPAIR_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
        ))
        .bind(row.id.to_string())
        .bind(&row.owner_id)
        .bind(&flow)
        .bind(row.episode)
        .bind(row.attempt)
        .bind(row.max_attempts)
        .bind(&row.status)
        .bind(row.source_execution_id.to_string())
        .bind(row.failed_step_index)
        .bind(&row.original_slug)
        .bind(&row.candidate_slug)
        .bind(row.device_id.map(|d| d.to_string()))
        .bind(&row.agent_run_id)
        .bind(&row.chat_session_id)
        .bind(&row.verdict)
        .bind(&row.error)
        .bind(row.started_at)
        .bind(row.finished_at)
        .bind(row.created_at)
        .bind(row.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(row))
    }

    async fn list_repairs(&self, owner_id: &str, flow_id: Uuid) -> Result<Vec<RepairRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {REPAIR_COLS} FROM repairs WHERE owner_id = $1 AND flow_id = $2 \
             ORDER BY episode DESC, attempt DESC"
        ))
        .bind(owner_id)
        .bind(flow_id.to_string())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(repair_from_row).collect()
    }
}

/// `'a', 'b'` for an `IN (…)` of constant strings.
fn quoted(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(", ")
}
