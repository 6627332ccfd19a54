//! A site: one node's network namespace, with the handles a move needs
//! opened in advance.
//!
//! Sockets, netlink and packet sockets belong to the namespace of the thread
//! that opens them, and entering a namespace per call would put `setns` and
//! socket set-up on the critical path of a move. So a site owns worker
//! threads that entered its namespace once; work is shipped to them as
//! closures, and the netlink and ARP handles are opened there at start.

use std::net::Ipv4Addr;
use std::sync::mpsc;
use tandem_sys::addr::{AddrError, Interface, Netlink};
use tandem_sys::arp::{ArpError, GarpSchedule, GarpSender};

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error(transparent)]
    Netns(#[from] tandem_sys::netns::NetnsError),
    #[error(transparent)]
    Addr(#[from] AddrError),
    #[error(transparent)]
    Arp(#[from] ArpError),
    #[error(transparent)]
    Lock(#[from] tandem_sys::netlock::NetLockError),
    #[error("the worker thread of site {0} has stopped")]
    WorkerGone(String),
}

type Job = Box<dyn FnOnce() + Send>;

/// One node's namespace and interface, with workers living inside it.
pub struct Site {
    label: String,
    netns: Option<String>,
    interface: Interface,
    workers: Vec<mpsc::Sender<Job>>,
    netlink: Netlink,
    garp: GarpSender,
}

impl Site {
    /// Opens a site on `interface` in the named namespace (`None`: the
    /// caller's), with `workers` threads (at least one) for parallel work.
    pub fn open(netns: Option<&str>, interface: &str, workers: usize) -> Result<Site, SiteError> {
        let label = netns.unwrap_or("<current namespace>").to_string();
        let mut senders = Vec::new();
        for i in 0..workers.max(1) {
            let (tx, rx) = mpsc::channel::<Job>();
            let (ready_tx, ready_rx) = mpsc::channel();
            let ns = netns.map(str::to_string);
            std::thread::Builder::new()
                .name(format!("site-{i}"))
                .spawn(move || {
                    let entered = match &ns {
                        Some(name) => tandem_sys::netns::enter(name),
                        None => Ok(()),
                    };
                    let ok = entered.is_ok();
                    let _ = ready_tx.send(entered);
                    if ok {
                        for job in rx {
                            job();
                        }
                    }
                })
                .map_err(|_| SiteError::WorkerGone(label.clone()))?;
            ready_rx
                .recv()
                .map_err(|_| SiteError::WorkerGone(label.clone()))??;
            senders.push(tx);
        }
        let iface = interface.to_string();
        let (netlink, interface, garp) =
            spawn_job(&senders[0], &label, move || -> Result<_, SiteError> {
                let netlink = Netlink::open()?;
                let interface = netlink.interface(&iface)?;
                Ok((netlink, interface, GarpSender::open(&iface)?))
            })?
            .recv()
            .map_err(|_| SiteError::WorkerGone(label.clone()))??;
        Ok(Site {
            label,
            netns: netns.map(str::to_string),
            interface,
            workers: senders,
            netlink,
            garp,
        })
    }

    /// The namespace name, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The namespace (`None`: the one the site was opened from).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// The interface that carries the VIP.
    pub fn interface(&self) -> &str {
        &self.interface.name
    }

    /// How many workers the site has.
    pub fn parallelism(&self) -> usize {
        self.workers.len()
    }

    /// Runs `f` on the first worker, inside the namespace, and waits for it.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, SiteError> {
        self.run_on(0, f)
    }

    /// Runs `f` on worker `i` (modulo the number of workers) and waits.
    pub fn run_on<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, SiteError> {
        self.spawn_on(i, f)?
            .recv()
            .map_err(|_| SiteError::WorkerGone(self.label.clone()))
    }

    /// Starts `f` on worker `i`; the receiver yields its result.
    pub fn spawn_on<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<mpsc::Receiver<T>, SiteError> {
        spawn_job(&self.workers[i % self.workers.len()], &self.label, f)
    }

    /// Adds the VIP here (one netlink round trip).
    pub fn add_vip(&self, vip: Ipv4Addr, prefix_len: u8) -> Result<(), SiteError> {
        Ok(self
            .netlink
            .add_address(&self.interface, vip.into(), prefix_len)?)
    }

    /// Removes the VIP from here.
    pub fn remove_vip(&self, vip: Ipv4Addr, prefix_len: u8) -> Result<(), SiteError> {
        Ok(self
            .netlink
            .remove_address(&self.interface, vip.into(), prefix_len)?)
    }

    /// Whether the VIP is configured here.
    pub fn has_vip(&self, vip: Ipv4Addr) -> Result<bool, SiteError> {
        Ok(self.netlink.has_address(&self.interface, vip.into())?)
    }

    /// Installs the (empty) network lock for `vip:port` ahead of a move, so
    /// locking later costs one rules transaction.
    pub fn prepare_lock(&self, vip: Ipv4Addr, port: u16) -> Result<(), SiteError> {
        self.run(move || tandem_sys::netlock::NetLock::new(None, vip, port).install())??;
        Ok(())
    }

    /// Announces the VIP with gratuitous ARP from this site's interface.
    pub fn announce(&self, vip: Ipv4Addr, schedule: GarpSchedule) -> Result<(), SiteError> {
        Ok(self.garp.announce(vip, schedule)?)
    }
}

fn spawn_job<T: Send + 'static>(
    worker: &mpsc::Sender<Job>,
    label: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<mpsc::Receiver<T>, SiteError> {
    let (tx, rx) = mpsc::channel();
    worker
        .send(Box::new(move || {
            let _ = tx.send(f());
        }))
        .map_err(|_| SiteError::WorkerGone(label.to_string()))?;
    Ok(rx)
}
