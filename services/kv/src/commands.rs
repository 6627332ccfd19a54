//! The data commands (strings, keys, lists, sets, hashes, sorted sets) of
//! one database: each writes its reply in the connection's protocol; the
//! ones added for redis-py's defaults are in [`crate::more`]. Error texts follow Redis 7 byte for byte where
//! clients may look at them.

use std::collections::VecDeque;

use tandem_core::sdk::Context;

use crate::db::{elem_weight, field_weight, member_weight, Db, Value, ZSet};
use crate::more;
use crate::resp::{self, array, bulk, double, int, map, nil, nil_array, parse_i64, simple, Out};

/// Every command and its Redis arity (`n`: exactly n words with the name;
/// `-n`: at least n). This is the supported-command list.
pub const COMMANDS: &[(&str, i32)] = &[
    ("acl", -2),
    ("append", 3),
    ("auth", -2),
    ("blmove", 6),
    ("blpop", -3),
    ("brpop", -3),
    ("brpoplpush", 4),
    ("client", -2),
    ("command", -1),
    ("config", -2),
    ("copy", -3),
    ("dbsize", 1),
    ("decr", 2),
    ("decrby", 3),
    ("del", -2),
    ("discard", 1),
    ("echo", 2),
    ("exec", 1),
    ("exists", -2),
    ("expire", -3),
    ("expireat", -3),
    ("expiretime", 2),
    ("flushall", -1),
    ("flushdb", -1),
    ("get", 2),
    ("getdel", 2),
    ("getex", -2),
    ("getrange", 4),
    ("getset", 3),
    ("hdel", -3),
    ("hello", -1),
    ("hexists", 3),
    ("hget", 3),
    ("hgetall", 2),
    ("hincrby", 4),
    ("hincrbyfloat", 4),
    ("hkeys", 2),
    ("hlen", 2),
    ("hmget", -3),
    ("hmset", -4),
    ("hscan", -3),
    ("hset", -4),
    ("hsetnx", 4),
    ("hstrlen", 3),
    ("hvals", 2),
    ("incr", 2),
    ("incrby", 3),
    ("incrbyfloat", 3),
    ("info", -1),
    ("keys", 2),
    ("lindex", 3),
    ("llen", 2),
    ("lmove", 5),
    ("lpop", -2),
    ("lpush", -3),
    ("lpushx", -3),
    ("lrange", 4),
    ("lrem", 4),
    ("lset", 4),
    ("ltrim", 4),
    ("mget", -2),
    ("mset", -3),
    ("msetnx", -3),
    ("multi", 1),
    ("object", -2),
    ("persist", 2),
    ("pexpire", -3),
    ("pexpireat", -3),
    ("pexpiretime", 2),
    ("ping", -1),
    ("psetex", 4),
    ("psubscribe", -2),
    ("pttl", 2),
    ("publish", 3),
    ("pubsub", -2),
    ("punsubscribe", -1),
    ("quit", -1),
    ("randomkey", 1),
    ("rename", 3),
    ("renamenx", 3),
    ("reset", 1),
    ("rpop", -2),
    ("rpoplpush", 3),
    ("rpush", -3),
    ("rpushx", -3),
    ("sadd", -3),
    ("scan", -2),
    ("scard", 2),
    ("sdiff", -2),
    ("sdiffstore", -3),
    ("select", 2),
    ("set", -3),
    ("setex", 4),
    ("setnx", 3),
    ("setrange", 4),
    ("sinter", -2),
    ("sinterstore", -3),
    ("sismember", 3),
    ("smembers", 2),
    ("smismember", -3),
    ("smove", 4),
    ("spop", -2),
    ("srandmember", -2),
    ("srem", -3),
    ("sscan", -3),
    ("strlen", 2),
    ("subscribe", -2),
    ("sunion", -2),
    ("sunionstore", -3),
    ("time", 1),
    ("touch", -2),
    ("ttl", 2),
    ("type", 2),
    ("unlink", -2),
    ("unsubscribe", -1),
    ("unwatch", 1),
    ("watch", -2),
    ("zadd", -4),
    ("zcard", 2),
    ("zcount", 4),
    ("zincrby", 4),
    ("zmscore", -3),
    ("zpopmax", -2),
    ("zpopmin", -2),
    ("zrange", -4),
    ("zrangebyscore", -4),
    ("zrank", 3),
    ("zrem", -3),
    ("zrevrange", -4),
    ("zrevrank", 3),
    ("zscan", -3),
    ("zscore", 3),
];

