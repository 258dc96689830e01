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

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use flowrun_core::model::{Action, Device, FlowRecord, Trigger};
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

    fn put_flow(&mut self, f: FlowRecord) {
        if let Some(old) = self.flows.get(&f.flow.id)
            && old.flow.trigger_id != f.flow.trigger_id
            && let Some(set) = self.flows_by_trigger.get_mut(&old.flow.trigger_id)
        {
            set.remove(&f.flow.id);
        }
        self.flows_by_trigger
            .entry(f.flow.trigger_id)
            .or_default()
            .insert(f.flow.id);
        self.flows.insert(f.flow.id, Arc::new(f));
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
}

impl Registry {
    /// Loads every definition from the store.
    pub async fn load(store: Arc<dyn Store>) -> Result<Self> {
        let defs = load_defs(&*store).await?;
        Ok(Self {
            store,
            defs: RwLock::new(defs),
            writes: tokio::sync::Mutex::new(()),
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
                defs.put_flow(serde_json::from_str(&d.json).map_err(parse_err)?)
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
        self.writes.lock().await
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
        if rows.is_empty() && routed_events.is_empty() {
            self.store.write_docs(&writes).await?;
        } else {
            self.store
                .insert_executions_routed(rows, &writes, routed_events, now_ms)
                .await?;
        }
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
        Ok(())
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
