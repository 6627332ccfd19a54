//! Adding and removing the virtual IP through rtnetlink.
//!
//! A [`Netlink`] handle is opened in the network namespace of the thread that
//! creates it and keeps working there from any thread afterwards, so a node
//! opens it once at start-up (inside its namespace) and a move costs one
//! netlink round trip, not the launch of an `ip` process (3–6 ms each).

use futures::TryStreamExt;
use std::ffi::CString;
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    #[error("cannot open a netlink socket: {0}")]
    Open(#[source] std::io::Error),
    #[error("no network interface named {0:?} in this namespace")]
    NoInterface(String),
    #[error("cannot {action} address {addr}/{prefix_len} on {interface}: {source}")]
    Request {
        action: &'static str,
        addr: IpAddr,
        prefix_len: u8,
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

/// A network interface, resolved in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

/// A route-netlink connection bound to one network namespace.
pub struct Netlink {
    runtime: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, AddrError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(AddrError::Open)?;
        // The socket is created here, on this thread, so it belongs to this
        // thread's namespace; the runtime only drives it later.
        let (connection, handle, _) = {
            let _guard = runtime.enter();
            rtnetlink::new_connection().map_err(AddrError::Open)?
        };
        runtime.spawn(connection);
        Ok(Netlink { runtime, handle })
    }

    /// Looks `name` up in this connection's namespace (which may differ from
    /// the calling thread's); resolve once, use for every change.
    pub fn interface(&self, name: &str) -> Result<Interface, AddrError> {
        let interface = name;
        let links: Vec<_> = self
            .runtime
            .block_on(
                self.handle
                    .link()
                    .get()
                    .match_name(interface.to_string())
                    .execute()
                    .try_collect(),
            )
            .map_err(|_| AddrError::NoInterface(interface.to_string()))?;
        links
            .first()
            .map(|link| Interface {
                name: name.to_string(),
                index: link.header.index,
            })
            .ok_or_else(|| AddrError::NoInterface(interface.to_string()))
    }

    /// Adds `addr/prefix_len` to `interface`; already present is success.
    ///
    /// An IPv6 VIP gets `IFA_F_NODAD`: duplicate address detection would keep
    /// it unusable for a second or more, and the VIP is ours by construction.
    pub fn add_address(
        &self,
        interface: &Interface,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), AddrError> {
        let (index, interface) = (interface.index, interface.name.as_str());
        let mut request = self.handle.address().add(index, addr, prefix_len);
        if addr.is_ipv6() {
            use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match self.runtime.block_on(request.execute()) {
            Ok(()) => Ok(()),
            Err(err) if errno_of(&err) == Some(libc::EEXIST) => Ok(()),
            Err(err) => Err(request_error("add", addr, prefix_len, interface, err)),
        }
    }

    /// Removes `addr` from `interface`; already absent is success.
    pub fn remove_address(
        &self,
        interface: &Interface,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), AddrError> {
        let found = self.find(interface, addr)?;
        let interface = interface.name.as_str();
        for message in found {
            match self
                .runtime
                .block_on(self.handle.address().del(message).execute())
            {
                Ok(()) => {}
                Err(err) if errno_of(&err) == Some(libc::EADDRNOTAVAIL) => {}
                Err(err) => return Err(request_error("remove", addr, prefix_len, interface, err)),
            }
        }
        Ok(())
    }

    /// Whether `addr` is currently configured on `interface`.
    pub fn has_address(&self, interface: &Interface, addr: IpAddr) -> Result<bool, AddrError> {
        Ok(!self.find(interface, addr)?.is_empty())
    }

    /// The kernel's records of `addr` on `interface` (none, or one).
    fn find(
        &self,
        interface: &Interface,
        addr: IpAddr,
    ) -> Result<Vec<rtnetlink::packet_route::address::AddressMessage>, AddrError> {
        self.runtime
            .block_on(
                self.handle
                    .address()
                    .get()
                    .set_link_index_filter(interface.index)
                    .set_address_filter(addr)
                    .execute()
                    .try_collect(),
            )
            .map_err(|err| request_error("look up", addr, 0, &interface.name, err))
    }
}

/// The kernel's index of `interface` in the calling thread's namespace.
pub fn interface_index(interface: &str) -> Result<u32, AddrError> {
    let name =
        CString::new(interface).map_err(|_| AddrError::NoInterface(interface.to_string()))?;
    // SAFETY: a NUL-terminated name; the call only reads it.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(AddrError::NoInterface(interface.to_string())),
        index => Ok(index),
    }
}

fn errno_of(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(message) => Some(-message.raw_code()),
        _ => None,
    }
}

fn request_error(
    action: &'static str,
    addr: IpAddr,
    prefix_len: u8,
    interface: &str,
    err: rtnetlink::Error,
) -> AddrError {
    let source = match &err {
        rtnetlink::Error::NetlinkError(message) => message.to_io(),
        other => std::io::Error::other(other.to_string()),
    };
    AddrError::Request {
        action,
        addr,
        prefix_len,
        interface: interface.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::run_in_private;

    #[test]
    fn add_and_remove_are_idempotent() {
        run_in_private(|| {
            let netlink = Netlink::open().unwrap();
            let lo = netlink.interface("lo").unwrap();
            let vip: IpAddr = "198.18.0.100".parse().unwrap();
            assert!(!netlink.has_address(&lo, vip).unwrap());
            netlink.add_address(&lo, vip, 32).unwrap();
            netlink.add_address(&lo, vip, 32).unwrap();
            assert!(netlink.has_address(&lo, vip).unwrap());
            // The address is usable at once.
            std::net::TcpListener::bind((vip, 0)).unwrap();
            netlink.remove_address(&lo, vip, 32).unwrap();
            netlink.remove_address(&lo, vip, 32).unwrap();
            assert!(!netlink.has_address(&lo, vip).unwrap());
            let v6: IpAddr = "2001:db8::100".parse().unwrap();
            netlink.add_address(&lo, v6, 128).unwrap();
            // NODAD: bindable immediately, no tentative period.
            std::net::TcpListener::bind((v6, 0)).unwrap();
        })
        .unwrap();
    }

    #[test]
    fn unknown_interface_is_named() {
        run_in_private(|| {
            let netlink = Netlink::open().unwrap();
            let err = netlink.interface("nosuch0").unwrap_err();
            assert!(err.to_string().contains("nosuch0"), "{err}");
        })
        .unwrap();
    }
}
