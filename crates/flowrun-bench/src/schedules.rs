//! Scenario `schedules`: fire lateness and idle CPU with many schedule triggers defined.
//!
//! Most triggers are daily crons whose time of day is half a day away, so they load the
//! scheduler's index without firing during the run. `fires` more are `once` triggers at
//! whole-second instants spread over a window, each bound to its own one-step flow; lateness
//! is each run's `startedAt` minus its nominal instant (the spec's precision is one second, the
//! store's timestamps are milliseconds). Idle CPU is the server's own CPU time over a quiet
//! period with every trigger defined.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, SubsecRound, Timelike, Utc};
use serde_json::{Value, json};

use crate::{Target, process_cpu_seconds, summary};

/// Runs `count` creations on `clients` concurrent tasks; returns the ids in order.
async fn create_many<F>(
    t: &Arc<Target>,
    count: usize,
    clients: usize,
    body: F,
) -> Result<Vec<String>>
where
    F: Fn(usize) -> (String, Value) + Send + Sync + 'static,
{
    let body = Arc::new(body);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (t, body, next) = (t.clone(), body.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let (path, b) = body(i);
                let r = t.post(&path, b).await?;
                let id = r["data"]["id"].as_str().context("created id")?.to_string();
                made.push((i, id));
            }
            Ok::<_, anyhow::Error>(made)
        }));
    }
    let mut all = Vec::with_capacity(count);
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort_unstable();
    Ok(all.into_iter().map(|(_, id)| id).collect())
}

pub async fn run(t: Arc<Target>, schedules: usize, fires: usize, window: f64) -> Result<()> {
    if fires == 0 || fires > schedules {
        bail!("--fires must be between 1 and --schedules");
    }
    let background = schedules - fires;
    let far_hour = (Utc::now().hour() + 12) % 24;
    let t0 = Instant::now();
    create_many(&t, background, 32, move |i| {
        let expr = format!("{} {far_hour} * * *", i % 60);
        (
            "/triggers".into(),
            json!({"name": format!("daily {i}"), "activation": "schedule", "timezone": "UTC",
                   "scheduleRule": {"type": "cron", "expression": expr}}),
        )
    })
    .await?;
    let provision = t0.elapsed();
    println!(
        "scenario schedules: {schedules} schedule triggers ({background} daily crons, {fires} once triggers over {window} s)"
    );
    println!(
        "  provisioned {background} triggers in {:.1} s ({:.0}/s)",
        provision.as_secs_f64(),
        background as f64 / provision.as_secs_f64().max(1e-9)
    );

    if let Some(pid) = t.server_pid() {
        let quiet = Duration::from_secs(5);
        let before = process_cpu_seconds(pid)?;
        tokio::time::sleep(quiet).await;
        let used = process_cpu_seconds(pid)? - before;
        println!(
            "  idle CPU with every trigger defined: {:.2} % of one core ({:.1} ms over {} s)",
            used / quiet.as_secs_f64() * 100.0,
            used * 1000.0,
            quiet.as_secs()
        );
    }

    // The measured triggers: whole-second instants from 5 s ahead, spread over the window.
    let wait = t.catalog_id("flow.wait").await?;
    let action = t
        .create(
            "/actions",
            json!({"name": "no wait", "catalogEntryId": wait, "params": {"seconds": 0}}),
        )
        .await?;
    let first = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(5);
    let nominal: Vec<DateTime<Utc>> = (0..fires)
        .map(|i| first + chrono::Duration::seconds((i as f64 * window / fires as f64) as i64))
        .collect();
    let at = nominal.clone();
    let triggers = create_many(&t, fires, 16, move |i| {
        (
            "/triggers".into(),
            json!({"name": format!("once {i}"), "activation": "schedule",
                   "scheduleRule": {"type": "once",
                                    "dateTime": at[i].to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}}),
        )
    })
    .await?;
    let bound = triggers.clone();
    create_many(&t, fires, 16, move |i| {
        (
            "/flows".into(),
            json!({"name": format!("once {i}"), "triggerId": bound[i],
                   "actions": [{"actionId": action, "position": 0}]}),
        )
    })
    .await?;
    if Utc::now() >= first {
        bail!("provisioning the measured triggers took longer than their 5 s lead");
    }

    let last = *nominal.last().unwrap();
    let until = last + chrono::Duration::seconds(3);
    let pause = (until - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(pause).await;

    let mut late = Vec::new();
    let mut missing = 0;
    for (trigger, nominal) in triggers.iter().zip(&nominal) {
        let mut started = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while started.is_none() && Instant::now() < deadline {
            let list = t.get(&format!("/executions?triggerId={trigger}")).await?;
            started = list["items"][0]["startedAt"]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok());
            if started.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        match started {
            Some(s) => {
                let us = (s.with_timezone(&Utc) - *nominal)
                    .num_microseconds()
                    .unwrap_or(0);
                late.push(us.max(0) as u64);
            }
            None => missing += 1,
        }
    }
    println!(
        "  lateness (nominal instant → execution startedAt): {}",
        summary(late)
    );
    if missing > 0 {
        bail!("{missing} of {fires} once triggers produced no started execution");
    }
    Ok(())
}
