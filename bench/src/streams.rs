//! Section 8, event streams: ffd's batching destinations against its own
//! ingest and its unbatched delivery, beside the Python analytics SDKs
//! (segment-analytics-python, posthog) pointed at the same receiver, and the
//! wire bytes and CPU that compression costs per event.

use super::*;
use std::collections::HashMap;
use std::sync::Mutex;

/// What the receiver got under one key (the path segment after `/k/`).
#[derive(Clone, Copy, Default)]
pub struct Got {
    pub requests: u64,
    pub events: u64,
    /// Request body bytes as received (compressed when compressed).
    pub wire_bytes: u64,
}

/// A loopback receiver that takes batches and counts events, emulating the
/// batch endpoints of the analytics intakes: ffd's ndjson (one event a
/// line), Segment's `POST /v1/batch` and PostHog's `POST /batch/` (a JSON
/// object whose `batch` array holds the events), a JSON array, or one event
/// per request. Bodies are decoded as their `content-encoding` says (gzip,
/// zstd). Events are counted under the path segment after `/k/`;
/// `GET /count/KEY` answers that key's event count (for the Python driver).
pub struct EventSink {
    pub port: u16,
    got: Arc<Mutex<HashMap<String, Got>>>,
    _rt: tokio::runtime::Runtime,
}

fn key_of(path: &str) -> String {
    path.strip_prefix("/k/")
        .and_then(|r| r.split('/').next())
        .unwrap_or("")
        .to_string()
}

fn decode(encoding: Option<&str>, body: &[u8]) -> Option<Vec<u8>> {
    match encoding {
        Some("gzip") => {
            let mut out = Vec::with_capacity(body.len() * 4);
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .ok()?;
            Some(out)
        }
        Some("zstd") => zstd::stream::decode_all(body).ok(),
        _ => Some(body.to_vec()),
    }
}

/// Events in one decoded body.
fn events_in(ndjson: bool, body: &[u8]) -> u64 {
    if body.is_empty() {
        return 0;
    }
    if ndjson {
        return body.iter().filter(|b| **b == b'\n').count() as u64;
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let batch_obj = body
        .windows(8)
        .any(|w| w == b"\"batch\":" || w == b"\"batch\" ");
    if first == Some(&b'[') || batch_obj {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(a)) => a.len() as u64,
            Ok(v) => v["batch"].as_array().map_or(1, |a| a.len() as u64),
            Err(_) => 0,
        }
    } else {
        1
    }
}

