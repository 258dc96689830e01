//! Cross-node signals on PostgreSQL: `NOTIFY` inside the writing transaction (delivered only
//! if it commits), one `LISTEN` connection per node turning notifications into [`Signal`]s.
//!
//! One channel per purpose. Wake-up channels carry no payload, so PostgreSQL folds every
//! identical notification of a transaction into one: a batch of 500 new rows sends one
//! `NOTIFY`, never one per row. Definition notifications name the document
//! (`origin kind id`); a node ignores its own (its registry applied the write already).

use std::time::Duration;

use sqlx::postgres::{PgConnection, PgListener, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{DocKind, Result, Signal};

/// A definition document changed (triggers, actions, flows, devices, webhook endpoints).
pub(crate) const DEFS: &str = "flowrun_defs";
/// New `pending` executions (or re-queued ones).
pub(crate) const QUEUE: &str = "flowrun_queue";
/// Events stored, to route.
pub(crate) const EVENTS: &str = "flowrun_events";
/// An execution was aborted; the payload is its id.
pub(crate) const ABORT: &str = "flowrun_abort";
/// A webhook delivery was queued.
pub(crate) const DELIVERIES: &str = "flowrun_deliveries";
/// A schedule row was (re)written or removed.
pub(crate) const SCHEDULES: &str = "flowrun_schedules";

/// Queues a notification in the caller's transaction (or sends it at once outside one).
pub(crate) async fn notify(conn: &mut PgConnection, channel: &str, payload: &str) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The payload naming one changed definition document.
pub(crate) fn def_payload(origin: &str, kind: &str, id: &str) -> String {
    format!("{origin} {kind} {id}")
}

fn parse_def(payload: &str, own_origin: &str) -> Option<Signal> {
    let mut parts = payload.splitn(3, ' ');
    let (origin, kind, id) = (parts.next()?, parts.next()?, parts.next()?);
    if origin == own_origin {
        return None;
    }
    let kind = match kind {
        "trigger" => DocKind::Trigger,
        "action" => DocKind::Action,
        "flow" => DocKind::Flow,
        "device" => DocKind::Device,
        "endpoint" => return Some(Signal::Endpoint { id: id.to_string() }),
        _ => return None,
    };
    Some(Signal::Definition {
        kind,
        id: id.to_string(),
    })
}

fn parse(channel: &str, payload: &str, own_origin: &str) -> Option<Signal> {
    match channel {
        DEFS => parse_def(payload, own_origin),
        QUEUE => Some(Signal::Executions),
        EVENTS => Some(Signal::Events),
        ABORT => Uuid::parse_str(payload).ok().map(Signal::Abort),
        DELIVERIES => Some(Signal::Deliveries),
        SCHEDULES => Some(Signal::Schedules),
        _ => None,
    }
}

/// Starts the listening task. After the connection was lost and re-established it sends
/// [`Signal::Resync`]: notifications of the gap are gone, so the receiver reloads.
pub(crate) async fn listen(pool: &PgPool, origin: String) -> Result<mpsc::Receiver<Signal>> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([DEFS, QUEUE, EVENTS, ABORT, DELIVERIES, SCHEDULES])
        .await?;
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(async move {
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    if let Some(signal) = parse(n.channel(), n.payload(), &origin)
                        && tx.send(signal).await.is_err()
                    {
                        return;
                    }
                }
                // The connection dropped; the next call reconnects and listens again.
                Ok(None) => {
                    tracing::warn!("notification connection lost; reconnecting");
                    if tx.send(Signal::Resync).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listening for notifications failed; retrying");
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_definition_changes_are_ignored_and_others_parsed() {
        assert!(parse(DEFS, "me flow 42", "me").is_none());
        match parse(DEFS, "other flow 42", "me") {
            Some(Signal::Definition { kind, id }) => {
                assert_eq!(kind, DocKind::Flow);
                assert_eq!(id, "42");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse(DEFS, "other endpoint 7", "me"),
            Some(Signal::Endpoint { .. })
        ));
        let id = Uuid::new_v4();
        assert!(matches!(parse(ABORT, &id.to_string(), "me"), Some(Signal::Abort(x)) if x == id));
        assert!(parse(ABORT, "junk", "me").is_none());
        assert!(matches!(parse(QUEUE, "", "me"), Some(Signal::Executions)));
    }
}
