//! Outbound webhooks (§5.17): the SSRF guard, Standard Webhooks signing and one HTTP attempt.
//!
//! - The guard refuses loopback, private (RFC 1918 / RFC 4193), link-local (cloud metadata
//!   included), CGNAT, multicast, broadcast and unspecified addresses unless the server allows
//!   private targets or the address is in a configured CIDR allowlist. It applies to the
//!   address actually connected to: IP-literal hosts are checked before sending, names are
//!   resolved by [`GuardedResolver`] (the HTTP client's only resolver), which checks every
//!   address it returns, so a name cannot be re-resolved to a refused address between check
//!   and connect. No proxy is used and redirects are never followed.
//! - Signing: `webhook-signature: v1,<base64(HMAC-SHA256(key, "<id>.<ts>.<body>"))>` where
//!   `key` is the base64-decoded part of the `whsec_…` secret.
//! - The delivery scheduling itself (queue, retries, health) lives in the engine; it reaches
//!   the step executor through [`WebhookService`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde_json::Value;
use sha2::Sha256;
use uuid::Uuid;

use crate::{StepCall, StepFailure, StepOutput};

/// `User-Agent` of every outbound request.
pub const USER_AGENT: &str = concat!("flowrun/", env!("CARGO_PKG_VERSION"));
/// The default attempt timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a response body an attempt records.
pub const SNIPPET_LIMIT: usize = 4096;
/// The error of an attempt (or a create) whose target address the guard refuses.
pub const ADDRESS_NOT_ALLOWED: &str = "address_not_allowed";

// ---------------------------------------------------------------------------------------
// Secrets and signatures

/// A fresh endpoint secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    format!("whsec_{}", STANDARD.encode(key))
}

/// The HMAC key of a secret (the base64-decoded part after `whsec_`).
fn secret_key(secret: &str) -> Option<Vec<u8>> {
    STANDARD.decode(secret.strip_prefix("whsec_")?).ok()
}

/// The `webhook-signature` value: `v1,<base64(HMAC-SHA256(key, "<id>.<ts>.<body>"))>`;
/// `None` when the secret is malformed.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = secret_key(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    Some(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The headers of a delivery attempt, in the order they are sent and recorded:
/// `content-type`, `user-agent` and, with a well-formed secret, the Standard Webhooks trio.
pub fn delivery_headers(
    secret: Option<&str>,
    event_id: &str,
    timestamp: i64,
    body: &str,
) -> Vec<(String, String)> {
    let mut h = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("user-agent".to_string(), USER_AGENT.to_string()),
    ];
    if let Some(sig) = secret.and_then(|s| sign(s, event_id, timestamp, body)) {
        h.push(("webhook-id".to_string(), event_id.to_string()));
        h.push(("webhook-timestamp".to_string(), timestamp.to_string()));
        h.push(("webhook-signature".to_string(), sig));
    }
    h
}

// ---------------------------------------------------------------------------------------
// The SSRF guard

