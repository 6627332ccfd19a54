//! The migration scenario: a lab, a plain echo server behind the VIP, clients
//! in the client namespace, and planned moves of the server's connections
//! from node to node. Shared by `tandem demo`, `tandem bench migrate` and the
//! end-to-end tests, so all three exercise exactly the same path.

use crate::migration::{self, MigrationError, MoveReport, MoveSpec};
use crate::site::Site;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_lab::{Lab, LabSpec, ServiceKind};
use tandem_sys::arp::GarpSchedule;

/// The NFQUEUE a holding lock uses in the lab's node namespaces.
pub const HOLD_QUEUE: u16 = 40;

/// A lab with an echo server on every node, ready to have connections moved
/// from the one that holds the VIP to another.
pub struct MoveLab {
    lab: Option<Lab>,
    tandem: PathBuf,
    sites: BTreeMap<u32, Site>,
    /// One echo server per node, each with its hand-off channel: the one on
    /// `server_node` serves the clients, the others stand by to receive
    /// moved connections without a process start on the critical path.
    servers: BTreeMap<u32, Server>,
    server_node: u32,
    spec: MoveSpec,
    rst_baseline: u64,
}

impl MoveLab {
    /// Builds a lab of `nodes` nodes named `name`, puts the VIP on node 1 and
    /// starts an echo server there (the `tandem` binary at `tandem`, run as
    /// `tandem tool echo-server`), and waits until a client reaches it.
    /// Moves hold what clients send while frozen and re-inject it.
    pub fn up(name: &str, nodes: usize, tandem: PathBuf) -> Result<MoveLab> {
        MoveLab::up_with(name, nodes, tandem, Some(HOLD_QUEUE))
    }

    /// As [`MoveLab::up`], choosing the lock: `Some(queue)` holds client
    /// segments in that NFQUEUE and re-injects them, `None` drops them (the
    /// client retransmits).
    pub fn up_with(
        name: &str,
        nodes: usize,
        tandem: PathBuf,
        hold_queue: Option<u16>,
    ) -> Result<MoveLab> {
        let lab = Lab::up(&LabSpec {
            name: Some(name.to_string()),
            nodes,
            service: ServiceKind::None,
            raft: Default::default(),
            ..LabSpec::default()
        })
        .with_context(|| format!("building lab {name}"))?;
        let spec = MoveSpec {
            vip: lab.vip(),
            prefix_len: lab.vip_prefix_len(),
            port: lab.port(),
            garp: GarpSchedule::default(),
            hold_queue,
        };
        let mut this = MoveLab {
            lab: Some(lab),
            tandem,
            sites: BTreeMap::new(),
            servers: BTreeMap::new(),
            server_node: 1,
            spec,
            rst_baseline: 0,
        };
        let lab = this.lab();
        let mut sites = BTreeMap::new();
        for id in lab.node_ids() {
            let netns = lab.node_netns(id)?.to_string();
            let site = Site::open(Some(&netns), lab.node_interface(), 2)
                .with_context(|| format!("opening node {id}"))?;
            site.prepare_lock(spec.vip, spec.port)?;
            if let Some(queue) = hold_queue {
                site.start_holding(queue)?;
            }
            sites.insert(id, site);
        }
        this.sites = sites;
        this.site(1)?.add_vip(spec.vip, spec.prefix_len)?;
        for id in this.lab().node_ids() {
            this.start_server(id)?;
        }
        this.wait_until_served()?;
        // Connection attempts before the server listened were refused with
        // RSTs; count from here.
        this.rst_baseline = this.lab().client_rst_count()?;
        Ok(this)
    }

    /// The lab underneath.
    pub fn lab(&self) -> &Lab {
        self.lab.as_ref().expect("lab is up until drop")
    }

