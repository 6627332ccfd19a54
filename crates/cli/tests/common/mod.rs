//! Shared by the lab tests of a running cluster: bringing one up, asking
//! its nodes for their status, waiting for health, and the consistency
//! checker (INCR on its own key and SET/GET of unique values per
//! connection, every reply checked).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_lab::{Lab, LabGuard, LabSpec, ServiceKind};
use tandem_node::admin::{request, AdminReply, AdminRequest};
use tandem_node::report::NodeReport;

/// A 3-node lab of `service`, named after the test case and this process.
pub fn cluster_of(prefix: &str, case: &str, service: ServiceKind) -> LabGuard {
    let spec = LabSpec::named(format!("{prefix}{case}{}", std::process::id() % 10_000))
        .with_nodes(3)
        .with_service(service);
    let daemon = Path::new(env!("CARGO_BIN_EXE_tandem"));
    LabGuard::new(Lab::up_with_daemon(&spec, Some(daemon)).expect("lab up with 3 daemons"))
}

pub fn report(lab: &Lab, id: u32) -> Option<NodeReport> {
    let path = lab.node_admin_socket(id).ok()??;
    match request(&path, &AdminRequest::Status, Duration::from_secs(2)) {
        Ok(AdminReply::Status(report)) => Some(*report),
        _ => None,
    }
}

pub fn leader(lab: &Lab) -> Option<u32> {
    lab.status().leader
}

