//! The kv service on one node with no capture and no replication
//! (`tandem tool kv-server`): the baseline of `tandem bench kv`, and a way
//! to try the service with `redis-cli` or `redis-benchmark`.
//!
//! It plays the host's role the simple way, single-threaded on mio: whatever
//! the sockets produced in one poll becomes one log entry, applied at once
//! with the wall clock as its timestamp.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use tandem_core::sdk::{Action, ConnId, Event, Millis, Runtime};

/// The log's random seed (fixed, as a replicated log's would be).
const KV_SEED: u64 = 0x007a_4de3;
const LISTENER: Token = Token(0);

/// One client socket of the kv server.
struct Client {
    stream: TcpStream,
    /// Output the kernel has not taken yet.
    pending: Vec<u8>,
    /// The client has not sent FIN.
    reading: bool,
    /// The service closed its side: FIN once `pending` is written.
    closing: bool,
    shut: bool,
}

/// Serves the kv service on `listen` until killed: plain sockets, one
/// thread, no capture, no replication. Every poll's worth of socket events
/// (connections opened, bytes read, FINs, resets) is one entry applied to a
/// [`Runtime`] with the wall clock as its timestamp, and the actions go back
/// to the sockets.
pub fn serve(listen: SocketAddr) -> Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let service = tandem_node::services::fresh(tandem_node::config::ServiceKind::Kv);
    let mut rt = Runtime::new(service, KV_SEED);
    let mut clients: BTreeMap<ConnId, Client> = BTreeMap::new();
    let mut next_conn = 1u64;
    let mut index = 0u64;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    // Events found outside a poll (a failed write): applied with the next entry.
    let mut deferred: Vec<Event> = Vec::new();
    eprintln!("kv-server listening on {listen}");
    loop {
        let timeout = if deferred.is_empty() {
            rt.timers()
                .values()
                .map(|t| t.at.0)
                .min()
                .map(|at| Duration::from_millis(at.saturating_sub(wall_ms())))
        } else {
            Some(Duration::ZERO)
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        let mut batch = std::mem::take(&mut deferred);
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, peer)) => {
                            let conn = ConnId(next_conn);
                            next_conn += 1;
                            let _ = stream.set_nodelay(true);
                            poll.registry().register(
                                &mut stream,
                                Token(conn.0 as usize),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            clients.insert(
                                conn,
                                Client {
                                    stream,
                                    pending: Vec::new(),
                                    reading: true,
                                    closing: false,
                                    shut: false,
                                },
                            );
                            batch.push(Event::Opened { conn, peer });
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => {
                            eprintln!("kv-server: accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let conn = ConnId(event.token().0 as u64);
            let Some(client) = clients.get_mut(&conn) else {
                continue;
            };
            if event.is_writable() && !client.pending.is_empty() && !flush(client) {
                drop_client(&mut poll, &mut clients, conn);
                batch.push(Event::Reset { conn });
                continue;
            }
            if !(event.is_readable() || event.is_read_closed() || event.is_error()) {
                continue;
            }
            let Some(client) = clients.get_mut(&conn) else {
                continue;
            };
            let mut gone = false;
            while client.reading {
                match client.stream.read(&mut buf) {
                    Ok(0) => {
                        client.reading = false;
                        batch.push(Event::PeerClosed { conn });
                    }
                    Ok(n) => batch.push(Event::Data {
                        conn,
                        bytes: buf[..n].to_vec(),
                    }),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        gone = true;
                        break;
                    }
                }
            }
            if gone {
                drop_client(&mut poll, &mut clients, conn);
                batch.push(Event::Reset { conn });
            }
        }
        let now = wall_ms();
        for (id, generation) in rt.due_timers(Millis(now)) {
            batch.push(Event::Timer { id, generation });
        }
        if batch.is_empty() {
            continue;
        }
        index += 1;
        let mut touched = Vec::new();
        for action in rt.apply_entry(index, Millis(now), batch) {
            match action {
                Action::Send { conn, bytes } => {
                    if let Some(c) = clients.get_mut(&conn) {
                        c.pending.extend_from_slice(&bytes);
                        touched.push(conn);
                    }
                }
                Action::Close { conn } => {
                    if let Some(c) = clients.get_mut(&conn) {
                        c.closing = true;
                        touched.push(conn);
                    }
                }
                Action::Abort { conn } => {
                    if let Some(c) = clients.get(&conn) {
                        // A reset, not a FIN.
                        let _ = socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
                    }
                    drop_client(&mut poll, &mut clients, conn);
                }
                Action::SetTimer { .. } | Action::CancelTimer { .. } => {}
            }
        }
        touched.dedup();
        for conn in touched {
            let Some(c) = clients.get_mut(&conn) else {
                continue;
            };
            if !flush(c) {
                drop_client(&mut poll, &mut clients, conn);
                deferred.push(Event::Reset { conn });
            }
        }
        // Forget connections closed both ways with nothing left to write.
        let done: Vec<ConnId> = clients
            .iter()
            .filter(|(_, c)| c.shut && !c.reading)
            .map(|(id, _)| *id)
            .collect();
        for conn in done {
            drop_client(&mut poll, &mut clients, conn);
        }
    }
}

/// Writes what the kernel takes of `client`'s pending output, then its FIN
/// if the service closed and everything is written. False if the socket
/// failed.
fn flush(client: &mut Client) -> bool {
    while !client.pending.is_empty() {
        match client.stream.write(&client.pending) {
            Ok(0) => return false,
            Ok(n) => {
                client.pending.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    if client.closing && !client.shut {
        client.shut = true;
        let _ = client.stream.shutdown(Shutdown::Write);
    }
    true
}

fn drop_client(poll: &mut Poll, clients: &mut BTreeMap<ConnId, Client>, conn: ConnId) {
    if let Some(mut c) = clients.remove(&conn) {
        let _ = poll.registry().deregister(&mut c.stream);
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
