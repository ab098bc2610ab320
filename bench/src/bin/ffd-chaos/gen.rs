//! The load, as a pure function: request `seq` of sender `sender` is the
//! same bytes every time it is made (by the sender that sends it and by the
//! receiver that checks what arrived), so no request has to be logged whole.

use serde_json::{json, Value};

/// splitmix64: small, seedable, good enough to draw a schedule from.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(parts: &[u64]) -> Rng {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for p in parts {
            r.0 ^= *p;
            r.next();
        }
        r
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Hash of a string, for seeding from a path.
pub fn fnv(s: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in s.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Where a request goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    /// A raw URL on receiver `port` (0 or 1).
    Raw(u8),
    /// The signing destination `signed` (receiver 0, under `/hook`).
    Signed,
    /// The batching destination `events` (receiver 1, `/events`).
    Events,
}

/// One request: the line a sender writes, and what must arrive.
pub struct Req {
    pub token: String,
    pub target: Target,
    /// The caller's id, if it sets one.
    pub id: Option<String>,
    pub line: String,
    pub method: &'static str,
    /// Path and query as the receiver sees them.
    pub path: String,
    /// Headers the send set, each of which must arrive as it was.
    pub headers: Vec<(String, String)>,
    /// The body (for an event: the event as it must appear in a batch).
    pub body: Vec<u8>,
    pub json: bool,
}

/// Senders: index → (uid slot, pipelined?).
pub const SENDERS: usize = 6;
pub fn pipelined(sender: usize) -> bool {
    sender.is_multiple_of(2)
}

pub fn token(sender: usize, seq: u32) -> String {
    format!("{sender}.{seq}")
}

pub fn parse_token(t: &str) -> Option<(usize, u32)> {
    let (a, b) = t.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn pad(rng: &mut Rng) -> String {
    let n = if rng.chance(3) {
        rng.range(3000, 8000)
    } else {
        rng.range(0, 900)
    };
    (0..n)
        .map(|_| ALPHA[rng.below(ALPHA.len() as u64) as usize] as char)
        .collect()
}

/// Request `seq` of `sender`; `ports` are the two receivers' ports.
pub fn make(seed: u64, sender: usize, seq: u32, ports: [u16; 2]) -> Req {
    let mut rng = Rng::new(&[seed, sender as u64, seq as u64, 0x5e4d]);
    let token = token(sender, seq);
    let target = match rng.below(100) {
        0..=44 => Target::Raw(rng.below(2) as u8),
        45..=69 => Target::Signed,
        _ => Target::Events,
    };
    // Ids are per sender kind, so the three uids use the same ids for
    // different requests: ids are scoped by owner.
    let id = rng
        .chance(70)
        .then(|| format!("{}-{seq}", if pipelined(sender) { "p" } else { "o" }));
    // Keys in sorted order, compact: the bytes ffd forwards verbatim.
    let event = json!({"n": seq, "pad": pad(&mut rng), "t": token});
    let mut line = serde_json::Map::new();
    let (method, path, mut headers, body, is_json);
    match target {
        Target::Events => {
            method = "POST";
            path = "/events".to_string();
            headers = Vec::new();
            body = serde_json::to_vec(&event).unwrap();
            is_json = true;
            line.insert("dest".into(), "events".into());
            line.insert("json".into(), event);
        }
        Target::Raw(_) | Target::Signed => {
            let k = rng.below(4);
            let q = if rng.chance(50) {
                format!("?n={seq}&k={k}")
            } else {
                String::new()
            };
            method = if rng.chance(85) { "POST" } else { "PUT" };
            headers = vec![
                ("x-chaos-token".to_string(), token.clone()),
                ("x-chaos-h".to_string(), format!("{:x}", rng.next())),
            ];
            if rng.chance(30) {
                headers.push(("x-multi".into(), "a".into()));
                headers.push(("x-multi".into(), format!("b {seq}")));
            }
            match rng.below(10) {
                0..=4 => {
                    body = serde_json::to_vec(&event).unwrap();
                    is_json = true;
                    line.insert("json".into(), event);
                }
                5..=7 => {
                    let text = format!("text {token} {}", pad(&mut rng));
                    body = text.clone().into_bytes();
                    is_json = false;
                    line.insert("body".into(), text.into());
                }
                _ => {
                    let n = rng.range(0, 600);
                    body = (0..n).map(|_| rng.next() as u8).collect();
                    is_json = false;
                    line.insert("body_base64".into(), b64(&body).into());
                    headers.push(("content-type".into(), "application/octet-stream".into()));
                }
            }
            if target == Target::Signed {
                path = format!("/hook/s{k}/{token}{q}");
                line.insert("dest".into(), "signed".into());
                line.insert("path".into(), format!("/s{k}/{token}{q}").into());
            } else {
                let Target::Raw(p) = target else {
                    unreachable!()
                };
                path = format!("/r{k}/{token}{q}");
                line.insert(
                    "url".into(),
                    format!("http://127.0.0.1:{}{path}", ports[p as usize]).into(),
                );
            }
            line.insert("method".into(), method.into());
            let list: Vec<Value> = headers.iter().map(|(n, v)| json!([n, v])).collect();
            line.insert("headers".into(), Value::Array(list));
        }
    }
    if let Some(id) = &id {
        line.insert("id".into(), id.clone().into());
    }
    Req {
        token,
        target,
        id,
        line: Value::Object(line).to_string(),
        method,
        path,
        headers,
        body,
        json: is_json,
    }
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The signing destination's secrets, `whsec_` + base64 of 32 seeded bytes.
pub fn secrets(seed: u64) -> [(String, Vec<u8>); 2] {
    let one = |k: u64| {
        let mut r = Rng::new(&[seed, 0x5ec, k]);
        let key: Vec<u8> = (0..32).map(|_| r.next() as u8).collect();
        (format!("whsec_{}", b64(&key)), key)
    };
    [one(1), one(2)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(b64(i.as_bytes()), o);
        }
    }

    #[test]
    fn a_request_is_the_same_every_time() {
        let a = make(7, 3, 99, [1, 2]);
        let b = make(7, 3, 99, [1, 2]);
        assert_eq!(a.line, b.line);
        assert_eq!(a.body, b.body);
        assert_eq!(parse_token(&a.token), Some((3, 99)));
    }
}
