//! A connection that asked for `tail`: events out, one JSON line each,
//! until the client closes. The write to a slow reader only holds up this
//! connection; the ring it reads from is bounded, so delivery never waits,
//! and what the reader missed is told as `{"event":"overflow","dropped":N}`.

use crate::control::tail::Tail;
use crate::scheduler::{Engine, Subscription};
use crate::shutdown::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::broadcast::error::RecvError;

/// Streams events matching `filter` until the client goes or ffd exits.
pub async fn stream(
    engine: &Engine,
    sub: Subscription,
    filter: Tail,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    shutdown: &mut Shutdown,
) {
    let mut rx = sub.rx;
    let _listening = sub._listening;
    let mut input = [0u8; 1024];
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        tokio::select! {
            r = rx.recv() => match r {
                Ok(ev) if filter.wants(&ev) => {
                    let _ = serde_json::to_writer(&mut line, &*ev);
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => {
                    engine.metrics.tail_dropped.inc_by(n);
                    line.extend_from_slice(
                        format!("{{\"event\":\"overflow\",\"dropped\":{n}}}").as_bytes(),
                    );
                }
                Err(RecvError::Closed) => return,
            },
            // Nothing is read from a tail but its end.
            r = rd.read(&mut input) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            _ = shutdown.exiting() => return,
        }
        line.push(b'\n');
        if wr.write_all(&line).await.is_err() {
            return;
        }
    }
}
