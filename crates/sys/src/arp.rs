//! Gratuitous ARP: telling the LAN that the virtual IP now lives here.
//!
//! The AF_PACKET socket is opened in advance ([`GarpSender::open`]) because
//! opening and closing one costs 8–20 ms on these machines, far more than the
//! 0.05 ms a frame takes; a takeover must not pay that on its critical path.
//!
//! Linux ignores a second neighbour update for the same address within its
//! lock time (1 s by default), so a neighbour refreshed just before a move
//! keeps the old MAC after the first burst. [`GarpSender::announce`] therefore
//! sends a burst at once and, optionally, a second one after more than a
//! second, on a background thread. A node that stops serving within that
//! second (a takeover that failed after its announcement, a primary deposed
//! at once) cancels what is left ([`GarpSender::cancel`]): announcing a VIP
//! it no longer holds would pull the clients back to it.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ArpError {
    #[error("no network interface named {0:?} in this namespace")]
    NoInterface(String),
    #[error("cannot open a packet socket on {interface}: {source} (needs root / CAP_NET_RAW)")]
    Open {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the hardware address of {interface}: {source}")]
    HardwareAddress {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot send a gratuitous ARP on {interface}: {source}")]
    Send {
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

/// How gratuitous ARPs are sent after a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GarpSchedule {
    /// Frames in each burst.
    pub count: u32,
    /// Gap between frames of a burst.
    pub spacing: Duration,
    /// When set, a second burst this long after the first; keep it above the
    /// neighbour lock time (1 s by default).
    pub repeat_after: Option<Duration>,
}

impl Default for GarpSchedule {
    fn default() -> Self {
        GarpSchedule {
            count: 3,
            spacing: Duration::from_millis(5),
            repeat_after: Some(Duration::from_millis(1100)),
        }
    }
}

/// A packet socket bound to one interface, ready to announce addresses.
#[derive(Clone)]
pub struct GarpSender {
    inner: Arc<Inner>,
}

struct Inner {
    fd: OwnedFd,
    interface: String,
    ifindex: i32,
    mac: [u8; 6],
    /// Bumped by [`GarpSender::cancel`]: a background schedule started under
    /// an older value sends nothing more.
    generation: AtomicU64,
    /// Frames sent so far.
    sent: AtomicU64,
}

impl GarpSender {
    /// Opens the socket on `interface`, in the calling thread's namespace.
    pub fn open(interface: &str) -> Result<GarpSender, ArpError> {
        let index = crate::addr::interface_index(interface)
            .map_err(|_| ArpError::NoInterface(interface.to_string()))?;
        let protocol = (libc::ETH_P_ARP as u16).to_be() as libc::c_int;
        // SAFETY: plain socket creation; the fd is owned at once.
        let fd = crate::cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        })
        .map_err(|source| ArpError::Open {
            interface: interface.to_string(),
            source,
        })?;
        // SAFETY: fd was just returned by socket() and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mac = hardware_address(&fd, interface)?;
        Ok(GarpSender {
            inner: Arc::new(Inner {
                fd,
                interface: interface.to_string(),
                ifindex: index as i32,
                mac,
                generation: AtomicU64::new(0),
                sent: AtomicU64::new(0),
            }),
        })
    }

    /// The interface's own hardware address, the one announced.
    pub fn mac(&self) -> [u8; 6] {
        self.inner.mac
    }

    /// Sends one gratuitous ARP request for `ip`.
    pub fn send(&self, ip: Ipv4Addr) -> Result<(), ArpError> {
        // A request (rather than a reply) is what updates existing neighbour
        // entries on Linux peers.
        let frame = tandem_wire::gratuitous_arp_request(self.inner.mac.into(), ip);
        // SAFETY: sockaddr_ll is plain data, zeroed then filled; the frame
        // buffer outlives the call.
        let sent = unsafe {
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
            to.sll_ifindex = self.inner.ifindex;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            libc::sendto(
                self.inner.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(ArpError::Send {
                interface: self.inner.interface.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        self.inner.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Frames sent since the socket was opened.
    pub fn frames_sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    /// Stops every announcement's remaining frames (the background burst
    /// and repeat); later announcements are not affected.
    pub fn cancel(&self) {
        self.inner.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends one frame unless the schedule of `generation` was cancelled;
    /// `Ok(false)` once it was.
    fn send_scheduled(&self, ip: Ipv4Addr, generation: u64) -> Result<bool, ArpError> {
        if self.inner.generation.load(Ordering::Relaxed) != generation {
            return Ok(false);
        }
        self.send(ip)?;
        Ok(true)
    }

    /// Sends the first frame now and the rest of the schedule — the rest of
    /// the burst, then the repeat — from a background thread whose failures
    /// are logged. Returns once the first frame is out, so a move's critical
    /// path pays for one frame, not for the spacing.
    pub fn announce(&self, ip: Ipv4Addr, schedule: GarpSchedule) -> Result<(), ArpError> {
        if schedule.count == 0 {
            return Ok(());
        }
        let generation = self.inner.generation.load(Ordering::Relaxed);
        self.send(ip)?;
        if schedule.count == 1 && schedule.repeat_after.is_none() {
            return Ok(());
        }
        let sender = self.clone();
        std::thread::Builder::new()
            .name("garp".into())
            .spawn(move || {
                let rest = || -> Result<(), ArpError> {
                    for _ in 1..schedule.count {
                        std::thread::sleep(schedule.spacing);
                        if !sender.send_scheduled(ip, generation)? {
                            return Ok(());
                        }
                    }
                    if let Some(after) = schedule.repeat_after {
                        std::thread::sleep(after);
                        sender.burst(ip, schedule.count, schedule.spacing, generation)?;
                    }
                    Ok(())
                };
                match rest() {
                    Ok(()) => {}
                    // The interface went away (its namespace was deleted):
                    // nobody is left to tell.
                    Err(ArpError::Send { source, .. })
                        if matches!(source.raw_os_error(), Some(libc::ENXIO | libc::ENODEV)) =>
                    {
                        tracing::debug!(%ip, "interface gone before the repeated gratuitous ARP");
                    }
                    Err(err) => tracing::warn!(%ip, "gratuitous ARP failed: {err}"),
                }
            })
            .map_err(|source| ArpError::Send {
                interface: self.inner.interface.clone(),
                source,
            })?;
        Ok(())
    }

    fn burst(
        &self,
        ip: Ipv4Addr,
        count: u32,
        spacing: Duration,
        generation: u64,
    ) -> Result<(), ArpError> {
        for i in 0..count {
            if i > 0 {
                std::thread::sleep(spacing);
            }
            if !self.send_scheduled(ip, generation)? {
                break;
            }
        }
        Ok(())
    }
}

fn hardware_address(fd: &OwnedFd, interface: &str) -> Result<[u8; 6], ArpError> {
    let name = CString::new(interface).map_err(|_| ArpError::NoInterface(interface.to_string()))?;
    let bytes = name.as_bytes_with_nul();
    // SAFETY: the ifreq is zeroed, its name NUL-terminated and shorter than
    // IFNAMSIZ (checked), and the ioctl fills in the union we then read.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        if bytes.len() > req.ifr_name.len() {
            return Err(ArpError::NoInterface(interface.to_string()));
        }
        for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        crate::cvt(libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req)).map_err(
            |source| ArpError::HardwareAddress {
                interface: interface.to_string(),
                source,
            },
        )?;
        let data = req.ifr_ifru.ifru_hwaddr.sa_data;
        let mut mac = [0u8; 6];
        for (dst, src) in mac.iter_mut().zip(data.iter()) {
            *dst = *src as u8;
        }
        Ok(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_on_loopback_and_reports_missing_interfaces() {
        crate::netns::run_in_private(|| {
            assert!(matches!(
                GarpSender::open("nosuch0"),
                Err(ArpError::NoInterface(_))
            ));
            let sender = GarpSender::open("lo").unwrap();
            sender
                .announce(
                    Ipv4Addr::new(198, 18, 0, 100),
                    GarpSchedule {
                        count: 2,
                        spacing: Duration::from_millis(1),
                        repeat_after: None,
                    },
                )
                .unwrap();
        })
        .unwrap();
    }

    /// A cancelled announcement sends nothing after its first frame; the
    /// next one runs its whole schedule.
    #[test]
    fn cancel_stops_the_rest_of_an_announcement() {
        crate::netns::run_in_private(|| {
            let sender = GarpSender::open("lo").unwrap();
            let schedule = GarpSchedule {
                count: 2,
                spacing: Duration::from_millis(1),
                repeat_after: Some(Duration::from_millis(50)),
            };
            let ip = Ipv4Addr::new(198, 18, 0, 100);
            sender.announce(ip, schedule).unwrap();
            sender.cancel();
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(sender.frames_sent(), 1);
            sender.announce(ip, schedule).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(sender.frames_sent(), 1 + 4);
        })
        .unwrap();
    }
}
