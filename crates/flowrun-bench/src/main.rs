//! flowrun-bench: the load tool behind BENCHMARKS.md.
//!
//! It starts from nothing: launches a `flowrun serve` (the binary next to this one, on a
//! fresh SQLite file, or `--database-url`) or targets a running server (`--url`, `--key`),
//! provisions what a scenario needs through the public API, drives load and prints throughput
//! and latency percentiles together with a description of the machine and the build.
//!
//! Scenarios:
//! - `ingest`: accepted events per second and accept latency (`POST /events/ingest`).
//! - `abort`: abort latency: the abort reply, and the time until the next run waiting for
//!   the same device starts (the aborted step has really stopped and released the device).
//! - `e2e`: fire → a flow of three `webhooks.send` steps → a local sink (`e2e.rs`).
//! - `schedules`: fire lateness and idle CPU with many schedule triggers (`schedules.rs`).
//! - `memory`: resident memory idle and with many flows defined (`memory.rs`).
//! - `nodes`: runs/s with one and more nodes on one PostgreSQL database (`nodes.rs`).

mod e2e;
mod memory;
mod nodes;
mod schedules;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "flowrun-bench",
    about = "Load scenarios against a flowrun server"
)]
struct Cli {
    /// Target a running server instead of launching one.
    #[arg(long)]
    url: Option<String>,
    /// API key for `--url`.
    #[arg(long, default_value = "bench-key")]
    key: String,
    /// Database of the launched server (default: a fresh SQLite file in a temp dir).
    #[arg(long)]
    database_url: Option<String>,
    /// Extra arguments for the launched `flowrun serve`.
    #[arg(long, allow_hyphen_values = true, num_args = 1..)]
    serve_arg: Vec<String>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Accepted events/s and accept latency.
    Ingest {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Measured seconds (after one second of warm-up).
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Send a fresh `Idempotency-Key` with every event, as the SDK does.
        #[arg(long)]
        idempotency_key: bool,
        /// Define an event trigger on the ingested type (its condition never passes), so every
        /// event is also read back and evaluated by the router.
        #[arg(long)]
        with_trigger: bool,
    },
    /// Abort latency of a running step.
    Abort {
        #[arg(long, default_value_t = 200)]
        runs: usize,
    },
    /// Fire → 3 × webhooks.send → sink: runs/s and end-to-end latency per concurrency level.
    E2e {
        /// Concurrency levels, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        /// Measured seconds per level (after half a second of warm-up).
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Fire lateness and idle CPU with many schedule triggers defined.
    Schedules {
        /// Schedule triggers in all.
        #[arg(long, default_value_t = 100_000)]
        schedules: usize,
        /// How many of them are measured `once` triggers.
        #[arg(long, default_value_t = 200)]
        fires: usize,
        /// Seconds over which the measured triggers fire.
        #[arg(long, default_value_t = 20.0)]
        window: f64,
    },
    /// Resident memory idle and with many flows defined.
    Memory {
        #[arg(long, default_value_t = 100_000)]
        flows: usize,
    },
    /// Runs/s of 3-step flows with 1, 2, … nodes on one PostgreSQL (`--database-url` = admin URL).
    Nodes {
        /// Node counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        nodes: Vec<usize>,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Seconds of firing per node count.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// The flow's steps: `webhooks` (3 × webhooks.send to the tool's sink, as in `e2e`)
        /// or `wait` (3 × flow.wait 0, no outbound requests).
        #[arg(long, default_value = "webhooks")]
        flow: nodes::FlowKind,
    },
}

struct Target {
    base: String,
    key: String,
    http: reqwest::Client,
    server: Option<ServerProcess>,
}

struct ServerProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Target {
    /// The launched server's process id (None with `--url`).
    fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(|s| s.child.id())
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}/v1{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// POSTs a new object; returns its `data.id`.
    async fn create(&self, path: &str, body: Value) -> Result<String> {
        let r = self.post(path, body).await?;
        r["data"]["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("{path}: no data.id in the answer"))
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn catalog_id(&self, method: &str) -> Result<String> {
        let list = self.get("/action-catalog?pageSize=100").await?;
        list["items"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["method"] == method))
            .and_then(|e| e["id"].as_str())
            .map(str::to_string)
            .context("catalog entry")
    }
}

fn launch(database_url: Option<String>, extra: &[String]) -> Result<(String, ServerProcess)> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("flowrun");
    let dir = tempfile::tempdir()?;
    let db = database_url.unwrap_or_else(|| dir.path().join("bench.db").display().to_string());
    let mut child = Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db])
        .args(["--api-key", "bench-key", "--flow-rate-limit", "0"])
        // The e2e scenario's sink listens on loopback.
        .args(["--allow-private-targets"])
        .args(extra)
        .env("FLOWRUN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("flowrun listening on ") {
            let url = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            std::thread::spawn(move || for _ in lines {});
            return Ok((url, ServerProcess { child, _dir: dir }));
        }
    }
    bail!("the server exited before listening")
}

