//! Logs: tracing-subscriber to stderr, text or JSON, with a filter that
//! SIGHUP can change.

use crate::config::{Config, LogFormat};
use anyhow::Result;

/// Sets the log filter anew (SIGHUP).
pub type ReloadLog = Box<dyn Fn(&str) -> Result<()> + Send + Sync>;

/// Installs the global subscriber: `RUST_LOG` if set, else `log_level`.
pub fn init(cfg: &Config) -> ReloadLog {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    macro_rules! finish {
        ($b:expr) => {{
            let b = $b.with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            Box::new(move |level: &str| {
                let f = EnvFilter::try_new(level)?;
                handle.reload(f).map_err(anyhow::Error::from)
            })
        }};
    }
    let base = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match cfg.log_format {
        LogFormat::Json => finish!(base.json()),
        LogFormat::Text => finish!(base),
    }
}
