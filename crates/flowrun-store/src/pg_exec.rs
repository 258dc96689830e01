//! The executions table on postgres: see [`crate::executions`] for the contract.
//!
//! Several nodes share the table. Claims are serialised by a transaction-scoped advisory lock
//! (so two claimers never both see a device as free) and lock their rows with
//! `FOR UPDATE SKIP LOCKED`; aborts and the reaper lock the rows they change, so a fenced
//! worker write either lands before them or finds the row changed.

use async_trait::async_trait;
use sqlx::postgres::{PgConnection, PgRow, Postgres};
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use crate::executions::*;
use crate::pg_notify::{ABORT, QUEUE, notify};
use crate::postgres::{PgStore, write_doc};
use crate::sqlite_exec::call_state;
use crate::webhooks::DeliveryRow;
use crate::{DocKind, DocWrite, Result, StoreError};

/// Every column of [`ExecutionRow`], in the order [`exec_from_row`] reads them.
const COLS: &str = "id, owner_id, flow_id, trigger_id, kind, status, device_id, invocation_id, \
     event_id, error, flow_name, trigger_name, created_by, enqueued_at, started_at, finished_at, \
     attempt, lease_owner, lease_expires_at, graph_hash, snapshot, state, search_text";

/// The advisory lock key serialising claimers across nodes (ASCII "flowrun" then 0x01).
const CLAIM_LOCK_KEY: i64 = 0x666c_6f77_7275_6e01;

/// Rows per multi-row INSERT (23 parameters each, well under the 65535 limit).
const INSERT_CHUNK: usize = 500;

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
}

fn exec_from_row(r: &PgRow) -> Result<ExecutionRow> {
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

fn execs_from_rows(rows: &[PgRow]) -> Result<Vec<ExecutionRow>> {
    rows.iter().map(exec_from_row).collect()
}

fn id_strings(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(Uuid::to_string).collect()
}

/// The owner and filter conditions shared by lists and metrics (after `WHERE`).
fn push_filter(qb: &mut QueryBuilder<'_, Postgres>, owner_id: &str, f: &ExecFilter) {
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
        qb.push(" AND status = ANY(")
            .push_bind(f.statuses.clone())
            .push(")");
    }
    if let Some(from) = f.from {
        qb.push(" AND ref_at >= ").push_bind(from);
    }
    if let Some(to) = f.to {
        qb.push(" AND ref_at < ").push_bind(to);
    }
    if let Some(search) = &f.search {
        // strpos() is a plain substring test: `%` and `_` in the needle are literal.
        qb.push(" AND strpos(search_text, ")
            .push_bind(search.clone())
            .push(") > 0");
    }
}

/// Reads one row of the owner and locks it until the end of the transaction.
async fn read_for_update(
    conn: &mut PgConnection,
    owner_id: &str,
    id: Uuid,
) -> Result<Option<ExecutionRow>> {
    let row = sqlx::query(&format!(
        "SELECT {COLS} FROM executions WHERE owner_id = $1 AND id = $2 FOR UPDATE"
    ))
    .bind(owner_id)
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(exec_from_row).transpose()
}

