//! TCP_REPAIR dump and restore against the real kernel.
//!
//! Every test runs in a private network namespace of its own (loopback only,
//! gone when the test ends), so nothing leaks and tests run in parallel. The
//! "client" is an ordinary socket; the "server" socket is the one dumped,
//! closed silently and restored, in the same namespace: the restore has to
//! bind the listener's port while the listener is still there, as on a real
//! node.
//!
//! The network lock of a real move is played by an iptables rule in the
//! private namespace that drops one direction of the connection on input
//! (after the sender has counted its segments as sent). These tests need
//! root; they fail without it, never skip.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tandem_core::image::{ImageError, SocketImage, TcpState};
use tandem_sys::netns::run_in_private;
use tandem_sys::tcp_repair::{
    close_silently, dump, leave_repair, restore, tcp_state, RepairError, RestoreOptions,
};

// ---------------------------------------------------------------- helpers

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Loopback's MTU in this namespace (65536 by default).
fn set_lo_mtu(mtu: u32) {
    run("ip", &["link", "set", "lo", "mtu", &mtu.to_string()]);
}

/// Starts (or stops) dropping the TCP segments from `from` to `to` as they
/// arrive. The command runs in this thread's namespace: a child process
/// inherits the namespaces of the thread that starts it.
fn drop_packets(from: SocketAddr, to: SocketAddr, on: bool) {
    let (sport, dport) = (from.port().to_string(), to.port().to_string());
    let iptables = if from.is_ipv4() {
        "iptables"
    } else {
        "ip6tables"
    };
    run(
        iptables,
        &[
            "-w",
            if on { "-I" } else { "-D" },
            "INPUT",
            "-p",
            "tcp",
            "--sport",
            &sport,
            "--dport",
            &dport,
            "-j",
            "DROP",
        ],
    );
}

fn setsockopt_int(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: a valid descriptor and a pointer to a live int of the length given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        r,
        0,
        "setsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
}

fn getsockopt_int(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> libc::c_int {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid descriptor; the kernel writes at most `len` bytes to `value`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "getsockopt: {}", std::io::Error::last_os_error());
    value
}

const SO_SNDBUFFORCE: libc::c_int = 32;
const SO_RCVBUFFORCE: libc::c_int = 33;
const SO_MARK: libc::c_int = 36;

