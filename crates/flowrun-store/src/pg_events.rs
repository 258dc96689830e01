//! The events table on PostgreSQL: see [`crate::events`].

use async_trait::async_trait;
use sqlx::postgres::{PgRow, Postgres};
use sqlx::{QueryBuilder, Row, Transaction};

use crate::Result;
use crate::events::{EventRow, EventStore};
use crate::postgres::PgStore;

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

/// Marks events routed inside the caller's transaction.
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
    qb.build().execute(&mut **tx).await?;
    Ok(())
}

#[async_trait]
impl EventStore for PgStore {
    async fn insert_events(&self, events: &[EventRow]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        // 8 binds per row; PostgreSQL allows 65535 parameters per statement.
        for chunk in events.chunks(1000) {
            let mut qb = QueryBuilder::<Postgres>::new(
                "INSERT INTO events (id, owner_id, event_type, device_id, payload, received_at, actor_id) ",
            );
            qb.push_values(chunk, |mut b, e| {
                b.push_bind(&e.id)
                    .push_bind(&e.owner_id)
                    .push_bind(&e.event_type)
                    .push_bind(&e.device_id)
                    .push_bind(&e.payload)
                    .push_bind(e.received_at)
                    .push_bind(&e.actor_id);
            });
            qb.build().execute(&mut *tx).await?;
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

    async fn count_unrouted_events(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE routed_at IS NULL")
                .fetch_one(&self.reader)
                .await?,
        )
    }
}
