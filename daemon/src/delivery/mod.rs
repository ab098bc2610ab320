//! Delivery: one HTTP attempt of a job, over a shared pooled client.
//!
//! Rooms: `request` (the one place a job becomes the request sent: its
//! Standard Webhooks signature, made with `sign`, and its credential
//! headers), `attempt` (one exchange, bounded, and what it came to; a 401
//! with an OAuth2 token refreshes it once), `oauth` (OAuth2 client
//! credentials tokens), `retry` (the pure retry policy and `retry_on`),
//! `connect` (the connector: the destination policy on the address dialled,
//! proxies). Delivery knows nothing of the scheduler or the spool: it takes
//! a [`Job`](crate::job::Job) and returns an [`Attempt`]. What it holds of a
//! named destination (secrets, credential headers, OAuth2 token, retry
//! rules, TLS client) is reloaded on SIGHUP.

mod attempt;
pub mod compress;
pub mod connect;
mod oauth;
mod request;
pub mod retry;
pub mod sign;

pub use attempt::{Attempt, Failure};

use crate::config::{credential_path, Config, DeliveryConfig, Destination};
use crate::policy::Policy;
use anyhow::{Context, Result};
use bytes::Bytes;
use connect::{Dialer, SharedPolicy};
use http::{HeaderName, HeaderValue};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The pooled HTTP client type.
pub(crate) type HttpClient = Client<HttpsConnector<Dialer>, Full<Bytes>>;

/// What delivery keeps of a named destination.
struct Dest {
    /// Signing keys; empty: requests are not signed.
    keys: sign::Keys,
    /// Its own client when it sets `ca_file` or a client certificate.
    client: Option<HttpClient>,
    /// `compression`, when it is not `none`.
    codec: Option<compress::Codec>,
    /// `header_files`, read (sensitive values): set on every request.
    creds: Vec<(HeaderName, HeaderValue)>,
    /// `oauth2`: its settings and cached token (kept across a SIGHUP
    /// that changes neither).
    oauth: Option<Arc<oauth::OAuth>>,
    /// `retry_on` and `retry_after_max_ms`, its own or `delivery`'s.
    retry: retry::RetryRules,
}

impl Dest {
    /// The values no answer may show: header-file values, the OAuth2
    /// secret and token.
    fn secrets(&self) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = self
            .creds
            .iter()
            .map(|(_, v)| v.as_bytes().to_vec())
            .collect();
        if let Some(o) = &self.oauth {
            v.extend(o.secrets());
        }
        v
    }
}

/// Every named destination, and the retry rules of raw URLs; swapped whole
/// on SIGHUP.
#[derive(Default)]
struct Dests {
    by_name: HashMap<String, Dest>,
    retry: retry::RetryRules,
}

/// The shared HTTP client and the fixed parts of every request.
pub struct Deliverer {
    pub(crate) client: HttpClient,
    dests: RwLock<Arc<Dests>>,
    policy: SharedPolicy,
    proxy: Arc<Matcher>,
    /// Whether `proxy` has a proxy for `http://` URLs at all.
    http_proxy: bool,
    /// What a destination's own client is built from.
    delivery: DeliveryConfig,
    id_header: Option<HeaderName>,
    user_agent: HeaderValue,
    snippet_bytes: usize,
}

impl Deliverer {
    /// Builds the pooled client: HTTP/1.1 and HTTP/2 (by ALPN), system roots
    /// plus `ca_file`, the policy and the proxy settings; and each
    /// destination's keys and TLS client.
    pub fn new(config: &Config) -> Result<Arc<Deliverer>> {
        let cfg = &config.delivery;
        let policy = SharedPolicy::default();
        policy.set(policy_of(config)?);
        let (proxy, http_proxy) = connect::proxy_matcher(
            cfg.proxy.as_ref().map(|s| s.0.as_str()),
            cfg.no_proxy.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("proxy settings: {e}"))?;
        let proxy = Arc::new(proxy);
        let client = build_client(cfg, &policy, &proxy, tls_config(cfg, None)?);
        let id_header = if cfg.id_header.is_empty() {
            None
        } else {
            Some(HeaderName::from_bytes(cfg.id_header.as_bytes()).context("delivery.id_header")?)
        };
        let d = Deliverer {
            client,
            dests: RwLock::new(Arc::new(Dests::default())),
            policy,
            proxy,
            http_proxy,
            delivery: cfg.clone(),
            id_header,
            user_agent: HeaderValue::from_str(&cfg.user_agent).context("delivery.user_agent")?,
            snippet_bytes: cfg.response_snippet_bytes,
        };
        d.set_destinations(config, false)?;
        Ok(Arc::new(d))
    }

