//! The record codec: how a segment's bytes are laid out. Pure: no I/O, no
//! clock, so it is unit-tested and fuzzed on its own.
//!
//! A segment starts with a 16-byte header (`FFDSPOOL`, format version,
//! reserved). Records follow: `[len u32][crc32 u32][payload]`, little-endian,
//! the CRC over the payload. A payload is a `JOB` (the whole request plus its
//! state at the time of writing) or an `OUTCOME` (id, new state).

use crate::job::{owner_key, Job, Owner};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Uri};
use std::sync::Arc;

pub(crate) const MAGIC: &[u8; 8] = b"FFDSPOOL";
/// Format version written in every segment header. 2 added owned JOB
/// records, 3 JOB records naming their destination; segments of formats 1
/// and 2 are still read.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest format version still read.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
pub(crate) const HEADER_LEN: u64 = 16;
pub(crate) const REC_JOB: u8 = 1;
pub(crate) const REC_OUTCOME: u8 = 2;
/// A JOB record with its owner (uid, gid) after the state: format 2.
pub(crate) const REC_JOB_OWNED: u8 = 3;
/// A JOB record sent to a named destination (format 3): after the state,
/// a flag byte (1: an owner follows), the owner, then the destination's
/// name. The name only: secrets stay in the config.
pub(crate) const REC_JOB_DEST: u8 = 4;
/// No record is larger: a length field above it is damage, not data.
pub(crate) const MAX_RECORD: u32 = 64 << 20;

/// Where a record lives: segment, byte offset, length (header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Segment number.
    pub seg: u64,
    /// Offset of the record's header in the segment file (segments stay
    /// well under 4 GiB: `spool.segment_bytes` is at most 1 GiB).
    pub off: u32,
    /// Bytes of the record, header included.
    pub len: u32,
}

/// What kind of state change an outcome records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Still pending: attempts so far and the next attempt time.
    Retry,
    /// Delivered: finished, nothing to keep.
    Delivered,
    /// Dead letter.
    Dead,
    /// Dead letter (ttl passed).
    Expired,
    /// Dead letter removed by `purge`: finished.
    Purged,
    /// Cancelled by its owner or an admin: finished, kept for `status`
    /// as a delivered request is.
    Cancelled,
}

impl Kind {
    fn to_u8(self) -> u8 {
        match self {
            Kind::Retry => 0,
            Kind::Delivered => 1,
            Kind::Dead => 2,
            Kind::Expired => 3,
            Kind::Purged => 4,
            Kind::Cancelled => 5,
        }
    }
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Retry,
            1 => Kind::Delivered,
            2 => Kind::Dead,
            3 => Kind::Expired,
            4 => Kind::Purged,
            5 => Kind::Cancelled,
            _ => return None,
        })
    }
    /// A finished job: nothing of it needs keeping.
    pub fn finished(self) -> bool {
        matches!(self, Kind::Delivered | Kind::Purged | Kind::Cancelled)
    }
}

/// A job's state as the spool records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What happened.
    pub kind: Kind,
    /// Attempts made so far.
    pub attempts: u32,
    /// Next attempt (Unix ms) when `Retry`.
    pub next_ms: u64,
    /// Last HTTP status.
    pub status: Option<u16>,
    /// Last error (shared: many requests fail the same way).
    pub error: Option<Arc<str>>,
    /// First bytes of the last response.
    pub snippet: Option<String>,
    /// When it was recorded.
    pub at_ms: u64,
}

impl Outcome {
    /// The state after an attempt: `kind` (`Retry` with the next attempt
    /// at `next_ms`, or an end state), what the server said, when.
    pub fn after_attempt(
        kind: Kind,
        attempts: u32,
        next_ms: u64,
        status: Option<u16>,
        error: Option<&str>,
        snippet: Option<&str>,
        now: u64,
    ) -> Outcome {
        Outcome {
            kind,
            attempts,
            next_ms,
            status,
            error: error.map(Into::into),
            snippet: snippet.map(Into::into),
            at_ms: now,
        }
    }

    /// Expired without an attempt (its ttl passed while queued).
    pub fn expired(attempts: u32, now: u64) -> Outcome {
        Outcome {
            kind: Kind::Expired,
            attempts,
            next_ms: 0,
            status: None,
            error: Some("ttl passed before delivery".into()),
            snippet: None,
            at_ms: now,
        }
    }

