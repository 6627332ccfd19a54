//! Destroying leftover TCP sockets on VIP:port (docs/architecture.md §3.8, start-up and
//! takeover clean-up).
//!
//! When a daemon dies on a live machine its sockets are closed by the
//! kernel; the FIN/RST guard keeps their FINs in, so they linger as orphans
//! in FIN_WAIT1, retransmitting into the guard for minutes. Each still owns
//! its 4-tuple: when this node becomes primary again and rebuilds the same
//! connection from the log, the repair-mode connect fails with
//! EADDRNOTAVAIL. So before rebuilding (and at start-up) every socket whose
//! local address is VIP:port is destroyed with `SOCK_DESTROY` (inet_diag),
//! here through `ss -K` from iproute2. The RST this sends is dropped by the
//! guard: the client never sees it.

use std::net::Ipv4Addr;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum DestroyError {
    #[error("running `ss` (Debian package: iproute2): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("`ss -K` failed: {0}")]
    Failed(String),
}

/// Destroys every TCP socket, in any state but LISTEN, bound to
/// `local:port` in the calling process's network namespace; returns how
/// many there were.
pub fn destroy_connections(local: Ipv4Addr, port: u16) -> Result<usize, DestroyError> {
    let out = Command::new("ss")
        .args(["-K", "-t", "-n", "-H", "state", "connected", "src"])
        .arg(local.to_string())
        .args(["sport", "=", &format!(":{port}")])
        .output()
        .map_err(DestroyError::Spawn)?;
    if !out.status.success() {
        return Err(DestroyError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn destroys_connections_on_the_port_only() {
        if !crate::process::is_root() {
            // SOCK_DESTROY needs CAP_NET_ADMIN; CI runs as root.
            panic!("this test needs root (CAP_NET_ADMIN)");
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        let other_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let other = TcpStream::connect(other_listener.local_addr().unwrap()).unwrap();
        let (other_server, _) = other_listener.accept().unwrap();
        let n = destroy_connections(Ipv4Addr::LOCALHOST, port).unwrap();
        assert_eq!(n, 1, "exactly the accepted socket on the port");
        // The destroyed socket reports the abort; the listener and the
        // unrelated connection live on.
        assert!(server.take_error().unwrap().is_some() || server.peer_addr().is_err());
        assert!(other.peer_addr().is_ok() && other_server.peer_addr().is_ok());
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        drop(client);
    }
}
