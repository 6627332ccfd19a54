//! The Prometheus endpoint of a running 3-node kv cluster: every node
//! serves `GET /metrics` on its own address, port 9100 (`metrics =
//! "198.18.0.(10+I):9100"` in `[node]` of the lab's configs), scraped here
//! from the client namespace as Prometheus would.
//!
//! - the primary says so (`tandem_role{role="primary"} 1`), the clones too;
//! - entries committed grow on every node after SETs through the VIP, and
//!   the primary measured their commit latency and its peers' lag;
//! - after a kill of the primary, the new one counts a failover (with its
//!   duration) and its role gauge flips from clone to primary.
//!
//! Needs root and redis-tools; runs in CI; fails, never skips.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
mod common;

use common::*;
use tandem_lab::{Lab, ServiceKind};

const METRICS_PORT: u16 = 9100;

/// One scrape of node `id`'s endpoint, from the client namespace: the
/// body of a 200 answer, or why there was none.
fn scrape(lab: &Lab, id: u32) -> Result<String, String> {
    let ip = lab.node_addr(id).map_err(|e| e.to_string())?;
    let addr = SocketAddr::new(ip.into(), METRICS_PORT);
    lab.run_in(None, move || -> Result<String, String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: tandem\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("send: {e}"))?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|e| format!("read: {e}"))?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no end of headers in {answer:?}"))?;
        let status = head.lines().next().unwrap_or_default();
        if status != "HTTP/1.1 200 OK" {
            return Err(format!("status {status:?}"));
        }
        if !head.contains("Content-Type: text/plain; version=0.0.4") {
            return Err(format!("content type in {head:?}"));
        }
        Ok(body.to_string())
    })
    .map_err(|e| e.to_string())?
}

/// The value of the series `name` whose labels include all of `labels`
/// (the first such series), if there is one.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let has_all = labels.iter().all(|(k, v)| {
                series_labels
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            });
            if has_all {
                value.parse().ok()
            } else {
                None
            }
        })
}

