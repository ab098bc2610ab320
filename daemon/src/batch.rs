//! Event streams: how the events of a batching destination are checked at
//! ACK and written into one request body. Pure: no I/O, no clock.
//!
//! A batch body is `prefix`, the events, `suffix`. In `ndjson` each event
//! is one line ending with `\n`; in `json_array` the events are the
//! elements of one JSON array, separated by `,`. Either way each event
//! costs its own bytes plus one (its `\n`, or its `,` or closing `]`), and
//! a body costs [`BatchSpec::fixed_bytes`] more: that is how the scheduler
//! counts `max_bytes` without building anything.

use bytes::Bytes;

/// How events are laid out in a batch body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One event per line (`application/x-ndjson`).
    Ndjson,
    /// The events as one JSON array (`application/json`).
    JsonArray,
}

impl Format {
    /// The `content-type` of a batch body.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::JsonArray => "application/json",
        }
    }

    /// The name the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::JsonArray => "json_array",
        }
    }
}

/// A destination's batch settings, as the scheduler and admission use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSpec {
    /// Events in one batch at most.
    pub max_events: usize,
    /// Bytes of one body (before compression) at most.
    pub max_bytes: u64,
    /// How long the oldest ready event of a partial batch waits.
    pub max_wait_ms: u64,
    /// The layout.
    pub format: Format,
    /// Written before the events.
    pub prefix: Bytes,
    /// Written after the events.
    pub suffix: Bytes,
    /// Statuses that split a batch in halves to find the events refused.
    pub split_on: Vec<u16>,
}

impl BatchSpec {
    /// Bytes of a body besides its events' costs ([`event_cost`]).
    pub fn fixed_bytes(&self) -> u64 {
        let brackets = match self.format {
            Format::Ndjson => 0,
            // `[` + `]`, with one `,` fewer than events: one more in all.
            Format::JsonArray => 1,
        };
        (self.prefix.len() + self.suffix.len() + brackets) as u64
    }

    /// Checks one event's body at ACK and returns what will be sent of it:
    /// a JSON body compact, anything else as it is. `known_json`: the
    /// caller already knows the body is valid JSON. `Err` says why it is
    /// refused (in the words of the destination's rules).
    pub fn event(&self, body: Vec<u8>, known_json: bool) -> Result<Vec<u8>, String> {
        // A `json` field was parsed with the line: not parsed again.
        let is_json = known_json || serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok();
        let body = match self.format {
            Format::JsonArray if !is_json => {
                return Err(
                    "its format is `json_array`, and this event's body is not valid JSON".into(),
                )
            }
            _ if is_json => compact_json(body),
            Format::Ndjson if memchr::memchr(b'\n', &body).is_some() => {
                return Err(
                    "its format is `ndjson` (one event per line), and this event's body holds a newline and is not JSON"
                        .into(),
                )
            }
            Format::Ndjson | Format::JsonArray => body,
        };
        let need = self.fixed_bytes() + event_cost(body.len());
        if need > self.max_bytes {
            return Err(format!(
                "this event needs {need} bytes in a batch (with the prefix, suffix and separators) and `batch.max_bytes` is {}",
                self.max_bytes
            ));
        }
        Ok(body)
    }

    /// The body of a batch of `events` (each as [`BatchSpec::event`] left it).
    pub fn build<'a>(&self, events: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.prefix);
        if self.format == Format::JsonArray {
            out.push(b'[');
        }
        for (i, e) in events.enumerate() {
            if self.format == Format::JsonArray && i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(e);
            if self.format == Format::Ndjson {
                out.push(b'\n');
            }
        }
        if self.format == Format::JsonArray {
            out.push(b']');
        }
        out.extend_from_slice(&self.suffix);
        out
    }
}

/// What one event of `len` bytes adds to a body: itself and one separator.
pub fn event_cost(len: usize) -> u64 {
    len as u64 + 1
}

/// Valid JSON without the whitespace between tokens (strings untouched).
/// The input must be valid JSON: the caller checked it.
pub fn compact_json(json: Vec<u8>) -> Vec<u8> {
    let has_space = json
        .iter()
        .any(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'));
    if !has_space {
        return json;
    }
    let mut out = Vec::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in &json {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b' ' | b'\n' | b'\r' | b'\t' => {}
            b'"' => {
                in_string = true;
                out.push(b);
            }
            _ => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(format: Format, prefix: &str, suffix: &str, max_bytes: u64) -> BatchSpec {
        BatchSpec {
            max_events: 500,
            max_bytes,
            max_wait_ms: 1000,
            format,
            prefix: Bytes::copy_from_slice(prefix.as_bytes()),
            suffix: Bytes::copy_from_slice(suffix.as_bytes()),
            split_on: vec![400, 413, 422],
        }
    }

    #[test]
    fn bodies_are_laid_out_and_sized_as_counted() {
        let cases = [
            (Format::Ndjson, "", "", "{\"a\":1}\nx y\n"),
            (Format::JsonArray, "", "", "[{\"a\":1},\"x y\"]"),
            (
                Format::JsonArray,
                "{\"batch\":",
                "}",
                "{\"batch\":[{\"a\":1},\"x y\"]}",
            ),
            (Format::Ndjson, "P", "S", "P{\"a\":1}\nx y\nS"),
        ];
        for (format, prefix, suffix, want) in cases {
            let s = spec(format, prefix, suffix, 1 << 20);
            let a = s.event(b"{ \"a\" :\n 1 }".to_vec(), false).unwrap();
            let b = match format {
                Format::Ndjson => s.event(b"x y".to_vec(), false).unwrap(),
                Format::JsonArray => s.event(b"\"x y\"".to_vec(), true).unwrap(),
            };
            let body = s.build([&a[..], &b[..]].into_iter());
            assert_eq!(String::from_utf8(body.clone()).unwrap(), want);
            let counted = s.fixed_bytes() + event_cost(a.len()) + event_cost(b.len());
            assert_eq!(counted, body.len() as u64, "{want}");
        }
    }

    #[test]
    fn events_that_break_the_format_or_cannot_fit_are_refused() {
        let arr = spec(Format::JsonArray, "", "", 1 << 20);
        assert!(arr
            .event(b"not json".to_vec(), false)
            .unwrap_err()
            .contains("not valid JSON"));
        let nd = spec(Format::Ndjson, "", "", 1 << 20);
        assert!(nd
            .event(b"two\nlines".to_vec(), false)
            .unwrap_err()
            .contains("newline"));
        // A JSON body with line breaks is made one line.
        assert_eq!(nd.event(b"[1,\n2]".to_vec(), false).unwrap(), b"[1,2]");
        // 10 bytes: prefix 3 + event 5 + newline 1 + suffix 1 = 10 fits, 11 does not.
        let small = spec(Format::Ndjson, "abc", "z", 10);
        assert!(small.event(b"12345".to_vec(), false).is_ok());
        assert!(small
            .event(b"123456".to_vec(), false)
            .unwrap_err()
            .contains("max_bytes"));
    }

    #[test]
    fn compacting_leaves_strings_alone() {
        let j = br#"{ "a b" : "x \" y\\", "c":[ 1 , 2 ] }"#.to_vec();
        assert_eq!(compact_json(j), br#"{"a b":"x \" y\\","c":[1,2]}"#);
    }
}
