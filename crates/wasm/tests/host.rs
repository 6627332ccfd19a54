//! The wasm host against real guests built from source (guest/examples):
//! the pub/sub broker works through the runtime, two instances agree byte
//! for byte, a hostile guest is contained identically on two instances, and
//! a snapshot taken mid-stream restores to an instance that carries on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tandem_core::sdk::{Action, ConnId, Event, Millis, Runtime, Service};
use tandem_wasm::{guest_build, registry, LoadedModule, WasmConfig, WasmService};

fn example(name: &'static str) -> Vec<u8> {
    static PUBSUB: OnceLock<PathBuf> = OnceLock::new();
    static HOSTILE: OnceLock<PathBuf> = OnceLock::new();
    let cell = if name == "pubsub" { &PUBSUB } else { &HOSTILE };
    let path = cell.get_or_init(|| guest_build::build_example(name).unwrap());
    std::fs::read(path).unwrap()
}

fn load(name: &'static str, config: WasmConfig) -> Arc<LoadedModule> {
    LoadedModule::load(&example(name), config).unwrap()
}

fn runtime(module: &Arc<LoadedModule>) -> Runtime {
    Runtime::new(Box::new(WasmService::new(Arc::clone(module)).unwrap()), 42)
}

fn peer(n: u64) -> SocketAddr {
    format!("198.18.0.9:{}", 40000 + n).parse().unwrap()
}

fn open(c: u64) -> Event {
    Event::Opened {
        conn: ConnId(c),
        peer: peer(c),
    }
}

fn data(c: u64, bytes: &[u8]) -> Event {
    Event::Data {
        conn: ConnId(c),
        bytes: bytes.to_vec(),
    }
}

/// Applies events one per entry from index `*index` and returns every
/// action.
fn feed(rt: &mut Runtime, index: &mut u64, events: Vec<Event>) -> Vec<Action> {
    let mut out = Vec::new();
    for e in events {
        *index += 1;
        out.extend(rt.apply(*index, Millis(1_000 + *index), e));
    }
    out
}

/// What the actions sent to `conn`, concatenated.
fn sent(actions: &[Action], conn: u64) -> String {
    let mut out = Vec::new();
    for a in actions {
        if let Action::Send { conn: c, bytes } = a {
            if c.0 == conn {
                out.extend_from_slice(bytes);
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn aborted(actions: &[Action], conn: u64) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Abort { conn: c } if c.0 == conn))
}

#[test]
fn the_broker_delivers_to_subscribers_in_log_order() {
    let module = load("pubsub", WasmConfig::default());
    let mut rt = runtime(&module);
    let mut i = 0;
    let mut acts = feed(&mut rt, &mut i, vec![open(1), open(2), open(3)]);
    acts.extend(feed(
        &mut rt,
        &mut i,
        vec![
            data(1, b"SUBSCRIBE news\n"),
            data(2, b"SUBSCRIBE news\nSUBSCRIBE sport\n"),
            // A command split across events, and two in one.
            data(3, b"PUBLISH news hel"),
            data(3, b"lo world\nPUBLISH sport goal\nPING\n"),
            data(2, b"UNSUBSCRIBE news\n"),
            data(3, b"PUBLISH news again\nNONSENSE\n"),
        ],
    ));
    assert_eq!(
        sent(&acts, 1),
        "+OK news\nMESSAGE news hello world\nMESSAGE news again\n"
    );
    assert_eq!(
        sent(&acts, 2),
        "+OK news\n+OK sport\nMESSAGE news hello world\nMESSAGE sport goal\n+OK news\n"
    );
    assert_eq!(
        sent(&acts, 3),
        "+OK 2\n+OK 1\n+PONG\n+OK 1\n-ERR unknown command\n"
    );
    // A FIN shuts the connection down and ends its subscriptions.
    let acts = feed(
        &mut rt,
        &mut i,
        vec![
            Event::PeerClosed { conn: ConnId(1) },
            data(3, b"PUBLISH news gone\n"),
        ],
    );
    assert!(acts.contains(&Action::Close { conn: ConnId(1) }));
    assert_eq!(sent(&acts, 1), "");
    assert_eq!(sent(&acts, 3), "+OK 0\n");
    // memory_bytes is the instance's linear memory: whole pages.
    let memory = rt.service().memory_bytes();
    assert!(memory >= 65536 && memory.is_multiple_of(65536), "{memory}");
}

/// A deterministic mix of subscribes, publishes, splits and closes.
fn workload(seed: u64, n: usize) -> Vec<Event> {
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    };
    let mut events: Vec<Event> = (1..=6).map(open).collect();
    for k in 0..n {
        let conn = 1 + next() % 6;
        let topic = ["a", "b", "c"][(next() % 3) as usize];
        let line = match next() % 4 {
            0 => format!("SUBSCRIBE {topic}\n"),
            1 => format!("UNSUBSCRIBE {topic}\n"),
            _ => format!("PUBLISH {topic} message-{k}-{}\n", next()),
        };
        let cut = (next() as usize) % line.len();
        events.push(data(conn, &line.as_bytes()[..cut]));
        events.push(data(conn, &line.as_bytes()[cut..]));
    }
    events
}

