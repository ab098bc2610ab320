//! One attempt: the exchange, bounded by the job's timeout, and what it
//! came to (status, `Retry-After`, a short error, the first response bytes).

use super::retry::{parse_retry_after, RetryRules, Verdict};
use super::Deliverer;
use crate::clock::now_ms;
use crate::job::Job;
use http_body_util::BodyExt;
use std::future::Future;
use std::task::Poll;
use std::time::{Duration, SystemTime};

/// At most this much of a response body is read, so the connection can be
/// reused; a longer body is dropped with its connection.
const MAX_DRAIN_BYTES: usize = 64 * 1024;
/// How long the body of an answered attempt is read for its snippet, at
/// most (and never longer than the attempt's timeout).
pub const BODY_READ: Duration = Duration::from_secs(1);

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Success, retry or final.
    pub verdict: Verdict,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// Why no response arrived.
    pub failure: Option<Failure>,
    /// The server's `Retry-After`, in milliseconds.
    pub retry_after_ms: Option<u64>,
    /// A short description of what went wrong.
    pub error: Option<String>,
    /// The first bytes of the response body (lossy UTF-8).
    pub snippet: Option<String>,
    /// When the attempt began (Unix ms).
    pub started_ms: u64,
    /// Bytes of the body sent (after compression).
    pub sent_bytes: u64,
}

impl Deliverer {
    /// Makes one attempt. The job's timeout bounds the wait for the
    /// response's status line and headers; once they are in, the verdict
    /// is made (a 2xx is delivered; the destination's `retry_on` says what
    /// else is retried), and the body is read only for the snippet, within
    /// [`BODY_READ`]: a slow body never turns a success into a retry.
    ///
    /// An OAuth2 destination's token is fetched first when none is fresh
    /// (a token endpoint that fails fails the attempt, to be retried on its
    /// schedule); a 401 refreshes it once and sends the request again at
    /// once, within the same attempt.
    pub async fn attempt(&self, job: &Job) -> Attempt {
        let started_ms = now_ms();
        let dests = self.dests();
        let dest = match &job.dest {
            Some(name) => match dests.by_name.get(&**name) {
                Some(d) => Some(d),
                None => {
                    let error = format!(
                        "destination {name:?} is no longer in the config; restore it and replay"
                    );
                    let mut a = Attempt::failed(Failure::Other, error, started_ms);
                    a.verdict = Verdict::Final;
                    return a;
                }
            },
            None => None,
        };
        let rules = dest.map_or(&dests.retry, |d| &d.retry);
        let Some(oauth) = dest.and_then(|d| d.oauth.as_deref()) else {
            let mut a = self.send(job, dest, None, rules, started_ms).await;
            if let Some(d) = dest.filter(|d| !d.creds.is_empty() && a.snippet.is_some()) {
                redact(&mut a.snippet, &d.secrets());
            }
            return a;
        };
        let token_client = dest.and_then(|d| d.client.as_ref()).unwrap_or(&self.client);
        let bearer = match self.bearer(oauth, token_client, job.timeout_ms, None).await {
            Ok(b) => b,
            Err(e) => return Attempt::failed(Failure::Other, e, started_ms),
        };
        let mut a = self.send(job, dest, Some(&bearer), rules, started_ms).await;
        if a.status == Some(401) {
            // The token was refused: a new one, and the request again at
            // once. A second 401 is an ordinary answer.
            match self
                .bearer(oauth, token_client, job.timeout_ms, Some(&bearer))
                .await
            {
                Ok(fresh) => {
                    tracing::debug!(id = %job.id, destination = %oauth.settings.dest, "401 with a cached token: token refreshed, request sent again");
                    a = self.send(job, dest, Some(&fresh), rules, started_ms).await;
                }
                Err(e) => a = Attempt::failed(Failure::Other, e, started_ms),
            }
        }
        if let Some(d) = dest.filter(|_| a.snippet.is_some()) {
            redact(&mut a.snippet, &d.secrets());
        }
        a
    }

    /// One request built and exchanged.
    async fn send(
        &self,
        job: &Job,
        dest: Option<&super::Dest>,
        bearer: Option<&http::HeaderValue>,
        rules: &RetryRules,
        started_ms: u64,
    ) -> Attempt {
        let (own, req) = match self.build_request(job, dest, bearer) {
            Ok(r) => r,
            Err(error) => {
                let mut a = Attempt::failed(Failure::Other, error, started_ms);
                a.verdict = Verdict::Final;
                return a;
            }
        };
        let sent_bytes = hyper::body::Body::size_hint(req.body())
            .exact()
            .unwrap_or(0);
        let mut a = self.exchange(job, own, req, started_ms, rules).await;
        a.sent_bytes = sent_bytes;
        a
    }