/// Sum over every series of `name` (0 when there is none).
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let series_name = series.split('{').next()?;
            (series_name == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn role(text: &str, role: &str) -> Option<f64> {
    value(text, "tandem_role", &[("role", role)])
}

/// Scrapes node `id` until `check` holds (the daemon updates its gauges
/// periodically), failing with the last scrape after `within`.
fn scrape_until(
    lab: &Lab,
    id: u32,
    within: Duration,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let scraped = scrape(lab, id);
        if let Ok(text) = &scraped {
            if check(text) {
                return text.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {id}: {what} never showed; last scrape: {scraped:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn redis(lab: &Lab, args: &[&str]) {
    let vip = lab.vip().to_string();
    let mut argv = vec!["redis-cli", "-h", vip.as_str(), "-p", "6379"];
    argv.extend_from_slice(args);
    let out = lab.exec_output(None, &argv).expect("redis-cli runs");
    assert!(
        out.status.success(),
        "redis-cli {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_node_serves_metrics_that_follow_commits_and_a_failover() {
    let mut lab = cluster_of("me", "a", ServiceKind::Kv);
    let first = wait_healthy(&lab, "start");
    let ids = lab.node_ids();
    let wait = Duration::from_secs(15);

    // Roles: one primary, two clones, each saying so on its own endpoint.
    let mut before = Vec::new();
    for &id in &ids {
        let want = if id == first { "primary" } else { "clone" };
        let text = scrape_until(&lab, id, wait, &format!("role {want}"), |t| {
            role(t, want) == Some(1.0)
        });
        for other in ["primary", "clone", "candidate"] {
            if other != want {
                assert_eq!(role(&text, other), Some(0.0), "node {id}: {other}");
            }
        }
        assert!(
            value(&text, "tandem_term", &[]).is_some_and(|t| t >= 1.0),
            "node {id}: no term"
        );
        assert_eq!(
            value(&text, "tandem_leader_slot", &[]),
            Some(f64::from(first)),
            "node {id}: leader slot"
        );
        assert!(
            value(&text, "tandem_node_info", &[("slot", &id.to_string())]) == Some(1.0),
            "node {id}: node info"
        );
        for name in [
            "tandem_auth_failures_total",
            "tandem_shadow_mismatches_total",
            "tandem_log_entries",
            "tandem_connections_open",
            "tandem_commit_index",
            "tandem_applied_index",
        ] {
            assert!(
                value(&text, name, &[]).is_some(),
                "node {id}: no {name} in\n{text}"
            );
        }
        before.push((id, total(&text, "tandem_committed_entries_total")));
    }

    // Commits: SETs through the VIP are entries committed on every node.
    for i in 0..20 {
        redis(&lab, &["SET", &format!("k{i}"), "v"]);
    }
    for &(id, committed) in &before {
        scrape_until(&lab, id, wait, "entries committed growing", |t| {
            total(t, "tandem_committed_entries_total") >= committed + 20.0
                && total(t, "tandem_committed_bytes_total") > 0.0
        });
    }
    let text = scrape_until(&lab, first, wait, "peer lag of both peers", |t| {
        ids.iter()
            .filter(|&&id| id != first)
            .all(|id| value(t, "tandem_peer_lag_entries", &[("peer", &id.to_string())]).is_some())
    });
    assert!(
        value(&text, "tandem_commit_latency_seconds_count", &[]).is_some_and(|n| n >= 20.0),
        "the primary measured no commit latency:\n{text}"
    );
    assert_eq!(
        total(&text, "tandem_shadow_mismatches_total"),
        0.0,
        "shadow/kernel mismatches on the primary"
    );

    // Failover: kill the primary; the new one counts it and says primary.
    let failovers_before: Vec<(u32, f64)> = ids
        .iter()
        .filter(|&&id| id != first)
        .map(|&id| {
            let text = scrape(&lab, id).expect("a clone's metrics");
            (id, total(&text, "tandem_failovers_total"))
        })
        .collect();
    lab.kill(first).expect("kill the primary");
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        match leader(&lab) {
            Some(l) if l != first => break l,
            _ => {}
        }
        assert!(Instant::now() < deadline, "no new primary");
        std::thread::sleep(Duration::from_millis(50));
    };
    let was = failovers_before
        .iter()
        .find(|(id, _)| *id == second)
        .map(|(_, n)| *n)
        .expect("the new primary was a clone");
    let text = scrape_until(&lab, second, wait, "the failover counted", |t| {
        role(t, "primary") == Some(1.0)
            && role(t, "clone") == Some(0.0)
            && total(t, "tandem_failovers_total") >= was + 1.0
    });
    assert!(
        value(&text, "tandem_failover_duration_seconds_count", &[]).is_some_and(|n| n >= 1.0),
        "no failover duration:\n{text}"
    );
    assert_eq!(
        value(&text, "tandem_leader_slot", &[]),
        Some(f64::from(second))
    );
    let survivor = ids
        .iter()
        .copied()
        .find(|&id| id != first && id != second)
        .expect("a third node");
    scrape_until(
        &lab,
        survivor,
        wait,
        "the survivor a clone of the new primary",
        |t| {
            role(t, "clone") == Some(1.0)
                && value(t, "tandem_leader_slot", &[]) == Some(f64::from(second))
                && total(t, "tandem_failovers_total")
                    == failovers_before
                        .iter()
                        .find(|(id, _)| *id == survivor)
                        .map_or(0.0, |(_, n)| *n)
        },
    );
    // The service still commits, and the new primary counts it.
    let committed = total(&text, "tandem_committed_entries_total");
    redis(&lab, &["SET", "after", "failover"]);
    scrape_until(&lab, second, wait, "commits after the failover", |t| {
        total(t, "tandem_committed_entries_total") > committed
    });
}

#[test]
fn parses_exposition_lines() {
    let text = "# HELP tandem_role x\n# TYPE tandem_role gauge\n\
                tandem_role{service=\"kv\",role=\"primary\"} 1\n\
                tandem_role{service=\"kv\",role=\"clone\"} 0\n\
                tandem_auth_failures_total 3\n\
                tandem_committed_entries_total{service=\"a\"} 2\n\
                tandem_committed_entries_total{service=\"b\"} 5\n";
    assert_eq!(role(text, "primary"), Some(1.0));
    assert_eq!(role(text, "clone"), Some(0.0));
    assert_eq!(role(text, "learner"), None);
    assert_eq!(value(text, "tandem_auth_failures_total", &[]), Some(3.0));
    assert_eq!(total(text, "tandem_committed_entries_total"), 7.0);
    assert_eq!(total(text, "tandem_failovers_total"), 0.0);
}