#[test]
fn two_instances_fed_the_same_events_agree_byte_for_byte() {
    let module = load("pubsub", WasmConfig::default());
    let (mut a, mut b) = (runtime(&module), runtime(&module));
    let (mut ia, mut ib) = (0, 0);
    let mut total = 0;
    for e in workload(7, 400) {
        let x = feed(&mut a, &mut ia, vec![e.clone()]);
        let y = feed(&mut b, &mut ib, vec![e]);
        assert_eq!(x, y);
        total += x.len();
        assert_eq!(a.state_hash(), b.state_hash());
    }
    assert!(
        total > 400,
        "the workload produced too little output: {total}"
    );
    // A different history gives a different state.
    let mut c = runtime(&module);
    let mut ic = 0;
    feed(&mut c, &mut ic, workload(8, 400));
    assert_ne!(a.state_hash(), c.state_hash());
}

/// Fuel enough for the bomb to reach the memory bound first (zeroing 16
/// MiB a byte at a time), little enough that the endless loop is quick.
fn hostile_config() -> WasmConfig {
    WasmConfig {
        fuel_per_event: 200_000_000,
        max_memory: 16 * 1024 * 1024,
        ..WasmConfig::default()
    }
}

#[test]
fn a_hostile_guest_loses_only_the_offending_connection_identically_everywhere() {
    let module = load("hostile", hostile_config());
    let (mut a, mut b) = (runtime(&module), runtime(&module));
    let (mut ia, mut ib) = (0, 0);
    let mut both = |events: Vec<Event>| {
        let x = feed(&mut a, &mut ia, events.clone());
        let y = feed(&mut b, &mut ib, events);
        assert_eq!(x, y, "the two instances diverged");
        assert_eq!(a.state_hash(), b.state_hash());
        assert_eq!(a.service().memory_bytes(), b.service().memory_bytes());
        (x, a.service().memory_bytes())
    };
    let (acts, base_memory) = both(vec![open(1), data(1, b"hello\n")]);
    assert_eq!(sent(&acts, 1), "hello\n");
    for (conn, command) in [(2, "LOOP"), (3, "BOMB"), (4, "TRAP"), (5, "DEEP")] {
        let input = format!("before {conn}\n{command}\n");
        let (acts, memory) = both(vec![open(conn), data(conn, input.as_bytes())]);
        // Nothing the failed event sent leaves; its connection is reset.
        assert_eq!(sent(&acts, conn), "", "{command}");
        assert!(aborted(&acts, conn), "{command}: connection not reset");
        // The event was rolled back: memory (a bomb's included) too.
        assert_eq!(memory, base_memory, "{command}");
        // The other connection carries on, and the guest's count shows the
        // failed event's lines were undone: hello, then ok-N, then COUNT.
        let line = format!("ok {conn}\nCOUNT\n");
        let (acts, _) = both(vec![data(1, line.as_bytes())]);
        let expect_count = 1 + 2 * (conn - 1);
        assert_eq!(
            sent(&acts, 1),
            format!("ok {conn}\n{expect_count}\n"),
            "{command}"
        );
    }
}

