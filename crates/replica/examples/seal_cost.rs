//! What sealing and opening one replication envelope costs, encrypted and
//! authenticated-only (the benchmark switch), in the same run: the CPU side
//! of "what does encrypting replication cost" (`tandem bench kv
//! --encryption-cost` measures the throughput side).
//!
//! `cargo run --release --example seal_cost -p tandem-replica`
//! Prints medians of 5 runs per body size; a loaded machine inflates both
//! columns alike, so read the ratio and the difference.

use protobuf::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};
use std::time::Instant;
use tandem_replica::envelope::{Body, ClusterKey, Inbox, Keyring, Outbox};
use tandem_replica::NodeId;

const A: NodeId = NodeId {
    slot: 1,
    incarnation: 1,
};
const B: NodeId = NodeId {
    slot: 2,
    incarnation: 1,
};

/// An append from A to B carrying one entry of `size` bytes.
fn append(size: usize) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.from = A.raft_id();
    m.to = B.raft_id();
    m.entries = vec![Entry {
        data: vec![7u8; size].into(),
        ..Default::default()
    }]
    .into();
    m
}

/// Nanoseconds per `f`, over `n` calls.
fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

/// Seal at A and open at B, `n` times.
fn seal_and_open(keys: &Keyring, size: usize, n: u32) -> f64 {
    let mut out = Outbox::new(A, keys.clone());
    let mut inbox = Inbox::new(B, keys.clone());
    let body = Body::Raft(append(size));
    per_call(n, || {
        let sealed = out.seal(B, &body);
        inbox.open(&sealed).expect("a sealed envelope opens");
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let key = ClusterKey::from_secret(&[0x5a; 32]).expect("a 32-byte secret");
    let encrypted = Keyring::from(key.clone());
    let authenticated = Keyring::from(key).unencrypted_for_benchmarks();
    println!("| body | protobuf encode+decode | seal+open, encrypted | seal+open, authenticated only | ratio | difference |");
    println!("|---|---|---|---|---|---|");
    for size in [100usize, 1024, 16384] {
        let n = (20_000_000 / (size + 200)) as u32;
        let message = append(size);
        let proto = per_call(n, || {
            let bytes = message.write_to_bytes().expect("encodes");
            std::hint::black_box(Message::parse_from_bytes(&bytes).expect("decodes"));
        });
        let (mut enc, mut auth) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            enc.push(seal_and_open(&encrypted, size, n));
            auth.push(seal_and_open(&authenticated, size, n));
        }
        let (enc, auth) = (median(enc), median(auth));
        println!(
            "| {size} B | {proto:.0} ns | {enc:.0} ns | {auth:.0} ns | {:.2} | {:+.0} ns |",
            enc / auth,
            enc - auth
        );
    }
}
