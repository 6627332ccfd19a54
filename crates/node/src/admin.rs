//! The daemon's local admin API: what `tandem status`, `migrate`, `drain`,
//! `undrain`, `reload-keys` and `fault` talk to.
//!
//! A Unix stream socket, mode 0600, served from the daemon's
//! single-threaded mio event loop. Each connection carries one exchange:
//! the server checks the caller's credentials (`SO_PEERCRED`: root and the
//! daemon's own uid only), reads one JSON request line (at most
//! [`MAX_REQUEST_LINE`] bytes), hands the request to the loop
//! ([`AdminServer::on_event`] fills a list), the loop answers with
//! [`AdminServer::respond`], and the server writes one JSON reply line and
//! closes the connection. Everything is non-blocking; a client that
//! connects and does not send its request (or does not read its reply)
//! within the idle timeout is closed by [`AdminServer::poll_timers`].
//!
//! The wire format, one line each way:
//! ```text
//! -> {"op":"status"}            {"op":"migrate","to":2}   {"op":"drain"}   {"op":"undrain"}
//!    {"op":"fault","step":"vip","times":2}
//! <- {"result":"status","slot":1,...the NodeReport fields...}
//! <- {"result":"done","message":"..."}   {"result":"error","message":"..."}
//! ```
//! [`request`] is the (blocking) client side.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use serde::{Deserialize, Serialize};

use crate::report::NodeReport;

/// The longest request line accepted, newline excluded.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// How long a client may take to send its request, or to read its reply.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The tokens an [`AdminServer`] uses: `[token_base, token_base + TOKEN_SPAN)`.
pub const TOKEN_SPAN: usize = 1 << 20;

/// Connections served at once; more are answered "busy" and closed.
const MAX_CLIENTS: usize = 256;

/// The longest reply [`request`] accepts.
const MAX_REPLY_LINE: usize = 16 * 1024 * 1024;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    /// This node's [`NodeReport`].
    Status,
    /// Move the primary to slot `to` (planned migration).
    Migrate { to: u16 },
    /// Move every primary off this node and refuse leadership.
    Drain,
    /// Allow this node to lead again.
    Undrain,
    /// Read the cluster key files again (a step of a key rotation).
    ReloadKeys,
    /// Make the next `times` takeovers of this node fail at `step`
    /// (`crate::faults`; 0 disarms).
    Fault {
        step: crate::faults::TakeoverStep,
        times: u32,
    },
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AdminReply {
    Status(Box<NodeReport>),
    Done { message: String },
    Error { message: String },
}

/// One connection waiting for the loop's answer. Stale ids (their client
/// has gone) are ignored by [`AdminServer::respond`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId {
    slot: usize,
    serial: u64,
}

