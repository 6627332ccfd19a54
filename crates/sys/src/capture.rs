//! The capture rules: which packets netfilter hands to tandem's queue.
//!
//! docs/architecture.md §3.1: every client packet to VIP:ports is queued in the **INPUT**
//! hook — after IP defragmentation, so every byte of a fragmented segment is
//! seen (in PREROUTING a non-first fragment carries no ports and would slip
//! past the log) — and every SYN-ACK the service sends is queued in
//! **OUTPUT**, so the handshake is logged before the client can use it.
//!
//! The rules are **fail-closed**: no `--queue-bypass` / `bypass`. A packet
//! that reached the kernel without being logged would break invariant I1 (a
//! byte the kernel ACKed must be in the committed log), so if the reader is
//! gone the kernel must drop, never deliver.
//!
//! Backend: native nftables `queue` where the kernel has it (detected, not
//! assumed: this project's kernel lacks CONFIG_NFT_QUEUE), else iptables'
//! NFQUEUE target in a private chain. Both are installed and removed
//! atomically and touch nothing they did not create.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::netlock::{iptables_restore, NetLockError};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("no ports to capture")]
    NoPorts,
    #[error("`nft` is not installed (Debian package: nftables)")]
    MissingNft,
    #[error("nft refused the capture rules: {0}")]
    NftRefused(String),
    #[error("running nft: {0}")]
    Nft(#[source] std::io::Error),
    #[error(transparent)]
    Iptables(#[from] NetLockError),
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
}

/// How the rules are expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Native nftables with the `queue` statement.
    Nftables,
    /// iptables' NFQUEUE target (over nf_tables compat on Debian 12).
    Iptables,
}

/// Which backend this kernel supports, asked in the calling thread's
/// namespace: `nft -c` validates a table with a `queue` statement against the
/// kernel without applying it.
pub fn detect_backend() -> Backend {
    let probe = "table inet tandem_probe {\n chain c {\n  type filter hook input priority 0;\n  queue num 0\n }\n}\n";
    let ok = Command::new("nft")
        .args(["-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .expect("stdin was piped")
                .write_all(probe.as_bytes())?;
            child.wait()
        })
        .map(|status| status.success())
        .unwrap_or(false);
    if ok {
        Backend::Nftables
    } else {
        Backend::Iptables
    }
}

/// The capture rules for one service: VIP, ports and queue number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRules {
    netns: Option<String>,
    vip: Ipv4Addr,
    ports: Vec<u16>,
    queue: u16,
}

impl CaptureRules {
    /// Rules for `vip:ports` feeding `queue`, in the named namespace
    /// (`None`: the calling thread's). Nothing is installed yet.
    pub fn new(
        netns: Option<&str>,
        vip: Ipv4Addr,
        ports: &[u16],
        queue: u16,
    ) -> Result<Self, CaptureError> {
        if ports.is_empty() {
            return Err(CaptureError::NoPorts);
        }
        let mut ports = ports.to_vec();
        ports.sort_unstable();
        ports.dedup();
        Ok(CaptureRules {
            netns: netns.map(str::to_string),
            vip,
            ports,
            queue,
        })
    }

    /// The private iptables chains' names (unique per VIP): one hooked
    /// into INPUT, one into OUTPUT, so a rule meant for one hook never
    /// matches in the other (a local client's SYN passes OUTPUT too).
    pub fn chains(&self) -> (String, String) {
        let base = format!("TANDEM-CAP-{:08X}", u32::from(self.vip));
        (format!("{base}-I"), format!("{base}-O"))
    }

    /// The nftables table's name (unique per VIP).
    pub fn table(&self) -> String {
        format!("tandem_cap_{:08x}", u32::from(self.vip))
    }

    /// The `iptables-restore --noflush` script that installs the rules.
    pub fn iptables_script(&self) -> String {
        let ((input, output), vip, queue) = (self.chains(), self.vip, self.queue);
        let mut script = format!("*filter\n:{input} - [0:0]\n:{output} - [0:0]\n");
        for port in &self.ports {
            // Deliberately no --queue-bypass: fail closed (see module docs).
            script.push_str(&format!(
                "-A {input} -d {vip}/32 -p tcp --dport {port} -j NFQUEUE --queue-num {queue}\n"
            ));
            script.push_str(&format!(
                "-A {output} -s {vip}/32 -p tcp --sport {port} --tcp-flags SYN,ACK SYN,ACK -j NFQUEUE --queue-num {queue}\n"
            ));
        }
        script.push_str(&format!(
            "-I INPUT 1 -j {input}\n-I OUTPUT 1 -j {output}\nCOMMIT\n"
        ));
        script
    }

    /// The `nft -f` script that installs the rules.
    pub fn nft_script(&self) -> String {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let ports = ports.join(", ");
        let (table, vip, queue) = (self.table(), self.vip, self.queue);
        // Deliberately no `bypass`: fail closed (see module docs).
        format!(
            "table inet {table} {{\n\
             \x20 chain input {{\n\
             \x20   type filter hook input priority filter; policy accept;\n\
             \x20   ip daddr {vip} tcp dport {{ {ports} }} queue num {queue}\n\
             \x20 }}\n\
             \x20 chain output {{\n\
             \x20   type filter hook output priority filter; policy accept;\n\
             \x20   ip saddr {vip} tcp sport {{ {ports} }} tcp flags & (syn | ack) == syn | ack queue num {queue}\n\
             \x20 }}\n\
             }}\n"
        )
    }

