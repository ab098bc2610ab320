//! One client connection: split the byte stream into lines, answer each.
//!
//! Lines are read into a buffer that never holds more than `max_line_bytes`
//! of one line: a longer line is skipped as it streams in and answered
//! `line_too_long`. All complete lines of one read are handled as a batch, so
//! a pipelining client costs one spool write and one socket write per read,
//! not per line; answers still go out in the order of the lines.

use crate::control::tail::Tail;
use crate::control::{self, Peer};
use crate::scheduler::Engine;
use crate::scheduler::Subscription;
use crate::shutdown::Shutdown;
use ffd_proto::{ControlOp, ErrorCode, Line, ProtoError, SendRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tracing::debug;

const READ_CHUNK: usize = 64 * 1024;
/// Sends a connection keeps room for between reads (a 64 KiB read of
/// 200-byte sends is about 330).
const KEPT_SENDS: usize = 512;

/// One slot of the answer to a batch, in line order.
enum Slot {
    /// An answer known at once (an error or a control op's result).
    Ready(Vec<u8>),
    /// The n-th send of the batch, answered once the batch is accepted.
    Send(usize),
}

/// Lines of one read, waiting to be answered.
struct Batch {
    slots: Vec<Slot>,
    sends: Vec<SendRequest>,
    /// A `tail` asked for: after this batch, the connection streams events.
    tail: Option<(Subscription, Tail)>,
    /// When its bytes were read: the start of each send's ACK time.
    started: Instant,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            slots: Vec::new(),
            sends: Vec::new(),
            tail: None,
            started: Instant::now(),
        }
    }

    /// Ready for the lines of the next read. The vectors keep their room:
    /// a pipelining client's batches are all about the same size, and
    /// growing them again (sends are large) on every read was a copy and
    /// an allocation per doubling. Past [`KEPT_SENDS`] the room is given
    /// back, so an idle connection holds little after a burst of tiny lines.
    fn restart(&mut self) {
        debug_assert!(self.slots.is_empty() && self.sends.is_empty());
        if self.sends.capacity() > KEPT_SENDS {
            self.sends = Vec::new();
            self.slots = Vec::new();
        }
        self.slots.clear();
        self.sends.clear();
        self.started = Instant::now();
    }
}

/// How long lines may be, and how long the rest of a started line may take.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest line.
    pub max_line: usize,
    /// A connection holding part of a line with no progress for this long
    /// is closed (a slow-loris holds a connection slot for nothing).
    pub idle_line_timeout: Duration,
}

/// The line splitter's state between reads.
struct Splitter {
    /// The unfinished line carried between reads; never longer than max_line.
    partial: Vec<u8>,
    /// Skipping the rest of an over-long line.
    discarding: bool,
    max_line: usize,
}

/// A connection's write side and the buffer its answers are built in.
struct Out<'a> {
    wr: &'a mut OwnedWriteHalf,
    buf: Vec<u8>,
}

impl Splitter {
    /// Idle between lines is the normal state of a pipelining client;
    /// idle in the middle of one is not.
    fn holding(&self) -> bool {
        self.discarding || !self.partial.is_empty()
    }

    /// Splits `data` into lines and handles each into `batch`; keeps the
    /// unfinished rest. Stops at a `tail` (it takes the connection over).
    async fn feed(
        &mut self,
        mut data: &[u8],
        batch: &mut Batch,
        engine: &Arc<Engine>,
        out: &mut Out<'_>,
        peer: Peer,
    ) {
        let max_line = self.max_line;
        while let Some(pos) = memchr::memchr(b'\n', data) {
            if batch.tail.is_some() {
                return;
            }
            let piece = &data[..pos];
            data = &data[pos + 1..];
            if self.discarding {
                self.discarding = false;
                push_error(batch, engine, too_long(max_line));
            } else if self.partial.is_empty() && piece.len() > max_line {
                push_error(batch, engine, too_long(max_line));
            } else if self.partial.is_empty() {
                handle_line(piece, batch, engine, &mut out.buf, out.wr, peer).await;
            } else if self.partial.len() + piece.len() > max_line {
                self.partial.clear();
                push_error(batch, engine, too_long(max_line));
            } else {
                self.partial.extend_from_slice(piece);
                let line = std::mem::take(&mut self.partial);
                handle_line(&line, batch, engine, &mut out.buf, out.wr, peer).await;
                self.partial = line;
                self.partial.clear();
            }
        }
        if !self.discarding {
            if self.partial.len() + data.len() > max_line {
                self.partial.clear();
                self.partial.shrink_to(READ_CHUNK);
                self.discarding = true;
            } else {
                self.partial.extend_from_slice(data);
            }
        }
    }

    /// The client closed its side: what it left is answered. A last line
    /// without `\n` counts as complete, as most tools treat it.
    async fn finish(
        &mut self,
        batch: &mut Batch,
        engine: &Arc<Engine>,
        out: &mut Out<'_>,
        peer: Peer,
    ) {
        if self.discarding {
            push_error(batch, engine, too_long(self.max_line));
        } else if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            handle_line(&line, batch, engine, &mut out.buf, out.wr, peer).await;
        }
    }
}