/// The Redis version the service answers as (HELLO, INFO): the one whose
/// behaviour it follows.
pub(crate) const REDIS_VERSION: &str = "7.2.0";

pub(crate) const WRONGTYPE: &str =
    "WRONGTYPE Operation against a key holding the wrong kind of value";
pub(crate) const NOT_INT: &str = "ERR value is not an integer or out of range";
pub(crate) const NOT_FLOAT: &str = "ERR value is not a valid float";
pub(crate) const SYNTAX: &str = "ERR syntax error";
pub(crate) const NOT_POSITIVE: &str = "ERR value is out of range, must be positive";
/// Redis' reply to a command that may grow memory while the budget is
/// spent (`maxmemory` reached, no eviction).
pub(crate) const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

/// The commands Redis flags `denyoom`: refused while the group is over its
/// memory budget. Everything else (reads, DEL, pops, EXPIRE, FLUSHALL)
/// still works, so clients can make room.
pub(crate) const DENY_OOM: &[&str] = &[
    "append",
    "blmove",
    "brpoplpush",
    "copy",
    "decr",
    "decrby",
    "getset",
    "hincrby",
    "hincrbyfloat",
    "hmset",
    "hset",
    "hsetnx",
    "incr",
    "incrby",
    "incrbyfloat",
    "lmove",
    "lpush",
    "lpushx",
    "lset",
    "mset",
    "msetnx",
    "psetex",
    "rpoplpush",
    "rpush",
    "rpushx",
    "sadd",
    "sdiffstore",
    "set",
    "setex",
    "setnx",
    "setrange",
    "sinterstore",
    "smove",
    "sunionstore",
    "zadd",
    "zincrby",
];

pub(crate) type Reply = Result<(), String>;

/// The value at `key` as the given variant, `None` if absent; returns
/// WRONGTYPE from the enclosing function otherwise.
macro_rules! typed {
    ($db:expr, $key:expr, $variant:ident) => {
        match $db.data.get($key.as_slice()) {
            None => None,
            Some(Value::$variant(x)) => Some(x),
            Some(_) => return Err(WRONGTYPE.into()),
        }
    };
}

/// Mutable, as [`typed!`].
macro_rules! typed_mut {
    ($db:expr, $key:expr, $variant:ident) => {
        match $db.data.get_mut($key.as_slice()) {
            None => None,
            Some(Value::$variant(x)) => Some(x),
            Some(_) => return Err(WRONGTYPE.into()),
        }
    };
}

/// Mutable, created empty if absent (the new key is charged to the
/// memory accounting; its elements are charged by the command).
macro_rules! typed_create {
    ($db:expr, $key:expr, $variant:ident) => {{
        match $db.get_or_create(&$key, || Value::$variant(Default::default())) {
            Value::$variant(x) => x,
            _ => return Err(WRONGTYPE.into()),
        }
    }};
}

pub(crate) fn trunc(b: &[u8]) -> String {
    String::from_utf8_lossy(b.get(..128).unwrap_or(b)).into_owned()
}

