//! The binary itself: first-start key creation, `keys create`, graceful shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_flowrun");

/// Starts `serve` on a fresh port; returns the child, the base URL and the lines printed
/// before the "listening" line.
fn start(db: &str) -> (Child, String, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", db])
        .env("FLOWRUN_LOG", "warn")
        .env_remove("FLOWRUN_API_KEY")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut before = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("flowrun listening on ") {
            let base = rest.split_whitespace().next().unwrap().to_string();
            std::thread::spawn(move || for _ in lines {});
            return (child, base, before);
        }
        before.push(line);
    }
    let _ = child.wait();
    panic!("server exited before listening: {before:?}");
}

async fn status_with_key(base: &str, key: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{base}/v1/devices"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap()
}

#[tokio::test]
async fn first_start_prints_a_key_once_and_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flowrun.db").to_string_lossy().into_owned();

    let (mut child, base, printed) = start(&db);
    let key_line = printed
        .iter()
        .find(|l| l.contains("created API key"))
        .unwrap_or_else(|| panic!("no key printed: {printed:?}"));
    let key = key_line.rsplit(' ').next().unwrap().to_string();
    assert!(key.starts_with("dr_sk_") && key.len() == 49, "{key}");
    assert_eq!(status_with_key(&base, &key).await, 200);
    assert!(
        terminate(&mut child).success(),
        "SIGTERM ends the server cleanly"
    );

    // Second start on the same database: the stored key still works, none is printed.
    let (mut child, base, printed) = start(&db);
    assert!(
        !printed.iter().any(|l| l.contains("created API key")),
        "{printed:?}"
    );
    assert_eq!(status_with_key(&base, &key).await, 200);

    // `keys create` issues a working key for another owner.
    let out = Command::new(BIN)
        .args(["keys", "create", "--owner", "acme", "--database-url", &db])
        .output()
        .unwrap();
    assert!(out.status.success());
    let acme = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(acme.starts_with("dr_sk_"));
    assert_eq!(status_with_key(&base, &acme).await, 200);
    assert_eq!(status_with_key(&base, "dr_sk_wrong").await, 401);
    assert!(terminate(&mut child).success());
}

#[test]
fn bad_configuration_fails_at_start_with_a_message() {
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "not-an-address",
            "--database-url",
            ":memory:",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not-an-address"), "{err}");
}
