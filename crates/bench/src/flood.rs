//! A spoofed SYN flood and a connect prober, for the SYN-flood lab test and
//! `tandem bench synflood`: SYNs from random addresses on the client's
//! subnet that nobody answers for (so no RST ever ends a handshake), sent
//! from a raw socket at a steady rate, while a real client connects again
//! and again (connect, PING, PONG, close) and records what it saw.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_wire::{IpRepr, IpTcpRepr, Ipv4Repr, SeqNumber, TcpFlags};

/// Spoofed sources: 198.18.0.150 to 198.18.0.249, unused in a lab.
pub const SPOOF_FIRST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 150);
pub const SPOOF_COUNT: u8 = 100;

/// A small xorshift generator: the flood needs spread, not quality.
#[derive(Debug, Clone)]
pub struct Spread(u64);

impl Spread {
    pub fn new(seed: u64) -> Spread {
        Spread(seed | 1)
    }

    pub fn draw(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// One SYN as a client's kernel would send it (MSS, SACK, timestamps,
/// window scale), from `src`.
pub fn spoofed_syn(src: SocketAddrV4, dst: SocketAddrV4, isn: u32, tsval: u32) -> Vec<u8> {
    let options = tandem_wire::tcp::OptionSet {
        mss: Some(1460),
        window_scale: Some(7),
        sack_permitted: true,
        timestamps: Some(tandem_wire::tcp::Timestamps { tsval, tsecr: 0 }),
        ..Default::default()
    };
    IpTcpRepr {
        ip: IpRepr::V4(Ipv4Repr::tcp(*src.ip(), *dst.ip())),
        tcp: tandem_wire::tcp::Repr {
            src_port: src.port(),
            dst_port: dst.port(),
            seq_number: SeqNumber(isn),
            ack_number: SeqNumber(0),
            flags: TcpFlags::SYN,
            window_len: 64240,
            urgent_at: 0,
            options,
            payload: &[],
        },
    }
    .to_bytes()
    .expect("a SYN always fits its buffer")
}

/// A flood running on its own thread in a network namespace.
pub struct Flood {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<anyhow::Result<u64>>,
}

impl Flood {
    /// Sends `rate` spoofed SYNs per second to `target` from namespace
    /// `netns` (in batches every millisecond) until [`Flood::stop`].
    pub fn start(netns: &str, target: SocketAddrV4, rate: u64, seed: u64) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let netns = netns.to_string();
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || -> anyhow::Result<u64> {
                tandem_sys::netns::run_in(&netns, move || -> anyhow::Result<u64> {
                    let raw = tandem_sys::rawsock::RawIpv4Sender::open()?;
                    let mut spread = Spread::new(seed);
                    let started = Instant::now();
                    let mut sent = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                        while sent < due {
                            let r = spread.draw();
                            let host = u32::from(SPOOF_FIRST) + (r % u64::from(SPOOF_COUNT)) as u32;
                            let port = 1024 + ((r >> 8) % 60_000) as u16;
                            let src = SocketAddrV4::new(Ipv4Addr::from(host), port);
                            let syn = spoofed_syn(src, target, (r >> 24) as u32, r as u32);
                            // A full socket buffer loses a SYN: the rate is
                            // counted from what left.
                            if raw.send(&syn, *target.ip()).is_ok() {
                                sent += 1;
                            } else {
                                break;
                            }
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok(sent)
                })?
            })
        };
        Flood { stop, handle }
    }

    /// Stops the flood; returns how many SYNs were sent.
    pub fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the flood thread panicked"))?
    }
}

/// What the prober saw.
#[derive(Debug, Clone, Default)]
pub struct ProbeStats {
    pub attempts: u64,
    /// Connects that got their PONG.
    pub ok: u64,
    /// What went wrong, per failed attempt.
    pub failures: Vec<String>,
    /// Connect + PING + PONG, per successful attempt.
    pub latencies: Vec<Duration>,
}

impl ProbeStats {
    /// The `q` quantile (0..=1) of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let at = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        sorted[at]
    }
}

/// One attempt: connect, PING, read `+PONG`, close, each step within
/// `timeout`.
pub fn ping_once(target: SocketAddr, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut stream =
        TcpStream::connect_timeout(&target, timeout).map_err(|err| format!("connect: {err}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|err| format!("timeout: {err}"))?;
    stream
        .write_all(b"*1\r\n$4\r\nPING\r\n")
        .map_err(|err| format!("write: {err}"))?;
    let mut reply = [0u8; 7];
    stream
        .read_exact(&mut reply)
        .map_err(|err| format!("read: {err}"))?;
    if &reply != b"+PONG\r\n" {
        return Err(format!("answered {:?}", String::from_utf8_lossy(&reply)));
    }
    Ok(started.elapsed())
}

/// Connects to `target` from namespace `netns` again and again for
/// `duration`, `gap` apart, each attempt bounded by `timeout`.
pub fn probe(
    netns: &str,
    target: SocketAddr,
    duration: Duration,
    gap: Duration,
    timeout: Duration,
) -> anyhow::Result<ProbeStats> {
    tandem_sys::netns::run_in(netns, move || {
        let mut stats = ProbeStats::default();
        let started = Instant::now();
        while started.elapsed() < duration {
            stats.attempts += 1;
            match ping_once(target, timeout) {
                Ok(latency) => {
                    stats.ok += 1;
                    stats.latencies.push(latency);
                }
                Err(err) => stats
                    .failures
                    .push(format!("attempt {}: {err}", stats.attempts)),
            }
            std::thread::sleep(gap);
        }
        stats
    })
    .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_wire::tcp::ParseChecks;

    #[test]
    fn a_spoofed_syn_parses_as_a_syn_from_its_source() {
        let src = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 160), 5555);
        let dst = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 6379);
        let bytes = spoofed_syn(src, dst, 77, 9);
        let repr = IpTcpRepr::parse(&bytes, ParseChecks::default()).unwrap();
        assert_eq!(repr.ip.src_addr(), *src.ip());
        assert_eq!(repr.tcp.flags, TcpFlags::SYN);
        assert_eq!(repr.tcp.seq_number, SeqNumber(77));
        assert_eq!(repr.tcp.options.mss, Some(1460));
    }
}
