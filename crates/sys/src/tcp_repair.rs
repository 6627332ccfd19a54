//! Freezing a live TCP connection into a [`SocketImage`] and rebuilding it on
//! another node, with the kernel's TCP_REPAIR interface.
//!
//! This is how tandem moves a connection without the client noticing: the
//! source node dumps the server's socket and closes it without a sound (no
//! FIN, no RST); the target node builds a socket that continues the very same
//! byte stream, with the same sequence numbers, queues, options and windows.
//! The order of the calls matters and was measured on the project's kernel
//! (see docs/kernel-notes.md §2, "TCP_REPAIR: the order that works").
//!
//! [`dump`] (the caller has already stopped the connection's packets: a
//! socket in repair mode still receives and ACKs data, and bytes ACKed after
//! the dump would be lost):
//! 1. check it is a TCP socket in a supported state, then `TCP_REPAIR=1`;
//! 2. addresses, `TCP_INFO` (state, options, window scales), `SIOCINQ`,
//!    `SIOCOUTQ`, `SIOCOUTQNSD`;
//! 3. receive queue: `TCP_REPAIR_QUEUE=RECV`, `TCP_QUEUE_SEQ` (rcv_nxt), peek;
//! 4. send queue: `TCP_REPAIR_QUEUE=SEND`, `TCP_QUEUE_SEQ` (write_seq), peek;
//! 5. `TCP_MAXSEG` (the mss clamp, in repair mode), `TCP_TIMESTAMP`,
//!    `TCP_REPAIR_WINDOW`.
//!
//! The socket is left in repair mode, so [`close_silently`] can drop it, or
//! [`leave_repair`] can give it back to normal life if the move is aborted.
//!
//! [`restore`] (in the calling thread's network namespace):
//! 1. `socket`, `TCP_REPAIR=1` before any other option, `SO_MARK`,
//!    `IP_TRANSPARENT` (the virtual IP need not be on this node yet), buffer
//!    sizes that hold the queues, `bind(local)`;
//! 2. queue sequence numbers (`TCP_REPAIR_QUEUE` + `TCP_QUEUE_SEQ`, only
//!    possible before connect), `TCP_MAXSEG`;
//! 3. `connect(peer)`: no SYN in repair mode, the socket is ESTABLISHED;
//! 4. `TCP_REPAIR_OPTIONS`, `TCP_TIMESTAMP`;
//! 5. the unread bytes into the receive queue, the in-flight (sent, unacked)
//!    bytes into the send queue, both with repair-mode `send`;
//! 6. `TCP_REPAIR_WINDOW` (needs the receive queue in place), `TCP_REPAIR=0`
//!    (the kernel sends a window probe);
//! 7. the never-sent tail of the send queue, written normally, then
//!    `shutdown(SHUT_WR)` if the image is in a FIN_WAIT state.
//!
//! Supported states:
//! - ESTABLISHED.
//! - FIN_WAIT1 and FIN_WAIT2: the application shut down its sending side
//!   (`shutdown(SHUT_WR)`) and the peer has not closed its own. The socket is
//!   rebuilt ESTABLISHED with a write_seq that excludes our FIN, taken out of
//!   repair mode, given its never-sent tail, then shut down normally: the FIN
//!   goes out after the tail, as it would have. If the FIN had already been
//!   sent (or even acknowledged: FIN_WAIT2), the peer takes the new one as a
//!   duplicate and acknowledges it at once, which brings the socket back to
//!   FIN_WAIT2 within a round trip. (Queueing the FIN in repair mode instead
//!   would mark it as sent without sending it, and the restored socket would
//!   learn its fate only from its timers: a loss probe after 1 s, a
//!   retransmission after 3 s, as it has no RTT sample.)
//!
//! Refused, with [`RepairError::Listening`] or [`RepairError::UnsupportedState`]:
//! - LISTEN: no connection to move (and the kernel refuses TCP_REPAIR on it);
//! - SYN_SENT, SYN_RECV: the handshake is not over; the client retries its SYN;
//! - CLOSE_WAIT, LAST_ACK, CLOSING, TIME_WAIT: the peer's FIN was received.
//!   TCP_REPAIR cannot put a received FIN back into a socket, so a restored
//!   socket would never report end-of-file to the application;
//! - CLOSE: the connection is gone (closed or reset).
//!
//! Not carried over (the kernel has no interface for them): the congestion
//! window and RTT estimate (they start afresh: a restored socket's
//! retransmission timeout is 3 s until its first RTT sample), out-of-order
//! data received beyond rcv_nxt (the peer retransmits it), urgent data
//! marks. An mss above 32767 (loopback's 65483) is restored as the clamp, but
//! the socket starts with segments of at most 32767 bytes: TCP_MAXSEG accepts
//! no more. Leaving repair mode moves three window fields: the window probe
//! sets snd_wl1 to rcv_nxt - 1 (so the peer's answer counts as a window
//! update), rcv_wup to rcv_nxt, and may widen rcv_wnd.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::{set_int, set_opt};
use libc::{c_int, c_void, socklen_t};
use tandem_core::image::{
    ImageError, RepairWindow, SocketImage, TcpOptions, TcpState, WindowScale,
};

