//! kv tests: replies byte-exact against Redis semantics, pipelining and
//! split frames, malformed frames, expiry with log time, deterministic
//! randomness, snapshots.

use proptest::prelude::*;
use tandem_core::sdk::{Action, ConnId, Event, Millis, Runtime, Service};

use crate::resp::MAX_REQUEST;
use crate::Kv;

/// One replica with connections 1..=3 open; log index and time under test
/// control.
pub(crate) struct H {
    pub(crate) rt: Runtime,
    pub(crate) index: u64,
    pub(crate) now: u64,
}

pub(crate) fn multibulk(words: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        out.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
        out.extend_from_slice(w);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl H {
    pub(crate) fn new(seed: u64) -> H {
        H::with_kv(Kv::new(), seed)
    }

    pub(crate) fn with_kv(kv: Kv, seed: u64) -> H {
        let mut h = H {
            rt: Runtime::new(Box::new(kv), seed),
            index: 0,
            now: 1_000,
        };
        for c in 1..=3 {
            h.event(Event::Opened {
                conn: ConnId(c),
                peer: format!("10.0.0.9:{}", 5000 + c).parse().unwrap(),
            });
        }
        h
    }

    pub(crate) fn event(&mut self, e: Event) -> Vec<Action> {
        self.index += 1;
        self.rt.apply(self.index, Millis(self.now), e)
    }

    /// Raw bytes on connection `conn`; returns (bytes sent back, closed?).
    pub(crate) fn raw_on(&mut self, conn: u64, bytes: &[u8]) -> (Vec<u8>, bool) {
        let acts = self.event(Event::Data {
            conn: ConnId(conn),
            bytes: bytes.to_vec(),
        });
        let mut out = Vec::new();
        let mut closed = false;
        for a in acts {
            match a {
                Action::Send { conn: c, bytes } if c == ConnId(conn) => out.extend(bytes),
                Action::Close { conn: c } if c == ConnId(conn) => closed = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        (out, closed)
    }

    pub(crate) fn raw(&mut self, bytes: &[u8]) -> Vec<u8> {
        let (out, closed) = self.raw_on(1, bytes);
        assert!(!closed);
        out
    }

    /// One command, as a string of words split on spaces.
    pub(crate) fn cmd(&mut self, line: &str) -> String {
        let words: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        String::from_utf8(self.raw(&multibulk(&words))).unwrap()
    }

    fn kv_hash(&self) -> u64 {
        self.rt.state_hash()
    }
}

/// Command → exact reply, in order, on one connection.
pub(crate) fn table(h: &mut H, cases: &[(&str, &str)]) {
    for (cmd, want) in cases {
        assert_eq!(h.cmd(cmd), *want, "command: {cmd}");
    }
}

#[test]
fn strings_and_keys() {
    let mut h = H::new(1);
    table(
        &mut h,
        &[
            ("PING", "+PONG\r\n"),
            ("ping hi", "$2\r\nhi\r\n"),
            ("ECHO hello", "$5\r\nhello\r\n"),
            ("GET k", "$-1\r\n"),
            ("SET k v", "+OK\r\n"),
            ("GET k", "$1\r\nv\r\n"),
            ("set k v2 NX", "$-1\r\n"),
            ("SET k v3 XX", "+OK\r\n"),
            ("SET nope v XX", "$-1\r\n"),
            ("SET k v4 GET", "$2\r\nv3\r\n"),
            ("SET k v NX XX", "-ERR syntax error\r\n"),
            (
                "SET k v EX 0",
                "-ERR invalid expire time in 'set' command\r\n",
            ),
            (
                "SET k v EX x",
                "-ERR value is not an integer or out of range\r\n",
            ),
            ("SET k v FOO", "-ERR syntax error\r\n"),
            ("APPEND k xyz", ":5\r\n"),
            ("STRLEN k", ":5\r\n"),
            ("STRLEN none", ":0\r\n"),
            ("MSET a 1 b 2", "+OK\r\n"),
            (
                "MSET a 1 b",
                "-ERR wrong number of arguments for 'mset' command\r\n",
            ),
            (
                "MGET a b none k",
                "*4\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n$5\r\nv4xyz\r\n",
            ),
            ("EXISTS a b none a", ":3\r\n"),
            ("DEL a none", ":1\r\n"),
            ("INCR c", ":1\r\n"),
            ("INCRBY c 10", ":11\r\n"),
            ("DECR c", ":10\r\n"),
            ("DECRBY c 20", ":-10\r\n"),
            ("INCR k", "-ERR value is not an integer or out of range\r\n"),
            (
                "INCRBY c x",
                "-ERR value is not an integer or out of range\r\n",
            ),
            ("SET big 9223372036854775807", "+OK\r\n"),
            ("INCR big", "-ERR increment or decrement would overflow\r\n"),
            ("DBSIZE", ":4\r\n"),
            ("SELECT 0", "+OK\r\n"),
            ("SELECT 16", "-ERR DB index is out of range\r\n"),
            ("SELECT -1", "-ERR DB index is out of range\r\n"),
            (
                "GET",
                "-ERR wrong number of arguments for 'get' command\r\n",
            ),
            (
                "get a b",
                "-ERR wrong number of arguments for 'get' command\r\n",
            ),
            (
                "FOO a b",
                "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n",
            ),
            ("FLUSHALL", "+OK\r\n"),
            ("DBSIZE", ":0\r\n"),
        ],
    );
}

#[test]
fn lists_sets_hashes_zsets() {
    let mut h = H::new(1);
    table(
        &mut h,
        &[
            ("LPUSH l a b c", ":3\r\n"),
            ("RPUSH l d", ":4\r\n"),
            ("LLEN l", ":4\r\n"),
            (
                "LRANGE l 0 -1",
                "*4\r\n$1\r\nc\r\n$1\r\nb\r\n$1\r\na\r\n$1\r\nd\r\n",
            ),
            ("LRANGE l 1 2", "*2\r\n$1\r\nb\r\n$1\r\na\r\n"),
            ("LRANGE l -2 100", "*2\r\n$1\r\na\r\n$1\r\nd\r\n"),
            ("LRANGE l 5 10", "*0\r\n"),
            ("LRANGE none 0 -1", "*0\r\n"),
            ("LPOP l", "$1\r\nc\r\n"),
            ("RPOP l", "$1\r\nd\r\n"),
            ("LPOP l 5", "*2\r\n$1\r\nb\r\n$1\r\na\r\n"),
            ("LPOP l", "$-1\r\n"),
            ("LPOP l 2", "*-1\r\n"),
            ("EXISTS l", ":0\r\n"),
            (
                "LPOP l -1",
                "-ERR value is out of range, must be positive\r\n",
            ),
            ("SADD s b a c a", ":3\r\n"),
            ("SMEMBERS s", "*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"),
            ("SCARD s", ":3\r\n"),
            ("SISMEMBER s a", ":1\r\n"),
            ("SISMEMBER s z", ":0\r\n"),
            ("SREM s a z", ":1\r\n"),
            ("SMEMBERS none", "*0\r\n"),
            ("HSET h f1 v1 f2 v2", ":2\r\n"),
            ("HSET h f1 x", ":0\r\n"),
            (
                "HSET h f1",
                "-ERR wrong number of arguments for 'hset' command\r\n",
            ),
            ("HGET h f1", "$1\r\nx\r\n"),
            ("HGET h nope", "$-1\r\n"),
            ("HLEN h", ":2\r\n"),
            (
                "HGETALL h",
                "*4\r\n$2\r\nf1\r\n$1\r\nx\r\n$2\r\nf2\r\n$2\r\nv2\r\n",
            ),
            ("HDEL h f1 f9", ":1\r\n"),
            ("HGETALL none", "*0\r\n"),
            ("ZADD z 2 b 1 a 1.5 c", ":3\r\n"),
            ("ZADD z 3 a", ":0\r\n"),
            ("ZADD z CH 4 a 9 d", ":2\r\n"),
            ("ZADD z x a", "-ERR value is not a valid float\r\n"),
            (
                "ZADD z 1",
                "-ERR wrong number of arguments for 'zadd' command\r\n",
            ),
            ("ZCARD z", ":4\r\n"),
            ("ZADD w GT CH 5 a", ":1\r\n"),
            ("ZADD w GT CH 3 a", ":0\r\n"),
            ("ZADD w LT CH 3 a", ":1\r\n"),
            ("ZADD w INCR 2.5 a", "$3\r\n5.5\r\n"),
            ("ZADD w NX INCR 1 a", "$-1\r\n"),
            (
                "ZADD w INCR 1 a 2 b",
                "-ERR INCR option supports a single increment-element pair\r\n",
            ),
            (
                "ZADD w GT LT 1 a",
                "-ERR GT, LT, and/or NX options at the same time are not compatible\r\n",
            ),
            (
                "ZADD w NX XX 1 a",
                "-ERR XX and NX options at the same time are not compatible\r\n",
            ),
            ("ZADD w INCR inf a", "$3\r\ninf\r\n"),
            (
                "ZADD w INCR -inf a",
                "-ERR resulting score is not a number (NaN)\r\n",
            ),
            ("ZADD w XX 1 nope", ":0\r\n"),
            ("DEL w", ":1\r\n"),
            ("ZSCORE z c", "$3\r\n1.5\r\n"),
            (
                "ZRANGE z 0 -1",
                "*4\r\n$1\r\nc\r\n$1\r\nb\r\n$1\r\na\r\n$1\r\nd\r\n",
            ),
            (
                "ZRANGE z 0 1 WITHSCORES",
                "*4\r\n$1\r\nc\r\n$3\r\n1.5\r\n$1\r\nb\r\n$1\r\n2\r\n",
            ),
            ("ZPOPMIN z", "*2\r\n$1\r\nc\r\n$3\r\n1.5\r\n"),
            (
                "ZPOPMIN z 2",
                "*4\r\n$1\r\nb\r\n$1\r\n2\r\n$1\r\na\r\n$1\r\n4\r\n",
            ),
            ("ZPOPMIN none", "*0\r\n"),
            // Wrong types.
            (
                "GET s",
                "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            ),
            (
                "LPUSH s x",
                "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            ),
            (
                "SADD h x",
                "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            ),
            (
                "HGET s x",
                "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            ),
            (
                "ZADD s 1 x",
                "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            ),
            (
                "INCR s",
                "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            ),
            ("SET s str", "+OK\r\n"),
            ("GET s", "$3\r\nstr\r\n"),
        ],
    );
}

#[test]
fn admin_commands_redis_clients_send() {
    let mut h = H::new(1);
    table(
        &mut h,
        &[
            ("CONFIG GET save", "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"),
            (
                "CONFIG GET appendonly",
                "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n",
            ),
            ("CONFIG GET nothing", "*0\r\n"),
            ("COMMAND", "*0\r\n"),
            ("COMMAND DOCS", "*0\r\n"),
            ("COMMAND COUNT", ":0\r\n"),
        ],
    );
    let info = h.cmd("INFO");
    assert!(info.contains("redis_version:"), "{info}");
    assert_eq!(h.cmd("INFO keyspace"), "$12\r\n# Keyspace\r\n\r\n");
    h.cmd("SET k v");
    assert_eq!(
        h.cmd("INFO KEYSPACE"),
        "$44\r\n# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n\r\n"
    );
    assert_eq!(h.cmd("INFO nothing"), "$0\r\n\r\n");
    assert_eq!(h.cmd("CONFIG GET *").matches("$").count(), 10);
    // QUIT answers then closes.
    let (out, closed) = h.raw_on(2, b"QUIT\r\n");
    assert_eq!(out, b"+OK\r\n");
    assert!(closed);
}

#[test]
fn redis_benchmark_default_requests() {
    let mut h = H::new(1);
    let key = "key:000000000000";
    assert_eq!(h.raw(b"PING\r\n"), b"+PONG\r\n");
    assert_eq!(h.raw(b"*1\r\n$4\r\nPING\r\n"), b"+PONG\r\n");
    table(
        &mut h,
        &[
            (&format!("SET {key} xxx"), "+OK\r\n"),
            (&format!("GET {key}"), "$3\r\nxxx\r\n"),
            ("INCR counter:000000000000", ":1\r\n"),
            ("LPUSH mylist xxx", ":1\r\n"),
            ("RPUSH mylist xxx", ":2\r\n"),
            ("LPOP mylist", "$3\r\nxxx\r\n"),
            ("RPOP mylist", "$3\r\nxxx\r\n"),
            ("SADD myset element:000000000000", ":1\r\n"),
            ("HSET myhash element:000000000000 xxx", ":1\r\n"),
            ("SPOP myset", "$20\r\nelement:000000000000\r\n"),
            ("ZADD myzset 0 element:000000000000", ":1\r\n"),
            (
                "ZPOPMIN myzset",
                "*2\r\n$20\r\nelement:000000000000\r\n$1\r\n0\r\n",
            ),
        ],
    );
    for _ in 0..600 {
        h.cmd("LPUSH mylist xxx");
    }
    assert!(h.cmd("LRANGE mylist 0 99").starts_with("*100\r\n"));
    assert!(h.cmd("LRANGE mylist 0 599").starts_with("*600\r\n"));
    let mset: Vec<String> = (0..10)
        .flat_map(|_| [key.to_string(), "xxx".to_string()])
        .collect();
    assert_eq!(h.cmd(&format!("MSET {}", mset.join(" "))), "+OK\r\n");
}

#[test]
fn inline_commands_with_quotes() {
    let mut h = H::new(1);
    assert_eq!(
        h.raw(b"SET \"a b\" 'c d'\r\nGET \"a b\"\n"),
        b"+OK\r\n$3\r\nc d\r\n"
    );
    assert_eq!(h.raw(b"\r\n\r\n*0\r\nPING\r\n"), b"+PONG\r\n");
}

#[test]
fn expiry_follows_log_time() {
    let mut h = H::new(1);
    table(
        &mut h,
        &[
            ("SET k v EX 10", "+OK\r\n"),
            ("TTL k", ":10\r\n"),
            ("PTTL k", ":10000\r\n"),
        ],
    );
    h.now += 2_400;
    table(&mut h, &[("TTL k", ":8\r\n"), ("PTTL k", ":7600\r\n")]);
    h.now += 7_599;
    assert_eq!(h.cmd("GET k"), "$1\r\nv\r\n");
    h.now += 1;
    table(
        &mut h,
        &[
            ("GET k", "$-1\r\n"),
            ("TTL k", ":-2\r\n"),
            ("DBSIZE", ":0\r\n"),
        ],
    );
    table(
        &mut h,
        &[
            ("SET p v PX 50", "+OK\r\n"),
            ("SET q v", "+OK\r\n"),
            ("TTL q", ":-1\r\n"),
            ("EXPIRE q 100", ":1\r\n"),
            ("EXPIRE q 50 GT", ":0\r\n"),
            ("EXPIRE q 200 GT", ":1\r\n"),
            ("EXPIRE q 5 NX", ":0\r\n"),
            (
                "EXPIRE q 5 NX XX",
                "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n",
            ),
            ("PEXPIRE q 1500", ":1\r\n"),
            ("PTTL q", ":1500\r\n"),
            ("EXPIRE none 10", ":0\r\n"),
            (
                "EXPIRE q x",
                "-ERR value is not an integer or out of range\r\n",
            ),
            (
                "EXPIRE q 9223372036854775807",
                "-ERR invalid expire time in 'expire' command\r\n",
            ),
            ("SET r v", "+OK\r\n"),
            ("EXPIRE r -1", ":1\r\n"),
            ("EXISTS r", ":0\r\n"),
            // SET without KEEPTTL clears the expiry; INCR keeps it.
            ("SET q w", "+OK\r\n"),
            ("TTL q", ":-1\r\n"),
            ("SET n 1 EX 100", "+OK\r\n"),
            ("INCR n", ":2\r\n"),
            ("TTL n", ":100\r\n"),
            ("SET n 5 KEEPTTL", "+OK\r\n"),
            ("TTL n", ":100\r\n"),
        ],
    );
    // Time going backwards in the log (a new primary with a slower clock)
    // cannot revive anything: now() never decreases.
    h.now += 60;
    assert_eq!(h.cmd("GET p"), "$-1\r\n");
    h.now -= 1_000;
    assert_eq!(h.cmd("GET p"), "$-1\r\n");
    assert_eq!(h.cmd("PTTL q"), ":-1\r\n");
}

#[test]
fn malformed_frame_closes_only_that_connection() {
    let mut h = H::new(1);
    assert_eq!(h.cmd("SET k v"), "+OK\r\n");
    // Replies to the complete requests before the bad frame still go out.
    let (out, closed) = h.raw_on(2, b"PING\r\n*1\r\n+BAD\r\n");
    assert_eq!(
        out,
        b"+PONG\r\n-ERR Protocol error: expected '$', got '+'\r\n"
    );
    assert!(closed);
    // Nothing more is read from it.
    assert!(h
        .event(Event::Data {
            conn: ConnId(2),
            bytes: b"PING\r\n".to_vec()
        })
        .is_empty());
    let (out, closed) = h.raw_on(3, b"*1\r\n$-7\r\n");
    assert_eq!(out, b"-ERR Protocol error: invalid bulk length\r\n");
    assert!(closed);
    assert_eq!(h.cmd("GET k"), "$1\r\nv\r\n");
}

#[test]
fn oversized_requests_are_refused() {
    let mut h = H::new(1);
    // A bulk larger than the limit is refused from its header alone.
    let (out, closed) = h.raw_on(2, b"*2\r\n$3\r\nGET\r\n$999999999\r\n");
    assert_eq!(out, b"-ERR Protocol error: invalid bulk length\r\n");
    assert!(closed);
    // Many bulks each within the limit, but a request over the bound.
    let mut req = b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n".to_vec();
    req.extend(format!("${}\r\n", 16 * 1024 * 1024).as_bytes());
    req.extend(vec![b'x'; 16 * 1024 * 1024 + 2]);
    req.extend(format!("${}\r\n", 16 * 1024 * 1024).as_bytes());
    // The last bulk one byte short: still incomplete, yet over the bound.
    req.extend(vec![b'x'; 16 * 1024 * 1024 - 1]);
    assert!(req.len() > MAX_REQUEST);
    let (out, closed) = h.raw_on(3, &req);
    assert_eq!(out, b"-ERR Protocol error: request too large\r\n");
    assert!(closed);
    assert_eq!(h.cmd("PING"), "+PONG\r\n");
}

#[test]
fn spop_and_smembers_agree_across_replicas() {
    let run = |seed: u64| {
        let mut h = H::new(seed);
        let members: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
        h.cmd(&format!("SADD s {}", members.join(" ")));
        let mut out = String::new();
        for _ in 0..10 {
            out += &h.cmd("SPOP s");
        }
        out += &h.cmd("SPOP s 5");
        out += &h.cmd("SMEMBERS s");
        (out, h.kv_hash())
    };
    let (a, ha) = run(7);
    let (b, hb) = run(7);
    assert_eq!(a, b);
    assert_eq!(ha, hb);
    // Another seed draws other members (with overwhelming probability).
    assert_ne!(run(8).0, a);
}

#[test]
fn panic_free_on_garbage_and_snapshot_round_trip() {
    let mut h = H::new(3);
    for line in [
        "SET a 1",
        "LPUSH l x y",
        "SADD s p q",
        "HSET h f v",
        "ZADD z 1.5 m",
        "SET e v EX 100",
    ] {
        h.cmd(line);
    }
    // A half-received request is part of the snapshot.
    h.raw(b"*2\r\n$3\r\nGET\r\n$1\r\n");
    let snap = h.rt.snapshot();
    let mut back = H {
        rt: Runtime::restore(&snap, |b| Ok(Box::new(Kv::restore(b)?))).unwrap(),
        index: h.index,
        now: h.now,
    };
    assert_eq!(back.kv_hash(), h.kv_hash());
    assert_eq!(back.rt.service().snapshot(), h.rt.service().snapshot());
    for bytes in [
        &b"a\r\n"[..],
        b"*1\r\n$4\r\nSPOP\r\n",
        b"SPOP s\r\nLRANGE l 0 -1\r\nTTL e\r\nZSCORE z m\r\n",
    ] {
        assert_eq!(back.raw(bytes), h.raw(bytes));
    }
    assert_eq!(back.kv_hash(), h.kv_hash());
    let kv_snap = h.rt.service().snapshot();
    assert!(Kv::restore(&kv_snap[..kv_snap.len() / 2]).is_err());
    assert_eq!(h.rt.panics(), 0);
}

/// A stream of commands touching every family.
fn command_stream() -> Vec<u8> {
    let mut s = Vec::new();
    for (i, line) in [
        "SET a 1",
        "INCR a",
        "GET a",
        "MSET x 1 y 2",
        "MGET x y z",
        "LPUSH l a b c",
        "LRANGE l 0 -1",
        "RPOP l",
        "SADD s a b c",
        "SPOP s",
        "SMEMBERS s",
        "HSET h a 1 b 2",
        "HGETALL h",
        "ZADD z 1 a 2 b",
        "ZPOPMIN z",
        "SET t v PX 5",
        "PTTL t",
        "DEL a",
        "EXISTS a x",
        "FOO bar",
        "GET",
    ]
    .iter()
    .enumerate()
    {
        let words: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        if i % 3 == 0 {
            s.extend_from_slice(line.as_bytes());
            s.extend_from_slice(b"\r\n");
        } else {
            s.extend(multibulk(&words));
        }
    }
    s
}

proptest! {
    #[test]
    fn any_split_gives_the_same_replies(cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..40)) {
        let stream = command_stream();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.extend([0, stream.len()]);
        points.sort_unstable();
        points.dedup();
        let mut whole = H::new(5);
        let expect = whole.raw(&stream);
        let mut split = H::new(5);
        let mut got = Vec::new();
        for w in points.windows(2) {
            got.extend(split.raw(&stream[w[0]..w[1]]));
            // Keep one log entry per chunk at the same time, so only the
            // framing differs (SPOP's draws depend on the entry index).
        }
        // SPOP depends on the entry index, so compare with it masked: the
        // reply shape and everything else must match exactly.
        let mask = |b: &[u8]| String::from_utf8_lossy(b).replace(['a', 'b', 'c'], "?");
        prop_assert_eq!(mask(&got), mask(&expect));
    }

    #[test]
    fn any_split_same_entries_same_bytes(
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
        restore_at in any::<prop::sample::Index>(),
    ) {
        // Two replicas given the same framing agree byte for byte, SPOP
        // included.
        let stream = command_stream();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.extend([0, stream.len()]);
        points.sort_unstable();
        points.dedup();
        let mut a = H::new(9);
        let mut b = H::new(9);
        for (i, w) in points.windows(2).enumerate() {
            prop_assert_eq!(a.raw(&stream[w[0]..w[1]]), b.raw(&stream[w[0]..w[1]]));
            if i == restore_at.index(points.len()) {
                // b continues from a snapshot (mid-request, possibly): the
                // same hash now and the same replies afterwards.
                let rt = Runtime::restore(&b.rt.snapshot(), |s| Ok(Box::new(Kv::restore(s)?))).unwrap();
                b.rt = rt;
                prop_assert_eq!(a.kv_hash(), b.kv_hash());
            }
        }
        prop_assert_eq!(a.kv_hash(), b.kv_hash());
    }
}

#[test]
fn a_huge_request_trickling_in_is_parsed_in_linear_time() {
    // 100k arguments in 512-byte pieces: re-reading every header on each
    // piece would take quadratic time (minutes in a debug build).
    let mut words: Vec<Vec<u8>> = vec![b"SADD".to_vec(), b"s".to_vec()];
    words.extend((0..100_000).map(|i| format!("m{i}").into_bytes()));
    let refs: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
    let req = multibulk(&refs);
    let mut h = H::new(1);
    let mut out = Vec::new();
    for chunk in req.chunks(512) {
        out.extend(h.raw(chunk));
    }
    assert_eq!(out, b":100000\r\n");
    assert_eq!(h.cmd("SCARD s"), ":100000\r\n");
}

/// A word for random commands: command names, keys, numbers, options.
fn word() -> impl Strategy<Value = Vec<u8>> {
    let names: Vec<&'static str> = crate::COMMANDS
        .iter()
        .map(|(n, _)| *n)
        // QUIT closes and the blocking pops wait: neither replies at once.
        .filter(|n| !["quit", "blpop", "brpop", "blmove", "brpoplpush"].contains(n))
        .collect();
    let words = [
        "a",
        "b",
        "c",
        "1",
        "-1",
        "0",
        "2",
        "x",
        "1.5",
        "inf",
        "-inf",
        "nan",
        "EX",
        "PX",
        "EXAT",
        "NX",
        "XX",
        "GT",
        "LT",
        "GET",
        "KEEPTTL",
        "WITHSCORES",
        "REV",
        "CH",
        "INCR",
        "100",
        "-100",
        "9223372036854775807",
        "-9223372036854775808",
        "",
        "*",
        "save",
        "COUNT",
        "DOCS",
        "ASYNC",
        "3",
        "MATCH",
        "TYPE",
        "LEFT",
        "RIGHT",
        "LIMIT",
        "ENCODING",
        "SETNAME",
        "LIB-NAME",
        "WHOAMI",
        "CHANNELS",
        "NUMSUB",
        "(1",
        "+inf",
    ];
    prop_oneof![
        proptest::sample::select(names).prop_map(|n| n.as_bytes().to_vec()),
        proptest::sample::select(words.to_vec()).prop_map(|w| w.as_bytes().to_vec()),
        proptest::collection::vec(any::<u8>(), 0..4),
    ]
}

fn random_command() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let names: Vec<&'static str> = crate::COMMANDS
        .iter()
        .map(|(n, _)| *n)
        // QUIT closes and the blocking pops wait: neither replies at once.
        .filter(|n| !["quit", "blpop", "brpop", "blmove", "brpoplpush"].contains(n))
        .collect();
    (
        proptest::sample::select(names),
        proptest::collection::vec(word(), 0..6),
    )
        .prop_map(|(n, mut rest)| {
            rest.insert(0, n.as_bytes().to_vec());
            rest
        })
}

proptest! {
    #[test]
    fn random_commands_never_panic_and_replicas_agree(
        cmds in proptest::collection::vec((random_command(), 0u64..3_000), 1..60),
    ) {
        let mut a = H::new(11);
        let mut b = H::new(11);
        for (words, dt) in &cmds {
            let refs: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
            let req = multibulk(&refs);
            a.now += dt;
            b.now += dt;
            let ra = a.raw(&req);
            prop_assert_eq!(&ra, &b.raw(&req));
            // Exactly one well-formed reply per request.
            prop_assert!(ra.ends_with(b"\r\n") && b"+-:$*%_,~>=".contains(&ra[0]), "{:?}", String::from_utf8_lossy(&ra));
        }
        prop_assert_eq!(a.rt.panics(), 0);
        prop_assert_eq!(a.kv_hash(), b.kv_hash());
        let c = Runtime::restore(&a.rt.snapshot(), |s| Ok(Box::new(Kv::restore(s)?))).unwrap();
        prop_assert_eq!(c.state_hash(), a.kv_hash());
    }
}

/// A kv runtime with the given bounds, connections 1..=3 open.
fn bounded(limits: tandem_core::sdk::Limits) -> H {
    let mut h = H::new(1);
    h.rt.set_limits(limits);
    h
}

/// Over the memory budget, writes get Redis' exact OOM error and change
/// nothing; reads, deletes and pops still work, and once room is made
/// writes work again. The accounting is the one recomputed from scratch.
#[test]
fn writes_past_max_memory_get_the_oom_error_and_reads_still_work() {
    let mut h = bounded(tandem_core::sdk::Limits {
        max_memory: 16 * 1024 * 1024,
        ..Default::default()
    });
    let value = "v".repeat(1024 * 1024);
    let mut stored = 0;
    loop {
        let reply = h.cmd(&format!("SET k{stored} {value}"));
        if reply != "+OK\r\n" {
            assert_eq!(
                reply,
                "-OOM command not allowed when used memory > 'maxmemory'.\r\n"
            );
            break;
        }
        stored += 1;
        assert!(stored < 100, "never refused");
    }
    // 3 connections charged 4 KiB each; each key ~1 MiB: refused once over.
    assert!((15..=16).contains(&stored), "{stored} values stored");
    let memory = h.rt.memory();
    assert!(memory.used > memory.limit);
    assert!(memory.used < memory.limit + 1024 * 1024 + 4096);
    // Every kind of write is refused, the keyspace does not change.
    let before = kv_of(&h).dbs;
    for cmd in [
        "SET x 1",
        "APPEND k0 x",
        "INCR n",
        "LPUSH l a",
        "RPUSH l a",
        "SADD s a",
        "HSET h f v",
        "ZADD z 1 a",
        "MSET a 1 b 2",
    ] {
        assert!(h.cmd(cmd).starts_with("-OOM "), "{cmd}");
    }
    assert!(kv_of(&h).dbs == before);
    // Reads work.
    assert_eq!(h.cmd("GET k0"), format!("$1048576\r\n{value}\r\n"));
    assert_eq!(h.cmd("DBSIZE"), format!(":{stored}\r\n"));
    assert_eq!(h.cmd("PING"), "+PONG\r\n");
    // DEL makes room; writes work again.
    assert_eq!(h.cmd("DEL k0 k1"), ":2\r\n");
    assert_eq!(h.cmd("SET x 1"), "+OK\r\n");
}

/// The running memory figure always equals the one computed from scratch,
/// whatever the commands (a restore recomputes it the same).
#[test]
fn the_memory_accounting_follows_every_command() {
    let mut h = H::new(5);
    let script = [
        "SET a hello",
        "SET a longer-value",
        "APPEND a !!",
        "APPEND fresh x",
        "INCR n",
        "INCRBY n 1000",
        "MSET b 1 c 22",
        "LPUSH l x yy zzz",
        "RPUSH l w",
        "LPOP l",
        "RPOP l 2",
        "SADD s a b c",
        "SADD s a d",
        "SREM s a zz",
        "SPOP s",
        "HSET h f v g ww",
        "HSET h f longer",
        "HDEL h g nope",
        "ZADD z 1 a 2 bb",
        "ZADD z 3 a",
        "ZPOPMIN z",
        "EXPIRE b 100",
        "SET c 5 PX 10",
        "DEL a l",
        "SET e v EX 1",
        "SETEX se 10 v",
        "PSETEX pse 10000 v",
        "SETNX nx v",
        "GETSET nx longer",
        "GETDEL nx",
        "MSETNX m1 a m2 b",
        "INCRBYFLOAT f 1.5",
        "INCRBYFLOAT f 0.25",
        "SETRANGE sr 5 abc",
        "SETRANGE sr 0 x",
        "GETEX sr PX 100000",
        "RENAME sr sr2",
        "COPY sr2 sr3",
        "PERSIST sr3",
        "RPUSH l2 a b c a d a",
        "LREM l2 2 a",
        "LSET l2 0 longer",
        "LTRIM l2 1 -1",
        "LPUSHX l2 x",
        "RPOPLPUSH l2 l3",
        "LMOVE l3 l2 LEFT RIGHT",
        "SADD s1 a b c",
        "SADD s2 b c d",
        "SMOVE s1 s2 a",
        "SINTERSTORE s3 s1 s2",
        "SUNIONSTORE s4 s1 s2",
        "SDIFFSTORE s5 s2 s1",
        "HMSET hm a 1 b 2",
        "HSETNX hm c 3",
        "HINCRBY hm a 10",
        "HINCRBYFLOAT hm b 0.5",
        "ZINCRBY zz 2 m",
        "ZADD zz 1 n 5 o",
        "ZREM zz n",
        "ZPOPMAX zz",
        "UNLINK se",
        "SELECT 3",
        "SET in3 value",
        "LPUSH l3 x",
        "MULTI",
        "SET q 1",
        "EXEC",
        "WATCH q in3",
        "SUBSCRIBE ch",
    ];
    for (i, cmd) in script.iter().enumerate() {
        h.cmd(cmd);
        let kv = kv_of(&h);
        for db in &kv.dbs {
            assert_eq!(db.used(), db.recount(), "after {cmd} (#{i})");
        }
        // The live figure (session state included) equals the restored one.
        assert_eq!(
            h.rt.service().memory_bytes(),
            kv.memory_bytes(),
            "after {cmd} (#{i})"
        );
    }
    h.cmd("UNSUBSCRIBE");
    h.cmd("SELECT 0");
    // Expiry (purge at a later log time) releases what it removes.
    h.now += 5_000;
    h.cmd("PING");
    let kv = kv_of(&h);
    assert_eq!(kv.dbs[0].used(), kv.dbs[0].recount());
    assert!(kv.dbs[0].used() > 0);
    h.cmd("FLUSHALL");
    assert!(kv_of(&h).dbs.iter().all(|db| db.used() == 0));
}

pub(crate) fn kv_of(h: &H) -> Kv {
    Kv::restore(&h.rt.service().snapshot()).unwrap()
}

/// The output cap stops a pipeline at the command whose reply would pass
/// it: the connection is reset, and the commands after it in the same
/// input never run (a SET behind an overflowing GET changes nothing).
#[test]
fn an_overflowing_pipeline_is_cut_at_the_cap_and_the_rest_never_runs() {
    let mut h = bounded(tandem_core::sdk::Limits {
        output_cap: 1024 * 1024,
        ..Default::default()
    });
    let value = vec![b'v'; 300 * 1024];
    h.raw(&multibulk(&[b"SET", b"big", &value]));
    let mut pipeline = Vec::new();
    for _ in 0..10 {
        pipeline.extend(multibulk(&[b"GET", b"big"]));
    }
    pipeline.extend(multibulk(&[b"SET", b"after", b"1"]));
    let acts = h.event(Event::Data {
        conn: ConnId(1),
        bytes: pipeline,
    });
    assert!(acts.contains(&Action::Abort { conn: ConnId(1) }));
    assert!(
        !acts.iter().any(|a| matches!(a, Action::Send { .. })),
        "{} actions",
        acts.len()
    );
    assert_eq!(h.rt.overflows(), 1);
    // Another client is not affected, and the SET never ran.
    let (out, _) = h.raw_on(2, &multibulk(&[b"EXISTS", b"after"]));
    assert_eq!(out, b":0\r\n");
    let (out, _) = h.raw_on(2, &multibulk(&[b"STRLEN", b"big"]));
    assert_eq!(out, format!(":{}\r\n", 300 * 1024).as_bytes());
}

/// `max_value` and `max_request` come from the limits.
#[test]
fn request_bounds_come_from_the_limits() {
    let mut h = bounded(tandem_core::sdk::Limits {
        max_value: 2048,
        max_request: 4096,
        ..Default::default()
    });
    let (out, closed) = h.raw_on(1, &multibulk(&[b"SET", b"k", &[b'x'; 2049]]));
    assert_eq!(out, b"-ERR Protocol error: invalid bulk length\r\n");
    assert!(closed);
    let (out, closed) = h.raw_on(2, &multibulk(&[b"SET", b"k", &[b'x'; 2048]]));
    assert_eq!(out, b"+OK\r\n");
    assert!(!closed);
    // An unfinished request over 4 KiB.
    let mut unfinished = b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n".to_vec();
    unfinished.extend(
        format!(
            "$2000\r\n{}\r\n$2000\r\n{}\r\n$2000\r\n{}",
            "x".repeat(2000),
            "y".repeat(2000),
            "z".repeat(100)
        )
        .as_bytes(),
    );
    let (out, closed) = h.raw_on(3, &unfinished);
    assert_eq!(out, b"-ERR Protocol error: request too large\r\n");
    assert!(closed);
}

/// SCAN cursors are exact as IEEE doubles (below 2^53): node-redis 4 holds
/// a cursor as a JavaScript number, and a larger one came back rounded and
/// made its iteration skip keys. Odd, so never the 0 that ends a scan.
#[test]
fn scan_cursors_fit_a_javascript_number() {
    for i in 0..20_000u32 {
        let key = format!("node-{i}:scanB:{}", i % 25);
        let at = crate::db::scan_hash(key.as_bytes());
        assert!(at < 1 << 53, "{key}: cursor {at} is not exact as a double");
        assert_eq!(at % 2, 1, "{key}: cursor {at} is even");
        assert_eq!(at as f64 as u64, at);
    }
}

/// A deferred snapshot is the snapshot of the state when it was taken,
/// whatever changes after it (the copy-on-write keyspace), byte for byte,
/// and its state hash is that state's.
#[test]
fn a_deferred_snapshot_is_the_state_when_taken() {
    let mut h = H::new(5);
    for i in 0..300 {
        h.cmd(&format!("SET k{i} {i}"));
        h.cmd(&format!("RPUSH l{} {i}", i % 7));
        h.cmd(&format!("HSET h{} f{i} {i}", i % 5));
        h.cmd(&format!("EXPIRE k{i} 1000"));
    }
    let expected = h.rt.snapshot();
    let hash = h.kv_hash();
    let taken = h.rt.snapshot_taken();
    assert!(
        taken.len() < expected.len() / 4,
        "the copy pins {} of {} bytes",
        taken.len(),
        expected.len()
    );
    // Changes after the copy: values rewritten, lists and hashes grown,
    // keys deleted, expiries dropped.
    for i in 0..300 {
        h.cmd(&format!("SET k{i} changed"));
        h.cmd(&format!("RPUSH l{} x", i % 7));
        h.cmd(&format!("HSET h{} f{i} y", i % 5));
        h.cmd(&format!("DEL k{}", (i + 1) % 300));
    }
    assert_ne!(h.rt.snapshot(), expected);
    let encoded = std::thread::spawn(move || taken.encode()).join().unwrap();
    let mut bytes = encoded.head.clone();
    bytes.extend_from_slice(&encoded.service);
    assert_eq!(bytes, expected);
    assert_eq!(encoded.state_hash, hash);
    // And it restores.
    let restored = Runtime::restore(&bytes, |b| Ok(Box::new(Kv::restore(b)?))).unwrap();
    assert_eq!(restored.state_hash(), hash);
}