impl EventSink {
    pub fn start() -> EventSink {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let got: Arc<Mutex<HashMap<String, Got>>> = Arc::default();
        let std_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_l.set_nonblocking(true).unwrap();
        let port = std_l.local_addr().unwrap().port();
        let g = got.clone();
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(std_l).unwrap();
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let g = g.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let g = g.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            if let Some(k) = path.strip_prefix("/count/") {
                                let n = g.lock().unwrap().get(k).map_or(0, |c| c.events);
                                return Ok::<_, hyper::Error>(hyper::Response::new(Full::new(
                                    Bytes::from(n.to_string()),
                                )));
                            }
                            let h = req.headers();
                            let enc = h
                                .get("content-encoding")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            let ndjson = h
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .is_some_and(|v| v.contains("ndjson"));
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let events =
                                decode(enc.as_deref(), &body).map_or(0, |d| events_in(ndjson, &d));
                            {
                                let mut m = g.lock().unwrap();
                                let c = m.entry(key_of(&path)).or_default();
                                c.requests += 1;
                                c.events += events;
                                c.wire_bytes += body.len() as u64;
                            }
                            let mut resp = hyper::Response::new(Full::new(Bytes::from_static(
                                b"{\"status\":\"ok\"}",
                            )));
                            resp.headers_mut().insert(
                                "content-type",
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            Ok(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        EventSink { port, got, _rt: rt }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, key: &str) -> String {
        format!("http://127.0.0.1:{}/k/{key}", self.port)
    }

    pub fn got(&self, key: &str) -> Got {
        self.got
            .lock()
            .unwrap()
            .get(key)
            .copied()
            .unwrap_or_default()
    }

    /// Waits until `key` holds `n` events; the time since `since`.
    fn wait_events(&self, key: &str, n: u64, since: Instant, limit: Duration) -> Option<Duration> {
        while self.got(key).events < n {
            if since.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        Some(since.elapsed())
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A realistic analytics event of about 300 bytes (Segment-style track
/// call): fields vary from event to event as they would (ids, time, user,
/// values), so that compression is not flattered by repeats.
pub fn event(i: usize) -> String {
    let r = splitmix(i as u64);
    let r2 = splitmix(r);
    const EVENTS: [&str; 5] = [
        "Order Completed",
        "Product Viewed",
        "Signed Up",
        "Checkout Started",
        "Page Viewed",
    ];
    const PLANS: [&str; 3] = ["free", "pro", "team"];
    let ms = 1_750_000_000_000u64 + i as u64 * 37;
    format!(
        "{{\"type\":\"track\",\"event\":\"{}\",\"userId\":\"user_{:06}\",\
         \"messageId\":\"{:016x}-{:08x}\",\"timestamp\":{ms},\
         \"properties\":{{\"order_id\":\"ord_{i:08}\",\"revenue\":{}.{:02},\
         \"currency\":\"EUR\",\"plan\":\"{}\",\"items\":{}}},\
         \"context\":{{\"ip\":\"203.0.{}.{}\",\
         \"userAgent\":\"Mozilla/5.0 (X11; Linux x86_64)\"}}}}",
        EVENTS[(r % 5) as usize],
        r % 50_000,
        r2,
        (r2 >> 32) as u32 ^ i as u32,
        r % 300,
        r2 % 100,
        PLANS[(r2 % 3) as usize],
        1 + r2 % 7,
        (r >> 8) % 256,
        (r >> 16) % 256,
    )
}

/// Writes every line on one connection without waiting and reads all the
/// answers; the time until the last answer. Panics on a refusal (the
/// bench's config or lines are wrong).
fn pipe_lines(socket: &Path, lines: Arc<Vec<String>>) -> Duration {
    let start = Instant::now();
    let s = UnixStream::connect(socket).unwrap();
    let mut w = s.try_clone().unwrap();
    let n = lines.len();
    let writer = std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(1 << 16);
        for l in lines.iter() {
            buf.extend_from_slice(l.as_bytes());
            if buf.len() >= 1 << 16 {
                w.write_all(&buf).unwrap();
                buf.clear();
            }
        }
        w.write_all(&buf).unwrap();
    });
    let mut r = BufReader::with_capacity(1 << 16, s);
    let mut buf = Vec::new();
    for _ in 0..n {
        buf.clear();
        r.read_until(b'\n', &mut buf).unwrap();
        assert!(
            buf.starts_with(b"{\"ok\":true"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
    }
    writer.join().unwrap();
    start.elapsed()
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

const DELIVERY: &str = "[delivery]\nmax_in_flight = 256\nmax_in_flight_per_host = 64\n";

fn batch_dest(name: &str, url: &str, extra: &str, batch: &str) -> String {
    format!(
        "[destinations.{name}]\nurl = \"{url}\"\n{extra}\n[destinations.{name}.batch]\nmax_events = 500\n{batch}\n"
    )
}

pub fn event_streams(o: &Opts, sizes: &Sizes, rows: &mut Vec<Row>) {
    let sink = EventSink::start();
    let limit = Duration::from_secs(if o.smoke { 60 } else { 300 });
    let n = sizes.events_n;

    // 1. Batched delivery against ffd's own ingest of the same events and
    // against its unbatched delivery.
    eprintln!("   batched (500 a batch, ndjson): {n} events");
    let lines: Arc<Vec<String>> = Arc::new(
        (0..n)
            .map(|i| format!("{{\"dest\":\"ev\",\"json\":{}}}\n", event(i)))
            .collect(),
    );
    // The same events held (`delay_ms`), so that ingest runs alone.
    let held: Arc<Vec<String>> = Arc::new(
        (0..n)
            .map(|i| {
                format!(
                    "{{\"dest\":\"ev\",\"delay_ms\":3600000,\"json\":{}}}\n",
                    event(i)
                )
            })
            .collect(),
    );
    let (mut ingest_r, mut alone_r, mut batched_r, mut reqs) = (vec![], vec![], vec![], 0u64);
    for r in 0..sizes.repeat {
        let cfg = format!("{DELIVERY}{}", batch_dest("ev", &sink.url("held"), "", ""));
        let f = start_ffd(o, &format!("streams-ingest-{r}"), &cfg, &[], None);
        alone_r.push(n as f64 / pipe_lines(&f.socket, held.clone()).as_secs_f64());
        f.stop();
        let key = format!("batched-{r}");
        let cfg = format!("{DELIVERY}{}", batch_dest("ev", &sink.url(&key), "", ""));
        let f = start_ffd(o, &format!("streams-batched-{r}"), &cfg, &[], None);
        let t = Instant::now();
        let acked = pipe_lines(&f.socket, lines.clone());
        if let Some(d) = sink.wait_events(&key, n as u64, t, limit) {
            ingest_r.push(n as f64 / acked.as_secs_f64());
            batched_r.push(n as f64 / d.as_secs_f64());
        }
        reqs = sink.got(&key).requests;
        f.stop();
    }
    let nu = sizes.events_unbatched_n;
    eprintln!("   unbatched (one request per event): {nu} events");
    let mut unbatched_r = vec![];
    for r in 0..sizes.repeat {
        let key = format!("unbatched-{r}");
        let url = sink.url(&key);
        let lines: Arc<Vec<String>> = Arc::new(
            (0..nu)
                .map(|i| {
                    format!(
                        "{{\"url\":\"{url}\",\"method\":\"POST\",\"json\":{}}}\n",
                        event(i)
                    )
                })
                .collect(),
        );
        let f = start_ffd(o, &format!("streams-unbatched-{r}"), DELIVERY, &[], None);
        let t = Instant::now();
        pipe_lines(&f.socket, lines);
        if let Some(d) = sink.wait_events(&key, nu as u64, t, limit) {
            unbatched_r.push(nu as f64 / d.as_secs_f64());
        }
        f.stop();
    }
    let got = |v: &Vec<f64>| !v.is_empty();
    if got(&batched_r) {
        let (b, i, a) = (median(batched_r.clone()), median(ingest_r), median(alone_r));
        rows.push(row(
            "streams",
            format!("batched delivery, {n} events, 500 a batch ({reqs} requests)"),
            rate(b),
            format!("ffd's ingest of them alone {}", rate(a)),
            format!("{:.2}×", b / a),
            format!("≥ 0.8× ingest: {}", met(b >= 0.8 * a)),
        ));
        rows.push(row(
            "streams",
            "the same, against the ingest while delivering (last ACK)",
            rate(b),
            format!("ingest while delivering {}", rate(i)),
            format!("{:.2}×", b / i),
            "",
        ));
        if got(&unbatched_r) {
            let u = median(unbatched_r);
            rows.push(row(
                "streams",
                "batched delivery against one request per event",
                rate(b),
                format!("unbatched {} ({nu} events)", rate(u)),
                format!("{:.1}×", b / u),
                format!("≥ 10× unbatched: {}", met(b >= 10.0 * u)),
            ));
        } else {
            rows.push(row(
                "streams",
                "unbatched delivery",
                "-",
                format!(
                    "not all {nu} delivered within {}",
                    secs(limit.as_secs_f64())
                ),
                "",
                "**missed**",
            ));
        }
    } else {
        rows.push(row(
            "streams",
            "batched delivery",
            "-",
            format!("not all {n} delivered within {}", secs(limit.as_secs_f64())),
            "",
            "**missed**",
        ));
    }

    // 2. The Python SDKs and ffd's Python module, same receiver.
    sdks(o, sizes, &sink, rows);

    // 3. Compression: wire bytes and ffd's CPU per event.
    compression(o, sizes, &sink, rows);
}

/// Runs bench/streams.py against one ffd holding the destinations it uses.
fn sdks(o: &Opts, sizes: &Sizes, sink: &EventSink, rows: &mut Vec<Row>) {
    let n = sizes.sdk_n;
    eprintln!("   Python clients, {n} events each");
    let mut cfg = DELIVERY.to_string();
    for tag in ["ffdsend", "ffdpipe"] {
        for mode in ["rate", "exit", "fork"] {
            // Segment's upload interval (0.5 s) as the wait for a partial batch.
            let key = format!("{tag}_{mode}");
            cfg.push_str(&batch_dest(&key, &sink.url(&key), "", "max_wait_ms = 500"));
        }
    }
    let f = start_ffd(o, "streams-sdks", &cfg, &[], None);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("streams.py");
    let settle = if o.smoke { "3" } else { "10" };
    let mut child = match Command::new("python3")
        .arg(&script)
        .arg(sink.base())
        .arg(n.to_string())
        .arg(settle)
        .env("FFD_SOCKET", &f.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            rows.push(row("streams-sdk", format!("python3: {e}"), "", "", "", ""));
            return;
        }
    };
    // Bounded: every scenario in the script has its own timeouts; this one
    // stops the whole driver if they were not enough.
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(if o.smoke { 120 } else { 600 });
    let mut results = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    results.push(v);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                eprintln!("   streams.py did not finish in time: stopped");
                let _ = child.kill();
                break;
            }
        }
    }
    let _ = child.wait();
    f.stop();
    for v in results {
        let name = v["name"].as_str().unwrap_or("?").to_string();
        if let Some(why) = v["skipped"].as_str() {
            rows.push(row("streams-sdk", name, why.to_string(), "", "", ""));
            continue;
        }
        let lost = |k: &str| match (v[k]["lost"].as_u64(), v[k]["sent"].as_u64()) {
            (Some(l), Some(s)) => format!("{l} of {s}"),
            _ => v[k]["error"].as_str().unwrap_or("-").to_string(),
        };
        let delivered = match (
            v["rate"]["delivered"].as_u64(),
            v["rate"]["total_s"].as_f64(),
        ) {
            (Some(d), Some(t)) if d as usize >= n => rate(d as f64 / t),
            (Some(d), _) => format!("{d} of {n} delivered"),
            _ => v["rate"]["error"].as_str().unwrap_or("-").to_string(),
        };
        rows.push(row(
            "streams-sdk",
            name,
            match (v["rate"]["p50_us"].as_f64(), v["rate"]["p99_us"].as_f64()) {
                (Some(a), Some(b)) => format!("{} / {}", us(a), us(b)),
                _ => "-".into(),
            },
            delivered,
            lost("exit"),
            lost("fork"),
        ));
    }
}

fn compression(o: &Opts, sizes: &Sizes, sink: &EventSink, rows: &mut Vec<Row>) {
    let n = sizes.compress_n;
    eprintln!("   compression, {n} events of ~{} bytes", event(0).len());
    let lines: Arc<Vec<String>> = Arc::new(
        (0..n)
            .map(|i| format!("{{\"dest\":\"ev\",\"json\":{}}}\n", event(i)))
            .collect(),
    );
    let mut none: Option<(f64, f64)> = None;
    for codec in ["none", "gzip", "zstd"] {
        let (mut wire, mut cpu) = (vec![], vec![]);
        for r in 0..sizes.repeat {
            let key = format!("compress-{codec}-{r}");
            let cfg = format!(
                "{DELIVERY}{}",
                batch_dest(
                    "ev",
                    &sink.url(&key),
                    &format!("compression = \"{codec}\""),
                    ""
                )
            );
            let f = start_ffd(o, &format!("streams-{key}"), &cfg, &[], None);
            let pid = f.child.id();
            let c0 = cpu_secs(pid);
            let t = Instant::now();
            pipe_lines(&f.socket, lines.clone());
            let done = sink.wait_events(&key, n as u64, t, Duration::from_secs(300));
            let c1 = cpu_secs(pid);
            if done.is_some() {
                wire.push(sink.got(&key).wire_bytes as f64 / n as f64);
                cpu.push((c1 - c0) * 1e6 / n as f64);
            }
            f.stop();
        }
        if wire.is_empty() {
            rows.push(row(
                "streams-compress",
                codec,
                "-",
                "not all delivered",
                "",
                "",
            ));
            continue;
        }
        let (w, c) = (median(wire), median(cpu));
        let vs = match none {
            None => {
                none = Some((w, c));
                String::new()
            }
            Some((w0, c0)) => format!("{:.1}× fewer bytes, {:+.1} µs CPU", w0 / w, c - c0),
        };
        rows.push(row(
            "streams-compress",
            format!("{codec}, batches of 500"),
            format!("{w:.0} B"),
            us(c),
            vs,
            "",
        ));
    }
}
