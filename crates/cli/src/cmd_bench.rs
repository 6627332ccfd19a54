//! `tandem bench ...`: the arguments of the benchmarks; the benchmarks
//! themselves are the `tandem-bench` crate. Every figure is printed beside a
//! baseline measured in the same run, because these machines are shared and
//! noisy: only ratios within one run mean anything.

use anyhow::Result;
use std::process::ExitCode;
use tandem_bench::{capture, chaos, compare, failover, kv, migrate, synflood};

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

impl From<LockMode> for migrate::LockMode {
    fn from(mode: LockMode) -> migrate::LockMode {
        match mode {
            LockMode::Hold => migrate::LockMode::Hold,
            LockMode::Drop => migrate::LockMode::Drop,
        }
    }
}

#[derive(clap::Subcommand)]
enum Bench {
    /// A chaos run (not in CI): a seeded random schedule of power cuts,
    /// crashes, freezes, partitions, reboots and migrations on a 3- or
    /// 5-node lab, one episode every few seconds (fault, hold, restore,
    /// recovery checked), under a checked load (long-lived connections
    /// looping INCR/SET/GET, every reply checked, every counter read back
    /// at the end). Reports failovers, the pauses clients saw (against
    /// quiet windows of the same run), errors, lost and duplicated
    /// updates, client resets, the replicas' state hashes and the daemons
    /// alive; exits non-zero if any of these is wrong or the cluster did
    /// not recover from a fault. Progress on stderr, one line per episode.
    /// Builds its own lab and always removes it. Needs root.
    Chaos {
        /// How long to inject faults, in minutes (fractions allowed).
        #[arg(long)]
        minutes: f64,
        /// Nodes in the lab: 3 (one fault at a time) or 5 (up to two).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The schedule's seed (default: from the clock; it is printed).
        #[arg(long)]
        seed: Option<u64>,
        /// The service under load.
        #[arg(long, value_enum, default_value_t = chaos::Service::Kv)]
        service: chaos::Service,
        /// Connections of the checked load.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// The faults to draw from.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = chaos::Action::ALL)]
        actions: Vec<chaos::Action>,
        /// Shortest hold of a fault, ms (each hold is drawn uniformly
        /// between this and --hold-max-ms).
        #[arg(long, default_value_t = 500)]
        hold_min_ms: u64,
        /// Longest hold of a fault, ms.
        #[arg(long, default_value_t = 6000)]
        hold_max_ms: u64,
        /// Shortest quiet time between recovery and the next fault, ms
        /// (the baseline window of the next fault's pause).
        #[arg(long, default_value_t = 1000)]
        quiet_min_ms: u64,
        /// Longest quiet time between recovery and the next fault, ms.
        #[arg(long, default_value_t = 4000)]
        quiet_max_ms: u64,
        /// How long the cluster may take to be healthy again after a
        /// restore before the run calls it a wedge and stops, seconds.
        #[arg(long, default_value_t = 60)]
        recover_within_s: u64,
        /// A reply later than this is a load error, seconds.
        #[arg(long, default_value_t = 10)]
        reply_timeout_s: u64,
        /// The lab's name.
        #[arg(long, default_value = chaos::DEFAULT_LAB)]
        name: String,
        /// Where the node logs, the schedule and the JSON report are kept.
        #[arg(long, default_value = "/tmp/tandem-chaos")]
        logs: std::path::PathBuf,
        /// Print the report as JSON (progress still goes to stderr).
        #[arg(long)]
        json: bool,
    },
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
            compare::System::Tandem,
            compare::System::Keepalived,
            compare::System::Sentinel,
        ])]
        systems: Vec<compare::System>,
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
        #[arg(long, default_value = compare::DEFAULT_VENV)]
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
        #[arg(long, default_value = kv::DEFAULT_LAB)]
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
            failover::Kind::Kill,
            failover::Kind::Crash,
            failover::Kind::Migrate,
        ])]
        kinds: Vec<failover::Kind>,
        /// Connection counts, one after the other (each a fresh set of
        /// connections, each sending at most one request per count × 50 µs).
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 100, 1000])]
        connections: Vec<usize>,
        /// The lab's name.
        #[arg(long, default_value = failover::DEFAULT_LAB)]
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
        Bench::Chaos {
            minutes,
            nodes,
            seed,
            service,
            connections,
            actions,
            hold_min_ms,
            hold_max_ms,
            quiet_min_ms,
            quiet_max_ms,
            recover_within_s,
            reply_timeout_s,
            name,
            logs,
            json,
        } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs())
            });
            chaos::run(chaos::Options {
                name,
                minutes,
                nodes,
                seed,
                service,
                connections,
                actions,
                hold_ms: (hold_min_ms, hold_max_ms),
                quiet_ms: (quiet_min_ms, quiet_max_ms),
                recover_within: std::time::Duration::from_secs(recover_within_s.max(1)),
                reply_timeout: std::time::Duration::from_secs(reply_timeout_s.max(1)),
                logs,
                json,
            })
        }
        Bench::Migrate {
            sizes,
            rounds,
            cycles,
            lock,
        } => migrate::run(&sizes, rounds.max(1), cycles.max(1), lock.into()),
        Bench::Capture {
            seconds,
            round_trips,
        } => capture::run(seconds.max(0.1), round_trips.max(100)),
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
        } => compare::run(compare::Options {
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
        } => kv::run(kv::Options {
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
        } => synflood::run(synflood::Options {
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
        } => failover::run(failover::Options {
            name,
            events,
            kinds,
            connections: connections.into_iter().map(|c| c.max(1)).collect(),
            json,
            raft: raft.into(),
        }),
    }
}
