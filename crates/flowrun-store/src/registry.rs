//! The in-memory copy of every owner's definitions, written through to the store.
//!
//! Reads (every API read, every event routed) never touch the database. Writes are
//! serialised by one async lock so that "check references, then write" is atomic: a flow
//! cannot be created against a trigger that is being deleted, and capacity checks hold.
//! A write reaches the cache only after the store committed it.
//!
//! With several nodes on one database, each node's writes are announced (PostgreSQL
//! `NOTIFY`) and the other nodes [`reload`](Registry::reload) the named document from the
//! store, or [`reload_all`](Registry::reload_all) after a missed notification. The write lock
//! is per node: see `docs/ARCHITECTURE.md` for what that does and does not guarantee.
//!
//! One runtime field is written behind: a flow's `lastTriggeredAt`, when an enqueue changes
//! nothing else of the flow, goes to memory with the enqueue and to the store at the next
//! [`flush_behind`](Registry::flush_behind). Rewriting the flow document in every enqueue
//! would make every firing of a flow write (and, with several nodes, lock and announce) the
//! same row; the runs themselves are never written behind.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use flowrun_core::model::{Action, Device, FlowRecord, Trigger};
use flowrun_core::time::Ts;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::{DocKind, DocWrite, Result, Store, StoreError};

/// Every definition, by id.
#[derive(Default)]
pub struct Defs {
    pub triggers: HashMap<Uuid, Arc<Trigger>>,
    pub actions: HashMap<Uuid, Arc<Action>>,
    pub flows: HashMap<Uuid, Arc<FlowRecord>>,
    pub devices: HashMap<Uuid, Arc<Device>>,
    /// Flow ids by the trigger they are bound to (archived flows included), so routing a
    /// firing never scans every flow.
    flows_by_trigger: HashMap<Uuid, std::collections::BTreeSet<Uuid>>,
    /// Event trigger ids by event type, so routing an event never scans every trigger.
    triggers_by_event_type: HashMap<String, std::collections::BTreeSet<Uuid>>,
    /// Non-archived flows per owner and agent bucket, so a capacity check on every create
    /// never scans every flow.
    live_counts: HashMap<String, HashMap<Option<Uuid>, usize>>,
}

impl Defs {
    /// A trigger of this owner.
    pub fn trigger(&self, owner: &str, id: Uuid) -> Option<&Arc<Trigger>> {
        self.triggers.get(&id).filter(|t| t.owner_id == owner)
    }

    pub fn action(&self, owner: &str, id: Uuid) -> Option<&Arc<Action>> {
        self.actions.get(&id).filter(|a| a.owner_id == owner)
    }

    /// A flow of this owner, archived ones included.
    pub fn flow_any(&self, owner: &str, id: Uuid) -> Option<&Arc<FlowRecord>> {
        self.flows.get(&id).filter(|f| f.flow.owner_id == owner)
    }

    /// A non-archived flow of this owner.
    pub fn flow(&self, owner: &str, id: Uuid) -> Option<&Arc<FlowRecord>> {
        self.flow_any(owner, id).filter(|f| !f.flow.is_archived())
    }

    pub fn device(&self, owner: &str, id: Uuid) -> Option<&Arc<Device>> {
        self.devices.get(&id).filter(|d| d.owner_id == owner)
    }