    /// The destination policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.get()
    }

    /// SIGHUP: the policy, and each destination's secrets (files read
    /// again), OAuth2 settings, retry rules and TLS client. On error
    /// nothing changes. A `header_files` or `client_secret_file` that
    /// cannot be read keeps its last good value (logged by key, never by
    /// value).
    pub fn reload(&self, config: &Config) -> Result<()> {
        let policy = policy_of(config)?;
        self.set_destinations(config, true)?;
        self.policy.set(policy);
        Ok(())
    }

    /// The destinations now.
    fn dests(&self) -> Arc<Dests> {
        self.dests.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_destinations(&self, config: &Config, reload: bool) -> Result<()> {
        let old = self.dests();
        let dc = &config.delivery;
        let rules = |list: &[crate::config::RetryOn], after: u64| {
            retry::RetryRules::new(list.iter().filter_map(|r| r.range().ok()), after)
        };
        let mut dests = Dests {
            by_name: HashMap::with_capacity(config.destinations.len()),
            retry: rules(&dc.retry_on, dc.retry_after_max_ms),
        };
        for (name, d) in &config.destinations {
            let was = old.by_name.get(name);
            // A file that cannot be read at SIGHUP keeps its last value.
            let keep = |e: anyhow::Error| {
                tracing::warn!(error = %format!("{e:#}"), "SIGHUP: credential file unreadable; keeping its last good value");
            };
            let mut creds = Vec::with_capacity(d.header_files.len());
            for h in d.header_files.keys() {
                let hn = HeaderName::from_bytes(h.as_bytes())
                    .with_context(|| format!("destinations.{name}.header_files.{h}"))?;
                let v = match d.header_file(name, h) {
                    Ok(v) => v,
                    Err(e) => {
                        let last = was.filter(|_| reload).and_then(|w| {
                            w.creds
                                .iter()
                                .find(|(n, _)| *n == hn)
                                .map(|(_, v)| v.clone())
                        });
                        match last {
                            Some(v) => {
                                keep(e);
                                v
                            }
                            None => return Err(e),
                        }
                    }
                };
                creds.push((hn, v));
            }
            let oauth = match &d.oauth2 {
                None => None,
                Some(o) => {
                    let last = was.and_then(|w| w.oauth.clone()).filter(|_| reload);
                    let secret = match d.oauth2_secret(name) {
                        Ok(s) => s,
                        Err(e) => match &last {
                            Some(l) if o.client_secret_file.is_some() => {
                                keep(e);
                                l.settings.secret.clone()
                            }
                            _ => return Err(e),
                        },
                    };
                    let settings = oauth::Settings {
                        dest: name.clone(),
                        token_url: o.token_url.parse().with_context(|| {
                            format!("key `destinations.{name}.oauth2.token_url`")
                        })?,
                        client_id: o.client_id.clone(),
                        secret,
                        scope: o.scope.clone(),
                        audience: o.audience.clone(),
                        method: o.auth_method,
                        skew_ms: o.refresh_skew_ms,
                    };
                    Some(match last {
                        Some(l) if l.settings == settings => l,
                        Some(_) => {
                            tracing::info!(destination = %name, "SIGHUP: oauth2 settings or secret changed; the cached token is dropped");
                            Arc::new(oauth::OAuth::new(settings))
                        }
                        None => Arc::new(oauth::OAuth::new(settings)),
                    })
                }
            };
            let retry = rules(
                d.retry_on.as_deref().unwrap_or(&dc.retry_on),
                d.retry_after_max_ms.unwrap_or(dc.retry_after_max_ms),
            );
            let keys = sign::Keys::new(&d.signing_keys(name)?);
            let client = if d.ca_file.is_some() || d.client_cert_file.is_some() {
                let tls = tls_config(&self.delivery, Some((name, d)))?;
                Some(build_client(&self.delivery, &self.policy, &self.proxy, tls))
            } else {
                None
            };
            let codec = compress::Codec::of(d.compression, d.compression_level);
            dests.by_name.insert(
                name.clone(),
                Dest {
                    keys,
                    client,
                    codec,
                    creds,
                    oauth,
                    retry,
                },
            );
        }
        *self.dests.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(dests);
        Ok(())
    }
}

