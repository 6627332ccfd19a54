//! SDK tests: timers, time, randomness, panic containment, snapshots, and
//! replica agreement under random event sequences and random framing.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

/// A service that exercises everything, driven by the bytes it receives:
/// `p` panics (after changing state), `t` arms timer = conn, `c` cancels
/// it, `r` sends a random number, `n` sends now, `x` closes; anything else
/// is echoed.
#[derive(Default)]
struct Probe {
    seen: BTreeMap<u64, u64>,
    fired: u64,
}

impl Service for Probe {
    fn on_event(&mut self, ctx: &mut Context, event: Event) {
        match event {
            Event::Data { conn, bytes } => {
                for b in bytes {
                    *self.seen.entry(conn.0).or_default() += 1;
                    match b {
                        b'p' => panic!("probe panics on purpose"),
                        b't' => {
                            let at = ctx.now().plus(10);
                            ctx.set_timer(TimerId(conn.0), at);
                        }
                        b'c' => ctx.cancel_timer(TimerId(conn.0)),
                        b'r' => {
                            let v = ctx.rng().below(1_000_000);
                            ctx.send(conn, format!("{v};"));
                        }
                        b'n' => {
                            let now = ctx.now().0;
                            ctx.send(conn, format!("@{now};"));
                        }
                        b'x' => ctx.close(conn),
                        other => ctx.send(conn, vec![other]),
                    }
                }
            }
            Event::Timer { id, .. } => {
                self.fired += 1;
                ctx.send(ConnId(id.0), "T");
            }
            Event::Reset { conn } => {
                self.seen.remove(&conn.0);
            }
            _ => {}
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = self.fired.to_le_bytes().to_vec();
        for (k, v) in &self.seen {
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn restore(bytes: &[u8]) -> Result<Self, SdkError> {
        let words: Vec<u64> = bytes
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let fired = *words.first().ok_or(SdkError::Snapshot("empty".into()))?;
        let seen = words[1..].chunks(2).map(|kv| (kv[0], kv[1])).collect();
        Ok(Probe { seen, fired })
    }
}

fn peer(n: u64) -> std::net::SocketAddr {
    format!("10.0.0.{}:{}", n % 250 + 1, 40_000 + n)
        .parse()
        .unwrap()
}

fn runtime() -> Runtime {
    Runtime::new(Box::new(Probe::default()), 0x5eed)
}

fn open(rt: &mut Runtime, index: u64, conn: u64) -> Vec<Action> {
    rt.apply(
        index,
        Millis(0),
        Event::Opened {
            conn: ConnId(conn),
            peer: peer(conn),
        },
    )
}

fn data(conn: u64, bytes: &[u8]) -> Event {
    Event::Data {
        conn: ConnId(conn),
        bytes: bytes.to_vec(),
    }
}

#[test]
fn a_timer_proposed_twice_fires_once() {
    let mut rt = runtime();
    open(&mut rt, 1, 1);
    let acts = rt.apply(2, Millis(100), data(1, b"t"));
    let gen = match acts.as_slice() {
        [Action::SetTimer {
            id: TimerId(1),
            generation,
            at: Millis(110),
        }] => *generation,
        other => panic!("unexpected {other:?}"),
    };
    assert!(rt.due_timers(Millis(109)).is_empty());
    assert_eq!(rt.due_timers(Millis(110)), vec![(TimerId(1), gen)]);
    let fire = Event::Timer {
        id: TimerId(1),
        generation: gen,
    };
    // The old primary and the new one both proposed it.
    let first = rt.apply(3, Millis(110), fire.clone());
    let second = rt.apply(4, Millis(111), fire);
    assert_eq!(
        first,
        vec![Action::Send {
            conn: ConnId(1),
            bytes: b"T".to_vec()
        }]
    );
    assert!(second.is_empty());
    assert!(rt.due_timers(Millis(1_000)).is_empty());
}

#[test]
fn a_rearmed_or_cancelled_timer_stale_generation_is_ignored() {
    let mut rt = runtime();
    open(&mut rt, 1, 1);
    let a = rt.apply(2, Millis(0), data(1, b"t"));
    let b = rt.apply(3, Millis(5), data(1, b"t"));
    let gen = |acts: &[Action]| match acts {
        [Action::SetTimer { generation, .. }] => *generation,
        other => panic!("unexpected {other:?}"),
    };
    let (g1, g2) = (gen(&a), gen(&b));
    assert_ne!(g1, g2);
    assert!(rt
        .apply(
            4,
            Millis(20),
            Event::Timer {
                id: TimerId(1),
                generation: g1
            }
        )
        .is_empty());
    assert_eq!(
        rt.apply(
            5,
            Millis(20),
            Event::Timer {
                id: TimerId(1),
                generation: g2
            }
        )
        .len(),
        1
    );
    // Armed then cancelled: never fires.
    let c = rt.apply(6, Millis(30), data(1, b"t"));
    let g3 = gen(&c);
    assert_eq!(
        rt.apply(7, Millis(31), data(1, b"c")),
        vec![Action::CancelTimer { id: TimerId(1) }]
    );
    assert!(rt
        .apply(
            8,
            Millis(50),
            Event::Timer {
                id: TimerId(1),
                generation: g3
            }
        )
        .is_empty());
    // Cancelling what is not armed records nothing.
    assert!(rt.apply(9, Millis(51), data(1, b"c")).is_empty());
}

#[test]
fn now_never_goes_backwards() {
    let mut rt = runtime();
    open(&mut rt, 1, 1);
    let mut seen = Vec::new();
    for (i, ts) in [100u64, 50, 200, 150, 200, 0, 300].into_iter().enumerate() {
        let acts = rt.apply(i as u64 + 2, Millis(ts), data(1, b"n"));
        let Action::Send { bytes, .. } = &acts[0] else {
            panic!()
        };
        seen.push(String::from_utf8(bytes.clone()).unwrap());
    }
    assert_eq!(
        seen,
        ["@100;", "@100;", "@200;", "@200;", "@200;", "@200;", "@300;"]
    );
    assert_eq!(rt.now(), Millis(300));
}

#[test]
fn rng_depends_only_on_seed_and_index() {
    let draw = |seed: u64, index: u64| {
        let mut rt = Runtime::new(Box::new(Probe::default()), seed);
        open(&mut rt, 1, 1);
        rt.apply(index, Millis(0), data(1, b"rr"))
    };
    assert_eq!(draw(1, 10), draw(1, 10));
    assert_ne!(draw(1, 10), draw(1, 11));
    assert_ne!(draw(1, 10), draw(2, 10));
    // Within one entry the stream continues across events.
    let mut rt = runtime();
    open(&mut rt, 1, 1);
    let acts = rt.apply_entry(5, Millis(0), [data(1, b"r"), data(1, b"r")]);
    let Action::Send { bytes, .. } = &acts[0] else {
        panic!()
    };
    let parts: Vec<&[u8]> = bytes.split(|&b| b == b';').collect();
    assert_ne!(parts[0], parts[1]);
}

#[test]
fn a_panic_aborts_the_same_connection_on_every_replica() {
    let mut a = runtime();
    let mut b = runtime();
    for rt in [&mut a, &mut b] {
        open(rt, 1, 1);
        open(rt, 2, 2);
        rt.apply(3, Millis(1), data(1, b"ab"));
        rt.apply(4, Millis(1), data(2, b"t"));
    }
    // The sends recorded before the panic are discarded; the connection is
    // aborted; the other connection goes on.
    let x = a.apply(5, Millis(2), data(2, b"zzp"));
    let y = b.apply(5, Millis(2), data(2, b"zzp"));
    assert_eq!(x, vec![Action::Abort { conn: ConnId(2) }]);
    assert_eq!(x, y);
    assert_eq!(a.state_hash(), b.state_hash());
    assert_eq!(a.panics(), 1);
    assert!(a.output(ConnId(2)).is_none());
    assert!(a.apply(6, Millis(2), data(2, b"more")).is_empty());
    assert_eq!(
        a.apply(7, Millis(2), data(1, b"c")),
        b.apply(7, Millis(2), data(1, b"c"))
    );
    assert_eq!(
        a.apply(8, Millis(3), data(1, b"q")),
        vec![Action::Send {
            conn: ConnId(1),
            bytes: b"q".to_vec()
        }]
    );
    b.apply(8, Millis(3), data(1, b"q"));
    assert_eq!(a.state_hash(), b.state_hash());
    assert_eq!(a.output(ConnId(1)).unwrap().offset, 3);
}

#[test]
fn close_then_peer_close_retires_and_sends_after_close_are_dropped() {
    let mut rt = runtime();
    open(&mut rt, 1, 1);
    assert_eq!(
        rt.apply(2, Millis(0), data(1, b"ax")),
        vec![
            Action::Send {
                conn: ConnId(1),
                bytes: b"a".to_vec()
            },
            Action::Close { conn: ConnId(1) }
        ]
    );
    assert!(rt.apply(3, Millis(0), data(1, b"b")).is_empty());
    let before = rt.state_hash();
    rt.apply(4, Millis(0), Event::PeerClosed { conn: ConnId(1) });
    assert!(rt.connections().is_empty());
    assert_ne!(before, rt.state_hash());
    // A second Opened for a live id is ignored; unknown conns are ignored.
    assert!(rt.apply(5, Millis(0), data(9, b"a")).is_empty());
}

#[test]
fn snapshot_restore_keeps_hash_and_behaviour() {
    let mut a = runtime();
    open(&mut a, 1, 1);
    open(&mut a, 2, 2);
    a.apply(3, Millis(10), data(1, b"hello t"));
    a.apply(4, Millis(20), data(2, b"rx"));
    let snap = a.snapshot();
    let mut b = Runtime::restore(&snap, restore_boxed::<Probe>).unwrap();
    assert_eq!(a.state_hash(), b.state_hash());
    assert_eq!(b.snapshot(), snap);
    for (i, e) in [
        data(1, b"rn"),
        data(2, b"z"),
        Event::Reset { conn: ConnId(1) },
    ]
    .into_iter()
    .enumerate()
    {
        let i = i as u64 + 5;
        assert_eq!(a.apply(i, Millis(30), e.clone()), b.apply(i, Millis(30), e));
    }
    assert_eq!(a.state_hash(), b.state_hash());
    assert!(
        Runtime::restore(&snap[..snap.len() - 1], |s| Ok(Box::new(Probe::restore(
            s
        )?)))
        .is_err()
    );
}

/// One step of a random run.
#[derive(Debug, Clone)]
enum Step {
    Open(u64),
    Data(u64, Vec<u8>),
    PeerClose(u64),
    Reset(u64),
    FireDue,
    FireStale(u64, u64),
}

fn step() -> impl Strategy<Value = Step> {
    let conn = 0u64..4;
    prop_oneof![
        conn.clone().prop_map(Step::Open),
        (
            conn.clone(),
            proptest::collection::vec(
                prop_oneof![
                    Just(b'p'),
                    Just(b't'),
                    Just(b'c'),
                    Just(b'r'),
                    Just(b'n'),
                    Just(b'x'),
                    any::<u8>()
                ],
                1..8
            )
        )
            .prop_map(|(c, d)| Step::Data(c, d)),
        conn.clone().prop_map(Step::PeerClose),
        conn.clone().prop_map(Step::Reset),
        Just(Step::FireDue),
        (conn, 0u64..20).prop_map(|(c, g)| Step::FireStale(c, g)),
    ]
}

/// Drives one runtime through the steps; returns every action.
fn run(rt: &mut Runtime, steps: &[(Step, u64)]) -> Vec<Action> {
    let mut out = Vec::new();
    for (i, (s, dt)) in steps.iter().enumerate() {
        let index = i as u64 + 1;
        // Timestamps jitter backwards too, as after a change of primary.
        let ts = Millis((index * 3).saturating_sub(*dt));
        let events = match s {
            Step::Open(c) => vec![Event::Opened {
                conn: ConnId(*c),
                peer: peer(*c),
            }],
            Step::Data(c, d) => vec![data(*c, d)],
            Step::PeerClose(c) => vec![Event::PeerClosed { conn: ConnId(*c) }],
            Step::Reset(c) => vec![Event::Reset { conn: ConnId(*c) }],
            Step::FireDue => rt
                .due_timers(ts)
                .into_iter()
                .map(|(id, generation)| Event::Timer { id, generation })
                .collect(),
            Step::FireStale(c, g) => vec![Event::Timer {
                id: TimerId(*c),
                generation: *g,
            }],
        };
        out.extend(rt.apply_entry(index, ts, events));
    }
    out
}

/// Reverses each line: the output depends on the byte stream only, not on
/// how it was cut into events.
#[derive(Default)]
struct Lines {
    partial: BTreeMap<ConnId, Vec<u8>>,
}

impl Service for Lines {
    fn on_event(&mut self, ctx: &mut Context, event: Event) {
        if let Event::Data { conn, bytes } = event {
            let buf = self.partial.entry(conn).or_default();
            buf.extend_from_slice(&bytes);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = buf.drain(..=nl).collect();
                line.reverse();
                ctx.send(conn, line);
            }
        }
    }
    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (c, b) in &self.partial {
            out.extend_from_slice(&c.0.to_le_bytes());
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(b);
        }
        out
    }
    fn restore(_: &[u8]) -> Result<Self, SdkError> {
        Err(SdkError::Snapshot("not needed".into()))
    }
}

/// Cuts `data` at the given points.
fn split(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.push(0);
    cuts.push(data.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2)
        .map(|w| data[w[0]..w[1]].to_vec())
        .filter(|c| !c.is_empty())
        .collect()
}

proptest! {
    #[test]
    fn replicas_fed_the_same_log_agree(steps in proptest::collection::vec((step(), 0u64..10), 0..60)) {
        let mut a = runtime();
        let mut b = runtime();
        let x = run(&mut a, &steps);
        let y = run(&mut b, &steps);
        prop_assert_eq!(x, y);
        prop_assert_eq!(a.state_hash(), b.state_hash());
        // A snapshot taken now carries the same state.
        let c = Runtime::restore(&a.snapshot(), |s| Ok(Box::new(Probe::restore(s)?))).unwrap();
        prop_assert_eq!(c.state_hash(), a.state_hash());
    }

    #[test]
    fn framing_does_not_change_output(
        streams in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..200), 1..4),
        cuts_a in proptest::collection::vec(any::<usize>(), 0..20),
        cuts_b in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let feed = |cuts: &[usize]| {
            let mut rt = Runtime::new(Box::new(Lines::default()), 1);
            let mut index = 0;
            let mut acts = Vec::new();
            for c in 0..streams.len() {
                index += 1;
                acts.extend(rt.apply(index, Millis(0), Event::Opened { conn: ConnId(c as u64), peer: peer(c as u64) }));
            }
            for (c, s) in streams.iter().enumerate() {
                for chunk in split(s, cuts) {
                    index += 1;
                    acts.extend(rt.apply(index, Millis(0), data(c as u64, &chunk)));
                }
            }
            let mut sent: BTreeMap<ConnId, Vec<u8>> = BTreeMap::new();
            for a in &acts {
                if let Action::Send { conn, bytes } = a {
                    sent.entry(*conn).or_default().extend_from_slice(bytes);
                }
            }
            (rt.state_hash(), sent, rt.connections().clone(), acts)
        };
        let (ha, sa, ca, acts_a) = feed(&cuts_a);
        let (hb, sb, cb, _) = feed(&cuts_b);
        prop_assert_eq!(ha, hb);
        prop_assert_eq!(sa, sb);
        prop_assert_eq!(ca, cb);
        // The same framing twice: byte-identical action lists.
        prop_assert_eq!(acts_a, feed(&cuts_a).3);
    }
}

