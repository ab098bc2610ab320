//! Durability as a tested property: the spool against an in-memory model,
//! over a file layer that can fail or stop at any system call and lose
//! power, the way vector-buffers tests its disk buffer.
//!
//! Random sequences of append / outcome / flush (which deletes finished
//! segments) / compaction / injected failure / crash / reopen run against
//! the real `Spool` on [`SimFs`]. After every reopen the replayed spool must
//! hold exactly what its mode promises:
//! - `never` (a crash of ffd): every append whose write returned Ok;
//! - `always` (power loss drops every unsynced byte, and tears the rest at a
//!   random byte): every append that returned Ok, which in that mode means
//!   after its fdatasync;
//!
//! and in both: no request nobody sent, every replayed location reads back
//! the very request that was appended, and a finish whose record was written
//! (never) or synced (always) stays finished.

use ffd::config::FsyncMode;
use ffd::job::{owner_key, Job, Owner};
use ffd::spool::{Fs, Kind, Loc, Outcome, SegmentFile, Spool};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

// ------------------------------------------------------------ the file layer

#[derive(Default, Clone)]
struct Inode {
    data: Vec<u8>,
    /// What survives a power loss: the content at the last fdatasync.
    durable: Vec<u8>,
}

/// What the (simulated) kernel and disk hold.
#[derive(Default)]
struct World {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    /// The directory as of its last sync: what a power loss brings back.
    durable_names: BTreeMap<PathBuf, usize>,
    /// Mutating calls so far.
    ops: u64,
    /// This call fails (once), after writing part of its bytes if a write.
    fail_at: Option<u64>,
    /// At this call the process stops: a write lands torn, and every later
    /// call fails without effect until the reopen.
    freeze_at: Option<u64>,
    /// The disk is full: new files and appends fail with ENOSPC.
    full: bool,
    frozen: bool,
    rng: u64,
}

enum Step {
    Go,
    Fail,
    Stop,
}

impl World {
    fn step(&mut self) -> Step {
        if self.frozen {
            return Step::Stop;
        }
        self.ops += 1;
        if self.freeze_at == Some(self.ops) {
            self.frozen = true;
            // The call in progress may still land partly (a torn write).
            return Step::Fail;
        }
        if self.fail_at == Some(self.ops) {
            return Step::Fail;
        }
        Step::Go
    }

    fn next_rand(&mut self, below: usize) -> usize {
        // xorshift: deterministic from the case's seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        if below == 0 {
            0
        } else {
            (self.rng % below as u64) as usize
        }
    }

    /// The process is gone (and in `always` mode, the power too): the
    /// next open sees what survived, and its calls work again.
    fn crash(&mut self, mode: FsyncMode) {
        if mode == FsyncMode::Always {
            self.power_loss();
        }
        self.frozen = false;
        self.fail_at = None;
        self.freeze_at = None;
    }

    fn power_loss(&mut self) {
        self.names = self.durable_names.clone();
        for i in 0..self.inodes.len() {
            let ino = &self.inodes[i];
            let mut data = ino.durable.clone();
            if ino.data.starts_with(&ino.durable) {
                // Unsynced bytes: some of them may have reached the disk.
                let extra = ino.data.len() - ino.durable.len();
                let keep = self.next_rand(extra + 1);
                let ino = &self.inodes[i];
                data.extend_from_slice(&ino.data[ino.durable.len()..ino.durable.len() + keep]);
            }
            // What survived is on the disk now.
            self.inodes[i].durable = data.clone();
            self.inodes[i].data = data;
        }
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

#[derive(Clone)]
struct SimFs(Arc<Mutex<World>>);

struct SimFile {
    world: Arc<Mutex<World>>,
    ino: usize,
}

impl SimFs {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }
}

