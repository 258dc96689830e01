//! Two stores on one PostgreSQL database, as two nodes see it (runs only when
//! `FLOWRUN_TEST_DATABASE_URL` names a server; each test gets a fresh database, dropped at the
//! end): signals heard by the other node and not by the writer, one wake-up per transaction,
//! events routed once, the routing lease, and enqueue's flow writes keeping other nodes' edits.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flowrun_store::{
    AbortOutcome, DocKind, DocWrite, EventRow, ExecutionRow, Signal, Store, StoreError,
};
use serde_json::json;
use sqlx::Connection;
use tokio::sync::mpsc::Receiver;
use uuid::Uuid;

type Db = Arc<dyn Store>;

/// Runs `test` with two stores on one fresh PostgreSQL database; skipped without one.
async fn on_two_nodes<F, Fut>(test: F)
where
    F: FnOnce(Db, Db) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Ok(url) = std::env::var("FLOWRUN_TEST_DATABASE_URL") else {
        eprintln!("needs FLOWRUN_TEST_DATABASE_URL (PostgreSQL); skipped");
        return;
    };
    let name = format!("flowrun_mn_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let (prefix, _) = url.rsplit_once('/').unwrap();
    let db_url = format!("{prefix}/{name}");
    let a = flowrun_store::open(&db_url).await.unwrap();
    let b = flowrun_store::open(&db_url).await.unwrap();
    let outcome = tokio::spawn(test(a, b)).await.map_err(|e| e.into_panic());
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The signals that arrive within `window`.
async fn drain(rx: &mut Receiver<Signal>, window: Duration) -> Vec<Signal> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(s)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        out.push(s);
    }
    out
}

/// Waits (with a deadline) for the first signal matching `pred`.
async fn expect_signal(rx: &mut Receiver<Signal>, pred: impl Fn(&Signal) -> bool) -> Signal {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(s)) if pred(&s) => return s,
            Ok(Some(_)) => {}
            other => panic!("no matching signal: {other:?}"),
        }
    }
}

fn row(n: u128, status: &str) -> ExecutionRow {
    ExecutionRow {
        id: Uuid::from_u128(n),
        owner_id: "o".to_string(),
        flow_id: Uuid::from_u128(1_000),
        trigger_id: Uuid::from_u128(2_000),
        kind: "live".to_string(),
        status: status.to_string(),
        device_id: None,
        invocation_id: None,
        event_id: None,
        error: None,
        flow_name: None,
        trigger_name: None,
        created_by: None,
        enqueued_at: n as i64,
        started_at: None,
        finished_at: None,
        attempt: 0,
        lease_owner: None,
        lease_expires_at: None,
        graph_hash: None,
        snapshot: "{}".to_string(),
        state: "{}".to_string(),
        search_text: String::new(),
    }
}

fn event(id: &str) -> EventRow {
    EventRow {
        seq: 0,
        id: id.to_string(),
        owner_id: "o".to_string(),
        event_type: "t".to_string(),
        device_id: None,
        payload: "{}".to_string(),
        received_at: 1,
        actor_id: None,
        routed_at: None,
    }
}

fn doc(kind: DocKind, id: Uuid, json: serde_json::Value) -> DocWrite {
    DocWrite {
        kind,
        id: id.to_string(),
        owner_id: "o".to_string(),
        json: Some(json.to_string()),
    }
}