    /// Installs the rules with `backend`, replacing a previous set for the
    /// same VIP whole.
    pub fn install(&self, backend: Backend) -> Result<(), CaptureError> {
        self.remove()?;
        match backend {
            Backend::Iptables => {
                let script = self.iptables_script();
                self.in_netns(move || iptables_restore(&script))??;
            }
            Backend::Nftables => {
                let script = self.nft_script();
                self.in_netns(move || nft(&["-f", "-"], Some(&script)))??;
            }
        }
        Ok(())
    }

    /// Removes the rules of either backend; absent is success.
    pub fn remove(&self) -> Result<(), CaptureError> {
        let (input, output) = self.chains();
        let table = self.table();
        self.in_netns(move || -> Result<(), CaptureError> {
            let exists = Command::new("iptables")
                .args(["-w", "-n", "-L", &input])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if exists {
                iptables_restore(&format!(
                    "*filter\n-D INPUT -j {input}\n-D OUTPUT -j {output}\n\
                     -F {input}\n-F {output}\n-X {input}\n-X {output}\nCOMMIT\n"
                ))?;
            }
            let has_table = Command::new("nft")
                .args(["list", "table", "inet", &table])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if has_table {
                nft(&["delete", "table", "inet", &table], None)?;
            }
            Ok(())
        })?
    }

    fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, CaptureError> {
        Ok(match &self.netns {
            Some(name) => crate::netns::run_in(name, f)?,
            None => f(),
        })
    }
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<(), CaptureError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => CaptureError::MissingNft,
            _ => CaptureError::Nft(err),
        })?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin was piped")
            .write_all(text.as_bytes())
            .map_err(CaptureError::Nft)?;
    }
    let output = child.wait_with_output().map_err(CaptureError::Nft)?;
    if !output.status.success() {
        return Err(CaptureError::NftRefused(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfqueue::{Hook, NfQueue, NfQueueError, QueueConfig, Verdict};

    fn rules() -> CaptureRules {
        CaptureRules::new(None, Ipv4Addr::new(198, 18, 0, 100), &[6379, 7000, 6379], 3).unwrap()
    }

    #[test]
    fn scripts_are_fail_closed_and_cover_both_hooks() {
        let r = rules();
        let ipt = r.iptables_script();
        assert!(!ipt.contains("bypass"));
        assert_eq!(ipt.matches("-j NFQUEUE --queue-num 3").count(), 4, "{ipt}");
        assert!(ipt.contains("-d 198.18.0.100/32 -p tcp --dport 7000"));
        assert!(ipt.contains("--sport 6379 --tcp-flags SYN,ACK SYN,ACK"));
        let nft = r.nft_script();
        assert!(!nft.contains("bypass"));
        assert!(
            nft.contains("tcp dport { 6379, 7000 } queue num 3"),
            "{nft}"
        );
        assert!(nft.contains("hook input") && nft.contains("hook output"));
        assert!(matches!(
            CaptureRules::new(None, Ipv4Addr::LOCALHOST, &[], 0),
            Err(CaptureError::NoPorts)
        ));
    }

    #[test]
    fn this_kernel_has_no_nft_queue() {
        // Recorded in docs/kernel-notes.md §1: CONFIG_NFT_QUEUE is unset.
        // If this starts failing, the kernel changed and nft is preferred.
        let backend = crate::netns::run_in_private(detect_backend).unwrap();
        assert_eq!(backend, Backend::Iptables);
    }

    /// In a private namespace: the SYN is queued in INPUT and the SYN-ACK in
    /// OUTPUT; removal leaves the tables as they were.
    #[test]
    fn queues_the_syn_and_the_syn_ack_then_removes_cleanly() {
        crate::netns::run_in_private(|| {
            let before = Command::new("iptables").arg("-S").output().unwrap().stdout;
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let rules = CaptureRules::new(None, Ipv4Addr::LOCALHOST, &[port], 11).unwrap();
            let mut queue = NfQueue::bind(11, QueueConfig::default()).unwrap();
            rules.install(Backend::Iptables).unwrap();
            rules.install(Backend::Iptables).unwrap(); // replaces, never doubles

            let client =
                std::thread::spawn(move || std::net::TcpStream::connect(("127.0.0.1", port)));
            let mut hooks = Vec::new();
            while !hooks.contains(&Hook::Output) {
                let mut batch = Vec::new();
                match queue.recv_batch(&mut batch) {
                    Ok(_) => {}
                    Err(NfQueueError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::Interrupted =>
                    {
                        continue
                    }
                    Err(err) => panic!("{err}"),
                }
                for packet in batch {
                    // TCP flags of a 20-byte IPv4 header + TCP header.
                    let flags = packet.payload[20 + 13];
                    match packet.hook {
                        Hook::Input => assert_eq!(flags & 0x12, 0x02, "INPUT saw a non-SYN first"),
                        Hook::Output => {
                            assert_eq!(flags & 0x12, 0x12, "OUTPUT queued a non-SYN-ACK")
                        }
                        other => panic!("unexpected hook {other:?}"),
                    }
                    hooks.push(packet.hook);
                    queue.verdict(packet.id, Verdict::Accept).unwrap();
                }
            }
            assert_eq!(hooks.first(), Some(&Hook::Input));
            // Release the rest of the handshake (the client's ACK).
            queue.set_nonblocking(true).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !client.is_finished() {
                let mut batch = Vec::new();
                if queue.recv_batch(&mut batch).is_ok() {
                    for p in batch {
                        queue.verdict(p.id, Verdict::Accept).unwrap();
                    }
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "handshake never finished"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            client.join().unwrap().unwrap();

            rules.remove().unwrap();
            rules.remove().unwrap(); // idempotent
            let after = Command::new("iptables").arg("-S").output().unwrap().stdout;
            assert_eq!(
                String::from_utf8_lossy(&before),
                String::from_utf8_lossy(&after)
            );
        })
        .unwrap();
    }
}
