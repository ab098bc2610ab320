//! The durable spool: a small segmented log.
//!
//! Files: `DIR/<16 hex digits>.seg`, each starting with a 16-byte header
//! (`FFDSPOOL`, format version, reserved). Records follow:
//! `[len u32][crc32 u32][payload]`, little-endian, the CRC over the payload.
//! A payload is a `JOB` (the whole request plus its state at the time of
//! writing) or an `OUTCOME` (id, new state). Replay reads segments in order
//! and the last record of an id wins.
//!
//! One writer thread owns the files. Everything that changes the spool is a
//! message on one channel, so the order of records is the order in which the
//! scheduler changed its state (it sends while holding its lock). The writer
//! drains the channel before each write: many requests, one `write` (and one
//! `fdatasync` in `always` mode) — group commit.
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
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

const MAGIC: &[u8; 8] = b"FFDSPOOL";
/// Format version written in every segment header.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: u64 = 16;
const REC_JOB: u8 = 1;
const REC_OUTCOME: u8 = 2;
/// No record is larger: a length field above it is damage, not data.
const MAX_RECORD: u32 = 64 << 20;

/// Why the spool refused an append.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The write or sync failed; nothing of the batch was acknowledged.
    #[error("spool write failed: {0}")]
    Io(String),
    /// The writer has stopped (shutting down).
    #[error("spool is closed")]
    Closed,
}

impl SpoolError {
    /// The wire code for a send refused for this reason.
    pub fn code(&self) -> ErrorCode {
        match self {
            SpoolError::Io(_) => ErrorCode::Internal,
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
    /// Last error.
    pub error: Option<String>,
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
            error: a.error.clone(),
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
            error: a.error.clone(),
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

enum Msg {
    Append(Vec<Arc<Job>>, oneshot::Sender<Result<(), SpoolError>>),
    /// A job re-appended with its current state (replay of a dead letter, compaction).
    Rewrite(Arc<Job>, Outcome),
    Outcome(Arc<str>, Outcome),
    /// Replay finished: which old segment holds the latest record of each live id.
    Loaded(HashMap<Arc<str>, u64>, HashMap<u64, u64>),
    /// Delete the segment if nothing live is left in it (after compaction).
    Retire(u64),
    /// Sync and stop.
    Close(oneshot::Sender<()>),
}

#[derive(Default)]
struct Shared {
    /// Segment number → bytes and count of live jobs whose latest record is in it.
    segments: BTreeMap<u64, SegInfo>,
}

#[derive(Default, Clone, Copy)]
struct SegInfo {
    bytes: u64,
    live: u64,
    records: u64,
}

/// Handle to the spool, shared by the scheduler.
pub struct Spool {
    dir: PathBuf,
    fsync: FsyncMode,
    tx: Mutex<mpsc::Sender<Msg>>,
    bytes: Arc<AtomicU64>,
    shared: Arc<Mutex<Shared>>,
    first_new_segment: u64,
    damage: Arc<AtomicU64>,
}

/// What replay found: jobs still to deliver or kept as dead letters, and damage.
pub struct Replay {
    /// Live jobs with their last recorded state, in acceptance order.
    pub jobs: Vec<(Arc<Job>, Outcome)>,
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

impl Spool {
    /// Opens (creating) the spool directory, starts a new segment after the
    /// existing ones and the writer thread. Old segments are read by [`Spool::replay`].
    pub fn open(dir: &Path, fsync: FsyncMode, segment_bytes: u64) -> anyhow::Result<Arc<Spool>> {
        use anyhow::Context;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create spool directory {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(
            || format!("cannot set mode 0700 on spool directory {}", dir.display()),
        )?;
        let existing = list_segments(dir)
            .with_context(|| format!("cannot list spool directory {}", dir.display()))?;
        let mut shared = Shared::default();
        let mut total = 0;
        for n in &existing {
            let bytes = std::fs::metadata(seg_path(dir, *n))
                .map(|m| m.len())
                .unwrap_or(0);
            total += bytes;
            shared.segments.insert(
                *n,
                SegInfo {
                    bytes,
                    live: 0,
                    records: 0,
                },
            );
        }
        let first_new = existing.last().map(|n| n + 1).unwrap_or(1);
        let (file, len) = create_segment(dir, first_new, fsync)
            .with_context(|| format!("cannot create a segment in {}", dir.display()))?;
        shared.segments.insert(
            first_new,
            SegInfo {
                bytes: len,
                live: 0,
                records: 0,
            },
        );
        total += len;
        let bytes = Arc::new(AtomicU64::new(total));
        let shared = Arc::new(Mutex::new(shared));
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            dir: dir.to_path_buf(),
            fsync,
            segment_bytes,
            current: first_new,
            file,
            len,
            latest: HashMap::new(),
            loaded: false,
            bytes: bytes.clone(),
            shared: shared.clone(),
            buf: Vec::with_capacity(1 << 16),
        };
        std::thread::Builder::new()
            .name("ffd-spool".into())
            .spawn(move || writer.run(rx))
            .context("cannot start the spool writer thread")?;
        Ok(Arc::new(Spool {
            dir: dir.to_path_buf(),
            fsync,
            tx: Mutex::new(tx),
            bytes,
            shared,
            first_new_segment: first_new,
            damage: Arc::new(AtomicU64::new(0)),
        }))
    }

    fn send(&self, msg: Msg) -> bool {
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(msg)
            .is_ok()
    }

    /// Bytes of all segment files.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Appends new jobs; returns once written (and synced in `always` mode).
    pub async fn append(&self, jobs: Vec<Arc<Job>>) -> Result<(), SpoolError> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Msg::Append(jobs, tx)) {
            return Err(SpoolError::Closed);
        }
        rx.await.unwrap_or(Err(SpoolError::Closed))
    }

    /// Records a state change. Not awaited: losing the last outcomes in a
    /// crash means a retry or a duplicate delivery, never a lost request.
    pub fn record(&self, id: &Arc<str>, outcome: Outcome) {
        self.send(Msg::Outcome(id.clone(), outcome));
    }

    /// Records a dead letter put back in the queue with new times.
    pub fn replay(&self, job: Arc<Job>) {
        let o = Outcome::new_job(&job);
        self.send(Msg::Rewrite(job, o));
    }

    /// Re-appends a live job with its current state (compaction).
    pub fn rewrite(&self, job: Arc<Job>, state: Outcome) {
        self.send(Msg::Rewrite(job, state));
    }

    /// Asks the writer to delete segment `n` once nothing live is left in it.
    pub fn retire(&self, n: u64) {
        self.send(Msg::Retire(n));
    }

    /// Syncs and stops the writer; later appends fail with `Closed`.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Msg::Close(tx)) {
            let _ = rx.await;
        }
    }