/// Why a socket could not be dumped, closed silently or restored.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// The socket is listening; only connections can be moved.
    #[error("a listening socket cannot be repaired: only established connections can be moved (the new node opens its own listener)")]
    Listening,
    /// The connection is in a state tandem does not move (see the module documentation).
    #[error("a socket in state {0} cannot be moved: {reason}", reason = refusal_reason(*.0))]
    UnsupportedState(TcpState),
    /// TCP_REPAIR is refused without CAP_NET_ADMIN.
    #[error("TCP_REPAIR needs CAP_NET_ADMIN (run as root)")]
    NotPermitted,
    /// The descriptor is not a TCP socket.
    #[error("only TCP sockets can be repaired, and this descriptor is {what}")]
    NotTcp { what: &'static str },
    /// The image cannot be restored as it stands.
    #[error("invalid socket image: {0}")]
    InvalidImage(#[from] ImageError),
    /// A queue changed while it was being read: packets are still flowing.
    #[error("the {queue} queue held {found} bytes where {expected} were expected: the connection is still moving (are its packets stopped?)")]
    QueueChanged {
        queue: &'static str,
        expected: usize,
        found: usize,
    },
    /// A system call failed; `step` names it.
    #[error("{step} failed: {source}")]
    Sys {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Why tandem refuses to move a connection in `state`.
fn refusal_reason(state: TcpState) -> &'static str {
    match state {
        TcpState::Listen => "a listening socket holds no connection; the new node opens its own listener",
        TcpState::SynSent | TcpState::SynRecv | TcpState::NewSynRecv => {
            "the handshake has not finished; the client will retry its SYN and the new node's listener can answer it"
        }
        TcpState::CloseWait | TcpState::LastAck | TcpState::Closing => {
            "the peer has already closed its side, and TCP_REPAIR cannot put a received FIN back into a socket: the restored socket would never report end-of-file to the application"
        }
        TcpState::TimeWait => "the connection is over on both sides",
        TcpState::Close => "the socket no longer holds a connection (it was closed or reset)",
        TcpState::Established | TcpState::FinWait1 | TcpState::FinWait2 => {
            "this state is supported (this error should not happen)"
        }
    }
}

/// Options of a restore that are not part of the image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// `SO_MARK` for the restored socket (routing and firewall marks), set
    /// before connect so the route lookup already sees it.
    pub mark: Option<u32>,
    /// The TCP timestamp clock to continue from, instead of the image's
    /// `timestamp`: for instance the image's value plus the time the move
    /// took. It must not be behind what the peer has seen, or the peer's PAWS
    /// check drops every segment for good. Its lowest bit is ignored: since
    /// Linux 6.7 that bit says whether the clock counts microseconds rather
    /// than milliseconds, and it is taken from the image.
    pub timestamp: Option<u32>,
}

// Kernel constants libc lacks (include/uapi/linux/tcp.h). The rest come from
// libc, which has the right values for each architecture.
const TCP_REPAIR_ON: c_int = 1;
const TCP_REPAIR_OFF: c_int = 0;

const TCP_NO_QUEUE: c_int = 0;
const TCP_RECV_QUEUE: c_int = 1;
const TCP_SEND_QUEUE: c_int = 2;

const TCPOPT_MAXSEG: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;

const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;

// The socket queue ioctls: SIOCINQ and SIOCOUTQ are the kernel's names for
// FIONREAD and TIOCOUTQ on sockets.
const SIOCINQ: libc::Ioctl = libc::FIONREAD;
const SIOCOUTQ: libc::Ioctl = libc::TIOCOUTQ;
const SIOCOUTQNSD: libc::Ioctl = libc::SIOCOUTQNSD as libc::Ioctl;

/// The largest value `setsockopt(TCP_MAXSEG)` accepts (the kernel's
/// MAX_TCP_WINDOW). Loopback's mss is larger; the full clamp is restored
/// through TCP_REPAIR_OPTIONS anyway, so this only caps the segment size the
/// restored socket starts with.
const MAX_USER_MSS: u32 = 32767;

/// Buffer sizes a restored socket gets when its queues need bigger buffers
/// than the defaults: Linux's default autotuning maxima (`tcp_wmem[2]`,
/// `tcp_rmem[2]`). Setting a buffer size switches autotuning off for that
/// buffer, so the floor keeps a restored socket from being slower than a
/// fresh one.
const SNDBUF_FLOOR: usize = 4 << 20;
const RCVBUF_FLOOR: usize = 6 << 20;

/// How long writing the never-sent tail may wait for send-buffer room. The
/// buffer is sized to hold the whole send queue, so waiting at all means
/// something is wrong; the wait is bounded so a restore cannot hang.
const TAIL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The head of the kernel's `struct tcp_info`: the kernel copies only as many
/// bytes as asked for, and these are all tandem needs.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct TcpInfoHead {
    state: u8,
    ca_state: u8,
    retransmits: u8,
    probes: u8,
    backoff: u8,
    options: u8,
    /// Two 4-bit bitfields: `tcpi_snd_wscale`, then `tcpi_rcv_wscale`.
    wscales: u8,
    /// Bitfields `tcpi_delivery_rate_app_limited` and `tcpi_fastopen_client_fail`.
    flags: u8,
}

impl TcpInfoHead {
    /// (snd, rcv) window scale shifts. C bitfields are allocated from the
    /// least significant bit on little-endian targets, from the most
    /// significant one on big-endian targets.
    fn window_scales(&self) -> (u8, u8) {
        if cfg!(target_endian = "little") {
            (self.wscales & 0x0f, self.wscales >> 4)
        } else {
            (self.wscales >> 4, self.wscales & 0x0f)
        }
    }
}

/// `struct tcp_repair_opt`, one entry of TCP_REPAIR_OPTIONS.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct TcpRepairOpt {
    opt_code: u32,
    opt_val: u32,
}

/// `struct tcp_repair_window`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct TcpRepairWindow {
    snd_wl1: u32,
    snd_wnd: u32,
    max_window: u32,
    rcv_wnd: u32,
    rcv_wup: u32,
}

fn sys(step: &'static str) -> impl FnOnce(io::Error) -> RepairError {
    move |source| RepairError::Sys { step, source }
}

/// `setsockopt` with an array value.
fn set_opt_slice<T: Copy>(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    values: &[T],
) -> io::Result<()> {
    // SAFETY: the slice is live and initialised for its whole byte length.
    crate::cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            values.as_ptr().cast::<c_void>(),
            std::mem::size_of_val(values) as socklen_t,
        )
    })
    .map(drop)
}

