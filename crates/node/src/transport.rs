//! The node-to-node replication transport (docs/architecture.md §3.8 "Transport").
//!
//! It moves opaque frames between nodes over TCP. The frames are already
//! sealed (encrypted, authenticated, replay-protected) by the layer above;
//! this module delivers them, reliably while a connection lives, never
//! blocks the daemon's single-threaded mio event loop, and keeps its port
//! safe to expose to strangers (see *Hello* below).
//!
//! # Wire format
//! Each frame is a 4-byte big-endian length followed by that many bytes. A
//! length of zero or above [`TransportConfig::max_frame`] is malformed: the
//! receiver closes that connection and counts a bad frame.
//!
//! # Connections
//! - **Outbound**: one TCP connection per peer, made lazily by the first
//!   [`Transport::send`] (non-blocking connect), `TCP_NODELAY`, and
//!   `TCP_USER_TIMEOUT` so a dead peer's connection breaks fast. Frames wait
//!   in a per-peer queue (bounded by [`TransportConfig::max_queued_bytes`]);
//!   `send` writes as much as the socket takes at once and the rest goes out
//!   on writable events. When the connection breaks (error, EOF, hang-up, or
//!   no write progress for [`TransportConfig::stall_timeout`] with bytes
//!   queued) its queued frames are dropped — Raft retransmits, and a frame
//!   cut in half is discarded by the receiver with the connection — and the
//!   transport reconnects with exponential backoff. Frames sent while a
//!   connect is under way or backing off wait in the queue for the next
//!   attempt, and are dropped if it fails. Connect and disconnect are
//!   logged at info once per state change, never per retry.
//! - **Inbound**: every connection is accepted as a *stranger* and must
//!   say hello first (below). Frames from all authenticated inbound
//!   connections go to the same `received` vector (the sealed frames carry
//!   their own sender). Inbound connections are only read, never written.
//!
//! # Hello: nothing large for strangers
//! The first frame on every connection is a hello
//! ([`tandem_replica::envelope::seal_hello`]): about 60 bytes, sealed with a
//! cluster key, naming the sender (slot, incarnation), the recipient slot and
//! a counter that increases with every hello of the sender's incarnation.
//! Until a stranger's hello has been read and verified, its connection holds
//! at most [`TransportConfig::max_hello`] bytes (read exactly, never more),
//! nothing is hashed but that, and nothing it sends is delivered. A stranger
//! is closed, and counted, when its hello is oversized, empty, or not a hello
//! (`hellos_malformed`), does not verify under any accepted key or comes from
//! a slot that is not a member (`hellos_forged`), is not newer than the last
//! hello accepted from that slot (`hellos_replayed`), or does not arrive
//! within [`TransportConfig::hello_timeout`] (`hello_timeouts`). At most
//! [`TransportConfig::max_unauthenticated`] strangers are kept; a new one
//! evicts the oldest *stranger* (`strangers_evicted`), never an
//! authenticated connection. An authenticated connection replaces any older
//! one from the same slot (the peer reconnected), and at most
//! [`TransportConfig::max_inbound`] are kept (beyond it the one idle longest
//! is closed: `inbound_evicted`). Only then may frames grow up to
//! [`TransportConfig::max_frame`].
//!
//! A hello captured on the wire cannot open a second connection while the
//! receiver lives (its counter is not newer); a receiver that restarted
//! forgot the counters, so a captured hello of a live sender incarnation
//! can be replayed to it once, and only until that sender's next hello —
//! and what such a connection carries still has to pass the envelope
//! layer's keys and replay window.
//!
//! # Fair reading and edge-triggered readiness
//! A connection is read for at most [`TransportConfig::read_budget`] bytes
//! (default 1 MiB) per turn. If the budget runs out before the socket
//! reports `WouldBlock`, the connection is put on a *pending* list, because
//! mio is edge-triggered and will not report that readiness again. Pending connections are read again (one
//! budget each) at the end of every [`Transport::on_event`] and by
//! [`Transport::read_pending`]; the event loop must call `read_pending`
//! after each batch of events while [`Transport::has_pending_reads`] is
//! true, and poll with a zero timeout in that case. Everything else is
//! read or written until `WouldBlock`.
//!
//! # Tokens
//! The transport uses the tokens `[token_base, token_base + 2^20)`: the
//! listener, one per peer slot, and a rolling range for inbound connections.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use tandem_replica::envelope::{open_hello, seal_hello, EnvelopeError, Keyring};
use tandem_replica::NodeId;

/// Number of tokens the transport uses from its base.
pub const TOKEN_SPAN: usize = 1 << 20;

/// Offset of the listener's token.
const LISTENER_OFFSET: usize = 0;
/// Offset of the first outbound token; slot `s` uses `OUTBOUND_FIRST + s`.
const OUTBOUND_FIRST: usize = 1;
/// Offset of the first inbound token.
const INBOUND_FIRST: usize = OUTBOUND_FIRST + (u16::MAX as usize) + 1;
/// Number of inbound tokens (used round-robin).
const INBOUND_SPAN: usize = TOKEN_SPAN - INBOUND_FIRST;
/// Length of the frame header.
const HEADER: usize = 4;
/// Free space kept ahead of each inbound read.
const READ_CHUNK: usize = 64 * 1024;
/// An idle inbound buffer larger than this is shrunk back to `READ_CHUNK`.
const KEEP_BUFFER: usize = 1 << 20;
/// At most this many frames go into one vectored write.
const MAX_IOVECS: usize = 64;
/// Listen backlog.
const BACKLOG: i32 = 1024;
/// Connections accepted per turn of the loop: a connect flood must not
/// keep the loop in `accept` (the rest wait in the backlog for the next
/// turn).
const ACCEPT_BATCH: usize = 64;

/// Settings of a [`Transport`].
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This node's replication address (bound with `SO_REUSEADDR`).
    pub listen: SocketAddr,
    /// Slot -> replication address of every other node.
    pub peers: BTreeMap<u16, SocketAddr>,
    /// Largest frame, in bytes (default 64 MiB). Bigger or empty frames are
    /// malformed: refused by `send`, and fatal to an inbound connection.
    pub max_frame: usize,
    /// Bytes (headers included) queued per outbound peer (default 64 MiB);
    /// a new frame beyond it is dropped and counted. A frame offered to an
    /// empty queue is always accepted.
    pub max_queued_bytes: usize,
    /// Authenticated inbound connections kept at once (default 16; one per
    /// peer is normal); when full, the one idle for the longest is closed to
    /// make room for a newly authenticated one.
    pub max_inbound: usize,
    /// Unauthenticated inbound connections (strangers that have not yet
    /// sent a valid hello) kept at once (default 16); a new one evicts the
    /// oldest stranger, never an authenticated connection.
    pub max_unauthenticated: usize,
    /// How long a stranger has to send its hello (default 2 s).
    pub hello_timeout: Duration,
    /// Largest hello frame accepted, header included (default 512 bytes;
    /// a real one is about 60): all a stranger's connection may buffer.
    pub max_hello: usize,
    /// First reconnect delay (default 20 ms).
    pub reconnect_min: Duration,
    /// Largest reconnect delay (default 1 s).
    pub reconnect_max: Duration,
    /// `TCP_USER_TIMEOUT` of outbound sockets (default 1 s).
    pub user_timeout: Duration,
    /// An outbound connection with bytes queued and no write progress for
    /// this long is closed; a connect that has not completed within it is
    /// abandoned (default 2 s).
    pub stall_timeout: Duration,
    /// Bytes read from one inbound connection per turn before the others
    /// get theirs (default 1 MiB); see the module docs.
    pub read_budget: usize,
}

impl TransportConfig {
    /// The defaults, for `listen` and `peers`.
    pub fn new(listen: SocketAddr, peers: BTreeMap<u16, SocketAddr>) -> Self {
        TransportConfig {
            listen,
            peers,
            max_frame: 64 << 20,
            max_queued_bytes: 64 << 20,
            max_inbound: 16,
            max_unauthenticated: 16,
            hello_timeout: Duration::from_secs(2),
            max_hello: 512,
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_secs(1),
            user_timeout: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(2),
            read_budget: 1 << 20,
        }
    }
}

