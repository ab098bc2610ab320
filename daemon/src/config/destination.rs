//! `[destinations.NAME]`: a named destination, its secrets and its files.

use anyhow::Result;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A named destination.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Destination {
    /// Base URL; a send's `path` is appended to it.
    pub url: String,
    /// Headers added to every request to this destination (the request's own win).
    pub headers: BTreeMap<String, String>,
    /// Standard Webhooks secrets (`whsec_` + base64): each attempt carries
    /// one signature per secret.
    pub signing_secrets: Vec<SecretString>,
    /// Files holding one secret each; a relative path is looked up in
    /// `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`).
    pub signing_secret_files: Vec<PathBuf>,
    /// Per-attempt timeout (a send's own wins), else `delivery.timeout_ms`.
    pub timeout_ms: Option<u64>,
    /// Attempts (a send's own wins), else `delivery.max_attempts`.
    pub max_attempts: Option<u32>,
    /// Lifetime (a send's own wins), else `delivery.ttl_ms`.
    pub ttl_ms: Option<u64>,
    /// Retry waits, else the `delivery` ones.
    pub backoff_base_ms: Option<u64>,
    /// Growth of the wait cap per attempt.
    pub backoff_multiplier: Option<u32>,
    /// Largest wait between two attempts.
    pub backoff_max_ms: Option<u64>,
    /// Requests in flight at once to this destination, else
    /// `delivery.max_in_flight_per_host`.
    pub max_in_flight: Option<usize>,
    /// Attempts started per second at most (token bucket, bursts of up to
    /// one second's worth); waiting requests stay queued.
    pub rate_per_s: Option<f64>,
    /// PEM CA certificates trusted for this destination (beside the
    /// system roots and `delivery.ca_file`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for receivers that require mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// `[destinations.NAME.batch]`: sends become events, delivered many to
    /// a request.
    pub batch: Option<BatchConfig>,
    /// Request bodies compressed before they are sent (`content-encoding`).
    pub compression: Compression,
    /// The codec's level (gzip 0-9, default 6; zstd 1-22, default 3).
    pub compression_level: Option<i32>,
    /// `[destinations.NAME.oauth2]`: ffd fetches a token (client
    /// credentials) and sends `authorization: Bearer …`.
    pub oauth2: Option<OAuth2Config>,
    /// Headers whose values are read from files (secrets kept out of the
    /// config); a relative path is looked up in `$CREDENTIALS_DIRECTORY`.
    pub header_files: BTreeMap<String, PathBuf>,
    /// Statuses retried, else `delivery.retry_on`.
    pub retry_on: Option<Vec<RetryOn>>,
    /// Longest wait a `Retry-After` may ask for, else `delivery.retry_after_max_ms`.
    pub retry_after_max_ms: Option<u64>,
}

/// `[destinations.NAME.oauth2]`: the OAuth2 client credentials grant
/// (RFC 6749, section 4.4).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// The token endpoint: https, or http to a loopback host.
    pub token_url: String,
    /// The client's id.
    pub client_id: String,
    /// The client's secret, inline.
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    /// A file holding the client's secret (a relative path: in
    /// `$CREDENTIALS_DIRECTORY`).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// `scope`, sent when set.
    #[serde(default)]
    pub scope: Option<String>,
    /// `audience`, sent when set.
    #[serde(default)]
    pub audience: Option<String>,
    /// How the client authenticates to the token endpoint.
    #[serde(default)]
    pub auth_method: AuthMethod,
    /// A token is refreshed this long before it expires.
    #[serde(default = "default_refresh_skew_ms")]
    pub refresh_skew_ms: u64,
}

fn default_refresh_skew_ms() -> u64 {
    60_000
}

/// `auth_method`: RFC 6749 `client_secret_basic` or `client_secret_post`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// `authorization: Basic base64(id:secret)`.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form.
    Post,
}

/// One entry of `retry_on`: a status code or a class (`"4xx"`, `"5xx"`).
/// Anything else deserialises too, so that `validate` can name the key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RetryOn {
    /// A status code.
    Code(i64),
    /// A class (`"4xx"`, `"5xx"`), or a code written as text.
    Text(String),
    /// Anything else (refused by `validate`).
    Other(toml::Value),
}