impl SegmentFile for SimFile {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        let mut w = self.world.lock().unwrap();
        if w.full {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        match w.step() {
            Step::Go => {
                w.inodes[self.ino].data.extend_from_slice(buf);
                Ok(())
            }
            Step::Fail => {
                let part = w.next_rand(buf.len() + 1);
                w.inodes[self.ino].data.extend_from_slice(&buf[..part]);
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
            Step::Stop => Err(eio()),
        }
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        let mut w = self.world.lock().unwrap();
        match w.step() {
            Step::Go => {
                w.inodes[self.ino].data.truncate(len as usize);
                Ok(())
            }
            _ => Err(eio()),
        }
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut w = self.world.lock().unwrap();
        match w.step() {
            Step::Go => {
                let i = &mut w.inodes[self.ino];
                i.durable = i.data.clone();
                Ok(())
            }
            _ => Err(eio()),
        }
    }
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let w = self.world.lock().unwrap();
        let data = &w.inodes[self.ino].data;
        let part = data
            .get(off as usize..off as usize + buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(part);
        Ok(())
    }
}

impl Fs for SimFs {
    fn create_dir(&self, _dir: &Path, _mode: u32) -> io::Result<()> {
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let w = self.world();
        Ok(w.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .collect())
    }
    fn len(&self, path: &Path) -> io::Result<u64> {
        let w = self.world();
        let i = *w.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        Ok(w.inodes[i].data.len() as u64)
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let mut w = self.world();
        if w.names.contains_key(path) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        if w.full {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        match w.step() {
            Step::Go => {}
            _ => return Err(eio()),
        }
        w.inodes.push(Inode::default());
        let ino = w.inodes.len() - 1;
        w.names.insert(path.to_path_buf(), ino);
        Ok(Arc::new(SimFile {
            world: self.0.clone(),
            ino,
        }))
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let w = self.world();
        let ino = *w.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        Ok(Arc::new(SimFile {
            world: self.0.clone(),
            ino,
        }))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let w = self.world();
        let i = *w.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        Ok(w.inodes[i].data.clone())
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut w = self.world();
        let i = *w.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        match w.step() {
            Step::Go => {
                let ino = &mut w.inodes[i];
                ino.data.truncate(len as usize);
                ino.durable.truncate(len as usize);
                Ok(())
            }
            _ => Err(eio()),
        }
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut w = self.world();
        if !w.names.contains_key(path) {
            return Err(io::ErrorKind::NotFound.into());
        }
        match w.step() {
            Step::Go => {
                w.names.remove(path);
                Ok(())
            }
            _ => Err(eio()),
        }
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut w = self.world();
        let i = *w.names.get(from).ok_or(io::ErrorKind::NotFound)?;
        match w.step() {
            Step::Go => {
                w.names.remove(from);
                w.names.insert(to.to_path_buf(), i);
                Ok(())
            }
            _ => Err(eio()),
        }
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        let mut w = self.world();
        match w.step() {
            Step::Go => {
                w.durable_names = w.names.clone();
                Ok(())
            }
            _ => Err(eio()),
        }
    }
}

// ------------------------------------------------------------------ the model

#[derive(Debug, Clone)]
enum Op {
    /// Appends 1..=4 new requests in one batch.
    Append(u8),
    /// Records an outcome for a live request: delivered, dead or a retry.
    Finish(u16, u8),
    /// One flusher round: write buffered records, delete finished segments.
    Flush,
    /// Copies the live jobs of a compaction candidate forward.
    Compact,
    /// The n-th next file call fails once.
    FailAt(u8),
    /// The process stops at the n-th next file call (torn if a write).
    StopAt(u8),
    /// Crash (and in `always` mode, lose power), then open and replay.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..=4).prop_map(Op::Append),
        6 => (any::<u16>(), 0u8..4).prop_map(|(k, o)| Op::Finish(k, o)),
        3 => Just(Op::Flush),
        3 => Just(Op::Compact),
        2 => (1u8..4).prop_map(Op::FailAt),
        1 => (1u8..12).prop_map(Op::StopAt),
        2 => Just(Op::Reopen),
    ]
}

/// What the model knows of one request.
struct Track {
    job: Arc<Job>,
    /// Its latest JOB record.
    loc: Loc,
    state: Outcome,
    /// Kinds recorded for it: what replay may show.
    kinds: BTreeSet<u8>,
    /// Delivered was recorded; `finish_durable` once that record is safe.
    finished: bool,
    finish_durable: bool,
}

struct Model {
    mode: FsyncMode,
    live: BTreeMap<String, Track>,
    /// Appends that returned an error: they may or may not come back.
    refused: BTreeMap<String, Arc<Job>>,
    /// Finishes recorded since the last write that returned Ok.
    unwritten: Vec<String>,
    next: u64,
}

const DIR: &str = "/spool";
const SEGMENT_BYTES: u64 = 700;

fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::Retry => 0,
        Kind::Delivered => 1,
        Kind::Dead => 2,
        Kind::Expired => 3,
        Kind::Purged => 4,
        Kind::Cancelled => 5,
    }
}