/// Counters of a [`Transport`], since it was bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Frames completely written to a socket.
    pub frames_sent: u64,
    /// Bytes written to sockets, headers included.
    pub bytes_sent: u64,
    /// Complete frames received.
    pub frames_received: u64,
    /// Bytes read from inbound sockets, headers included.
    pub bytes_received: u64,
    /// Frames refused because the peer's queue was full.
    pub dropped_queue_full: u64,
    /// Frames addressed to a slot that is not a peer.
    pub dropped_unknown_peer: u64,
    /// Frames refused by `send` because empty or larger than `max_frame`.
    pub dropped_invalid: u64,
    /// Queued frames dropped because their connection broke or failed.
    pub dropped_on_disconnect: u64,
    /// Inbound connections closed for a malformed frame length.
    pub bad_frames: u64,
    /// Outbound connections established.
    pub connects: u64,
    /// Outbound connection attempts that failed before being established.
    pub connect_failures: u64,
    /// Established outbound connections that broke.
    pub disconnects: u64,
    /// Inbound connections accepted.
    pub inbound_accepted: u64,
    /// Authenticated inbound connections closed to make room
    /// (`max_inbound`), or replaced by a newer one from the same slot.
    pub inbound_evicted: u64,
    /// Inbound connections open now (authenticated or not).
    pub inbound_open: u64,
    /// Inbound connections not yet authenticated, now.
    pub strangers_open: u64,
    /// Hellos sent on new outbound connections.
    pub hellos_sent: u64,
    /// Inbound connections that proved they hold a cluster key.
    pub inbound_authenticated: u64,
    /// Strangers closed for a hello that is not one: empty, oversized,
    /// truncated by a close, or another kind of frame.
    pub hellos_malformed: u64,
    /// Strangers closed for a hello that does not verify under any
    /// accepted key, or that names a slot that is not a member or another
    /// recipient.
    pub hellos_forged: u64,
    /// Strangers closed for a hello not newer than the last accepted from
    /// its slot (a replay).
    pub hellos_replayed: u64,
    /// Strangers closed for sending no hello within `hello_timeout`.
    pub hello_timeouts: u64,
    /// Strangers closed to make room for a newer one
    /// (`max_unauthenticated`).
    pub strangers_evicted: u64,
}

/// Seals this node's hellos: its identity, its keys, and the counter that
/// makes every hello of this incarnation newer than the last.
struct Hello {
    me: NodeId,
    keys: Keyring,
    counter: u64,
}

impl Hello {
    /// The next hello to `to`, as a frame (length prefix included).
    fn frame(&mut self, to: u16) -> Vec<u8> {
        self.counter += 1;
        let hello = seal_hello(&self.keys, self.me, to, self.counter);
        let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&hello);
        frame
    }
}

/// Frames waiting to be written to one peer.
#[derive(Default)]
struct OutQueue {
    /// Frames, each with its header.
    frames: VecDeque<Vec<u8>>,
    /// Bytes of the first frame already written.
    head_off: usize,
    /// Bytes still to write.
    bytes: usize,
}

impl OutQueue {
    fn push(&mut self, frame: &[u8]) {
        let mut wire = Vec::with_capacity(HEADER + frame.len());
        // `send` checked that the length fits in a u32.
        wire.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        wire.extend_from_slice(frame);
        self.bytes += wire.len();
        self.frames.push_back(wire);
    }

    /// Drops everything; returns how many frames were dropped.
    fn clear(&mut self) -> u64 {
        let n = self.frames.len() as u64;
        self.frames.clear();
        self.head_off = 0;
        self.bytes = 0;
        n
    }

    /// Writes until the queue is empty or the socket would block. Returns
    /// the number of bytes written, or the error that broke the socket.
    fn flush(&mut self, stream: &mut TcpStream, stats: &mut TransportStats) -> io::Result<usize> {
        let mut total = 0;
        while !self.frames.is_empty() {
            let result = {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut n = 0;
                for (i, frame) in self.frames.iter().take(MAX_IOVECS).enumerate() {
                    let part = if i == 0 {
                        &frame[self.head_off..]
                    } else {
                        &frame[..]
                    };
                    slices[i] = IoSlice::new(part);
                    n += 1;
                }
                stream.write_vectored(&slices[..n])
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    total += written;
                    self.advance(written, stats);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    fn advance(&mut self, mut written: usize, stats: &mut TransportStats) {
        stats.bytes_sent += written as u64;
        self.bytes -= written;
        while written > 0 {
            let Some(first) = self.frames.front() else {
                break;
            };
            let left = first.len() - self.head_off;
            if written >= left {
                written -= left;
                self.frames.pop_front();
                self.head_off = 0;
                stats.frames_sent += 1;
            } else {
                self.head_off += written;
                written = 0;
            }
        }
    }
}

/// State of the outbound connection to one peer.
enum Link {
    /// No socket: waiting for a `send` (if `retry_at` is `None`) or for the
    /// backoff to expire.
    Idle,
    /// Non-blocking connect in progress.
    Connecting { stream: TcpStream, since: Instant },
    /// Established.
    Connected { stream: TcpStream, since: Instant },
}

/// One peer and its outbound connection.
struct Peer {
    slot: u16,
    addr: SocketAddr,
    token: Token,
    link: Link,
    queue: OutQueue,
    /// Delay before the next reconnect after a failure.
    backoff: Duration,
    /// When the next reconnect is due, while backing off.
    retry_at: Option<Instant>,
    /// Last write progress, or when bytes were queued to an empty queue.
    last_progress: Instant,
    /// A failure to reach this peer has been logged since it was last up.
    reported_down: bool,
}

/// Why an established outbound connection is closed.
enum Broken {
    Io(io::Error),
    Eof,
    Stalled,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Io(e) => write!(f, "{e}"),
            Broken::Eof => f.write_str("closed by the peer"),
            Broken::Stalled => f.write_str("no write progress"),
        }
    }
}

impl Peer {
    /// Starts a non-blocking connect.
    fn connect(
        &mut self,
        registry: &Registry,
        cfg: &TransportConfig,
        stats: &mut TransportStats,
        now: Instant,
    ) {
        self.retry_at = None;
        match open_outbound(registry, self.addr, self.token, cfg.user_timeout) {
            Ok(stream) => {
                tracing::debug!(peer = self.slot, addr = %self.addr, "connecting");
                self.link = Link::Connecting { stream, since: now };
            }
            Err(e) => self.connect_failed(registry, cfg, stats, now, &e),
        }
    }

    /// Gives up the current attempt (or connection) and schedules a retry.
    fn close_socket(&mut self, registry: &Registry) {
        match std::mem::replace(&mut self.link, Link::Idle) {
            Link::Idle => {}
            Link::Connecting { mut stream, .. } | Link::Connected { mut stream, .. } => {
                let _ = registry.deregister(&mut stream);
            }
        }
    }

    fn schedule_retry(&mut self, cfg: &TransportConfig, now: Instant) {
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(cfg.reconnect_max);
    }

    fn connect_failed(
        &mut self,
        registry: &Registry,
        cfg: &TransportConfig,
        stats: &mut TransportStats,
        now: Instant,
        err: &dyn std::fmt::Display,
    ) {
        self.close_socket(registry);
        stats.connect_failures += 1;
        stats.dropped_on_disconnect += self.queue.clear();
        if self.reported_down {
            tracing::debug!(peer = self.slot, addr = %self.addr, error = %err, "connect failed");
        } else {
            self.reported_down = true;
            tracing::info!(
                peer = self.slot, addr = %self.addr, error = %err,
                "replication peer unreachable; retrying with backoff"
            );
        }
        self.schedule_retry(cfg, now);
    }

    /// The connect completed: says hello first (a fresh socket's send
    /// buffer always takes the ~60 bytes at once), then is up.
    fn established(
        &mut self,
        registry: &Registry,
        cfg: &TransportConfig,
        stats: &mut TransportStats,
        now: Instant,
        hello: &mut Hello,
    ) {
        if let Link::Connecting { mut stream, since } =
            std::mem::replace(&mut self.link, Link::Idle)
        {
            let frame = hello.frame(self.slot);
            match stream.write(&frame) {
                Ok(n) if n == frame.len() => {
                    stats.hellos_sent += 1;
                    stats.bytes_sent += n as u64;
                }
                written => {
                    self.link = Link::Connecting { stream, since };
                    let e = match written {
                        Err(e) => e,
                        Ok(_) => io::Error::new(io::ErrorKind::WriteZero, "hello cut short"),
                    };
                    self.connect_failed(registry, cfg, stats, now, &e);
                    return;
                }
            }
            self.link = Link::Connected { stream, since: now };
            stats.connects += 1;
            self.reported_down = false;
            self.last_progress = now;
            tracing::info!(peer = self.slot, addr = %self.addr, "replication link up");
        }
    }

    fn broken(
        &mut self,
        registry: &Registry,
        cfg: &TransportConfig,
        stats: &mut TransportStats,
        now: Instant,
        why: Broken,
    ) {
        let up_since = match &self.link {
            Link::Connected { since, .. } => *since,
            _ => return,
        };
        self.close_socket(registry);
        stats.disconnects += 1;
        stats.dropped_on_disconnect += self.queue.clear();
        // A connection that lived long is a fresh start; one that breaks
        // right after being made (a peer accepting and closing) keeps
        // backing off, so it neither spins nor floods the log.
        if now.saturating_duration_since(up_since) >= cfg.reconnect_max {
            self.backoff = cfg.reconnect_min;
        }
        // The next failure to reconnect is reported as a new state change.
        self.reported_down = true;
        tracing::info!(peer = self.slot, addr = %self.addr, reason = %why, "replication link down");
        self.schedule_retry(cfg, now);
    }

