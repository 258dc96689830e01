//! The `flowrun` binary: `serve` runs the server; `keys create` issues API keys.
//!
//! Configuration comes from flags with `FLOWRUN_*` environment fallbacks and is checked
//! before anything starts, so a bad setting fails at once with a clear message.

// The allocator matters on the hot paths (many small JSON values per request).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod sqlite_memory;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use flowrun_actions::Effects;
use flowrun_actions::adb::Adb;
use flowrun_actions::mobilerun::{Mobilerun, MobilerunConfig};
use flowrun_api::{ApiConfig, App};
use flowrun_engine::webhooks::{TargetPolicy, WebhookConfig, Webhooks};
use flowrun_engine::{Engine, EngineConfig};
use flowrun_store::Registry;

#[derive(Parser)]
#[command(
    name = "flowrun",
    version,
    about = "Self-hosted engine for the Mobilerun Workflows API v1"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (and everything it needs).
    Serve(Box<ServeArgs>),
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Args)]
struct DbArgs {
    /// Database: a SQLite file path / `sqlite:` URL, or a `postgres://` URL.
    #[arg(long, env = "FLOWRUN_DATABASE_URL", default_value = "flowrun.db")]
    database_url: String,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "FLOWRUN_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    #[command(flatten)]
    db: DbArgs,
    /// A static API key for owner `default` (not stored).
    #[arg(long, env = "FLOWRUN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Request body limit in bytes.
    #[arg(long, env = "FLOWRUN_BODY_LIMIT", default_value_t = 1 << 20)]
    body_limit: usize,
    /// Maximum non-archived flows per owner and agent bucket (unlimited when unset).
    #[arg(long, env = "FLOWRUN_ROUTINE_LIMIT")]
    routine_limit: Option<u64>,
    /// Executions run at once by this node.
    #[arg(long, env = "FLOWRUN_WORKERS", default_value_t = 64)]
    workers: usize,
    /// Lease of a claimed execution in seconds (renewed every sixth of it; a node silent
    /// for longer loses its runs to another node).
    #[arg(long, env = "FLOWRUN_LEASE_SECONDS", default_value_t = 30)]
    lease_seconds: u64,
    /// Consecutive failures that block a flow.
    #[arg(long, env = "FLOWRUN_FAILURE_THRESHOLD", default_value_t = 5)]
    failure_threshold: i64,
    /// Per-flow rate limit in executions per minute (0 = none).
    #[arg(long, env = "FLOWRUN_FLOW_RATE_LIMIT", default_value_t = 60)]
    flow_rate_limit: u32,
    /// The `adb` executable for `adb` devices.
    #[arg(long, env = "FLOWRUN_ADB", default_value = "adb")]
    adb: String,
    /// Mobilerun cloud API key for `mobilerun` devices.
    #[arg(long, env = "FLOWRUN_MOBILERUN_API_KEY", hide_env_values = true)]
    mobilerun_api_key: Option<String>,
    /// Serve Prometheus metrics at `GET /metrics` (`false` → 404).
    #[arg(long, env = "FLOWRUN_METRICS", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    metrics: bool,
    /// Base URL of the Mobilerun cloud REST API.
    #[arg(
        long,
        env = "FLOWRUN_MOBILERUN_BASE_URL",
        default_value = "https://api.mobilerun.ai/v1"
    )]
    mobilerun_base_url: String,
    /// `llmModel` of `tasks.run` steps that name none.
    #[arg(
        long,
        env = "FLOWRUN_MOBILERUN_LLM_MODEL",
        default_value = "mobilerun/mobile-agent-fast"
    )]
    mobilerun_llm_model: String,
    /// How often a running cloud task is polled, in milliseconds.
    #[arg(long, env = "FLOWRUN_MOBILERUN_POLL_MS", default_value_t = 2000)]
    mobilerun_poll_ms: u64,
    /// Seconds between two probes of every device (§5.12).
    #[arg(long, env = "FLOWRUN_DEVICE_PROBE_SECONDS", default_value_t = 60)]
    device_probe_seconds: u64,
    /// Public base URL of this server (`https://flowrun.example.com`): the origin of signed
    /// screenshot URLs. Unset: the request's scheme and `Host`.
    #[arg(long, env = "FLOWRUN_PUBLIC_URL", value_parser = flowrun_api::signing::parse_public_url)]
    public_url: Option<String>,
    /// Secret (≥ 32 bytes) that signs artifact URLs; every node serving one database must
    /// use the same. Unset: a key generated once and kept in the database.
    /// Checked after parsing, so a refused secret is never echoed in the error.
    #[arg(long, env = "FLOWRUN_ARTIFACT_SIGNING_KEY", hide_env_values = true)]
    artifact_signing_key: Option<String>,
    #[command(flatten)]
    webhooks: WebhookArgs,
}

