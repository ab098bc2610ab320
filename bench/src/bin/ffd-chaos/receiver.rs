//! The receivers: two loopback HTTP/1.1 servers whose answer depends on the
//! path and on a seeded schedule (2-second epochs), checking every request
//! that is answered 2xx against the request its token names.

use crate::gen::{self, fnv, Rng, Target};
use crate::sender::now_ms;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Ok,
    Error500,
    TooMany429,
    Reset,
    Silence,
    SlowBody,
    Redirect,
    Final4xx,
}

pub const EPOCH_MS: u64 = 2000;

/// One event answered 2xx.
pub struct Delivery {
    pub sender: u16,
    pub seq: u32,
    pub at_ms: u64,
    /// When the whole answer had been written (0: it never was, ffd had
    /// gone or given up).
    pub done_ms: u64,
    /// What `ffd-id` said, for a request without a client id (else empty).
    pub ffd_id: String,
}

#[derive(Default)]
pub struct Log {
    pub deliveries: Vec<Delivery>,
    /// Requests that did not match what their token says (capped).
    pub mismatches: Vec<String>,
    pub mismatch_count: u64,
    /// Per ffd instance: (2xx requests, events in them, requests seen).
    pub per_epoch: std::collections::HashMap<u32, (u64, u64, u64)>,
    pub by_behaviour: std::collections::BTreeMap<String, u64>,
}

pub struct Shared {
    pub seed: u64,
    pub start_ms: u64,
    /// Everything answers 200 (the drain at the end).
    pub calm: AtomicBool,
    pub epoch: AtomicU32,
    pub ports: Mutex<[u16; 2]>,
    pub log: Mutex<Log>,
    pub secrets: Vec<Vec<u8>>,
}

impl Shared {
    fn mismatch(&self, why: String) {
        let mut l = self.log.lock().unwrap();
        l.mismatch_count += 1;
        if l.mismatches.len() < 40 {
            l.mismatches.push(why);
        }
    }

    /// The answer for `key` (receiver and first path segment) right now.
    pub fn behaviour(&self, port: usize, key: &str) -> Behaviour {
        if self.calm.load(Ordering::Relaxed) {
            return Behaviour::Ok;
        }
        let epoch = now_ms().saturating_sub(self.start_ms) / EPOCH_MS;
        let mut r = Rng::new(&[self.seed, port as u64, fnv(key), epoch]);
        match r.below(100) {
            0..=47 => Behaviour::Ok,
            48..=57 => Behaviour::Error500,
            58..=65 => Behaviour::TooMany429,
            66..=71 => Behaviour::Reset,
            72..=76 => Behaviour::Silence,
            77..=86 => Behaviour::SlowBody,
            87..=92 => Behaviour::Redirect,
            _ => Behaviour::Final4xx,
        }
    }
}

pub async fn bind() -> (TcpListener, TcpListener) {
    let a = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let b = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    (a, b)
}

