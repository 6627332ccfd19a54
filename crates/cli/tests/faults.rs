//! Faults short of a death, with real clients (docs/architecture.md §3.5, §3.8, §7): a
//! primary or a clone hangs (`lab stop`/`cont`) or is cut off from its
//! peers (`lab partition`/`heal`) while a consistency checker runs, and the
//! clients never notice beyond a pause.
//!
//! - the leader hangs for three election timeouts: a new primary is
//!   elected, exactly one node holds the VIP, the old leader wakes up as a
//!   clone in the new term and catches up, the replicas converge;
//! - a follower hangs, or is cut off, for 1.5 s: nothing moves (pre-vote:
//!   same primary, same term);
//! - the leader is cut off from its peers while its clients still reach it:
//!   it stops releasing client data and steps down within about a second
//!   (check-quorum), the majority elects a new primary that serves the same
//!   clients (gratuitous ARP), and after `heal` the old leader is a clone.
//!
//! Every case: no checker error, no reset seen by a client, equal state
//! hashes at the end. Needs root; runs in CI; fails, never skips.

use std::time::{Duration, Instant};
mod common;

use common::*;
use tandem_lab::{Lab, LabGuard, ServiceKind};
use tandem_node::report::NodeReport;

const CONNECTIONS: usize = 8;

fn cluster(case: &str) -> LabGuard {
    cluster_of("ft", case, ServiceKind::Kv)
}

/// The nodes whose namespace has the VIP assigned, from the kernel
/// (`ip -n NS -o addr show`).
fn vip_holders(lab: &Lab) -> Vec<u32> {
    let needle = format!(" {}/", lab.vip());
    lab.node_ids()
        .into_iter()
        .filter(|id| {
            let ns = lab.node_netns(*id).expect("node namespace");
            let out = std::process::Command::new("ip")
                .args(["-n", ns, "-o", "addr", "show"])
                .output()
                .expect("ip addr show");
            assert!(out.status.success(), "ip -n {ns} -o addr show failed");
            String::from_utf8_lossy(&out.stdout).contains(&needle)
        })
        .collect()
}

/// A deposed primary fenced itself (docs/architecture.md §3.5 step 6): no VIP, and its
/// sockets on VIP:port closed (silently) in its kernel too.
fn assert_deposed(lab: &Lab, id: u32, why: &str) {
    let r = must_report(lab, id, why);
    if r.role == "primary" || r.service.holds_vip || r.service.sockets != 0 {
        fail(
            lab,
            &format!(
                "{why}: deposed node {id} reports role {} holds_vip {} sockets {}",
                r.role, r.service.holds_vip, r.service.sockets
            ),
        );
    }
    let left = vip_sockets(lab, id);
    if !left.is_empty() {
        fail(
            lab,
            &format!("{why}: deposed node {id} still has sockets on the VIP: {left:#?}"),
        );
    }
}

/// Waits until `id` is a clone of the current term, caught up to within
/// 1000 entries of `primary`'s commit index; returns that report.
fn wait_clone_of(lab: &Lab, id: u32, primary: u32, limit: Duration, why: &str) -> NodeReport {
    wait_for(
        lab,
        limit,
        &format!("{why}: node {id} a caught-up clone"),
        || {
            let p = node_report(lab, primary)?;
            let r = node_report(lab, id)?;
            (r.role == "clone"
                && r.term == p.term
                && r.leader == Some(p.slot)
                && p.commit_index.saturating_sub(r.applied_index) < 1000)
                .then_some(r)
        },
    )
}

/// Exactly one node holds the VIP, and it is `primary`: by the kernel, by
/// the daemons' own reports and by the lab's status.
fn assert_sole_vip_holder(lab: &Lab, primary: u32, why: &str) {
    let holders = vip_holders(lab);
    // The primary's kernel holds the checkers' connections (so that an
    // empty list elsewhere means something).
    let serving = vip_sockets(lab, primary);
    if serving.len() < CONNECTIONS {
        fail(
            lab,
            &format!("{why}: the primary has only {serving:#?} on the VIP"),
        );
    }
    if holders != vec![primary] {
        fail(
            lab,
            &format!("{why}: VIP held by {holders:?}, expected [{primary}]"),
        );
    }
    for id in lab.node_ids() {
        let r = must_report(lab, id, why);
        let expect = id == primary;
        if r.service.holds_vip != expect || (r.role == "primary") != expect {
            fail(
                lab,
                &format!(
                    "{why}: node {id} reports role {} holds_vip {}",
                    r.role, r.service.holds_vip
                ),
            );
        }
    }
    assert_eq!(leader(lab), Some(primary), "{why}: lab status");
}