    /// Removed by `purge`.
    pub fn purged(now: u64) -> Outcome {
        Outcome {
            kind: Kind::Purged,
            attempts: 0,
            next_ms: 0,
            status: None,
            error: None,
            snippet: None,
            at_ms: now,
        }
    }

    /// Cancelled by its owner or an admin, after `attempts` attempts.
    pub fn cancelled(attempts: u32, now: u64) -> Outcome {
        Outcome {
            kind: Kind::Cancelled,
            attempts,
            next_ms: 0,
            status: None,
            error: None,
            snippet: None,
            at_ms: now,
        }
    }

    /// The fresh state of a newly accepted job.
    pub fn new_job(job: &Job) -> Outcome {
        Outcome {
            kind: Kind::Retry,
            attempts: 0,
            next_ms: job.not_before_ms,
            status: None,
            error: None,
            snippet: None,
            at_ms: job.accepted_ms,
        }
    }

    /// A dead letter (dead or expired): kept, not delivered again.
    pub fn is_dead_letter(&self) -> bool {
        matches!(self.kind, Kind::Dead | Kind::Expired)
    }
}

// ---- record encoding ------------------------------------------------------

fn put_u16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    put_u32(b, v.len() as u32);
    b.extend_from_slice(v);
}
/// A URI as its `Display` writes it (the format stores that text), from
/// its parts: `write!` costs more per record than all the other fields.
fn put_uri(b: &mut Vec<u8>, uri: &Uri) {
    let at = b.len();
    b.extend_from_slice(&[0; 4]);
    if let Some(scheme) = uri.scheme_str() {
        b.extend_from_slice(scheme.as_bytes());
        b.extend_from_slice(b"://");
    }
    if let Some(authority) = uri.authority() {
        b.extend_from_slice(authority.as_str().as_bytes());
    }
    b.extend_from_slice(uri.path().as_bytes());
    if let Some(query) = uri.query() {
        b.push(b'?');
        b.extend_from_slice(query.as_bytes());
    }
    let len = (b.len() - at - 4) as u32;
    b[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

fn put_opt_str(b: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(s) => {
            b.push(1);
            put_bytes(b, s.as_bytes());
        }
        None => b.push(0),
    }
}

fn frame(buf: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 8]);
    body(buf);
    let payload = &buf[start + 8..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_outcome(b: &mut Vec<u8>, o: &Outcome) {
    b.push(o.kind.to_u8());
    put_u32(b, o.attempts);
    put_u64(b, o.next_ms);
    put_u16(b, o.status.unwrap_or(0));
    put_opt_str(b, o.error.as_deref());
    put_opt_str(b, o.snippet.as_deref());
    put_u64(b, o.at_ms);
}

pub(crate) fn encode_job(buf: &mut Vec<u8>, job: &Job, o: &Outcome) {
    frame(buf, |b| {
        b.push(match (&job.dest, job.owner) {
            (Some(_), _) => REC_JOB_DEST,
            (None, Some(_)) => REC_JOB_OWNED,
            (None, None) => REC_JOB,
        });
        put_bytes(b, job.id.as_bytes());
        put_bytes(b, job.method.as_str().as_bytes());
        put_uri(b, &job.uri);
        put_u32(b, job.headers.len() as u32);
        for (k, v) in &job.headers {
            put_bytes(b, k.as_str().as_bytes());
            put_bytes(b, v.as_bytes());
        }
        put_bytes(b, &job.body);
        put_u64(b, job.timeout_ms);
        put_u32(b, job.max_attempts);
        put_u64(b, job.accepted_ms);
        put_u64(b, job.not_before_ms);
        put_u64(b, job.expires_ms);
        put_outcome(b, o);
        if job.dest.is_some() {
            b.push(job.owner.is_some() as u8);
        }
        if let Some(owner) = job.owner {
            put_u32(b, owner.uid);
            put_u32(b, owner.gid);
        }
        if let Some(dest) = &job.dest {
            put_bytes(b, dest.as_bytes());
        }
    });
}

pub(crate) fn encode_outcome(buf: &mut Vec<u8>, id: &str, o: &Outcome) {
    frame(buf, |b| {
        b.push(REC_OUTCOME);
        put_bytes(b, id.as_bytes());
        put_outcome(b, o);
    });
}

/// A cursor over a payload; every read is checked, so no content can panic.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
    fn opt_str(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.str()?.to_string())),
            _ => None,
        }
    }
    /// The owner and destination after a JOB record's state, by its tag.
    fn tail(&mut self, rec: u8) -> Option<(Option<Owner>, Option<&'a str>)> {
        match rec {
            REC_JOB => Some((None, None)),
            REC_JOB_OWNED => Some((Some(self.owner()?), None)),
            REC_JOB_DEST => {
                let owner = match self.u8()? {
                    0 => None,
                    1 => Some(self.owner()?),
                    _ => return None,
                };
                Some((owner, Some(self.str()?)))
            }
            _ => None,
        }
    }
    fn owner(&mut self) -> Option<Owner> {
        Some(Owner {
            uid: self.u32()?,
            gid: self.u32()?,
        })
    }

    fn outcome(&mut self) -> Option<Outcome> {
        let kind = Kind::from_u8(self.u8()?)?;
        let attempts = self.u32()?;
        let next_ms = self.u64()?;
        let status = self.u16()?;
        Some(Outcome {
            kind,
            attempts,
            next_ms,
            status: (status != 0).then_some(status),
            error: self.opt_str()?.map(Into::into),
            snippet: self.opt_str()?,
            at_ms: self.u64()?,
        })
    }
}

