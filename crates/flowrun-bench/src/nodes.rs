//! Scenario `nodes`: runs/s of three-step device-free flows with one, two, … `flowrun serve`
//! processes on one PostgreSQL database.
//!
//! For each node count it creates a fresh database (with `psql`, from the admin URL given as
//! `--database-url`), launches the nodes, provisions through the first one (the others learn
//! the definitions by notification), then clients fire the trigger round-robin over the nodes
//! for the measured time. The figure is completed runs per second: every fired run has ended,
//! counted from the first fire to the moment none is pending or running.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{Target, launch};

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
async fn provision(t: &Target) -> Result<(String, String)> {
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
    serve_args: &[String],
) -> Result<()> {
    let admin = admin_url.filter(|u| u.starts_with("postgres")).context(
        "`nodes` needs --database-url postgres://… (an admin URL; a database is made per run)",
    )?;
    println!(
        "scenario nodes: fire → 3 × flow.wait 0 (no device), {clients} clients, {seconds} s per node count"
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
        let (trigger, flow) = provision(&nodes[0]).await?;
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
                    t.post(&path, json!({"payload": {}})).await?;
                    fired.fetch_add(1, Ordering::Relaxed);
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
            if count(&m, "pending") + count(&m, "running") == 0 {
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