/// `getsockopt` into a plain-data value; returns the value and how many
/// bytes the kernel filled in.
fn get_opt<T: Copy + Default>(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
) -> io::Result<(T, usize)> {
    let mut value = T::default();
    let mut len = size_of::<T>() as socklen_t;
    // SAFETY: `value` is a writable T and `len` says how large it is; the
    // kernel writes at most `len` bytes and updates `len`.
    crate::cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut T).cast::<c_void>(),
            &mut len,
        )
    })?;
    Ok((value, len as usize))
}

fn get_int(fd: BorrowedFd<'_>, level: c_int, name: c_int) -> io::Result<c_int> {
    get_opt::<c_int>(fd, level, name).map(|(value, _)| value)
}

/// An `ioctl` that returns an int (the socket queue sizes).
fn ioctl_int(fd: BorrowedFd<'_>, request: libc::Ioctl) -> io::Result<c_int> {
    let mut value: c_int = 0;
    // SAFETY: these requests write one int to the pointer given.
    crate::cvt(unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut value) })?;
    Ok(value)
}

/// Fails unless `fd` is an IPv4 or IPv6 TCP socket.
fn check_tcp(fd: BorrowedFd<'_>) -> Result<(), RepairError> {
    let domain = match get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN) {
        Ok(domain) => domain,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
            return Err(RepairError::NotTcp {
                what: "not a socket (a file, pipe or device)",
            })
        }
        Err(e) => return Err(sys("getsockopt(SO_DOMAIN)")(e)),
    };
    let kind = get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).map_err(sys("getsockopt(SO_TYPE)"))?;
    let protocol =
        get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).map_err(sys("getsockopt(SO_PROTOCOL)"))?;
    let what = match (domain, kind, protocol) {
        (libc::AF_INET | libc::AF_INET6, libc::SOCK_STREAM, libc::IPPROTO_TCP) => return Ok(()),
        (libc::AF_INET | libc::AF_INET6, libc::SOCK_DGRAM, _) => "a UDP socket",
        (libc::AF_INET | libc::AF_INET6, libc::SOCK_STREAM, _) => {
            "a stream socket of another protocol (MPTCP?)"
        }
        (libc::AF_UNIX, _, _) => "a Unix-domain socket",
        _ => "a socket of another kind",
    };
    Err(RepairError::NotTcp { what })
}

fn tcp_info(fd: BorrowedFd<'_>) -> Result<TcpInfoHead, RepairError> {
    let (info, len) = get_opt::<TcpInfoHead>(fd, libc::IPPROTO_TCP, libc::TCP_INFO)
        .map_err(sys("getsockopt(TCP_INFO)"))?;
    if len < size_of::<TcpInfoHead>() {
        return Err(RepairError::Sys {
            step: "getsockopt(TCP_INFO)",
            source: io::Error::new(io::ErrorKind::InvalidData, "short tcp_info"),
        });
    }
    Ok(info)
}

fn state_of(info: &TcpInfoHead) -> Result<TcpState, RepairError> {
    TcpState::from_kernel(info.state).ok_or_else(|| RepairError::Sys {
        step: "getsockopt(TCP_INFO)",
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown TCP state {}", info.state),
        ),
    })
}

/// The TCP state of a socket (as `ss` shows it), from `TCP_INFO`.
pub fn tcp_state(fd: BorrowedFd<'_>) -> Result<TcpState, RepairError> {
    check_tcp(fd)?;
    state_of(&tcp_info(fd)?)
}

/// Refuses the states tandem does not move.
fn check_movable(state: TcpState) -> Result<(), RepairError> {
    match state {
        TcpState::Established | TcpState::FinWait1 | TcpState::FinWait2 => Ok(()),
        TcpState::Listen => Err(RepairError::Listening),
        other => Err(RepairError::UnsupportedState(other)),
    }
}

/// `TCP_REPAIR=1`; the kernel answers EPERM without CAP_NET_ADMIN (and on
/// listeners, which callers have excluded before).
fn enter_repair(fd: BorrowedFd<'_>) -> Result<(), RepairError> {
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, TCP_REPAIR_ON).map_err(|e| {
        if e.raw_os_error() == Some(libc::EPERM) {
            RepairError::NotPermitted
        } else {
            sys("setsockopt(TCP_REPAIR=1)")(e)
        }
    })
}

fn in_repair(fd: BorrowedFd<'_>) -> Result<bool, RepairError> {
    Ok(
        get_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR).map_err(sys("getsockopt(TCP_REPAIR)"))?
            != 0,
    )
}

fn select_queue(fd: BorrowedFd<'_>, queue: c_int, step: &'static str) -> Result<(), RepairError> {
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, queue).map_err(sys(step))
}

fn socket_addr(storage: &libc::sockaddr_storage, len: socklen_t) -> io::Result<SocketAddr> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not an IP socket address");
    match storage.ss_family as c_int {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => Err(bad()),
    }
}

fn raw_addr(addr: &SocketAddr) -> (libc::sockaddr_storage, socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any
            // sockaddr; we write a sockaddr_in at its start.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as socklen_t)
}

fn local_addr(fd: BorrowedFd<'_>) -> Result<SocketAddr, RepairError> {
    socket_name(fd, libc::getsockname, "getsockname")
}

fn peer_addr(fd: BorrowedFd<'_>) -> Result<SocketAddr, RepairError> {
    socket_name(fd, libc::getpeername, "getpeername")
}

