//! The network lock: freezing every TCP connection of one VIP:port.
//!
//! While a connection is dumped its socket must receive nothing — a socket in
//! repair mode still ACKs incoming data, and bytes ACKed after the dump would
//! be lost for ever — and send nothing. The lock is a private iptables chain,
//! hooked into INPUT and OUTPUT, that drops VIP:port traffic both ways.
//!
//! The chain and its two jump rules are installed ahead of time, empty
//! ([`NetLock::install`]); locking fills the chain and unlocking empties it,
//! so each costs one `iptables-restore --noflush` transaction on the critical
//! path of a move: never half a lock, and never a rule this module did not
//! create (only its own chain and its own jumps are named). The chain name is
//! derived from the VIP and port, so locks for different services coexist.
//!
//! Clients retransmit what the lock dropped once the connection lives again
//! on the target; nothing is lost, it only costs the client a retransmission.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum NetLockError {
    #[error("`iptables-restore` is not installed (Debian package: iptables)")]
    MissingTool,
    #[error("cannot run iptables-restore: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("iptables-restore refused the rules for {what}: {stderr}")]
    Refused { what: String, stderr: String },
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
}

/// A lock on one VIP:port in one network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetLock {
    netns: Option<String>,
    vip: Ipv4Addr,
    port: u16,
    /// Incoming segments go to this NFQUEUE instead of being dropped, so
    /// a mover can take their bytes across (no `--queue-bypass`: without a
    /// reader they are dropped, as with a plain lock).
    queue: Option<u16>,
}

impl NetLock {
    /// A lock for `vip:port` in the named namespace (`None`: the calling
    /// thread's). Nothing is installed until [`NetLock::lock`].
    pub fn new(netns: Option<&str>, vip: Ipv4Addr, port: u16) -> NetLock {
        NetLock {
            netns: netns.map(str::to_string),
            vip,
            port,
            queue: None,
        }
    }

    /// The same lock, holding incoming segments in NFQUEUE `queue` rather
    /// than dropping them.
    pub fn holding_in(mut self, queue: u16) -> NetLock {
        self.queue = Some(queue);
        self
    }

    /// The private chain's name: `TANDEM-LOCK-` + the VIP and port in hex,
    /// unique per VIP:port and within iptables' 28-character limit.
    pub fn chain(&self) -> String {
        format!("TANDEM-LOCK-{:08X}-{:04X}", u32::from(self.vip), self.port)
    }

    /// Creates the chain, empty, and hooks it into INPUT and OUTPUT, off the
    /// critical path. Idempotent: an existing chain is reused and emptied.
    pub fn install(&self) -> Result<(), NetLockError> {
        let chain = self.chain();
        if self.is_installed()? {
            return self.restore(&format!("*filter\n-F {chain}\nCOMMIT\n"), "reset");
        }
        let script = format!(
            "*filter\n\
             :{chain} - [0:0]\n\
             -I INPUT 1 -j {chain}\n\
             -I OUTPUT 1 -j {chain}\n\
             COMMIT\n"
        );
        self.restore(&script, "install")
    }

    /// Freezes VIP:port (idempotent). Installs the chain first if needed.
    pub fn lock(&self) -> Result<(), NetLockError> {
        let chain = self.chain();
        let (vip, port) = (self.vip, self.port);
        let incoming = match self.queue {
            Some(queue) => format!("NFQUEUE --queue-num {queue}"),
            None => "DROP".to_string(),
        };
        let script = format!(
            "*filter\n\
             -F {chain}\n\
             -A {chain} -d {vip}/32 -p tcp --dport {port} -j {incoming}\n\
             -A {chain} -s {vip}/32 -p tcp --sport {port} -j DROP\n\
             COMMIT\n"
        );
        match self.restore(&script, "lock") {
            Ok(()) => Ok(()),
            // Not installed yet: pay for it now.
            Err(NetLockError::Refused { .. }) if !self.is_installed()? => {
                self.install()?;
                self.restore(&script, "lock")
            }
            Err(err) => Err(err),
        }
    }

