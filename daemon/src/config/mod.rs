//! The daemon's configuration: embedded defaults, a TOML file, then flags.
//!
//! One struct with defaults, deserialised with `deny_unknown_fields` so a typo
//! in a key stops ffd at start instead of being silently ignored. Every key is
//! documented in `daemon/ffd.example.toml`, which a test parses.

mod destination;

pub use destination::{
    check_retry_on, credential_path, decode_secret, default_retry_on, read_credential, AuthMethod,
    BatchConfig, BatchFormat, Compression, Destination, OAuth2Config, RetryOn, SecretString,
    MIN_SECRET_BYTES,
};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for journald or a log shipper.
    Json,
}

/// When the spool syncs to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Written to the page cache before the ACK: survives a crash of ffd, not of the machine.
    Never,
    /// fdatasync before the ACK (group-committed): survives power loss.
    Always,
}

/// Where accepted requests are kept until they finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SpoolMode {
    /// On disk under `spool_dir`.
    Disk,
    /// In memory only: everything pending is lost when ffd stops.
    Memory,
}

/// What to do with a send when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Answer `spool_full` at once.
    Reject,
    /// Stop reading the connection until there is room (the caller blocks).
    Block,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Path of the Unix socket.
    pub socket: PathBuf,
    /// Permission bits of the socket file, as an octal string.
    pub socket_mode: String,
    /// Most connections served at once; past it a new connection gets one
    /// `busy` line and is closed (root and ffd's own user keep a reserved
    /// slot beyond it).
    pub max_connections: usize,
    /// Most connections of one uid at once (0: a quarter of
    /// `max_connections`); past it, `busy`. Not applied to root and ffd's
    /// own user.
    pub max_connections_per_uid: usize,
    /// A connection that holds part of a line and sends nothing more for
    /// this long is closed; one that is idle between lines is not.
    #[serde(alias = "idle_line_timeout")]
    pub idle_line_timeout_ms: u64,
    /// Peers (by uid) allowed to use the socket, beside root and ffd's own
    /// user. Empty, with `allowed_gids` empty too: the socket's mode decides.
    pub allowed_uids: Vec<u32>,
    /// Peers whose primary or supplementary group is listed are allowed.
    pub allowed_gids: Vec<u32>,
    /// Longest request line in bytes.
    pub max_line_bytes: usize,
    /// Text or JSON logs.
    pub log_format: LogFormat,
    /// Log filter (`info`, `debug`, `ffd=debug,hyper=info`...).
    pub log_level: String,
    /// How long SIGTERM waits for in-flight deliveries before exiting.
    pub shutdown_timeout_ms: u64,
    /// Spool settings.
    pub spool: SpoolConfig,
    /// Delivery settings.
    pub delivery: DeliveryConfig,
    /// Named destinations: `dest` in a send picks one.
    pub destinations: BTreeMap<String, Destination>,
    /// The metrics and health endpoint.
    pub metrics: MetricsConfig,
    /// Where ffd may dial.
    pub policy: PolicyConfig,
}

/// `[metrics]`: Prometheus metrics and health checks over HTTP.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where to serve `/metrics`, `/livez`, `/readyz` and `/healthz`: a TCP
    /// address (`127.0.0.1:9464`) or an absolute path for a Unix socket.
    /// Unset: off.
    pub listen: Option<String>,
}

/// Where the metrics endpoint listens.
#[derive(Debug, Clone, PartialEq)]
pub enum Listen {
    /// A TCP address.
    Tcp(std::net::SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl MetricsConfig {
    /// The parsed `listen`, if set.
    pub fn listen(&self) -> Result<Option<Listen>> {
        let Some(l) = &self.listen else {
            return Ok(None);
        };
        if l.starts_with('/') {
            return Ok(Some(Listen::Unix(PathBuf::from(l))));
        }
        match l.parse() {
            Ok(addr) => Ok(Some(Listen::Tcp(addr))),
            Err(_) => bail!(
                "key `metrics.listen`: {l:?} is neither an address with a port (127.0.0.1:9464) nor an absolute socket path"
            ),
        }
    }
}

/// The destination policy: which addresses ffd may dial, and whether sends
/// may name a raw `url` at all.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// CIDRs or range names ffd refuses to dial.
    pub deny: Vec<String>,
    /// CIDRs or range names ffd may dial even when `deny` matches (allow wins).
    pub allow: Vec<String>,
    /// `false`: sends must name a destination; a send with `url` is refused.
    pub raw_urls: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            deny: ["link-local", "metadata", "unspecified", "multicast"]
                .map(String::from)
                .to_vec(),
            allow: Vec::new(),
            raw_urls: true,
        }
    }
}

