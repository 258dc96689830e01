//! The Mobilerun cloud stand-in (`flowrun-cloud-standin`, a separate local HTTP server) for
//! tests of the `mobilerun` provider: started on `127.0.0.1:0`, scripted and inspected over
//! its `/_` routes. flowrun's real provider code talks to it over HTTP.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Cloud {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    http: reqwest::Client,
}

/// Builds the stand-in next to the `flowrun` binary under test (once per test process;
/// a no-op when it is up to date).
fn standin_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let flowrun = Path::new(env!("CARGO_BIN_EXE_flowrun"));
        let profile_dir = flowrun.parent().expect("profile directory");
        let target_dir = profile_dir.parent().expect("target directory");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "flowrun-cloud-standin", "--target-dir"])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("run cargo build for the cloud stand-in");
        assert!(status.success(), "building flowrun-cloud-standin failed");
        profile_dir.join("flowrun-cloud-standin")
    })
}

impl Cloud {
    /// Starts a stand-in that accepts only `api_key`.
    pub async fn start(api_key: &str) -> Cloud {
        let bin = tokio::task::spawn_blocking(standin_binary).await.unwrap();
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--api-key", api_key])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn flowrun-cloud-standin");
        let stdout = child.stdout.take().unwrap();
        let base = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let line = lines.next()?.ok()?;
            std::thread::spawn(move || for _ in lines {});
            line.strip_prefix("cloud stand-in listening on ")
                .map(str::to_string)
        })
        .await
        .unwrap()
        .expect("the cloud stand-in did not start");
        Cloud {
            child,
            base,
            http: reqwest::Client::new(),
        }
    }

    /// The base URL flowrun is configured with (`FLOWRUN_MOBILERUN_BASE_URL`).
    pub fn api_url(&self) -> String {
        format!("{}/v1", self.base)
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}/_{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("stand-in control call");
        assert!(resp.status().is_success(), "stand-in control {path}");
        resp.json().await.expect("stand-in JSON")
    }

    /// Queues the behaviour of the next task or agent run.
    pub async fn script(&self, script: Value) {
        self.control(reqwest::Method::POST, "scripts", Some(script))
            .await;
    }

    /// Sets a device's behaviour (`{missing, texts}`).
    pub async fn device(&self, id: &str, behaviour: Value) {
        self.control(
            reqwest::Method::PUT,
            &format!("devices/{id}"),
            Some(behaviour),
        )
        .await;
    }

    /// Every cloud request so far, in arrival order.
    pub async fn requests(&self) -> Vec<Value> {
        let v = self.control(reqwest::Method::GET, "requests", None).await;
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// Polls the recorded requests until one matches; panics after `timeout`.
    pub async fn wait_request(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let all = self.requests().await;
            if let Some(r) = all.iter().find(|r| pred(r)) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no matching cloud request within {timeout:?}; recorded: {all:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
