//! Tests of what issue 17 added: HELLO and RESP3 replies, AUTH and
//! requirepass, CLIENT, SELECT, transactions with WATCH, pub/sub, SCAN and
//! the new data commands — replies byte for byte, and the replicated
//! session state surviving a snapshot round trip.

use std::collections::BTreeMap;

use tandem_core::sdk::{Action, ConnId, Limits, Runtime, Service};

use crate::tests::{multibulk, table, H};
use crate::{Kv, KvConfig};

/// What one request on `conn` made happen, per connection: (bytes sent,
/// closed, aborted).
#[derive(Debug, Default, PartialEq)]
struct Seen {
    out: String,
    closed: bool,
    aborted: bool,
}

fn on(h: &mut H, conn: u64, line: &str) -> BTreeMap<u64, Seen> {
    let words: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
    let acts = h.event(tandem_core::sdk::Event::Data {
        conn: ConnId(conn),
        bytes: multibulk(&words),
    });
    let mut seen: BTreeMap<u64, Seen> = BTreeMap::new();
    for a in acts {
        match a {
            Action::Send { conn, bytes } => seen
                .entry(conn.0)
                .or_default()
                .out
                .push_str(&String::from_utf8_lossy(&bytes)),
            Action::Close { conn } => seen.entry(conn.0).or_default().closed = true,
            Action::Abort { conn } => seen.entry(conn.0).or_default().aborted = true,
            _ => {}
        }
    }
    seen
}

/// The reply on `conn` alone (nothing else may happen).
fn reply(h: &mut H, conn: u64, line: &str) -> String {
    let mut seen = on(h, conn, line);
    let mine = seen.remove(&conn).unwrap_or_default();
    assert!(seen.is_empty(), "{line}: other connections saw {seen:?}");
    assert!(!mine.closed && !mine.aborted, "{line}: closed");
    mine.out
}

/// A replica restored from `h`'s snapshot, at the same log position.
fn restored(h: &H) -> H {
    let rt = Runtime::restore(&h.rt.snapshot(), |s| Ok(Box::new(Kv::restore(s)?))).unwrap();
    assert_eq!(rt.state_hash(), h.rt.state_hash());
    H {
        rt,
        index: h.index,
        now: h.now,
    }
}

fn with_password(pass: &str) -> H {
    H::with_kv(
        Kv::with_config(KvConfig {
            requirepass: Some(pass.into()),
            ..KvConfig::default()
        }),
        1,
    )
}

#[test]
fn hello_switches_the_protocol_and_every_reply_follows_it() {
    let mut h = H::new(1);
    table(
        &mut h,
        &[
            ("HSET h f v", ":1\r\n"),
            ("SADD s b a", ":2\r\n"),
            ("ZADD z 1.5 m 2 n", ":2\r\n"),
            // RESP2 first.
            ("HGETALL h", "*2\r\n$1\r\nf\r\n$1\r\nv\r\n"),
            ("ZSCORE z m", "$3\r\n1.5\r\n"),
            ("GET nope", "$-1\r\n"),
            ("HELLO 4", "-NOPROTO unsupported protocol version\r\n"),
            (
                "HELLO x",
                "-ERR Protocol version is not an integer or out of range\r\n",
            ),
            (
                "HELLO 3",
                "%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.2.0\r\n\
                 $5\r\nproto\r\n:3\r\n$2\r\nid\r\n:1\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n\
                 $4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n",
            ),
            ("HGETALL h", "%1\r\n$1\r\nf\r\n$1\r\nv\r\n"),
            ("SMEMBERS s", "~2\r\n$1\r\na\r\n$1\r\nb\r\n"),
            ("SINTER s", "~2\r\n$1\r\na\r\n$1\r\nb\r\n"),
            ("ZSCORE z m", ",1.5\r\n"),
            ("ZINCRBY z 1 m", ",2.5\r\n"),
            (
                "ZRANGE z 0 -1 WITHSCORES",
                "*2\r\n*2\r\n$1\r\nn\r\n,2\r\n*2\r\n$1\r\nm\r\n,2.5\r\n",
            ),
            ("ZPOPMIN z 1", "*1\r\n*2\r\n$1\r\nn\r\n,2\r\n"),
            ("ZPOPMIN z", "*2\r\n$1\r\nm\r\n,2.5\r\n"),
            ("GET nope", "_\r\n"),
            ("LPOP nope 2", "_\r\n"),
            ("HMGET h f x", "*2\r\n$1\r\nv\r\n_\r\n"),
            ("CONFIG GET save", "%1\r\n$4\r\nsave\r\n$0\r\n\r\n"),
            (
                "INFO keyspace",
                "=48\r\ntxt:# Keyspace\r\ndb0:keys=2,expires=0,avg_ttl=0\r\n\r\n",
            ),
            (
                "HELLO",
                "%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.2.0\r\n\
                 $5\r\nproto\r\n:3\r\n$2\r\nid\r\n:1\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n\
                 $4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n",
            ),
        ],
    );
    // HELLO 2 answers in RESP2 and goes back to it; the protocol is per
    // connection.
    assert!(h.cmd("HELLO 2").starts_with("*14\r\n"));
    assert_eq!(h.cmd("GET nope"), "$-1\r\n");
    assert!(reply(&mut h, 2, "HELLO 3 SETNAME app").starts_with("%7\r\n"));
    assert_eq!(reply(&mut h, 2, "CLIENT GETNAME"), "$3\r\napp\r\n");
    // The protocol survives a snapshot round trip.
    let mut r = restored(&h);
    assert_eq!(reply(&mut r, 2, "GET nope"), "_\r\n");
    assert_eq!(r.cmd("GET nope"), "$-1\r\n");
}