/// Spool settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Disk or memory.
    pub mode: SpoolMode,
    /// Directory of the spool files.
    pub dir: PathBuf,
    /// When to sync.
    pub fsync: FsyncMode,
    /// Bytes of spool files at most; past it, sends are refused with `spool_full`.
    pub max_bytes: u64,
    /// Size at which a segment file is closed and a new one started.
    pub segment_bytes: u64,
    /// Reject or block when full.
    pub when_full: WhenFull,
    /// Pending requests of one lane (host or destination) kept in memory;
    /// the rest of its backlog stays in the spool and is read back in order.
    pub memory_window: usize,
}

/// Delivery settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Requests in flight at once, all hosts together.
    pub max_in_flight: usize,
    /// Requests in flight at once to one host.
    pub max_in_flight_per_host: usize,
    /// Per-attempt timeout unless a send gives `timeout_ms`.
    pub timeout_ms: u64,
    /// TCP+TLS connect timeout.
    pub connect_timeout_ms: u64,
    /// Attempts unless a send gives `max_attempts`.
    pub max_attempts: u32,
    /// Give up this long after acceptance unless a send gives `ttl_ms`.
    pub ttl_ms: u64,
    /// Cap of the first retry wait; each later cap is `backoff_multiplier` times the one before.
    pub backoff_base_ms: u64,
    /// Growth of the wait cap per attempt.
    pub backoff_multiplier: u32,
    /// Largest wait between two attempts (a `Retry-After` is capped by
    /// `retry_after_max_ms` instead).
    pub backoff_max_ms: u64,
    /// Statuses retried: codes and the classes `"4xx"` and `"5xx"`; any
    /// other status is final (2xx is delivered). Timeouts and connection
    /// errors are always retried.
    pub retry_on: Vec<RetryOn>,
    /// Longest wait a server's `Retry-After` may ask for.
    pub retry_after_max_ms: u64,
    /// Consecutive failures that pause a host.
    pub breaker_threshold: u32,
    /// First pause of a failing host; doubles while it keeps failing.
    pub breaker_cooldown_ms: u64,
    /// Longest pause of a failing host.
    pub breaker_cooldown_max_ms: u64,
    /// Header that carries the request id to the receiver; empty to send none.
    pub id_header: String,
    /// `user-agent` sent unless the request sets one.
    pub user_agent: String,
    /// PEM file of extra CA certificates, trusted beside the system roots.
    pub ca_file: Option<PathBuf>,
    /// Bytes of a response body kept in the outcome, for debugging.
    pub response_snippet_bytes: usize,
    /// Finished (delivered) requests whose status is remembered.
    pub status_history: usize,
    /// Idle pooled connections kept per host.
    pub pool_idle_per_host: usize,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout_ms: u64,
    /// Proxy for every request (`http://[user:pass@]host:port`), instead of
    /// `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY`; `""`: no proxy, whatever the
    /// environment says.
    pub proxy: Option<SecretString>,
    /// Hosts reached without the proxy (curl's `NO_PROXY` syntax), instead
    /// of `NO_PROXY`.
    pub no_proxy: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: default_socket(),
            socket_mode: "0600".into(),
            max_connections: 1024,
            max_connections_per_uid: 0,
            idle_line_timeout_ms: 10_000,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            max_line_bytes: ffd_proto::DEFAULT_MAX_LINE_BYTES,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            shutdown_timeout_ms: 10_000,
            spool: SpoolConfig::default(),
            delivery: DeliveryConfig::default(),
            destinations: BTreeMap::new(),
            metrics: MetricsConfig::default(),
            policy: PolicyConfig::default(),
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            mode: SpoolMode::Disk,
            dir: default_spool_dir(),
            fsync: FsyncMode::Never,
            max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
            when_full: WhenFull::Reject,
            memory_window: 16_384,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_in_flight: 256,
            max_in_flight_per_host: 32,
            timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            max_attempts: 10,
            ttl_ms: 86_400_000,
            backoff_base_ms: 5_000,
            backoff_multiplier: 4,
            backoff_max_ms: 6 * 3_600_000,
            retry_on: default_retry_on(),
            retry_after_max_ms: 3_600_000,
            breaker_threshold: 5,
            breaker_cooldown_ms: 30_000,
            breaker_cooldown_max_ms: 600_000,
            id_header: "ffd-id".into(),
            user_agent: concat!("ffd/", env!("CARGO_PKG_VERSION")).into(),
            ca_file: None,
            response_snippet_bytes: 256,
            status_history: 100_000,
            pool_idle_per_host: 32,
            pool_idle_timeout_ms: 90_000,
            proxy: None,
            no_proxy: None,
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `$FFD_SOCKET`, else `/run/ffd/ffd.sock` as root, else
/// `$XDG_RUNTIME_DIR/ffd.sock`, else a per-user directory under the temp dir.
pub fn default_socket() -> PathBuf {
    if let Some(p) = std::env::var_os("FFD_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if is_root() {
        return PathBuf::from("/run/ffd/ffd.sock");
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return Path::new(&dir).join("ffd.sock");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir()
        .join(format!("ffd-{uid}"))
        .join("ffd.sock")
}

/// `/var/lib/ffd` as root, else `$XDG_STATE_HOME/ffd`, else `~/.local/state/ffd`.
pub fn default_spool_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/ffd");
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|p| !p.is_empty()) {
        return Path::new(&dir).join("ffd");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        return Path::new(&home).join(".local/state/ffd");
    }
    PathBuf::from("ffd-spool")
}