#[tokio::test]
async fn the_other_node_hears_each_commit_once_and_the_writer_not_its_own_definitions() {
    on_two_nodes(|a, b| async move {
        let mut heard_by_a = a.listen().await.unwrap().expect("postgres listens");
        let mut heard_by_b = b.listen().await.unwrap().expect("postgres listens");

        let id = Uuid::from_u128(7);
        a.write_docs(&[doc(DocKind::Action, id, json!({"id": id}))])
            .await
            .unwrap();
        let s = expect_signal(&mut heard_by_b, |s| matches!(s, Signal::Definition { .. })).await;
        assert_eq!(
            s,
            Signal::Definition {
                kind: DocKind::Action,
                id: id.to_string()
            }
        );
        assert_eq!(
            a.load_doc(DocKind::Action, &id.to_string())
                .await
                .unwrap()
                .map(|d| d.id),
            Some(id.to_string())
        );

        // 300 pending rows in one transaction: one wake-up, not one per row.
        let rows: Vec<ExecutionRow> = (1..=300).map(|n| row(n, "pending")).collect();
        a.insert_executions(&rows, &[]).await.unwrap();
        let heard = drain(&mut heard_by_b, Duration::from_millis(500)).await;
        assert_eq!(heard, vec![Signal::Executions]);
        let own = drain(&mut heard_by_a, Duration::from_millis(100)).await;
        assert!(
            !own.iter().any(|s| matches!(s, Signal::Definition { .. })),
            "a node ignores its own definition writes: {own:?}"
        );

        // Events stored in one batch: one wake-up.
        a.insert_events(&[event("e1"), event("e2"), event("e3")])
            .await
            .unwrap();
        let heard = drain(&mut heard_by_b, Duration::from_millis(500)).await;
        assert_eq!(heard, vec![Signal::Events]);

        // An abort of a running row names it.
        let claimed = b
            .claim_executions("node-b", 1, i64::MAX, 1, &[])
            .await
            .unwrap();
        let held = claimed[0].id;
        let out = a
            .abort_execution("o", held, 2, &|_: &ExecutionRow| "{}".to_string())
            .await
            .unwrap();
        assert!(matches!(out, AbortOutcome::Cancelled(_)));
        expect_signal(&mut heard_by_b, |s| *s == Signal::Abort(held)).await;
        // Fallback: node B finds the row is no longer its own.
        assert_eq!(b.lost_leases("node-b", &[held]).await.unwrap(), vec![held]);
    })
    .await;
}

#[tokio::test]
async fn an_event_is_routed_by_one_node_only_and_one_node_holds_the_routing_lease() {
    on_two_nodes(|a, b| async move {
        a.insert_events(&[event("e1"), event("e2")]).await.unwrap();
        let ids = vec!["e1".to_string(), "e2".to_string()];
        a.insert_executions_routed(&[row(1, "pending")], &[], &[], &ids, 5)
            .await
            .unwrap();
        // Node B read the same events before A committed: its transaction rolls back.
        let err = b
            .insert_executions_routed(&[row(2, "pending")], &[], &[], &ids, 6)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        assert!(
            b.get_execution("o", Uuid::from_u128(2))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(b.count_unrouted_events().await.unwrap(), 0);

        assert!(a.take_routing_lease("a", 1_000, 3_000).await.unwrap());
        assert!(!b.take_routing_lease("b", 1_500, 3_500).await.unwrap());
        assert!(a.take_routing_lease("a", 2_000, 4_000).await.unwrap());
        // A stopped renewing: once its lease ran out, B takes over.
        assert!(!b.take_routing_lease("b", 3_999, 5_999).await.unwrap());
        assert!(b.take_routing_lease("b", 4_001, 6_001).await.unwrap());
        assert!(!a.take_routing_lease("a", 4_002, 6_002).await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn an_enqueue_keeps_another_nodes_flow_edit_and_cooldown_windows() {
    on_two_nodes(|a, b| async move {
        let f = Uuid::from_u128(9);
        // Node A's current flow: renamed, triggered at 10:00:05, a window until 100 on d1.
        a.write_docs(&[doc(
            DocKind::Flow,
            f,
            json!({"flow": {"id": f, "name": "Renamed on A",
                            "lastTriggeredAt": "2026-01-01T10:00:05.000Z"},
                   "nodes": [],
                   "gates": {"cooldownUntil": null, "deviceCooldownUntil": {"d1": 100}}}),
        )])
        .await
        .unwrap();
        // Node B enqueues from its older copy: old name, triggered at 10:00:01 (earlier),
        // windows until 50 (flow) and 70 on d1, 80 on d2.
        b.insert_executions(
            &[row(1, "pending")],
            &[doc(
                DocKind::Flow,
                f,
                json!({"flow": {"id": f, "name": "Old name",
                                "lastTriggeredAt": "2026-01-01T10:00:01.000Z"},
                       "nodes": [],
                       "gates": {"cooldownUntil": 50,
                                 "deviceCooldownUntil": {"d1": 70, "d2": 80}}}),
            )],
        )
        .await
        .unwrap();
        let stored: serde_json::Value = serde_json::from_str(
            &a.load_doc(DocKind::Flow, &f.to_string())
                .await
                .unwrap()
                .unwrap()
                .json,
        )
        .unwrap();
        assert_eq!(stored["flow"]["name"], "Renamed on A");
        assert_eq!(
            stored["flow"]["lastTriggeredAt"],
            "2026-01-01T10:00:05.000Z"
        );
        assert_eq!(stored["gates"]["cooldownUntil"], 50);
        assert_eq!(
            stored["gates"]["deviceCooldownUntil"],
            json!({"d1": 100, "d2": 80})
        );
    })
    .await;
}
