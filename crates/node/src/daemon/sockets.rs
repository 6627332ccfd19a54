//! The primary's kernel side of a service: the listener on VIP:port and the
//! sockets it accepts, which carry the service's output to the clients.
//!
//! The kernel does the TCP (retransmission, congestion, windows); the
//! service's state never depends on it. What the kernel receives from a
//! client is read and compared, byte for byte, with what shadow TCP
//! delivered to the service from the log (docs/architecture.md §3.2): both come from the
//! same packets, so a difference is a bug, counted and logged.
//!
//! Effects can name a connection the kernel has not handed over yet (the
//! service greets on open; `accept` comes later): they wait in `pending`
//! until the socket is accepted, or until shadow TCP forgets the connection.

use crate::group::Effect;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use tandem_core::shadow::ConnKey;
use tandem_sys::guard::DELIBERATE_CLOSE_MARK;

/// Counters of the kernel side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketStats {
    pub accepted: u64,
    pub closed: u64,
    /// Connections whose kernel bytes differed from shadow TCP's.
    pub mismatches: u64,
    /// Output bytes written to kernel sockets.
    pub written: u64,
    /// Client bytes read from kernel sockets.
    pub read: u64,
    /// Connections the kernel gave up on (the client vanished).
    pub gave_up: u64,
    /// Sockets rebuilt from shadow TCP at takeover.
    pub restored: u64,
}

#[derive(Default)]
struct Output {
    bytes: VecDeque<u8>,
    shutdown: bool,
}

struct Conn {
    stream: TcpStream,
    token: usize,
    out: Output,
    shut: bool,
    /// Bytes shadow TCP delivered that the kernel has not shown us yet, and
    /// bytes the kernel gave us that shadow TCP has not delivered yet (the
    /// deterministic throttle can hold input back).
    expected: VecDeque<u8>,
    kernel_ahead: VecDeque<u8>,
    mismatched: bool,
    eof: bool,
    /// Reading stopped because the kernel ran too far ahead of shadow TCP.
    paused: bool,
}

/// The listener and the accepted sockets.
pub struct KernelSockets {
    listener: Option<TcpListener>,
    listener_token: Token,
    token_base: usize,
    next_token: usize,
    conns: BTreeMap<ConnKey, Conn>,
    by_token: BTreeMap<usize, ConnKey>,
    pending: BTreeMap<ConnKey, (Output, VecDeque<u8>)>,
    /// Most bytes the kernel may run ahead of shadow TCP on one connection
    /// before reading stops (W plus a segment: more means a real mismatch).
    max_ahead: usize,
    gave_up: Vec<ConnKey>,
    stats: SocketStats,
    buf: Vec<u8>,
}

impl KernelSockets {
    /// Nothing open yet; connection tokens start at `token_base`.
    pub fn new(listener_token: Token, token_base: usize, window_clamp: u32) -> KernelSockets {
        KernelSockets {
            listener: None,
            listener_token,
            token_base,
            next_token: 0,
            conns: BTreeMap::new(),
            by_token: BTreeMap::new(),
            pending: BTreeMap::new(),
            max_ahead: window_clamp as usize + 65_536,
            gave_up: Vec::new(),
            stats: SocketStats::default(),
            buf: vec![0; 64 * 1024],
        }
    }

    pub fn stats(&self) -> SocketStats {
        self.stats
    }