/// One end's address, through `getsockname` or `getpeername`.
fn socket_name(
    fd: BorrowedFd<'_>,
    call: unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut socklen_t) -> c_int,
    step: &'static str,
) -> Result<SocketAddr, RepairError> {
    // SAFETY: plain data, zeroes are valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: `call` is getsockname or getpeername, which write at most
    // `len` bytes into `storage`.
    crate::cvt(unsafe {
        call(
            fd.as_raw_fd(),
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    })
    .and_then(|_| socket_addr(&storage, len))
    .map_err(sys(step))
}

/// Reads the selected repair queue with `recv(MSG_PEEK)`, expecting
/// `expected` bytes.
///
/// A peek always starts at the head of the queue, so it cannot be continued
/// where a short one stopped: the buffer holds the whole queue (plus one
/// byte, to notice a queue that grew), and a short answer is retried from
/// the start. For the send queue the kernel copies every buffered segment at
/// once and fails with EFAULT if they do not fit, so the buffer must be
/// sized from SIOCOUTQ, which it is.
fn peek_queue(
    fd: BorrowedFd<'_>,
    expected: usize,
    queue: &'static str,
    step: &'static str,
) -> Result<Vec<u8>, RepairError> {
    const ATTEMPTS: usize = 3;
    let capacity = expected + 1;
    let mut buffer: Vec<u8> = Vec::with_capacity(capacity);
    let mut found = 0;
    for _ in 0..ATTEMPTS {
        let spare: &mut [MaybeUninit<u8>] = buffer.spare_capacity_mut();
        // SAFETY: `spare` is writable memory of at least `capacity` bytes;
        // the kernel writes at most that many.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                spare.as_mut_ptr().cast::<c_void>(),
                capacity,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // An empty receive queue answers "would block".
                Some(libc::EAGAIN) => {
                    found = 0;
                }
                _ => return Err(sys(step)(e)),
            }
        } else {
            found = n as usize;
        }
        if found == expected {
            // SAFETY: the kernel initialised the first `found` bytes.
            unsafe { buffer.set_len(found) };
            return Ok(buffer);
        }
        if found > expected {
            break;
        }
    }
    Err(RepairError::QueueChanged {
        queue,
        expected,
        found,
    })
}

/// Dumps a connected TCP socket into an image, leaving it in repair mode.
///
/// Precondition: the caller has already stopped the connection's packets
/// (the network lock). A socket in repair mode still receives and
/// acknowledges data; bytes acknowledged after the dump would be lost.
///
/// On success the socket stays in repair mode: close it with
/// [`close_silently`] (the move goes on) or give it back with
/// [`leave_repair`] (the move is aborted). In repair mode the application
/// can neither read nor write it (EPERM / EINVAL). On error the socket is
/// left as it was found: out of repair mode unless it was already in it
/// (leaving sends a window probe, as [`leave_repair`] does).
/// Listening sockets, sockets that are not TCP and unsupported states are
/// refused before anything is changed.
pub fn dump(fd: BorrowedFd<'_>) -> Result<SocketImage, RepairError> {
    check_tcp(fd)?;
    // Look at the state first: the kernel answers EPERM for TCP_REPAIR on a
    // listener, which would read as a missing capability.
    check_movable(state_of(&tcp_info(fd)?)?)?;
    let was_in_repair = in_repair(fd)?;
    // Leaving repair mode clears SO_REUSEADDR; an error must not lose it.
    let reuse = get_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)
        .map_err(sys("getsockopt(SO_REUSEADDR)"))?
        != 0;
    if !was_in_repair {
        enter_repair(fd)?;
    }
    let result = dump_in_repair(fd);
    // Whatever happened, deselect the queues: in repair mode with the send
    // queue selected, a write by the application would be taken as already
    // sent data.
    let deselected = select_queue(fd, TCP_NO_QUEUE, "setsockopt(TCP_REPAIR_QUEUE=NONE)");
    match result.and_then(|image| deselected.map(|()| image)) {
        Ok(image) => Ok(image),
        Err(e) => {
            if !was_in_repair {
                // Best effort: the error to report is the first one.
                let _ = set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, TCP_REPAIR_OFF);
                if reuse {
                    let _ = allow_port_reuse(fd);
                }
            }
            Err(e)
        }
    }
}

