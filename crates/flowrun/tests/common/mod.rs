//! Black-box test harness: starts the real `flowrun` binary on `127.0.0.1:0` with a fresh
//! database and talks HTTP to it. Every JSON body can be checked against the wire schemas.
//!
//! `FLOWRUN_TEST_DATABASE_URL=postgres://…/postgres` runs the same tests against PostgreSQL
//! (each server gets its own freshly created database).

#![allow(dead_code)]

pub mod adb;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::{Value, json};

pub const KEY: &str = "test-key-owner-default";

pub struct Server {
    child: Child,
    pub base: String,
    /// Key of owner `default`.
    pub key: String,
    /// Key of owner `other`.
    pub other_key: String,
    pub database_url: String,
    http: reqwest::Client,
    /// The server's working directory (holds the SQLite file); handed on by [`Server::restart`].
    dir: Option<tempfile::TempDir>,
    /// Extra `serve` arguments and environment, reused by [`Server::restart`].
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
    /// Whether dropping this server drops its PostgreSQL database (false once a restarted
    /// server has taken it over).
    owns_database: bool,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    /// Asserts the status, printing the body when it differs.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts a spec error body with this status and code (and `x-should-retry: false` for
    /// deterministic 4xx).
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> &Self {
        self.expect(status);
        assert_eq!(self.body["code"], code, "body: {}", self.text);
        assert!(self.body["error"].is_string(), "body: {}", self.text);
        if [400, 401, 404, 405, 409, 413, 422].contains(&status)
            && code != "idempotency_request_in_progress"
        {
            assert_eq!(
                self.headers
                    .get("x-should-retry")
                    .map(|v| v.to_str().unwrap()),
                Some("false"),
                "x-should-retry on {status} {code}"
            );
        }
        self
    }

