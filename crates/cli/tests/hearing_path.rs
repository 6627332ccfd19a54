//! Issue 14, step 1: the path that lets every clone hear the clients, proven
//! on this kernel before anything is built on it (docs/hearing.md says what
//! was found and what a real network adds).
//!
//! The mechanism is the one Linux's old CLUSTERIP and NLB's multicast mode
//! used: the VIP resolves to a multicast MAC, so the bridge (or switch)
//! floods every client frame to every node. A plain namespace lab — one
//! bridge, a client and three nodes, no tandem daemon — checks the kernel
//! facts the design depends on:
//!
//! 1. every node receives the client's frames for the VIP;
//! 2. the primary's TCP drops them (they arrive as PACKET_MULTICAST) until
//!    an nftables rule rewrites `meta pkttype` to `host` — then it serves;
//! 3. the clones' kernels neither answer nor forward what they hear, even
//!    with forwarding on;
//! 4. a Linux client accepts an ARP reply that names a multicast MAC for the
//!    VIP and sends its frames there.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const VIP: &str = "198.19.77.100";
/// Locally administered, group bit set, not an IPv4-multicast MAC: IGMP
/// snooping leaves it alone (NLB's multicast mode uses 03:bf:...).
const GROUP_MAC: &str = "03:00:5e:13:4d:64";
const PORT: u16 = 7077;

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The namespaces and bridge of one run; removed on drop.
struct Lab {
    prefix: String,
}

impl Lab {
    fn ns(&self, n: &str) -> String {
        format!("{}-{n}", self.prefix)
    }

    fn up() -> Lab {
        let prefix = format!("thp{}", std::process::id() % 100_000);
        let lab = Lab { prefix };
        let br = format!("{}br", lab.prefix);
        run(&["ip", "link", "add", &br, "type", "bridge"]);
        run(&["ip", "link", "set", &br, "up"]);
        for (n, addr) in [
            ("c", "198.19.77.2/24"),
            ("1", "198.19.77.11/24"),
            ("2", "198.19.77.12/24"),
            ("3", "198.19.77.13/24"),
        ] {
            let ns = lab.ns(n);
            let (inner, outer) = (format!("{}v{n}", lab.prefix), format!("{}p{n}", lab.prefix));
            run(&["ip", "netns", "add", &ns]);
            run(&[
                "ip", "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ]);
            run(&["ip", "link", "set", &inner, "netns", &ns]);
            run(&["ip", "link", "set", &outer, "master", &br, "up"]);
            run(&["ip", "-n", &ns, "link", "set", &inner, "name", "eth0"]);
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            run(&["ip", "-n", &ns, "addr", "add", addr, "dev", "eth0"]);
            if n != "c" {
                // Every node joins the group MAC (on a real NIC this opens
                // its MAC filter; a veth filters nothing).
                run(&["ip", "-n", &ns, "maddr", "add", GROUP_MAC, "dev", "eth0"]);
            }
        }
        run(&[
            "ip",
            "-n",
            &lab.ns("1"),
            "addr",
            "add",
            &format!("{VIP}/32"),
            "dev",
            "eth0",
        ]);
        lab
    }

    fn exec(&self, n: &str, args: &[&str]) -> String {
        let ns = self.ns(n);
        let mut full = vec!["ip", "netns", "exec", &ns];
        full.extend_from_slice(args);
        run(&full)
    }

    /// `nstat`'s absolute value of a kernel counter in namespace `n`.
    fn counter(&self, n: &str, name: &str) -> u64 {
        let out = self.exec(n, &["nstat", "-az", name]);
        out.lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(name)).then(|| f.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    }

    /// Connects from the client to the VIP and echoes one line; the error
    /// if the handshake or the echo does not complete within `limit`.
    fn client_echo(&self, limit: Duration) -> Result<(), String> {
        tandem_sys::netns::run_in(&self.ns("c"), || {
            let addr: SocketAddr = format!("{VIP}:{PORT}").parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, limit).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(limit)).unwrap();
            s.write_all(b"heard?\n").map_err(|e| e.to_string())?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).map_err(|e| e.to_string())?;
            (&buf == b"HEARD?\n")
                .then_some(())
                .ok_or_else(|| format!("echo {buf:?}"))
        })
        .expect("enter the client namespace")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in ["c", "1", "2", "3"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}br", self.prefix)])
            .status();
    }
}

