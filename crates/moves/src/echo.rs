//! A plain TCP echo server: the "legacy application" a planned move carries.
//!
//! It knows nothing of tandem. It serves the connections it accepts on its
//! listener and those it inherited at start-up (descriptors 3, 4, ... counted
//! by `LISTEN_FDS`, see `tandem_sys::process::spawn_with_fds`). An inherited
//! Unix socket is a hand-off channel instead: connections sent over it
//! (SCM_RIGHTS) are served as they arrive, so a server can be started ahead
//! of a move and receive the moved connections without a process start on
//! the move's critical path.
//!
//! A move carries a process's sockets, not its memory, so the server is
//! written never to hold a byte in memory between two steps: it peeks at the
//! receive queue, sends what it peeked, and only then consumes from the
//! receive queue exactly what was sent. Whatever it has not echoed yet is
//! still in the kernel (unread, or in the send queue) and moves with the
//! socket. On SIGUSR1 it finishes the step in progress and stops itself
//! (SIGSTOP) at that safe point; the mover waits for the stop, takes the
//! sockets, and kills it.

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const LISTENER: Token = Token(usize::MAX);
/// Tokens from here down are hand-off channels.
const CHANNELS: usize = usize::MAX - 1;
const CHUNK: usize = 64 * 1024;

/// Serves until the listener fails, or — without a listener — until every
/// inherited connection has ended.
pub fn serve(
    listener: Option<TcpListener>,
    inherited: Vec<TcpStream>,
    channels: Vec<UnixStream>,
) -> std::io::Result<()> {
    let freeze = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, freeze.clone())?;
    let mut poll = Poll::new()?;
    if let Some(l) = &listener {
        l.set_nonblocking(true)?;
        poll.registry()
            .register(&mut SourceFd(&l.as_raw_fd()), LISTENER, Interest::READABLE)?;
    }
    let mut conns: BTreeMap<usize, TcpStream> = BTreeMap::new();
    let mut next = 0usize;
    let mut add = |poll: &Poll, conns: &mut BTreeMap<usize, TcpStream>, stream: TcpStream| {
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        poll.registry().register(
            &mut SourceFd(&stream.as_raw_fd()),
            Token(next),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        conns.insert(next, stream);
        next += 1;
        std::io::Result::Ok(next - 1)
    };
    let mut channels: BTreeMap<usize, UnixStream> = channels
        .into_iter()
        .enumerate()
        .map(|(i, channel)| (CHANNELS - i, channel))
        .collect();
    for (token, channel) in &channels {
        channel.set_nonblocking(true)?;
        poll.registry().register(
            &mut SourceFd(&channel.as_raw_fd()),
            Token(*token),
            Interest::READABLE,
        )?;
    }
    let mut ready: Vec<usize> = Vec::new();
    for stream in inherited {
        ready.push(add(&poll, &mut conns, stream)?);
    }
    let mut buf = vec![0u8; CHUNK];
    let mut events = Events::with_capacity(1024);
    loop {
        // Inherited sockets may hold data already: serve them once up front.
        for token in ready.drain(..) {
            step(&poll, &mut conns, token, &mut buf);
        }
        if freeze.swap(false, Ordering::SeqCst) {
            // Nothing is held in memory here: a safe point.
            tandem_sys::process::signal(std::process::id(), libc::SIGSTOP)
                .map_err(std::io::Error::other)?;
        }
        if listener.is_none() && conns.is_empty() && channels.is_empty() {
            return Ok(());
        }
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                let l = listener
                    .as_ref()
                    .expect("listener token without a listener");
                loop {
                    match l.accept() {
                        Ok((stream, _)) => {
                            ready.push(add(&poll, &mut conns, stream)?);
                        }
                        Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                        Err(err) if err.kind() == ErrorKind::ConnectionAborted => continue,
                        Err(err) => return Err(err),
                    }
                }
            } else if let Some(channel) = channels.get(&event.token().0) {
                loop {
                    match tandem_sys::process::recv_fds(channel.as_fd()) {
                        Ok(Some(fds)) => {
                            for fd in fds {
                                ready.push(add(&poll, &mut conns, TcpStream::from(fd))?);
                            }
                        }
                        Ok(None) => {
                            // The mover went away; keep serving what we have.
                            let token = event.token().0;
                            if let Some(channel) = channels.remove(&token) {
                                let _ = poll
                                    .registry()
                                    .deregister(&mut SourceFd(&channel.as_raw_fd()));
                            }
                            break;
                        }
                        Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                        Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                        Err(err) => return Err(err),
                    }
                }
            } else {
                ready.push(event.token().0);
            }
        }
    }
}

/// Echoes as much as the connection allows without blocking: peek, send,
/// then consume what was sent. Closes the connection when it ends.
fn step(poll: &Poll, conns: &mut BTreeMap<usize, TcpStream>, token: usize, buf: &mut [u8]) {
    let Some(stream) = conns.get_mut(&token) else {
        return;
    };
    let outcome = (|| -> std::io::Result<bool> {
        loop {
            let peeked = match stream.peek(buf) {
                Ok(0) => {
                    // The peer finished sending and everything was echoed.
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                    return Ok(false);
                }
                Ok(n) => n,
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            let sent = match std::io::Write::write(stream, &buf[..peeked]) {
                Ok(n) => n,
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            let mut scratch = [0u8; 4096];
            let mut left = sent;
            while left > 0 {
                let want = left.min(scratch.len());
                // The bytes were peeked, so they are there: this never blocks.
                let n = stream.read(&mut scratch[..want])?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "peeked bytes vanished from the receive queue",
                    ));
                }
                left -= n;
            }
        }
    })();
    match outcome {
        Ok(true) => {}
        Ok(false) => {
            close(poll, conns, token);
        }
        Err(err) => {
            tracing::warn!(token, "echo connection ended with an error: {err}");
            close(poll, conns, token);
        }
    }
}

fn close(poll: &Poll, conns: &mut BTreeMap<usize, TcpStream>, token: usize) {
    if let Some(stream) = conns.remove(&token) {
        let _ = poll
            .registry()
            .deregister(&mut SourceFd(&stream.as_raw_fd()));
    }
}

/// Binds a listener on `addr` that works before the address is configured
/// here (IP_FREEBIND), so a server can start before the VIP arrives.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_freebind(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Asks the echo server `pid` to stop at its next safe point (SIGUSR1) and
/// waits until it has.
pub fn freeze(pid: u32, timeout: std::time::Duration) -> anyhow::Result<()> {
    let stopped = || -> anyhow::Result<bool> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The state follows the parenthesised command name.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        Ok(state == Some('T'))
    };
    // Already stopped: a second SIGUSR1 would stay pending and stop the
    // server again the moment it is continued.
    if stopped()? {
        return Ok(());
    }
    tandem_sys::process::signal(pid, libc::SIGUSR1)?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if stopped()? {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the echo server {pid} did not stop at a safe point within {timeout:?}");
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}
