//! A single-node kv server on plain sockets: no capture, no replication.
//! For trying the service with `redis-cli` and `redis-benchmark`, and as
//! the "same kv on one node" baseline. It plays the host's role the simple
//! way: sockets become [`Event`]s, batched into log entries with the wall
//! clock as their timestamp, and [`Action`]s go back to the sockets.
//!
//! `cargo run --release -p tandem-service-kv --example kv_server -- 127.0.0.1:6379`

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use tandem_core::sdk::{Action, ConnId, Event, Millis, Runtime};
use tandem_service_kv::Kv;

/// What the socket threads tell the apply loop.
enum Msg {
    Opened(ConnId, TcpStream),
    Event(Event),
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| format!("127.0.0.1:{}", tandem_service_kv::PORT));
    let listener = TcpListener::bind(&addr)?;
    eprintln!("kv_server listening on {addr}");
    let (tx, rx) = mpsc::channel::<Msg>();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let conn = ConnId(n as u64 + 1);
            let _ = stream.set_nodelay(true);
            let (Ok(mut reader), Ok(peer)) = (stream.try_clone(), stream.peer_addr()) else {
                continue;
            };
            let tx = tx.clone();
            if tx.send(Msg::Opened(conn, stream)).is_err()
                || tx.send(Msg::Event(Event::Opened { conn, peer })).is_err()
            {
                return;
            }
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let event = match reader.read(&mut buf) {
                        Ok(0) => Event::PeerClosed { conn },
                        Ok(n) => Event::Data {
                            conn,
                            bytes: buf[..n].to_vec(),
                        },
                        Err(_) => Event::Reset { conn },
                    };
                    let last = !matches!(event, Event::Data { .. });
                    if tx.send(Msg::Event(event)).is_err() || last {
                        return;
                    }
                }
            });
        }
    });

    let mut rt = Runtime::new(Box::new(Kv::new()), 0x007a_4de3);
    let mut sockets: BTreeMap<ConnId, TcpStream> = BTreeMap::new();
    let mut index = 0u64;
    while let Ok(first) = rx.recv() {
        // One log entry per batch of whatever has arrived.
        let mut events = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Opened(conn, s) => {
                    sockets.insert(conn, s);
                }
                Msg::Event(e) => events.push(e),
            }
            next = if events.len() < 256 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        index += 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for action in rt.apply_entry(index, Millis(now), events) {
            match action {
                Action::Send { conn, bytes } => {
                    if let Some(s) = sockets.get_mut(&conn) {
                        let _ = s.write_all(&bytes);
                    }
                }
                Action::Close { conn } => {
                    if let Some(s) = sockets.remove(&conn) {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
                Action::Abort { conn } => {
                    if let Some(s) = sockets.remove(&conn) {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
                Action::SetTimer { .. } | Action::CancelTimer { .. } => {}
            }
        }
    }
    Ok(())
}