    /// The exchange of one built request, bounded as [`Deliverer::attempt`] says.
    async fn exchange(
        &self,
        job: &Job,
        own: Option<super::HttpClient>,
        req: http::Request<http_body_util::Full<bytes::Bytes>>,
        started_ms: u64,
        rules: &RetryRules,
    ) -> Attempt {
        let client = own.as_ref().unwrap_or(&self.client);
        let timeout = Duration::from_millis(job.timeout_ms);
        let resp = match tokio::time::timeout(timeout, client.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                // The destination policy's refusal is final: nothing was
                // dialled, and retrying would dial nothing either.
                if let Some(denied) = super::connect::denied_in(&e) {
                    let mut a = Attempt::failed(Failure::Denied, denied, started_ms);
                    a.verdict = Verdict::Final;
                    return a;
                }
                return Attempt::failed(classify_error(&e), error_chain(&e), started_ms);
            }
            Err(_) => {
                let msg = format!("timed out after {} ms", job.timeout_ms);
                return Attempt::failed(Failure::Timeout, msg, started_ms);
            }
        };
        let status = resp.status().as_u16();
        let retry_after_ms = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
            .map(|d| rules.cap(d.as_millis().min(u64::MAX as u128) as u64));
        let verdict = rules.classify(status);
        let body_time = timeout.min(BODY_READ);
        // A short body usually came in with the head: then it is read
        // without arming a timer (its setup and removal cost more than the
        // read); only a body still on its way is bounded by one.
        let mut snippet = std::pin::pin!(self.snippet(resp.into_body()));
        let kept = match std::future::poll_fn(|cx| Poll::Ready(snippet.as_mut().poll(cx))).await {
            Poll::Ready(kept) => kept,
            Poll::Pending => tokio::time::timeout(body_time, snippet)
                .await
                .unwrap_or_default(),
        };
        let error = match verdict {
            Verdict::Success => None,
            _ => Some(format!(
                "HTTP {status}{}",
                http::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .map(|r| format!(" {r}"))
                    .unwrap_or_default()
            )),
        };
        Attempt {
            verdict,
            status: Some(status),
            failure: None,
            retry_after_ms,
            error,
            snippet: (!kept.is_empty()).then(|| lossy(kept)),
            started_ms,
            sent_bytes: 0,
        }
    }

    /// The first bytes of a response body; the rest (up to
    /// [`MAX_DRAIN_BYTES`]) is read so the connection can be reused.
    async fn snippet(&self, mut body: hyper::body::Incoming) -> Vec<u8> {
        let mut kept = Vec::new();
        let mut read = 0usize;
        while read < MAX_DRAIN_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        read += data.len();
                        let room = self.snippet_bytes.saturating_sub(kept.len());
                        kept.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
        kept
    }
}

/// A snippet that quotes a credential (a receiver echoing the request's
/// headers) has it replaced: answers are shown in `status`, `dead` and
/// `tail`, and kept in the spool.
fn redact(snippet: &mut Option<String>, secrets: &[Vec<u8>]) {
    let Some(s) = snippet.as_mut() else {
        return;
    };
    for secret in secrets {
        if secret.len() < 4 {
            continue;
        }
        if let Ok(text) = std::str::from_utf8(secret) {
            if s.contains(text) {
                *s = s.replace(text, "<redacted>");
            }
        }
    }
}

/// The bytes as text, invalid UTF-8 replaced; valid text (the usual case)
/// keeps its buffer instead of being copied.
fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Why an attempt got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No status line within the attempt's timeout.
    Timeout,
    /// The name did not resolve.
    Dns,
    /// The connection could not be made (refused, unreachable, reset).
    Connect,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// The destination policy refused the address (nothing was dialled).
    Denied,
    /// Anything else (the connection broke mid-exchange, ...).
    Other,
}

impl Failure {
    /// The `result` label of `ffd_attempts_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Dns => "dns",
            Failure::Connect => "connect",
            Failure::Tls => "tls",
            Failure::Denied => "denied",
            Failure::Other => "other",
        }
    }
}

impl Attempt {
    fn failed(failure: Failure, error: String, started_ms: u64) -> Attempt {
        Attempt {
            verdict: Verdict::Retry,
            status: None,
            failure: Some(failure),
            retry_after_ms: None,
            error: Some(error),
            snippet: None,
            started_ms,
            sent_bytes: 0,
        }
    }

    /// What the attempt came to, as the `result` label of
    /// `ffd_attempts_total`: the status class, or why there was none.
    pub fn result(&self) -> &'static str {
        match (self.status, self.failure) {
            (Some(200..=299), _) => "2xx",
            (Some(300..=399), _) => "3xx",
            (Some(400..=499), _) => "4xx",
            (Some(500..=599), _) => "5xx",
            (Some(_), _) => "other",
            (None, Some(f)) => f.as_str(),
            (None, None) => "other",
        }
    }
}

/// Sorts a client error by what failed, from its chain of causes.
fn classify_error(e: &hyper_util::client::legacy::Error) -> Failure {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut text = String::new();
    while let Some(cause) = src {
        if cause.downcast_ref::<rustls::Error>().is_some() {
            return Failure::Tls;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                return Failure::Tls;
            }
        }
        text.push_str(&cause.to_string());
        text.push('\n');
        src = cause.source();
    }
    if text.contains("dns error") || text.contains("failed to lookup address") {
        Failure::Dns
    } else if e.is_connect() {
        Failure::Connect
    } else {
        Failure::Other
    }
}

/// `e: cause: cause`, the sources that say what actually failed; hyper's
/// top-level message alone ("client error (Connect)") tells nobody anything.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}
