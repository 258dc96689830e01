//! The webhook tables on postgres: see [`crate::webhooks`] for the contract.
//!
//! Several nodes share the tables: claims lock their rows with `FOR UPDATE SKIP LOCKED`, and a
//! transaction that reads an endpoint to update it locks the row first (`FOR UPDATE`).

use async_trait::async_trait;
use sqlx::postgres::{PgConnection, PgRow, Postgres};
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use crate::postgres::PgStore;
use crate::webhooks::*;
use crate::{Result, StoreError};

const ENDPOINT_COLS: &str = "id, owner_id, kind, url, description, event_types, state, health, \
     blocked_at, blocked_reason, secret, created_by, created_at, updated_at, consecutive_dead, \
     failing_since";

const DELIVERY_COLS: &str = "id, owner_id, endpoint_id, event_id, event_type, source, \
     occurred_at, data, status, attempts, last_status_code, last_error, duration_ms, is_test, \
     created_at, completed_at, created_by, next_attempt_at, lease_owner";

const ATTEMPT_COLS: &str = "delivery_id, attempt_no, sent_at, request_url, request_method, \
     request_headers, request_body, signed, response_status, response_headers, \
     response_snippet, duration_ms, error";

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
}

fn endpoint_from_row(r: &PgRow) -> Result<EndpointRow> {
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

fn delivery_from_row(r: &PgRow) -> Result<DeliveryRow> {
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

fn attempt_from_row(r: &PgRow) -> Result<AttemptRow> {
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
    conn: &mut PgConnection,
    owner_id: Option<&str>,
    id: Uuid,
    for_update: bool,
) -> Result<Option<EndpointRow>> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLS} FROM webhook_endpoints \
         WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2){lock}"
    ))
    .bind(id.to_string())
    .bind(owner_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(endpoint_from_row).transpose()
}

