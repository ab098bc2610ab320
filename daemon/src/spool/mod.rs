//! The durable spool: a small segmented log.
//!
//! Files: `DIR/<16 hex digits>.seg`, each starting with a 16-byte header
//! (`FFDSPOOL`, format version, reserved). Records follow:
//! `[len u32][crc32 u32][payload]`, little-endian, the CRC over the payload.
//! A payload is a `JOB` (the whole request plus its state at the time of
//! writing) or an `OUTCOME` (id, new state). Replay reads segments in order
//! and the last record of an id wins.
//!
//! Every record goes through one buffer under one mutex, so the order of
//! records is the order in which the scheduler changed its state (it calls
//! in while holding its lock). Appends write at once on the caller's thread,
//! taking along whatever else is buffered: many requests, one `write` (and
//! one `fdatasync` in `always` mode) — group commit.
//!
//! Disk use follows the backlog: a segment is deleted when every job whose
//! latest record lives in it is finished, oldest segment first (an outcome
//! record may refer to a job in an older segment, so deleting out of order
//! could resurrect a finished job). A segment pinned by a few long-lived
//! jobs (dead letters, long delays) is compacted: the scheduler re-appends
//! those jobs with their current state, after which the old segment is free.

//! Rooms: `record` (the codec, pure), `fs` (the file layer), `writer`
//! (appends, the flusher, segment deletion), `read` (a job loaded back, and
//! paged-out requests read back in chunks), `scan` (replay and `spool check`).
//! The spool knows nothing of delivery or of the scheduler: it takes jobs
//! and [`Outcome`]s, and hands back [`Loc`]s and [`Restored`] jobs.

mod fs;
mod read;
mod record;
mod scan;
mod writer;

pub use fs::{list_segments, seg_path, Fs, RealFs, SegmentFile};
pub use record::{Kind, Loc, Outcome, FORMAT_VERSION};
pub use scan::{restored_from, Replay, Restored, ScanReport, Scanner, DELIVERED_HISTORY};

use crate::config::FsyncMode;
use crate::job::Job;
use crate::shutdown::Shutdown;
use ffd_proto::ErrorCode;
use record::{encode_outcome, HEADER_LEN};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use tracing::warn;
use writer::{create_segment, encode_job_at, Inner, SegInfo, PINNED};

/// Why the spool refused an append.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The write or sync failed; nothing of the batch was acknowledged.
    #[error("spool write failed: {0}")]
    Io(String),
    /// The file system under the spool is full (or over quota): the same
    /// answer as a spool at `max_bytes`, which the caller can retry.
    #[error("the disk under the spool is full ({0}); nothing was accepted, try again later")]
    DiskFull(String),
    /// The writer has stopped (shutting down).
    #[error("spool is closed")]
    Closed,
}

/// Why a request could not be read back from its record.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The segment file could not be opened or read.
    #[error("cannot read spool segment {seg}: {source}")]
    Io {
        /// The segment number.
        seg: u64,
        /// What the system said.
        source: std::io::Error,
    },
    /// The bytes are not the record they should be.
    #[error("spool record is damaged")]
    Damaged,
}

/// The segments already in `dir` (sizes only: replay reads them), their
/// total size, and the number of the next segment.
fn existing_segments(
    fs: &dyn Fs,
    dir: &Path,
) -> anyhow::Result<(BTreeMap<u64, SegInfo>, u64, u64)> {
    use anyhow::Context;
    let existing = list_segments(fs, dir)
        .with_context(|| format!("cannot list spool directory {}", dir.display()))?;
    let mut segments = BTreeMap::new();
    let mut total = 0;
    for n in &existing {
        let bytes = fs.len(&seg_path(dir, *n)).unwrap_or(0);
        total += bytes;
        segments.insert(
            *n,
            SegInfo {
                bytes,
                live: 0,
                records: 0,
            },
        );
    }
    let first_new = match existing.last() {
        Some(n) => n
            .checked_add(1)
            .with_context(|| format!("spool segment numbers in {} are exhausted", dir.display()))?,
        None => 1,
    };
    Ok((segments, total, first_new))
}

