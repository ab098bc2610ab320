//! ffd-chaos: a seeded run of mixed faults against a real ffd, checking at
//! the end that nothing acknowledged was lost.
//!
//! `ffd-chaos --seed N --minutes M --ffd PATH --dir DIR`
//!
//! Six senders (two per uid: one pipelining, one sending a line at a time;
//! ids repeated, and the same ids used by the three uids) write to raw URLs,
//! a signing destination and a batching one; two loopback receivers answer
//! each path by a seeded schedule (200, 500, 429 with Retry-After, RST,
//! silence, a slow body, 302, a final 4xx). Meanwhile ffd is killed (-9, at
//! random, during replay, at a compaction tick), stopped with SIGTERM,
//! reloaded with a changed config, and its spool's filesystem (a tmpfs the
//! run mounts) filled and freed. Then the receivers turn healthy, ffd drains,
//! and the checks run. Exit 0 only when every check holds; the figures are
//! printed last.

mod check;
mod ffd;
mod gen;
mod receiver;
mod sender;

use ffd::Ffd;
use gen::Rng;
use sender::now_ms;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The senders' uids when run as root (any uid works: only the number is
/// checked, by SO_PEERCRED and `allowed_uids`).
const UIDS: [u32; 3] = [2201, 2202, 2203];
/// RSS and open files ffd may reach at any time of the run.
const RSS_LIMIT_KIB: u64 = 256 * 1024;
const FD_LIMIT: u64 = 400;

fn usage() -> ! {
    eprintln!("usage: ffd-chaos --seed N --minutes M --ffd PATH --dir DIR");
    std::process::exit(2)
}

fn arg_after(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = arg_after(&args, "--sender") {
        let ports: Vec<u16> = arg_after(&args, "--ports")
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| p.parse().ok())
            .collect();
        sender::run(sender::Args {
            index: i.parse().unwrap_or_else(|_| usage()),
            seed: arg_after(&args, "--seed")
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| usage()),
            socket: arg_after(&args, "--socket").unwrap_or_else(|| usage()),
            ports: [ports[0], ports[1]],
            deadline_ms: arg_after(&args, "--deadline-ms")
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| usage()),
        });
        return;
    }
    let (Some(seed), Some(minutes), Some(bin), Some(dir)) = (
        arg_after(&args, "--seed").and_then(|s| s.parse::<u64>().ok()),
        arg_after(&args, "--minutes").and_then(|s| s.parse::<f64>().ok()),
        arg_after(&args, "--ffd"),
        arg_after(&args, "--dir"),
    ) else {
        usage()
    };
    let dir = PathBuf::from(dir);
    let code = run(seed, minutes, PathBuf::from(bin), &dir);
    std::process::exit(code);
}

