//! A plain TCP echo server: the "legacy application" a planned move carries.
//!
//! It knows nothing of tandem. It serves connections it accepts on its
//! listener and connections it inherited at start-up (descriptors 3, 4, ...
//! with `LISTEN_FDS`, see `tandem_sys::process::spawn_with_fds`), each on its
//! own thread, echoing every byte back until the peer closes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// Serves `inherited` connections and, if given, everything `listener`
/// accepts. Returns when the listener fails, or when there is no listener
/// and every inherited connection has ended.
pub fn serve(listener: Option<TcpListener>, inherited: Vec<TcpStream>) -> std::io::Result<()> {
    let mut handles = Vec::new();
    for stream in inherited {
        handles.push(spawn_echo(stream)?);
    }
    if let Some(listener) = listener {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    spawn_echo(stream)?;
                }
                // A client that reset during the handshake is its own problem.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionAborted => continue,
                Err(err) => return Err(err),
            }
        }
    }
    for handle in handles {
        let _ = handle.join();
    }
    Ok(())
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

fn spawn_echo(stream: TcpStream) -> std::io::Result<std::thread::JoinHandle<()>> {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    std::thread::Builder::new()
        .name(format!("echo-{peer}"))
        .stack_size(128 * 1024)
        .spawn(move || {
            if let Err(err) = echo(stream) {
                tracing::warn!(%peer, "echo connection ended with an error: {err}");
            }
        })
}

fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                // Peer finished sending: finish ours too, after the echo.
                let _ = stream.shutdown(std::net::Shutdown::Write);
                return Ok(());
            }
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        stream.write_all(&buf[..n])?;
    }
}
