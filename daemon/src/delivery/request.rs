//! The request sent for a job: the one place its bytes are put together,
//! and where it is signed.

use super::{Deliverer, Dest, HttpClient};
use crate::clock::now_ms;
use crate::job::Job;
use bytes::Bytes;
use http::header::CONTENT_ENCODING;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::Full;

/// The Standard Webhooks headers.
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// Unix seconds of the attempt.
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// `v1,<base64>` per secret, space-separated.
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

impl Deliverer {
    /// Turns a job into the request sent, and the destination's own client
    /// when it has one (`None`: the shared one; a clone of it per request
    /// cost a handful of atomic counts up and down for nothing).
    /// The caller's headers win over the ones ffd adds, except the
    /// signature headers of a signing destination and its credential
    /// headers (`header_files`, the OAuth2 `bearer`), which only ffd sets.
    pub(super) fn build_request(
        &self,
        job: &Job,
        dest: Option<&Dest>,
        bearer: Option<&HeaderValue>,
    ) -> Result<(Option<HttpClient>, Request<Full<Bytes>>), String> {
        // Compressed once per attempt, and signed as sent. A caller that
        // set its own `content-encoding` sent bytes already encoded.
        let codec = dest
            .and_then(|d| d.codec)
            .filter(|_| !job.body.is_empty())
            .filter(|_| !job.headers.iter().any(|(n, _)| n == CONTENT_ENCODING));
        let body = match codec {
            Some(c) => Bytes::from(
                c.compress(&job.body)
                    .map_err(|e| format!("compressing the body: {e}"))?,
            ),
            None => job.body.clone(),
        };
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = job.method.clone();
        *req.uri_mut() = job.uri.clone();
        let headers = req.headers_mut();
        for (name, value) in &job.headers {
            headers.append(name.clone(), value.clone());
        }
        if let Some(h) = &self.id_header {
            if !headers.contains_key(h) {
                if let Ok(v) = HeaderValue::from_str(&job.id) {
                    headers.insert(h.clone(), v);
                }
            }
        }
        if !headers.contains_key(http::header::USER_AGENT) {
            headers.insert(http::header::USER_AGENT, self.user_agent.clone());
        }
        if let Some(c) = codec {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(c.encoding()));
        }
        let mut client = None;
        if let Some(dest) = dest {
            if !dest.keys.is_empty() {
                // The id as ffd reports it, the same on every attempt; the
                // timestamp of this attempt; the exact body bytes sent.
                let ts = now_ms() / 1000;
                let id = HeaderValue::from_str(&job.id).map_err(|_| "id is not a header value")?;
                headers.insert(WEBHOOK_ID, id);
                headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(ts));
                headers.insert(WEBHOOK_SIGNATURE, dest.keys.signature(&job.id, ts, &body));
            }
            for (name, value) in &dest.creds {
                headers.insert(name.clone(), value.clone());
            }
            if let Some(b) = bearer {
                headers.insert(http::header::AUTHORIZATION, b.clone());
            }
            client = dest.client.clone();
        }
        self.proxy_auth(&job.uri, headers);
        Ok((client, req))
    }

    /// A plain-http request through a proxy carries the proxy's
    /// credentials (https ones go in the CONNECT). Without an http proxy
    /// the matcher is not asked: it would parse the host against
    /// `no_proxy` on every request to answer no.
    pub(super) fn proxy_auth(&self, uri: &http::Uri, headers: &mut http::HeaderMap) {
        if self.http_proxy && uri.scheme_str() == Some("http") {
            if let Some(auth) = self
                .proxy
                .intercept(uri)
                .and_then(|i| i.basic_auth().cloned())
            {
                headers.insert(http::header::PROXY_AUTHORIZATION, auth);
            }
        }
    }
}