/// (unread, unacknowledged, never sent) as the kernel counts them
/// (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD).
fn queues(fd: BorrowedFd<'_>) -> (i32, i32, i32) {
    let mut values = [0 as libc::c_int; 3];
    for (value, request) in values.iter_mut().zip([0x541B, 0x5411, 0x894B]) {
        // SAFETY: these three ioctls write one int through the pointer.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, value as *mut libc::c_int) };
        assert_eq!(r, 0, "ioctl: {}", std::io::Error::last_os_error());
    }
    (values[0], values[1], values[2])
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until the queues of both ends stop changing.
fn quiesce(a: BorrowedFd<'_>, b: BorrowedFd<'_>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = (queues(a), queues(b));
    let mut stable = 0;
    while stable < 4 {
        std::thread::sleep(Duration::from_millis(5));
        let now = (queues(a), queues(b));
        if now == last {
            stable += 1;
        } else {
            stable = 0;
            last = now;
        }
        assert!(
            Instant::now() < deadline,
            "the queues never settled: {last:?}"
        );
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// A connection in this namespace: the listener (kept open, as on a server
/// node), the client end and the accepted server end.
struct Connection {
    listener: TcpListener,
    client: TcpStream,
    server: TcpStream,
}

fn connect_on(ip: &str) -> Connection {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    // Room for several MB of unread bytes at the server: accepted sockets
    // inherit the listener's buffer size.
    setsockopt_int(listener.as_fd(), libc::SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20);
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    // Room for everything the server writes while the client cannot take it.
    setsockopt_int(server.as_fd(), libc::SOL_SOCKET, SO_SNDBUFFORCE, 16 << 20);
    for end in [&client, &server] {
        end.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        end.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
    }
    Connection {
        listener,
        client,
        server,
    }
}

fn connect() -> Connection {
    connect_on("127.0.0.1")
}

/// Checks both directions still work, byte for byte.
fn exchange(client: &mut TcpStream, server: &mut TcpStream, tag: &[u8]) {
    client.write_all(tag).unwrap();
    let mut got = vec![0; tag.len()];
    server.read_exact(&mut got).unwrap();
    assert_eq!(got, tag);
    server.write_all(tag).unwrap();
    client.read_exact(&mut got).unwrap();
    assert_eq!(got, tag);
}

fn summary(i: &SocketImage) -> String {
    format!(
        "{} rcv_nxt {} write_seq {} recv {} B, send {} B ({} unsent), mss {}, {:?}, ts {}, {:?}",
        i.state,
        i.rcv_nxt,
        i.write_seq,
        i.recv_queue.len(),
        i.send_queue.len(),
        i.unsent_len,
        i.mss,
        i.options,
        i.timestamp,
        i.window
    )
}

/// The byte stream is the same: addresses, sequence numbers, queues and
/// the options agreed in the handshake.
fn assert_same_stream(a: &SocketImage, b: &SocketImage) {
    let context = format!("\n A {}\n B {}", summary(a), summary(b));
    assert_eq!(b.local, a.local, "{context}");
    assert_eq!(b.peer, a.peer, "{context}");
    assert_eq!(b.rcv_nxt, a.rcv_nxt, "rcv_nxt{context}");
    assert_eq!(b.write_seq, a.write_seq, "write_seq{context}");
    assert!(
        b.recv_queue == a.recv_queue,
        "receive queues differ{context}"
    );
    assert!(b.send_queue == a.send_queue, "send queues differ{context}");
    assert_eq!(b.mss, a.mss, "mss{context}");
    assert_eq!(b.options, a.options, "options{context}");
}

/// Every field that must survive a dump → restore → dump unchanged, apart
/// from those a test looks at itself (state, unsent_len, the window fields
/// the restore moves).
fn assert_same_connection(a: &SocketImage, b: &SocketImage) {
    assert_same_stream(a, b);
    let context = format!("\n A {}\n B {}", summary(a), summary(b));
    // The timestamp clock goes on from where it was (milliseconds).
    assert!(
        b.timestamp.wrapping_sub(a.timestamp) < 5_000,
        "timestamp{context}"
    );
    assert_eq!(b.window.snd_wnd, a.window.snd_wnd, "snd_wnd{context}");
    assert_eq!(
        b.window.max_window, a.window.max_window,
        "max_window{context}"
    );
}

// ------------------------------------------------------------ round trip

/// What the stand-in for the network lock drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lock {
    /// The client's segments to the server, as a real lock does: the server's
    /// bytes reach the client, but their acknowledgements are lost, so they
    /// stay in flight at the server.
    ClientToServer,
    /// The server's segments to the client: bytes in flight were really
    /// lost, and the restored socket has to retransmit them.
    ServerToClient,
}

#[derive(Debug, Clone)]
struct Case {
    /// Bytes the client sends and the server leaves unread.
    unread: usize,
    /// Bytes the server sends before the lock; the client does not read them.
    delivered: usize,
    /// Bytes the server writes under the lock: in flight as far as the
    /// windows allow, never sent beyond.
    locked: usize,
    /// The server shuts down its sending side before the dump (FIN_WAIT1).
    half_close: bool,
    /// Loopback's MTU: 1500 and 9000 as on real links, 65536 (the default)
    /// for an mss above what TCP_MAXSEG accepts.
    mtu: u32,
    seed: u8,
}

fn size(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![Just(0), 1..2_000usize, 1..max]
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        size(400_000),
        size(150_000),
        size(600_000),
        proptest::bool::weighted(0.25),
        prop_oneof![Just(1500u32), Just(9000), Just(65536)],
        any::<u8>(),
    )
        .prop_map(|(unread, delivered, locked, half_close, mtu, seed)| Case {
            unread,
            delivered,
            locked,
            half_close,
            mtu,
            seed,
        })
}

/// Builds the connection described by `case`, moves its server end, and
/// checks the move byte for byte.
fn round_trip(case: &Case, lock: Lock) {
    set_lo_mtu(case.mtu);
    let Connection {
        listener,
        mut client,
        mut server,
    } = connect();
    let to_server = pattern(case.unread, case.seed);
    let to_client = pattern(case.delivered + case.locked, case.seed.wrapping_add(1));

    // Unread bytes at the server, unread bytes at the client.
    client.write_all(&to_server).unwrap();
    wait_for("the server's receive queue", || {
        queues(server.as_fd()).0 as usize == case.unread
    });
    server.write_all(&to_client[..case.delivered]).unwrap();
    // Until nothing is in flight: what was sent is acknowledged, and what the
    // client's window could not take waits at the server.
    wait_for("the server's bytes to be acknowledged", || {
        let (_, outq, unsent) = queues(server.as_fd());
        outq == unsent
    });
    quiesce(server.as_fd(), client.as_fd());

    let server_addr = server.local_addr().unwrap();
    let client_addr = client.local_addr().unwrap();
    let (from, to) = match lock {
        Lock::ClientToServer => (client_addr, server_addr),
        Lock::ServerToClient => (server_addr, client_addr),
    };
    drop_packets(from, to, true);
    server.write_all(&to_client[case.delivered..]).unwrap();
    if case.half_close {
        server.shutdown(Shutdown::Write).unwrap();
    }
    quiesce(server.as_fd(), client.as_fd());
    let (_, outq, unsent) = queues(server.as_fd());

    let a = dump(server.as_fd()).unwrap();
    let expected_state = if case.half_close {
        TcpState::FinWait1
    } else {
        TcpState::Established
    };
    assert_eq!(a.state, expected_state);
    assert_eq!(a.local, server_addr);
    assert_eq!(a.peer, client_addr);
    assert!(
        a.recv_queue == to_server,
        "the image holds the unread bytes"
    );
    assert!(
        to_client.ends_with(&a.send_queue),
        "the send queue is the unacknowledged end of what the server wrote"
    );
    assert!(
        a.send_queue.len() >= case.locked,
        "nothing written under the lock can be acknowledged"
    );
    let fin = usize::from(case.half_close);
    assert_eq!(a.send_queue.len() + fin, outq as usize);
    assert_eq!(a.unsent_len as usize, (unsent as usize).saturating_sub(fin));
    assert!(a.options.sack && a.options.timestamps && a.options.window_scale.is_some());
    // The mss clamp is the peer's MSS option: the largest IPv4 packet the
    // MTU allows, less 40 bytes of headers.
    assert_eq!(a.mss, case.mtu.min(65535) - 40);

    close_silently(OwnedFd::from(server)).unwrap();
    // Silence: the client still has its connection (half closed if it got
    // the server's FIN before the dump).
    let client_state = tcp_state(client.as_fd()).unwrap();
    assert!(
        client_state == TcpState::Established
            || (case.half_close && client_state == TcpState::CloseWait),
        "the client's socket is {client_state}"
    );

    let restored = restore(&a, &RestoreOptions::default()).unwrap();
    let b = dump(restored.as_fd()).unwrap();
    let context = format!("{case:?}\n A {}\n B {}", summary(&a), summary(&b));
    assert_same_connection(&a, &b);
    assert_eq!(b.state, a.state, "{context}");
    if a.mss <= 32767 {
        assert_eq!(b.unsent_len, a.unsent_len, "unsent_len: {context}");
    } else {
        // TCP_MAXSEG accepts at most 32767, so a socket restored with
        // loopback's mss of 65483 starts with smaller segments (the clamp
        // itself is restored, see `mss` above). Where the original held back
        // a segment larger than the peer's window, the restored one may send
        // a smaller one: fewer bytes unsent, never more.
        assert!(b.unsent_len <= a.unsent_len, "unsent_len: {context}");
    }
    // The window fields the kernel legitimately moves when `restore` leaves
    // repair mode: the window probe it sends sets snd_wl1 to rcv_nxt - 1 (so
    // that the peer's next ACK is taken as a window update), and choosing
    // the window the probe advertises sets rcv_wup to rcv_nxt and may widen
    // rcv_wnd, never shrink it (the restored socket's receive buffer is
    // sized for its queue, not copied). A socket whose FIN is queued in
    // repair mode (no never-sent tail to put before it) leaves repair in
    // FIN_WAIT1, where the kernel sends no probe.
    let probed = a.state == TcpState::Established || a.unsent_len > 0;
    let expected_wl1 = if probed {
        b.rcv_nxt.wrapping_sub(1)
    } else {
        a.window.snd_wl1
    };
    assert_eq!(b.window.snd_wl1, expected_wl1, "snd_wl1: {context}");
    assert_eq!(b.window.rcv_wup, b.rcv_nxt, "rcv_wup: {context}");
    assert!(
        b.window.rcv_wnd >= a.window.rcv_wnd,
        "rcv_wnd shrank: {context}"
    );

    // The connection goes on, byte-exact, in both directions.
    drop_packets(from, to, false);
    leave_repair(restored.as_fd()).unwrap();
    let mut server = TcpStream::from(restored);
    // The client speaks first. Leaving repair mode sent a second window
    // probe within milliseconds of the one `restore` sent (whose answer the
    // lock dropped), and the client answers such probes at most every
    // 500 ms (net.ipv4.tcp_invalid_ratelimit): without this segment, and
    // the ACK it carries, the restored socket would wait for its loss probe
    // timer (1 s, having no RTT sample) to learn where the client is.
    client.write_all(b"ping").unwrap();
    let mut got = vec![0; to_client.len()];
    client.read_exact(&mut got).unwrap();
    assert!(got == to_client, "the client got different bytes");
    let mut got = vec![0; to_server.len() + 4];
    server.read_exact(&mut got).unwrap();
    assert!(
        got[..to_server.len()] == to_server,
        "the server read different bytes"
    );
    assert_eq!(&got[to_server.len()..], b"ping");
    if case.half_close {
        assert_eq!(client.read(&mut [0; 1]).unwrap(), 0, "the client sees EOF");
        assert!(server.write_all(b"pong").is_err(), "still shut down");
    } else {
        exchange(&mut client, &mut server, b"after the move");
    }
    drop(listener);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// dump → close silently → restore → dump gives the same image, and the
    /// restored connection carries on exactly where it was.
    #[test]
    fn restore_reproduces_the_dumped_socket(case in arb_case()) {
        run_in_private(|| round_trip(&case, Lock::ClientToServer)).unwrap();
    }
}

/// Bytes the client never got are retransmitted by the restored socket.
#[test]
fn lost_bytes_in_flight_are_retransmitted() {
    let case = Case {
        unread: 3_000,
        delivered: 10_000,
        locked: 200_000,
        half_close: false,
        mtu: 1500,
        seed: 7,
    };
    run_in_private(|| round_trip(&case, Lock::ServerToClient)).unwrap();
}

/// Queues of several MB each way, with loopback's default MTU (an mss above
/// what TCP_MAXSEG accepts).
#[test]
fn big_queues_survive() {
    let case = Case {
        unread: 5 << 20,
        delivered: 30_000,
        locked: 6 << 20,
        half_close: false,
        mtu: 65536,
        seed: 42,
    };
    run_in_private(|| round_trip(&case, Lock::ClientToServer)).unwrap();
}

#[test]
fn ipv6_connections_move_too() {
    run_in_private(|| {
        let Connection {
            listener: _listener,
            mut client,
            mut server,
        } = connect_on("::1");
        exchange(&mut client, &mut server, b"before");
        client.write_all(b"unread by the server").unwrap();
        wait_for("the server's receive queue", || {
            queues(server.as_fd()).0 == 20
        });
        let a = dump(server.as_fd()).unwrap();
        assert!(a.local.is_ipv6() && a.peer.is_ipv6());
        close_silently(OwnedFd::from(server)).unwrap();
        let mut server = TcpStream::from(restore(&a, &RestoreOptions::default()).unwrap());
        let mut got = [0; 20];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"unread by the server");
        exchange(&mut client, &mut server, b"after");
    })
    .unwrap();
}

