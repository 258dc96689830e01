//! Scenario `memory`: the server's resident memory idle and with many flows defined.
//!
//! Needs a launched server (it reads `/proc/<pid>/status`), not `--url`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use crate::{Target, rss_kib};

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub async fn run(t: Arc<Target>, flows: usize) -> Result<()> {
    let pid = t
        .server_pid()
        .context("the memory scenario needs a launched server (no --url)")?;
    t.get("/triggers").await?;
    let idle = rss_kib(pid)?;
    println!("scenario memory: {flows} flows");
    println!("  idle RSS: {:.1} MiB", mib(idle));

    let wait = t.catalog_id("flow.wait").await?;
    let trigger = t
        .create(
            "/triggers",
            json!({"name": "bench memory", "activation": "custom"}),
        )
        .await?;
    let action = t
        .create(
            "/actions",
            json!({"name": "pause", "catalogEntryId": wait, "params": {"seconds": 1}}),
        )
        .await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (t, next, trigger, action) = (t.clone(), next.clone(), trigger.clone(), action.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= flows {
                    return Ok::<_, anyhow::Error>(());
                }
                t.post(
                    "/flows",
                    json!({"name": format!("flow {i}"), "triggerId": trigger,
                           "description": "a flow of the memory benchmark",
                           "actions": [{"actionId": action, "position": 0}]}),
                )
                .await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "  created {flows} flows in {took:.1} s ({:.0}/s)",
        flows as f64 / took.max(1e-9)
    );
    println!("  RSS with {flows} flows: {:.1} MiB", mib(rss_kib(pid)?));
    Ok(())
}
