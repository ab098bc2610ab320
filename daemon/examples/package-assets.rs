//! Writes what the Debian package ships beside the binaries, into the
//! directory given as the only argument (`packaging/build-deb` runs it):
//!
//! - `man/ffd.8.gz` from ffd's clap definition (clap_mangen), and
//!   `man/ffclient.1.gz` from ffclient's own help text (it has no clap);
//! - `completions/{bash,zsh,fish}/…` for both: ffd's from clap_complete,
//!   ffclient's from the commands and options its help text lists;
//! - `systemd/ffd.{service,socket}`: the units of `systemd/` with the
//!   binary in /usr/bin and the documentation the package installs.

#[allow(dead_code)]
#[path = "../src/cli.rs"]
mod cli;

use clap::CommandFactory;
use clap_complete::Shell;
use std::io::Write;
use std::path::{Path, PathBuf};

const FFCLIENT_HELP: &str = include_str!("../../client/src/usage.txt");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: package-assets OUT_DIR"),
    );
    for d in [
        "man",
        "completions/bash",
        "completions/zsh",
        "completions/fish",
        "systemd",
    ] {
        std::fs::create_dir_all(out.join(d)).unwrap();
    }

    // ffd(8).
    let cmd = cli::Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .render(&mut page)
        .unwrap();
    page.extend_from_slice(FFD_MORE.as_bytes());
    gzip(&out.join("man/ffd.8.gz"), &page);

    // ffd's completions.
    for (shell, path) in [
        (Shell::Bash, "completions/bash/ffd"),
        (Shell::Zsh, "completions/zsh/_ffd"),
        (Shell::Fish, "completions/fish/ffd.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cli::Cli::command(), "ffd", &mut buf);
        std::fs::write(out.join(path), buf).unwrap();
    }

    // ffclient(1) and its completions, from its help text.
    gzip(&out.join("man/ffclient.1.gz"), ffclient_man().as_bytes());
    let cmds = ffclient_commands();
    std::fs::write(out.join("completions/bash/ffclient"), bash(&cmds)).unwrap();
    std::fs::write(out.join("completions/zsh/_ffclient"), zsh(&cmds)).unwrap();
    std::fs::write(out.join("completions/fish/ffclient.fish"), fish(&cmds)).unwrap();

    // The system units, pointing at the packaged binary and pages.
    for unit in ["ffd.service", "ffd.socket"] {
        let text = std::fs::read_to_string(Path::new(REPO).join("systemd").join(unit)).unwrap();
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("Documentation=") {
                    "Documentation=man:ffd(8) file:///usr/share/doc/ffd/README.md".to_string()
                } else {
                    l.replace("/usr/local/bin/", "/usr/bin/")
                }
            })
            .map(|l| l + "\n")
            .collect();
        std::fs::write(out.join("systemd").join(unit), text).unwrap();
    }
}

/// Sections of ffd(8) beyond the flags.
const FFD_MORE: &str = r#".SH FILES
.TP
\fI/etc/ffd/ffd.toml\fR
The configuration of the system service; every key is documented in it.
.TP
\fI/run/ffd/ffd.sock\fR
The system service's socket (ffd.socket), for members of group \fBffd\fR.
.TP
\fI/var/lib/ffd\fR
The spool of the system service.
.SH SIGNALS
SIGTERM or SIGINT: stop accepting, answer the lines read, wait up to
shutdown_timeout_ms for deliveries in flight, keep the rest in the spool.
SIGHUP: read the configuration again.
.SH EXIT STATUS
0 on success; 1 for a configuration that does not load (the message names
the file, the key and the reason); \fBffd spool check\fR exits 2 when the
spool is damaged.
.SH SEE ALSO
\fBffclient\fR(1), /usr/share/doc/ffd/
"#;

fn gzip(path: &Path, data: &[u8]) {
    // mtime 0 and no name: the same bytes on every build.
    let f = std::fs::File::create(path).unwrap();
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(f, flate2::Compression::best());
    gz.write_all(data).unwrap();
    gz.finish().unwrap();
}

