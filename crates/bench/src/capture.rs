//! `tandem bench capture`: what the capture path costs. Both halves run in
//! a private network namespace on loopback, each figure beside a baseline
//! measured in the same run.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_core::classify::{classify, Class, SynLimiter};
use tandem_core::packet::{facts_of, segment_of};
use tandem_core::shadow::{ConnKey, Millis, ShadowConfig, ShadowTable};
use tandem_node::capture::{direction_of, CaptureLoop, CaptureStats, Decision};
use tandem_sys::capture::{detect_backend, CaptureRules};
use tandem_sys::nfqueue::{NfQueue, NfQueueError, QueueConfig, Verdict};

const QUEUE: u16 = 31;

pub fn run(seconds: f64, round_trips: usize) -> Result<ExitCode> {
    crate::require_root("tandem bench capture")?;
    let duration = Duration::from_secs_f64(seconds);
    let throughput = tandem_sys::netns::run_in_private(move || throughput(duration))??;
    println!("## Capture throughput, one reader thread, {seconds} s\n");
    println!("A raw socket offers the data segments (64-byte payload) of one established");
    println!("connection to a captured port as fast as it can; the reader parses each,");
    println!("classifies it, feeds it to shadow TCP and gives verdicts in batches.\n");
    println!("| path | packets/s | ratio to baseline |");
    println!("|---|---|---|");
    println!(
        "| baseline: the same sender, a plain DROP rule | {:.0} | 1.00 |",
        throughput.baseline_pps
    );
    println!(
        "| NFQUEUE → parse → classify → shadow TCP → verdict | {:.0} | {:.2} |",
        throughput.capture_pps,
        throughput.capture_pps / throughput.baseline_pps
    );
    println!(
        "\nreader: {} packets in {} batches ({:.1} per batch), {} bytes delivered in order by shadow TCP;",
        throughput.stats.packets,
        throughput.stats.batches,
        throughput.stats.packets as f64 / throughput.stats.batches.max(1) as f64,
        throughput.delivered,
    );
    println!(
        "dropped because the reader fell behind: {} (queue full) + {} (socket buffer), overruns seen {}",
        throughput.queue_dropped, throughput.user_dropped, throughput.stats.overruns
    );

    let latency = tandem_sys::netns::run_in_private(move || latency(round_trips))??;
    println!("\n## Echo round trip with and without capture, {round_trips} round trips each\n");
    println!("| path | median | p99 | median added | p99 added |");
    println!("|---|---|---|---|---|");
    println!(
        "| baseline: no capture | {} | {} | | |",
        us(latency.baseline.0),
        us(latency.baseline.1)
    );
    println!(
        "| capture (client packets in INPUT, SYN-ACKs in OUTPUT) | {} | {} | {} | {} |",
        us(latency.captured.0),
        us(latency.captured.1),
        us_signed(latency.captured.0, latency.baseline.0),
        us_signed(latency.captured.1, latency.baseline.1)
    );
    Ok(ExitCode::SUCCESS)
}

struct Throughput {
    baseline_pps: f64,
    capture_pps: f64,
    stats: CaptureStats,
    /// Client bytes shadow TCP delivered in order.
    delivered: u64,
    queue_dropped: u64,
    user_dropped: u64,
}

const CLIENT_ISN: u32 = 0xfff0_0000;
const SERVER_ISN: u32 = 0x1234_5678;
const SEGMENT: usize = 64;

/// A TCP segment from 127.0.0.2:5555 to 127.0.0.1:9 with a valid checksum.
fn segment(flags: tandem_wire::TcpFlags, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    use tandem_wire::{IpRepr, IpTcpRepr, Ipv4Repr, SeqNumber, TcpOptionSet, TcpRepr};
    let repr = IpTcpRepr {
        ip: IpRepr::V4(Ipv4Repr::tcp(
            Ipv4Addr::new(127, 0, 0, 2),
            Ipv4Addr::LOCALHOST,
        )),
        tcp: TcpRepr {
            src_port: 5555,
            dst_port: 9,
            seq_number: SeqNumber(seq),
            ack_number: SeqNumber(ack),
            flags,
            window_len: 512,
            urgent_at: 0,
            options: TcpOptionSet::default(),
            payload,
        },
    };
    repr.to_bytes().expect("a fixed, valid packet")
}

