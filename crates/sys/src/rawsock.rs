//! Sending whole IPv4 packets, headers included, from user space.
//!
//! tandem needs it to replay a logged SYN-ACK to a client that retransmits
//! its SYN after a takeover (docs/architecture.md §3.5), and its benchmarks use it to offer
//! the capture path more packets per second than a TCP connection would.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A raw IPv4 socket that sends packets exactly as given (`IP_HDRINCL`),
/// in the namespace of the thread that opened it.
pub struct RawIpv4Sender {
    fd: OwnedFd,
}

impl RawIpv4Sender {
    /// Opens the socket (needs root / CAP_NET_RAW).
    pub fn open() -> std::io::Result<RawIpv4Sender> {
        // SAFETY: plain socket creation; the fd is owned at once.
        let fd = crate::cvt(unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        })?;
        // SAFETY: fd was just returned by socket() and is owned by nobody else.
        // IPPROTO_RAW implies IP_HDRINCL.
        Ok(RawIpv4Sender {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Sends one IPv4 packet (header and all) toward `dst`, which routes it.
    pub fn send(&self, packet: &[u8], dst: Ipv4Addr) -> std::io::Result<()> {
        let to = SocketAddrV4::new(dst, 0);
        // SAFETY: sockaddr_in is plain data, zeroed then filled; the packet
        // buffer outlives the call.
        let sent = unsafe {
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes(to.ip().octets());
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_packet_reaches_a_local_udp_socket() {
        crate::netns::run_in_private(|| {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = socket.local_addr().unwrap().port();
            // IPv4 + UDP by hand: 20 + 8 + 4 bytes; UDP checksum 0 = none.
            let mut packet = vec![
                0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
            ];
            packet.extend_from_slice(&4242u16.to_be_bytes());
            packet.extend_from_slice(&port.to_be_bytes());
            packet.extend_from_slice(&12u16.to_be_bytes());
            packet.extend_from_slice(&[0, 0]);
            packet.extend_from_slice(b"raw!");
            RawIpv4Sender::open()
                .unwrap()
                .send(&packet, Ipv4Addr::LOCALHOST)
                .unwrap();
            socket
                .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0u8; 16];
            let (n, from) = socket.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"raw!");
            assert_eq!(from.port(), 4242);
        })
        .unwrap();
    }
}