/// Counters since the server was bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminStats {
    /// Well-formed requests handed to the loop.
    pub requests: u64,
    /// Connections refused because the caller was neither root nor the
    /// daemon's user.
    pub refused_credentials: u64,
    /// Request lines that were not valid JSON requests, or too long.
    pub malformed: u64,
    /// Connections closed because the client was idle too long.
    pub timed_out: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "no tandem node answers on {} (is `tandem node` running? start it with `tandem node --config FILE`)",
        path.display()
    )]
    NotRunning { path: PathBuf },
    #[error(
        "permission denied on {}: the admin socket is for root and the daemon's user only; run as root (sudo)",
        path.display()
    )]
    PermissionDenied { path: PathBuf },
    #[error(
        "another tandem node already answers on {}: stop it first, or give this node its own `admin_socket` in its config",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error(
        "{} exists and is not a socket: remove it, or set another `admin_socket` in the config",
        path.display()
    )]
    NotASocket { path: PathBuf },
    #[error("the tandem node on {} did not answer within {timeout:?}", path.display())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("the tandem node on {} closed the connection without answering", path.display())]
    NoReply { path: PathBuf },
    #[error("the tandem node on {} sent an unreadable reply: {reason}", path.display())]
    BadReply { path: PathBuf, reason: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AdminError + 'a {
    move |source| AdminError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a caller with `uid` may use the admin socket of a daemon
/// running as `own_uid`.
fn peer_allowed(uid: u32, own_uid: u32) -> bool {
    uid == 0 || uid == own_uid
}

enum State {
    /// Reading the request line.
    Reading { buf: Vec<u8> },
    /// The request is with the loop.
    Waiting,
    /// Writing the reply; closed once it is all out.
    Writing { out: Vec<u8>, written: usize },
}

struct Client {
    serial: u64,
    stream: UnixStream,
    state: State,
    /// When an idle client is closed (`None` while the loop has the request).
    deadline: Option<Instant>,
}

/// What reading from a client led to.
enum Step {
    Keep,
    Close,
    Request(AdminRequest),
    /// A malformed or oversized request: answer this and close.
    Refuse(String),
}

impl Client {
    /// Reads what is available; edge-triggered, so until `WouldBlock`.
    fn on_readable(&mut self) -> Step {
        let mut chunk = [0u8; 4096];
        loop {
            let State::Reading { buf } = &mut self.state else {
                // Not reading any more (the request is with the loop, or the
                // reply is going out): drop anything else the client sends.
                return match self.stream.read(&mut chunk) {
                    Ok(0) => Step::Keep,
                    Ok(_) => continue,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => Step::Keep,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => Step::Close,
                };
            };
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    // The client finished writing: a request without its
                    // newline is still a request.
                    if buf.is_empty() {
                        return Step::Close;
                    }
                    let line = std::mem::take(buf);
                    return parse_request(&line);
                }
                Ok(n) => {
                    let start = buf.len();
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
                        let end = start + pos;
                        if end > MAX_REQUEST_LINE {
                            return Step::Refuse(oversized());
                        }
                        let line = buf[..end].to_vec();
                        return parse_request(&line);
                    }
                    if buf.len() > MAX_REQUEST_LINE {
                        return Step::Refuse(oversized());
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Step::Keep,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
    }

    /// Writes what the socket takes. `Ok(true)` once the reply is all out.
    fn flush(&mut self) -> io::Result<bool> {
        let State::Writing { out, written } = &mut self.state else {
            return Ok(false);
        };
        while *written < out.len() {
            match self.stream.write(&out[*written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => *written += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(true)
    }
}

fn oversized() -> String {
    format!(
        "request line longer than {MAX_REQUEST_LINE} bytes (64 KiB): send one JSON object on one line, e.g. {{\"op\":\"status\"}}"
    )
}

fn parse_request(line: &[u8]) -> Step {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match serde_json::from_slice::<AdminRequest>(line) {
        Ok(request) => Step::Request(request),
        Err(err) => Step::Refuse(format!(
            "malformed request: {err}; send one JSON object on one line: {{\"op\":\"status\"}}, \
             {{\"op\":\"migrate\",\"to\":SLOT}}, {{\"op\":\"drain\"}} or {{\"op\":\"undrain\"}}"
        )),
    }
}

/// One reply line, newline included.
fn reply_line(reply: &AdminReply) -> Vec<u8> {
    let mut out = serde_json::to_vec(reply).unwrap_or_else(|err| {
        serde_json::to_vec(&AdminReply::Error {
            message: format!("the daemon could not encode its reply: {err}"),
        })
        .unwrap_or_default()
    });
    out.push(b'\n');
    out
}

/// The daemon's side of the admin socket.
pub struct AdminServer {
    path: PathBuf,
    /// The socket file's inode, so that `Drop` removes only our own.
    ino: u64,
    dev: u64,
    listener: UnixListener,
    token_base: usize,
    own_uid: u32,
    idle_timeout: Duration,
    /// Clients by slot (their token is `token_base + slot`, slot >= 1).
    clients: BTreeMap<usize, Client>,
    next_slot: usize,
    next_serial: u64,
    stats: AdminStats,
}

impl AdminServer {
    /// Creates the socket at `path` (mode 0600; its parent directory is
    /// created mode 0700 if missing) and registers it with `registry`.
    /// A stale socket file is replaced; a socket another live daemon
    /// answers on is an error ([`AdminError::InUse`]).
    pub fn bind(
        path: &Path,
        registry: &Registry,
        token_base: usize,
    ) -> Result<AdminServer, AdminError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(io_error("creating the directory of", path))?;
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => return Err(AdminError::InUse { path: path.into() }),
                    Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                        tracing::info!(path = %path.display(), "removing a stale admin socket");
                        std::fs::remove_file(path)
                            .map_err(io_error("removing the stale socket", path))?;
                    }
                    Err(err) => return Err(io_error("probing the existing socket", path)(err)),
                }
            }
            Ok(_) => return Err(AdminError::NotASocket { path: path.into() }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_error("inspecting", path)(err)),
        }
        // Bind under a temporary name, restrict it, then move it into place:
        // the socket is never reachable with looser permissions.
        let file_name = path
            .file_name()
            .ok_or_else(|| {
                io_error("binding", path)(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the admin socket path has no file name",
                ))
            })?
            .to_string_lossy();
        let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut listener = UnixListener::bind(&tmp).map_err(io_error("binding", path))?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(err) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_error("creating", path)(err));
        }
        let meta = std::fs::symlink_metadata(path).map_err(io_error("inspecting", path))?;
        if let Err(err) = registry.register(&mut listener, Token(token_base), Interest::READABLE) {
            let _ = std::fs::remove_file(path);
            return Err(io_error("registering", path)(err));
        }
        let server = AdminServer {
            path: path.to_path_buf(),
            ino: meta.ino(),
            dev: meta.dev(),
            listener,
            token_base,
            own_uid: nix::unistd::geteuid().as_raw(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            clients: BTreeMap::new(),
            next_slot: 1,
            next_serial: 0,
            stats: AdminStats::default(),
        };
        tracing::info!(path = %path.display(), "admin socket ready");
        Ok(server)
    }

    /// Changes how long a client may stay idle (default
    /// [`DEFAULT_IDLE_TIMEOUT`]); applies to clients accepted from now on.
    pub fn set_idle_timeout(&mut self, timeout: Duration) {
        self.idle_timeout = timeout;
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `token` is one of this server's.
    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.token_base && token.0 - self.token_base < TOKEN_SPAN
    }

    /// Handles one event of a token this server [`owns`](Self::owns):
    /// accepts, reads, writes; complete requests are pushed on `requests`
    /// for the loop to answer with [`respond`](Self::respond).
    pub fn on_event(
        &mut self,
        registry: &Registry,
        event: &Event,
        requests: &mut Vec<(ClientId, AdminRequest)>,
    ) {
        let token = event.token();
        if !self.owns(token) {
            return;
        }
        let slot = token.0 - self.token_base;
        if slot == 0 {
            self.accept_all(registry);
            return;
        }
        let Some(client) = self.clients.get_mut(&slot) else {
            return;
        };
        let id = ClientId {
            slot,
            serial: client.serial,
        };
        if event.is_writable() || event.is_error() {
            match client.flush() {
                Ok(true) => return self.close(registry, slot),
                Ok(false) => {}
                Err(_) => return self.close(registry, slot),
            }
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            match client.on_readable() {
                Step::Keep => {}
                Step::Close => self.close(registry, slot),
                Step::Request(request) => {
                    client.state = State::Waiting;
                    client.deadline = None;
                    self.stats.requests += 1;
                    requests.push((id, request));
                }
                Step::Refuse(message) => {
                    self.stats.malformed += 1;
                    tracing::debug!(%message, "admin: refusing a request");
                    self.start_reply(registry, slot, &AdminReply::Error { message });
                }
            }
        }
    }

    /// Sends the loop's answer to `client` and closes its connection once
    /// written. A client that has gone away is ignored.
    pub fn respond(&mut self, registry: &Registry, client: ClientId, reply: &AdminReply) {
        match self.clients.get(&client.slot) {
            Some(c) if c.serial == client.serial && matches!(c.state, State::Waiting) => {
                self.start_reply(registry, client.slot, reply);
            }
            _ => tracing::debug!(?client, "admin: the client left before its reply"),
        }
    }

    /// Closes clients idle past their deadline (not those whose request is
    /// with the loop).
    pub fn poll_timers(&mut self, registry: &Registry, now: Instant) {
        let expired: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&slot, _)| slot)
            .collect();
        for slot in expired {
            self.stats.timed_out += 1;
            tracing::debug!(slot, "admin: closing an idle client");
            self.close(registry, slot);
        }
    }

    /// The earliest deadline [`poll_timers`](Self::poll_timers) acts on,
    /// for the loop's poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.values().filter_map(|c| c.deadline).min()
    }

    pub fn stats(&self) -> AdminStats {
        self.stats
    }

    fn accept_all(&mut self, registry: &Registry) {
        loop {
            let mut stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    tracing::warn!(%err, "admin: accept failed");
                    return;
                }
            };
            let uid = match nix::sys::socket::getsockopt(
                &stream,
                nix::sys::socket::sockopt::PeerCredentials,
            ) {
                Ok(creds) => creds.uid(),
                Err(err) => {
                    tracing::warn!(%err, "admin: cannot read the caller's credentials");
                    continue;
                }
            };
            if !peer_allowed(uid, self.own_uid) {
                self.stats.refused_credentials += 1;
                tracing::warn!(
                    uid,
                    "admin: refusing a caller that is neither root nor the daemon's user"
                );
                let message = format!(
                    "permission denied: uid {uid} may not use this admin socket \
                     (only root and uid {}); run as root (sudo)",
                    self.own_uid
                );
                // Best effort: a short line fits an empty socket buffer.
                let _ = stream.write(&reply_line(&AdminReply::Error { message }));
                continue;
            }
            if self.clients.len() >= MAX_CLIENTS {
                let message = "the daemon is busy with other admin clients; try again".into();
                let _ = stream.write(&reply_line(&AdminReply::Error { message }));
                continue;
            }
            let slot = self.free_slot();
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(err) =
                registry.register(&mut stream, Token(self.token_base + slot), interest)
            {
                tracing::warn!(%err, "admin: cannot register a client");
                continue;
            }
            self.next_serial += 1;
            self.clients.insert(
                slot,
                Client {
                    serial: self.next_serial,
                    stream,
                    state: State::Reading { buf: Vec::new() },
                    deadline: Some(Instant::now() + self.idle_timeout),
                },
            );
        }
    }

    /// A slot in `1..TOKEN_SPAN` no client holds (there are at most
    /// `MAX_CLIENTS`, so the search is short).
    fn free_slot(&mut self) -> usize {
        loop {
            let slot = self.next_slot;
            self.next_slot = if slot + 1 >= TOKEN_SPAN { 1 } else { slot + 1 };
            if !self.clients.contains_key(&slot) {
                return slot;
            }
        }
    }

    fn start_reply(&mut self, registry: &Registry, slot: usize, reply: &AdminReply) {
        let Some(client) = self.clients.get_mut(&slot) else {
            return;
        };
        client.state = State::Writing {
            out: reply_line(reply),
            written: 0,
        };
        client.deadline = Some(Instant::now() + self.idle_timeout);
        match client.flush() {
            Ok(false) => {}
            Ok(true) | Err(_) => self.close(registry, slot),
        }
    }

    fn close(&mut self, registry: &Registry, slot: usize) {
        if let Some(mut client) = self.clients.remove(&slot) {
            let _ = registry.deregister(&mut client.stream);
        }
    }
}