/// CPU time (user + system) a process has used so far, in seconds.
fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').context("/proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// Resident set size of a process in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")
}

/// CPU time and context switches of a launched server, read from `/proc` (Linux): the
/// load-independent cost figures, unlike wall-clock throughput on a shared machine.
#[derive(Clone, Copy, Default)]
struct ProcCost {
    cpu_ms: f64,
    voluntary_switches: u64,
    involuntary_switches: u64,
}

impl ProcCost {
    fn read(pid: u32) -> Option<ProcCost> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let mut cost = ProcCost {
            cpu_ms: ticks * 1000.0 / hz,
            ..ProcCost::default()
        };
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            for line in status.lines() {
                let num = |l: &str| {
                    l.split(':')
                        .nth(1)
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                };
                if line.starts_with("voluntary_ctxt_switches") {
                    cost.voluntary_switches += num(line);
                } else if line.starts_with("nonvoluntary_ctxt_switches") {
                    cost.involuntary_switches += num(line);
                }
            }
        }
        Some(cost)
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Percentiles of latencies in microseconds.
fn summary(mut us: Vec<u64>) -> String {
    if us.is_empty() {
        return "no samples".into();
    }
    us.sort_unstable();
    let p = |q: f64| us[((us.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0;
    format!(
        "p50 {:.3} ms  p95 {:.3} ms  p99 {:.3} ms  max {:.3} ms  (n = {})",
        p(0.50),
        p(0.95),
        p(0.99),
        *us.last().unwrap() as f64 / 1000.0,
        us.len()
    )
}

fn describe_machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    format!(
        "{cpus} CPUs ({model}), {build} build, flowrun-bench {}",
        env!("CARGO_PKG_VERSION")
    )
}

/// One client of the ingest and e2e scenarios: a kept-alive HTTP/1.1 connection of its own,
/// with the request line's URI and the headers built once. The load tool shares the machine
/// with the server, so its CPU per request is taken from the server's throughput: a pooled
/// client (connection lookup, URL parsing, header maps built per request) costs about as much
/// as half the server's work per event.
pub(crate) struct KeptConnection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    uri: hyper::Uri,
    host: hyper::header::HeaderValue,
    auth: hyper::header::HeaderValue,
    /// The next request's body.
    pub(crate) body: Vec<u8>,
}

impl KeptConnection {
    /// Connects to the server for POSTs to `path` (under `/v1`).
    pub(crate) async fn open(t: &Target, path: &str) -> Result<Self> {
        let base: hyper::Uri = t.base.parse()?;
        let authority = base.authority().context("server address")?.clone();
        let stream = tokio::net::TcpStream::connect(authority.as_str())
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            uri: format!("/v1{path}").parse()?,
            host: hyper::header::HeaderValue::from_str(authority.as_str())?,
            auth: hyper::header::HeaderValue::from_str(&format!("Bearer {}", t.key))?,
            body: Vec::with_capacity(96),
        })
    }

    /// POSTs the body, reads the reply and insists on `expect`.
    pub(crate) async fn post(&mut self, idempotency_key: Option<&str>, expect: u16) -> Result<()> {
        let mut req = hyper::Request::post(self.uri.clone())
            .header(hyper::header::HOST, self.host.clone())
            .header(hyper::header::AUTHORIZATION, self.auth.clone())
            .header(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
            &self.body,
        )))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await?;
        if status.as_u16() != expect {
            bail!(
                "{} answered {status}: {}",
                self.uri,
                String::from_utf8_lossy(&body.to_bytes())
            );
        }
        Ok(())
    }
}

