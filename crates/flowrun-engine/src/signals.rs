//! What several nodes on one database tell each other.
//!
//! The store hears other nodes' commits (PostgreSQL `LISTEN`) and this task turns them into
//! the in-process wake-ups a single node already uses: reload a changed definition, wake the
//! dispatcher, the router, the scheduler or the webhook worker, cancel an aborted run held
//! here. Every one of those loops also polls, so a lost notification only costs latency.
//!
//! The lease watch is the fallback for aborts: every poll interval it asks the store which of
//! this node's running rows it no longer holds (aborted, or reaped after a lost lease) and
//! cancels their runs, whose fenced writes would change nothing anyway.

use std::sync::Arc;

use flowrun_store::Signal;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::Shared;
use crate::scheduler::Scheduler;

/// Applies signals until the engine shuts down.
pub(crate) async fn run_signals(
    shared: Arc<Shared>,
    schedules: Arc<Scheduler>,
    mut rx: mpsc::Receiver<Signal>,
) {
    loop {
        let signal = tokio::select! {
            s = rx.recv() => match s {
                Some(s) => s,
                None => return,
            },
            _ = shared.shutdown.cancelled() => return,
        };
        match signal {
            Signal::Definition { kind, id } => {
                if let Err(e) = shared.registry.reload(kind, &id).await {
                    tracing::warn!(error = %e, kind = kind.as_str(), %id, "reloading a definition failed");
                }
            }
            Signal::Endpoint { id } => {
                if let Ok(id) = Uuid::parse_str(&id)
                    && let Err(e) = crate::webhooks::refresh_endpoint(&*shared.store, id).await
                {
                    tracing::warn!(error = %e, "reloading a webhook endpoint failed");
                }
            }
            Signal::Executions => shared.rows_claimable(),
            Signal::Events => shared.route_wake.notify_one(),
            Signal::Abort(id) => shared.signal_abort(id),
            Signal::Deliveries => {
                if let Some(w) = shared.executor.webhooks() {
                    w.deliveries_due();
                }
            }
            Signal::Schedules => schedules.wake(),
            Signal::Resync => resync(&shared, &schedules).await,
        }
    }
}

/// Reloads what notifications may have missed and wakes every loop.
pub(crate) async fn resync(shared: &Shared, schedules: &Scheduler) {
    if let Err(e) = shared.registry.reload_all().await {
        tracing::warn!(error = %e, "reloading definitions failed");
    }
    if let Err(e) = crate::webhooks::refresh_all_endpoints(&*shared.store).await {
        tracing::warn!(error = %e, "reloading webhook endpoints failed");
    }
    shared.rows_claimable();
    shared.route_wake.notify_one();
    schedules.wake();
    if let Some(w) = shared.executor.webhooks() {
        w.deliveries_due();
    }
}

/// Cancels runs of this node whose row it no longer holds.
pub(crate) async fn run_lease_watch(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(shared.config.poll_interval) => {}
            _ = shared.shutdown.cancelled() => return,
        }
        let ids: Vec<Uuid> = shared.running().keys().copied().collect();
        if ids.is_empty() {
            continue;
        }
        match shared.store.lost_leases(&shared.node_id, &ids).await {
            Ok(lost) => {
                let running = shared.running();
                for id in lost {
                    if let Some(entry) = running.get(&id) {
                        entry.cancel.cancel();
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "checking leases failed"),
        }
    }
}
