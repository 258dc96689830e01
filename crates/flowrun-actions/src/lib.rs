//! flowrun-actions: the steps that reach outside the engine — outbound webhooks and device
//! providers (ADB phones, Mobilerun cloud devices) — behind one [`StepExecutor`] trait.
//!
//! The engine runs the `flow.*` steps itself and hands every other method here together with
//! a cancellation token: an executor must stop promptly when it fires (abort an HTTP call,
//! kill a child process, cancel a remote task) because abort promises the in-flight step ends
//! within milliseconds.

pub mod adb;
mod http1;
pub mod mobilerun;
mod text_wait;
pub mod webhook;

use std::sync::Arc;

use async_trait::async_trait;
use flowrun_core::execution::{DeviceSnap, Verdict};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Why a step failed (§5.13); also the flow's `lastFailureCode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    DeviceNotFound,
    PermissionDenied,
    ClientError,
    Transient,
    Logic,
    InvalidConfig,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::DeviceNotFound => "device_not_found",
            FailureClass::PermissionDenied => "permission_denied",
            FailureClass::ClientError => "client_error",
            FailureClass::Transient => "transient",
            FailureClass::Logic => "logic",
            FailureClass::InvalidConfig => "invalid_config",
        }
    }

    /// Classes that block a flow at once instead of counting towards the threshold.
    pub fn blocks_at_once(self) -> bool {
        matches!(
            self,
            FailureClass::DeviceNotFound
                | FailureClass::PermissionDenied
                | FailureClass::InvalidConfig
        )
    }
}

/// A failed step: its class and a message (`StepResult.error` = `"<class>: <message>"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepFailure {
    pub class: FailureClass,
    pub message: String,
    /// The provider task / agent run that failed, when one was started (`sessionId`).
    pub session_id: Option<String>,
}

impl StepFailure {
    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            session_id: None,
        }
    }

    /// The failure of a provider task or agent run with this id.
    pub fn with_session(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class.as_str(), self.message)
    }
}

/// What a successful step produced.
#[derive(Debug, Default)]
pub struct StepOutput {
    /// The method's output (catalog `outputSchema`).
    pub body: Value,
    /// Provider task / agent run id.
    pub session_id: Option<String>,
    pub verdict: Option<Verdict>,
    /// Images the step captured (`devices.screenshot`, screenshots a task returned); the
    /// engine stores them with the execution (§5.18).
    pub images: Vec<CapturedImage>,
    /// An effect the step prepared but did not start (see [`Staged`]).
    pub staged: Option<Staged>,
}

/// An effect a step prepared but did not start — an outbox entry, e.g. the delivery of a
/// `webhooks.send` step. The engine commits it in the same transaction as the step's result
/// and starts it only once that commit applied: a committed step never repeats its effect
/// (a resumed run does not run it again) and an aborted or fenced-out step leaves none.
/// The contents belong to the service that staged it; the engine hands them back.
pub struct Staged(pub Box<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Staged(..)")
    }
}

/// An image captured on a device, with its media type (`image/png`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedImage {
    pub mime_type: String,
    pub bytes: Vec<u8>,
}

/// What a device probe found (§5.12): `online`, `offline` or `unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeState {
    Online,
    Offline,
    Unknown,
}

impl ProbeState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeState::Online => "online",
            ProbeState::Offline => "offline",
            ProbeState::Unknown => "unknown",
        }
    }
}

/// One step to run outside the engine.
#[derive(Clone, Debug)]
pub struct StepCall<'a> {
    pub owner_id: &'a str,
    pub execution_id: Uuid,
    pub flow_id: Uuid,
    pub step_key: &'a str,
    pub method: &'a str,
    /// Resolved and validated params.
    pub params: &'a Value,
    /// The execution's device (None for device-free runs).
    pub device: Option<&'a DeviceSnap>,
}

#[async_trait]
pub trait StepExecutor: Send + Sync + 'static {
    /// Runs the step; returns promptly after `cancel` fires (the result is then discarded).
    async fn execute(
        &self,
        call: StepCall<'_>,
        cancel: &CancellationToken,
    ) -> Result<StepOutput, StepFailure>;

    /// The outbound webhook service behind `webhooks.send`, which also delivers flow
    /// notifications (§5.16); `None` when this executor has none.
    fn webhooks(&self) -> Option<Arc<dyn webhook::WebhookService>> {
        None
    }

    /// Captures the device's screen (for `run`'s `captureScreenshots`, §5.18).
    async fn capture_screenshot(
        &self,
        device: &DeviceSnap,
        cancel: &CancellationToken,
    ) -> Result<Option<CapturedImage>, StepFailure> {
        let _ = cancel;
        Err(StepFailure::new(
            FailureClass::InvalidConfig,
            format!(
                "unsupported_provider: screenshots are not available on '{}' devices",
                device.provider
            ),
        ))
    }

    /// Asks the device's provider whether the device is reachable (§5.12).
    async fn probe(&self, provider: &str, address: &str) -> ProbeState {
        let _ = (provider, address);
        ProbeState::Unknown
    }
}

