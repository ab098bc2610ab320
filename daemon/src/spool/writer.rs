//! The writing side: the buffer and segment bookkeeping behind the spool's
//! mutex, group-commit writes, rolling to a new segment, the flusher thread
//! and the deletion of finished segments.

use super::fs::{seg_path, Fs, SegmentFile};
use super::record::{encode_job, Loc, Outcome, FORMAT_VERSION, HEADER_LEN, MAGIC};
use super::{io_error, Spool, SpoolError};
use crate::config::FsyncMode;
use crate::job::Job;
use crate::shutdown::Shutdown;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;
use tracing::{error, info, warn};

/// Added to the live count of a segment that must never be deleted.
pub(super) const PINNED: u64 = 1 << 40;
/// How long the flusher lets outcome records gather before writing them.
const FLUSH_GATHER: Duration = Duration::from_millis(1);
/// Bytes of buffered outcome records past which the caller writes them itself.
const FLUSH_BYTES: usize = 256 * 1024;

#[derive(Default, Clone, Copy)]
pub(super) struct SegInfo {
    pub(super) bytes: u64,
    /// Live jobs whose latest record is in this segment.
    pub(super) live: u64,
    pub(super) records: u64,
}

/// Everything about the files, behind one mutex.
pub(super) struct Inner {
    pub(super) current: u64,
    /// `None` while the segment could not be created (a full disk at
    /// start): ffd runs, delivers its backlog, and creates it on the first
    /// write that finds room.
    pub(super) file: Option<Arc<dyn SegmentFile>>,
    pub(super) len: u64,
    /// Encoded records not yet written (outcomes wait here for the flusher
    /// or the next append; appends write at once).
    pub(super) buf: Vec<u8>,
    pub(super) segments: BTreeMap<u64, SegInfo>,
    /// Replay has said which old jobs are live; only then may old segments go.
    pub(super) loaded: bool,
    /// Count of writes so far; `always` mode syncs up to one of these.
    pub(super) written: u64,
    /// Segments the compactor asked to delete once free.
    pub(super) retire: Vec<u64>,
    /// JOB-record copies (compaction, dead-letter replay) in `buf`: while
    /// any waits there, a segment that looks free may hold the only
    /// written copy of a job, so no segment is deleted.
    pub(super) copies: usize,
    /// After a failed segment creation (full disk), not before this.
    pub(super) create_retry_at: Option<std::time::Instant>,
    /// Open read handles of segments, for loading jobs at delivery time.
    pub(super) readers: HashMap<u64, Arc<dyn SegmentFile>>,
    pub(super) closed: bool,
}

impl Inner {
    /// A live job's latest record left segment `seg` (finished, or copied on).
    pub(super) fn unlive(&mut self, seg: u64) {
        if let Some(i) = self.segments.get_mut(&seg) {
            i.live = i.live.saturating_sub(1);
        }
    }
}

