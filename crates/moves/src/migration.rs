//! Moving live TCP connections, with the virtual IP, from one node to another.
//!
//! A planned move of every connection of one VIP:port, in the order that
//! keeps the client unaware (see docs/kernel-notes.md §2):
//!
//! 1. **lock** the source: its kernel neither receives nor sends VIP:port
//!    segments any more (a socket in repair mode would still ACK data);
//! 2. **dump** every socket with TCP_REPAIR (they stay in repair mode);
//! 3. **transfer** the images (serialised as they would cross the network);
//! 4. **restore** every socket on the target, still in repair mode and
//!    silent — possible before the VIP is there, thanks to `IP_TRANSPARENT` —
//!    and close the source's sockets silently (no FIN, no RST);
//! 5. **remove the VIP** from the source and **re-inject** what the lock
//!    held into the restored sockets;
//! 6. **add the VIP** on the target, **announce** it by gratuitous ARP, and
//!    only then let the restored sockets **go live** (leave repair mode and
//!    send their never-sent bytes), so their first segments reach a client
//!    that already answers to the target;
//! 7. **unlock** the source, in the background ([`Moved::wait_unlocked`]).
//!
//! Segments the client sends while frozen are held by the lock (with
//! [`MoveSpec::hold_queue`]) and their bytes appended to the restored
//! sockets before they go live; without it they are dropped and the client
//! retransmits them to the target. Nothing is lost either way. If the target
//! cannot restore a connection, the move is rolled back: the source's
//! sockets, never closed, leave repair mode and the VIP goes back there.
//!
//! Precondition: whatever owns the sockets (a server process) is frozen
//! (SIGSTOP) or otherwise not reading or writing them during the move; bytes
//! written into a socket after its dump would not be in the image.

use crate::site::{HeldPacket, Site, SiteError};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};
use tandem_core::{SocketImage, TcpState};
use tandem_sys::arp::GarpSchedule;
use tandem_sys::netlock::{NetLock, NetLockError};
use tandem_sys::process::{HeldSocket, ProcessError};
use tandem_sys::tcp_repair::{self, Prepared, RepairError, RestoreOptions};

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("locking {vip}:{port} on {site}: {source}")]
    Lock {
        site: String,
        vip: Ipv4Addr,
        port: u16,
        #[source]
        source: NetLockError,
    },
    #[error("dumping the connection from {peer}: {source} (the move was abandoned; connections stay on the source)")]
    Dump {
        peer: String,
        #[source]
        source: RepairError,
    },
    #[error("closing a dumped socket silently: {0}")]
    Close(#[source] RepairError),
    #[error("a moved connection could not leave repair mode on the target: {0}")]
    GoLive(#[source] RepairError),
    #[error("appending held client bytes to a restored socket: {0}")]
    Reinject(#[source] RepairError),
    #[error("the images did not survive serialisation: {0}")]
    Transfer(String),
    #[error(
        "restoring on the target failed ({cause}); every connection was rebuilt on the source"
    )]
    RolledBack {
        cause: String,
        /// The connections, alive again on the source, in the order given.
        sockets: Vec<OwnedFd>,
    },
    #[error("restoring on the target failed ({cause}) and so did the roll-back to the source: {rollback}")]
    Lost { cause: String, rollback: String },
    #[error(transparent)]
    Site(#[from] SiteError),
}

/// What to move.
#[derive(Debug, Clone, Copy)]
pub struct MoveSpec {
    pub vip: Ipv4Addr,
    pub prefix_len: u8,
    pub port: u16,
    pub garp: GarpSchedule,
    /// With an NFQUEUE number, the lock holds what clients send while the
    /// connections are frozen, and the move appends those bytes to the
    /// restored sockets: no client waits for a retransmission timeout.
    /// Without, the lock drops them and clients retransmit (≥ 200 ms).
    pub hold_queue: Option<u16>,
}

/// One moved connection, as its image described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionReport {
    pub peer: SocketAddr,
    pub state: TcpState,
    /// Bytes received but not yet read by the server, carried over.
    pub recv_queue: usize,
    /// Bytes sent and not yet acknowledged, carried over as in flight.
    pub unacked: usize,
    /// Bytes written by the server and never sent, carried over.
    pub unsent: usize,
    /// Bytes the client sent while frozen, held by the lock and appended.
    pub reinjected: usize,
}

