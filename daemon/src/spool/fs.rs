//! The file layer under the spool: every system call the spool makes on its
//! directory goes through [`Fs`], so a test can put a file system under it
//! that fails, stops or loses power at any call (see `tests/spool_model.rs`).
//!
//! [`RealFs`] is the one the daemon uses: plain `std::fs` calls.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An open segment file.
pub trait SegmentFile: Send + Sync {
    /// Appends `buf` at the end of the file. On error, part of it may have
    /// been written.
    fn append(&self, buf: &[u8]) -> io::Result<()>;
    /// Cuts the file to `len` bytes (the next append lands there).
    fn truncate(&self, len: u64) -> io::Result<()>;
    /// fdatasync: the bytes written so far survive a power loss.
    fn sync_data(&self) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `off`.
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
}

/// The directory operations the spool needs.
pub trait Fs: Send + Sync {
    /// Creates `dir` (and its parents) if missing, and sets its mode.
    fn create_dir(&self, dir: &Path, mode: u32) -> io::Result<()>;
    /// File names in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Size of the file at `path`.
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// Creates a new file (mode 0600), failing if it exists; opened for appends.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>>;
    /// Opens an existing file for reading.
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>>;
    /// The whole content of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Cuts the file at `path` to `len` bytes and syncs it.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Deletes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
pub struct RealFs;

struct RealFile(File);

impl SegmentFile for RealFile {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        (&self.0).write_all(buf)
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, off)
    }
}

impl Fs for RealFs {
    fn create_dir(&self, dir: &Path, mode: u32) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            out.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }
    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        // O_APPEND: after a cut (`truncate`), the next write lands at the
        // new end without a seek.
        let f = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(Arc::new(RealFile(f)))
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        Ok(Arc::new(RealFile(File::open(path)?)))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// `DIR/<16 hex digits>.seg`.
pub fn seg_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016x}.seg"))
}

/// Segment numbers in `dir`, ascending.
pub fn list_segments(fs: &dyn Fs, dir: &Path) -> io::Result<Vec<u64>> {
    let mut out: Vec<u64> = fs
        .list(dir)?
        .iter()
        .filter_map(|name| {
            let hex = name.strip_suffix(".seg")?;
            (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}
