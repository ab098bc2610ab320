//! `ffd`, the relay daemon, as a library: the binary (`main.rs`) turns flags
//! into a [`Config`] and calls [`run`].
//!
//! The modules follow a request's path: [`ingest`] (socket, connections) →
//! [`scheduler`] (admission, lanes, dispatch, outcomes) with [`spool`] (the
//! durable log) → [`delivery`] (the HTTP attempt). [`control`] answers the
//! ops; [`config`], [`shutdown`], [`systemd`] and [`logging`] are the
//! plumbing. See ARCHITECTURE.md for the map and its invariants.

pub mod batch;
pub mod clock;
pub mod config;
pub mod control;
pub mod delivery;
pub mod id;
pub mod ingest;
pub mod job;
pub mod logging;
pub mod metrics;
pub mod observe;
pub mod policy;
pub mod scheduler;
pub mod shutdown;
pub mod spool;
pub mod systemd;

pub use config::Config;

use anyhow::{Context, Result};
use config::SpoolMode;
use scheduler::Engine;
use spool::Spool;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How SIGHUP re-reads the config: the file it names, and a function that
/// loads it with the flags applied over it.
pub struct Reload {
    /// The config file.
    pub path: PathBuf,
    /// Loads and validates the config anew.
    pub load: Box<dyn Fn() -> Result<Config> + Send + Sync>,
}

/// Runs ffd until SIGTERM/SIGINT: the listener, the scheduler, the spool,
/// with the socket passed by systemd if there is one.
pub fn run(cfg: Config, reload: Option<Reload>) -> Result<()> {
    // Taken before any thread starts: the variables are removed from the environment.
    let activated = systemd::listener_from_env()?;
    let fds = raise_fd_limit();
    let reload_log = logging::init(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ffd")
        .build()
        .context("cannot start the async runtime")?;
    if let Some(n) = fds {
        // Connections, spool segments, outgoing connections and the
        // metrics endpoint all need descriptors.
        if (n as usize) < cfg.max_connections + 256 {
            warn!(
                limit = n,
                max_connections = cfg.max_connections,
                "the open-files limit is low for max_connections; raise LimitNOFILE= or lower max_connections"
            );
        }
    }
    rt.block_on(serve(cfg, reload, activated, reload_log))
}

/// Raises the soft open-files limit to the hard one (the usual soft 1024 is
/// no more than the default `max_connections`); returns the limit now.
fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return Some(raised.rlim_cur);
            }
        }
    }
    Some(lim.rlim_cur)
}

async fn serve(
    cfg: Config,
    reload: Option<Reload>,
    activated: Option<std::os::unix::net::UnixListener>,
    reload_log: logging::ReloadLog,
) -> Result<()> {
    let deliverer = delivery::Deliverer::new(&cfg)?;
    let (trigger, shutdown) = shutdown::channel();
    let spool = open_spool(&cfg, &shutdown)?;
    let engine = Engine::new(&cfg, deliverer, spool.clone());
    let is_activated = activated.is_some();
    let std_listener = match activated {
        // systemd owns the socket file, its mode and its group.
        Some(l) => {
            info!("using the listening socket passed by the service manager");
            l
        }
        None => ingest::listener::bind(&cfg.socket, cfg.socket_mode_bits()?)?,
    };
    let listener = tokio::net::UnixListener::from_std(std_listener)?;
    let mut signals = shutdown::signals()?;
    if let Some(listen) = cfg.metrics.listen()? {
        let l = observe::bind(&listen).await?;
        tokio::spawn(observe::serve(l, engine.clone(), shutdown.clone()));
    }

    let accept = spawn_tasks(&cfg, &engine, listener, spool.clone(), &shutdown);
    info!(
        socket = %if is_activated { "(passed by the service manager)".to_string() } else { cfg.socket.display().to_string() },
        spool = %match cfg.spool.mode { SpoolMode::Disk => cfg.spool.dir.display().to_string(), SpoolMode::Memory => "memory".into() },
        pid = std::process::id(),
        "ffd ready"
    );
    systemd::notify("READY=1\nSTATUS=ready");
    tokio::spawn(report_status(engine.clone(), shutdown.clone()));
    drop(shutdown);

    let sig = until_stop(&mut signals, reload.as_ref(), &cfg, &engine, &reload_log).await;
    systemd::notify("STOPPING=1\nSTATUS=draining");
    info!(
        signal = sig.unwrap_or("?"),
        "shutting down: no new requests; draining deliveries in flight"
    );
    trigger.drain();
    let _ = accept.await;
    let deadline = Duration::from_millis(cfg.shutdown_timeout_ms);
    let (in_flight, pending) = tokio::select! {
        r = engine.drain(deadline) => r,
        s = signals.recv() => {
            warn!(signal = s.unwrap_or("?"), "second signal: exiting without waiting");
            (usize::MAX, usize::MAX)
        }
    };
    trigger.exit();
    if let Some(s) = &spool {
        s.wake_flusher();
    }
    // Connections finish the lines they hold; tasks let go of their handles.
    if !trigger.wait_tasks(Duration::from_millis(500)).await {
        info!("some tasks were still busy at exit");
    }
    if !is_activated {
        let _ = std::fs::remove_file(&cfg.socket);
    }
    report_stop(spool.as_deref(), in_flight, pending).await;
    Ok(())
}

