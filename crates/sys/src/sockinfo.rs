//! Queue sizes of a live TCP socket, for progress checks and tests.

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
        })
        .unwrap();
    }
}
