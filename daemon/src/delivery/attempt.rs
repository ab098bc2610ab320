//! One attempt: the exchange, bounded by the job's timeout, and what it
//! came to (status, `Retry-After`, a short error, the first response bytes).

use super::retry::{classify_status, parse_retry_after, Verdict};
use super::{Deliverer, HttpClient};
use crate::clock::now_ms;
use crate::job::Job;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use std::time::{Duration, SystemTime};

/// At most this much of a response body is read, so the connection can be
/// reused; a longer body is dropped with its connection.
const MAX_DRAIN_BYTES: usize = 64 * 1024;

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Success, retry or final.
    pub verdict: Verdict,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// The server's `Retry-After`, in milliseconds.
    pub retry_after_ms: Option<u64>,
    /// A short description of what went wrong.
    pub error: Option<String>,
    /// The first bytes of the response body (lossy UTF-8).
    pub snippet: Option<String>,
    /// When the attempt began (Unix ms).
    pub started_ms: u64,
}

impl Deliverer {
    /// Makes one attempt, bounded by the job's timeout (response body included).
    pub async fn attempt(&self, job: &Job) -> Attempt {
        let started_ms = now_ms();
        let (client, req) = match self.build_request(job) {
            Ok(r) => r,
            Err(error) => {
                return Attempt {
                    verdict: Verdict::Final,
                    status: None,
                    retry_after_ms: None,
                    error: Some(error),
                    snippet: None,
                    started_ms,
                }
            }
        };
        let timeout = Duration::from_millis(job.timeout_ms);
        let mut a = match tokio::time::timeout(timeout, self.exchange(&client, req)).await {
            Ok(a) => a,
            Err(_) => Attempt {
                verdict: Verdict::Retry,
                status: None,
                retry_after_ms: None,
                error: Some(format!("timed out after {} ms", job.timeout_ms)),
                snippet: None,
                started_ms: 0,
            },
        };
        a.started_ms = started_ms;
        a
    }

    async fn exchange(&self, client: &HttpClient, req: Request<Full<Bytes>>) -> Attempt {
        let resp = match client.request(req).await {
            Ok(r) => r,
            Err(e) => {
                // The destination policy's refusal is final: nothing was
                // dialled, and retrying would dial nothing either.
                let denied = super::connect::denied_in(&e);
                return Attempt {
                    verdict: if denied.is_some() {
                        Verdict::Final
                    } else {
                        Verdict::Retry
                    },
                    status: None,
                    retry_after_ms: None,
                    error: Some(denied.unwrap_or_else(|| error_chain(&e))),
                    snippet: None,
                    started_ms: 0,
                };
            }
        };
        let status = resp.status().as_u16();
        let retry_after_ms = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
            .map(|d| d.as_millis().min(u64::MAX as u128) as u64);
        let verdict = classify_status(status);
        let mut body = resp.into_body();
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
            retry_after_ms,
            error,
            snippet: (!kept.is_empty()).then(|| String::from_utf8_lossy(&kept).into_owned()),
            started_ms: 0,
        }
    }
}

/// `e: cause: cause`, the sources that say what actually failed; hyper's
/// top-level message alone ("client error (Connect)") tells nobody anything.
fn error_chain(e: &dyn std::error::Error) -> String {
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
