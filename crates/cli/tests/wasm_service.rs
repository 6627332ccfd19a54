//! A WebAssembly service in a 3-node lab: the pub/sub broker of
//! guest/examples/pubsub, built from source for wasm32-unknown-unknown,
//! runs as `kind = "wasm"` on every node. Subscribers hold their
//! connections while a publisher publishes through a kill of the primary:
//! every subscriber receives every message, in order, exactly once, on its
//! original connection, with no RST; every node reports the module's hash
//! as its kind; the replicas' state hashes are equal afterwards.
//!
//! Needs root; runs in CI; fails, never skips.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

mod common;
use common::*;
use tandem_lab::{Lab, LabGuard, LabSpec, ServiceKind};

const SUBSCRIBERS: usize = 4;
const MESSAGES: u64 = 150;
/// The kill comes after this many messages were acknowledged.
const KILL_AFTER: u64 = 50;

fn connect(lab: &Lab) -> TcpStream {
    let addr = SocketAddr::new(lab.vip().into(), lab.port());
    let stream = lab
        .run_in(None, move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        })
        .expect("client namespace")
        .expect("connect to the wasm service");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

fn read_line(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    let n = reader.read_line(&mut line).expect("read a line");
    assert!(n > 0, "the service closed the connection");
    line
}

#[test]
fn pubsub_subscribers_keep_every_message_across_a_kill_of_the_primary() {
    let module = tandem_wasm::guest_build::build_example("pubsub").expect("build the guest");
    let bytes = std::fs::read(&module).unwrap();
    let kind = format!(
        "wasm:{}",
        tandem_wasm::registry::hex(&Sha256::digest(&bytes)[..8])
    );
    let spec = LabSpec::named(format!("wsmps{}", std::process::id() % 10_000))
        .with_nodes(3)
        .with_service(ServiceKind::Wasm)
        .with_service_option("module", format!("{:?}", module.display().to_string()));
    let daemon = Path::new(env!("CARGO_BIN_EXE_tandem"));
    let mut guard =
        LabGuard::new(Lab::up_with_daemon(&spec, Some(daemon)).expect("lab up with 3 daemons"));
    let lab: &mut Lab = &mut guard;
    let first = wait_healthy(lab, "start");
    for id in lab.node_ids() {
        let r = report(lab, id).expect("status");
        assert_eq!(r.service.kind, kind, "node {id} runs other bytes");
    }

    // Subscribers, each confirmed before anything is published.
    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let stream = connect(lab);
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        (&stream).write_all(b"SUBSCRIBE news\n").unwrap();
        assert_eq!(read_line(&mut reader), "+OK news\n");
        subscribers.push(std::thread::spawn(move || {
            let _keep = stream;
            (0..MESSAGES)
                .map(|_| read_line(&mut reader))
                .collect::<Vec<String>>()
        }));
    }
    let rst_before = lab.client_rst_count().unwrap();

    // The publisher: one message at a time, each acknowledged with the
    // number of subscribers it reached.
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let stream = connect(lab);
        let published = Arc::clone(&published);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            for i in 0..MESSAGES {
                (&stream)
                    .write_all(format!("PUBLISH news message-{i}\n").as_bytes())
                    .unwrap();
                assert_eq!(
                    read_line(&mut reader),
                    format!("+OK {SUBSCRIBERS}\n"),
                    "message {i}"
                );
                published.store(i + 1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while published.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "publishing stalled before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    lab.kill(first).expect("kill the primary");
    let killed_at = published.load(Ordering::SeqCst);
    publisher
        .join()
        .expect("the publisher saw every acknowledgement");
    let expected: Vec<String> = (0..MESSAGES)
        .map(|i| format!("MESSAGE news message-{i}\n"))
        .collect();
    for (k, s) in subscribers.into_iter().enumerate() {
        let got = s.join().expect("subscriber read every message");
        assert_eq!(got, expected, "subscriber {k}");
    }
    assert!(
        killed_at < MESSAGES,
        "the kill came after the last message ({killed_at})"
    );
    assert_eq!(
        lab.client_rst_count().unwrap(),
        rst_before,
        "a client connection was reset"
    );

    // The killed node comes back, catches up, and all three agree.
    lab.restart(first).expect("restart the killed node");
    wait_healthy(lab, "after the restart");
    let hashes = settled_hashes(lab);
    assert!(
        hashes.iter().all(|h| h.2 == hashes[0].2 && !h.2.is_empty()),
        "state hashes differ: {hashes:?}"
    );
    for id in lab.node_ids() {
        assert_eq!(report(lab, id).expect("status").service.kind, kind);
    }
}
