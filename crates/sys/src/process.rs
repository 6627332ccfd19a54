//! Taking sockets from another process, and handing sockets to a new one.
//!
//! A planned move of a plain server (one that knows nothing of tandem) takes
//! the server's connected sockets with `pidfd_getfd` and, on the target node,
//! starts a fresh server process that inherits the restored sockets as
//! descriptors 3, 4, ... with `LISTEN_FDS` set (systemd's socket-activation
//! convention, minus `LISTEN_PID`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("process {pid} does not exist")]
    NoProcess { pid: u32 },
    #[error("cannot {action} of process {pid}: {source}")]
    Io {
        action: &'static str,
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// One TCP socket held by a process, as found in `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldSocket {
    /// The descriptor number in the holding process.
    pub fd: RawFd,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// The kernel's TCP state number.
    pub state: u8,
}

/// The connected (non-listening) IPv4 TCP sockets of `pid` whose local
/// address is `local`, in descriptor order.
pub fn tcp_sockets_of(pid: u32, local: SocketAddrV4) -> Result<Vec<HeldSocket>, ProcessError> {
    let io = |action| {
        move |source| ProcessError::Io {
            action,
            pid,
            source,
        }
    };
    let proc_dir = format!("/proc/{pid}");
    if !std::path::Path::new(&proc_dir).exists() {
        return Err(ProcessError::NoProcess { pid });
    }
    // /proc/PID/net/tcp shows the sockets of the process's own namespace.
    let table =
        std::fs::read_to_string(format!("{proc_dir}/net/tcp")).map_err(io("read the TCP table"))?;
    let by_inode = parse_proc_net_tcp(&table);
    let mut held = Vec::new();
    for entry in std::fs::read_dir(format!("{proc_dir}/fd")).map_err(io("list the descriptors"))? {
        let entry = entry.map_err(io("list the descriptors"))?;
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        // A descriptor closed since the listing is simply skipped.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if let Some(&(sock_local, peer, state)) = by_inode.get(&inode) {
            const LISTEN: u8 = 10;
            if sock_local == SocketAddr::V4(local) && state != LISTEN {
                held.push(HeldSocket {
                    fd,
                    local: sock_local,
                    peer,
                    state,
                });
            }
        }
    }
    held.sort_by_key(|s| s.fd);
    Ok(held)
}

/// Parses `/proc/net/tcp` into inode → (local, remote, state).
fn parse_proc_net_tcp(table: &str) -> BTreeMap<u64, (SocketAddr, SocketAddr, u8)> {
    fn addr(field: &str) -> Option<SocketAddr> {
        let (ip, port) = field.split_once(':')?;
        // The kernel prints the address as a host-order u32 of network bytes.
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let ip = Ipv4Addr::from(u32::from_be(ip));
        let port = u16::from_str_radix(port, 16).ok()?;
        Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
    }
    let mut out = BTreeMap::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 {
            continue;
        }
        let (Some(local), Some(remote), Ok(state), Ok(inode)) = (
            addr(fields[1]),
            addr(fields[2]),
            u8::from_str_radix(fields[3], 16),
            fields[9].parse::<u64>(),
        ) else {
            continue;
        };
        out.insert(inode, (local, remote, state));
    }
    out
}

/// A duplicate of descriptor `fd` of process `pid` (pidfd_getfd): the same
/// open socket, now also ours. Needs ptrace rights over `pid` (root).
pub fn take_fd(pid: u32, fd: RawFd) -> Result<OwnedFd, ProcessError> {
    let io = |action| {
        move |source| ProcessError::Io {
            action,
            pid,
            source,
        }
    };
    // SAFETY: raw syscalls with integer arguments; each returned fd is owned at once.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0);
        if pidfd < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Err(ProcessError::NoProcess { pid });
            }
            return Err(io("open a pidfd")(err));
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as RawFd);
        let taken = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if taken < 0 {
            return Err(io("take a descriptor")(std::io::Error::last_os_error()));
        }
        Ok(OwnedFd::from_raw_fd(taken as RawFd))
    }
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: libc::c_int) -> Result<(), ProcessError> {
    // SAFETY: kill(2) with plain integers.
    match crate::cvt(unsafe { libc::kill(pid as libc::pid_t, signal) }) {
        Ok(_) => Ok(()),
        Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Err(ProcessError::NoProcess { pid }),
        Err(source) => Err(ProcessError::Io {
            action: "signal",
            pid,
            source,
        }),
    }
}

