//! `tandem bench ...`: benchmarks. Every figure is printed beside a baseline
//! measured in the same run, because these machines are shared and noisy:
//! only ratios within one run mean anything.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tandem_cli::scenario::{MoveLab, PingPong, PingPongStats};
use tandem_sys::tcp_repair::{self, RestoreOptions};

/// `tandem bench compare`: tandem, keepalived and Redis Sentinel when the
/// primary is killed, with the same client workload.
#[path = "bench_compare.rs"]
pub(crate) mod bench_compare;

/// `tandem bench kv` and the kv server behind `tandem tool kv-server`.
#[path = "bench_kv.rs"]
pub(crate) mod bench_kv;

/// `tandem bench synflood`: real clients' connects during a spoofed SYN
/// flood, tandem against a plain redis-server.
#[path = "bench_synflood.rs"]
pub(crate) mod bench_synflood;

/// `tandem bench failover`: the pause clients see across kills, crashes
/// and migrations of the primary.
#[path = "bench_failover.rs"]
pub(crate) mod bench_failover;

/// Builds the lab of `spec` for benchmark `bench`, runs `measure` in it,
/// and always takes it down, also when measuring failed; with
/// `keep_logs_in`, the daemons' logs are copied there first, for a look
/// after the lab is gone.
pub(crate) fn in_lab<T>(
    bench: &str,
    spec: &tandem_lab::LabSpec,
    what: &str,
    measure: impl FnOnce(&mut tandem_lab::LabGuard) -> Result<T>,
    keep_logs_in: Option<&std::path::Path>,
) -> Result<T> {
    let name = spec.name.as_deref().unwrap_or("(generated)");
    eprintln!("bench {bench}: bringing up lab {name} ({what})");
    let mut lab = tandem_lab::LabGuard::new(
        tandem_lab::Lab::up_with_daemon(spec, None)
            .with_context(|| format!("bringing up lab {name}"))?,
    );
    let result = measure(&mut lab);
    if let (Some(keep), Some(dir)) = (keep_logs_in, lab.files_dir()) {
        for id in lab.node_ids() {
            let _ = std::fs::copy(
                dir.join(format!("node{id}.log")),
                keep.join(format!("node{id}.log")),
            );
        }
    }
    let down = lab.down();
    let measured = result?;
    down.context("taking the lab down")?;
    Ok(measured)
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LockMode {
    Hold,
    Drop,
}

#[derive(clap::Subcommand)]
enum Bench {
    /// Planned moves: the cost of dumping and restoring one socket (against
    /// opening a fresh loopback connection), and the pause clients see when
    /// 1, 100 and 1,000 connections move at once (against the largest gap
    /// the same clients see over the same time with no move).
    Migrate {
        /// Connection counts to move at once.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 100, 1000])]
        sizes: Vec<usize>,
        /// Moves per size (alternating between node 1 and node 2); the table
        /// shows the median and the worst.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Dump/restore cycles for the single-socket figures.
        #[arg(long, default_value_t = 500)]
        cycles: usize,
        /// What the lock does with client segments during the freeze:
        /// `hold` them (NFQUEUE) and re-inject their bytes into the restored
        /// sockets, or `drop` them and let clients retransmit.
        #[arg(long, value_enum, default_value_t = LockMode::Hold)]
        lock: LockMode,
    },
    /// The capture path: packets per second through NFQUEUE → parse →
    /// classify → verdict on one reader thread (against the rate the same
    /// sender reaches when a plain DROP rule takes the packets), and the
    /// round-trip time an echo client sees with capture on (against the same
    /// path without it). There is no replicated log yet: verdicts are given
    /// as soon as a packet is classified.
    Capture {
        /// How long the throughput test sends, in seconds.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Echo round trips per latency measurement.
        #[arg(long, default_value_t = 20_000)]
        round_trips: usize,
    },
    /// The primary killed under load, as clients see it, for (1) tandem's
    /// replicated kv (3 nodes), (2) keepalived moving a VIP between two
    /// redis-servers (one replicating the other) and (3) Redis Sentinel (2
    /// redis-servers, 3 sentinels, clients following Sentinel): failed
    /// requests, broken connections, resets, acknowledged writes lost, time
    /// to the first success after the kill and latency outside the fault,
    /// with one Python client (redis-py, in a venv the bench creates).
    /// Builds its labs and always removes them. Needs root, and redis-server,
    /// redis-tools, keepalived, redis-sentinel and python3-venv
    /// (`sudo scripts/install-bench-deps.sh`).
    Compare {
        /// Systems to run, in this order.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [
            bench_compare::System::Tandem,
            bench_compare::System::Keepalived,
            bench_compare::System::Sentinel,
        ])]
        systems: Vec<bench_compare::System>,
        /// Client connections (one thread and one key each).
        #[arg(long, default_value_t = 8)]
        connections: u32,
        /// Length of each run, in seconds.
        #[arg(long, default_value_t = 15.0)]
        duration: f64,
        /// When the primary is killed, in seconds into the run.
        #[arg(long, default_value_t = 5.0)]
        kill_after: f64,
        /// Each connection sends one INCR per this many milliseconds.
        #[arg(long, default_value_t = 5.0)]
        period_ms: f64,
        /// The client's socket timeout, in seconds.
        #[arg(long, default_value_t = 1.0)]
        timeout: f64,
        /// The client's connect timeout, in seconds.
        #[arg(long, default_value_t = 0.5)]
        connect_timeout: f64,
        /// The client's socket and connect timeout towards sentinels.
        #[arg(long, default_value_t = 0.25)]
        sentinel_timeout: f64,
        /// keepalived's advert_int, in seconds (VRRPv3: 0.01 to 255).
        #[arg(long, default_value_t = 0.1)]
        advert_int: f64,
        /// Sentinel's down-after-milliseconds.
        #[arg(long, default_value_t = 1000)]
        down_after_ms: u64,
        /// Sentinel's failover-timeout, in milliseconds.
        #[arg(long, default_value_t = 3000)]
        failover_timeout_ms: u64,
        /// The venv holding redis-py (created with it if missing).
        #[arg(long, default_value = bench_compare::DEFAULT_VENV)]
        venv: std::path::PathBuf,
        /// Print the results as JSON (progress still goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// The replicated kv service against its baselines: requests/s and
    /// p50/p99 latency of SET and GET (redis-benchmark from the lab's client
    /// namespace, one client for latency, many for throughput) through (a)
    /// the 3-node replicated kv behind the VIP, (b) the same kv on one node
    /// with no capture and no replication, (c) a real redis-server on a
    /// node. Builds its own lab and always removes it. Needs root, and
    /// redis-server and redis-benchmark (`sudo scripts/install-bench-deps.sh`).
    Kv {
        /// Requests per redis-benchmark test (`-n`).
        #[arg(long, default_value_t = 20_000)]
        requests: u64,
        /// Rounds of (a, b, c); targets are interleaved so noise spreads
        /// evenly, and the table shows medians over the rounds.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Parallel clients of the throughput runs (`-c`).
        #[arg(long, default_value_t = 50)]
        clients: u32,
        /// The lab's name.
        #[arg(long, default_value = bench_kv::DEFAULT_LAB)]
        name: String,
        /// Print the results as JSON (progress still goes to stderr).
        #[arg(long)]
        json: bool,
        /// Also measure (a) in a second lab whose daemons replicate
        /// without encryption (a benchmark-only config switch; the daemons
        /// warn at start-up), and report the cost of encryption as the
        /// ratio of requests/s.
        #[arg(long)]
        encryption_cost: bool,
    },
    /// Real clients during a spoofed SYN flood: connects that got their
    /// PONG and connect + PING + PONG latency (p50/p99/max), quiet and
    /// flooded, through the 3-node replicated kv against a plain
    /// redis-server (kernel SYN cookies) in the same lab; tandem's figures
    /// as ratios of redis-server's. Builds its own lab and always removes
    /// it. Needs root and redis-server (`sudo scripts/install-bench-deps.sh`).
    Synflood {
        /// Spoofed SYNs per second.
        #[arg(long, default_value_t = 2_000)]
        rate: u64,
        /// How long each measurement runs, in seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// The lab's name.
        #[arg(long, default_value = "synbench")]
        name: String,
    },
    /// Failover and migration as clients see them: the largest gap between
    /// consecutive replies (min/median/p99/max over the events) when the
    /// primary of a 3-node kv lab is killed (power cut), crashed (daemon
    /// killed, kernel alive) or migrated to a caught-up clone, with 1, 100
    /// and 1,000 connections looping INCR on their own keys (every reply
    /// checked; errors, resets, EOFs and wrong replies are counted). After a
    /// kill or crash the old primary is restarted and the cluster waited for
    /// before the next event. Builds its own lab and always removes it.
    /// Needs root.
    Failover {
        /// Events per kind and connection count.
        #[arg(long, default_value_t = 20)]
        events: usize,
        /// Which events, interleaved round by round.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [
            bench_failover::Kind::Kill,
            bench_failover::Kind::Crash,
            bench_failover::Kind::Migrate,
        ])]
        kinds: Vec<bench_failover::Kind>,
        /// Connection counts, one after the other (each a fresh set of
        /// connections, each sending at most one request per count × 50 µs).
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 100, 1000])]
        connections: Vec<usize>,
        /// The lab's name.
        #[arg(long, default_value = bench_failover::DEFAULT_LAB)]
        name: String,
        /// Print the results as JSON (progress still goes to stderr).
        #[arg(long)]
        json: bool,
        /// Raft timeouts for the lab's daemons, to measure others than the
        /// defaults.
        #[command(flatten)]
        raft: crate::cmd_lab::RaftArgs,
    },
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    match args.bench {
        Bench::Migrate {
            sizes,
            rounds,
            cycles,
            lock,
        } => migrate(&sizes, rounds.max(1), cycles.max(1), lock),
        Bench::Capture {
            seconds,
            round_trips,
        } => crate::bench_capture::run(seconds.max(0.1), round_trips.max(100)),
        Bench::Compare {
            systems,
            connections,
            duration,
            kill_after,
            period_ms,
            timeout,
            connect_timeout,
            sentinel_timeout,
            advert_int,
            down_after_ms,
            failover_timeout_ms,
            venv,
            json,
        } => bench_compare::run(bench_compare::Options {
            systems,
            connections: connections.max(1),
            duration_s: duration.max(1.0),
            kill_after_s: kill_after.clamp(0.5, duration.max(1.0)),
            period_ms: period_ms.max(0.1),
            timeout_s: timeout.max(0.01),
            connect_timeout_s: connect_timeout.max(0.01),
            sentinel_timeout_s: sentinel_timeout.max(0.01),
            advert_int_s: advert_int,
            down_after_ms: down_after_ms.max(1),
            failover_timeout_ms: failover_timeout_ms.max(1),
            venv,
            json,
        }),
        Bench::Kv {
            requests,
            rounds,
            clients,
            name,
            json,
            encryption_cost,
        } => bench_kv::run(bench_kv::Options {
            name,
            requests: requests.max(1),
            rounds: rounds.max(1),
            clients: clients.max(2),
            json,
            encryption_cost,
        }),
        Bench::Synflood {
            rate,
            seconds,
            name,
        } => bench_synflood::run(bench_synflood::Options {
            rate: rate.max(1),
            seconds,
            name,
        }),
        Bench::Failover {
            events,
            kinds,
            connections,
            name,
            json,
            raft,
        } => bench_failover::run(bench_failover::Options {
            name,
            events,
            kinds,
            connections: connections.into_iter().map(|c| c.max(1)).collect(),
            json,
            raft: raft.into(),
        }),
    }
}