    /// Non-archived flows of this owner bound to this trigger.
    pub fn flows_of_trigger<'a>(
        &'a self,
        owner: &'a str,
        trigger_id: Uuid,
    ) -> impl Iterator<Item = &'a Arc<FlowRecord>> {
        self.flows_by_trigger
            .get(&trigger_id)
            .into_iter()
            .flatten()
            .filter_map(move |id| self.flow(owner, *id))
    }

    /// Event triggers of this owner listening to this event type.
    pub fn event_triggers<'a>(
        &'a self,
        owner: &'a str,
        event_type: &str,
    ) -> impl Iterator<Item = &'a Arc<Trigger>> {
        self.triggers_by_event_type
            .get(event_type)
            .into_iter()
            .flatten()
            .filter_map(move |id| self.trigger(owner, *id))
            .filter(move |t| t.activation == "event")
    }

    fn put_trigger(&mut self, t: Trigger) {
        self.delete_trigger(t.id);
        if let Some(ty) = &t.event_type {
            self.triggers_by_event_type
                .entry(ty.clone())
                .or_default()
                .insert(t.id);
        }
        self.triggers.insert(t.id, Arc::new(t));
    }

    fn delete_trigger(&mut self, id: Uuid) {
        if let Some(old) = self.triggers.remove(&id)
            && let Some(ty) = &old.event_type
            && let Some(set) = self.triggers_by_event_type.get_mut(ty)
        {
            set.remove(&id);
        }
    }

    /// Non-archived flows of this owner in this agent bucket (`None` = unassigned).
    pub fn live_flow_count(&self, owner: &str, agent: Option<Uuid>) -> usize {
        self.live_counts
            .get(owner)
            .and_then(|by_agent| by_agent.get(&agent))
            .copied()
            .unwrap_or(0)
    }

    fn put_flow(&mut self, f: FlowRecord) {
        let live = |r: &FlowRecord| !r.flow.is_archived();
        let old = self.flows.get(&f.flow.id).cloned();
        if let Some(old) = &old
            && old.flow.trigger_id != f.flow.trigger_id
            && let Some(set) = self.flows_by_trigger.get_mut(&old.flow.trigger_id)
        {
            set.remove(&f.flow.id);
        }
        // Most writes (edits, every enqueue's gate state) leave the flow in its bucket.
        let same_bucket = old.as_ref().is_some_and(|old| {
            live(old) == live(&f)
                && old.flow.owner_id == f.flow.owner_id
                && old.flow.agent_id == f.flow.agent_id
        });
        if !same_bucket {
            if let Some(old) = old.as_ref().filter(|old| live(old)) {
                self.uncount_live(&old.flow.owner_id, old.flow.agent_id);
            }
            if live(&f) {
                *self
                    .live_counts
                    .entry(f.flow.owner_id.clone())
                    .or_default()
                    .entry(f.flow.agent_id)
                    .or_default() += 1;
            }
        }
        self.flows_by_trigger
            .entry(f.flow.trigger_id)
            .or_default()
            .insert(f.flow.id);
        self.flows.insert(f.flow.id, Arc::new(f));
    }

    fn uncount_live(&mut self, owner: &str, agent: Option<Uuid>) {
        let Some(by_agent) = self.live_counts.get_mut(owner) else {
            return;
        };
        if let Some(n) = by_agent.get_mut(&agent) {
            *n -= 1;
            if *n == 0 {
                by_agent.remove(&agent);
            }
        }
        if by_agent.is_empty() {
            self.live_counts.remove(owner);
        }
    }

    /// Non-archived flows of this owner.
    pub fn live_flows<'a>(&'a self, owner: &'a str) -> impl Iterator<Item = &'a Arc<FlowRecord>> {
        self.flows
            .values()
            .filter(move |f| f.flow.owner_id == owner && !f.flow.is_archived())
    }
}

/// One change to apply atomically with others.
#[derive(Clone, Debug)]
pub enum Change {
    PutTrigger(Trigger),
    DeleteTrigger(Uuid),
    PutAction(Action),
    DeleteAction(Uuid),
    PutFlow(FlowRecord),
    PutDevice(Device),
    DeleteDevice(Uuid),
}

pub struct Registry {
    store: Arc<dyn Store>,
    defs: RwLock<Defs>,
    writes: tokio::sync::Mutex<()>,
    /// Callers waiting for `writes` (see [`Registry::writers_waiting`]).
    waiting: std::sync::atomic::AtomicUsize,
    /// Flows whose `lastTriggeredAt` is newer in memory than in the store: owner and the
    /// value to write.
    behind: std::sync::Mutex<HashMap<Uuid, (String, Ts)>>,
}