// ------------------------------------------------------------- silence

#[test]
fn close_silently_sends_neither_fin_nor_rst() {
    run_in_private(|| {
        let Connection {
            listener: _listener,
            mut client,
            mut server,
        } = connect();
        exchange(&mut client, &mut server, b"hello");
        let image = dump(server.as_fd()).unwrap();
        leave_repair(server.as_fd()).unwrap();
        // Another descriptor of the same socket, as a frozen server process
        // would still hold.
        let duplicate = server.try_clone().unwrap();
        // Not in repair mode: close_silently puts it there itself.
        close_silently(OwnedFd::from(server)).unwrap();

        // A FIN would show as end-of-file and CLOSE_WAIT, a RST as an error
        // and CLOSE. The client sees nothing at all.
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let err = client.read(&mut [0; 16]).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{err}"
        );
        assert_eq!(tcp_state(client.as_fd()).unwrap(), TcpState::Established);

        // The connection is gone for the duplicate too, so the same
        // connection can be restored on this node while it is still open,
        // and closing it later sends nothing either.
        assert_eq!(tcp_state(duplicate.as_fd()).unwrap(), TcpState::Close);
        let mut server = TcpStream::from(restore(&image, &RestoreOptions::default()).unwrap());
        drop(duplicate);
        exchange(&mut client, &mut server, b"still the same connection");
    })
    .unwrap();
}

