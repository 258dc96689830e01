//! Event ingest and routing (§5.4).
//!
//! - Ingest: requests queue their events to one writer task that stores whatever is queued in
//!   one transaction (group commit), then answers every request of the batch. A 202 is only
//!   sent once the event is on disk, and throughput does not collapse to one fsync per event.
//!   An `Idempotency-Key` record is written in the same transaction. An event for which the
//!   owner has no event trigger of its type is stored already routed: it causes nothing, and
//!   the router does not have to read it back.
//! - Routing: one task reads unrouted events in arrival order, matches the owner's event
//!   triggers by exact `eventType` (an index, not a scan), evaluates their conditions and hands
//!   the firings to the enqueuer together with the event ids, which are marked routed in the
//!   same transaction as the rows they caused: every event is routed exactly once.

use std::sync::Arc;
use std::time::Duration;

use flowrun_core::{Ts, appevents, conditions, new_id};
use flowrun_store::{EventKey, EventRow, IdemBegin, IdemScope, KeyedEvents, StoredResponse};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::enqueue::{EnqueueRequest, EventInfo, Firing, Origin};
use crate::{EngineError, Shared};

/// An accepted event, before it is stored.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub owner_id: String,
    pub actor_id: Option<String>,
    pub event_type: String,
    pub device_id: Option<Uuid>,
    pub payload: Map<String, Value>,
}

/// The `Idempotency-Key` of an ingest request (§1.9), recorded with the event.
#[derive(Clone, Debug)]
pub struct IngestKey {
    pub scope: IdemScope,
    pub fingerprint: String,
    /// The reply stored for replays, built from the new event's id.
    pub reply: fn(&str) -> StoredResponse,
}

/// What became of an ingested event.
#[derive(Debug)]
pub enum Ingested {
    /// Stored durably under this id.
    Stored(String),
    /// Not stored: the request's key was already recorded (replay, reuse or in progress).
    KeyTaken(IdemBegin),
}

pub(crate) type IngestRequest = (KeyedEvents, oneshot::Sender<Result<IdemBegin, EngineError>>);

/// The stored rows of an event: itself, plus the WhatsApp event it may derive.
pub(crate) fn rows_of(ev: NewEvent) -> (String, Vec<EventRow>) {
    let now = Ts::now().millis();
    let id = new_id().to_string();
    let derived = appevents::derive_whatsapp(&ev.event_type, &ev.payload);
    let row = |id: String, event_type: String, payload: String| EventRow {
        seq: 0,
        id,
        owner_id: ev.owner_id.clone(),
        event_type,
        device_id: ev.device_id.map(|d| d.to_string()),
        payload,
        received_at: now,
        actor_id: ev.actor_id.clone(),
        routed_at: None,
    };
    // Serialised from the map itself: no copy of the payload.
    let payload = serde_json::to_string(&ev.payload).unwrap_or_else(|_| "{}".to_string());
    let mut rows = vec![row(id.clone(), ev.event_type.clone(), payload)];
    if let Some(p) = derived {
        rows.push(row(
            new_id().to_string(),
            "app.whatsapp.message_received".to_string(),
            p.to_string(),
        ));
    }
    (id, rows)
}

/// The group-commit entry of one request: its rows, marked routed when the owner has no event
/// trigger of their type, and its key record.
pub(crate) fn keyed_events(
    registry: &flowrun_store::Registry,
    event: NewEvent,
    key: Option<IngestKey>,
) -> (String, KeyedEvents) {
    let (id, mut rows) = rows_of(event);
    {
        let defs = registry.read();
        for row in &mut rows {
            if defs
                .event_triggers(&row.owner_id, &row.event_type)
                .next()
                .is_none()
            {
                row.routed_at = Some(row.received_at);
            }
        }
    }
    let key = key.map(|k| EventKey {
        reply: k.reply,
        scope: k.scope,
        fingerprint: k.fingerprint,
    });
    (id, KeyedEvents { rows, key })
}

