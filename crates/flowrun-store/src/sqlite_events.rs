//! The events table on SQLite: see [`crate::events`].

use std::collections::HashSet;

use async_trait::async_trait;
use sqlx::sqlite::{Sqlite, SqliteRow};
use sqlx::{QueryBuilder, Row, Transaction};

use crate::events::{EventKey, EventRow, EventStore, KeyedEvents};
use crate::sqlite::SqliteStore;
use crate::{IDEMPOTENCY_STALE_MS, IDEMPOTENCY_TTL_MS, IdemBegin, Result, decide_existing};

const COLS: &str =
    "seq, id, owner_id, event_type, device_id, payload, received_at, actor_id, routed_at";

fn event_from_row(r: &SqliteRow) -> EventRow {
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

/// Key records of a group commit's keyed requests, claimed in one statement: returns the
/// scopes actually inserted (a key already recorded, or repeated earlier in the batch, is
/// not).
async fn claim_keys(
    tx: &mut Transaction<'_, Sqlite>,
    keys: &[&EventKey],
    now_ms: i64,
) -> Result<HashSet<(String, String, String, String)>> {
    let mut claimed = HashSet::with_capacity(keys.len());
    // 10 binds per row; SQLite allows 32766 variables per statement.
    for chunk in keys.chunks(1000) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO idempotency (owner_id, method, route, idem_key, fingerprint, state, status, body, location, created_at) ",
        );
        qb.push_values(chunk, |mut b, k| {
            b.push_bind(&k.scope.owner_id)
                .push_bind(&k.scope.method)
                .push_bind(&k.scope.route)
                .push_bind(&k.scope.key)
                .push_bind(&k.fingerprint)
                .push_bind("done")
                .push_bind(i32::from(k.response.status))
                .push_bind(&k.response.body)
                .push_bind(&k.response.location)
                .push_bind(now_ms);
        });
        qb.push(" ON CONFLICT DO NOTHING RETURNING owner_id, method, route, idem_key");
        for r in qb.build().fetch_all(&mut **tx).await? {
            claimed.insert((r.get(0), r.get(1), r.get(2), r.get(3)));
        }
    }
    Ok(claimed)
}

/// A key found taken by [`claim_keys`]: an expired record (or an abandoned running one) is
/// replaced and the request goes ahead; otherwise the record decides.
async fn existing_key(
    tx: &mut Transaction<'_, Sqlite>,
    k: &EventKey,
    now_ms: i64,
) -> Result<IdemBegin> {
    let s = &k.scope;
    let deleted = sqlx::query(
        "DELETE FROM idempotency WHERE owner_id = ? AND method = ? AND route = ? AND idem_key = ? \
         AND (created_at < ? OR (state = 'running' AND created_at < ?))",
    )
    .bind(&s.owner_id)
    .bind(&s.method)
    .bind(&s.route)
    .bind(&s.key)
    .bind(now_ms - IDEMPOTENCY_TTL_MS)
    .bind(now_ms - IDEMPOTENCY_STALE_MS)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if deleted == 1 && !claim_keys(tx, &[k], now_ms).await?.is_empty() {
        return Ok(IdemBegin::New);
    }
    let r = sqlx::query(
        "SELECT fingerprint, state, status, body, location FROM idempotency \
         WHERE owner_id = ? AND method = ? AND route = ? AND idem_key = ?",
    )
    .bind(&s.owner_id)
    .bind(&s.method)
    .bind(&s.route)
    .bind(&s.key)
    .fetch_one(&mut **tx)
    .await?;
    Ok(decide_existing(
        &k.fingerprint,
        &r.get::<String, _>(0),
        &r.get::<String, _>(1),
        r.get(2),
        r.get(3),
        r.get(4),
    ))
}

/// The group commit of ingest on SQLite: key records and events in one transaction.
pub(crate) async fn insert_keyed_events(
    store: &SqliteStore,
    batch: &[KeyedEvents],
    now_ms: i64,
) -> Result<Vec<IdemBegin>> {
    let mut tx = store.writer.begin().await?;
    let mut outcomes: Vec<IdemBegin> = batch.iter().map(|_| IdemBegin::New).collect();
    let keys: Vec<&EventKey> = batch.iter().filter_map(|b| b.key.as_ref()).collect();
    if !keys.is_empty() {
        let mut claimed = claim_keys(&mut tx, &keys, now_ms).await?;
        for (item, outcome) in batch.iter().zip(outcomes.iter_mut()) {
            let Some(k) = &item.key else { continue };
            let s = &k.scope;
            let scope = (
                s.owner_id.clone(),
                s.method.clone(),
                s.route.clone(),
                s.key.clone(),
            );
            // The first request of the batch with a key owns the claim; a repeat of the key
            // later in the batch sees the first one's record.
            if !claimed.remove(&scope) {
                *outcome = existing_key(&mut tx, k, now_ms).await?;
            }
        }
    }
    let rows: Vec<&EventRow> = batch
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| matches!(o, IdemBegin::New))
        .flat_map(|(b, _)| &b.rows)
        .collect();
    insert_rows(&mut tx, &rows).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// Events in slice order; `routed_at` is set for events the ingest found nothing to route.
async fn insert_rows(tx: &mut Transaction<'_, Sqlite>, rows: &[&EventRow]) -> Result<()> {
    // 8 binds per row; SQLite allows 32766 variables per statement.
    for chunk in rows.chunks(1000) {
        let mut qb = QueryBuilder::<Sqlite>::new(
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
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn insert_events(&self, events: &[EventRow]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        insert_rows(&mut tx, &events.iter().collect::<Vec<_>>()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn unrouted_events(&self, limit: i64) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM events WHERE routed_at IS NULL ORDER BY seq LIMIT ?"
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