fn migrate(sizes: &[usize], rounds: usize, cycles: usize, lock: LockMode) -> Result<ExitCode> {
    crate::require_root("tandem bench migrate")?;
    println!("## One socket, {cycles} cycles on loopback in a private namespace\n");
    let single = tandem_sys::netns::run_in_private(move || single_socket(cycles))??;
    println!("| operation | median | mean | ratio to opening a connection |");
    println!("|---|---|---|---|");
    for (name, samples) in [
        (
            "open a connection (baseline: socket, connect, accept)",
            &single.open,
        ),
        ("dump (TCP_REPAIR, queues, options, window)", &single.dump),
        ("restore (socket built in repair mode)", &single.restore),
    ] {
        println!(
            "| {name} | {} | {} | {:.2} |",
            ms(median(samples)),
            ms(mean(samples)),
            mean(samples).as_secs_f64() / mean(&single.open).as_secs_f64()
        );
    }

    let (hold, what) = match lock {
        LockMode::Hold => (
            Some(tandem_cli::scenario::HOLD_QUEUE),
            "held by the lock and re-injected",
        ),
        LockMode::Drop => (None, "dropped by the lock (clients retransmit)"),
    };
    println!("\n## Planned move of N connections between two lab nodes, {rounds} moves each\n");
    println!("Client segments sent during the freeze are {what}.");
    println!("Clients ping-pong numbered lines; the pause is the largest gap between two");
    println!("consecutive replies on any connection; the baseline is the largest gap over");
    println!("an equal window with no move, same clients, same run.\n");
    println!("| connections | frozen (lock→VIP announced) median / worst | dump / restore per socket | client pause median / worst | baseline gap | pause ÷ baseline |");
    println!("|---|---|---|---|---|---|");
    let tandem = std::env::current_exe()?;
    for &n in sizes {
        let row = move_size(&tandem, n, rounds, hold)
            .with_context(|| format!("moving {n} connections"))?;
        println!(
            "| {n} | {} / {} | {} / {} | {} / {} | {} | {:.1} |",
            ms(median(&row.frozen)),
            ms(max(&row.frozen)),
            ms(mean(&row.dump_per_socket)),
            ms(mean(&row.restore_per_socket)),
            ms(median(&row.pause)),
            ms(max(&row.pause)),
            ms(median(&row.baseline)),
            median(&row.pause).as_secs_f64() / median(&row.baseline).as_secs_f64().max(1e-9)
        );
    }
    Ok(ExitCode::SUCCESS)
}