// -------------------------------------------------------- other paths

/// The abort path: dump, then give the socket back to normal life.
#[test]
fn leave_repair_gives_the_socket_back() {
    run_in_private(|| {
        let Connection {
            listener: _listener,
            mut client,
            mut server,
        } = connect();
        exchange(&mut client, &mut server, b"one");
        let a = dump(server.as_fd()).unwrap();
        // Still in repair mode: the application can neither read nor write.
        assert!(server.write(b"x").is_err());
        // Dumping again gives the same image (bar the clock).
        let again = dump(server.as_fd()).unwrap();
        assert_same_connection(&a, &again);
        assert_eq!(again.window, a.window);
        leave_repair(server.as_fd()).unwrap();
        leave_repair(server.as_fd()).unwrap(); // no-op when not in repair mode
        exchange(&mut client, &mut server, b"two");
    })
    .unwrap();
}

/// FIN_WAIT2: the server shut down its side and the client acknowledged it,
/// but the client keeps sending.
#[test]
fn half_closed_fin_wait2_moves() {
    run_in_private(|| {
        let Connection {
            listener: _listener,
            mut client,
            mut server,
        } = connect();
        exchange(&mut client, &mut server, b"hello");
        server.write_all(b"last words").unwrap();
        server.shutdown(Shutdown::Write).unwrap();
        let mut got = [0; 10];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"last words");
        assert_eq!(client.read(&mut [0; 1]).unwrap(), 0);
        client.write_all(b"more").unwrap();
        wait_for("FIN_WAIT2 and the client's bytes", || {
            tcp_state(server.as_fd()).unwrap() == TcpState::FinWait2
                && queues(server.as_fd()).0 == 4
        });

        let a = dump(server.as_fd()).unwrap();
        assert_eq!(a.state, TcpState::FinWait2);
        assert!(a.send_queue.is_empty());
        assert_eq!(a.recv_queue, b"more");
        close_silently(OwnedFd::from(server)).unwrap();
        assert_eq!(tcp_state(client.as_fd()).unwrap(), TcpState::CloseWait);

        let restored = restore(&a, &RestoreOptions::default()).unwrap();
        // The FIN is sent again; the client acknowledges the duplicate at
        // once and the socket is back in FIN_WAIT2.
        wait_for("FIN_WAIT2 again", || {
            tcp_state(restored.as_fd()).unwrap() == TcpState::FinWait2
        });
        // The client's ACK of the duplicate FIN may also have updated the
        // window; the stream itself is the same.
        let b = dump(restored.as_fd()).unwrap();
        assert_same_stream(&a, &b);
        assert_eq!(b.state, TcpState::FinWait2);
        leave_repair(restored.as_fd()).unwrap();

        let mut server = TcpStream::from(restored);
        let mut got = [0; 4];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"more");
        assert!(server.write_all(b"no").is_err(), "still shut down");
        client.write_all(b"again").unwrap();
        let mut got = [0; 5];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"again");
        assert_eq!(client.read(&mut [0; 1]).unwrap(), 0, "no extra bytes");
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(server.read(&mut [0; 1]).unwrap(), 0, "the client's FIN");
    })
    .unwrap();
}

