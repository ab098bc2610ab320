//! Signals, turned into messages for the async side.
//!
//! signal-hook's iterator runs on its own thread and forwards each signal
//! over a channel, so the handler itself does nothing but write to a pipe
//! (async-signal-safe), and the main task awaits signals like any event.

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::mpsc;

/// A stream of signals: `"SIGTERM"`, `"SIGINT"` (stop) and `"SIGHUP"` (reload).
pub fn signals() -> Result<mpsc::UnboundedReceiver<&'static str>> {
    let mut sigs = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("ffd-signals".into())
        .spawn(move || {
            for sig in sigs.forever() {
                let name = match sig {
                    SIGTERM => "SIGTERM",
                    SIGINT => "SIGINT",
                    _ => "SIGHUP",
                };
                if tx.send(name).is_err() {
                    return;
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(rx)
}
