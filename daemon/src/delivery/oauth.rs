//! OAuth2 client credentials (RFC 6749, section 4.4): a destination's
//! token, fetched from its token endpoint, cached until `expires_in` minus
//! `refresh_skew_ms`, sent as `authorization: Bearer …`.
//!
//! - One token request serves every delivery in flight: the first caller
//!   that finds no fresh token fetches one, holding `fetch` (an async lock,
//!   held across that request only); the callers queued behind it take its
//!   answer, a failure included, instead of asking again.
//! - The token endpoint is dialled with the destination's client, so the
//!   policy, the proxy settings and its `ca_file` apply as to any dial.
//! - The secret and the token are secrets: the header values are marked
//!   sensitive, and no error or log line holds them (a token endpoint's
//!   `error_description` that quotes the secret is redacted).

use super::{Deliverer, HttpClient};
use crate::clock::now_ms;
use crate::config::{AuthMethod, SecretString};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use std::sync::Mutex;
use std::time::Duration;

/// Bytes of a token endpoint's answer read at most.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What a token request is made of. Equal settings (the secret included)
/// keep the cached token across a SIGHUP; any change drops it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Settings {
    pub dest: String,
    pub token_url: Uri,
    pub client_id: String,
    pub secret: SecretString,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub method: AuthMethod,
    pub skew_ms: u64,
}