    /// Reads the segments that existed at open, in order, and returns the
    /// live jobs. Torn tails are cut off; corrupt records are skipped and
    /// counted. Runs on a blocking thread; the writer keeps serving meanwhile.
    pub fn replay_old(&self) -> Replay {
        let segs: Vec<u64> = list_segments(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| *n < self.first_new_segment)
            .collect();
        let mut scan = Scanner::new(true);
        for n in &segs {
            scan.segment(&self.dir, *n);
        }
        scan.finish();
        let report = scan.report.clone();
        self.damage
            .fetch_add(report.corrupt_records, Ordering::Relaxed);
        let mut latest = HashMap::new();
        let mut jobs: Vec<(u64, Arc<Job>, Outcome, u64)> = scan
            .live
            .into_values()
            .map(|(job, o, seg, order)| (order, job, o, seg))
            .collect();
        jobs.sort_unstable_by_key(|(order, ..)| *order);
        for (_, job, _, seg) in &jobs {
            latest.insert(job.id.clone(), *seg);
        }
        self.send(Msg::Loaded(latest, scan.seg_records));
        Replay {
            jobs: jobs.into_iter().map(|(_, j, o, _)| (j, o)).collect(),
            report,
        }
    }

    /// The oldest closed segment, if compacting it is worthwhile: at most a
    /// quarter of its records are live jobs, so re-appending them frees the
    /// whole file.
    pub fn compaction_candidate(&self) -> Option<u64> {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if shared.segments.len() < 2 {
            return None;
        }
        let (n, info) = shared.segments.iter().next()?;
        (info.live > 0 && info.live * 4 <= info.records).then_some(*n)
    }

    /// Ids of the jobs in segment `n` (for compaction).
    pub fn job_ids_in(&self, n: u64) -> Vec<Arc<str>> {
        let mut scan = Scanner::new(false);
        scan.segment(&self.dir, n);
        scan.ids
    }

    /// The `spool` part of `stats`.
    pub fn stats(&self) -> serde_json::Value {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "mode": "disk",
            "dir": self.dir.display().to_string(),
            "fsync": match self.fsync { FsyncMode::Never => "never", FsyncMode::Always => "always" },
            "bytes": self.bytes(),
            "segments": shared.segments.len(),
            "corrupt_records": self.damage.load(Ordering::Relaxed),
        })
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
    f.write_all(&header)?;
    if fsync == FsyncMode::Always {
        f.sync_data()?;
        sync_dir(dir);
    }
    Ok((f, HEADER_LEN))
}

