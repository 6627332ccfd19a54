//! Kernel-enforced fencing: what keeps a node's kernel quiet on the VIP when
//! its daemon is dead, hung or deposed (docs/architecture.md §3.8).
//!
//! A daemon can die or hang on a live machine (panic, OOM kill, SIGSTOP);
//! its kernel then still owns the VIP, still answers ARP, and closes the
//! daemon's sockets with FIN or RST. Two rules, installed before anything
//! else at start-up and kept at all times, make that harmless:
//!
//! - the **FIN/RST guard**: a FIN or RST from VIP:ports leaves only if its
//!   socket carries tandem's "deliberate close" mark (`SO_MARK`), so a dying
//!   process cannot end its clients' connections;
//! - the **lease**: an nftables set element with a timeout, refreshed by the
//!   primary only while it has heard from a quorum within the lease. When it
//!   lapses, every TCP segment from VIP:ports and every ARP reply for the VIP
//!   is dropped: a deposed or frozen primary goes silent within one lease.
//!
//! Native nftables (no `queue` statement needed, so this works on the
//! project's kernel), one table per VIP in the `inet` family and one in the
//! `arp` family. Installing, refreshing and revoking are each one `nft -f`
//! transaction.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The mark a socket must carry for its FIN or RST to leave ("tand").
pub const DELIBERATE_CLOSE_MARK: u32 = 0x7461_6e64;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("no ports to guard")]
    NoPorts,
    #[error("`nft` is not installed (Debian package: nftables)")]
    MissingNft,
    #[error("nft refused the guard rules ({what}): {stderr}")]
    Refused { what: &'static str, stderr: String },
    #[error("running nft: {0}")]
    Io(#[source] std::io::Error),
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
}

/// The guard and lease of one VIP and its service ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    netns: Option<String>,
    vip: Ipv4Addr,
    ports: Vec<u16>,
    mark: u32,
}

impl Guard {
    /// The guard for `vip:ports` in the named namespace (`None`: the calling
    /// thread's), letting FIN/RST out only from sockets marked `mark`.
    pub fn new(
        netns: Option<&str>,
        vip: Ipv4Addr,
        ports: &[u16],
        mark: u32,
    ) -> Result<Guard, GuardError> {
        if ports.is_empty() {
            return Err(GuardError::NoPorts);
        }
        let mut ports = ports.to_vec();
        ports.sort_unstable();
        ports.dedup();
        Ok(Guard {
            netns: netns.map(str::to_string),
            vip,
            ports,
            mark,
        })
    }

    /// The name of both tables (unique per VIP).
    pub fn table(&self) -> String {
        format!("tandem_guard_{:08x}", u32::from(self.vip))
    }

    /// The `nft -f` script that (re)creates both tables, lease empty.
    pub fn script(&self) -> String {
        let table = self.table();
        let (vip, mark) = (self.vip, self.mark);
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let ports = ports.join(", ");
        // "add then delete" makes the delete succeed whether or not the
        // table existed, so the whole script is one idempotent transaction.
        format!(
            "add table inet {table}\n\
             delete table inet {table}\n\
             add table arp {table}\n\
             delete table arp {table}\n\
             table inet {table} {{\n\
             \x20 set lease {{ type ipv4_addr; flags timeout; }}\n\
             \x20 chain output {{\n\
             \x20   type filter hook output priority -200; policy accept;\n\
             \x20   ip saddr {vip} tcp sport {{ {ports} }} tcp flags & (fin | rst) != 0 meta mark != {mark:#x} drop\n\
             \x20   ip saddr {vip} tcp sport {{ {ports} }} ip saddr != @lease drop\n\
             \x20 }}\n\
             }}\n\
             table arp {table} {{\n\
             \x20 set lease {{ type ipv4_addr; flags timeout; }}\n\
             \x20 chain output {{\n\
             \x20   type filter hook output priority 0; policy accept;\n\
             \x20   arp operation reply arp saddr ip {vip} arp saddr ip != @lease drop\n\
             \x20 }}\n\
             }}\n"
        )
    }

    /// Installs (or replaces) the guard, with no lease: until the first
    /// [`Guard::refresh_lease`], nothing leaves from VIP:ports.
    pub fn install(&self) -> Result<(), GuardError> {
        self.nft(&self.script(), "install")
    }

    /// Grants the lease for `lease` from now (replacing the previous one).
    pub fn refresh_lease(&self, lease: Duration) -> Result<(), GuardError> {
        let table = self.table();
        let vip = self.vip;
        // nft's timeouts count in ms; below 1 ms would mean "forever".
        let ms = lease.as_millis().max(1);
        let script = format!(
            "flush set inet {table} lease\n\
             add element inet {table} lease {{ {vip} timeout {ms}ms }}\n\
             flush set arp {table} lease\n\
             add element arp {table} lease {{ {vip} timeout {ms}ms }}\n"
        );
        self.nft(&script, "refresh the lease")
    }