/// `count` consecutive data segments of one connection (the stream wraps
/// past 2^32 early on: the client ISN sits just below it).
fn offered_stream(count: usize) -> Vec<Vec<u8>> {
    use tandem_wire::TcpFlags;
    let payload = [0x5au8; SEGMENT];
    (0..count)
        .map(|k| {
            let seq = CLIENT_ISN
                .wrapping_add(1)
                .wrapping_add((k * SEGMENT) as u32);
            segment(
                TcpFlags::ACK | TcpFlags::PSH,
                seq,
                SERVER_ISN.wrapping_add(1),
                &payload,
            )
        })
        .collect()
}

/// A shadow table in which the offered connection is established (its
/// handshake fed as the capture would have logged it).
fn shadow_with_connection() -> Result<ShadowTable> {
    use tandem_core::shadow::{Direction, Millis};
    use tandem_wire::{IpTcpRepr, SeqNumber, TcpFlags};
    let mut table = ShadowTable::new(ShadowConfig::default());
    let client = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 5555));
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
    let syn = segment(TcpFlags::SYN, CLIENT_ISN, 0, &[]);
    let syn = IpTcpRepr::parse(&syn, Default::default())?;
    table.on_segment(Millis(0), Direction::FromClient, &segment_of(&syn));
    let mut syn_ack = segment_of(&syn);
    syn_ack.src = server;
    syn_ack.dst = client;
    syn_ack.seq = SeqNumber(SERVER_ISN);
    syn_ack.ack = SeqNumber(CLIENT_ISN.wrapping_add(1));
    syn_ack.flags = TcpFlags::SYN | TcpFlags::ACK;
    table.on_segment(Millis(0), Direction::FromServer, &syn_ack);
    let ack = segment(
        TcpFlags::ACK,
        CLIENT_ISN.wrapping_add(1),
        SERVER_ISN.wrapping_add(1),
        &[],
    );
    let ack = IpTcpRepr::parse(&ack, Default::default())?;
    let outcome = table.on_segment(Millis(0), Direction::FromClient, &segment_of(&ack));
    anyhow::ensure!(
        outcome.events.contains(&tandem_core::shadow::Event::Opened),
        "the benchmark's handshake did not open the connection: {outcome:?}"
    );
    Ok(table)
}

/// Sends the packets of `stream` to 127.0.0.1, in order, for `duration` or
/// until the stream is exhausted; returns how many went out.
fn offer(stream: &[Vec<u8>], duration: Duration) -> Result<u64> {
    let sender = tandem_sys::rawsock::RawIpv4Sender::open().context("opening a raw socket")?;
    let deadline = Instant::now() + duration;
    let mut sent = 0u64;
    'outer: while Instant::now() < deadline {
        for _ in 0..64 {
            let Some(packet) = stream.get(sent as usize) else {
                break 'outer;
            };
            sender.send(packet, Ipv4Addr::LOCALHOST)?;
            sent += 1;
        }
    }
    Ok(sent)
}

fn iptables(args: &str) -> Result<()> {
    let status = std::process::Command::new("iptables")
        .arg("-w")
        .args(args.split_whitespace())
        .status()
        .context("running iptables")?;
    anyhow::ensure!(status.success(), "iptables {args} failed");
    Ok(())
}

