//! The metrics and health endpoint (`[metrics] listen`): a small HTTP/1.1
//! server on a TCP address or a Unix socket.
//!
//! - `GET /metrics`: the Prometheus exposition (OpenMetrics text).
//! - `GET /livez`: 200 while the runtime answers.
//! - `GET /readyz`: 200 while ffd can accept and acknowledge (spool
//!   writable and below its limit, not draining); never fails because a
//!   receiver is down.
//! - `GET /healthz`: a JSON verdict, `green`, `yellow` (a host paused, a
//!   backlog waiting for a slot) or `red` (the spool cannot take writes),
//!   with its reasons; 503 only when red.

use crate::config::Listen;
use crate::scheduler::{Engine, Health};
use crate::shutdown::Shutdown;
use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::sync::Arc;
use tracing::{debug, info};

/// A ready backlog older than this makes `/healthz` yellow.
const OLD_BACKLOG_S: f64 = 60.0;

/// Binds the endpoint (before ffd says it is ready, so a bad address stops
/// it at start).
pub async fn bind(listen: &Listen) -> Result<Listener> {
    Ok(match listen {
        Listen::Tcp(addr) => Listener::Tcp(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics.listen: cannot bind {addr}"))?,
        ),
        Listen::Unix(path) => {
            use std::os::unix::fs::FileTypeExt;
            // A stale socket from a previous run is ours to replace; any
            // other file is not.
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_socket() => {
                    let _ = std::fs::remove_file(path);
                }
                Ok(_) => anyhow::bail!(
                    "metrics.listen: {} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
                Err(_) => {}
            }
            Listener::Unix(
                tokio::net::UnixListener::bind(path)
                    .with_context(|| format!("metrics.listen: cannot bind {}", path.display()))?,
            )
        }
    })
}

/// A bound endpoint.
pub enum Listener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// Unix socket.
    Unix(tokio::net::UnixListener),
}

/// Serves the endpoint until ffd exits.
pub async fn serve(listener: Listener, engine: Arc<Engine>, mut shutdown: Shutdown) {
    // The address, as bound (port 0 becomes the real one): where to scrape.
    let addr = match &listener {
        Listener::Tcp(l) => l
            .local_addr()
            .map(|a| format!("http://{a}/metrics"))
            .unwrap_or_default(),
        Listener::Unix(l) => l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
            .unwrap_or_default(),
    };
    info!(listen = %addr, "metrics and health endpoint listening on {addr}");
    loop {
        let accepted = tokio::select! {
            a = accept(&listener) => a,
            _ = shutdown.exiting() => return,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(e) => {
                debug!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let engine = engine.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&engine, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

/// A connection, TCP or Unix, as hyper's I/O.
type Io = TokioIo<Box<dyn Stream>>;

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

async fn accept(l: &Listener) -> std::io::Result<Io> {
    Ok(match l {
        Listener::Tcp(t) => TokioIo::new(Box::new(t.accept().await?.0) as Box<dyn Stream>),
        Listener::Unix(u) => TokioIo::new(Box::new(u.accept().await?.0) as Box<dyn Stream>),
    })
}

fn answer(engine: &Engine, req: http::Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => {
            engine.refresh_metrics();
            let mut r = Response::new(Full::new(Bytes::from(engine.metrics.encode())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let h = engine.health();
            match not_ready(&h) {
                None => text(StatusCode::OK, "ready\n"),
                Some(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {why}\n"),
                ),
            }
        }
        "/healthz" => {
            let (status, verdict, reasons) = verdict(&engine.health());
            let body = json!({"status": verdict, "reasons": reasons});
            let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
            *r.status_mut() = status;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /livez, /readyz, /healthz\n",
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Why ffd cannot accept and acknowledge now, if it cannot.
fn not_ready(h: &Health) -> Option<String> {
    if h.draining {
        return Some("shutting down".into());
    }
    if !h.spool_writable {
        return Some(format!(
            "the spool cannot take writes ({} of {} bytes used, or the disk is full)",
            h.spool_bytes, h.spool_max_bytes
        ));
    }
    None
}

/// The `/healthz` verdict: HTTP status, colour, reasons.
fn verdict(h: &Health) -> (StatusCode, &'static str, Vec<String>) {
    if let Some(why) = not_ready(h) {
        return (StatusCode::SERVICE_UNAVAILABLE, "red", vec![why]);
    }
    let mut reasons = Vec::new();
    for host in h.paused_hosts.iter().take(10) {
        reasons.push(format!("host {host} is paused: it keeps failing"));
    }
    if h.oldest_ready_s > OLD_BACKLOG_S {
        reasons.push(format!(
            "a request ready to go has waited {:.0} s for a delivery slot",
            h.oldest_ready_s
        ));
    }
    if reasons.is_empty() {
        (StatusCode::OK, "green", reasons)
    } else {
        (StatusCode::OK, "yellow", reasons)
    }
}