fn new_job(n: u64) -> Arc<Job> {
    let body: Vec<u8> = (0..(n * 37 % 150)).map(|i| (i * 7 + n) as u8).collect();
    // Owned and unowned records (written before owners existed) side by side.
    let owner = (n % 2 == 1).then_some(Owner {
        uid: 1000 + (n % 3) as u32,
        gid: 100,
    });
    let id: Arc<str> = format!("j{n}").into();
    Arc::new(Job {
        key: owner_key(owner, &id),
        id,
        owner,
        method: http::Method::POST,
        uri: format!("http://127.0.0.1:1/x/{n}").parse().unwrap(),
        // Some sent to a named destination (format 3 records).
        dest: (n % 5 == 2).then(|| "hooks".into()),
        headers: Vec::new(),
        body: body.into(),
        timeout_ms: 1000,
        max_attempts: 5,
        accepted_ms: n,
        not_before_ms: n,
        expires_ms: u64::MAX / 2,
    })
}

fn open(fs: &SimFs, mode: FsyncMode) -> (Arc<Spool>, ffd::spool::Replay) {
    let spool = Spool::open_on(Arc::new(fs.clone()), Path::new(DIR), mode, SEGMENT_BYTES)
        .expect("the spool opens whatever the files hold");
    // Plainly pending jobs are streamed; the model checks them with the rest.
    let streamed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = streamed.clone();
    let mut replay = spool.replay_old(move |r| into.lock().unwrap().push(r), || false);
    replay.jobs.append(&mut streamed.lock().unwrap());
    (spool, replay)
}

impl Model {
    /// A write returned Ok: the finishes buffered before it are on disk
    /// (synced too in `always` mode when the write was an append).
    fn written(&mut self, synced: bool) {
        if self.mode == FsyncMode::Always && !synced {
            return;
        }
        for id in self.unwritten.drain(..) {
            if let Some(t) = self.live.get_mut(&id) {
                t.finish_durable = true;
            }
        }
    }

    /// Checks the replay against the model, then takes it as the truth.
    fn check_replay(&mut self, spool: &Spool, replay: ffd::spool::Replay) -> Result<(), String> {
        let mut seen = BTreeMap::new();
        for r in replay.jobs {
            let id = r.id.to_string();
            let job = spool
                .read(r.loc)
                .map_err(|e| format!("{id}: replayed location unreadable: {e}"))?;
            let expected = match (self.live.get(&id), self.refused.get(&id)) {
                (Some(t), _) => {
                    if t.finish_durable {
                        return Err(format!("{id}: finished (record safe) but replayed"));
                    }
                    if !t.kinds.contains(&kind_code(r.state.kind)) {
                        return Err(format!(
                            "{id}: replayed as {:?}, never recorded",
                            r.state.kind
                        ));
                    }
                    t.job.clone()
                }
                (None, Some(j)) => j.clone(),
                (None, None) => return Err(format!("{id}: replayed, never appended")),
            };
            if job.key != expected.key
                || job.owner != expected.owner
                || job.body != expected.body
                || job.uri != expected.uri
            {
                return Err(format!("{id}: record at {:?} is another request", r.loc));
            }
            seen.insert(id, (expected, r.loc, r.state));
        }
        for (id, t) in &self.live {
            if !t.finished && !seen.contains_key(id) {
                return Err(format!("{id}: acknowledged, not finished, lost"));
            }
        }
        self.live = seen
            .into_iter()
            .map(|(id, (job, loc, state))| {
                let kinds = [0, kind_code(state.kind)].into_iter().collect();
                let t = Track {
                    job,
                    loc,
                    state,
                    kinds,
                    finished: false,
                    finish_durable: false,
                };
                (id, t)
            })
            .collect();
        self.refused.clear();
        self.unwritten.clear();
        Ok(())
    }
}