fn throughput(duration: Duration) -> Result<Throughput> {
    // Enough distinct segments for the whole run at well over the
    // capture's rate, so the shadow stream never repeats itself.
    let count = ((duration.as_secs_f64() * 600_000.0) as usize).min(4_000_000);
    let stream = offered_stream(count);
    // Baseline: the kernel drops the packets itself.
    iptables("-I INPUT 1 -p tcp --dport 9 -j DROP")?;
    let baseline = offer(&stream, duration)?;
    iptables("-D INPUT -p tcp --dport 9 -j DROP")?;

    let rules = CaptureRules::new(None, Ipv4Addr::LOCALHOST, &[9], QUEUE)?;
    let queue = NfQueue::bind(QUEUE, QueueConfig::default())?;
    queue.set_read_timeout(Duration::from_millis(50))?;
    rules.install(detect_backend())?;
    let mut table = shadow_with_connection()?;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<(CaptureStats, u64)> {
            let mut capture = CaptureLoop::new(queue);
            let mut limiter = SynLimiter::new(1000, 1000);
            let mut delivered = 0u64;
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let now = Millis(start.elapsed().as_millis() as u64);
                let result = capture.poll(|packet, parsed| {
                    let Ok(repr) = parsed else {
                        return Decision::Verdict(Verdict::Drop);
                    };
                    let segment = segment_of(&repr);
                    let direction = direction_of(packet);
                    let known = table.info(&ConnKey::of(direction, &segment)).is_some();
                    match classify(direction, facts_of(&repr), known, &mut limiter, now.0) {
                        Class::Junk(_) => Decision::Verdict(Verdict::Drop),
                        _ => {
                            let outcome = table.on_segment(now, direction, &segment);
                            delivered += outcome.delivered().len() as u64;
                            // No socket behind port 9: the kernel has
                            // nothing to do with it once shadow TCP has.
                            Decision::Verdict(Verdict::Drop)
                        }
                    }
                });
                match result {
                    Ok(_) => {}
                    Err(NfQueueError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(err) => return Err(err.into()),
                }
            }
            Ok((capture.stats(), delivered))
        })
    };
    let before = tandem_sys::nfqueue::queue_stats(QUEUE)?.unwrap_or_default();
    let started = Instant::now();
    offer(&stream, duration)?;
    // Let the reader finish what is queued, then count.
    std::thread::sleep(Duration::from_millis(200));
    let after = tandem_sys::nfqueue::queue_stats(QUEUE)?.unwrap_or_default();
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed() - Duration::from_millis(200);
    let (stats, delivered) = reader.join().expect("reader thread")?;
    rules.remove()?;
    Ok(Throughput {
        baseline_pps: baseline as f64 / duration.as_secs_f64(),
        capture_pps: stats.packets as f64 / elapsed.as_secs_f64().max(duration.as_secs_f64()),
        stats,
        delivered,
        queue_dropped: after.queue_dropped - before.queue_dropped,
        user_dropped: after.user_dropped - before.user_dropped,
    })
}

struct Latency {
    baseline: (Duration, Duration),
    captured: (Duration, Duration),
}

fn latency(round_trips: usize) -> Result<Latency> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    // A fresh connection each round: its SYN and SYN-ACK cross the capture
    // too. The first 100 round trips warm up and are not counted.
    let measure = |n: usize| -> Result<Vec<Duration>> {
        let mut client = TcpStream::connect(("127.0.0.1", port))?;
        client.set_nodelay(true)?;
        let mut samples = Vec::with_capacity(n);
        let msg = [7u8; 64];
        let mut buf = [0u8; 64];
        for i in 0..n + 100 {
            let t = Instant::now();
            client.write_all(&msg)?;
            client.read_exact(&mut buf)?;
            if i >= 100 {
                samples.push(t.elapsed());
            }
        }
        Ok(samples)
    };
    // Alternate the two paths so drift (CPU frequency, other tenants) hits
    // both alike; each figure pools its rounds.
    let rounds = 4;
    let per_round = (round_trips / rounds).max(100);
    let mut plain = Vec::new();
    let mut captured = Vec::new();
    for _ in 0..rounds {
        plain.extend(measure(per_round)?);
        captured.extend(with_capture(port, || measure(per_round))??);
    }
    Ok(Latency {
        baseline: percentiles(&mut plain),
        captured: percentiles(&mut captured),
    })
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

/// Runs `f` with capture rules on `port` and a reader thread accepting every
/// well-formed packet after parsing it.
fn with_capture<T>(port: u16, f: impl FnOnce() -> T) -> Result<T> {
    let rules = CaptureRules::new(None, Ipv4Addr::LOCALHOST, &[port], QUEUE)?;
    let queue = NfQueue::bind(QUEUE, QueueConfig::default())?;
    queue.set_read_timeout(Duration::from_millis(50))?;
    rules.install(detect_backend())?;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, seen) = (stop.clone(), seen.clone());
        std::thread::spawn(move || -> Result<()> {
            let mut capture = CaptureLoop::new(queue);
            while !stop.load(Ordering::Relaxed) {
                let result = capture.poll(|_, parsed| match parsed {
                    Ok(_) => Decision::Verdict(Verdict::Accept),
                    Err(_) => Decision::Verdict(Verdict::Drop),
                });
                match result {
                    Ok(_) => {}
                    Err(NfQueueError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(err) => return Err(err.into()),
                }
            }
            seen.store(capture.stats().packets, Ordering::Relaxed);
            Ok(())
        })
    };
    let out = f();
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("reader thread")?;
    rules.remove()?;
    anyhow::ensure!(
        seen.load(Ordering::Relaxed) > 0,
        "the capture saw no packet: the rules did not apply"
    );
    Ok(out)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn us_signed(a: Duration, b: Duration) -> String {
    format!("{:+.1} µs", (a.as_secs_f64() - b.as_secs_f64()) * 1e6)
}