    /// The VIP:port clients connect to.
    pub fn service_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.spec.vip, self.spec.port)
    }

    /// The node whose echo server currently holds the connections.
    pub fn server_node(&self) -> u32 {
        self.server_node
    }

    /// The pid of the echo server that serves the clients.
    pub fn server_pid(&self) -> u32 {
        self.servers
            .get(&self.server_node)
            .map(|s| s.child.id())
            .unwrap_or(0)
    }

    /// Opens a connection to the service from the client namespace; with
    /// `rcvbuf`, the client's receive buffer is shrunk before connecting (so
    /// the server's send queue backs up).
    pub fn connect(&self, rcvbuf: Option<usize>) -> Result<TcpStream> {
        let addr: SocketAddr = self.service_addr().into();
        let netns = self.lab().client_netns().to_string();
        let stream = tandem_sys::netns::run_in(&netns, move || -> std::io::Result<TcpStream> {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            if let Some(size) = rcvbuf {
                socket.set_recv_buffer_size(size)?;
            }
            socket.connect_timeout(&addr.into(), Duration::from_secs(5))?;
            socket.set_nodelay(true)?;
            Ok(socket.into())
        })??;
        Ok(stream)
    }

    /// Freezes the echo server at a safe point (see [`crate::echo`]): it
    /// stops reading and writing, so bytes pile up in its sockets' queues.
    /// Idempotent.
    pub fn freeze_server(&self) -> Result<()> {
        crate::echo::freeze(self.server_pid(), Duration::from_secs(5))
    }

    /// Moves every connection of the echo server, and the VIP, to `node`,
    /// where the standing-by echo server picks the sockets up; the old server
    /// dies and a fresh one stands by in its place.
    pub fn move_to(&mut self, node: u32) -> Result<MoveReport> {
        if node == self.server_node {
            bail!("the connections are already on node {node}");
        }
        self.site(node)?;
        self.freeze_server()?;
        let pid = self.server_pid();
        let taken = migration::take_from_process(pid, self.service_addr())
            .context("taking the server's sockets")?;
        let sockets: Vec<OwnedFd> = taken.into_iter().map(|(_, fd)| fd).collect();
        let source = self.site(self.server_node)?;
        let target = self.site(node)?;
        let mut moved = match migration::move_connections(source, target, &self.spec, sockets) {
            Ok(moved) => moved,
            Err(MigrationError::RolledBack { cause, sockets }) => {
                // Still on the source: the old server's own copies live on
                // (the duplicates we hold go), and it resumes.
                drop(sockets);
                tandem_sys::process::signal(pid, libc::SIGCONT)?;
                bail!("the move was rolled back: {cause}");
            }
            Err(err) => return Err(err.into()),
        };
        let channel = &self.servers[&node].channel;
        let sockets = std::mem::take(&mut moved.sockets);
        tandem_sys::process::send_fds(std::os::fd::AsFd::as_fd(channel), sockets)
            .context("handing the connections to the target's server")?;
        moved.wait_unlocked()?;
        let from = std::mem::replace(&mut self.server_node, node);
        // The old server's copies are in repair mode: its death is silent.
        self.stop_server(from)?;
        self.start_server(from)?;
        Ok(moved.report)
    }

    /// RST segments the client namespace has received since the server
    /// first answered.
    pub fn client_rst_count(&self) -> Result<u64> {
        Ok(self.lab().client_rst_count()? - self.rst_baseline)
    }

    /// Tears the lab down (also done on drop).
    pub fn down(mut self) -> Result<()> {
        self.teardown()
    }

    fn site(&self, node: u32) -> Result<&Site> {
        self.sites
            .get(&node)
            .with_context(|| format!("the lab has no node {node}"))
    }

    /// Starts an echo server on `node`, listening on the VIP (bound freely,
    /// so it may start before the VIP is there) and on a hand-off channel.
    fn start_server(&mut self, node: u32) -> Result<()> {
        let tandem = self.tandem.clone();
        let listen = self.service_addr().to_string();
        let (ours, theirs) = UnixStream::pair()?;
        let child = self.site(node)?.run(move || {
            let mut command = Command::new(&tandem);
            command
                .args(["tool", "echo-server", "--listen", &listen])
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            tandem_sys::process::spawn_with_fds(&mut command, vec![OwnedFd::from(theirs)])
        })??;
        self.servers.insert(
            node,
            Server {
                child,
                channel: ours,
            },
        );
        Ok(())
    }

    fn stop_server(&mut self, node: u32) -> Result<()> {
        if let Some(mut server) = self.servers.remove(&node) {
            let _ = server.child.kill();
            server.child.wait()?;
        }
        Ok(())
    }

    fn wait_until_served(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let attempt = (|| -> Result<()> {
                let mut stream = self.connect(None)?;
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                stream.write_all(b"ping\n")?;
                let mut buf = [0u8; 5];
                stream.read_exact(&mut buf)?;
                Ok(())
            })();
            match attempt {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() > deadline => {
                    return Err(err.context("the echo server never answered on the VIP"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn teardown(&mut self) -> Result<()> {
        for node in self.servers.keys().copied().collect::<Vec<_>>() {
            let _ = self.stop_server(node);
        }
        self.sites.clear();
        if let Some(lab) = self.lab.take() {
            lab.down()?;
        }
        Ok(())
    }
}

struct Server {
    child: Child,
    channel: UnixStream,
}

impl Drop for MoveLab {
    fn drop(&mut self) {
        if let Err(err) = self.teardown() {
            eprintln!("tandem: tearing the lab down failed: {err:#}");
        }
    }
}

/// A request/reply workload over many connections: each connection sends a
/// numbered line, waits for its echo, checks it, and goes again after
/// `interval`. Records the largest gap between two consecutive replies.
pub struct PingPong {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<ConnStats>>>,
    started: Instant,
}

/// What one connection of a [`PingPong`] saw.
#[derive(Debug, Clone, Default)]
pub struct ConnStats {
    pub replies: u64,
    pub max_gap: Duration,
    /// When the largest gap ended, relative to the workload's start.
    pub max_gap_end: Duration,
}

/// What a whole [`PingPong`] saw.
#[derive(Debug, Clone, Default)]
pub struct PingPongStats {
    pub connections: usize,
    pub replies: u64,
    /// The largest gap between consecutive replies on any connection.
    pub max_gap: Duration,
    /// Every connection's largest gap, sorted.
    pub gaps: Vec<Duration>,
}

impl PingPong {
    /// Starts the workload on `streams` (one thread each).
    pub fn start(streams: Vec<TcpStream>, interval: Duration) -> PingPong {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = streams
            .into_iter()
            .enumerate()
            .map(|(i, stream)| {
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("pingpong-{i}"))
                    .stack_size(128 * 1024)
                    .spawn(move || ping_pong(i, stream, interval, &stop, started))
                    .expect("spawning a client thread")
            })
            .collect();
        PingPong {
            stop,
            threads,
            started,
        }
    }

    /// How long the workload has run.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the workload; any connection error (a reset, a wrong echo) is
    /// an error here.
    pub fn finish(self) -> Result<PingPongStats> {
        self.stop.store(true, Ordering::SeqCst);
        let mut stats = PingPongStats::default();
        for thread in self.threads {
            let conn = thread.join().expect("client thread panicked")?;
            stats.connections += 1;
            stats.replies += conn.replies;
            stats.max_gap = stats.max_gap.max(conn.max_gap);
            stats.gaps.push(conn.max_gap);
        }
        stats.gaps.sort();
        Ok(stats)
    }
}

fn ping_pong(
    id: usize,
    mut stream: TcpStream,
    interval: Duration,
    stop: &AtomicBool,
    started: Instant,
) -> Result<ConnStats> {
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut stats = ConnStats::default();
    let mut last = Instant::now();
    let mut line = Vec::with_capacity(64);
    let mut reply = [0u8; 64];
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        writeln!(line, "conn {id} request {n}")?;
        stream
            .write_all(&line)
            .with_context(|| format!("connection {id}: sending request {n}"))?;
        let reply = &mut reply[..line.len()];
        stream
            .read_exact(reply)
            .with_context(|| format!("connection {id}: reading reply {n}"))?;
        if reply != &line[..] {
            bail!(
                "connection {id}: reply {n} is {:?}, expected {:?}",
                String::from_utf8_lossy(reply),
                String::from_utf8_lossy(&line)
            );
        }
        let now = Instant::now();
        let gap = now - last;
        if gap > stats.max_gap {
            stats.max_gap = gap;
            stats.max_gap_end = now - started;
        }
        last = now;
        stats.replies += 1;
        n += 1;
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
    Ok(stats)
}

/// A byte pattern both ends can compute: the stream at offset `i` for a
/// given seed. Lets a checker verify tens of MB without keeping them.
pub fn pattern_byte(seed: u64, i: u64) -> u8 {
    let mut x = seed ^ (i / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x >> ((i % 8) * 8)) as u8
}