/// A service that answers every byte `b` with `b` repeated 100 times, one
/// send per byte, and counts the bytes it processed per connection (so a
/// test can see that input after an overflow was never processed).
#[derive(Default)]
struct Amplifier {
    processed: BTreeMap<u64, u64>,
    resets: u64,
}

impl Service for Amplifier {
    fn on_event(&mut self, ctx: &mut Context, event: Event) {
        match event {
            Event::Data { conn, bytes } => {
                for b in bytes {
                    *self.processed.entry(conn.0).or_default() += 1;
                    if !ctx.try_send(conn, vec![b; 100]) {
                        return;
                    }
                }
            }
            Event::Reset { .. } => self.resets += 1,
            _ => {}
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [
            self.processed.get(&1).copied().unwrap_or(0),
            self.processed.get(&2).copied().unwrap_or(0),
            self.resets,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn restore(b: &[u8]) -> Result<Self, SdkError> {
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        Ok(Amplifier {
            processed: [(1, w(0)), (2, w(1))].into_iter().collect(),
            resets: w(2),
        })
    }
}

fn capped(cap: u64) -> Runtime {
    let mut rt = Runtime::new(Box::new(Amplifier::default()), 3);
    rt.set_limits(Limits {
        output_cap: cap,
        ..Limits::default()
    });
    rt
}

fn sent(actions: &[Action], conn: u64) -> usize {
    actions
        .iter()
        .map(|a| match a {
            Action::Send { conn: c, bytes } if c.0 == conn => bytes.len(),
            _ => 0,
        })
        .sum()
}

/// The cap is checked at every send of an event, not after it: the send
/// that would pass it is refused, the connection is reset at that point
/// (its earlier output of the event dropped with it), the service is told,
/// and the rest of the entry's input for it never reaches the service.
/// Another connection in the same entry is untouched.
#[test]
fn the_output_cap_resets_only_the_connection_that_passes_it() {
    let mut rt = capped(1000);
    open(&mut rt, 1, 1);
    open(&mut rt, 2, 2);
    // Ten bytes: 1000 bytes of output, exactly the cap.
    let acts = rt.apply(3, Millis(0), data(1, b"0123456789"));
    assert_eq!(sent(&acts, 1), 1000);
    assert_eq!(rt.output(ConnId(1)).unwrap().queued(), 1000);
    // One more byte would pass it: refused, reset.
    let acts = rt.apply_entry(
        4,
        Millis(0),
        [data(1, b"abc"), data(2, b"xy"), data(1, b"more")],
    );
    assert_eq!(sent(&acts, 1), 0);
    assert_eq!(sent(&acts, 2), 200);
    assert!(acts.contains(&Action::Abort { conn: ConnId(1) }));
    assert!(rt.output(ConnId(1)).is_none());
    assert_eq!(rt.overflows(), 1);
    // Processed: "abc" stopped at its first byte; "more" never arrived.
    // The service heard of the reset.
    assert_eq!(amplifier(&rt), (11, 2, 1));
    // The second connection goes on; the first is gone for good.
    assert!(rt.apply(5, Millis(0), data(1, b"z")).is_empty());
    let acts = rt.apply(6, Millis(0), data(2, b"z"));
    assert_eq!(sent(&acts, 2), 100);
}

/// (bytes processed on connection 1, on connection 2, resets heard).
fn amplifier(rt: &Runtime) -> (u64, u64, u64) {
    let s = rt.service().snapshot();
    let w = |i: usize| u64::from_le_bytes(s[i * 8..i * 8 + 8].try_into().unwrap());
    (w(0), w(1), w(2))
}

/// Acknowledged output makes room again; the queued figure follows the
/// ACKs the host reports, and it survives a snapshot.
#[test]
fn acknowledged_output_makes_room_and_survives_a_snapshot() {
    let mut rt = capped(1000);
    open(&mut rt, 1, 1);
    rt.apply(2, Millis(0), data(1, b"0123456789"));
    assert_eq!(rt.memory().output, 1000);
    rt.output_acked(ConnId(1), 600);
    assert_eq!(rt.output(ConnId(1)).unwrap().queued(), 400);
    // Acknowledging more than was sent changes nothing more.
    rt.output_acked(ConnId(1), 10_000);
    assert_eq!(rt.output(ConnId(1)).unwrap().queued(), 0);
    let acts = rt.apply(3, Millis(0), data(1, b"0123456789"));
    assert_eq!(sent(&acts, 1), 1000);
    assert_eq!(rt.overflows(), 0);
    let bytes = rt.snapshot();
    let mut back = Runtime::restore(&bytes, restore_boxed::<Amplifier>).unwrap();
    back.set_limits(*rt.limits());
    assert_eq!(back.state_hash(), rt.state_hash());
    assert_eq!(back.memory(), rt.memory());
    // Both refuse the next byte alike.
    let a = rt.apply(4, Millis(0), data(1, b"!"));
    let b = back.apply(4, Millis(0), data(1, b"!"));
    assert_eq!(a, b);
    assert!(a.contains(&Action::Abort { conn: ConnId(1) }));
}

/// The context reports the room left and the memory figure as sends are
/// made, so a service can stop early.
#[test]
fn the_context_counts_room_and_memory_as_the_service_sends() {
    let limits = Limits {
        output_cap: 100,
        max_memory: 1000,
        ..Limits::default()
    };
    let mut ctx =
        Context::new(1, Millis(0), super::Rng::for_entry(1, 1), 1).with_limits(limits, 900);
    // Without the runtime's bookkeeping no cap is known for a connection.
    assert_eq!(ctx.output_room(ConnId(1)), u64::MAX);
    assert!(!ctx.over_memory(100));
    assert!(ctx.try_send(ConnId(1), vec![0; 50]));
    assert_eq!(ctx.memory_used(100), 1050);
    assert!(ctx.over_memory(100));
}