/// Waits until the cluster has a primary serving and three caught-up
/// voters (after a restart: the new incarnation swapped in).
pub fn wait_healthy(lab: &Lab, why: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reports: Vec<NodeReport> = lab
            .node_ids()
            .iter()
            .filter_map(|id| report(lab, *id))
            .collect();
        let primary = reports.iter().find(|r| r.role == "primary");
        if let Some(p) = primary {
            let healthy = reports.len() == 3
                && reports.iter().all(|r| {
                    r.voters.len() == 3
                        && r.learners.is_empty()
                        && p.commit_index.saturating_sub(r.applied_index) < 1000
                });
            if healthy && leader(lab) == Some(u32::from(p.slot)) {
                return u32::from(p.slot);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{why}: the cluster did not become healthy: {:?}",
            reports
                .iter()
                .map(|r| (
                    r.slot,
                    r.role.clone(),
                    r.applied_index,
                    r.voters.clone(),
                    r.learners.clone()
                ))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until every replica has applied the same index and returns their
/// reports, all taken in that one round: compare fields across replicas
/// from these, never from reports fetched afterwards (a client's ACK applied
/// in between frees output memory on one replica before another).
pub fn settled_reports(lab: &Lab) -> Vec<NodeReport> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reports: Vec<NodeReport> = lab
            .node_ids()
            .iter()
            .filter_map(|id| report(lab, *id))
            .collect();
        if reports.len() == 3
            && reports
                .iter()
                .all(|r| r.applied_index == reports[0].applied_index)
        {
            return reports;
        }
        assert!(Instant::now() < deadline, "replicas never settled");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every replica has applied the same index and returns their
/// state hashes then.
pub fn settled_hashes(lab: &Lab) -> Vec<(u16, u64, String)> {
    settled_reports(lab)
        .iter()
        .map(|r| (r.slot, r.applied_index, r.service.state_hash.clone()))
        .collect()
}

/// One checker connection's history.
#[derive(Default, Debug)]
pub struct Tally {
    pub incrs: u64,
    pub sets: u64,
    pub errors: Vec<String>,
}

pub fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// INCR on its own key and SET/GET of unique values, in a loop, checking
/// every reply, until `stop`.
pub fn checker(addr: SocketAddr, id: usize, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(err) => {
            tally.errors.push(format!("connect: {err}"));
            return tally;
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let key = format!("counter:{id}");
    let mut line = String::new();
    let read_line = |reader: &mut BufReader<TcpStream>, line: &mut String| -> Result<(), String> {
        line.clear();
        match reader.read_line(line) {
            Ok(0) => Err("end of stream (the server closed the connection)".into()),
            Ok(_) => Ok(()),
            Err(err) => Err(format!("read: {err}")),
        }
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        if let Err(err) = writer.write_all(&command(&["INCR", &key])) {
            tally.errors.push(format!("write: {err}"));
            break;
        }
        if let Err(err) = read_line(&mut reader, &mut line) {
            tally.errors.push(format!("INCR #{n}: {err}"));
            break;
        }
        if line != format!(":{n}\r\n") {
            tally.errors.push(format!("INCR #{n} answered {line:?}"));
            break;
        }
        tally.incrs += 1;
        let value = format!("v{id}-{n}");
        let unique = format!("unique:{id}:{}", n % 8);
        if let Err(err) = writer.write_all(
            &[
                command(&["SET", &unique, &value]),
                command(&["GET", &unique]),
            ]
            .concat(),
        ) {
            tally.errors.push(format!("write: {err}"));
            break;
        }
        let mut replies = String::new();
        for _ in 0..3 {
            if let Err(err) = read_line(&mut reader, &mut line) {
                tally.errors.push(format!("SET/GET #{n}: {err}"));
                return tally;
            }
            replies.push_str(&line);
        }
        let expect = format!("+OK\r\n${}\r\n{value}\r\n", value.len());
        if replies != expect {
            tally
                .errors
                .push(format!("SET/GET #{n}: {replies:?}, expected {expect:?}"));
            break;
        }
        tally.sets += 1;
    }
    tally
}

/// `connections` consistency checkers running from the lab's client
/// namespace until [`Checkers::stop`].
pub struct Checkers {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Tally>>,
}

impl Checkers {
    pub fn start(lab: &Lab, connections: usize) -> Checkers {
        let addr = SocketAddr::new(lab.vip().into(), lab.port());
        let stop = Arc::new(AtomicBool::new(false));
        let client_ns = lab.client_netns().to_string();
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // The checkers' threads inherit the client namespace.
                tandem_sys::netns::run_in(&client_ns, move || {
                    let handles: Vec<_> = (0..connections)
                        .map(|id| {
                            let stop = stop.clone();
                            std::thread::spawn(move || checker(addr, id, stop))
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap())
                        .collect::<Vec<Tally>>()
                })
                .expect("client namespace")
            })
        };
        Checkers { stop, handle }
    }

    /// Stops them and returns each connection's tally.
    pub fn stop(self) -> Vec<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

// Shared by the fault tests (faults.rs, takeover_faults.rs).

/// A node's own status (`None` if it does not answer within a second).
pub fn node_report(lab: &Lab, id: u32) -> Option<NodeReport> {
    let path = lab.node_admin_socket(id).ok()??;
    match request(&path, &AdminRequest::Status, Duration::from_secs(1)) {
        Ok(AdminReply::Status(report)) => Some(*report),
        _ => None,
    }
}

pub fn must_report(lab: &Lab, id: u32, why: &str) -> NodeReport {
    node_report(lab, id).unwrap_or_else(|| fail(lab, &format!("{why}: node {id} does not answer")))
}

/// TCP sockets on VIP:port in `id`'s namespace, by the kernel (`ss`).
pub fn vip_sockets(lab: &Lab, id: u32) -> Vec<String> {
    let local = format!("{}:{}", lab.vip(), lab.port());
    let out = lab
        .exec_output(Some(id), &["ss", "-Htan"])
        .expect("ss in the node namespace");
    assert!(out.status.success(), "ss failed in node {id}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some(local.as_str()))
        .map(str::to_string)
        .collect()
}

/// Prints what the nodes logged about roles, serving and trouble, then
/// panics with `why`.
pub fn fail(lab: &Lab, why: &str) -> ! {
    for id in lab.node_ids() {
        if let Ok(Some(path)) = lab.node_log_path(id) {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let kept = std::env::temp_dir().join(format!("tandem-{}-node{id}.log", lab.name()));
            if std::fs::write(&kept, &log).is_ok() {
                eprintln!("node {id}: whole log kept in {}", kept.display());
            }
            for line in log.lines().filter(|l| {
                l.contains("WARN")
                    || l.contains("ERROR")
                    || l.contains("raft role")
                    || l.contains("serving")
                    || l.contains("stepped")
            }) {
                eprintln!("node {id}: {line}");
            }
        }
    }
    panic!("{why}");
}

/// Polls `f` every 20 ms until it gives a value, failing after `limit`.
pub fn wait_for<T>(lab: &Lab, limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            fail(lab, &format!("{what}: not within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the checkers: every connection saw only right answers (each INCR
/// the next integer, each GET the value just SET: nothing lost, nothing
/// applied twice) and made progress.
pub fn finish_checkers(lab: &Lab, checkers: Checkers) -> u64 {
    let tallies = checkers.stop();
    let failed: Vec<String> = tallies
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.errors.is_empty() || t.incrs <= 20)
        .map(|(id, t)| {
            format!(
                "connection {id} after {} INCRs, {} SET/GETs: {:?}",
                t.incrs, t.sets, t.errors
            )
        })
        .collect();
    if !failed.is_empty() {
        fail(lab, &format!("checker: {failed:#?}"));
    }
    tallies.iter().map(|t| t.incrs).sum()
}

/// No reset reached a client, and every replica settles on the same state.
pub fn assert_converged(lab: &Lab, rst_before: u64) {
    assert_eq!(
        lab.client_rst_count().unwrap(),
        rst_before,
        "a client saw a reset"
    );
    let hashes = settled_hashes(lab);
    if !hashes.iter().all(|h| h.2 == hashes[0].2) {
        fail(lab, &format!("replicas diverged: {hashes:?}"));
    }
}