impl Drop for AdminServer {
    /// Removes the socket file, if it is still ours.
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if meta.ino() == self.ino && meta.dev() == self.dev {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// The client side: connects to the admin socket at `path`, sends `req`
/// and reads the reply, all within `timeout`.
pub fn request(
    path: &Path,
    req: &AdminRequest,
    timeout: Duration,
) -> Result<AdminReply, AdminError> {
    let deadline = Instant::now() + timeout;
    let timed_out = || AdminError::Timeout {
        path: path.to_path_buf(),
        timeout,
    };
    let mut stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => AdminError::NotRunning {
                path: path.to_path_buf(),
            },
            io::ErrorKind::PermissionDenied => AdminError::PermissionDenied {
                path: path.to_path_buf(),
            },
            _ => io_error("connecting to", path)(err),
        })?;
    let mut line = serde_json::to_vec(req).map_err(|err| {
        io_error("encoding a request for", path)(io::Error::new(io::ErrorKind::InvalidData, err))
    })?;
    line.push(b'\n');
    let is_timeout = |err: &io::Error| {
        matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    };
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    stream
        .set_write_timeout(Some(remaining().ok_or_else(timed_out)?))
        .map_err(io_error("configuring the connection to", path))?;
    match stream.write_all(&line) {
        Ok(()) => {}
        Err(err) if is_timeout(&err) => return Err(timed_out()),
        // The daemon may have answered (refusing the caller) and closed
        // before reading: its reply is still there to read.
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) => {}
        Err(err) => return Err(io_error("sending to", path)(err)),
    }
    let mut reply = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        stream
            .set_read_timeout(Some(remaining().ok_or_else(timed_out)?))
            .map_err(io_error("configuring the connection to", path))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                reply.extend_from_slice(&chunk[..n]);
                if reply.contains(&b'\n') {
                    break;
                }
                if reply.len() > MAX_REPLY_LINE {
                    return Err(AdminError::BadReply {
                        path: path.to_path_buf(),
                        reason: format!("longer than {MAX_REPLY_LINE} bytes"),
                    });
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if is_timeout(&err) => return Err(timed_out()),
            // The daemon may reset the connection after its reply.
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset && !reply.is_empty() => break,
            Err(err) => return Err(io_error("reading the reply from", path)(err)),
        }
    }
    let end = reply
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(reply.len());
    let line = &reply[..end];
    if line.is_empty() {
        return Err(AdminError::NoReply {
            path: path.to_path_buf(),
        });
    }
    serde_json::from_slice(line).map_err(|err| AdminError::BadReply {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Counters, PeerReport, ServiceReport};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;

    fn fake_report() -> NodeReport {
        NodeReport {
            slot: 1,
            incarnation: 4,
            pid: 4242,
            uptime_s: 61,
            role: "primary".into(),
            draining: false,
            health: "healthy".into(),
            term: 7,
            leader: Some(1),
            commit_index: 120,
            applied_index: 119,
            log_first: 100,
            log_last: 120,
            log_entries: 21,
            snapshot_index: 99,
            snapshot_age_s: Some(12),
            voters: vec!["1.4".into(), "2.1".into(), "3.2".into()],
            learners: vec![],
            peers: vec![PeerReport {
                slot: 2,
                incarnation: 1,
                matched: 118,
                lag: 2,
                connected: true,
            }],
            service: ServiceReport {
                name: "kv".into(),
                kind: "kv".into(),
                vip: "198.18.0.100".into(),
                port: 6379,
                holds_vip: true,
                connections: 3,
                sockets: 3,
                state_hash: "00ff".repeat(16),
                entries_applied: 119,
                packets_applied: 300,
                opened: 5,
                closed: 2,
                service_panics: 0,
                memory_used: 0,
                memory_limit: 0,
                output_overflows: 0,
            },
            counters: Counters {
                captured: 300,
                ..Counters::default()
            },
            takeover_faults: Default::default(),
        }
    }

    /// A fresh directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("tandem-admin-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A test event loop serving one AdminServer on a thread: answers
    /// `status` with [`fake_report`] and everything else with `done`.
    struct Harness {
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<AdminStats>>,
    }

    impl Harness {
        fn start(path: &Path, idle_timeout: Option<Duration>) -> Harness {
            let mut poll = mio::Poll::new().unwrap();
            let mut server = AdminServer::bind(path, poll.registry(), 1000).unwrap();
            if let Some(timeout) = idle_timeout {
                server.set_idle_timeout(timeout);
            }
            let stop = Arc::new(AtomicBool::new(false));
            let stop2 = stop.clone();
            let thread = std::thread::spawn(move || {
                let mut events = mio::Events::with_capacity(64);
                let mut requests = Vec::new();
                while !stop2.load(Ordering::Relaxed) {
                    let timeout = server
                        .next_deadline()
                        .map(|d| d.saturating_duration_since(Instant::now()))
                        .map_or(Duration::from_millis(20), |d| {
                            d.min(Duration::from_millis(20))
                        });
                    poll.poll(&mut events, Some(timeout)).unwrap();
                    for event in events.iter() {
                        assert!(server.owns(event.token()));
                        server.on_event(poll.registry(), event, &mut requests);
                    }
                    for (client, request) in requests.drain(..) {
                        let reply = match request {
                            AdminRequest::Status => AdminReply::Status(Box::new(fake_report())),
                            AdminRequest::Migrate { to } => AdminReply::Done {
                                message: format!("moving to {to}"),
                            },
                            other => AdminReply::Done {
                                message: format!("{other:?}"),
                            },
                        };
                        server.respond(poll.registry(), client, &reply);
                    }
                    server.poll_timers(poll.registry(), Instant::now());
                }
                server.stats()
            });
            Harness {
                stop,
                thread: Some(thread),
            }
        }

        /// Stops the loop (dropping the server) and returns its counters.
        fn stop(mut self) -> AdminStats {
            self.stop.store(true, Ordering::Relaxed);
            self.thread.take().unwrap().join().unwrap()
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// Sends raw bytes, closes the sending side and reads one reply line.
    fn raw_exchange(path: &Path, bytes: &[u8]) -> AdminReply {
        let mut stream = std::os::unix::net::UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stream.write_all(bytes);
        // The end of the stream ends a line without its newline.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    reply.extend_from_slice(&chunk[..n]);
                    if reply.contains(&b'\n') {
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::ConnectionReset => break,
                Err(err) => panic!("reading the reply: {err}"),
            }
        }
        let end = reply
            .iter()
            .position(|&b| b == b'\n')
            .expect("a reply line");
        serde_json::from_slice(&reply[..end]).unwrap()
    }

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn admin_wire_format() {
        let json = serde_json::to_string(&AdminRequest::Status).unwrap();
        assert_eq!(json, r#"{"op":"status"}"#);
        let json = serde_json::to_string(&AdminRequest::Migrate { to: 2 }).unwrap();
        assert_eq!(json, r#"{"op":"migrate","to":2}"#);
        let req: AdminRequest = serde_json::from_str(r#"{"op":"undrain"}"#).unwrap();
        assert_eq!(req, AdminRequest::Undrain);
        let req: AdminRequest =
            serde_json::from_str(r#"{"op":"fault","step":"vip","times":2}"#).unwrap();
        assert_eq!(
            req,
            AdminRequest::Fault {
                step: crate::faults::TakeoverStep::Vip,
                times: 2
            }
        );
        let reply = AdminReply::Status(Box::new(fake_report()));
        let json = serde_json::to_string(&reply).unwrap();
        assert!(
            json.starts_with(r#"{"result":"status","slot":1,"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<AdminReply>(&json).unwrap(), reply);
        let json = serde_json::to_string(&AdminReply::Error {
            message: "x".into(),
        })
        .unwrap();
        assert_eq!(json, r#"{"result":"error","message":"x"}"#);
    }

    #[test]
    fn admin_peer_credentials_rule() {
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(1000, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1000, 0));
    }

    #[test]
    fn admin_bind_mode_and_round_trip() {
        let dir = TempDir::new("rt");
        let path = dir.0.join("run").join("node.sock");
        let harness = Harness::start(&path, None);
        let sock_mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(sock_mode, 0o600);
        let dir_mode = std::fs::metadata(dir.0.join("run"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket());

        let reply = request(&path, &AdminRequest::Status, T).unwrap();
        assert_eq!(reply, AdminReply::Status(Box::new(fake_report())));
        let reply = request(&path, &AdminRequest::Migrate { to: 3 }, T).unwrap();
        assert_eq!(
            reply,
            AdminReply::Done {
                message: "moving to 3".into()
            }
        );
        // Without the trailing newline, the end of the stream ends the line.
        let reply = raw_exchange(&path, br#"{"op":"drain"}"#);
        assert!(matches!(reply, AdminReply::Done { .. }), "{reply:?}");
        // Several clients at once.
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || request(&path, &AdminRequest::Status, T).unwrap())
            })
            .collect();
        for client in clients {
            assert!(matches!(client.join().unwrap(), AdminReply::Status(_)));
        }

        let stats = harness.stop();
        assert_eq!(stats.requests, 11);
        assert_eq!(stats.malformed, 0);
        assert_eq!(stats.refused_credentials, 0);
        assert!(!path.exists(), "the socket file is removed on drop");
    }

    #[test]
    fn admin_malformed_and_oversized_requests() {
        let dir = TempDir::new("bad");
        let path = dir.0.join("node.sock");
        let harness = Harness::start(&path, None);

        match raw_exchange(&path, b"this is not json\n") {
            AdminReply::Error { message } => {
                assert!(message.contains("malformed request"), "{message}")
            }
            other => panic!("expected an error, got {other:?}"),
        }
        match raw_exchange(&path, b"{\"op\":\"reboot\"}\n") {
            AdminReply::Error { message } => assert!(message.contains("reboot"), "{message}"),
            other => panic!("expected an error, got {other:?}"),
        }
        let mut big = vec![b' '; MAX_REQUEST_LINE + 10];
        big.push(b'\n');
        match raw_exchange(&path, &big) {
            AdminReply::Error { message } => assert!(message.contains("64 KiB"), "{message}"),
            other => panic!("expected an error, got {other:?}"),
        }
        // Without a newline at all.
        let big = vec![b'{'; 3 * MAX_REQUEST_LINE];
        match raw_exchange(&path, &big) {
            AdminReply::Error { message } => assert!(message.contains("64 KiB"), "{message}"),
            other => panic!("expected an error, got {other:?}"),
        }
        // Still serving.
        let reply = request(&path, &AdminRequest::Status, T).unwrap();
        assert!(matches!(reply, AdminReply::Status(_)));

        let stats = harness.stop();
        assert_eq!(stats.malformed, 4);
        assert_eq!(stats.requests, 1);
    }

    #[test]
    fn admin_stale_socket_replaced() {
        let dir = TempDir::new("stale");
        let path = dir.0.join("node.sock");
        // A socket file nobody listens on, as a crashed daemon leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        assert!(matches!(
            request(&path, &AdminRequest::Status, T),
            Err(AdminError::NotRunning { .. })
        ));
        let harness = Harness::start(&path, None);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let reply = request(&path, &AdminRequest::Status, T).unwrap();
        assert!(matches!(reply, AdminReply::Status(_)));
        harness.stop();
    }

    #[test]
    fn admin_live_socket_refused() {
        let dir = TempDir::new("live");
        let path = dir.0.join("node.sock");
        let harness = Harness::start(&path, None);
        let poll = mio::Poll::new().unwrap();
        match AdminServer::bind(&path, poll.registry(), 0) {
            Err(err @ AdminError::InUse { .. }) => {
                assert!(err.to_string().contains("already answers"), "{err}")
            }
            Err(other) => panic!("expected InUse, got {other}"),
            Ok(_) => panic!("a second server bound a live socket"),
        }
        // The first daemon still serves on its socket.
        let reply = request(&path, &AdminRequest::Status, T).unwrap();
        assert!(matches!(reply, AdminReply::Status(_)));
        harness.stop();

        // A regular file is not replaced.
        std::fs::write(&path, b"data").unwrap();
        assert!(matches!(
            AdminServer::bind(&path, poll.registry(), 0),
            Err(AdminError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[test]
    fn admin_missing_socket_is_a_clear_error() {
        let dir = TempDir::new("missing");
        let path = dir.0.join("node.sock");
        let err = request(&path, &AdminRequest::Status, T).unwrap_err();
        assert!(matches!(err, AdminError::NotRunning { .. }));
        assert!(
            err.to_string().contains("no tandem node answers on"),
            "{err}"
        );
    }

    #[test]
    fn admin_idle_client_closed_after_timeout() {
        let dir = TempDir::new("idle");
        let path = dir.0.join("node.sock");
        let harness = Harness::start(&path, Some(Duration::from_millis(200)));
        let started = Instant::now();
        let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 16];
        // Half a request, then silence.
        stream.write_all(br#"{"op":"#).unwrap();
        let n = stream.read(&mut buf).unwrap();
        let waited = started.elapsed();
        assert_eq!(n, 0, "closed without a reply");
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        // A client that never writes at all.
        let mut silent = std::os::unix::net::UnixStream::connect(&path).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(silent.read(&mut buf).unwrap(), 0);
        let stats = harness.stop();
        assert_eq!(stats.timed_out, 2);
        assert_eq!(stats.requests, 0);
    }

    /// Run by [`admin_refuses_other_users`] as another user: asks for the
    /// status and exits 0 if refused for its credentials.
    #[test]
    fn admin_test_helper_other_user() {
        let Some(path) = std::env::var_os("TANDEM_ADMIN_TEST_SOCKET") else {
            return;
        };
        let code = match request(Path::new(&path), &AdminRequest::Status, T) {
            Ok(AdminReply::Error { message }) if message.contains("permission denied") => 0,
            other => {
                // Not eprintln!: the test harness would capture it.
                let _ = writeln!(io::stderr(), "helper: {other:?}");
                3
            }
        };
        std::process::exit(code);
    }

    #[test]
    fn admin_refuses_other_users() {
        use std::os::unix::process::CommandExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to run a client as another user");
            return;
        }
        let dir = TempDir::new("creds");
        let path = dir.0.join("node.sock");
        let harness = Harness::start(&path, None);
        // Let anyone connect, so that only the credential check stands in
        // the way.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        // The helper runs from a copy of this test binary in the temporary
        // directory: the checkout may sit in a private directory (root's
        // home is mode 0700) that uid 65534 cannot traverse.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        let helper = dir.0.join("helper");
        std::fs::copy(std::env::current_exe().unwrap(), &helper).unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let status = std::process::Command::new(&helper)
            .args(["--exact", "admin::tests::admin_test_helper_other_user"])
            .arg("--quiet")
            .env("TANDEM_ADMIN_TEST_SOCKET", &path)
            .uid(65534)
            .gid(65534)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "the helper as uid 65534: {status}");
        // Root still gets through.
        let reply = request(&path, &AdminRequest::Status, T).unwrap();
        assert!(matches!(reply, AdminReply::Status(_)));
        let stats = harness.stop();
        assert_eq!(stats.refused_credentials, 1);
        assert_eq!(stats.requests, 1);
    }

    #[test]
    fn admin_tokens() {
        let dir = TempDir::new("tokens");
        let poll = mio::Poll::new().unwrap();
        let server = AdminServer::bind(&dir.0.join("a.sock"), poll.registry(), 1 << 24).unwrap();
        assert!(server.owns(Token(1 << 24)));
        assert!(server.owns(Token((1 << 24) + TOKEN_SPAN - 1)));
        assert!(!server.owns(Token((1 << 24) + TOKEN_SPAN)));
        assert!(!server.owns(Token((1 << 24) - 1)));
    }
}