    /// Sockets open now.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn owns(&self, token: Token) -> bool {
        token == self.listener_token
            || (token.0 >= self.token_base && token.0 < self.token_base + (1 << 24))
    }

    /// Listens on `addr` (the VIP need not be on the node yet: freebind),
    /// with the receive window clamped at `window_clamp` on every accepted
    /// socket (inherited from the listener).
    pub fn listen(
        &mut self,
        registry: &Registry,
        addr: SocketAddr,
        window_clamp: u32,
    ) -> io::Result<()> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_freebind(true)?;
        socket.set_nonblocking(true)?;
        socket.set_nodelay(true)?;
        tandem_sys::sockinfo::set_window_clamp(socket.as_fd(), window_clamp)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let mut listener = TcpListener::from_std(socket.into());
        registry.register(&mut listener, self.listener_token, Interest::READABLE)?;
        self.listener = Some(listener);
        Ok(())
    }

    /// Handles a readiness event for one of our tokens.
    pub fn on_event(&mut self, registry: &Registry, token: Token) {
        if token == self.listener_token {
            self.accept_all(registry);
            return;
        }
        if let Some(&key) = self.by_token.get(&token.0) {
            self.pump(registry, key);
        }
    }

    /// Connections the kernel gave up on since the last call (to abort
    /// through the log).
    pub fn take_gave_up(&mut self) -> Vec<ConnKey> {
        std::mem::take(&mut self.gave_up)
    }

    /// Carries out one effect of the log on the kernel sockets.
    pub fn apply(&mut self, registry: &Registry, effect: Effect) {
        match effect {
            Effect::Write { conn, bytes } => {
                match self.conns.get_mut(&conn) {
                    Some(c) => c.out.bytes.extend(bytes),
                    None => self.pending.entry(conn).or_default().0.bytes.extend(bytes),
                }
                self.pump(registry, conn);
            }
            Effect::Shutdown { conn } => {
                match self.conns.get_mut(&conn) {
                    Some(c) => c.out.shutdown = true,
                    None => self.pending.entry(conn).or_default().0.shutdown = true,
                }
                self.pump(registry, conn);
            }
            Effect::Abort { conn } => {
                self.pending.remove(&conn);
                if let Some(c) = self.conns.remove(&conn) {
                    self.by_token.remove(&c.token);
                    // A deliberate RST: marked so the guard lets it out.
                    let sock = socket2::SockRef::from(&c.stream);
                    let _ = sock.set_mark(DELIBERATE_CLOSE_MARK);
                    let _ = sock.set_linger(Some(std::time::Duration::ZERO));
                    self.drop_conn(registry, c);
                }
            }
            Effect::Delivered { conn, bytes } => {
                match self.conns.get_mut(&conn) {
                    Some(c) => c.expected.extend(bytes),
                    None => self.pending.entry(conn).or_default().1.extend(bytes),
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    compare(c, &mut self.stats, &conn);
                }
                self.pump(registry, conn);
            }
            Effect::Timer { .. } | Effect::CancelTimer { .. } => {}
        }
    }

    /// Forgets effects waiting for connections shadow TCP no longer knows.
    pub fn sweep_pending(&mut self, known: impl Fn(&ConnKey) -> bool) {
        self.pending.retain(|key, _| known(key));
    }

    /// Stepping down: every socket closed in repair mode (no FIN, no RST:
    /// the clients' connections live on in the log for the next primary),
    /// the listener closed.
    pub fn close_all_silently(&mut self, registry: &Registry) {
        if let Some(mut listener) = self.listener.take() {
            let _ = registry.deregister(&mut listener);
        }
        self.by_token.clear();
        self.pending.clear();
        for (key, mut c) in std::mem::take(&mut self.conns) {
            let _ = registry.deregister(&mut c.stream);
            let fd: OwnedFd = c.stream.into();
            if let Err(err) = tandem_sys::tcp_repair::close_silently(fd) {
                tracing::warn!(client = %key.client, %err, "closing a socket silently failed");
            }
            self.stats.closed += 1;
        }
    }

    /// Takes a socket rebuilt with TCP_REPAIR at takeover (already live):
    /// the service's further output for `key` goes to it. `shut`: our FIN
    /// is already part of it (the service had closed); `peer_closed`: the
    /// client's FIN was received before (the rebuilt socket never reports
    /// it: TCP_REPAIR cannot put a received FIN back).
    pub fn adopt(
        &mut self,
        registry: &Registry,
        key: ConnKey,
        fd: OwnedFd,
        shut: bool,
        peer_closed: bool,
    ) -> io::Result<()> {
        let std_stream = std::net::TcpStream::from(fd);
        std_stream.set_nonblocking(true)?;
        self.insert(registry, key, TcpStream::from_std(std_stream), shut)?;
        if peer_closed {
            if let Some(c) = self.conns.get_mut(&key) {
                c.eof = true;
            }
            self.pump(registry, key);
        }
        self.stats.restored += 1;
        Ok(())
    }

    fn accept_all(&mut self, registry: &Registry) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    let Ok(local) = stream.local_addr() else {
                        continue;
                    };
                    let key = ConnKey {
                        client: peer,
                        server: local,
                    };
                    match self.insert(registry, key, stream, false) {
                        Ok(()) => self.stats.accepted += 1,
                        Err(err) => tracing::warn!(%err, "cannot watch an accepted socket"),
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    return;
                }
            }
        }
    }

    /// Watches a socket for `key`, hands it what waited for it, and pumps.
    fn insert(
        &mut self,
        registry: &Registry,
        key: ConnKey,
        mut stream: TcpStream,
        shut: bool,
    ) -> io::Result<()> {
        let _ = stream.set_nodelay(true);
        let token = self.token_base + self.next_token;
        self.next_token = (self.next_token + 1) % (1 << 24);
        registry.register(
            &mut stream,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let (mut out, expected) = self.pending.remove(&key).unwrap_or_default();
        out.shutdown |= shut;
        let conn = Conn {
            stream,
            token,
            out,
            shut,
            expected,
            kernel_ahead: VecDeque::new(),
            mismatched: false,
            eof: false,
            paused: false,
        };
        if let Some(old) = self.conns.insert(key, conn) {
            // The same 4-tuple again: the old socket is dead.
            self.by_token.remove(&old.token);
            self.drop_conn(registry, old);
        }
        self.by_token.insert(token, key);
        self.pump(registry, key);
        Ok(())
    }

    /// Reads what the kernel received and writes what waits, until the
    /// kernel would block either way; closes the socket when both sides are
    /// done or it failed.
    fn pump(&mut self, registry: &Registry, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let mut failed: Option<io::Error> = None;
        if c.paused && c.kernel_ahead.len() <= self.max_ahead / 2 {
            c.paused = false;
        }
        // Read.
        while !c.eof && !c.paused {
            if c.kernel_ahead.len() > self.max_ahead {
                c.paused = true;
                break;
            }
            match c.stream.read(&mut self.buf) {
                Ok(0) => c.eof = true,
                Ok(n) => {
                    self.stats.read += n as u64;
                    c.kernel_ahead.extend(&self.buf[..n]);
                    compare(c, &mut self.stats, &key);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    failed = Some(err);
                    break;
                }
            }
        }
        // Write.
        while failed.is_none() && !c.out.bytes.is_empty() {
            let (front, _) = c.out.bytes.as_slices();
            match c.stream.write(front) {
                Ok(n) => {
                    self.stats.written += n as u64;
                    c.out.bytes.drain(..n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => failed = Some(err),
            }
        }
        if failed.is_none() && c.out.shutdown && !c.shut && c.out.bytes.is_empty() {
            // The service closed: a deliberate FIN, marked for the guard.
            let _ = socket2::SockRef::from(&c.stream).set_mark(DELIBERATE_CLOSE_MARK);
            if let Err(err) = c.stream.shutdown(Shutdown::Write) {
                failed = Some(err);
            }
            c.shut = true;
        }
        let done = c.eof && c.shut;
        if let Some(err) = &failed {
            if matches!(err.raw_os_error(), Some(code) if code == 110 || code == 113) {
                // ETIMEDOUT / EHOSTUNREACH: the kernel gave up on the client.
                self.gave_up.push(key);
                self.stats.gave_up += 1;
            }
        }
        if failed.is_some() || done {
            if let Some(c) = self.conns.remove(&key) {
                self.by_token.remove(&c.token);
                let _ = socket2::SockRef::from(&c.stream).set_mark(DELIBERATE_CLOSE_MARK);
                self.drop_conn(registry, c);
            }
        }
    }

    fn drop_conn(&mut self, registry: &Registry, mut c: Conn) {
        let _ = registry.deregister(&mut c.stream);
        self.stats.closed += 1;
    }
}

/// Matches the kernel's bytes against shadow TCP's as far as both go.
fn compare(c: &mut Conn, stats: &mut SocketStats, key: &ConnKey) {
    let n = c.expected.len().min(c.kernel_ahead.len());
    if n == 0 {
        return;
    }
    if !c.mismatched {
        let same = c
            .expected
            .iter()
            .take(n)
            .zip(c.kernel_ahead.iter().take(n))
            .all(|(a, b)| a == b);
        if !same {
            c.mismatched = true;
            stats.mismatches += 1;
            tracing::error!(
                client = %key.client,
                "the kernel received bytes that differ from what shadow TCP delivered"
            );
        }
    }
    c.expected.drain(..n);
    c.kernel_ahead.drain(..n);
}