impl Config {
    /// Reads and checks a TOML file; errors name the file, the key and the reason.
    pub fn load(path: &Path) -> Result<Config> {
        let cfg = Config::parse(path)?;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    /// Reads a TOML file without [`Config::validate`]: unknown keys and
    /// wrong types are still errors naming the file and the key.
    pub fn parse(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))
    }

    /// Checks values serde cannot: ranges, formats, and that every
    /// credential file is readable. The error names the key.
    pub fn validate(&self) -> Result<()> {
        self.check(true)
    }

    /// [`Config::validate`] for SIGHUP: a `header_files` or
    /// `client_secret_file` that cannot be read is not an error here (the
    /// running value is kept, see `delivery::Deliverer::reload`).
    pub fn validate_reload(&self) -> Result<()> {
        self.check(false)
    }

    fn check(&self, files: bool) -> Result<()> {
        self.socket_mode_bits()?;
        at_least("max_connections", self.max_connections as u64, 1)?;
        if self.max_connections_per_uid > self.max_connections {
            bail!(
                "key `max_connections_per_uid`: must not exceed `max_connections` ({})",
                self.max_connections
            );
        }
        at_least("idle_line_timeout_ms", self.idle_line_timeout_ms, 100)?;
        at_least("max_line_bytes", self.max_line_bytes as u64, 256)?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            bail!("key `log_level`: {e}");
        }
        at_least("spool.max_bytes", self.spool.max_bytes, 1 << 16)?;
        at_least("spool.segment_bytes", self.spool.segment_bytes, 1 << 12)?;
        if self.spool.segment_bytes > 1 << 30 {
            bail!("key `spool.segment_bytes`: must be at most 1 GiB (1073741824)");
        }
        if self.spool.segment_bytes > self.spool.max_bytes {
            bail!("key `spool.segment_bytes`: must not exceed `spool.max_bytes`");
        }
        at_least("spool.memory_window", self.spool.memory_window as u64, 2)?;
        self.validate_delivery()?;
        self.metrics.listen()?;
        let d = &self.delivery;
        if let Some(SecretString(p)) = &d.proxy {
            if !p.is_empty() {
                check_proxy_url(p).map_err(|e| anyhow::anyhow!("key `delivery.proxy`: {e}"))?;
            }
        }
        let policy =
            crate::policy::Policy::new(&self.policy.deny, &self.policy.allow, self.policy.raw_urls)
                .map_err(|e| anyhow::anyhow!("key `policy.{e}"))?;
        for (name, dest) in &self.destinations {
            self.validate_destination_url(name, dest, &policy)?;
            self.validate_destination(name, dest)?;
            self.validate_credentials(name, dest, &policy, files)?;
        }
        Ok(())
    }

    /// The `[delivery]` keys.
    fn validate_delivery(&self) -> Result<()> {
        let d = &self.delivery;
        at_least("delivery.max_in_flight", d.max_in_flight as u64, 1)?;
        at_least(
            "delivery.max_in_flight_per_host",
            d.max_in_flight_per_host as u64,
            1,
        )?;
        at_least("delivery.timeout_ms", d.timeout_ms, 1)?;
        at_least("delivery.connect_timeout_ms", d.connect_timeout_ms, 1)?;
        at_least("delivery.max_attempts", d.max_attempts as u64, 1)?;
        if d.max_attempts > ffd_proto::MAX_ATTEMPTS {
            bail!(
                "key `delivery.max_attempts`: must be at most {}",
                ffd_proto::MAX_ATTEMPTS
            );
        }
        at_least("delivery.ttl_ms", d.ttl_ms, 1)?;
        at_least("delivery.backoff_base_ms", d.backoff_base_ms, 1)?;
        at_least(
            "delivery.backoff_multiplier",
            d.backoff_multiplier as u64,
            1,
        )?;
        at_least(
            "delivery.backoff_max_ms",
            d.backoff_max_ms,
            d.backoff_base_ms,
        )?;
        at_least("delivery.breaker_threshold", d.breaker_threshold as u64, 1)?;
        at_least("delivery.breaker_cooldown_ms", d.breaker_cooldown_ms, 1)?;
        at_least(
            "delivery.breaker_cooldown_max_ms",
            d.breaker_cooldown_max_ms,
            d.breaker_cooldown_ms,
        )?;
        if !d.id_header.is_empty() && http::HeaderName::from_bytes(d.id_header.as_bytes()).is_err()
        {
            bail!(
                "key `delivery.id_header`: not a valid header name: {:?}",
                d.id_header
            );
        }
        if http::HeaderValue::from_str(&d.user_agent).is_err() {
            bail!("key `delivery.user_agent`: not a valid header value");
        }
        if let Some(ca) = &d.ca_file {
            if !ca.is_file() {
                bail!("key `delivery.ca_file`: no such file: {}", ca.display());
            }
        }
        check_retry_on("delivery.retry_on", &d.retry_on)?;
        Ok(())
    }

    /// A destination's `oauth2`, `header_files` and retry rules; with
    /// `files`, the files are read too.
    fn validate_credentials(
        &self,
        name: &str,
        dest: &Destination,
        policy: &crate::policy::Policy,
        files: bool,
    ) -> Result<()> {
        let key = format!("destinations.{name}");
        if let Some(list) = &dest.retry_on {
            check_retry_on(&format!("{key}.retry_on"), list)?;
        }
        let inline = |h: &http::HeaderName| {
            dest.headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case(h.as_str()))
        };
        for (h, f) in &dest.header_files {
            let hk = format!("{key}.header_files.{h}");
            let Ok(hn) = http::HeaderName::from_bytes(h.as_bytes()) else {
                bail!("key `{hk}`: not a valid header name");
            };
            match ffd_proto::refused_header(&hn) {
                Some(ffd_proto::HeaderRefusal::Host) => {
                    bail!("key `{hk}`: ffd sets Host from the URL; it cannot be set")
                }
                Some(ffd_proto::HeaderRefusal::HopByHop) => {
                    bail!("key `{hk}`: hop-by-hop header cannot be set")
                }
                None => {}
            }
            if inline(&hn) {
                bail!("key `{hk}`: `{key}.headers` sets {h} too; keep one");
            }
            if dest.oauth2.is_some() && hn == http::header::AUTHORIZATION {
                bail!("key `{hk}`: `{key}.oauth2` sets authorization; keep one");
            }
            if dest
                .header_files
                .keys()
                .filter(|k| k.eq_ignore_ascii_case(h))
                .count()
                > 1
            {
                bail!("key `{hk}`: the header is named twice in `header_files`");
            }
            if f.as_os_str().is_empty() {
                bail!("key `{hk}`: empty path");
            }
            if files {
                dest.header_file(name, h)?;
            } else {
                // The path must still make sense.
                credential_path(f).map_err(|e| anyhow::anyhow!("key `{hk}`: {e}"))?;
            }
        }
        let Some(o) = &dest.oauth2 else {
            return Ok(());
        };
        let ok = format!("{key}.oauth2");
        if inline(&http::header::AUTHORIZATION) {
            bail!("key `{ok}`: `{key}.headers` sets authorization too; keep one");
        }
        check_token_url(&o.token_url).map_err(|e| anyhow::anyhow!("key `{ok}.token_url`: {e}"))?;
        if let Some(host) = o
            .token_url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(String::from))
        {
            if let Err(denied) = policy.check_host(&host) {
                bail!("key `{ok}.token_url`: {denied}");
            }
        }
        if o.client_id.is_empty() {
            bail!("key `{ok}.client_id`: must not be empty");
        }
        match (&o.client_secret, &o.client_secret_file) {
            (Some(_), Some(_)) => bail!(
                "key `{ok}.client_secret`: set `client_secret` or `client_secret_file`, not both"
            ),
            (None, None) => bail!(
                "key `{ok}.client_secret`: missing: set `client_secret` or `client_secret_file`"
            ),
            (Some(s), None) if s.0.is_empty() => {
                bail!("key `{ok}.client_secret`: must not be empty")
            }
            (None, Some(f)) if !files => {
                credential_path(f)
                    .map_err(|e| anyhow::anyhow!("key `{ok}.client_secret_file`: {e}"))?;
            }
            _ => {
                dest.oauth2_secret(name)?;
            }
        }
        for (k, v) in [("scope", &o.scope), ("audience", &o.audience)] {
            if v.as_deref().is_some_and(str::is_empty) {
                bail!("key `{ok}.{k}`: must not be empty (leave it out instead)");
            }
        }
        Ok(())
    }

    /// A destination's URL and headers.
    fn validate_destination_url(
        &self,
        name: &str,
        dest: &Destination,
        policy: &crate::policy::Policy,
    ) -> Result<()> {
        let key = format!("destinations.{name}");
        if let Err(e) = ffd_proto::validate_url(&dest.url) {
            bail!("key `{key}.url`: {}", e.message.replace("`url` ", ""));
        }
        if let Some(host) = dest
            .url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(String::from))
        {
            if let Err(denied) = policy.check_host(&host) {
                bail!("key `{key}.url`: {denied}");
            }
        }
        if dest.url.contains('?') {
            bail!("key `{key}.url`: a destination URL must not have a query; sends add it with `path`");
        }
        for (h, v) in &dest.headers {
            let hn = http::HeaderName::from_bytes(h.as_bytes());
            let Ok(hn) = hn else {
                bail!("key `{key}.headers.{h}`: not a valid header name and value");
            };
            if http::HeaderValue::from_str(v).is_err() {
                bail!("key `{key}.headers.{h}`: not a valid header name and value");
            }
            match ffd_proto::refused_header(&hn) {
                Some(ffd_proto::HeaderRefusal::Host) => {
                    bail!("key `{key}.headers.{h}`: ffd sets Host from the URL; it cannot be set")
                }
                Some(ffd_proto::HeaderRefusal::HopByHop) => {
                    bail!("key `{key}.headers.{h}`: hop-by-hop header cannot be set")
                }
                None => {}
            }
        }
        Ok(())
    }

    /// A destination's secrets, files and limits.
    fn validate_destination(&self, name: &str, dest: &Destination) -> Result<()> {
        let key = format!("destinations.{name}");
        dest.signing_keys(name)?;
        // The `[delivery]` rule, for the keys this destination sets.
        let at_least = |k: &str, v: Option<u64>, min: u64| match v {
            Some(v) => at_least(&format!("{key}.{k}"), v, min),
            None => Ok(()),
        };
        at_least("timeout_ms", dest.timeout_ms, 1)?;
        at_least("max_attempts", dest.max_attempts.map(u64::from), 1)?;
        if dest
            .max_attempts
            .is_some_and(|n| n > ffd_proto::MAX_ATTEMPTS)
        {
            bail!(
                "key `{key}.max_attempts`: must be at most {}",
                ffd_proto::MAX_ATTEMPTS
            );
        }
        at_least("ttl_ms", dest.ttl_ms, 1)?;
        at_least("backoff_base_ms", dest.backoff_base_ms, 1)?;
        at_least(
            "backoff_multiplier",
            dest.backoff_multiplier.map(u64::from),
            1,
        )?;
        let base = dest
            .backoff_base_ms
            .unwrap_or(self.delivery.backoff_base_ms);
        at_least(
            "backoff_max_ms",
            Some(dest.backoff_max_ms.unwrap_or(self.delivery.backoff_max_ms)),
            base,
        )?;
        at_least("max_in_flight", dest.max_in_flight.map(|n| n as u64), 1)?;
        if let Some(r) = dest.rate_per_s {
            if !(r.is_finite() && r > 0.0) {
                bail!("key `{key}.rate_per_s`: must be a number above 0, got {r}");
            }
        }
        for (k, f) in [
            ("ca_file", &dest.ca_file),
            ("client_cert_file", &dest.client_cert_file),
            ("client_key_file", &dest.client_key_file),
        ] {
            if let Some(f) = f {
                let path =
                    credential_path(f).map_err(|e| anyhow::anyhow!("key `{key}.{k}`: {e}"))?;
                if !path.is_file() {
                    bail!("key `{key}.{k}`: no such file: {}", path.display());
                }
            }
        }
        if dest.client_cert_file.is_some() != dest.client_key_file.is_some() {
            bail!("key `{key}.client_cert_file`: `client_cert_file` and `client_key_file` go together");
        }
        if let Some(level) = dest.compression_level {
            let (lo, hi) = match dest.compression {
                Compression::None => bail!(
                    "key `{key}.compression_level`: set `compression = \"gzip\"` or `\"zstd\"` for a level to mean something"
                ),
                Compression::Gzip => (0, 9),
                Compression::Zstd => (1, 22),
            };
            if !(lo..=hi).contains(&level) {
                bail!("key `{key}.compression_level`: must be between {lo} and {hi} for this codec, got {level}");
            }
        }
        if let Some(b) = &dest.batch {
            Self::validate_batch(&format!("{key}.batch"), b)?;
            // Past the window a backlog waits in the spool, read back in
            // chunks of half of it: a batch larger could never fill by count.
            if b.max_events > self.spool.memory_window {
                bail!(
                    "key `{key}.batch.max_events`: {} is more than `spool.memory_window` ({}), the requests a lane keeps in memory",
                    b.max_events,
                    self.spool.memory_window
                );
            }
        }
        Ok(())
    }

    /// `[destinations.NAME.batch]`: limits that leave room for an event.
    fn validate_batch(key: &str, b: &BatchConfig) -> Result<()> {
        at_least(&format!("{key}.max_events"), b.max_events as u64, 1)?;
        if b.max_events > 100_000 {
            bail!(
                "key `{key}.max_events`: must be at most 100000, got {}",
                b.max_events
            );
        }
        at_least(&format!("{key}.max_wait_ms"), b.max_wait_ms, 1)?;
        let spec = b.spec();
        // The smallest event: one byte and its separator.
        let least = spec.fixed_bytes() + 2;
        if b.max_bytes < least {
            bail!(
                "key `{key}.max_bytes`: {} leaves no room for an event after `prefix`, `suffix` and separators ({least} bytes at least)",
                b.max_bytes
            );
        }
        if b.max_bytes > 1 << 30 {
            bail!(
                "key `{key}.max_bytes`: must be at most 1 GiB, got {}",
                b.max_bytes
            );
        }
        for (i, s) in b.split_on.iter().enumerate() {
            if !(400..=599).contains(s) {
                bail!("key `{key}.split_on[{i}]`: must be a status from 400 to 599, got {s}");
            }
        }
        Ok(())
    }

    /// The per-uid connection limit in force.
    pub fn per_uid_limit(&self) -> usize {
        match self.max_connections_per_uid {
            0 => (self.max_connections / 4).max(1),
            n => n,
        }
    }

    /// The socket mode as permission bits.
    pub fn socket_mode_bits(&self) -> Result<u32> {
        let bits = u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|b| *b <= 0o777)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "key `socket_mode`: must be octal permission bits like \"0600\", got {:?}",
                    self.socket_mode
                )
            })?;
        if bits & 0o007 != 0 {
            bail!(
                "key `socket_mode`: {:?} gives access to every user; use 0660 with a group, or 0600",
                self.socket_mode
            );
        }
        Ok(bits)
    }
}