/// Outbound webhooks (§5.17).
#[derive(Args)]
struct WebhookArgs {
    /// Let webhooks reach loopback, private, link-local and other non-public addresses
    /// (the SSRF guard is off).
    #[arg(long, env = "FLOWRUN_ALLOW_PRIVATE_TARGETS", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    allow_private_targets: bool,
    /// Comma-separated networks webhooks may reach although the SSRF guard refuses them
    /// (e.g. `10.1.0.0/16,127.0.0.1`).
    #[arg(long, env = "FLOWRUN_WEBHOOK_ALLOW_CIDRS", value_parser = parse_cidrs, default_value = "")]
    webhook_allow_cidrs: Cidrs,
    /// Timeout of one delivery attempt in seconds.
    #[arg(long, env = "FLOWRUN_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10)]
    webhook_timeout_seconds: u64,
    /// Factor applied to the retry schedule (30 s, 2 min, 10 min, 1 h, 6 h, 24 h); tests use
    /// a tiny one.
    #[arg(long, env = "FLOWRUN_WEBHOOK_RETRY_SCALE", default_value_t = 1.0, value_parser = parse_scale)]
    webhook_retry_scale: f64,
    /// Consecutive dead deliveries that block an endpoint.
    #[arg(long, env = "FLOWRUN_WEBHOOK_BLOCK_AFTER", default_value_t = 50)]
    webhook_block_after: i64,
}

#[derive(Clone, Debug)]
struct Cidrs(Vec<flowrun_engine::webhooks::Cidr>);

fn parse_cidrs(s: &str) -> Result<Cidrs, String> {
    flowrun_engine::webhooks::parse_cidrs(s).map(Cidrs)
}

fn parse_scale(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive number")),
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an API key and print it (only its hash is stored).
    Create {
        /// Owner (tenant) the key belongs to.
        #[arg(long, default_value = "default")]
        owner: String,
        /// Actor named by the key (defaults to the owner).
        #[arg(long)]
        actor: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    sqlite_memory::configure()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOWRUN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: formatting them is a share of every request's
        // span, and they are noise in files and journals.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Keys {
                command: KeysCommand::Create { owner, actor, db },
            } => {
                let store = flowrun_store::open(&db.database_url)
                    .await
                    .with_context(|| format!("opening database {}", db.database_url))?;
                let key = flowrun_api::auth::create_key(&*store, &owner, actor.as_deref()).await?;
                println!("{key}");
                Ok(())
            }
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mobilerun = Mobilerun::new(MobilerunConfig {
        base_url: args.mobilerun_base_url.clone(),
        api_key: args.mobilerun_api_key.clone(),
        default_llm_model: args.mobilerun_llm_model.clone(),
        poll_interval: Duration::from_millis(args.mobilerun_poll_ms.max(1)),
        ..MobilerunConfig::default()
    })
    .map_err(anyhow::Error::msg)?;
    let store = flowrun_store::open(&args.db.database_url)
        .await
        .with_context(|| format!("opening database {}", args.db.database_url))?;
    let registry = Arc::new(
        Registry::load(store.clone())
            .await
            .context("loading definitions")?,
    );
    let w = &args.webhooks;
    let webhooks = Webhooks::start(
        store.clone(),
        WebhookConfig {
            policy: TargetPolicy {
                allow_private: w.allow_private_targets,
                allow_cidrs: w.webhook_allow_cidrs.0.clone(),
            },
            timeout: Duration::from_secs(w.webhook_timeout_seconds.max(1)),
            block_after_dead: w.webhook_block_after.max(1),
            exclusive_store: store.backend() == "sqlite",
            ..WebhookConfig::default()
        }
        .with_retry_scale(w.webhook_retry_scale),
    )
    .await
    .context("starting webhook delivery")?;
    // The recorder is installed before the engine starts so its first events are counted.
    let metrics = if args.metrics {
        Some(flowrun_api::metrics::install_recorder().map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let engine = Engine::start(
        registry.clone(),
        EngineConfig {
            workers: args.workers.max(1),
            lease: Duration::from_secs(args.lease_seconds.max(1)),
            failure_threshold: args.failure_threshold.max(1),
            flow_rate_limit_per_minute: args.flow_rate_limit,
            // SQLite is one process's file: rows left running were this node's, and every
            // enqueue happens here and wakes the dispatcher, so the queue needs no polling.
            exclusive_store: store.backend() == "sqlite",
            probe_interval: Duration::from_secs(args.device_probe_seconds.max(1)),
            poll_interval: if store.backend() == "sqlite" {
                Duration::from_secs(5)
            } else {
                Duration::from_millis(250)
            },
            ..EngineConfig::default()
        },
        Arc::new(Effects {
            adb: Adb::new(&args.adb),
            mobilerun,
            webhooks: Some(webhooks.clone()),
        }),
    )
    .await
    .context("starting the engine")?;
    let app = App::new(
        store.clone(),
        registry,
        engine.clone(),
        ApiConfig {
            body_limit: args.body_limit,
            routine_limit: args.routine_limit,
            metrics,
            public_url: args.public_url.clone(),
            signing_key: match &args.artifact_signing_key {
                Some(secret) => flowrun_api::signing::SigningKey::from_secret(secret)
                    .map_err(|e| anyhow::anyhow!("--artifact-signing-key: {e}"))?,
                None => flowrun_api::signing::SigningKey::load(&*store)
                    .await
                    .context("loading the artifact signing key")?,
            },
        },
    );
    match &args.api_key {
        Some(key) => app.keys.add_static(key, "default"),
        None => {
            if store.count_api_keys().await? == 0 {
                let key = flowrun_api::auth::create_key(&*store, "default", None).await?;
                // Shown once; only the hash is stored.
                println!("created API key for owner 'default' (shown once): {key}");
            }
        }
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "flowrun listening on http://{addr} (store: {})",
        store.backend()
    );
    use std::io::Write;
    std::io::stdout().flush().ok();
    tracing::info!(%addr, store = store.backend(), "listening");
    flowrun_api::serve(listener, app).await?;
    engine.shutdown();
    engine.flush().await;
    webhooks.shutdown();
    Ok(())
}