fn dump_in_repair(fd: BorrowedFd<'_>) -> Result<SocketImage, RepairError> {
    let info = tcp_info(fd)?;
    let state = state_of(&info)?;
    // The state may have moved on between the first look and TCP_REPAIR=1.
    check_movable(state)?;

    let local = local_addr(fd)?;
    let peer = peer_addr(fd)?;

    let inq = ioctl_int(fd, SIOCINQ).map_err(sys("ioctl(SIOCINQ)"))? as usize;
    let outq = ioctl_int(fd, SIOCOUTQ).map_err(sys("ioctl(SIOCOUTQ)"))? as usize;
    let outq_unsent = ioctl_int(fd, SIOCOUTQNSD).map_err(sys("ioctl(SIOCOUTQNSD)"))? as usize;

    // The queue ioctls count in sequence space: in FIN_WAIT1 our FIN is
    // queued and unacknowledged and counts as one byte in both (in the
    // unsent count only while it has not been sent, and it cannot be sent
    // before the data ahead of it). In FIN_WAIT2 it has been acknowledged.
    let fin_queued = usize::from(state == TcpState::FinWait1);
    let unsent_data = if fin_queued == 1 {
        outq_unsent.saturating_sub(1)
    } else {
        outq_unsent
    };

    select_queue(fd, TCP_RECV_QUEUE, "setsockopt(TCP_REPAIR_QUEUE=RECV)")?;
    let rcv_nxt = get_int(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ)
        .map_err(sys("getsockopt(TCP_QUEUE_SEQ) of the receive queue"))? as u32;
    let recv_queue = peek_queue(fd, inq, "receive", "recv(MSG_PEEK) of the receive queue")?;

    select_queue(fd, TCP_SEND_QUEUE, "setsockopt(TCP_REPAIR_QUEUE=SEND)")?;
    let write_seq = get_int(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ)
        .map_err(sys("getsockopt(TCP_QUEUE_SEQ) of the send queue"))? as u32;
    let send_data = outq
        .checked_sub(fin_queued)
        .ok_or(RepairError::QueueChanged {
            queue: "send",
            expected: fin_queued,
            found: outq,
        })?;
    let send_queue = peek_queue(fd, send_data, "send", "recv(MSG_PEEK) of the send queue")?;
    if unsent_data > send_queue.len() {
        return Err(RepairError::QueueChanged {
            queue: "unsent part of the send",
            expected: send_queue.len(),
            found: unsent_data,
        });
    }

    // In repair mode TCP_MAXSEG reports the mss clamp: the peer's MSS option.
    let mss = get_int(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG)
        .map_err(sys("getsockopt(TCP_MAXSEG)"))? as u32;
    let timestamp = get_int(fd, libc::IPPROTO_TCP, libc::TCP_TIMESTAMP)
        .map_err(sys("getsockopt(TCP_TIMESTAMP)"))? as u32;
    let (window, len) = get_opt::<TcpRepairWindow>(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_WINDOW)
        .map_err(sys("getsockopt(TCP_REPAIR_WINDOW)"))?;
    if len != size_of::<TcpRepairWindow>() {
        return Err(RepairError::Sys {
            step: "getsockopt(TCP_REPAIR_WINDOW)",
            source: io::Error::new(io::ErrorKind::InvalidData, "short tcp_repair_window"),
        });
    }

    let (snd_ws, rcv_ws) = info.window_scales();
    let options = TcpOptions {
        sack: info.options & TCPI_OPT_SACK != 0,
        timestamps: info.options & TCPI_OPT_TIMESTAMPS != 0,
        window_scale: (info.options & TCPI_OPT_WSCALE != 0).then_some(WindowScale {
            snd: snd_ws,
            rcv: rcv_ws,
        }),
    };

    Ok(SocketImage {
        local,
        peer,
        state,
        rcv_nxt,
        write_seq,
        recv_queue,
        send_queue,
        unsent_len: unsent_data as u32,
        mss,
        options,
        timestamp,
        window: RepairWindow {
            snd_wl1: window.snd_wl1,
            snd_wnd: window.snd_wnd,
            max_window: window.max_window,
            rcv_wnd: window.rcv_wnd,
            rcv_wup: window.rcv_wup,
        },
    })
}

/// Takes a socket out of repair mode: the abort path of a move, after
/// [`dump`]. The kernel sends a window probe so the peer resynchronises.
/// The socket is left with `SO_REUSEADDR` set, as [`restore`] leaves it.
/// Does nothing to a socket that is not in repair mode.
pub fn leave_repair(fd: BorrowedFd<'_>) -> Result<(), RepairError> {
    check_tcp(fd)?;
    if !in_repair(fd)? {
        return Ok(());
    }
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, TCP_REPAIR_OFF).map_err(|e| {
        if e.raw_os_error() == Some(libc::EPERM) {
            RepairError::NotPermitted
        } else {
            sys("setsockopt(TCP_REPAIR=0)")(e)
        }
    })?;
    allow_port_reuse(fd)
}

/// Closes a TCP socket without a FIN or a RST: the peer keeps believing the
/// connection is alive, so it can be restored elsewhere.
///
/// Puts the socket in repair mode first if it is not already, then
/// disconnects it (`connect(AF_UNSPEC)`, which in repair mode sends nothing)
/// before closing the descriptor. The disconnect ends the connection at
/// once for every descriptor that refers to it, not only this one: the
/// frozen server's own, or a copy a child process holds between fork and
/// exec. Those see ECONNABORTED, and the connection's addresses are free at
/// once, for a restore on this very node (a rolled-back move).
///
/// Silence lasts only while the connection's packets stay stopped: once the
/// socket is gone, the stack answers the peer's next segment with a RST (or
/// a listener on the port does).
///
/// If the socket cannot be put in repair mode (a listener, or no
/// CAP_NET_ADMIN) the descriptor is still closed, normally, and the error
/// says why; for a listener that only resets connections never accepted.
pub fn close_silently(fd: OwnedFd) -> Result<(), RepairError> {
    let borrowed = fd.as_fd();
    check_tcp(borrowed)?;
    if tcp_state(borrowed)? == TcpState::Listen {
        return Err(RepairError::Listening);
    }
    if !in_repair(borrowed)? {
        enter_repair(borrowed)?;
    }
    // SAFETY: plain data, zeroes are valid.
    let mut unspec: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    unspec.ss_family = libc::AF_UNSPEC as libc::sa_family_t;
    // SAFETY: `unspec` is a valid sockaddr of the length given.
    crate::cvt(unsafe {
        libc::connect(
            borrowed.as_raw_fd(),
            &unspec as *const _ as *const libc::sockaddr,
            size_of::<libc::sockaddr_storage>() as socklen_t,
        )
    })
    .map_err(sys("connect(AF_UNSPEC) in repair mode"))?;
    // The return value of close() carries no information for a socket;
    // OwnedFd ignores it.
    drop(fd);
    Ok(())
}

/// Rebuilds a TCP socket from an image, in the calling thread's network
/// namespace, and returns it out of repair mode: a normal blocking TCP
/// socket, ready to be handed to the application, with `SO_REUSEADDR` set
/// so that it never stops a listener from binding its port.
///
/// Leaving repair mode sends a window probe, the restored socket's one quick
/// way to learn where the peer is. If the peer's answer is lost (the
/// address not reachable here yet, the lock still on) the socket waits for
/// the peer to send something, or for its own loss-probe timer (1 s) or
/// retransmission timer (3 s: it has no RTT sample); and a peer ignores a
/// second probe that comes within 500 ms of the first
/// (`net.ipv4.tcp_invalid_ratelimit`).
///
/// The local address need not be on this node yet (`IP_TRANSPARENT`), but
/// packets must reach the socket for the connection to go on. Needs
/// CAP_NET_ADMIN. On error nothing is left behind and nothing is sent to the
/// peer: the half-built socket is closed in repair mode.
pub fn restore(image: &SocketImage, options: &RestoreOptions) -> Result<OwnedFd, RepairError> {
    prepare(image, options)?.go_live()
}