/// Encodes a JOB record into the buffer and says where it will land: the
/// buffer is always written whole at the end of the current segment, whose
/// live count it joins at once (counting early only delays a deletion).
pub(super) fn encode_job_at(inner: &mut Inner, job: &Job, o: &Outcome) -> Loc {
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

/// Creates segment `n` with its header. In `always` mode the file and the
/// directory entry are synced before it is used.
pub(super) fn create_segment(
    fs: &dyn Fs,
    dir: &Path,
    n: u64,
    fsync: FsyncMode,
) -> std::io::Result<(Arc<dyn SegmentFile>, u64)> {
    let path = seg_path(dir, n);
    let f = fs.create_new(&path)?;
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let written = f.append(&header).and_then(|_| {
        if fsync == FsyncMode::Always {
            // Without the directory entry on disk, a power loss would take
            // the whole segment, synced records and all.
            f.sync_data()?;
            fs.sync_dir(dir)?;
        }
        Ok(())
    });
    if let Err(e) = written {
        // No half-made segment left behind: the next try must be able to
        // create it, and a restart must not trip over it.
        drop(f);
        let _ = fs.remove(&path);
        return Err(e);
    }
    Ok((f, HEADER_LEN))
}

impl Spool {
    /// Blocks until write number `seq` is on stable storage.
    pub(super) fn sync_to(&self, seq: u64) -> Result<(), SpoolError> {
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

    /// Wakes the flusher only for the first record after a write: the
    /// others join the same write, and a wake-up per outcome would cost a
    /// futex call per delivery.
    pub(super) fn after_buffered(&self, mut inner: MutexGuard<'_, Inner>, was_empty: bool) {
        if inner.buf.len() >= FLUSH_BYTES {
            let _ = self.write_out(&mut inner);
        }
        drop(inner);
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// Writes `buf` to the current segment;
    /// starts a new segment when the current one is full.
    pub(super) fn write_out(&self, inner: &mut Inner) -> Result<(), SpoolError> {
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
            let (f, len) = match create_segment(&*self.fs, &self.dir, inner.current, self.fsync) {
                Ok(x) => x,
                Err(e) => {
                    inner.create_retry_at = Some(now + Duration::from_millis(200));
                    return Err(io_error(&e));
                }
            };
            inner.create_retry_at = None;
            inner.file = Some(f);
            inner.len = len;
            self.bytes.fetch_add(len, Ordering::Relaxed);
            let current = inner.current;
            inner.segments.entry(current).or_default().bytes = len;
            info!("spool segment created: there is room on the disk again");
        }
        let file = inner.file.clone().expect("created above");
        if let Err(e) = file.append(&inner.buf) {
            // A short write may have left part of a record: cut the file
            // back so the next record starts at a record boundary.
            if let Err(cut) = file.truncate(inner.len) {
                // The torn bytes stay (the scan skips them at the next
                // start); later records go after them, at offsets taken
                // from the file's real length.
                error!(error = %cut, "cannot cut a failed spool write back; writing on after it");
                self.skip_torn(inner);
            }
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
                f.sync_data()?;
            }
        }
        let next = inner.current + 1;
        let (file, len) = create_segment(&*self.fs, &self.dir, next, self.fsync)?;
        inner.file = Some(file);
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

    /// The flusher thread: writes buffered outcomes, deletes finished
    /// segments; ends when the spool closes or `shutdown` stops.
    pub(super) fn flusher(self: Arc<Self>, shutdown: Shutdown) {
        let mut inner = self.lock();
        loop {
            if inner.closed || shutdown.is_exiting() {
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
            if self.flush_locked(&mut inner).is_err() {
                // Full disk or I/O error: try again later, not every millisecond.
                drop(inner);
                std::thread::sleep(Duration::from_millis(100));
                inner = self.lock();
            }
        }
    }

    /// One round of the flusher, on the caller's thread: writes what is
    /// buffered and deletes the segments that are finished.
    pub fn flush(&self) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        self.flush_locked(&mut inner)
    }

    fn flush_locked(&self, inner: &mut Inner) -> Result<(), SpoolError> {
        let written = self.write_out(inner);
        inner.retire.clear();
        // Not while a job copy waits in the buffer: its segment may look
        // free only because of that copy. Outcomes waiting there do not
        // matter: deleting a finished job's segment deletes its record
        // too, and that is what frees room on a full disk.
        if inner.copies == 0 {
            self.remove_finished(inner);
        }
        written
    }

    /// After a failed write that could not be cut back: new records land
    /// after the torn bytes, so the write offset becomes the file's length.
    /// (Copies already in the buffer were placed at the old offset; one read
    /// back wrong becomes a dead letter that says so, and the copy on disk
    /// is replayed at the next start: nothing is lost.)
    fn skip_torn(&self, inner: &mut Inner) {
        if let Ok(len) = self.fs.len(&seg_path(&self.dir, inner.current)) {
            if len > inner.len {
                self.bytes.fetch_add(len - inner.len, Ordering::Relaxed);
                inner.len = len;
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
                    if let Err(e) = f.sync_data() {
                        warn!(error = %e, "spool sync failed; finished segments are kept until it works");
                        return;
                    }
                }
            }
            let path = seg_path(&self.dir, n);
            match self.fs.remove(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(segment = %path.display(), error = %e, "cannot remove finished spool segment");
                    return;
                }
            }
            if self.fsync == FsyncMode::Always {
                // A removal undone by a power loss brings back finished
                // jobs (a repeated delivery), never loses one: log only.
                if let Err(e) = self.fs.sync_dir(&self.dir) {
                    warn!(error = %e, "cannot sync the spool directory after a removal");
                }
            }
            self.bytes.fetch_sub(info.bytes, Ordering::Relaxed);
            inner.segments.remove(&n);
            inner.readers.remove(&n);
            info!(segment = %path.display(), "spool segment finished; removed");
        }
    }
}
