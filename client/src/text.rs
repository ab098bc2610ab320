//! What `ffclient` prints for a person: `status`, `stats`, `top` and `tail`
//! in words, times relative to now.

/// One event for a person: `12:00:01.234 UTC  delivered  ID  host  HTTP 200 (12 ms)`.
pub fn event_line(ev: &serde_json::Value) -> String {
    let at = ev["at_ms"].as_u64().unwrap_or(0);
    let clock = format!(
        "{:02}:{:02}:{:02}.{:03}",
        at / 3_600_000 % 24,
        at / 60_000 % 60,
        at / 1000 % 60,
        at % 1000
    );
    let event = ev["event"].as_str().unwrap_or("?");
    if event.starts_with("host_") {
        let what = match event {
            "host_failing" => "started failing",
            "host_paused" => "paused: it keeps failing",
            _ => "recovered",
        };
        let err = ev["error"]
            .as_str()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return format!(
            "{clock} UTC  host       {} {what}{err}",
            ev["host"].as_str().unwrap_or("?")
        );
    }
    if event == "overflow" {
        return format!(
            "{clock} UTC  overflow   {} events missed (this reader was too slow)",
            ev["dropped"]
        );
    }
    let mut detail = match (ev["status"].as_u64(), ev["error"].as_str()) {
        (Some(code), _) => format!("HTTP {code} {}", reason(code))
            .trim_end()
            .to_string(),
        (None, Some(err)) => err.to_string(),
        (None, None) => String::new(),
    };
    if let Some(ms) = ev["duration_ms"].as_u64() {
        detail.push_str(&format!(" ({ms} ms)"));
    }
    if let Some(ms) = ev["wait_ms"].as_u64() {
        detail = format!("next attempt in {}", human_ms(ms));
    }
    format!(
        "{clock} UTC  {event:<9}  {}  {}  attempt {}  {detail}",
        ev["id"].as_str().unwrap_or("?"),
        ev["host"].as_str().unwrap_or("?"),
        ev["attempts"].as_u64().unwrap_or(0),
    )
    .trim_end()
    .to_string()
}

/// The `ffclient top` screen from a `stats` answer (`clear`: start with
/// the escape that clears the terminal).
pub fn top_text(st: &serde_json::Value, now: u64, clear: bool) -> String {
    let mut out = String::new();
    if clear {
        out.push_str("\x1b[H\x1b[2J");
    }
    out.push_str(&format!(
        "queued {}  in flight {}  delivered {}  dead letters {}  oldest pending {}\n\n",
        st["queued"],
        st["in_flight"],
        st["delivered"],
        st["dead_letters"],
        st["oldest_pending_age_ms"]
            .as_u64()
            .map(human_ms)
            .unwrap_or_else(|| "-".into()),
    ));
    out.push_str(&format!(
        "{:<36} {:>7} {:>9} {:>9} {:<9} {:>6} {:>7}  {}\n",
        "HOST", "PENDING", "OLDEST", "IN FLIGHT", "BREAKER", "OK %", "P95", "LAST ERROR"
    ));
    for h in st["hosts"].as_array().into_iter().flatten() {
        let opt_ms = |k: &str| h[k].as_u64().map(human_ms).unwrap_or_else(|| "-".into());
        let breaker = match (h["breaker"].as_str(), h["paused_until_ms"].as_u64()) {
            (Some("open"), Some(until)) => {
                format!("open {}", human_ms(until.saturating_sub(now)))
            }
            (Some(b), _) => b.to_string(),
            (None, _) => "?".into(),
        };
        out.push_str(&format!(
            "{:<36} {:>7} {:>9} {:>9} {:<9} {:>6} {:>7}  {}\n",
            h["host"].as_str().unwrap_or("?"),
            h["pending"],
            opt_ms("oldest_ready_ms"),
            format!("{}/{}", h["in_flight"], h["limit"]),
            breaker,
            h["success_rate"]
                .as_f64()
                .map(|r| format!("{:.0}", r * 100.0))
                .unwrap_or_else(|| "-".into()),
            opt_ms("p95_attempt_ms"),
            if h["consecutive_failures"].as_u64().unwrap_or(0) > 0 {
                h["last_error"].as_str().unwrap_or("")
            } else {
                ""
            },
        ));
    }
    out
}