/// Makes `dir` empty (only if it is empty or an earlier run's).
fn fresh_dir(dir: &Path) {
    let mnt = dir.join("mnt");
    let _ = Command::new("umount")
        .arg(&mnt)
        .stderr(Stdio::null())
        .status();
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty && !dir.join(".ffd-chaos").exists() {
            eprintln!(
                "ffd-chaos: {} is not empty and not an ffd-chaos dir",
                dir.display()
            );
            std::process::exit(2);
        }
        std::fs::remove_dir_all(dir).expect("clear the work dir");
    }
    std::fs::create_dir_all(dir).expect("make the work dir");
    std::fs::write(dir.join(".ffd-chaos"), "").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The spool's own filesystem: a 64 MiB tmpfs, when this run may mount.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
    /// Fills what is left with a file, up to its size.
    fn fill(&self) -> u64 {
        let mut f = std::fs::File::create(self.0.join("filler")).expect("filler");
        let block = vec![0u8; 1 << 20];
        let mut n = 0;
        for _ in 0..64 {
            match f.write(&block) {
                Ok(k) if k > 0 => n += k as u64,
                _ => break,
            }
        }
        // Then the last bytes, a page at a time.
        for _ in 0..256 {
            match f.write(&block[..4096]) {
                Ok(k) if k > 0 => n += k as u64,
                _ => break,
            }
        }
        n
    }
    fn free(&self) {
        let _ = std::fs::remove_file(self.0.join("filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        self.free();
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// What the fault driver did.
#[derive(Default, Debug)]
pub struct Faults {
    pub kills: u64,
    pub kills_in_replay: u64,
    pub kills_at_compaction: u64,
    pub kills_on_full_disk: u64,
    pub sigterms: u64,
    pub reloads: u64,
    pub disk_full: u64,
    /// Every kill -9: when, and since when outcome records may have been
    /// kept from the spool (a full disk holds them in memory).
    pub kill_times: Vec<(u64, u64)>,
    /// Unix ms since when the spool's filesystem is full (since it began
    /// to be filled).
    pub full_since: Option<u64>,
    /// Every fault with its time (Unix ms), to explain a duplicate.
    pub timeline: Vec<(u64, &'static str)>,
    pub problems: Vec<String>,
}

/// RSS and open files of the running ffd, sampled.
#[derive(Default)]
pub struct Usage {
    pub rss_max_kib: AtomicU64,
    pub fds_max: AtomicU64,
    pub samples: AtomicU64,
    pub rss_first_half_kib: AtomicU64,
}

fn sample(pid: u64) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

fn run(seed: u64, minutes: f64, bin: PathBuf, dir: &Path) -> i32 {
    fresh_dir(dir);
    let root = unsafe { libc::geteuid() } == 0;
    let run_ms = (minutes * 60_000.0) as u64;
    println!(
        "ffd-chaos: seed {seed}, {minutes} min, ffd {}, dir {}",
        bin.display(),
        dir.display()
    );

    // The spool's filesystem: our own tmpfs (filled and freed), or, when we
    // may not mount, a spool limit the backlog runs into.
    let tmpfs = if root {
        Tmpfs::mount(&dir.join("mnt"))
    } else {
        None
    };
    let (spool, max_bytes) = match &tmpfs {
        Some(t) => (t.0.join("spool"), 1u64 << 30),
        None => (dir.join("spool"), 4u64 << 20),
    };
    println!(
        "spool: {} ({})",
        spool.display(),
        if tmpfs.is_some() {
            "a 64 MiB tmpfs, filled and freed"
        } else {
            "spool.max_bytes = 4 MiB"
        }
    );

    // Receivers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let secrets = gen::secrets(seed);
    let shared = Arc::new(receiver::Shared {
        seed,
        start_ms: now_ms(),
        calm: AtomicBool::new(false),
        epoch: Default::default(),
        ports: Mutex::new([0, 0]),
        log: Mutex::new(receiver::Log::default()),
        secrets: secrets.iter().map(|(_, k)| k.clone()).collect(),
    });
    let (l0, l1) = rt.block_on(receiver::bind());
    let ports = [
        l0.local_addr().unwrap().port(),
        l1.local_addr().unwrap().port(),
    ];
    *shared.ports.lock().unwrap() = ports;
    rt.spawn(receiver::serve(l0, 0, shared.clone()));
    rt.spawn(receiver::serve(l1, 1, shared.clone()));
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{metrics_port}");

    let uids: Vec<u32> = if root {
        UIDS.to_vec()
    } else {
        vec![unsafe { libc::geteuid() }]
    };
    let secret_names: Vec<String> = secrets.iter().map(|(s, _)| s.clone()).collect();
    let mut variant = 0u64;
    let config_path = dir.join("ffd.toml");
    let write_config = |variant: u64| {
        let text = ffd::config(
            dir,
            &spool,
            max_bytes,
            &uids,
            ports,
            &metrics,
            &secret_names,
            variant,
        );
        std::fs::write(&config_path, text).expect("write config");
    };
    write_config(variant);
    let mut ffd = Ffd {
        bin,
        config: config_path.clone(),
        socket: dir.join("ffd.sock"),
        metrics: metrics.clone(),
        log: Arc::new(Mutex::new(
            std::fs::File::create(dir.join("ffd.log")).unwrap(),
        )),
        seen: Default::default(),
        child: None,
        pid: Default::default(),
    };
    let mut faults = Faults::default();
    let restart = |ffd: &mut Ffd, faults: &mut Faults| {
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        faults.timeline.push((now_ms(), "start"));
        ffd.start();
        if !ffd.wait_ready(Duration::from_secs(20)) {
            faults.problems.push(format!(
                "ffd did not answer within 20 s of a start (at {} ms)",
                now_ms()
            ));
        }
    };
    restart(&mut ffd, &mut faults);

    // RSS and open files, sampled every 250 ms.
    let usage = Arc::new(Usage::default());
    let monitoring = Arc::new(AtomicBool::new(true));
    let monitor = {
        let (usage, monitoring, pid) = (usage.clone(), monitoring.clone(), ffd.pid.clone());
        let half = Instant::now() + Duration::from_millis(run_ms / 2);
        std::thread::spawn(move || {
            while monitoring.load(Ordering::Relaxed) {
                if let Some((rss, fds)) = sample(pid.load(Ordering::Relaxed)) {
                    usage.rss_max_kib.fetch_max(rss, Ordering::Relaxed);
                    usage.fds_max.fetch_max(fds, Ordering::Relaxed);
                    usage.samples.fetch_add(1, Ordering::Relaxed);
                    if Instant::now() < half {
                        usage.rss_first_half_kib.fetch_max(rss, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };

    // Senders: two per uid, each its own process.
    let exe = std::env::current_exe().expect("own path");
    let hard_deadline = now_ms() + run_ms + 60_000;
    let mut senders: Vec<Child> = Vec::new();
    for i in 0..gen::SENDERS {
        let out = std::fs::File::create(dir.join(format!("sender-{i}.log"))).unwrap();
        let err = std::fs::File::create(dir.join(format!("sender-{i}.err"))).unwrap();
        let mut c = Command::new(&exe);
        c.args(["--sender", &i.to_string(), "--seed", &seed.to_string()])
            .arg("--socket")
            .arg(dir.join("ffd.sock"))
            .args(["--ports", &format!("{},{}", ports[0], ports[1])])
            .args(["--deadline-ms", &hard_deadline.to_string()])
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err);
        if root {
            use std::os::unix::process::CommandExt;
            c.uid(uids[i / 2]).gid(0);
        }
        senders.push(c.spawn().expect("start a sender"));
    }

    // The faults, until the run's time is up.
    let mut rng = Rng::new(&[seed, 0xfa17]);
    let started = Instant::now();
    let run_for = Duration::from_millis(run_ms);
    let mut harvested = HashMap::new();
    let mut harvests = 0;
    let mut last_harvest = Instant::now();
    while started.elapsed() < run_for {
        let pause = Duration::from_millis(rng.range(1200, 3500));
        std::thread::sleep(pause.min(run_for.saturating_sub(started.elapsed())));
        if started.elapsed() >= run_for {
            break;
        }
        // Every 30 s, the dead letters are noted and purged (a long run's
        // would otherwise fill ffd's memory and the `dead` answer); once
        // replay has brought them all back.
        if last_harvest.elapsed() > Duration::from_secs(30)
            && ffd.seen.replayed.load(Ordering::Relaxed)
        {
            ffd.harvest(&mut harvested);
            harvests += 1;
            last_harvest = Instant::now();
        }
        let pick = rng.below(100);
        match pick {
            0..=29 => {
                kill9(&mut ffd, &mut faults);
                restart(&mut ffd, &mut faults);
            }
            30..=39 => {
                // Killed again while the restart replays its spool.
                kill9(&mut ffd, &mut faults);
                shared.epoch.fetch_add(1, Ordering::SeqCst);
                ffd.start();
                std::thread::sleep(Duration::from_millis(rng.range(0, 8)));
                if !ffd.seen.replayed.load(Ordering::Relaxed) {
                    faults.kills_in_replay += 1;
                }
                kill9(&mut ffd, &mut faults);
                restart(&mut ffd, &mut faults);
            }
            40..=49 => {
                // Compaction runs on a one-second tick: aim at the next one.
                let last = ffd.seen.last_compaction_ms.load(Ordering::Relaxed);
                if last > 0 && now_ms() - last < 30_000 {
                    let next = last + 1000 * (now_ms() - last).div_ceil(1000).max(1);
                    let at = next.saturating_sub(rng.below(3));
                    std::thread::sleep(Duration::from_millis(at.saturating_sub(now_ms())));
                    faults.kills_at_compaction += 1;
                }
                kill9(&mut ffd, &mut faults);
                restart(&mut ffd, &mut faults);
            }
            50..=64 => {
                faults.sigterms += 1;
                faults.timeline.push((now_ms(), "SIGTERM"));
                let stats = ffd.op(r#"{"op":"stats"}"#);
                match ffd.term(Duration::from_secs(15)) {
                    Some(s) if s.success() => {}
                    other => faults.problems.push(format!(
                        "SIGTERM with {} in flight: ffd ended {other:?}",
                        stats
                            .map(|s| s["stats"]["in_flight"].clone())
                            .unwrap_or_default()
                    )),
                }
                restart(&mut ffd, &mut faults);
            }
            65..=89 => {
                variant += 1;
                write_config(variant);
                ffd.signal(libc::SIGHUP);
                faults.reloads += 1;
                faults.timeline.push((now_ms(), "SIGHUP"));
            }
            _ => {
                let Some(t) = &tmpfs else { continue };
                faults.disk_full += 1;
                faults.timeline.push((now_ms(), "filling the disk"));
                // From the start of the filling: writes fail part-way in.
                faults.full_since = Some(now_ms());
                t.fill();
                faults.timeline.push((now_ms(), "disk full"));
                let hold = rng.range(1500, 4000);
                std::thread::sleep(Duration::from_millis(hold / 2));
                if rng.chance(40) {
                    // And a start on a full disk.
                    kill9(&mut ffd, &mut faults);
                    faults.kills_on_full_disk += 1;
                    restart(&mut ffd, &mut faults);
                }
                std::thread::sleep(Duration::from_millis(hold / 2));
                t.free();
                faults.full_since = None;
                faults.timeline.push((now_ms(), "disk freed"));
            }
        }
    }

    // The end: receivers healthy, a clean restart (the instance whose
    // counters are checked), the senders' last words, a drain.
    println!(
        "faults done after {:.0} s; draining",
        started.elapsed().as_secs_f64()
    );
    shared.calm.store(true, Ordering::SeqCst);
    match ffd.term(Duration::from_secs(15)) {
        Some(s) if s.success() => {}
        other => faults
            .problems
            .push(format!("the last SIGTERM: ffd ended {other:?}")),
    }
    let final_start_ms = now_ms();
    restart(&mut ffd, &mut faults);
    let final_epoch = shared.epoch.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(3));
    for c in &mut senders {
        drop(c.stdin.take());
    }
    for c in &mut senders {
        let waited = Instant::now();
        while c.try_wait().ok().flatten().is_none() && waited.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if c.try_wait().ok().flatten().is_none() {
            faults
                .problems
                .push("a sender did not stop within 30 s".into());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    let drain_started = Instant::now();
    let mut drained = false;
    while drain_started.elapsed() < Duration::from_secs(180) {
        if let Some(s) = ffd.op(r#"{"op":"stats"}"#) {
            let waiting: u64 = s["stats"]["hosts"]
                .as_array()
                .map(|h| h.iter().filter_map(|h| h["events_waiting"].as_u64()).sum())
                .unwrap_or(0);
            let s = &s["stats"];
            if s["queued"] == 0 && s["in_flight"] == 0 && waiting == 0 {
                drained = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if !drained {
        faults
            .problems
            .push("ffd did not drain within 180 s of the receivers turning healthy".into());
    }
    // Outcome records reach the spool within a few ms; counters are final.
    std::thread::sleep(Duration::from_millis(500));
    let stats = ffd.op(r#"{"op":"stats"}"#).unwrap_or_default();
    let metrics = ffd.metrics().unwrap_or_default();
    let dead = ffd.op(r#"{"op":"dead"}"#).unwrap_or_default();
    let samples = check::status_samples(&ffd, &dead);
    monitoring.store(false, Ordering::Relaxed);
    let _ = monitor.join();
    match ffd.term(Duration::from_secs(15)) {
        Some(s) if s.success() => {}
        other => faults
            .problems
            .push(format!("the final SIGTERM: ffd ended {other:?}")),
    }
    drop(tmpfs);
    let confirmed = ffd.seen.reloads.load(Ordering::Relaxed);
    if ffd.seen.reload_refused.load(Ordering::Relaxed) > 0 {
        faults
            .problems
            .push("a SIGHUP was refused or named keys needing a restart".into());
    }
    let end = check::Final {
        final_epoch,
        final_start_ms,
        stats,
        metrics,
        dead,
        harvested,
        harvests,
        samples,
        reloads_confirmed: confirmed,
        compactions: ffd.seen.compactions.load(Ordering::Relaxed),
        alarming: ffd.seen.alarming.lock().unwrap().clone(),
        rss_max_kib: usage.rss_max_kib.load(Ordering::Relaxed),
        rss_first_half_kib: usage.rss_first_half_kib.load(Ordering::Relaxed),
        fds_max: usage.fds_max.load(Ordering::Relaxed),
        usage_samples: usage.samples.load(Ordering::Relaxed),
        rss_limit_kib: RSS_LIMIT_KIB,
        fd_limit: FD_LIMIT,
    };
    let log = std::mem::take(&mut *shared.log.lock().unwrap());
    check::run(seed, dir, &uids, &faults, &log, &end)
}

fn kill9(ffd: &mut Ffd, faults: &mut Faults) {
    // A delivery's outcome reaches the spool within milliseconds of its
    // answer (a slow body takes 400 ms): 1.5 s is the margin for a loaded
    // machine. On a full disk, outcomes wait in memory since it filled.
    let now = now_ms();
    let since = faults.full_since.map_or(now - 1500, |f| f.min(now - 1500));
    faults.kill_times.push((now, since));
    faults.kills += 1;
    faults.timeline.push((now, "kill -9"));
    ffd.kill9();
}
