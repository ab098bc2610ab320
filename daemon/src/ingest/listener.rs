//! The Unix socket: bind (replacing a stale file, never a live ffd), set its
//! mode, accept within the connection limit.

use super::conn;
use super::gate::Gate;
use crate::control::Peer;
use crate::scheduler::Engine;
use crate::shutdown::Shutdown;
use anyhow::{bail, Context, Result};
use ffd_proto::ErrorCode;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::UnixListener;
use tracing::{debug, info, warn};

/// Binds the socket at `path` with permission bits `mode`.
///
/// A socket file nobody answers on (left by a dead ffd) is replaced; a socket
/// a live process answers on, or a file that is not a socket, stops start-up.
pub fn bind(path: &Path, mode: u32) -> Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            // Traversable by the group when the socket is meant for a group.
            let dir_mode = if mode & 0o070 != 0 { 0o750 } else { 0o700 };
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => bail!(
                    "another process (probably ffd) is listening on {}; stop it or pick another --socket",
                    path.display()
                ),
                Err(_) => {
                    info!(socket = %path.display(), "replacing stale socket file");
                    std::fs::remove_file(path)
                        .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
                }
            }
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(_) => {}
    }
    // Bind under a strict umask so the socket is never reachable with looser
    // bits, even for the instant before chmod. Nothing else creates files
    // this early, so the process-wide umask is safe to flip.
    // SAFETY: umask has no preconditions.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("cannot bind socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode of {}", path.display()))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Who may connect, checked on accept with the peer's credentials.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Allowed uids (root and ffd's own user always are).
    pub uids: Vec<u32>,
    /// Allowed groups (primary or supplementary).
    pub gids: Vec<u32>,
}

impl Access {
    fn restricted(&self) -> bool {
        !self.uids.is_empty() || !self.gids.is_empty()
    }
}

/// The peer's supplementary groups (SO_PEERGROUPS), as the kernel saw them at
/// connect time; no /proc reading, so it works under ProtectProc=invisible.
fn peer_groups(fd: std::os::fd::RawFd) -> Vec<u32> {
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `groups`.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr() as *mut libc::c_void,
                &mut len,
            )
        };
        if r == 0 {
            groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
            return groups;
        }
        let needed = len as usize / std::mem::size_of::<libc::gid_t>();
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE)
            && needed > groups.len()
            && needed <= 65536
        {
            groups.resize(needed, 0);
            continue;
        }
        return Vec::new();
    }
}

/// Refused connections whose input is drained at once, at most (each holds
/// its file descriptor for up to a second meanwhile).
const REFUSALS: usize = 64;

/// The listener's settings.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; past it, `busy`.
    pub max_connections: usize,
    /// Connections of one uid at once; past it, `busy`.
    pub max_connections_per_uid: usize,
    /// Longest line.
    pub max_line: usize,
    /// Longest wait for the rest of a started line.
    pub idle_line_timeout: std::time::Duration,
}

/// Accepts connections until draining begins; each is served on its own
/// task, within the limits of a [`Gate`]: past them a connection is
/// answered `busy` and closed.
pub async fn run(
    listener: UnixListener,
    engine: Arc<Engine>,
    limits: Limits,
    access: Access,
    mut shutdown: Shutdown,
) {
    let gate = Gate::new(limits.max_connections, limits.max_connections_per_uid);
    // Refused peers that already sent data are drained before the close;
    // past this many at once, they are closed after their line, so a
    // flood of connects cannot pile up file descriptors.
    let refusals = Arc::new(tokio::sync::Semaphore::new(REFUSALS));
    let lines = conn::Limits {
        max_line: limits.max_line,
        idle_line_timeout: limits.idle_line_timeout,
    };
    // SAFETY: geteuid has no preconditions.
    let my_uid = unsafe { libc::geteuid() };
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.draining() => return,
        };
        let cred = stream.peer_cred().ok();
        let uid = cred.map(|c| c.uid());
        let peer = Peer {
            uid,
            gid: cred.map(|c| c.gid()),
            admin: matches!(uid, Some(u) if u == 0 || u == my_uid),
        };
        let engine = engine.clone();
        if access.restricted() && !peer.admin {
            use std::os::fd::AsRawFd;
            let allowed = cred.is_some_and(|c| {
                access.uids.contains(&c.uid())
                    || access.gids.contains(&c.gid())
                    || peer_groups(stream.as_raw_fd())
                        .iter()
                        .any(|g| access.gids.contains(g))
            });
            if !allowed {
                warn!(
                    uid = cred.map(|c| c.uid()),
                    gid = cred.map(|c| c.gid()),
                    pid = cred.and_then(|c| c.pid()),
                    "refused a peer not in allowed_uids/allowed_gids"
                );
                engine.count_rejected(ErrorCode::Forbidden);
                tokio::spawn(refuse(
                    stream,
                    ErrorCode::Forbidden,
                    "this user may not use ffd (see allowed_uids / allowed_gids)".into(),
                    refusals.clone(),
                ));
                continue;
            }
        }
        let ticket = match gate.enter(uid, peer.admin) {
            Ok(t) => t,
            Err(why) => {
                engine.count_rejected(ErrorCode::Busy);
                let (max, per_uid) = gate.limits();
                let msg = why.message(max, per_uid);
                tokio::spawn(refuse(stream, ErrorCode::Busy, msg, refusals.clone()));
                continue;
            }
        };
        let shutdown = shutdown.clone();
        let lines = lines.clone();
        tokio::spawn(async move {
            engine.connections.fetch_add(1, Ordering::Relaxed);
            debug!(?uid, "connection opened");
            conn::serve(stream, engine.clone(), lines, peer, shutdown).await;
            engine.connections.fetch_sub(1, Ordering::Relaxed);
            drop(ticket);
        });
    }
}

/// Answers a refused peer with one error line and closes, after swallowing
/// what it sends (bounded in bytes and time): closing on unread data would
/// reset the connection before the peer reads the answer. At most
/// [`REFUSALS`] drains run at once; past that (a flood of connects), the
/// connection is closed right after its line.
async fn refuse(
    mut stream: tokio::net::UnixStream,
    code: ErrorCode,
    message: String,
    drains: Arc<tokio::sync::Semaphore>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut line = Vec::new();
    ffd_proto::write_error(&mut line, code, &message);
    let _ = stream.write_all(&line).await;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let Ok(_permit) = drains.try_acquire_owned() else {
        return;
    };
    let mut left: usize = 64 * 1024;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}
