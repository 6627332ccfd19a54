//! A load generator for the kv service that checks every reply: the
//! consistency workload of the failover tests, with live counters and a
//! latency record, for `tandem demo`.
//!
//! Each connection loops over `INCR` on a key of its own (the reply must be
//! the previous one + 1), then `SET` of a value never used before and `GET`
//! of the same key (it must return that value). The counter counts the
//! increments the service applied, so a reply *below* the expected value
//! means an acknowledged INCR was forgotten (a **lost** update) and a reply
//! *above* it means one INCR was applied twice (a **duplicated** update); a
//! `GET` that does not return the value just `SET` is a lost update too.
//! Every other failure — an error reply, end of stream, a reset, a reply
//! that does not come within the timeout — is an **error**, recorded with
//! what happened; the connection then reconnects (on fresh keys) so the
//! load goes on, but tandem's promise is that this never happens.
//!
//! The sockets are opened in the namespace of the thread that calls
//! [`Workload::start`] (its threads inherit it): call it inside
//! `Lab::run_in(None, ..)` to load a lab from its client namespace.
//!
//! With [`Protocol::CounterLines`] the same loop runs against the
//! `counter` service's line protocol: `INCR` (checked as above) then `GET`
//! of the same counter (it must return the value just acknowledged).
//!
//! Each key's final tally — the last value acknowledged, and whether one
//! more INCR was sent without its reply (in flight when the connection
//! failed) — is kept ([`KeyTally`], at most [`MAX_TALLIES`]), so that
//! [`final_check`] can read every counter back after the run: a value below
//! the acknowledged one is a lost update, a value above it plus what was in
//! flight a duplicated one. This catches what the in-line checks cannot: the
//! last increments of a connection that broke.
//!
//! What is recorded stays bounded: per 100 ms of run time (by the time a
//! request was sent) the largest latency and the number of replies; the
//! first [`MAX_ERRORS`] error descriptions; and, per *event* marked with
//! [`Workload::mark_event`] and [`Workload::end_event`] (a failover: from
//! the fault until the new primary serves), the largest gap between two
//! consecutive replies of one connection that overlaps it — the pause a
//! client saw.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Width of one latency bucket.
pub const BUCKET: Duration = Duration::from_millis(100);
/// Buckets kept: one hour of run time (later samples count, but are not
/// charted).
pub const MAX_BUCKETS: usize = 36_000;
/// Error descriptions kept (all are counted).
pub const MAX_ERRORS: usize = 1_000;
/// Key tallies kept for [`final_check`] (one per connection and
/// reconnection; later keys are counted in [`Report::untallied`]).
pub const MAX_TALLIES: usize = 100_000;

/// The service's protocol, which decides the loop a connection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Redis protocol (the `kv` service): INCR, SET, GET.
    #[default]
    Resp,
    /// The `counter` service's lines (`INCR key\n` → `N\n`, `GET key\n`):
    /// INCR, GET.
    CounterLines,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// The service (the lab's VIP and port).
    pub addr: SocketAddr,
    /// Concurrent connections, each a loop of INCR, SET, GET.
    pub connections: usize,
    /// A reply later than this is an error (the connection is then
    /// reconnected).
    pub reply_timeout: Duration,
    /// Prefix of every key (keeps runs against one service apart).
    pub key_prefix: String,
    /// The service's protocol.
    pub protocol: Protocol,
}

impl WorkloadConfig {
    /// 32 connections, 10 s reply timeout, keys under `demo:`.
    pub fn new(addr: SocketAddr) -> WorkloadConfig {
        WorkloadConfig {
            addr,
            connections: 32,
            reply_timeout: Duration::from_secs(10),
            key_prefix: "demo".to_string(),
            protocol: Protocol::Resp,
        }
    }
}

/// Latency of the requests sent during one [`BUCKET`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Replies received to them.
    pub count: u32,
    /// The largest latency, in microseconds.
    pub max_us: u64,
    /// Sum of latencies, in microseconds (for the mean).
    pub sum_us: u64,
}

/// One error a connection saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRecord {
    /// When, since the start of the load.
    pub at: Duration,
    /// The connection (0-based).
    pub connection: usize,
    /// What happened.
    pub what: String,
}

/// Live counters, readable while the load runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Replies received and found correct.
    pub ops: u64,
    /// Everything that went wrong (lost and duplicated updates included).
    pub errors: u64,
    /// Updates the service forgot.
    pub lost: u64,
    /// Updates the service applied twice.
    pub duplicated: u64,
}