/// How a move went, phase by phase.
#[derive(Debug, Clone)]
pub struct MoveReport {
    pub connections: Vec<ConnectionReport>,
    /// Size of the serialised images that crossed from source to target.
    pub image_bytes: usize,
    /// Duration of each phase, in order.
    pub phases: Vec<(&'static str, Duration)>,
    /// When the source was locked.
    pub frozen_at: Instant,
    /// When the target announced the VIP: from here clients reach the
    /// restored connections.
    pub live_at: Instant,
}

impl MoveReport {
    /// How long the connections could not be reached.
    pub fn frozen_for(&self) -> Duration {
        self.live_at - self.frozen_at
    }

    /// The duration of a named phase.
    pub fn phase(&self, name: &str) -> Option<Duration> {
        self.phases
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| *d)
    }
}

/// The result of a successful move.
pub struct Moved {
    /// The restored connections, in the order they were given, owned by the
    /// caller on the target.
    pub sockets: Vec<OwnedFd>,
    pub report: MoveReport,
    /// The source's unlock, still running when the move returns.
    unlocked: std::sync::mpsc::Receiver<Result<(), MigrationError>>,
}

impl Moved {
    /// Waits until the source is unlocked (its lock chain emptied); call it
    /// after handing the sockets to their new owner.
    pub fn wait_unlocked(&self) -> Result<(), MigrationError> {
        self.unlocked
            .recv()
            .map_err(|_| SiteError::WorkerGone("the source".to_string()))?
    }
}

/// Moves `sockets` (connections of `spec.vip:spec.port` held on `source`)
/// and the VIP to `target`. See the module documentation for the order and
/// the precondition.
pub fn move_connections(
    source: &Site,
    target: &Site,
    spec: &MoveSpec,
    sockets: Vec<OwnedFd>,
) -> Result<Moved, MigrationError> {
    let mut phases = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |name: &'static str, phases: &mut Vec<(&'static str, Duration)>| {
        let now = Instant::now();
        phases.push((name, now - clock));
        clock = now;
    };
    let (vip, port) = (spec.vip, spec.port);
    let lock_error = |site: &Site| {
        let site = site.label().to_string();
        move |source| MigrationError::Lock {
            site,
            vip,
            port,
            source,
        }
    };

    let hold = spec.hold_queue;
    let lock = move || match hold {
        Some(queue) => NetLock::new(None, vip, port).holding_in(queue),
        None => NetLock::new(None, vip, port),
    };
    if let Some(queue) = hold {
        source.start_holding(queue)?;
    }
    let frozen_at = Instant::now();
    source
        .run(move || lock().lock())?
        .map_err(lock_error(source))?;
    lap("lock", &mut phases);

    let images = match dump_all(&sockets, source.parallelism()) {
        Ok(images) => images,
        Err(err) => {
            for socket in &sockets {
                let _ = tcp_repair::leave_repair(socket.as_fd());
            }
            let _ = source.run(move || lock().unlock());
            return Err(err);
        }
    };
    lap("dump", &mut phases);

    // Stands for the network hop: what the target restores is what came off
    // the wire, not the source's values.
    let wire = postcard::to_stdvec(&images).map_err(|e| MigrationError::Transfer(e.to_string()))?;
    let images: Vec<SocketImage> =
        postcard::from_bytes(&wire).map_err(|e| MigrationError::Transfer(e.to_string()))?;
    lap("transfer", &mut phases);

    let mut prepared = match prepare_all(target, &images) {
        Ok(prepared) => prepared,
        Err(cause) => return Err(roll_back(source, spec, sockets, cause)),
    };
    lap("restore", &mut phases);
    // Only now, with every connection rebuilt on the target, do the source's
    // sockets go (until here a failure can hand them back intact); the lock
    // keeps every segment away from them, so closing makes no sound.
    for socket in sockets {
        tcp_repair::close_silently(socket).map_err(MigrationError::Close)?;
    }
    lap("close", &mut phases);
    // The VIP leaves the source only now: until here, what clients send is
    // held (or dropped) by the lock rather than lost in the source's routing.
    source.remove_vip(vip, spec.prefix_len)?;
    lap("remove-vip", &mut phases);
    let mut reinjected = vec![0usize; prepared.len()];
    if let Some(queue) = hold {
        let held = source.drain_held(queue, Duration::from_millis(50))?;
        reinjected = reinject(&mut prepared, &held)?;
        lap("reinject", &mut phases);
    }
    target.add_vip(vip, spec.prefix_len)?;
    lap("add-vip", &mut phases);
    target.announce(vip, spec.garp)?;
    lap("announce", &mut phases);
    // Out of repair mode only now: the window probe and any never-sent
    // bytes reach a client that already sends its answers here.
    let restored = go_live_all(prepared)?;
    lap("go-live", &mut phases);
    let live_at = Instant::now();

    // Off the critical path: emptying a netfilter chain waits for an RCU
    // grace period (~10 ms), and the caller has sockets to hand over first.
    let unlock_error = lock_error(source);
    let unlocked = source.spawn_on(0, move || lock().unlock().map_err(unlock_error))?;

    let connections = images
        .iter()
        .zip(reinjected)
        .map(|(image, reinjected)| ConnectionReport {
            reinjected,
            peer: image.peer,
            state: image.state,
            recv_queue: image.recv_queue.len(),
            unacked: image.unacked().len(),
            unsent: image.unsent().len(),
        })
        .collect();
    Ok(Moved {
        sockets: restored,
        unlocked,
        report: MoveReport {
            connections,
            image_bytes: wire.len(),
            phases,
            frozen_at,
            live_at,
        },
    })
}

