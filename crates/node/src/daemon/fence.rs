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
//!
//! The bound (docs/membership.md, "The lease"): the primary is entitled
//! until `LEASE` after the last quorum acknowledgement of its term's
//! leadership (`Replica::quorum_acked_at`), and every refresh sets the
//! kernel element's timeout to what is left of that entitlement, never a
//! whole `LEASE`. So the element expires no later than `LEASE` + d after
//! that acknowledgement, d being the time from the refresh reading the clock
//! to the kernel applying nft's transaction (the exec of `nft`, a few ms).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tandem_sys::guard::{Guard, GuardError, DELIBERATE_CLOSE_MARK};

/// How long after the last quorum acknowledgement of its leadership the
/// primary is entitled to the VIP: a deposed or cut-off primary goes silent
/// within this (plus the few ms `nft` takes to reach the kernel).
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
    /// Held by a refresh from reading `until_ms` to `nft` returning, and by
    /// a revocation's `nft`: a refresh that read the entitlement before a
    /// revocation cannot put the element back after it.
    nft: Mutex<()>,
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
            nft: Mutex::new(()),
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
    /// segment or ARP reply) for what is left of `LEASE` after `acked`, the
    /// last quorum acknowledgement of this term's leadership, on another
    /// thread, so that a new primary can rebuild its connections while `nft`
    /// runs; join before anything is sent from the VIP. Nothing is left: an
    /// error (the take-over fails rather than hold the VIP unentitled).
    pub fn grant_in_background(&self, acked: Instant) -> JoinHandle<Result<(), GuardError>> {
        self.entitle(acked);
        let guard = self.guard.clone();
        let left = remaining(acked + LEASE, Instant::now());
        std::thread::spawn(move || match left {
            Some(left) => guard.refresh_lease(left),
            None => Err(GuardError::Refused {
                what: "lease",
                stderr: "no quorum acknowledgement within the lease".into(),
            }),
        })
    }

    /// The primary is entitled to the lease until `LEASE` after `acked` (the
    /// last time a quorum acknowledged its leadership in this term).
    pub fn entitle(&self, acked: Instant) {
        let until = (acked + LEASE).saturating_duration_since(self.shared.start);
        self.shared
            .until_ms
            .fetch_max(until.as_millis() as u64, Ordering::Relaxed);
    }

    /// Stops refreshing and revokes the lease now (stepping down).
    pub fn revoke(&self) -> Result<(), GuardError> {
        self.shared.until_ms.store(0, Ordering::Relaxed);
        // Waits for a refresh under way (one `nft` call at most), so that
        // the flush comes after it.
        let _nft = self
            .shared
            .nft
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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

/// What is left of an entitlement ending at `until`, seen at `now`, as the
/// element timeout to set: `None` once nothing is left. Rounded down to the
/// millisecond (nft's unit), so the element never outlives `until`.
fn remaining(until: Instant, now: Instant) -> Option<Duration> {
    let left = until.saturating_duration_since(now);
    let ms = left.as_millis() as u64;
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn lease_loop(guard: &Guard, shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        let nft = shared
            .nft
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let until = shared.start + Duration::from_millis(shared.until_ms.load(Ordering::Relaxed));
        if let Some(left) = remaining(until, now) {
            if let Err(err) = guard.refresh_lease(left) {
                if shared.refresh_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::error!(%err, "cannot refresh the kernel lease");
                }
            }
        }
        drop(nft);
        std::thread::sleep(REFRESH_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The element's timeout is what is left of the entitlement, so it
    /// expires no later than `LEASE` after the acknowledgement, whenever the
    /// refresh runs (the old code set a whole `LEASE` at every refresh: up
    /// to `LEASE` + `REFRESH_EVERY` + `LEASE` after it).
    #[test]
    fn the_element_never_outlives_the_acknowledgement_plus_lease() {
        let acked = Instant::now();
        let until = acked + LEASE;
        let mut at = acked;
        while at < until + REFRESH_EVERY {
            match remaining(until, at) {
                Some(left) => {
                    assert!(at + left <= until, "{at:?} + {left:?} > {until:?}");
                    assert!(until - (at + left) < Duration::from_millis(1));
                }
                None => assert!(until.saturating_duration_since(at) < Duration::from_millis(1)),
            }
            at += Duration::from_micros(7_919);
        }
        // A refresh just after the acknowledgement grants (nearly) all of it;
        // one at or after its end grants nothing.
        assert_eq!(remaining(until, acked), Some(LEASE));
        assert_eq!(remaining(until, until), None);
        assert_eq!(remaining(until, until + REFRESH_EVERY), None);
    }
}
