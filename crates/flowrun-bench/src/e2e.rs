//! Scenario `e2e`: fire → a flow of three `webhooks.send` steps → a local HTTP sink.
//!
//! Each client fires the custom trigger with a sequence number in the payload and waits until
//! the sink has received all three steps' deliveries for that number. The figure is the whole
//! path a user pays for: the fire's durable enqueue, the step loop, the durable delivery
//! records, and the signed outbound requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::io::Write;

use anyhow::{Context, Result};
use axum::extract::State;
use serde_json::json;
use tokio::sync::oneshot;

use crate::{KeptConnection, ProcCost, Target, load_average, summary};

/// Completion signals of the runs in flight, by sequence number.
#[derive(Default)]
pub(crate) struct Sink {
    /// Per run: deliveries still to come, and whom to tell when none is left.
    waiting: Mutex<HashMap<u64, (u32, oneshot::Sender<Instant>)>>,
    pub(crate) received: AtomicU64,
}

/// The part of a delivery's envelope the sink reads: `data.payload.seq`, the rest skipped.
#[derive(serde::Deserialize)]
struct Envelope {
    data: EnvelopeData,
}

#[derive(serde::Deserialize)]
struct EnvelopeData {
    payload: Seq,
}

#[derive(serde::Deserialize)]
struct Seq {
    seq: u64,
}

async fn receive(State(sink): State<Arc<Sink>>, body: axum::body::Bytes) -> &'static str {
    sink.received.fetch_add(1, Ordering::Relaxed);
    // A run is done when all three of its deliveries have arrived, in whatever order they
    // went out (the steps' deliveries are attempted concurrently).
    if let Ok(Envelope {
        data: EnvelopeData {
            payload: Seq { seq },
        },
    }) = serde_json::from_slice(&body)
    {
        let mut waiting = sink.waiting.lock().unwrap();
        if let Some((left, _)) = waiting.get_mut(&seq) {
            *left -= 1;
            if *left == 0
                && let Some((_, tx)) = waiting.remove(&seq)
            {
                let _ = tx.send(Instant::now());
            }
        }
    }
    "ok"
}

/// Starts the sink on a free loopback port; returns its URL.
pub(crate) async fn start_sink(sink: Arc<Sink>) -> Result<String> {
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(sink);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/hook"))
}

/// Provisions the endpoint, trigger, three steps and the flow; returns (trigger id, flow id).
pub(crate) async fn provision(t: &Target, sink_url: &str) -> Result<(String, String)> {
    let send = t.catalog_id("webhooks.send").await?;
    let hook = t.create("/webhooks", json!({"url": sink_url})).await?;
    let trigger = t
        .create(
            "/triggers",
            json!({"name": "bench e2e", "activation": "custom"}),
        )
        .await?;
    let mut steps = Vec::new();
    for n in 1..=3 {
        let id = t
            .create(
                "/actions",
                json!({"name": format!("hook {n}"), "catalogEntryId": send,
                       "params": {"webhookId": hook,
                                  "payload": {"seq": "{{event.payload.seq}}", "n": n}}}),
            )
            .await?;
        steps.push(json!({"actionId": id, "position": n - 1}));
    }
    let flow = t
        .create(
            "/flows",
            json!({"name": "bench e2e", "triggerId": trigger, "actions": steps}),
        )
        .await?;
    Ok((trigger, flow))
}

pub async fn run(t: Arc<Target>, concurrency: &[usize], seconds: f64) -> Result<()> {
    let sink = Arc::new(Sink::default());
    let sink_url = start_sink(sink.clone()).await?;
    let (trigger, _) = provision(&t, &sink_url).await?;
    let fire_path = format!("/triggers/{trigger}/fire");
    let seq = Arc::new(AtomicU64::new(0));
    println!("scenario e2e: fire → 3 × webhooks.send → sink, {seconds} s per level");
    for &clients in concurrency {
        let warmup = Duration::from_millis(500);
        let measured = Duration::from_secs_f64(seconds);
        let start = Instant::now();
        let server_pid = t.server_pid();
        let cost_sampler = tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            let before = server_pid.and_then(ProcCost::read);
            let own_before = ProcCost::read(std::process::id());
            tokio::time::sleep(measured).await;
            (
                before.zip(server_pid.and_then(ProcCost::read)),
                own_before.zip(ProcCost::read(std::process::id())),
            )
        });
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (t, sink, seq, fire_path) =
                (t.clone(), sink.clone(), seq.clone(), fire_path.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn = KeptConnection::open(&t, &fire_path).await?;
                let mut lat = Vec::new();
                let mut replies = Vec::new();
                loop {
                    let t0 = Instant::now();
                    let elapsed = t0 - start;
                    if elapsed >= warmup + measured {
                        break;
                    }
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = oneshot::channel();
                    sink.waiting.lock().unwrap().insert(n, (3, tx));
                    conn.body.clear();
                    write!(conn.body, r#"{{"payload":{{"seq":{n}}}}}"#)?;
                    conn.post(None, 202).await?;
                    let replied = Instant::now();
                    let done = tokio::time::timeout(Duration::from_secs(60), rx)
                        .await
                        .context("the run's deliveries did not all arrive within 60 s")??;
                    if elapsed >= warmup {
                        lat.push((done - t0).as_micros() as u64);
                        replies.push((replied - t0).as_micros() as u64);
                    }
                }
                Ok::<_, anyhow::Error>((lat, replies))
            }));
        }
        let mut all = Vec::new();
        let mut replies = Vec::new();
        for task in tasks {
            let (lat, rep) = task.await??;
            all.extend(lat);
            replies.extend(rep);
        }
        let runs = all.len();
        let rate = runs as f64 / measured.as_secs_f64();
        println!("  c={clients}: {rate:.0} runs/s");
        println!(
            "  c={clients} e2e latency (fire sent → last of the three requests at the sink): {}",
            summary(all)
        );
        println!(
            "  c={clients} fire reply (fire sent → 202 read): {}",
            summary(replies)
        );
        let (cost, own_cost) = cost_sampler.await?;
        let n = runs.max(1) as f64;
        if let Some((before, after)) = cost {
            println!(
                "  c={clients} server cost per run: {:.0} µs CPU, {:.1} context switches \
                 (load average {})",
                (after.cpu_ms - before.cpu_ms) * 1000.0 / n,
                ((after.voluntary_switches + after.involuntary_switches)
                    - (before.voluntary_switches + before.involuntary_switches))
                    as f64
                    / n,
                load_average()
            );
        }
        if let Some((before, after)) = own_cost {
            println!(
                "  c={clients} load tool's own cost per run: {:.0} µs CPU (it shares the machine)",
                (after.cpu_ms - before.cpu_ms) * 1000.0 / n,
            );
        }
    }
    println!(
        "  sink received {} requests",
        sink.received.load(Ordering::Relaxed)
    );
    Ok(())
}