/// A socket rebuilt from an image and still in repair mode: complete (queues,
/// options, windows) but silent — it has sent nothing yet. A move prepares
/// every socket, moves the address, announces it, and only then lets the
/// sockets go live, so the first segments they send (the window probe, the
/// never-sent tail) reach a client that already routes its answers here.
/// Dropping it closes the socket silently.
pub struct Prepared {
    fd: OwnedFd,
    unsent: Vec<u8>,
    fin: bool,
    local: SocketAddr,
    peer: SocketAddr,
    rcv_nxt: u32,
}

impl Prepared {
    /// Our address (VIP:port).
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The next sequence number expected from the client.
    pub fn rcv_nxt(&self) -> u32 {
        self.rcv_nxt
    }

    /// Appends client bytes that arrived while the connection was frozen
    /// (starting exactly at [`Prepared::rcv_nxt`]) to the receive queue, as
    /// if the kernel had received them: the socket acknowledges them when it
    /// goes live, so the client need not retransmit them.
    pub fn append_received(&mut self, bytes: &[u8]) -> Result<(), RepairError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let fd = self.fd.as_fd();
        select_queue(fd, TCP_RECV_QUEUE, "setsockopt(TCP_REPAIR_QUEUE=RECV)")?;
        let written = write_repair_queue(fd, bytes, "send() into the receive queue");
        select_queue(fd, TCP_NO_QUEUE, "setsockopt(TCP_REPAIR_QUEUE=NONE)")?;
        written?;
        self.rcv_nxt = self.rcv_nxt.wrapping_add(bytes.len() as u32);
        Ok(())
    }

    /// Leaves repair mode (the kernel sends a window probe), writes the
    /// never-sent tail and, for the FIN_WAIT states, shuts down the sending
    /// side again. On failure the socket is closed silently.
    pub fn go_live(self) -> Result<OwnedFd, RepairError> {
        let Prepared {
            fd, unsent, fin, ..
        } = self;
        match live(fd.as_fd(), &unsent, fin) {
            Ok(()) => Ok(fd),
            Err(e) => {
                let _ = set_int(
                    fd.as_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_REPAIR,
                    TCP_REPAIR_ON,
                );
                Err(e)
            }
        }
    }
}

impl AsFd for Prepared {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Rebuilds the socket of `image` up to, not including, leaving repair mode;
/// see [`Prepared`] and [`restore`] for the order.
pub fn prepare(image: &SocketImage, options: &RestoreOptions) -> Result<Prepared, RepairError> {
    image.validate()?;
    check_movable(image.state)?;
    // FIN_WAIT1 or FIN_WAIT2: our FIN is part of the image.
    let fin = image.state != TcpState::Established;
    let family = if image.local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket() has no memory-safety preconditions.
    let raw = crate::cvt(unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    })
    .map_err(sys("socket"))?;
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    match build(fd.as_fd(), image, options, fin) {
        Ok(()) => Ok(Prepared {
            fd,
            unsent: image.unsent().to_vec(),
            fin,
            local: image.local,
            peer: image.peer,
            rcv_nxt: image.rcv_nxt,
        }),
        Err(e) => {
            // Back into repair mode (a no-op if still there) so that closing
            // sends neither FIN nor RST: the connection is still alive at
            // the peer and the image can be restored again.
            let _ = set_int(
                fd.as_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_REPAIR,
                TCP_REPAIR_ON,
            );
            drop(fd);
            Err(e)
        }
    }
}

/// Makes a socket buffer at least `needed` bytes (kernel accounting, which
/// is what getsockopt reports), with the floor explained at [`SNDBUF_FLOOR`].
fn ensure_buffer(
    fd: BorrowedFd<'_>,
    get: c_int,
    force: c_int,
    needed: usize,
    floor: usize,
    step: &'static str,
) -> Result<(), RepairError> {
    let current = get_int(fd, libc::SOL_SOCKET, get).map_err(sys(step))? as usize;
    if current >= needed {
        return Ok(());
    }
    // The kernel doubles the value given (to account for its overhead) and
    // reports the doubled value.
    let value = (needed.max(floor) / 2).min(c_int::MAX as usize / 2) as c_int;
    set_int(fd, libc::SOL_SOCKET, force, value).map_err(sys(step))
}

/// Writes all of `data` into the selected repair queue. The kernel takes at
/// most about 68 KiB per call into the receive queue, and the send queue
/// takes what the send buffer holds, so this loops on short writes. Nothing
/// frees buffer space in repair mode: "would block" is an error (the
/// buffers were sized too small).
fn write_repair_queue(
    fd: BorrowedFd<'_>,
    data: &[u8],
    step: &'static str,
) -> Result<(), RepairError> {
    let mut written = 0;
    while written < data.len() {
        match send_nonblocking(fd, &data[written..]) {
            Ok(n) => written += n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(sys(step)(e)),
        }
    }
    Ok(())
}

