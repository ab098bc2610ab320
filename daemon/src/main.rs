//! `ffd`: flags → config → [`ffd::run`]. Everything else is in the library.

mod cli;

use anyhow::Result;
use clap::Parser;
use cli::{Cli, Command, SpoolCommand};
use ffd::config::{Config, SpoolMode};
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    limit_arenas();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ffd: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// glibc gives every thread that allocates an arena of its own (up to 8
/// per core): memory a delivery task frees on another worker than the one
/// that allocated it stays in that arena, and RSS creeps up over millions
/// of requests. Two arenas keep the workers from contending and the heap
/// from fragmenting (measured in bench section 9).
fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn run(mut cli: Cli) -> Result<ExitCode> {
    if let Some(Some(path)) = &cli.check_config {
        cli.config = Some(path.clone());
    }
    if let Some(Command::Spool {
        command: SpoolCommand::Check { dir, json },
    }) = &cli.command
    {
        let damaged = ffd::spool_check(dir, *json)?;
        return Ok(if damaged {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        });
    }
    let cfg = load_config(&cli, false)?;
    if cli.check_config.is_some() {
        let what = cli.config.as_deref().map(|p| p.display().to_string());
        println!("{}: ok", what.as_deref().unwrap_or("embedded defaults"));
        return Ok(ExitCode::SUCCESS);
    }
    let reload = cli.config.clone().map(|path| {
        let cli = Arc::new(cli.clone());
        ffd::Reload {
            path,
            load: Box::new(move || load_config(&cli, true)),
        }
    });
    ffd::run(cfg, reload)?;
    Ok(ExitCode::SUCCESS)
}

/// The config file (if any) with the flags applied over it, checked. At
/// SIGHUP (`reload`), a credential file that cannot be read is left to the
/// reload, which keeps its last good value.
fn load_config(cli: &Cli, reload: bool) -> Result<Config> {
    let mut cfg = match &cli.config {
        Some(path) => Config::parse(path)?,
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
    let checked = if reload {
        cfg.validate_reload()
    } else {
        cfg.validate()
    };
    checked.map_err(|e| match &cli.config {
        Some(path) => anyhow::anyhow!("{}: {e:#}", path.display()),
        None => e.context("invalid flags"),
    })?;
    Ok(cfg)
}
