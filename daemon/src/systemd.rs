//! systemd integration without libsystemd: socket activation
//! (`LISTEN_FDS`), readiness and status (`NOTIFY_SOCKET`), watchdog.
//!
//! Both protocols are a few lines of environment and one datagram; linking
//! libsystemd for them would cost a C dependency on every build.

use anyhow::{bail, Result};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::time::Duration;

const SD_LISTEN_FDS_START: RawFd = 3;

/// The listening socket passed by systemd (or `systemd-socket-activate`), if
/// any. Takes it once: the variables are removed so children do not see them.
pub fn listener_from_env() -> Result<Option<UnixListener>> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let n: i32 = match std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        Some(n) if pid_ok && n > 0 => n,
        _ => return Ok(None),
    };
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|s| s.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    for key in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // Called at start-up, before other threads read the environment.
        std::env::remove_var(key);
    }
    // Prefer a socket named "ffd" (FileDescriptorName=), else the first.
    let idx = names.iter().position(|n| n == "ffd").unwrap_or(0) as i32;
    if idx >= n {
        bail!("LISTEN_FDNAMES names more sockets than LISTEN_FDS passes");
    }
    let fd = SD_LISTEN_FDS_START + idx;
    if !is_unix_stream_listener(fd) {
        bail!("socket activation passed fd {fd}, which is not a listening Unix stream socket");
    }
    // SAFETY: fd was handed to this process by its parent and checked above;
    // nothing else in the process owns it.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
    }
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}

fn is_unix_stream_listener(fd: RawFd) -> bool {
    // SAFETY: getsockopt/getsockname only write into the buffers given.
    unsafe {
        let mut ty: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            &mut ty as *mut _ as *mut _,
            &mut len,
        ) != 0
            || ty != libc::SOCK_STREAM
        {
            return false;
        }
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut alen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(fd, &mut addr as *mut _ as *mut _, &mut alen) != 0 {
            return false;
        }
        addr.ss_family as libc::c_int == libc::AF_UNIX
    }
}

/// Sends a state line (`READY=1`, `STATUS=...`) to the service manager, if
/// ffd runs under one. Errors are ignored: notification is best effort.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(name) {
            let _ = sock.send_to_addr(state.as_bytes(), &addr);
        }
    } else {
        let _ = sock.send_to(state.as_bytes(), &path);
    }
}

/// How often to send `WATCHDOG=1`, when the service has `WatchdogSec=`.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    // Half the timeout, as sd_watchdog_enabled(3) recommends.
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