/// How one counter ended: what [`final_check`] compares the service's
/// value with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTally {
    /// The counter's key.
    pub key: String,
    /// The last value the service acknowledged (0: none).
    pub acked: i64,
    /// Whether one more INCR was sent and never answered.
    pub in_flight: bool,
}

/// What [`final_check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalCheck {
    /// Counters read back.
    pub checked: u64,
    /// Acknowledged increments missing from the service.
    pub lost: u64,
    /// Increments applied more often than sent.
    pub duplicated: u64,
    /// The in-flight increments that were applied (not an error: the
    /// client never learnt either way).
    pub in_flight_applied: u64,
    /// What went wrong (first [`MAX_ERRORS`]): a mismatch, or a counter
    /// that could not be read.
    pub errors: Vec<String>,
    /// All errors, counted.
    pub error_count: u64,
}

/// A marked event (a failover, from the fault until the new primary
/// serves) and the pause clients saw across it.
struct Event {
    at_us: u64,
    /// When it ended ([`Workload::end_event`]); `u64::MAX` while it lasts.
    end_us: AtomicU64,
    /// Largest gap between consecutive replies of one connection that
    /// overlaps `[at_us, end_us]`, in microseconds.
    pause_us: AtomicU64,
    /// The same, per connection (0: no such gap yet).
    gaps_us: Vec<AtomicU64>,
}

/// What the connections share with the controller.
struct Shared {
    start: Instant,
    stop: AtomicBool,
    ops: AtomicU64,
    errors: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    error_list: Mutex<Vec<ErrorRecord>>,
    buckets: Mutex<Vec<Bucket>>,
    events: Mutex<Vec<Arc<Event>>>,
    event_count: AtomicUsize,
    tallies: Mutex<Vec<KeyTally>>,
    untallied: AtomicU64,
    /// A clone of each connection's current socket, to unblock it at stop.
    sockets: Mutex<Vec<Option<TcpStream>>>,
    config: WorkloadConfig,
}