/// A destination's token and how it is fetched.
pub(super) struct OAuth {
    pub settings: Settings,
    cached: Mutex<Cached>,
    /// Held by the one caller fetching a token.
    fetch: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cached {
    token: Option<Token>,
    /// Token requests finished so far.
    gen: u64,
    /// What the last one failed with, if it did.
    error: Option<String>,
}

#[derive(Clone)]
struct Token {
    /// `Bearer …`, sensitive.
    bearer: HeaderValue,
    /// When to fetch the next one (Unix ms).
    refresh_ms: u64,
}

impl OAuth {
    pub fn new(settings: Settings) -> OAuth {
        OAuth {
            settings,
            cached: Mutex::new(Cached::default()),
            fetch: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.cached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The secret and the token now cached, for redaction.
    pub fn secrets(&self) -> Vec<Vec<u8>> {
        let mut v = vec![self.settings.secret.0.as_bytes().to_vec()];
        if let Some(t) = &self.cached().token {
            let b = t.bearer.as_bytes();
            v.push(b.strip_prefix(b"Bearer ").unwrap_or(b).to_vec());
        }
        v
    }
}

impl Deliverer {
    /// The `authorization` value for `o`'s destination: the cached token
    /// while it is fresh, else a new one. `stale`: a value the destination
    /// just refused (401), which is not used again.
    pub(super) async fn bearer(
        &self,
        o: &OAuth,
        client: &HttpClient,
        timeout_ms: u64,
        stale: Option<&HeaderValue>,
    ) -> Result<HeaderValue, String> {
        let gen = {
            let c = o.cached();
            match &c.token {
                Some(t) if t.refresh_ms > now_ms() && Some(&t.bearer) != stale => {
                    return Ok(t.bearer.clone())
                }
                _ => c.gen,
            }
        };
        let _one = o.fetch.lock().await;
        {
            // A request finished while this caller waited: its answer
            // serves this caller too.
            let c = o.cached();
            if c.gen != gen {
                match (&c.token, &c.error) {
                    (Some(t), _) if Some(&t.bearer) != stale => return Ok(t.bearer.clone()),
                    (None, Some(e)) => return Err(e.clone()),
                    _ => {}
                }
            }
        }
        let answer = self.fetch_token(o, client, timeout_ms).await;
        let mut c = o.cached();
        c.gen += 1;
        match answer {
            Ok(t) => {
                let b = t.bearer.clone();
                c.token = Some(t);
                c.error = None;
                Ok(b)
            }
            Err(e) => {
                c.token = None;
                c.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// One token request, logged (never with the secret or the token).
    async fn fetch_token(
        &self,
        o: &OAuth,
        client: &HttpClient,
        timeout_ms: u64,
    ) -> Result<Token, String> {
        let s = &o.settings;
        let r = tokio::time::timeout(
            Duration::from_millis(timeout_ms),
            self.token_exchange(s, client),
        )
        .await
        .unwrap_or_else(|_| Err(format!("oauth2 token: timed out after {timeout_ms} ms")));
        match &r {
            Ok(t) => {
                tracing::debug!(destination = %s.dest, refresh_in_ms = t.refresh_ms.saturating_sub(now_ms()), "oauth2: token fetched");
            }
            Err(e) if e.contains(" invalid_client") || e.contains(" unauthorized_client") => {
                tracing::warn!(destination = %s.dest, error = %e, "oauth2: the token endpoint refuses ffd's client credentials; fix client_id or the secret, then reload (SIGHUP); requests are retried on their schedule");
            }
            Err(e) => {
                tracing::warn!(destination = %s.dest, error = %e, "oauth2: no token; requests are retried on their schedule");
            }
        }
        r
    }

    async fn token_exchange(&self, s: &Settings, client: &HttpClient) -> Result<Token, String> {
        let mut form = String::from("grant_type=client_credentials");
        let mut field = |k: &str, v: &str| {
            form.push('&');
            form.push_str(k);
            form.push('=');
            form_encode(v, &mut form);
        };
        if let Some(v) = &s.scope {
            field("scope", v);
        }
        if let Some(v) = &s.audience {
            field("audience", v);
        }
        let mut basic = None;
        match s.method {
            AuthMethod::Post => {
                field("client_id", &s.client_id);
                field("client_secret", &s.secret.0);
            }
            AuthMethod::Basic => {
                // RFC 6749, 2.3.1: both form-encoded, then base64.
                let mut pair = String::new();
                form_encode(&s.client_id, &mut pair);
                pair.push(':');
                form_encode(&s.secret.0, &mut pair);
                let mut v = String::from("Basic ");
                base64::engine::general_purpose::STANDARD.encode_string(pair, &mut v);
                let mut v = HeaderValue::from_str(&v).map_err(|_| "oauth2 token: bad client id")?;
                v.set_sensitive(true);
                basic = Some(v);
            }
        }
        let mut req = Request::new(Full::new(Bytes::from(form)));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = s.token_url.clone();
        let h = req.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        h.insert(http::header::USER_AGENT, self.user_agent.clone());
        if let Some(b) = basic {
            h.insert(http::header::AUTHORIZATION, b);
        }
        self.proxy_auth(&s.token_url, h);
        let resp = client
            .request(req)
            .await
            .map_err(|e| match super::connect::denied_in(&e) {
                Some(denied) => format!("oauth2 token: {denied}"),
                None => format!("oauth2 token: {}", super::attempt::error_chain(&e)),
            })?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| {
                format!(
                    "oauth2 token: HTTP {} answer unreadable: {e}",
                    status.as_u16()
                )
            })?
            .to_bytes();
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let field = |k: &str| json.as_ref().and_then(|j| j.get(k));
        let text = |k: &str| field(k).and_then(|v| v.as_str());
        if !status.is_success() {
            let code = status.as_u16();
            return Err(match text("error") {
                Some(e) => {
                    let mut m = format!("oauth2 token: HTTP {code} {}", clean(e, 64, s));
                    if let Some(d) = text("error_description").filter(|d| !d.is_empty()) {
                        m.push_str(": ");
                        m.push_str(&clean(d, 200, s));
                    }
                    m
                }
                None => format!(
                    "oauth2 token: HTTP {code} {}",
                    status.canonical_reason().unwrap_or("")
                )
                .trim_end()
                .to_string(),
            });
        }
        let Some(token) = text("access_token").filter(|t| !t.is_empty()) else {
            return Err(format!(
                "oauth2 token: HTTP {} answer has no access_token",
                status.as_u16()
            ));
        };
        let mut bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "oauth2 token: access_token is not a valid header value".to_string())?;
        bearer.set_sensitive(true);
        let expires_s = field("expires_in").and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .or_else(|| v.as_str()?.trim().parse().ok())
        });
        let now = now_ms();
        let refresh_ms = match expires_s {
            // A lifetime shorter than the skew: refresh at half of it.
            Some(secs) => {
                let life = secs.saturating_mul(1000);
                let early = if life > s.skew_ms {
                    life - s.skew_ms
                } else {
                    life / 2
                };
                now.saturating_add(early)
            }
            // No lifetime: until the destination refuses it (401).
            None => u64::MAX,
        };
        Ok(Token { bearer, refresh_ms })
    }
}

/// `application/x-www-form-urlencoded`: unreserved bytes as they are,
/// space as `+`, the rest `%XX`.
fn form_encode(v: &str, out: &mut String) {
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
    }
}

/// A server's text made fit for an error: one line, at most `max` chars,
/// never the client secret.
fn clean(t: &str, max: usize, s: &Settings) -> String {
    let mut out: String = t
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if !s.secret.0.is_empty() && out.contains(&s.secret.0) {
        out = out.replace(&s.secret.0, "<redacted>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        let mut s = String::new();
        form_encode("read write:all ü&=+", &mut s);
        assert_eq!(s, "read+write%3Aall+%C3%BC%26%3D%2B");
    }
}
