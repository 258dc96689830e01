//! The executions table on sqlite: see [`crate::executions`] for the contract.
//!
//! Every write goes through the single writer connection, so a write transaction sees and
//! holds the whole table: claims, fenced updates, aborts and the reaper cannot interleave.

use async_trait::async_trait;
use sqlx::sqlite::{Sqlite, SqliteConnection, SqliteRow};
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use crate::executions::*;
use crate::sqlite::SqliteStore;
use crate::webhooks::DeliveryRow;
use crate::{DocWrite, Result, StoreError};

/// Every column of [`ExecutionRow`], in the order [`exec_from_row`] reads them.
pub(crate) const COLS: &str = "id, owner_id, flow_id, trigger_id, kind, status, device_id, invocation_id, \
     event_id, error, flow_name, trigger_name, created_by, enqueued_at, started_at, finished_at, \
     attempt, lease_owner, lease_expires_at, graph_hash, snapshot, state, search_text";

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
}

fn exec_from_row(r: &SqliteRow) -> Result<ExecutionRow> {
    Ok(ExecutionRow {
        id: parse_uuid(&r.get::<String, _>(0))?,
        owner_id: r.get(1),
        flow_id: parse_uuid(&r.get::<String, _>(2))?,
        trigger_id: parse_uuid(&r.get::<String, _>(3))?,
        kind: r.get(4),
        status: r.get(5),
        device_id: r
            .get::<Option<String>, _>(6)
            .map(|s| parse_uuid(&s))
            .transpose()?,
        invocation_id: r.get(7),
        event_id: r.get(8),
        error: r.get(9),
        flow_name: r.get(10),
        trigger_name: r.get(11),
        created_by: r.get(12),
        enqueued_at: r.get(13),
        started_at: r.get(14),
        finished_at: r.get(15),
        attempt: r.get(16),
        lease_owner: r.get(17),
        lease_expires_at: r.get(18),
        graph_hash: r.get(19),
        snapshot: r.get(20),
        state: r.get(21),
        search_text: r.get(22),
    })
}

/// Computes a row's new state with the caller's function.
pub(crate) fn call_state(
    f: &(dyn for<'r> Fn(&'r ExecutionRow) -> String + Send + Sync),
    row: &ExecutionRow,
) -> String {
    f(row)
}

fn execs_from_rows(rows: &[SqliteRow]) -> Result<Vec<ExecutionRow>> {
    rows.iter().map(exec_from_row).collect()
}