/// Decodes a JOB record into the full request (`None` for anything else).
pub(crate) fn decode_job(payload: &[u8]) -> Option<Arc<Job>> {
    let mut c = Cur(payload);
    let rec = c.u8()?;
    if !matches!(rec, REC_JOB | REC_JOB_OWNED | REC_JOB_DEST) {
        return None;
    }
    let id: Arc<str> = c.str()?.into();
    let method = Method::from_bytes(c.bytes()?).ok()?;
    let uri: Uri = c.str()?.parse().ok()?;
    let n = c.u32()? as usize;
    let mut headers = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let k = HeaderName::from_bytes(c.bytes()?).ok()?;
        let v = HeaderValue::from_bytes(c.bytes()?).ok()?;
        headers.push((k, v));
    }
    let body = Bytes::copy_from_slice(c.bytes()?);
    let mut job = Job {
        key: id.clone(),
        id,
        owner: None,
        method,
        uri,
        dest: None,
        headers,
        body,
        timeout_ms: c.u64()?,
        max_attempts: c.u32()?,
        accepted_ms: c.u64()?,
        not_before_ms: c.u64()?,
        expires_ms: c.u64()?,
    };
    c.outcome()?;
    let (owner, dest) = c.tail(rec)?;
    job.owner = owner;
    job.key = owner_key(owner, &job.id);
    job.dest = dest.map(Into::into);
    c.0.is_empty().then(|| Arc::new(job))
}

/// A record as replay reads it: the fields that schedule a job, borrowed.
pub(crate) enum Meta<'a> {
    Job {
        id: &'a str,
        owner: Option<Owner>,
        uri: &'a str,
        dest: Option<&'a str>,
        max_attempts: u32,
        accepted_ms: u64,
        not_before_ms: u64,
        expires_ms: u64,
        state: Outcome,
    },
    Outcome {
        id: &'a str,
        state: Outcome,
    },
}

/// Decodes a record without building the request (headers and body are
/// skipped), for replay.
pub(crate) fn decode_meta(payload: &[u8]) -> Option<Meta<'_>> {
    let mut c = Cur(payload);
    match c.u8()? {
        rec @ (REC_JOB | REC_JOB_OWNED | REC_JOB_DEST) => {
            let id = c.str()?;
            let method = c.bytes()?;
            Method::from_bytes(method).ok()?;
            let uri = c.str()?;
            let n = c.u32()? as usize;
            for _ in 0..n {
                c.bytes()?;
                c.bytes()?;
            }
            c.bytes()?;
            let _timeout_ms = c.u64()?;
            let max_attempts = c.u32()?;
            let accepted_ms = c.u64()?;
            let not_before_ms = c.u64()?;
            let expires_ms = c.u64()?;
            let state = c.outcome()?;
            let (owner, dest) = c.tail(rec)?;
            c.0.is_empty().then_some(Meta::Job {
                id,
                owner,
                uri,
                dest,
                max_attempts,
                accepted_ms,
                not_before_ms,
                expires_ms,
                state,
            })
        }
        REC_OUTCOME => {
            let id = c.str()?;
            let state = c.outcome()?;
            c.0.is_empty().then_some(Meta::Outcome { id, state })
        }
        _ => None,
    }
}

