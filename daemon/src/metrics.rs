//! Prometheus metrics: one registry, its counters resolved once at start so
//! the ACK path pays an atomic add, not a label lookup. Gauges that describe
//! the state (pending, oldest ages, per host) are set from the scheduler's
//! state when scraped (`scheduler::Engine::refresh_metrics`).
//!
//! The names are an interface: dashboards and alerts are written against
//! them. They are named once and never renamed.

use ffd_proto::ErrorCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// One label.
pub type Label = [(&'static str, String); 1];
/// Two labels.
pub type Labels2 = [(&'static str, String); 2];

/// The `result` label values of `ffd_attempts_total`.
pub const RESULTS: [&str; 10] = [
    "2xx", "3xx", "4xx", "5xx", "timeout", "connect", "tls", "dns", "denied", "other",
];
/// The `state` label values of `ffd_requests_finished_total`.
pub const FINISHED: [&str; 3] = ["delivered", "dead", "expired"];

/// Every metric ffd exports.
pub struct Metrics {
    registry: Registry,
    /// `ffd_requests_accepted_total`.
    pub accepted: Counter,
    rejected: Vec<Counter>,
    finished: Vec<Counter>,
    attempts: Vec<Counter>,
    /// `ffd_retries_scheduled_total`.
    pub retries: Counter,
    /// `ffd_requests_pending`.
    pub pending: Gauge,
    /// `ffd_requests_in_flight`.
    pub in_flight: Gauge,
    /// `ffd_oldest_pending_age_seconds{state}`: `ready` and `backoff`.
    pub oldest_ready: Gauge<f64, AtomicU64>,
    /// See `oldest_ready`.
    pub oldest_backoff: Gauge<f64, AtomicU64>,
    /// `ffd_dead_letters`.
    pub dead_letters: Gauge,
    /// `ffd_spool_bytes`.
    pub spool_bytes: Gauge,
    /// `ffd_spool_max_bytes`.
    pub spool_max_bytes: Gauge,
    /// `ffd_hosts_paused`.
    pub hosts_paused: Gauge,
    /// `ffd_connections`.
    pub connections: Gauge,
    /// `ffd_ack_duration_seconds`: line read to answer written.
    pub ack_duration: Histogram,
    /// `ffd_attempt_duration_seconds`.
    pub attempt_duration: Histogram,
    /// `ffd_delivery_latency_seconds`: accepted to delivered.
    pub delivery_latency: Histogram,
    /// `ffd_host_pending{host}`.
    pub host_pending: Family<Label, Gauge>,
    /// `ffd_host_in_flight{host}`.
    pub host_in_flight: Family<Label, Gauge>,
    /// `ffd_host_breaker{host,state}`: 1 for the state the breaker is in
    /// (`closed`, `open`, `half_open`).
    pub host_breaker: Family<Labels2, Gauge>,
    /// `ffd_host_attempts_total{host,result}`.
    pub host_attempts: Family<Labels2, Counter>,
    /// `ffd_tail_dropped_total`: events a slow `tail` reader missed.
    pub tail_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let accepted = Counter::default();
        r.register(
            "ffd_requests_accepted",
            "Sends acknowledged (stored in the spool, queued)",
            accepted.clone(),
        );
        let rejected_f = Family::<Label, Counter>::default();
        r.register(
            "ffd_requests_rejected",
            "Lines refused, by error code",
            rejected_f.clone(),
        );
        let rejected = ErrorCode::ALL
            .iter()
            .map(|c| rejected_f.get_or_create_owned(&[("code", c.as_str().to_string())]))
            .collect();
        let finished_f = Family::<Label, Counter>::default();
        r.register(
            "ffd_requests_finished",
            "Requests that reached an end state: delivered, dead, expired",
            finished_f.clone(),
        );
        let finished = FINISHED
            .iter()
            .map(|s| finished_f.get_or_create_owned(&[("state", s.to_string())]))
            .collect();
        let attempts_f = Family::<Label, Counter>::default();
        r.register(
            "ffd_attempts",
            "Delivery attempts by result: status class, or why there was no response",
            attempts_f.clone(),
        );
        let attempts = RESULTS
            .iter()
            .map(|s| attempts_f.get_or_create_owned(&[("result", s.to_string())]))
            .collect();
        let retries = Counter::default();
        r.register(
            "ffd_retries_scheduled",
            "Retries scheduled after a failed attempt",
            retries.clone(),
        );
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let pending = gauge(
            &mut r,
            "ffd_requests_pending",
            "Requests not finished (queued, waiting, in flight)",
        );
        let in_flight = gauge(&mut r, "ffd_requests_in_flight", "Attempts running");
        let dead_letters = gauge(&mut r, "ffd_dead_letters", "Dead letters kept");
        let spool_bytes = gauge(&mut r, "ffd_spool_bytes", "Bytes of spool files");
        let spool_max_bytes = gauge(
            &mut r,
            "ffd_spool_max_bytes",
            "spool.max_bytes: past it, sends get spool_full",
        );
        let hosts_paused = gauge(
            &mut r,
            "ffd_hosts_paused",
            "Hosts paused by their circuit breaker",
        );
        let connections = gauge(&mut r, "ffd_connections", "Client connections open");
        let oldest = Family::<Label, Gauge<f64, AtomicU64>>::default();
        r.register(
            "ffd_oldest_pending_age_seconds",
            "Age of the oldest request ready to go (state=ready) and of the oldest waiting for a retry or its delay (state=backoff)",
            oldest.clone(),
        );
        let oldest_ready = oldest.get_or_create_owned(&[("state", "ready".into())]);
        let oldest_backoff = oldest.get_or_create_owned(&[("state", "backoff".into())]);
        let histogram = |r: &mut Registry, name: &str, help: &str, start: f64, n: u16| {
            let h = Histogram::new(exponential_buckets(start, 2.0, n));
            r.register(name, help, h.clone());
            h
        };
        let ack_duration = histogram(
            &mut r,
            "ffd_ack_duration_seconds",
            "From a line read to its answer written",
            1e-6,
            20,
        );
        let attempt_duration = histogram(
            &mut r,
            "ffd_attempt_duration_seconds",
            "One delivery attempt",
            1e-3,
            18,
        );
        let delivery_latency = histogram(
            &mut r,
            "ffd_delivery_latency_seconds",
            "From acceptance to delivery",
            1e-3,
            27,
        );
        let host_pending = Family::<Label, Gauge>::default();
        r.register(
            "ffd_host_pending",
            "Pending requests per host",
            host_pending.clone(),
        );
        let host_in_flight = Family::<Label, Gauge>::default();
        r.register(
            "ffd_host_in_flight",
            "Attempts running per host",
            host_in_flight.clone(),
        );
        let host_breaker = Family::<Labels2, Gauge>::default();
        r.register(
            "ffd_host_breaker",
            "1 for the state of the host's circuit breaker (closed, open, half_open)",
            host_breaker.clone(),
        );
        let host_attempts = Family::<Labels2, Counter>::default();
        r.register(
            "ffd_host_attempts",
            "Delivery attempts per host by result",
            host_attempts.clone(),
        );
        let tail_dropped = Counter::default();
        r.register(
            "ffd_tail_dropped",
            "Events a slow tail reader missed (the ring is bounded; delivery never waits)",
            tail_dropped.clone(),
        );
        Metrics {
            registry: r,
            tail_dropped,
            accepted,
            rejected,
            finished,
            attempts,
            retries,
            pending,
            in_flight,
            oldest_ready,
            oldest_backoff,
            dead_letters,
            spool_bytes,
            spool_max_bytes,
            hosts_paused,
            connections,
            ack_duration,
            attempt_duration,
            delivery_latency,
            host_pending,
            host_in_flight,
            host_breaker,
            host_attempts,
        }
    }

    /// Counts a refused line.
    pub fn rejected(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.rejected[i].inc();
        }
    }

    /// Counts a request reaching an end state (`delivered`, `dead`, `expired`).
    pub fn finished(&self, state: &str) {
        if let Some(i) = FINISHED.iter().position(|s| *s == state) {
            self.finished[i].inc();
        }
    }

    /// Counts an attempt by its result label.
    pub fn attempt(&self, result: &str) {
        let i = RESULTS
            .iter()
            .position(|r| *r == result)
            .unwrap_or(RESULTS.len() - 1);
        self.attempts[i].inc();
    }

    /// The Prometheus text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