/// Redis 7's error for a container command (`CLIENT`, `OBJECT`,
/// `PUBSUB`) whose subcommand is unknown ("unknown subcommand 'x'") or,
/// when it is one of `known`, has the wrong number of arguments ("wrong
/// number of arguments for 'client|setname'").
pub(crate) fn subcommand_error(cmd: &str, sub: &[u8], known: &[&str]) -> String {
    let lower = String::from_utf8_lossy(sub).to_ascii_lowercase();
    if known.contains(&lower.as_str()) {
        arity_error(&format!("{cmd}|{lower}"))
    } else {
        format!(
            "ERR unknown subcommand '{}'. Try {} HELP.",
            trunc(sub),
            cmd.to_ascii_uppercase()
        )
    }
}

pub(crate) fn arity_error(name: &str) -> String {
    format!("ERR wrong number of arguments for '{name}' command")
}

pub(crate) fn int_arg(a: &[u8]) -> Result<i64, String> {
    parse_i64(a).ok_or_else(|| NOT_INT.to_string())
}

/// A count Redis reads with `getPositiveLongFromObjectOrReply`: both a
/// non-integer and a negative value get "must be positive".
pub(crate) fn positive_arg(a: &[u8]) -> Result<usize, String> {
    parse_i64(a)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| NOT_POSITIVE.to_string())
}

/// A double as Redis reads one (`strtod`/`strtold` over the whole
/// argument): decimal, `inf`/`infinity`, and C's hexadecimal form
/// (`0x10`, `0x1.8p3`); not NaN, not a leading space, not a value that
/// overflows to infinity or underflows to zero.
pub(crate) fn float_arg(a: &[u8]) -> Result<f64, String> {
    parse_c_double(a).ok_or_else(|| NOT_FLOAT.to_string())
}

fn parse_c_double(a: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(a).ok()?;
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let (neg, body) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let v = if body.len() > 2 && body.as_bytes()[..2].eq_ignore_ascii_case(b"0x") {
        parse_hex_double(&body[2..])?
    } else {
        if body.starts_with(['+', '-']) {
            return None;
        }
        let v: f64 = body.parse().ok()?;
        let lower = body.to_ascii_lowercase();
        let named = lower == "inf" || lower == "infinity";
        // strtod's ERANGE: overflow and underflow to zero are refused.
        if v.is_infinite() && !named {
            return None;
        }
        if v == 0.0
            && lower
                .bytes()
                .take_while(|c| *c != b'e')
                .any(|c| (b'1'..=b'9').contains(&c))
        {
            return None;
        }
        v
    };
    if v.is_nan() {
        return None;
    }
    Some(if neg { -v } else { v })
}

