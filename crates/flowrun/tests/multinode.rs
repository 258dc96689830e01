//! Several `flowrun serve` nodes on one PostgreSQL database (runs only when
//! `FLOWRUN_TEST_DATABASE_URL` is set; a SQLite file belongs to one process).
//!
//! - A definition written through one node is usable through the other at once; a flow's
//!   `lastTriggeredAt`, written behind, reaches the other node too.
//! - 2,000 fires spread over two nodes, one killed with SIGKILL in the middle: every
//!   execution ends, the survivor reclaims the dead node's leases, no committed step runs
//!   again, and a schedule firing every two seconds meanwhile fires each occurrence once.
//! - An abort sent to either node stops a run the other node holds: the holder's worker slot
//!   is free again at once (its in-flight `flow.wait` was cancelled).
//!
//! Nothing sleeps to synchronise: every wait polls with a deadline.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{Value, json};

/// Short leases, so the survivor reclaims a dead node's rows quickly; no per-flow rate limit
/// (2,000 fires of one flow).
const NODE_ARGS: [&str; 4] = ["--lease-seconds", "2", "--flow-rate-limit", "0"];

fn skip() -> bool {
    if Server::on_postgres() {
        return false;
    }
    eprintln!("multi-node tests need FLOWRUN_TEST_DATABASE_URL (PostgreSQL); skipped");
    true
}

