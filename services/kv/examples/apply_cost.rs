//! kv's own apply throughput: pipelined SET and GET of 100-byte values
//! over 10,000 keys (100 commands per event), through the SDK runtime as a
//! replica runs it; prints commands per second, best of 5. Run it on two
//! builds to compare them (e.g. the keyspace's map types).
//!
//! `cargo run --release -p tandem-service-kv --example apply_cost`

use std::time::Instant;
use tandem_core::sdk::{Action, ConnId, Event, Millis, Runtime};
use tandem_service_kv::Kv;

fn main() {
    let value = "v".repeat(100);
    let batches: Vec<Vec<u8>> = (0..2_000)
        .map(|b| {
            let mut out = Vec::new();
            for i in 0..50 {
                let key = format!("key:{}", (b * 50 + i) * 7919 % 10_000);
                out.extend_from_slice(
                    format!(
                        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n",
                        key.len(),
                        value.len(),
                        key.len()
                    )
                    .as_bytes(),
                );
            }
            out
        })
        .collect();
    let mut best = 0f64;
    for _ in 0..5 {
        let mut rt = Runtime::new(Box::new(Kv::new()), 1);
        let conn = ConnId(1);
        rt.apply(
            1,
            Millis(1_000),
            Event::Opened {
                conn,
                peer: "198.18.0.2:40000".parse().unwrap(),
            },
        );
        let t = Instant::now();
        for (i, batch) in batches.iter().enumerate() {
            let actions = rt.apply(
                i as u64 + 2,
                Millis(1_000),
                Event::Data {
                    conn,
                    bytes: batch.clone(),
                },
            );
            // The client acknowledges what it was sent.
            let sent: usize = actions
                .iter()
                .map(|a| match a {
                    Action::Send { bytes, .. } => bytes.len(),
                    _ => 0,
                })
                .sum();
            rt.output_acked(conn, sent as u64);
        }
        let rate = (batches.len() * 100) as f64 / t.elapsed().as_secs_f64();
        best = best.max(rate);
    }
    println!("{:.0} commands/s (best of 5)", best);
}
