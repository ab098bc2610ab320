//! `ffd`: the relay daemon. A thin layer: flags and config, logging, then the
//! listener, the scheduler and the spool wired together.

mod config;
mod conn;
mod control;
mod deliver;
mod id;
mod job;
mod listener;
mod retry;
mod scheduler;
mod shutdown;
mod spool;
mod systemd;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use config::{Config, FsyncMode, LogFormat, SpoolMode};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tracing::{info, warn};

/// Local relay for fire-and-forget HTTP: takes requests as JSON lines on a
/// Unix socket, acknowledges at once, delivers in the background.
#[derive(Parser, Debug)]
#[command(name = "ffd", version, about, long_about = None)]
struct Cli {
    /// TOML config file (see ffd.example.toml); flags override it.
    #[arg(long, short = 'c', value_name = "FILE", env = "FFD_CONFIG")]
    config: Option<PathBuf>,
    /// Unix socket path.
    #[arg(long, value_name = "PATH", env = "FFD_SOCKET")]
    socket: Option<PathBuf>,
    /// Spool directory.
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// Keep accepted requests in memory only (lost when ffd stops).
    #[arg(long)]
    memory: bool,
    /// When the spool syncs: never (survives a crash of ffd) or always (survives power loss).
    #[arg(long, value_enum)]
    fsync: Option<FsyncMode>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `ffd=debug`.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Check the config (file and flags) and exit: 0 if valid.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Spool tools.
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
}

