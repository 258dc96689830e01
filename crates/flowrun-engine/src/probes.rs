//! Device probes (§3.11, §5.12): a background task asks each device's provider whether the
//! device is reachable — at registration, on an address change, after each device step and
//! every probe interval — and stores `online` / `offline` / `unknown` as the device's state.
//!
//! Nothing on a request or step path waits for a probe: callers only send the device id.
//! A device is probed by at most one probe at a time; a request arriving meanwhile runs one
//! more probe afterwards (its address may have changed). The state is written only when it
//! changed, so a steady fleet costs no writes.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use flowrun_actions::ProbeState;
use flowrun_store::Change;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::Shared;

/// Probes running at once.
const MAX_CONCURRENT: usize = 16;

pub(crate) async fn run_prober(shared: Arc<Shared>, mut requests: mpsc::UnboundedReceiver<Uuid>) {
    let mut tick = tokio::time::interval(shared.config.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running: JoinSet<Uuid> = JoinSet::new();
    let mut in_flight: HashSet<Uuid> = HashSet::new();
    let mut again: HashSet<Uuid> = HashSet::new();
    let mut queue = Queue::default();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = tick.tick() => {
                let ids: Vec<Uuid> = shared.registry.read().devices.keys().copied().collect();
                for id in ids {
                    request(id, &mut queue, &in_flight, &mut again);
                }
            }
            Some(id) = requests.recv() => request(id, &mut queue, &in_flight, &mut again),
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(id) = done {
                    in_flight.remove(&id);
                    if again.remove(&id) {
                        queue.push(id);
                    }
                }
            }
        }
        while running.len() < MAX_CONCURRENT {
            let Some(id) = queue.pop() else { break };
            if !in_flight.insert(id) {
                again.insert(id);
                continue;
            }
            let shared = shared.clone();
            running.spawn(async move {
                probe_one(&shared, id).await;
                id
            });
        }
    }
}

/// Devices waiting for a probe, in request order, each at most once.
#[derive(Default)]
struct Queue {
    order: VecDeque<Uuid>,
    members: HashSet<Uuid>,
}

impl Queue {
    fn push(&mut self, id: Uuid) {
        if self.members.insert(id) {
            self.order.push_back(id);
        }
    }

    fn pop(&mut self) -> Option<Uuid> {
        let id = self.order.pop_front()?;
        self.members.remove(&id);
        Some(id)
    }
}

fn request(id: Uuid, queue: &mut Queue, in_flight: &HashSet<Uuid>, again: &mut HashSet<Uuid>) {
    if in_flight.contains(&id) {
        again.insert(id);
    } else {
        queue.push(id);
    }
}

async fn probe_one(shared: &Shared, id: Uuid) {
    let Some((provider, address)) = shared
        .registry
        .read()
        .devices
        .get(&id)
        .map(|d| (d.provider.clone(), d.address.clone()))
    else {
        return;
    };
    let state = shared.executor.probe(&provider, &address).await;
    store_state(shared, id, &address, state).await;
}

/// Writes the probed state unless the device is gone, was re-addressed meanwhile (a newer
/// probe follows) or already has it.
async fn store_state(shared: &Shared, id: Uuid, probed_address: &str, state: ProbeState) {
    let _guard = shared.registry.lock().await;
    let Some(current) = shared.registry.read().devices.get(&id).cloned() else {
        return;
    };
    if current.address != probed_address || current.state == state.as_str() {
        return;
    }
    let mut device = (*current).clone();
    device.state = state.as_str().to_string();
    if let Err(e) = shared.registry.apply(vec![Change::PutDevice(device)]).await {
        tracing::warn!(device = %id, error = %e, "storing a device's probed state failed");
    }
}