/// `key` must be at least `min`.
fn at_least(key: &str, v: u64, min: u64) -> Result<()> {
    if v < min {
        bail!("key `{key}`: must be at least {min}, got {v}");
    }
    Ok(())
}

/// A token endpoint ffd may use: https, or plain http to a loopback host
/// (127.0.0.0/8, ::1, localhost), where nobody on the way could read the
/// secret.
fn check_token_url(u: &str) -> std::result::Result<(), String> {
    let uri: http::Uri = u.parse().map_err(|_| format!("not a URL: {u:?}"))?;
    let host = uri.host().unwrap_or("");
    if host.is_empty() {
        return Err(format!("no host in {u:?}"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(
            "must not hold credentials (`user:pass@`); use `client_id` and `client_secret`".into(),
        );
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback_host(host) => Ok(()),
        Some("http") => Err(format!(
            "must be https: plain http would send the client secret in clear ({host} is not loopback: 127.0.0.0/8, ::1 or localhost)"
        )),
        _ => Err(format!("must be an https URL, got {u:?}")),
    }
}

/// 127.0.0.0/8, `::1` (bracketed or not) or `localhost`.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match h.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => a.octets()[0] == 127,
        Ok(std::net::IpAddr::V6(a)) => a == std::net::Ipv6Addr::LOCALHOST,
        Err(_) => false,
    }
}