/// An upper-casing echo server on the primary's VIP, for the whole test.
fn serve_on_primary(lab: &Lab) {
    let ns = lab.ns("1");
    std::thread::spawn(move || {
        tandem_sys::netns::run_in(&ns, || {
            let listener = TcpListener::bind((VIP, PORT)).expect("listen on the VIP");
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 64];
                if let Ok(n) = conn.read(&mut buf) {
                    let _ = conn.write_all(&buf[..n].to_ascii_uppercase());
                }
            }
        })
        .expect("enter the primary's namespace");
    });
    std::thread::sleep(Duration::from_millis(200));
}

/// Answers the client's ARP requests for the VIP with the group MAC, as a
/// hearing-mode primary would (the kernel's own answer is dropped by nft).
fn arp_responder(lab: &Lab, seconds: u32) -> Child {
    const SCRIPT: &str = r#"
import socket, struct, sys, time
vip = socket.inet_aton(sys.argv[1]); group = bytes.fromhex(sys.argv[2].replace(':', ''))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)); s.bind(('eth0', 0))
own = s.getsockname()[4]; s.settimeout(0.2); end = time.time() + float(sys.argv[3])
print('ready', flush=True)
while time.time() < end:
    try: f = s.recv(128)
    except socket.timeout: continue
    if struct.unpack('!H', f[20:22])[0] == 1 and f[38:42] == vip:
        s.send(f[6:12] + own + b'\x08\x06' + struct.pack('!HHBBH', 1, 0x0800, 6, 4, 2)
               + group + vip + f[22:28] + f[28:32])
"#;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("1"), "python3", "-c", SCRIPT])
        .args([VIP, GROUP_MAC, &seconds.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 for the ARP responder");
    let mut ready = [0u8; 6];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .expect("the ARP responder starts");
    child
}

#[test]
fn every_node_hears_the_clients_and_only_the_primary_answers() {
    let lab = Lab::up();
    serve_on_primary(&lab);
    // A clone with forwarding on must still not forward what it hears.
    lab.exec("2", &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let c = lab.ns("c");
    run(&[
        "ip",
        "-n",
        &c,
        "neigh",
        "replace",
        VIP,
        "lladdr",
        GROUP_MAC,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let clones = ["2", "3"];
    let heard = |lab: &Lab| clones.map(|n| lab.counter(n, "IpInReceives"));
    let sent = |lab: &Lab| {
        clones.map(|n| {
            (
                lab.counter(n, "IpOutRequests"),
                lab.counter(n, "IpForwDatagrams"),
            )
        })
    };
    let (heard_before, sent_before) = (heard(&lab), sent(&lab));

    // 1 + 2: frames to the group MAC reach everyone, and the primary's TCP
    // ignores them as multicast.
    let refused = lab.client_echo(Duration::from_millis(1500));
    assert!(
        refused.is_err(),
        "the primary served frames sent to a multicast MAC without the pkttype rule"
    );
    let heard_after = heard(&lab);
    for (i, n) in clones.iter().enumerate() {
        assert!(
            heard_after[i] > heard_before[i],
            "clone {n} heard none of the client's frames"
        );
    }

    // 2: rewritten to `host` before conntrack and routing, they are served.
    lab.exec(
        "1",
        &[
            "nft",
            &format!(
                "add table ip hear; add chain ip hear pre {{ type filter hook prerouting \
                 priority -300; }}; add rule ip hear pre ip daddr {VIP} meta pkttype multicast \
                 meta pkttype set host"
            ),
        ],
    );
    lab.client_echo(Duration::from_secs(3))
        .expect("the primary serves once the pkttype is rewritten");

    // 3: the clones heard the whole exchange and sent nothing.
    let heard_end = heard(&lab);
    for (i, n) in clones.iter().enumerate() {
        assert!(heard_end[i] > heard_after[i], "clone {n} heard nothing");
    }
    assert_eq!(
        sent(&lab),
        sent_before,
        "a clone answered or forwarded (IpOutRequests, IpForwDatagrams)"
    );

    // 4: a client that asks by ARP learns the group MAC and is served.
    run(&["ip", "-n", &c, "neigh", "del", VIP, "dev", "eth0"]);
    lab.exec(
        "1",
        &[
            "nft",
            &format!(
                "add table arp hear; add chain arp hear in {{ type filter hook input priority 0; \
                 }}; add rule arp hear in arp operation request arp daddr ip {VIP} drop"
            ),
        ],
    );
    let mut responder = arp_responder(&lab, 10);
    let served = lab.client_echo(Duration::from_secs(3));
    let _ = responder.kill();
    let _ = responder.wait();
    served.expect("the client is served through the ARP-learned group MAC");
    let neigh = run(&["ip", "-n", &c, "neigh", "show", VIP, "dev", "eth0"]);
    assert!(
        neigh.contains(GROUP_MAC),
        "the client's entry for the VIP is {neigh:?}, not the group MAC"
    );
}
