//! The official Python client (`mobilerun-sdk`) against the real server:
//! `tests/sdk/sdk_roundtrip.py` creates, reads, lists, updates and deletes triggers, actions
//! and flows. CI installs the package; elsewhere the test is skipped unless
//! `FLOWRUN_REQUIRE_SDK=1` (then a missing package is a failure).

mod common;

use std::process::Command;

use common::Server;

fn sdk_available() -> bool {
    Command::new("python3")
        .args(["-c", "import mobilerun_sdk"])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn official_python_client_round_trip() {
    if !sdk_available() {
        assert!(
            std::env::var("FLOWRUN_REQUIRE_SDK").is_err(),
            "mobilerun-sdk is not installed (pip install 'mobilerun-sdk==6.0.1')"
        );
        eprintln!("skipping: mobilerun-sdk is not installed");
        return;
    }
    let s = Server::start().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/sdk/sdk_roundtrip.py"
    );
    let base = s.url("/v1");
    let key = s.key.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .env("FLOWRUN_BASE_URL", base)
            .env("FLOWRUN_KEY", key)
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK round trip failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("all SDK checks passed"), "{stdout}");
}