impl Registry {
    /// Loads every definition from the store.
    pub async fn load(store: Arc<dyn Store>) -> Result<Self> {
        let defs = load_defs(&*store).await?;
        Ok(Self {
            store,
            defs: RwLock::new(defs),
            writes: tokio::sync::Mutex::new(()),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            behind: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Re-reads one document another node wrote (or deleted) into memory. Serialised with
    /// this node's writes, so a reload never puts back an older copy over a newer local one.
    pub async fn reload(&self, kind: DocKind, id: &str) -> Result<()> {
        let _guard = self.writes.lock().await;
        let Ok(uuid) = Uuid::parse_str(id) else {
            return Ok(());
        };
        let doc = self.store.load_doc(kind, id).await?;
        let parse_err = |source| StoreError::Corrupt {
            kind: kind.as_str().to_string(),
            id: id.to_string(),
            source,
        };
        let mut defs = self.defs.write().unwrap_or_else(|e| e.into_inner());
        match (kind, doc) {
            (DocKind::Trigger, Some(d)) => {
                defs.put_trigger(serde_json::from_str(&d.json).map_err(parse_err)?)
            }
            (DocKind::Trigger, None) => defs.delete_trigger(uuid),
            (DocKind::Action, Some(d)) => {
                let a: Action = serde_json::from_str(&d.json).map_err(parse_err)?;
                defs.actions.insert(a.id, Arc::new(a));
            }
            (DocKind::Action, None) => {
                defs.actions.remove(&uuid);
            }
            (DocKind::Flow, Some(d)) => {
                let mut flow: FlowRecord = serde_json::from_str(&d.json).map_err(parse_err)?;
                // A value of ours not stored yet is not undone by another node's write.
                if let Some((_, at)) = self.behind_of(uuid) {
                    flow.flow.last_triggered_at = flow.flow.last_triggered_at.max(Some(at));
                }
                defs.put_flow(flow)
            }
            // Flows are archived, never deleted.
            (DocKind::Flow, None) => {}
            (DocKind::Device, Some(d)) => {
                let dev: Device = serde_json::from_str(&d.json).map_err(parse_err)?;
                defs.devices.insert(dev.id, Arc::new(dev));
            }
            (DocKind::Device, None) => {
                defs.devices.remove(&uuid);
            }
        }
        Ok(())
    }

    /// Re-reads every document (notifications may have been missed).
    pub async fn reload_all(&self) -> Result<()> {
        let _guard = self.writes.lock().await;
        let defs = load_defs(&*self.store).await?;
        *self.defs.write().unwrap_or_else(|e| e.into_inner()) = defs;
        Ok(())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A consistent view for reading. Do not hold it across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, Defs> {
        self.defs.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Serialises writers: hold the guard from the first check to the last [`apply`](Self::apply).
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        /// Counts the caller as waiting until it holds the lock or gives up.
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        self.writes.lock().await
    }

    /// Whether someone waits for [`lock`](Self::lock): a holder that keeps the lock across
    /// several writes (the enqueue, under load) lets it go when this says so.
    pub fn writers_waiting(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// Commits the changes to the store in one transaction, then to memory.
    pub async fn apply(&self, changes: Vec<Change>) -> Result<()> {
        self.apply_with_executions(changes, &[], &[], 0).await
    }

    /// Commits the changes and new execution rows in one transaction, then the changes to
    /// memory (enqueue: rows plus the flows' new gate state and `lastTriggeredAt`).
    pub async fn apply_with_executions(
        &self,
        changes: Vec<Change>,
        rows: &[crate::ExecutionRow],
        routed_events: &[String],
        now_ms: i64,
    ) -> Result<()> {
        self.apply_enqueue(
            changes,
            Vec::new(),
            rows.to_vec(),
            Vec::new(),
            routed_events,
            now_ms,
        )
        .await?
        .await
    }

    /// [`apply_with_executions`](Self::apply_with_executions), plus flows whose only change is
    /// `lastTriggeredAt`: they reach memory with the rest and the store later
    /// ([`flush_behind`](Self::flush_behind)). Returns once committed, with the future of
    /// durability (see [`ExecutionStore::insert_executions_committed`](crate::ExecutionStore::insert_executions_committed)).
    pub async fn apply_enqueue(
        &self,
        changes: Vec<Change>,
        last_triggered: Vec<FlowRecord>,
        rows: Vec<crate::ExecutionRow>,
        deliveries: Vec<crate::DeliveryRow>,
        routed_events: &[String],
        now_ms: i64,
    ) -> Result<crate::Durable> {
        let mut writes = Vec::with_capacity(changes.len());
        for c in &changes {
            writes.push(match c {
                Change::PutTrigger(t) => put(DocKind::Trigger, t.id, &t.owner_id, t)?,
                Change::PutAction(a) => put(DocKind::Action, a.id, &a.owner_id, a)?,
                Change::PutFlow(f) => put(DocKind::Flow, f.flow.id, &f.flow.owner_id, f)?,
                Change::PutDevice(d) => put(DocKind::Device, d.id, &d.owner_id, d)?,
                Change::DeleteTrigger(id) => del(DocKind::Trigger, *id),
                Change::DeleteAction(id) => del(DocKind::Action, *id),
                Change::DeleteDevice(id) => del(DocKind::Device, *id),
            });
        }
        let durable: crate::Durable = if rows.is_empty() && routed_events.is_empty() {
            self.store.write_docs(&writes).await?;
            Box::pin(std::future::ready(Ok(())))
        } else {
            self.store
                .insert_executions_committed(rows, deliveries, &writes, routed_events, now_ms)
                .await?
        };
        let mut defs = self.defs.write().unwrap_or_else(|e| e.into_inner());
        for c in changes {
            match c {
                Change::PutTrigger(t) => defs.put_trigger(t),
                Change::PutAction(a) => {
                    defs.actions.insert(a.id, Arc::new(a));
                }
                Change::PutFlow(f) => defs.put_flow(f),
                Change::PutDevice(d) => {
                    defs.devices.insert(d.id, Arc::new(d));
                }
                Change::DeleteTrigger(id) => defs.delete_trigger(id),
                Change::DeleteAction(id) => {
                    defs.actions.remove(&id);
                }
                Change::DeleteDevice(id) => {
                    defs.devices.remove(&id);
                }
            }
        }
        if !last_triggered.is_empty() {
            let mut behind = self.behind.lock().unwrap_or_else(|e| e.into_inner());
            for f in last_triggered {
                if let Some(at) = f.flow.last_triggered_at {
                    let entry = behind
                        .entry(f.flow.id)
                        .or_insert_with(|| (f.flow.owner_id.clone(), at));
                    entry.1 = entry.1.max(at);
                }
                // Enqueues may commit out of order (see `flowrun-engine::enqueue`): an
                // older batch's copy of the flow never replaces a newer one's.
                let newer = defs
                    .flow_any(&f.flow.owner_id, f.flow.id)
                    .is_some_and(|cur| cur.flow.last_triggered_at > f.flow.last_triggered_at);
                if !newer {
                    defs.put_flow(f);
                }
            }
        }
        Ok(durable)
    }

    fn behind_of(&self, id: Uuid) -> Option<(String, Ts)> {
        let behind = self.behind.lock().unwrap_or_else(|e| e.into_inner());
        behind.get(&id).cloned()
    }

    /// Writes the `lastTriggeredAt` values held in memory only; returns how many flows it
    /// wrote. On PostgreSQL the write merges into the stored document (the later value wins,
    /// another node's edits stay), like an enqueue's.
    pub async fn flush_behind(&self) -> Result<usize> {
        let _guard = self.writes.lock().await;
        let dirty = std::mem::take(&mut *self.behind.lock().unwrap_or_else(|e| e.into_inner()));
        if dirty.is_empty() {
            return Ok(0);
        }
        let flows: Vec<FlowRecord> = {
            let defs = self.read();
            dirty
                .iter()
                .filter_map(|(id, (_, at))| {
                    let mut f = (**defs.flows.get(id)?).clone();
                    f.flow.last_triggered_at = f.flow.last_triggered_at.max(Some(*at));
                    Some(f)
                })
                .collect()
        };
        let written = flows
            .iter()
            .map(|f| put(DocKind::Flow, f.flow.id, &f.flow.owner_id, f))
            .collect::<Result<Vec<_>>>()?;
        let now_ms = Ts::now().millis();
        if let Err(e) = self
            .store
            .insert_executions_routed(&[], &[], &written, &[], now_ms)
            .await
        {
            // Kept for the next flush (merged with what came meanwhile).
            let mut behind = self.behind.lock().unwrap_or_else(|e| e.into_inner());
            for (id, (owner, at)) in dirty {
                let entry = behind.entry(id).or_insert_with(|| (owner, at));
                entry.1 = entry.1.max(at);
            }
            return Err(e);
        }
        Ok(flows.len())
    }
}

/// Every definition in the store.
async fn load_defs(store: &dyn Store) -> Result<Defs> {
    let mut defs = Defs {
        triggers: HashMap::new(),
        actions: load_kind(store, DocKind::Action, |a: &Action| a.id).await?,
        flows: HashMap::new(),
        devices: load_kind(store, DocKind::Device, |d: &Device| d.id).await?,
        flows_by_trigger: HashMap::new(),
        triggers_by_event_type: HashMap::new(),
        live_counts: HashMap::new(),
    };
    let triggers = load_kind(store, DocKind::Trigger, |t: &Trigger| t.id).await?;
    for (_, t) in triggers {
        defs.put_trigger(Arc::unwrap_or_clone(t));
    }
    let flows = load_kind(store, DocKind::Flow, |f: &FlowRecord| f.flow.id).await?;
    for (_, f) in flows {
        defs.put_flow(Arc::unwrap_or_clone(f));
    }
    Ok(defs)
}

fn put<T: Serialize>(kind: DocKind, id: Uuid, owner: &str, v: &T) -> Result<DocWrite> {
    let json = serde_json::to_string(v).map_err(|source| StoreError::Corrupt {
        kind: kind.as_str().to_string(),
        id: id.to_string(),
        source,
    })?;
    Ok(DocWrite {
        kind,
        id: id.to_string(),
        owner_id: owner.to_string(),
        json: Some(json),
    })
}

fn del(kind: DocKind, id: Uuid) -> DocWrite {
    DocWrite {
        kind,
        id: id.to_string(),
        owner_id: String::new(),
        json: None,
    }
}

async fn load_kind<T: DeserializeOwned>(
    store: &dyn Store,
    kind: DocKind,
    id_of: impl Fn(&T) -> Uuid,
) -> Result<HashMap<Uuid, Arc<T>>> {
    let docs = store.load_docs(kind).await?;
    let mut out = HashMap::with_capacity(docs.len());
    for d in docs {
        let v: T = serde_json::from_str(&d.json).map_err(|source| StoreError::Corrupt {
            kind: kind.as_str().to_string(),
            id: d.id.clone(),
            source,
        })?;
        out.insert(id_of(&v), Arc::new(v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(id: u128, owner: &str, agent: Option<Uuid>, lifecycle: &str) -> FlowRecord {
        serde_json::from_value(serde_json::json!({
            "flow": {
                "id": Uuid::from_u128(id), "name": "f", "description": null,
                "triggerId": Uuid::from_u128(1000), "deviceIds": [], "agentId": agent,
                "lifecycleStatus": lifecycle, "enabled": lifecycle == "enabled",
                "archivedAt": null, "status": "healthy", "consecutiveFailures": 0,
                "lastFailureAt": null, "lastFailureCode": null, "blockedAt": null,
                "lastTriggeredAt": null, "healthMonitoringEnabled": true,
                "selfHealingEnabled": false, "selfHealingMaxAttempts": 3,
                "cooldownSeconds": null, "cooldownScope": "flow", "notifyOnSuccess": false,
                "notifyOnFailure": false, "notifyWebhookId": null,
                "recordingPolicy": {"mode": "off"}, "recordingEnabled": false,
                "delivery": null, "templateResolutionVersion": 3, "ownerId": owner,
                "createdBy": null, "userId": owner,
                "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-01T00:00:00.000Z"
            },
            "nodes": []
        }))
        .expect("flow record")
    }

    #[test]
    fn live_flow_counts_follow_archiving_and_agent_changes() {
        let agent = Some(Uuid::from_u128(7));
        let mut defs = Defs::default();
        defs.put_flow(flow(1, "a", None, "enabled"));
        defs.put_flow(flow(2, "a", None, "disabled"));
        defs.put_flow(flow(3, "b", None, "enabled"));
        defs.put_flow(flow(4, "a", agent, "enabled"));
        assert_eq!(defs.live_flow_count("a", None), 2);
        assert_eq!(defs.live_flow_count("a", agent), 1);
        assert_eq!(defs.live_flow_count("b", None), 1);

        // Writing the same flow again counts it once.
        defs.put_flow(flow(1, "a", None, "enabled"));
        assert_eq!(defs.live_flow_count("a", None), 2);

        defs.put_flow(flow(2, "a", None, "archived"));
        assert_eq!(defs.live_flow_count("a", None), 1);
        // An archived flow stays archived; rewriting it does not count it again.
        defs.put_flow(flow(2, "a", None, "archived"));
        assert_eq!(defs.live_flow_count("a", None), 1);

        // A flow moved to another bucket leaves the old one.
        defs.put_flow(flow(4, "a", None, "enabled"));
        assert_eq!(defs.live_flow_count("a", agent), 0);
        assert_eq!(defs.live_flow_count("a", None), 2);

        for id in [1, 3, 4] {
            let owner = if id == 3 { "b" } else { "a" };
            defs.put_flow(flow(id, owner, None, "archived"));
        }
        assert_eq!(defs.live_flow_count("a", None), 0);
        assert_eq!(defs.live_flow_count("b", None), 0);
        assert!(defs.live_counts.is_empty());
        let counted = |owner: &str| defs.live_flows(owner).count();
        assert_eq!((counted("a"), counted("b")), (0, 0));
    }
}