impl Shared {
    fn new(config: WorkloadConfig) -> Shared {
        Shared {
            start: Instant::now(),
            stop: AtomicBool::new(false),
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            error_list: Mutex::new(Vec::new()),
            buckets: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            event_count: AtomicUsize::new(0),
            tallies: Mutex::new(Vec::new()),
            untallied: AtomicU64::new(0),
            sockets: Mutex::new((0..config.connections).map(|_| None).collect()),
            config,
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_micros() as u64
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn error(&self, connection: usize, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut list = self.error_list.lock().unwrap_or_else(|e| e.into_inner());
        if list.len() < MAX_ERRORS {
            list.push(ErrorRecord {
                at: self.start.elapsed(),
                connection,
                what,
            });
        }
    }

    fn tally(&self, tally: KeyTally) {
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        if tallies.len() < MAX_TALLIES {
            tallies.push(tally);
        } else {
            self.untallied.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn end_event(&self, index: usize) {
        let now = self.micros(Instant::now());
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = events.get(index) {
            let _ = e
                .end_us
                .compare_exchange(u64::MAX, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn sample(&self, sent: Instant, latency: Duration) {
        let index = (self.micros(sent) / BUCKET.as_micros() as u64) as usize;
        if index >= MAX_BUCKETS {
            return;
        }
        let us = latency.as_micros() as u64;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() <= index {
            buckets.resize(index + 1, Bucket::default());
        }
        let b = &mut buckets[index];
        b.count += 1;
        b.max_us = b.max_us.max(us);
        b.sum_us += us;
    }
}

/// The running load; [`Workload::stop`] ends it and returns the [`Report`].
pub struct Workload {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// Everything a finished load recorded.
#[derive(Debug, Clone)]
pub struct Report {
    /// How long it ran.
    pub elapsed: Duration,
    /// Final counters.
    pub counters: Counters,
    /// The first [`MAX_ERRORS`] errors, in the order seen.
    pub errors: Vec<ErrorRecord>,
    /// Latency per [`BUCKET`] of run time, from the start.
    pub buckets: Vec<Bucket>,
    /// Per marked event (in order): when, since the start, and the pause
    /// clients saw across it (`None` if no connection replied on both
    /// sides of it).
    pub events: Vec<(Duration, Option<Duration>)>,
    /// Per marked event (in order): each connection's largest gap across
    /// it (`None`: that connection had no reply after it).
    pub event_gaps: Vec<Vec<Option<Duration>>>,
    /// Every key's final tally, for [`final_check`].
    pub tallies: Vec<KeyTally>,
    /// Keys not tallied (over [`MAX_TALLIES`]).
    pub untallied: u64,
}

impl Workload {
    /// Opens the connections (in the calling thread's network namespace)
    /// and starts the load.
    pub fn start(config: WorkloadConfig) -> Workload {
        let connections = config.connections;
        let shared = Arc::new(Shared::new(config));
        let threads = (0..connections)
            .map(|id| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("load-{id}"))
                    .spawn(move || connection(id, &shared))
                    .expect("spawning a load thread")
            })
            .collect();
        Workload { shared, threads }
    }

    /// A handle that reads the live counters (for a display thread).
    pub fn monitor(&self) -> Monitor {
        Monitor {
            shared: self.shared.clone(),
        }
    }

    /// Marks the start of an event (a failover) now; returns its index.
    pub fn mark_event(&self) -> usize {
        let event = Arc::new(Event {
            at_us: self.shared.micros(Instant::now()),
            end_us: AtomicU64::new(u64::MAX),
            pause_us: AtomicU64::new(0),
            gaps_us: (0..self.shared.config.connections)
                .map(|_| AtomicU64::new(0))
                .collect(),
        });
        let mut events = self.shared.events.lock().unwrap_or_else(|e| e.into_inner());
        events.push(event);
        self.shared
            .event_count
            .store(events.len(), Ordering::Release);
        events.len() - 1
    }

    /// Marks the end of event `index` now (the pause clients saw is the
    /// largest gap between two replies that starts before this).
    pub fn end_event(&self, index: usize) {
        self.shared.end_event(index);
    }

    /// Stops the load: every connection finishes the request it is on;
    /// after `grace` the sockets still waiting are shut down (what they
    /// see then is not an error). Returns what was recorded.
    pub fn stop(self, grace: Duration) -> Report {
        let shared = self.shared;
        for index in 0..shared.event_count.load(Ordering::Acquire) {
            shared.end_event(index);
        }
        shared.stop.store(true, Ordering::Relaxed);
        let elapsed = shared.start.elapsed();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for socket in shared
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
        {
            let _ = socket.shutdown(Shutdown::Both);
        }
        for t in self.threads {
            let _ = t.join();
        }
        let counters = Counters {
            ops: shared.ops.load(Ordering::Relaxed),
            errors: shared.errors.load(Ordering::Relaxed),
            lost: shared.lost.load(Ordering::Relaxed),
            duplicated: shared.duplicated.load(Ordering::Relaxed),
        };
        let all_events = shared.events.lock().unwrap_or_else(|e| e.into_inner());
        let events = all_events
            .iter()
            .map(|e| {
                let pause = e.pause_us.load(Ordering::Relaxed);
                (
                    Duration::from_micros(e.at_us),
                    (pause > 0).then(|| Duration::from_micros(pause)),
                )
            })
            .collect();
        let event_gaps = all_events.iter().map(|e| gaps_of(e)).collect();
        drop(all_events);
        let tallies =
            std::mem::take(&mut *shared.tallies.lock().unwrap_or_else(|e| e.into_inner()));
        let errors =
            std::mem::take(&mut *shared.error_list.lock().unwrap_or_else(|e| e.into_inner()));
        let buckets =
            std::mem::take(&mut *shared.buckets.lock().unwrap_or_else(|e| e.into_inner()));
        Report {
            elapsed,
            counters,
            errors,
            buckets,
            events,
            event_gaps,
            tallies,
            untallied: shared.untallied.load(Ordering::Relaxed),
        }
    }
}

/// Each connection's largest gap across `event` (`None`: none yet).
fn gaps_of(event: &Event) -> Vec<Option<Duration>> {
    event
        .gaps_us
        .iter()
        .map(|g| {
            let us = g.load(Ordering::Relaxed);
            (us > 0).then(|| Duration::from_micros(us))
        })
        .collect()
}

/// Reads a running load's live counters.
#[derive(Clone)]
pub struct Monitor {
    shared: Arc<Shared>,
}

impl Monitor {
    /// When the load started.
    pub fn started(&self) -> Instant {
        self.shared.start
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        let s = &self.shared;
        Counters {
            ops: s.ops.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            lost: s.lost.load(Ordering::Relaxed),
            duplicated: s.duplicated.load(Ordering::Relaxed),
        }
    }

    /// Replies per second over the last `window` of complete buckets
    /// (requests sent then that were answered by now).
    pub fn recent_rate(&self, window: Duration) -> f64 {
        let now = self.shared.micros(Instant::now()) / BUCKET.as_micros() as u64;
        let n = (window.as_micros() / BUCKET.as_micros()).max(1) as u64;
        // The newest bucket is still filling: skip it.
        let last = now.saturating_sub(1);
        let first = last.saturating_sub(n);
        let buckets = self
            .shared
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let count: u64 = (first..last)
            .filter_map(|i| buckets.get(i as usize))
            .map(|b| u64::from(b.count))
            .sum();
        let span = (last - first) as f64 * BUCKET.as_secs_f64();
        if span > 0.0 {
            count as f64 / span
        } else {
            0.0
        }
    }

    /// The pause seen across event `index` so far (the largest gap between
    /// two consecutive replies of one connection overlapping it).
    pub fn event_pause(&self, index: usize) -> Option<Duration> {
        let events = self.shared.events.lock().unwrap_or_else(|e| e.into_inner());
        let us = events.get(index)?.pause_us.load(Ordering::Relaxed);
        (us > 0).then(|| Duration::from_micros(us))
    }

    /// Each connection's largest gap across event `index` so far (empty if
    /// there is no such event).
    pub fn event_gaps(&self, index: usize) -> Vec<Option<Duration>> {
        let events = self.shared.events.lock().unwrap_or_else(|e| e.into_inner());
        events.get(index).map(|e| gaps_of(e)).unwrap_or_default()
    }
}

/// One RESP command.
pub fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// A reply as the workload reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    /// `+...`
    Simple(String),
    /// `-...`
    Error(String),
    /// `:N`
    Integer(i64),
    /// `$N` and its data; `None` for `$-1`.
    Bulk(Option<String>),
}

/// A connection and where it stands with respect to the marked events.
struct Conn {
    /// The connection's number (0-based).
    id: usize,
    protocol: Protocol,
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    line: String,
    last_reply: Instant,
    /// Events before this index ended before the previous reply.
    next_event: usize,
}

impl Conn {
    fn open(id: usize, shared: &Shared) -> std::io::Result<Conn> {
        let config = &shared.config;
        let stream = TcpStream::connect_timeout(&config.addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(config.reply_timeout))?;
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        shared.sockets.lock().unwrap_or_else(|e| e.into_inner())[id] = Some(stream.try_clone()?);
        Ok(Conn {
            id,
            protocol: config.protocol,
            writer,
            reader: BufReader::new(stream),
            line: String::new(),
            last_reply: Instant::now(),
            next_event: shared.event_count.load(Ordering::Acquire),
        })
    }

    fn read_line(&mut self) -> Result<(), String> {
        self.line.clear();
        match self.reader.read_line(&mut self.line) {
            Ok(0) => Err("end of stream (the server closed the connection)".into()),
            Ok(_) if self.line.ends_with("\r\n") => {
                self.line.truncate(self.line.len() - 2);
                Ok(())
            }
            Ok(_) if self.protocol == Protocol::CounterLines && self.line.ends_with('\n') => {
                self.line.truncate(self.line.len() - 1);
                Ok(())
            }
            Ok(_) => Err(format!("a truncated reply line {:?}", self.line)),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err("no reply within the timeout".into())
            }
            Err(err) => Err(format!("read: {err}")),
        }
    }

    fn read_reply(&mut self) -> Result<Reply, String> {
        self.read_line()?;
        if self.protocol == Protocol::CounterLines {
            return Ok(match self.line.strip_prefix("ERR") {
                Some(_) => Reply::Error(self.line.clone()),
                None => self
                    .line
                    .parse()
                    .map(Reply::Integer)
                    .map_err(|_| format!("a malformed counter reply {:?}", self.line))?,
            });
        }
        let (kind, rest) = self.line.split_at(self.line.len().min(1));
        let rest = rest.to_string();
        match kind {
            "+" => Ok(Reply::Simple(rest)),
            "-" => Ok(Reply::Error(rest)),
            ":" => rest
                .parse()
                .map(Reply::Integer)
                .map_err(|_| format!("a malformed integer reply {:?}", self.line)),
            "$" => {
                let len: i64 = rest
                    .parse()
                    .map_err(|_| format!("a malformed bulk reply {:?}", self.line))?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                self.read_line()?;
                if self.line.len() as i64 != len {
                    return Err(format!(
                        "a bulk reply of {} bytes announced as {len}",
                        self.line.len()
                    ));
                }
                Ok(Reply::Bulk(Some(self.line.clone())))
            }
            _ => Err(format!("an unexpected reply {:?}", self.line)),
        }
    }

    /// Sends one command and reads its reply, recording the latency and
    /// the pause of any event that happened since the previous reply.
    fn round_trip(&mut self, shared: &Shared, args: &[&str]) -> Result<Reply, String> {
        let sent = Instant::now();
        let request = match self.protocol {
            Protocol::Resp => command(args),
            Protocol::CounterLines => format!("{}\n", args.join(" ")).into_bytes(),
        };
        self.writer
            .write_all(&request)
            .map_err(|err| format!("write: {err}"))?;
        let reply = self.read_reply()?;
        let now = Instant::now();
        shared.sample(sent, now - sent);
        self.account_events(shared, now);
        self.last_reply = now;
        Ok(reply)
    }

    /// Charges the gap since the previous reply to every event it
    /// overlaps.
    fn account_events(&mut self, shared: &Shared, now: Instant) {
        if shared.event_count.load(Ordering::Acquire) <= self.next_event {
            return;
        }
        let (from, to) = (shared.micros(self.last_reply), shared.micros(now));
        let events = shared.events.lock().unwrap_or_else(|e| e.into_inner());
        for event in events.iter().skip(self.next_event) {
            if event.at_us > to {
                break;
            }
            if from <= event.end_us.load(Ordering::Acquire) {
                event.pause_us.fetch_max(to - from, Ordering::Relaxed);
                if let Some(gap) = event.gaps_us.get(self.id) {
                    gap.fetch_max(to - from, Ordering::Relaxed);
                }
            }
        }
        // The next gap starts now: events over by now are done with.
        while let Some(event) = events.get(self.next_event) {
            if event.end_us.load(Ordering::Acquire) >= to {
                break;
            }
            self.next_event += 1;
        }
    }
}

/// One connection's loop, reconnecting after an error, until stop.
fn connection(id: usize, shared: &Shared) {
    let prefix = shared.config.key_prefix.clone();
    for generation in 0u64.. {
        if shared.stopping() {
            return;
        }
        let mut conn = match Conn::open(id, shared) {
            Ok(conn) => conn,
            Err(err) => {
                if !shared.stopping() {
                    shared.error(id, format!("connect to {}: {err}", shared.config.addr));
                    std::thread::sleep(Duration::from_millis(200));
                }
                continue;
            }
        };
        let keys = format!("{prefix}:{id}:{generation}");
        let mut tally = KeyTally {
            key: format!("{keys}:counter"),
            acked: 0,
            in_flight: false,
        };
        let outcome = checks(id, shared, &mut conn, &keys, &mut tally);
        if tally.acked > 0 || tally.in_flight {
            shared.tally(tally);
        }
        if let Err(what) = outcome {
            if !shared.stopping() {
                shared.error(id, what);
            }
        }
    }
}

/// INCR, then SET and GET (kv) or GET (counter), in a loop on keys under
/// `keys`, until stop or an error that leaves the connection unusable;
/// `tally` follows the counter.
fn checks(
    id: usize,
    shared: &Shared,
    conn: &mut Conn,
    keys: &str,
    tally: &mut KeyTally,
) -> Result<(), String> {
    let counter_key = tally.key.clone();
    for n in 1u64.. {
        if shared.stopping() {
            return Ok(());
        }
        let expected = tally.acked + 1;
        tally.in_flight = true;
        let reply = conn.round_trip(shared, &["INCR", &counter_key])?;
        tally.in_flight = false;
        match reply {
            Reply::Integer(v) if v == expected => {
                shared.ops.fetch_add(1, Ordering::Relaxed);
            }
            Reply::Integer(v) => {
                if v < expected {
                    shared
                        .lost
                        .fetch_add((expected - v) as u64, Ordering::Relaxed);
                    shared.error(
                        id,
                        format!(
                            "lost update: INCR #{n} of {counter_key} answered {v}, expected {expected}"
                        ),
                    );
                } else {
                    shared
                        .duplicated
                        .fetch_add((v - expected) as u64, Ordering::Relaxed);
                    shared.error(
                        id,
                        format!(
                            "duplicated update: INCR #{n} of {counter_key} answered {v}, expected {expected}"
                        ),
                    );
                }
                // The stream is still in step: carry on from what the
                // service holds.
                tally.acked = v;
                continue;
            }
            other => {
                // Whether it was applied is unknown: count it as in flight.
                tally.in_flight = true;
                return Err(format!("INCR #{n} of {counter_key}: {}", describe(&other)));
            }
        }
        tally.acked = expected;
        if conn.protocol == Protocol::CounterLines {
            match conn.round_trip(shared, &["GET", &counter_key])? {
                Reply::Integer(v) if v == tally.acked => {
                    shared.ops.fetch_add(1, Ordering::Relaxed);
                }
                Reply::Integer(v) => {
                    shared.lost.fetch_add(1, Ordering::Relaxed);
                    shared.error(
                        id,
                        format!(
                            "lost update: GET {counter_key} answered {v} after INCR answered {}",
                            tally.acked
                        ),
                    );
                }
                other => return Err(format!("GET {counter_key}: {}", describe(&other))),
            }
            continue;
        }
        let key = format!("{keys}:value:{}", n % 8);
        let value = format!("v{id}-{n}-{}", shared.micros(Instant::now()));
        match conn.round_trip(shared, &["SET", &key, &value])? {
            Reply::Simple(ok) if ok == "OK" => {
                shared.ops.fetch_add(1, Ordering::Relaxed);
            }
            other => return Err(format!("SET {key}: {}", describe(&other))),
        }
        match conn.round_trip(shared, &["GET", &key])? {
            Reply::Bulk(Some(v)) if v == value => {
                shared.ops.fetch_add(1, Ordering::Relaxed);
            }
            Reply::Bulk(got) => {
                shared.lost.fetch_add(1, Ordering::Relaxed);
                shared.error(
                    id,
                    format!("lost update: GET {key} answered {got:?} after SET {value:?}"),
                );
            }
            other => return Err(format!("GET {key}: {}", describe(&other))),
        }
    }
    Ok(())
}

/// Reads every tallied counter back (one connection, opened in the calling
/// thread's network namespace, to `config.addr` with `config.protocol`)
/// and compares it with what its connection saw acknowledged: below is a
/// lost update, above (beyond one in-flight INCR) a duplicated one. Call
/// it after [`Workload::stop`], with the report's tallies.
pub fn final_check(config: &WorkloadConfig, tallies: &[KeyTally]) -> FinalCheck {
    let mut out = FinalCheck::default();
    let note = |out: &mut FinalCheck, what: String| {
        out.error_count += 1;
        if out.errors.len() < MAX_ERRORS {
            out.errors.push(what);
        }
    };
    // A `Shared` of its own so the reads go through the same code as the
    // load's (its counters are not reported).
    let shared = Shared::new(WorkloadConfig {
        connections: 1,
        ..config.clone()
    });
    let mut conn: Option<Conn> = None;
    for tally in tallies {
        let mut value = None;
        // One reconnection per key at most: a failing service fails fast.
        for _ in 0..2 {
            if conn.is_none() {
                match Conn::open(0, &shared) {
                    Ok(c) => conn = Some(c),
                    Err(err) => {
                        note(&mut out, format!("final check: connect: {err}"));
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            match c.round_trip(&shared, &["GET", &tally.key]) {
                Ok(Reply::Integer(v)) => value = Some(v),
                Ok(Reply::Bulk(Some(s))) => match s.parse() {
                    Ok(v) => value = Some(v),
                    Err(_) => {
                        note(&mut out, format!("final check: GET {}: {s:?}", tally.key));
                        value = Some(i64::MIN);
                    }
                },
                Ok(Reply::Bulk(None)) => value = Some(0),
                Ok(other) => {
                    note(
                        &mut out,
                        format!("final check: GET {}: {}", tally.key, describe(&other)),
                    );
                    value = Some(i64::MIN);
                }
                Err(err) => {
                    note(&mut out, format!("final check: GET {}: {err}", tally.key));
                    conn = None;
                    continue;
                }
            }
            break;
        }
        let Some(value) = value.filter(|v| *v != i64::MIN) else {
            continue;
        };
        out.checked += 1;
        let most = tally.acked + i64::from(tally.in_flight);
        if value < tally.acked {
            out.lost += (tally.acked - value) as u64;
            note(
                &mut out,
                format!(
                    "lost update: {} holds {value}, {} increments were acknowledged",
                    tally.key, tally.acked
                ),
            );
        } else if value > most {
            out.duplicated += (value - most) as u64;
            note(
                &mut out,
                format!(
                    "duplicated update: {} holds {value}, {} acknowledged{}",
                    tally.key,
                    tally.acked,
                    if tally.in_flight {
                        " and 1 in flight"
                    } else {
                        ""
                    }
                ),
            );
        } else if value > tally.acked {
            out.in_flight_applied += 1;
        }
    }
    if let Some(c) = conn {
        let _ = c.writer.shutdown(Shutdown::Both);
    }
    out
}

fn describe(reply: &Reply) -> String {
    match reply {
        Reply::Simple(s) => format!("unexpected reply +{s}"),
        Reply::Error(s) => format!("error reply -{s}"),
        Reply::Integer(v) => format!("unexpected reply :{v}"),
        Reply::Bulk(Some(s)) => format!("unexpected reply {s:?}"),
        Reply::Bulk(None) => "unexpected nil reply".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::net::TcpListener;

    /// A tiny single-key-space RESP server (INCR, SET, GET), one thread per
    /// connection; `skew` is added to every INCR reply after the first
    /// `skew_after` INCRs (to fake lost/duplicated updates).
    fn server(skew: i64, skew_after: i64) -> SocketAddr {
        server_with_hold(skew, skew_after, Arc::new(AtomicBool::new(false)))
    }

    /// [`server`], holding every reply while `hold` is set.
    fn server_with_hold(skew: i64, skew_after: i64, hold: Arc<AtomicBool>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Arc::new(Mutex::new(BTreeMap::<String, String>::new()));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let store = store.clone();
                let hold = hold.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    let mut incrs = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let n: usize = line[1..].trim().parse().unwrap();
                        let mut args = Vec::new();
                        for _ in 0..n {
                            line.clear();
                            reader.read_line(&mut line).unwrap();
                            line.clear();
                            reader.read_line(&mut line).unwrap();
                            args.push(line.trim_end().to_string());
                        }
                        while hold.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        let mut store = store.lock().unwrap();
                        let reply = match args[0].as_str() {
                            "INCR" => {
                                incrs += 1;
                                let v: i64 =
                                    store.get(&args[1]).map(|v| v.parse().unwrap()).unwrap_or(0)
                                        + 1;
                                store.insert(args[1].clone(), v.to_string());
                                let shown = if incrs > skew_after { v + skew } else { v };
                                format!(":{shown}\r\n")
                            }
                            "SET" => {
                                store.insert(args[1].clone(), args[2].clone());
                                "+OK\r\n".to_string()
                            }
                            "GET" => match store.get(&args[1]) {
                                Some(v) => format!("${}\r\n{v}\r\n", v.len()),
                                None => "$-1\r\n".to_string(),
                            },
                            _ => "-ERR unknown\r\n".to_string(),
                        };
                        writer.write_all(reply.as_bytes()).unwrap();
                    }
                });
            }
        });
        addr
    }

    fn config(addr: SocketAddr, connections: usize) -> WorkloadConfig {
        WorkloadConfig {
            connections,
            ..WorkloadConfig::new(addr)
        }
    }

    #[test]
    fn a_correct_server_gives_no_errors_and_a_latency_record() {
        let load = Workload::start(config(server(0, 0), 4));
        std::thread::sleep(Duration::from_millis(150));
        let event = load.mark_event();
        std::thread::sleep(Duration::from_millis(50));
        load.end_event(event);
        std::thread::sleep(Duration::from_millis(100));
        let monitor = load.monitor();
        assert!(monitor.counters().ops > 0);
        assert!(monitor.recent_rate(Duration::from_millis(100)) > 0.0);
        assert!(monitor.event_pause(event).is_some());
        let report = load.stop(Duration::from_secs(1));
        assert_eq!(report.counters.errors, 0, "{:?}", report.errors);
        assert!(report.counters.ops > 30);
        assert!(report.buckets.len() >= 2);
        assert!(report.buckets.iter().map(|b| b.count as u64).sum::<u64>() >= report.counters.ops);
        assert_eq!(report.events.len(), 1);
        assert!(report.events[0].1.is_some());
    }

    #[test]
    fn the_pause_of_an_event_is_the_longest_gap_overlapping_it() {
        let hold = Arc::new(AtomicBool::new(false));
        let load = Workload::start(config(server_with_hold(0, 0, hold.clone()), 4));
        std::thread::sleep(Duration::from_millis(100));
        let before = load.mark_event();
        load.end_event(before);
        std::thread::sleep(Duration::from_millis(100));
        // The fault: marked before the service stalls, as `lab kill` is.
        let fault = load.mark_event();
        std::thread::sleep(Duration::from_millis(50));
        hold.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(250));
        hold.store(false, Ordering::Relaxed);
        load.end_event(fault);
        std::thread::sleep(Duration::from_millis(100));
        let report = load.stop(Duration::from_secs(1));
        assert_eq!(report.counters.errors, 0, "{:?}", report.errors);
        let quiet = report.events[0].1.expect("replies around the first event");
        let pause = report.events[1].1.expect("replies around the fault");
        assert!(quiet < Duration::from_millis(100), "{quiet:?}");
        assert!(pause >= Duration::from_millis(250), "{pause:?}");
        assert!(pause < Duration::from_millis(600), "{pause:?}");
        // Per connection: every one was held, the largest is the pause.
        let gaps = &report.event_gaps[1];
        assert_eq!(gaps.len(), 4);
        assert!(gaps
            .iter()
            .all(|g| g.is_some_and(|g| g >= Duration::from_millis(200))));
        assert_eq!(gaps.iter().flatten().max().copied(), Some(pause));
    }

    /// A line server for the counter protocol (`INCR k\n`, `GET k\n`).
    fn counter_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Arc::new(Mutex::new(BTreeMap::<String, i64>::new()));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let words: Vec<&str> = line.split_whitespace().collect();
                        let mut store = store.lock().unwrap();
                        let reply = match words.as_slice() {
                            ["INCR", key] => {
                                let v = store.entry(key.to_string()).or_insert(0);
                                *v += 1;
                                format!("{v}\n")
                            }
                            ["GET", key] => format!("{}\n", store.get(*key).unwrap_or(&0)),
                            _ => "ERR unknown command\n".to_string(),
                        };
                        writer.write_all(reply.as_bytes()).unwrap();
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn the_counter_protocol_is_checked_and_read_back() {
        let config = WorkloadConfig {
            protocol: Protocol::CounterLines,
            ..config(counter_server(), 2)
        };
        let load = Workload::start(config.clone());
        std::thread::sleep(Duration::from_millis(150));
        let report = load.stop(Duration::from_secs(1));
        assert_eq!(report.counters.errors, 0, "{:?}", report.errors);
        assert!(report.counters.ops > 20);
        assert_eq!(report.tallies.len(), 2);
        let check = final_check(&config, &report.tallies);
        assert_eq!(check.checked, 2);
        assert_eq!((check.lost, check.duplicated), (0, 0), "{:?}", check.errors);
    }

    #[test]
    fn the_final_check_finds_what_the_service_lost_or_applied_twice() {
        let config = config(server(0, 0), 2);
        let load = Workload::start(config.clone());
        std::thread::sleep(Duration::from_millis(150));
        let report = load.stop(Duration::from_secs(1));
        assert_eq!(report.counters.errors, 0, "{:?}", report.errors);
        let mut tallies = report.tallies.clone();
        assert_eq!(tallies.len(), 2);
        assert!(tallies.iter().all(|t| t.acked > 3 && !t.in_flight));
        let check = final_check(&config, &tallies);
        assert_eq!(check.checked, 2);
        assert_eq!(check.error_count, 0, "{:?}", check.errors);

        // The client believes in two more increments than the service
        // holds: lost; in three fewer: duplicated, unless in flight.
        tallies[0].acked += 2;
        tallies[1].acked -= 3;
        let check = final_check(&config, &tallies);
        assert_eq!((check.lost, check.duplicated), (2, 3), "{:?}", check.errors);
        assert_eq!(check.error_count, 2);
        tallies[0].acked -= 3;
        tallies[0].in_flight = true;
        tallies[1].acked += 3;
        let check = final_check(&config, &tallies);
        assert_eq!((check.lost, check.duplicated), (0, 0), "{:?}", check.errors);
        assert_eq!(check.in_flight_applied, 1);
    }

    #[test]
    fn a_repeated_counter_is_a_lost_update_and_a_skipped_one_a_duplicate() {
        let load = Workload::start(config(server(-1, 3), 1));
        std::thread::sleep(Duration::from_millis(100));
        let report = load.stop(Duration::from_secs(1));
        assert_eq!(report.counters.lost, 1, "{:?}", report.errors);
        assert_eq!(report.counters.duplicated, 0);
        assert!(report.errors[0].what.starts_with("lost update"));

        let load = Workload::start(config(server(2, 3), 1));
        std::thread::sleep(Duration::from_millis(100));
        let report = load.stop(Duration::from_secs(1));
        assert_eq!(report.counters.duplicated, 2, "{:?}", report.errors);
        assert_eq!(report.counters.lost, 0);
    }

    #[test]
    fn a_closed_connection_is_an_error_and_the_load_goes_on() {
        // Port 1: nothing listens there, and no parallel test can bind it
        // (a port freed by a dropped listener may be reused at once).
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let load = Workload::start(config(addr, 1));
        std::thread::sleep(Duration::from_millis(300));
        let report = load.stop(Duration::from_secs(1));
        assert!(report.counters.errors >= 1);
        assert!(report.errors[0].what.starts_with("connect to"));
    }
}