#[test]
fn a_hung_leader_is_replaced_and_rejoins_as_a_clone() {
    let started = Instant::now();
    let mut lab = cluster("a");
    let first = wait_healthy(&lab, "start");
    let term_before = must_report(&lab, first, "start").term;
    let rst_before = lab.client_rst_count().unwrap();
    let checkers = Checkers::start(&lab, CONNECTIONS);
    std::thread::sleep(Duration::from_millis(1500));

    lab.stop(first).expect("stop the leader");
    let stopped_at = Instant::now();
    let second = wait_for(&lab, Duration::from_secs(5), "a new primary", || {
        leader(&lab).filter(|l| *l != first)
    });
    let elected_after = stopped_at.elapsed();
    let new_term = must_report(&lab, second, "new primary").term;
    assert!(new_term > term_before, "term {term_before} -> {new_term}");
    // Three election timeouts (300 ms each) in all.
    std::thread::sleep(Duration::from_millis(1000).saturating_sub(stopped_at.elapsed()));
    lab.cont(first).expect("continue the old leader");
    let continued_at = Instant::now();

    let old = wait_clone_of(&lab, first, second, Duration::from_secs(10), "after cont");
    let rejoined_after = continued_at.elapsed();
    assert_eq!(
        old.term, new_term,
        "the old leader rejoined in another term"
    );
    assert!(!old.service.holds_vip, "the old leader holds the VIP");
    assert_deposed(&lab, first, "after cont");
    // Waking up, the old leader neither took the VIP back nor disturbed the
    // new primary (pre-vote, check-quorum).
    assert_sole_vip_holder(&lab, second, "after cont");
    assert_eq!(
        must_report(&lab, second, "after cont").term,
        new_term,
        "the term moved after the old leader woke up"
    );
    // The old leader keeps applying what the new primary commits.
    let applied = old.applied_index;
    std::thread::sleep(Duration::from_millis(1000));
    let later = must_report(&lab, first, "catching up");
    assert!(
        later.applied_index > applied,
        "the old leader stopped applying at {applied}"
    );
    assert_eq!(later.role, "clone");

    assert_sole_vip_holder(&lab, second, "end");
    let incrs = finish_checkers(&lab, checkers);
    assert_converged(&lab, rst_before);
    eprintln!(
        "hung leader {first}: node {second} serving {elected_after:?} after the stop; \
         old leader a caught-up clone {rejoined_after:?} after cont; {incrs} INCRs checked; \
         {:?} in all",
        started.elapsed()
    );
}

