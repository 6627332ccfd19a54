//! Failed takeovers in the real daemon (issue 11 items 1 and 5), on 3-node
//! kv labs under the consistency checker:
//!
//! - each takeover step (lease, listen, vip, arp, sockets) armed to fail
//!   once on both clones (`tandem fault`'s admin request), the primary
//!   killed: the clone elected releases what it took, retries after the
//!   backoff and serves — one failed takeover counted, no second one (a
//!   listener, VIP or rebuilt socket left behind would make the retry fail
//!   too), no rebuilt connection lost, the other clone untouched;
//! - a step armed to fail more times than `takeover_retries` allows: the
//!   node gives up, releases everything (no VIP in its namespace, no lease
//!   element, no socket on the VIP) and hands the role to the other clone,
//!   which serves;
//! - the kernel lease element read on the primary (`nft list set`): its
//!   remaining timeout never exceeds the 500 ms lease, and once the primary
//!   is cut off from its peers the element is gone within 500 ms + a
//!   little of the cut.
//!
//! Every case with clients: no checker error (no lost, duplicated or wrong
//! reply), no reset seen by a client, equal state hashes at the end. Needs
//! root; runs in CI; fails, never skips.

use std::time::{Duration, Instant};
mod common;

use common::*;
use tandem_lab::{Lab, LabGuard, ServiceKind};
use tandem_node::admin::{request, AdminReply, AdminRequest};
use tandem_node::faults::TakeoverStep;

const CONNECTIONS: usize = 8;
/// The daemon's defaults (`[supervision]`): retries after a first failure,
/// and the lease.
const TAKEOVER_RETRIES: u32 = 2;
const LEASE: Duration = Duration::from_millis(500);
/// On top of the lease: `nft`'s exec, and the time an acknowledgement sent
/// just before the cut waits for the daemon's loop to read it (the lease is
/// dated from when it is handled). One run on a loaded machine used 91 ms;
/// 250 ms keeps CI steady and still fails the old refresh, which let the
/// element live up to 1.1 s after the last acknowledgement.
const LEASE_SLACK: Duration = Duration::from_millis(250);
/// From the kill of the primary to a new one serving (election ~0.3-0.6
/// s, backoffs of 100 and 200 ms, a handover).
const NEW_PRIMARY_WITHIN: Duration = Duration::from_secs(5);

fn cluster(case: &str) -> LabGuard {
    cluster_of("tk", case, ServiceKind::Kv)
}

/// Arms (or with 0 disarms) `step` on node `id`, as `tandem fault` does.
fn arm(lab: &Lab, id: u32, step: TakeoverStep, times: u32) {
    let path = lab
        .node_admin_socket(id)
        .expect("lab state")
        .expect("admin socket");
    match request(
        &path,
        &AdminRequest::Fault { step, times },
        Duration::from_secs(2),
    ) {
        Ok(AdminReply::Done { .. }) => {}
        other => fail(lab, &format!("arming {step} on node {id}: {other:?}")),
    }
}

/// Whether the VIP is assigned in `id`'s namespace, by the kernel.
fn holds_vip(lab: &Lab, id: u32) -> bool {
    let out = lab
        .exec_output(Some(id), &["ip", "-o", "addr", "show"])
        .expect("ip addr in the node namespace");
    assert!(out.status.success(), "ip addr show failed in node {id}");
    String::from_utf8_lossy(&out.stdout).contains(&format!(" {}/", lab.vip()))
}

