//! Flow health after a terminal live run (§5.13).
//!
//! Only `live` rows ending `success`, `failed` or `invalid` count, and only while the flow
//! monitors its health. A success resets the counter (a blocked flow stays blocked until
//! unblocked); a failure counts, marks the flow `failing`, and blocks it at the threshold or at
//! once for classes that retrying cannot fix.

use flowrun_core::Ts;
use flowrun_store::{Change, Registry};
use uuid::Uuid;

/// How a live run ended, for health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    Success,
    /// `failed` or `invalid`, with the failure class (`invalid` → `invalid_config`).
    Failure {
        class: &'a str,
    },
}

/// Classes that block a flow at once.
pub fn blocks_at_once(class: &str) -> bool {
    matches!(
        class,
        "device_not_found" | "permission_denied" | "invalid_config"
    )
}

/// Applies the outcome to the flow; writes only when something changes.
pub async fn record(
    registry: &Registry,
    owner_id: &str,
    flow_id: Uuid,
    outcome: Outcome<'_>,
    threshold: i64,
) -> flowrun_store::Result<()> {
    if outcome == Outcome::Success {
        // The common case changes nothing: skip the definitions lock and the copy.
        let defs = registry.read();
        let unchanged = defs.flow_any(owner_id, flow_id).is_none_or(|r| {
            let f = &r.flow;
            !f.health_monitoring_enabled
                || f.is_archived()
                || (f.consecutive_failures == 0 && f.status != "failing")
        });
        if unchanged {
            return Ok(());
        }
    }
    let _guard = registry.lock().await;
    let Some(mut rec) = registry
        .read()
        .flow_any(owner_id, flow_id)
        .map(|r| (**r).clone())
    else {
        return Ok(());
    };
    let f = &mut rec.flow;
    if !f.health_monitoring_enabled || f.is_archived() {
        return Ok(());
    }
    match outcome {
        Outcome::Success => {
            if f.consecutive_failures == 0 && f.status != "failing" {
                return Ok(());
            }
            f.consecutive_failures = 0;
            if f.status != "blocked" {
                f.status = "healthy".to_string();
            }
        }
        Outcome::Failure { class } => {
            let now = Ts::now();
            f.consecutive_failures += 1;
            f.last_failure_at = Some(now);
            f.last_failure_code = Some(class.to_string());
            if f.status != "blocked" {
                if f.consecutive_failures >= threshold || blocks_at_once(class) {
                    f.status = "blocked".to_string();
                    f.blocked_at = Some(now);
                } else {
                    f.status = "failing".to_string();
                }
            }
        }
    }
    registry.apply(vec![Change::PutFlow(rec)]).await
}
