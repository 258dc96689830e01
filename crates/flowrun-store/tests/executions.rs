//! The executions contract (`flowrun_store::executions`) against both backends: SQLite always,
//! PostgreSQL when `FLOWRUN_TEST_DATABASE_URL` names a server (each test gets a fresh
//! database, dropped at the end).

use flowrun_core::search::execution_search_text;
use flowrun_store::{
    AbortOutcome, DocKind, DocWrite, ExecFilter, ExecMetrics, ExecOrder, ExecOrderBy, ExecUpdate,
    ExecutionRow,
};
use uuid::Uuid;

mod common;

use common::{Db, delivery, endpoint, on_each_backend};

const OWNER: &str = "owner-1";

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// A pending row with ids and names derived from `n`.
fn row(n: u128, device: Option<Uuid>, enqueued_at: i64) -> ExecutionRow {
    let flow_name = format!("Flow {n}");
    let trigger_name = "Trigger".to_string();
    ExecutionRow {
        id: id(n),
        owner_id: OWNER.to_string(),
        flow_id: id(1_000_000),
        trigger_id: id(2_000_000),
        kind: "live".to_string(),
        status: "pending".to_string(),
        device_id: device,
        invocation_id: None,
        event_id: Some(format!("event-{n}")),
        error: None,
        search_text: execution_search_text(Some(&flow_name), Some(&trigger_name), None),
        flow_name: Some(flow_name),
        trigger_name: Some(trigger_name),
        created_by: Some("actor-1".to_string()),
        enqueued_at,
        started_at: None,
        finished_at: None,
        attempt: 0,
        lease_owner: None,
        lease_expires_at: None,
        graph_hash: Some("ab".repeat(32)),
        snapshot: format!(r#"{{"n":{n}}}"#),
        state: r#"{"progress":[]}"#.to_string(),
    }
}

fn ids(rows: &[ExecutionRow]) -> Vec<Uuid> {
    rows.iter().map(|r| r.id).collect()
}

async fn get(db: &Db, n: u128) -> ExecutionRow {
    db.get_execution(OWNER, id(n)).await.unwrap().unwrap()
}

fn progress(r: &ExecutionRow, lease_owner: &str, state: &str) -> ExecUpdate {
    ExecUpdate {
        id: r.id,
        lease_owner: lease_owner.to_string(),
        attempt: r.attempt,
        status: None,
        error: None,
        finished_at: None,
        clear_started: false,
        state: state.to_string(),
        search_text: None,
        deliveries: Vec::new(),
    }
}

fn finish(r: &ExecutionRow, lease_owner: &str, status: &str, error: Option<&str>) -> ExecUpdate {
    ExecUpdate {
        status: Some(status.to_string()),
        error: error.map(str::to_string),
        finished_at: Some(r.started_at.unwrap_or(0) + 100),
        search_text: Some(execution_search_text(
            r.flow_name.as_deref(),
            r.trigger_name.as_deref(),
            error,
        )),
        ..progress(r, lease_owner, r#"{"done":true}"#)
    }
}

fn cancelled_state(r: &ExecutionRow) -> String {
    format!(r#"{{"cancelledFrom":"{}"}}"#, r.status)
}

fn failed_state(r: &ExecutionRow) -> String {
    format!(r#"{{"failedAt":{}}}"#, r.attempt)
}

fn failed_with(error: &'static str) -> impl Fn(&ExecutionRow) -> (String, String) {
    move |r| (error.to_string(), failed_state(r))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_fifo_one_per_device_skipping_busy_devices() {
    on_each_backend(|db| async move {
        let (a, b, c) = (id(901), id(902), id(903));
        let rows = vec![
            row(10, Some(a), 10),
            row(21, None, 20),
            row(30, Some(a), 30),
            row(40, Some(b), 40),
            row(50, Some(c), 50),
            // Same enqueue time as 21, smaller id: claimed first.
            row(20, None, 20),
        ];
        db.insert_executions(&rows, &[]).await.unwrap();
        assert_eq!(db.count_pending().await.unwrap(), 6);

        let first = db
            .claim_executions("node-1", 1000, 5000, 1, &[])
            .await
            .unwrap();
        assert_eq!(ids(&first), vec![id(10)]);
        let claimed = &first[0];
        assert_eq!(claimed.status, "running");
        assert_eq!(claimed.started_at, Some(1000));
        assert_eq!(claimed.lease_owner.as_deref(), Some("node-1"));
        assert_eq!(claimed.lease_expires_at, Some(5000));
        assert_eq!(claimed.attempt, 0);
        assert_eq!(claimed, &get(&db, 10).await);

        // Device a is running, c is busy in the caller.
        let next = db
            .claim_executions("node-1", 1100, 5000, 10, &[c])
            .await
            .unwrap();
        assert_eq!(ids(&next), vec![id(20), id(21), id(40)]);
        let next = db
            .claim_executions("node-1", 1200, 5000, 10, &[])
            .await
            .unwrap();
        assert_eq!(ids(&next), vec![id(50)]);
        assert!(
            db.claim_executions("node-1", 1300, 5000, 10, &[])
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(db.count_pending().await.unwrap(), 1);

        // Finishing a's run frees the device for its next row.
        let done = db
            .apply_exec_updates(&[finish(claimed, "node-1", "success", None)])
            .await
            .unwrap();
        assert_eq!(done, vec![true]);
        let next = db
            .claim_executions("node-2", 1400, 6000, 10, &[])
            .await
            .unwrap();
        assert_eq!(ids(&next), vec![id(30)]);
        assert_eq!(next[0].lease_owner.as_deref(), Some("node-2"));
        assert_eq!(db.count_pending().await.unwrap(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_row_per_device_per_claim_and_a_backlog_hides_nothing() {
    on_each_backend(|db| async move {
        let (a, b, c) = (id(901), id(902), id(903));
        // A long backlog of device a, then one row of device b and one without device.
        let mut rows: Vec<ExecutionRow> = (0..300).map(|i| row(1 + i, Some(a), i as i64)).collect();
        rows.push(row(5000, Some(b), 10_000));
        rows.push(row(6000, None, 10_001));
        // Two rows of device c enqueued at the same time: the smaller id goes first.
        rows.push(row(7001, Some(c), 10_002));
        rows.push(row(7000, Some(c), 10_002));
        db.insert_executions(&rows, &[]).await.unwrap();

        let claimed = db.claim_executions("n", 1, 2, 2, &[]).await.unwrap();
        assert_eq!(ids(&claimed), vec![id(1), id(5000)]);
        let claimed = db.claim_executions("n", 1, 2, 10, &[]).await.unwrap();
        assert_eq!(ids(&claimed), vec![id(6000), id(7000)]);
        assert!(
            db.claim_executions("n", 1, 2, 10, &[])
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(db.count_pending().await.unwrap(), 300);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn updates_are_fenced_by_lease_and_attempt_and_terminal_is_written_once() {
    on_each_backend(|db| async move {
        let d = id(901);
        db.insert_executions(&[row(1, Some(d), 10), row(2, None, 20)], &[])
            .await
            .unwrap();
        let claimed = db
            .claim_executions("node-1", 100, 200, 10, &[])
            .await
            .unwrap();
        let (r1, r2) = (&claimed[0], &claimed[1]);

        let mut wrong_attempt = progress(r1, "node-1", r#"{"wrong":"attempt"}"#);
        wrong_attempt.attempt = 1;
        let applied = db
            .apply_exec_updates(&[
                progress(r1, "node-2", r#"{"wrong":"owner"}"#),
                wrong_attempt,
                progress(r1, "node-1", r#"{"step":1}"#),
            ])
            .await
            .unwrap();
        assert_eq!(applied, vec![false, false, true]);
        let now = get(&db, 1).await;
        assert_eq!(now.state, r#"{"step":1}"#);
        assert_eq!(now.status, "running");
        assert_eq!(now.lease_owner.as_deref(), Some("node-1"));

        // Terminal: status, error, finished_at, search text; lease cleared.
        let fin = finish(r1, "node-1", "failed", Some("step1: transient: Boom"));
        assert_eq!(db.apply_exec_updates(&[fin]).await.unwrap(), vec![true]);
        let done = get(&db, 1).await;
        assert_eq!(done.status, "failed");
        assert_eq!(done.error.as_deref(), Some("step1: transient: Boom"));
        assert_eq!(done.finished_at, Some(200));
        assert_eq!(done.started_at, Some(100));
        assert_eq!(done.lease_owner, None);
        assert_eq!(done.lease_expires_at, None);
        assert_eq!(done.state, r#"{"done":true}"#);
        assert_eq!(done.search_text, "flow 1\ntrigger\nstep1: transient: boom");

        // Written once: later writes of the same lease change nothing.
        let again = db
            .apply_exec_updates(&[
                progress(r1, "node-1", r#"{"late":true}"#),
                finish(r1, "node-1", "success", None),
            ])
            .await
            .unwrap();
        assert_eq!(again, vec![false, false]);
        assert_eq!(get(&db, 1).await, done);

        // The device is free again.
        db.insert_executions(&[row(3, Some(d), 30)], &[])
            .await
            .unwrap();
        let next = db
            .claim_executions("node-1", 300, 400, 10, &[])
            .await
            .unwrap();
        assert_eq!(ids(&next), vec![id(3)]);

        // clear_started: a row skipped at claim time never started (ref time = enqueue).
        let mut skip = finish(r2, "node-1", "skipped", Some("disabled"));
        skip.clear_started = true;
        skip.state = "{}".to_string();
        assert_eq!(db.apply_exec_updates(&[skip]).await.unwrap(), vec![true]);
        let skipped = get(&db, 2).await;
        assert_eq!(skipped.status, "skipped");
        assert_eq!(skipped.started_at, None);
        assert_eq!(skipped.error.as_deref(), Some("disabled"));
        let (page, _) = db
            .list_executions(
                OWNER,
                &ExecFilter {
                    from: Some(20),
                    to: Some(21),
                    ..Default::default()
                },
                ExecOrder {
                    by: ExecOrderBy::StartedAt,
                    desc: false,
                },
                0,
                10,
            )
            .await
            .unwrap();
        assert_eq!(ids(&page), vec![id(2)]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_pending_running_terminal_and_unknown() {
    on_each_backend(|db| async move {
        db.insert_executions(&[row(1, None, 10), row(2, Some(id(9)), 20)], &[])
            .await
            .unwrap();
        let AbortOutcome::Cancelled(pending) = db
            .abort_execution(OWNER, id(1), 500, &cancelled_state)
            .await
            .unwrap()
        else {
            panic!("pending row not cancelled")
        };
        assert_eq!(pending.status, "cancelled");
        assert_eq!(pending.finished_at, Some(500));
        assert_eq!(pending.started_at, None);
        assert_eq!(pending.error, None);
        assert_eq!(pending.state, r#"{"cancelledFrom":"pending"}"#);
        assert_eq!(pending, get(&db, 1).await);
        assert_eq!(
            db.abort_execution(OWNER, id(1), 600, &cancelled_state)
                .await
                .unwrap(),
            AbortOutcome::Terminal(pending.clone())
        );

        // A cancelled row is never claimed.
        let claimed = db
            .claim_executions("node-1", 700, 800, 10, &[])
            .await
            .unwrap();
        assert_eq!(ids(&claimed), vec![id(2)]);
        let running = &claimed[0];

        let AbortOutcome::Cancelled(aborted) = db
            .abort_execution(OWNER, id(2), 750, &cancelled_state)
            .await
            .unwrap()
        else {
            panic!("running row not cancelled")
        };
        // The returned row names the lease holder; the stored one has no lease.
        assert_eq!(aborted.lease_owner.as_deref(), Some("node-1"));
        assert_eq!(aborted.attempt, 0);
        assert_eq!(aborted.started_at, Some(700));
        assert_eq!(aborted.finished_at, Some(750));
        assert_eq!(aborted.state, r#"{"cancelledFrom":"running"}"#);
        let stored = get(&db, 2).await;
        assert_eq!(stored.lease_owner, None);
        assert_eq!(stored.lease_expires_at, None);
        assert_eq!(
            ExecutionRow {
                lease_owner: Some("node-1".to_string()),
                ..stored.clone()
            },
            aborted
        );

        // The worker's late writes are discarded.
        let late = db
            .apply_exec_updates(&[
                progress(running, "node-1", r#"{"late":1}"#),
                finish(running, "node-1", "success", None),
            ])
            .await
            .unwrap();
        assert_eq!(late, vec![false, false]);
        assert_eq!(get(&db, 2).await, stored);
        // node-1 holds no lease any more.
        assert_eq!(db.renew_leases("node-1", &[id(2)], 9999).await.unwrap(), 0);

        assert_eq!(
            db.abort_execution(OWNER, id(77), 1, &cancelled_state)
                .await
                .unwrap(),
            AbortOutcome::NotFound
        );
        assert_eq!(
            db.abort_execution("someone-else", id(2), 1, &cancelled_state)
                .await
                .unwrap(),
            AbortOutcome::NotFound
        );
        assert_eq!(db.get_execution("someone-else", id(2)).await.unwrap(), None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_aborts_have_exactly_one_winner() {
    on_each_backend(|db| async move {
        db.insert_executions(&[row(1, Some(id(9)), 10), row(2, None, 20)], &[])
            .await
            .unwrap();
        // Row 1 running, row 2 pending.
        let claimed = db
            .claim_executions("node-1", 100, 200, 1, &[])
            .await
            .unwrap();
        assert_eq!(ids(&claimed), vec![id(1)]);
        for n in [1, 2] {
            let tasks: Vec<_> = (0..50)
                .map(|i| {
                    let db = db.clone();
                    tokio::spawn(async move {
                        db.abort_execution(OWNER, id(n), 1000 + i, &cancelled_state)
                            .await
                            .unwrap()
                    })
                })
                .collect();
            let (mut cancelled, mut terminal) = (0, 0);
            for t in tasks {
                match t.await.unwrap() {
                    AbortOutcome::Cancelled(_) => cancelled += 1,
                    AbortOutcome::Terminal(r) => {
                        assert_eq!(r.status, "cancelled");
                        terminal += 1;
                    }
                    AbortOutcome::NotFound => panic!("row vanished"),
                }
            }
            assert_eq!((cancelled, terminal), (1, 49), "row {n}");
        }

        // An abort racing the worker's final write: exactly one of them wins.
        for round in 0..10u128 {
            let n = 100 + round;
            db.insert_executions(&[row(n, None, 1000 + n as i64)], &[])
                .await
                .unwrap();
            let claimed = db
                .claim_executions("node-1", 2000, 3000, 1, &[])
                .await
                .unwrap();
            assert_eq!(ids(&claimed), vec![id(n)]);
            let fin = finish(&claimed[0], "node-1", "success", None);
            let (worker, abort) = {
                let (db1, db2) = (db.clone(), db.clone());
                let w = tokio::spawn(async move { db1.apply_exec_updates(&[fin]).await.unwrap() });
                let a = tokio::spawn(async move {
                    db2.abort_execution(OWNER, id(n), 2500, &cancelled_state)
                        .await
                        .unwrap()
                });
                (w.await.unwrap(), a.await.unwrap())
            };
            let stored = get(&db, n).await;
            match abort {
                AbortOutcome::Cancelled(_) => {
                    assert_eq!(worker, vec![false]);
                    assert_eq!(stored.status, "cancelled");
                }
                AbortOutcome::Terminal(_) => {
                    assert_eq!(worker, vec![true]);
                    assert_eq!(stored.status, "success");
                }
                AbortOutcome::NotFound => panic!("row vanished"),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reaper_requeues_expired_leases_then_fails_after_max_attempts() {
    on_each_backend(|db| async move {
        const ERR: &str = "run: transient: Lease lost";
        db.insert_executions(&[row(1, Some(id(9)), 10)], &[])
            .await
            .unwrap();
        let first = db
            .claim_executions("node-1", 1000, 2000, 1, &[])
            .await
            .unwrap();
        assert_eq!(first[0].started_at, Some(1000));

        let none = db
            .reap_executions(1500, 3, &failed_with(ERR), "node-2", false)
            .await
            .unwrap();
        assert_eq!(none, Default::default());

        let reaped = db
            .reap_executions(2500, 3, &failed_with(ERR), "node-2", false)
            .await
            .unwrap();
        assert_eq!(reaped.requeued, vec![id(1)]);
        assert!(reaped.failed.is_empty());
        let requeued = get(&db, 1).await;
        assert_eq!(requeued.status, "pending");
        assert_eq!(requeued.attempt, 1);
        assert_eq!(requeued.lease_owner, None);
        assert_eq!(requeued.lease_expires_at, None);
        assert_eq!(requeued.started_at, Some(1000));
        assert_eq!(requeued.finished_at, None);
        assert_eq!(db.count_pending().await.unwrap(), 1);

        // The reclaimed row keeps its first start; the old holder is fenced out.
        let second = db
            .claim_executions("node-2", 3000, 4000, 1, &[])
            .await
            .unwrap();
        assert_eq!(second[0].attempt, 1);
        assert_eq!(second[0].started_at, Some(1000));
        let stale = db
            .apply_exec_updates(&[progress(&first[0], "node-1", "{}")])
            .await
            .unwrap();
        assert_eq!(stale, vec![false]);

        let reaped = db
            .reap_executions(4500, 3, &failed_with(ERR), "node-3", false)
            .await
            .unwrap();
        assert_eq!(reaped.requeued, vec![id(1)]);
        let third = db
            .claim_executions("node-3", 5000, 6000, 1, &[])
            .await
            .unwrap();
        assert_eq!(third[0].attempt, 2);

        let reaped = db
            .reap_executions(6500, 3, &failed_with(ERR), "node-4", false)
            .await
            .unwrap();
        assert!(reaped.requeued.is_empty());
        assert_eq!(reaped.failed.len(), 1);
        let failed = &reaped.failed[0];
        assert_eq!(failed.status, "failed");
        assert_eq!(failed.error.as_deref(), Some(ERR));
        assert_eq!(failed.finished_at, Some(6500));
        assert_eq!(failed.started_at, Some(1000));
        assert_eq!(failed.attempt, 2);
        assert_eq!(failed.state, r#"{"failedAt":2}"#);
        assert_eq!(failed.lease_owner, None);
        assert_eq!(failed.lease_expires_at, None);
        assert_eq!(
            failed.search_text,
            "flow 1\ntrigger\nrun: transient: lease lost"
        );
        assert_eq!(failed, &get(&db, 1).await);
        // The device is free again.
        db.insert_executions(&[row(2, Some(id(9)), 20)], &[])
            .await
            .unwrap();
        let next = db
            .claim_executions("node-4", 7000, 8000, 1, &[])
            .await
            .unwrap();
        assert_eq!(ids(&next), vec![id(2)]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reaper_takes_every_row_of_other_owners_at_start_up_and_leases_renew() {
    on_each_backend(|db| async move {
        db.insert_executions(&[row(1, None, 10), row(2, None, 20), row(3, None, 30)], &[])
            .await
            .unwrap();
        db.claim_executions("old", 100, 1_000_000, 2, &[])
            .await
            .unwrap();
        db.claim_executions("new", 100, 1_000_000, 1, &[])
            .await
            .unwrap();

        assert_eq!(
            db.renew_leases("old", &[id(1), id(2), id(3)], 2_000_000)
                .await
                .unwrap(),
            2
        );
        assert_eq!(get(&db, 1).await.lease_expires_at, Some(2_000_000));
        assert_eq!(get(&db, 3).await.lease_expires_at, Some(1_000_000));
        assert_eq!(
            db.renew_leases("nobody", &[id(1), id(2), id(3)], 5)
                .await
                .unwrap(),
            0
        );

        // Leases not expired: nothing without the flag.
        let reaped = db
            .reap_executions(200, 3, &failed_with("x"), "new", false)
            .await
            .unwrap();
        assert_eq!(reaped, Default::default());
        let reaped = db
            .reap_executions(200, 3, &failed_with("x"), "new", true)
            .await
            .unwrap();
        assert_eq!(reaped.requeued, vec![id(1), id(2)]);
        assert_eq!(get(&db, 3).await.status, "running");
        assert_eq!(
            db.renew_leases("old", &[id(1), id(2), id(3)], 3_000_000)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            db.renew_leases("new", &[id(1), id(2), id(3)], 3_000_000)
                .await
                .unwrap(),
            1
        );
    })
    .await;
}

/// Rows for list and metrics tests; ref times: 1 → 150, 2 → 200, 3 → 400, 4 → 350, 5 → 500,
/// 6 → 150.
fn list_fixture() -> Vec<ExecutionRow> {
    let named = |n, flow: &str, trigger: &str, error: Option<&str>| {
        let mut r = row(n, None, 0);
        r.flow_name = Some(flow.to_string());
        r.trigger_name = Some(trigger.to_string());
        r.error = error.map(str::to_string);
        r.search_text = execution_search_text(Some(flow), Some(trigger), error);
        r
    };
    let mut e1 = named(1, "Nightly 100% sync", "Cron", None);
    (e1.status, e1.enqueued_at, e1.started_at, e1.finished_at) =
        ("success".into(), 100, Some(150), Some(300));
    let mut e2 = named(2, "Nightly 100 sync", "Cron", None);
    (e2.status, e2.enqueued_at) = ("pending".into(), 200);
    let mut e3 = named(3, "Backup", "Hook", Some("upload: transient: Boom_X"));
    (e3.status, e3.enqueued_at, e3.started_at, e3.finished_at) =
        ("failed".into(), 50, Some(400), Some(450));
    e3.flow_id = id(1_000_001);
    let mut e4 = named(4, "Backup", "Hook", None);
    (e4.status, e4.enqueued_at, e4.started_at) = ("running".into(), 300, Some(350));
    (e4.lease_owner, e4.lease_expires_at) = (Some("node-1".into()), Some(i64::MAX));
    e4.invocation_id = Some("inv-1".into());
    let mut e5 = named(5, "Report", "Manual", Some("archived"));
    (e5.status, e5.enqueued_at, e5.finished_at) = ("skipped".into(), 500, Some(500));
    e5.trigger_id = id(2_000_001);
    let mut e6 = named(6, "Report", "Manual", None);
    (e6.status, e6.enqueued_at) = ("pending".into(), 150);
    let mut foreign = named(7, "Nightly 100% sync", "Cron", None);
    foreign.owner_id = "owner-2".into();
    vec![e1, e2, e3, e4, e5, e6, foreign]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lists_filter_order_paginate_and_search() {
    on_each_backend(|db| async move {
        db.insert_executions(&list_fixture(), &[]).await.unwrap();
        let list = |filter: ExecFilter, by: ExecOrderBy, desc: bool, offset: u64, limit: u64| {
            let db = db.clone();
            async move {
                let (rows, total) = db
                    .list_executions(OWNER, &filter, ExecOrder { by, desc }, offset, limit)
                    .await
                    .unwrap();
                (ids(&rows), total)
            }
        };
        let ns = |ns: &[u128]| ns.iter().map(|n| id(*n)).collect::<Vec<_>>();
        let all = ExecFilter::default;
        use ExecOrderBy::*;

        assert_eq!(
            list(all(), StartedAt, false, 0, 50).await,
            (ns(&[1, 6, 2, 4, 3, 5]), 6)
        );
        assert_eq!(
            list(all(), StartedAt, true, 0, 50).await,
            (ns(&[5, 3, 4, 2, 6, 1]), 6)
        );
        assert_eq!(
            list(all(), FinishedAt, false, 0, 50).await,
            (ns(&[1, 3, 5, 2, 4, 6]), 6)
        );
        assert_eq!(
            list(all(), FinishedAt, true, 0, 50).await,
            (ns(&[5, 3, 1, 6, 4, 2]), 6)
        );
        assert_eq!(
            list(all(), Status, false, 0, 50).await,
            (ns(&[3, 2, 6, 4, 5, 1]), 6)
        );
        assert_eq!(
            list(all(), Status, true, 0, 50).await,
            (ns(&[1, 5, 4, 6, 2, 3]), 6)
        );
        assert_eq!(list(all(), StartedAt, false, 2, 2).await, (ns(&[2, 4]), 6));
        assert_eq!(list(all(), StartedAt, false, 10, 2).await, (ns(&[]), 6));

        let f = |edit: &dyn Fn(&mut ExecFilter)| {
            let mut f = ExecFilter::default();
            edit(&mut f);
            f
        };
        let statuses = f(&|f| f.statuses = vec!["pending".into(), "running".into()]);
        assert_eq!(
            list(statuses, StartedAt, false, 0, 2).await,
            (ns(&[6, 2]), 3)
        );
        let window = f(&|f| (f.from, f.to) = (Some(150), Some(350)));
        assert_eq!(
            list(window, StartedAt, false, 0, 50).await,
            (ns(&[1, 6, 2]), 3)
        );
        let flow = f(&|f| f.flow_id = Some(id(1_000_001)));
        assert_eq!(list(flow, StartedAt, false, 0, 50).await, (ns(&[3]), 1));
        let trigger = f(&|f| f.trigger_id = Some(id(2_000_001)));
        assert_eq!(list(trigger, StartedAt, false, 0, 50).await, (ns(&[5]), 1));
        let invocation = f(&|f| f.invocation_id = Some("inv-1".into()));
        assert_eq!(
            list(invocation, StartedAt, false, 0, 50).await,
            (ns(&[4]), 1)
        );

        let search = |needle: &'static str| f(&move |f| f.search = Some(needle.into()));
        assert_eq!(
            list(search("0%"), StartedAt, false, 0, 50).await,
            (ns(&[1]), 1)
        );
        assert_eq!(
            list(search("%"), StartedAt, false, 0, 50).await,
            (ns(&[1]), 1)
        );
        assert_eq!(
            list(search("100"), StartedAt, false, 0, 50).await,
            (ns(&[1, 2]), 2)
        );
        assert_eq!(
            list(search("_"), StartedAt, false, 0, 50).await,
            (ns(&[3]), 1)
        );
        assert_eq!(
            list(search("boom_x"), StartedAt, false, 0, 50).await,
            (ns(&[3]), 1)
        );
        assert_eq!(
            list(search("archived"), StartedAt, false, 0, 50).await,
            (ns(&[5]), 1)
        );
        assert_eq!(
            list(search("cron"), StartedAt, false, 0, 50).await,
            (ns(&[1, 2]), 2)
        );
        assert_eq!(
            list(search("nomatch"), StartedAt, false, 0, 50).await,
            (ns(&[]), 0)
        );
        let combined = f(&|f| {
            f.search = Some("report".into());
            f.statuses = vec!["pending".into()];
        });
        assert_eq!(list(combined, StartedAt, false, 0, 50).await, (ns(&[6]), 1));

        let (other, total) = db
            .list_executions(
                "owner-2",
                &all(),
                ExecOrder {
                    by: StartedAt,
                    desc: false,
                },
                0,
                10,
            )
            .await
            .unwrap();
        assert_eq!((ids(&other), total), (ns(&[7]), 1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_aggregate_the_filtered_rows() {
    on_each_backend(|db| async move {
        db.insert_executions(&list_fixture(), &[]).await.unwrap();
        let m = db
            .execution_metrics(OWNER, &ExecFilter::default())
            .await
            .unwrap();
        assert_eq!(
            m,
            ExecMetrics {
                total: 6,
                by_status: [2, 1, 1, 1, 0, 1, 0],
                // (300 - 150 + 450 - 400) / 2; the skipped row never started.
                avg_duration_ms: Some(100.0),
                last_started_at: Some(400),
            }
        );
        let pending = ExecFilter {
            statuses: vec!["pending".into()],
            ..Default::default()
        };
        let m = db.execution_metrics(OWNER, &pending).await.unwrap();
        assert_eq!(
            m,
            ExecMetrics {
                total: 2,
                by_status: [2, 0, 0, 0, 0, 0, 0],
                avg_duration_ms: None,
                last_started_at: None,
            }
        );
        let window = ExecFilter {
            from: Some(150),
            to: Some(400),
            ..Default::default()
        };
        let m = db.execution_metrics(OWNER, &window).await.unwrap();
        assert_eq!(m.total, 4);
        assert_eq!(m.avg_duration_ms, Some(150.0));
        assert_eq!(m.last_started_at, Some(350));
        let none = db
            .execution_metrics("nobody", &ExecFilter::default())
            .await
            .unwrap();
        assert_eq!(none, ExecMetrics::default());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archiving_skips_the_pending_rows_of_a_flow() {
    on_each_backend(|db| async move {
        let flow = id(1_000_000);
        let mut rows = vec![
            row(1, None, 10),
            row(2, None, 20),
            row(3, None, 30),
            row(4, None, 40),
        ];
        rows[1].trigger_name = Some("Other Trigger".into());
        rows[1].search_text =
            execution_search_text(rows[1].flow_name.as_deref(), Some("Other Trigger"), None);
        rows[3].flow_id = id(1_000_001);
        db.insert_executions(&rows, &[]).await.unwrap();
        // Row 1 is running; 2 and 3 pending of the flow; 4 pending of another flow.
        db.claim_executions("node-1", 100, 200, 1, &[])
            .await
            .unwrap();

        assert_eq!(
            db.skip_pending_of_flow(flow, "archived", 900)
                .await
                .unwrap(),
            2
        );
        for n in [2, 3] {
            let r = get(&db, n).await;
            assert_eq!(r.status, "skipped");
            assert_eq!(r.error.as_deref(), Some("archived"));
            assert_eq!(r.finished_at, Some(900));
            assert_eq!(r.started_at, None);
            assert_eq!(r.state, "{}");
            assert_eq!(
                r.search_text,
                execution_search_text(
                    r.flow_name.as_deref(),
                    r.trigger_name.as_deref(),
                    Some("archived")
                )
            );
        }
        assert_eq!(get(&db, 1).await.status, "running");
        assert_eq!(get(&db, 4).await.status, "pending");
        assert_eq!(db.count_pending().await.unwrap(), 1);
        assert_eq!(
            db.skip_pending_of_flow(flow, "archived", 901)
                .await
                .unwrap(),
            0
        );
        assert_eq!(get(&db, 2).await.finished_at, Some(900));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inserts_rows_and_documents_in_one_transaction() {
    on_each_backend(|db| async move {
        let (fa, fb) = (id(1_000_000), id(1_000_001));
        let mut r1 = row(1, Some(id(9)), 10);
        r1.invocation_id = Some("inv-1".into());
        r1.status = "running".into();
        (
            r1.started_at,
            r1.lease_owner,
            r1.lease_expires_at,
            r1.attempt,
        ) = (Some(11), Some("node-1".into()), Some(99), 1);
        let mut r2 = row(2, None, 20);
        (r2.flow_id, r2.invocation_id) = (fb, Some("inv-2".into()));
        let doc = |id: Uuid, json: Option<&str>| DocWrite {
            kind: DocKind::Flow,
            id: id.to_string(),
            owner_id: OWNER.to_string(),
            json: json.map(str::to_string),
        };
        db.insert_executions(
            &[r1.clone(), r2.clone()],
            &[doc(fa, Some(r#"{"health":"ok"}"#))],
        )
        .await
        .unwrap();
        assert_eq!(get(&db, 1).await, r1);
        assert_eq!(get(&db, 2).await, r2);
        let docs = db.load_docs(DocKind::Flow).await.unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(
            (docs[0].id.as_str(), docs[0].json.as_str()),
            (fa.to_string().as_str(), r#"{"health":"ok"}"#)
        );

        let flows = db
            .flows_with_invocation(&[fa, fb, id(5)], "inv-1")
            .await
            .unwrap();
        assert_eq!(flows, vec![fa]);
        let flows = db.flows_with_invocation(&[fa, fb], "inv-2").await.unwrap();
        assert_eq!(flows, vec![fb]);
        assert!(
            db.flows_with_invocation(&[fa], "inv-2")
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            db.flows_with_invocation(&[], "inv-1")
                .await
                .unwrap()
                .is_empty()
        );

        // A failing row rolls back the whole batch, documents included.
        let err = db
            .insert_executions(&[row(3, None, 30), r1.clone()], &[doc(fb, Some("{}"))])
            .await;
        assert!(err.is_err());
        assert_eq!(db.get_execution(OWNER, id(3)).await.unwrap(), None);
        assert_eq!(db.load_docs(DocKind::Flow).await.unwrap().len(), 1);

        // Large batches (several multi-row statements on PostgreSQL) and a document delete.
        let many: Vec<_> = (0..1203)
            .map(|i| row(10_000 + i, None, 1000 + i as i64))
            .collect();
        db.insert_executions(&many, &[doc(fa, None)]).await.unwrap();
        assert_eq!(db.count_pending().await.unwrap(), 1 + 1203);
        assert_eq!(get(&db, 10_000 + 1202).await, many[1202]);
        assert!(db.load_docs(DocKind::Flow).await.unwrap().is_empty());
        // Only row 1's device is running, the others need none: FIFO over the batch.
        let claimed = db.claim_executions("n", 5000, 6000, 3, &[]).await.unwrap();
        assert_eq!(ids(&claimed), vec![id(2), id(10_000), id(10_001)]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_take_each_row_once_and_one_per_device() {
    on_each_backend(|db| async move {
        // 10 devices with 12 rows each, interleaved with 40 device-free rows.
        let mut rows = Vec::new();
        for i in 0..160u128 {
            let device = (i % 4 != 3).then(|| id(900 + i % 10));
            rows.push(row(1 + i, device, i as i64));
        }
        db.insert_executions(&rows, &[]).await.unwrap();
        let workers: Vec<_> = (0..6)
            .map(|w| {
                let db = db.clone();
                tokio::spawn(async move {
                    let node = format!("node-{w}");
                    let mut mine = Vec::new();
                    let mut idle = 0;
                    while idle < 20 {
                        let claimed = db
                            .claim_executions(&node, 10, 1_000_000, 3, &[])
                            .await
                            .unwrap();
                        if claimed.is_empty() {
                            idle += 1;
                            tokio::task::yield_now().await;
                            continue;
                        }
                        idle = 0;
                        let mut devices: Vec<_> =
                            claimed.iter().filter_map(|r| r.device_id).collect();
                        let n = devices.len();
                        devices.sort();
                        devices.dedup();
                        assert_eq!(devices.len(), n, "one row per device per claim");
                        let done: Vec<_> = claimed
                            .iter()
                            .map(|r| finish(r, &node, "success", None))
                            .collect();
                        assert!(
                            db.apply_exec_updates(&done)
                                .await
                                .unwrap()
                                .iter()
                                .all(|a| *a)
                        );
                        mine.extend(ids(&claimed));
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await.unwrap());
        }
        all.sort();
        assert_eq!(all, ids(&rows), "every row claimed exactly once");
        assert_eq!(db.count_pending().await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn staged_deliveries_are_inserted_only_with_an_update_that_applies() {
    on_each_backend(|db| async move {
        let hook = endpoint(OWNER, 1);
        db.insert_endpoint(&hook).await.unwrap();
        db.insert_executions(&[row(1, None, 10)], &[])
            .await
            .unwrap();
        let claimed = db
            .claim_executions("node-1", 100, 200, 10, &[])
            .await
            .unwrap();
        let r = &claimed[0];
        let mut leased = delivery(&hook, 150, Some(60_150));
        leased.lease_owner = Some("webhooks-1".to_string());
        let mut applies = progress(r, "node-1", r#"{"step":1}"#);
        applies.deliveries = vec![leased.clone()];
        let mut fenced = progress(r, "node-2", r#"{"step":2}"#);
        let lost = delivery(&hook, 160, Some(160));
        fenced.deliveries = vec![lost.clone()];
        let applied = db.apply_exec_updates(&[applies, fenced]).await.unwrap();
        assert_eq!(applied, vec![true, false]);
        assert_eq!(
            db.get_delivery(OWNER, leased.id).await.unwrap(),
            Some(leased)
        );
        assert_eq!(db.get_delivery(OWNER, lost.id).await.unwrap(), None);
        // The leased row is not claimable by anyone while its lease runs.
        assert!(
            db.claim_deliveries("webhooks-2", 1_000, 61_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_refuses_a_second_running_row_of_a_device_only() {
    on_each_backend(|db| async move {
        let running = |n: u128, device: Option<Uuid>| ExecutionRow {
            status: "running".to_string(),
            started_at: Some(5),
            lease_owner: Some("n".to_string()),
            lease_expires_at: Some(1_000_000),
            ..row(n, device, n as i64)
        };
        // Rows without a device are not constrained (and not indexed) however many run.
        let free: Vec<_> = (1..=20).map(|n| running(n, None)).collect();
        db.insert_executions(&free, &[]).await.unwrap();
        db.insert_executions(&[running(30, Some(id(900)))], &[])
            .await
            .unwrap();
        // A second running row of the same device is refused and changes nothing.
        assert!(
            db.insert_executions(&[running(31, Some(id(900)))], &[])
                .await
                .is_err()
        );
        assert!(db.get_execution(OWNER, id(31)).await.unwrap().is_none());
        // Another device, or the same device once its run ended, is fine.
        db.insert_executions(&[running(32, Some(id(901)))], &[])
            .await
            .unwrap();
        let done = finish(&running(30, Some(id(900))), "n", "success", None);
        assert_eq!(db.apply_exec_updates(&[done]).await.unwrap(), vec![true]);
        db.insert_executions(&[running(33, Some(id(900)))], &[])
            .await
            .unwrap();
        // Lease renewal still finds every running row of the node.
        let all: Vec<Uuid> = (1..=20).map(id).chain([id(32), id(33)]).collect();
        assert_eq!(db.renew_leases("n", &all, 2_000_000).await.unwrap(), 22);
    })
    .await;
}