    /// Lets VIP:port traffic through again; the chain stays, empty.
    pub fn unlock(&self) -> Result<(), NetLockError> {
        let chain = self.chain();
        match self.restore(&format!("*filter\n-F {chain}\nCOMMIT\n"), "unlock") {
            Ok(()) => Ok(()),
            Err(NetLockError::Refused { .. }) if !self.is_installed()? => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Removes the chain and its jumps; absent is success.
    pub fn remove(&self) -> Result<(), NetLockError> {
        if !self.is_installed()? {
            return Ok(());
        }
        let chain = self.chain();
        let script = format!(
            "*filter\n\
             -D INPUT -j {chain}\n\
             -D OUTPUT -j {chain}\n\
             -F {chain}\n\
             -X {chain}\n\
             COMMIT\n"
        );
        self.restore(&script, "remove")
    }

    /// Whether the lock currently drops traffic (its chain holds rules).
    pub fn is_locked(&self) -> Result<bool, NetLockError> {
        let chain = self.chain();
        let out = self.iptables(&["-S", &chain])?;
        Ok(out
            .map(|text| text.lines().any(|l| l.starts_with("-A ")))
            .unwrap_or(false))
    }

    /// Whether the lock's chain exists.
    pub fn is_installed(&self) -> Result<bool, NetLockError> {
        let chain = self.chain();
        Ok(self.iptables(&["-n", "-L", &chain])?.is_some())
    }

    /// Runs `iptables -w ARGS` in the lock's namespace: its output if it
    /// succeeded, `None` if it failed.
    fn iptables(&self, args: &[&str]) -> Result<Option<String>, NetLockError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let output = self.in_netns(move || {
            Command::new("iptables")
                .arg("-w")
                .args(&args)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
        })?;
        match output {
            Ok(out) if out.status.success() => {
                Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
            }
            Ok(_) => Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                Err(NetLockError::MissingTool)
            }
            Err(err) => Err(NetLockError::Spawn(err)),
        }
    }

    fn restore(&self, script: &str, what: &str) -> Result<(), NetLockError> {
        let result = self.in_netns(|| iptables_restore(script))?;
        result.map_err(|err| match err {
            NetLockError::Refused { stderr, .. } => NetLockError::Refused {
                what: format!("{what} {}:{} ({})", self.vip, self.port, self.chain()),
                stderr,
            },
            other => other,
        })
    }

    fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetLockError> {
        Ok(match &self.netns {
            Some(name) => crate::netns::run_in(name, f)?,
            None => f(),
        })
    }
}

/// Feeds `script` to `iptables-restore --noflush` in the calling thread's
/// namespace: all of it applies, or none of it.
pub fn iptables_restore(script: &str) -> Result<(), NetLockError> {
    let mut child = Command::new("iptables-restore")
        .args(["--noflush", "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => NetLockError::MissingTool,
            _ => NetLockError::Spawn(err),
        })?;
    let mut stdin = child.stdin.take().expect("stdin was piped");
    stdin
        .write_all(script.as_bytes())
        .map_err(NetLockError::Spawn)?;
    drop(stdin);
    let output = child.wait_with_output().map_err(NetLockError::Spawn)?;
    if !output.status.success() {
        return Err(NetLockError::Refused {
            what: "a batch".to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    #[test]
    fn chain_names_are_distinct_and_short() {
        let a = NetLock::new(None, Ipv4Addr::new(198, 18, 0, 100), 7000);
        let b = NetLock::new(None, Ipv4Addr::new(198, 18, 0, 100), 7001);
        assert_ne!(a.chain(), b.chain());
        assert!(a.chain().len() <= 28, "{}", a.chain());
    }

    #[test]
    fn lock_freezes_traffic_and_unlock_restores_it() {
        crate::netns::run_in_private(|| {
            let vip = Ipv4Addr::new(127, 0, 0, 1);
            let listener = TcpListener::bind((vip, 0)).unwrap();
            let port = listener.local_addr().unwrap().port();
            let mut client = TcpStream::connect((vip, port)).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            client
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            server
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();

            let lock = NetLock::new(None, vip, port);
            let other = NetLock::new(None, vip, port.wrapping_add(1));
            lock.unlock().unwrap(); // not installed: nothing to do
            lock.install().unwrap();
            lock.install().unwrap(); // idempotent
            assert!(!lock.is_locked().unwrap());
            lock.lock().unwrap();
            lock.lock().unwrap(); // idempotent
            other.lock().unwrap(); // installs on the way
            assert!(lock.is_locked().unwrap());

            client.write_all(b"frozen").unwrap();
            let mut buf = [0u8; 6];
            assert!(
                server.read_exact(&mut buf).is_err(),
                "the lock let data through"
            );

            lock.unlock().unwrap();
            assert!(!lock.is_locked().unwrap());
            assert!(
                other.is_locked().unwrap(),
                "unlocking one lock removed another"
            );
            // The client retransmits what the lock dropped.
            server
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            server.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"frozen");
            lock.unlock().unwrap(); // idempotent
            lock.remove().unwrap();
            other.remove().unwrap();
            assert!(!lock.is_installed().unwrap() && !other.is_installed().unwrap());
            lock.remove().unwrap(); // idempotent
        })
        .unwrap();
    }
}