/// Escapes text for roff: backslashes, hyphens, and a leading `.` or `'`.
fn roff(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = l.replace('\\', "\\e").replace('-', "\\-");
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// The help text's parts: the usage line, the commands, the socket
/// paragraph, the exit codes.
fn help_parts() -> (String, String, String, String) {
    let mut parts = FFCLIENT_HELP.split("\n\n").map(str::to_string);
    let usage = parts.next().unwrap();
    let commands = parts.next().unwrap();
    let socket = parts.next().unwrap();
    let exits = parts.next().unwrap();
    (usage, commands, socket, exits)
}

fn ffclient_man() -> String {
    let (usage, commands, socket, exits) = help_parts();
    let synopsis = usage
        .trim_start_matches("usage: ")
        .trim_start_matches("ffclient ");
    let commands = commands.trim_start_matches("commands:\n");
    format!(
        ".TH FFCLIENT 1 \"\" \"ffclient {version}\" \"User Commands\"\n\
         .SH NAME\nffclient \\- hand HTTP requests to the ffd relay, with curl's habits\n\
         .SH SYNOPSIS\n.B ffclient\n{synopsis}\n\
         .SH DESCRIPTION\n\
         ffclient hands requests to \\fBffd\\fR(8) over its Unix socket and prints what ffd\n\
         answers; ffd delivers them in the background, with retries and a spool on\n\
         disk. \\fBsend\\fR exits 0 once ffd has acknowledged the request.\n\
         .SH COMMANDS\n.nf\n{commands}.fi\n\
         .SH SOCKET\n{socket}\
         .SH EXIT STATUS\n{exits}\
         .SH SEE ALSO\n\\fBffd\\fR(8), /usr/share/doc/ffd/\n",
        version = env!("CARGO_PKG_VERSION"),
        synopsis = roff(synopsis).trim_end(),
        commands = roff(commands),
        socket = roff(&socket),
        exits = roff(exits.trim_start_matches("exit codes: ")),
    )
}

/// ffclient's commands and the options each takes, as its help lists them.
fn ffclient_commands() -> Vec<(String, Vec<String>)> {
    let (_, commands, _, _) = help_parts();
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in commands.lines().skip(1) {
        if let Some(rest) = line.strip_prefix("  ").filter(|r| !r.starts_with(' ')) {
            let name = rest.split_whitespace().next().unwrap().to_string();
            if !out.iter().any(|(n, _)| *n == name) {
                out.push((name, Vec::new()));
            }
        }
        let opts = &mut out.last_mut().unwrap().1;
        for word in line.split(|c: char| c.is_whitespace() || ",|[]()".contains(c)) {
            let is_long = word.starts_with("--")
                && word.len() > 2
                && word[2..]
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-');
            let is_short = word.len() == 2
                && word.starts_with('-')
                && word.as_bytes()[1].is_ascii_alphabetic();
            if (is_long || is_short) && !opts.iter().any(|o| o == word) {
                opts.push(word.to_string());
            }
        }
    }
    out
}

fn bash(cmds: &[(String, Vec<String>)]) -> String {
    let names: Vec<&str> = cmds.iter().map(|(n, _)| n.as_str()).collect();
    let mut s = format!(
        "# bash completion for ffclient, from its help text\n\
         _ffclient() {{\n\
         \x20   local cur=\"${{COMP_WORDS[COMP_CWORD]}}\" prev=\"${{COMP_WORDS[COMP_CWORD-1]}}\" cmd=\"\" i\n\
         \x20   for ((i = 1; i < COMP_CWORD; i++)); do\n\
         \x20       case \"${{COMP_WORDS[i]}}\" in\n\
         \x20           --socket) ((i++)) ;;\n\
         \x20           -*) ;;\n\
         \x20           *) cmd=\"${{COMP_WORDS[i]}}\"; break ;;\n\
         \x20       esac\n\
         \x20   done\n\
         \x20   case \"$prev\" in\n\
         \x20       --socket) COMPREPLY=($(compgen -f -- \"$cur\")); return ;;\n\
         \x20   esac\n\
         \x20   case \"$cmd\" in\n\
         \x20       \"\") COMPREPLY=($(compgen -W \"{} --socket --help\" -- \"$cur\")) ;;\n",
        names.join(" ")
    );
    for (name, opts) in cmds {
        s += &format!(
            "        {name}) COMPREPLY=($(compgen -W \"{} --help\" -- \"$cur\")) ;;\n",
            opts.join(" ")
        );
    }
    s += "    esac\n}\ncomplete -F _ffclient ffclient\n";
    s
}

fn zsh(cmds: &[(String, Vec<String>)]) -> String {
    let names: Vec<&str> = cmds.iter().map(|(n, _)| n.as_str()).collect();
    let mut s = format!(
        "#compdef ffclient\n# zsh completion for ffclient, from its help text\n\
         local -i i=2\n\
         while (( i < CURRENT )) && [[ $words[i] == -* ]]; do\n\
         \x20   [[ $words[i] == --socket ]] && (( i++ ))\n\
         \x20   (( i++ ))\n\
         done\n\
         if (( i >= CURRENT )); then\n\
         \x20   compadd -- {} --socket --help\n\
         \x20   return\n\
         fi\n\
         case $words[i] in\n",
        names.join(" ")
    );
    for (name, opts) in cmds {
        s += &format!("    {name}) compadd -- {} --help ;;\n", opts.join(" "));
    }
    s += "esac\n";
    s
}

fn fish(cmds: &[(String, Vec<String>)]) -> String {
    let names: Vec<&str> = cmds.iter().map(|(n, _)| n.as_str()).collect();
    let mut s = format!(
        "# fish completion for ffclient, from its help text\n\
         complete -c ffclient -f\n\
         complete -c ffclient -n __fish_use_subcommand -l socket -r -F -d 'socket path'\n\
         complete -c ffclient -n __fish_use_subcommand -a '{}'\n",
        names.join(" ")
    );
    for (name, opts) in cmds {
        for o in opts {
            let flag = match o.strip_prefix("--") {
                Some(long) => format!("-l {long}"),
                None => format!("-s {}", &o[1..]),
            };
            s += &format!("complete -c ffclient -n '__fish_seen_subcommand_from {name}' {flag}\n");
        }
    }
    s
}
