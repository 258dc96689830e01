//! The schedules table on sqlite: see [`crate::schedules`] for the contract.
//!
//! Writes go through the single writer connection, so a claim's read and update cannot
//! interleave with another claim or an advance.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use crate::schedules::*;
use crate::sqlite::SqliteStore;
use crate::{Result, StoreError};

/// Every column of [`ScheduleRow`], in the order [`sched_from_row`] reads them.
const COLS: &str = "trigger_id, owner_id, rule_key, started_at, last_handled_nominal_at, \
     next_nominal_at, next_fire_at, claimed_by, claimed_at, claimed_until";

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
}

fn sched_from_row(r: &SqliteRow) -> Result<ScheduleRow> {
    Ok(ScheduleRow {
        trigger_id: parse_uuid(&r.get::<String, _>(0))?,
        owner_id: r.get(1),
        rule_key: r.get(2),
        started_at: r.get(3),
        last_handled_nominal_at: r.get(4),
        next_nominal_at: r.get(5),
        next_fire_at: r.get(6),
        claimed_by: r.get(7),
        claimed_at: r.get(8),
        claimed_until: r.get(9),
    })
}

fn json_ids(ids: &[Uuid]) -> String {
    serde_json::to_string(&ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
        .expect("strings serialise")
}

#[async_trait]
impl ScheduleStore for SqliteStore {
    async fn put_schedules(
        &self,
        rows: &[ScheduleRow],
        only_if_changed: bool,
    ) -> Result<Vec<Uuid>> {
        let mut tx = self.writer.begin().await?;
        let mut written = Vec::new();
        for r in rows {
            let n = sqlx::query(&format!(
                "INSERT INTO schedules ({COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL) \
                 ON CONFLICT (trigger_id) DO UPDATE SET owner_id = excluded.owner_id, \
                 rule_key = excluded.rule_key, started_at = excluded.started_at, \
                 last_handled_nominal_at = excluded.last_handled_nominal_at, \
                 next_nominal_at = excluded.next_nominal_at, next_fire_at = excluded.next_fire_at, \
                 claimed_by = NULL, claimed_at = NULL, claimed_until = NULL \
                 WHERE NOT ? OR schedules.rule_key <> excluded.rule_key"
            ))
            .bind(r.trigger_id.to_string())
            .bind(&r.owner_id)
            .bind(&r.rule_key)
            .bind(r.started_at)
            .bind(r.last_handled_nominal_at)
            .bind(r.next_nominal_at)
            .bind(r.next_fire_at)
            .bind(only_if_changed)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                written.push(r.trigger_id);
            }
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn delete_schedules(&self, trigger_ids: &[Uuid]) -> Result<u64> {
        if trigger_ids.is_empty() {
            return Ok(0);
        }
        Ok(sqlx::query(
            "DELETE FROM schedules WHERE trigger_id IN (SELECT value FROM json_each(?))",
        )
        .bind(json_ids(trigger_ids))
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    async fn get_schedule(&self, trigger_id: Uuid) -> Result<Option<ScheduleRow>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM schedules WHERE trigger_id = ?"
        ))
        .bind(trigger_id.to_string())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(sched_from_row).transpose()
    }

    async fn list_schedules(&self) -> Result<Vec<ScheduleRow>> {
        let rows = sqlx::query(&format!("SELECT {COLS} FROM schedules ORDER BY trigger_id"))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(sched_from_row).collect()
    }

    async fn claim_due_schedules(
        &self,
        node: &str,
        now_ms: i64,
        claimed_until: i64,
        limit: usize,
    ) -> Result<Vec<ClaimedSchedule>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.writer.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM schedules \
             WHERE next_fire_at IS NOT NULL AND next_fire_at <= ? \
             AND (claimed_until IS NULL OR claimed_until < ?) \
             ORDER BY next_fire_at, trigger_id LIMIT ?"
        ))
        .bind(now_ms)
        .bind(now_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let before: Vec<ScheduleRow> = rows.iter().map(sched_from_row).collect::<Result<_>>()?;
        if before.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = before.iter().map(|r| r.trigger_id).collect();
        sqlx::query(
            "UPDATE schedules SET claimed_by = ?, claimed_at = ?, claimed_until = ? \
             WHERE trigger_id IN (SELECT value FROM json_each(?))",
        )
        .bind(node)
        .bind(now_ms)
        .bind(claimed_until)
        .bind(json_ids(&ids))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(before
            .into_iter()
            .map(|r| ClaimedSchedule {
                abandoned_claim_at: r.claimed_at,
                row: ScheduleRow {
                    claimed_by: Some(node.to_string()),
                    claimed_at: Some(now_ms),
                    claimed_until: Some(claimed_until),
                    ..r
                },
            })
            .collect())
    }

    async fn advance_schedules(&self, advances: &[ScheduleAdvance]) -> Result<Vec<bool>> {
        let mut tx = self.writer.begin().await?;
        let mut applied = Vec::with_capacity(advances.len());
        for a in advances {
            let n = sqlx::query(
                "UPDATE schedules SET last_handled_nominal_at = ?, next_nominal_at = ?, \
                 next_fire_at = ?, claimed_by = NULL, claimed_at = NULL, claimed_until = NULL \
                 WHERE trigger_id = ? AND claimed_by = ? AND claimed_at = ?",
            )
            .bind(a.last_handled_nominal_at)
            .bind(a.next_nominal_at)
            .bind(a.next_fire_at)
            .bind(a.trigger_id.to_string())
            .bind(&a.claimed_by)
            .bind(a.claimed_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            applied.push(n == 1);
        }
        tx.commit().await?;
        Ok(applied)
    }

    async fn expire_schedule_claims(&self, now_ms: i64) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE schedules SET claimed_until = ? \
             WHERE claimed_until IS NOT NULL AND claimed_until >= ?",
        )
        .bind(now_ms - 1)
        .bind(now_ms)
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    async fn next_schedule_wake(&self) -> Result<Option<i64>> {
        // Both probes walk an index from its low end and stop at the first entry.
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT next_fire_at FROM schedules \
             WHERE next_fire_at IS NOT NULL AND claimed_until IS NULL \
             ORDER BY next_fire_at LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?;
        let claimed: Option<i64> = sqlx::query_scalar(
            "SELECT claimed_until FROM schedules WHERE claimed_until IS NOT NULL \
             ORDER BY claimed_until LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?;
        Ok(match (due, claimed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }
}
