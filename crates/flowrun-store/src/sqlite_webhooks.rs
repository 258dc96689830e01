//! The webhook tables on sqlite: see [`crate::webhooks`] for the contract.
//!
//! Every write goes through the single writer connection, so a transaction that reads an
//! endpoint and then updates it cannot interleave with another write.

use async_trait::async_trait;
use sqlx::sqlite::{Sqlite, SqliteConnection, SqliteRow};
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use crate::sqlite::SqliteStore;
use crate::webhooks::*;
use crate::{Result, StoreError};

const ENDPOINT_COLS: &str = "id, owner_id, kind, url, description, event_types, state, health, \
     blocked_at, blocked_reason, secret, created_by, created_at, updated_at, consecutive_dead, \
     failing_since";

pub(crate) const DELIVERY_COLS: &str = "id, owner_id, endpoint_id, event_id, event_type, source, \
     occurred_at, data, status, attempts, last_status_code, last_error, duration_ms, is_test, \
     created_at, completed_at, created_by, next_attempt_at, lease_owner";

pub(crate) const ATTEMPT_COLS: &str = "delivery_id, attempt_no, sent_at, request_url, request_method, \
     request_headers, request_body, signed, response_status, response_headers, \
     response_snippet, duration_ms, error";

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
}

fn endpoint_from_row(r: &SqliteRow) -> Result<EndpointRow> {
    let id: String = r.get(0);
    Ok(EndpointRow {
        id: parse_uuid(&id)?,
        owner_id: r.get(1),
        kind: r.get(2),
        url: r.get(3),
        description: r.get(4),
        event_types: event_types_parse(&id, &r.get::<String, _>(5))?,
        state: r.get(6),
        health: r.get(7),
        blocked_at: r.get(8),
        blocked_reason: r.get(9),
        secret: r.get(10),
        created_by: r.get(11),
        created_at: r.get(12),
        updated_at: r.get(13),
        consecutive_dead: r.get(14),
        failing_since: r.get(15),
    })
}

fn delivery_from_row(r: &SqliteRow) -> Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: parse_uuid(&r.get::<String, _>(0))?,
        owner_id: r.get(1),
        endpoint_id: parse_uuid(&r.get::<String, _>(2))?,
        event_id: r.get(3),
        event_type: r.get(4),
        source: r.get(5),
        occurred_at: r.get(6),
        data: r.get(7),
        status: r.get(8),
        attempts: r.get(9),
        last_status_code: r.get(10),
        last_error: r.get(11),
        duration_ms: r.get(12),
        is_test: r.get(13),
        created_at: r.get(14),
        completed_at: r.get(15),
        created_by: r.get(16),
        next_attempt_at: r.get(17),
        lease_owner: r.get(18),
    })
}

fn attempt_from_row(r: &SqliteRow) -> Result<AttemptRow> {
    Ok(AttemptRow {
        delivery_id: parse_uuid(&r.get::<String, _>(0))?,
        attempt_no: r.get(1),
        sent_at: r.get(2),
        request_url: r.get(3),
        request_method: r.get(4),
        request_headers: r.get(5),
        request_body: r.get(6),
        signed: r.get(7),
        response_status: r.get(8),
        response_headers: r.get(9),
        response_snippet: r.get(10),
        duration_ms: r.get(11),
        error: r.get(12),
    })
}

async fn read_endpoint(
    conn: &mut SqliteConnection,
    owner_id: Option<&str>,
    id: Uuid,
) -> Result<Option<EndpointRow>> {
    let row = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLS} FROM webhook_endpoints WHERE id = ? AND (? IS NULL OR owner_id = ?)"
    ))
    .bind(id.to_string())
    .bind(owner_id)
    .bind(owner_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(endpoint_from_row).transpose()
}