struct Writer {
    dir: PathBuf,
    fsync: FsyncMode,
    segment_bytes: u64,
    current: u64,
    file: File,
    len: u64,
    /// id → segment of its latest JOB record, for live jobs.
    latest: HashMap<Arc<str>, u64>,
    loaded: bool,
    bytes: Arc<AtomicU64>,
    shared: Arc<Mutex<Shared>>,
    buf: Vec<u8>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut replies: Vec<oneshot::Sender<Result<(), SpoolError>>> = Vec::new();
        let mut retire: Vec<u64> = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut close = None;
            let mut msg = Some(first);
            self.buf.clear();
            let mut counts: Vec<(Arc<str>, bool)> = Vec::new(); // (id, job record?) in order
            let mut finished: Vec<Arc<str>> = Vec::new();
            while let Some(m) = msg.take() {
                match m {
                    Msg::Append(jobs, reply) => {
                        for job in jobs {
                            let o = Outcome::new_job(&job);
                            encode_job(&mut self.buf, &job, &o);
                            counts.push((job.id.clone(), true));
                        }
                        replies.push(reply);
                    }
                    Msg::Rewrite(job, o) => {
                        encode_job(&mut self.buf, &job, &o);
                        counts.push((job.id.clone(), true));
                    }
                    Msg::Outcome(id, o) => {
                        encode_outcome(&mut self.buf, &id, &o);
                        counts.push((id.clone(), false));
                        if o.kind.finished() {
                            finished.push(id);
                        }
                    }
                    Msg::Loaded(map, records) => {
                        for (id, seg) in map {
                            self.latest.entry(id).or_insert(seg);
                        }
                        self.loaded = true;
                        self.recount(records);
                    }
                    Msg::Retire(n) => retire.push(n),
                    Msg::Close(tx) => close = Some(tx),
                }
                if close.is_none() && self.buf.len() < (4 << 20) {
                    msg = rx.try_recv().ok();
                }
            }
            let result = self.write_out();
            {
                let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                for (id, is_job) in counts {
                    if is_job {
                        if let Some(old) = self.latest.insert(id, self.current) {
                            if let Some(i) = shared.segments.get_mut(&old) {
                                i.live = i.live.saturating_sub(1);
                            }
                        }
                        let i = shared.segments.entry(self.current).or_default();
                        i.live += 1;
                        i.records += 1;
                    } else if let Some(i) = shared.segments.get_mut(&self.current) {
                        i.records += 1;
                    }
                }
                for id in finished {
                    if let Some(seg) = self.latest.remove(&id) {
                        if let Some(i) = shared.segments.get_mut(&seg) {
                            i.live = i.live.saturating_sub(1);
                        }
                    }
                }
                if let Some(i) = shared.segments.get_mut(&self.current) {
                    i.bytes = self.len;
                }
            }
            for r in replies.drain(..) {
                let _ = r.send(result.clone().map_err(SpoolError::Io));
            }
            if result.is_ok() && self.len >= self.segment_bytes {
                if let Err(e) = self.roll() {
                    error!(error = %e, "cannot start a new spool segment; writing on in the current one");
                }
            }
            self.remove_finished(&mut retire);
            if let Some(tx) = close {
                let _ = self.file.sync_all();
                let _ = tx.send(());
                return;
            }
        }
    }

    fn write_out(&mut self) -> Result<(), String> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self.file.write_all(&self.buf).and_then(|_| {
            if self.fsync == FsyncMode::Always {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match r {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                self.bytes
                    .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // A short write may have left part of a record: cut the file
                // back so the next record starts at a record boundary.
                let _ = self.file.set_len(self.len);
                use std::io::Seek;
                let _ = self.file.seek(std::io::SeekFrom::Start(self.len));
                error!(error = %e, "spool write failed");
                Err(e.to_string())
            }
        }
    }

    fn roll(&mut self) -> std::io::Result<()> {
        if self.fsync == FsyncMode::Always {
            self.file.sync_all()?;
        }
        let next = self.current + 1;
        let (file, len) = create_segment(&self.dir, next, self.fsync)?;
        self.file = file;
        self.current = next;
        self.len = len;
        self.bytes.fetch_add(len, Ordering::Relaxed);
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.segments.insert(
            next,
            SegInfo {
                bytes: len,
                live: 0,
                records: 0,
            },
        );
        Ok(())
    }

    /// Live counts of old segments, once replay said which ids are live.
    fn recount(&mut self, records: HashMap<u64, u64>) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        for (n, info) in shared.segments.iter_mut() {
            info.live = 0;
            if let Some(r) = records.get(n) {
                info.records = *r;
            }
        }
        for seg in self.latest.values() {
            let i = shared.segments.entry(*seg).or_default();
            i.live += 1;
            i.records = i.records.max(i.live);
        }
    }

    /// Deletes the oldest segments that hold nothing live, in order.
    fn remove_finished(&mut self, retire: &mut Vec<u64>) {
        if !self.loaded {
            return;
        }
        retire.clear();
        loop {
            let (n, info) = {
                let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                match shared.segments.iter().next() {
                    Some((n, i)) => (*n, *i),
                    None => return,
                }
            };
            if n == self.current || info.live > 0 {
                return;
            }
            // The records that made it free (outcomes, copies) must be on
            // disk before the file goes, or a power loss could bring back a
            // state in which the job is live and its record is gone.
            if self.fsync == FsyncMode::Always {
                let _ = self.file.sync_data();
            }
            let path = seg_path(&self.dir, n);
            let gone = match std::fs::remove_file(&path) {
                Ok(()) => true,
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            };
            match gone {
                true => {
                    if self.fsync == FsyncMode::Always {
                        sync_dir(&self.dir);
                    }
                    self.bytes.fetch_sub(info.bytes, Ordering::Relaxed);
                    let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                    shared.segments.remove(&n);
                    info!(segment = %path.display(), "spool segment finished; removed");
                }
                false => {
                    warn!(segment = %path.display(), "cannot remove finished spool segment");
                    return;
                }
            }
        }
    }
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
        put_bytes(b, job.uri.to_string().as_bytes());
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
            error: self.opt_str()?,
            snippet: self.opt_str()?,
            at_ms: self.u64()?,
        })
    }
}