/// Dumps every socket, spread over `threads` threads; the first failure wins.
fn dump_all(sockets: &[OwnedFd], threads: usize) -> Result<Vec<SocketImage>, MigrationError> {
    let chunk = sockets.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = sockets
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|socket| {
                            tcp_repair::dump(socket.as_fd()).map_err(|source| {
                                MigrationError::Dump {
                                    peer: peer_of(socket),
                                    source,
                                }
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut images = Vec::with_capacity(sockets.len());
        for handle in handles {
            images.extend(handle.join().expect("dump thread panicked")?);
        }
        Ok(images)
    })
}

/// Appends to each prepared socket the client bytes the lock held that
/// continue its stream (in sequence order, overlaps and duplicates skipped);
/// returns how many bytes each got. A held packet that does not parse, or
/// belongs to no moved connection, is left out: its sender retransmits.
fn reinject(prepared: &mut [Prepared], held: &[HeldPacket]) -> Result<Vec<usize>, MigrationError> {
    use std::collections::BTreeMap;
    use tandem_wire::tcp::{OptionsMode, ParseChecks};

    // (client, server) → the held segments' (seq, payload).
    type Segments<'a> = BTreeMap<(SocketAddr, SocketAddr), Vec<(u32, &'a [u8])>>;
    let mut segments: Segments<'_> = BTreeMap::new();
    for packet in held {
        // The TCP checksum is checked wherever the kernel had not: a
        // corrupted segment must not become stream bytes.
        let checks = ParseChecks {
            verify_checksum: packet.verify_checksum,
            options: OptionsMode::Linux,
        };
        let Ok(repr) = tandem_wire::IpTcpRepr::parse(&packet.bytes, checks) else {
            continue;
        };
        if repr.tcp.payload.is_empty() {
            continue;
        }
        let from = SocketAddr::new(repr.ip.src_addr(), repr.tcp.src_port);
        let to = SocketAddr::new(repr.ip.dst_addr(), repr.tcp.dst_port);
        segments
            .entry((from, to))
            .or_default()
            .push((repr.tcp.seq_number.0, repr.tcp.payload));
    }
    let mut counts = Vec::with_capacity(prepared.len());
    for socket in prepared.iter_mut() {
        let mut appended = 0usize;
        if let Some(segs) = segments.get(&(socket.peer(), socket.local())) {
            // Extend from rcv_nxt while some segment covers it.
            loop {
                let next = socket.rcv_nxt();
                let fresh = segs.iter().find_map(|(seq, payload)| {
                    let offset = next.wrapping_sub(*seq) as usize;
                    (offset < payload.len()).then(|| &payload[offset..])
                });
                let Some(fresh) = fresh else { break };
                socket
                    .append_received(fresh)
                    .map_err(MigrationError::Reinject)?;
                appended += fresh.len();
            }
        }
        counts.push(appended);
    }
    Ok(counts)
}

