//! The `adb` device provider (§5.12): one `adb -s <serial> …` child process per call, in its
//! own process group so that abort or a timeout kills it and everything it started.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use flowrun_core::catalog;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::{CapturedImage, FailureClass, StepFailure, StepOutput};

/// The first bytes of every PNG file.
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Runs device steps through the `adb` executable.
#[derive(Clone, Debug)]
pub struct Adb {
    pub executable: PathBuf,
}

/// What a finished `adb` call printed.
struct Output {
    stdout: Vec<u8>,
}

impl Adb {
    pub fn new(executable: impl Into<PathBuf>) -> Self {
        Self {
            executable: executable.into(),
        }
    }

    /// Runs one device method; `Ok(None)` when aborted.
    pub async fn execute(
        &self,
        serial: &str,
        method: &str,
        params: &Value,
        cancel: &CancellationToken,
    ) -> Result<Option<StepOutput>, StepFailure> {
        let int = |name: &str| params.get(name).and_then(Value::as_i64).unwrap_or(0);
        let text = |name: &str| {
            params
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let ok = || StepOutput {
            body: json!({ "ok": true }),
            ..Default::default()
        };
        let shell = |args: &[&str]| {
            let mut v = vec!["shell".to_string()];
            v.extend(args.iter().map(|s| s.to_string()));
            v
        };
        let done = |r: Option<Output>, out: StepOutput| Ok(r.map(|_| out));
        match method {
            "devices.tap" => {
                let (x, y) = (int("x").to_string(), int("y").to_string());
                let r = self
                    .run(serial, shell(&["input", "tap", &x, &y]), cancel)
                    .await?;
                done(r, ok())
            }
            "devices.swipe" => {
                let d = params
                    .get("durationMs")
                    .and_then(Value::as_i64)
                    .unwrap_or(300);
                let args: Vec<String> = [int("startX"), int("startY"), int("endX"), int("endY"), d]
                    .iter()
                    .map(i64::to_string)
                    .collect();
                let mut all = vec!["input", "swipe"];
                all.extend(args.iter().map(String::as_str));
                let r = self.run(serial, shell(&all), cancel).await?;
                done(r, ok())
            }
            "devices.type" => {
                if params.get("clear").and_then(Value::as_bool) == Some(true) {
                    // Select all (CTRL+A), then delete.
                    let r = self
                        .run(
                            serial,
                            shell(&["input", "keycombination", "113", "29"]),
                            cancel,
                        )
                        .await?;
                    if r.is_none() {
                        return Ok(None);
                    }
                    let r = self
                        .run(serial, shell(&["input", "keyevent", "67"]), cancel)
                        .await?;
                    if r.is_none() {
                        return Ok(None);
                    }
                }
                let escaped = escape_input_text(&text("text"));
                let r = self
                    .run(serial, shell(&["input", "text", &escaped]), cancel)
                    .await?;
                done(r, ok())
            }
            "devices.key" => {
                let code = match params.get("key") {
                    Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
                    Some(Value::String(s)) => catalog::key_code(s).unwrap_or(0),
                    _ => 0,
                };
                let r = self
                    .run(
                        serial,
                        shell(&["input", "keyevent", &code.to_string()]),
                        cancel,
                    )
                    .await?;
                done(
                    r,
                    StepOutput {
                        body: json!({ "ok": true, "keyCode": code }),
                        ..Default::default()
                    },
                )
            }
            "devices.app.start" => {
                let pkg = text("packageName");
                let args = match params.get("activity").and_then(Value::as_str) {
                    Some(a) => shell(&["am", "start", "-n", &format!("{pkg}/{a}")]),
                    None => shell(&[
                        "monkey",
                        "-p",
                        &pkg,
                        "-c",
                        "android.intent.category.LAUNCHER",
                        "1",
                    ]),
                };
                let r = self.run(serial, args, cancel).await?;
                done(r, ok())
            }
            "devices.app.stop" => {
                let pkg = text("packageName");
                let r = self
                    .run(serial, shell(&["am", "force-stop", &pkg]), cancel)
                    .await?;
                done(r, ok())
            }
            "devices.wait_for_text" => self.wait_for_text(serial, params, cancel).await,
            "devices.screenshot" => {
                let Some(image) = self.screenshot(serial, cancel).await? else {
                    return Ok(None);
                };
                Ok(Some(StepOutput {
                    // The engine adds `screenshotId` once the image is stored.
                    body: json!({ "mimeType": image.mime_type }),
                    images: vec![image],
                    ..Default::default()
                }))
            }
            "tasks.run" | "agent.run" => Err(StepFailure::new(
                FailureClass::InvalidConfig,
                "unsupported_provider: adb devices cannot run agent tasks",
            )),
            other => Err(StepFailure::new(
                FailureClass::InvalidConfig,
                format!("unsupported_provider: {other} is not available on adb devices yet"),
            )),
        }
    }

    /// `exec-out screencap -p`: stdout is the PNG. `Ok(None)` when cancelled.
    pub async fn screenshot(
        &self,
        serial: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<CapturedImage>, StepFailure> {
        let args = ["exec-out", "screencap", "-p"].map(String::from).to_vec();
        let Some(out) = self.run(serial, args, cancel).await? else {
            return Ok(None);
        };
        if !out.stdout.starts_with(PNG_SIGNATURE) {
            // A device that cannot capture prints an error on stdout and still exits 0.
            let text: String = String::from_utf8_lossy(&out.stdout)
                .chars()
                .take(200)
                .collect();
            return Err(StepFailure::new(
                FailureClass::Transient,
                format!("screencap returned no PNG image: {}", text.trim()),
            ));
        }
        Ok(Some(CapturedImage {
            mime_type: "image/png".to_string(),
            bytes: out.stdout,
        }))
    }

    async fn wait_for_text(
        &self,
        serial: &str,
        params: &Value,
        cancel: &CancellationToken,
    ) -> Result<Option<StepOutput>, StepFailure> {
        let wait = crate::text_wait::TextWait::new(params);
        loop {
            let args = vec![
                "exec-out".to_string(),
                "uiautomator".to_string(),
                "dump".to_string(),
                "/dev/tty".to_string(),
            ];
            let Some(out) = self.run(serial, args, cancel).await? else {
                return Ok(None);
            };
            let dump = String::from_utf8_lossy(&out.stdout);
            if let Some(done) = wait.after_look(ui_dump_contains(&dump, wait.wanted, wait.exact)) {
                return done;
            }
            if !wait.pause(Duration::from_secs(1), cancel).await {
                return Ok(None);
            }
        }
    }

    /// Runs `adb -s <serial> <args>`; `Ok(None)` when cancelled (the process group is killed).
    async fn run(
        &self,
        serial: &str,
        args: Vec<String>,
        cancel: &CancellationToken,
    ) -> Result<Option<Output>, StepFailure> {
        let mut cmd = tokio::process::Command::new(&self.executable);
        cmd.arg("-s")
            .arg(serial)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        cmd.process_group(0);
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StepFailure::new(
                    FailureClass::InvalidConfig,
                    format!("adb executable not found: {}", self.executable.display()),
                )
            } else {
                StepFailure::new(FailureClass::Transient, format!("cannot start adb: {e}"))
            }
        })?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let pid = child.id();
        let collect = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let (a, b) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            let _ = (a, b);
            let status = child.wait().await;
            (status, out, err)
        };
        let (status, out, err) = tokio::select! {
            r = collect => r,
            _ = cancel.cancelled() => {
                kill_group(pid);
                return Ok(None);
            }
        };
        let status = status
            .map_err(|e| StepFailure::new(FailureClass::Transient, format!("adb failed: {e}")))?;
        if status.success() {
            return Ok(Some(Output { stdout: out }));
        }
        let text = format!(
            "{} {}",
            String::from_utf8_lossy(&err),
            String::from_utf8_lossy(&out)
        );
        Err(classify_failure(text.trim(), status.code()))
    }
}

