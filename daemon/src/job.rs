//! A request accepted for delivery, in the form the scheduler and delivery use.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Uri};
use std::sync::Arc;

/// Who sent a request: the peer's uid and gid (SO_PEERCRED) at accept time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The sender's uid.
    pub uid: u32,
    /// The sender's primary gid.
    pub gid: u32,
}

/// The key a request is known by inside ffd: `uid:id` for an owned request,
/// so the same client id from two users names two requests; the bare id
/// for a request without an owner (written by ffd before requests had
/// owners). Ids hold no spaces; the uid ends at the first `:`.
pub fn owner_key(owner: Option<Owner>, id: &str) -> Arc<str> {
    with_owner_key(owner, id, |k| Arc::from(k))
}

/// Calls `f` with [`owner_key`] of `owner` and `id`, built on the stack:
/// one allocation per send at most, on the ACK path (ids are at most 128
/// bytes; ffd's own are 26), none for a caller that only reads the key.
pub fn with_owner_key<R>(owner: Option<Owner>, id: &str, f: impl FnOnce(&str) -> R) -> R {
    let Some(o) = owner else {
        return f(id);
    };
    // The uid is written by hand: `write!` costs more than the rest.
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    let mut uid = o.uid;
    loop {
        at -= 1;
        digits[at] = b'0' + (uid % 10) as u8;
        uid /= 10;
        if uid == 0 {
            break;
        }
    }
    let uid = &digits[at..];
    let mut buf = [0u8; 160];
    let n = uid.len() + 1 + id.len();
    if n <= buf.len() {
        buf[..uid.len()].copy_from_slice(uid);
        buf[uid.len()] = b':';
        buf[uid.len() + 1..n].copy_from_slice(id.as_bytes());
        if let Ok(s) = std::str::from_utf8(&buf[..n]) {
            return f(s);
        }
    }
    f(&format!("{}:{id}", o.uid))
}

/// The client's id within a key made by [`owner_key`].
pub fn client_id(key: &str, owned: bool) -> &str {
    match key.split_once(':') {
        Some((_, id)) if owned => id,
        _ => key,
    }
}

/// Everything needed to make one attempt, fixed at acceptance.
///
/// Times are Unix milliseconds (not `Instant`s) because they are written to
/// the spool and must mean the same thing after a restart.
#[derive(Debug, Clone)]
pub struct Job {
    /// The caller's id or one ffd made: what the caller is told and what is
    /// sent in the id header.
    pub id: Arc<str>,
    /// Who sent it (`None`: accepted before requests had owners).
    pub owner: Option<Owner>,
    /// [`owner_key`] of `owner` and `id`: the request's name in the
    /// scheduler and in the spool's outcome records.
    pub key: Arc<str>,
    /// HTTP method.
    pub method: Method,
    /// Absolute http/https URI.
    pub uri: Uri,
    /// The named destination it was sent to (`dest`): its signing secrets,
    /// TLS settings, limits and backoff apply. `None` for a raw `url`.
    pub dest: Option<Arc<str>>,
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

/// The queue (and limit, and breaker) a request waits in: its host for a
/// raw `url`, its destination for a `dest` (each destination has its own
/// limits, even when two share a host).
pub fn lane_key(uri: &Uri, dest: Option<&str>) -> String {
    match dest {
        Some(d) => format!("{} (dest {d})", host_key(uri)),
        None => host_key(uri),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_scope_ids_by_owner_and_give_the_id_back() {
        let alice = Some(Owner {
            uid: 1000,
            gid: 100,
        });
        let bob = Some(Owner {
            uid: 1001,
            gid: 100,
        });
        assert_eq!(&*owner_key(alice, "order-1"), "1000:order-1");
        assert_ne!(owner_key(alice, "order-1"), owner_key(bob, "order-1"));
        assert_eq!(&*owner_key(None, "order-1"), "order-1");
        for uid in [0, 7, 10, 99, 4_294_967_295] {
            let o = Some(Owner { uid, gid: 0 });
            assert_eq!(&*owner_key(o, "x"), format!("{uid}:x"));
        }
        let long = "x".repeat(200);
        let k = owner_key(alice, &long);
        assert_eq!(client_id(&k, true), long);
        assert_eq!(client_id("1000:a:b", true), "a:b");
        assert_eq!(client_id("a:b", false), "a:b");
    }
}