/// A UTC time of day and how far from now: `12:00:01 UTC (3 min ago)`.
pub fn when(at: u64) -> String {
    let now = now_ms().unwrap_or(at);
    let clock = clock(at);
    let days = (at / 86_400_000).abs_diff(now / 86_400_000);
    let day = if days == 0 {
        String::new()
    } else {
        format!(
            " ({days} day{} {})",
            if days == 1 { "" } else { "s" },
            if at > now { "later" } else { "earlier" }
        )
    };
    if at >= now {
        format!("{clock}{day}, in {}", human_ms(at - now))
    } else {
        format!("{clock}{day}, {} ago", human_ms(now - at))
    }
}

/// `ffclient dead` for a person: a line per dead letter (its id and
/// summary), its request below it.
pub fn dead_text(list: &serde_json::Value) -> String {
    let items = list.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return "no dead letters\n".into();
    }
    let n = items.len();
    let mut out = format!(
        "{n} dead letter{}, oldest first:\n",
        if n == 1 { "" } else { "s" }
    );
    for d in &items {
        let mut id = d["id"].as_str().unwrap_or("?").to_string();
        if let Some(o) = d["owner"].as_u64() {
            id = format!("{id} (uid {o})");
        }
        out.push_str(&format!("{id}  {}\n", status_summary(d)));
        if let (Some(m), Some(u)) = (d["method"].as_str(), d["url"].as_str()) {
            out.push_str(&format!("    {m} {u}\n"));
        }
        if let Some(f) = d["finished_ms"].as_u64() {
            out.push_str(&format!("    finished {}\n", when(f)));
        }
    }
    out
}

/// `ffclient status ID` for a person: the summary, then the details.
pub fn status_text(st: &serde_json::Value) -> String {
    let mut out = format!("{}\n", status_summary(st));
    let mut row = |k: &str, v: String| out.push_str(&format!("  {k:<13}{v}\n"));
    row("id", st["id"].as_str().unwrap_or("?").to_string());
    if let (Some(m), Some(u)) = (st["method"].as_str(), st["url"].as_str()) {
        row("request", format!("{m} {u}"));
    }
    let mut host = st["host"].as_str().unwrap_or("?").to_string();
    if let Some(until) = st["host_paused_until_ms"].as_u64() {
        host.push_str(&format!(
            " (paused until {}: it keeps failing)",
            when(until)
        ));
    }
    row("host", host);
    if let Some(a) = st["accepted_ms"].as_u64() {
        row("accepted", when(a));
    }
    row(
        "attempts",
        format!("{} of {}", st["attempts"], st["max_attempts"]),
    );
    if let Some(n) = st["next_attempt_ms"].as_u64() {
        row("next attempt", when(n));
    }
    if let Some(f) = st["finished_ms"].as_u64() {
        row("finished", when(f));
    } else if let Some(e) = st["expires_ms"].as_u64() {
        row("gives up", when(e));
    }
    if let Some(e) = st["last_error"].as_str() {
        row("last error", e.to_string());
    }
    if let Some(r) = st["response"].as_str() {
        row("response", format!("{r:?}"));
    }
    if let Some(o) = st["owner"].as_u64() {
        row("owner", format!("uid {o}"));
    }
    let attempts = st["last_attempts"].as_array().cloned().unwrap_or_default();
    if !attempts.is_empty() {
        out.push_str("  last attempts\n");
        for a in attempts {
            let what = match (a["status"].as_u64(), a["error"].as_str()) {
                (Some(code), _) => format!("HTTP {code} {}", reason(code))
                    .trim_end()
                    .to_string(),
                (None, Some(e)) => e.to_string(),
                (None, None) => "?".into(),
            };
            out.push_str(&format!(
                "    {}  {what} ({} ms)\n",
                when(a["at_ms"].as_u64().unwrap_or(0)),
                a["duration_ms"]
            ));
        }
    }
    out
}

