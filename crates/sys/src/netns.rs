//! Running code inside a network namespace.
//!
//! A namespace belongs to a thread, not to a process: `setns` changes only the
//! calling thread, and every socket (netlink, NFQUEUE, TCP) belongs to the
//! namespace of the thread that opened it. So the functions here either work
//! on a dedicated thread they create ([`run_in`], [`run_in_private`]) or change
//! the calling thread for good ([`enter`]) — never call `enter` on a thread
//! shared with an async runtime.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;

/// Where `ip netns add NAME` mounts a namespace.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {name:?} does not exist ({path} is missing); is the lab up?")]
    Missing { name: String, path: PathBuf },
    #[error("cannot open network namespace {name:?}: {source}")]
    Open {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {name:?}: {source} (entering a namespace needs root / CAP_SYS_ADMIN)")]
    Enter {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create a private network namespace: {0} (needs root / CAP_SYS_ADMIN)")]
    Unshare(#[source] std::io::Error),
    #[error("cannot bring the loopback interface up: {0}")]
    Loopback(#[source] std::io::Error),
    #[error("the thread running in network namespace {0:?} panicked")]
    Panicked(String),
}

/// The path of the named namespace, checked to exist.
pub fn path(name: &str) -> Result<PathBuf, NetnsError> {
    let path = PathBuf::from(NETNS_RUN_DIR).join(name);
    if !path.exists() {
        return Err(NetnsError::Missing {
            name: name.to_string(),
            path,
        });
    }
    Ok(path)
}

/// Moves the calling thread into the named namespace, for the rest of its life.
pub fn enter(name: &str) -> Result<(), NetnsError> {
    let file = File::open(path(name)?).map_err(|source| NetnsError::Open {
        name: name.to_string(),
        source,
    })?;
    // SAFETY: setns on a valid namespace fd; it only changes this thread.
    crate::cvt(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }).map_err(|source| {
        NetnsError::Enter {
            name: name.to_string(),
            source,
        }
    })?;
    Ok(())
}

/// Runs `f` on a new thread inside the named namespace and returns its result.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    on_thread_in(name, || enter(name), f)
}

/// Runs `f` on a new scoped thread after `enter` moved that thread into a
/// namespace; `label` names it in errors.
fn on_thread_in<T, F>(
    label: &str,
    enter: impl FnOnce() -> Result<(), NetnsError> + Send,
    f: F,
) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter()?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetnsError::Panicked(label.to_string()))?
    })
}

/// Moves the calling thread into a fresh, anonymous namespace whose only
/// interface is loopback, brought up. It vanishes when the thread ends: the
/// place for tests that need a kernel but no lab.
pub fn enter_private() -> Result<(), NetnsError> {
    // SAFETY: unshare only affects the calling thread's namespaces.
    crate::cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) }).map_err(NetnsError::Unshare)?;
    loopback_up().map_err(NetnsError::Loopback)
}

/// Runs `f` on a new thread inside a fresh private namespace (see [`enter_private`]).
pub fn run_in_private<T, F>(f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    on_thread_in("<private>", enter_private, f)
}

fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a datagram socket used only as a handle for interface ioctls;
    // the ifreq is zeroed and its name NUL-terminated.
    unsafe {
        let fd = crate::cvt(libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        crate::cvt(libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req))?;
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        crate::cvt(libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &req))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_namespace_is_named_in_the_error() {
        let err = run_in("tandem-test-no-such-namespace", || ()).unwrap_err();
        assert!(matches!(err, NetnsError::Missing { .. }));
        assert!(err.to_string().contains("tandem-test-no-such-namespace"));
    }

    #[test]
    fn private_namespace_has_its_own_loopback() {
        // A listener bound in a private namespace is invisible outside it.
        let port = run_in_private(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            port
        })
        .unwrap();
        assert!(port > 0);
    }
}