/// The filter conditions shared by lists and stats (after `WHERE`).
fn push_filter(qb: &mut QueryBuilder<'_, Sqlite>, owner_id: &str, f: &DeliveryFilter) {
    qb.push("owner_id = ").push_bind(owner_id.to_string());
    if let Some(endpoint_id) = f.endpoint_id {
        qb.push(" AND endpoint_id = ")
            .push_bind(endpoint_id.to_string());
    }
    if !f.statuses.is_empty() {
        qb.push(" AND status IN (");
        let mut sep = qb.separated(", ");
        for s in &f.statuses {
            sep.push_bind(s.clone());
        }
        qb.push(")");
    }
    if let Some(since) = f.since {
        qb.push(" AND created_at >= ").push_bind(since);
    }
    if let Some(event_id) = &f.event_id {
        qb.push(" AND event_id = ").push_bind(event_id.clone());
    }
    if let Some(kind) = &f.kind {
        qb.push(" AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE kind = ")
            .push_bind(kind.clone())
            .push(")");
    }
}

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn insert_endpoint(&self, e: &EndpointRow) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO webhook_endpoints ({ENDPOINT_COLS}) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(e.id.to_string())
        .bind(&e.owner_id)
        .bind(&e.kind)
        .bind(&e.url)
        .bind(&e.description)
        .bind(event_types_json(&e.event_types))
        .bind(&e.state)
        .bind(&e.health)
        .bind(e.blocked_at)
        .bind(&e.blocked_reason)
        .bind(&e.secret)
        .bind(&e.created_by)
        .bind(e.created_at)
        .bind(e.updated_at)
        .bind(e.consecutive_dead)
        .bind(e.failing_since)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn get_endpoint(&self, id: Uuid) -> Result<Option<EndpointRow>> {
        let mut conn = self.reader.acquire().await?;
        read_endpoint(&mut conn, None, id).await
    }

    async fn list_endpoints(
        &self,
        owner_id: Option<&str>,
        include_deleted: bool,
    ) -> Result<Vec<EndpointRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLS} FROM webhook_endpoints \
             WHERE (? IS NULL OR owner_id = ?) AND (? OR state <> 'DELETED') \
             ORDER BY created_at, id"
        ))
        .bind(owner_id)
        .bind(owner_id)
        .bind(include_deleted)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    async fn patch_endpoint(
        &self,
        owner_id: &str,
        id: Uuid,
        p: &EndpointPatch,
    ) -> Result<Option<EndpointRow>> {
        let mut tx = self.writer.begin().await?;
        let Some(mut e) = read_endpoint(&mut tx, Some(owner_id), id).await? else {
            return Ok(None);
        };
        if e.is_deleted() {
            return Ok(None);
        }
        if let Some(t) = &p.event_types {
            e.event_types = t.clone();
        }
        if let Some(s) = &p.state {
            e.state = s.clone();
        }
        if let Some(d) = &p.description {
            e.description = d.clone();
        }
        if p.reenable {
            e.health = "healthy".to_string();
            e.blocked_at = None;
            e.blocked_reason = None;
            e.consecutive_dead = 0;
            e.failing_since = None;
        }
        e.updated_at = p.updated_at;
        sqlx::query(
            "UPDATE webhook_endpoints SET event_types = ?, state = ?, description = ?, health = ?, \
             blocked_at = ?, blocked_reason = ?, consecutive_dead = ?, failing_since = ?, \
             updated_at = ? WHERE id = ?",
        )
        .bind(event_types_json(&e.event_types))
        .bind(&e.state)
        .bind(&e.description)
        .bind(&e.health)
        .bind(e.blocked_at)
        .bind(&e.blocked_reason)
        .bind(e.consecutive_dead)
        .bind(e.failing_since)
        .bind(e.updated_at)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(e))
    }

    async fn set_endpoint_secret(
        &self,
        owner_id: &str,
        id: Uuid,
        secret: &str,
        now_ms: i64,
    ) -> Result<Option<EndpointRow>> {
        let row = sqlx::query(&format!(
            "UPDATE webhook_endpoints SET secret = ?, updated_at = ? \
             WHERE id = ? AND owner_id = ? AND state <> 'DELETED' RETURNING {ENDPOINT_COLS}"
        ))
        .bind(secret)
        .bind(now_ms)
        .bind(id.to_string())
        .bind(owner_id)
        .fetch_optional(&self.writer)
        .await?;
        row.as_ref().map(endpoint_from_row).transpose()
    }

    async fn delete_endpoint(
        &self,
        owner_id: &str,
        id: Uuid,
        now_ms: i64,
        last_error: &str,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let n = sqlx::query(
            "UPDATE webhook_endpoints SET state = 'DELETED', updated_at = ? \
             WHERE id = ? AND owner_id = ? AND state <> 'DELETED'",
        )
        .bind(now_ms)
        .bind(id.to_string())
        .bind(owner_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'skipped', last_error = ?, completed_at = ?, \
             next_attempt_at = NULL, lease_owner = NULL \
             WHERE endpoint_id = ? AND status = 'pending'",
        )
        .bind(last_error)
        .bind(now_ms)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn insert_delivery(&self, d: &DeliveryRow) -> Result<()> {
        let mut qb = QueryBuilder::new("");
        push_insert_deliveries(&mut qb, std::slice::from_ref(d));
        qb.build().execute(&self.writer).await?;
        Ok(())
    }

    async fn claim_deliveries(
        &self,
        lease_owner: &str,
        now_ms: i64,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "UPDATE webhook_deliveries SET next_attempt_at = ?, lease_owner = ? \
             WHERE id IN (SELECT id FROM webhook_deliveries \
                 WHERE status = 'pending' AND next_attempt_at <= ? \
                 ORDER BY next_attempt_at, id LIMIT ?) \
             RETURNING {DELIVERY_COLS}"
        ))
        .bind(lease_until)
        .bind(lease_owner)
        .bind(now_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.writer)
        .await?;
        rows.iter().map(delivery_from_row).collect()
    }

    async fn release_delivery_claims(&self, keep_owner: &str, now_ms: i64) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE webhook_deliveries SET next_attempt_at = ?, lease_owner = NULL \
             WHERE status = 'pending' AND lease_owner IS NOT NULL AND lease_owner <> ?",
        )
        .bind(now_ms)
        .bind(keep_owner)
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    async fn next_delivery_due(&self) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending'",
        )
        .fetch_one(&self.writer)
        .await?)
    }

    async fn finish_attempts(
        &self,
        writes: Vec<(AttemptWrite, Option<HealthFn<'_>>)>,
    ) -> Result<Vec<bool>> {
        if writes.iter().all(|(_, health)| health.is_none()) {
            // Joins the next group commit (see sqlite_batch).
            return self
                .commits
                .attempts(writes.into_iter().map(|(w, _)| w).collect())
                .await;
        }
        // Health is computed from the endpoint as the transaction sees it, so these writes
        // run in a transaction of their own: per round (at most one write per delivery, so a
        // delivery's writes apply in order) the script's statements, then each applied
        // write's health.
        let only: Vec<AttemptWrite> = writes.iter().map(|(w, _)| w.clone()).collect();
        let mut tx = self.writer.begin().await?;
        let mut applied = vec![false; writes.len()];
        for round in crate::write_rounds(only.iter().map(|w| w.delivery_id)) {
            let mut hit = std::collections::HashSet::new();
            for chunk in round.chunks(1000) {
                let mut qb = QueryBuilder::<Sqlite>::new("");
                push_attempts(&mut qb, &only, chunk, 0);
                for r in qb.build().fetch_all(&mut *tx).await? {
                    hit.insert(r.get::<String, _>(0));
                }
            }
            for i in round {
                if hit.contains(&only[i].delivery_id.to_string()) {
                    applied[i] = true;
                    if let Some(f) = writes[i].1 {
                        apply_health(&mut tx, only[i].endpoint_id, f).await?;
                    }
                }
            }
        }
        tx.commit().await?;
        Ok(applied)
    }

    async fn get_delivery(&self, owner_id: &str, id: Uuid) -> Result<Option<DeliveryRow>> {
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE id = ? AND owner_id = ?"
        ))
        .bind(id.to_string())
        .bind(owner_id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    async fn list_attempts(&self, delivery_id: Uuid) -> Result<Vec<AttemptRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ATTEMPT_COLS} FROM webhook_attempts WHERE delivery_id = ? ORDER BY attempt_no"
        ))
        .bind(delivery_id.to_string())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn list_deliveries(
        &self,
        owner_id: &str,
        filter: &DeliveryFilter,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<DeliveryRow>, i64)> {
        let mut qb = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM webhook_deliveries WHERE ");
        push_filter(&mut qb, owner_id, filter);
        let total: i64 = qb.build_query_scalar().fetch_one(&self.reader).await?;
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE "
        ));
        push_filter(&mut qb, owner_id, filter);
        qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .push(" OFFSET ")
            .push_bind(i64::try_from(offset).unwrap_or(i64::MAX));
        let rows = qb.build().fetch_all(&self.reader).await?;
        let rows = rows.iter().map(delivery_from_row).collect::<Result<_>>()?;
        Ok((rows, total))
    }

    async fn delivery_stats(&self, owner_id: &str, filter: &DeliveryFilter) -> Result<[i64; 4]> {
        let mut qb =
            QueryBuilder::<Sqlite>::new("SELECT status, COUNT(*) FROM webhook_deliveries WHERE ");
        push_filter(&mut qb, owner_id, filter);
        qb.push(" GROUP BY status");
        let rows = qb.build().fetch_all(&self.reader).await?;
        let mut out = [0i64; 4];
        for r in rows {
            let status: String = r.get(0);
            if let Some(i) = DELIVERY_STATUSES.iter().position(|s| *s == status) {
                out[i] = r.get(1);
            }
        }
        Ok(out)
    }
}

