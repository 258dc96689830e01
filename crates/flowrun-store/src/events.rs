//! Ingested events (§5.4): stored durably before the 202, then routed exactly once.
//!
//! `seq` is the arrival order the router follows. An event is marked routed in the same
//! transaction that inserts the executions it caused
//! ([`ExecutionStore::insert_executions_routed`](crate::ExecutionStore::insert_executions_routed)),
//! so after a crash an event either has its rows and is marked, or has neither and is
//! routed again.

use async_trait::async_trait;

use crate::{IdemScope, Result, StoredResponse};

/// One stored event.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    /// Arrival order (assigned by the store; ignored on insert).
    pub seq: i64,
    pub id: String,
    pub owner_id: String,
    pub event_type: String,
    pub device_id: Option<String>,
    /// JSON object.
    pub payload: String,
    pub received_at: i64,
    /// The actor whose key ingested it.
    pub actor_id: Option<String>,
    pub routed_at: Option<i64>,
}

/// An `Idempotency-Key` that rides with an ingested event (§1.9): its record is written,
/// already done with the 2xx reply, in the transaction that stores the event, so a keyed
/// ingest costs no extra commit.
#[derive(Clone, Debug)]
pub struct EventKey {
    pub scope: IdemScope,
    pub fingerprint: String,
    /// The reply of the request that stored the event of this id: what a retry with the
    /// same key replays.
    pub reply: fn(&str) -> StoredResponse,
}

/// One ingest request of a group commit: its rows (the event and any it derives) and its key.
#[derive(Clone, Debug)]
pub struct KeyedEvents {
    pub rows: Vec<EventRow>,
    pub key: Option<EventKey>,
}

#[async_trait]
pub trait EventStore: Send + Sync {
    /// Stores the events in one transaction, in slice order (`routed_at` as given: set for
    /// events the ingest found nothing to route).
    async fn insert_events(&self, events: &[EventRow]) -> Result<()>;

    /// Up to `limit` events not routed yet, in arrival order.
    async fn unrouted_events(&self, limit: i64) -> Result<Vec<EventRow>>;

    /// Takes or renews the routing lease until `until_ms`: with several nodes on one
    /// database one router at a time follows arrival order. `true` while `holder` has it
    /// (always, for a store only this process uses).
    async fn take_routing_lease(&self, holder: &str, now_ms: i64, until_ms: i64) -> Result<bool> {
        let _ = (holder, now_ms, until_ms);
        Ok(true)
    }

    /// How many events are waiting to be routed.
    async fn count_unrouted_events(&self) -> Result<i64>;
}