impl RetryOn {
    /// The statuses this entry stands for (first, last), or why it stands
    /// for none.
    pub fn range(&self) -> std::result::Result<(u16, u16), String> {
        let bad = |what: String| {
            Err(format!(
                "must be a status code from 100 to 599, \"4xx\" or \"5xx\", got {what}"
            ))
        };
        match self {
            RetryOn::Code(c) if (100..=599).contains(c) => Ok((*c as u16, *c as u16)),
            RetryOn::Code(c) => bad(c.to_string()),
            RetryOn::Text(t) if t == "4xx" => Ok((400, 499)),
            RetryOn::Text(t) if t == "5xx" => Ok((500, 599)),
            RetryOn::Text(t) => bad(format!("{t:?}")),
            RetryOn::Other(v) => bad(v.to_string()),
        }
    }
}

/// Checks a `retry_on` list; errors name the entry (`key[i]`).
pub fn check_retry_on(key: &str, list: &[RetryOn]) -> Result<()> {
    for (i, r) in list.iter().enumerate() {
        r.range()
            .map_err(|e| anyhow::anyhow!("key `{key}[{i}]`: {e}"))?;
    }
    Ok(())
}

/// The default `retry_on`: 408, 425, 429 and every 5xx.
pub fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::Code(408),
        RetryOn::Code(425),
        RetryOn::Code(429),
        RetryOn::Text("5xx".into()),
    ]
}

/// Reads a credential file: a relative path in `$CREDENTIALS_DIRECTORY`,
/// one trailing newline (`\n` or `\r\n`) dropped. Errors name `key` and
/// the file, never what it holds.
pub fn read_credential(key: &str, file: &Path) -> Result<String> {
    let path = credential_path(file).map_err(|e| anyhow::anyhow!("key `{key}`: {e}"))?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::InvalidData => "not UTF-8 text".to_string(),
            _ => e.to_string(),
        };
        anyhow::anyhow!("key `{key}`: cannot read {}: {why}", path.display())
    })?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    Ok(text.to_string())
}

/// `compression`: how request bodies to a destination are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Sent as they are.
    #[default]
    None,
    /// `content-encoding: gzip`.
    Gzip,
    /// `content-encoding: zstd`.
    Zstd,
}

/// `format` of a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchFormat {
    /// One event per line.
    #[default]
    Ndjson,
    /// The events as one JSON array.
    JsonArray,
}

/// `[destinations.NAME.batch]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Events in one batch at most.
    pub max_events: usize,
    /// Bytes of one body before compression, prefix and suffix included.
    pub max_bytes: u64,
    /// How long the oldest ready event of a partial batch waits.
    pub max_wait_ms: u64,
    /// `ndjson` or `json_array`.
    pub format: BatchFormat,
    /// Written before the events (an envelope's start).
    pub prefix: String,
    /// Written after the events.
    pub suffix: String,
    /// Answers that split a batch in halves until the refused events stand alone.
    pub split_on: Vec<u16>,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: 500,
            max_bytes: 1_048_576,
            max_wait_ms: 1000,
            format: BatchFormat::Ndjson,
            prefix: String::new(),
            suffix: String::new(),
            split_on: vec![400, 413, 422],
        }
    }
}

impl BatchConfig {
    /// What the scheduler and admission use.
    pub fn spec(&self) -> crate::batch::BatchSpec {
        crate::batch::BatchSpec {
            max_events: self.max_events,
            max_bytes: self.max_bytes,
            max_wait_ms: self.max_wait_ms,
            format: match self.format {
                BatchFormat::Ndjson => crate::batch::Format::Ndjson,
                BatchFormat::JsonArray => crate::batch::Format::JsonArray,
            },
            prefix: bytes::Bytes::copy_from_slice(self.prefix.as_bytes()),
            suffix: bytes::Bytes::copy_from_slice(self.suffix.as_bytes()),
            split_on: self.split_on.clone(),
        }
    }
}

/// A secret from the config: deserialised like a string, never shown by
/// `Debug` (configs are printed in errors and logs).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Smallest secret accepted, in bytes: Standard Webhooks asks for 24 to 64.
pub const MIN_SECRET_BYTES: usize = 24;

