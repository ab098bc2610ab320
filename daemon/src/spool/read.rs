//! The reading side: a job loaded back from its record at delivery time
//! (or for `status`), and runs of records read in chunks when paged-out
//! requests come back.

use super::record::{self, decode_job, record_at, Loc};
use super::writer::Inner;
use super::{seg_path, ReadError, SegmentFile, Spool};
use crate::job::Job;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Bytes read at once when paging requests back in.
const PAGE_CHUNK: usize = 1 << 20;

/// The last chunk [`Spool::read_records`] read.
#[derive(Default)]
struct Chunk {
    seg: u64,
    start: u64,
    data: Vec<u8>,
}

impl Spool {
    /// The read handle of segment `seg` (opened once, kept until the
    /// segment is deleted).
    fn reader(&self, inner: &mut Inner, seg: u64) -> Result<Arc<dyn SegmentFile>, ReadError> {
        if let Some(f) = inner.readers.get(&seg) {
            return Ok(f.clone());
        }
        let f = self
            .fs
            .open_read(&seg_path(&self.dir, seg))
            .map_err(|source| ReadError::Io { seg, source })?;
        inner.readers.insert(seg, f.clone());
        Ok(f)
    }

    /// Reads the records at `at` (segment, offset; their lengths are in
    /// their headers) for page-in: records next to each other are read in
    /// chunks of [`PAGE_CHUNK`] bytes, not one `pread` each. Only for
    /// records already written to their file (JOB records of appends,
    /// which write before they return).
    pub fn read_records(&self, at: &[(u64, u32)]) -> Vec<Result<(Loc, Vec<u8>), ReadError>> {
        let mut chunk = Chunk::default();
        at.iter()
            .map(|&(seg, off)| {
                let head = self.chunk_bytes(&mut chunk, seg, off as u64, 8)?;
                let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
                if len == 0 || len > record::MAX_RECORD {
                    return Err(ReadError::Damaged);
                }
                let total = 8 + len as usize;
                let rec = self.chunk_bytes(&mut chunk, seg, off as u64, total)?;
                let (payload, _) = record_at(rec, 0).ok_or(ReadError::Damaged)?;
                let loc = Loc {
                    seg,
                    off,
                    len: total as u32,
                };
                Ok((loc, payload.to_vec()))
            })
            .collect()
    }

    /// `n` bytes at `off` of segment `seg`, from `chunk` or read into it.
    fn chunk_bytes<'c>(
        &self,
        chunk: &'c mut Chunk,
        seg: u64,
        off: u64,
        n: usize,
    ) -> Result<&'c [u8], ReadError> {
        let inside = chunk.seg == seg
            && off >= chunk.start
            && off + n as u64 <= chunk.start + chunk.data.len() as u64;
        if !inside {
            let (file, end) = {
                let mut inner = self.lock();
                let end = if seg == inner.current {
                    inner.len
                } else {
                    inner.segments.get(&seg).map_or(0, |i| i.bytes)
                };
                (self.reader(&mut inner, seg)?, end)
            };
            let want = (PAGE_CHUNK as u64)
                .min(end.saturating_sub(off))
                .max(n as u64);
            chunk.data.resize(want as usize, 0);
            if file.read_exact_at(&mut chunk.data, off).is_err() {
                // The recorded end was off: read just what is asked.
                chunk.data.resize(n, 0);
                file.read_exact_at(&mut chunk.data, off)
                    .map_err(|source| ReadError::Io { seg, source })?;
            }
            chunk.seg = seg;
            chunk.start = off;
        }
        let from = (off - chunk.start) as usize;
        Ok(&chunk.data[from..from + n])
    }

    /// Counts a damaged record found after start (in `stats`).
    pub fn count_corrupt(&self) {
        self.damage.fetch_add(1, Ordering::Relaxed);
    }

    /// Loads a job from its record (at delivery time, for `status`, ...).
    pub fn read(&self, loc: Loc) -> Result<Arc<Job>, ReadError> {
        let mut bytes = vec![0u8; loc.len as usize];
        let file = {
            let mut inner = self.lock();
            if loc.seg == inner.current && loc.off as u64 + loc.len as u64 > inner.len {
                // Still in the buffer (a copy the flusher has not written yet).
                let part = (loc.off as u64)
                    .checked_sub(inner.len)
                    .and_then(|start| {
                        inner
                            .buf
                            .get(start as usize..start as usize + loc.len as usize)
                    })
                    .ok_or(ReadError::Damaged)?;
                bytes.copy_from_slice(part);
                None
            } else {
                Some(self.reader(&mut inner, loc.seg)?)
            }
        };
        if let Some(f) = file {
            f.read_exact_at(&mut bytes, loc.off as u64)
                .map_err(|source| ReadError::Io {
                    seg: loc.seg,
                    source,
                })?;
        }
        record_at(&bytes, 0)
            .and_then(|(payload, _)| decode_job(payload))
            .ok_or(ReadError::Damaged)
    }
}
