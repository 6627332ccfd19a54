//! `tandem bench migrate`: planned moves of a plain process's connections
//! (`tandem-moves`) — what dumping and restoring one socket costs against
//! opening a connection, and the pause clients see when 1, 100 and 1,000
//! connections move at once against the largest gap with no move.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tandem_moves::scenario::{MoveLab, PingPong, PingPongStats};
use tandem_sys::tcp_repair::{self, RestoreOptions};

/// What the source's lock does with client segments during a move's freeze.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Held in a queue and re-injected into the restored sockets.
    Hold,
    /// Dropped: the clients retransmit to the target.
    Drop,
}

/// Runs the benchmark: one socket's dump and restore against opening a
/// connection, then planned moves of each of `sizes` connections, `rounds`
/// times each.
pub fn run(sizes: &[usize], rounds: usize, cycles: usize, lock: LockMode) -> Result<ExitCode> {
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
            Some(tandem_moves::scenario::HOLD_QUEUE),
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