/// Decodes a Standard Webhooks secret: `whsec_` then base64. The error
/// says what is wrong without repeating the value.
pub fn decode_secret(text: &str) -> std::result::Result<Vec<u8>, String> {
    use base64::Engine as _;
    let Some(b64) = text.strip_prefix("whsec_") else {
        return Err("not a Standard Webhooks secret: must start with `whsec_`".into());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| {
            "not a Standard Webhooks secret: what follows `whsec_` is not base64".to_string()
        })?;
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "secret too short: {} bytes, at least {MIN_SECRET_BYTES} needed",
            bytes.len()
        ));
    }
    Ok(bytes)
}

impl Destination {
    /// The OAuth2 client secret: inline, or read from its file.
    pub fn oauth2_secret(&self, name: &str) -> Result<SecretString> {
        let Some(o) = &self.oauth2 else {
            return Ok(SecretString::default());
        };
        match (&o.client_secret, &o.client_secret_file) {
            (Some(s), None) => Ok(s.clone()),
            (None, Some(f)) => {
                let key = format!("destinations.{name}.oauth2.client_secret_file");
                let s = read_credential(&key, f)?;
                if s.is_empty() {
                    anyhow::bail!("key `{key}`: the file is empty");
                }
                Ok(SecretString(s))
            }
            _ => anyhow::bail!(
                "key `destinations.{name}.oauth2.client_secret`: set exactly one of `client_secret` and `client_secret_file`"
            ),
        }
    }

    /// The value of `header_files.HEADER`, read from its file, marked
    /// sensitive. Errors name the key, never the value.
    pub fn header_file(&self, name: &str, header: &str) -> Result<http::HeaderValue> {
        let key = format!("destinations.{name}.header_files.{header}");
        let Some(f) = self.header_files.get(header) else {
            anyhow::bail!("key `{key}`: not set");
        };
        let text = read_credential(&key, f)?;
        let mut v = http::HeaderValue::from_str(&text).map_err(|_| {
            anyhow::anyhow!(
                "key `{key}`: what the file holds is not a valid header value (one line of visible ASCII)"
            )
        })?;
        if text.is_empty() {
            anyhow::bail!("key `{key}`: the file is empty");
        }
        v.set_sensitive(true);
        Ok(v)
    }

    /// The names of the headers ffd sets itself for this destination from
    /// credentials (`header_files`, `oauth2`): a send may not set them.
    pub fn credential_headers(&self) -> Vec<http::HeaderName> {
        let mut names: Vec<http::HeaderName> = self
            .header_files
            .keys()
            .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        if self.oauth2.is_some() {
            names.push(http::header::AUTHORIZATION);
        }
        names
    }

    /// Every signing secret, decoded: the inline ones, then one per file.
    /// Errors name the key (and the file), never the secret.
    pub fn signing_keys(&self, name: &str) -> Result<Vec<Vec<u8>>> {
        let mut keys = Vec::new();
        for (i, s) in self.signing_secrets.iter().enumerate() {
            let k = decode_secret(&s.0).map_err(|e| {
                anyhow::anyhow!("key `destinations.{name}.signing_secrets[{i}]`: {e}")
            })?;
            keys.push(k);
        }
        for (i, f) in self.signing_secret_files.iter().enumerate() {
            let key = format!("destinations.{name}.signing_secret_files[{i}]");
            let path = credential_path(f).map_err(|e| anyhow::anyhow!("key `{key}`: {e}"))?;
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("key `{key}`: cannot read {}: {e}", path.display()))?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            let k = decode_secret(text)
                .map_err(|e| anyhow::anyhow!("key `{key}`: {}: {e}", path.display()))?;
            keys.push(k);
        }
        Ok(keys)
    }
}

/// An absolute path as is; a relative one inside `$CREDENTIALS_DIRECTORY`.
pub fn credential_path(p: &Path) -> std::result::Result<PathBuf, String> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    match std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
        Some(dir) => Ok(Path::new(&dir).join(p)),
        None => Err(format!(
            "{} is relative, and $CREDENTIALS_DIRECTORY (where relative secret files are looked up) is not set",
            p.display()
        )),
    }
}