    /// Writes what the socket takes; on a broken socket, closes it.
    fn flush(
        &mut self,
        registry: &Registry,
        cfg: &TransportConfig,
        stats: &mut TransportStats,
        now: Instant,
    ) {
        let Link::Connected { stream, .. } = &mut self.link else {
            return;
        };
        match self.queue.flush(stream, stats) {
            Ok(0) => {}
            Ok(_) => self.last_progress = now,
            Err(e) => self.broken(registry, cfg, stats, now, Broken::Io(e)),
        }
    }

    fn on_event(
        &mut self,
        registry: &Registry,
        cfg: &TransportConfig,
        stats: &mut TransportStats,
        event: &mio::event::Event,
        hello: &mut Hello,
    ) {
        let now = Instant::now();
        match &mut self.link {
            // A stale event for a socket already closed.
            Link::Idle => {}
            Link::Connecting { stream, .. } => {
                // Events may be spurious: ask the socket itself.
                match stream.take_error() {
                    Ok(Some(e)) | Err(e) => {
                        self.connect_failed(registry, cfg, stats, now, &e);
                        return;
                    }
                    Ok(None) => {}
                }
                match stream.peer_addr() {
                    Ok(_) => {
                        self.established(registry, cfg, stats, now, hello);
                        self.flush(registry, cfg, stats, now);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                        if event.is_error() || event.is_write_closed() {
                            self.connect_failed(registry, cfg, stats, now, &e);
                        }
                    }
                    Err(e) => self.connect_failed(registry, cfg, stats, now, &e),
                }
            }
            Link::Connected { stream, .. } => {
                if let Ok(Some(e)) | Err(e) = stream.take_error() {
                    self.broken(registry, cfg, stats, now, Broken::Io(e));
                    return;
                }
                // The peer never writes on this connection: drain and
                // discard, watching for EOF.
                let mut sink = [0u8; 4096];
                loop {
                    match stream.read(&mut sink) {
                        Ok(0) => {
                            self.broken(registry, cfg, stats, now, Broken::Eof);
                            return;
                        }
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            self.broken(registry, cfg, stats, now, Broken::Io(e));
                            return;
                        }
                    }
                }
                self.flush(registry, cfg, stats, now);
            }
        }
    }

    fn on_timer(
        &mut self,
        registry: &Registry,
        cfg: &TransportConfig,
        stats: &mut TransportStats,
        now: Instant,
    ) {
        match &self.link {
            Link::Idle => {
                if self.retry_at.is_some_and(|at| at <= now) {
                    self.connect(registry, cfg, stats, now);
                }
            }
            Link::Connecting { since, .. } => {
                if now.saturating_duration_since(*since) > cfg.stall_timeout {
                    let e = io::Error::from(io::ErrorKind::TimedOut);
                    self.connect_failed(registry, cfg, stats, now, &e);
                }
            }
            Link::Connected { .. } => {
                if !self.queue.frames.is_empty()
                    && now.saturating_duration_since(self.last_progress) > cfg.stall_timeout
                {
                    self.broken(registry, cfg, stats, now, Broken::Stalled);
                }
            }
        }
    }
}

/// Opens a non-blocking outbound connection, registered for both
/// directions.
fn open_outbound(
    registry: &Registry,
    addr: SocketAddr,
    token: Token,
    user_timeout: Duration,
) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(user_timeout))?;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
    let _ = user_timeout;
    registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
    Ok(stream)
}

/// Whether an inbound connection has said a valid hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Not yet: only its hello is read, into at most `max_hello` bytes.
    Stranger { since: Instant },
    /// Authenticated as this peer slot.
    Peer(u16),
}

/// What reading a stranger's hello gave.
enum HelloRead {
    /// Not all of it has arrived.
    Waiting,
    /// The connection is finished (EOF or error) before a whole hello.
    Closed,
    /// A length that no hello has.
    Bad(usize),
    /// The hello's bytes are `buf[HEADER..HEADER + len]`.
    Complete(usize),
}

/// One accepted connection and its partial frame.
struct Inbound {
    stream: TcpStream,
    peer: SocketAddr,
    gate: Gate,
    /// Received bytes live in `buf[start..filled]`; the rest is free space.
    buf: Vec<u8>,
    start: usize,
    filled: usize,
    last_active: Instant,
}

/// Result of one turn of reading an inbound connection.
enum ReadTurn {
    /// Read until `WouldBlock`.
    Drained,
    /// The budget ran out first: more may be waiting.
    MoreWaiting,
    /// The connection is finished (EOF or error).
    Closed(Option<io::Error>),
    /// A malformed length: the connection must be closed.
    Bad(usize),
}

impl Inbound {
    /// Reads a stranger's hello frame, exactly: never a byte past it, never
    /// more than `max_hello` bytes in all.
    fn read_hello(&mut self, max_hello: usize, stats: &mut TransportStats) -> HelloRead {
        if self.buf.len() < max_hello {
            self.buf.resize(max_hello.max(HEADER + 1), 0);
        }
        loop {
            let want = if self.filled < HEADER {
                HEADER
            } else {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len == 0 || HEADER + len > max_hello {
                    return HelloRead::Bad(len);
                }
                if self.filled == HEADER + len {
                    return HelloRead::Complete(len);
                }
                HEADER + len
            };
            match self.stream.read(&mut self.buf[self.filled..want]) {
                Ok(0) => return HelloRead::Closed,
                Ok(n) => {
                    self.filled += n;
                    stats.bytes_received += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HelloRead::Waiting,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return HelloRead::Closed,
            }
        }
    }

    /// Length of the frame at `start`, if its header is complete.
    fn next_len(&self) -> Option<usize> {
        let avail = &self.buf[self.start..self.filled];
        let header: [u8; HEADER] = avail.get(..HEADER)?.try_into().ok()?;
        Some(u32::from_be_bytes(header) as usize)
    }

    /// Makes room for the next read: at least `READ_CHUNK` bytes, more
    /// while a large frame is arriving.
    fn reserve(&mut self, max_frame: usize) {
        let have = self.filled - self.start;
        let need = match self.next_len() {
            Some(len) if len <= max_frame => HEADER + len - have.min(HEADER + len),
            _ => 0,
        };
        // Grow with the bytes actually received (about doubling), not with
        // the announced length: a peer announcing a 64 MiB frame and
        // sending nothing must not cost 64 MiB.
        let want = need.min(have.max(READ_CHUNK)).max(READ_CHUNK);
        if self.buf.len() - self.filled >= want {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.filled < want {
            self.buf.resize(self.filled + want, 0);
        }
    }

    /// Takes every complete frame out of the buffer.
    fn parse(
        &mut self,
        max_frame: usize,
        received: &mut Vec<Vec<u8>>,
        stats: &mut TransportStats,
    ) -> Result<(), usize> {
        while let Some(len) = self.next_len() {
            if len == 0 || len > max_frame {
                return Err(len);
            }
            if self.filled - self.start < HEADER + len {
                break;
            }
            let body = self.start + HEADER;
            received.push(self.buf[body..body + len].to_vec());
            stats.frames_received += 1;
            self.start = body + len;
        }
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
            if self.buf.len() > KEEP_BUFFER {
                self.buf.truncate(READ_CHUNK);
                self.buf.shrink_to_fit();
            }
        }
        Ok(())
    }

    fn read_turn(
        &mut self,
        max_frame: usize,
        budget: usize,
        received: &mut Vec<Vec<u8>>,
        stats: &mut TransportStats,
    ) -> ReadTurn {
        let mut budget = budget.max(1);
        let mut progressed = false;
        let turn = loop {
            if budget == 0 {
                break ReadTurn::MoreWaiting;
            }
            self.reserve(max_frame);
            let room = (self.buf.len() - self.filled).min(budget);
            match self
                .stream
                .read(&mut self.buf[self.filled..self.filled + room])
            {
                Ok(0) => break ReadTurn::Closed(None),
                Ok(n) => {
                    progressed = true;
                    self.filled += n;
                    budget = budget.saturating_sub(n);
                    stats.bytes_received += n as u64;
                    if let Err(len) = self.parse(max_frame, received, stats) {
                        break ReadTurn::Bad(len);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break ReadTurn::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break ReadTurn::Closed(Some(e)),
            }
        };
        if progressed {
            self.last_active = Instant::now();
        }
        turn
    }
}

/// The replication transport: a listener, one outbound connection per
/// peer, and the accepted inbound connections. See the module docs.
pub struct Transport {
    cfg: TransportConfig,
    token_base: usize,
    listener: TcpListener,
    local_addr: SocketAddr,
    /// An accept failed for lack of resources: retry from `poll_timers`.
    accept_pending: bool,
    /// The accept batch ran out before `WouldBlock`: accept more on the
    /// next turn (like a pending read).
    accept_more: bool,
    hello: Hello,
    /// Per peer slot, the newest (incarnation, counter) of an accepted hello.
    hellos_seen: BTreeMap<u16, (u64, u64)>,
    peers: BTreeMap<u16, Peer>,
    inbound: BTreeMap<Token, Inbound>,
    /// Inbound connections whose read budget ran out before `WouldBlock`.
    pending: BTreeSet<Token>,
    next_inbound: usize,
    stats: TransportStats,
}

impl Transport {
    /// Binds the listener and registers it with `registry`; the transport
    /// uses tokens in `[token_base, token_base + 1<<20)`. `me` and `keys`
    /// seal this node's hellos and check the peers'.
    pub fn bind(
        cfg: TransportConfig,
        me: NodeId,
        keys: Keyring,
        registry: &Registry,
        token_base: usize,
    ) -> io::Result<Self> {
        if token_base.checked_add(TOKEN_SPAN).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "token range overflows",
            ));
        }
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(cfg.listen),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&cfg.listen.into())?;
        socket.listen(BACKLOG)?;
        let mut listener = TcpListener::from_std(socket.into());
        let local_addr = listener.local_addr()?;
        registry.register(
            &mut listener,
            Token(token_base + LISTENER_OFFSET),
            Interest::READABLE,
        )?;
        let now = Instant::now();
        let peers = cfg
            .peers
            .iter()
            .map(|(&slot, &addr)| {
                let peer = Peer {
                    slot,
                    addr,
                    token: Token(token_base + OUTBOUND_FIRST + slot as usize),
                    link: Link::Idle,
                    queue: OutQueue::default(),
                    backoff: cfg.reconnect_min,
                    retry_at: None,
                    last_progress: now,
                    reported_down: false,
                };
                (slot, peer)
            })
            .collect();
        tracing::info!(addr = %local_addr, "replication transport listening");
        Ok(Transport {
            cfg,
            token_base,
            listener,
            local_addr,
            accept_pending: false,
            accept_more: false,
            hello: Hello {
                me,
                keys,
                counter: 0,
            },
            hellos_seen: BTreeMap::new(),
            peers,
            inbound: BTreeMap::new(),
            pending: BTreeSet::new(),
            next_inbound: 0,
            stats: TransportStats::default(),
        })
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the keys hellos are sealed and checked with (a step of a key
    /// rotation). Established connections stay up.
    pub fn set_keys(&mut self, keys: Keyring) {
        self.hello.keys = keys;
    }

    /// Whether `token` belongs to this transport.
    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.token_base && token.0 - self.token_base < TOKEN_SPAN
    }

