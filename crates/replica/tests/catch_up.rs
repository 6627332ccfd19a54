//! A follower back from a partition is caught up in bounded steps: no single
//! `ready` of the leader carries more than the inflight window's worth of
//! log to it (sealing 13.7 MB in one `ready` once stalled a lab leader past
//! the election timeout, and a healthy follower elected itself), and the
//! follower still catches up.
//!
//! The network here delivers in rounds, as a daemon's loop reads: each
//! round every node ticks, reads everything sent to it since its last
//! round, then hands out its `ready`s until it has none.

use std::collections::BTreeMap;

use tandem_replica::{ClusterKey, Config, NodeId, Replica, StateRole};

struct Cluster {
    nodes: BTreeMap<u16, Replica>,
    /// Envelopes waiting for their destination's next round.
    inbox: BTreeMap<u16, Vec<Vec<u8>>>,
    cut: Option<u16>,
    /// What was sent across the cut: a partition drops packets, but the
    /// peers' TCP connections retransmit them once it heals.
    held: BTreeMap<u16, Vec<Vec<u8>>>,
    /// Largest sealed bytes one `ready` of any node sent to one peer.
    largest_ready_to_one_peer: usize,
}

impl Cluster {
    fn new() -> Self {
        let key = ClusterKey::from_secret(b"catch-up test cluster secret, 32").unwrap();
        let slots = vec![1, 2, 3];
        let mut nodes = BTreeMap::new();
        for &s in &slots {
            let mut cfg = Config::new(NodeId::new(s, 1), slots.clone());
            cfg.seed = u64::from(s) * 7919;
            nodes.insert(s, Replica::new(cfg, key.clone()).unwrap());
        }
        Cluster {
            nodes,
            inbox: BTreeMap::new(),
            cut: None,
            held: BTreeMap::new(),
            largest_ready_to_one_peer: 0,
        }
    }

    fn round(&mut self) {
        let slots: Vec<u16> = self.nodes.keys().copied().collect();
        for slot in slots {
            let r = self.nodes.get_mut(&slot).unwrap();
            r.tick();
            for bytes in self.inbox.remove(&slot).unwrap_or_default() {
                let _ = r.receive(&bytes);
            }
            while r.has_ready() {
                let out = r.ready();
                let mut per_peer: BTreeMap<u16, usize> = BTreeMap::new();
                for (to, bytes) in out.messages {
                    *per_peer.entry(to.slot).or_default() += bytes.len();
                    let cut = self.cut.is_some_and(|c| c == slot || c == to.slot);
                    let queue = if cut { &mut self.held } else { &mut self.inbox };
                    queue.entry(to.slot).or_default().push(bytes);
                }
                let largest = per_peer.values().copied().max().unwrap_or(0);
                self.largest_ready_to_one_peer = self.largest_ready_to_one_peer.max(largest);
                r.advance();
            }
        }
    }

    fn leader(&self) -> Option<u16> {
        self.nodes
            .iter()
            .find(|(_, r)| r.role() == StateRole::Leader)
            .map(|(s, _)| *s)
    }
}

/// Elects a leader, cuts `victim(leader)` off, has the side with a quorum
/// commit 48 MiB (more than ten windows) while `divergent` proposals go to
/// the old leader if it was the one cut off, heals, and checks the catch-up.
fn cut_commit_heal(cut_the_leader: bool) {
    let mut c = Cluster::new();
    for _ in 0..200 {
        c.round();
        if c.leader().is_some() {
            break;
        }
    }
    let first = c.leader().expect("a leader within 200 rounds");
    let behind = if cut_the_leader {
        first
    } else if first == 3 {
        2
    } else {
        3
    };
    c.cut = Some(behind);
    let payload = vec![0x5a; 32 << 10];
    if cut_the_leader {
        // The old leader appends what its clients send until check-quorum
        // deposes it: a tail the others never see.
        for _ in 0..64 {
            let r = c.nodes.get_mut(&first).unwrap();
            if r.role() == StateRole::Leader {
                let _ = r.propose(payload.clone());
            }
            c.round();
        }
    }
    let mut leader = None;
    for _ in 0..400 {
        c.round();
        leader = c.leader().filter(|l| *l != behind);
        if leader.is_some() {
            break;
        }
    }
    let leader = leader.expect("the connected side elects a leader");
    for _ in 0..1536 {
        c.nodes
            .get_mut(&leader)
            .unwrap()
            .propose(payload.clone())
            .expect("the leader proposes");
        c.round();
    }
    for _ in 0..50 {
        c.round();
    }
    assert_eq!(c.leader(), Some(leader), "the leader changed while cut off");
    let commit = c.nodes[&leader].status().commit;
    assert!(c.nodes[&behind].applied() + 1000 < commit);

    c.largest_ready_to_one_peer = 0;
    c.cut = None;
    for (to, mut held) in std::mem::take(&mut c.held) {
        c.inbox.entry(to).or_default().append(&mut held);
    }
    let window = {
        let cfg = c.nodes[&leader].config();
        cfg.max_inflight_msgs * cfg.max_size_per_msg as usize
    };
    let mut rounds = 0;
    while c.nodes[&behind].applied() < commit {
        c.round();
        rounds += 1;
        assert!(
            rounds < 2000,
            "not caught up: applied {} of {commit}",
            c.nodes[&behind].applied()
        );
    }
    assert_eq!(c.leader(), Some(leader), "leadership moved during catch-up");
    // One more append's worth of slack: the budget admits whole messages.
    let bound = window + (c.nodes[&leader].config().max_size_per_msg as usize) + (64 << 10);
    eprintln!(
        "caught up 48 MiB in {rounds} rounds; largest ready to one peer {} KiB (bound {} KiB); \
         {} appends deferred, {} heartbeat answers merged",
        c.largest_ready_to_one_peer >> 10,
        bound >> 10,
        c.nodes[&leader].appends_deferred(),
        c.nodes[&leader].heartbeat_answers_merged()
    );
    assert!(
        c.largest_ready_to_one_peer <= bound,
        "one ready carried {} bytes to one follower (bound {bound})",
        c.largest_ready_to_one_peer
    );
}

#[test]
fn a_healed_follower_is_caught_up_in_window_sized_readys() {
    cut_commit_heal(false);
}

#[test]
fn a_healed_old_leader_with_a_divergent_tail_is_caught_up_in_window_sized_readys() {
    cut_commit_heal(true);
}
