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
/// The place of an attempt result in [`RESULTS`].
pub fn result_index(result: &str) -> Option<usize> {
    RESULTS.iter().position(|r| *r == result)
}

/// The `state` label values of `ffd_requests_finished_total`.
pub const FINISHED: [&str; 4] = ["delivered", "dead", "expired", "cancelled"];

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
    /// `ffd_ack_duration_seconds`: lines read to answers written, one
    /// observation per batch of sends read together.
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
    /// `ffd_batches_total{result}`, by [`BATCH_RESULTS`].
    batches: Vec<Counter>,
    /// `ffd_batch_events`: events in each batch request sent (retries and
    /// halves included).
    pub batch_events: Histogram,
}

/// The `result` label values of `ffd_batches_total`.
pub const BATCH_RESULTS: [&str; 4] = ["delivered", "retry", "split", "dead"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let (rejected, finished, attempts) = Self::register_labelled(&mut r);
        let mut m = Metrics {
            registry: Registry::default(),
            accepted: Counter::default(),
            rejected,
            finished,
            attempts,
            retries: Counter::default(),
            pending: Gauge::default(),
            in_flight: Gauge::default(),
            oldest_ready: Gauge::default(),
            oldest_backoff: Gauge::default(),
            dead_letters: Gauge::default(),
            spool_bytes: Gauge::default(),
            spool_max_bytes: Gauge::default(),
            hosts_paused: Gauge::default(),
            connections: Gauge::default(),
            ack_duration: Histogram::new(exponential_buckets(1e-6, 2.0, 20)),
            attempt_duration: Histogram::new(exponential_buckets(1e-3, 2.0, 18)),
            delivery_latency: Histogram::new(exponential_buckets(1e-3, 2.0, 27)),
            host_pending: Family::default(),
            host_in_flight: Family::default(),
            host_breaker: Family::default(),
            host_attempts: Family::default(),
            tail_dropped: Counter::default(),
            batches: Vec::new(),
            batch_events: Histogram::new(exponential_buckets(1.0, 2.0, 17)),
        };
        m.register(&mut r);
        m.registry = r;
        m
    }

    /// The families with a fixed label set, each value resolved once.
    fn register_labelled(r: &mut Registry) -> (Vec<Counter>, Vec<Counter>, Vec<Counter>) {
        let family =
            |r: &mut Registry, name: &str, help: &str, key: &'static str, values: &[&str]| {
                let f = Family::<Label, Counter>::default();
                r.register(name, help, f.clone());
                values
                    .iter()
                    .map(|v| f.get_or_create_owned(&[(key, v.to_string())]))
                    .collect::<Vec<Counter>>()
            };
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        (
            family(
                r,
                "ffd_requests_rejected",
                "Lines refused, by error code",
                "code",
                &codes,
            ),
            family(
                r,
                "ffd_requests_finished",
                "Requests that reached an end state: delivered, dead, expired",
                "state",
                &FINISHED,
            ),
            family(
                r,
                "ffd_attempts",
                "Delivery attempts by result: status class, or why there was no response",
                "result",
                &RESULTS,
            ),
        )
    }

    /// Registers the metrics without a fixed label set.
    fn register(&mut self, r: &mut Registry) {
        let batches = Family::<Label, Counter>::default();
        r.register(
            "ffd_batches",
            "Batch requests answered, by what the answer did (delivered, retry, split, dead)",
            batches.clone(),
        );
        self.batches = BATCH_RESULTS
            .iter()
            .map(|v| batches.get_or_create_owned(&[("result", v.to_string())]))
            .collect();
        r.register(
            "ffd_batch_events",
            "Events in each batch request sent (retries and halves included)",
            self.batch_events.clone(),
        );
        r.register(
            "ffd_requests_accepted",
            "Sends acknowledged (stored in the spool, queued)",
            self.accepted.clone(),
        );
        r.register(
            "ffd_retries_scheduled",
            "Retries scheduled after a failed attempt",
            self.retries.clone(),
        );
        r.register(
            "ffd_requests_pending",
            "Requests not finished (queued, waiting, in flight)",
            self.pending.clone(),
        );
        r.register(
            "ffd_requests_in_flight",
            "Attempts running",
            self.in_flight.clone(),
        );
        r.register(
            "ffd_dead_letters",
            "Dead letters kept",
            self.dead_letters.clone(),
        );
        r.register(
            "ffd_spool_bytes",
            "Bytes of spool files",
            self.spool_bytes.clone(),
        );
        r.register(
            "ffd_spool_max_bytes",
            "spool.max_bytes: past it, sends get spool_full",
            self.spool_max_bytes.clone(),
        );
        r.register(
            "ffd_hosts_paused",
            "Hosts paused by their circuit breaker",
            self.hosts_paused.clone(),
        );
        r.register(
            "ffd_connections",
            "Client connections open",
            self.connections.clone(),
        );
        let oldest = Family::<Label, Gauge<f64, AtomicU64>>::default();
        r.register(
            "ffd_oldest_pending_age_seconds",
            "Age of the oldest request ready to go (state=ready) and of the oldest waiting for a retry or its delay (state=backoff)",
            oldest.clone(),
        );
        // The two gauges the scheduler sets are the family's own.
        self.oldest_ready = oldest.get_or_create_owned(&[("state", "ready".into())]);
        self.oldest_backoff = oldest.get_or_create_owned(&[("state", "backoff".into())]);
        r.register(
            "ffd_ack_duration_seconds",
            "From a batch of lines read to their answers written (one observation per batch)",
            self.ack_duration.clone(),
        );
        r.register(
            "ffd_attempt_duration_seconds",
            "One delivery attempt",
            self.attempt_duration.clone(),
        );
        r.register(
            "ffd_delivery_latency_seconds",
            "From acceptance to delivery",
            self.delivery_latency.clone(),
        );
        r.register(
            "ffd_host_pending",
            "Pending requests per host",
            self.host_pending.clone(),
        );
        r.register(
            "ffd_host_in_flight",
            "Attempts running per host",
            self.host_in_flight.clone(),
        );
        r.register(
            "ffd_host_breaker",
            "1 for the state of the host's circuit breaker (closed, open, half_open)",
            self.host_breaker.clone(),
        );
        r.register(
            "ffd_host_attempts",
            "Delivery attempts per host by result",
            self.host_attempts.clone(),
        );
        r.register(
            "ffd_tail_dropped",
            "Events a slow tail reader missed (the ring is bounded; delivery never waits)",
            self.tail_dropped.clone(),
        );
    }

    /// Refused lines with this code so far.
    pub fn rejected_count(&self, code: ErrorCode) -> u64 {
        ErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.rejected[i].get())
    }

    /// Requests that reached this end state so far.
    pub fn finished_count(&self, state: &str) -> u64 {
        FINISHED
            .iter()
            .position(|s| *s == state)
            .map_or(0, |i| self.finished[i].get())
    }

    /// Requests finished so far, in every end state.
    pub fn finished_total(&self) -> u64 {
        self.finished.iter().map(|c| c.get()).sum()
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

    /// Counts a batch request's answer: `delivered`, `retry`, `split` or `dead`.
    pub fn batch(&self, result: &str) {
        if let Some(i) = BATCH_RESULTS.iter().position(|r| *r == result) {
            self.batches[i].inc();
        }
    }

    /// Counts an attempt by its result label.
    pub fn attempt(&self, result: &str) {
        self.attempts_by(result, 1);
    }

    /// Counts `n` attempts with one result (the events of one batch request).
    pub fn attempts_by(&self, result: &str, n: u64) {
        let i = result_index(result).unwrap_or(RESULTS.len() - 1);
        self.attempts[i].inc_by(n);
    }

    /// The Prometheus text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
