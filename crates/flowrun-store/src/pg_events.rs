//! The events table on PostgreSQL: see [`crate::events`].

use async_trait::async_trait;
use sqlx::postgres::{PgRow, Postgres};
use sqlx::{QueryBuilder, Row, Transaction};

use crate::events::{EventRow, EventStore};
use crate::postgres::PgStore;
use crate::{Result, StoreError};

const COLS: &str =
    "seq, id, owner_id, event_type, device_id, payload, received_at, actor_id, routed_at";

fn event_from_row(r: &PgRow) -> EventRow {
    EventRow {
        seq: r.get(0),
        id: r.get(1),
        owner_id: r.get(2),
        event_type: r.get(3),
        device_id: r.get(4),
        payload: r.get(5),
        received_at: r.get(6),
        actor_id: r.get(7),
        routed_at: r.get(8),
    }
}

/// Marks events routed inside the caller's transaction. Every one must still be unrouted:
/// when another node routed some of them first (its transaction held their rows; this
/// statement waited and then found them marked), the caller's transaction must roll back,
/// or their executions would exist twice.
pub(crate) async fn mark_routed(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[String],
    now_ms: i64,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut qb = QueryBuilder::<Postgres>::new("UPDATE events SET routed_at = ");
    qb.push_bind(now_ms);
    qb.push(" WHERE routed_at IS NULL AND id IN (");
    let mut sep = qb.separated(", ");
    for id in ids {
        sep.push_bind(id);
    }
    qb.push(")");
    let marked = qb.build().execute(&mut **tx).await?.rows_affected();
    if marked != ids.len() as u64 {
        return Err(StoreError::Conflict(format!(
            "{} of {} events were routed by another node",
            ids.len() as u64 - marked,
            ids.len()
        )));
    }
    Ok(())
}

#[async_trait]
impl EventStore for PgStore {
    async fn insert_events(&self, events: &[EventRow]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        // 8 binds per row; PostgreSQL allows 65535 parameters per statement.
        for chunk in events.chunks(1000) {
            let mut qb = QueryBuilder::<Postgres>::new(
                "INSERT INTO events (id, owner_id, event_type, device_id, payload, received_at, actor_id, routed_at) ",
            );
            qb.push_values(chunk, |mut b, e| {
                b.push_bind(&e.id)
                    .push_bind(&e.owner_id)
                    .push_bind(&e.event_type)
                    .push_bind(&e.device_id)
                    .push_bind(&e.payload)
                    .push_bind(e.received_at)
                    .push_bind(&e.actor_id)
                    .push_bind(e.routed_at);
            });
            qb.build().execute(&mut *tx).await?;
        }
        if !events.is_empty() {
            crate::pg_notify::notify(&mut tx, crate::pg_notify::EVENTS, "").await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn unrouted_events(&self, limit: i64) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM events WHERE routed_at IS NULL ORDER BY seq LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.writer)
        .await?;
        Ok(rows.iter().map(event_from_row).collect())
    }

    async fn take_routing_lease(&self, holder: &str, now_ms: i64, until_ms: i64) -> Result<bool> {
        let held: Option<String> = sqlx::query_scalar(
            "INSERT INTO routing_lease (name, holder, expires_at) VALUES ('events', $1, $2) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE routing_lease.holder = excluded.holder OR routing_lease.expires_at < $3 \
             RETURNING holder",
        )
        .bind(holder)
        .bind(until_ms)
        .bind(now_ms)
        .fetch_optional(&self.writer)
        .await?;
        Ok(held.is_some())
    }

    async fn count_unrouted_events(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE routed_at IS NULL")
                .fetch_one(&self.reader)
                .await?,
        )
    }
}