/// A follower suffers `fault` for 1.5 s, then `undo`: the primary, its term
/// and the VIP never move, and the follower comes back as a clone.
fn a_follower_fault_moves_nothing(
    case: &str,
    fault: fn(&mut Lab, u32) -> Result<tandem_lab::FaultReport, tandem_lab::LabError>,
    undo: fn(&mut Lab, u32) -> Result<tandem_lab::FaultReport, tandem_lab::LabError>,
) {
    let started = Instant::now();
    let mut lab = cluster(case);
    let primary = wait_healthy(&lab, "start");
    let follower = *lab
        .node_ids()
        .iter()
        .find(|id| **id != primary)
        .expect("a follower");
    let before = must_report(&lab, primary, "start");
    let rst_before = lab.client_rst_count().unwrap();
    let checkers = Checkers::start(&lab, CONNECTIONS);
    std::thread::sleep(Duration::from_millis(1000));

    fault(&mut lab, follower).expect("fault on the follower");
    let mut moves = Vec::new();
    let mut watch = |lab: &Lab, until: Instant| {
        while Instant::now() < until {
            let l = leader(lab);
            if l != Some(primary) {
                moves.push(format!("lab leader {l:?}"));
            }
            match node_report(lab, primary) {
                Some(r) if r.role == "primary" && r.term == before.term => {}
                Some(r) => moves.push(format!("node {primary}: {} term {}", r.role, r.term)),
                None => moves.push(format!("node {primary} does not answer")),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    watch(&lab, Instant::now() + Duration::from_millis(1500));
    undo(&mut lab, follower).expect("undo the fault");
    watch(&lab, Instant::now() + Duration::from_millis(1500));
    if !moves.is_empty() {
        fail(&lab, &format!("the primary moved: {moves:?}"));
    }

    let back = wait_clone_of(
        &lab,
        follower,
        primary,
        Duration::from_secs(10),
        "after the fault",
    );
    assert_eq!(back.term, before.term, "the follower's term moved");
    let after = must_report(&lab, primary, "end");
    assert_eq!(after.term, before.term, "the term moved");
    assert_eq!(
        (after.counters.became_primary, after.counters.stepped_down),
        (before.counters.became_primary, before.counters.stepped_down),
        "the primary stepped down and back"
    );
    assert_sole_vip_holder(&lab, primary, "end");
    let incrs = finish_checkers(&lab, checkers);
    assert_converged(&lab, rst_before);
    eprintln!(
        "follower {follower} {case}: primary {primary} term {} unmoved; {incrs} INCRs checked; \
         {:?} in all",
        before.term,
        started.elapsed()
    );
}

#[test]
fn a_hung_follower_moves_nothing() {
    a_follower_fault_moves_nothing("b", Lab::stop, Lab::cont);
}

#[test]
fn a_partitioned_follower_moves_nothing() {
    a_follower_fault_moves_nothing("c", Lab::partition, Lab::heal);
}

#[test]
fn a_partitioned_leader_is_fenced_and_replaced() {
    let started = Instant::now();
    let mut lab = cluster("d");
    let first = wait_healthy(&lab, "start");
    let term_before = must_report(&lab, first, "start").term;
    let rst_before = lab.client_rst_count().unwrap();
    let checkers = Checkers::start(&lab, CONNECTIONS);
    std::thread::sleep(Duration::from_millis(1500));

    lab.partition(first).expect("partition the leader");
    let cut_at = Instant::now();
    // Check-quorum: the old leader gives up the primary role by itself.
    let deposed = wait_for(
        &lab,
        Duration::from_secs(3),
        "the old leader steps down",
        || {
            let r = node_report(&lab, first)?;
            (r.role != "primary").then(|| (cut_at.elapsed(), r.role))
        },
    );
    // The majority elects a new primary, which takes the VIP.
    let second = wait_for(&lab, Duration::from_secs(5), "a new primary", || {
        leader(&lab).filter(|l| *l != first)
    });
    let elected_after = cut_at.elapsed();
    assert!(
        deposed.0 <= Duration::from_millis(1500),
        "the partitioned leader was still primary {:?} after the partition",
        deposed.0
    );
    assert!(
        elected_after <= Duration::from_millis(2500),
        "no new primary serving until {elected_after:?} after the partition"
    );
    let new_term = must_report(&lab, second, "new primary").term;
    assert!(new_term > term_before, "term {term_before} -> {new_term}");

    // From a second after the partition on, the old leader releases no
    // client data, while the new one serves the same clients.
    std::thread::sleep(Duration::from_millis(1000).saturating_sub(cut_at.elapsed()));
    let old_1 = must_report(&lab, first, "partitioned");
    let new_1 = must_report(&lab, second, "new primary");
    std::thread::sleep(Duration::from_millis(1000));
    let old_2 = must_report(&lab, first, "partitioned");
    let new_2 = must_report(&lab, second, "new primary");
    assert_eq!(
        old_2.counters.committed_released, old_1.counters.committed_released,
        "the partitioned old leader released client data"
    );
    assert_ne!(old_2.role, "primary");
    assert!(
        !old_2.service.holds_vip,
        "the partitioned old leader holds the VIP"
    );
    assert!(
        new_2.counters.committed_released > new_1.counters.committed_released,
        "the new primary serves no client ({} released)",
        new_2.counters.committed_released
    );
    assert_sole_vip_holder(&lab, second, "partitioned");
    assert_deposed(&lab, first, "partitioned");

    lab.heal(first).expect("heal");
    let healed_at = Instant::now();
    let old = wait_clone_of(&lab, first, second, Duration::from_secs(10), "after heal");
    let rejoined_after = healed_at.elapsed();
    let now = must_report(&lab, second, "after heal");
    assert_eq!(
        old.term, now.term,
        "the old leader rejoined in another term"
    );
    assert_eq!(now.term, new_term, "the term moved after heal");
    assert_sole_vip_holder(&lab, second, "after heal");
    std::thread::sleep(Duration::from_millis(500));

    let incrs = finish_checkers(&lab, checkers);
    assert_converged(&lab, rst_before);
    eprintln!(
        "partitioned leader {first}: not primary {:?} after the cut (role {}), node {second} \
         serving after {elected_after:?}; clone again {rejoined_after:?} after heal; \
         {incrs} INCRs checked; {:?} in all",
        deposed.0,
        deposed.1,
        started.elapsed()
    );
}
