//! Reading segments back: replay at start, compaction's look into one
//! segment, and `ffd spool check`. Tolerates any content: a torn tail is cut
//! (or only reported, read-only), a corrupt record skipped and counted.

use super::fs::{list_segments, seg_path, Fs, RealFs};
use super::record::{
    decode_job, decode_meta, record_at, Kind, Loc, Meta, Outcome, FORMAT_VERSION, HEADER_LEN,
    MAGIC, OLDEST_FORMAT_VERSION,
};
use crate::job::{owner_key, Job, Owner};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tracing::warn;

/// Delivered jobs replay remembers for `status`, at most.
pub const DELIVERED_HISTORY: usize = 100_000;

/// A live job as replay keeps it: no body, no headers, no URL (the request
/// stays on disk at `loc`), the host and error strings shared, so replaying
/// a large backlog costs memory per request, not per byte of request.
pub struct Restored {
    /// The request's key ([`owner_key`]: `uid:id`, or the bare id).
    pub id: Arc<str>,
    /// Who sent it.
    pub owner: Option<Owner>,
    /// Its lane: `scheme://host:port` of the target, with the destination
    /// ([`crate::job::lane_key`]).
    pub host: Arc<str>,
    /// The named destination it was sent to.
    pub dest: Option<Arc<str>>,
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

/// A JOB record's payload as a [`Restored`] job (page-in reads records
/// back this way); `None` for anything else.
pub fn restored_from(payload: &[u8], loc: Loc) -> Option<Restored> {
    restored_from_meta(decode_meta(payload)?, loc)
}

/// A JOB record's fields as a [`Restored`] job.
fn restored_from_meta(meta: Meta<'_>, loc: Loc) -> Option<Restored> {
    let Meta::Job {
        id,
        owner,
        uri,
        dest,
        max_attempts,
        accepted_ms,
        not_before_ms,
        expires_ms,
        state,
    } = meta
    else {
        return None;
    };
    let parsed = uri.parse::<http::Uri>().ok()?;
    Some(Restored {
        id: owner_key(owner, id),
        owner,
        host: crate::job::lane_key(&parsed, dest).into(),
        dest: dest.map(Into::into),
        max_attempts,
        accepted_ms,
        not_before_ms,
        expires_ms,
        loc,
        state,
    })
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
    /// Requests whose last record says cancelled (of those still on disk,
    /// the most recent [`DELIVERED_HISTORY`] finished ones).
    pub cancelled: u64,
    /// Records skipped because their checksum or contents were wrong.
    pub corrupt_records: u64,
    /// Bytes cut off at the end of segments (torn writes).
    pub torn_bytes: u64,
    /// Files that could not be read at all (bad header, unreadable).
    pub bad_files: Vec<String>,
    /// Bytes of all segment files.
    pub bytes: u64,
}

/// Reads segments, tolerating any content: the state of the spool as records
/// say, and a report of what was skipped or cut.
pub struct Scanner {
    fs: Arc<dyn Fs>,
    /// Cut torn tails off the files (false: read-only).
    repair: bool,
    /// Live jobs by id: index into `slots` (acceptance order; a finished
    /// job leaves a hole).
    pub(super) index: HashMap<Arc<str>, u32>,
    pub(super) slots: Vec<Option<Restored>>,
    /// Recently delivered jobs, oldest first, bounded.
    pub(super) delivered: std::collections::VecDeque<Restored>,
    /// Shared host keys and error strings.
    hosts: HashMap<Box<str>, Arc<str>>,
    errors: HashMap<Arc<str>, ()>,
    /// Keep every JOB record of the scanned segments (compaction).
    pub(super) collect_jobs: bool,
    pub(super) jobs: Vec<(Arc<Job>, Loc)>,
    /// Segments read to the end (damage skipped or cut, but understood).
    pub(super) read_ok: std::collections::HashSet<u64>,
    pub(super) seg_records: HashMap<u64, u64>,
    /// What was seen.
    pub report: ScanReport,
    /// Which pass of a replay this is (`Full` outside replay).
    pub(super) pass: Pass,
    /// No warnings (a second pass over what the first reported).
    pub(super) quiet: bool,
}

/// Replay reads the spool twice so that its memory does not grow with the
/// backlog: a first pass notes 8 bytes per record, and the second streams
/// every job that is plainly pending (one JOB record, never attempted, no
/// outcome) straight to the scheduler; only the other jobs are kept here
/// to merge their records. A fingerprint shared by two keys only sends
/// both the long way, which is exact.
pub(super) enum Pass {
    /// Every live job is kept (`spool check`, compaction, tests, fuzzing).
    Full,
    /// First pass: fingerprints of every JOB record's key, and of every key
    /// with more to it (an outcome, an attempt, an end state).
    Count {
        /// One per JOB record.
        jobs: Vec<u64>,
        /// Keys that need the long way.
        complex: Vec<u64>,
    },
    /// Second pass: keys not in `complex` (sorted) go to `stream`.
    Stream {
        complex: Vec<u64>,
        stream: Box<dyn FnMut(Restored) + Send>,
        /// Jobs streamed.
        streamed: u64,
    },
}

/// The fingerprint of a key as outcome records write it ([`owner_key`]).
fn outcome_fp(key: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x6666_6464).hash_one(key.as_bytes())
}