    /// The `field`s of a 422's `details.errors`.
    pub fn error_fields(&self) -> Vec<String> {
        self.body["details"]["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["field"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The field-level codes of a 422's `details.errors`.
    pub fn error_codes(&self) -> Vec<String> {
        self.body["details"]["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["code"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Validates the body against a wire schema (see [`check_schema`]).
    #[track_caller]
    pub fn schema(&self, name: &str) -> &Self {
        check_schema(name, &self.body);
        self
    }

    pub fn data(&self) -> &Value {
        &self.body["data"]
    }

    pub fn id(&self) -> String {
        self.body["data"]["id"]
            .as_str()
            .expect("data.id")
            .to_string()
    }
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra `serve` arguments.
    pub async fn start_with(extra: &[&str]) -> Server {
        Self::start_env(extra, &[]).await
    }

    /// Starts a server with extra `serve` arguments and extra environment variables.
    pub async fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let database_url = match std::env::var("FLOWRUN_TEST_DATABASE_URL") {
            Ok(admin) if !admin.is_empty() => fresh_pg_database(&admin).await,
            _ => dir.path().join("flowrun.db").to_string_lossy().into_owned(),
        };
        let bin = env!("CARGO_BIN_EXE_flowrun");
        let out = Command::new(bin)
            .args([
                "keys",
                "create",
                "--owner",
                "other",
                "--database-url",
                &database_url,
            ])
            .output()
            .expect("run flowrun keys create");
        assert!(
            out.status.success(),
            "keys create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let other_key = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Self::launch(
            dir,
            database_url,
            other_key,
            extra.iter().map(|a| a.to_string()).collect(),
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .await
    }

    /// Spawns `flowrun serve` on an existing database and waits until it listens.
    async fn launch(
        dir: tempfile::TempDir,
        database_url: String,
        other_key: String,
        extra_args: Vec<String>,
        extra_env: Vec<(String, String)>,
    ) -> Server {
        let bin = env!("CARGO_BIN_EXE_flowrun");
        let mut child = Command::new(bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                &database_url,
            ])
            .args(["--api-key", KEY])
            .args(&extra_args)
            .env("FLOWRUN_LOG", "warn")
            .envs(extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn flowrun serve");
        let stdout = child.stdout.take().unwrap();
        let base = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let line = line.expect("read server stdout");
                if let Some(rest) = line.strip_prefix("flowrun listening on ") {
                    let url = rest.split_whitespace().next().unwrap().to_string();
                    // Keep draining so the server never blocks on a full pipe.
                    std::thread::spawn(move || for _ in lines {});
                    return Some(url);
                }
            }
            None
        })
        .await
        .unwrap()
        .expect("server exited before listening");
        Server {
            child,
            base,
            key: KEY.to_string(),
            other_key,
            database_url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            dir: Some(dir),
            extra_args,
            extra_env,
            owns_database: true,
        }
    }

    /// Kills the server process with SIGKILL (no shutdown of any kind) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills this server with SIGKILL (if still running) and starts a new one on the same
    /// database, working directory, arguments and environment; the new server takes over the
    /// database (dropped with it).
    pub async fn restart(mut self) -> Server {
        self.kill();
        self.owns_database = false;
        let dir = self.dir.take().expect("server directory");
        let database_url = self.database_url.clone();
        let other_key = self.other_key.clone();
        let extra_args = std::mem::take(&mut self.extra_args);
        let extra_env = std::mem::take(&mut self.extra_env);
        drop(self);
        Self::launch(dir, database_url, other_key, extra_args, extra_env).await
    }

    /// Starts another node on this server's database (PostgreSQL), with its own arguments;
    /// the database stays this server's.
    pub async fn join(&self, extra: &[&str]) -> Server {
        let mut node = Self::launch(
            tempfile::tempdir().unwrap(),
            self.database_url.clone(),
            self.other_key.clone(),
            extra.iter().map(|a| a.to_string()).collect(),
            Vec::new(),
        )
        .await;
        node.owns_database = false;
        node
    }

    /// Whether the tests run on PostgreSQL (`FLOWRUN_TEST_DATABASE_URL` set).
    pub fn on_postgres() -> bool {
        std::env::var("FLOWRUN_TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request as owner `default`; `path` includes `/v1` or not, as the test wants.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Resp {
        self.call_as(&self.key, method, path, body, &[]).await
    }

    pub async fn call_as(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.http.request(method, self.url(path));
        if !key.is_empty() {
            req = req.bearer_auth(key);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("request");
        to_resp(resp).await
    }

    /// Sends raw bytes as the body.
    pub async fn raw(&self, method: Method, path: &str, body: Vec<u8>) -> Resp {
        let resp = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        to_resp(resp).await
    }

    /// Catalog entry ids by method (`flow.wait` → its id).
    pub async fn catalog_ids(&self) -> HashMap<String, String> {
        let r = self.get("/v1/action-catalog?pageSize=100").await;
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

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(&body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.call(Method::PATCH, path, Some(&body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.call(Method::PUT, path, Some(&body)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, path, None).await
    }

    /// Stops the server with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        unsafe_kill(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A PostgreSQL database made for this server is dropped with it.
        if let Ok(admin) = std::env::var("FLOWRUN_TEST_DATABASE_URL")
            && !admin.is_empty()
            && self.owns_database
            && let Some((_, name)) = self.database_url.rsplit_once('/')
        {
            let _ = Command::new("psql")
                .args([
                    admin.as_str(),
                    "-q",
                    "-c",
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

async fn to_resp(resp: reqwest::Response) -> Resp {
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        body,
        text,
    }
}

/// Creates an empty PostgreSQL database for one server and returns its URL.
async fn fresh_pg_database(admin: &str) -> String {
    let name = format!("flowrun_t_{}", uuid::Uuid::new_v4().simple());
    let status = Command::new("psql")
        .args([admin, "-q", "-c", &format!("CREATE DATABASE {name}")])
        .status()
        .expect("run psql");
    assert!(status.success(), "CREATE DATABASE {name}");
    let (prefix, _) = admin.rsplit_once('/').expect("database URL with a path");
    format!("{prefix}/{name}")
}

static SCHEMAS: LazyLock<Value> = LazyLock::new(|| {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/spec/wire-schemas.json"
    );
    let text = std::fs::read_to_string(path).expect("read wire-schemas.json");
    serde_json::from_str(&text).expect("parse wire-schemas.json")
});

static VALIDATORS: LazyLock<Mutex<HashMap<String, std::sync::Arc<jsonschema::Validator>>>> =
    LazyLock::new(Default::default);

/// The API contract makes some objects nullable that the schema file lists as a bare `$ref`
/// (e.g. `Trigger.scheduleRule` is null for event triggers); where they differ the contract
/// wins, so bare `$ref` properties also accept null.
fn relax(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = m.get_mut("properties") {
                for (_, p) in props.iter_mut() {
                    if p.as_object()
                        .is_some_and(|o| o.len() == 1 && o.contains_key("$ref"))
                    {
                        *p = json!({"anyOf": [p.clone(), {"type": "null"}]});
                    }
                }
            }
            for (_, child) in m.iter_mut() {
                relax(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(relax),
        _ => {}
    }
}

/// Validates `instance` against the wire schema `name` (e.g.
/// `workflows.trigger_create_response.TriggerCreateResponse`). Panics with every error.
#[track_caller]
pub fn check_schema(name: &str, instance: &Value) {
    let validator = {
        let mut cache = VALIDATORS.lock().unwrap();
        cache
            .entry(name.to_string())
            .or_insert_with(|| {
                let mut schema = SCHEMAS
                    .get(name)
                    .unwrap_or_else(|| panic!("no wire schema named {name}"))
                    .clone();
                relax(&mut schema);
                std::sync::Arc::new(jsonschema::validator_for(&schema).expect("compile schema"))
            })
            .clone()
    };
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{name} rejects the response:\n{}\nbody: {instance}",
        errors.join("\n")
    );
}

/// Asserts that an object has exactly these keys (every documented key present, nothing more).
#[track_caller]
pub fn assert_keys(v: &Value, keys: &[&str]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut have: Vec<&str> = obj.keys().map(String::as_str).collect();
    let mut want = keys.to_vec();
    have.sort();
    want.sort();
    assert_eq!(have, want, "keys of {v}");
}

pub mod cloud;