#[async_trait::async_trait]
impl crate::DeviceProvider for Adb {
    async fn execute(
        &self,
        address: &str,
        method: &str,
        params: &Value,
        cancel: &CancellationToken,
    ) -> Result<Option<StepOutput>, StepFailure> {
        Adb::execute(self, address, method, params, cancel).await
    }

    async fn screenshot(
        &self,
        address: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<CapturedImage>, StepFailure> {
        Adb::screenshot(self, address, cancel).await
    }

    /// `adb -s <serial> get-state`: `device` is online, anything else (an error included)
    /// offline. Bounded so a wedged adb server cannot stall the probes.
    async fn probe(&self, address: &str) -> crate::ProbeState {
        let cancel = CancellationToken::new();
        let timer = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(PROBE_TIMEOUT).await;
                cancel.cancel();
            })
        };
        let out = self
            .run(address, vec!["get-state".to_string()], &cancel)
            .await;
        timer.abort();
        match out {
            Ok(Some(o)) if String::from_utf8_lossy(&o.stdout).trim() == "device" => {
                crate::ProbeState::Online
            }
            _ => crate::ProbeState::Offline,
        }
    }
}

/// Longest a `get-state` probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Kills the child's whole process group.
fn kill_group(pid: Option<u32>) {
    #[cfg(unix)]
    if let Some(pid) = pid {
        // SAFETY: killpg only sends a signal; the group id is the child's own pid
        // (process_group(0)), so nothing outside the step's processes is touched.
        unsafe {
            libc::killpg(pid as libc::pid_t, libc::SIGKILL);
        }
    }
    #[cfg(not(unix))]
    let _ = pid;
}

