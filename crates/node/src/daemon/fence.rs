//! The node's fence (docs/architecture.md §3.8): the FIN/RST guard installed before
//! anything else, and the kernel lease that lets TCP from VIP:port and ARP
//! replies for the VIP leave only while the primary is entitled to them.
//!
//! Refreshing runs `nft`, a process start of a few milliseconds: that must
//! never stall the event loop, so a small thread refreshes the lease while
//! the loop keeps pushing a deadline forward. If the loop hangs (SIGSTOP, a
//! livelock) the deadline stops moving, the refreshes stop, and the kernel
//! goes silent on the VIP within one lease; if the whole process dies the
//! thread dies with it and the same happens.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tandem_sys::guard::{Guard, GuardError, DELIBERATE_CLOSE_MARK};

/// How long one refresh grants. A deposed primary goes silent within this.
pub const LEASE: Duration = Duration::from_millis(500);
/// How often the thread refreshes while entitled.
pub const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// The guard rules and the lease thread of one VIP.
pub struct Fence {
    guard: Guard,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    start: Instant,
    /// Entitled until this many ms after `start` (0: not entitled).
    until_ms: AtomicU64,
    stop: AtomicBool,
    refresh_errors: AtomicU64,
}

impl Fence {
    /// Installs the guard (with no lease: nothing leaves from VIP:port until
    /// [`Fence::entitle`]) and starts the refresh thread.
    pub fn install(vip: std::net::Ipv4Addr, port: u16) -> Result<Fence, GuardError> {
        let guard = Guard::new(None, vip, &[port], DELIBERATE_CLOSE_MARK)?;
        guard.install()?;
        let shared = Arc::new(Shared {
            start: Instant::now(),
            until_ms: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            refresh_errors: AtomicU64::new(0),
        });
        let thread = {
            let (guard, shared) = (guard.clone(), shared.clone());
            std::thread::Builder::new()
                .name("lease".into())
                .spawn(move || lease_loop(&guard, &shared))
                .map_err(GuardError::Io)?
        };
        Ok(Fence {
            guard,
            shared,
            thread: Some(thread),
        })
    }

    /// Grants the lease (a new primary must hold it before its first
    /// segment or ARP reply), on another thread, so that a new primary can
    /// rebuild its connections while `nft` runs; join before anything is
    /// sent from the VIP.
    pub fn grant_in_background(&self) -> JoinHandle<Result<(), GuardError>> {
        self.entitle(Instant::now());
        let guard = self.guard.clone();
        std::thread::spawn(move || guard.refresh_lease(LEASE))
    }

    /// The primary is entitled to the lease for `LEASE` after `heard` (the
    /// last time it knew a quorum followed it).
    pub fn entitle(&self, heard: Instant) {
        let until = (heard + LEASE).saturating_duration_since(self.shared.start);
        self.shared
            .until_ms
            .fetch_max(until.as_millis() as u64, Ordering::Relaxed);
    }

    /// Stops refreshing and revokes the lease now (stepping down).
    pub fn revoke(&self) -> Result<(), GuardError> {
        self.shared.until_ms.store(0, Ordering::Relaxed);
        self.guard.revoke_lease()
    }

    /// Refreshes that failed so far.
    pub fn refresh_errors(&self) -> u64 {
        self.shared.refresh_errors.load(Ordering::Relaxed)
    }
}

impl Drop for Fence {
    /// Stops the thread; the guard rules stay (they must outlive the daemon)
    /// and the lease lapses on its own.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lease_loop(guard: &Guard, shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        let now = shared.start.elapsed().as_millis() as u64;
        if now < shared.until_ms.load(Ordering::Relaxed) {
            if let Err(err) = guard.refresh_lease(LEASE) {
                if shared.refresh_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::error!(%err, "cannot refresh the kernel lease");
                }
            }
        }
        std::thread::sleep(REFRESH_EVERY);
    }
}