fn run_case(mode: FsyncMode, seed: u64, ops: &[Op]) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let fs = SimFs(Arc::new(Mutex::new(World {
        rng: seed | 1,
        ..World::default()
    })));
    let mut m = Model {
        mode,
        live: BTreeMap::new(),
        refused: BTreeMap::new(),
        unwritten: Vec::new(),
        next: 0,
    };
    let (mut spool, replay) = open(&fs, mode);
    m.check_replay(&spool, replay)?;
    for op in ops {
        match op {
            Op::Append(n) => {
                let jobs: Vec<Arc<Job>> = (0..*n)
                    .map(|_| {
                        m.next += 1;
                        new_job(m.next)
                    })
                    .collect();
                match rt.block_on(spool.append(jobs.clone())) {
                    Ok(locs) => {
                        m.written(true);
                        for (job, loc) in jobs.into_iter().zip(locs) {
                            let t = Track {
                                state: Outcome::new_job(&job),
                                job,
                                loc,
                                kinds: [0].into_iter().collect(),
                                finished: false,
                                finish_durable: false,
                            };
                            m.live.insert(t.job.key.to_string(), t);
                        }
                    }
                    Err(_) => {
                        for job in jobs {
                            m.refused.insert(job.key.to_string(), job);
                        }
                    }
                }
            }
            Op::Finish(k, o) => {
                let open: Vec<String> = m
                    .live
                    .iter()
                    .filter(|(_, t)| !t.finished)
                    .map(|(id, _)| id.clone())
                    .collect();
                if open.is_empty() {
                    continue;
                }
                let id = &open[*k as usize % open.len()];
                let t = m.live.get_mut(id).unwrap();
                let kind = [Kind::Delivered, Kind::Dead, Kind::Retry, Kind::Cancelled][*o as usize];
                let state = Outcome::after_attempt(
                    kind,
                    t.state.attempts + 1,
                    if kind == Kind::Retry { 99 } else { 0 },
                    Some(503),
                    Some("HTTP 503"),
                    None,
                    7,
                );
                spool.record(id, Some(t.loc), state.clone());
                t.kinds.insert(kind_code(kind));
                t.state = state;
                if kind.finished() {
                    t.finished = true;
                    m.unwritten.push(id.clone());
                }
            }
            Op::Flush => {
                if spool.flush().is_ok() {
                    m.written(false);
                }
            }
            Op::Compact => {
                let Some(seg) = spool.compaction_candidate() else {
                    continue;
                };
                for (job, loc) in spool.jobs_in(seg) {
                    let Some(t) = m.live.get_mut(&*job.key) else {
                        continue;
                    };
                    if t.loc != loc || t.finished {
                        continue;
                    }
                    t.loc = spool.rewrite(&job, t.state.clone(), Some(loc));
                }
                spool.retire(seg);
            }
            Op::FailAt(n) => {
                let mut w = fs.world();
                w.fail_at = Some(w.ops + *n as u64);
            }
            Op::StopAt(n) => {
                let mut w = fs.world();
                w.freeze_at = Some(w.ops + *n as u64);
            }
            Op::Reopen => {
                drop(spool);
                fs.world().crash(mode);
                let (s, replay) = open(&fs, mode);
                spool = s;
                m.check_replay(&spool, replay)?;
            }
        }
    }
    // Every case ends with a crash and a check.
    drop(spool);
    fs.world().crash(mode);
    let (spool, replay) = open(&fs, mode);
    m.check_replay(&spool, replay)
}

/// Started on a full disk, a spool keeps a delivered request's outcome in
/// memory; the disk is freed, and ffd is stopped before the flusher's next
/// try. `close` must write the outcome then, whatever its retry gate says
/// (once, a start on a full disk then a SIGTERM just after the disk was
/// freed left the outcome unwritten, and the request was delivered again
/// after the restart).
#[test]
fn close_writes_outcomes_kept_while_the_disk_was_full() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let fs = SimFs(Arc::new(Mutex::new(World {
        rng: 1,
        ..World::default()
    })));
    let (spool, _) = open(&fs, FsyncMode::Never);
    let job = new_job(1);
    // Another request in the same segment keeps it from being deleted
    // (deleting it would take the delivered request's record along).
    rt.block_on(spool.append(vec![job.clone(), new_job(2)]))
        .expect("appended");
    rt.block_on(spool.close());
    drop(spool);

    fs.world().full = true;
    let (spool, replay) = open(&fs, FsyncMode::Never);
    let loc = replay
        .jobs
        .iter()
        .find(|r| r.id == job.key)
        .map(|r| r.loc)
        .expect("replayed");
    let delivered = Outcome::after_attempt(Kind::Delivered, 1, 0, Some(200), None, None, 7);
    spool.record(&job.key, Some(loc), delivered);
    assert!(spool.flush().is_err(), "no room for a segment yet");
    fs.world().full = false;
    rt.block_on(spool.close());
    drop(spool);

    let (_, replay) = open(&fs, FsyncMode::Never);
    assert!(
        !replay.jobs.iter().any(|r| r.id == job.key),
        "the delivered request would be sent again"
    );
}

/// Cases per mode; `PROPTEST_CASES` overrides.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn never_mode_keeps_every_append_whose_write_returned(
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        if let Err(e) = run_case(FsyncMode::Never, seed, &ops) {
            prop_assert!(false, "{}", e);
        }
    }

    #[test]
    fn always_mode_keeps_every_synced_append_through_power_loss(
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        if let Err(e) = run_case(FsyncMode::Always, seed, &ops) {
            prop_assert!(false, "{}", e);
        }
    }
}