fn policy_of(config: &Config) -> Result<Policy> {
    let p = &config.policy;
    Policy::new(&p.deny, &p.allow, p.raw_urls).map_err(|e| anyhow::anyhow!("key `policy.{e}"))
}

fn build_client(
    cfg: &DeliveryConfig,
    policy: &SharedPolicy,
    proxy: &Arc<Matcher>,
    tls: rustls::ClientConfig,
) -> HttpClient {
    let dialer = Dialer::new(policy.clone(), proxy.clone(), cfg.connect_timeout_ms);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(dialer);
    // The pool retries a request at once on a fresh connection when a
    // reused one fails before the request was written (a server that
    // closed an idle keep-alive); that retry does not count as an attempt.
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_millis(cfg.pool_idle_timeout_ms))
        // Fewer idle slots than requests in flight per host would close
        // and reopen connections under steady load. 0 keeps none: with
        // many hosts each seen once, idle sockets would pile up to the
        // file descriptor limit.
        .pool_max_idle_per_host(match cfg.pool_idle_per_host {
            0 => 0,
            n => n.max(cfg.max_in_flight_per_host),
        })
        .retry_canceled_requests(true)
        .build(https)
}

fn add_pem_certs(roots: &mut rustls::RootCertStore, key: &str, path: &Path) -> Result<()> {
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{key}: cannot read {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{key}: {} is not valid PEM", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{key}: {} holds no certificate", path.display());
    }
    for c in certs {
        roots
            .add(c)
            .with_context(|| format!("{key}: bad certificate in {}", path.display()))?;
    }
    Ok(())
}

fn tls_config(
    cfg: &DeliveryConfig,
    dest: Option<(&str, &Destination)>,
) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 && dest.is_none() {
        tracing::warn!("no system CA certificates found; https works only with `delivery.ca_file`");
    }
    if let Some(path) = &cfg.ca_file {
        add_pem_certs(&mut roots, "delivery.ca_file", path)?;
    }
    let mut client_auth = None;
    if let Some((name, d)) = dest {
        if let Some(f) = &d.ca_file {
            let key = format!("destinations.{name}.ca_file");
            let path = credential_path(f).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
            add_pem_certs(&mut roots, &key, &path)?;
        }
        if let (Some(cert), Some(keyf)) = (&d.client_cert_file, &d.client_key_file) {
            let ck = format!("destinations.{name}.client_cert_file");
            let kk = format!("destinations.{name}.client_key_file");
            let cert = credential_path(cert).map_err(|e| anyhow::anyhow!("{ck}: {e}"))?;
            let keyf = credential_path(keyf).map_err(|e| anyhow::anyhow!("{kk}: {e}"))?;
            let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(&cert)
                .with_context(|| format!("{ck}: cannot read {}", cert.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("{ck}: {} is not valid PEM", cert.display()))?;
            if chain.is_empty() {
                anyhow::bail!("{ck}: {} holds no certificate", cert.display());
            }
            // The key's own error text is not shown: it could quote key material.
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&keyf).map_err(|_| {
                anyhow::anyhow!("{kk}: {} holds no readable PEM private key", keyf.display())
            })?;
            client_auth = Some((chain, key, ck));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    Ok(match client_auth {
        Some((chain, key, ck)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            anyhow::anyhow!("{ck}: the certificate and key do not make a client identity: {e}")
        })?,
        None => builder.with_no_client_auth(),
    })
}
