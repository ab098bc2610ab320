//! The connector: where the destination policy meets the address dialled,
//! and where proxies are used.
//!
//! - A name is resolved by [`PolicyResolver`], which checks every address
//!   and hands hyper-util's `HttpConnector` only the allowed ones: it dials
//!   exactly the addresses that were checked, so DNS rebinding has no window
//!   between check and connect. A name whose addresses are all denied fails
//!   with [`AllDenied`], before any connection.
//! - An address written in the URL (which the `HttpConnector` dials without
//!   resolving) is checked by [`Dialer`] first.
//! - With a proxy (`HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` or
//!   `delivery.proxy`), the proxy's address is what is dialled, so it is
//!   what the policy checks; the URL's host is judged by name only
//!   (addresses, `localhost`). `http://` goes to the proxy in absolute form;
//!   `https://` through a `CONNECT` tunnel, TLS end to end.

use crate::policy::{AllDenied, Denied, Policy};
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The policy in force, swapped whole on SIGHUP.
#[derive(Clone, Default)]
pub struct SharedPolicy(Arc<RwLock<Arc<Policy>>>);

impl SharedPolicy {
    /// The rules now.
    pub fn get(&self) -> Arc<Policy> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the rules.
    pub fn set(&self, p: Policy) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
    }
}

/// Resolves a name and keeps only the addresses the policy allows.
#[derive(Clone)]
pub struct PolicyResolver {
    gai: GaiResolver,
    policy: SharedPolicy,
}

impl Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.get();
        let resolving = self.gai.call(name.clone());
        Box::pin(async move {
            let addrs = resolving.await?;
            let mut allowed = Vec::new();
            let mut denied = Vec::new();
            for a in addrs {
                match policy.check(a.ip()) {
                    // Dial the canonical form: an IPv4-mapped IPv6 address
                    // is the IPv4 address it maps.
                    Ok(()) => allowed.push(SocketAddr::new(a.ip().to_canonical(), a.port())),
                    Err(d) => denied.push(d),
                }
            }
            if allowed.is_empty() && !denied.is_empty() {
                return Err(Box::new(AllDenied {
                    host: name.as_str().to_string(),
                    denied,
                }) as BoxError);
            }
            Ok(allowed.into_iter())
        })
    }
}

/// A connection made by [`Dialer`]: a TCP stream, to the target or to a
/// proxy (then requests go in absolute form).
pub struct Conn {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// The TCP side of every connection: policy, proxy, then `HttpConnector`.
/// TLS (hyper-rustls) wraps it.
#[derive(Clone)]
pub struct Dialer {
    http: HttpConnector<PolicyResolver>,
    policy: SharedPolicy,
    proxy: Arc<Matcher>,
}

impl Dialer {
    /// A dialer checking against `policy`, using `proxy`.
    pub fn new(policy: SharedPolicy, proxy: Arc<Matcher>, connect_timeout_ms: u64) -> Dialer {
        let mut http = HttpConnector::new_with_resolver(PolicyResolver {
            gai: GaiResolver::new(),
            policy: policy.clone(),
        });
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(std::time::Duration::from_millis(connect_timeout_ms)));
        http.set_keepalive(Some(std::time::Duration::from_secs(60)));
        Dialer {
            http,
            policy,
            proxy,
        }
    }
}

impl Service<Uri> for Dialer {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let policy = self.policy.get();
        let mut http = self.http.clone();
        let proxy = self.proxy.intercept(&dst);
        Box::pin(async move {
            let host = dst.host().ok_or("URL has no host")?;
            let Some(proxy) = proxy else {
                policy.check_host(host)?;
                let io = http.call(dst).await?;
                return Ok(Conn { io, proxied: false });
            };
            policy.check_host_by_name(host)?;
            if let Some(h) = proxy.uri().host() {
                policy.check_host(h)?;
            }
            // The proxy's URI holds no credentials (the matcher keeps them apart).
            let via = |e: BoxError| -> BoxError {
                Box::new(ViaProxy {
                    proxy: proxy
                        .uri()
                        .authority()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    cause: e,
                })
            };
            if dst.scheme_str() == Some("https") {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), http);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let io = tunnel.call(dst).await.map_err(|e| via(e.into()))?;
                Ok(Conn { io, proxied: false })
            } else {
                let io = http
                    .call(proxy.uri().clone())
                    .await
                    .map_err(|e| via(e.into()))?;
                Ok(Conn { io, proxied: true })
            }
        })
    }
}

/// A failure on the way through a proxy: names the proxy (host and port).
#[derive(Debug)]
struct ViaProxy {
    proxy: String,
    cause: BoxError,
}

impl std::fmt::Display for ViaProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "through proxy {}", self.proxy)
    }
}

impl std::error::Error for ViaProxy {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.cause)
    }
}

/// The policy's refusal somewhere in an error's chain, as text: such a
/// failure is final (retrying cannot help), not a connection error.
pub fn denied_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<Denied>() {
            return Some(d.to_string());
        }
        if let Some(d) = err.downcast_ref::<AllDenied>() {
            return Some(d.to_string());
        }
        cur = err.source();
    }
    None
}

/// The proxy settings: `delivery.proxy` (all schemes; `""` for none) or
/// `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` (and lower case), and
/// `delivery.no_proxy` or `NO_PROXY`, matched as curl does. Only `http://`
/// proxies are supported; errors name the variable, never its value (it
/// may hold a password). The flag: whether any proxy serves `http://`
/// URLs, so requests need not ask the matcher when none does.
pub fn proxy_matcher(
    proxy: Option<&str>,
    no_proxy: Option<&str>,
) -> Result<(Matcher, bool), String> {
    let env = |names: [&str; 2]| -> (String, String) {
        for n in names {
            if let Ok(v) = std::env::var(n) {
                return (n.to_string(), v);
            }
        }
        (names[0].to_string(), String::new())
    };
    let none = || (String::new(), String::new());
    let (all, http, https) = match proxy {
        Some(p) => (
            ("delivery.proxy".to_string(), p.to_string()),
            none(),
            none(),
        ),
        None => (
            env(["ALL_PROXY", "all_proxy"]),
            env(["HTTP_PROXY", "http_proxy"]),
            env(["HTTPS_PROXY", "https_proxy"]),
        ),
    };
    for (name, value) in [&all, &http, &https] {
        if value.is_empty() {
            continue;
        }
        match value.parse::<Uri>() {
            Ok(u) if u.host().is_some() && matches!(u.scheme_str(), None | Some("http")) => {}
            Ok(u) if u.scheme_str().is_some_and(|s| s != "http") => {
                return Err(format!(
                    "{name}: proxy scheme `{}` is not supported; use an http:// proxy",
                    u.scheme_str().unwrap_or("")
                ))
            }
            _ => return Err(format!("{name}: not a proxy URL")),
        }
    }
    let no = match no_proxy {
        Some(n) => n.to_string(),
        None => env(["NO_PROXY", "no_proxy"]).1,
    };
    // The matcher's http proxy is `http`, else `all`; an empty one is none.
    let serves_http = !all.1.is_empty() || !http.1.is_empty();
    let matcher = Matcher::builder()
        .all(all.1)
        .http(http.1)
        .https(https.1)
        .no(no)
        .build();
    Ok((matcher, serves_http))
}