async fn ingest(
    t: Arc<Target>,
    clients: usize,
    seconds: f64,
    idempotency: bool,
    with_trigger: bool,
) -> Result<()> {
    if with_trigger {
        t.post(
            "/triggers",
            json!({"name": "bench ingest", "activation": "event", "eventType": "bench.ingest",
                   "conditions": {"field": "client", "op": "eq", "value": -1}}),
        )
        .await?;
    }
    let warmup = Duration::from_secs(1);
    let measured = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let server_pid = t.server_pid();
    let cost_sampler = tokio::spawn(async move {
        tokio::time::sleep(warmup).await;
        let before = server_pid.and_then(ProcCost::read);
        let own_before = ProcCost::read(std::process::id());
        tokio::time::sleep(measured).await;
        let after = server_pid.and_then(ProcCost::read);
        let own_after = ProcCost::read(std::process::id());
        (before.zip(after), own_before.zip(own_after))
    });
    let mut tasks = Vec::new();
    for c in 0..clients {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = KeptConnection::open(&t, "/events/ingest").await?;
            let mut lat = Vec::new();
            let mut i = 0u64;
            loop {
                let now = Instant::now();
                let elapsed = now - start;
                if elapsed >= warmup + measured {
                    break;
                }
                let key = idempotency.then(|| format!("bench-{}-{c}-{i}", std::process::id()));
                {
                    use std::io::Write;
                    conn.body.clear();
                    write!(
                        conn.body,
                        r#"{{"eventType":"bench.ingest","payload":{{"client":{c},"i":{i}}}}}"#
                    )?;
                }
                conn.post(key.as_deref(), 202).await?;
                if elapsed >= warmup {
                    lat.push(now.elapsed().as_micros() as u64);
                }
                i += 1;
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let (cost, own_cost) = cost_sampler.await?;
    let events = all.len();
    let rate = events as f64 / measured.as_secs_f64();
    println!(
        "scenario ingest: {clients} clients, {seconds} s measured{}{}",
        if idempotency {
            ", Idempotency-Key on every request"
        } else {
            ""
        },
        if with_trigger {
            ", an event trigger on the type (every event routed)"
        } else {
            ""
        }
    );
    println!("  load average at the end: {}", load_average());
    println!("  accepted: {rate:.0} events/s");
    println!("  accept latency: {}", summary(all));
    if let Some((before, after)) = cost {
        let n = events.max(1) as f64;
        println!(
            "  server cost per event: {:.1} µs CPU, {:.2} voluntary + {:.2} involuntary context switches",
            (after.cpu_ms - before.cpu_ms) * 1000.0 / n,
            (after.voluntary_switches - before.voluntary_switches) as f64 / n,
            (after.involuntary_switches - before.involuntary_switches) as f64 / n,
        );
    }
    if let Some((before, after)) = own_cost {
        println!(
            "  load tool's own cost per event: {:.1} µs CPU (it shares the machine)",
            (after.cpu_ms - before.cpu_ms) * 1000.0 / events.max(1) as f64,
        );
    }
    Ok(())
}

async fn abort(t: Arc<Target>, runs: usize) -> Result<()> {
    let wait = t.catalog_id("flow.wait").await?;
    let trigger = t
        .create(
            "/triggers",
            json!({"name": "bench abort", "activation": "custom"}),
        )
        .await?;
    let action = t
        .create(
            "/actions",
            json!({"name": "long wait", "catalogEntryId": wait, "params": {"seconds": 600}}),
        )
        .await?;
    let device = t
        .create(
            "/devices",
            json!({"name": "bench phone", "provider": "adb", "address": format!("bench-{}", std::process::id())}),
        ).await?;
    let flow = t
        .create(
            "/flows",
            json!({"name": "bench abort", "triggerId": trigger, "deviceIds": [device],
                   "actions": [{"actionId": action, "position": 0}]}),
        )
        .await?;
    let run = |t: Arc<Target>, flow: String| async move {
        let r = t.post(&format!("/flows/{flow}/run"), json!({})).await?;
        r["data"]["executionIds"][0]
            .as_str()
            .map(str::to_string)
            .context("execution id")
    };
    let status = |t: Arc<Target>, id: String| async move {
        let r = t.get(&format!("/executions/{id}")).await?;
        Ok::<_, anyhow::Error>(r["data"]["status"].as_str().unwrap_or("").to_string())
    };
    let mut reply = Vec::new();
    let mut handover = Vec::new();
    let mut current = run(t.clone(), flow.clone()).await?;
    while status(t.clone(), current.clone()).await? != "running" {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for _ in 0..runs {
        // The next run waits for the device the current one holds.
        let next = run(t.clone(), flow.clone()).await?;
        let t0 = Instant::now();
        t.post(&format!("/executions/{current}/abort"), json!({}))
            .await?;
        reply.push(t0.elapsed().as_micros() as u64);
        while status(t.clone(), next.clone()).await? != "running" {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("the next run did not start after an abort");
            }
        }
        handover.push(t0.elapsed().as_micros() as u64);
        current = next;
    }
    t.post(&format!("/executions/{current}/abort"), json!({}))
        .await?;
    println!("scenario abort: {runs} aborts of a running flow.wait");
    println!("  abort reply: {}", summary(reply));
    println!(
        "  abort sent → next run on the device running (step cancelled, device released, next claimed; polled): {}",
        summary(handover)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Scenario::Nodes {
        nodes,
        clients,
        seconds,
        flow,
    } = &cli.scenario
    {
        // Launches its own nodes, on a fresh database per node count.
        println!("machine: {}", describe_machine());
        return nodes::run(
            cli.database_url.as_deref(),
            nodes,
            *clients,
            *seconds,
            *flow,
            &cli.serve_arg,
        )
        .await;
    }
    let (base, key, server) = match &cli.url {
        Some(u) => (u.trim_end_matches('/').to_string(), cli.key.clone(), None),
        None => {
            let (u, p) = launch(cli.database_url.clone(), &cli.serve_arg)?;
            (u, "bench-key".to_string(), Some(p))
        }
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()?;
    let t = Arc::new(Target {
        base,
        key,
        http,
        server,
    });
    println!("machine: {}", describe_machine());
    match cli.scenario {
        Scenario::Ingest {
            clients,
            seconds,
            idempotency_key,
            with_trigger,
        } => ingest(t.clone(), clients, seconds, idempotency_key, with_trigger).await?,
        Scenario::Abort { runs } => abort(t.clone(), runs).await?,
        Scenario::E2e { clients, seconds } => e2e::run(t.clone(), &clients, seconds).await?,
        Scenario::Schedules {
            schedules,
            fires,
            window,
        } => schedules::run(t.clone(), schedules, fires, window).await?,
        Scenario::Memory { flows } => memory::run(t.clone(), flows).await?,
        Scenario::Nodes { .. } => unreachable!("handled above"),
    }
    Ok(())
}