/// One non-blocking `send` of `data`: how many bytes the kernel took, or
/// the error (`WriteZero` if it took none without saying why).
fn send_nonblocking(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a live, initialised byte slice.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            data.as_ptr().cast::<c_void>(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    match n {
        n if n > 0 => Ok(n as usize),
        0 => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the kernel accepted no bytes",
        )),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Writes the never-sent tail with normal sends. The send buffer was sized
/// to hold the whole send queue, so this normally never waits; if it must,
/// it waits for room at most [`TAIL_WRITE_TIMEOUT`] in all, then fails (the
/// caller still has the image, and the socket is discarded silently).
fn write_tail(fd: BorrowedFd<'_>, data: &[u8]) -> Result<(), RepairError> {
    const STEP: &str = "writing the never-sent tail of the send queue";
    let deadline = Instant::now() + TAIL_WRITE_TIMEOUT;
    let mut written = 0;
    while written < data.len() {
        let e = match send_nonblocking(fd, &data[written..]) {
            Ok(n) => {
                written += n;
                continue;
            }
            Err(e) => e,
        };
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(sys(STEP)(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the send buffer stayed full with {} of {} bytes written",
                            written,
                            data.len()
                        ),
                    )));
                }
                let mut pollfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let r = unsafe { libc::poll(&mut pollfd, 1, left.as_millis().max(1) as c_int) };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EINTR) {
                        return Err(sys(STEP)(e));
                    }
                }
            }
            _ => return Err(sys(STEP)(e)),
        }
    }
    Ok(())
}

/// `SO_REUSEADDR`, once out of repair mode (in repair mode it would replace
/// the forced reuse that lets bind() share the listener's port). Leaving
/// repair mode clears the forced reuse, and a connection without
/// SO_REUSEADDR stops the server from binding a new listener to its port.
/// Accepted sockets usually have it, inherited from their listener.
fn allow_port_reuse(fd: BorrowedFd<'_>) -> Result<(), RepairError> {
    set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).map_err(sys("setsockopt(SO_REUSEADDR)"))
}

fn shutdown_write(fd: BorrowedFd<'_>) -> Result<(), RepairError> {
    // SAFETY: shutdown() has no memory-safety preconditions.
    crate::cvt(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) })
        .map(drop)
        .map_err(sys("shutdown(SHUT_WR)"))
}

fn build(
    fd: BorrowedFd<'_>,
    image: &SocketImage,
    options: &RestoreOptions,
    fin: bool,
) -> Result<(), RepairError> {
    let tcp = libc::IPPROTO_TCP;
    // First of all: TCP_REPAIR also makes bind() ignore the address being in
    // use (by the listener, or a TIME_WAIT). Setting SO_REUSEADDR after it
    // would clear that again.
    enter_repair(fd)?;
    if let Some(mark) = options.mark {
        set_int(fd, libc::SOL_SOCKET, libc::SO_MARK, mark as c_int)
            .map_err(sys("setsockopt(SO_MARK)"))?;
    }
    // IP_TRANSPARENT, not IP_FREEBIND: with FREEBIND the bind succeeds
    // without the address, but the repair-mode connect then fails
    // (ENETUNREACH).
    if image.local.is_ipv4() {
        set_int(fd, libc::SOL_IP, libc::IP_TRANSPARENT, 1)
            .map_err(sys("setsockopt(IP_TRANSPARENT)"))?;
    } else {
        set_int(fd, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)
            .map_err(sys("setsockopt(IPV6_TRANSPARENT)"))?;
    }
    // Buffers big enough for the queues, before they are filled. The send
    // side allows for the kernel's per-segment overhead (up to about three
    // times the payload with small segments); the receive side gets whole
    // pages per segment.
    let send_len = image.send_queue.len();
    if send_len > 0 {
        ensure_buffer(
            fd,
            libc::SO_SNDBUF,
            libc::SO_SNDBUFFORCE,
            send_len.saturating_mul(4).saturating_add(256 << 10),
            SNDBUF_FLOOR,
            "setsockopt(SO_SNDBUFFORCE)",
        )?;
    }
    let recv_len = image.recv_queue.len();
    if recv_len > 0 {
        ensure_buffer(
            fd,
            libc::SO_RCVBUF,
            libc::SO_RCVBUFFORCE,
            recv_len.saturating_mul(2).saturating_add(256 << 10),
            RCVBUF_FLOOR,
            "setsockopt(SO_RCVBUFFORCE)",
        )?;
    }

    let (local, local_len) = raw_addr(&image.local);
    // SAFETY: `local` holds a sockaddr of `local_len` bytes.
    crate::cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &local as *const _ as *const libc::sockaddr,
            local_len,
        )
    })
    .map_err(sys("bind"))?;

    // Sequence numbers of the queue heads; they can only be set before
    // connect. In FIN_WAIT states write_seq counts our FIN: the socket is
    // rebuilt without it and shut down at the end.
    let data_write_seq = image.write_seq.wrapping_sub(u32::from(fin));
    select_queue(fd, TCP_RECV_QUEUE, "setsockopt(TCP_REPAIR_QUEUE=RECV)")?;
    set_int(
        fd,
        tcp,
        libc::TCP_QUEUE_SEQ,
        image.recv_queue_seq() as c_int,
    )
    .map_err(sys("setsockopt(TCP_QUEUE_SEQ) of the receive queue"))?;
    select_queue(fd, TCP_SEND_QUEUE, "setsockopt(TCP_REPAIR_QUEUE=SEND)")?;
    let snd_una = data_write_seq.wrapping_sub(send_len as u32);
    set_int(fd, tcp, libc::TCP_QUEUE_SEQ, snd_una as c_int)
        .map_err(sys("setsockopt(TCP_QUEUE_SEQ) of the send queue"))?;
    // Before connect, or the segment size stays at the 536-byte default.
    set_int(
        fd,
        tcp,
        libc::TCP_MAXSEG,
        image.mss.min(MAX_USER_MSS) as c_int,
    )
    .map_err(sys("setsockopt(TCP_MAXSEG)"))?;

    let (peer, peer_len) = raw_addr(&image.peer);
    // SAFETY: `peer` holds a sockaddr of `peer_len` bytes.
    crate::cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &peer as *const _ as *const libc::sockaddr,
            peer_len,
        )
    })
    .map_err(sys("connect (repair mode)"))?;

    // The options the handshake agreed; without them the restored socket
    // would use no window scaling, no SACK and no timestamps.
    let mut repair_options = vec![TcpRepairOpt {
        opt_code: TCPOPT_MAXSEG,
        opt_val: image.mss,
    }];
    if let Some(ws) = image.options.window_scale {
        repair_options.push(TcpRepairOpt {
            opt_code: TCPOPT_WINDOW,
            opt_val: u32::from(ws.snd) | (u32::from(ws.rcv) << 16),
        });
    }
    if image.options.sack {
        repair_options.push(TcpRepairOpt {
            opt_code: TCPOPT_SACK_PERM,
            opt_val: 0,
        });
    }
    if image.options.timestamps {
        repair_options.push(TcpRepairOpt {
            opt_code: TCPOPT_TIMESTAMP,
            opt_val: 0,
        });
    }
    set_opt_slice(fd, tcp, libc::TCP_REPAIR_OPTIONS, &repair_options)
        .map_err(sys("setsockopt(TCP_REPAIR_OPTIONS)"))?;

    // Since Linux 6.7 the lowest bit of the value is a flag, not a tick: set,
    // it switches the socket to microsecond timestamps. It belongs to the
    // connection (the peer has seen that clock), so an override keeps the
    // image's bit.
    let timestamp = match options.timestamp {
        Some(value) => (value & !1) | (image.timestamp & 1),
        None => image.timestamp,
    };
    set_int(fd, tcp, libc::TCP_TIMESTAMP, timestamp as c_int)
        .map_err(sys("setsockopt(TCP_TIMESTAMP)"))?;

    select_queue(fd, TCP_RECV_QUEUE, "setsockopt(TCP_REPAIR_QUEUE=RECV)")?;
    write_repair_queue(fd, &image.recv_queue, "send() into the receive queue")?;
    // Sent but unacknowledged bytes: in repair mode the kernel queues them as
    // already sent and retransmits them when the peer asks or on timeout.
    select_queue(fd, TCP_SEND_QUEUE, "setsockopt(TCP_REPAIR_QUEUE=SEND)")?;
    write_repair_queue(fd, image.unacked(), "send() into the send queue")?;

    // Only now: the kernel checks rcv_wup against rcv_nxt, which the receive
    // queue has just advanced.
    let window = TcpRepairWindow {
        snd_wl1: image.window.snd_wl1,
        snd_wnd: image.window.snd_wnd,
        max_window: image.window.max_window,
        rcv_wnd: image.window.rcv_wnd,
        rcv_wup: image.window.rcv_wup,
    };
    set_opt(fd, tcp, libc::TCP_REPAIR_WINDOW, &window)
        .map_err(sys("setsockopt(TCP_REPAIR_WINDOW)"))?;
    if fin && image.unsent().is_empty() {
        // Our FIN follows the bytes in flight: shut down now, in repair mode
        // with the send queue selected, and the kernel queues the FIN as
        // already sent (snd_nxt = write_seq) without transmitting it. The
        // peer's ACK of it — it may have been acknowledged long ago — is
        // then valid; a FIN queued after repair would sit one byte behind
        // that ACK, which the kernel discards as acknowledging unsent data.
        select_queue(fd, TCP_SEND_QUEUE, "setsockopt(TCP_REPAIR_QUEUE=SEND)")?;
        shutdown_write(fd)?;
    }
    // No queue selected while the socket waits in repair mode.
    select_queue(fd, TCP_NO_QUEUE, "setsockopt(TCP_REPAIR_QUEUE=NONE)")?;
    Ok(())
}

