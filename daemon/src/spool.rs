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

use crate::config::FsyncMode;
use crate::deliver::Attempt;
use crate::job::Job;
use crate::scheduler::Phase;
use bytes::Bytes;
use ffd_proto::ErrorCode;
use http::{HeaderName, HeaderValue, Method, Uri};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Seek;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use tracing::{error, info, warn};

const MAGIC: &[u8; 8] = b"FFDSPOOL";
/// Format version written in every segment header.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: u64 = 16;
const REC_JOB: u8 = 1;
const REC_OUTCOME: u8 = 2;
/// Delivered jobs replay remembers for `status`, at most.
pub const DELIVERED_HISTORY: usize = 100_000;
/// Added to the live count of a segment that must never be deleted.
const PINNED: u64 = 1 << 40;
/// No record is larger: a length field above it is damage, not data.
const MAX_RECORD: u32 = 64 << 20;

/// Where a record lives: segment, byte offset, length (header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Segment number.
    pub seg: u64,
    /// Offset of the record's header in the segment file (segments stay
    /// well under 4 GiB: `spool.segment_bytes` is at most 1 GiB).
    pub off: u32,
    /// Bytes of the record, header included.
    pub len: u32,
}

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

/// What kind of state change an outcome records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Still pending: attempts so far and the next attempt time.
    Retry,
    /// Delivered: finished, nothing to keep.
    Delivered,
    /// Dead letter.
    Dead,
    /// Dead letter (ttl passed).
    Expired,
    /// Dead letter removed by `purge`: finished.
    Purged,
}

impl Kind {
    fn to_u8(self) -> u8 {
        match self {
            Kind::Retry => 0,
            Kind::Delivered => 1,
            Kind::Dead => 2,
            Kind::Expired => 3,
            Kind::Purged => 4,
        }
    }
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Retry,
            1 => Kind::Delivered,
            2 => Kind::Dead,
            3 => Kind::Expired,
            4 => Kind::Purged,
            _ => return None,
        })
    }
    fn finished(self) -> bool {
        matches!(self, Kind::Delivered | Kind::Purged)
    }
}

/// A job's state as the spool records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What happened.
    pub kind: Kind,
    /// Attempts made so far.
    pub attempts: u32,
    /// Next attempt (Unix ms) when `Retry`.
    pub next_ms: u64,
    /// Last HTTP status.
    pub status: Option<u16>,
    /// Last error (shared: many requests fail the same way).
    pub error: Option<Arc<str>>,
    /// First bytes of the last response.
    pub snippet: Option<String>,
    /// When it was recorded.
    pub at_ms: u64,
}

impl Outcome {
    /// A failed attempt with another one due at `next_ms`.
    pub fn retry(attempts: u32, next_ms: u64, a: &Attempt, now: u64) -> Outcome {
        Outcome {
            kind: Kind::Retry,
            attempts,
            next_ms,
            status: a.status,
            error: a.error.as_deref().map(Into::into),
            snippet: a.snippet.clone(),
            at_ms: now,
        }
    }

    /// An end state reached by an attempt.
    pub fn end(phase: Phase, attempts: u32, a: &Attempt, now: u64) -> Outcome {
        let kind = match phase {
            Phase::Delivered => Kind::Delivered,
            Phase::Expired => Kind::Expired,
            _ => Kind::Dead,
        };
        Outcome {
            kind,
            attempts,
            next_ms: 0,
            status: a.status,
            error: a.error.as_deref().map(Into::into),
            snippet: a.snippet.clone(),
            at_ms: now,
        }
    }

    /// Expired without an attempt (its ttl passed while queued).
    pub fn expired(attempts: u32, now: u64) -> Outcome {
        Outcome {
            kind: Kind::Expired,
            attempts,
            next_ms: 0,
            status: None,
            error: Some("ttl passed before delivery".into()),
            snippet: None,
            at_ms: now,
        }
    }

    /// Removed by `purge`.
    pub fn purged(now: u64) -> Outcome {
        Outcome {
            kind: Kind::Purged,
            attempts: 0,
            next_ms: 0,
            status: None,
            error: None,
            snippet: None,
            at_ms: now,
        }
    }

    /// The fresh state of a newly accepted job.
    pub fn new_job(job: &Job) -> Outcome {
        Outcome {
            kind: Kind::Retry,
            attempts: 0,
            next_ms: job.not_before_ms,
            status: None,
            error: None,
            snippet: None,
            at_ms: job.accepted_ms,
        }
    }

    /// The dead-letter phase this outcome leaves a job in, if any.
    pub fn dead_phase(&self) -> Option<Phase> {
        match self.kind {
            Kind::Dead => Some(Phase::Dead),
            Kind::Expired => Some(Phase::Expired),
            _ => None,
        }
    }
}