/// Stores queued events in batches.
pub(crate) async fn run_ingest_writer(shared: Arc<Shared>, mut rx: mpsc::Receiver<IngestRequest>) {
    let mut batch: Vec<KeyedEvents> = Vec::new();
    let mut replies = Vec::new();
    while let Some((first, reply)) = rx.recv().await {
        batch.push(first);
        replies.push(reply);
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok((more, reply)) => {
                    batch.push(more);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let result = shared
            .store
            .insert_keyed_events(&batch, Ts::now().millis())
            .await;
        match result {
            Ok(outcomes) => {
                let to_route = batch.iter().zip(&outcomes).any(|(b, o)| {
                    matches!(o, IdemBegin::New) && b.rows.iter().any(|r| r.routed_at.is_none())
                });
                if to_route {
                    shared.route_wake.notify_one();
                }
                for (r, outcome) in replies.drain(..).zip(outcomes) {
                    let _ = r.send(Ok(outcome));
                }
            }
            Err(e) => {
                let e = EngineError::from(e);
                tracing::error!(error = %e, "storing events failed");
                for r in replies.drain(..) {
                    let _ = r.send(Err(e.clone()));
                }
            }
        }
        batch.clear();
    }
}

/// Routes stored events to firings, oldest first.
pub(crate) async fn run_router(shared: Arc<Shared>, firings: mpsc::Sender<EnqueueRequest>) {
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        if !shared.config.exclusive_store && !holds_routing_lease(&shared).await {
            tokio::select! {
                _ = shared.route_wake.notified() => {}
                _ = tokio::time::sleep(shared.config.poll_interval) => {}
                _ = shared.shutdown.cancelled() => return,
            }
            continue;
        }
        let batch = match shared.store.unrouted_events(1024).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "reading events to route failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = shared.route_wake.notified() => {}
                _ = tokio::time::sleep(shared.config.poll_interval) => {}
                _ = shared.shutdown.cancelled() => return,
            }
            continue;
        }
        let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        let group = {
            let defs = shared.registry.read();
            let mut group = Vec::new();
            for ev in &batch {
                firings_for(&defs, ev, &mut group);
            }
            group
        };
        if let Err(e) = crate::submit_group(&firings, group, ids).await {
            tracing::error!(error = %e, "routing events failed; retrying");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// With several nodes, one routes at a time (arrival order holds across nodes); the holder
/// renews the lease every round, and another node takes over once a stopped holder's lease
/// expires. Should two ever overlap, the routed marks are checked at commit: the second
/// transaction finds the events routed and rolls back.
async fn holds_routing_lease(shared: &Shared) -> bool {
    const ROUTING_LEASE_MS: i64 = 2_000;
    let now = Ts::now().millis();
    match shared
        .store
        .take_routing_lease(&shared.node_id, now, now + ROUTING_LEASE_MS)
        .await
    {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!(error = %e, "taking the routing lease failed");
            false
        }
    }
}

/// The firings an event causes: one per event trigger of its type whose conditions pass.
fn firings_for(defs: &flowrun_store::Defs, ev: &EventRow, out: &mut Vec<Firing>) {
    let payload: Value = serde_json::from_str(&ev.payload).unwrap_or_else(|_| json!({}));
    let received_at = Ts::from_millis(ev.received_at).unwrap_or_else(Ts::now);
    let event_obj = json!({
        "eventType": ev.event_type,
        "deviceId": ev.device_id,
        "payload": payload,
        "receivedAt": received_at,
    });
    let device_id = ev
        .device_id
        .as_deref()
        .and_then(|d| Uuid::parse_str(d).ok());
    for trigger in defs.event_triggers(&ev.owner_id, &ev.event_type) {
        let passes = trigger
            .conditions
            .as_ref()
            .is_none_or(|c| conditions::evaluate_event(c, &event_obj));
        if !passes {
            continue;
        }
        out.push(Firing {
            owner_id: ev.owner_id.clone(),
            actor_id: ev.actor_id.clone(),
            origin: Origin::Event,
            trigger_id: trigger.id,
            only_flow: None,
            payload: payload.clone(),
            invocation_id: None,
            dedupe_invocation: false,
            event: Some(EventInfo {
                id: ev.id.clone(),
                event_type: ev.event_type.clone(),
                device_id,
                received_at,
            }),
            schedule: Value::Null,
            verify_device: None,
            capture_screenshots: false,
            received_at: None,
            suppressed: None,
        });
    }
}