#[test]
fn auth_with_requirepass() {
    let mut h = with_password("s3cret");
    table(
        &mut h,
        &[
            ("GET k", "-NOAUTH Authentication required.\r\n"),
            ("PING", "-NOAUTH Authentication required.\r\n"),
            (
                "HELLO 3",
                "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n",
            ),
            (
                "AUTH wrong",
                "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
            ),
            (
                "AUTH other s3cret",
                "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
            ),
            ("AUTH s3cret", "+OK\r\n"),
            ("SET k v", "+OK\r\n"),
            ("RESET", "+RESET\r\n"),
            ("GET k", "-NOAUTH Authentication required.\r\n"),
            ("AUTH default s3cret", "+OK\r\n"),
            ("GET k", "$1\r\nv\r\n"),
        ],
    );
    // HELLO with AUTH authenticates and switches at once.
    assert_eq!(
        reply(&mut h, 2, "HELLO 3 AUTH default nope"),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert!(reply(&mut h, 2, "HELLO 3 AUTH default s3cret").starts_with("%7\r\n"));
    assert_eq!(reply(&mut h, 2, "GET k"), "$1\r\nv\r\n");
    // CONFIG SET through the log changes it for new authentications;
    // connections already authenticated stay so.
    assert_eq!(h.cmd("CONFIG SET requirepass other"), "+OK\r\n");
    assert_eq!(reply(&mut h, 2, "GET k"), "$1\r\nv\r\n");
    assert_eq!(
        reply(&mut h, 3, "AUTH s3cret"),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(reply(&mut h, 3, "AUTH other"), "+OK\r\n");
    // The password is replicated state: a restored replica asks for it.
    let mut r = restored(&h);
    assert_eq!(reply(&mut r, 3, "RESET"), "+RESET\r\n");
    assert_eq!(
        reply(&mut r, 3, "GET k"),
        "-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(reply(&mut r, 3, "AUTH other"), "+OK\r\n");
    // Without a password, AUTH <password> is an error and HELLO AUTH with
    // the default user is accepted whatever the password (nopass).
    let mut h = H::new(1);
    assert_eq!(
        h.cmd("AUTH x"),
        "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n"
    );
    assert!(h.cmd("HELLO 3 AUTH default anything").starts_with("%7\r\n"));
}

#[test]
fn passwords_compare_in_constant_time_shape() {
    use crate::session::constant_time_eq;
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
    assert!(!constant_time_eq(b"", b"a"));
    assert!(constant_time_eq(b"", b""));
}

#[test]
fn client_commands_and_select() {
    let mut h = H::new(1);
    table(
        &mut h,
        &[
            ("CLIENT ID", ":1\r\n"),
            ("CLIENT GETNAME", "$-1\r\n"),
            ("CLIENT SETNAME web", "+OK\r\n"),
            ("CLIENT GETNAME", "$3\r\nweb\r\n"),
            ("CLIENT SETINFO LIB-NAME redis-py", "+OK\r\n"),
            ("CLIENT SETINFO LIB-VER 8.1.0", "+OK\r\n"),
            (
                "CLIENT SETINFO OTHER x",
                "-ERR Unrecognized option 'OTHER'\r\n",
            ),
            ("CLIENT NO-EVICT on", "+OK\r\n"),
            ("ACL WHOAMI", "$7\r\ndefault\r\n"),
            ("ECHO hi", "$2\r\nhi\r\n"),
            ("SELECT 1", "+OK\r\n"),
            ("SET k one", "+OK\r\n"),
            ("DBSIZE", ":1\r\n"),
            ("SELECT 15", "+OK\r\n"),
            ("GET k", "$-1\r\n"),
            ("SELECT 0", "+OK\r\n"),
            ("GET k", "$-1\r\n"),
            ("SET k zero", "+OK\r\n"),
            ("SELECT 1", "+OK\r\n"),
            ("GET k", "$3\r\none\r\n"),
            ("FLUSHDB", "+OK\r\n"),
            ("GET k", "$-1\r\n"),
        ],
    );
    let info = h.cmd("CLIENT INFO");
    assert!(
        info.contains("id=1 addr=10.0.0.9:5001 name=web")
            && info.contains(" db=1 ")
            && info.contains("lib-name=redis-py lib-ver=8.1.0"),
        "{info}"
    );
    // SELECT is per connection and survives a snapshot round trip.
    assert_eq!(reply(&mut h, 2, "GET k"), "$4\r\nzero\r\n");
    let mut r = restored(&h);
    assert_eq!(r.cmd("SET only1 x"), "+OK\r\n");
    assert_eq!(reply(&mut r, 2, "EXISTS only1"), ":0\r\n");
    let list = h.cmd("CLIENT LIST");
    assert_eq!(list.matches("id=").count(), 3, "{list}");
    assert!(h.cmd("INFO keyspace").contains("db0:keys=1"));
    // CLIENT KILL closes another connection and forgets it.
    let seen = on(&mut h, 1, "CLIENT KILL ID 2");
    assert_eq!(seen[&1].out, ":1\r\n");
    assert!(seen[&2].closed);
    assert!(on(&mut h, 2, "PING").is_empty());
    let seen = on(&mut h, 1, "CLIENT KILL 10.0.0.9:5003");
    assert_eq!(seen[&1].out, "+OK\r\n");
    assert!(seen[&3].closed);
    assert_eq!(
        h.cmd("CLIENT KILL 10.0.0.9:5003"),
        "-ERR No such client\r\n"
    );
    // Names are checked and bounded.
    assert_eq!(
        h.cmd("CLIENT SETNAME a\nb"),
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );
    let long = "n".repeat(crate::session::MAX_CLIENT_NAME + 1);
    assert!(h.cmd(&format!("CLIENT SETNAME {long}")).starts_with("-ERR"));
    // RESET goes back to database 0, RESP2, no name.
    h.cmd("HELLO 3");
    assert_eq!(h.cmd("RESET"), "+RESET\r\n");
    assert_eq!(h.cmd("GET k"), "$4\r\nzero\r\n");
    assert_eq!(h.cmd("CLIENT GETNAME"), "$-1\r\n");
    // QUIT answers then closes.
    let seen = on(&mut h, 1, "QUIT");
    assert_eq!(seen[&1].out, "+OK\r\n");
    assert!(seen[&1].closed);
}

#[test]
fn transactions_queue_then_run_with_redis_errors() {
    let mut h = H::new(1);
    table(
        &mut h,
        &[
            ("EXEC", "-ERR EXEC without MULTI\r\n"),
            ("DISCARD", "-ERR DISCARD without MULTI\r\n"),
            ("SET s text", "+OK\r\n"),
            ("MULTI", "+OK\r\n"),
            ("MULTI", "-ERR MULTI calls can not be nested\r\n"),
            ("WATCH x", "-ERR WATCH inside MULTI is not allowed\r\n"),
            ("SET a 1", "+QUEUED\r\n"),
            ("INCR a", "+QUEUED\r\n"),
            ("INCR s", "+QUEUED\r\n"),
            ("GET a", "+QUEUED\r\n"),
            // Exec-time errors stand in place; the rest runs.
            (
                "EXEC",
                "*4\r\n+OK\r\n:2\r\n-ERR value is not an integer or out of range\r\n$1\r\n2\r\n",
            ),
            // Queue-time errors abort the whole transaction.
            ("MULTI", "+OK\r\n"),
            ("SET a 10", "+QUEUED\r\n"),
            (
                "NOPE x",
                "-ERR unknown command 'NOPE', with args beginning with: 'x' \r\n",
            ),
            (
                "EXEC",
                "-EXECABORT Transaction discarded because of previous errors.\r\n",
            ),
            ("MULTI", "+OK\r\n"),
            (
                "GET",
                "-ERR wrong number of arguments for 'get' command\r\n",
            ),
            (
                "EXEC",
                "-EXECABORT Transaction discarded because of previous errors.\r\n",
            ),
            ("GET a", "$1\r\n2\r\n"),
            ("MULTI", "+OK\r\n"),
            ("SET a 99", "+QUEUED\r\n"),
            ("DISCARD", "+OK\r\n"),
            ("GET a", "$1\r\n2\r\n"),
            ("MULTI", "+OK\r\n"),
            ("SELECT 2", "+QUEUED\r\n"),
            ("SET a in2", "+QUEUED\r\n"),
            ("EXEC", "*2\r\n+OK\r\n+OK\r\n"),
            ("GET a", "$3\r\nin2\r\n"),
        ],
    );
    // A transaction under way survives a snapshot round trip.
    h.cmd("SELECT 0");
    h.cmd("MULTI");
    h.cmd("INCR a");
    let mut r = restored(&h);
    assert_eq!(r.cmd("EXEC"), "*1\r\n:3\r\n");
}

#[test]
fn queued_commands_are_bounded() {
    let mut h = H::with_kv(
        Kv::with_config(KvConfig {
            max_queued_commands: 2,
            ..KvConfig::default()
        }),
        1,
    );
    h.cmd("MULTI");
    h.cmd("SET a 1");
    h.cmd("SET b 1");
    assert_eq!(
        h.cmd("SET c 1"),
        "-ERR too many commands queued in this transaction\r\n"
    );
    assert_eq!(
        h.cmd("EXEC"),
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(h.cmd("EXISTS a"), ":0\r\n");
    assert!(KvConfig {
        max_queued_commands: 0,
        ..KvConfig::default()
    }
    .validate()
    .is_err());
}

#[test]
fn watch_aborts_exec_after_a_change_by_anyone() {
    let mut h = H::new(1);
    h.cmd("SET k v");
    // Changed by another connection: EXEC answers the null array.
    assert_eq!(h.cmd("WATCH k"), "+OK\r\n");
    assert_eq!(reply(&mut h, 2, "SET k other"), "+OK\r\n");
    h.cmd("MULTI");
    h.cmd("SET k mine");
    assert_eq!(h.cmd("EXEC"), "*-1\r\n");
    assert_eq!(h.cmd("GET k"), "$5\r\nother\r\n");
    // Unchanged (a read, a failed write, another key): it runs.
    h.cmd("WATCH k");
    reply(&mut h, 2, "GET k");
    reply(&mut h, 2, "SET k x NX");
    reply(&mut h, 2, "SET k2 x");
    h.cmd("MULTI");
    h.cmd("SET k mine");
    assert_eq!(h.cmd("EXEC"), "*1\r\n+OK\r\n");
    // The watch ended with EXEC: later changes do not matter.
    reply(&mut h, 2, "SET k again");
    h.cmd("MULTI");
    assert_eq!(h.cmd("EXEC"), "*0\r\n");
    // Another database's key of the same name is another key.
    h.cmd("WATCH k");
    reply(&mut h, 2, "SELECT 1");
    reply(&mut h, 2, "SET k db1");
    h.cmd("MULTI");
    assert_eq!(h.cmd("EXEC"), "*0\r\n");
    // An expiry counts as a change; so do DEL, EXPIRE and FLUSHALL.
    h.cmd("SET t v PX 100");
    h.cmd("WATCH t");
    h.now += 200;
    h.cmd("MULTI");
    assert_eq!(h.cmd("EXEC"), "*-1\r\n");
    for change in ["DEL k", "EXPIRE k 100", "FLUSHALL"] {
        h.cmd("SET k v");
        h.cmd("WATCH k");
        reply(&mut h, 2, "SELECT 0");
        reply(&mut h, 2, change);
        h.cmd("MULTI");
        assert_eq!(h.cmd("EXEC"), "*-1\r\n", "{change}");
    }
    // UNWATCH forgets; RESP3 gets the null.
    h.cmd("SET k v");
    h.cmd("WATCH k");
    h.cmd("UNWATCH");
    reply(&mut h, 2, "SET k w");
    h.cmd("MULTI");
    assert_eq!(h.cmd("EXEC"), "*0\r\n");
    h.cmd("HELLO 3");
    h.cmd("WATCH k");
    reply(&mut h, 2, "SET k z");
    h.cmd("MULTI");
    assert_eq!(h.cmd("EXEC"), "_\r\n");
    // Watches are replicated: a restored replica aborts the same EXEC.
    h.cmd("WATCH k");
    let mut r = restored(&h);
    reply(&mut r, 2, "SET k changed");
    r.cmd("MULTI");
    assert_eq!(r.cmd("EXEC"), "_\r\n");
    // Bounded per connection.
    let mut h = H::with_kv(
        Kv::with_config(KvConfig {
            max_watched_keys: 2,
            ..KvConfig::default()
        }),
        1,
    );
    assert_eq!(h.cmd("WATCH a b"), "+OK\r\n");
    assert_eq!(h.cmd("WATCH c"), "-ERR too many watched keys\r\n");
}

#[test]
fn pubsub_in_both_protocols() {
    let mut h = H::new(1);
    // Connection 2 subscribes in RESP2, connection 3 in RESP3 by pattern.
    assert_eq!(
        reply(&mut h, 2, "SUBSCRIBE news sport"),
        "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$5\r\nsport\r\n:2\r\n"
    );
    reply(&mut h, 3, "HELLO 3");
    assert_eq!(
        reply(&mut h, 3, "PSUBSCRIBE n*"),
        ">3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:1\r\n"
    );
    let seen = on(&mut h, 1, "PUBLISH news hi");
    assert_eq!(seen[&1].out, ":2\r\n");
    assert_eq!(
        seen[&2].out,
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
    );
    assert_eq!(
        seen[&3].out,
        ">4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
    );
    let seen = on(&mut h, 1, "PUBLISH nobody hi");
    assert_eq!(seen[&1].out, ":1\r\n");
    assert!(seen[&3].out.contains("nobody"));
    assert_eq!(h.cmd("PUBLISH other hi"), ":0\r\n");
    // A RESP2 subscriber may only (un)subscribe, ping, quit or reset.
    assert_eq!(
        reply(&mut h, 2, "GET k"),
        "-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
    );
    assert_eq!(reply(&mut h, 2, "PING"), "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    // A RESP3 one can do anything, and publishing to itself puts the
    // message before the reply.
    assert_eq!(reply(&mut h, 3, "GET k"), "_\r\n");
    assert_eq!(
        reply(&mut h, 3, "PUBLISH nx me"),
        ">4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$2\r\nnx\r\n$2\r\nme\r\n:1\r\n"
    );
    assert_eq!(
        h.cmd("PUBSUB CHANNELS"),
        "*2\r\n$4\r\nnews\r\n$5\r\nsport\r\n"
    );
    assert_eq!(
        h.cmd("PUBSUB NUMSUB news x"),
        "*4\r\n$4\r\nnews\r\n:1\r\n$1\r\nx\r\n:0\r\n"
    );
    assert_eq!(h.cmd("PUBSUB NUMPAT"), ":1\r\n");
    // Subscriptions are replicated: a restored replica delivers the same.
    let mut r = restored(&h);
    let seen = on(&mut r, 1, "PUBLISH sport goal");
    assert_eq!(
        seen[&2].out,
        "*3\r\n$7\r\nmessage\r\n$5\r\nsport\r\n$4\r\ngoal\r\n"
    );
    // UNSUBSCRIBE with no channel leaves them all; then normal commands.
    assert_eq!(
        reply(&mut h, 2, "UNSUBSCRIBE"),
        "*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$5\r\nsport\r\n:0\r\n"
    );
    assert_eq!(reply(&mut h, 2, "GET k"), "$-1\r\n");
    let seen = on(&mut h, 1, "PUBLISH news hi");
    assert_eq!(seen[&1].out, ":1\r\n");
    assert!(!seen.contains_key(&2) && seen.contains_key(&3));
    // A closed subscriber is forgotten.
    h.event(tandem_core::sdk::Event::Reset { conn: ConnId(3) });
    assert_eq!(h.cmd("PUBLISH news hi"), ":0\r\n");
    assert_eq!(h.cmd("PUBSUB NUMPAT"), ":0\r\n");
}

#[test]
fn a_subscriber_that_never_reads_is_reset_at_the_output_cap() {
    let mut h = H::new(1);
    h.rt.set_limits(Limits {
        output_cap: 64 * 1024,
        ..Limits::default()
    });
    reply(&mut h, 2, "SUBSCRIBE feed");
    let big = "x".repeat(10_000);
    let mut reset = false;
    for _ in 0..10 {
        let seen = on(&mut h, 1, &format!("PUBLISH feed {big}"));
        if seen.get(&2).is_some_and(|s| s.aborted) {
            reset = true;
            break;
        }
    }
    assert!(reset, "the subscriber was never reset");
    assert_eq!(h.cmd("PUBLISH feed small"), ":0\r\n");
    // The publisher is unaffected.
    assert_eq!(h.cmd("PING"), "+PONG\r\n");
}

#[test]
fn subscriptions_and_patterns_are_bounded() {
    let mut h = H::with_kv(
        Kv::with_config(KvConfig {
            max_subscriptions: 2,
            ..KvConfig::default()
        }),
        1,
    );
    h.cmd("HELLO 3");
    assert!(h.cmd("SUBSCRIBE a b").ends_with(":2\r\n"));
    assert!(h
        .cmd("PSUBSCRIBE c*")
        .ends_with("-ERR too many subscriptions\r\n"));
    let long = "p".repeat(crate::MAX_PATTERN + 1);
    assert!(h
        .cmd(&format!("PSUBSCRIBE {long}"))
        .starts_with("-ERR pattern longer"));
    assert!(h
        .cmd(&format!("KEYS {long}"))
        .starts_with("-ERR pattern longer"));
}

#[test]
fn scan_visits_every_key_once_and_its_cursor_survives_a_restore() {
    let mut h = H::new(1);
    for i in 0..100 {
        h.cmd(&format!("SET key:{i} {i}"));
    }
    h.cmd("LPUSH alist x");
    // Full iteration, COUNT 7.
    let scan = |h: &mut H, cursor: &str, extra: &str| -> (String, Vec<String>) {
        let out = h.cmd(&format!("SCAN {cursor}{extra}"));
        // *2 $n cursor *m ($k key)*
        let lines: Vec<&str> = out.split("\r\n").collect();
        let next = lines[2].to_string();
        let keys = lines[4..]
            .iter()
            .skip(1)
            .step_by(2)
            .map(|s| s.to_string())
            .collect();
        (next, keys)
    };
    let mut seen = Vec::new();
    let mut cursor = "0".to_string();
    let mut calls = 0;
    let mut mid = None;
    loop {
        let (next, keys) = scan(&mut h, &cursor, " COUNT 7");
        seen.extend(keys);
        calls += 1;
        if calls == 5 {
            mid = Some((next.clone(), seen.clone()));
        }
        if next == "0" {
            break;
        }
        cursor = next;
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "a key came twice");
    assert_eq!(seen.len(), 101);
    assert!(calls > 10, "COUNT was ignored: {calls} calls");
    // A cursor from before a restore continues the same on the clone.
    let (cursor, before) = mid.unwrap();
    let mut r = restored(&h);
    let mut rest = before;
    let mut cursor = cursor;
    while cursor != "0" {
        let (next, keys) = scan(&mut r, &cursor, " COUNT 7");
        rest.extend(keys);
        cursor = next;
    }
    assert_eq!(rest, seen);
    // MATCH and TYPE filter.
    let (_, keys) = scan(&mut h, "0", " COUNT 1000 MATCH key:1?");
    assert_eq!(keys.len(), 10);
    let (_, keys) = scan(&mut h, "0", " COUNT 1000 TYPE list");
    assert_eq!(keys, ["alist"]);
    assert_eq!(h.cmd("SCAN x"), "-ERR invalid cursor\r\n");
    assert_eq!(h.cmd("SCAN 0 COUNT 0"), "-ERR syntax error\r\n");
    assert_eq!(h.cmd("KEYS key:9*").matches("key:9").count(), 11);
    // Keys present all along are returned even if others come and go.
    let mut cursor = "0".to_string();
    let mut got = Vec::new();
    let mut n = 0;
    loop {
        let (next, keys) = scan(&mut h, &cursor, " COUNT 5");
        got.extend(keys);
        h.cmd(&format!("SET new:{n} x"));
        h.cmd(&format!("DEL key:{}", 99 - n));
        n += 1;
        if next == "0" {
            break;
        }
        cursor = next;
    }
    for i in 0..(100 - n) {
        assert!(got.contains(&format!("key:{i}")), "key:{i} missed");
    }
}

#[test]
fn collection_scans_keys_type_rename_copy_and_random() {
    let mut h = H::new(1);
    table(
        &mut h,
        &[
            ("HSET h a 1 b 2", ":2\r\n"),
            (
                "HSCAN h 0",
                "*2\r\n$1\r\n0\r\n*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n",
            ),
            (
                "HSCAN h 0 MATCH b",
                "*2\r\n$1\r\n0\r\n*2\r\n$1\r\nb\r\n$1\r\n2\r\n",
            ),
            ("SADD s x y", ":2\r\n"),
            (
                "SSCAN s 0 COUNT 1",
                "*2\r\n$1\r\n0\r\n*2\r\n$1\r\nx\r\n$1\r\ny\r\n",
            ),
            ("ZADD z 1.5 m", ":1\r\n"),
            (
                "ZSCAN z 0",
                "*2\r\n$1\r\n0\r\n*2\r\n$1\r\nm\r\n$3\r\n1.5\r\n",
            ),
            (
                "SSCAN h 0",
                "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            ),
            ("TYPE h", "+hash\r\n"),
            ("TYPE s", "+set\r\n"),
            ("TYPE z", "+zset\r\n"),
            ("TYPE none", "+none\r\n"),
            ("SET str 12", "+OK\r\n"),
            ("TYPE str", "+string\r\n"),
            ("OBJECT ENCODING str", "$3\r\nint\r\n"),
            ("OBJECT ENCODING h", "$8\r\nlistpack\r\n"),
            ("OBJECT ENCODING none", "$-1\r\n"),
            ("EXPIRE str 100", ":1\r\n"),
            ("RENAME str str2", "+OK\r\n"),
            ("TTL str2", ":100\r\n"),
            ("RENAME none x", "-ERR no such key\r\n"),
            ("RENAMENX str2 h", ":0\r\n"),
            ("COPY str2 str3", ":1\r\n"),
            ("COPY str2 str3", ":0\r\n"),
            ("COPY h str3 REPLACE", ":1\r\n"),
            ("TYPE str3", "+hash\r\n"),
            ("PERSIST str2", ":1\r\n"),
            ("TTL str2", ":-1\r\n"),
            ("EXPIREAT str2 1", ":1\r\n"),
            ("EXISTS str2", ":0\r\n"),
            ("SET e v", "+OK\r\n"),
            ("PEXPIREAT e 5000000", ":1\r\n"),
            ("PEXPIRETIME e", ":5000000\r\n"),
            ("EXPIRETIME e", ":5000\r\n"),
            ("UNLINK e none", ":1\r\n"),
            ("TOUCH h s none", ":2\r\n"),
        ],
    );
    // RANDOMKEY draws from the log's generator: the same on every replica.
    let mut a = H::new(3);
    let mut b = H::new(3);
    for i in 0..50 {
        a.cmd(&format!("SET k{i} v"));
        b.cmd(&format!("SET k{i} v"));
    }
    let draws: Vec<String> = (0..20).map(|_| a.cmd("RANDOMKEY")).collect();
    let again: Vec<String> = (0..20).map(|_| b.cmd("RANDOMKEY")).collect();
    assert_eq!(draws, again);
    let mut distinct = draws.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 5, "{draws:?}");
    assert_eq!(H::new(1).cmd("RANDOMKEY"), "$-1\r\n");
}

#[test]
fn string_commands_users_reach_for() {
    let mut h = H::new(1);
    table(
        &mut h,
        &[
            ("SETEX k 10 v", "+OK\r\n"),
            ("TTL k", ":10\r\n"),
            (
                "SETEX k 0 v",
                "-ERR invalid expire time in 'setex' command\r\n",
            ),
            ("PSETEX p 1500 v", "+OK\r\n"),
            ("PTTL p", ":1500\r\n"),
            ("SETNX k other", ":0\r\n"),
            ("SETNX n v", ":1\r\n"),
            ("GETSET n w", "$1\r\nv\r\n"),
            ("GETDEL n", "$1\r\nw\r\n"),
            ("GETDEL n", "$-1\r\n"),
            ("GETEX k PERSIST", "$1\r\nv\r\n"),
            ("TTL k", ":-1\r\n"),
            ("GETEX k EX 5", "$1\r\nv\r\n"),
            ("TTL k", ":5\r\n"),
            ("GETEX k FOO", "-ERR syntax error\r\n"),
            ("INCRBYFLOAT f 10.5", "$4\r\n10.5\r\n"),
            ("INCRBYFLOAT f 0.1", "$4\r\n10.6\r\n"),
            ("INCRBYFLOAT f -5", "$3\r\n5.6\r\n"),
            ("INCRBYFLOAT f x", "-ERR value is not a valid float\r\n"),
            ("INCRBYFLOAT k 1", "-ERR value is not a valid float\r\n"),
            ("SET r Hello", "+OK\r\n"),
            ("GETRANGE r 0 3", "$4\r\nHell\r\n"),
            ("GETRANGE r -3 -1", "$3\r\nllo\r\n"),
            ("GETRANGE r 10 20", "$0\r\n\r\n"),
            ("SETRANGE r 6 World", ":11\r\n"),
            ("GET r", "$11\r\nHello\0World\r\n"),
            ("SETRANGE r -1 x", "-ERR offset is out of range\r\n"),
            ("MSETNX a 1 b 2", ":1\r\n"),
            ("MSETNX b 3 c 4", ":0\r\n"),
            ("EXISTS c", ":0\r\n"),
            ("TIME", "*2\r\n$1\r\n1\r\n$1\r\n0\r\n"),
        ],
    );
}

#[test]
fn list_set_hash_zset_commands_users_reach_for() {
    let mut h = H::new(1);
    table(
        &mut h,
        &[
            ("LPUSHX none a", ":0\r\n"),
            ("RPUSH l a b c a", ":4\r\n"),
            ("LINDEX l -1", "$1\r\na\r\n"),
            ("LINDEX l 9", "$-1\r\n"),
            ("LSET l 1 B", "+OK\r\n"),
            ("LSET l 9 B", "-ERR index out of range\r\n"),
            ("LREM l -1 a", ":1\r\n"),
            ("LRANGE l 0 -1", "*3\r\n$1\r\na\r\n$1\r\nB\r\n$1\r\nc\r\n"),
            ("LTRIM l 1 -1", "+OK\r\n"),
            ("RPOPLPUSH l m", "$1\r\nc\r\n"),
            ("LMOVE l m RIGHT LEFT", "$1\r\nB\r\n"),
            ("EXISTS l", ":0\r\n"),
            ("LRANGE m 0 -1", "*2\r\n$1\r\nB\r\n$1\r\nc\r\n"),
            ("SADD s1 a b c", ":3\r\n"),
            ("SADD s2 b c d", ":3\r\n"),
            ("SMISMEMBER s1 a d", "*2\r\n:1\r\n:0\r\n"),
            ("SINTER s1 s2", "*2\r\n$1\r\nb\r\n$1\r\nc\r\n"),
            (
                "SUNION s1 s2",
                "*4\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$1\r\nd\r\n",
            ),
            ("SDIFF s1 s2", "*1\r\n$1\r\na\r\n"),
            ("SDIFFSTORE s3 s1 s2", ":1\r\n"),
            ("SMOVE s1 s3 b", ":1\r\n"),
            ("SMEMBERS s3", "*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
            ("SRANDMEMBER none", "$-1\r\n"),
            ("SRANDMEMBER s3 5", "*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
            ("HMSET h a 1 b 2", "+OK\r\n"),
            ("HSETNX h a 9", ":0\r\n"),
            ("HMGET h a x", "*2\r\n$1\r\n1\r\n$-1\r\n"),
            ("HEXISTS h b", ":1\r\n"),
            ("HKEYS h", "*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
            ("HVALS h", "*2\r\n$1\r\n1\r\n$1\r\n2\r\n"),
            ("HINCRBY h a 10", ":11\r\n"),
            ("HINCRBYFLOAT h b 0.5", "$3\r\n2.5\r\n"),
            ("HINCRBY h b 1", "-ERR hash value is not an integer\r\n"),
            ("HSTRLEN h b", ":3\r\n"),
            ("ZADD z 1 a 2 b 3 c", ":3\r\n"),
            ("ZRANK z c", ":2\r\n"),
            ("ZREVRANK z c", ":0\r\n"),
            ("ZRANK z x", "$-1\r\n"),
            ("ZCOUNT z (1 +inf", ":2\r\n"),
            ("ZRANGEBYSCORE z -inf 2", "*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
            (
                "ZRANGEBYSCORE z (1 3 WITHSCORES LIMIT 1 1",
                "*2\r\n$1\r\nc\r\n$1\r\n3\r\n",
            ),
            ("ZREVRANGE z 0 0", "*1\r\n$1\r\nc\r\n"),
            ("ZMSCORE z a x", "*2\r\n$1\r\n1\r\n$-1\r\n"),
            ("ZREM z a x", ":1\r\n"),
            ("ZPOPMAX z", "*2\r\n$1\r\nc\r\n$1\r\n3\r\n"),
            ("ZCARD z", ":1\r\n"),
        ],
    );
}

#[test]
fn sessions_never_panic_on_hostile_sequences_and_replicas_agree() {
    // Every connection command in odd orders and states, on two replicas.
    let script = [
        "MULTI",
        "SUBSCRIBE a",
        "EXEC",
        "PSUBSCRIBE *",
        "PUBLISH a x",
        "HELLO 3",
        "MULTI",
        "WATCH k",
        "DISCARD",
        "WATCH k k k",
        "RESET",
        "UNSUBSCRIBE",
        "PUNSUBSCRIBE x",
        "CLIENT KILL ID 99",
        "CLIENT LIST ID 1 2",
        "CLIENT LIST ID x",
        "SELECT 99",
        "HELLO 3 AUTH",
        "HELLO 2 SETNAME",
        "AUTH a b c",
        "MULTI",
        "MULTI",
        "EXEC",
        "EXEC",
        "PUBSUB",
        "PUBSUB x",
        "CLIENT",
        "CLIENT KILL",
        "CLIENT KILL ID",
        "SCAN 18446744073709551615",
        "SCAN 0 MATCH",
        "OBJECT",
        "OBJECT ENCODING",
        "SRANDMEMBER s -5",
        "CONFIG SET x y",
        "INFO everything",
    ];
    let mut a = H::new(9);
    let mut b = H::new(9);
    a.cmd("SADD s x");
    b.cmd("SADD s x");
    for (i, line) in script.iter().enumerate() {
        let conn = 1 + (i as u64 % 3);
        let x = on(&mut a, conn, line);
        let y = on(&mut b, conn, line);
        assert_eq!(x, y, "{line}");
    }
    assert_eq!(a.rt.panics(), 0);
    assert_eq!(a.rt.state_hash(), b.rt.state_hash());
    let r = restored(&a);
    assert_eq!(r.rt.service().memory_bytes(), a.rt.service().memory_bytes());
}

/// COMMANDS.md names exactly the commands of [`crate::COMMANDS`], so the
/// documented list is the supported one.
#[test]
fn the_supported_command_list_is_exact() {
    let doc = include_str!("../COMMANDS.md");
    let body = &doc[doc.find("## Connection").unwrap()..doc.find("## Bounds").unwrap()];
    let mut documented = std::collections::BTreeSet::new();
    for piece in body.split('`').skip(1).step_by(2) {
        let word = piece.split(' ').next().unwrap_or_default();
        if !word.is_empty() && word.chars().all(|c| c.is_ascii_uppercase()) {
            documented.insert(word.to_ascii_lowercase());
        }
    }
    let supported: std::collections::BTreeSet<String> =
        crate::COMMANDS.iter().map(|(n, _)| n.to_string()).collect();
    let missing: Vec<_> = supported.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "supported but not documented: {missing:?}"
    );
}

#[test]
fn the_command_table_is_sorted_for_lookup() {
    assert!(crate::COMMANDS.windows(2).all(|w| w[0].0 < w[1].0));
    for (name, _) in crate::COMMANDS {
        assert_eq!(crate::session::lookup(name).map(|e| e.0), Some(*name));
    }
    assert!(crate::session::lookup("nope").is_none());
}

/// Sends `line` on `conn` and returns the generation of the timer it set.
fn timer_of(h: &mut H, conn: u64, line: &str) -> u64 {
    let words: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
    let acts = h.event(tandem_core::sdk::Event::Data {
        conn: ConnId(conn),
        bytes: multibulk(&words),
    });
    let mut generation = None;
    for a in acts {
        match a {
            Action::SetTimer {
                id, generation: g, ..
            } => {
                assert_eq!(id.0, conn);
                generation = Some(g);
            }
            other => panic!("{line}: unexpected {other:?}"),
        }
    }
    generation.expect("a timer")
}

#[test]
fn blocking_pops_wait_for_a_push_in_order() {
    let mut h = H::new(1);
    // Blocked: no reply, and the pipelined PING waits with it.
    let mut req = multibulk(&[b"BLPOP", b"q", b"0"]);
    req.extend(multibulk(&[b"PING"]));
    assert!(h
        .event(tandem_core::sdk::Event::Data {
            conn: ConnId(1),
            bytes: req
        })
        .is_empty());
    assert!(on(&mut h, 3, "BRPOP q other 0").is_empty());
    // A push serves the first blocked, then the next, in order.
    let seen = on(&mut h, 2, "RPUSH q a b c");
    assert_eq!(seen[&2].out, ":3\r\n");
    assert_eq!(seen[&1].out, "*2\r\n$1\r\nq\r\n$1\r\na\r\n+PONG\r\n");
    // (BRPOP takes from the tail.)
    assert_eq!(seen[&3].out, "*2\r\n$1\r\nq\r\n$1\r\nc\r\n");
    assert_eq!(reply(&mut h, 2, "LRANGE q 0 -1"), "*1\r\n$1\r\nb\r\n");
    // Served at once when there is an element.
    assert_eq!(h.cmd("BRPOP q 0"), "*2\r\n$1\r\nq\r\n$1\r\nb\r\n");
    assert_eq!(h.cmd("EXISTS q"), ":0\r\n");
    // BLMOVE: the element moves, and its push serves one blocked on dst.
    assert!(on(&mut h, 3, "BLPOP dst 0").is_empty());
    assert!(on(&mut h, 1, "BLMOVE src dst LEFT RIGHT 0").is_empty());
    let seen = on(&mut h, 2, "LPUSH src x");
    assert_eq!(seen[&1].out, "$1\r\nx\r\n");
    assert_eq!(seen[&3].out, "*2\r\n$3\r\ndst\r\n$1\r\nx\r\n");
    assert_eq!(reply(&mut h, 2, "EXISTS src dst"), ":0\r\n");
    // Inside EXEC nothing blocks; a push in a transaction serves the
    // blocked after the whole transaction.
    table(
        &mut h,
        &[
            ("MULTI", "+OK\r\n"),
            ("BLPOP none 0", "+QUEUED\r\n"),
            ("EXEC", "*1\r\n*-1\r\n"),
            (
                "BLPOP k 1 x",
                "-ERR timeout is not a float or out of range\r\n",
            ),
            ("BLPOP k -1", "-ERR timeout is negative\r\n"),
            ("SET str v", "+OK\r\n"),
            (
                "BLPOP str 0",
                "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            ),
        ],
    );
    assert!(on(&mut h, 3, "BLPOP t 0").is_empty());
    h.cmd("MULTI");
    h.cmd("LPUSH t 1");
    h.cmd("LLEN t");
    let seen = on(&mut h, 1, "EXEC");
    assert_eq!(seen[&1].out, "*2\r\n:1\r\n:1\r\n");
    assert_eq!(seen[&3].out, "*2\r\n$1\r\nt\r\n$1\r\n1\r\n");
}

#[test]
fn a_blocking_pop_times_out_on_the_log_clock_and_survives_a_restore() {
    let mut h = H::new(1);
    let generation = timer_of(&mut h, 1, "BLPOP q 1.5");
    // Blocked state is replicated: a restored replica serves the same.
    let mut r = restored(&h);
    let seen = on(&mut r, 2, "LPUSH q v");
    assert_eq!(seen[&1].out, "*2\r\n$1\r\nq\r\n$1\r\nv\r\n");
    // The timeout: the null array (RESP3: null), then the input goes on.
    h.now += 1_500;
    let acts = h.event(tandem_core::sdk::Event::Timer {
        id: tandem_core::sdk::TimerId(1),
        generation,
    });
    assert_eq!(
        acts,
        vec![Action::Send {
            conn: ConnId(1),
            bytes: b"*-1\r\n".to_vec()
        }]
    );
    assert_eq!(h.cmd("PING"), "+PONG\r\n");
    h.cmd("HELLO 3");
    let generation = timer_of(&mut h, 1, "BRPOPLPUSH q d 0.01");
    let acts = h.event(tandem_core::sdk::Event::Timer {
        id: tandem_core::sdk::TimerId(1),
        generation,
    });
    assert_eq!(
        acts,
        vec![Action::Send {
            conn: ConnId(1),
            bytes: b"_\r\n".to_vec()
        }]
    );
    // A client that goes away while blocked is forgotten.
    assert!(on(&mut h, 3, "BLPOP gone 0").is_empty());
    h.event(tandem_core::sdk::Event::Reset { conn: ConnId(3) });
    assert_eq!(reply(&mut h, 2, "LPUSH gone x"), ":1\r\n");
    assert_eq!(reply(&mut h, 2, "LLEN gone"), ":1\r\n");
}