/// Why an address is refused, or `None` for a public one.
pub fn refused_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => {
            // Addresses that embed an IPv4 address are judged by it.
            if let Some(v4) = embedded_v4(v6) {
                return refused_v4(v4);
            }
            let seg = v6.segments();
            if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("private")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("link_local")
            } else if seg[0] & 0xffc0 == 0xfec0 {
                // Deprecated site-local (fec0::/10): private in practice.
                Some("private")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if o[0] == 0 {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link_local")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("cgnat")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if o[0] >= 240 {
        Some("reserved")
    } else {
        None
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`)
/// or NAT64 (`64:ff9b::a.b.c.d`) IPv6 address.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0, 0, 0, 0, 0, 0] && !(s[6] == 0 && s[7] <= 1) {
        return Some(tail);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    None
}

/// One allowlisted network (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                mask_eq(u32::from(n) as u128, u32::from(a) as u128, self.prefix, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                mask_eq(u128::from(n), u128::from(a), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn mask_eq(net: u128, addr: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (net >> shift) == (addr >> shift)
}

/// IPv4-mapped IPv6 addresses compare as their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net = canonical(
            IpAddr::from_str(addr).map_err(|_| format!("'{s}' is not an address or CIDR"))?,
        );
        let bits = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("'{s}' has an invalid prefix length"))?,
        };
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// Parses a comma-separated CIDR allowlist (empty elements ignored).
pub fn parse_cidrs(list: &str) -> Result<Vec<Cidr>, String> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(Cidr::from_str)
        .collect()
}

/// Which targets outbound webhooks may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Allow every address (`FLOWRUN_ALLOW_PRIVATE_TARGETS`).
    pub allow_private: bool,
    /// Networks allowed although the guard would refuse them (`FLOWRUN_WEBHOOK_ALLOW_CIDRS`).
    pub allow_cidrs: Vec<Cidr>,
}

/// Why a target URL cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetError {
    /// Not an absolute http(s) URL with a host.
    InvalidUrl(String),
    /// The host is, or resolves to, a refused address.
    NotAllowed(IpAddr),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::InvalidUrl(m) => f.write_str(m),
            TargetError::NotAllowed(ip) => write!(
                f,
                "{ADDRESS_NOT_ALLOWED}: {ip} is a {} address and private targets are not allowed",
                refused_class(*ip).unwrap_or("refused")
            ),
        }
    }
}

impl TargetPolicy {
    /// Whether an address may be connected to.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow_private
            || refused_class(ip).is_none()
            || self.allow_cidrs.iter().any(|c| c.contains(ip))
    }

    /// Checks a target URL at create: its scheme, and its host — an IP literal, or every
    /// address the name resolves to now. A name that does not resolve passes (every attempt
    /// checks again).
    pub async fn check_url(&self, url: &str) -> Result<(), TargetError> {
        let (host, port) = target_host(url)?;
        if let Some(ip) = host.ip {
            return if self.allows(ip) {
                Ok(())
            } else {
                Err(TargetError::NotAllowed(ip))
            };
        }
        if self.allow_private {
            return Ok(());
        }
        let Ok(addrs) = tokio::net::lookup_host((host.name.as_str(), port)).await else {
            return Ok(());
        };
        for a in addrs {
            if !self.allows(a.ip()) {
                return Err(TargetError::NotAllowed(a.ip()));
            }
        }
        Ok(())
    }
}

struct Host {
    name: String,
    ip: Option<IpAddr>,
}

/// The host of an absolute http(s) URL.
fn target_host(url: &str) -> Result<(Host, u16), TargetError> {
    target_url(url).map(|(host, port, _)| (host, port))
}

/// The host of an absolute http(s) URL, with the URL as parsed.
fn target_url(url: &str) -> Result<(Host, u16, reqwest::Url), TargetError> {
    let u = reqwest::Url::parse(url)
        .map_err(|_| TargetError::InvalidUrl("url must be an absolute http or https URL".into()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(TargetError::InvalidUrl(
            "url must use the http or https scheme".into(),
        ));
    }
    let port = u.port_or_known_default().unwrap_or(80);
    let Some(name) = u.host_str().filter(|h| !h.is_empty()) else {
        return Err(TargetError::InvalidUrl("url must have a host".into()));
    };
    // The parser normalises IP literals (`[::1]`, `0x7f.1` → `127.0.0.1`).
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    let host = Host {
        name: bare.to_string(),
        ip: IpAddr::from_str(bare).ok(),
    };
    Ok((host, port, u))
}

/// A resolver error: the name resolves to a refused address.
#[derive(Debug)]
struct AddressNotAllowed(IpAddr);

impl fmt::Display for AddressNotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ADDRESS_NOT_ALLOWED}: {}", self.0)
    }
}

impl std::error::Error for AddressNotAllowed {}

/// A resolver error: the name does not resolve.
#[derive(Debug)]
struct DnsFailure(String);

impl fmt::Display for DnsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dns_error: {}", self.0)
    }
}

impl std::error::Error for DnsFailure {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP client's resolver: the system resolver, then the guard on every address.
struct GuardedResolver {
    policy: Arc<TargetPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| -> BoxError { Box::new(DnsFailure(e.to_string())) })?
                .collect();
            if let Some(bad) = addrs.iter().find(|a| !policy.allows(a.ip())) {
                return Err(Box::new(AddressNotAllowed(bad.ip())) as BoxError);
            }
            if addrs.is_empty() {
                return Err(Box::new(DnsFailure(format!("{host} has no address"))) as BoxError);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

// ---------------------------------------------------------------------------------------
// One attempt

/// What one attempt produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sent {
    /// The response status, when one arrived.
    pub status: Option<u16>,
    pub headers: Option<BTreeMap<String, String>>,
    /// The first [`SNIPPET_LIMIT`] bytes of the body, lossy UTF-8.
    pub snippet: Option<String>,
    pub duration_ms: i64,
    /// `None` on success; else `timeout`, `connection_refused`, `address_not_allowed`,
    /// `dns_error`, `connection_error`, `http_<status>`, …
    pub error: Option<String>,
}

impl Sent {
    /// An attempt that got a response: its status, headers, the first bytes of its body (cut
    /// to [`SNIPPET_LIMIT`]) and why reading the body stopped early, if it did.
    pub(crate) fn answered(
        status: u16,
        headers: BTreeMap<String, String>,
        mut snippet: Vec<u8>,
        body_error: Option<String>,
        duration_ms: i64,
    ) -> Sent {
        snippet.truncate(SNIPPET_LIMIT);
        let ok = (200..300).contains(&status);
        Sent {
            status: Some(status),
            headers: Some(headers),
            snippet: Some(String::from_utf8_lossy(&snippet).into_owned()),
            duration_ms,
            // A 2xx counts once its status arrived; a body cut short is only noted otherwise.
            error: if ok {
                None
            } else {
                Some(body_error.map_or_else(
                    || format!("http_{status}"),
                    |e| format!("http_{status}: {e}"),
                ))
            },
        }
    }

    /// A 2xx answer within the timeout.
    pub fn success(&self) -> bool {
        self.error.is_none() && self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The outbound HTTP client of webhook deliveries.
#[derive(Clone)]
pub struct Outbound {
    /// `https` targets.
    client: reqwest::Client,
    /// Plain-`http` targets.
    plain: Arc<crate::http1::Pool>,
    policy: Arc<TargetPolicy>,
    timeout: Duration,
    /// Target URLs as parsed, by their text: an endpoint's deliveries all go to one URL.
    targets: Arc<std::sync::Mutex<HashMap<String, Arc<Target>>>>,
}

/// A delivery target as parsed from its URL.
struct Target {
    host: Host,
    port: u16,
    kind: TargetKind,
}

enum TargetKind {
    /// `http`: the request line's parts, for the plain client.
    Plain {
        authority: String,
        path_and_query: String,
    },
    /// `https`: through reqwest.
    Tls(reqwest::Url),
}

impl Target {
    fn parse(url: &str) -> Result<Self, TargetError> {
        let (host, port, parsed) = target_url(url)?;
        let kind = if parsed.scheme() == "http" {
            TargetKind::Plain {
                authority: match parsed.port() {
                    Some(p) => format!("{}:{p}", parsed.host_str().unwrap_or_default()),
                    None => parsed.host_str().unwrap_or_default().to_string(),
                },
                path_and_query: match parsed.query() {
                    Some(q) => format!("{}?{q}", parsed.path()),
                    None => parsed.path().to_string(),
                },
            }
        } else {
            TargetKind::Tls(parsed)
        };
        Ok(Self { host, port, kind })
    }
}

/// How many parsed target URLs are kept (all are dropped when it is reached).
const TARGETS_KEPT: usize = 1024;

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("policy", &self.policy)
            .finish()
    }
}

impl Outbound {
    pub fn new(policy: TargetPolicy, timeout: Duration) -> Self {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(USER_AGENT)
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .build()
            .expect("the webhook HTTP client builds");
        Self {
            client,
            plain: Arc::default(),
            policy,
            timeout,
            targets: Arc::default(),
        }
    }

    pub fn policy(&self) -> &TargetPolicy {
        &self.policy
    }

    /// `url` as parsed, from the kept targets when it was seen before.
    fn target(&self, url: &str) -> Result<Arc<Target>, TargetError> {
        let mut kept = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = kept.get(url) {
            return Ok(t.clone());
        }
        let t = Arc::new(Target::parse(url)?);
        if kept.len() >= TARGETS_KEPT {
            kept.clear();
        }
        kept.insert(url.to_string(), t.clone());
        Ok(t)
    }

    /// POSTs `body` with `headers`; never follows a redirect.
    pub async fn post(&self, url: &str, headers: &[(String, String)], body: &str) -> Sent {
        let started = Instant::now();
        let elapsed = |s: Instant| s.elapsed().as_millis() as i64;
        let target = match self.target(url) {
            Ok(t) => t,
            Err(e) => {
                return Sent {
                    duration_ms: 0,
                    error: Some(format!("invalid_url: {e}")),
                    ..Default::default()
                };
            }
        };
        let host = &target.host;
        if let Some(ip) = host.ip
            && !self.policy.allows(ip)
        {
            return Sent {
                duration_ms: 0,
                error: Some(ADDRESS_NOT_ALLOWED.to_string()),
                ..Default::default()
            };
        }
        let parsed = match &target.kind {
            TargetKind::Plain {
                authority,
                path_and_query,
            } => {
                let target = crate::http1::Plain {
                    authority,
                    host: &host.name,
                    ip: host.ip,
                    port: target.port,
                    path_and_query,
                };
                return self
                    .plain
                    .post(&self.policy, &target, headers, body, self.timeout)
                    .await;
            }
            TargetKind::Tls(url) => url.clone(),
        };
        let mut req = self.client.post(parsed).body(body.to_string());
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Sent {
                    duration_ms: elapsed(started),
                    error: Some(classify(&e)),
                    ..Default::default()
                };
            }
        };
        let status = resp.status().as_u16();
        let headers = response_headers(resp.headers());
        let mut buf: Vec<u8> = Vec::new();
        let mut body_error = None;
        while buf.len() < SNIPPET_LIMIT {
            match resp.chunk().await {
                Ok(Some(c)) => buf.extend_from_slice(&c),
                Ok(None) => break,
                Err(e) => {
                    body_error = Some(classify(&e));
                    break;
                }
            }
        }
        Sent::answered(status, headers, buf, body_error, elapsed(started))
    }
}

/// Response headers as recorded: name → value (lossy UTF-8).
pub(crate) fn response_headers(h: &reqwest::header::HeaderMap) -> BTreeMap<String, String> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The `error` of a request that got no response.
fn classify(e: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut io_kind = None;
    while let Some(s) = source {
        if s.downcast_ref::<AddressNotAllowed>().is_some() {
            return ADDRESS_NOT_ALLOWED.to_string();
        }
        if s.downcast_ref::<DnsFailure>().is_some() {
            return "dns_error".to_string();
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        source = s.source();
    }
    if e.is_timeout() {
        return "timeout".to_string();
    }
    match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => "connection_refused".to_string(),
        Some(std::io::ErrorKind::ConnectionReset) => "connection_reset".to_string(),
        Some(std::io::ErrorKind::TimedOut) => "timeout".to_string(),
        _ if e.is_connect() => "connection_error".to_string(),
        _ => "request_error".to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// The delivery service, as the executor and the API see it

/// The outcome of `POST /webhooks/{id}/test`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestResult {
    pub success: bool,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

/// The outbound webhook delivery service (implemented by the engine over the store).
#[async_trait]
pub trait WebhookService: Send + Sync + fmt::Debug + 'static {
    /// `webhooks.send` (§5.11): queues a `workflow.step.webhook` delivery to the owner's
    /// endpoint `params.webhookId`; the body is `{eventId, deliveryId}`. An unknown or deleted
    /// endpoint fails the step (`invalid_config`).
    async fn send_step(&self, call: &StepCall<'_>) -> Result<StepOutput, StepFailure>;

    /// Queues a notification (§5.16) to the owner's endpoint; an unknown or deleted endpoint
    /// drops it.
    async fn notify(&self, owner_id: &str, webhook_id: Uuid, event_type: &str, data: Value);

    /// The guard on a URL at create (§3.10).
    async fn check_target(&self, url: &str) -> Result<(), TargetError>;

    /// `POST /webhooks/{id}/test`: one signed `webhook.test` event, sent now, once; recorded
    /// as a delivery with `isTest`. `Ok(None)` when the endpoint is not the owner's.
    async fn send_test(
        &self,
        owner_id: &str,
        webhook_id: Uuid,
        actor_id: Option<&str>,
    ) -> Result<Option<TestResult>, String>;

    /// Another node queued a delivery: look at the queue now rather than at the next poll.
    fn deliveries_due(&self) {}

    /// The step that staged `staged` (a [`send_step`](Self::send_step) output) has committed
    /// it with its result: start it. A staged effect that is dropped instead never happens.
    fn start_staged(&self, _staged: crate::Staged) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refused_address_classes() {
        for (a, class) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link_local"),
            ("100.64.0.1", "cgnat"),
            ("100.127.255.255", "cgnat"),
            ("224.0.0.1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "private"),
            ("fd00:ec2::254", "private"),
            ("fe80::1", "link_local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "link_local"),
            ("64:ff9b::a9fe:a9fe", "link_local"),
        ] {
            assert_eq!(refused_class(ip(a)), Some(class), "{a}");
        }
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(refused_class(ip(a)), None, "{a}");
        }
    }

    #[test]
    fn policy_allows_private_or_allowlisted_networks() {
        let strict = TargetPolicy::default();
        assert!(!strict.allows(ip("127.0.0.1")));
        assert!(strict.allows(ip("93.184.216.34")));
        let open = TargetPolicy {
            allow_private: true,
            ..Default::default()
        };
        assert!(open.allows(ip("169.254.169.254")));
        let listed = TargetPolicy {
            allow_private: false,
            allow_cidrs: parse_cidrs("127.0.0.0/8, ::1 ,10.20.0.0/16,").unwrap(),
        };
        assert!(listed.allows(ip("127.0.0.1")));
        assert!(listed.allows(ip("::ffff:127.0.0.5")));
        assert!(listed.allows(ip("::1")));
        assert!(listed.allows(ip("10.20.9.9")));
        assert!(!listed.allows(ip("10.21.0.1")));
        assert!(!listed.allows(ip("169.254.169.254")));
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            Cidr::from_str("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(Cidr::from_str("::1").unwrap().to_string(), "::1/128");
        assert!(Cidr::from_str("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::from_str("10.0.0.0/33").is_err());
        assert!(Cidr::from_str("nope").is_err());
        assert!(parse_cidrs("10.0.0.0/8,bad").is_err());
        assert_eq!(parse_cidrs("").unwrap(), vec![]);
    }

    #[tokio::test]
    async fn check_url_refuses_literals_and_names_of_private_addresses() {
        let strict = TargetPolicy::default();
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:9000/",
            "http://localhost:1234/",
        ] {
            assert!(
                matches!(strict.check_url(url).await, Err(TargetError::NotAllowed(_))),
                "{url}"
            );
        }
        assert!(matches!(
            strict.check_url("ftp://example.com/").await,
            Err(TargetError::InvalidUrl(_))
        ));
        assert!(strict.check_url("https://93.184.216.34/x").await.is_ok());
        let open = TargetPolicy {
            allow_private: true,
            ..Default::default()
        };
        assert!(open.check_url("http://localhost:1234/").await.is_ok());
    }

    #[tokio::test]
    async fn attempts_to_refused_addresses_never_connect() {
        let out = Outbound::new(TargetPolicy::default(), Duration::from_secs(2));
        let sent = out.post("http://127.0.0.1:9/", &[], "{}").await;
        assert_eq!(sent.error.as_deref(), Some(ADDRESS_NOT_ALLOWED));
        assert_eq!(sent.status, None);
        // A name is checked after resolution, at connect time.
        let sent = out.post("http://localhost:9/", &[], "{}").await;
        assert_eq!(sent.error.as_deref(), Some(ADDRESS_NOT_ALLOWED));
    }

    #[tokio::test]
    async fn connection_refused_is_named() {
        // Bind then drop a listener so the port is (very likely) closed.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let out = Outbound::new(
            TargetPolicy {
                allow_private: true,
                ..Default::default()
            },
            Duration::from_secs(2),
        );
        let sent = out
            .post(&format!("http://127.0.0.1:{port}/"), &[], "{}")
            .await;
        assert_eq!(sent.error.as_deref(), Some("connection_refused"));
        assert!(!sent.success());
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let ts = 1614265330;
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, id, ts, body).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(sign("nope", id, ts, body), None);
        let h = delivery_headers(Some(secret), id, ts, body);
        let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "user-agent",
                "webhook-id",
                "webhook-timestamp",
                "webhook-signature"
            ]
        );
        assert_eq!(h[1].1, USER_AGENT);
    }

    #[test]
    fn secrets_are_whsec_and_32_bytes() {
        let s = new_secret();
        assert!(s.starts_with("whsec_"));
        assert_eq!(secret_key(&s).unwrap().len(), 32);
        assert_ne!(s, new_secret());
    }
}