/// The lease element of node `id`'s guard table (`tandem_sys::guard`: one
/// `inet` table per VIP), read from the kernel: `Some((timeout, expires))`
/// while the element exists. `nft -j` rounds both to whole seconds, so
/// this reads the text form (`... timeout 500ms expires 472ms ...`).
fn lease_element(lab: &Lab, id: u32) -> Option<(Duration, Duration)> {
    let table = format!("tandem_guard_{:08x}", u32::from(lab.vip()));
    let out = lab
        .exec_output(Some(id), &["nft", "list", "set", "inet", &table, "lease"])
        .expect("nft in the node namespace");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nft list set inet {table} lease failed in node {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let elements = text.lines().find(|l| l.contains("elements = {"))?;
    let words: Vec<&str> = elements.split_whitespace().collect();
    let after = |key: &str| {
        let at = words.iter().position(|w| *w == key)?;
        words
            .get(at + 1)
            .map(|w| nft_duration(w).unwrap_or_else(|| panic!("nft duration {w:?}")))
    };
    let timeout = after("timeout").unwrap_or_else(|| panic!("no timeout in {elements:?}"));
    let expires = after("expires").unwrap_or_else(|| panic!("no expires in {elements:?}"));
    Some((timeout, expires))
}

/// nft's durations: `472ms`, `1s200ms`, `2m`, `1h3m`, `1d`.
fn nft_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim_end_matches(',');
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let ms = match &rest[..unit] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        rest = &rest[unit..];
        total += Duration::from_millis(n * ms);
    }
    Some(total)
}

/// The node serving, if one is: the lab sees the VIP in its namespace
/// (only there) and the daemon reports itself primary — a takeover that is
/// about to fail after adding the VIP is not serving.
fn serving(lab: &Lab) -> Option<u32> {
    let id = leader(lab)?;
    (node_report(lab, id)?.role == "primary").then_some(id)
}

/// The two nodes other than `primary`.
fn clones_of(lab: &Lab, primary: u32) -> (u32, u32) {
    let others: Vec<u32> = lab
        .node_ids()
        .into_iter()
        .filter(|id| *id != primary)
        .collect();
    (others[0], others[1])
}