/// The flow document an enqueue writes: the stored document (locked until commit) with only
/// the enqueue's runtime fields applied — `flow.lastTriggeredAt` (the later one) and the
/// cooldown windows (the later end per scope). Another node may have edited the flow, or
/// opened windows, since this node's copy was loaded; neither is overwritten.
async fn merge_flow_runtime(conn: &mut PgConnection, id: &str, ours: &str) -> Result<String> {
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT doc FROM definitions WHERE kind = 'flow' AND id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(stored) = stored else {
        return Ok(ours.to_string());
    };
    let corrupt = |source| StoreError::Corrupt {
        kind: "flow".to_string(),
        id: id.to_string(),
        source,
    };
    let mut doc: serde_json::Value = serde_json::from_str(&stored).map_err(corrupt)?;
    let ours: serde_json::Value = serde_json::from_str(ours).map_err(corrupt)?;
    let at = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_millis())
    };
    let our_last = &ours["flow"]["lastTriggeredAt"];
    if at(our_last) > at(&doc["flow"]["lastTriggeredAt"])
        && let Some(flow) = doc.get_mut("flow").and_then(|f| f.as_object_mut())
    {
        flow.insert("lastTriggeredAt".to_string(), our_last.clone());
    }
    let later = |a: &serde_json::Value, b: &serde_json::Value| match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => serde_json::Value::from(x.max(y)),
        (Some(_), None) => a.clone(),
        _ => b.clone(),
    };
    let mut gates = doc
        .get("gates")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(g) = gates.as_object_mut() {
        let ours_gates = &ours["gates"];
        let until = later(
            g.get("cooldownUntil").unwrap_or(&serde_json::Value::Null),
            &ours_gates["cooldownUntil"],
        );
        g.insert("cooldownUntil".to_string(), until);
        let mut devices = g
            .get("deviceCooldownUntil")
            .and_then(|d| d.as_object().cloned())
            .unwrap_or_default();
        if let Some(theirs) = ours_gates["deviceCooldownUntil"].as_object() {
            for (device, end) in theirs {
                let merged = later(devices.get(device).unwrap_or(&serde_json::Value::Null), end);
                devices.insert(device.clone(), merged);
            }
        }
        g.insert(
            "deviceCooldownUntil".to_string(),
            serde_json::Value::Object(devices),
        );
    }
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("gates".to_string(), gates);
    }
    Ok(doc.to_string())
}