async fn catalog(s: &Server) -> HashMap<String, String> {
    let r = s.get("/v1/action-catalog?pageSize=100").await;
    r.expect(200);
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap().to_string(),
                e["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn action(s: &Server, cat: &HashMap<String, String>, method: &str, params: Value) -> String {
    let r = s
        .post(
            "/v1/actions",
            json!({"catalogEntryId": cat[method], "name": method, "params": params}),
        )
        .await;
    r.expect(201);
    r.id()
}

async fn custom_trigger(s: &Server, name: &str) -> String {
    let r = s
        .post(
            "/v1/triggers",
            json!({"activation": "custom", "name": name}),
        )
        .await;
    r.expect(201);
    r.id()
}

/// A flow of `steps` (action ids) in order.
async fn flow(s: &Server, name: &str, trigger: &str, steps: &[&str]) -> String {
    let actions: Vec<Value> = steps
        .iter()
        .enumerate()
        .map(|(i, a)| json!({"actionId": a, "position": i, "key": format!("s{i}")}))
        .collect();
    let r = s
        .post(
            "/v1/flows",
            json!({"name": name, "triggerId": trigger, "actions": actions}),
        )
        .await;
    r.expect(201);
    r.id()
}

async fn run_one(s: &Server, flow: &str) -> String {
    let r = s
        .post(&format!("/v1/flows/{flow}/run"), json!({"payload": {}}))
        .await;
    r.expect(202);
    let ids = r.data()["executionIds"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 1, "{}", r.text);
    ids[0].as_str().unwrap().to_string()
}

/// Polls an execution until `pred` holds; panics with the last body after `timeout`.
async fn wait_exec(
    s: &Server,
    id: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let r = s.get(&format!("/v1/executions/{id}")).await;
        r.expect(200);
        if pred(r.data()) {
            return r.data().clone();
        }
        assert!(
            Instant::now() < deadline,
            "execution {id} not as expected within {timeout:?}; last: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every execution of a trigger, oldest first (all pages).
async fn executions_of(s: &Server, trigger: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for page in 1.. {
        let r = s
            .get(&format!(
                "/v1/executions?triggerId={trigger}&pageSize=100&page={page}&orderBy=startedAt&orderDirection=asc"
            ))
            .await;
        r.expect(200);
        let items = r.body["items"].as_array().unwrap().clone();
        let done = items.len() < 100;
        out.extend(items);
        if done {
            break;
        }
    }
    out
}

/// The steps' `(status, attempt, startedAt, finishedAt)` of a run.
fn step_marks(e: &Value) -> Vec<(String, i64, Value, Value)> {
    e["result"]["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    (
                        s["status"].as_str().unwrap_or_default().to_string(),
                        s["attempt"].as_i64().unwrap_or(0),
                        s["startedAt"].clone(),
                        s["finishedAt"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_definition_written_on_one_node_is_usable_on_the_other_at_once() {
    if skip() {
        return;
    }
    let a = Server::start_with(&NODE_ARGS).await;
    let b = a.join(&NODE_ARGS).await;
    let cat = catalog(&a).await;

    let t = custom_trigger(&a, "Made on A").await;
    let w = action(&a, &cat, "flow.wait", json!({"seconds": 0})).await;
    let f = flow(&a, "Made on A", &t, &[&w]).await;
    // No poll: B answers from its registry, which A's notification updated; a second of
    // grace covers the notification's delivery on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        if b.get(&format!("/v1/flows/{f}")).await.status.as_u16() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "B never saw the flow made on A");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Fired through B, run by either node.
    let r = b
        .post(&format!("/v1/triggers/{t}/fire"), json!({"payload": {}}))
        .await;
    r.expect(202);
    assert_eq!(r.body["enqueuedCount"], 1, "{}", r.text);
    let listed = executions_of(&b, &t).await;
    assert_eq!(listed.len(), 1);
    let id = listed[0]["id"].as_str().unwrap().to_string();
    let e = wait_exec(&a, &id, Duration::from_secs(10), |e| {
        e["status"] != "pending" && e["status"] != "running"
    })
    .await;
    assert_eq!(e["status"], "success", "{e}");
    // The firing's lastTriggeredAt, written behind on B, reaches A.
    let fired_at = b.get(&format!("/v1/flows/{f}")).await.data()["lastTriggeredAt"].clone();
    assert!(fired_at.is_string(), "{fired_at}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.get(&format!("/v1/flows/{f}")).await.data()["lastTriggeredAt"] != fired_at {
        assert!(
            Instant::now() < deadline,
            "A never saw the lastTriggeredAt of the firing on B"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // An update on B reaches A; a delete on A reaches B.
    b.patch(&format!("/v1/flows/{f}"), json!({"name": "Renamed on B"}))
        .await
        .expect(200);
    let deadline = Instant::now() + Duration::from_secs(1);
    while a.get(&format!("/v1/flows/{f}")).await.data()["name"] != "Renamed on B" {
        assert!(
            Instant::now() < deadline,
            "A never saw the rename made on B"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lone = action(&a, &cat, "flow.wait", json!({"seconds": 0})).await;
    let deadline = Instant::now() + Duration::from_secs(1);
    while b.get(&format!("/v1/actions/{lone}")).await.status.as_u16() != 200 {
        assert!(
            Instant::now() < deadline,
            "B never saw the action made on A"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.delete(&format!("/v1/actions/{lone}")).await.expect(200);
    let deadline = Instant::now() + Duration::from_secs(1);
    while b.get(&format!("/v1/actions/{lone}")).await.status.as_u16() != 404 {
        assert!(
            Instant::now() < deadline,
            "B still has the action deleted on A"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_nodes_one_killed_mid_load_every_run_ends_and_nothing_runs_twice() {
    if skip() {
        return;
    }
    // Few workers per node, so a backlog builds up and the killed node dies holding runs.
    let args = [&NODE_ARGS[..], &["--workers", "8"]].concat();
    let mut a = Server::start_with(&args).await;
    let b = a.join(&args).await;
    let cat = catalog(&a).await;

    // The load: a three-step device-free flow.
    let t = custom_trigger(&a, "Load").await;
    let wait = action(&a, &cat, "flow.wait", json!({"seconds": 0.01})).await;
    let check = action(
        &a,
        &cat,
        "flow.if",
        json!({"condition": {"field": "event.payload.flag", "op": "eq", "value": true}}),
    )
    .await;
    flow(&a, "Load", &t, &[&wait, &check, &wait]).await;

    // A schedule every two seconds while both nodes run; each run records its occurrence.
    let sched = a
        .post(
            "/v1/triggers",
            json!({"activation": "schedule", "name": "Every 2 s", "timezone": "UTC",
                   "scheduleRule": {"type": "cron", "expression": "*/2 * * * * *"}}),
        )
        .await;
    sched.expect(201);
    let sched = sched.id();
    let record = action(
        &a,
        &cat,
        "flow.for_each",
        json!({"items": ["{{schedule.nominalTime}}"], "maxIterations": 1}),
    )
    .await;
    let zero = action(&a, &cat, "flow.wait", json!({"seconds": 0})).await;
    let r = a
        .post(
            "/v1/flows",
            json!({"name": "Schedule record", "triggerId": sched, "actions": [
                {"actionId": record, "position": 0, "key": "root",
                 "children": [{"actionId": zero, "position": 0, "key": "w"}]}]}),
        )
        .await;
    r.expect(201);

    // 2,000 fires, alternating nodes, 32 in flight; node A is killed after the first half.
    let fire_path = format!("/v1/triggers/{t}/fire");
    let mut fired: Vec<String> = Vec::new();
    for half in 0..2 {
        let mut n = 0usize;
        while n < 1000 {
            let size = 32.min(1000 - n);
            let chunk: Vec<_> = (0..size)
                .map(|i| {
                    // After the kill only B takes requests.
                    let node = if half == 0 && (n + i).is_multiple_of(2) {
                        &a
                    } else {
                        &b
                    };
                    let body = json!({"payload": {"n": half * 1000 + n + i}});
                    let path = &fire_path;
                    async move { node.post(path, body).await }
                })
                .collect();
            for r in futures::future::join_all(chunk).await {
                r.expect(202);
                assert_eq!(r.body["enqueuedCount"], 1, "{}", r.text);
                fired.push(r.body["invocationId"].as_str().unwrap().to_string());
            }
            n += size;
        }
        if half == 0 {
            a.kill();
        }
    }
    assert_eq!(fired.len(), 2000);
    assert_eq!(fired.iter().collect::<HashSet<_>>().len(), 2000);

    // Every execution ends (the survivor reclaims the dead node's leases after 2 s).
    let deadline = Instant::now() + Duration::from_secs(120);
    let all = loop {
        let all = executions_of(&b, &t).await;
        if all.len() == 2000
            && all
                .iter()
                .all(|e| e["status"] != "pending" && e["status"] != "running")
        {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "not every execution ended: {} listed, {} open",
            all.len(),
            all.iter()
                .filter(|e| e["status"] == "pending" || e["status"] == "running")
                .count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut reclaimed = 0;
    for e in &all {
        assert_eq!(e["status"], "success", "{e}");
        let marks = step_marks(e);
        assert_eq!(marks.len(), 3, "{e}");
        // A step runs in the attempt that reached it and never again: attempts never go
        // down along the flow, and a step reached in attempt k was not redone later.
        for w in marks.windows(2) {
            assert!(
                w[0].1 <= w[1].1,
                "a later attempt re-ran an earlier step: {e}"
            );
        }
        if marks.iter().any(|m| m.1 > 0) {
            reclaimed += 1;
        }
    }
    assert!(
        reclaimed > 0,
        "the killed node held runs that the survivor finished"
    );

    // The schedule: each occurrence fired once, though both nodes were claiming.
    let runs = executions_of(&b, &sched).await;
    assert!(
        runs.len() >= 2,
        "the schedule fired meanwhile: {}",
        runs.len()
    );
    let mut nominals = HashSet::new();
    for e in &runs {
        let e = wait_exec(
            &b,
            e["id"].as_str().unwrap(),
            Duration::from_secs(15),
            |e| e["status"] != "pending" && e["status"] != "running",
        )
        .await;
        assert_eq!(e["status"], "success", "{e}");
        let nominal = e["result"]["steps"][0]["params"]["items"][0].to_string();
        assert!(
            nominals.insert(nominal.clone()),
            "occurrence {nominal} fired twice"
        );
    }
}

#[tokio::test]
async fn an_abort_on_either_node_stops_a_run_the_other_holds() {
    if skip() {
        return;
    }
    // One worker per node, so who holds what is known: a node whose slot is busy cannot
    // claim, and a node whose slot frees runs the next row at once.
    let args = [&NODE_ARGS[..], &["--workers", "1"]].concat();
    let a = Server::start_with(&args).await;
    let cat = catalog(&a).await;
    let t = custom_trigger(&a, "Abort").await;
    let long = action(&a, &cat, "flow.wait", json!({"seconds": 60})).await;
    let short = action(&a, &cat, "flow.wait", json!({"seconds": 0})).await;
    let long_flow = flow(&a, "Long", &t, &[&long]).await;
    let short_flow = flow(&a, "Short", &custom_trigger(&a, "Short").await, &[&short]).await;
    let running = |e: &Value| e["status"] == "running";

    // A alone: A holds e1.
    let e1 = run_one(&a, &long_flow).await;
    wait_exec(&a, &e1, Duration::from_secs(10), running).await;
    // B joins; A's slot is busy, so B claims e2.
    let b = a.join(&args).await;
    let e2 = run_one(&a, &long_flow).await;
    wait_exec(&a, &e2, Duration::from_secs(10), running).await;

    for (aborter, holder_free_check, id) in [(&b, &a, &e1), (&a, &b, &e2)] {
        let at = Instant::now();
        let r = aborter
            .post(&format!("/v1/executions/{id}/abort"), json!({}))
            .await;
        r.expect(200);
        let e = wait_exec(aborter, id, Duration::from_secs(2), |e| {
            e["status"] == "cancelled"
        })
        .await;
        assert!(e["finishedAt"].is_string(), "{e}");
        // The holder's slot is free again at once: a short run is taken by the holder (the
        // other node's one slot is busy with its own long run) and ends well before the
        // 60 s wait would have.
        let quick = run_one(holder_free_check, &short_flow).await;
        let done = wait_exec(holder_free_check, &quick, Duration::from_secs(5), |e| {
            e["status"] == "success"
        })
        .await;
        assert_eq!(done["status"], "success");
        assert!(
            at.elapsed() < Duration::from_secs(5),
            "the held run was not stopped promptly: {:?}",
            at.elapsed()
        );
        // The aborted row never changes afterwards.
        let again = wait_exec(holder_free_check, id, Duration::from_secs(1), |_| true).await;
        assert_eq!(again["status"], "cancelled");
        assert_eq!(again["finishedAt"], e["finishedAt"]);
        if std::ptr::eq(holder_free_check, &a) {
            // Give A a long run again, so B's slot is the only one that can free up next.
            let e3 = run_one(&a, &long_flow).await;
            wait_exec(&a, &e3, Duration::from_secs(10), running).await;
        }
    }
}