/// Maps an adb failure to its class (§5.12).
fn classify_failure(output: &str, code: Option<i32>) -> StepFailure {
    let lower = output.to_lowercase();
    let snippet: String = output.chars().take(300).collect();
    let class = if (lower.contains("device") && lower.contains("not found"))
        || lower.contains("no devices")
    {
        FailureClass::DeviceNotFound
    } else if lower.contains("unauthorized") {
        FailureClass::PermissionDenied
    } else {
        FailureClass::Transient
    };
    let code = code
        .map(|c| c.to_string())
        .unwrap_or_else(|| "signal".into());
    StepFailure::new(class, format!("adb exited with {code}: {snippet}"))
}

/// `input text` escaping: spaces as `%s`, shell metacharacters backslash-escaped (the text
/// passes through the device's shell).
pub fn escape_input_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ' ' => out.push_str("%s"),
            '\\' | '"' | '\'' | '`' | '$' | '&' | '|' | ';' | '<' | '>' | '(' | ')' | '*' | '?'
            | '~' | '#' | '!' | '[' | ']' | '{' | '}' | '%' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Whether a `uiautomator dump` holds the text in a node's `text` or `content-desc`.
pub fn ui_dump_contains(dump: &str, wanted: &str, exact: bool) -> bool {
    let wanted_folded = wanted.to_lowercase();
    for attr in ["text=\"", "content-desc=\""] {
        let mut rest = dump;
        while let Some(i) = rest.find(attr) {
            let after = &rest[i + attr.len()..];
            let Some(end) = after.find('"') else { break };
            let value = unescape_xml(&after[..end]);
            let hit = if exact {
                value == wanted
            } else {
                value.to_lowercase().contains(&wanted_folded)
            };
            if hit {
                return true;
            }
            rest = &after[end..];
        }
    }
    false
}

fn unescape_xml(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_text_is_escaped_for_the_device_shell() {
        assert_eq!(escape_input_text("hi there"), "hi%sthere");
        assert_eq!(escape_input_text("a&b;c"), "a\\&b\\;c");
        assert_eq!(escape_input_text("100%"), "100\\%");
    }

    #[test]
    fn ui_dump_matches_text_and_content_description() {
        let dump = r#"<node text="Sign in" content-desc="" /><node text="" content-desc="Back &amp; forth" />"#;
        assert!(ui_dump_contains(dump, "sign IN", false));
        assert!(!ui_dump_contains(dump, "sign IN", true));
        assert!(ui_dump_contains(dump, "Back & forth", true));
        assert!(!ui_dump_contains(dump, "Register", false));
    }

    #[test]
    fn failures_map_to_classes() {
        assert_eq!(
            classify_failure("error: device 'x' not found", Some(1)).class,
            FailureClass::DeviceNotFound
        );
        assert_eq!(
            classify_failure("error: device unauthorized.", Some(1)).class,
            FailureClass::PermissionDenied
        );
        assert_eq!(
            classify_failure("boom", Some(2)).class,
            FailureClass::Transient
        );
    }

    #[tokio::test]
    async fn a_missing_executable_is_a_configuration_error() {
        let adb = Adb::new("/nonexistent/adb");
        let err = adb
            .execute(
                "s",
                "devices.tap",
                &json!({"x": 1, "y": 2}),
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.class, FailureClass::InvalidConfig);
    }
}