fn log_of(lab: &Lab, id: u32) -> String {
    let path = lab
        .node_log_path(id)
        .expect("lab state")
        .expect("a daemon log");
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_step_failing_once_is_released_and_retried_on_the_same_node() {
    let started = Instant::now();
    let mut lab = cluster("r");
    let mut primary = wait_healthy(&lab, "start");
    let rst_before = lab.client_rst_count().unwrap();
    let checkers = Checkers::start(&lab, CONNECTIONS);
    std::thread::sleep(Duration::from_millis(1000));
    let mut summary = Vec::new();

    for step in TakeoverStep::ALL {
        let why = format!("step {step}");
        let (a, b) = clones_of(&lab, primary);
        let before_a = must_report(&lab, a, &why);
        let before_b = must_report(&lab, b, &why);
        arm(&lab, a, step, 1);
        arm(&lab, b, step, 1);
        let armed = must_report(&lab, a, &why);
        assert_eq!(
            armed.takeover_faults.get(step.as_str()),
            Some(&1),
            "{why}: status does not show the armed fault"
        );

        lab.kill(primary).expect("kill the primary");
        let killed_at = Instant::now();
        let killed = primary;
        primary = wait_for(
            &lab,
            NEW_PRIMARY_WITHIN,
            &format!("{why}: a new primary"),
            || serving(&lab).filter(|l| *l != killed),
        );
        let serving_after = killed_at.elapsed();
        let (new, other, new_before, other_before) = if primary == a {
            (a, b, &before_a, &before_b)
        } else {
            (b, a, &before_b, &before_a)
        };
        let r = must_report(&lab, new, &why);
        // Failed once, released, retried here and serving: one failure, the
        // fault spent. A listener, VIP or rebuilt socket the release had
        // left behind would have failed the retry (a second failure), or
        // its rebuilding (a restore failure).
        assert_eq!(r.role, "primary", "{why}");
        assert_eq!(
            r.counters.takeovers_failed - new_before.counters.takeovers_failed,
            1,
            "{why}: node {new}'s failed takeovers"
        );
        assert_eq!(
            r.counters.faults_injected - new_before.counters.faults_injected,
            1,
            "{why}: node {new}'s injected faults"
        );
        assert!(
            r.takeover_faults.is_empty(),
            "{why}: {:?}",
            r.takeover_faults
        );
        assert_eq!(
            r.counters.restore_failures, new_before.counters.restore_failures,
            "{why}: a rebuilt connection failed"
        );
        assert!(
            r.counters.connections_restored - new_before.counters.connections_restored
                >= CONNECTIONS as u64,
            "{why}: restored {} connections",
            r.counters.connections_restored - new_before.counters.connections_restored
        );
        let log = log_of(&lab, new);
        for needle in [
            format!("injected fault at the takeover step {step}"),
            "take-over failed".to_string(),
        ] {
            if !log.contains(&needle) {
                fail(&lab, &format!("{why}: node {new}'s log lacks {needle:?}"));
            }
        }
        // The other clone never tried: its fault is still armed.
        let o = must_report(&lab, other, &why);
        assert_eq!(o.takeover_faults.get(step.as_str()), Some(&1), "{why}");
        assert_eq!(
            o.counters.takeovers_failed, other_before.counters.takeovers_failed,
            "{why}: node {other} failed a takeover"
        );
        arm(&lab, other, step, 0);
        // Of the live nodes only the primary holds the VIP.
        assert!(holds_vip(&lab, new), "{why}: node {new} lacks the VIP");
        assert!(!holds_vip(&lab, other), "{why}: node {other} holds the VIP");
        assert!(
            vip_sockets(&lab, other).is_empty(),
            "{why}: node {other} has sockets on the VIP"
        );

        lab.restart(killed).expect("restart the killed node");
        primary = wait_healthy(&lab, &format!("{why}: after the restart"));
        summary.push(format!(
            "{step}: node {new} serving {serving_after:?} after the kill"
        ));
        // Let the checkers run on the new primary before the next kill.
        std::thread::sleep(Duration::from_millis(500));
    }

    let incrs = finish_checkers(&lab, checkers);
    assert_converged(&lab, rst_before);
    eprintln!(
        "each step failed once and retried: {summary:#?}; {incrs} INCRs checked; {:?} in all",
        started.elapsed()
    );
}

#[test]
fn a_step_failing_more_than_the_retries_hands_the_primary_on() {
    let started = Instant::now();
    let mut lab = cluster("h");
    let first = wait_healthy(&lab, "start");
    let (a, b) = clones_of(&lab, first);
    let before = [must_report(&lab, a, "start"), must_report(&lab, b, "start")];
    let rst_before = lab.client_rst_count().unwrap();
    let checkers = Checkers::start(&lab, CONNECTIONS);
    std::thread::sleep(Duration::from_millis(1000));

    // Both clones armed: whichever is elected fails its first attempt and
    // every retry. Once one has failed, the other is disarmed, long before
    // the first gives up (after backoffs of 100 and 200 ms).
    let step = TakeoverStep::Vip;
    let times = TAKEOVER_RETRIES + 1;
    arm(&lab, a, step, times);
    arm(&lab, b, step, times);
    lab.kill(first).expect("kill the primary");
    let killed_at = Instant::now();
    let failed_first = wait_for(&lab, NEW_PRIMARY_WITHIN, "a failed takeover", || {
        [(a, &before[0]), (b, &before[1])]
            .into_iter()
            .find(|(id, was)| {
                node_report(&lab, *id)
                    .is_some_and(|r| r.counters.takeovers_failed > was.counters.takeovers_failed)
            })
            .map(|(id, _)| id)
    });
    let failed_after = killed_at.elapsed();
    let next = if failed_first == a { b } else { a };
    arm(&lab, next, step, 0);
    wait_for(&lab, NEW_PRIMARY_WITHIN, "the other clone serving", || {
        (serving(&lab) == Some(next)).then_some(())
    });
    let serving_after = killed_at.elapsed();
    assert!(
        serving_after <= NEW_PRIMARY_WITHIN,
        "no primary until {serving_after:?} after the kill"
    );

    let was = if failed_first == a {
        &before[0]
    } else {
        &before[1]
    };
    let r = must_report(&lab, failed_first, "gave up");
    assert_eq!(
        r.counters.takeovers_failed - was.counters.takeovers_failed,
        u64::from(times),
        "node {failed_first} gave up after a number of failures other than 1 + retries"
    );
    assert!(r.takeover_faults.is_empty(), "{:?}", r.takeover_faults);
    assert_ne!(r.role, "primary");
    assert!(!r.service.holds_vip, "node {failed_first} reports the VIP");
    assert!(
        r.health.starts_with("unhealthy: take-over failed"),
        "node {failed_first} health {:?}",
        r.health
    );
    // What it took was released, by its kernel: no VIP, no lease element,
    // no socket on the VIP.
    assert!(
        !holds_vip(&lab, failed_first),
        "node {failed_first} still has the VIP"
    );
    assert_eq!(
        lease_element(&lab, failed_first),
        None,
        "node {failed_first} still holds a lease"
    );
    let left = vip_sockets(&lab, failed_first);
    assert!(left.is_empty(), "node {failed_first} kept {left:#?}");
    let n = must_report(&lab, next, "new primary");
    assert_eq!(n.role, "primary");
    assert!(holds_vip(&lab, next), "the new primary lacks the VIP");
    assert!(
        lease_element(&lab, next).is_some(),
        "the new primary has no lease"
    );

    // The clients carry on at the new primary.
    std::thread::sleep(Duration::from_millis(1000));
    let later = must_report(&lab, next, "serving");
    assert!(
        later.counters.committed_released > n.counters.committed_released,
        "the new primary serves no client"
    );
    lab.restart(first).expect("restart the killed node");
    wait_healthy(&lab, "after the restart");
    let incrs = finish_checkers(&lab, checkers);
    assert_converged(&lab, rst_before);
    eprintln!(
        "{step} failing {times} times: node {failed_first} failed {failed_after:?} after the \
         kill, gave up; node {next} serving {serving_after:?} after it; {incrs} INCRs checked; \
         {:?} in all",
        started.elapsed()
    );
}

#[test]
fn the_kernel_lease_never_outlives_the_last_quorum_acknowledgement() {
    let started = Instant::now();
    let mut lab = cluster("l");
    let primary = wait_healthy(&lab, "start");

    // Serving: the element is there, its timeout and what is left of it
    // never more than one lease.
    let mut reads = 0;
    let (mut min_left, mut max_left) = (LEASE, Duration::ZERO);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let Some((timeout, expires)) = lease_element(&lab, primary) else {
            fail(&lab, "the serving primary has no lease element");
        };
        assert!(timeout <= LEASE, "element timeout {timeout:?}");
        assert!(expires <= LEASE, "element expires in {expires:?}");
        (min_left, max_left) = (min_left.min(expires), max_left.max(expires));
        reads += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(reads >= 30, "only {reads} reads");

    // Cut off from its peers (clients still reach it): no acknowledgement
    // can arrive after `cut`, so the element must lapse by cut + lease.
    lab.partition(primary).expect("partition the primary");
    let cut = Instant::now();
    let bound = cut + LEASE + LEASE_SLACK;
    let mut after_cut = Vec::new();
    let gone = loop {
        let element = lease_element(&lab, primary);
        let read = Instant::now();
        match element {
            Some((_, expires)) => {
                // The kernel computed `expires` before `read`.
                if read + expires > bound {
                    fail(
                        &lab,
                        &format!(
                            "{:?} after the cut the element still had {expires:?} to live",
                            read - cut
                        ),
                    );
                }
                after_cut.push((read - cut, expires));
            }
            None => break read - cut,
        }
        if read > bound {
            fail(
                &lab,
                &format!("the element outlived the cut by {:?}", read - cut),
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        gone <= LEASE + LEASE_SLACK,
        "the element was gone only {gone:?} after the cut"
    );
    lab.heal(primary).expect("heal");
    eprintln!(
        "lease: {reads} reads while serving, {min_left:?}..{max_left:?} left; after the cut \
         {after_cut:?} (time since the cut, left), gone {gone:?} after it; {:?} in all",
        started.elapsed()
    );
}

#[test]
fn nft_durations_parse() {
    assert_eq!(nft_duration("472ms"), Some(Duration::from_millis(472)));
    assert_eq!(nft_duration("1s200ms"), Some(Duration::from_millis(1200)));
    assert_eq!(nft_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(nft_duration("5x"), None);
}