struct SingleSocket {
    open: Vec<Duration>,
    dump: Vec<Duration>,
    restore: Vec<Duration>,
}

fn single_socket(cycles: usize) -> Result<SingleSocket> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut out = SingleSocket {
        open: Vec::new(),
        dump: Vec::new(),
        restore: Vec::new(),
    };
    let mut client = TcpStream::connect(addr)?;
    let (mut server, _) = listener.accept()?;
    for i in 0..cycles {
        let t = Instant::now();
        let c = TcpStream::connect(addr)?;
        let (s, _) = listener.accept()?;
        out.open.push(t.elapsed());
        drop((c, s));

        // Keep the connection really alive across cycles: one exchange each.
        client.write_all(&(i as u32).to_be_bytes())?;
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf)?;
        server.write_all(&buf)?;
        client.read_exact(&mut buf)?;

        let t = Instant::now();
        let image = tcp_repair::dump(std::os::fd::AsFd::as_fd(&server))?;
        out.dump.push(t.elapsed());
        tcp_repair::close_silently(server.into())?;
        let t = Instant::now();
        let restored = tcp_repair::restore(&image, &RestoreOptions::default())?;
        out.restore.push(t.elapsed());
        server = TcpStream::from(restored);
    }
    Ok(out)
}

struct SizeRow {
    frozen: Vec<Duration>,
    pause: Vec<Duration>,
    baseline: Vec<Duration>,
    dump_per_socket: Vec<Duration>,
    restore_per_socket: Vec<Duration>,
}