    /// Queues a frame for a peer and writes as much as possible at once;
    /// the rest goes out on writable events. Never blocks. Connects lazily
    /// (non-blocking) if not connected and not backing off. Frames to an
    /// unknown slot, empty or oversized frames, and frames beyond the
    /// queue limit are dropped and counted.
    pub fn send(&mut self, registry: &Registry, to: u16, frame: &[u8]) {
        let Transport {
            cfg, peers, stats, ..
        } = self;
        let Some(peer) = peers.get_mut(&to) else {
            stats.dropped_unknown_peer += 1;
            return;
        };
        if frame.is_empty() || frame.len() > cfg.max_frame || u32::try_from(frame.len()).is_err() {
            stats.dropped_invalid += 1;
            return;
        }
        let was_empty = peer.queue.frames.is_empty();
        if !was_empty && peer.queue.bytes + HEADER + frame.len() > cfg.max_queued_bytes {
            stats.dropped_queue_full += 1;
            return;
        }
        peer.queue.push(frame);
        let now = Instant::now();
        if was_empty {
            peer.last_progress = now;
        }
        match peer.link {
            Link::Idle if peer.retry_at.is_none() => peer.connect(registry, cfg, stats, now),
            Link::Connected { .. } => peer.flush(registry, cfg, stats, now),
            Link::Idle | Link::Connecting { .. } => {}
        }
    }