/// Inserts delivery rows as statements of a script, many rows per statement.
pub(crate) fn push_insert_deliveries<'a>(
    qb: &mut QueryBuilder<'a, Sqlite>,
    rows: &'a [DeliveryRow],
) {
    // 19 binds per row; SQLite allows 32766 variables per statement.
    for chunk in rows.chunks(1000) {
        qb.push(format!(
            "INSERT OR ROLLBACK INTO webhook_deliveries ({DELIVERY_COLS}) "
        ));
        qb.push_values(chunk, |mut b, d| bind_delivery(&mut b, d));
        qb.push("; ");
    }
}

/// Applies `health` to the endpoint as it is now in the transaction.
async fn apply_health(
    conn: &mut SqliteConnection,
    endpoint_id: Uuid,
    health: HealthFn<'_>,
) -> Result<()> {
    if let Some(e) = read_endpoint(&mut *conn, None, endpoint_id).await?
        && let Some(h) = health(&e)
    {
        sqlx::query(
            "UPDATE webhook_endpoints SET health = ?, consecutive_dead = ?, failing_since = ?, \
             blocked_at = ?, blocked_reason = ? WHERE id = ?",
        )
        .bind(&h.health)
        .bind(h.consecutive_dead)
        .bind(h.failing_since)
        .bind(h.blocked_at)
        .bind(&h.blocked_reason)
        .bind(endpoint_id.to_string())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Binds a delivery row's columns in `DELIVERY_COLS` order.
pub(crate) fn bind_delivery<'q>(
    b: &mut sqlx::query_builder::Separated<'_, 'q, Sqlite, &'static str>,
    d: &'q DeliveryRow,
) {
    b.push_bind(d.id.to_string())
        .push_bind(&d.owner_id)
        .push_bind(d.endpoint_id.to_string())
        .push_bind(&d.event_id)
        .push_bind(&d.event_type)
        .push_bind(&d.source)
        .push_bind(d.occurred_at)
        .push_bind(&d.data)
        .push_bind(&d.status)
        .push_bind(d.attempts)
        .push_bind(d.last_status_code)
        .push_bind(&d.last_error)
        .push_bind(d.duration_ms)
        .push_bind(d.is_test)
        .push_bind(d.created_at)
        .push_bind(d.completed_at)
        .push_bind(&d.created_by)
        .push_bind(d.next_attempt_at)
        .push_bind(&d.lease_owner);
}

/// The statements of one round of attempt records (`chunk`, indexes into `writes`): each
/// applied write returns `(delivery id, tag)`.
pub(crate) fn push_attempts<'a>(
    qb: &mut QueryBuilder<'a, Sqlite>,
    writes: &'a [AttemptWrite],
    chunk: &[usize],
    tag: i64,
) {
    let attempts: Vec<(&AttemptWrite, &AttemptRow)> = chunk
        .iter()
        .filter_map(|&i| writes[i].attempt.as_ref().map(|a| (&writes[i], a)))
        .collect();
    if !attempts.is_empty() {
        // Before the delivery update, under its condition: an attempt is stored exactly when
        // its write applies.
        qb.push(format!("WITH a(expected, {ATTEMPT_COLS}) AS ("));
        qb.push_values(attempts, |mut b, (w, a)| {
            b.push_bind(w.expected_attempts)
                .push_bind(a.delivery_id.to_string())
                .push_bind(a.attempt_no)
                .push_bind(a.sent_at)
                .push_bind(&a.request_url)
                .push_bind(&a.request_method)
                .push_bind(&a.request_headers)
                .push_bind(&a.request_body)
                .push_bind(a.signed)
                .push_bind(a.response_status)
                .push_bind(&a.response_headers)
                .push_bind(&a.response_snippet)
                .push_bind(a.duration_ms)
                .push_bind(&a.error);
        });
        qb.push(format!(
            ") INSERT OR ROLLBACK INTO webhook_attempts ({ATTEMPT_COLS}) SELECT {} FROM a \
             JOIN webhook_deliveries d ON d.id = a.delivery_id AND d.attempts = a.expected \
             WHERE true ON CONFLICT DO NOTHING; ",
            crate::prefixed("a.", ATTEMPT_COLS)
        ));
    }
    qb.push(
        "WITH v(id, expected, attempts, last_status_code, last_error, duration_ms, \
         completed_at, next_attempt_at, status) AS (",
    );
    qb.push_values(chunk, |mut b, &i| {
        let w = &writes[i];
        b.push_bind(w.delivery_id.to_string())
            .push_bind(w.expected_attempts)
            .push_bind(w.attempts)
            .push_bind(w.last_status_code)
            .push_bind(&w.last_error)
            .push_bind(w.duration_ms)
            .push_bind(w.completed_at)
            .push_bind(w.next_attempt_at)
            .push_bind(&w.status);
    });
    qb.push(
        ") UPDATE OR ROLLBACK webhook_deliveries SET attempts = v.attempts, \
         last_status_code = v.last_status_code, last_error = v.last_error, \
         duration_ms = v.duration_ms, \
         completed_at = CASE WHEN webhook_deliveries.status = 'pending' \
             THEN v.completed_at ELSE webhook_deliveries.completed_at END, \
         next_attempt_at = CASE WHEN webhook_deliveries.status = 'pending' \
             THEN v.next_attempt_at ELSE NULL END, \
         lease_owner = NULL, \
         status = CASE WHEN webhook_deliveries.status = 'pending' \
             THEN v.status ELSE webhook_deliveries.status END \
         FROM v WHERE webhook_deliveries.id = v.id AND webhook_deliveries.attempts = v.expected \
         RETURNING webhook_deliveries.id, ",
    );
    qb.push(format!("{tag}; "));
}