/// A device provider (§5.12): runs device methods against a device address, captures its
/// screen and probes it. `adb` and `mobilerun` each implement it in their own module.
#[async_trait]
pub trait DeviceProvider: Send + Sync {
    /// Runs one method on the device; `Ok(None)` when `cancel` fired first.
    async fn execute(
        &self,
        address: &str,
        method: &str,
        params: &Value,
        cancel: &CancellationToken,
    ) -> Result<Option<StepOutput>, StepFailure>;

    /// Captures the screen as PNG; `Ok(None)` when cancelled.
    async fn screenshot(
        &self,
        address: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<CapturedImage>, StepFailure> {
        let _ = (address, cancel);
        Err(StepFailure::new(
            FailureClass::InvalidConfig,
            "unsupported_provider: screenshots are not available on this provider",
        ))
    }

    /// Whether the device is reachable now.
    async fn probe(&self, address: &str) -> ProbeState;
}

/// The executor of this build: device steps through their device's provider; effects that
/// are not available fail with a configuration error that names what is missing, never
/// silently succeed.
#[derive(Clone, Debug)]
pub struct Effects {
    pub adb: adb::Adb,
    /// The Mobilerun cloud (`FLOWRUN_MOBILERUN_*`); without an API key, steps on
    /// `mobilerun` devices fail `permission_denied` (§5.12).
    pub mobilerun: mobilerun::Mobilerun,
    /// Outbound webhook deliveries (`webhooks.send`); without it the step fails
    /// `invalid_config`.
    pub webhooks: Option<Arc<dyn webhook::WebhookService>>,
}

impl Default for Effects {
    fn default() -> Self {
        Self {
            adb: adb::Adb::new("adb"),
            mobilerun: mobilerun::Mobilerun::new(mobilerun::MobilerunConfig::default())
                .expect("the default Mobilerun configuration is valid"),
            webhooks: None,
        }
    }
}

impl Effects {
    /// The provider of a device's `provider` name.
    fn provider(&self, name: &str) -> Result<&dyn DeviceProvider, StepFailure> {
        match name {
            "adb" => Ok(&self.adb),
            "mobilerun" => Ok(&self.mobilerun),
            other => Err(StepFailure::new(
                FailureClass::InvalidConfig,
                format!(
                    "unsupported_provider: the '{other}' provider is not available in this build"
                ),
            )),
        }
    }
}

#[async_trait]
impl StepExecutor for Effects {
    fn webhooks(&self) -> Option<Arc<dyn webhook::WebhookService>> {
        self.webhooks.clone()
    }

    async fn execute(
        &self,
        call: StepCall<'_>,
        cancel: &CancellationToken,
    ) -> Result<StepOutput, StepFailure> {
        if call.method == "webhooks.send" {
            return match &self.webhooks {
                Some(w) => w.send_step(&call).await,
                None => Err(StepFailure::new(
                    FailureClass::InvalidConfig,
                    "webhooks_unavailable: outbound webhooks are not configured",
                )),
            };
        }
        let Some(device) = call.device else {
            return Err(StepFailure::new(
                FailureClass::DeviceNotFound,
                format!("{} needs a device and the execution has none", call.method),
            ));
        };
        let provider = self.provider(&device.provider)?;
        match provider
            .execute(&device.address, call.method, call.params, cancel)
            .await?
        {
            Some(out) => Ok(out),
            None => Err(StepFailure::new(FailureClass::Transient, "cancelled")),
        }
    }

    async fn capture_screenshot(
        &self,
        device: &DeviceSnap,
        cancel: &CancellationToken,
    ) -> Result<Option<CapturedImage>, StepFailure> {
        self.provider(&device.provider)?
            .screenshot(&device.address, cancel)
            .await
    }

    async fn probe(&self, provider: &str, address: &str) -> ProbeState {
        match self.provider(provider) {
            Ok(p) => p.probe(address).await,
            Err(_) => ProbeState::Unknown,
        }
    }
}
