//! NFQUEUE: packets held by netfilter until user space gives a verdict.
//!
//! tandem's capture (docs/architecture.md §3.1) queues every client packet to the VIP in
//! the INPUT hook and every SYN-ACK of the service in OUTPUT; the node decides
//! each packet's fate later, out of order, once it is committed. This module
//! speaks the nfnetlink_queue protocol directly over a netlink socket: the
//! `nfq` crate's released version neither exposes its descriptor (so it
//! cannot be polled beside other sockets) nor sends verdicts while another
//! thread waits for packets. Here the socket is an ordinary descriptor
//! ([`NfQueue::as_fd`]) and packets are read in batches.
//!
//! Fail-closed is the rules' business, not this module's: the rules that
//! feed a queue never carry `--queue-bypass`, so without a reader the kernel
//! drops the packets instead of delivering them unlogged.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;

const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_CFG_CMD_UNBIND: u8 = 2;
const NFQNL_COPY_PACKET: u8 = 2;
const NFQA_CFG_F_GSO: u32 = 1 << 2;

const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_MARK: u16 = 3;
const NFQA_IFINDEX_INDEV: u16 = 5;
const NFQA_IFINDEX_OUTDEV: u16 = 6;
const NFQA_PAYLOAD: u16 = 10;
const NFQA_SKB_INFO: u16 = 14;
const NFQA_SKB_CSUMNOTREADY: u32 = 1 << 0;
const NFQA_SKB_GSO: u32 = 1 << 1;
const NFQA_SKB_CSUM_NOTVERIFIED: u32 = 1 << 2;

const NLMSG_HDRLEN: usize = 16;
/// Datagrams taken per `recvmmsg`.
const RECV_BATCH: usize = 32;
/// Room for one datagram: a whole 64 KiB packet plus its netlink headers.
const RECV_SLOT: usize = 68 * 1024;
const NFGEN_HDRLEN: usize = 4;
const NLA_HDRLEN: usize = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Netfilter hooks, numbered as the kernel numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    PreRouting,
    Input,
    Forward,
    Output,
    PostRouting,
    Other(u8),
}

impl Hook {
    fn from_kernel(n: u8) -> Hook {
        match n {
            0 => Hook::PreRouting,
            1 => Hook::Input,
            2 => Hook::Forward,
            3 => Hook::Output,
            4 => Hook::PostRouting,
            n => Hook::Other(n),
        }
    }
}

/// What the kernel knows about a queued packet's TCP/UDP checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumState {
    /// Verified by the kernel or hardware: trust it.
    Verified,
    /// Not verified yet: user space must check it before trusting the bytes.
    NotVerified,
    /// Not computed yet (a locally generated or veth packet with checksum
    /// offload): the field holds a partial sum; the packet never crossed a
    /// wire, so there is nothing to verify.
    NotReady,
}

/// The verdict on a queued packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it continue through the stack.
    Accept,
    /// Discard it.
    Drop,
}

impl Verdict {
    fn to_kernel(self) -> u32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
        }
    }
}

/// One packet taken from the queue, owned (its bytes copied out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedPacket {
    /// The kernel's id, needed for the verdict.
    pub id: u32,
    pub hook: Hook,
    /// The packet from its network header on.
    pub payload: Vec<u8>,
    pub checksum: ChecksumState,
    /// A GSO/GRO super-packet: longer than the MTU, one header for many segments.
    pub gso: bool,
    pub mark: u32,
    pub in_ifindex: u32,
    pub out_ifindex: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum NfQueueError {
    #[error("cannot open a netfilter netlink socket: {0} (needs root / CAP_NET_ADMIN)")]
    Open(#[source] io::Error),
    #[error(
        "the kernel refused to bind queue {queue}: {source} (is another process bound to it?)"
    )]
    Bind {
        queue: u16,
        #[source]
        source: io::Error,
    },
    #[error("configuring queue {queue} ({what}): {source}")]
    Config {
        queue: u16,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("queue {queue}: {source}")]
    Io {
        queue: u16,
        #[source]
        source: io::Error,
    },
    #[error("queue {queue}: {count} packets were lost because this reader fell behind (socket buffer overflow)")]
    Overrun { queue: u16, count: u64 },
}

