//! `devices.wait_for_text` (§5.11) shared by the providers: the step's params, the deadline,
//! and the pause between two looks at the screen. Each provider only reads its screen (adb's UI
//! dump, the cloud's ui-state) and says whether the text is on it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{FailureClass, StepFailure, StepOutput};

pub(crate) struct TextWait<'a> {
    pub wanted: &'a str,
    pub exact: bool,
    timeout: Duration,
    start: Instant,
}

impl<'a> TextWait<'a> {
    /// Reads `text`, `exact` and `timeoutSeconds` (default 30 s); the clock starts now.
    pub fn new(params: &'a Value) -> Self {
        Self {
            wanted: params.get("text").and_then(Value::as_str).unwrap_or(""),
            exact: params.get("exact").and_then(Value::as_bool) == Some(true),
            timeout: Duration::from_secs(
                params
                    .get("timeoutSeconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(30),
            ),
            start: Instant::now(),
        }
    }

    /// After one look at the screen: the step's outcome when the wait is over (found, or
    /// `text_not_found` after the timeout), `None` to look again.
    pub fn after_look(&self, found: bool) -> Option<Result<Option<StepOutput>, StepFailure>> {
        if found {
            return Some(Ok(Some(StepOutput {
                body: json!({ "found": true, "elapsedMs": self.start.elapsed().as_millis() as i64 }),
                ..Default::default()
            })));
        }
        (self.start.elapsed() >= self.timeout)
            .then(|| Err(StepFailure::new(FailureClass::Logic, "text_not_found")))
    }

    /// Waits `interval` before the next look; false when `cancel` fired first.
    pub async fn pause(&self, interval: Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(interval) => true,
            _ = cancel.cancelled() => false,
        }
    }
}
