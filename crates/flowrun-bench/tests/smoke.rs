//! The load tool runs end to end with small numbers (it launches the `flowrun` binary built
//! next to it, provisions through the API and prints its figures).

use std::process::Command;

fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_flowrun-bench"))
        .args(args)
        .output()
        .expect("run flowrun-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "flowrun-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn ingest_scenario_reports_throughput_and_latency() {
    let out = bench(&["ingest", "--clients", "4", "--seconds", "0.5"]);
    assert!(out.contains("machine: "), "{out}");
    assert!(out.contains("events/s"), "{out}");
    assert!(out.contains("p99"), "{out}");
}

#[test]
fn abort_scenario_reports_latencies() {
    let out = bench(&["abort", "--runs", "3"]);
    assert!(out.contains("abort reply: p50"), "{out}");
    assert!(out.contains("(n = 3)"), "{out}");
}

#[test]
fn e2e_scenario_reports_runs_and_latency_per_level() {
    let out = bench(&["e2e", "--clients", "1,2", "--seconds", "0.5"]);
    assert!(out.contains("c=1: "), "{out}");
    assert!(out.contains("c=2 e2e latency"), "{out}");
    assert!(out.contains("runs/s"), "{out}");
}

#[test]
fn schedules_scenario_reports_lateness_and_idle_cpu() {
    let out = bench(&[
        "schedules",
        "--schedules",
        "30",
        "--fires",
        "3",
        "--window",
        "2",
    ]);
    assert!(out.contains("idle CPU"), "{out}");
    assert!(out.contains("lateness"), "{out}");
    assert!(out.contains("(n = 3)"), "{out}");
}

#[test]
fn memory_scenario_reports_rss() {
    let out = bench(&["memory", "--flows", "50"]);
    assert!(out.contains("idle RSS"), "{out}");
    assert!(out.contains("RSS with 50 flows"), "{out}");
}

#[test]
fn nodes_scenario_reports_runs_per_node_count_on_postgres() {
    let Ok(admin) = std::env::var("FLOWRUN_TEST_DATABASE_URL") else {
        eprintln!("the nodes scenario needs FLOWRUN_TEST_DATABASE_URL (PostgreSQL); skipped");
        return;
    };
    let out = bench(&[
        "--database-url",
        &admin,
        "nodes",
        "--nodes",
        "1,2",
        "--clients",
        "4",
        "--seconds",
        "0.5",
    ]);
    assert!(out.contains("nodes=1: "), "{out}");
    assert!(out.contains("nodes=2: "), "{out}");
    assert!(out.contains("runs/s"), "{out}");
}
