//! The events table on SQLite: see [`crate::events`].

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::sqlite::{Sqlite, SqliteRow};
use sqlx::{QueryBuilder, Row, Transaction};

use crate::events::{EventKey, EventRow, EventStore, KeyedEvents};
use crate::sqlite::SqliteStore;
use crate::{IDEMPOTENCY_TTL_MS, IdemBegin, Result};

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

/// The event already stored under a key (§1.9): the record its retries are decided by.
struct KeyRecord {
    event_id: String,
    fingerprint: String,
    received_at: i64,
    seq: i64,
}

/// The events of `keys` already stored, by (key, owner), in one indexed lookup.
async fn stored_keys(
    tx: &mut Transaction<'_, Sqlite>,
    keys: &[&EventKey],
) -> Result<HashMap<(String, String), KeyRecord>> {
    let list = serde_json::to_string(&keys.iter().map(|k| &k.scope.key).collect::<Vec<_>>())
        .expect("keys serialise");
    let rows = sqlx::query(
        "SELECT idem_key, owner_id, id, idem_fingerprint, received_at, seq FROM events \
         WHERE idem_key IS NOT NULL AND idem_key IN (SELECT value FROM json_each(?))",
    )
    .bind(list)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                KeyRecord {
                    event_id: r.get(2),
                    fingerprint: r.get(3),
                    received_at: r.get(4),
                    seq: r.get(5),
                },
            )
        })
        .collect())
}

/// A retry of a stored event: the same request replays its 202, another one is refused.
fn decide(record_id: &str, record_fp: &str, k: &EventKey) -> IdemBegin {
    if record_fp == k.fingerprint {
        IdemBegin::Replay((k.reply)(record_id))
    } else {
        IdemBegin::Mismatch
    }
}

/// The group commit of ingest on SQLite: each request's events with its key, in one
/// transaction. A key already on a stored event (within its lifetime), or repeated earlier in
/// the batch, decides the request instead; a key older than its lifetime is taken off its old
/// event and used again.
pub(crate) async fn insert_keyed_events(
    store: &SqliteStore,
    batch: &[KeyedEvents],
    now_ms: i64,
) -> Result<Vec<IdemBegin>> {
    let mut tx = store.writer.begin().await?;
    let mut outcomes: Vec<IdemBegin> = batch.iter().map(|_| IdemBegin::New).collect();
    let keys: Vec<&EventKey> = batch.iter().filter_map(|b| b.key.as_ref()).collect();
    if !keys.is_empty() {
        let stored = stored_keys(&mut tx, &keys).await?;
        let mut expired = Vec::new();
        // The record (event id, fingerprint) of each key of the batch: its stored event, or
        // the batch's first request with it, which owns the key.
        let mut records: HashMap<(&str, &str), (&str, &str)> = HashMap::new();
        for (item, outcome) in batch.iter().zip(outcomes.iter_mut()) {
            let (Some(k), Some(row)) = (&item.key, item.rows.first()) else {
                continue;
            };
            let scope = (k.scope.key.as_str(), k.scope.owner_id.as_str());
            if let Some((id, fp)) = records.get(&scope) {
                *outcome = decide(id, fp, k);
                continue;
            }
            let found = if stored.is_empty() {
                None
            } else {
                stored.get(&(k.scope.key.clone(), k.scope.owner_id.clone()))
            };
            match found {
                Some(old) if old.received_at >= now_ms - IDEMPOTENCY_TTL_MS => {
                    *outcome = decide(&old.event_id, &old.fingerprint, k);
                    records.insert(scope, (&old.event_id, &old.fingerprint));
                }
                found => {
                    expired.extend(found.map(|old| old.seq));
                    records.insert(scope, (&row.id, &k.fingerprint));
                }
            }
        }
        if !expired.is_empty() {
            let list = serde_json::to_string(&expired).expect("seqs serialise");
            sqlx::query(
                "UPDATE events SET idem_key = NULL, idem_fingerprint = NULL \
                 WHERE seq IN (SELECT value FROM json_each(?))",
            )
            .bind(list)
            .execute(&mut *tx)
            .await?;
        }
    }
    let rows: Vec<(&EventRow, Option<&EventKey>)> = batch
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| matches!(o, IdemBegin::New))
        .flat_map(|(b, _)| {
            b.rows
                .iter()
                .enumerate()
                .map(|(i, r)| (r, if i == 0 { b.key.as_ref() } else { None }))
        })
        .collect();
    insert_rows(&mut tx, &rows).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// Events in slice order, each with the key of the request that stored it; `routed_at` is