/// The filter conditions shared by lists and stats (after `WHERE`).
fn push_filter(qb: &mut QueryBuilder<'_, Postgres>, owner_id: &str, f: &DeliveryFilter) {
    qb.push("owner_id = ").push_bind(owner_id.to_string());
    if let Some(endpoint_id) = f.endpoint_id {
        qb.push(" AND endpoint_id = ")
            .push_bind(endpoint_id.to_string());
    }
    if !f.statuses.is_empty() {
        qb.push(" AND status = ANY(")
            .push_bind(f.statuses.clone())
            .push(")");
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
impl WebhookStore for PgStore {
    async fn insert_endpoint(&self, e: &EndpointRow) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO webhook_endpoints ({ENDPOINT_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
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
        self.endpoint_changed(e.id).await
    }

    async fn get_endpoint(&self, id: Uuid) -> Result<Option<EndpointRow>> {
        let mut conn = self.reader.acquire().await?;
        read_endpoint(&mut conn, None, id, false).await
    }

    async fn list_endpoints(
        &self,
        owner_id: Option<&str>,
        include_deleted: bool,
    ) -> Result<Vec<EndpointRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLS} FROM webhook_endpoints \
             WHERE ($1::text IS NULL OR owner_id = $1) AND ($2 OR state <> 'DELETED') \
             ORDER BY created_at, id"
        ))
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
        let Some(mut e) = read_endpoint(&mut tx, Some(owner_id), id, true).await? else {
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
            "UPDATE webhook_endpoints SET event_types = $1, state = $2, description = $3, health = $4, \
             blocked_at = $5, blocked_reason = $6, consecutive_dead = $7, failing_since = $8, \
             updated_at = $9 WHERE id = $10",
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
            "UPDATE webhook_endpoints SET secret = $1, updated_at = $2 \
             WHERE id = $3 AND owner_id = $4 AND state <> 'DELETED' RETURNING {ENDPOINT_COLS}"
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
            "UPDATE webhook_endpoints SET state = 'DELETED', updated_at = $1 \
             WHERE id = $2 AND owner_id = $3 AND state <> 'DELETED'",
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
            "UPDATE webhook_deliveries SET status = 'skipped', last_error = $1, completed_at = $2, \
             next_attempt_at = NULL, lease_owner = NULL \
             WHERE endpoint_id = $3 AND status = 'pending'",
        )
        .bind(last_error)
        .bind(now_ms)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        let payload = crate::pg_notify::def_payload(&self.origin, "endpoint", &id.to_string());
        crate::pg_notify::notify(&mut tx, crate::pg_notify::DEFS, &payload).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn insert_delivery(&self, d: &DeliveryRow) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        insert_delivery_in(&mut tx, d).await?;
        if d.status == "pending" && d.lease_owner.is_none() {
            crate::pg_notify::notify(&mut tx, crate::pg_notify::DELIVERIES, "").await?;
        }
        tx.commit().await?;
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
            "UPDATE webhook_deliveries SET next_attempt_at = $1, lease_owner = $2 \
             WHERE id IN (SELECT id FROM webhook_deliveries \
                 WHERE status = 'pending' AND next_attempt_at <= $3 \
                 ORDER BY next_attempt_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) \
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
            "UPDATE webhook_deliveries SET next_attempt_at = $1, lease_owner = NULL \
             WHERE status = 'pending' AND lease_owner IS NOT NULL AND lease_owner <> $2",
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
        let writes = &writes[..];
        let mut tx = self.writer.begin().await?;
        let mut applied = vec![false; writes.len()];
        // A round holds at most one write per delivery, so a delivery's writes apply in order.
        for round in crate::write_rounds(writes.iter().map(|(w, _)| w.delivery_id)) {
            let (mut with_health, plain): (Vec<usize>, Vec<usize>) =
                round.into_iter().partition(|&i| writes[i].1.is_some());
            // Delivery rows are locked in id order first, so batches of several nodes (and
            // their claims and releases) cannot deadlock; then one statement records them all.
            let mut ids: Vec<String> = plain
                .iter()
                .map(|&i| writes[i].0.delivery_id.to_string())
                .collect();
            ids.sort();
            if !ids.is_empty() {
                sqlx::query(
                    "SELECT id FROM webhook_deliveries WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                )
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
            }
            // 9 + 13 binds per write; PostgreSQL allows 65535 per statement.
            for chunk in plain.chunks(1000) {
                let hit = finish_plain_attempts_in(&mut tx, writes, chunk).await?;
                for &i in chunk {
                    applied[i] = hit.contains(&writes[i].0.delivery_id.to_string());
                }
            }
            // Health changes read and lock their endpoint; endpoints are locked in id order.
            with_health.sort_by_key(|&i| writes[i].0.endpoint_id);
            for i in with_health {
                let (w, health) = &writes[i];
                applied[i] = finish_attempt_in(&mut tx, w, *health).await?;
            }
        }
        tx.commit().await?;
        Ok(applied)
    }

    async fn get_delivery(&self, owner_id: &str, id: Uuid) -> Result<Option<DeliveryRow>> {
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE id = $1 AND owner_id = $2"
        ))
        .bind(id.to_string())
        .bind(owner_id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    async fn list_attempts(&self, delivery_id: Uuid) -> Result<Vec<AttemptRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ATTEMPT_COLS} FROM webhook_attempts WHERE delivery_id = $1 ORDER BY attempt_no"
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
        let mut qb =
            QueryBuilder::<Postgres>::new("SELECT COUNT(*) FROM webhook_deliveries WHERE ");
        push_filter(&mut qb, owner_id, filter);
        let total: i64 = qb.build_query_scalar().fetch_one(&self.reader).await?;
        let mut qb = QueryBuilder::<Postgres>::new(format!(
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
            QueryBuilder::<Postgres>::new("SELECT status, COUNT(*) FROM webhook_deliveries WHERE ");
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

impl PgStore {
    /// Tells the other nodes that an endpoint appeared or went (their endpoint index).
    async fn endpoint_changed(&self, id: Uuid) -> Result<()> {
        let payload = crate::pg_notify::def_payload(&self.origin, "endpoint", &id.to_string());
        let mut conn = self.writer.acquire().await?;
        crate::pg_notify::notify(&mut conn, crate::pg_notify::DEFS, &payload).await
    }
}

/// Inserts one delivery row on `conn` (alone, or inside a caller's transaction).
pub(crate) async fn insert_delivery_in(conn: &mut PgConnection, d: &DeliveryRow) -> Result<()> {
    insert_deliveries_in(conn, &[d]).await
}

/// Inserts delivery rows on `conn`, many rows per statement.
pub(crate) async fn insert_deliveries_in(
    conn: &mut PgConnection,
    rows: &[&DeliveryRow],
) -> Result<()> {
    // 19 binds per row; PostgreSQL allows 65535 per statement.
    for chunk in rows.chunks(1000) {
        let mut qb = QueryBuilder::<Postgres>::new(format!(
            "INSERT INTO webhook_deliveries ({DELIVERY_COLS}) "
        ));
        qb.push_values(chunk, |mut b, d| {
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
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Records attempts without health changes (one write per delivery) in one statement: the
/// fenced delivery updates, and the attempt rows of exactly the updates that applied. Returns the
/// ids of the deliveries updated.
async fn finish_plain_attempts_in(
    conn: &mut PgConnection,
    writes: &[(AttemptWrite, Option<HealthFn<'_>>)],
    chunk: &[usize],
) -> Result<std::collections::HashSet<String>> {
    let mut qb = QueryBuilder::<Postgres>::new(
        "WITH v(id, expected, attempts, last_status_code, last_error, duration_ms, \
         completed_at, next_attempt_at, status) AS (",
    );
    qb.push_values(chunk, |mut b, &i| {
        let w = &writes[i].0;
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
        "), u AS (UPDATE webhook_deliveries d SET attempts = v.attempts, \
         last_status_code = v.last_status_code, last_error = v.last_error, \
         duration_ms = v.duration_ms, \
         completed_at = CASE WHEN d.status = 'pending' THEN v.completed_at ELSE d.completed_at END, \
         next_attempt_at = CASE WHEN d.status = 'pending' THEN v.next_attempt_at ELSE NULL END, \
         lease_owner = NULL, \
         status = CASE WHEN d.status = 'pending' THEN v.status ELSE d.status END \
         FROM v WHERE d.id = v.id AND d.attempts = v.expected RETURNING d.id)",
    );
    let attempts: Vec<&AttemptRow> = chunk
        .iter()
        .filter_map(|&i| writes[i].0.attempt.as_ref())
        .collect();
    if !attempts.is_empty() {
        // Joined to the updates that applied: an attempt is stored exactly when its write is.
        qb.push(format!(", a({ATTEMPT_COLS}) AS ("));
        qb.push_values(attempts, |mut b, a| {
            b.push_bind(a.delivery_id.to_string())
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
            "), i AS (INSERT INTO webhook_attempts ({ATTEMPT_COLS}) SELECT {} FROM a \
             JOIN u ON u.id = a.delivery_id ON CONFLICT DO NOTHING)",
            crate::prefixed("a.", ATTEMPT_COLS)
        ));
    }
    qb.push(" SELECT id FROM u");
    let rows = qb.build().fetch_all(&mut *conn).await?;
    Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
}

/// Records one attempt inside the caller's transaction (see `finish_attempts`).
async fn finish_attempt_in(
    conn: &mut PgConnection,
    w: &AttemptWrite,
    health: Option<HealthFn<'_>>,
) -> Result<bool> {
    let updated = sqlx::query(
        "UPDATE webhook_deliveries SET attempts = $1, last_status_code = $2, last_error = $3, \
         duration_ms = $4, \
         completed_at = CASE WHEN status = 'pending' THEN $5 ELSE completed_at END, \
         next_attempt_at = CASE WHEN status = 'pending' THEN $6 ELSE NULL END, \
         lease_owner = NULL, \
         status = CASE WHEN status = 'pending' THEN $7 ELSE status END \
         WHERE id = $8 AND attempts = $9",
    )
    .bind(w.attempts)
    .bind(w.last_status_code)
    .bind(&w.last_error)
    .bind(w.duration_ms)
    .bind(w.completed_at)
    .bind(w.next_attempt_at)
    .bind(&w.status)
    .bind(w.delivery_id.to_string())
    .bind(w.expected_attempts)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated != 1 {
        // Nothing changed: the rest of the batch goes on.
        return Ok(false);
    }
    if let Some(a) = &w.attempt {
        sqlx::query(&format!(
            "INSERT INTO webhook_attempts ({ATTEMPT_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT DO NOTHING"
        ))
        .bind(a.delivery_id.to_string())
        .bind(a.attempt_no)
        .bind(a.sent_at)
        .bind(&a.request_url)
        .bind(&a.request_method)
        .bind(&a.request_headers)
        .bind(&a.request_body)
        .bind(a.signed)
        .bind(a.response_status)
        .bind(&a.response_headers)
        .bind(&a.response_snippet)
        .bind(a.duration_ms)
        .bind(&a.error)
        .execute(&mut *conn)
        .await?;
    }
    if let Some(f) = health
        && let Some(e) = read_endpoint(&mut *conn, None, w.endpoint_id, true).await?
        && let Some(h) = f(&e)
    {
        sqlx::query(
            "UPDATE webhook_endpoints SET health = $1, consecutive_dead = $2, failing_since = $3, \
             blocked_at = $4, blocked_reason = $5 WHERE id = $6",
        )
        .bind(&h.health)
        .bind(h.consecutive_dead)
        .bind(h.failing_since)
        .bind(h.blocked_at)
        .bind(&h.blocked_reason)
        .bind(w.endpoint_id.to_string())
        .execute(&mut *conn)
        .await?;
    }
    Ok(true)
}