#[test]
fn a_snapshot_mid_stream_restores_to_an_instance_that_carries_on() {
    let module = load("pubsub", WasmConfig::default());
    registry::register(Arc::clone(&module));
    let events = workload(11, 300);
    let (first, rest) = events.split_at(events.len() / 2);
    let mut a = runtime(&module);
    let mut ia = 0;
    feed(&mut a, &mut ia, first.to_vec());
    let mut service = WasmService::new(Arc::clone(&module)).unwrap();
    // The runtime's own snapshot carries the service's; restore it whole.
    let taken = a.snapshot();
    let mut b = Runtime::restore(&taken, |bytes| {
        Ok(Box::new(<WasmService as Service>::restore(bytes)?) as Box<dyn Service>)
    })
    .unwrap();
    assert_eq!(a.state_hash(), b.state_hash());
    let mut ib = ia;
    for e in rest {
        let x = feed(&mut a, &mut ia, vec![e.clone()]);
        let y = feed(&mut b, &mut ib, vec![e.clone()]);
        assert_eq!(x, y);
    }
    assert_eq!(a.state_hash(), b.state_hash());
    // The service snapshot alone: compact and checksummed.
    let snap = a.service().snapshot();
    assert!(
        (snap.len() as u64) < a.service().memory_bytes(),
        "zero pages were stored: {} of {}",
        snap.len(),
        a.service().memory_bytes()
    );
    let mut corrupt = snap.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x40;
    assert!(<WasmService as Service>::restore(&corrupt).is_err());
    // A snapshot of another module (or other settings) is refused by name.
    let other = LoadedModule::load(
        &example("pubsub"),
        WasmConfig {
            fuel_per_event: 1_000_000,
            ..WasmConfig::default()
        },
    )
    .unwrap();
    let err = WasmService::restore_with(other, &snap).err().unwrap();
    assert!(err.to_string().contains("this node runs"), "{err}");
    service.on_event(
        &mut tandem_core::sdk::Context::new(1, Millis(1), tandem_core::sdk::Rng::from_seed(1), 0),
        open(1),
    );
    assert_eq!(service.failures(), 0);
}

#[test]
fn modules_that_import_wasi_or_lack_the_handler_are_refused() {
    // The smallest module importing a WASI function (built by hand: a
    // type section with `() -> ()`, an import section with one import).
    let (module, name) = ("wasi_snapshot_preview1", "sched_yield");
    let mut imports = vec![1u8, module.len() as u8];
    imports.extend_from_slice(module.as_bytes());
    imports.push(name.len() as u8);
    imports.extend_from_slice(name.as_bytes());
    imports.extend_from_slice(&[0x00, 0x00]); // a function of type 0
    let mut wasi = vec![0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    wasi.extend_from_slice(&[0x01, 0x04, 0x01, 0x60, 0x00, 0x00]);
    wasi.push(0x02);
    wasi.push(imports.len() as u8);
    wasi.extend_from_slice(&imports);
    let err = LoadedModule::load(&wasi, WasmConfig::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("wasi_snapshot_preview1::sched_yield"),
        "{err}"
    );
    let empty = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    let err = LoadedModule::load(&empty, WasmConfig::default()).unwrap_err();
    assert!(err.to_string().contains("does not export"), "{err}");
    let err = LoadedModule::load(b"not wasm", WasmConfig::default()).unwrap_err();
    assert!(err.to_string().contains("does not compile"), "{err}");
    let err = LoadedModule::load(
        &example("pubsub"),
        WasmConfig {
            max_memory: 1,
            ..WasmConfig::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("wasm_max_memory"), "{err}");
}

#[test]
fn each_failure_is_named_for_its_bound() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use tandem_core::sdk::{Context, Rng};
    use tandem_wasm::GuestFailure;
    let module = load("hostile", hostile_config());
    let mut service = WasmService::new(module).unwrap();
    let mut ctx = Context::new(1, Millis(1), Rng::from_seed(1), 0);
    service.on_event(&mut ctx, open(1));
    for (command, reason) in [
        ("LOOP", "out of fuel"),
        ("DEEP", "stack overflow"),
        ("TRAP", "unreachable"),
        ("BOMB", "unreachable"),
    ] {
        let line = format!("{command}\n");
        let payload = catch_unwind(AssertUnwindSafe(|| {
            service.on_event(&mut ctx, data(1, line.as_bytes()))
        }))
        .expect_err(command);
        let failure = payload.downcast::<GuestFailure>().unwrap();
        assert!(failure.0.contains(reason), "{command}: {}", failure.0);
    }
    assert_eq!(service.failures(), 4);
    // Still serving after all of it.
    let mut ctx = Context::new(2, Millis(2), Rng::from_seed(2), 0);
    service.on_event(&mut ctx, data(1, b"COUNT\n"));
    assert_eq!(
        ctx.take_actions(),
        vec![Action::Send {
            conn: ConnId(1),
            bytes: b"1\n".to_vec()
        }]
    );
}