/// The part of a C hexadecimal float after `0x`: hex digits with an
/// optional point, then an optional binary exponent `p[+-]digits`.
fn parse_hex_double(s: &str) -> Option<f64> {
    let (mant, exp) = match s.find(['p', 'P']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int_part, frac_part) = match mant.find('.') {
        Some(i) => (&mant[..i], &mant[i + 1..]),
        None => (mant, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let mut v = 0f64;
    for c in int_part.chars() {
        v = v * 16.0 + f64::from(c.to_digit(16)?);
    }
    let mut scale = 1.0 / 16.0;
    for c in frac_part.chars() {
        v += f64::from(c.to_digit(16)?) * scale;
        scale /= 16.0;
    }
    if let Some(e) = exp {
        let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
        if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let e: i32 = e.parse().unwrap_or(if e.starts_with('-') {
            -100_000
        } else {
            100_000
        });
        v *= 2f64.powi(e);
    }
    if v.is_infinite() {
        return None;
    }
    Some(v)
}

/// Redis's index normalisation for LRANGE/ZRANGE: `None` if empty.
pub(crate) fn range(len: usize, start: i64, stop: i64) -> Option<(usize, usize)> {
    let len = len as i64;
    let start = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let stop = if stop < 0 {
        len + stop
    } else {
        stop.min(len - 1)
    };
    if start > stop || start >= len {
        return None;
    }
    Some((start as usize, stop as usize))
}

pub(crate) fn run(
    db: &mut Db,
    ctx: &mut Context,
    now: u64,
    cmd: &str,
    a: &[Vec<u8>],
    out: &mut Out,
) -> Reply {
    match cmd {
        "get" => match typed!(db, a[1], Str) {
            Some(v) => {
                // A big value's reply is checked against the output cap
                // before it is copied (a flood of GETs stops at once).
                let need = (out.len() + v.len()) as u64 + 32;
                if let Some(conn) = out.conn {
                    if !ctx.reserve(conn, need) {
                        return Ok(());
                    }
                }
                bulk(out, v)
            }
            None => nil(out),
        },
        "set" => set(db, now, a, out)?,
        "mget" => {
            array(out, a.len() - 1);
            for k in &a[1..] {
                match db.data.get(k) {
                    Some(Value::Str(v)) => bulk(out, v),
                    _ => nil(out),
                }
            }
        }
        "mset" => {
            if a.len().is_multiple_of(2) {
                return Err(arity_error("mset"));
            }
            for kv in a[1..].chunks(2) {
                db.put(&kv[0], Value::Str(kv[1].clone()), false);
            }
            simple(out, "OK");
        }
        "del" => {
            let n = a[1..].iter().filter(|k| db.remove(k)).count();
            int(out, n as i64);
        }
        "exists" => {
            let n = a[1..]
                .iter()
                .filter(|k| db.data.contains_key(k.as_slice()))
                .count();
            int(out, n as i64);
        }
        "incr" => incr_by(db, &a[1], 1, out)?,
        "decr" => incr_by(db, &a[1], -1, out)?,
        "incrby" => incr_by(db, &a[1], int_arg(&a[2])?, out)?,
        "decrby" => {
            let by = int_arg(&a[2])?;
            let by = by.checked_neg().ok_or("ERR decrement would overflow")?;
            incr_by(db, &a[1], by, out)?
        }
        "append" => {
            let s = typed_create!(db, a[1], Str);
            s.extend_from_slice(&a[2]);
            int(out, s.len() as i64);
            db.charge(a[2].len() as u64);
        }
        "strlen" => int(out, typed!(db, a[1], Str).map_or(0, |s| s.len()) as i64),
        "expire" | "pexpire" | "expireat" | "pexpireat" => expire(db, now, cmd, a, out)?,
        "ttl" | "pttl" => {
            if !db.data.contains_key(&a[1]) {
                int(out, -2);
            } else {
                match db.expire_at(&a[1]) {
                    None => int(out, -1),
                    Some(at) => {
                        let ms = at.saturating_sub(now);
                        int(
                            out,
                            if cmd == "ttl" { (ms + 500) / 1000 } else { ms } as i64,
                        );
                    }
                }
            }
        }
        "lpush" | "rpush" => {
            let l = typed_create!(db, a[1], List);
            for v in &a[2..] {
                if cmd == "lpush" {
                    l.push_front(v.clone());
                } else {
                    l.push_back(v.clone());
                }
            }
            int(out, l.len() as i64);
            db.charge(a[2..].iter().map(|v| elem_weight(v)).sum());
        }
        "lpop" | "rpop" => {
            if a.len() > 3 {
                return Err(arity_error(cmd));
            }
            let count = match a.get(2) {
                None => None,
                Some(c) => Some(positive_arg(c)?),
            };
            let Some(l) = typed_mut!(db, a[1], List) else {
                match count {
                    None => nil(out),
                    Some(_) => nil_array(out),
                }
                return Ok(());
            };
            let pop = |l: &mut VecDeque<Vec<u8>>| {
                if cmd == "lpop" {
                    l.pop_front()
                } else {
                    l.pop_back()
                }
            };
            let mut freed = 0;
            match count {
                None => match pop(l) {
                    Some(v) => {
                        freed += elem_weight(&v);
                        bulk(out, &v);
                    }
                    None => nil(out),
                },
                Some(n) => {
                    let items: Vec<_> = (0..n.min(l.len())).filter_map(|_| pop(l)).collect();
                    array(out, items.len());
                    for v in items {
                        freed += elem_weight(&v);
                        bulk(out, &v);
                    }
                }
            }
            db.release(freed);
            db.drop_if_empty(&a[1]);
        }
        "llen" => int(out, typed!(db, a[1], List).map_or(0, |l| l.len()) as i64),
        "lrange" => {
            let (start, stop) = (int_arg(&a[2])?, int_arg(&a[3])?);
            let Some(l) = typed!(db, a[1], List) else {
                array(out, 0);
                return Ok(());
            };
            match range(l.len(), start, stop) {
                None => array(out, 0),
                Some((s, e)) => {
                    array(out, e - s + 1);
                    for v in l.range(s..=e) {
                        bulk(out, v);
                    }
                }
            }
        }
        "sadd" => {
            let s = typed_create!(db, a[1], Set);
            let (mut n, mut grown) = (0, 0);
            for m in &a[2..] {
                if s.insert(m.to_vec()) {
                    n += 1;
                    grown += elem_weight(m);
                }
            }
            int(out, n);
            db.charge(grown);
        }
        "srem" => {
            let removed: Vec<&Vec<u8>> = match typed_mut!(db, a[1], Set) {
                Some(s) => a[2..].iter().filter(|m| s.remove(m.as_slice())).collect(),
                None => Vec::new(),
            };
            let n = removed.len();
            db.release(removed.iter().map(|m| elem_weight(m)).sum());
            db.drop_if_empty(&a[1]);
            int(out, n as i64);
        }
        "smembers" => {
            let members: Vec<&Vec<u8>> = typed!(db, a[1], Set)
                .map(|s| s.iter().collect())
                .unwrap_or_default();
            set_reply(out, members.len());
            for m in members {
                bulk(out, m);
            }
        }
        "scard" => int(out, typed!(db, a[1], Set).map_or(0, |s| s.len()) as i64),
        "sismember" => {
            let yes = typed!(db, a[1], Set).is_some_and(|s| s.contains(&a[2]));
            int(out, i64::from(yes));
        }
        "spop" => {
            if a.len() > 3 {
                return Err(SYNTAX.into());
            }
            let count = match a.get(2) {
                None => None,
                Some(c) => Some(positive_arg(c)?),
            };
            let Some(s) = typed_mut!(db, a[1], Set) else {
                match count {
                    None => nil(out),
                    Some(_) => set_reply(out, 0),
                }
                return Ok(());
            };
            // Random members from the log-seeded generator: the same
            // member on every replica.
            let mut popped = Vec::new();
            for _ in 0..count.unwrap_or(1).min(s.len()) {
                let i = ctx.rng().below(s.len() as u64) as usize;
                if let Some(m) = s.iter().nth(i).cloned() {
                    s.remove(&m);
                    popped.push(m);
                }
            }
            db.release(popped.iter().map(|m| elem_weight(m)).sum());
            match count {
                None => match popped.first() {
                    Some(m) => bulk(out, m),
                    None => nil(out),
                },
                Some(_) => {
                    set_reply(out, popped.len());
                    for m in &popped {
                        bulk(out, m);
                    }
                }
            }
            db.drop_if_empty(&a[1]);
        }
        "hset" => {
            if !a.len().is_multiple_of(2) {
                return Err(arity_error("hset"));
            }
            let h = typed_create!(db, a[1], Hash);
            let (mut n, mut grown, mut freed) = (0, 0, 0);
            for fv in a[2..].chunks(2) {
                grown += field_weight(&fv[0], &fv[1]);
                match h.insert(fv[0].clone(), fv[1].clone()) {
                    None => n += 1,
                    Some(old) => freed += field_weight(&fv[0], &old),
                }
            }
            int(out, n);
            db.charge(grown);
            db.release(freed);
        }
        "hget" => match typed!(db, a[1], Hash).and_then(|h| h.get(&a[2])) {
            Some(v) => bulk(out, v),
            None => nil(out),
        },
        "hdel" => {
            let (mut n, mut freed) = (0, 0);
            if let Some(h) = typed_mut!(db, a[1], Hash) {
                for f in &a[2..] {
                    if let Some(v) = h.remove(f.as_slice()) {
                        n += 1;
                        freed += field_weight(f, &v);
                    }
                }
            }
            db.release(freed);
            db.drop_if_empty(&a[1]);
            int(out, n as i64);
        }
        "hgetall" => {
            let h = typed!(db, a[1], Hash);
            map(out, h.map_or(0, |h| h.len()));
            for (f, v) in h.into_iter().flatten() {
                bulk(out, f);
                bulk(out, v);
            }
        }
        "hlen" => int(out, typed!(db, a[1], Hash).map_or(0, |h| h.len()) as i64),
        "zadd" => zadd(db, a, out)?,
        "zpopmin" | "zpopmax" => {
            if a.len() > 3 {
                return Err(SYNTAX.into());
            }
            let count = match a.get(2) {
                None => 1,
                Some(c) => positive_arg(c)?,
            };
            let max = cmd == "zpopmax";
            let popped: Vec<(Vec<u8>, f64)> = match typed_mut!(db, a[1], ZSet) {
                Some(z) => (0..count)
                    .map_while(|_| if max { z.pop_max() } else { z.pop_min() })
                    .collect(),
                None => Vec::new(),
            };
            db.release(popped.iter().map(|(m, _)| member_weight(m)).sum());
            db.drop_if_empty(&a[1]);
            // RESP3: one [member, score] pair per member when a count was
            // given, the flat pair otherwise (Redis 7).
            if out.resp3 && a.len() == 3 {
                array(out, popped.len());
                for (m, s) in popped {
                    array(out, 2);
                    bulk(out, &m);
                    double(out, s);
                }
            } else {
                array(out, popped.len() * 2);
                for (m, s) in popped {
                    bulk(out, &m);
                    double(out, s);
                }
            }
        }
        "zrange" => {
            let (start, stop) = (int_arg(&a[2])?, int_arg(&a[3])?);
            let mut withscores = false;
            let mut rev = false;
            for opt in &a[4..] {
                match opt.to_ascii_uppercase().as_slice() {
                    b"WITHSCORES" => withscores = true,
                    b"REV" => rev = true,
                    _ => return Err(SYNTAX.into()),
                }
            }
            let Some(z) = typed!(db, a[1], ZSet) else {
                array(out, 0);
                return Ok(());
            };
            let Some((s, e)) = range(z.order.len(), start, stop) else {
                array(out, 0);
                return Ok(());
            };
            let n = e - s + 1;
            let items: Box<dyn Iterator<Item = _>> = if rev {
                Box::new(z.order.iter().rev())
            } else {
                Box::new(z.order.iter())
            };
            scored_reply(
                out,
                items.skip(s).take(n).map(|(sc, m)| (m, sc.0)),
                n,
                withscores,
            );
        }
        "zscore" => match typed!(db, a[1], ZSet).and_then(|z| z.scores.get(&a[2])) {
            Some(s) => double(out, s.0),
            None => nil(out),
        },
        "zcard" => int(
            out,
            typed!(db, a[1], ZSet).map_or(0, |z| z.scores.len()) as i64,
        ),
        _ => return more::run(db, ctx, now, cmd, a, out),
    }
    Ok(())
}

/// A set reply's header (RESP3 `~`).
fn set_reply(out: &mut Out, n: usize) {
    resp::set(out, n)
}

/// `n` sorted-set members, with their scores if asked: RESP2 a flat array,
/// RESP3 an array of [member, double] pairs (Redis 7's ZRANGE WITHSCORES).
pub(crate) fn scored_reply<'a>(
    out: &mut Out,
    items: impl Iterator<Item = (&'a Vec<u8>, f64)>,
    n: usize,
    withscores: bool,
) {
    if !withscores {
        array(out, n);
        for (m, _) in items {
            bulk(out, m);
        }
    } else if out.resp3 {
        array(out, n);
        for (m, s) in items {
            array(out, 2);
            bulk(out, m);
            double(out, s);
        }
    } else {
        array(out, 2 * n);
        for (m, s) in items {
            bulk(out, m);
            double(out, s);
        }
    }
}

fn incr_by(db: &mut Db, key: &[u8], by: i64, out: &mut Out) -> Reply {
    let key = key.to_vec();
    let cur = match typed!(db, key, Str) {
        Some(v) => int_arg(v)?,
        None => 0,
    };
    let new = cur
        .checked_add(by)
        .ok_or("ERR increment or decrement would overflow")?;
    // INCR keeps the key's expiry, as in Redis.
    db.put(&key, Value::Str(new.to_string().into_bytes()), true);
    int(out, new);
    Ok(())
}

fn set(db: &mut Db, now: u64, a: &[Vec<u8>], out: &mut Out) -> Reply {
    let (mut nx, mut xx, mut get, mut keep_ttl) = (false, false, false, false);
    let mut expire: Option<u64> = None;
    let mut i = 3;
    while i < a.len() {
        let opt = a[i].to_ascii_uppercase();
        match opt.as_slice() {
            b"NX" if !xx => nx = true,
            b"XX" if !nx => xx = true,
            b"GET" => get = true,
            b"KEEPTTL" if expire.is_none() => keep_ttl = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT"
                if expire.is_none() && !keep_ttl && i + 1 < a.len() =>
            {
                i += 1;
                expire = Some(expire_option_at(&opt, &a[i], now, "set")?);
            }
            _ => return Err(SYNTAX.into()),
        }
        i += 1;
    }
    let old = match db.data.get(&a[1]) {
        None => None,
        Some(Value::Str(v)) => Some(v.clone()),
        Some(_) if get => return Err(WRONGTYPE.into()),
        Some(_) => Some(Vec::new()),
    };
    let reply_old = |out: &mut Out| match &old {
        Some(v) => bulk(out, v),
        None => nil(out),
    };
    if (nx && db.data.contains_key(&a[1])) || (xx && !db.data.contains_key(&a[1])) {
        if get {
            reply_old(out);
        } else {
            nil(out);
        }
        return Ok(());
    }
    db.put(&a[1], Value::Str(a[2].clone()), keep_ttl);
    match expire {
        // An absolute time already past deletes the key, as in Redis.
        Some(at) if at <= now => {
            db.remove(&a[1]);
        }
        Some(at) => db.set_expire(&a[1], Some(at)),
        None => {}
    }
    if get {
        reply_old(out);
    } else {
        simple(out, "OK");
    }
    Ok(())
}

fn expire(db: &mut Db, now: u64, cmd: &str, a: &[Vec<u8>], out: &mut Out) -> Reply {
    // Redis' order: the options, then the time.
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &a[3..] {
        match opt.to_ascii_uppercase().as_slice() {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            _ => {
                return Err(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(opt)
                ))
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Err("ERR NX and XX, GT or LT options at the same time are not compatible".into());
    }
    if gt && lt {
        return Err("ERR GT and LT options at the same time are not compatible".into());
    }
    let v = int_arg(&a[2])?;
    let invalid = || format!("ERR invalid expire time in '{cmd}' command");
    let ms = if cmd == "expire" || cmd == "expireat" {
        v.checked_mul(1000).ok_or_else(invalid)?
    } else {
        v
    };
    let at = if cmd.ends_with("at") {
        ms
    } else {
        (now as i64).checked_add(ms).ok_or_else(invalid)?
    };
    if !db.data.contains_key(&a[1]) {
        int(out, 0);
        return Ok(());
    }
    let current = db.expire_at(&a[1]).map(|t| t as i64);
    let allowed = match current {
        None => !xx && !gt,
        Some(cur) => !nx && (!gt || at > cur) && (!lt || at < cur),
    };
    if !allowed {
        int(out, 0);
        return Ok(());
    }
    if at <= now as i64 {
        db.remove(&a[1]);
    } else {
        db.set_expire(&a[1], Some(at as u64));
    }
    int(out, 1);
    Ok(())
}

fn zadd(db: &mut Db, a: &[Vec<u8>], out: &mut Out) -> Reply {
    let (mut nx, mut xx, mut gt, mut lt, mut ch, mut incr) =
        (false, false, false, false, false, false);
    let mut i = 2;
    while let Some(opt) = a.get(i) {
        match opt.to_ascii_uppercase().as_slice() {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            b"CH" => ch = true,
            b"INCR" => incr = true,
            _ => break,
        }
        i += 1;
    }
    let pairs = &a[i..];
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return Err(SYNTAX.into());
    }
    if nx && xx {
        return Err("ERR XX and NX options at the same time are not compatible".into());
    }
    if ((gt || lt) && nx) || (gt && lt) {
        return Err("ERR GT, LT, and/or NX options at the same time are not compatible".into());
    }
    if incr && pairs.len() > 2 {
        return Err("ERR INCR option supports a single increment-element pair".into());
    }
    // Parse every score first: a bad one changes nothing.
    let parsed: Vec<(f64, &Vec<u8>)> = pairs
        .chunks(2)
        .map(|p| Ok((float_arg(&p[0])?, &p[1])))
        .collect::<Result<_, String>>()?;
    let z: &mut ZSet = typed_create!(db, a[1], ZSet);
    let mut added = 0;
    let mut grown = 0;
    let mut changed = 0;
    let mut incr_result = None;
    let mut nan = false;
    for (score, member) in parsed {
        let old = z.scores.get(member).map(|s| s.0);
        if (nx && old.is_some()) || (xx && old.is_none()) {
            continue;
        }
        let new = match (incr, old) {
            (true, Some(o)) => o + score,
            _ => score,
        };
        if new.is_nan() {
            nan = true;
            break;
        }
        // GT/LT only restrain updates; new members are always added.
        if let Some(o) = old {
            if (gt && new <= o) || (lt && new >= o) {
                continue;
            }
        }
        if z.insert(member, new) {
            added += 1;
            grown += member_weight(member);
        } else if old != Some(new) {
            changed += 1;
        }
        incr_result = Some(new);
    }
    db.charge(grown);
    db.drop_if_empty(&a[1]);
    if nan {
        return Err("ERR resulting score is not a number (NaN)".into());
    }
    if incr {
        match incr_result {
            Some(v) => double(out, v),
            None => nil(out),
        }
    } else {
        int(out, if ch { added + changed } else { added });
    }
    Ok(())
}

/// The absolute expiry time, in ms of log time, of an `EX`/`PX`/`EXAT`/
/// `PXAT` option (`opt`, upper case) with argument `arg`, as `SET` and
/// `GETEX` read it; Redis' error naming `command` if it is not positive or
/// out of range.
pub(crate) fn expire_option_at(
    opt: &[u8],
    arg: &[u8],
    now: u64,
    command: &str,
) -> Result<u64, String> {
    let v = int_arg(arg)?;
    let invalid = || format!("ERR invalid expire time in '{command}' command");
    if v <= 0 {
        return Err(invalid());
    }
    let v = v as u64;
    let at = match opt {
        b"EX" => v.checked_mul(1000).and_then(|ms| ms.checked_add(now)),
        b"PX" => v.checked_add(now),
        b"EXAT" => v.checked_mul(1000),
        _ => Some(v),
    };
    at.filter(|&t| t <= i64::MAX as u64).ok_or_else(invalid)
}