/// Serves one connection until the client closes it (or an I/O error), or
/// ffd exits: then lines already received are answered and it closes.
pub async fn serve(
    stream: UnixStream,
    engine: Arc<Engine>,
    limits: Limits,
    peer: Peer,
    mut shutdown: Shutdown,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut lines = Splitter {
        partial: Vec::new(),
        discarding: false,
        max_line: limits.max_line,
    };
    let mut out = Out {
        wr: &mut wr,
        buf: Vec::with_capacity(4096),
    };
    let mut batch = Batch::new();
    loop {
        let read = tokio::select! {
            r = rd.read(&mut chunk) => r,
            // Every complete line read so far has been answered; a partial
            // one is not a request yet.
            _ = shutdown.exiting() => break,
            _ = tokio::time::sleep(limits.idle_line_timeout), if lines.holding() => {
                idle_line(&engine, &mut out, limits.idle_line_timeout).await;
                break;
            }
        };
        let n = match read {
            Ok(0) => {
                batch.restart();
                lines.finish(&mut batch, &engine, &mut out, peer).await;
                let _ = flush(&mut batch, &engine, peer, &mut out.buf, out.wr).await;
                break;
            }
            Ok(n) => n,
            Err(e) => {
                debug!(error = %e, "read failed; closing connection");
                return;
            }
        };
        batch.restart();
        lines
            .feed(&chunk[..n], &mut batch, &engine, &mut out, peer)
            .await;
        if flush(&mut batch, &engine, peer, &mut out.buf, out.wr)
            .await
            .is_err()
        {
            return;
        }
        if let Some((rx, filter)) = batch.tail.take() {
            super::tail::stream(&engine, rx, filter, &mut rd, out.wr, &mut shutdown).await;
            break;
        }
    }
    let _ = out.wr.shutdown().await;
}

/// A started line made no progress for `timeout`: say so; the caller closes.
async fn idle_line(engine: &Engine, out: &mut Out<'_>, timeout: Duration) {
    debug!("no end of line within idle_line_timeout_ms; closing connection");
    let e = ProtoError::new(
        ErrorCode::BadRequest,
        format!(
            "no end of line within idle_line_timeout_ms ({} ms); closing the connection",
            timeout.as_millis()
        ),
    );
    engine.count_rejected(e.code);
    out.buf.clear();
    ffd_proto::write_error(&mut out.buf, e.code, &e.message);
    let _ = out.wr.write_all(&out.buf).await;
}

fn too_long(max_line: usize) -> ProtoError {
    ProtoError::new(
        ErrorCode::LineTooLong,
        format!("line is longer than max_line_bytes ({max_line}); skipped"),
    )
}

fn push_error(batch: &mut Batch, engine: &Engine, e: ProtoError) {
    engine.count_rejected(e.code);
    let mut buf = Vec::with_capacity(64 + e.message.len());
    ffd_proto::write_error(&mut buf, e.code, &e.message);
    batch.slots.push(Slot::Ready(buf));
}

async fn handle_line(
    line: &[u8],
    batch: &mut Batch,
    engine: &Arc<Engine>,
    out: &mut Vec<u8>,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    peer: Peer,
) {
    match ffd_proto::parse_line(line) {
        Ok(Line::Send(req)) => {
            batch.slots.push(Slot::Send(batch.sends.len()));
            batch.sends.push(req);
        }
        Ok(Line::Op(ControlOp::Tail(f))) => {
            if !batch.sends.is_empty() {
                let _ = flush(batch, engine, peer, out, wr).await;
            }
            // Subscribed before the answer: no event is missed in between.
            let rx = engine.subscribe();
            match control::tail::start(engine, peer, f) {
                Ok((answer, filter)) => {
                    batch.slots.push(Slot::Ready(answer));
                    batch.tail = Some((rx, filter));
                }
                Err(e) => push_error(batch, engine, e),
            }
        }
        Ok(Line::Op(op)) => {
            // An op sees the effect of every send before it on the connection.
            if !batch.sends.is_empty() {
                let _ = flush(batch, engine, peer, out, wr).await;
            }
            let mut buf = Vec::new();
            control::handle(op, engine, peer, &mut buf);
            batch.slots.push(Slot::Ready(buf));
        }
        Err(e) => push_error(batch, engine, e),
    }
}

/// Accepts the batch's sends (one spool write) and writes every answer.
async fn flush(
    batch: &mut Batch,
    engine: &Engine,
    peer: Peer,
    out: &mut Vec<u8>,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<()> {
    if batch.slots.is_empty() {
        return Ok(());
    }
    let n_sends = batch.sends.len();
    let results = if n_sends == 0 {
        Vec::new()
    } else {
        engine.accept(&mut batch.sends, peer.owner()).await
    };
    out.clear();
    for slot in batch.slots.drain(..) {
        match slot {
            Slot::Ready(buf) => out.extend_from_slice(&buf),
            Slot::Send(i) => match &results[i] {
                Ok(a) if a.duplicate => ffd_proto::write_ok_duplicate(out, &a.id),
                Ok(a) => ffd_proto::write_ok_id(out, &a.id),
                Err(e) => ffd_proto::write_error(out, e.code, &e.message),
            },
        }
    }
    let written = wr.write_all(out).await;
    // One observation per batch with sends: its lines were read together
    // and answered together (a histogram observation takes a lock).
    if n_sends > 0 {
        let took = batch.started.elapsed().as_secs_f64();
        engine.metrics.ack_duration.observe(took);
    }
    written
}