/// Starts the dispatcher, the listener, and replay then compaction; returns
/// the listener's task (it ends when draining begins).
fn spawn_tasks(
    cfg: &Config,
    engine: &Arc<Engine>,
    listener: tokio::net::UnixListener,
    spool: Option<Arc<Spool>>,
    shutdown: &shutdown::Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(engine.clone().run_dispatcher(shutdown.clone()));
    tokio::spawn(engine.clone().run_housekeeping(shutdown.clone()));
    let accept = tokio::spawn(ingest::listener::run(
        listener,
        engine.clone(),
        ingest::listener::Limits {
            max_connections: cfg.max_connections,
            max_connections_per_uid: cfg.per_uid_limit(),
            max_line: cfg.max_line_bytes,
            idle_line_timeout: Duration::from_millis(cfg.idle_line_timeout_ms),
        },
        ingest::listener::Access {
            uids: cfg.allowed_uids.clone(),
            gids: cfg.allowed_gids.clone(),
        },
        shutdown.clone(),
    ));
    if let Some(spool) = spool {
        // Replay runs beside the listener: new lines are accepted at once,
        // however large the backlog; compaction starts once it is done.
        let (engine, shutdown) = (engine.clone(), shutdown.clone());
        tokio::spawn(async move {
            engine.clone().replay_spool(spool, shutdown.clone()).await;
            engine.run_compaction(shutdown).await;
        });
    }
    accept
}

/// Serves SIGHUPs until a stop signal; returns its name.
async fn until_stop(
    signals: &mut tokio::sync::mpsc::UnboundedReceiver<&'static str>,
    reload: Option<&Reload>,
    cfg: &Config,
    engine: &Engine,
    reload_log: &logging::ReloadLog,
) -> Option<&'static str> {
    loop {
        match signals.recv().await {
            Some("SIGHUP") => {
                systemd::notify("RELOADING=1");
                match reload {
                    Some(r) => apply_reload(r, cfg, engine, reload_log),
                    None => info!("SIGHUP: no --config file; nothing to reload"),
                }
                systemd::notify("READY=1");
            }
            other => return other,
        }
    }
}

/// The spool of `cfg` (disk mode) with its flusher running, or `None`.
fn open_spool(cfg: &Config, shutdown: &shutdown::Shutdown) -> Result<Option<Arc<Spool>>> {
    match cfg.spool.mode {
        SpoolMode::Disk => {
            let spool = Spool::open(&cfg.spool.dir, cfg.spool.fsync, cfg.spool.segment_bytes)?;
            spool.start_flusher(shutdown.clone())?;
            Ok(Some(spool))
        }
        SpoolMode::Memory => {
            warn!("spool mode is memory: accepted requests are lost if ffd stops before delivering them");
            Ok(None)
        }
    }
}

/// Queue depth for `systemctl status`, and the watchdog when asked for.
async fn report_status(engine: Arc<Engine>, mut shutdown: shutdown::Shutdown) {
    let watchdog = systemd::watchdog_interval();
    let period = watchdog
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.exiting() => return,
        }
        let mut msg = format!("STATUS={}", engine.status_line());
        if watchdog.is_some() {
            msg.push_str("\nWATCHDOG=1");
        }
        systemd::notify(&msg);
    }
}

/// Closes the spool and says what stays undelivered.
async fn report_stop(spool: Option<&Spool>, in_flight: usize, pending: usize) {
    match spool {
        Some(s) => {
            s.close().await;
            info!(
                pending,
                in_flight, "stopped; undelivered requests stay in the spool"
            );
        }
        None if pending > 0 => {
            warn!(pending, "stopped; memory-only mode: these accepted requests were NOT delivered and are lost")
        }
        None => info!("stopped; nothing pending"),
    }
}

/// SIGHUP: re-reads the config file and applies what can change at run
/// time; says which keys need a restart.
fn apply_reload(r: &Reload, running: &Config, engine: &Engine, reload_log: &logging::ReloadLog) {
    let new = match (r.load)() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "SIGHUP: config not reloaded, keeping the running one");
            return;
        }
    };
    let mut applied = engine.reload(&new);
    if new.log_level != running.log_level {
        match reload_log(&new.log_level) {
            Ok(()) => applied.push("log_level"),
            Err(e) => warn!(error = %e, "SIGHUP: log_level not reloaded"),
        }
    }
    let restart = config::restart_keys(running, &new);
    info!(config = %r.path.display(), applied = ?applied, "SIGHUP: config reloaded");
    if !restart.is_empty() {
        warn!(keys = ?restart, "SIGHUP: these keys changed but only take effect after a restart");
    }
}

/// `ffd spool check DIR`: prints the report; returns whether damage was found.
pub fn spool_check(dir: &std::path::Path, json: bool) -> Result<bool> {
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    let mut scan = spool::Scanner::new(false);
    scan.dir(dir)
        .with_context(|| format!("cannot read spool directory {}", dir.display()))?;
    let r = &scan.report;
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        println!("spool {}", dir.display());
        println!("  segments         {}", r.segments);
        println!("  bytes            {}", r.bytes);
        println!("  records          {}", r.records);
        println!("  pending          {}", r.pending);
        println!("  dead letters     {}", r.dead);
        println!("  cancelled        {}", r.cancelled);
        println!("  corrupt records  {}", r.corrupt_records);
        println!("  torn tail bytes  {}", r.torn_bytes);
        for f in &r.bad_files {
            println!("  unreadable file  {f}");
        }
    }
    Ok(r.corrupt_records > 0 || r.torn_bytes > 0 || !r.bad_files.is_empty())
}