/// A decoded record.
enum Record {
    Job(Arc<Job>, Outcome),
    Outcome(Arc<str>, Outcome),
}

fn decode(payload: &[u8]) -> Option<Record> {
    let mut c = Cur(payload);
    match c.u8()? {
        REC_JOB => {
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
            let o = c.outcome()?;
            c.0.is_empty().then(|| Record::Job(Arc::new(job), o))
        }
        REC_OUTCOME => {
            let id: Arc<str> = c.str()?.into();
            let o = c.outcome()?;
            c.0.is_empty().then_some(Record::Outcome(id, o))
        }
        _ => None,
    }
}

/// Reads segments, tolerating any content: the state of the spool as records
/// say, and a report of what was skipped or cut.
pub struct Scanner {
    /// Cut torn tails off the files (false: read-only).
    repair: bool,
    /// Live jobs: id → (job, state, segment of its latest record, order).
    live: HashMap<Arc<str>, (Arc<Job>, Outcome, u64, u64)>,
    ids: Vec<Arc<str>>,
    order: u64,
    seg_records: HashMap<u64, u64>,
    /// What was seen.
    pub report: ScanReport,
}

impl Scanner {
    /// A scanner; `repair` cuts torn tails off (the daemon), or not (`spool check`).
    pub fn new(repair: bool) -> Scanner {
        Scanner {
            repair,
            live: HashMap::new(),
            ids: Vec::new(),
            order: 0,
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
        for (_, o, _, _) in self.live.values() {
            if o.dead_phase().is_some() {
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
        let mut pos = HEADER_LEN as usize;
        while pos < data.len() {
            match record_at(&data, pos) {
                Some((payload, next)) => {
                    match decode(payload) {
                        Some(rec) => self.apply(rec, n),
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

    fn apply(&mut self, rec: Record, seg: u64) {
        self.report.records += 1;
        *self.seg_records.entry(seg).or_default() += 1;
        match rec {
            Record::Job(job, o) => {
                self.ids.push(job.id.clone());
                let order = self
                    .live
                    .get(&job.id)
                    .map(|(.., ord)| *ord)
                    .unwrap_or_else(|| {
                        self.order += 1;
                        self.order
                    });
                if o.kind.finished() {
                    self.live.remove(&job.id);
                } else {
                    self.live.insert(job.id.clone(), (job, o, seg, order));
                }
            }
            Record::Outcome(id, o) => {
                if o.kind.finished() {
                    self.live.remove(&id);
                } else if let Some(entry) = self.live.get_mut(&id) {
                    entry.1 = o;
                }
            }
        }
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
        match decode(p) {
            Some(Record::Job(d, _)) => {
                assert_eq!(d.uri, j.uri);
                assert_eq!(d.body, j.body);
                assert_eq!(d.headers, j.headers);
            }
            _ => panic!("job record"),
        }
        let (p, _) = record_at(&buf, next).unwrap();
        assert!(matches!(decode(p), Some(Record::Outcome(_, o)) if o.status == Some(404)));
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