/// A clock override (a node whose clock jumped, say) and a mark.
#[test]
fn restore_options_apply() {
    run_in_private(|| {
        let Connection {
            listener: _listener,
            mut client,
            mut server,
        } = connect();
        exchange(&mut client, &mut server, b"hello");
        let a = dump(server.as_fd()).unwrap();
        close_silently(OwnedFd::from(server)).unwrap();
        let options = RestoreOptions {
            mark: Some(0x7a),
            // Ahead is fine for the peer (behind is not); the odd value
            // checks that the flag bit is not taken from the override.
            timestamp: Some(a.timestamp.wrapping_add(1_000_001)),
        };
        let restored = restore(&a, &options).unwrap();
        assert_eq!(
            getsockopt_int(restored.as_fd(), libc::SOL_SOCKET, SO_MARK),
            0x7a
        );
        assert_eq!(
            getsockopt_int(restored.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR),
            1
        );
        let b = dump(restored.as_fd()).unwrap();
        let ahead = b.timestamp.wrapping_sub(a.timestamp);
        assert!((1_000_000..1_005_000).contains(&ahead), "ahead by {ahead}");
        assert_eq!(b.timestamp & 1, a.timestamp & 1, "the clock's unit flag");
        leave_repair(restored.as_fd()).unwrap();
        let mut server = TcpStream::from(restored);
        exchange(&mut client, &mut server, b"later");
    })
    .unwrap();
}

