//! Kept-alive HTTP/1.1 connections to plain-`http` webhook targets, on hyper's connection API.
//!
//! Deliveries to one endpoint go out by the thousand per second, so the per-request work of a
//! general client (a URL parsed four times, a pool keyed by a built key behind a lock shared
//! with its connector, redirect and timeout layers, a header map cloned from defaults) was as
//! much as a fifth of the server's CPU per run. Here a target is parsed once by the caller,
//! idle connections wait in a plain per-authority stack, and the request is built from the
//! attempt's headers directly. `https` targets keep going through the general client.
//!
//! The SSRF guard holds as before: names are resolved here and every address is checked
//! before a connection is opened; a connection is only ever reused for the authority that
//! opened it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};

use crate::webhook::{
    ADDRESS_NOT_ALLOWED, SNIPPET_LIMIT, Sent, TargetPolicy, USER_AGENT, response_headers,
};

/// Idle connections kept per authority; more than this many at once are closed when done.
const MAX_IDLE_PER_AUTHORITY: usize = 64;
/// An idle connection older than this is closed rather than reused: servers drop idle
/// keep-alive connections after a while, and a request on one that is being closed fails.
const IDLE_FOR: Duration = Duration::from_secs(30);

/// A parsed plain-http target.
pub(crate) struct Plain<'a> {
    /// `host` or `host:port`, as the `Host` header and the pool key.
    pub authority: &'a str,
    /// The host without brackets; an IP literal is connected to directly.
    pub host: &'a str,
    pub ip: Option<std::net::IpAddr>,
    pub port: u16,
    /// Origin-form request target (`/path?query`).
    pub path_and_query: &'a str,
}

struct Idle {
    send: SendRequest<Full<Bytes>>,
    since: Instant,
}

#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

/// Why a request got no response.
enum Failure {
    NotAllowed,
    Dns,
    Io(std::io::ErrorKind),
    Hyper(hyper::Error),
}

impl Failure {
    fn name(&self) -> String {
        match self {
            Failure::NotAllowed => ADDRESS_NOT_ALLOWED.to_string(),
            Failure::Dns => "dns_error".to_string(),
            Failure::Io(kind) => io_name(*kind, "connection_error").to_string(),
            Failure::Hyper(e) => hyper_name(e).to_string(),
        }
    }
}

fn io_name(kind: std::io::ErrorKind, otherwise: &'static str) -> &'static str {
    match kind {
        std::io::ErrorKind::ConnectionRefused => "connection_refused",
        std::io::ErrorKind::ConnectionReset => "connection_reset",
        std::io::ErrorKind::TimedOut => "timeout",
        _ => otherwise,
    }
}

fn hyper_name(e: &hyper::Error) -> &'static str {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io_name(io.kind(), "request_error");
        }
        source = s.source();
    }
    if e.is_timeout() {
        "timeout"
    } else if e.is_incomplete_message() {
        "connection_reset"
    } else {
        "request_error"
    }
}

impl Pool {
    /// POSTs `body` to `target` with `headers`, within `timeout` from connect to the end of
    /// the snippet. Never follows a redirect.
    pub(crate) async fn post(
        &self,
        policy: &TargetPolicy,
        target: &Plain<'_>,
        headers: &[(String, String)],
        body: &str,
        timeout: Duration,
    ) -> Sent {
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, self.exchange(policy, target, headers, body))
            .await
            .unwrap_or_else(|_| Err("timeout".to_string()));
        let duration_ms = started.elapsed().as_millis() as i64;
        match result {
            Ok(mut sent) => {
                sent.duration_ms = duration_ms;
                sent
            }
            Err(error) => Sent {
                duration_ms,
                error: Some(error),
                ..Default::default()
            },
        }
    }

    async fn exchange(
        &self,
        policy: &TargetPolicy,
        target: &Plain<'_>,
        headers: &[(String, String)],
        body: &str,
    ) -> Result<Sent, String> {
        let mut request = Some(build_request(target, headers, body)?);
        loop {
            let (mut send, reused) = match self.checkout(target.authority) {
                Some(send) => (send, true),
                None => (connect(policy, target).await.map_err(|f| f.name())?, false),
            };
            if send.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err("connection_error".to_string());
            }
            let req = request
                .take()
                .expect("the request is put back before a retry");
            let response = match send.try_send_request(req).await {
                Ok(r) => r,
                Err(mut e) => {
                    // A kept connection the server closed meanwhile fails before the request
                    // is written: hyper hands the request back, and it goes on a fresh one.
                    if reused && let Some(req) = e.take_message() {
                        request = Some(req);
                        continue;
                    }
                    return Err(Failure::Hyper(e.into_error()).name());
                }
            };
            let (parts, mut incoming) = response.into_parts();
            let headers = response_headers(&parts.headers);
            let mut snippet: Vec<u8> = Vec::new();
            let mut body_error = None;
            let mut complete = false;
            while snippet.len() < SNIPPET_LIMIT {
                match incoming.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            snippet.extend_from_slice(&data);
                        }
                    }
                    Some(Err(e)) => {
                        body_error = Some(hyper_name(&e).to_string());
                        break;
                    }
                    None => {
                        complete = true;
                        break;
                    }
                }
            }
            if !complete && body_error.is_none() && incoming.is_end_stream() {
                complete = true;
            }
            drop(incoming);
            // Only a connection whose response was read to its end can carry the next one.
            if complete {
                self.checkin(target.authority, send);
            }
            // The caller sets the duration.
            return Ok(Sent::answered(
                parts.status.as_u16(),
                headers,
                snippet,
                body_error,
                0,
            ));
        }
    }

    fn checkout(&self, authority: &str) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap();
        let stack = idle.get_mut(authority)?;
        while let Some(c) = stack.pop() {
            if !c.send.is_closed() && c.since.elapsed() < IDLE_FOR {
                return Some(c.send);
            }
        }
        None
    }

    fn checkin(&self, authority: &str, send: SendRequest<Full<Bytes>>) {
        if send.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap();
        let stack = match idle.get_mut(authority) {
            Some(s) => s,
            None => idle.entry(authority.to_string()).or_default(),
        };
        if stack.len() < MAX_IDLE_PER_AUTHORITY {
            stack.push(Idle {
                send,
                since: Instant::now(),
            });
        }
    }
}