/// A live job as replay keeps it: no body, no headers, no URL (the request
/// stays on disk at `loc`), the host and error strings shared, so replaying
/// a large backlog costs memory per request, not per byte of request.
pub struct Restored {
    /// The request id.
    pub id: Arc<str>,
    /// `scheme://host:port` of the target.
    pub host: Arc<str>,
    /// Attempts before it is dead.
    pub max_attempts: u32,
    /// When it was accepted.
    pub accepted_ms: u64,
    /// Not delivered before.
    pub not_before_ms: u64,
    /// Given up at.
    pub expires_ms: u64,
    /// Its latest JOB record.
    pub loc: Loc,
    /// Its latest state.
    pub state: Outcome,
}

/// What replay found: jobs still to deliver or kept as dead letters, and damage.
pub struct Replay {
    /// Live jobs with their last recorded state, in acceptance order.
    pub jobs: Vec<Restored>,
    /// Jobs delivered in the segments still on disk (the most recent ones,
    /// at most [`DELIVERED_HISTORY`]), so `status` of a recent id survives
    /// a restart.
    pub delivered: Vec<Restored>,
    /// The report of the scan.
    pub report: ScanReport,
}

/// What a scan of the spool saw.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ScanReport {
    /// Segment files read.
    pub segments: u64,
    /// Valid records read.
    pub records: u64,
    /// Jobs still pending.
    pub pending: u64,
    /// Dead letters (dead or expired).
    pub dead: u64,
    /// Records skipped because their checksum or contents were wrong.
    pub corrupt_records: u64,
    /// Bytes cut off at the end of segments (torn writes).
    pub torn_bytes: u64,
    /// Files that could not be read at all (bad header, unreadable).
    pub bad_files: Vec<String>,
    /// Bytes of all segment files.
    pub bytes: u64,
}

fn seg_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016x}.seg"))
}

fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(hex) = name.strip_suffix(".seg") {
            if hex.len() == 16 {
                if let Ok(n) = u64::from_str_radix(hex, 16) {
                    out.push(n);
                }
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// How long the flusher lets outcome records gather before writing them.
const FLUSH_GATHER: Duration = Duration::from_millis(1);
/// Bytes of buffered outcome records past which the caller writes them itself.
const FLUSH_BYTES: usize = 256 * 1024;

#[derive(Default, Clone, Copy)]
struct SegInfo {
    bytes: u64,
    /// Live jobs whose latest record is in this segment.
    live: u64,
    records: u64,
}

/// Everything about the files, behind one mutex.
struct Inner {
    current: u64,
    /// `None` while the segment could not be created (a full disk at
    /// start): ffd runs, delivers its backlog, and creates it on the first
    /// write that finds room.
    file: Option<Arc<File>>,
    len: u64,
    /// Encoded records not yet written (outcomes wait here for the flusher
    /// or the next append; appends write at once).
    buf: Vec<u8>,
    segments: BTreeMap<u64, SegInfo>,
    /// Replay has said which old jobs are live; only then may old segments go.
    loaded: bool,
    /// Count of writes so far; `always` mode syncs up to one of these.
    written: u64,
    /// Segments the compactor asked to delete once free.
    retire: Vec<u64>,
    /// JOB-record copies (compaction, dead-letter replay) in `buf`: while
    /// any waits there, a segment that looks free may hold the only
    /// written copy of a job, so no segment is deleted.
    copies: usize,
    /// After a failed segment creation (full disk), not before this.
    create_retry_at: Option<std::time::Instant>,
    /// Open read handles of segments, for loading jobs at delivery time.
    readers: HashMap<u64, Arc<File>>,
    closed: bool,
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
        use anyhow::Context;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create spool directory {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(
            || format!("cannot set mode 0700 on spool directory {}", dir.display()),
        )?;
        let existing = list_segments(dir)
            .with_context(|| format!("cannot list spool directory {}", dir.display()))?;
        let mut segments = BTreeMap::new();
        let mut total = 0;
        for n in &existing {
            let bytes = std::fs::metadata(seg_path(dir, *n))
                .map(|m| m.len())
                .unwrap_or(0);
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
            Some(n) => n.checked_add(1).with_context(|| {
                format!("spool segment numbers in {} are exhausted", dir.display())
            })?,
            None => 1,
        };
        let (file, len) = match create_segment(dir, first_new, fsync) {
            Ok((f, len)) => {
                segments.insert(
                    first_new,
                    SegInfo {
                        bytes: len,
                        live: 0,
                        records: 0,
                    },
                );
                (Some(Arc::new(f)), len)
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
        let spool = Arc::new(Spool {
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
        });
        let s = spool.clone();
        std::thread::Builder::new()
            .name("ffd-spool".into())
            .spawn(move || s.flusher())
            .context("cannot start the spool flusher thread")?;
        Ok(spool)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Loads a job from its record (at delivery time, for `status`, ...).
    pub fn read(&self, loc: Loc) -> Result<Arc<Job>, String> {
        let mut bytes = vec![0u8; loc.len as usize];
        let file = {
            let mut inner = self.lock();
            if loc.seg == inner.current && loc.off as u64 + loc.len as u64 > inner.len {
                // Still in the buffer (a rewrite the flusher has not written yet).
                let start = (loc.off as u64)
                    .checked_sub(inner.len)
                    .ok_or("record straddles the buffer")? as usize;
                let part = inner
                    .buf
                    .get(start..start + loc.len as usize)
                    .ok_or("record not in the buffer")?;
                bytes.copy_from_slice(part);
                None
            } else {
                match inner.readers.get(&loc.seg) {
                    Some(f) => Some(f.clone()),
                    None => {
                        let f =
                            Arc::new(File::open(seg_path(&self.dir, loc.seg)).map_err(|e| {
                                format!("cannot open spool segment {}: {e}", loc.seg)
                            })?);
                        inner.readers.insert(loc.seg, f.clone());
                        Some(f)
                    }
                }
            }
        };
        if let Some(f) = file {
            use std::os::unix::fs::FileExt;
            f.read_exact_at(&mut bytes, loc.off as u64)
                .map_err(|e| format!("cannot read spool record: {e}"))?;
        }
        match record_at(&bytes, 0).and_then(|(payload, _)| decode_job(payload)) {
            Some(job) => Ok(job),
            _ => Err("spool record is damaged".into()),
        }
    }

    /// Blocks until write number `seq` is on stable storage.
    fn sync_to(&self, seq: u64) -> Result<(), SpoolError> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= seq {
            return Ok(()); // another writer's sync covered this one
        }
        let (file, upto) = {
            let inner = self.lock();
            (inner.file.clone(), inner.written)
        };
        // Older segments were synced when they were closed (`roll`).
        if let Some(file) = file {
            file.sync_data().map_err(|e| io_error(&e))?;
        }
        *synced = upto;
        Ok(())
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
    pub fn replay(&self, job: &Job, old: Option<Loc>) -> Loc {
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

    /// Wakes the flusher only for the first record after a write: the
    /// others join the same write, and a wake-up per outcome would cost a
    /// futex call per delivery.
    fn after_buffered(&self, mut inner: MutexGuard<'_, Inner>, was_empty: bool) {
        if inner.buf.len() >= FLUSH_BYTES {
            let _ = self.write_out(&mut inner);
        }
        drop(inner);
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// Asks for segment `n` to be deleted once nothing live is left in it.
    pub fn retire(&self, n: u64) {
        self.lock().retire.push(n);
        self.wake.notify_one();
    }

    /// Writes what is buffered, syncs and stops; later appends fail with `Closed`.
    pub async fn close(&self) {
        let mut inner = self.lock();
        let _ = self.write_out(&mut inner);
        if let Some(f) = &inner.file {
            let _ = f.sync_all();
        }
        inner.closed = true;
        drop(inner);
        self.wake.notify_one();
    }

    /// Writes `buf` to the current segment;
    /// starts a new segment when the current one is full.
    fn write_out(&self, inner: &mut Inner) -> Result<(), SpoolError> {
        if inner.buf.is_empty() {
            return Ok(());
        }
        if inner.file.is_none() {
            let now = std::time::Instant::now();
            if inner.create_retry_at.is_some_and(|t| now < t) {
                return Err(SpoolError::DiskFull(
                    "still no room for a new segment".into(),
                ));
            }
            let (f, len) = match create_segment(&self.dir, inner.current, self.fsync) {
                Ok(x) => x,
                Err(e) => {
                    inner.create_retry_at = Some(now + Duration::from_millis(200));
                    return Err(io_error(&e));
                }
            };
            inner.create_retry_at = None;
            inner.file = Some(Arc::new(f));
            inner.len = len;
            self.bytes.fetch_add(len, Ordering::Relaxed);
            let current = inner.current;
            inner.segments.entry(current).or_default().bytes = len;
            info!("spool segment created: there is room on the disk again");
        }
        let file = inner.file.clone().expect("created above");
        if let Err(e) = (&*file).write_all(&inner.buf) {
            // A short write may have left part of a record: cut the file
            // back so the next record starts at a record boundary.
            let _ = file.set_len(inner.len);
            let _ = (&*file).seek(std::io::SeekFrom::Start(inner.len));
            error!(error = %e, "spool write failed");
            return Err(io_error(&e));
        }
        let n = inner.buf.len() as u64;
        inner.buf.clear();
        inner.copies = 0;
        inner.len += n;
        inner.written += 1;
        self.bytes.fetch_add(n, Ordering::Relaxed);
        let current = inner.current;
        let len = inner.len;
        if let Some(i) = inner.segments.get_mut(&current) {
            i.bytes = len;
        }
        if inner.len >= self.segment_bytes {
            if let Err(e) = self.roll(inner) {
                error!(error = %e, "cannot start a new spool segment; writing on in the current one");
            }
        }
        Ok(())
    }

    fn roll(&self, inner: &mut Inner) -> std::io::Result<()> {
        if self.fsync == FsyncMode::Always {
            if let Some(f) = &inner.file {
                f.sync_all()?;
            }
        }
        let next = inner.current + 1;
        let (file, len) = create_segment(&self.dir, next, self.fsync)?;
        inner.file = Some(Arc::new(file));
        inner.current = next;
        inner.len = len;
        self.bytes.fetch_add(len, Ordering::Relaxed);
        inner.segments.insert(
            next,
            SegInfo {
                bytes: len,
                live: 0,
                records: 0,
            },
        );
        Ok(())
    }

    /// The flusher thread: writes buffered outcomes, deletes finished segments.
    fn flusher(self: Arc<Self>) {
        let mut inner = self.lock();
        loop {
            if inner.closed {
                return;
            }
            if inner.buf.is_empty() && inner.retire.is_empty() {
                inner = self
                    .wake
                    .wait_timeout(inner, Duration::from_secs(1))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
                continue;
            }
            // Let outcomes gather briefly, so one write (and one wake-up)
            // carries many: a wake-up per delivery cost more CPU than the
            // delivery. A crash in this window costs an early retry or a
            // repeated delivery, never a request.
            drop(inner);
            std::thread::sleep(FLUSH_GATHER);
            inner = self.lock();
            let failed = self.write_out(&mut inner).is_err();
            inner.retire.clear();
            // Not while a job copy waits in the buffer: its segment may look
            // free only because of that copy. Outcomes waiting there do not
            // matter: deleting a finished job's segment deletes its record
            // too, and that is what frees room on a full disk.
            if inner.copies == 0 {
                self.remove_finished(&mut inner);
            }
            if failed {
                // Full disk or I/O error: try again later, not every millisecond.
                drop(inner);
                std::thread::sleep(Duration::from_millis(100));
                inner = self.lock();
            }
        }
    }

    /// Deletes the oldest segments that hold nothing live, in order.
    fn remove_finished(&self, inner: &mut Inner) {
        if !inner.loaded {
            return;
        }
        while let Some((&n, &info)) = inner.segments.iter().next() {
            if n == inner.current || info.live > 0 {
                return;
            }
            // The records that made it free (outcomes, copies) must be on
            // disk before the file goes, or a power loss could bring back a
            // state in which the job is live and its record is gone.
            if self.fsync == FsyncMode::Always {
                if let Some(f) = &inner.file {
                    let _ = f.sync_data();
                }
            }
            let path = seg_path(&self.dir, n);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(segment = %path.display(), error = %e, "cannot remove finished spool segment");
                    return;
                }
            }
            if self.fsync == FsyncMode::Always {
                sync_dir(&self.dir);
            }
            self.bytes.fetch_sub(info.bytes, Ordering::Relaxed);
            inner.segments.remove(&n);
            inner.readers.remove(&n);
            info!(segment = %path.display(), "spool segment finished; removed");
        }
    }

    /// Reads the segments that existed at open, in order, and returns the
    /// live jobs. Torn tails are cut off; corrupt records are skipped and
    /// counted. Runs on a blocking thread; appends go on meanwhile.
    pub fn replay_old(&self) -> Replay {
        // The segments registered at open, not a second listing: a listing
        // that failed now would look like an empty spool, and every old
        // segment would then be deleted as finished.
        let segs: Vec<u64> = self
            .lock()
            .segments
            .range(..self.first_new_segment)
            .map(|(n, _)| *n)
            .collect();
        let mut scan = Scanner::new(true);
        for n in &segs {
            scan.segment(&self.dir, *n);
        }
        scan.finish();
        let report = scan.report.clone();
        self.damage
            .fetch_add(report.corrupt_records, Ordering::Relaxed);
        let jobs: Vec<Restored> = std::mem::take(&mut scan.slots)
            .into_iter()
            .flatten()
            .collect();
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
                match std::fs::rename(&path, &bad) {
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
            inner.loaded = true;
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
        let mut scan = Scanner::new(false);
        scan.collect_jobs = true;
        scan.segment(&self.dir, n);
        scan.jobs
    }

    /// The `spool` part of `stats`.
    pub fn stats(&self) -> serde_json::Value {
        let segments = self.lock().segments.len();
        serde_json::json!({
            "mode": "disk",
            "dir": self.dir.display().to_string(),
            "fsync": match self.fsync { FsyncMode::Never => "never", FsyncMode::Always => "always" },
            "bytes": self.bytes(),
            "segments": segments,
            "corrupt_records": self.damage.load(Ordering::Relaxed),
        })
    }
}

impl Inner {
    /// A live job's latest record left segment `seg` (finished, or copied on).
    fn unlive(&mut self, seg: u64) {
        if let Some(i) = self.segments.get_mut(&seg) {
            i.live = i.live.saturating_sub(1);
        }
    }
}

/// Encodes a JOB record into the buffer and says where it will land: the
/// buffer is always written whole at the end of the current segment, whose
/// live count it joins at once (counting early only delays a deletion).
fn encode_job_at(inner: &mut Inner, job: &Job, o: &Outcome) -> Loc {
    let off = inner.len + inner.buf.len() as u64;
    encode_job(&mut inner.buf, job, o);
    let current = inner.current;
    let i = inner.segments.entry(current).or_default();
    i.live += 1;
    i.records += 1;
    Loc {
        seg: current,
        off: off as u32,
        len: (inner.len + inner.buf.len() as u64 - off) as u32,
    }
}

fn create_segment(dir: &Path, n: u64, fsync: FsyncMode) -> std::io::Result<(File, u64)> {
    let path = seg_path(dir, n);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let written = f.write_all(&header).and_then(|_| {
        if fsync == FsyncMode::Always {
            f.sync_data()?;
            sync_dir(dir);
        }
        Ok(())
    });
    if let Err(e) = written {
        // No half-made segment left behind: the next try must be able to
        // create it, and a restart must not trip over it.
        drop(f);
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok((f, HEADER_LEN))
}

// ---- record encoding ------------------------------------------------------

fn put_u16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    put_u32(b, v.len() as u32);
    b.extend_from_slice(v);
}
/// A length-prefixed Display value, formatted in place (no String).
fn put_display(b: &mut Vec<u8>, v: &impl std::fmt::Display) {
    let at = b.len();
    b.extend_from_slice(&[0; 4]);
    let _ = write!(b, "{v}");
    let len = (b.len() - at - 4) as u32;
    b[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

fn put_opt_str(b: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(s) => {
            b.push(1);
            put_bytes(b, s.as_bytes());
        }
        None => b.push(0),
    }
}

fn frame(buf: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 8]);
    body(buf);
    let payload = &buf[start + 8..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_outcome(b: &mut Vec<u8>, o: &Outcome) {
    b.push(o.kind.to_u8());
    put_u32(b, o.attempts);
    put_u64(b, o.next_ms);
    put_u16(b, o.status.unwrap_or(0));
    put_opt_str(b, o.error.as_deref());
    put_opt_str(b, o.snippet.as_deref());
    put_u64(b, o.at_ms);
}

fn encode_job(buf: &mut Vec<u8>, job: &Job, o: &Outcome) {
    frame(buf, |b| {
        b.push(REC_JOB);
        put_bytes(b, job.id.as_bytes());
        put_bytes(b, job.method.as_str().as_bytes());
        put_display(b, &job.uri);
        put_u32(b, job.headers.len() as u32);
        for (k, v) in &job.headers {
            put_bytes(b, k.as_str().as_bytes());
            put_bytes(b, v.as_bytes());
        }
        put_bytes(b, &job.body);
        put_u64(b, job.timeout_ms);
        put_u32(b, job.max_attempts);
        put_u64(b, job.accepted_ms);
        put_u64(b, job.not_before_ms);
        put_u64(b, job.expires_ms);
        put_outcome(b, o);
    });
}

fn encode_outcome(buf: &mut Vec<u8>, id: &str, o: &Outcome) {
    frame(buf, |b| {
        b.push(REC_OUTCOME);
        put_bytes(b, id.as_bytes());
        put_outcome(b, o);
    });
}

/// A cursor over a payload; every read is checked, so no content can panic.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
    fn opt_str(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.str()?.to_string())),
            _ => None,
        }
    }
    fn outcome(&mut self) -> Option<Outcome> {
        let kind = Kind::from_u8(self.u8()?)?;
        let attempts = self.u32()?;
        let next_ms = self.u64()?;
        let status = self.u16()?;
        Some(Outcome {
            kind,
            attempts,
            next_ms,
            status: (status != 0).then_some(status),
            error: self.opt_str()?.map(Into::into),
            snippet: self.opt_str()?,
            at_ms: self.u64()?,
        })
    }
}

/// Decodes a JOB record into the full request (`None` for anything else).
fn decode_job(payload: &[u8]) -> Option<Arc<Job>> {
    let mut c = Cur(payload);
    if c.u8()? != REC_JOB {
        return None;
    }
    let id: Arc<str> = c.str()?.into();
    let method = Method::from_bytes(c.bytes()?).ok()?;
    let uri: Uri = c.str()?.parse().ok()?;
    let n = c.u32()? as usize;
    let mut headers = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let k = HeaderName::from_bytes(c.bytes()?).ok()?;
        let v = HeaderValue::from_bytes(c.bytes()?).ok()?;
        headers.push((k, v));
    }
    let body = Bytes::copy_from_slice(c.bytes()?);
    let job = Job {
        id,
        method,
        uri,
        headers,
        body,
        timeout_ms: c.u64()?,
        max_attempts: c.u32()?,
        accepted_ms: c.u64()?,
        not_before_ms: c.u64()?,
        expires_ms: c.u64()?,
    };
    c.outcome()?;
    c.0.is_empty().then(|| Arc::new(job))
}

/// Reads segments, tolerating any content: the state of the spool as records
/// say, and a report of what was skipped or cut.
pub struct Scanner {
    /// Cut torn tails off the files (false: read-only).
    repair: bool,
    /// Live jobs by id: index into `slots` (acceptance order; a finished
    /// job leaves a hole).
    index: HashMap<Arc<str>, u32>,
    slots: Vec<Option<Restored>>,
    /// Recently delivered jobs, oldest first, bounded.
    delivered: std::collections::VecDeque<Restored>,
    /// Shared host keys and error strings.
    hosts: HashMap<Box<str>, Arc<str>>,
    errors: HashMap<Arc<str>, ()>,
    /// Keep every JOB record of the scanned segments (compaction).
    collect_jobs: bool,
    jobs: Vec<(Arc<Job>, Loc)>,
    /// Segments read to the end (damage skipped or cut, but understood).
    read_ok: std::collections::HashSet<u64>,
    seg_records: HashMap<u64, u64>,
    /// What was seen.
    pub report: ScanReport,
}

impl Scanner {
    /// A scanner; `repair` cuts torn tails off (the daemon), or not (`spool check`).
    pub fn new(repair: bool) -> Scanner {
        Scanner {
            repair,
            index: HashMap::new(),
            slots: Vec::new(),
            delivered: Default::default(),
            hosts: HashMap::new(),
            errors: HashMap::new(),
            collect_jobs: false,
            jobs: Vec::new(),
            read_ok: Default::default(),
            seg_records: HashMap::new(),
            report: ScanReport::default(),
        }
    }

    /// Scans every segment of `dir` in order.
    pub fn dir(&mut self, dir: &Path) -> std::io::Result<()> {
        for n in list_segments(dir)? {
            self.segment(dir, n);
        }
        self.finish();
        Ok(())
    }

    /// Fills in the pending/dead counts from the live set.
    pub fn finish(&mut self) {
        self.report.pending = 0;
        self.report.dead = 0;
        for r in self.slots.iter().flatten() {
            if r.state.dead_phase().is_some() {
                self.report.dead += 1;
            } else {
                self.report.pending += 1;
            }
        }
    }

    /// Scans one segment file.
    pub fn segment(&mut self, dir: &Path, n: u64) {
        let path = seg_path(dir, n);
        let mut data = Vec::new();
        if let Err(e) = File::open(&path).and_then(|mut f| f.read_to_end(&mut data)) {
            warn!(segment = %path.display(), error = %e, "cannot read spool segment; skipped");
            self.report
                .bad_files
                .push(format!("{}: {e}", path.display()));
            return;
        }
        self.report.segments += 1;
        self.report.bytes += data.len() as u64;
        if data.len() < HEADER_LEN as usize || &data[..8] != MAGIC {
            if data.is_empty()
                || (data.len() < HEADER_LEN as usize
                    && MAGIC.starts_with(&data[..data.len().min(8)]))
            {
                // A segment created by a crash before its header was written: nothing in it.
                self.cut(&path, 0, data.len() as u64);
                self.read_ok.insert(n);
                return;
            }
            warn!(segment = %path.display(), "not an ffd spool segment (bad header); skipped");
            self.report
                .bad_files
                .push(format!("{}: bad header", path.display()));
            return;
        }
        let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
        if version != FORMAT_VERSION {
            warn!(segment = %path.display(), version, "spool segment of an unknown format version; skipped");
            self.report
                .bad_files
                .push(format!("{}: format version {version}", path.display()));
            return;
        }
        self.read_ok.insert(n);
        let mut pos = HEADER_LEN as usize;
        while pos < data.len() {
            match record_at(&data, pos) {
                Some((payload, next)) => {
                    let loc = Loc {
                        seg: n,
                        off: pos as u32,
                        len: (next - pos) as u32,
                    };
                    if self.collect_jobs {
                        if let Some(job) = decode_job(payload) {
                            self.jobs.push((job, loc));
                        }
                    }
                    match decode_meta(payload) {
                        Some(rec) => self.apply(rec, loc),
                        None => {
                            self.report.corrupt_records += 1;
                            warn!(segment = %path.display(), offset = pos, "undecodable spool record; skipped");
                        }
                    }
                    pos = next;
                }
                None => {
                    // Damage: find the next valid record, if any.
                    match (pos + 1..data.len()).find(|p| record_at(&data, *p).is_some()) {
                        Some(p) => {
                            self.report.corrupt_records += 1;
                            warn!(segment = %path.display(), offset = pos, skipped_bytes = p - pos, "corrupt spool record; skipped");
                            pos = p;
                        }
                        None => {
                            let torn = (data.len() - pos) as u64;
                            warn!(segment = %path.display(), offset = pos, bytes = torn, "torn record at the end of a spool segment; cut off");
                            self.cut(&path, pos as u64, torn);
                            break;
                        }
                    }
                }
            }
        }
    }

    fn cut(&mut self, path: &Path, at: u64, torn: u64) {
        self.report.torn_bytes += torn;
        if self.repair && torn > 0 {
            if let Ok(f) = OpenOptions::new().write(true).open(path) {
                let _ = f.set_len(at);
                let _ = f.sync_all();
            }
        }
    }

    fn apply(&mut self, rec: Meta, loc: Loc) {
        self.report.records += 1;
        *self.seg_records.entry(loc.seg).or_default() += 1;
        match rec {
            Meta::Job {
                id,
                uri,
                max_attempts,
                accepted_ms,
                not_before_ms,
                expires_ms,
                mut state,
            } => {
                if state.kind.finished() {
                    self.forget(id);
                    return;
                }
                let Ok(parsed) = uri.parse::<http::Uri>() else {
                    self.report.corrupt_records += 1;
                    return;
                };
                let key = crate::job::host_key(&parsed);
                let host = match self.hosts.get(key.as_str()) {
                    Some(h) => h.clone(),
                    None => {
                        let h: Arc<str> = key.as_str().into();
                        self.hosts.insert(key.into_boxed_str(), h.clone());
                        h
                    }
                };
                state.error = self.intern(state.error.take());
                match self.index.get(id) {
                    Some(&i) => {
                        if let Some(r) = &mut self.slots[i as usize] {
                            r.max_attempts = max_attempts;
                            r.accepted_ms = accepted_ms;
                            r.not_before_ms = not_before_ms;
                            r.expires_ms = expires_ms;
                            r.loc = loc;
                            r.state = state;
                            r.host = host;
                        }
                    }
                    None => {
                        let id: Arc<str> = id.into();
                        self.index.insert(id.clone(), self.slots.len() as u32);
                        self.slots.push(Some(Restored {
                            id,
                            host,
                            max_attempts,
                            accepted_ms,
                            not_before_ms,
                            expires_ms,
                            loc,
                            state,
                        }));
                    }
                }
            }
            Meta::Outcome { id, mut state } => {
                if state.kind == Kind::Delivered {
                    if let Some(i) = self.index.remove(id) {
                        if let Some(mut r) = self.slots[i as usize].take() {
                            state.error = None;
                            r.state = state;
                            if self.delivered.len() == DELIVERED_HISTORY {
                                self.delivered.pop_front();
                            }
                            self.delivered.push_back(r);
                        }
                    }
                } else if state.kind.finished() {
                    self.forget(id);
                } else if let Some(&i) = self.index.get(id) {
                    state.error = self.intern(state.error.take());
                    if let Some(r) = &mut self.slots[i as usize] {
                        r.state = state;
                    }
                }
            }
        }
    }

    fn forget(&mut self, id: &str) {
        if let Some(i) = self.index.remove(id) {
            self.slots[i as usize] = None;
        }
    }

    fn intern(&mut self, e: Option<Arc<str>>) -> Option<Arc<str>> {
        let e = e?;
        if let Some((k, _)) = self.errors.get_key_value(&*e) {
            return Some(k.clone());
        }
        self.errors.insert(e.clone(), ());
        Some(e)
    }
}

/// A record as replay reads it: the fields that schedule a job, borrowed.
enum Meta<'a> {
    Job {
        id: &'a str,
        uri: &'a str,
        max_attempts: u32,
        accepted_ms: u64,
        not_before_ms: u64,
        expires_ms: u64,
        state: Outcome,
    },
    Outcome {
        id: &'a str,
        state: Outcome,
    },
}

/// Decodes a record without building the request (headers and body are
/// skipped), for replay.
fn decode_meta(payload: &[u8]) -> Option<Meta<'_>> {
    let mut c = Cur(payload);
    match c.u8()? {
        REC_JOB => {
            let id = c.str()?;
            let method = c.bytes()?;
            Method::from_bytes(method).ok()?;
            let uri = c.str()?;
            let n = c.u32()? as usize;
            for _ in 0..n {
                c.bytes()?;
                c.bytes()?;
            }
            c.bytes()?;
            let _timeout_ms = c.u64()?;
            let max_attempts = c.u32()?;
            let accepted_ms = c.u64()?;
            let not_before_ms = c.u64()?;
            let expires_ms = c.u64()?;
            let state = c.outcome()?;
            c.0.is_empty().then_some(Meta::Job {
                id,
                uri,
                max_attempts,
                accepted_ms,
                not_before_ms,
                expires_ms,
                state,
            })
        }
        REC_OUTCOME => {
            let id = c.str()?;
            let state = c.outcome()?;
            c.0.is_empty().then_some(Meta::Outcome { id, state })
        }
        _ => None,
    }
}

