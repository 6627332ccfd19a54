//! What the bounds cost on the apply path: the same logged kv workload
//! (50 clients, each entry a pipelined SET + GET of 100-byte values from 10
//! clients, every client acknowledging what it was sent) applied by a
//! group with the default [`Limits`] and by one with no output cap and no
//! memory budget, interleaved five times; prints entries per second of
//! each and their ratio (measured in the same run).
//!
//! `cargo run --release -p tandem-node --example bounds_cost`

use std::net::Ipv4Addr;
use std::time::Instant;

use tandem_core::sdk::Limits;
use tandem_core::shadow::ShadowConfig;
use tandem_node::group::{Item, LogEntry, ServiceGroup};
use tandem_service_kv::Kv;
use tandem_wire::{
    IpRepr, IpTcpRepr, Ipv4Repr, SeqNumber, TcpFlags, TcpOptionSet, TcpRepr, Timestamps,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENTS: u16 = 50;
const ENTRIES: usize = 20_000;

fn packet(port: u16, from_server: bool, flags: TcpFlags, seq: u32, ack: u32, data: &[u8]) -> Item {
    let (src, dst, sp, dp) = if from_server {
        (VIP, CLIENT, 6379, port)
    } else {
        (CLIENT, VIP, port, 6379)
    };
    let mut options = TcpOptionSet::default();
    if flags.contains(TcpFlags::SYN) {
        options.mss = Some(1460);
        options.window_scale = Some(7);
    }
    options.timestamps = Some(Timestamps { tsval: 1, tsecr: 0 });
    let repr = IpTcpRepr {
        ip: IpRepr::V4(Ipv4Repr::tcp(src, dst)),
        tcp: TcpRepr {
            src_port: sp,
            dst_port: dp,
            seq_number: SeqNumber(seq),
            ack_number: SeqNumber(ack),
            flags,
            window_len: 500,
            urgent_at: 0,
            options,
            payload: data,
        },
    };
    Item::Packet {
        from_server,
        bytes: repr.to_bytes().expect("a packet"),
    }
}

/// The whole log. The clients never acknowledge replies: each receives
/// about 0.5 MB in all, under the input throttle's 4 MiB and the 32 MiB
/// cap, so nothing is held back or reset and both groups do the same work.
fn workload() -> Vec<LogEntry> {
    let mut log = Vec::new();
    let mut sent = vec![0u32; CLIENTS as usize];
    let port = |c: usize| 20_000 + c as u16;
    for c in 0..CLIENTS as usize {
        let items = vec![
            packet(port(c), false, TcpFlags::SYN, 0, 0, &[]),
            packet(port(c), true, TcpFlags::SYN | TcpFlags::ACK, 0, 1, &[]),
            packet(port(c), false, TcpFlags::ACK, 1, 1, &[]),
        ];
        log.push(LogEntry {
            timestamp_ms: 1,
            items,
        });
    }
    let value = "v".repeat(100);
    for e in 0..ENTRIES {
        let mut items = Vec::new();
        for k in 0..10 {
            let c = (e * 10 + k) % CLIENTS as usize;
            let req = format!(
                "*3\r\n$3\r\nSET\r\n$4\r\nk{c:03}\r\n$100\r\n{value}\r\n*2\r\n$3\r\nGET\r\n$4\r\nk{c:03}\r\n"
            );
            items.push(packet(
                port(c),
                false,
                TcpFlags::ACK | TcpFlags::PSH,
                1 + sent[c],
                1,
                req.as_bytes(),
            ));
            sent[c] += req.len() as u32;
        }
        log.push(LogEntry {
            timestamp_ms: 1,
            items,
        });
    }
    log
}

fn run(log: &[LogEntry], limits: Limits) -> f64 {
    let mut g =
        ServiceGroup::new(Box::new(Kv::new()), ShadowConfig::default(), 1).with_limits(limits);
    let start = Instant::now();
    for (i, entry) in log.iter().enumerate() {
        std::hint::black_box(g.apply(i as u64 + 1, entry));
    }
    log.len() as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let log = workload();
    let mut bounded = Vec::new();
    let mut unbounded = Vec::new();
    let sanity = {
        let mut g = ServiceGroup::new(Box::new(Kv::new()), ShadowConfig::default(), 1)
            .with_limits(Limits::default());
        for (i, entry) in log.iter().enumerate() {
            g.apply(i as u64 + 1, entry);
        }
        (g.output_overflows(), g.stats().opened, g.memory())
    };
    println!("bounded run: {sanity:?}");
    for _ in 0..5 {
        bounded.push(run(&log, Limits::default()));
        unbounded.push(run(&log, Limits::unbounded()));
    }
    bounded.sort_by(f64::total_cmp);
    unbounded.sort_by(f64::total_cmp);
    let (b, u) = (bounded[2], unbounded[2]);
    println!(
        "entries/s (median of 5, 10 requests pairs each): bounded {b:.0}, unbounded {u:.0}, ratio {:.3}",
        b / u
    );
}
