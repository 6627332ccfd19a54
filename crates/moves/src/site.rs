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
    #[error(transparent)]
    Queue(#[from] tandem_sys::nfqueue::NfQueueError),
    #[error("holding packets: {0}")]
    Hold(String),
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
    holders: std::sync::Mutex<std::collections::BTreeMap<u16, Holder>>,
}

/// A packet a holding lock took, with whether its TCP checksum still needs
/// checking (the kernel had not verified it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldPacket {
    pub bytes: Vec<u8>,
    pub verify_checksum: bool,
}

/// A reader that copies every packet of an NFQUEUE and drops it: what a
/// holding lock's segments become, to be carried across by a move.
struct Holder {
    held: std::sync::Arc<std::sync::Mutex<Vec<HeldPacket>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
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
            holders: Default::default(),
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

    /// Starts taking the packets of NFQUEUE `queue` in this namespace (a
    /// holding lock sends segments there): each is copied and dropped.
    /// Idempotent.
    pub fn start_holding(&self, queue: u16) -> Result<(), SiteError> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        use tandem_sys::nfqueue::{NfQueue, NfQueueError, QueueConfig, Verdict};
        let mut holders = self.holders.lock().expect("holders lock");
        if holders.contains_key(&queue) {
            return Ok(());
        }
        let config = QueueConfig {
            // Whole segments, never GSO super-packets: each is re-injected
            // by its sequence number.
            gso: false,
            ..QueueConfig::default()
        };
        let mut nfq = self.run(move || NfQueue::bind(queue, config))??;
        nfq.set_read_timeout(std::time::Duration::from_millis(20))
            .map_err(|e| SiteError::Hold(e.to_string()))?;
        let held: Arc<Mutex<Vec<HeldPacket>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (held, stop) = (held.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("hold-{queue}"))
                .spawn(move || {
                    let mut batch = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        batch.clear();
                        match nfq.recv_batch(&mut batch) {
                            Ok(_) => {}
                            Err(NfQueueError::Io { source, .. })
                                if source.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(err) => {
                                tracing::warn!("holding queue {queue}: {err}");
                                continue;
                            }
                        }
                        if batch.is_empty() {
                            continue;
                        }
                        // Copied before the verdict: once the kernel's count
                        // of waiting packets is zero, every one is here.
                        held.lock()
                            .expect("held lock")
                            .extend(batch.iter().map(|p| HeldPacket {
                                bytes: p.payload.clone(),
                                verify_checksum: p.checksum
                                    == tandem_sys::nfqueue::ChecksumState::NotVerified,
                            }));
                        let verdicts: Vec<_> =
                            batch.iter().map(|p| (p.id, Verdict::Drop)).collect();
                        if let Err(err) = nfq.verdicts(&verdicts) {
                            tracing::warn!("holding queue {queue}: {err}");
                        }
                    }
                })
                .map_err(|e| SiteError::Hold(e.to_string()))?
        };
        holders.insert(
            queue,
            Holder {
                held,
                stop,
                thread: Some(thread),
            },
        );
        Ok(())
    }

    /// Every packet taken from `queue` so far, once the kernel holds none
    /// waiting (or after `timeout`); the store is emptied.
    pub fn drain_held(
        &self,
        queue: u16,
        timeout: std::time::Duration,
    ) -> Result<Vec<HeldPacket>, SiteError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let waiting = self
                .run(move || tandem_sys::nfqueue::queue_stats(queue))?
                .map_err(|e| SiteError::Hold(e.to_string()))?
                .map(|s| s.waiting)
                .unwrap_or(0);
            if waiting == 0 || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        let holders = self.holders.lock().expect("holders lock");
        Ok(holders
            .get(&queue)
            .map(|h| std::mem::take(&mut *h.held.lock().expect("held lock")))
            .unwrap_or_default())
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
