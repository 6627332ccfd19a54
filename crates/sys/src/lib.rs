//! The Linux layer: every `unsafe` block and every system call tandem makes.
//!
//! The rest of tandem is plain, deterministic Rust; whatever has to talk to
//! the kernel lives here behind a small API of safe functions that return
//! typed errors:
//! - [`netns`]: run code inside a named network namespace;
//! - [`nfqueue`]: packets held by netfilter until user space gives a verdict;
//! - [`tcp_repair`]: dump a live TCP socket into a [`tandem_core::SocketImage`]
//!   and rebuild one from it (TCP_REPAIR);
//! - [`addr`]: add and remove the virtual IP (rtnetlink);
//! - [`arp`]: gratuitous ARP bursts from a socket opened in advance;
//! - [`capture`]: the fail-closed rules that queue client packets and SYN-ACKs;
//! - [`guard`]: the FIN/RST guard and the kernel lease that fence a node;
//! - [`limits`]: the open-files limit and children's CPU time;
//! - [`netlock`]: freeze a VIP:port with iptables rules in a private chain;
//! - [`process`]: take sockets from another process and hand them to a new one;
//! - [`rawsock`]: whole IPv4 packets sent from user space;
//! - [`sockinfo`]: queue sizes of a live socket;
//! - [`sockdestroy`]: leftover connections on VIP:port destroyed (SOCK_DESTROY).

pub mod addr;
pub mod arp;
pub mod capture;
pub mod guard;
pub mod limits;
pub mod netlock;
pub mod netns;
pub mod nfqueue;
pub mod process;
pub mod rawsock;
pub mod sockdestroy;
pub mod sockinfo;
pub mod tcp_repair;

/// Turns the `-1`/errno convention of libc into a `Result`.
pub(crate) fn cvt(ret: libc::c_int) -> std::io::Result<libc::c_int> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `setsockopt` with a plain-data value.
pub(crate) fn set_opt<T: Copy>(
    fd: std::os::fd::BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `value` points to a live, initialised T of the length given.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// `setsockopt` with an int value.
pub(crate) fn set_int(
    fd: std::os::fd::BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    set_opt(fd, level, name, &value)
}