    /// Withdraws the lease at once (a primary stepping down).
    pub fn revoke_lease(&self) -> Result<(), GuardError> {
        let table = self.table();
        self.nft(
            &format!("flush set inet {table} lease\nflush set arp {table} lease\n"),
            "revoke the lease",
        )
    }

    /// Removes both tables; absent is success.
    pub fn remove(&self) -> Result<(), GuardError> {
        let table = self.table();
        self.nft(
            &format!(
                "add table inet {table}\ndelete table inet {table}\n\
                 add table arp {table}\ndelete table arp {table}\n"
            ),
            "remove",
        )
    }

    fn nft(&self, script: &str, what: &'static str) -> Result<(), GuardError> {
        let script = script.to_string();
        let run = move || -> Result<(), GuardError> {
            let mut child = Command::new("nft")
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|err| match err.kind() {
                    std::io::ErrorKind::NotFound => GuardError::MissingNft,
                    _ => GuardError::Io(err),
                })?;
            child
                .stdin
                .take()
                .expect("stdin was piped")
                .write_all(script.as_bytes())
                .map_err(GuardError::Io)?;
            let output = child.wait_with_output().map_err(GuardError::Io)?;
            if !output.status.success() {
                return Err(GuardError::Refused {
                    what,
                    stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
                });
            }
            Ok(())
        };
        match &self.netns {
            Some(name) => crate::netns::run_in(name, run)?,
            None => run(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    fn pair() -> (TcpListener, TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        (listener, client, server)
    }

    #[test]
    fn the_script_names_every_port_and_the_mark() {
        let guard = Guard::new(None, Ipv4Addr::new(198, 18, 0, 100), &[7000, 6379], 0x10).unwrap();
        let script = guard.script();
        assert!(script.contains("tcp sport { 6379, 7000 }"), "{script}");
        assert!(script.contains("meta mark != 0x10 drop"));
        assert!(script.contains("arp operation reply arp saddr ip 198.18.0.100"));
        assert!(matches!(
            Guard::new(None, Ipv4Addr::LOCALHOST, &[], 1),
            Err(GuardError::NoPorts)
        ));
    }

    /// A server socket closing without the mark sends no FIN; with the mark
    /// it does. Both need the lease.
    #[test]
    fn fin_leaves_only_from_a_marked_socket() {
        crate::netns::run_in_private(|| {
            let (listener, mut client, server) = pair();
            let port = listener.local_addr().unwrap().port();
            let guard =
                Guard::new(None, Ipv4Addr::LOCALHOST, &[port], DELIBERATE_CLOSE_MARK).unwrap();
            guard.install().unwrap();
            guard.install().unwrap(); // idempotent
            guard.refresh_lease(Duration::from_secs(30)).unwrap();

            drop(server); // unmarked: the FIN is dropped
            let mut buf = [0u8; 1];
            let err = client
                .read(&mut buf)
                .expect_err("the client saw an end of stream");
            assert!(matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ));

            let mut client2 = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (server2, _) = listener.accept().unwrap();
            client2
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            crate::set_int(
                server2.as_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                DELIBERATE_CLOSE_MARK as libc::c_int,
            )
            .unwrap();
            drop(server2); // marked: a deliberate close
            assert_eq!(client2.read(&mut buf).unwrap(), 0, "no end of stream");
            guard.remove().unwrap();
            guard.remove().unwrap(); // idempotent
        })
        .unwrap();
    }

    /// Without a lease nothing leaves from VIP:port; once granted, the
    /// held-back bytes go out; when it lapses, the node is silent again.
    #[test]
    fn the_lease_gates_everything_the_vip_sends() {
        crate::netns::run_in_private(|| {
            let (listener, mut client, mut server) = pair();
            let port = listener.local_addr().unwrap().port();
            let guard =
                Guard::new(None, Ipv4Addr::LOCALHOST, &[port], DELIBERATE_CLOSE_MARK).unwrap();
            guard.install().unwrap();
            let mut buf = [0u8; 5];

            server.write_all(b"first").unwrap();
            assert!(client.read_exact(&mut buf).is_err(), "sent without a lease");

            guard.refresh_lease(Duration::from_millis(400)).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            client.read_exact(&mut buf).unwrap(); // the retransmission
            assert_eq!(&buf, b"first");

            std::thread::sleep(Duration::from_millis(600));
            server.write_all(b"later").unwrap();
            client
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            assert!(
                client.read_exact(&mut buf).is_err(),
                "sent after the lease lapsed"
            );

            guard.refresh_lease(Duration::from_secs(30)).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            client.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"later");
            guard.revoke_lease().unwrap();
            guard.remove().unwrap();
        })
        .unwrap();
    }
}
