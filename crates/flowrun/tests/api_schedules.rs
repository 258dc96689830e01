//! The scheduler through the API (§5.3): `once`, 6-field cron and RRULE triggers fire their
//! executions on time, once; `nextFireTime` follows; a trigger update reschedules at once;
//! after a stop across occurrences the latest one fires and the others are recorded
//! `skipped` / `missed`.
//!
//! Waiting for wall-clock occurrences is the point here, so tests sleep until those instants;
//! everything else polls with a deadline. Lateness = an execution's `startedAt` minus its
//! occurrence's nominal time (read back from the run through `{{schedule.nominalTime}}`), so
//! it covers the scheduler, the enqueue commit and the dispatcher's claim. Run with
//! `--nocapture` to see the figures.
//!
//! Note: the issue asks for an RRULE `FREQ=SECONDLY;INTERVAL=2`, which the contract rejects
//! (§5.3: `FREQ=SECONDLY` → 422 `invalid_rrule`, checked below); the every-two-seconds cases
//! use the 6-field cron `*/2 * * * * *` and the RRULE `FREQ=MINUTELY;BYSECOND=0,2,…,58`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Server;
use serde_json::{Value, json};

const TRIGGER: &str = "workflows.trigger_retrieve_response.TriggerRetrieveResponse";
const LIST: &str = "workflows.execution_list_response.ExecutionListResponse";
/// Lateness the tests accept (the scheduler aims at a few ms).
const MAX_LATE_MS: i64 = 500;

// ---------------------------------------------------------------------------------------------
// Helpers

struct Kit {
    s: Server,
    cat: HashMap<String, String>,
}

impl Kit {
    async fn start() -> Kit {
        Self::with(Server::start().await).await
    }

    async fn with(s: Server) -> Kit {
        let cat = s.catalog_ids().await;
        Kit { s, cat }
    }

    async fn action(&self, method: &str, name: &str, params: Value) -> String {
        let r = self
            .s
            .post(
                "/v1/actions",
                json!({"catalogEntryId": self.cat[method], "name": name, "params": params}),
            )
            .await;
        r.expect(201);
        r.id()
    }

    /// A device-free flow on `trigger` whose one step records the schedule root: a
    /// `flow.for_each` over `[nominalTime, fireTime, event.receivedAt, source, triggerId]`
    /// (its resolved `items` param shows them) with a zero wait inside.
    async fn recording_flow(&self, trigger: &str) -> String {
        let each = self
            .action(
                "flow.for_each",
                "Schedule root",
                json!({"items": [
                    "{{schedule.nominalTime}}",
                    "{{schedule.fireTime}}",
                    "{{event.receivedAt}}",
                    "{{source}}",
                    "{{schedule.triggerId}}"
                ], "maxIterations": 1}),
            )
            .await;
        let zero = self
            .action("flow.wait", "Wait zero", json!({"seconds": 0}))
            .await;
        let r = self
            .s
            .post(
                "/v1/flows",
                json!({"name": format!("On {trigger}"), "triggerId": trigger, "actions": [
                    {"actionId": each, "position": 0, "key": "root",
                     "children": [{"actionId": zero, "position": 0, "key": "w"}]}
                ]}),
            )
            .await;
        r.expect(201);
        r.id()
    }

    async fn trigger(&self, body: Value) -> Value {
        let r = self.s.post("/v1/triggers", body).await;
        r.expect(201)
            .schema("workflows.trigger_create_response.TriggerCreateResponse");
        r.data().clone()
    }

    async fn get_trigger(&self, id: &str) -> Value {
        let r = self.s.get(&format!("/v1/triggers/{id}")).await;
        r.expect(200).schema(TRIGGER);
        r.data().clone()
    }