/// A list of ids as a JSON array, for `IN (SELECT value FROM json_each(?))`.
fn json_ids(ids: &[Uuid]) -> String {
    serde_json::to_string(&ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
        .expect("strings serialise")
}

/// The owner and filter conditions shared by lists and metrics (after `WHERE`).
fn push_filter(qb: &mut QueryBuilder<'_, Sqlite>, owner_id: &str, f: &ExecFilter) {
    qb.push("owner_id = ").push_bind(owner_id.to_string());
    if let Some(flow_id) = f.flow_id {
        qb.push(" AND flow_id = ").push_bind(flow_id.to_string());
    }
    if let Some(trigger_id) = f.trigger_id {
        qb.push(" AND trigger_id = ")
            .push_bind(trigger_id.to_string());
    }
    if let Some(invocation_id) = &f.invocation_id {
        qb.push(" AND invocation_id = ")
            .push_bind(invocation_id.clone());
    }
    if !f.statuses.is_empty() {
        qb.push(" AND status IN (");
        let mut sep = qb.separated(", ");
        for s in &f.statuses {
            sep.push_bind(s.clone());
        }
        qb.push(")");
    }
    if let Some(from) = f.from {
        qb.push(" AND ref_at >= ").push_bind(from);
    }
    if let Some(to) = f.to {
        qb.push(" AND ref_at < ").push_bind(to);
    }
    if let Some(search) = &f.search {
        // instr() is a plain substring test: `%` and `_` in the needle are literal.
        qb.push(" AND instr(search_text, ")
            .push_bind(search.clone())
            .push(") > 0");
    }
}

async fn read_for_update(
    conn: &mut SqliteConnection,
    owner_id: &str,
    id: Uuid,
) -> Result<Option<ExecutionRow>> {
    let row = sqlx::query(&format!(
        "SELECT {COLS} FROM executions WHERE owner_id = ? AND id = ?"
    ))
    .bind(owner_id)
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(exec_from_row).transpose()
}

#[async_trait]
impl ExecutionStore for SqliteStore {
    async fn insert_executions_routed(
        &self,
        rows: &[ExecutionRow],
        deliveries: &[DeliveryRow],
        docs: &[DocWrite],
        routed_events: &[String],
        now_ms: i64,
    ) -> Result<()> {
        self.insert_executions_committed(
            rows.to_vec(),
            deliveries.to_vec(),
            docs,
            routed_events,
            now_ms,
        )
        .await?
        .await
    }

    async fn insert_executions_committed(
        &self,
        rows: Vec<ExecutionRow>,
        deliveries: Vec<DeliveryRow>,
        docs: &[DocWrite],
        routed_events: &[String],
        now_ms: i64,
    ) -> Result<Durable> {
        // Joins the next group commit (one script for every queued write; see sqlite_batch).
        self.commits
            .insert(rows, deliveries, docs, routed_events, now_ms)
            .await
    }

    async fn flows_with_invocation(
        &self,
        flow_ids: &[Uuid],
        invocation_id: &str,
    ) -> Result<Vec<Uuid>> {
        if flow_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT flow_id FROM executions \
             WHERE invocation_id = ? AND flow_id IN (SELECT value FROM json_each(?)) ORDER BY flow_id",
        )
        .bind(invocation_id)
        .bind(json_ids(flow_ids))
        .fetch_all(&self.reader)
        .await?;
        ids.iter().map(|s| parse_uuid(s)).collect()
    }

    async fn get_execution(&self, owner_id: &str, id: Uuid) -> Result<Option<ExecutionRow>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM executions WHERE owner_id = ? AND id = ?"
        ))
        .bind(owner_id)
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(exec_from_row).transpose()
    }

    async fn list_executions(
        &self,
        owner_id: &str,
        filter: &ExecFilter,
        order: ExecOrder,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<ExecutionRow>, i64)> {
        let dir = if order.desc { "DESC" } else { "ASC" };
        let order_by = match order.by {
            ExecOrderBy::StartedAt => format!("ref_at {dir}, id {dir}"),
            ExecOrderBy::FinishedAt => format!("finished_at {dir} NULLS LAST, id {dir}"),
            ExecOrderBy::Status => format!("status {dir}, id {dir}"),
        };
        // One read transaction: the page and the total come from the same snapshot.
        let mut tx = self.reader.begin().await?;
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {COLS} FROM executions WHERE "));
        push_filter(&mut qb, owner_id, filter);
        qb.push(format!(" ORDER BY {order_by} LIMIT "))
            .push_bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .push(" OFFSET ")
            .push_bind(i64::try_from(offset).unwrap_or(i64::MAX));
        let rows = qb.build().fetch_all(&mut *tx).await?;
        let mut qb = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM executions WHERE ");
        push_filter(&mut qb, owner_id, filter);
        let total: i64 = qb.build_query_scalar().fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok((execs_from_rows(&rows)?, total))
    }

    async fn execution_metrics(&self, owner_id: &str, filter: &ExecFilter) -> Result<ExecMetrics> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT status, COUNT(*), COUNT(finished_at - started_at), \
             SUM(finished_at - started_at), MAX(started_at) FROM executions WHERE ",
        );
        push_filter(&mut qb, owner_id, filter);
        qb.push(" GROUP BY status");
        let rows = qb.build().fetch_all(&self.reader).await?;
        let mut m = ExecMetrics::default();
        let (mut durations, mut duration_sum) = (0i64, 0i64);
        for r in &rows {
            let status: String = r.get(0);
            let count: i64 = r.get(1);
            m.total += count;
            if let Some(i) = STATUSES.iter().position(|s| *s == status) {
                m.by_status[i] += count;
            }
            durations += r.get::<i64, _>(2);
            duration_sum += r.get::<Option<i64>, _>(3).unwrap_or(0);
            m.last_started_at = m.last_started_at.max(r.get::<Option<i64>, _>(4));
        }
        if durations > 0 {
            m.avg_duration_ms = Some(duration_sum as f64 / durations as f64);
        }
        Ok(m)
    }

    async fn abort_execution(
        &self,
        owner_id: &str,
        id: Uuid,
        now_ms: i64,
        cancelled_state: &(dyn for<'r> Fn(&'r ExecutionRow) -> String + Send + Sync),
    ) -> Result<AbortOutcome> {
        let mut tx = self.writer.begin().await?;
        let Some(row) = read_for_update(&mut tx, owner_id, id).await? else {
            tx.rollback().await?;
            return Ok(AbortOutcome::NotFound);
        };
        if is_terminal(&row.status) {
            tx.rollback().await?;
            return Ok(AbortOutcome::Terminal(row));
        }
        let state = call_state(cancelled_state, &row);
        let updated = sqlx::query(
            "UPDATE executions SET status = 'cancelled', finished_at = ?, state = ?, \
             lease_owner = NULL, lease_expires_at = NULL \
             WHERE id = ? AND status IN ('pending', 'running')",
        )
        .bind(now_ms)
        .bind(&state)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != 1 {
            // Cannot happen on the single writer; re-read and report what is there.
            let row = read_for_update(&mut tx, owner_id, id).await?;
            tx.rollback().await?;
            return Ok(row.map_or(AbortOutcome::NotFound, AbortOutcome::Terminal));
        }
        tx.commit().await?;
        Ok(AbortOutcome::Cancelled(ExecutionRow {
            status: "cancelled".to_string(),
            finished_at: Some(now_ms),
            state,
            lease_expires_at: None,
            ..row
        }))
    }

    async fn claim_executions(
        &self,
        lease_owner: &str,
        now_ms: i64,
        lease_expires_at: i64,
        limit: usize,
        busy_devices: &[Uuid],
    ) -> Result<Vec<ExecutionRow>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.writer.begin().await?;
        // The oldest pending rows whose device is free: not busy in the caller, no running
        // row, and no older pending row (a device's rows run in order, one per claim).
        // Checking this per row in SQL keeps a long backlog of one busy device from hiding
        // the free rows behind it.
        let candidates = sqlx::query(
            "SELECT e.id, e.device_id FROM executions e \
             WHERE e.status = 'pending' AND (e.device_id IS NULL OR ( \
               e.device_id NOT IN (SELECT value FROM json_each(?)) \
               AND NOT EXISTS (SELECT 1 FROM executions r \
                   WHERE r.status = 'running' AND r.device_id = e.device_id) \
               AND NOT EXISTS (SELECT 1 FROM executions p \
                   WHERE p.status = 'pending' AND p.device_id = e.device_id \
                   AND (p.enqueued_at, p.id) < (e.enqueued_at, e.id)))) \
             ORDER BY e.enqueued_at, e.id LIMIT ?",
        )
        .bind(json_ids(busy_devices))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let mut taken_devices: Vec<String> = Vec::new();
        let mut claimed = Vec::with_capacity(candidates.len());
        for c in &candidates {
            let id: String = c.get(0);
            if let Some(device) = c.get::<Option<String>, _>(1) {
                if taken_devices.contains(&device) {
                    continue;
                }
                taken_devices.push(device);
            }
            let row = sqlx::query(&format!(
                "UPDATE executions SET status = 'running', started_at = COALESCE(started_at, ?), \
                 lease_owner = ?, lease_expires_at = ? \
                 WHERE id = ? AND status = 'pending' RETURNING {COLS}"
            ))
            .bind(now_ms)
            .bind(lease_owner)
            .bind(lease_expires_at)
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = row {
                claimed.push(exec_from_row(&row)?);
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn apply_exec_updates(&self, updates: &[ExecUpdate]) -> Result<Vec<bool>> {
        // Joins the next group commit (one script for every queued write; see sqlite_batch).
        self.commits.exec(updates).await
    }

    async fn renew_leases(
        &self,
        lease_owner: &str,
        ids: &[Uuid],
        lease_expires_at: i64,
    ) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(sqlx::query(
            "UPDATE executions SET lease_expires_at = ? WHERE lease_owner = ? AND status = 'running' \
             AND id IN (SELECT value FROM json_each(?))",
        )
        .bind(lease_expires_at)
        .bind(lease_owner)
        .bind(json_ids(ids))
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    async fn reap_executions(
        &self,
        now_ms: i64,
        max_attempts: i32,
        failed: &(dyn for<'r> Fn(&'r ExecutionRow) -> (String, String) + Send + Sync),
        keep_owner: &str,
        all_of_other_owners: bool,
    ) -> Result<ReapOutcome> {
        let mut tx = self.writer.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM executions WHERE status = 'running' \
             AND (lease_expires_at IS NULL OR lease_expires_at < ? \
                  OR (? AND lease_owner IS NOT ?)) \
             ORDER BY enqueued_at, id"
        ))
        .bind(now_ms)
        .bind(all_of_other_owners)
        .bind(keep_owner)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = ReapOutcome::default();
        for row in execs_from_rows(&rows)? {
            // Fenced like a worker's write (the single writer makes it a formality).
            if row.attempt.saturating_add(1) >= max_attempts {
                let (failed_error, failed_state) = failed(&row);
                let failed_error = failed_error.as_str();
                let search_text = flowrun_core::search::execution_search_text(
                    row.flow_name.as_deref(),
                    row.trigger_name.as_deref(),
                    Some(failed_error),
                );
                let updated = sqlx::query(&format!(
                    "UPDATE executions SET status = 'failed', error = ?, finished_at = ?, \
                     state = ?, search_text = ?, lease_owner = NULL, lease_expires_at = NULL \
                     WHERE id = ? AND status = 'running' AND lease_owner IS ? AND attempt = ? \
                     RETURNING {COLS}"
                ))
                .bind(failed_error)
                .bind(now_ms)
                .bind(failed_state)
                .bind(search_text)
                .bind(row.id.to_string())
                .bind(&row.lease_owner)
                .bind(row.attempt)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(r) = updated {
                    out.failed.push(exec_from_row(&r)?);
                }
            } else {
                let n = sqlx::query(
                    "UPDATE executions SET status = 'pending', attempt = attempt + 1, \
                     lease_owner = NULL, lease_expires_at = NULL \
                     WHERE id = ? AND status = 'running' AND lease_owner IS ? AND attempt = ?",
                )
                .bind(row.id.to_string())
                .bind(&row.lease_owner)
                .bind(row.attempt)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n == 1 {
                    out.requeued.push(row.id);
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn skip_pending_of_flow(&self, flow_id: Uuid, error: &str, now_ms: i64) -> Result<u64> {
        let mut tx = self.writer.begin().await?;
        // search_text gains the error; it is folded in Rust (as at insert), so the rows are
        // updated per distinct (flow name, trigger name).
        let names = sqlx::query(
            "SELECT DISTINCT flow_name, trigger_name FROM executions \
             WHERE flow_id = ? AND status = 'pending'",
        )
        .bind(flow_id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        let mut skipped = 0;
        for n in &names {
            let flow_name: Option<String> = n.get(0);
            let trigger_name: Option<String> = n.get(1);
            let search_text = flowrun_core::search::execution_search_text(
                flow_name.as_deref(),
                trigger_name.as_deref(),
                Some(error),
            );
            skipped += sqlx::query(
                "UPDATE executions SET status = 'skipped', error = ?, finished_at = ?, \
                 state = '{}', search_text = ? \
                 WHERE flow_id = ? AND status = 'pending' AND flow_name IS ? AND trigger_name IS ?",
            )
            .bind(error)
            .bind(now_ms)
            .bind(search_text)
            .bind(flow_id.to_string())
            .bind(&flow_name)
            .bind(&trigger_name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(skipped)
    }

    async fn count_pending(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM executions WHERE status = 'pending'")
                .fetch_one(&self.reader)
                .await?,
        )
    }
}
