//! contrib/: the Prometheus alert rules pass `promtool check rules`, the
//! Grafana dashboard has its panels and its queries parse (promtool, as
//! recording rules), and every metric name either uses exists in a real
//! scrape of a running ffd that delivered, refused and retried requests.

mod support;

use ffclient::Request;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{wait_until, Daemon, Reply, Sink, T};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn promtool_check_rules(path: &Path) {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(path)
        .output()
        .expect("promtool (Debian package prometheus; .ci/test installs it)");
    assert!(
        out.status.success(),
        "promtool check rules {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `ffd_...` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("ffd_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        names.insert(name);
    }
    names
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("contrib/grafana/ffd.json")).unwrap();
    serde_json::from_str(&text).expect("contrib/grafana/ffd.json is JSON")
}

/// The queries of every panel of the dashboard.
fn dashboard_exprs() -> Vec<String> {
    let mut exprs = Vec::new();
    for panel in dashboard()["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    exprs
}

#[test]
fn the_alert_rules_pass_promtool() {
    promtool_check_rules(&repo().join("contrib/prometheus/ffd-alerts.yml"));
}

#[test]
fn the_dashboard_has_its_panels_and_its_queries_parse() {
    let titles: Vec<String> = dashboard()["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_string())
        .collect();
    for want in [
        "Accepted and finished rates",
        "Pending requests",
        "Oldest pending age, by state",
        "Attempts by result",
        "Hosts paused",
        "ACK and delivery latency quantiles",
        "Spool bytes against its maximum",
    ] {
        assert!(
            titles.iter().any(|t| t == want),
            "no panel {want}: {titles:?}"
        );
    }
    // Each query, with Grafana's variables given values, as a recording
    // rule: promtool parses it as Prometheus would.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs().iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        rules += &format!(
            "      - record: ffd_dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        );
    }
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, rules).unwrap();
    promtool_check_rules(&path);
}

#[test]
fn every_metric_the_rules_and_dashboard_use_is_in_a_real_scrape() {
    let sink = Sink::with(|r, _| match r.path.as_str() {
        "/ok" => Reply::status(200),
        _ => Reply::status(404),
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = Daemon::start(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[delivery]\nbreaker_threshold = 1000\n"
    ));
    d.wait_log("metrics and health endpoint listening", T);
    let mut c = d.client();
    c.send(&Request::get(&sink.url("/ok"))).unwrap();
    c.send(&Request::get(&sink.url("/gone"))).unwrap();
    assert!(c.send_line("{not json").is_err());
    d.wait_stats("one delivered, one dead", T, |s| {
        s["delivered"] == 1 && s["dead"] == 1
    });

    let rules = std::fs::read_to_string(repo().join("contrib/prometheus/ffd-alerts.yml")).unwrap();
    let dash = std::fs::read_to_string(repo().join("contrib/grafana/ffd.json")).unwrap();
    let used: BTreeSet<String> = metric_names(&rules)
        .into_iter()
        .chain(metric_names(&dash))
        .collect();
    assert!(used.len() >= 10, "{used:?}");
    // Attempts are counted just after the request ends: scrape until all
    // are there (a pass never waits long).
    wait_until(
        "every metric of contrib/ in the scrape",
        T,
        Duration::from_millis(50),
        || {
            let scraped = scrape(port);
            let missing: Vec<&String> = used.difference(&scraped).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                "used by contrib/ but not in a scrape of ffd: {missing:?}\nscraped: {scraped:?}"
            ))
            }
        },
    );
}

/// The names of the samples of one scrape of /metrics.
fn scrape(port: u16) -> BTreeSet<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nhost: ffd\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with("ffd_"))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}