/// Settings of a queue, applied at [`NfQueue::bind`].
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    /// How many packets the kernel holds before it drops new ones.
    pub max_len: u32,
    /// Bytes of each packet copied to user space (up to 65535).
    pub copy_range: u16,
    /// Take GSO/GRO super-packets whole instead of having the kernel
    /// segment them first.
    pub gso: bool,
    /// The netlink socket's receive buffer, in bytes.
    pub socket_buffer: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_len: 65536,
            copy_range: 0xffff,
            gso: true,
            socket_buffer: 8 << 20,
        }
    }
}

/// A netlink socket bound to one NFQUEUE number, in the namespace of the
/// thread that bound it.
pub struct NfQueue {
    fd: OwnedFd,
    queue: u16,
    seq: u32,
    buf: Vec<u8>,
    /// Packets lost to socket buffer overruns (ENOBUFS), since bind.
    overruns: u64,
    /// Error reports the kernel sent back (verdicts it refused), since bind.
    error_reports: u64,
}

impl NfQueue {
    /// Opens a socket and binds it to `queue`.
    pub fn bind(queue: u16, config: QueueConfig) -> Result<NfQueue, NfQueueError> {
        // SAFETY: plain socket creation; the fd is owned at once.
        let fd = crate::cvt(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        })
        .map_err(NfQueueError::Open)?;
        // SAFETY: fd was just returned by socket() and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl with its family set is a valid
        // "let the kernel pick the port id" address.
        unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            crate::cvt(libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            ))
            .map_err(NfQueueError::Open)?;
        }
        let size = config.socket_buffer.min(i32::MAX as usize) as libc::c_int;
        // Root may exceed rmem_max with the FORCE variant; fall back quietly.
        if crate::set_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
            let _ = crate::set_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, size);
        }
        let mut this = NfQueue {
            fd,
            queue,
            seq: 0,
            buf: vec![0u8; RECV_BATCH * RECV_SLOT],
            overruns: 0,
            error_reports: 0,
        };
        let cmd = [NFQNL_CFG_CMD_BIND, 0, 0, 0];
        this.request(&[(NFQA_CFG_CMD, &cmd[..])])
            .map_err(|source| NfQueueError::Bind { queue, source })?;
        let mut params = [0u8; 5];
        params[..4].copy_from_slice(&u32::from(config.copy_range).to_be_bytes());
        params[4] = NFQNL_COPY_PACKET;
        this.request(&[(NFQA_CFG_PARAMS, &params[..])])
            .map_err(|source| NfQueueError::Config {
                queue,
                what: "copy mode",
                source,
            })?;
        this.request(&[(NFQA_CFG_QUEUE_MAXLEN, &config.max_len.to_be_bytes()[..])])
            .map_err(|source| NfQueueError::Config {
                queue,
                what: "maximum length",
                source,
            })?;
        let flags = if config.gso { NFQA_CFG_F_GSO } else { 0 };
        this.request(&[
            (NFQA_CFG_FLAGS, &flags.to_be_bytes()[..]),
            (NFQA_CFG_MASK, &NFQA_CFG_F_GSO.to_be_bytes()[..]),
        ])
        .map_err(|source| NfQueueError::Config {
            queue,
            what: "GSO flag",
            source,
        })?;
        Ok(this)
    }

    /// The queue number.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Packets this reader lost because its socket buffer overflowed.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// Error reports the kernel sent back (e.g. a verdict for a packet id it
    /// no longer holds), since bind.
    pub fn error_reports(&self) -> u64 {
        self.error_reports
    }

    /// Switches the socket between blocking and non-blocking reads.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        // SAFETY: F_GETFL/F_SETFL on our own descriptor.
        unsafe {
            let flags = crate::cvt(libc::fcntl(self.fd.as_raw_fd(), libc::F_GETFL))?;
            let flags = if nonblocking {
                flags | libc::O_NONBLOCK
            } else {
                flags & !libc::O_NONBLOCK
            };
            crate::cvt(libc::fcntl(self.fd.as_raw_fd(), libc::F_SETFL, flags))?;
        }
        Ok(())
    }

    /// Makes blocking reads give up after `timeout` (with
    /// `Err(Io(WouldBlock))`), so a reader thread can notice it should stop.
    pub fn set_read_timeout(&self, timeout: std::time::Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        crate::set_opt(self.fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
    }

    /// Reads what one `recv` returns — often many packets — and appends them
    /// to `out`. Blocks unless the socket is non-blocking; returns
    /// `Err(Io(WouldBlock))` then when nothing is pending. A socket-buffer
    /// overrun is counted ([`NfQueue::overruns`]) and reported as
    /// [`NfQueueError::Overrun`]; the queue stays usable.
    pub fn recv_batch(&mut self, out: &mut Vec<QueuedPacket>) -> Result<usize, NfQueueError> {
        // Each queued packet is its own netlink datagram: recvmmsg takes up
        // to RECV_BATCH of them per system call, waiting only for the first.
        let slots = RECV_BATCH;
        let mut iovecs: Vec<libc::iovec> = self
            .buf
            .chunks_mut(RECV_SLOT)
            .take(slots)
            .map(|slot| libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: slot.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain data; zeroed is a valid "no name, no
        // control" header, then pointed at one live iovec each.
        let mut headers: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| unsafe {
                let mut h: libc::mmsghdr = std::mem::zeroed();
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let received = loop {
            // SAFETY: the headers point at iovecs that point into self.buf,
            // all alive and unaliased for the duration of the call.
            let n = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    headers.as_mut_ptr(),
                    headers.len() as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) => {
                    self.overruns += 1;
                    return Err(NfQueueError::Overrun {
                        queue: self.queue,
                        count: self.overruns,
                    });
                }
                _ => {
                    return Err(NfQueueError::Io {
                        queue: self.queue,
                        source: err,
                    })
                }
            }
        };
        let lens: Vec<usize> = headers[..received]
            .iter()
            .map(|h| h.msg_len as usize)
            .collect();
        drop(headers);
        drop(iovecs);
        let before = out.len();
        let mut errors = 0u64;
        let mut first_error = None;
        for (slot, len) in self.buf.chunks(RECV_SLOT).zip(lens) {
            // An error report (a verdict for a packet the kernel no longer
            // holds) must not cost the packets in the other datagrams of
            // this batch: they would never get a verdict.
            if let Err(err) = self.parse_datagram(&slot[..len.min(slot.len())], out) {
                errors += 1;
                first_error.get_or_insert(err);
            }
        }
        self.error_reports += errors;
        if out.len() == before {
            if let Some(err) = first_error {
                return Err(err);
            }
        }
        Ok(out.len() - before)
    }

    /// Appends the packets of one netlink datagram to `out`.
    fn parse_datagram(
        &self,
        datagram: &[u8],
        out: &mut Vec<QueuedPacket>,
    ) -> Result<(), NfQueueError> {
        for message in NlMessages::new(datagram) {
            let (ty, body) = message;
            if ty == libc::NLMSG_ERROR as u16 {
                let code = body
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                if code != 0 {
                    return Err(NfQueueError::Io {
                        queue: self.queue,
                        source: io::Error::from_raw_os_error(-code),
                    });
                }
                continue;
            }
            if ty != (NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET) {
                continue;
            }
            if let Some(packet) = parse_packet(body) {
                out.push(packet);
            }
        }
        Ok(())
    }

    /// Gives one packet its verdict.
    pub fn verdict(&mut self, id: u32, verdict: Verdict) -> Result<(), NfQueueError> {
        self.verdicts(&[(id, verdict)])
    }

    /// Gives many packets their verdicts, in any order, in one system call.
    pub fn verdicts(&mut self, verdicts: &[(u32, Verdict)]) -> Result<(), NfQueueError> {
        let mut buf = Vec::with_capacity(verdicts.len() * 32);
        for &(id, verdict) in verdicts {
            self.encode_verdict(&mut buf, NFQNL_MSG_VERDICT, id, verdict);
        }
        self.send_verdicts(&buf)
    }

    /// Gives every packet with an id up to `id` (that has no verdict yet)
    /// the same verdict: the cheap path when packets are handled in order.
    pub fn verdict_batch(&mut self, id: u32, verdict: Verdict) -> Result<(), NfQueueError> {
        let mut buf = Vec::with_capacity(32);
        self.encode_verdict(&mut buf, NFQNL_MSG_VERDICT_BATCH, id, verdict);
        self.send_verdicts(&buf)
    }

    fn encode_verdict(&mut self, buf: &mut Vec<u8>, kind: u16, id: u32, verdict: Verdict) {
        let mut hdr = [0u8; 8];
        hdr[..4].copy_from_slice(&verdict.to_kernel().to_be_bytes());
        hdr[4..].copy_from_slice(&id.to_be_bytes());
        self.seq = self.seq.wrapping_add(1);
        encode(
            buf,
            NFNL_SUBSYS_QUEUE << 8 | kind,
            libc::NLM_F_REQUEST as u16,
            self.seq,
            self.queue,
            &[(NFQA_VERDICT_HDR, &hdr[..])],
        );
    }

    fn send_verdicts(&self, buf: &[u8]) -> Result<(), NfQueueError> {
        self.send(buf).map_err(|source| NfQueueError::Io {
            queue: self.queue,
            source,
        })
    }

    /// Sends a configuration message and waits for the kernel's answer.
    fn request(&mut self, attrs: &[(u16, &[u8])]) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut buf = Vec::new();
        encode(
            &mut buf,
            NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_CONFIG,
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            seq,
            self.queue,
            attrs,
        );
        self.send(&buf)?;
        loop {
            // SAFETY: recv into our own buffer, bounded by its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            for (ty, body) in NlMessages::new(&self.buf[..n as usize]) {
                if ty == libc::NLMSG_ERROR as u16 && body.len() >= 4 + NLMSG_HDRLEN {
                    let code = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                    let echoed_seq = u32::from_ne_bytes([body[12], body[13], body[14], body[15]]);
                    if echoed_seq != seq {
                        continue;
                    }
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
            }
        }
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: a zeroed sockaddr_nl with pid 0 addresses the kernel; the
        // buffer outlives the call.
        unsafe {
            let mut to: libc::sockaddr_nl = std::mem::zeroed();
            to.nl_family = libc::AF_NETLINK as u16;
            loop {
                let n = libc::sendto(
                    self.fd.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    0,
                    (&to as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                );
                if n >= 0 {
                    return Ok(());
                }
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

impl AsFd for NfQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for NfQueue {
    fn drop(&mut self) {
        // Closing the socket unbinds too; saying so first lets the kernel
        // drop what is still queued at once.
        let cmd = [NFQNL_CFG_CMD_UNBIND, 0, 0, 0];
        let mut buf = Vec::new();
        encode(
            &mut buf,
            NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_CONFIG,
            libc::NLM_F_REQUEST as u16,
            self.seq.wrapping_add(1),
            self.queue,
            &[(NFQA_CFG_CMD, &cmd[..])],
        );
        let _ = self.send(&buf);
    }
}

/// Kernel counters of one queue, from `/proc/net/netfilter/nfnetlink_queue`
/// (of the calling thread's namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Packets waiting for a verdict now.
    pub waiting: u64,
    /// Packets dropped because the queue was full.
    pub queue_dropped: u64,
    /// Packets dropped because the reader's socket buffer was full.
    pub user_dropped: u64,
}

/// Reads the kernel's counters for `queue`; `None` if nobody is bound to it.
pub fn queue_stats(queue: u16) -> io::Result<Option<QueueStats>> {
    let text = // thread-self: the namespace is the calling thread's, not the process's.
    std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue")?;
    Ok(parse_queue_stats(&text, queue))
}

fn parse_queue_stats(text: &str, queue: u16) -> Option<QueueStats> {
    text.lines().find_map(|line| {
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(|f| f.parse().ok())
            .collect::<Option<Vec<_>>>()?;
        // queue_number peer_portid queue_total copy_mode copy_range
        // queue_dropped user_dropped id_sequence 1
        if fields.len() < 7 || fields[0] != u64::from(queue) {
            return None;
        }
        Some(QueueStats {
            waiting: fields[2],
            queue_dropped: fields[5],
            user_dropped: fields[6],
        })
    })
}

/// Appends one nfnetlink message (header, nfgenmsg, attributes) to `buf`.
fn encode(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, queue: u16, attrs: &[(u16, &[u8])]) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
    // nfgenmsg: family AF_UNSPEC, version 0, resource id = queue (big endian).
    buf.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    buf.extend_from_slice(&queue.to_be_bytes());
    for (kind, value) in attrs {
        let len = NLA_HDRLEN + value.len();
        buf.extend_from_slice(&(len as u16).to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(value);
        buf.resize(buf.len() + (align4(len) - len), 0);
    }
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    buf[start + 4..start + 6].copy_from_slice(&ty.to_ne_bytes());
    buf[start + 6..start + 8].copy_from_slice(&flags.to_ne_bytes());
    buf[start + 8..start + 12].copy_from_slice(&seq.to_ne_bytes());
    // Port id 0: the kernel fills in ours.
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The netlink messages in a buffer, as (type, body after the nlmsghdr);
/// stops at the first malformed length rather than reading past it.
struct NlMessages<'a> {
    rest: &'a [u8],
}

impl<'a> NlMessages<'a> {
    fn new(buf: &'a [u8]) -> Self {
        NlMessages { rest: buf }
    }
}

impl<'a> Iterator for NlMessages<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(self.rest[0..4].try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(self.rest[4..6].try_into().ok()?);
        if len < NLMSG_HDRLEN || len > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let body = &self.rest[NLMSG_HDRLEN..len];
        self.rest = self.rest.get(align4(len)..).unwrap_or(&[]);
        Some((ty, body))
    }
}

/// The attributes after the nfgenmsg of a message body, as (type, value).
fn attributes(body: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = body.get(NFGEN_HDRLEN..).unwrap_or(&[]);
    std::iter::from_fn(move || {
        if rest.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > rest.len() {
            rest = &[];
            return None;
        }
        let value = &rest[NLA_HDRLEN..len];
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some((kind, value))
    })
}

fn be32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?))
}

