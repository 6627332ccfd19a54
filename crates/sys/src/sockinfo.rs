//! Queue sizes, counters and the window clamp of a live TCP socket.

use std::os::fd::{AsRawFd, BorrowedFd};

// <linux/sockios.h>: SIOCINQ is FIONREAD, SIOCOUTQ is TIOCOUTQ.
const SIOCINQ: libc::Ioctl = libc::FIONREAD;
const SIOCOUTQ: libc::Ioctl = libc::TIOCOUTQ;

/// How many bytes sit in a socket's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSizes {
    /// Received and not yet read by the application (SIOCINQ).
    pub unread: usize,
    /// Written by the application and not yet acknowledged by the peer,
    /// whether sent or not (SIOCOUTQ).
    pub unacknowledged: usize,
}

/// Reads the queue sizes of `fd`.
pub fn queue_sizes(fd: BorrowedFd<'_>) -> std::io::Result<QueueSizes> {
    let mut unread: libc::c_int = 0;
    let mut outq: libc::c_int = 0;
    // SAFETY: both ioctls write one c_int into the pointed-to locals.
    unsafe {
        crate::cvt(libc::ioctl(fd.as_raw_fd(), SIOCINQ, &mut unread))?;
        crate::cvt(libc::ioctl(fd.as_raw_fd(), SIOCOUTQ, &mut outq))?;
    }
    Ok(QueueSizes {
        unread: unread.max(0) as usize,
        unacknowledged: outq.max(0) as usize,
    })
}

/// Counters from `TCP_INFO` that can be compared with shadow TCP in any
/// state (a dump needs a repairable state; these do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpCounters {
    /// The kernel's state number.
    pub state: u8,
    /// Sequence space we sent that the peer acknowledged
    /// (`tcpi_bytes_acked`; on the connecting side the SYN counts as one).
    pub bytes_acked: u64,
    /// Bytes received in order from the peer (`tcpi_bytes_received`).
    pub bytes_received: u64,
    /// The peer's window as we last saw it, scaled (`tcpi_snd_wnd`).
    pub snd_wnd: u32,
    /// The window we advertise (`tcpi_rcv_wnd`).
    pub rcv_wnd: u32,
}

/// Reads [`TcpCounters`] from a TCP socket.
pub fn tcp_counters(fd: BorrowedFd<'_>) -> std::io::Result<TcpCounters> {
    // Offsets in struct tcp_info (include/uapi/linux/tcp.h), stable ABI.
    const BYTES_ACKED: usize = 120;
    const BYTES_RECEIVED: usize = 128;
    const SND_WND: usize = 228;
    const RCV_WND: usize = 232;
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf` and reports
    // how many in `len`.
    crate::cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    if (len as usize) < RCV_WND + 4 {
        return Err(std::io::Error::other(
            "TCP_INFO too short: kernel older than 5.4",
        ));
    }
    let u64_at = |at: usize| u64::from_ne_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
    Ok(TcpCounters {
        state: buf[0],
        bytes_acked: u64_at(BYTES_ACKED),
        bytes_received: u64_at(BYTES_RECEIVED),
        snd_wnd: u32_at(SND_WND),
        rcv_wnd: u32_at(RCV_WND),
    })
}

/// Bounds the receive window a socket will ever advertise to `bytes`; set
/// on a listener, accepted sockets inherit it.
///
/// `TCP_WINDOW_CLAMP` alone does not do it on this kernel: as the receive
/// buffer grows, the kernel raises the clamp to what the buffer can hold,
/// even past the value set and even with the buffer size locked (measured:
/// a clamp of 256 KiB ended at 1,032,192 with a 1 MiB buffer). So the
/// receive buffer is also locked at `bytes` (SO_RCVBUF, which the kernel
/// doubles, set to half), and the window can never exceed what it holds.
pub fn set_window_clamp(fd: BorrowedFd<'_>, bytes: u32) -> std::io::Result<()> {
    let half = (bytes / 2).min(i32::MAX as u32) as libc::c_int;
    crate::set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, half)?;
    let value = bytes.min(i32::MAX as u32) as libc::c_int;
    crate::set_int(fd, libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn sees_unread_bytes() {
        crate::netns::run_in_private(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            client.write_all(&[7u8; 1000]).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while queue_sizes(server.as_fd()).unwrap().unread < 1000 {
                assert!(std::time::Instant::now() < deadline);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(queue_sizes(server.as_fd()).unwrap().unread, 1000);
            assert_eq!(queue_sizes(client.as_fd()).unwrap().unacknowledged, 0);
            let counters = tcp_counters(server.as_fd()).unwrap();
            assert_eq!(counters.bytes_received, 1000);
            assert_eq!(counters.state, 1);
            // The kernel counts acknowledged sequence space: the SYN is one.
            assert_eq!(tcp_counters(client.as_fd()).unwrap().bytes_acked, 1001);
            set_window_clamp(server.as_fd(), 64 * 1024).unwrap();
        })
        .unwrap();
    }
}