/// `ffclient stats` for a person.
pub fn stats_text(st: &serde_json::Value) -> String {
    let n = |k: &str| st[k].as_u64().unwrap_or(0);
    // Requests kept in the spool only (`spool.memory_window`) are part of
    // the queue; said when there are any.
    let paged = match n("paged_out") {
        0 => String::new(),
        p => format!(" ({p} of them paged out to the spool)"),
    };
    let mut out = format!(
        "queued {}{paged}, in flight {}, dead letters {}; oldest pending {}\n",
        n("queued"),
        n("in_flight"),
        n("dead_letters"),
        st["oldest_pending_age_ms"]
            .as_u64()
            .map(human_ms)
            .unwrap_or_else(|| "-".into())
    );
    out.push_str(&format!(
        "since start ({}): {} accepted, {} delivered, {} retried, {} dead, {} expired, {} cancelled, {} duplicates\n",
        human_ms(n("uptime_ms")),
        n("accepted"),
        n("delivered"),
        n("retried"),
        n("dead"),
        n("expired"),
        n("cancelled"),
        n("duplicates")
    ));
    let rejected: Vec<String> = st["rejected"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if !rejected.is_empty() {
        out.push_str(&format!("rejected: {}\n", rejected.join(", ")));
    }
    let sp = &st["spool"];
    out.push_str(&format!(
        "spool: {} ({} bytes{}), {} connection{}\n",
        sp["mode"].as_str().unwrap_or("?"),
        sp["bytes"],
        sp["dir"]
            .as_str()
            .map(|d| format!(" in {d}"))
            .unwrap_or_default(),
        n("connections"),
        if n("connections") == 1 { "" } else { "s" }
    ));
    let now = now_ms().unwrap_or(0);
    for h in st["hosts"].as_array().into_iter().flatten() {
        let mut line = format!(
            "host {}: {} pending, {} in flight",
            h["host"].as_str().unwrap_or("?"),
            h["pending"],
            h["in_flight"]
        );
        if h["paused"] == true {
            line.push_str(", PAUSED (keeps failing)");
        }
        if let Some(s) = h["last_success_ms"].as_u64() {
            line.push_str(&format!(
                ", last success {} ago",
                human_ms(now.saturating_sub(s))
            ));
        }
        if let Some(f) = h["last_failure_ms"].as_u64() {
            line.push_str(&format!(
                ", last failure {} ago ({})",
                human_ms(now.saturating_sub(f)),
                h["last_error"].as_str().unwrap_or("?")
            ));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// One line for a person: where the request stands and why.
pub fn status_summary(st: &serde_json::Value) -> String {
    let state = st["state"].as_str().unwrap_or("?");
    let attempts = st["attempts"].as_u64().unwrap_or(0);
    let max = st["max_attempts"].as_u64().unwrap_or(0);
    let last = match (st["last_status"].as_u64(), st["last_error"].as_str()) {
        (Some(code), _) => format!("HTTP {code} {}", reason(code))
            .trim_end()
            .to_string(),
        (None, Some(err)) => err.to_string(),
        (None, None) => String::new(),
    };
    let tries = |n: u64| {
        if n == 1 {
            "1 attempt".to_string()
        } else {
            format!("{n} attempts")
        }
    };
    let summary = batch_summary(st, state, attempts, max).unwrap_or_else(|| match state {
        "waiting" if attempts > 0 => {
            let next = match (st["next_attempt_ms"].as_u64(), now_ms()) {
                (Some(at), Some(now)) => format!(", next in {}", human_ms(at.saturating_sub(now))),
                _ => String::new(),
            };
            let hint = if st["last_status"].as_u64() == Some(501) {
                not_implemented_hint(st["method"].as_str())
            } else {
                String::new()
            };
            format!("retrying: {last} (attempt {attempts} of {max}{next}){hint}")
        }
        "waiting" => "waiting: delayed until its delay_ms".into(),
        "queued" => "queued: not sent yet".into(),
        "in_flight" if attempts > 0 => {
            format!("in flight: attempt {} of {max}, last {last}", attempts + 1)
        }
        "in_flight" => "in flight: first attempt".into(),
        "delivered" => format!("delivered: {last} after {}", tries(attempts)),
        "dead" => format!(
            "dead: {last} after {}; ffclient replay ID sends it again",
            tries(attempts)
        ),
        "expired" => format!(
            "expired: its ttl ran out after {}; last {last}",
            tries(attempts)
        ),
        "cancelled" if last.is_empty() => {
            format!("cancelled: after {}", tries(attempts))
        }
        "cancelled" => format!("cancelled: after {}; last {last}", tries(attempts)),
        other => other.to_string(),
    });
    // A paused host holds its queue: said first, with when it ends.
    match st["host_paused_until_ms"].as_u64() {
        Some(until) if matches!(state, "queued" | "waiting") => {
            let failures = st["host_failures"].as_u64().unwrap_or(0);
            let after = match failures {
                0 => String::new(),
                1 => " after 1 failure".into(),
                n => format!(" after {n} failures"),
            };
            format!("held: host paused until {}{after}; {summary}", clock(until))
        }
        _ => summary,
    }
}

/// `status` of an event of a batching destination, where its batch says
/// more than its state alone.
fn batch_summary(st: &serde_json::Value, state: &str, attempts: u64, max: u64) -> Option<String> {
    let b = st.get("batch").filter(|b| b.is_object())?;
    let id = b["id"].as_str().unwrap_or("?");
    let n = b["events"].as_u64().unwrap_or(0);
    let events = if n == 1 {
        "1 event".to_string()
    } else {
        format!("{n} events")
    };
    let tries = if attempts == 1 {
        "1 attempt".to_string()
    } else {
        format!("{attempts} attempts")
    };
    let status = st["last_status"]
        .as_u64()
        .map(|c| format!("HTTP {c}"))
        .or_else(|| st["last_error"].as_str().map(String::from))
        .unwrap_or_default();
    Some(match (b["state"].as_str()?, state) {
        ("delivered", "delivered") => {
            format!("delivered in a batch of {n} (batch id {id}), {status} after {tries}")
        }
        ("in_flight", _) => format!(
            "in flight: in batch {id} ({events}) on attempt {} of {max}",
            attempts + 1
        ),
        ("held", "waiting") => {
            let next = match (st["next_attempt_ms"].as_u64(), now_ms()) {
                (Some(at), Some(now)) => format!(" in {}", human_ms(at.saturating_sub(now))),
                _ => String::new(),
            };
            format!("retrying: in batch {id} ({events}) after {status}, sent again{next} (attempt {} of {max})", attempts + 1)
        }
        ("held", _) => format!("queued: in batch {id} ({events}), not sent yet"),
        ("waiting", "queued") => "queued: waiting for a batch".into(),
        _ => return None,
    })
}

/// What a 501 says: the server does not take the method that was sent.
/// `python3 -m http.server` (which answers POST with 501) is named only
/// for a POST: for a GET it would send the reader the wrong way.
fn not_implemented_hint(method: Option<&str>) -> String {
    match method {
        Some("POST") => {
            " (the server does not take POST: python3 -m http.server answers POST with 501)".into()
        }
        Some(m) => format!(" (the server does not take {m}: it answers {m} with 501)"),
        None => " (the server does not take this request's method)".into(),
    }
}

/// A UTC time of day: `14:13:07 UTC`.
pub fn clock(at: u64) -> String {
    format!(
        "{:02}:{:02}:{:02} UTC",
        at / 3_600_000 % 24,
        at / 60_000 % 60,
        at / 1000 % 60
    )
}

/// Unix milliseconds now.
pub fn now_ms() -> Option<u64> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// A duration as a person reads it: `850 ms`, `14 s`, `5 min`, `2 h 3 min`.
pub fn human_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=119_999 => format!("{} s", ms / 1000),
        120_000..=7_199_999 => format!("{} min", ms / 60_000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// The reason phrase of common statuses (the client has no HTTP crate).
pub fn reason(code: u64) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        425 => "Too Early",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paused_host_is_said_first_with_the_pause_end() {
        let st = serde_json::json!({"state": "queued", "attempts": 0, "max_attempts": 10,
            "host_paused_until_ms": 51_187_000u64, "host_failures": 5});
        assert_eq!(
            status_summary(&st),
            "held: host paused until 14:13:07 UTC after 5 failures; queued: not sent yet"
        );
    }

    #[test]
    fn the_501_hint_names_the_method_sent_and_http_server_only_for_post() {
        let st = |m: &str| {
            serde_json::json!({"state": "waiting", "attempts": 1, "max_attempts": 10,
            "last_status": 501, "method": m})
        };
        let get = status_summary(&st("GET"));
        assert!(get.contains("does not take GET"), "{get}");
        assert!(!get.contains("http.server"), "{get}");
        let post = status_summary(&st("POST"));
        assert!(
            post.contains("does not take POST: python3 -m http.server"),
            "{post}"
        );
    }

    #[test]
    fn plurals_are_right() {
        let st = serde_json::json!({"connections": 1, "spool": {"mode": "disk", "bytes": 0}});
        assert!(
            stats_text(&st).contains(", 1 connection\n"),
            "{}",
            stats_text(&st)
        );
        let st = serde_json::json!({"connections": 2, "spool": {"mode": "disk", "bytes": 0}});
        assert!(stats_text(&st).contains(", 2 connections\n"));
        assert_eq!(dead_text(&serde_json::json!([])), "no dead letters\n");
    }

    #[test]
    fn stats_say_how_much_of_the_queue_is_paged_out_when_some_is() {
        let st = serde_json::json!({"queued": 5, "paged_out": 3, "in_flight": 1});
        let text = stats_text(&st);
        assert!(
            text.starts_with("queued 5 (3 of them paged out to the spool), in flight 1"),
            "{text}"
        );
        let st = serde_json::json!({"queued": 5, "paged_out": 0, "in_flight": 1});
        assert!(stats_text(&st).starts_with("queued 5, in flight 1"));
    }
}