    /// Handles one mio event for a token this transport owns. Complete
    /// frames received (from any inbound connection) are appended to
    /// `received`. Also gives one read turn to connections left pending.
    pub fn on_event(
        &mut self,
        registry: &Registry,
        event: &mio::event::Event,
        received: &mut Vec<Vec<u8>>,
    ) {
        let token = event.token();
        if !self.owns(token) {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let offset = token.0 - self.token_base;
        if offset == LISTENER_OFFSET {
            self.accept_all(registry);
        } else if offset < INBOUND_FIRST {
            let slot = (offset - OUTBOUND_FIRST) as u16;
            let Transport {
                cfg,
                peers,
                stats,
                hello,
                ..
            } = self;
            if let Some(peer) = peers.get_mut(&slot) {
                peer.on_event(registry, cfg, stats, event, hello);
            }
        } else {
            self.read_inbound(registry, token, received);
        }
        for t in pending {
            if t != token {
                self.read_inbound(registry, t, received);
            }
        }
    }

    /// True when some inbound connection still has unread bytes: call
    /// [`Transport::read_pending`] soon (poll with a zero timeout).
    pub fn has_pending_reads(&self) -> bool {
        !self.pending.is_empty() || self.accept_more
    }

    /// Gives one read turn to every connection left pending.
    pub fn read_pending(&mut self, registry: &Registry, received: &mut Vec<Vec<u8>>) {
        if self.accept_more {
            self.accept_all(registry);
        }
        for t in std::mem::take(&mut self.pending) {
            self.read_inbound(registry, t, received);
        }
    }

    /// Call every few ms: reconnects whose backoff expired, abandons
    /// connects that take too long, closes outbound connections that made
    /// no write progress with bytes queued for longer than the stall
    /// timeout, retries a failed accept, and closes strangers that did not
    /// say hello in time.
    pub fn poll_timers(&mut self, registry: &Registry, now: Instant) {
        let Transport {
            cfg, peers, stats, ..
        } = self;
        for peer in peers.values_mut() {
            peer.on_timer(registry, cfg, stats, now);
        }
        let late: Vec<Token> = self
            .inbound
            .iter()
            .filter(|(_, c)| match c.gate {
                Gate::Stranger { since } => {
                    now.saturating_duration_since(since) > self.cfg.hello_timeout
                }
                Gate::Peer(_) => false,
            })
            .map(|(&t, _)| t)
            .collect();
        for t in late {
            self.stats.hello_timeouts += 1;
            self.close_inbound(registry, t);
        }
        if self.accept_pending {
            self.accept_all(registry);
        }
    }

    /// The counters.
    pub fn stats(&self) -> TransportStats {
        TransportStats {
            inbound_open: self.inbound.len() as u64,
            strangers_open: self.strangers() as u64,
            ..self.stats
        }
    }

    /// Whether the outbound connection to `slot` is established.
    pub fn connected(&self, slot: u16) -> bool {
        self.peers
            .get(&slot)
            .is_some_and(|p| matches!(p.link, Link::Connected { .. }))
    }

    /// Bytes queued (headers included) for `slot`, not yet written.
    pub fn queued_bytes(&self, slot: u16) -> usize {
        self.peers.get(&slot).map_or(0, |p| p.queue.bytes)
    }

    fn strangers(&self) -> usize {
        self.inbound
            .values()
            .filter(|c| matches!(c.gate, Gate::Stranger { .. }))
            .count()
    }

    fn accept_all(&mut self, registry: &Registry) {
        self.accept_pending = false;
        self.accept_more = false;
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(registry, stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // Out of descriptors or memory: the connection stays in
                    // the backlog and no new edge will come for it.
                    tracing::warn!(error = %e, "accept failed; retrying from the timer");
                    self.accept_pending = true;
                    return;
                }
            }
        }
        // The batch ran out: more may wait, and no new edge will say so.
        self.accept_more = true;
    }

    /// Takes a new connection in as a stranger, evicting the oldest
    /// stranger if there are too many (never an authenticated connection),
    /// and reads its hello at once if it is already there.
    fn admit(&mut self, registry: &Registry, mut stream: TcpStream, peer: SocketAddr) {
        while self.strangers() >= self.cfg.max_unauthenticated.max(1) {
            let oldest = self
                .inbound
                .iter()
                .filter_map(|(&t, c)| match c.gate {
                    Gate::Stranger { since } => Some((since, t)),
                    Gate::Peer(_) => None,
                })
                .min()
                .map(|(_, t)| t);
            let Some(t) = oldest else { break };
            self.stats.strangers_evicted += 1;
            tracing::debug!("unauthenticated connections full; closing the oldest");
            self.close_inbound(registry, t);
        }
        let mut token = self.next_inbound_token();
        while self.inbound.contains_key(&token) {
            token = self.next_inbound_token();
        }
        if let Err(e) = registry.register(&mut stream, token, Interest::READABLE) {
            tracing::warn!(error = %e, %peer, "cannot register an inbound connection");
            return;
        }
        self.stats.inbound_accepted += 1;
        tracing::debug!(%peer, "inbound replication connection");
        let now = Instant::now();
        self.inbound.insert(
            token,
            Inbound {
                stream,
                peer,
                gate: Gate::Stranger { since: now },
                buf: Vec::new(),
                start: 0,
                filled: 0,
                last_active: now,
            },
        );
        // A peer writes its hello as soon as its connect completes, so it is
        // usually here already: read it now, before further accepts (a
        // connect flood) could evict this connection. Frames after it wait
        // for the readiness event the registration reports.
        self.read_hello(registry, token);
    }

    /// Reads and checks a stranger's hello. Returns true if the connection
    /// is (now) authenticated; false if it is still a stranger or was
    /// closed.
    fn read_hello(&mut self, registry: &Registry, token: Token) -> bool {
        let Some(conn) = self.inbound.get_mut(&token) else {
            return false;
        };
        if let Gate::Peer(_) = conn.gate {
            return true;
        }
        let len = match conn.read_hello(self.cfg.max_hello, &mut self.stats) {
            HelloRead::Waiting => return false,
            HelloRead::Closed => {
                // A stranger that leaves mid-hello said nothing valid.
                if conn.filled > 0 {
                    self.stats.hellos_malformed += 1;
                }
                self.close_inbound(registry, token);
                return false;
            }
            HelloRead::Bad(len) => {
                self.stats.hellos_malformed += 1;
                tracing::debug!(peer = %conn.peer, len, "not a hello; closing the connection");
                self.close_inbound(registry, token);
                return false;
            }
            HelloRead::Complete(len) => len,
        };
        let verdict = open_hello(
            &self.hello.keys,
            self.hello.me.slot,
            &conn.buf[HEADER..HEADER + len],
        );
        // The small buffer is given back; frames start afresh.
        conn.buf = Vec::new();
        conn.filled = 0;
        conn.start = 0;
        let peer_addr = conn.peer;
        let from = match verdict {
            Ok((from, _)) if !self.cfg.peers.contains_key(&from.slot) => {
                Err(EnvelopeError::WrongRecipient)
            }
            Ok((from, counter)) => {
                let newest = self.hellos_seen.get(&from.slot).copied();
                if newest.is_some_and(|seen| (from.incarnation, counter) <= seen) {
                    self.stats.hellos_replayed += 1;
                    tracing::debug!(peer = %peer_addr, slot = from.slot, "replayed hello; closing");
                    self.close_inbound(registry, token);
                    return false;
                }
                self.hellos_seen
                    .insert(from.slot, (from.incarnation, counter));
                Ok(from)
            }
            Err(e) => Err(e),
        };
        let from = match from {
            Ok(from) => from,
            Err(e) => {
                if e == EnvelopeError::Malformed {
                    self.stats.hellos_malformed += 1;
                } else {
                    self.stats.hellos_forged += 1;
                }
                tracing::debug!(peer = %peer_addr, error = %e, "hello refused; closing the connection");
                self.close_inbound(registry, token);
                return false;
            }
        };
        // Authenticated. An older connection from the same slot is the
        // peer's previous one (it reconnected): close it.
        let same: Vec<Token> = self
            .inbound
            .iter()
            .filter(|(&t, c)| t != token && c.gate == Gate::Peer(from.slot))
            .map(|(&t, _)| t)
            .collect();
        for t in same {
            self.stats.inbound_evicted += 1;
            self.close_inbound(registry, t);
        }
        loop {
            let peers: Vec<(Instant, Token)> = self
                .inbound
                .iter()
                .filter(|(&t, c)| t != token && matches!(c.gate, Gate::Peer(_)))
                .map(|(&t, c)| (c.last_active, t))
                .collect();
            if peers.len() < self.cfg.max_inbound.max(1) {
                break;
            }
            let Some(&(_, t)) = peers.iter().min() else {
                break;
            };
            self.stats.inbound_evicted += 1;
            tracing::debug!("authenticated connections full; closing the one idle longest");
            self.close_inbound(registry, t);
        }
        self.stats.inbound_authenticated += 1;
        tracing::debug!(peer = %peer_addr, slot = from.slot, incarnation = from.incarnation, "replication peer authenticated");
        if let Some(conn) = self.inbound.get_mut(&token) {
            conn.gate = Gate::Peer(from.slot);
            conn.last_active = Instant::now();
        }
        true
    }

    fn next_inbound_token(&mut self) -> Token {
        let t = Token(self.token_base + INBOUND_FIRST + self.next_inbound % INBOUND_SPAN);
        self.next_inbound = self.next_inbound.wrapping_add(1);
        t
    }

    fn read_inbound(&mut self, registry: &Registry, token: Token, received: &mut Vec<Vec<u8>>) {
        if !self.read_hello(registry, token) {
            return;
        }
        let Some(conn) = self.inbound.get_mut(&token) else {
            return;
        };
        match conn.read_turn(
            self.cfg.max_frame,
            self.cfg.read_budget,
            received,
            &mut self.stats,
        ) {
            ReadTurn::Drained => {}
            ReadTurn::MoreWaiting => {
                self.pending.insert(token);
            }
            ReadTurn::Closed(err) => {
                match err {
                    Some(e) => {
                        tracing::debug!(peer = %conn.peer, error = %e, "inbound connection failed")
                    }
                    None => tracing::debug!(peer = %conn.peer, "inbound connection closed"),
                }
                self.close_inbound(registry, token);
            }
            ReadTurn::Bad(len) => {
                self.stats.bad_frames += 1;
                if self.stats.bad_frames == 1 {
                    tracing::warn!(peer = %conn.peer, len, "malformed frame length; closing the connection");
                } else {
                    tracing::debug!(peer = %conn.peer, len, "malformed frame length; closing the connection");
                }
                self.close_inbound(registry, token);
            }
        }
    }

    fn close_inbound(&mut self, registry: &Registry, token: Token) {
        self.pending.remove(&token);
        if let Some(mut conn) = self.inbound.remove(&token) {
            let _ = registry.deregister(&mut conn.stream);
        }
    }
}

/// Two or more transports over loopback, driven by a small mio loop.
#[cfg(test)]
mod tests {
    use super::{Transport, TransportConfig, READ_CHUNK, TOKEN_SPAN};
    use mio::{Events, Poll};
    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
    use std::time::{Duration, Instant};
    use tandem_replica::envelope::{seal_hello, ClusterKey, Keyring};
    use tandem_replica::NodeId;

    /// One transport and the frames it received.
    struct Node {
        t: Transport,
        rx: Vec<Vec<u8>>,
    }

    /// A poll shared by every node of a test.
    struct Net {
        poll: Poll,
        events: Events,
    }

    impl Net {
        fn new() -> Self {
            Net {
                poll: Poll::new().unwrap(),
                events: Events::with_capacity(256),
            }
        }

        /// Node `index` has slot `index + 1`, incarnation 1.
        fn node(&self, cfg: TransportConfig, index: usize) -> Node {
            let me = NodeId::new(index as u16 + 1, 1);
            let t =
                Transport::bind(cfg, me, keys(), self.poll.registry(), index * TOKEN_SPAN).unwrap();
            Node { t, rx: Vec::new() }
        }

        /// One turn of the event loop.
        fn step(&mut self, nodes: &mut [&mut Node]) {
            let busy = nodes.iter().any(|n| n.t.has_pending_reads());
            let timeout = if busy {
                Duration::ZERO
            } else {
                Duration::from_millis(5)
            };
            self.poll.poll(&mut self.events, Some(timeout)).unwrap();
            let registry = self.poll.registry();
            for event in self.events.iter() {
                for n in nodes.iter_mut() {
                    if n.t.owns(event.token()) {
                        n.t.on_event(registry, event, &mut n.rx);
                    }
                }
            }
            let now = Instant::now();
            for n in nodes.iter_mut() {
                n.t.read_pending(registry, &mut n.rx);
                n.t.poll_timers(registry, now);
            }
        }

        /// Runs the loop until `done` holds; false on timeout.
        fn run_until(
            &mut self,
            nodes: &mut [&mut Node],
            timeout: Duration,
            mut done: impl FnMut(&[&mut Node]) -> bool,
        ) -> bool {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if done(nodes) {
                    return true;
                }
                self.step(nodes);
            }
            done(nodes)
        }

        fn run_for(&mut self, nodes: &mut [&mut Node], time: Duration) {
            let deadline = Instant::now() + time;
            while Instant::now() < deadline {
                self.step(nodes);
            }
        }