/// The fingerprint of the key of a JOB record's owner and id: the same as
/// [`outcome_fp`] of its [`owner_key`], without allocating it.
fn key_fp(owner: Option<Owner>, id: &str) -> u64 {
    crate::job::with_owner_key(owner, id, outcome_fp)
}

/// Whether a JOB record's state is that of a new send (never attempted).
fn fresh(state: &Outcome) -> bool {
    state.kind == Kind::Retry && state.attempts == 0 && state.error.is_none()
}

impl Pass {
    /// After the first pass: the sorted fingerprints of keys that need the
    /// long way (two JOB records, or anything beyond one fresh record).
    pub(super) fn complex(self) -> Vec<u64> {
        let Pass::Count {
            mut jobs,
            mut complex,
        } = self
        else {
            return Vec::new();
        };
        jobs.sort_unstable();
        for w in jobs.windows(2) {
            if w[0] == w[1] {
                complex.push(w[0]);
            }
        }
        drop(jobs);
        complex.sort_unstable();
        complex.dedup();
        complex.shrink_to_fit();
        complex
    }
}

impl Scanner {
    /// A scanner; `repair` cuts torn tails off (the daemon), or not (`spool check`).
    pub fn new(repair: bool) -> Scanner {
        Scanner::on(Arc::new(RealFs), repair)
    }

    /// A scanner reading through `fs`.
    pub fn on(fs: Arc<dyn Fs>, repair: bool) -> Scanner {
        Scanner {
            fs,
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
            pass: Pass::Full,
            quiet: false,
        }
    }

    /// Scans every segment of `dir` in order.
    pub fn dir(&mut self, dir: &Path) -> std::io::Result<()> {
        for n in list_segments(&*self.fs, dir)? {
            self.segment(dir, n);
        }
        self.finish();
        Ok(())
    }

    /// Fills in the pending/dead counts from the live set.
    pub fn finish(&mut self) {
        self.report.pending = match &self.pass {
            Pass::Stream { streamed, .. } => *streamed,
            _ => 0,
        };
        self.report.dead = 0;
        self.report.cancelled = self
            .delivered
            .iter()
            .filter(|r| r.state.kind == Kind::Cancelled)
            .count() as u64;
        for r in self.slots.iter().flatten() {
            if r.state.is_dead_letter() {
                self.report.dead += 1;
            } else {
                self.report.pending += 1;
            }
        }
    }

    /// Scans one segment file.
    pub fn segment(&mut self, dir: &Path, n: u64) {
        let path = seg_path(dir, n);
        let data = match self.fs.read(&path) {
            Ok(d) => d,
            Err(e) => {
                if !self.quiet {
                    warn!(segment = %path.display(), error = %e, "cannot read spool segment; skipped");
                }
                self.report
                    .bad_files
                    .push(format!("{}: {e}", path.display()));
                return;
            }
        };
        self.bytes(&path, n, &data);
    }