#[async_trait]
impl ExecutionStore for PgStore {
    async fn insert_executions_routed(
        &self,
        rows: &[ExecutionRow],
        deliveries: &[DeliveryRow],
        docs: &[DocWrite],
        routed_events: &[String],
        now_ms: i64,
    ) -> Result<()> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut tx = self.writer.begin().await?;
        for chunk in routed_events.chunks(500) {
            crate::pg_events::mark_routed(&mut tx, chunk, now_ms).await?;
        }
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::<Postgres>::new(format!("INSERT INTO executions ({COLS}) "));
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(r.id.to_string())
                    .push_bind(&r.owner_id)
                    .push_bind(r.flow_id.to_string())
                    .push_bind(r.trigger_id.to_string())
                    .push_bind(&r.kind)
                    .push_bind(&r.status)
                    .push_bind(r.device_id.map(|d| d.to_string()))
                    .push_bind(&r.invocation_id)
                    .push_bind(&r.event_id)
                    .push_bind(&r.error)
                    .push_bind(&r.flow_name)
                    .push_bind(&r.trigger_name)
                    .push_bind(&r.created_by)
                    .push_bind(r.enqueued_at)
                    .push_bind(r.started_at)
                    .push_bind(r.finished_at)
                    .push_bind(r.attempt)
                    .push_bind(&r.lease_owner)
                    .push_bind(r.lease_expires_at)
                    .push_bind(&r.graph_hash)
                    .push_bind(&r.snapshot)
                    .push_bind(&r.state)
                    .push_bind(&r.search_text);
            });
            qb.build().execute(&mut *tx).await?;
        }
        for w in docs {
            match (w.kind, &w.json) {
                (DocKind::Flow, Some(json)) => {
                    let merged = merge_flow_runtime(&mut tx, &w.id, json).await?;
                    let w = DocWrite {
                        json: Some(merged),
                        ..w.clone()
                    };
                    write_doc(&mut tx, &w, now, &self.origin).await?;
                }
                _ => write_doc(&mut tx, w, now, &self.origin).await?,
            }
        }
        if rows.iter().any(|r| r.status == "pending") {
            // One wake-up per transaction, whatever the number of rows.
            notify(&mut tx, QUEUE, "").await?;
        }
        let deliveries: Vec<&DeliveryRow> = deliveries.iter().collect();
        crate::pg_webhooks::insert_deliveries_in(&mut tx, &deliveries).await?;
        if deliveries
            .iter()
            .any(|d| d.status == "pending" && d.lease_owner.is_none())
        {
            notify(&mut tx, crate::pg_notify::DELIVERIES, "").await?;
        }
        tx.commit().await?;
        Ok(())
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
             WHERE invocation_id = $1 AND flow_id = ANY($2) ORDER BY flow_id",
        )
        .bind(invocation_id)
        .bind(id_strings(flow_ids))
        .fetch_all(&self.reader)
        .await?;
        ids.iter().map(|s| parse_uuid(s)).collect()
    }

    async fn get_execution(&self, owner_id: &str, id: Uuid) -> Result<Option<ExecutionRow>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM executions WHERE owner_id = $1 AND id = $2"
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
        // One snapshot for the page and the total.
        let mut tx = self.reader.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let mut qb = QueryBuilder::<Postgres>::new(format!("SELECT {COLS} FROM executions WHERE "));
        push_filter(&mut qb, owner_id, filter);
        qb.push(format!(" ORDER BY {order_by} LIMIT "))
            .push_bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .push(" OFFSET ")
            .push_bind(i64::try_from(offset).unwrap_or(i64::MAX));
        let rows = qb.build().fetch_all(&mut *tx).await?;
        let mut qb = QueryBuilder::<Postgres>::new("SELECT COUNT(*) FROM executions WHERE ");
        push_filter(&mut qb, owner_id, filter);
        let total: i64 = qb.build_query_scalar().fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok((execs_from_rows(&rows)?, total))
    }

    async fn execution_metrics(&self, owner_id: &str, filter: &ExecFilter) -> Result<ExecMetrics> {
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT status, COUNT(*), COUNT(finished_at - started_at), \
             SUM(finished_at - started_at)::BIGINT, MAX(started_at) FROM executions WHERE ",
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
        // FOR UPDATE: a concurrent abort waits here and then reads the committed `cancelled`.
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
            "UPDATE executions SET status = 'cancelled', finished_at = $1, state = $2, \
             lease_owner = NULL, lease_expires_at = NULL \
             WHERE id = $3 AND status IN ('pending', 'running')",
        )
        .bind(now_ms)
        .bind(&state)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != 1 {
            // Cannot happen while the row is locked; report what is there.
            let row = read_for_update(&mut tx, owner_id, id).await?;
            tx.rollback().await?;
            return Ok(row.map_or(AbortOutcome::NotFound, AbortOutcome::Terminal));
        }
        if row.status == "running" {
            // The node holding the lease cancels the in-flight step when this commits.
            notify(&mut tx, ABORT, &id.to_string()).await?;
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
        // One claimer at a time across nodes: the statements below run with a snapshot taken
        // after the previous claimer committed, so "device has no running row" holds.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CLAIM_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        // The oldest pending rows whose device is free: not busy in the caller, no running
        // row, and no older pending row (a device's rows run in order, one per claim). Rows
        // locked by an abort in progress are skipped, not waited for.
        let candidates = sqlx::query(
            "SELECT e.id, e.device_id FROM executions e \
             WHERE e.status = 'pending' AND (e.device_id IS NULL OR ( \
               e.device_id <> ALL($1) \
               AND NOT EXISTS (SELECT 1 FROM executions r \
                   WHERE r.status = 'running' AND r.device_id = e.device_id) \
               AND NOT EXISTS (SELECT 1 FROM executions p \
                   WHERE p.status = 'pending' AND p.device_id = e.device_id \
                   AND (p.enqueued_at, p.id) < (e.enqueued_at, e.id)))) \
             ORDER BY e.enqueued_at, e.id LIMIT $2 FOR UPDATE OF e SKIP LOCKED",
        )
        .bind(id_strings(busy_devices))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let mut taken_devices: Vec<String> = Vec::new();
        let mut ids: Vec<String> = Vec::with_capacity(candidates.len());
        for c in &candidates {
            if let Some(device) = c.get::<Option<String>, _>(1) {
                if taken_devices.contains(&device) {
                    continue;
                }
                taken_devices.push(device);
            }
            ids.push(c.get(0));
        }
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "UPDATE executions SET status = 'running', started_at = COALESCE(started_at, $1), \
             lease_owner = $2, lease_expires_at = $3 \
             WHERE id = ANY($4) AND status = 'pending' RETURNING {COLS}"
        ))
        .bind(now_ms)
        .bind(lease_owner)
        .bind(lease_expires_at)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut claimed = execs_from_rows(&rows)?;
        claimed.sort_by_key(|r| (r.enqueued_at, r.id));
        Ok(claimed)
    }

    async fn apply_exec_updates(&self, updates: &[ExecUpdate]) -> Result<Vec<bool>> {
        // A few multi-row statements per round (a round holds at most one update per row, so
        // a row's writes apply in order) instead of one round trip per update.
        let mut tx = self.writer.begin().await?;
        let mut applied = vec![false; updates.len()];
        let mut deliveries = Vec::new();
        for round in crate::write_rounds(updates.iter().map(|u| u.id)) {
            // Rows are locked in id order first, as in lease renewal, so concurrent batches
            // and renewals cannot deadlock.
            let ids: Vec<String> = round.iter().map(|&i| updates[i].id.to_string()).collect();
            sqlx::query("SELECT id FROM executions WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
            let (terminal, progress): (Vec<usize>, Vec<usize>) = round
                .iter()
                .partition(|&&i| updates[i].status.as_deref().is_some_and(is_terminal));
            let mut hit = std::collections::HashSet::new();
            // 9 binds per update; PostgreSQL allows 65535 per statement.
            for chunk in terminal.chunks(1000) {
                let mut qb = QueryBuilder::<Postgres>::new(
                    "UPDATE executions e SET status = v.status, error = v.error, \
                     finished_at = v.finished_at, state = v.state, \
                     search_text = COALESCE(v.search_text, e.search_text), \
                     started_at = CASE WHEN v.clear_started THEN NULL ELSE e.started_at END, \
                     lease_owner = NULL, lease_expires_at = NULL FROM (",
                );
                qb.push_values(chunk, |mut b, &i| {
                    let u = &updates[i];
                    b.push_bind(u.id.to_string())
                        .push_bind(&u.lease_owner)
                        .push_bind(u.attempt)
                        .push_bind(&u.status)
                        .push_bind(&u.error)
                        .push_bind(u.finished_at)
                        .push_bind(&u.state)
                        .push_bind(&u.search_text)
                        .push_bind(u.clear_started);
                });
                qb.push(
                    ") AS v(id, owner, attempt, status, error, finished_at, state, search_text, \
                     clear_started) WHERE e.id = v.id AND e.status = 'running' \
                     AND e.lease_owner = v.owner AND e.attempt = v.attempt RETURNING e.id",
                );
                for r in qb.build().fetch_all(&mut *tx).await? {
                    hit.insert(r.get::<String, _>(0));
                }
            }
            // A progress write (a non-terminal status is one too: the row stays running).
            for chunk in progress.chunks(1000) {
                let mut qb =
                    QueryBuilder::<Postgres>::new("UPDATE executions e SET state = v.state FROM (");
                qb.push_values(chunk, |mut b, &i| {
                    let u = &updates[i];
                    b.push_bind(u.id.to_string())
                        .push_bind(&u.lease_owner)
                        .push_bind(u.attempt)
                        .push_bind(&u.state);
                });
                qb.push(
                    ") AS v(id, owner, attempt, state) WHERE e.id = v.id \
                     AND e.status = 'running' AND e.lease_owner = v.owner \
                     AND e.attempt = v.attempt RETURNING e.id",
                );
                for r in qb.build().fetch_all(&mut *tx).await? {
                    hit.insert(r.get::<String, _>(0));
                }
            }
            for i in round {
                if hit.contains(&updates[i].id.to_string()) {
                    applied[i] = true;
                    deliveries.extend(&updates[i].deliveries);
                }
            }
        }
        // The staged deliveries of the writes that applied, a few statements for all.
        crate::pg_webhooks::insert_deliveries_in(&mut tx, &deliveries).await?;
        // Rows this node did not lease are for any node's delivery worker.
        let notify_deliveries = deliveries
            .iter()
            .any(|d| d.status == "pending" && d.lease_owner.is_none());
        if notify_deliveries {
            notify(&mut tx, crate::pg_notify::DELIVERIES, "").await?;
        }
        tx.commit().await?;
        Ok(applied)
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
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        // Locks in id order, like the write batches (see apply_exec_updates).
        Ok(sqlx::query(
            "UPDATE executions SET lease_expires_at = $1 WHERE id IN ( \
               SELECT id FROM executions WHERE lease_owner = $2 AND status = 'running' \
               AND id = ANY($3) ORDER BY id FOR UPDATE) \
             AND lease_owner = $2 AND status = 'running'",
        )
        .bind(lease_expires_at)
        .bind(lease_owner)
        .bind(&ids)
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    async fn lost_leases(&self, lease_owner: &str, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let held: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM executions WHERE id = ANY($1) AND status = 'running' AND lease_owner = $2",
        )
        .bind(id_strings(ids))
        .bind(lease_owner)
        .fetch_all(&self.reader)
        .await?;
        Ok(ids
            .iter()
            .filter(|id| !held.contains(&id.to_string()))
            .copied()
            .collect())
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
        // Locked: a worker's fenced write waits and then finds the row changed; another
        // node's reaper skips these rows.
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM executions WHERE status = 'running' \
             AND (lease_expires_at IS NULL OR lease_expires_at < $1 \
                  OR ($2 AND lease_owner IS DISTINCT FROM $3)) \
             ORDER BY enqueued_at, id FOR UPDATE SKIP LOCKED"
        ))
        .bind(now_ms)
        .bind(all_of_other_owners)
        .bind(keep_owner)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = ReapOutcome::default();
        for row in execs_from_rows(&rows)? {
            if row.attempt.saturating_add(1) >= max_attempts {
                let (failed_error, failed_state) = failed(&row);
                let failed_error = failed_error.as_str();
                let search_text = flowrun_core::search::execution_search_text(
                    row.flow_name.as_deref(),
                    row.trigger_name.as_deref(),
                    Some(failed_error),
                );
                let updated = sqlx::query(&format!(
                    "UPDATE executions SET status = 'failed', error = $1, finished_at = $2, \
                     state = $3, search_text = $4, lease_owner = NULL, lease_expires_at = NULL \
                     WHERE id = $5 AND status = 'running' \
                     AND lease_owner IS NOT DISTINCT FROM $6 AND attempt = $7 \
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
                     WHERE id = $1 AND status = 'running' \
                     AND lease_owner IS NOT DISTINCT FROM $2 AND attempt = $3",
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
        if !out.requeued.is_empty() {
            notify(&mut tx, QUEUE, "").await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn skip_pending_of_flow(&self, flow_id: Uuid, error: &str, now_ms: i64) -> Result<u64> {
        let mut tx = self.writer.begin().await?;
        // search_text gains the error; it is folded in Rust (as at insert), so the rows are
        // updated per distinct (flow name, trigger name). Rows inserted meanwhile under a new
        // pair are picked up by another round.
        let mut skipped = 0;
        for _round in 0..4 {
            let names = sqlx::query(
                "SELECT DISTINCT flow_name, trigger_name FROM executions \
                 WHERE flow_id = $1 AND status = 'pending'",
            )
            .bind(flow_id.to_string())
            .fetch_all(&mut *tx)
            .await?;
            if names.is_empty() {
                break;
            }
            for n in &names {
                let flow_name: Option<String> = n.get(0);
                let trigger_name: Option<String> = n.get(1);
                let search_text = flowrun_core::search::execution_search_text(
                    flow_name.as_deref(),
                    trigger_name.as_deref(),
                    Some(error),
                );
                skipped += sqlx::query(
                    "UPDATE executions SET status = 'skipped', error = $1, finished_at = $2, \
                     state = '{}', search_text = $3 \
                     WHERE flow_id = $4 AND status = 'pending' \
                     AND flow_name IS NOT DISTINCT FROM $5 AND trigger_name IS NOT DISTINCT FROM $6",
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