/// A packet message's fields; `None` if it lacks the packet header.
fn parse_packet(body: &[u8]) -> Option<QueuedPacket> {
    let mut packet = QueuedPacket {
        id: 0,
        hook: Hook::Other(255),
        payload: Vec::new(),
        checksum: ChecksumState::Verified,
        gso: false,
        mark: 0,
        in_ifindex: 0,
        out_ifindex: 0,
    };
    let mut have_header = false;
    for (kind, value) in attributes(body) {
        match kind {
            NFQA_PACKET_HDR if value.len() >= 7 => {
                packet.id = be32(value)?;
                packet.hook = Hook::from_kernel(value[6]);
                have_header = true;
            }
            NFQA_PAYLOAD => packet.payload = value.to_vec(),
            NFQA_MARK => packet.mark = be32(value).unwrap_or(0),
            NFQA_IFINDEX_INDEV => packet.in_ifindex = be32(value).unwrap_or(0),
            NFQA_IFINDEX_OUTDEV => packet.out_ifindex = be32(value).unwrap_or(0),
            NFQA_SKB_INFO => {
                let info = be32(value).unwrap_or(0);
                packet.gso = info & NFQA_SKB_GSO != 0;
                packet.checksum = if info & NFQA_SKB_CSUMNOTREADY != 0 {
                    ChecksumState::NotReady
                } else if info & NFQA_SKB_CSUM_NOTVERIFIED != 0 {
                    ChecksumState::NotVerified
                } else {
                    ChecksumState::Verified
                };
            }
            _ => {}
        }
    }
    have_header.then_some(packet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_walks_messages() {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            0x0301,
            1,
            7,
            42,
            &[
                (NFQA_VERDICT_HDR, &[1, 2, 3, 4, 5, 6, 7, 8][..]),
                (NFQA_MARK, &[9, 9, 9][..]),
            ],
        );
        encode(&mut buf, 0x0302, 1, 8, 42, &[]);
        let messages: Vec<_> = NlMessages::new(&buf).collect();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].0, 0x0301);
        assert_eq!(&messages[0].1[2..4], &42u16.to_be_bytes());
        let attrs: Vec<_> = attributes(messages[0].1).collect();
        assert_eq!(
            attrs,
            vec![
                (NFQA_VERDICT_HDR, &[1, 2, 3, 4, 5, 6, 7, 8][..]),
                (NFQA_MARK, &[9, 9, 9][..])
            ]
        );
        assert_eq!(attributes(messages[1].1).count(), 0);
    }

    #[test]
    fn malformed_buffers_end_the_walk_without_panicking() {
        for len in 0..64usize {
            for fill in [0u8, 0xff, 0x10] {
                let buf = vec![fill; len];
                for (_, body) in NlMessages::new(&buf) {
                    let _ = parse_packet(body);
                }
                let _ = parse_packet(&buf);
            }
        }
        // A length field pointing past the end.
        let mut buf = Vec::new();
        encode(&mut buf, 0x0300, 0, 1, 0, &[(NFQA_PAYLOAD, &[1; 10][..])]);
        buf[0] = 200;
        assert_eq!(NlMessages::new(&buf).count(), 0);
    }

    #[test]
    fn parses_the_proc_counters() {
        let text = "    3  12345     2 2 65535     7    11 99 1\n   40  999     0 2 65535     0     0 5 1\n";
        assert_eq!(
            parse_queue_stats(text, 3),
            Some(QueueStats {
                waiting: 2,
                queue_dropped: 7,
                user_dropped: 11
            })
        );
        assert_eq!(parse_queue_stats(text, 4), None);
    }

    fn iptables(args: &str) {
        let status = std::process::Command::new("iptables")
            .arg("-w")
            .args(args.split_whitespace())
            .status()
            .expect("iptables runs");
        assert!(status.success(), "iptables {args}");
    }

    /// Real packets through a real queue, in a private namespace: they wait
    /// for verdicts, arrive whole, and without a reader nothing gets through.
    #[test]
    fn holds_packets_until_their_verdict_and_fails_closed() {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        use std::time::Duration;
        crate::netns::run_in_private(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let queue_num = 7;
            let mut queue = NfQueue::bind(queue_num, QueueConfig::default()).unwrap();
            queue.set_nonblocking(true).unwrap();
            iptables(&format!(
                "-A INPUT -p tcp --dport {port} -j NFQUEUE --queue-num {queue_num}"
            ));

            // A reader that holds every packet while `hold` is set, then
            // accepts them newest first (out of order).
            let hold = Arc::new(AtomicBool::new(true));
            let seen: Arc<Mutex<Vec<QueuedPacket>>> = Arc::default();
            let stop = Arc::new(AtomicBool::new(false));
            let reader = {
                let (hold, seen, stop) = (hold.clone(), seen.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut pending = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let mut batch = Vec::new();
                        match queue.recv_batch(&mut batch) {
                            Ok(_) => {}
                            Err(NfQueueError::Io { source, .. })
                                if source.kind() == io::ErrorKind::WouldBlock =>
                            {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            Err(err) => panic!("{err}"),
                        }
                        for packet in batch {
                            pending.push(packet.id);
                            seen.lock().unwrap().push(packet);
                        }
                        if !hold.load(Ordering::SeqCst) && !pending.is_empty() {
                            let verdicts: Vec<_> = pending
                                .drain(..)
                                .rev()
                                .map(|id| (id, Verdict::Accept))
                                .collect();
                            queue.verdicts(&verdicts).unwrap();
                        }
                    }
                    queue
                })
            };

            hold.store(false, Ordering::SeqCst);
            let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            hold.store(true, Ordering::SeqCst);
            client.write_all(b"held").unwrap();
            server
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0u8; 4];
            assert!(
                server.read_exact(&mut buf).is_err(),
                "a held packet got through"
            );
            let stats = queue_stats(queue_num).unwrap().expect("the queue is bound");
            assert!(stats.waiting >= 1, "{stats:?}");
            hold.store(false, Ordering::SeqCst);
            server
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            server.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"held");
            {
                let seen = seen.lock().unwrap();
                assert!(seen.iter().all(|p| p.hook == Hook::Input));
                assert!(
                    seen.iter().any(|p| p.payload.ends_with(b"held")),
                    "payload not captured whole"
                );
                // Loopback packets carry offloaded checksums.
                assert!(seen.iter().all(|p| p.checksum == ChecksumState::NotReady));
            }

            // No reader: fail closed, nothing is delivered.
            stop.store(true, Ordering::SeqCst);
            drop(reader.join().unwrap());
            assert!(queue_stats(queue_num).unwrap().is_none());
            client.write_all(b"lost").unwrap();
            server
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            assert!(
                server.read_exact(&mut buf).is_err(),
                "delivered without a reader"
            );
        })
        .unwrap();
    }

    /// With a 1500-byte MTU, a bulk write on loopback leaves as GSO
    /// super-packets; they must reach the reader whole, flagged, and intact.
    #[test]
    fn gso_super_packets_arrive_whole() {
        use std::io::{Read, Write};
        crate::netns::run_in_private(|| {
            let status = std::process::Command::new("ip")
                .args(["link", "set", "lo", "mtu", "1500"])
                .status()
                .unwrap();
            assert!(status.success());
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let mut queue = NfQueue::bind(13, QueueConfig::default()).unwrap();
            queue
                .set_read_timeout(std::time::Duration::from_millis(200))
                .unwrap();
            iptables(&format!(
                "-A INPUT -p tcp --dport {port} -j NFQUEUE --queue-num 13"
            ));
            let reader = std::thread::spawn(move || {
                let mut biggest = 0usize;
                let mut gso = 0usize;
                let mut total_payload = 0usize;
                loop {
                    let mut batch = Vec::new();
                    match queue.recv_batch(&mut batch) {
                        Ok(_) => {}
                        Err(NfQueueError::Io { source, .. })
                            if source.kind() == io::ErrorKind::WouldBlock =>
                        {
                            return (biggest, gso, total_payload)
                        }
                        Err(err) => panic!("{err}"),
                    }
                    for p in &batch {
                        biggest = biggest.max(p.payload.len());
                        gso += usize::from(p.gso);
                        // IPv4 total length covers the whole super-packet.
                        let total = u16::from_be_bytes([p.payload[2], p.payload[3]]) as usize;
                        assert_eq!(total, p.payload.len(), "a packet was cut short");
                        let ihl = usize::from(p.payload[0] & 0xf) * 4;
                        let doff = usize::from(p.payload[ihl + 12] >> 4) * 4;
                        total_payload += p.payload.len() - ihl - doff;
                    }
                    let verdicts: Vec<_> = batch.iter().map(|p| (p.id, Verdict::Accept)).collect();
                    queue.verdicts(&verdicts).unwrap();
                }
            });
            let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            let data = vec![0xabu8; 1 << 20];
            let writer = std::thread::spawn(move || client.write_all(&data).unwrap());
            let mut got = vec![0u8; 1 << 20];
            server.read_exact(&mut got).unwrap();
            writer.join().unwrap();
            assert!(got.iter().all(|&b| b == 0xab));
            let (biggest, gso, total_payload) = reader.join().unwrap();
            assert!(gso > 0, "no GSO packet seen");
            assert!(biggest > 1500, "the biggest packet was {biggest} bytes");
            // Every delivered byte crossed the queue; retransmissions may
            // add more.
            assert!(
                total_payload >= 1 << 20,
                "captured {total_payload} bytes of payload"
            );
        })
        .unwrap();
    }

    /// One batch verdict releases every earlier packet still waiting.
    #[test]
    fn a_batch_verdict_covers_every_earlier_packet() {
        use std::io::{Read, Write};
        crate::netns::run_in_private(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            client.set_nodelay(true).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            let mut queue = NfQueue::bind(15, QueueConfig::default()).unwrap();
            iptables(&format!(
                "-A INPUT -p tcp --dport {port} -j NFQUEUE --queue-num 15"
            ));
            queue
                .set_read_timeout(std::time::Duration::from_millis(100))
                .unwrap();
            for chunk in [&b"one "[..], b"two ", b"three"] {
                client.write_all(chunk).unwrap();
            }
            // Hold everything until all 13 bytes have been queued (however
            // the writes were cut into segments).
            let mut held: Vec<QueuedPacket> = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let payload = |p: &QueuedPacket| {
                let ip = usize::from(p.payload[0] & 0xf) * 4;
                let tcp = usize::from(p.payload[ip + 12] >> 4) * 4;
                p.payload.len() - ip - tcp
            };
            while held.iter().map(payload).sum::<usize>() < 13 {
                assert!(std::time::Instant::now() < deadline, "never saw 13 bytes");
                let _ = queue.recv_batch(&mut held);
            }
            let last = held.iter().map(|p| p.id).max().unwrap();
            queue.verdict_batch(last, Verdict::Accept).unwrap();
            let mut got = [0u8; 13];
            server
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            server.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"one two three");
        })
        .unwrap();
    }

    #[test]
    fn a_queue_number_cannot_be_bound_twice() {
        crate::netns::run_in_private(|| {
            let _first = NfQueue::bind(9, QueueConfig::default()).unwrap();
            assert!(matches!(
                NfQueue::bind(9, QueueConfig::default()),
                Err(NfQueueError::Bind { queue: 9, .. })
            ));
        })
        .unwrap();
    }
}
