//! Delivery: one HTTP attempt of a job, over a shared pooled client.
//!
//! Rooms: `request` (the one place a job becomes the request sent: signing
//! goes there), `attempt` (one exchange, bounded, and what it came to),
//! `retry` (the pure retry policy). The connector is built here, so the
//! destination policy (which sees the address dialled) will wrap it.
//! Delivery knows nothing of the scheduler or the spool: it takes a
//! [`Job`](crate::job::Job) and returns an [`Attempt`].

mod attempt;
mod request;
pub mod retry;

pub use attempt::{Attempt, Failure};

use crate::config::DeliveryConfig;
use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::time::Duration;

/// The shared HTTP client and the fixed parts of every request.
pub struct Deliverer {
    pub(crate) client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
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