#[derive(Subcommand, Debug)]
enum SpoolCommand {
    /// Read a spool without changing it; report records, pending, dead and damage.
    Check {
        /// The spool directory.
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ffd: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(Command::Spool {
        command: SpoolCommand::Check { dir, json },
    }) = &cli.command
    {
        return spool_check(dir, *json);
    }
    let cfg = load_config(&cli)?;
    if cli.check_config {
        println!(
            "{}: ok",
            cli.config
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "embedded defaults".into())
        );
        return Ok(ExitCode::SUCCESS);
    }
    // Taken before any thread starts: the variables are removed from the environment.
    let activated = systemd::listener_from_env()?;
    let reload_log = init_logging(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ffd")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(cfg, cli, activated, reload_log))?;
    Ok(ExitCode::SUCCESS)
}

/// The config file (if any) with the flags applied over it.
fn load_config(cli: &Cli) -> Result<Config> {
    let mut cfg = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(s) = &cli.socket {
        cfg.socket = s.clone();
    }
    if let Some(d) = &cli.spool {
        cfg.spool.dir = d.clone();
    }
    if cli.memory {
        cfg.spool.mode = SpoolMode::Memory;
    }
    if let Some(f) = cli.fsync {
        cfg.spool.fsync = f;
    }
    if let Some(f) = cli.log_format {
        cfg.log_format = f;
    }
    if let Some(l) = &cli.log_level {
        cfg.log_level = l.clone();
    }
    cfg.validate().context("invalid flags")?;
    Ok(cfg)
}

/// Sets the log level anew (SIGHUP).
type ReloadLog = Box<dyn Fn(&str) -> Result<()> + Send + Sync>;

fn init_logging(cfg: &Config) -> ReloadLog {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    macro_rules! finish {
        ($b:expr) => {{
            let b = $b.with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            Box::new(move |level: &str| {
                let f = EnvFilter::try_new(level)?;
                handle.reload(f).map_err(anyhow::Error::from)
            })
        }};
    }
    let base = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match cfg.log_format {
        LogFormat::Json => finish!(base.json()),
        LogFormat::Text => finish!(base),
    }
}

/// SIGHUP: re-reads the config file and applies what can change at run
/// time; says which keys need a restart.
fn reload(cli: &Cli, running: &Config, engine: &scheduler::Engine, reload_log: &ReloadLog) {
    let Some(path) = &cli.config else {
        info!("SIGHUP: no --config file; nothing to reload");
        return;
    };
    let new = match load_config(cli) {
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
    let mut restart = Vec::new();
    macro_rules! fixed {
        ($($($f:ident).+),*) => {$(
            if format!("{:?}", new.$($f).+) != format!("{:?}", running.$($f).+) {
                restart.push(stringify!($($f).+));
            }
        )*};
    }
    fixed!(
        socket,
        socket_mode,
        max_connections,
        max_line_bytes,
        log_format,
        allowed_uids,
        allowed_gids,
        shutdown_timeout_ms,
        spool.mode,
        spool.dir,
        spool.fsync,
        spool.max_bytes,
        spool.segment_bytes,
        spool.when_full,
        delivery.connect_timeout_ms,
        delivery.id_header,
        delivery.user_agent,
        delivery.ca_file,
        delivery.response_snippet_bytes,
        delivery.pool_idle_per_host,
        delivery.pool_idle_timeout_ms
    );
    info!(config = %path.display(), applied = ?applied, "SIGHUP: config reloaded");
    if !restart.is_empty() {
        warn!(keys = ?restart, "SIGHUP: these keys changed but only take effect after a restart");
    }
}

async fn serve(
    cfg: Config,
    cli: Cli,
    activated: Option<std::os::unix::net::UnixListener>,
    reload_log: ReloadLog,
) -> Result<()> {
    let deliverer = deliver::Deliverer::new(&cfg.delivery)?;
    let spool = match cfg.spool.mode {
        SpoolMode::Disk => Some(spool::Spool::open(
            &cfg.spool.dir,
            cfg.spool.fsync,
            cfg.spool.segment_bytes,
        )?),
        SpoolMode::Memory => {
            warn!("spool mode is memory: accepted requests are lost if ffd stops before delivering them");
            None
        }
    };
    let engine = scheduler::Engine::new(&cfg, deliverer, spool.clone());
    let is_activated = activated.is_some();
    let std_listener = match activated {
        // systemd owns the socket file, its mode and its group.
        Some(l) => {
            info!("using the listening socket passed by the service manager");
            l
        }
        None => listener::bind(&cfg.socket, cfg.socket_mode_bits()?)?,
    };
    let listener = tokio::net::UnixListener::from_std(std_listener)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut signals = shutdown::signals()?;

    tokio::spawn(engine.clone().run_dispatcher());
    let accept = tokio::spawn(listener::run(
        listener,
        engine.clone(),
        cfg.max_connections,
        cfg.max_line_bytes,
        listener::Access {
            uids: cfg.allowed_uids.clone(),
            gids: cfg.allowed_gids.clone(),
        },
        stop_rx,
    ));
    if let Some(spool) = spool.clone() {
        let engine = engine.clone();
        // Replay runs beside the listener: new lines are accepted at once,
        // however large the backlog.
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let s = spool.clone();
            let replay = match tokio::task::spawn_blocking(move || s.replay_old()).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "spool replay failed; pending requests stay on disk until the next start");
                    return;
                }
            };
            let r = &replay.report;
            let (pending, dead) = (r.pending, r.dead);
            let (corrupt, torn) = (r.corrupt_records, r.torn_bytes);
            let mut jobs = replay.jobs;
            // Oldest first, so `stats` finds the oldest pending at the front.
            jobs.sort_by_key(|r| r.accepted_ms);
            for r in jobs {
                let mut r = r;
                let loc = r.loc;
                let taken = loop {
                    match engine.restore(r) {
                        scheduler::RestoreResult::Taken(t) => break t,
                        scheduler::RestoreResult::Wait(back) => {
                            // A send with this id arrived during replay and
                            // is being stored; if it fails, this copy stays.
                            r = back;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                };
                if !taken {
                    spool.forget(loc);
                }
            }
            for r in replay.delivered {
                engine.restore_delivered(r);
            }
            info!(
                pending,
                dead,
                corrupt_records = corrupt,
                torn_bytes = torn,
                ms = started.elapsed().as_millis() as u64,
                "spool replayed"
            );
            if corrupt > 0 || torn > 0 {
                warn!(
                    corrupt_records = corrupt,
                    torn_bytes = torn,
                    "spool damage found at start; the rest was recovered"
                );
            }
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                engine.compact();
            }
        });
    }
    info!(
        socket = %if is_activated { "(passed by the service manager)".to_string() } else { cfg.socket.display().to_string() },
        spool = %match cfg.spool.mode { SpoolMode::Disk => cfg.spool.dir.display().to_string(), SpoolMode::Memory => "memory".into() },
        pid = std::process::id(),
        "ffd ready"
    );
    systemd::notify("READY=1\nSTATUS=ready");
    {
        // Queue depth for `systemctl status`, and the watchdog when asked for.
        let engine = engine.clone();
        let watchdog = systemd::watchdog_interval();
        tokio::spawn(async move {
            let period = watchdog
                .unwrap_or(Duration::from_secs(5))
                .min(Duration::from_secs(5));
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let mut msg = format!("STATUS={}", engine.status_line());
                if watchdog.is_some() {
                    msg.push_str("\nWATCHDOG=1");
                }
                systemd::notify(&msg);
            }
        });
    }

    let sig = loop {
        match signals.recv().await {
            Some("SIGHUP") => {
                systemd::notify("RELOADING=1");
                reload(&cli, &cfg, &engine, &reload_log);
                systemd::notify("READY=1");
            }
            other => break other,
        }
    };
    systemd::notify("STOPPING=1\nSTATUS=draining");
    info!(
        signal = sig.unwrap_or("?"),
        "shutting down: no new requests; draining deliveries in flight"
    );
    let _ = stop_tx.send(true);
    let _ = accept.await;
    let deadline = Duration::from_millis(cfg.shutdown_timeout_ms);
    let (in_flight, pending) = tokio::select! {
        r = engine.drain(deadline) => r,
        s = signals.recv() => {
            warn!(signal = s.unwrap_or("?"), "second signal: exiting without waiting");
            (usize::MAX, usize::MAX)
        }
    };
    if !is_activated {
        let _ = std::fs::remove_file(&cfg.socket);
    }
    match &spool {
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
    Ok(())
}

fn spool_check(dir: &std::path::Path, json: bool) -> Result<ExitCode> {
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
        println!("  corrupt records  {}", r.corrupt_records);
        println!("  torn tail bytes  {}", r.torn_bytes);
        for f in &r.bad_files {
            println!("  unreadable file  {f}");
        }
    }
    let damaged = r.corrupt_records > 0 || r.torn_bytes > 0 || !r.bad_files.is_empty();
    Ok(if damaged {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