/// The payload of a valid record at `pos` and where the next one starts.
fn record_at(data: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let head = data.get(pos..pos + 8)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let end = pos + 8 + len as usize;
    let payload = data.get(pos + 8..end)?;
    (crc32fast::hash(payload) == crc).then_some((payload, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> Arc<Job> {
        Arc::new(Job {
            id: id.into(),
            method: Method::POST,
            uri: "http://127.0.0.1:1/x?q=1".parse().unwrap(),
            headers: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("1"),
            )],
            body: Bytes::from_static(b"hello"),
            timeout_ms: 1000,
            max_attempts: 3,
            accepted_ms: 10,
            not_before_ms: 10,
            expires_ms: 1000,
        })
    }

    #[test]
    fn round_trip_and_last_record_wins() {
        let mut buf = Vec::new();
        let j = job("a");
        encode_job(&mut buf, &j, &Outcome::new_job(&j));
        let mut dead = Outcome::purged(5);
        dead.kind = Kind::Dead;
        dead.status = Some(404);
        encode_outcome(&mut buf, "a", &dead);
        let (p, next) = record_at(&buf, 0).unwrap();
        let d = decode_job(p).expect("job record");
        assert_eq!(d.uri, j.uri);
        assert_eq!(d.body, j.body);
        assert_eq!(d.headers, j.headers);
        assert!(matches!(
            decode_meta(p),
            Some(Meta::Job {
                id: "a",
                max_attempts: 3,
                ..
            })
        ));
        let (p, _) = record_at(&buf, next).unwrap();
        assert!(decode_job(p).is_none());
        assert!(
            matches!(decode_meta(p), Some(Meta::Outcome { id: "a", state }) if state.status == Some(404))
        );
    }

    /// Arbitrary bytes after a valid header never panic the scanner.
    #[test]
    fn scanner_survives_arbitrary_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut valid = Vec::new();
        let j = job("b");
        encode_job(&mut valid, &j, &Outcome::new_job(&j));
        for round in 0..300u64 {
            let mut data = Vec::from(*MAGIC);
            data.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            data.extend_from_slice(&[0; 4]);
            let mut rec = valid.clone();
            // Flip some bytes, truncate, or append noise.
            for _ in 0..rng.usize(0..4) {
                let i = rng.usize(0..rec.len());
                rec[i] = rng.u8(..);
            }
            rec.truncate(rng.usize(0..=rec.len()));
            data.extend_from_slice(&rec);
            for _ in 0..rng.usize(0..64) {
                data.push(rng.u8(..));
            }
            let n = round + 1;
            std::fs::write(seg_path(dir.path(), n), &data).unwrap();
            let mut s = Scanner::new(false);
            s.segment(dir.path(), n);
        }
        // And entirely random files.
        for n in 1000..1100u64 {
            let data: Vec<u8> = (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect();
            std::fs::write(seg_path(dir.path(), n), &data).unwrap();
        }
        let mut s = Scanner::new(true);
        s.dir(dir.path()).unwrap();
    }
}
