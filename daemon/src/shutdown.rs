//! Stopping: signals turned into messages, and the one shutdown handle every
//! long-running task holds.
//!
//! signal-hook's iterator runs on its own thread and forwards each signal
//! over a channel, so the handler itself does nothing but write to a pipe
//! (async-signal-safe), and the main task awaits signals like any event.
//!
//! [`Shutdown`] is a clone of one `watch` channel, as in mini-redis, that
//! moves through two phases. *Draining* (the first SIGTERM): the listener
//! stops accepting, replay and compaction end, the dispatcher starts nothing
//! new, deliveries in flight finish. *Exiting* (drained, or the deadline
//! passed): connections finish the lines they have and close, the spool
//! flusher ends. Each handle also holds a sender of a channel whose receiver
//! the trigger keeps, so [`Trigger::wait_tasks`] knows when every task has
//! let go of its handle.

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

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

/// A task's view of the shutdown.
#[derive(Clone)]
pub struct Shutdown {
    phase: watch::Receiver<u8>,
    _alive: mpsc::Sender<()>,
}

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const EXITING: u8 = 2;

/// The side that moves the phases and waits for the tasks to let go.
pub struct Trigger {
    phase: watch::Sender<u8>,
    alive: mpsc::Receiver<()>,
}

/// A new shutdown: the trigger, and the first handle (clone it for each task).
pub fn channel() -> (Trigger, Shutdown) {
    let (phase_tx, phase_rx) = watch::channel(RUNNING);
    let (alive_tx, alive_rx) = mpsc::channel(1);
    (
        Trigger {
            phase: phase_tx,
            alive: alive_rx,
        },
        Shutdown {
            phase: phase_rx,
            _alive: alive_tx,
        },
    )
}

impl Shutdown {
    /// True once draining began (also callable from a plain thread).
    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() >= DRAINING
    }

    /// True once ffd is exiting.
    pub fn is_exiting(&self) -> bool {
        *self.phase.borrow() >= EXITING
    }

    /// Completes when draining begins.
    pub async fn draining(&mut self) {
        // An error means the trigger is gone, which also means stop.
        let _ = self.phase.wait_for(|p| *p >= DRAINING).await;
    }

    /// Completes when ffd is exiting.
    pub async fn exiting(&mut self) {
        let _ = self.phase.wait_for(|p| *p >= EXITING).await;
    }
}

impl Trigger {
    /// Begins draining.
    pub fn drain(&self) {
        self.phase.send_if_modified(|p| {
            let moved = *p < DRAINING;
            *p = (*p).max(DRAINING);
            moved
        });
    }

    /// Tells every task to finish.
    pub fn exit(&self) {
        let _ = self.phase.send(EXITING);
    }

    /// Waits until every handle is dropped, up to `deadline`; returns
    /// whether they all were.
    pub async fn wait_tasks(mut self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, self.alive.recv())
            .await
            .is_ok()
    }
}