pub async fn serve(l: TcpListener, port: usize, shared: Arc<Shared>) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(120), conn(s, port, shared)).await;
        });
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Reads one request; None at a clean end of the connection.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let mut chunk = [0u8; 16384];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    buf.drain(..head_end + 4);
    while buf.len() < len {
        let mut chunk = [0u8; 16384];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

async fn conn(mut s: TcpStream, port: usize, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut s, &mut buf).await {
        let key = req.target.split('/').nth(1).unwrap_or("").to_string();
        let key = if key == "hook" {
            req.target.split('/').nth(2).unwrap_or("").to_string()
        } else {
            key
        };
        let b = shared.behaviour(port, &key);
        let epoch = shared.epoch.load(Ordering::Relaxed);
        {
            let mut l = shared.log.lock().unwrap();
            *l.by_behaviour.entry(format!("{b:?}")).or_default() += 1;
            l.per_epoch.entry(epoch).or_default().2 += 1;
        }
        let answer: &[u8] = match b {
            Behaviour::Ok | Behaviour::SlowBody => {
                // Counted before the answer is written: a kill -9 after this
                // instant may leave ffd without the outcome.
                let noted = check(&shared, port, &req, epoch);
                if b == Behaviour::Ok {
                    if s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                } else {
                    if s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 16\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    for _ in 0..4 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if s.write_all(b"slow").await.is_err() {
                            return;
                        }
                    }
                }
                let done = now_ms();
                let mut l = shared.log.lock().unwrap();
                for d in &mut l.deliveries[noted] {
                    d.done_ms = done;
                }
                continue;
            }
            Behaviour::Error500 => b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nboom",
            Behaviour::TooMany429 => {
                b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 4\r\n\r\nslow"
            }
            Behaviour::Redirect => {
                b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/elsewhere\r\ncontent-length: 0\r\n\r\n"
            }
            Behaviour::Final4xx if key == "events" => {
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\n\r\nbad"
            }
            Behaviour::Final4xx => b"HTTP/1.1 410 Gone\r\ncontent-length: 4\r\n\r\ngone",
            Behaviour::Reset => {
                // Zero linger: the close is an RST, and does not block.
                #[allow(deprecated)]
                let _ = s.set_linger(Some(Duration::ZERO));
                return;
            }
            Behaviour::Silence => {
                // Until ffd gives up (its timeout) or 5 s.
                let mut sink = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Ok(n) = s.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
                return;
            }
        };
        if s.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// Records a 2xx request's events, checking each against its token.
fn check(shared: &Shared, port: usize, req: &Request, epoch: u32) -> std::ops::Range<usize> {
    let ports = *shared.ports.lock().unwrap();
    let ffd_id = req.header("ffd-id").unwrap_or("");
    let mut found: Vec<(u16, u32)> = Vec::new();
    // Kept only for a request without a client id (no allocation otherwise).
    let mut own_id = String::new();
    if req.target == "/events" {
        if port != 1 {
            shared.mismatch(format!("events on receiver {port}"));
        }
        let mut body = req.body.clone();
        if req.header("content-encoding") == Some("gzip") {
            let mut out = Vec::new();
            if flate2::read::GzDecoder::new(&req.body[..])
                .read_to_end(&mut out)
                .is_err()
            {
                shared.mismatch("a batch body that is not gzip".into());
                return 0..0;
            }
            body = out;
        }
        let events: Vec<&[u8]> = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        if req.header("ffd-batch-size") != Some(&events.len().to_string()) {
            shared.mismatch(format!(
                "ffd-batch-size {:?} for {} events",
                req.header("ffd-batch-size"),
                events.len()
            ));
        }
        for e in events {
            let v: serde_json::Value = serde_json::from_slice(e).unwrap_or_default();
            let Some((sender, seq)) = v["t"].as_str().and_then(gen::parse_token) else {
                shared.mismatch(format!(
                    "an event without a token: {}",
                    String::from_utf8_lossy(e)
                ));
                continue;
            };
            let want = gen::make(shared.seed, sender, seq, ports);
            if want.target != Target::Events || want.body != e {
                shared.mismatch(format!("event {} differs from what was sent", want.token));
                continue;
            }
            found.push((sender as u16, seq));
        }
    } else {
        let Some((sender, seq)) = req.header("x-chaos-token").and_then(gen::parse_token) else {
            shared.mismatch(format!(
                "a request without a token: {} {}",
                req.method, req.target
            ));
            return 0..0;
        };
        let want = gen::make(shared.seed, sender, seq, ports);
        let mut bad = Vec::new();
        if want.method != req.method {
            bad.push(format!("method {}", req.method));
        }
        if want.path != req.target {
            bad.push(format!("target {}", req.target));
        }
        match want.target {
            Target::Raw(p) if p as usize == port => {}
            Target::Signed if port == 0 => {
                if let Err(e) = verify(shared, req) {
                    bad.push(e);
                }
                if req.header("x-dest") != Some("signed") {
                    bad.push("the destination's header is missing".into());
                }
            }
            _ => bad.push(format!("arrived at receiver {port}")),
        }
        let names: std::collections::BTreeSet<&str> =
            want.headers.iter().map(|(n, _)| n.as_str()).collect();
        for n in names {
            let sent: Vec<&str> = want
                .headers
                .iter()
                .filter(|(m, _)| m == n)
                .map(|(_, v)| v.as_str())
                .collect();
            if req.all(n) != sent {
                bad.push(format!("header {n}: {:?} (sent {sent:?})", req.all(n)));
            }
        }
        if want.json && req.header("content-type") != Some("application/json") {
            bad.push(format!("content-type {:?}", req.header("content-type")));
        }
        if want.body != req.body {
            bad.push(format!(
                "body of {} bytes (sent {})",
                req.body.len(),
                want.body.len()
            ));
        }
        if let Some(id) = &want.id {
            if ffd_id != id {
                bad.push(format!("ffd-id {ffd_id} (sent {id})"));
            }
        }
        if bad.is_empty() {
            // ffd's own id is checked at the end against its answer.
            if want.id.is_none() {
                own_id = ffd_id.to_string();
            }
            found.push((sender as u16, seq));
        } else {
            shared.mismatch(format!("{}: {}", want.token, bad.join("; ")));
        }
    }
    let at_ms = now_ms();
    let mut l = shared.log.lock().unwrap();
    let e = l.per_epoch.entry(epoch).or_default();
    e.0 += 1;
    e.1 += found.len() as u64;
    let first = l.deliveries.len();
    for (sender, seq) in found {
        l.deliveries.push(Delivery {
            sender,
            seq,
            at_ms,
            done_ms: 0,
            ffd_id: own_id.clone(),
        });
    }
    first..l.deliveries.len()
}

/// Standard Webhooks: webhook-id is ffd-id, and one signature verifies.
fn verify(shared: &Shared, req: &Request) -> Result<(), String> {
    let id = req.header("webhook-id").ok_or("no webhook-id")?;
    let ts = req
        .header("webhook-timestamp")
        .ok_or("no webhook-timestamp")?;
    let sigs = req
        .header("webhook-signature")
        .ok_or("no webhook-signature")?;
    if Some(id) != req.header("ffd-id") {
        return Err(format!("webhook-id {id} is not ffd-id"));
    }
    let mut msg = format!("{id}.{ts}.").into_bytes();
    msg.extend_from_slice(&req.body);
    for key in &shared.secrets {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        let want = format!("v1,{}", gen::b64(ring::hmac::sign(&k, &msg).as_ref()));
        if sigs.split(' ').any(|s| s == want) {
            return Ok(());
        }
    }
    Err(format!("no signature verifies: {sigs}"))
}