/// A proxy URL ffd can use: `http://[user:pass@]host[:port]`.
fn check_proxy_url(p: &str) -> std::result::Result<(), String> {
    let uri: http::Uri = p.parse().map_err(|_| "not a URL".to_string())?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(s) => return Err(format!("proxy scheme `{s}` is not supported; use http://")),
        None => return Err("must start with http://".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    Ok(())
}

/// The keys that differ between `running` and `new` and only take effect
/// after a restart.
pub fn restart_keys(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut restart = Vec::new();
    macro_rules! fixed {
        ($($($f:ident).+),*) => {$(
            if format!("{:?}", new.$($f).+) != format!("{:?}", running.$($f).+) {
                restart.push(stringify!($($f).+));
            }
        )*};
    }
    fixed!(
        socket,
        socket_mode,
        max_connections,
        max_connections_per_uid,
        idle_line_timeout_ms,
        max_line_bytes,
        log_format,
        allowed_uids,
        allowed_gids,
        shutdown_timeout_ms,
        spool.mode,
        spool.dir,
        spool.fsync,
        spool.max_bytes,
        spool.segment_bytes,
        spool.when_full,
        spool.memory_window,
        delivery.connect_timeout_ms,
        delivery.id_header,
        delivery.user_agent,
        delivery.ca_file,
        delivery.response_snippet_bytes,
        delivery.pool_idle_per_host,
        delivery.pool_idle_timeout_ms,
        metrics,
        delivery.proxy,
        delivery.no_proxy
    );
    restart
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ffd.example.toml");
        let cfg = Config::load(&path).expect("example config");
        let def = Config::default();
        assert_eq!(cfg.delivery.max_attempts, def.delivery.max_attempts);
        assert_eq!(cfg.delivery.backoff_base_ms, def.delivery.backoff_base_ms);
        assert_eq!(cfg.delivery.retry_on, def.delivery.retry_on);
        assert_eq!(
            cfg.delivery.retry_after_max_ms,
            def.delivery.retry_after_max_ms
        );
        assert_eq!(cfg.spool.max_bytes, def.spool.max_bytes);
        assert_eq!(cfg.max_line_bytes, def.max_line_bytes);
        // A copied example delivers nowhere: its destination is commented out.
        assert!(cfg.destinations.is_empty());
        assert_eq!(cfg.policy.deny, def.policy.deny);
        assert_eq!(cfg.policy.raw_urls, def.policy.raw_urls);
        // Uncommented (`#key` lines), the example destination is valid.
        let text = std::fs::read_to_string(&path).unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[') => {
                    rest
                }
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let cfg: Config = toml::from_str(&uncommented).expect("uncommented example");
        cfg.validate().expect("uncommented example is valid");
        let hooks = &cfg.destinations["hooks"];
        assert!(hooks.signing_keys("hooks").unwrap().is_empty());
        assert_eq!(hooks.backoff_base_ms, Some(def.delivery.backoff_base_ms));
    }

    #[test]
    fn secrets_never_show_in_errors_or_debug() {
        let secret = "whsec_c2hvcnQ=";
        let toml =
            format!("[destinations.a]\nurl = \"http://x\"\nsigning_secrets = [\"{secret}\"]");
        let cfg: Config = toml::from_str(&toml).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("destinations.a.signing_secrets[0]"), "{err}");
        assert!(!err.contains("c2hvcnQ"), "{err}");
        assert!(!format!("{cfg:?}").contains("c2hvcnQ"));
    }

    #[test]
    fn errors_name_the_key() {
        let bad = |toml: &str, needle: &str| {
            let err = toml::from_str::<Config>(toml)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map_err(|e| e.to_string()))
                .expect_err(toml);
            assert!(err.contains(needle), "{toml}: {err}");
        };
        bad("sockte = \"/x\"", "sockte");
        bad("[delivery]\nmax_in_flight = 0", "delivery.max_in_flight");
        bad("[delivery]\ntimeout_ms = \"5\"", "timeout_ms");
        bad("socket_mode = \"0666\"", "socket_mode");
        bad("socket_mode = \"rw\"", "socket_mode");
        bad("[destinations.a]\nurl = \"ftp://x\"", "destinations.a.url");
        bad("log_level = \"[[\"", "log_level");
        bad("[policy]\ndeny = [\"loopbak\"]", "policy.deny[0]");
        bad("[policy]\nallow = [\"10.0.0.0/33\"]", "policy.allow[0]");
        bad("[delivery]\nproxy = \"socks5://p:1\"", "delivery.proxy");
        let dest = |k: &str| format!("[destinations.a]\nurl = \"http://x\"\n{k}");
        bad(
            &dest("signing_secrets = [\"nope\"]"),
            "destinations.a.signing_secrets[0]",
        );
        bad(
            &dest("signing_secret_files = [\"/nonexistent/s\"]"),
            "destinations.a.signing_secret_files[0]",
        );
        bad(&dest("rate_per_s = 0"), "destinations.a.rate_per_s");
        bad(&dest("max_in_flight = 0"), "destinations.a.max_in_flight");
        bad(&dest("compression = \"brotli\""), "compression");
        bad(
            &dest("compression_level = 3"),
            "destinations.a.compression_level",
        );
        bad(
            &dest("compression = \"gzip\"\ncompression_level = 10"),
            "destinations.a.compression_level",
        );
        let batch = |k: &str| dest(&format!("[destinations.a.batch]\n{k}"));
        bad(&batch("max_events = 0"), "destinations.a.batch.max_events");
        bad(
            &batch("max_wait_ms = 0"),
            "destinations.a.batch.max_wait_ms",
        );
        bad(&batch("format = \"csv\""), "format");
        bad(
            &batch("split_on = [399]"),
            "destinations.a.batch.split_on[0]",
        );
        bad(
            &batch("max_bytes = 10\nprefix = \"0123456789\""),
            "destinations.a.batch.max_bytes",
        );
        bad(&batch("max_evnets = 5"), "max_evnets");
        bad(
            &format!(
                "[spool]\nmemory_window = 100\n{}",
                batch("max_events = 200")
            ),
            "destinations.a.batch.max_events",
        );
        bad(
            &dest("client_cert_file = \"/etc/hostname\""),
            "client_key_file",
        );
        bad(
            &dest("ca_file = \"/nonexistent\""),
            "destinations.a.ca_file",
        );
        bad(
            "[policy]\ndeny = [\"loopback\"]\n[destinations.a]\nurl = \"http://127.1/\"",
            "destinations.a.url",
        );
        bad("[delivery]\nretry_on = [600]", "delivery.retry_on[0]");
        bad(
            "[delivery]\nretry_on = [408, \"3xx\"]",
            "delivery.retry_on[1]",
        );
        bad("[delivery]\nretry_on = [1.5]", "delivery.retry_on[0]");
        bad(&dest("retry_on = [99]"), "destinations.a.retry_on[0]");
        bad(
            &dest("header_files = { authorization = \"/nonexistent/x\" }"),
            "destinations.a.header_files.authorization",
        );
        bad(
            &dest("header_files = { connection = \"/etc/hostname\" }"),
            "destinations.a.header_files.connection",
        );
        let oauth = |k: &str| {
            dest(&format!(
                "[destinations.a.oauth2]\ntoken_url = \"https://auth.example/t\"\nclient_id = \"c\"\n{k}"
            ))
        };
        bad(&oauth(""), "destinations.a.oauth2.client_secret");
        bad(
            &oauth("client_secret = \"s\"\nclient_secret_file = \"/x\""),
            "destinations.a.oauth2.client_secret",
        );
        bad(
            &oauth("client_secret_file = \"/nonexistent/s\""),
            "destinations.a.oauth2.client_secret_file",
        );
        bad(
            &oauth("client_secret = \"s\"\nauth_method = \"jwt\""),
            "auth_method",
        );
        bad(&oauth("client_secret = \"s\"\nscopes = \"x\""), "scopes");
        bad(
            &dest("[destinations.a.oauth2]\ntoken_url = \"http://auth.example/t\"\nclient_id = \"c\"\nclient_secret = \"s\""),
            "destinations.a.oauth2.token_url",
        );
        bad(
            &dest("headers = { Authorization = \"x\" }\n[destinations.a.oauth2]\ntoken_url = \"https://a/t\"\nclient_id = \"c\"\nclient_secret = \"s\""),
            "destinations.a.oauth2",
        );
        // Loopback may be plain http.
        for host in ["127.0.0.1:8080", "127.9.9.9", "[::1]:80", "localhost:1"] {
            let t = dest(&format!("[destinations.a.oauth2]\ntoken_url = \"http://{host}/t\"\nclient_id = \"c\"\nclient_secret = \"s\""));
            let c: Config = toml::from_str(&t).unwrap();
            c.validate().unwrap_or_else(|e| panic!("{host}: {e}"));
        }
    }

    #[test]
    fn oauth2_secret_never_shows() {
        let toml = "[destinations.a]\nurl = \"http://x\"\n[destinations.a.oauth2]\ntoken_url = \"https://a/t\"\nclient_id = \"c\"\nclient_secret = \"hunter2-very-secret\"";
        let cfg: Config = toml::from_str(toml).unwrap();
        cfg.validate().unwrap();
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