/// Sorts an I/O error: a full disk is `DiskFull`, the rest `Io`.
fn io_error(e: &std::io::Error) -> SpoolError {
    let full = e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT));
    if full {
        SpoolError::DiskFull(e.to_string())
    } else {
        SpoolError::Io(e.to_string())
    }
}

impl SpoolError {
    /// The wire code for a send refused for this reason.
    pub fn code(&self) -> ErrorCode {
        match self {
            SpoolError::Io(_) => ErrorCode::Internal,
            SpoolError::DiskFull(_) => ErrorCode::SpoolFull,
            SpoolError::Closed => ErrorCode::ShuttingDown,
        }
    }
}

/// Handle to the spool, shared by the scheduler.
///
/// Appends write on the caller's thread under the mutex (no thread hop on
/// the ACK path); all records queued since the last write go out in the same
/// `write` — group commit across connections. In `always` mode the caller
/// then waits for an fdatasync that covers its write; one sync serves every
/// writer that arrived while it ran. Outcome records are buffered and written
/// by a flusher thread as soon as it wakes (or by the next append),
/// which also deletes finished segments.
pub struct Spool {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    fsync: FsyncMode,
    segment_bytes: u64,
    inner: Mutex<Inner>,
    /// Writes known to be on stable storage (`always` mode).
    synced: Mutex<u64>,
    wake: Condvar,
    bytes: AtomicU64,
    first_new_segment: u64,
    damage: AtomicU64,
}

impl Spool {
    /// Opens (creating) the spool directory, starts a new segment after the
    /// existing ones and the flusher thread. Old segments are read by [`Spool::replay_old`].
    pub fn open(dir: &Path, fsync: FsyncMode, segment_bytes: u64) -> anyhow::Result<Arc<Spool>> {
        Spool::open_on(Arc::new(RealFs), dir, fsync, segment_bytes)
    }

    /// [`Spool::open`] on another file layer, without the flusher thread
    /// (start it with [`Spool::start_flusher`], or call [`Spool::flush`]).
    pub fn open_on(
        fs: Arc<dyn Fs>,
        dir: &Path,
        fsync: FsyncMode,
        segment_bytes: u64,
    ) -> anyhow::Result<Arc<Spool>> {
        use anyhow::Context;
        fs.create_dir(dir, 0o700).with_context(|| {
            format!(
                "cannot create spool directory {} (mode 0700)",
                dir.display()
            )
        })?;
        let (mut segments, mut total, first_new) = existing_segments(&*fs, dir)?;
        let (file, len) = match create_segment(&*fs, dir, first_new, fsync) {
            Ok((f, len)) => {
                segments.insert(
                    first_new,
                    SegInfo {
                        bytes: len,
                        live: 0,
                        records: 0,
                    },
                );
                (Some(f), len)
            }
            Err(e) if matches!(io_error(&e), SpoolError::DiskFull(_)) => {
                // Start anyway: the backlog can still be delivered, which
                // frees room; sends get `spool_full` until then.
                warn!(dir = %dir.display(), error = %e, "disk full at start: new requests get spool_full until there is room");
                // Offsets are computed as if the header were there: it will
                // be, before any record lands.
                (None, HEADER_LEN)
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot create a segment in {}", dir.display()))
            }
        };
        if file.is_some() {
            total += len;
        }
        Ok(Arc::new(Spool {
            fs,
            dir: dir.to_path_buf(),
            fsync,
            segment_bytes,
            inner: Mutex::new(Inner {
                current: first_new,
                file,
                len,
                buf: Vec::with_capacity(1 << 16),
                segments,
                loaded: false,
                written: 0,
                retire: Vec::new(),
                copies: 0,
                create_retry_at: None,
                readers: HashMap::new(),
                closed: false,
            }),
            synced: Mutex::new(0),
            wake: Condvar::new(),
            bytes: AtomicU64::new(total),
            first_new_segment: first_new,
            damage: AtomicU64::new(0),
        }))
    }