/// set for events the ingest found nothing to route.
async fn insert_rows(
    tx: &mut Transaction<'_, Sqlite>,
    rows: &[(&EventRow, Option<&EventKey>)],
) -> Result<()> {
    // 10 binds per row; SQLite allows 32766 variables per statement.
    for chunk in rows.chunks(1000) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (id, owner_id, event_type, device_id, payload, received_at, actor_id, routed_at, idem_key, idem_fingerprint) ",
        );
        qb.push_values(chunk, |mut b, (e, k)| {
            b.push_bind(&e.id)
                .push_bind(&e.owner_id)
                .push_bind(&e.event_type)
                .push_bind(&e.device_id)
                .push_bind(&e.payload)
                .push_bind(e.received_at)
                .push_bind(&e.actor_id)
                .push_bind(e.routed_at)
                .push_bind(k.map(|k| &k.scope.key))
                .push_bind(k.map(|k| &k.fingerprint));
        });
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn insert_events(&self, events: &[EventRow]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        insert_rows(
            &mut tx,
            &events.iter().map(|e| (e, None)).collect::<Vec<_>>(),
        )
        .await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IdemScope, Store, StoredResponse};

    fn reply(id: &str) -> StoredResponse {
        StoredResponse {
            status: 202,
            body: id.as_bytes().to_vec(),
            location: None,
        }
    }

    fn request(id: &str, owner: &str, key: &str, fingerprint: &str, at: i64) -> KeyedEvents {
        KeyedEvents {
            rows: vec![EventRow {
                seq: 0,
                id: id.into(),
                owner_id: owner.into(),
                event_type: "t".into(),
                device_id: None,
                payload: "{}".into(),
                received_at: at,
                actor_id: None,
                routed_at: Some(at),
            }],
            key: Some(EventKey {
                scope: IdemScope {
                    owner_id: owner.into(),
                    method: "POST".into(),
                    route: "/events/ingest".into(),
                    key: key.into(),
                },
                fingerprint: fingerprint.into(),
                reply,
            }),
        }
    }

    fn replay(id: &str) -> IdemBegin {
        IdemBegin::Replay(reply(id))
    }

    /// Keys on events: the first request of a key stores its event, retries replay it or are
    /// refused, owners have their own keys, and a key past its lifetime is used again.
    #[tokio::test]
    async fn an_ingest_key_is_decided_by_the_event_it_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        let first = store
            .insert_keyed_events(
                &[
                    request("e1", "o", "k", "fp", 1_000),
                    request("e2", "o", "k", "fp", 1_000),
                    request("e3", "o", "k", "other", 1_000),
                    request("e4", "p", "k", "fp", 1_000),
                ],
                1_000,
            )
            .await
            .unwrap();
        assert_eq!(
            first,
            vec![
                IdemBegin::New,
                replay("e1"),
                IdemBegin::Mismatch,
                IdemBegin::New
            ]
        );
        let again = store
            .insert_keyed_events(
                &[
                    request("e5", "o", "k", "fp", 2_000),
                    request("e6", "o", "k", "other", 2_000),
                ],
                2_000,
            )
            .await
            .unwrap();
        assert_eq!(again, vec![replay("e1"), IdemBegin::Mismatch]);
        let later = 1_000 + IDEMPOTENCY_TTL_MS + 1;
        let expired = store
            .insert_keyed_events(
                &[
                    request("e7", "o", "k", "other", later),
                    request("e8", "o", "k", "other", later),
                ],
                later,
            )
            .await
            .unwrap();
        assert_eq!(expired, vec![IdemBegin::New, replay("e7")]);
        let keyed: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT id, idem_key FROM events ORDER BY seq")
                .fetch_all(&store.reader)
                .await
                .unwrap();
        let keyed: Vec<(&str, Option<&str>)> = keyed
            .iter()
            .map(|(i, k)| (i.as_str(), k.as_deref()))
            .collect();
        assert_eq!(
            keyed,
            vec![("e1", None), ("e4", Some("k")), ("e7", Some("k"))]
        );
    }

    /// The group commit's lookup of its keys seeks the key index instead of scanning events.
    #[tokio::test]
    async fn stored_keys_are_looked_up_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
            "EXPLAIN QUERY PLAN SELECT idem_key, owner_id, id, idem_fingerprint, received_at, seq \
             FROM events WHERE idem_key IS NOT NULL AND idem_key IN (SELECT value FROM json_each(?))",
        )
        .bind("[\"k\"]")
        .fetch_all(&store.reader)
        .await
        .unwrap();
        let details: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
        assert!(
            details
                .iter()
                .any(|d| d.starts_with("SEARCH events USING INDEX events_idem_key")),
            "{details:?}"
        );
        assert!(
            !details.iter().any(|d| d.starts_with("SCAN events")),
            "{details:?}"
        );
    }
}