/// The payload of a valid record at `pos` and where the next one starts.
pub(crate) fn record_at(data: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let head = data.get(pos..pos + 8)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let end = pos + 8 + len as usize;
    let payload = data.get(pos + 8..end)?;
    (crc32fast::hash(payload) == crc).then_some((payload, end))
}

/// A small request for tests.
#[cfg(test)]
pub(crate) fn test_job(id: &str) -> Arc<Job> {
    Arc::new(Job {
        id: id.into(),
        owner: None,
        key: id.into(),
        method: Method::POST,
        uri: "http://127.0.0.1:1/x?q=1".parse().unwrap(),
        dest: None,
        headers: vec![(
            HeaderName::from_static("x-a"),
            HeaderValue::from_static("1"),
        )],
        body: Bytes::from_static(b"hello"),
        timeout_ms: 1000,
        max_attempts: 3,
        accepted_ms: 10,
        not_before_ms: 10,
        expires_ms: 1000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_is_stored_as_its_display() {
        for u in [
            "http://127.0.0.1:1/x?q=1",
            "https://h",
            "http://h:80/",
            "http://[::1]:8080/a/b?c=d&e=%20",
            "https://example.com?only=query",
            "http://h/p?",
        ] {
            let uri: Uri = u.parse().unwrap();
            let mut b = Vec::new();
            put_uri(&mut b, &uri);
            let shown = uri.to_string();
            assert_eq!(&b[4..], shown.as_bytes(), "{u}");
            assert_eq!(b[..4], (shown.len() as u32).to_le_bytes());
        }
    }

    #[test]
    fn round_trip_and_last_record_wins() {
        let mut buf = Vec::new();
        let j = test_job("a");
        encode_job(&mut buf, &j, &Outcome::new_job(&j));
        let mut dead = Outcome::purged(5);
        dead.kind = Kind::Dead;
        dead.status = Some(404);
        encode_outcome(&mut buf, "a", &dead);
        let (p, next) = record_at(&buf, 0).unwrap();
        let d = decode_job(p).expect("job record");
        assert_eq!(d.uri, j.uri);
        assert_eq!(d.body, j.body);
        assert_eq!(d.headers, j.headers);
        assert!(matches!(
            decode_meta(p),
            Some(Meta::Job {
                id: "a",
                max_attempts: 3,
                ..
            })
        ));
        let (p, _) = record_at(&buf, next).unwrap();
        assert!(decode_job(p).is_none());
        assert!(
            matches!(decode_meta(p), Some(Meta::Outcome { id: "a", state }) if state.status == Some(404))
        );
    }

    #[test]
    fn a_job_keeps_its_destination_with_or_without_owner() {
        for owner in [None, Some(Owner { uid: 7, gid: 8 })] {
            let mut j = (*test_job("d-1")).clone();
            j.owner = owner;
            j.key = owner_key(owner, &j.id);
            j.dest = Some("hooks".into());
            let mut buf = Vec::new();
            encode_job(&mut buf, &j, &Outcome::new_job(&j));
            let (p, _) = record_at(&buf, 0).unwrap();
            let d = decode_job(p).expect("job record with a destination");
            assert_eq!(d.dest.as_deref(), Some("hooks"));
            assert_eq!(d.owner, owner);
            assert_eq!(d.key, j.key);
            assert!(matches!(
                decode_meta(p),
                Some(Meta::Job { dest: Some("hooks"), owner: o, .. }) if o == owner
            ));
        }
    }

    #[test]
    fn an_owned_job_keeps_its_owner_and_is_keyed_by_it() {
        let mut j = (*test_job("order-1")).clone();
        j.owner = Some(Owner {
            uid: 1000,
            gid: 100,
        });
        j.key = owner_key(j.owner, &j.id);
        let mut buf = Vec::new();
        encode_job(&mut buf, &j, &Outcome::new_job(&j));
        let (p, _) = record_at(&buf, 0).unwrap();
        let d = decode_job(p).expect("owned job record");
        assert_eq!(&*d.id, "order-1");
        assert_eq!(&*d.key, "1000:order-1");
        assert_eq!(d.owner, j.owner);
        assert!(matches!(
            decode_meta(p),
            Some(Meta::Job {
                id: "order-1",
                owner: Some(Owner {
                    uid: 1000,
                    gid: 100
                }),
                ..
            })
        ));
    }
}
