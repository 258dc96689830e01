//! The schedules table on postgres: see [`crate::schedules`] for the contract.
//!
//! Several nodes share the table. A claim locks its candidate rows with
//! `FOR UPDATE SKIP LOCKED` and stamps them in the same statement, so concurrent claimers
//! split the due rows between them; an advance is a compare-and-set on the claim.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::postgres::PgStore;
use crate::schedules::*;
use crate::{Result, StoreError};

/// Every column of [`ScheduleRow`], in the order [`sched_from_row`] reads them.
const COLS: &str = "trigger_id, owner_id, rule_key, started_at, last_handled_nominal_at, \
     next_nominal_at, next_fire_at, claimed_by, claimed_at, claimed_until";

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
}

fn sched_from_row(r: &PgRow) -> Result<ScheduleRow> {
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

fn id_strings(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(Uuid::to_string).collect()
}

#[async_trait]
impl ScheduleStore for PgStore {
    async fn put_schedules(
        &self,
        rows: &[ScheduleRow],
        only_if_changed: bool,
    ) -> Result<Vec<Uuid>> {
        let mut tx = self.writer.begin().await?;
        let mut written = Vec::new();
        for r in rows {
            let n = sqlx::query(&format!(
                "INSERT INTO schedules ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL) \
                 ON CONFLICT (trigger_id) DO UPDATE SET owner_id = excluded.owner_id, \
                 rule_key = excluded.rule_key, started_at = excluded.started_at, \
                 last_handled_nominal_at = excluded.last_handled_nominal_at, \
                 next_nominal_at = excluded.next_nominal_at, next_fire_at = excluded.next_fire_at, \
                 claimed_by = NULL, claimed_at = NULL, claimed_until = NULL \
                 WHERE NOT $8 OR schedules.rule_key <> excluded.rule_key"
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
        if !written.is_empty() {
            crate::pg_notify::notify(&mut tx, crate::pg_notify::SCHEDULES, "").await?;
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn delete_schedules(&self, trigger_ids: &[Uuid]) -> Result<u64> {
        if trigger_ids.is_empty() {
            return Ok(0);
        }
        Ok(sqlx::query(
            "WITH gone AS (DELETE FROM schedules WHERE trigger_id = ANY($1) RETURNING 1) \
                 SELECT COUNT(*) FROM gone, LATERAL (SELECT pg_notify('flowrun_schedules', '')) n",
        )
        .bind(id_strings(trigger_ids))
        .fetch_one(&self.writer)
        .await?
        .get::<i64, _>(0) as u64)
    }

    async fn get_schedule(&self, trigger_id: Uuid) -> Result<Option<ScheduleRow>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM schedules WHERE trigger_id = $1"
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
        // The CTE locks the candidates (skipping rows another claimer holds) and keeps their
        // previous claim, which the UPDATE's RETURNING would no longer show.
        let returning = COLS
            .split(", ")
            .map(|c| format!("s.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sqlx::query(&format!(
            "WITH due AS ( \
               SELECT trigger_id, claimed_at AS previous_claim FROM schedules \
               WHERE next_fire_at IS NOT NULL AND next_fire_at <= $1 \
               AND (claimed_until IS NULL OR claimed_until < $1) \
               ORDER BY next_fire_at, trigger_id LIMIT $2 \
               FOR UPDATE SKIP LOCKED) \
             UPDATE schedules s SET claimed_by = $3, claimed_at = $1, claimed_until = $4 \
             FROM due WHERE s.trigger_id = due.trigger_id \
             RETURNING {returning}, due.previous_claim"
        ))
        .bind(now_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(node)
        .bind(claimed_until)
        .fetch_all(&self.writer)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(ClaimedSchedule {
                    row: sched_from_row(r)?,
                    abandoned_claim_at: r.get(10),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| {
            (a.row.next_fire_at, a.row.trigger_id).cmp(&(b.row.next_fire_at, b.row.trigger_id))
        });
        Ok(out)
    }

    async fn advance_schedules(&self, advances: &[ScheduleAdvance]) -> Result<Vec<bool>> {
        let mut tx = self.writer.begin().await?;
        let mut applied = Vec::with_capacity(advances.len());
        for a in advances {
            let n = sqlx::query(
                "UPDATE schedules SET last_handled_nominal_at = $1, next_nominal_at = $2, \
                 next_fire_at = $3, claimed_by = NULL, claimed_at = NULL, claimed_until = NULL \
                 WHERE trigger_id = $4 AND claimed_by = $5 AND claimed_at = $6",
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
            "UPDATE schedules SET claimed_until = $1 \
             WHERE claimed_until IS NOT NULL AND claimed_until >= $2",
        )
        .bind(now_ms - 1)
        .bind(now_ms)
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    async fn next_schedule_wake(&self) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT \
               (SELECT next_fire_at FROM schedules \
                WHERE next_fire_at IS NOT NULL AND claimed_until IS NULL \
                ORDER BY next_fire_at LIMIT 1), \
               (SELECT claimed_until FROM schedules WHERE claimed_until IS NOT NULL \
                ORDER BY claimed_until LIMIT 1)",
        )
        .fetch_one(&self.reader)
        .await?;
        let due: Option<i64> = row.get(0);
        let claimed: Option<i64> = row.get(1);
        Ok(match (due, claimed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }
}