    /// Polls the trigger until `pred` holds (`nextFireTime` is written just after the runs
    /// of a pass commit).
    async fn wait_trigger(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let t = self.get_trigger(id).await;
            if pred(&t) {
                return t;
            }
            assert!(Instant::now() < deadline, "trigger {id}: {t}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every execution of the trigger, oldest first.
    async fn executions(&self, trigger: &str) -> Vec<Value> {
        let r = self
            .s
            .get(&format!(
                "/v1/executions?triggerId={trigger}&pageSize=100&orderByDirection=asc"
            ))
            .await;
        r.expect(200).schema(LIST);
        r.body["items"].as_array().unwrap().clone()
    }

    async fn execution(&self, id: &str) -> Value {
        let r = self.s.get(&format!("/v1/executions/{id}")).await;
        r.expect(200);
        r.data().clone()
    }

    /// Polls the trigger's executions until `pred` holds on them.
    async fn wait_executions(
        &self,
        trigger: &str,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let list = self.executions(trigger).await;
            if pred(&list) {
                return list;
            }
            assert!(
                Instant::now() < deadline,
                "executions of {trigger} did not reach the expected state; last: {list:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the execution is terminal and returns the full record.
    async fn done(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let e = self.execution(id).await;
            if !["pending", "running"].contains(&e["status"].as_str().unwrap()) {
                return e;
            }
            assert!(Instant::now() < deadline, "execution {id} never ended: {e}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What a successful scheduled run recorded.
#[derive(Clone, Copy, Debug)]
struct Fired {
    nominal: i64,
    fire: i64,
    started: i64,
}

impl Fired {
    fn late(&self) -> i64 {
        self.started - self.nominal
    }
}

/// Checks a successful scheduled run of `trigger` and reads its schedule root.
fn fired(e: &Value, trigger: &str) -> Fired {
    assert_eq!(e["status"], "success", "{e}");
    assert!(e["eventId"].is_null(), "{e}");
    assert!(e["invocationId"].is_null(), "{e}");
    assert!(e["deviceId"].is_null(), "{e}");
    assert_eq!(e["kind"], "live");
    assert_eq!(e["triggerId"], trigger);
    let items = &e["result"]["steps"][0]["params"]["items"];
    let nominal = ms(&items[0]);
    let fire = ms(&items[1]);
    assert_eq!(items[2], items[1], "event.receivedAt is the fire instant");
    assert_eq!(items[3], "schedule");
    assert_eq!(items[4], trigger);
    Fired {
        nominal,
        fire,
        started: ms(&e["startedAt"]),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Sleeps until the wall clock reaches `at` (ms since the epoch).
async fn sleep_until_ms(at: i64) {
    let wait = at - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// Milliseconds since the epoch of an output timestamp (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
fn ms(v: &Value) -> i64 {
    let s = str_of(v);
    assert!(
        s.len() == 24 && s.ends_with('Z') && &s[19..20] == ".",
        "timestamp format: {s}"
    );
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    days_from_civil(n(0, 4), n(5, 7), n(8, 10)) * 86_400_000
        + n(11, 13) * 3_600_000
        + n(14, 16) * 60_000
        + n(17, 19) * 1000
        + n(20, 23)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `(y, m, d, hh, mm, ss)` in UTC of a whole-second instant.
fn parts(ms: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    (
        y,
        m,
        d,
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
    )
}

/// RFC 3339 with milliseconds, as the API writes it.
fn rfc3339(ms: i64) -> String {
    let (y, m, d, hh, mm, ss) = parts(ms);
    format!(
        "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:03}Z",
        ms.rem_euclid(1000)
    )
}

/// The iCalendar UTC form `YYYYMMDDTHHMMSSZ`.
fn ical(ms: i64) -> String {
    let (y, m, d, hh, mm, ss) = parts(ms);
    format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z")
}

/// The first whole second at least `ahead_ms` from now.
fn second_after(ahead_ms: i64) -> i64 {
    (now_ms() + ahead_ms + 999) / 1000 * 1000
}

fn report(label: &str, runs: &[Fired]) {
    let lates: Vec<i64> = runs.iter().map(Fired::late).collect();
    println!("lateness {label}: {lates:?} ms (startedAt − nominal)");
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn once_fires_on_time_then_reports_no_next_fire() {
    let k = Kit::start().await;
    let at = second_after(2_000);
    let t = k
        .trigger(json!({"activation": "schedule", "name": "Once",
                        "scheduleRule": {"type": "once", "dateTime": rfc3339(at)}}))
        .await;
    let id = t["id"].as_str().unwrap().to_string();
    assert_eq!(t["nextFireTime"], rfc3339(at));
    k.recording_flow(&id).await;
    assert_eq!(k.get_trigger(&id).await["nextFireTime"], rfc3339(at));

    let list = k
        .wait_executions(&id, Duration::from_secs(10), |l| !l.is_empty())
        .await;
    let e = k.done(str_of(&list[0]["id"])).await;
    let f = fired(&e, &id);
    report("once", std::slice::from_ref(&f));
    assert_eq!(f.nominal, at);
    assert_eq!(f.fire, at);
    assert!(
        (0..MAX_LATE_MS).contains(&f.late()),
        "started {} ms after the nominal time",
        f.late()
    );
    k.wait_trigger(&id, |t| t["nextFireTime"].is_null()).await;
    // Once means once: nothing more, and the trigger stays exhausted.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(k.executions(&id).await.len(), 1);
    assert_eq!(k.get_trigger(&id).await["nextFireTime"], Value::Null);

    // A `dateTime` already past never fires.
    let past = k
        .trigger(json!({"activation": "schedule", "name": "Past",
                        "scheduleRule": {"type": "once", "dateTime": rfc3339(now_ms() - 1_000)}}))
        .await;
    assert_eq!(past["nextFireTime"], Value::Null);
    let past_id = past["id"].as_str().unwrap().to_string();
    k.recording_flow(&past_id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(k.executions(&past_id).await.is_empty());
}

#[tokio::test]
async fn every_two_seconds_by_cron_and_by_rrule_fire_each_occurrence_on_time() {
    let k = Kit::start().await;
    // §5.3: FREQ=SECONDLY is refused.
    let r =
        k.s.post(
            "/v1/triggers",
            json!({"activation": "schedule", "name": "Secondly", "timezone": "UTC",
                   "scheduleRule": {"type": "recurring", "rrule": "FREQ=SECONDLY;INTERVAL=2"}}),
        )
        .await;
    r.expect_error(422, "validation_failed");
    assert_eq!(r.error_codes(), ["invalid_rrule"], "{}", r.text);

    let even: Vec<String> = (0..60).step_by(2).map(|s| s.to_string()).collect();
    let rules = [
        (
            "cron",
            json!({"type": "cron", "expression": "*/2 * * * * *"}),
            "Europe/Berlin",
        ),
        (
            "rrule",
            json!({"type": "recurring",
                   "rrule": format!("RRULE:FREQ=MINUTELY;BYSECOND={}", even.join(","))}),
            "America/New_York",
        ),
    ];
    let mut triggers = Vec::new();
    for (label, rule, zone) in rules {
        let t = k
            .trigger(
                json!({"activation": "schedule", "name": label, "timezone": zone,
                            "scheduleRule": rule}),
            )
            .await;
        let id = t["id"].as_str().unwrap().to_string();
        let created = ms(&t["createdAt"]);
        let next = ms(&t["nextFireTime"]);
        assert_eq!(next % 2_000, 0, "{label}: an even second");
        assert!(next > created && next <= created + 2_000, "{label}: {t}");
        k.recording_flow(&id).await;
        triggers.push((label, id, created));
    }

    for (label, id, created) in &triggers {
        let list = k
            .wait_executions(id, Duration::from_secs(15), |l| l.len() >= 3)
            .await;
        let mut runs = Vec::new();
        for e in &list[..3] {
            runs.push(fired(&k.done(str_of(&e["id"])).await, id));
        }
        report(label, &runs);
        assert!(
            runs[0].nominal > *created,
            "{label}: nothing before createdAt"
        );
        for (i, f) in runs.iter().enumerate() {
            assert_eq!(f.nominal % 2_000, 0, "{label}: {f:?}");
            assert_eq!(f.fire, f.nominal, "{label}: no jitter");
            assert!(
                (0..MAX_LATE_MS).contains(&f.late()),
                "{label}: run {i} started {} ms after its nominal time",
                f.late()
            );
            if i > 0 {
                assert_eq!(
                    f.nominal - runs[i - 1].nominal,
                    2_000,
                    "{label}: every occurrence once, in order"
                );
            }
        }
        // nextFireTime moves along with the runs.
        let t = k
            .wait_trigger(id, |t| ms(&t["nextFireTime"]) > runs[2].nominal)
            .await;
        assert_eq!(ms(&t["nextFireTime"]) % 2_000, 0, "{label}");
    }

    // Changing the rule reschedules at once: the cron trigger becomes a `once` far away and
    // stops firing, the RRULE trigger becomes a custom trigger and loses its schedule.
    let (_, cron_id, _) = &triggers[0];
    let (_, rrule_id, _) = &triggers[1];
    let far = second_after(3_600_000);
    let r =
        k.s.patch(
            &format!("/v1/triggers/{cron_id}"),
            json!({"scheduleRule": {"type": "once", "dateTime": rfc3339(far)}}),
        )
        .await;
    r.expect(200);
    assert_eq!(r.data()["nextFireTime"], rfc3339(far));
    let r =
        k.s.patch(
            &format!("/v1/triggers/{rrule_id}"),
            json!({"activation": "custom"}),
        )
        .await;
    r.expect(200);
    assert_eq!(r.data()["nextFireTime"], Value::Null);
    // Let any run enqueued before the change finish, then count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = [
        k.executions(cron_id).await.len(),
        k.executions(rrule_id).await.len(),
    ];
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    assert_eq!(k.executions(cron_id).await.len(), before[0], "cron stopped");
    assert_eq!(
        k.executions(rrule_id).await.len(),
        before[1],
        "rrule stopped"
    );
    assert_eq!(k.get_trigger(cron_id).await["nextFireTime"], rfc3339(far));
    assert_eq!(k.get_trigger(rrule_id).await["nextFireTime"], Value::Null);
}

#[tokio::test]
async fn an_rrule_with_dtstart_and_count_fires_once_on_time() {
    let k = Kit::start().await;
    let at = second_after(2_000);
    let t = k
        .trigger(
            json!({"activation": "schedule", "name": "Count", "timezone": "Australia/Lord_Howe",
                        "scheduleRule": {"type": "recurring",
                            "rrule": format!("DTSTART:{}\nRRULE:FREQ=DAILY;COUNT=1", ical(at))}}),
        )
        .await;
    let id = t["id"].as_str().unwrap().to_string();
    assert_eq!(t["nextFireTime"], rfc3339(at));
    k.recording_flow(&id).await;
    let list = k
        .wait_executions(&id, Duration::from_secs(10), |l| !l.is_empty())
        .await;
    let f = fired(&k.done(str_of(&list[0]["id"])).await, &id);
    report("rrule count", std::slice::from_ref(&f));
    assert_eq!(f.nominal, at);
    assert!((0..MAX_LATE_MS).contains(&f.late()), "{f:?}");
    k.wait_trigger(&id, |t| t["nextFireTime"].is_null()).await;
}

#[tokio::test]
async fn a_moved_once_fires_at_its_new_time_only() {
    let k = Kit::start().await;
    let first = second_after(2_000);
    let t = k
        .trigger(json!({"activation": "schedule", "name": "Moved",
                        "scheduleRule": {"type": "once", "dateTime": rfc3339(first)}}))
        .await;
    let id = t["id"].as_str().unwrap().to_string();
    k.recording_flow(&id).await;
    let moved = first + 2_000;
    let r =
        k.s.patch(
            &format!("/v1/triggers/{id}"),
            json!({"scheduleRule": {"type": "once", "dateTime": rfc3339(moved)}}),
        )
        .await;
    r.expect(200);
    assert_eq!(r.data()["nextFireTime"], rfc3339(moved));
    // A PATCH that does not touch the schedule keeps it.
    let r =
        k.s.patch(
            &format!("/v1/triggers/{id}"),
            json!({"name": "Moved again"}),
        )
        .await;
    r.expect(200);
    assert_eq!(r.data()["nextFireTime"], rfc3339(moved));

    sleep_until_ms(first + 500).await;
    assert!(
        k.executions(&id).await.is_empty(),
        "the old time does not fire"
    );
    let list = k
        .wait_executions(&id, Duration::from_secs(10), |l| !l.is_empty())
        .await;
    let f = fired(&k.done(str_of(&list[0]["id"])).await, &id);
    report("moved once", std::slice::from_ref(&f));
    assert_eq!(f.nominal, moved);
    assert!((0..MAX_LATE_MS).contains(&f.late()), "{f:?}");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(k.executions(&id).await.len(), 1);

    // A deleted schedule trigger (its flow archived first) is gone for good.
    let gone = k
        .trigger(json!({"activation": "schedule", "name": "Gone",
                        "scheduleRule": {"type": "once", "dateTime": rfc3339(second_after(1_000))}}))
        .await;
    let gone_id = gone["id"].as_str().unwrap();
    k.s.delete(&format!("/v1/triggers/{gone_id}"))
        .await
        .expect(200);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    k.s.get(&format!("/v1/triggers/{gone_id}"))
        .await
        .expect(404);
}

#[tokio::test]
async fn after_a_stop_the_latest_missed_occurrence_fires_and_the_others_are_recorded() {
    let k = Kit::start().await;
    let t = k
        .trigger(
            json!({"activation": "schedule", "name": "Across a stop", "timezone": "UTC",
                        "scheduleRule": {"type": "cron", "expression": "*/2 * * * * *"}}),
        )
        .await;
    let id = t["id"].as_str().unwrap().to_string();
    let flow = k.recording_flow(&id).await;
    let before = k
        .wait_executions(&id, Duration::from_secs(10), |l| {
            l.iter().any(|e| e["status"] == "success")
        })
        .await;
    // Stop right after an occurrence ran (and its pass was recorded: nextFireTime moved on)
    // and stay down across two more.
    let last_before = before.iter().filter(|e| e["status"] == "success").count();
    assert!(last_before >= 1);
    let last = before.iter().rfind(|e| e["status"] == "success").unwrap();
    let last_nominal = fired(&k.done(str_of(&last["id"])).await, &id).nominal;
    k.wait_trigger(&id, |t| ms(&t["nextFireTime"]) > last_nominal)
        .await;
    let Kit { mut s, .. } = k;
    s.kill();
    let killed_at = now_ms();
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    let k = Kit::with(s.restart().await).await;
    let restarted_at = now_ms();

    // Everything recorded before the stop, then the catch-up pass, then on time again.
    let list = k
        .wait_executions(&id, Duration::from_secs(10), |l| {
            l.iter().filter(|e| e["status"] == "success").count() >= last_before + 2
        })
        .await;
    let mut successes = Vec::new();
    let mut missed = Vec::new();
    for e in &list {
        // A run interrupted by the kill is resumed after the restart.
        let e = k.done(str_of(&e["id"])).await;
        match str_of(&e["status"]) {
            "success" => successes.push(fired(&e, &id)),
            "skipped" => missed.push(e.clone()),
            other => panic!("unexpected status {other}: {e}"),
        }
    }
    successes.sort_by_key(|f| f.nominal);
    // Before the stop: consecutive even seconds, each on time.
    let pre: Vec<&Fired> = successes.iter().filter(|f| f.nominal < killed_at).collect();
    let post: Vec<&Fired> = successes
        .iter()
        .filter(|f| f.nominal >= killed_at)
        .collect();
    assert!(!pre.is_empty() && post.len() >= 2, "{successes:?}");
    let last_pre = pre.last().unwrap().nominal;
    let catch_up = post[0];
    // The catch-up run is the latest occurrence that was due when the server came back …
    assert!(catch_up.nominal <= restarted_at, "{catch_up:?}");
    assert!(
        catch_up.nominal + 2_000 > catch_up.started - MAX_LATE_MS,
        "{catch_up:?}"
    );
    // … and every occurrence between the last run and it is recorded missed, once.
    let expected_missed = ((catch_up.nominal - last_pre) / 2_000 - 1) as usize;
    assert!(expected_missed >= 1, "the stop spanned occurrences");
    assert_eq!(missed.len(), expected_missed, "{list:?}");
    for m in &missed {
        assert_eq!(m["error"], "missed", "{m}");
        assert!(m["deviceId"].is_null(), "{m}");
        assert!(m["startedAt"].is_null(), "{m}");
        assert!(m["eventId"].is_null() && m["invocationId"].is_null(), "{m}");
        assert_eq!(m["flowId"], flow.as_str());
        assert_eq!(m["kind"], "live");
        let finished = ms(&m["finishedAt"]);
        assert!(
            finished > killed_at && finished <= catch_up.started + 1_000,
            "recorded by the catch-up pass: {m}"
        );
    }
    // After the catch-up: on time again, every occurrence once.
    for w in successes.windows(2) {
        assert!(
            w[1].nominal > w[0].nominal,
            "no occurrence twice: {successes:?}"
        );
    }
    for w in post.windows(2) {
        assert_eq!(w[1].nominal - w[0].nominal, 2_000, "{post:?}");
    }
    for f in &post[1..] {
        assert!((0..MAX_LATE_MS).contains(&f.late()), "{f:?}");
    }
    report(
        "before the stop",
        &pre.iter().map(|f| **f).collect::<Vec<_>>(),
    );
    println!(
        "catch-up: nominal {} fired {} ms late; {} missed recorded",
        rfc3339(catch_up.nominal),
        catch_up.late(),
        missed.len()
    );
    report(
        "after the stop",
        &post[1..].iter().map(|f| **f).collect::<Vec<_>>(),
    );
}