fn build_request(
    target: &Plain<'_>,
    headers: &[(String, String)],
    body: &str,
) -> Result<hyper::Request<Full<Bytes>>, String> {
    let mut req = hyper::Request::post(target.path_and_query)
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .map_err(|_| "invalid_url".to_string())?;
    let map = req.headers_mut();
    map.insert(
        hyper::header::HOST,
        HeaderValue::from_str(target.authority).map_err(|_| "invalid_url".to_string())?,
    );
    for (k, v) in headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) else {
            return Err("request_error: invalid header".to_string());
        };
        map.append(name, value);
    }
    if !map.contains_key(hyper::header::USER_AGENT) {
        map.insert(
            hyper::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
    }
    Ok(req)
}

/// Resolves (names only), checks every address against the guard, connects to the first
/// that answers and starts the connection's task.
async fn connect(
    policy: &TargetPolicy,
    target: &Plain<'_>,
) -> Result<SendRequest<Full<Bytes>>, Failure> {
    let addrs: Vec<SocketAddr> = match target.ip {
        Some(ip) => vec![SocketAddr::new(ip, target.port)],
        None => tokio::net::lookup_host((target.host, target.port))
            .await
            .map_err(|_| Failure::Dns)?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(Failure::Dns);
    }
    if addrs.iter().any(|a| !policy.allows(a.ip())) {
        return Err(Failure::NotAllowed);
    }
    let mut last = std::io::ErrorKind::Other;
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let (send, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .map_err(Failure::Hyper)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                return Ok(send);
            }
            Err(e) => last = e.kind(),
        }
    }
    Err(Failure::Io(last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A receiver that answers `requests_per_connection` requests on each connection it
    /// accepts (keep-alive, no `connection: close`), then closes it; returns its port and
    /// the number of connections accepted so far.
    async fn receiver(requests_per_connection: usize) -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for _ in 0..requests_per_connection {
                        // One request: headers, then content-length bytes of body.
                        loop {
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                                let len: usize = head
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length: "))
                                    .map_or(0, |v| v.trim().parse().unwrap());
                                if buf.len() >= end + 4 + len {
                                    buf.drain(..end + 4 + len);
                                    break;
                                }
                            }
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let reply = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    // Closing without having said so: the client finds out on its next use.
                });
            }
        });
        (port, accepted)
    }

    fn target(authority: &str, port: u16) -> Plain<'_> {
        Plain {
            authority,
            host: "127.0.0.1",
            ip: Some("127.0.0.1".parse().unwrap()),
            port,
            path_and_query: "/hook?x=1",
        }
    }

    fn open_policy() -> TargetPolicy {
        TargetPolicy {
            allow_private: true,
            ..Default::default()
        }
    }

    async fn post(pool: &Pool, policy: &TargetPolicy, port: u16, timeout: Duration) -> Sent {
        let authority = format!("127.0.0.1:{port}");
        pool.post(policy, &target(&authority, port), &[], "{}", timeout)
            .await
    }

    #[tokio::test]
    async fn sequential_requests_share_one_kept_alive_connection() {
        let (port, accepted) = receiver(usize::MAX).await;
        let pool = Pool::default();
        for _ in 0..5 {
            let sent = post(&pool, &open_policy(), port, Duration::from_secs(5)).await;
            assert!(sent.success(), "{sent:?}");
            assert_eq!(sent.snippet.as_deref(), Some("ok"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_receiver_closed_is_replaced() {
        // One request per connection, closed without `connection: close`.
        let (port, accepted) = receiver(1).await;
        let pool = Pool::default();
        for _ in 0..4 {
            let sent = post(&pool, &open_policy(), port, Duration::from_secs(5)).await;
            assert!(sent.success(), "{sent:?}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn refused_addresses_are_not_connected_to() {
        let (port, accepted) = receiver(usize::MAX).await;
        let pool = Pool::default();
        let sent = post(
            &pool,
            &TargetPolicy::default(),
            port,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(sent.error.as_deref(), Some(ADDRESS_NOT_ALLOWED));
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_silent_receiver_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pool = Pool::default();
        let sent = post(&pool, &open_policy(), port, Duration::from_millis(200)).await;
        assert_eq!(sent.error.as_deref(), Some("timeout"));
        drop(listener);
    }
}