fn move_size(
    tandem: &std::path::Path,
    n: usize,
    rounds: usize,
    hold: Option<u16>,
) -> Result<SizeRow> {
    let name = format!("bench{}-{n}", std::process::id());
    let mut lab = MoveLab::up_with(&name, 2, tandem.to_path_buf(), hold)?;
    let streams = (0..n)
        .map(|_| lab.connect(None))
        .collect::<Result<Vec<_>>>()?;
    // Keep the total request rate near 20k/s whatever n is: the pause must
    // measure the move, not a saturated machine.
    let interval = Duration::from_micros((n as u64 * 50).max(2000));
    let window = Duration::from_millis(1500).max(interval * 20);
    let mut row = SizeRow {
        frozen: Vec::new(),
        pause: Vec::new(),
        baseline: Vec::new(),
        dump_per_socket: Vec::new(),
        restore_per_socket: Vec::new(),
    };
    let mut streams = Some(streams);
    for round in 0..rounds {
        // Baseline window, then a window holding one move; fresh workloads so
        // each window's largest gap is its own.
        let workload = PingPong::start(take_clones(&mut streams)?, interval);
        std::thread::sleep(window);
        row.baseline.push(stop(workload)?.max_gap);

        let workload = PingPong::start(take_clones(&mut streams)?, interval);
        std::thread::sleep(window / 2);
        let to = if lab.server_node() == 1 { 2 } else { 1 };
        let report = lab.move_to(to).with_context(|| format!("round {round}"))?;
        std::thread::sleep(window / 2);
        let stats = stop(workload)?;
        row.pause.push(stats.max_gap);
        row.frozen.push(report.frozen_for());
        let per = |phase| report.phase(phase).unwrap_or_default() / n as u32;
        row.dump_per_socket.push(per("dump"));
        row.restore_per_socket.push(per("restore"));
        if lab.client_rst_count()? > 0 {
            anyhow::bail!("clients received RST segments during round {round}");
        }
    }
    lab.down()?;
    Ok(row)
}

/// Clones of the client streams for a new workload (the same connections).
fn take_clones(streams: &mut Option<Vec<TcpStream>>) -> Result<Vec<TcpStream>> {
    let streams = streams.as_ref().context("streams gone")?;
    Ok(streams
        .iter()
        .map(TcpStream::try_clone)
        .collect::<std::io::Result<Vec<_>>>()?)
}

fn stop(workload: PingPong) -> Result<PingPongStats> {
    workload.finish().context("a client saw an error")
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

fn mean(samples: &[Duration]) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.iter().sum::<Duration>() / samples.len() as u32
}

fn max(samples: &[Duration]) -> Duration {
    samples.iter().max().copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}
