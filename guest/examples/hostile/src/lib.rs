//! A deliberately hostile guest, for the host's tests: it echoes lines and
//! counts them, and on command it misbehaves the ways the host must
//! contain identically on every replica — `LOOP` (never returns: fuel),
//! `BOMB` (allocates without end: the memory bound), `TRAP` (a panic, which
//! is `unreachable` in wasm), `DEEP` (unbounded recursion: the stack bound).
//! `COUNT` answers how many lines it has seen (to show what survived).

use std::collections::BTreeMap;
use tandem_guest::{ConnId, Context, Event, Service};

#[derive(Default)]
struct Hostile {
    partial: BTreeMap<ConnId, Vec<u8>>,
    lines: u64,
    hoard: Vec<Vec<u8>>,
}

/// Recursion that only a stack limit stops. Its values stay in wasm locals
/// (nothing address-taken, so the shadow stack in linear memory is not
/// what overflows), and rotate-then-xor keeps LLVM from turning it into a
/// loop.
#[inline(never)]
fn deep(n: u64) -> u64 {
    // Never reached: the stack runs out long before.
    if n == u64::MAX {
        return 0;
    }
    deep(n + 1).rotate_left(1) ^ n
}

impl Service for Hostile {
    fn on_event(&mut self, ctx: &mut Context, event: Event) {
        match event {
            Event::Opened { conn, .. } => {
                self.partial.insert(conn, Vec::new());
            }
            Event::Data { conn, bytes } => {
                let mut lines = Vec::new();
                {
                    let buf = self.partial.entry(conn).or_default();
                    buf.extend_from_slice(&bytes);
                    while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=nl).collect();
                        lines.push(line);
                    }
                }
                for line in lines {
                    self.lines += 1;
                    match line.trim_ascii_end() {
                        b"LOOP" => {
                            let mut x: u64 = 1;
                            loop {
                                x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(1));
                            }
                        }
                        b"BOMB" => loop {
                            // Zeroed: fresh pages need no writes, so the bound hit is
                            // memory, not fuel.
                            self.hoard.push(vec![0u8; 1 << 20]);
                        },
                        b"TRAP" => panic!("asked to trap"),
                        b"DEEP" => {
                            let v = deep(0);
                            ctx.send(conn, &v.to_le_bytes());
                        }
                        b"COUNT" => {
                            let reply = format!("{}\n", self.lines);
                            ctx.send(conn, reply.as_bytes());
                        }
                        _ => {
                            ctx.send(conn, &line);
                        }
                    }
                }
            }
            Event::PeerClosed { conn } => {
                self.partial.remove(&conn);
                ctx.shutdown(conn);
            }
            Event::Reset { conn } => {
                self.partial.remove(&conn);
            }
            Event::Timer { .. } => {}
        }
    }
}

tandem_guest::export_service!(Hostile);