/// Prints how long dumping and restoring an idle socket takes (run with
/// `--nocapture` to see it); fails only if it is absurdly slow.
#[test]
fn idle_socket_dump_and_restore_are_fast() {
    run_in_private(|| {
        let Connection {
            listener: _listener,
            mut client,
            server,
        } = connect();
        // The lock, so that the client's answers to the restored sockets'
        // window probes cannot reach the port between a close and the next
        // restore (the listener would answer them with a RST).
        let (client_addr, server_addr) =
            (client.local_addr().unwrap(), server.local_addr().unwrap());
        drop_packets(client_addr, server_addr, true);
        let mut server = OwnedFd::from(server);
        let (mut dumps, mut restores) = (Vec::new(), Vec::new());
        for _ in 0..50 {
            let start = Instant::now();
            let image = dump(server.as_fd()).unwrap();
            dumps.push(start.elapsed());
            close_silently(server).unwrap();
            let start = Instant::now();
            server = restore(&image, &RestoreOptions::default()).unwrap();
            restores.push(start.elapsed());
        }
        dumps.sort();
        restores.sort();
        eprintln!(
            "idle socket: dump median {:?} (max {:?}), restore median {:?} (max {:?})",
            dumps[25], dumps[49], restores[25], restores[49]
        );
        assert!(dumps[25] < Duration::from_millis(20));
        assert!(restores[25] < Duration::from_millis(20));
        drop_packets(client_addr, server_addr, false);
        let mut server = TcpStream::from(server);
        exchange(&mut client, &mut server, b"still here");
    })
    .unwrap();
}