/// Starts `command` with `fds` as its descriptors 3, 4, ... and
/// `LISTEN_FDS` set to their number. The parent's copies are closed once the
/// child runs.
pub fn spawn_with_fds(command: &mut Command, fds: Vec<OwnedFd>) -> Result<Child, ProcessError> {
    let count = fds.len();
    command.env("LISTEN_FDS", count.to_string());
    let sources: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    // Scratch space allocated before fork: the child may not allocate.
    let mut parked: Vec<RawFd> = vec![-1; count];
    let first = 3 as RawFd;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (fcntl, dup2) on memory allocated before fork.
    unsafe {
        command.pre_exec(move || {
            // Park every source above the target range first, so moving one
            // into place can never clobber another still to be moved.
            let above = first + count as RawFd;
            for (slot, &src) in parked.iter_mut().zip(&sources) {
                let fd = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, above);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                *slot = fd;
            }
            for (i, &fd) in parked.iter().enumerate() {
                // dup2 clears close-on-exec on the new descriptor.
                if libc::dup2(fd, first + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let program = command.get_program().to_string_lossy().into_owned();
    let child = command
        .spawn()
        .map_err(|source| ProcessError::Spawn { program, source })?;
    drop(fds);
    Ok(child)
}

/// The most descriptors one SCM_RIGHTS message may carry (the kernel's SCM_MAX_FD).
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// Sends `fds` over the Unix stream socket `channel` (SCM_RIGHTS), in
/// messages of at most [`MAX_FDS_PER_MESSAGE`]; each message carries one
/// payload byte, since the kernel will not send ancillary data alone. The
/// receiver gets its own descriptors; ours are closed when `fds` drops.
pub fn send_fds(channel: BorrowedFd<'_>, fds: Vec<OwnedFd>) -> std::io::Result<()> {
    for batch in fds.chunks(MAX_FDS_PER_MESSAGE) {
        let raw: Vec<RawFd> = batch.iter().map(|fd| fd.as_raw_fd()).collect();
        let payload = [batch.len() as u8];
        let space = cmsg_space(raw.len());
        let mut control = vec![0u8; space];
        // SAFETY: msghdr and the control buffer are built per cmsg(3): the
        // buffer holds CMSG_SPACE(n fds) bytes and stays alive through sendmsg;
        // the iovec points at `payload`, which outlives the call.
        unsafe {
            let mut iov = libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len =
                libc::CMSG_LEN((raw.len() * std::mem::size_of::<RawFd>()) as u32) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                raw.len(),
            );
            loop {
                let sent = libc::sendmsg(channel.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
                if sent >= 0 {
                    break;
                }
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

/// Receives one message of descriptors sent by [`send_fds`]: `Ok(None)` at
/// end of stream, `Err(WouldBlock)` on a non-blocking socket with nothing
/// pending. Received descriptors are close-on-exec.
pub fn recv_fds(channel: BorrowedFd<'_>) -> std::io::Result<Option<Vec<OwnedFd>>> {
    let mut payload = [0u8; 1];
    let space = cmsg_space(MAX_FDS_PER_MESSAGE);
    let mut control = vec![0u8; space];
    // SAFETY: as in send_fds; the kernel writes at most `space` control bytes
    // and we read only whole cmsgs it reports, taking ownership of each
    // descriptor it installed for us exactly once.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let n = libc::recvmsg(channel.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let bytes = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(std::io::Error::other(
                "descriptors were truncated in transit",
            ));
        }
        Ok(Some(fds))
    }
}

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic.
    unsafe { libc::CMSG_SPACE((fds * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// The descriptors a process started by [`spawn_with_fds`] inherited,
/// taken over by the caller. Call once, early in `main`.
pub fn inherited_fds() -> Vec<OwnedFd> {
    let count: RawFd = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    std::env::remove_var("LISTEN_FDS");
    (3..3 + count)
        .filter_map(|fd| {
            // SAFETY: F_GETFD only checks the descriptor is open.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return None;
            }
            // SAFETY: the descriptor is open and, by the LISTEN_FDS contract,
            // handed to this process to own; nothing else in it uses it.
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                Some(OwnedFd::from_raw_fd(fd))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 640012C6:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n\
   1: 640012C6:1B58 020012C6:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n\
   garbage line\n";
        let parsed = parse_proc_net_tcp(table);
        let (local, peer, state) = parsed[&4343];
        assert_eq!(local, "198.18.0.100:7000".parse().unwrap());
        assert_eq!(peer, "198.18.0.2:40000".parse().unwrap());
        assert_eq!(state, 1);
        assert_eq!(parsed[&4242].2, 10);
        assert_eq!(parsed.len(), 2);
    }

    #[test]
    fn takes_a_socket_from_a_live_process_by_address() {
        // Our own process stands in for the server: take a duplicate of its
        // accepted socket through /proc and pidfd_getfd, and check it is the
        // same connection. /proc/PID/net shows the namespace of the process's
        // main thread, so this one runs on loopback in the test's namespace.
        {
            use std::io::{Read, Write};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let SocketAddr::V4(local) = listener.local_addr().unwrap() else {
                unreachable!()
            };
            let mut client = std::net::TcpStream::connect(local).unwrap();
            let (_server, _) = listener.accept().unwrap();
            let held = tcp_sockets_of(std::process::id(), local).unwrap();
            assert_eq!(held.len(), 1, "{held:?}");
            assert_eq!(held[0].peer, client.local_addr().unwrap());
            let taken = take_fd(std::process::id(), held[0].fd).unwrap();
            let mut taken = std::net::TcpStream::from(taken);
            taken.write_all(b"via pidfd").unwrap();
            let mut buf = [0u8; 9];
            client.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"via pidfd");
        }
        assert!(matches!(
            tcp_sockets_of(u32::MAX - 1, "127.0.0.1:1".parse().unwrap()),
            Err(ProcessError::NoProcess { .. })
        ));
    }

    #[test]
    fn descriptors_cross_a_unix_socket_in_batches() {
        use std::io::{Read, Write};
        use std::os::fd::AsFd;
        let (tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
        // More than one message's worth, each a pipe we can tell apart.
        let mut readers = Vec::new();
        let mut writers = Vec::new();
        for _ in 0..MAX_FDS_PER_MESSAGE + 7 {
            let (r, w) = std::io::pipe().unwrap();
            readers.push(r);
            writers.push(OwnedFd::from(w));
        }
        send_fds(tx.as_fd(), writers).unwrap();
        drop(tx);
        let mut got = Vec::new();
        while let Some(batch) = recv_fds(rx.as_fd()).unwrap() {
            assert!(batch.len() <= MAX_FDS_PER_MESSAGE);
            got.extend(batch);
        }
        assert_eq!(got.len(), readers.len());
        for (i, (fd, reader)) in got.into_iter().zip(&mut readers).enumerate() {
            let mut w = std::fs::File::from(fd);
            write!(w, "{i};").unwrap();
            drop(w);
            let mut text = String::new();
            reader.read_to_string(&mut text).unwrap();
            assert_eq!(text, format!("{i};"), "descriptor {i} arrived out of order");
        }
    }

    #[test]
    fn a_child_inherits_sockets_in_order() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (c, d) = std::os::unix::net::UnixStream::pair().unwrap();
        // The child writes a different byte into fd 3 and fd 4.
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "test \"$LISTEN_FDS\" = 2 && printf 3 >&3 && printf 4 >&4",
        ]);
        let mut child = spawn_with_fds(&mut command, vec![a.into(), c.into()]).unwrap();
        assert!(child.wait().unwrap().success());
        use std::io::Read;
        let (mut b, mut d) = (b, d);
        let mut out = String::new();
        b.read_to_string(&mut out).unwrap();
        d.read_to_string(&mut out).unwrap();
        assert_eq!(out, "34");
    }
}
