//! ffd's command line, in its own file so that the packaging example
//! (`examples/package-assets.rs`) renders the same definition as the man
//! page ffd(8) and the shell completions.

use clap::{Parser, Subcommand};
use ffd::config::{FsyncMode, LogFormat};
use std::path::PathBuf;

/// Local relay for fire-and-forget HTTP: takes requests as JSON lines on a
/// Unix socket, acknowledges at once, delivers in the background.
#[derive(Parser, Debug, Clone)]
#[command(name = "ffd", version, about, long_about = None)]
pub struct Cli {
    /// TOML config file (see ffd.example.toml); flags override it.
    #[arg(long, short = 'c', value_name = "FILE", env = "FFD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Unix socket path [default: /run/ffd/ffd.sock as root, else
    /// $XDG_RUNTIME_DIR/ffd.sock, else /tmp/ffd-UID/ffd.sock when
    /// $XDG_RUNTIME_DIR is unset]
    #[arg(long, value_name = "PATH", env = "FFD_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Spool directory.
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Keep accepted requests in memory only (lost when ffd stops).
    #[arg(long)]
    pub memory: bool,
    /// When the spool syncs: never (survives a crash of ffd) or always (survives power loss).
    #[arg(long, value_enum)]
    pub fsync: Option<FsyncMode>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `ffd=debug`.
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Check the config (file and flags) and exit: 0 if valid. Given a
    /// FILE, checks that file (as `--config FILE --check-config` does).
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    pub check_config: Option<Option<PathBuf>>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Spool tools.
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum SpoolCommand {
    /// Read a spool without changing it; report records, pending, dead and damage.
    Check {
        /// The spool directory.
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}