        fn send(&self, node: &mut Node, to: u16, frame: &[u8]) {
            node.t.send(self.poll.registry(), to, frame);
        }
    }

    fn keys() -> Keyring {
        ClusterKey::from_secret(b"transport test secret, 32 bytes!")
            .unwrap()
            .into()
    }

    /// A hello frame (length prefix included) from `slot` (incarnation 1)
    /// to `to`, under `keys`.
    fn hello_with(keys: &Keyring, slot: u16, to: u16, counter: u64) -> Vec<u8> {
        let h = seal_hello(keys, NodeId::new(slot, 1), to, counter);
        let mut frame = (h.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&h);
        frame
    }

    fn hello(slot: u16, to: u16) -> Vec<u8> {
        hello_with(&keys(), slot, to, 1)
    }

    /// Peers that only ever connect in (raw test sockets claiming them).
    fn fake_peers(cfg: &mut TransportConfig, slots: impl IntoIterator<Item = u16>) {
        for s in slots {
            cfg.peers.insert(s, "127.0.0.1:9".parse().unwrap());
        }
    }

    /// Free loopback addresses (bound once and released; the transport binds
    /// with SO_REUSEADDR).
    fn free_addrs(n: usize) -> Vec<SocketAddr> {
        let held: Vec<StdListener> = (0..n)
            .map(|_| StdListener::bind("127.0.0.1:0").unwrap())
            .collect();
        held.iter().map(|l| l.local_addr().unwrap()).collect()
    }

    /// Two nodes, slots 1 and 2, each knowing the other.
    fn pair(net: &Net, tweak: impl Fn(&mut TransportConfig)) -> (Node, Node) {
        let addrs = free_addrs(2);
        let mut ca = TransportConfig::new(addrs[0], BTreeMap::from([(2, addrs[1])]));
        let mut cb = TransportConfig::new(addrs[1], BTreeMap::from([(1, addrs[0])]));
        tweak(&mut ca);
        tweak(&mut cb);
        (net.node(ca, 0), net.node(cb, 1))
    }

    fn numbered(i: u32, len: usize) -> Vec<u8> {
        let mut f = i.to_be_bytes().to_vec();
        f.extend((0..len).map(|k| (k as u32).wrapping_mul(31).wrapping_add(i) as u8));
        f
    }

    /// Expects `conn` to be closed by the other side.
    fn expect_closed(conn: &mut StdStream) {
        conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 64];
        match conn.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("read {n} bytes from a connection that should be closed"),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "expected a closed connection, got {e}"
            ),
        }
    }

    #[test]
    fn transport_frames_both_ways_in_order() {
        let mut net = Net::new();
        let (mut a, mut b) = pair(&net, |_| {});
        assert_ne!(a.t.local_addr().port(), 0);
        for i in 0..200u32 {
            net.send(&mut a, 2, &numbered(i, (i as usize * 7) % 300));
            net.send(&mut b, 1, &numbered(1000 + i, 10));
        }
        assert!(
            net.run_until(&mut [&mut a, &mut b], Duration::from_secs(10), |n| {
                n[0].rx.len() == 200 && n[1].rx.len() == 200
            })
        );
        for (i, f) in b.rx.iter().enumerate() {
            assert_eq!(f, &numbered(i as u32, (i * 7) % 300), "frame {i} to b");
        }
        for (i, f) in a.rx.iter().enumerate() {
            assert_eq!(f, &numbered(1000 + i as u32, 10), "frame {i} to a");
        }
        assert!(a.t.connected(2) && b.t.connected(1));
        assert!(!a.t.connected(3));
        let (sa, sb) = (a.t.stats(), b.t.stats());
        assert_eq!(sa.frames_sent, 200);
        assert_eq!(sb.frames_received, 200);
        assert_eq!(sa.bytes_sent, sb.bytes_received);
        assert_eq!(sa.connects, 1);
        assert_eq!(sb.inbound_open, 1);
        assert_eq!(sb.bad_frames, 0);
        assert_eq!(a.t.queued_bytes(2), 0);
    }

    #[test]
    fn transport_ten_mib_frame() {
        let mut net = Net::new();
        let (mut a, mut b) = pair(&net, |_| {});
        let big: Vec<u8> = (0..10 << 20).map(|i: u32| (i % 251) as u8).collect();
        net.send(&mut a, 2, b"before");
        net.send(&mut a, 2, &big);
        net.send(&mut a, 2, b"after");
        net.send(&mut b, 1, b"meanwhile");
        assert!(
            net.run_until(&mut [&mut a, &mut b], Duration::from_secs(30), |n| {
                n[1].rx.len() == 3 && n[0].rx.len() == 1
            })
        );
        assert_eq!(b.rx[0], b"before");
        assert_eq!(b.rx[1].len(), big.len());
        assert!(b.rx[1] == big, "the 10 MiB frame arrived altered");
        assert_eq!(b.rx[2], b"after");
        assert_eq!(a.rx[0], b"meanwhile");
        assert_eq!(
            b.t.stats().bytes_received,
            (4 + tandem_replica::envelope::HELLO_LEN + 6 + 4 + big.len() + 4 + 5 + 4) as u64,
            "the hello, then the frames"
        );
    }

    #[test]
    fn transport_ten_thousand_small_frames_in_order() {
        let mut net = Net::new();
        let (mut a, mut b) = pair(&net, |_| {});
        for i in 0..10_000u32 {
            net.send(&mut a, 2, &numbered(i, (i % 40) as usize));
            if i % 10 == 0 {
                net.send(&mut b, 1, &numbered(i, 3));
            }
        }
        assert!(
            net.run_until(&mut [&mut a, &mut b], Duration::from_secs(30), |n| {
                n[1].rx.len() == 10_000 && n[0].rx.len() == 1_000
            })
        );
        for (i, f) in b.rx.iter().enumerate() {
            assert_eq!(f, &numbered(i as u32, i % 40), "frame {i}");
        }
        for (k, f) in a.rx.iter().enumerate() {
            assert_eq!(f, &numbered(k as u32 * 10, 3), "reverse frame {k}");
        }
        assert_eq!(a.t.stats().dropped_queue_full, 0);
        assert_eq!(a.t.stats().frames_sent, 10_000);
    }

    #[test]
    fn transport_reconnects_after_peer_restart() {
        let mut net = Net::new();
        let (mut a, b) = pair(&net, |_| {});
        let b_addr = b.t.local_addr();
        let a_addr = a.t.local_addr();
        let mut b = b;
        net.send(&mut a, 2, b"one");
        assert!(
            net.run_until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| {
                n[1].rx.len() == 1
            })
        );
        assert_eq!(b.rx[0], b"one");

        // The peer goes away: the sender notices, drops, backs off.
        drop(b);
        assert!(net.run_until(&mut [&mut a], Duration::from_secs(5), |n| {
            !n[0].t.connected(2)
        }));
        assert_eq!(a.t.stats().disconnects, 1);
        // While it is away, frames go nowhere and the transport keeps retrying.
        net.send(&mut a, 2, b"lost");
        net.run_for(&mut [&mut a], Duration::from_millis(200));
        assert!(!a.t.connected(2));
        assert!(a.t.stats().connect_failures >= 1);

        // It comes back on the same port.
        let cb = TransportConfig::new(b_addr, BTreeMap::from([(1, a_addr)]));
        let mut b = net.node(cb, 1);
        assert!(
            net.run_until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| {
                n[0].t.connected(2)
            })
        );
        assert_eq!(a.t.stats().connects, 2);
        net.send(&mut a, 2, b"two");
        net.send(&mut a, 2, b"three");
        assert!(
            net.run_until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| {
                n[1].rx.len() == 2
            })
        );
        assert_eq!(b.rx, vec![b"two".to_vec(), b"three".to_vec()]);
    }

    #[test]
    fn transport_garbage_closes_only_that_connection() {
        let mut net = Net::new();
        let (mut a, mut b) = pair(&net, |c| {
            c.max_frame = 1 << 20;
            fake_peers(c, 11..=15);
        });
        let b_addr = b.t.local_addr();
        net.send(&mut a, 2, b"first");
        assert!(
            net.run_until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| {
                n[1].rx.len() == 1
            })
        );

        // Each of these authenticates (a key holder gone wrong), then sends
        // junk. Not our format at all (the length reads as ~1.2 GB).
        let mut http = StdStream::connect(b_addr).unwrap();
        http.write_all(&hello(11, 2)).unwrap();
        http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // One byte over max_frame.
        let mut oversized = StdStream::connect(b_addr).unwrap();
        oversized.write_all(&hello(12, 2)).unwrap();
        oversized
            .write_all(&((1u32 << 20) + 1).to_be_bytes())
            .unwrap();
        // Zero length.
        let mut zero = StdStream::connect(b_addr).unwrap();
        zero.write_all(&hello(13, 2)).unwrap();
        zero.write_all(&[0, 0, 0, 0, 1, 2, 3]).unwrap();
        // A valid frame then garbage: the frame counts, then the connection goes.
        let mut mixed = StdStream::connect(b_addr).unwrap();
        let mut bytes = hello(14, 2);
        bytes.extend_from_slice(&3u32.to_be_bytes());
        bytes.extend_from_slice(b"raw");
        bytes.extend_from_slice(&[0xff; 9]);
        mixed.write_all(&bytes).unwrap();
        // A partial frame left hanging: waits, neither delivered nor bad.
        let mut partial = StdStream::connect(b_addr).unwrap();
        partial.write_all(&hello(15, 2)).unwrap();
        partial.write_all(&[0, 0, 0, 10, b'x', b'y']).unwrap();

        for i in 0..50u32 {
            net.send(&mut a, 2, &numbered(i, 100));
        }
        assert!(
            net.run_until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| {
                n[1].t.stats().bad_frames == 4 && n[1].rx.len() == 52
            })
        );
        net.run_for(&mut [&mut a, &mut b], Duration::from_millis(50));
        let s = b.t.stats();
        assert_eq!(s.bad_frames, 4);
        assert_eq!(
            s.inbound_open, 2,
            "a's connection and the partial one remain"
        );
        assert_eq!(b.rx[0], b"first");
        let raw_at =
            b.rx.iter()
                .position(|f| f == b"raw")
                .expect("the valid raw frame");
        let from_a: Vec<&Vec<u8>> = b.rx[1..]
            .iter()
            .enumerate()
            .filter(|&(k, _)| k + 1 != raw_at)
            .map(|(_, f)| f)
            .collect();
        assert_eq!(from_a.len(), 50);
        for (i, f) in from_a.iter().enumerate() {
            assert_eq!(**f, numbered(i as u32, 100));
        }
        for conn in [&mut http, &mut oversized, &mut zero, &mut mixed] {
            expect_closed(conn);
        }
        assert!(a.t.connected(2));

        // The partial frame completes later, in pieces.
        partial.write_all(&[b'z'; 7]).unwrap();
        partial.write_all(b"!").unwrap();
        assert!(
            net.run_until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| {
                n[1].rx.len() == 53
            })
        );
        assert_eq!(b.rx[52], b"xyzzzzzzz!");
        // A connection closed mid-frame delivers nothing and is not "bad".
        partial.write_all(&[0, 0, 0, 50, 1]).unwrap();
        drop(partial);
        assert!(
            net.run_until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| {
                n[1].t.stats().inbound_open == 1
            })
        );
        assert_eq!(b.rx.len(), 53);
        assert_eq!(b.t.stats().bad_frames, 4);

        // Traffic still flows.
        net.send(&mut a, 2, b"last");
        assert!(
            net.run_until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| {
                n[1].rx.len() == 54
            })
        );
        assert_eq!(b.rx[53], b"last");
    }

    #[test]
    fn transport_queue_full_unknown_and_invalid_frames_are_dropped() {
        let mut net = Net::new();
        let (mut a, mut b) = pair(&net, |c| {
            c.max_queued_bytes = 1000;
            c.max_frame = 4096;
        });
        // Nothing is written before the connect completes, which needs the
        // loop to run: 4 frames of 204 wire bytes fit in 1000, 6 do not.
        for i in 0..10u32 {
            net.send(&mut a, 2, &numbered(i, 196));
        }
        assert_eq!(a.t.stats().dropped_queue_full, 6);
        assert_eq!(a.t.queued_bytes(2), 4 * 204);
        net.send(&mut a, 7, b"nobody");
        net.send(&mut a, 2, b"");
        net.send(&mut a, 2, &[0u8; 4097]);
        let s = a.t.stats();
        assert_eq!(s.dropped_unknown_peer, 1);
        assert_eq!(s.dropped_invalid, 2);
        assert!(
            net.run_until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| {
                n[1].rx.len() == 4
            })
        );
        net.run_for(&mut [&mut a, &mut b], Duration::from_millis(50));
        assert_eq!(b.rx.len(), 4);
        for (i, f) in b.rx.iter().enumerate() {
            assert_eq!(f, &numbered(i as u32, 196));
        }
        assert_eq!(a.t.queued_bytes(2), 0);
        // A frame as large as allowed still goes through (an empty queue takes
        // any valid frame, even beyond max_queued_bytes).
        net.send(&mut a, 2, &[9u8; 4096]);
        assert!(
            net.run_until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| {
                n[1].rx.len() == 5
            })
        );
        assert_eq!(b.rx[4], vec![9u8; 4096]);
    }

    #[test]
    fn transport_closes_a_stalled_connection() {
        let mut net = Net::new();
        // A peer that accepts but never reads.
        let sink = StdListener::bind("127.0.0.1:0").unwrap();
        let own = free_addrs(1)[0];
        let cfg = TransportConfig::new(own, BTreeMap::from([(2, sink.local_addr().unwrap())]));
        let mut a = net.node(cfg, 0);
        net.send(&mut a, 2, b"hello");
        assert!(
            net.run_until(&mut [&mut a], Duration::from_secs(5), |n| n[0]
                .t
                .connected(2))
        );
        let (_held, _) = sink.accept().unwrap();
        let chunk = vec![1u8; 1 << 20];
        for _ in 0..48 {
            net.send(&mut a, 2, &chunk);
        }
        net.run_for(&mut [&mut a], Duration::from_millis(200));
        assert!(a.t.connected(2));
        assert!(a.t.queued_bytes(2) > 0, "the socket buffers took 48 MiB");
        // Two seconds without progress: the connection is given up.
        let later = Instant::now() + Duration::from_secs(3);
        a.t.poll_timers(net.poll.registry(), later);
        assert!(!a.t.connected(2));
        let s = a.t.stats();
        assert_eq!(s.disconnects, 1);
        assert!(s.dropped_on_disconnect > 0);
        assert_eq!(a.t.queued_bytes(2), 0);
    }

    #[test]
    fn transport_backs_off_from_a_dead_peer() {
        let mut net = Net::new();
        let addrs = free_addrs(2);
        // Nobody listens on addrs[1].
        let cfg = TransportConfig::new(addrs[0], BTreeMap::from([(2, addrs[1])]));
        let mut a = net.node(cfg, 0);
        net.send(&mut a, 2, b"anyone?");
        net.run_for(&mut [&mut a], Duration::from_millis(700));
        let s = a.t.stats();
        assert!(!a.t.connected(2));
        assert_eq!(s.connects, 0);
        // Retries at about 20, 40, 80, 160, 320 ms: a handful, not hundreds.
        assert!(
            (3..=8).contains(&s.connect_failures),
            "connect failures: {}",
            s.connect_failures
        );
        assert_eq!(s.dropped_on_disconnect, 1);
    }

    #[test]
    fn transport_evicts_the_oldest_idle_authenticated_connection() {
        let mut net = Net::new();
        let addrs = free_addrs(1);
        let mut cfg = TransportConfig::new(addrs[0], BTreeMap::new());
        fake_peers(&mut cfg, 11..=13);
        cfg.max_inbound = 2;
        let mut b = net.node(cfg, 0);
        let authenticated =
            |n: u64| move |nodes: &[&mut Node]| nodes[0].t.stats().inbound_authenticated == n;
        let mut first = StdStream::connect(addrs[0]).unwrap();
        first.write_all(&hello(11, 1)).unwrap();
        assert!(net.run_until(&mut [&mut b], Duration::from_secs(5), authenticated(1)));
        let mut second = StdStream::connect(addrs[0]).unwrap();
        second.write_all(&hello(12, 1)).unwrap();
        assert!(net.run_until(&mut [&mut b], Duration::from_secs(5), authenticated(2)));
        // The first becomes the most recently active.
        std::thread::sleep(Duration::from_millis(5));
        first.write_all(&[0, 0, 0, 1, 42]).unwrap();
        assert!(
            net.run_until(&mut [&mut b], Duration::from_secs(5), |n| n[0].rx.len()
                == 1)
        );
        // A stranger does not count against the authenticated cap.
        let _stranger = StdStream::connect(addrs[0]).unwrap();
        let mut third = StdStream::connect(addrs[0]).unwrap();
        third.write_all(&hello(13, 1)).unwrap();
        assert!(net.run_until(&mut [&mut b], Duration::from_secs(5), authenticated(3)));
        let s = b.t.stats();
        assert_eq!(s.inbound_evicted, 1);
        assert_eq!(s.inbound_open, 3);
        assert_eq!(s.strangers_open, 1);
        assert_eq!(s.inbound_accepted, 4);
        expect_closed(&mut second);
        first.write_all(&[0, 0, 0, 1, 43]).unwrap();
        assert!(
            net.run_until(&mut [&mut b], Duration::from_secs(5), |n| n[0].rx.len()
                == 2)
        );
        assert_eq!(b.rx, vec![vec![42], vec![43]]);
        // A newer hello from slot 11 (the peer reconnected) replaces the old
        // connection; the same hello again is a replay.
        let mut again = StdStream::connect(addrs[0]).unwrap();
        again.write_all(&hello_with(&keys(), 11, 1, 2)).unwrap();
        assert!(net.run_until(&mut [&mut b], Duration::from_secs(5), authenticated(4)));
        expect_closed(&mut first);
        let mut replay = StdStream::connect(addrs[0]).unwrap();
        replay.write_all(&hello_with(&keys(), 11, 1, 2)).unwrap();
        assert!(net.run_until(&mut [&mut b], Duration::from_secs(5), |n| {
            n[0].t.stats().hellos_replayed == 1
        }));
        expect_closed(&mut replay);
        again.write_all(&[0, 0, 0, 1, 44]).unwrap();
        assert!(
            net.run_until(&mut [&mut b], Duration::from_secs(5), |n| n[0].rx.len()
                == 3)
        );
    }

    /// Strangers: nothing they send is delivered, nothing large is held for
    /// them, each kind of junk is counted, a flood of them evicts only
    /// strangers, and the authenticated peer keeps delivering throughout.
    #[test]
    fn transport_strangers_cannot_push_out_a_peer() {
        let mut net = Net::new();
        let (mut a, mut b) = pair(&net, |c| {
            c.max_unauthenticated = 4;
            c.hello_timeout = Duration::from_millis(300);
        });
        let b_addr = b.t.local_addr();
        net.send(&mut a, 2, b"first");
        assert!(
            net.run_until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| {
                n[1].rx.len() == 1
            })
        );
        let wait = |net: &mut Net,
                    a: &mut Node,
                    b: &mut Node,
                    what: &str,
                    f: fn(&super::TransportStats) -> bool| {
            assert!(
                net.run_until(&mut [a, b], Duration::from_secs(5), |n| f(&n[1].t.stats())),
                "{what}: {:?}",
                b.t.stats()
            );
        };
        // Garbage instead of a hello (its "length" is ~1.2 GB).
        let mut http = StdStream::connect(b_addr).unwrap();
        http.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        wait(&mut net, &mut a, &mut b, "garbage", |s| {
            s.hellos_malformed == 1
        });
        expect_closed(&mut http);
        // A frame that fits but is not a hello.
        let mut raw = StdStream::connect(b_addr).unwrap();
        raw.write_all(&[0, 0, 0, 3, b'r', b'a', b'w']).unwrap();
        wait(&mut net, &mut a, &mut b, "not a hello", |s| {
            s.hellos_malformed == 2
        });
        // A hello under another cluster's key.
        let other: Keyring = ClusterKey::from_secret(b"another cluster's key, 32 bytes")
            .unwrap()
            .into();
        let mut forged = StdStream::connect(b_addr).unwrap();
        forged.write_all(&hello_with(&other, 1, 2, 99)).unwrap();
        wait(&mut net, &mut a, &mut b, "forged", |s| s.hellos_forged == 1);
        expect_closed(&mut forged);
        // A valid hello from a slot that is not a member.
        let mut stranger_slot = StdStream::connect(b_addr).unwrap();
        stranger_slot.write_all(&hello(9, 2)).unwrap();
        wait(&mut net, &mut a, &mut b, "not a member", |s| {
            s.hellos_forged == 2
        });
        // A's own hello (counter 1), replayed.
        let mut replayed = StdStream::connect(b_addr).unwrap();
        replayed.write_all(&hello(1, 2)).unwrap();
        wait(&mut net, &mut a, &mut b, "replayed", |s| {
            s.hellos_replayed == 1
        });
        expect_closed(&mut replayed);
        // Announces a huge frame as its "hello" and a truncated hello: the
        // first is refused at once, the second times out; neither holds more
        // than max_hello bytes meanwhile.
        let mut huge = StdStream::connect(b_addr).unwrap();
        huge.write_all(&(64u32 << 20).to_be_bytes()).unwrap();
        huge.write_all(&[7u8; 100]).unwrap();
        let mut truncated = StdStream::connect(b_addr).unwrap();
        truncated.write_all(&hello(1, 2)[..20]).unwrap();
        wait(&mut net, &mut a, &mut b, "huge", |s| {
            s.hellos_malformed == 3
        });
        let strangers: Vec<usize> =
            b.t.inbound
                .values()
                .filter(|c| matches!(c.gate, super::Gate::Stranger { .. }))
                .map(|c| c.buf.len())
                .collect();
        assert!(!strangers.is_empty());
        assert!(strangers.iter().all(|&len| len <= 512), "{strangers:?}");
        wait(&mut net, &mut a, &mut b, "timeout", |s| {
            s.hello_timeouts >= 1
        });
        expect_closed(&mut truncated);
        // A connect flood: 40 strangers that say nothing. Only 4 are kept,
        // the oldest go first, and a's connection is never touched.
        let flood: Vec<StdStream> = (0..40)
            .map(|_| StdStream::connect(b_addr).unwrap())
            .collect();
        for i in 0..20u32 {
            net.send(&mut a, 2, &numbered(i, 10));
        }
        wait(&mut net, &mut a, &mut b, "flood", |s| {
            s.strangers_evicted >= 36
        });
        let s = b.t.stats();
        assert!(s.strangers_open <= 4, "{s:?}");
        assert_eq!(s.inbound_evicted, 0);
        assert_eq!(s.inbound_authenticated, 1);
        assert!(
            net.run_until(&mut [&mut a, &mut b], Duration::from_secs(5), |n| {
                n[1].rx.len() == 21
            })
        );
        assert!(a.t.connected(2));
        assert_eq!(a.t.stats().disconnects, 0);
        drop(flood);
        // Nothing any stranger sent was delivered.
        for (i, f) in b.rx[1..].iter().enumerate() {
            assert_eq!(f, &numbered(i as u32, 10));
        }
    }

    #[test]
    fn transport_reads_in_fair_turns_without_losing_readiness() {
        let mut net = Net::new();
        let addrs = free_addrs(1);
        let mut cfg = TransportConfig::new(addrs[0], BTreeMap::new());
        fake_peers(&mut cfg, [11, 12]);
        cfg.read_budget = 8 * 1024;
        let mut b = net.node(cfg, 0);
        // Two writers, 8 MiB each, then silence with the connections kept open:
        // whatever the (small) read budget leaves unread must still be read
        // without a new readiness edge.
        let writers: Vec<_> = (0..2u8)
            .map(|w| {
                let addr = addrs[0];
                std::thread::spawn(move || {
                    let mut s = StdStream::connect(addr).unwrap();
                    s.write_all(&hello(11 + u16::from(w), 1)).unwrap();
                    for i in 0..128u32 {
                        let mut frame = (65536u32).to_be_bytes().to_vec();
                        frame.extend(std::iter::repeat_n(w, 65532));
                        frame.extend_from_slice(&i.to_be_bytes());
                        s.write_all(&frame).unwrap();
                    }
                    s
                })
            })
            .collect();
        let mut pumped = false;
        assert!(net.run_until(&mut [&mut b], Duration::from_secs(20), |n| {
            pumped |= n[0].t.has_pending_reads();
            n[0].rx.len() == 256
        }));
        let _held: Vec<StdStream> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        for w in 0..2u8 {
            let mine: Vec<&Vec<u8>> = b.rx.iter().filter(|f| f[0] == w).collect();
            assert_eq!(mine.len(), 128);
            for (i, f) in mine.iter().enumerate() {
                assert_eq!(f.len(), 65536);
                assert_eq!(f[65532..], (i as u32).to_be_bytes());
            }
        }
        assert!(
            pumped,
            "the read budget never ran out (no pending reads seen)"
        );
        assert_eq!(b.t.stats().bad_frames, 0);
    }

    #[test]
    fn transport_announced_length_does_not_reserve_memory() {
        let mut net = Net::new();
        let addrs = free_addrs(1);
        let mut cfg = TransportConfig::new(addrs[0], BTreeMap::new());
        fake_peers(&mut cfg, [11]);
        let mut b = net.node(cfg, 0);
        let mut raw = StdStream::connect(addrs[0]).unwrap();
        let hi = hello(11, 1);
        raw.write_all(&hi).unwrap();
        // Announces the largest frame allowed, sends 100 bytes of it.
        raw.write_all(&(64u32 << 20).to_be_bytes()).unwrap();
        raw.write_all(&[7u8; 100]).unwrap();
        assert!(net.run_until(&mut [&mut b], Duration::from_secs(5), |n| {
            n[0].t.stats().bytes_received == 104 + hi.len() as u64
        }));
        let conn = b.t.inbound.values().next().unwrap();
        assert!(
            conn.buf.len() <= 2 * READ_CHUNK,
            "buffer {}",
            conn.buf.len()
        );
        // Sending the rest still completes the frame.
        let rest = vec![7u8; (64 << 20) - 100];
        let writer = std::thread::spawn(move || {
            raw.write_all(&rest).unwrap();
            raw
        });
        assert!(net.run_until(&mut [&mut b], Duration::from_secs(30), |n| {
            n[0].rx.len() == 1
        }));
        let _raw = writer.join().unwrap();
        assert_eq!(b.rx[0].len(), 64 << 20);
        assert!(b.rx[0].iter().all(|&x| x == 7));
        assert_eq!(b.t.stats().bad_frames, 0);
        // The idle buffer is given back.
        assert!(b.t.inbound.values().next().unwrap().buf.len() <= READ_CHUNK);
    }
}