/// The last steps of a restore: out of repair mode, then the tail and FIN.
fn live(fd: BorrowedFd<'_>, unsent: &[u8], fin: bool) -> Result<(), RepairError> {
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, TCP_REPAIR_OFF)
        .map_err(sys("setsockopt(TCP_REPAIR=0)"))?;
    allow_port_reuse(fd)?;

    write_tail(fd, unsent)?;
    if fin && !unsent.is_empty() {
        // Our FIN goes after the never-sent tail (without a tail it was
        // queued as sent in repair mode, see `build`).
        shutdown_write(fd)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_structs_have_the_kernel_sizes() {
        assert_eq!(size_of::<TcpRepairOpt>(), 8);
        assert_eq!(size_of::<TcpRepairWindow>(), 20);
        assert_eq!(size_of::<TcpInfoHead>(), 8);
    }

    #[test]
    fn window_scale_bitfields_split_like_gcc_lays_them_out() {
        let info = TcpInfoHead {
            wscales: 0x7a,
            ..TcpInfoHead::default()
        };
        if cfg!(target_endian = "little") {
            assert_eq!(info.window_scales(), (0xa, 0x7));
        }
    }

    #[test]
    fn socket_addresses_round_trip() {
        for text in ["198.18.0.100:7000", "[2001:db8::1]:443", "[fe80::1%3]:22"] {
            let addr: SocketAddr = text.parse().unwrap();
            let (storage, len) = raw_addr(&addr);
            assert_eq!(socket_addr(&storage, len).unwrap(), addr);
        }
    }

    #[test]
    fn only_established_and_fin_wait_states_move() {
        for n in 1..=12 {
            let state = TcpState::from_kernel(n).unwrap();
            let result = check_movable(state);
            match state {
                TcpState::Established | TcpState::FinWait1 | TcpState::FinWait2 => {
                    assert!(result.is_ok(), "{state}")
                }
                TcpState::Listen => assert!(matches!(result, Err(RepairError::Listening))),
                _ => assert!(
                    matches!(result, Err(RepairError::UnsupportedState(s)) if s == state),
                    "{state}"
                ),
            }
        }
    }

    #[test]
    fn refusals_explain_themselves() {
        let text = RepairError::UnsupportedState(TcpState::CloseWait).to_string();
        assert!(text.contains("CLOSE_WAIT"), "{text}");
        assert!(text.contains("FIN"), "{text}");
        assert!(RepairError::Listening.to_string().contains("listening"));
        assert!(RepairError::NotPermitted
            .to_string()
            .contains("CAP_NET_ADMIN"));
    }
}