    /// Scans the content of segment `n` (read from `path`, which is cut
    /// when repairing). Any bytes: this is the fuzzed entry point.
    pub fn bytes(&mut self, path: &Path, n: u64, data: &[u8]) {
        self.report.segments += 1;
        self.report.bytes += data.len() as u64;
        if data.len() < HEADER_LEN as usize || &data[..8] != MAGIC {
            if data.is_empty()
                || (data.len() < HEADER_LEN as usize
                    && MAGIC.starts_with(&data[..data.len().min(8)]))
            {
                // A segment created by a crash before its header was written: nothing in it.
                self.cut(path, 0, data.len() as u64);
                self.read_ok.insert(n);
                return;
            }
            if !self.quiet {
                warn!(segment = %path.display(), "not an ffd spool segment (bad header); skipped");
            }
            self.report
                .bad_files
                .push(format!("{}: bad header", path.display()));
            return;
        }
        let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            if !self.quiet {
                warn!(segment = %path.display(), version, "spool segment of an unknown format version; skipped");
            }
            self.report
                .bad_files
                .push(format!("{}: format version {version}", path.display()));
            return;
        }
        self.read_ok.insert(n);
        let mut pos = HEADER_LEN as usize;
        while pos < data.len() {
            match record_at(data, pos) {
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
                            if !self.quiet {
                                warn!(segment = %path.display(), offset = pos, "undecodable spool record; skipped");
                            }
                        }
                    }
                    pos = next;
                }
                None => {
                    // Damage: find the next valid record, if any.
                    match (pos + 1..data.len()).find(|p| record_at(data, *p).is_some()) {
                        Some(p) => {
                            self.report.corrupt_records += 1;
                            if !self.quiet {
                                warn!(segment = %path.display(), offset = pos, skipped_bytes = p - pos, "corrupt spool record; skipped");
                            }
                            pos = p;
                        }
                        None => {
                            let torn = (data.len() - pos) as u64;
                            if !self.quiet {
                                warn!(segment = %path.display(), offset = pos, bytes = torn, "torn record at the end of a spool segment; cut off");
                            }
                            self.cut(path, pos as u64, torn);
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
            if let Err(e) = self.fs.truncate(path, at) {
                warn!(segment = %path.display(), error = %e, "cannot cut the torn tail; it is skipped again at the next start");
            }
        }
    }

    fn apply(&mut self, rec: Meta, loc: Loc) {
        self.report.records += 1;
        *self.seg_records.entry(loc.seg).or_default() += 1;
        match (&mut self.pass, &rec) {
            (Pass::Full, _) => {}
            (Pass::Count { jobs, complex }, rec) => {
                match rec {
                    Meta::Job {
                        id, owner, state, ..
                    } => {
                        let fp = key_fp(*owner, id);
                        jobs.push(fp);
                        if !fresh(state) {
                            complex.push(fp);
                        }
                    }
                    Meta::Outcome { id, .. } => {
                        // Outcome records name the key, owner included.
                        complex.push(outcome_fp(id));
                    }
                }
                return;
            }
            (
                Pass::Stream {
                    complex,
                    stream,
                    streamed,
                },
                Meta::Job { id, owner, .. },
            ) => {
                if complex.binary_search(&key_fp(*owner, id)).is_err() {
                    if let Some(r) = restored_from_meta(rec, loc) {
                        *streamed += 1;
                        stream(r);
                    } else {
                        self.report.corrupt_records += 1;
                    }
                    return;
                }
            }
            (Pass::Stream { complex, .. }, Meta::Outcome { id, .. }) => {
                if complex.binary_search(&outcome_fp(id)).is_err() {
                    return;
                }
            }
        }
        match rec {
            Meta::Job {
                id,
                owner,
                uri,
                dest,
                max_attempts,
                accepted_ms,
                not_before_ms,
                expires_ms,
                mut state,
            } => {
                let id = &*owner_key(owner, id);
                if state.kind.finished() {
                    self.forget(id);
                    return;
                }
                let Ok(parsed) = uri.parse::<http::Uri>() else {
                    self.report.corrupt_records += 1;
                    return;
                };
                let key = crate::job::lane_key(&parsed, dest);
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
                            r.dest = dest.map(Into::into);
                            r.owner = owner;
                        }
                    }
                    None => {
                        let id: Arc<str> = id.into();
                        self.index.insert(id.clone(), self.slots.len() as u32);
                        self.slots.push(Some(Restored {
                            id,
                            owner,
                            host,
                            dest: dest.map(Into::into),
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
                // A cancelled job is kept for `status` as a delivered one is.
                if matches!(state.kind, Kind::Delivered | Kind::Cancelled) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::record::{encode_job, test_job};

    /// Arbitrary bytes after a valid header never panic the scanner.
    #[test]
    fn scanner_survives_arbitrary_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut valid = Vec::new();
        let j = test_job("b");
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
