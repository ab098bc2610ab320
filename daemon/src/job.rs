//! A request accepted for delivery, in the form the scheduler and delivery use.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Uri};
use std::sync::Arc;

/// Everything needed to make one attempt, fixed at acceptance.
///
/// Times are Unix milliseconds (not `Instant`s) because they are written to
/// the spool and must mean the same thing after a restart.
#[derive(Debug, Clone)]
pub struct Job {
    /// The caller's id or one ffd made.
    pub id: Arc<str>,
    /// HTTP method.
    pub method: Method,
    /// Absolute http/https URI.
    pub uri: Uri,
    /// Headers in order, repeats allowed.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body bytes.
    pub body: Bytes,
    /// Per-attempt timeout.
    pub timeout_ms: u64,
    /// Attempts before the request is dead.
    pub max_attempts: u32,
    /// When ffd accepted it.
    pub accepted_ms: u64,
    /// Not delivered before this time.
    pub not_before_ms: u64,
    /// Expired (given up) at this time.
    pub expires_ms: u64,
}

/// `scheme://authority` of a URI, with the default port made explicit so
/// `http://h` and `http://h:80` share one queue and one limit.
pub fn host_key(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri.host().unwrap_or("");
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    format!("{scheme}://{host}:{port}")
}

/// A URI shown without its query string, for logs: queries often carry
/// tokens. Formats lazily, so a log line that is filtered out costs nothing.
pub struct Redacted<'a>(pub &'a Uri);

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uri = self.0;
        write!(
            f,
            "{}://{}{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map(|a| a.as_str()).unwrap_or(""),
            uri.path()
        )
    }
}