// ------------------------------------------------------------- refusals

#[test]
fn a_listening_socket_is_refused() {
    run_in_private(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = dump(listener.as_fd()).unwrap_err();
        assert!(matches!(err, RepairError::Listening), "{err:?}");
        assert!(err.to_string().contains("listening socket"));
        let err = close_silently(OwnedFd::from(listener)).unwrap_err();
        assert!(matches!(err, RepairError::Listening), "{err:?}");
    })
    .unwrap();
}

#[test]
fn descriptors_that_are_not_tcp_are_refused() {
    run_in_private(|| {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = dump(udp.as_fd()).unwrap_err();
        assert!(matches!(err, RepairError::NotTcp { .. }), "{err:?}");
        assert!(err.to_string().contains("UDP"), "{err}");

        let (unix, _other) = UnixStream::pair().unwrap();
        let err = dump(unix.as_fd()).unwrap_err();
        assert!(matches!(err, RepairError::NotTcp { .. }), "{err:?}");

        let mut ends = [0; 2];
        // SAFETY: pipe2 writes two new descriptors into the array.
        assert_eq!(
            unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) },
            0
        );
        // SAFETY: both descriptors are fresh and owned by nothing else.
        let (read_end, _write_end) =
            unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
        let err = dump(read_end.as_fd()).unwrap_err();
        assert!(matches!(err, RepairError::NotTcp { .. }), "{err:?}");
        assert!(err.to_string().contains("not a socket"), "{err}");
        let err = leave_repair(read_end.as_fd()).unwrap_err();
        assert!(matches!(err, RepairError::NotTcp { .. }), "{err:?}");
    })
    .unwrap();
}

/// CLOSE_WAIT: the peer closed its side; refused, and the socket is left
/// untouched (not in repair mode).
#[test]
fn a_socket_whose_peer_closed_is_refused_and_left_alone() {
    run_in_private(|| {
        let Connection {
            listener: _listener,
            mut client,
            mut server,
        } = connect();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(server.read(&mut [0; 1]).unwrap(), 0);
        let err = dump(server.as_fd()).unwrap_err();
        assert!(
            matches!(err, RepairError::UnsupportedState(TcpState::CloseWait)),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("CLOSE_WAIT") && text.contains("FIN"),
            "{text}"
        );
        // Still usable: not left in repair mode.
        server.write_all(b"bye").unwrap();
        let mut got = [0; 3];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"bye");
    })
    .unwrap();
}