    /// Starts the flusher thread: it writes buffered outcomes and deletes
    /// finished segments until `shutdown` stops it ([`Spool::close`]
    /// writes what is left).
    pub fn start_flusher(self: &Arc<Self>, shutdown: Shutdown) -> anyhow::Result<()> {
        use anyhow::Context;
        let s = self.clone();
        std::thread::Builder::new()
            .name("ffd-spool".into())
            .spawn(move || s.flusher(shutdown))
            .context("cannot start the spool flusher thread")?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether appends can be written now: false while no segment could be
    /// created (a full disk).
    pub fn writable(&self) -> bool {
        let inner = self.lock();
        inner.file.is_some() && !inner.closed
    }

    /// Bytes of all segment files.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Appends new jobs; returns once written (and synced in `always` mode),
    /// with where each record lives.
    pub async fn append(self: &Arc<Self>, jobs: Vec<Arc<Job>>) -> Result<Vec<Loc>, SpoolError> {
        let mut locs = Vec::with_capacity(jobs.len());
        let seq = {
            let mut inner = self.lock();
            if inner.closed {
                return Err(SpoolError::Closed);
            }
            let mark = inner.buf.len();
            for job in &jobs {
                let loc = encode_job_at(&mut inner, job, &Outcome::new_job(job));
                locs.push(loc);
            }
            if let Err(e) = self.write_out(&mut inner) {
                // Nothing of this batch was written: take its records back out
                // so a later write cannot make an unacknowledged job live.
                inner.buf.truncate(mark);
                let current = inner.current;
                if let Some(i) = inner.segments.get_mut(&current) {
                    i.live = i.live.saturating_sub(jobs.len() as u64);
                    i.records = i.records.saturating_sub(jobs.len() as u64);
                }
                return Err(e);
            }
            inner.written
        };
        if self.fsync == FsyncMode::Always {
            let me = self.clone();
            let synced = tokio::task::spawn_blocking(move || me.sync_to(seq))
                .await
                .unwrap_or_else(|e| Err(SpoolError::Io(e.to_string())));
            if let Err(e) = synced {
                // Refused to the caller; the records may still be in the
                // file, but they must not keep their segment alive.
                let mut inner = self.lock();
                for l in &locs {
                    inner.unlive(l.seg);
                }
                return Err(e);
            }
        }
        Ok(locs)
    }

    /// Records a state change of the job whose latest record is at `at`.
    /// Not awaited: losing the last outcomes in a crash means a retry or a
    /// duplicate delivery, never a lost request.
    pub fn record(&self, id: &str, at: Option<Loc>, outcome: Outcome) {
        let mut inner = self.lock();
        let was_empty = inner.buf.is_empty();
        encode_outcome(&mut inner.buf, id, &outcome);
        let current = inner.current;
        if let Some(i) = inner.segments.get_mut(&current) {
            i.records += 1;
        }
        if outcome.kind.finished() {
            if let Some(at) = at {
                inner.unlive(at.seg);
            }
        }
        self.after_buffered(inner, was_empty);
    }

    /// Records a dead letter put back in the queue with new times.
    pub fn requeue(&self, job: &Job, old: Option<Loc>) -> Loc {
        self.rewrite(job, Outcome::new_job(job), old)
    }

    /// Re-appends a live job with its current state (compaction, replay);
    /// its record at `old` stops counting.
    pub fn rewrite(&self, job: &Job, state: Outcome, old: Option<Loc>) -> Loc {
        let mut inner = self.lock();
        let was_empty = inner.buf.is_empty();
        let loc = encode_job_at(&mut inner, job, &state);
        inner.copies += 1;
        if let Some(old) = old {
            inner.unlive(old.seg);
        }
        self.after_buffered(inner, was_empty);
        loc
    }

    /// A replayed record the scheduler did not take (a newer send with the
    /// same id won): it no longer keeps its segment.
    pub fn forget(&self, at: Loc) {
        self.lock().unlive(at.seg);
    }

    /// Asks for segment `n` to be deleted once nothing live is left in it.
    pub fn retire(&self, n: u64) {
        self.lock().retire.push(n);
        self.wake.notify_one();
    }

    /// Wakes the flusher so it sees a shutdown at once (not at its next
    /// one-second tick).
    pub fn wake_flusher(&self) {
        // Under the lock: the flusher is either before its check (and sees
        // the shutdown) or waiting (and gets this wake-up).
        let _inner = self.lock();
        self.wake.notify_one();
    }

    /// Writes what is buffered, syncs and stops; later appends fail with `Closed`.
    pub async fn close(&self) {
        let mut inner = self.lock();
        // The last chance for outcomes kept in memory while the disk was
        // full: tried now, whatever the gate between tries of a new segment
        // says (the disk may have been freed a moment ago). Each one lost
        // here is a delivery made again after the restart.
        inner.create_retry_at = None;
        let _ = self.write_out(&mut inner);
        if let Some(f) = &inner.file {
            let _ = f.sync_data();
        }
        inner.closed = true;
        drop(inner);
        self.wake.notify_one();
    }

    /// Reads the segments that existed at open, in order: every plainly
    /// pending job (one JOB record, never attempted) goes to `stream` as it
    /// is read, and the rest of the live jobs (attempted, dead letters,
    /// copies) come back in [`Replay::jobs`]. Two passes (see `scan::Pass`)
    /// so that memory does not grow with the backlog. Torn tails are cut
    /// off; corrupt records are skipped and counted. Runs on a blocking
    /// thread; appends go on meanwhile. A job is counted live in its
    /// segment before `stream` sees it ([`Spool::forget`] it if not taken).
    ///
    /// `stop` is asked between segments: once it says yes (ffd is
    /// stopping), the replay ends where it is and no old segment is deleted
    /// in this run (the rest of their jobs were not counted).
    pub fn replay_old(
        self: &Arc<Self>,
        mut stream: impl FnMut(Restored) + Send + 'static,
        stop: impl Fn() -> bool,
    ) -> Replay {
        // The segments registered at open, not a second listing: a listing
        // that failed now would look like an empty spool, and every old
        // segment would then be deleted as finished.
        let segs: Vec<u64> = self
            .lock()
            .segments
            .range(..self.first_new_segment)
            .map(|(n, _)| *n)
            .collect();
        let mut first = Scanner::on(self.fs.clone(), true);
        first.pass = scan::Pass::Count {
            jobs: Vec::new(),
            complex: Vec::new(),
        };
        for n in &segs {
            first.segment(&self.dir, *n);
        }
        let complex = std::mem::replace(&mut first.pass, scan::Pass::Full).complex();
        let me = self.clone();
        let mut scan = Scanner::on(self.fs.clone(), false);
        scan.quiet = true;
        scan.pass = scan::Pass::Stream {
            complex,
            stream: Box::new(move |r: Restored| {
                {
                    let mut inner = me.lock();
                    let i = inner.segments.entry(r.loc.seg).or_default();
                    i.live += 1;
                    i.records = i.records.max(i.live);
                }
                stream(r)
            }),
            streamed: 0,
        };
        let mut stopped = false;
        for n in &segs {
            if stop() {
                stopped = true;
                break;
            }
            if first.read_ok.contains(n) {
                scan.segment(&self.dir, *n);
            }
        }
        scan.finish();
        // A segment the first pass read and the second could not (a
        // transient error: no file descriptor, no memory): its jobs were
        // not counted, so no segment may be deleted in this run; they are
        // replayed at the next start.
        let unread: Vec<u64> = segs
            .iter()
            .copied()
            .take_while(|_| !stopped)
            .filter(|n| first.read_ok.contains(n) && !scan.read_ok.contains(n))
            .collect();
        if !unread.is_empty() {
            warn!(segments = ?unread, "spool segments could not be read a second time; their requests wait for the next start, and no segment is deleted until then");
            stopped = true;
        }
        // The first pass saw the damage (and cut torn tails); the second
        // counted what is pending.
        let mut report = first.report.clone();
        report.pending = scan.report.pending;
        report.dead = scan.report.dead;
        scan.read_ok = std::mem::take(&mut first.read_ok);
        scan.seg_records = std::mem::take(&mut first.seg_records);
        drop(first);
        scan.pass = scan::Pass::Full;

        self.damage
            .fetch_add(report.corrupt_records, Ordering::Relaxed);
        // Stopped early, the merged jobs may lack the outcome that finished
        // them (in a segment not read): none is restored.
        let jobs: Vec<Restored> = if stopped {
            Vec::new()
        } else {
            std::mem::take(&mut scan.slots)
                .into_iter()
                .flatten()
                .collect()
        };
        if stopped {
            scan.delivered.clear();
        }
        scan.index = HashMap::new();
        {
            let mut inner = self.lock();
            for (n, info) in inner.segments.iter_mut() {
                if let Some(r) = scan.seg_records.get(n) {
                    info.records = *r;
                }
            }
            for r in &jobs {
                let i = inner.segments.entry(r.loc.seg).or_default();
                i.live += 1;
                i.records = i.records.max(i.live);
            }
            // A file the scan could not read (bad header, unknown version,
            // I/O error) may hold live jobs nobody counted: it must never be
            // deleted as "finished". It is set aside as `.bad` for a person
            // to look at (so it holds back no other segment), or pinned if
            // even that fails.
            for n in &segs {
                if scan.read_ok.contains(n) {
                    continue;
                }
                let path = seg_path(&self.dir, *n);
                let bad = path.with_extension("seg.bad");
                match self.fs.rename(&path, &bad) {
                    Ok(()) => {
                        warn!(segment = %path.display(), moved_to = %bad.display(), "unreadable spool segment set aside; its requests are not replayed");
                        if let Some(i) = inner.segments.remove(n) {
                            self.bytes.fetch_sub(i.bytes, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        warn!(segment = %path.display(), error = %e, "unreadable spool segment kept in place; older data cannot be removed until it is moved away");
                        if let Some(i) = inner.segments.get_mut(n) {
                            i.live += PINNED;
                        }
                    }
                }
            }
            inner.loaded = !stopped;
        }
        self.wake.notify_one();
        Replay {
            jobs,
            delivered: std::mem::take(&mut scan.delivered).into(),
            report,
        }
    }

    /// The oldest closed segment, if compacting it is worthwhile: at most a
    /// quarter of its records are live jobs, so re-appending them frees the
    /// whole file.
    ///
    /// Also when it holds back deletion: if the finished segments right
    /// behind it add up to at least its size, copying its live jobs forward
    /// frees more than it writes, whatever share of it is live (a burst of
    /// dead letters, sends delayed by a day).
    pub fn compaction_candidate(&self) -> Option<u64> {
        let inner = self.lock();
        // Copies could not be written without a segment to write them to.
        if inner.segments.len() < 2 || !inner.loaded || inner.file.is_none() {
            return None;
        }
        let mut it = inner.segments.iter();
        let (n, info) = it.next()?;
        if info.live == 0 || info.live >= PINNED {
            return None;
        }
        if info.live * 4 <= info.records {
            return Some(*n);
        }
        let freeable: u64 = it
            .take_while(|(m, i)| **m != inner.current && i.live == 0)
            .map(|(_, i)| i.bytes)
            .sum();
        (freeable >= info.bytes).then_some(*n)
    }

    /// The jobs recorded in segment `n` and where (for compaction).
    pub fn jobs_in(&self, n: u64) -> Vec<(Arc<Job>, Loc)> {
        let mut scan = Scanner::on(self.fs.clone(), false);
        scan.collect_jobs = true;
        scan.segment(&self.dir, n);
        scan.jobs
    }

    /// What `stats` shows of the spool.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            mode: "disk",
            dir: self.dir.display().to_string(),
            fsync: match self.fsync {
                FsyncMode::Never => "never",
                FsyncMode::Always => "always",
            },
            bytes: self.bytes(),
            segments: self.lock().segments.len(),
            corrupt_records: self.damage.load(Ordering::Relaxed),
        }
    }
}

/// The spool's part of `stats`.
#[derive(Debug, serde::Serialize)]
pub struct SpoolStats {
    /// Always `disk` (memory mode has no spool).
    pub mode: &'static str,
    /// The spool directory.
    pub dir: String,
    /// `never` or `always`.
    pub fsync: &'static str,
    /// Bytes of all segment files.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// Corrupt records skipped at the last start.
    pub corrupt_records: u64,
}
