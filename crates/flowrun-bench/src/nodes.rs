//! Scenario `nodes`: runs/s of three-step device-free flows with one, two, … `flowrun serve`
//! processes on one PostgreSQL database.
//!
//! For each node count it creates a fresh database (with `psql`, from the admin URL given as
//! `--database-url`), launches the nodes, provisions through the first one (the others learn
//! the definitions by notification), then clients fire the trigger round-robin over the nodes
//! for the measured time. The flow is the `e2e` one (three `webhooks.send` steps to the tool's
//! sink) or three zero `flow.wait` steps. The figure is completed runs per second: every fired
//! run has ended and, with webhooks, every delivery has reached the sink, counted from the
//! first fire to that moment.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::e2e::{Sink, start_sink};
use crate::{Target, launch};

/// The steps of the measured flow.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum FlowKind {
    /// Three `webhooks.send` steps to the tool's sink.
    Webhooks,
    /// Three `flow.wait` steps of zero seconds.
    Wait,
}

/// A database made for one measurement, dropped afterwards.
struct FreshDb {
    admin: String,
    name: String,
    url: String,
}

impl FreshDb {
    fn create(admin: &str, label: usize) -> Result<FreshDb> {
        let name = format!("flowrun_bench_{}_{label}", std::process::id());
        psql(
            admin,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )?;
        psql(admin, &format!("CREATE DATABASE {name}"))?;
        let (prefix, _) = admin
            .rsplit_once('/')
            .context("a database URL with a path")?;
        Ok(FreshDb {
            admin: admin.to_string(),
            url: format!("{prefix}/{name}"),
            name,
        })
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn psql(url: &str, sql: &str) -> Result<()> {
    let status = Command::new("psql")
        .args([url, "-q", "-c", sql])
        .env("PGOPTIONS", "-c client_min_messages=warning")
        .stdout(Stdio::null())
        .status()
        .context("running psql")?;
    if !status.success() {
        bail!("psql: {sql}");
    }
    Ok(())
}

/// Provisions a custom trigger and a flow of three zero `flow.wait` steps; returns
/// (trigger id, flow id).
async fn provision_waits(t: &Target) -> Result<(String, String)> {
    let wait = t.catalog_id("flow.wait").await?;
    let trigger = t
        .create(
            "/triggers",
            json!({"name": "bench nodes", "activation": "custom"}),
        )
        .await?;
    let mut steps = Vec::new();
    for n in 0..3 {
        let id = t
            .create(
                "/actions",
                json!({"name": format!("step {n}"), "catalogEntryId": wait, "params": {"seconds": 0}}),
            )
            .await?;
        steps.push(json!({"actionId": id, "position": n}));
    }
    let flow = t
        .create(
            "/flows",
            json!({"name": "bench nodes", "triggerId": trigger, "actions": steps}),
        )
        .await?;
    Ok((trigger, flow))
}

fn count(m: &Value, status: &str) -> u64 {
    m["data"]["byStatus"][status].as_u64().unwrap_or(0)
}

pub async fn run(
    admin_url: Option<&str>,
    node_counts: &[usize],
    clients: usize,
    seconds: f64,
    flow_kind: FlowKind,
    serve_args: &[String],
) -> Result<()> {
    let admin = admin_url.filter(|u| u.starts_with("postgres")).context(
        "`nodes` needs --database-url postgres://… (an admin URL; a database is made per run)",
    )?;
    let steps = match flow_kind {
        FlowKind::Webhooks => "3 × webhooks.send → sink",
        FlowKind::Wait => "3 × flow.wait 0",
    };
    println!(
        "scenario nodes: fire → {steps} (no device), {clients} clients, {seconds} s per node count"
    );
    for &n in node_counts {
        let db = FreshDb::create(admin, n)?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .timeout(Duration::from_secs(30))
            .build()?;
        let mut nodes = Vec::new();
        for _ in 0..n.max(1) {
            let (base, process) = launch(Some(db.url.clone()), serve_args)?;
            nodes.push(Arc::new(Target {
                base,
                key: "bench-key".to_string(),
                http: http.clone(),
                server: Some(process),
            }));
        }
        let sink = Arc::new(Sink::default());
        let (trigger, flow) = match flow_kind {
            FlowKind::Webhooks => {
                let sink_url = start_sink(sink.clone()).await?;
                crate::e2e::provision(&nodes[0], &sink_url).await?
            }
            FlowKind::Wait => provision_waits(&nodes[0]).await?,
        };
        let deliveries_per_run = match flow_kind {
            FlowKind::Webhooks => 3,
            FlowKind::Wait => 0,
        };
        // Every node knows the flow before the load starts.
        for t in &nodes {
            let deadline = Instant::now() + Duration::from_secs(10);
            while t.get(&format!("/flows/{flow}")).await.is_err() {
                if Instant::now() > deadline {
                    bail!("a node never saw the flow");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let fired = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let measured = Duration::from_secs_f64(seconds);
        let mut tasks = Vec::new();
        for c in 0..clients {
            let t = nodes[c % nodes.len()].clone();
            let (fired, path) = (fired.clone(), format!("/triggers/{trigger}/fire"));
            tasks.push(tokio::spawn(async move {
                while start.elapsed() < measured {
                    let seq = fired.fetch_add(1, Ordering::Relaxed);
                    t.post(&path, json!({"payload": {"seq": seq}})).await?;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        let fire_time = start.elapsed();
        let metrics = format!("/executions/metrics?triggerId={trigger}");
        let deadline = Instant::now() + Duration::from_secs(300);
        let m = loop {
            let m = nodes[0].get(&metrics).await?;
            let delivered = sink.received.load(Ordering::Relaxed);
            if count(&m, "pending") + count(&m, "running") == 0
                && delivered >= count(&m, "success") * deliveries_per_run
            {
                break m;
            }
            if Instant::now() > deadline {
                bail!("runs still open after 300 s: {m}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let all_done = start.elapsed();
        let fired = fired.load(Ordering::Relaxed);
        let success = count(&m, "success");
        println!(
            "  nodes={n}: {:.0} runs/s ({success} of {fired} fired runs succeeded; fires {:.0}/s over {:.1} s, all ended after {:.1} s)",
            success as f64 / all_done.as_secs_f64(),
            fired as f64 / fire_time.as_secs_f64(),
            fire_time.as_secs_f64(),
            all_done.as_secs_f64(),
        );
        drop(nodes);
        drop(db);
    }
    Ok(())
}