#[test]
fn images_that_cannot_be_restored_are_refused() {
    run_in_private(|| {
        let Connection {
            listener: _listener,
            mut client,
            mut server,
        } = connect();
        exchange(&mut client, &mut server, b"hello");
        let good = dump(server.as_fd()).unwrap();
        close_silently(OwnedFd::from(server)).unwrap();

        let mut image = good.clone();
        image.mss = 10;
        let err = restore(&image, &RestoreOptions::default()).unwrap_err();
        assert!(
            matches!(err, RepairError::InvalidImage(ImageError::BadMss(10))),
            "{err:?}"
        );
        let mut image = good.clone();
        image.state = TcpState::CloseWait;
        let err = restore(&image, &RestoreOptions::default()).unwrap_err();
        assert!(
            matches!(err, RepairError::UnsupportedState(TcpState::CloseWait)),
            "{err:?}"
        );
        let mut image = good.clone();
        image.state = TcpState::Listen;
        let err = restore(&image, &RestoreOptions::default()).unwrap_err();
        assert!(matches!(err, RepairError::Listening), "{err:?}");

        // The kernel refuses a window whose maximum is below the current
        // window: the error names the step, and the half-built socket goes
        // away without a sound.
        let mut image = good.clone();
        image.window.max_window = 0;
        image.window.snd_wnd = 1000;
        let err = restore(&image, &RestoreOptions::default()).unwrap_err();
        match &err {
            RepairError::Sys { step, .. } => assert!(step.contains("TCP_REPAIR_WINDOW"), "{err}"),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("TCP_REPAIR_WINDOW"));
        assert_eq!(tcp_state(client.as_fd()).unwrap(), TcpState::Established);

        let mut server = TcpStream::from(restore(&good, &RestoreOptions::default()).unwrap());
        exchange(&mut client, &mut server, b"after the failed attempt");
    })
    .unwrap();
}

/// Without CAP_NET_ADMIN the kernel refuses TCP_REPAIR; the error says so.
/// Capabilities belong to a thread, so this thread drops its own.
#[test]
fn missing_capability_is_named() {
    run_in_private(|| {
        let Connection {
            listener: _listener,
            mut client,
            mut server,
        } = connect();
        let image = dump(server.as_fd()).unwrap();
        leave_repair(server.as_fd()).unwrap();

        drop_net_admin();
        let err = dump(server.as_fd()).unwrap_err();
        assert!(matches!(err, RepairError::NotPermitted), "{err:?}");
        assert!(err.to_string().contains("CAP_NET_ADMIN"));
        let err = restore(&image, &RestoreOptions::default()).unwrap_err();
        assert!(matches!(err, RepairError::NotPermitted), "{err:?}");
        // The refused dump left the socket as it was.
        exchange(&mut client, &mut server, b"untouched");
    })
    .unwrap();
}

/// Removes CAP_NET_ADMIN from the calling thread's effective set.
fn drop_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget fills two Data entries for version 3; pid 0 is this thread.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(r, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_NET_ADMIN);
    // SAFETY: as above; capset only changes this thread's credentials.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    assert_eq!(r, 0, "capset: {}", std::io::Error::last_os_error());
}

/// Bytes the client sent while the connection was frozen, taken across and
/// appended to the prepared socket's receive queue, reach the application
/// at once and are acknowledged: the client's retransmission is a duplicate.
#[test]
fn bytes_received_while_frozen_can_be_appended_before_going_live() {
    run_in_private(|| {
        let Connection {
            listener: _listener,
            mut client,
            mut server,
        } = connect();
        exchange(&mut client, &mut server, b"before");
        let (client_addr, server_addr) =
            (client.local_addr().unwrap(), server.local_addr().unwrap());
        drop_packets(client_addr, server_addr, true);
        client.write_all(b"frozen").unwrap();
        let image = dump(server.as_fd()).unwrap();
        close_silently(server.into()).unwrap();

        let mut prepared =
            tandem_sys::tcp_repair::prepare(&image, &RestoreOptions::default()).unwrap();
        assert_eq!(prepared.rcv_nxt(), image.rcv_nxt);
        assert_eq!(prepared.peer(), client_addr);
        prepared.append_received(b"frozen").unwrap();
        assert_eq!(prepared.rcv_nxt(), image.rcv_nxt.wrapping_add(6));
        drop_packets(client_addr, server_addr, false);
        let mut server = TcpStream::from(prepared.go_live().unwrap());
        let mut got = [0u8; 6];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"frozen");
        // The client learns its bytes arrived, and nothing is delivered twice.
        wait_for("the client's bytes acknowledged", || {
            queues(client.as_fd()).1 == 0
        });
        exchange(&mut client, &mut server, b"after");
    })
    .unwrap();
}
