//! Delivery: one HTTP attempt of a job, over a shared pooled client.
//!
//! [`Deliverer::build_request`] is the one place where a job becomes the
//! request sent, so signing will go there; the connector is built here too,
//! so the destination policy (which sees the address dialed) will wrap it.

use crate::config::DeliveryConfig;
use crate::job::Job;
use crate::retry::{classify_status, parse_retry_after, Verdict};
use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
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

/// The shared HTTP client and the fixed parts of every request.
pub struct Deliverer {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    id_header: Option<HeaderName>,
    user_agent: HeaderValue,
    snippet_bytes: usize,
}

impl Deliverer {
    /// Builds the pooled client: HTTP/1.1 and HTTP/2 (by ALPN), system roots
    /// plus `ca_file`.
    pub fn new(cfg: &DeliveryConfig) -> Result<Arc<Deliverer>> {
        let tls = tls_config(cfg)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        // The pool retries a request at once on a fresh connection when a
        // reused one fails before the request was written (a server that
        // closed an idle keep-alive); that retry does not count as an attempt.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_millis(cfg.pool_idle_timeout_ms))
            // Fewer idle slots than requests in flight per host would close
            // and reopen connections under steady load.
            .pool_max_idle_per_host(cfg.pool_idle_per_host.max(cfg.max_in_flight_per_host))
            .retry_canceled_requests(true)
            .build(https);
        let id_header = if cfg.id_header.is_empty() {
            None
        } else {
            Some(HeaderName::from_bytes(cfg.id_header.as_bytes()).context("delivery.id_header")?)
        };
        Ok(Arc::new(Deliverer {
            client,
            id_header,
            user_agent: HeaderValue::from_str(&cfg.user_agent).context("delivery.user_agent")?,
            snippet_bytes: cfg.response_snippet_bytes,
        }))
    }

    /// Turns a job into the request sent. The caller's headers win over the
    /// ones ffd adds.
    pub fn build_request(&self, job: &Job) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(job.body.clone()));
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
        req
    }

    /// Makes one attempt, bounded by the job's timeout (response body included).
    pub async fn attempt(&self, job: &Job) -> Attempt {
        let started_ms = crate::scheduler::now_ms();
        let req = self.build_request(job);
        let timeout = Duration::from_millis(job.timeout_ms);
        let mut a = match tokio::time::timeout(timeout, self.exchange(req)).await {
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

    async fn exchange(&self, req: Request<Full<Bytes>>) -> Attempt {
        let resp = match self.client.request(req).await {
            Ok(r) => r,
            Err(e) => {
                return Attempt {
                    verdict: Verdict::Retry,
                    status: None,
                    retry_after_ms: None,
                    error: Some(error_chain(&e)),
                    snippet: None,
                    started_ms: 0,
                }
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

fn tls_config(cfg: &DeliveryConfig) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::warn!("no system CA certificates found; https works only with `delivery.ca_file`");
    }
    if let Some(path) = &cfg.ca_file {
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .with_context(|| format!("delivery.ca_file: cannot read {}", path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("delivery.ca_file: {} is not valid PEM", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("delivery.ca_file: {} holds no certificate", path.display());
        }
        for c in certs {
            roots.add(c).with_context(|| {
                format!("delivery.ca_file: bad certificate in {}", path.display())
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
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