/// Prepares every image on the target's workers (rebuilt, still in repair
/// mode, silent); on any failure the ones already prepared are dropped
/// (closed silently) and the cause returned.
fn prepare_all(target: &Site, images: &[SocketImage]) -> Result<Vec<Prepared>, String> {
    let workers = target.parallelism();
    let chunk = images.len().div_ceil(workers).max(1);
    let mut pending = Vec::new();
    for (i, part) in images.chunks(chunk).enumerate() {
        let part = part.to_vec();
        let rx = target
            .spawn_on(i, move || {
                part.iter()
                    .map(|image| tcp_repair::prepare(image, &RestoreOptions::default()))
                    .collect::<Vec<_>>()
            })
            .map_err(|e| e.to_string())?;
        pending.push(rx);
    }
    let mut prepared = Vec::with_capacity(images.len());
    let mut failure = None;
    for rx in pending {
        match rx.recv() {
            Ok(results) => {
                for result in results {
                    match result {
                        Ok(socket) => prepared.push(socket),
                        Err(err) => {
                            failure.get_or_insert_with(|| err.to_string());
                        }
                    }
                }
            }
            Err(_) => {
                failure.get_or_insert_with(|| format!("a worker of {} stopped", target.label()));
            }
        }
    }
    match failure {
        None => Ok(prepared),
        Some(cause) => Err(cause),
    }
}

/// Lets every prepared socket go live, in order. A socket that fails here is
/// lost (the source's copy is gone by now); the others carry on.
fn go_live_all(prepared: Vec<Prepared>) -> Result<Vec<OwnedFd>, MigrationError> {
    let mut live = Vec::with_capacity(prepared.len());
    let mut failure = None;
    for socket in prepared {
        match socket.go_live() {
            Ok(fd) => live.push(fd),
            Err(err) => {
                tracing::error!("a moved connection failed to go live: {err}");
                failure.get_or_insert(err);
            }
        }
    }
    match failure {
        None => Ok(live),
        Some(err) => Err(MigrationError::GoLive(err)),
    }
}

/// Gives the still-open source sockets back to normal life (they never left
/// the source kernel: they only sat in repair mode), puts the VIP back and
/// unlocks.
fn roll_back(
    source: &Site,
    spec: &MoveSpec,
    sockets: Vec<OwnedFd>,
    cause: String,
) -> MigrationError {
    let (vip, port) = (spec.vip, spec.port);
    let attempt = (|| -> Result<(), String> {
        for socket in &sockets {
            tcp_repair::leave_repair(socket.as_fd()).map_err(|e| e.to_string())?;
        }
        source
            .add_vip(vip, spec.prefix_len)
            .map_err(|e| e.to_string())?;
        source
            .run(move || NetLock::new(None, vip, port).unlock())
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(())
    })();
    match attempt {
        Ok(()) => {
            tracing::warn!(%cause, "move rolled back to the source");
            MigrationError::RolledBack { cause, sockets }
        }
        Err(rollback) => MigrationError::Lost { cause, rollback },
    }
}

fn peer_of(socket: &OwnedFd) -> String {
    let stream = socket.try_clone().ok().map(std::net::TcpStream::from);
    stream
        .and_then(|s| s.peer_addr().ok())
        .map(|a| a.to_string())
        .unwrap_or_else(|| "an unknown peer".to_string())
}

/// Takes (duplicates) the connected sockets of process `pid` on `local`:
/// what a move of a plain server process starts from.
pub fn take_from_process(
    pid: u32,
    local: SocketAddrV4,
) -> Result<Vec<(HeldSocket, OwnedFd)>, ProcessError> {
    tandem_sys::process::tcp_sockets_of(pid, local)?
        .into_iter()
        .map(|held| Ok((held, tandem_sys::process::take_fd(pid, held.fd)?)))
        .collect()
}
