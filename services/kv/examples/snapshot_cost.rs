//! What taking a snapshot of a big kv state holds the node's event loop up
//! for: the copy (`Runtime::snapshot_taken`, on the loop) against the
//! encoding and hashing (`TakenSnapshot::encode`, on the snapshot thread),
//! and against encoding the whole state on the spot (`Runtime::snapshot`,
//! what a service without a copy-on-write state costs the loop).
//!
//! `cargo run --release -p tandem-service-kv --example snapshot_cost -- [MiB]`
//! (default 256): that many 1 MiB values, then a write after the copy.

use std::time::Instant;
use tandem_core::sdk::{ConnId, Event, Millis, Runtime};
use tandem_service_kv::Kv;

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let mut rt = Runtime::new(Box::new(Kv::new()), 1);
    let conn = ConnId(1);
    let mut index = 0;
    let mut event = |rt: &mut Runtime, e: Event| {
        index += 1;
        rt.apply(index, Millis(1_000), e);
    };
    event(
        &mut rt,
        Event::Opened {
            conn,
            peer: "198.18.0.2:40000".parse().unwrap(),
        },
    );
    let value = vec![b'x'; 1 << 20];
    for i in 0..mib {
        let key = format!("big:{i}");
        let mut req = format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
            key.len(),
            value.len()
        )
        .into_bytes();
        req.extend_from_slice(&value);
        req.extend_from_slice(b"\r\n");
        event(&mut rt, Event::Data { conn, bytes: req });
    }
    let best = |f: &mut dyn FnMut() -> f64| (0..3).map(|_| f()).fold(f64::MAX, f64::min);
    let copy_ms = best(&mut || {
        let t = Instant::now();
        let taken = rt.snapshot_taken();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        drop(taken);
        ms
    });
    let taken = rt.snapshot_taken();
    let t = Instant::now();
    let encoded = taken.encode();
    let encode_ms = t.elapsed().as_secs_f64() * 1e3;
    let whole_ms = best(&mut || {
        let t = Instant::now();
        let bytes = rt.snapshot();
        let hash = rt.state_hash();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(bytes.len(), encoded.len());
        assert_eq!(hash, encoded.state_hash);
        ms
    });
    println!(
        "{mib} MiB of values: copy on the loop {copy_ms:.3} ms; encode + hash off the loop \
         {encode_ms:.0} ms; the whole encoding + hash on the loop {whole_ms:.0} ms \
         (copy / whole = {:.5})",
        copy_ms / whole_ms
    );
}
