//! `tail`: a live stream of events, one JSON line each, until the client
//! closes the connection. The op answers once (`{"ok":true,"tail":...}`),
//! then the connection carries events only (ingest streams them).

use super::Peer;
use crate::scheduler::{Engine, Event};
use ffd_proto::{ErrorCode, ProtoError, TailFilter};
use serde_json::json;

/// A `tail` filter, checked and resolved.
#[derive(Debug, Clone)]
pub struct Tail {
    host: Option<String>,
    /// The host filter names a destination's lane exactly.
    exact: bool,
    events: Vec<String>,
    /// Who is watching: a user sees only their own requests.
    peer: Peer,
}

/// Checks the filter; the answer line and the resolved filter.
pub fn start(engine: &Engine, peer: Peer, f: TailFilter) -> Result<(Vec<u8>, Tail), ProtoError> {
    let host = match (&f.dest, &f.host) {
        (Some(name), _) => Some(engine.dest_host(name).ok_or_else(|| {
            ProtoError::new(
                ErrorCode::UnknownDest,
                format!("no destination named {name:?} in the config"),
            )
        })?),
        (None, Some(h)) => Some(h.to_ascii_lowercase()),
        (None, None) => None,
    };
    let mut out = Vec::new();
    let value = json!({"host": host, "events": f.events, "own_requests_only": !peer.admin});
    ffd_proto::write_ok_value(&mut out, "tail", &value);
    Ok((
        out,
        Tail {
            exact: f.dest.is_some(),
            host,
            events: f.events,
            peer,
        },
    ))
}

impl Tail {
    /// Whether this subscriber gets `ev`.
    pub fn wants(&self, ev: &Event) -> bool {
        if !self.peer.admin && (ev.owner.is_none() || ev.owner != self.peer.uid) {
            return false;
        }
        if !self.events.is_empty() && !self.events.iter().any(|e| e == ev.event) {
            return false;
        }
        match &self.host {
            None => true,
            Some(h) if self.exact => ev.host == *h,
            Some(h) => host_matches(&ev.host, h),
        }
    }
}

/// `host` as given (`h`, `h:port` or `scheme://h:port`) against a host key
/// (`scheme://h:port`).
pub(super) fn host_matches(key: &str, want: &str) -> bool {
    // A destination's lane is `scheme://host:port (dest NAME)`.
    let key = key.split_once(" (dest ").map_or(key, |(k, _)| k);
    if key == want {
        return true;
    }
    let hostport = key.split_once("://").map_or(key, |(_, hp)| hp);
    hostport == want || hostport.rsplit_once(':').is_some_and(|(h, _)| h == want)
}

#[cfg(test)]
mod tests {
    use super::host_matches;

    #[test]
    fn a_host_filter_takes_any_of_the_usual_forms() {
        let key = "https://hooks.example:443";
        assert!(host_matches(
            "https://hooks.example:443 (dest hooks)",
            "hooks.example"
        ));
        for want in [
            "https://hooks.example:443",
            "hooks.example:443",
            "hooks.example",
        ] {
            assert!(host_matches(key, want), "{want}");
        }
        for want in ["hooks", "example:443", "http://hooks.example:443"] {
            assert!(!host_matches(key, want), "{want}");
        }
    }
}
