//! The data commands added so that what clients send by default works
//! (issue 17): the string gaps (SETEX, INCRBYFLOAT, GETEX...), the keyspace
//! (SCAN, KEYS, RENAME, COPY, TYPE, OBJECT, RANDOMKEY...) and the common
//! list, set, hash and sorted-set commands. Same rules as
//! [`crate::commands`]: ordered collections, log time, the log's random
//! source, replies in the connection's protocol.

use std::collections::{BTreeMap, BTreeSet};

use tandem_core::sdk::Context;

use crate::commands::{
    arity_error, expire_option_at, float_arg, int_arg, range, scored_reply, Reply, SYNTAX,
    WRONGTYPE,
};
use crate::db::{elem_weight, field_weight, member_weight, Db, Score, Value, ZSet};
use crate::glob;
use crate::resp::{self, array, bulk, double, int, nil, simple, Out};

/// The longest glob pattern accepted (KEYS, SCAN MATCH, PSUBSCRIBE): the
/// matcher is O(pattern × text), so this bounds one match's work.
pub const MAX_PATTERN: usize = 1024;

/// COUNT of SCAN when none is given (Redis' default).
const SCAN_DEFAULT_COUNT: usize = 10;

/// A pattern argument, refused past [`MAX_PATTERN`].
pub(crate) fn pattern_arg(p: &[u8]) -> Result<&[u8], String> {
    if p.len() > MAX_PATTERN {
        return Err(format!(
            "ERR pattern longer than {MAX_PATTERN} bytes is not supported"
        ));
    }
    Ok(p)
}

/// Redis' name for a value's type.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Str(_) => "string",
        Value::List(_) => "list",
        Value::Set(_) => "set",
        Value::Hash(_) => "hash",
        Value::ZSet(_) => "zset",
    }
}

/// Formats a float result as Redis' INCRBYFLOAT does for ordinary values:
/// the shortest text that reads back as the same double.
/// INCRBYFLOAT/HINCRBYFLOAT as Redis computes them, in 80-bit long
/// double (a 64-bit significand), printed with `%.17Lf` and trailing zeros
/// trimmed — done exactly in fixed point when both operands are integers
/// or binary fractions (multiples of 2^-40) below 2^80; other operands
/// (`0.1`) fall back to f64, see COMMANDS.md.
fn long_double_sum(cur: &[u8], cur_f: f64, by: &[u8], by_f: f64) -> Option<String> {
    const FRAC_BITS: u32 = 40;
    let fixed = |text: &[u8], v: f64| -> Option<i128> {
        if let Some(n) = std::str::from_utf8(text)
            .ok()
            .filter(|t| !t.starts_with('+'))
            .and_then(|t| t.parse::<i128>().ok())
        {
            return (n.unsigned_abs() < 1 << 80).then_some(n << FRAC_BITS);
        }
        let scaled = v * (1u64 << FRAC_BITS) as f64;
        (v.is_finite() && v.abs() < 2f64.powi(80) && scaled.fract() == 0.0)
            .then_some(scaled as i128)
    };
    let mut sum = fixed(cur, cur_f)?.checked_add(fixed(by, by_f)?)?;
    // Round to a 64-bit significand, ties to even.
    let bits = 128 - sum.unsigned_abs().leading_zeros();
    if bits > 64 {
        let shift = bits - 64;
        let mag = sum.unsigned_abs();
        let (q, rem, half) = (mag >> shift, mag & ((1 << shift) - 1), 1u128 << (shift - 1));
        let q = if rem > half || (rem == half && q & 1 == 1) {
            q + 1
        } else {
            q
        };
        let mag = i128::try_from(q << shift).ok()?;
        sum = if sum < 0 { -mag } else { mag };
    }
    let mag = sum.unsigned_abs();
    let (mut int_part, frac) = (mag >> FRAC_BITS, mag & ((1 << FRAC_BITS) - 1));
    // 17 decimal places, rounded half to even as printf does.
    let scaled = frac * 100_000_000_000_000_000;
    let (mut dec, rem, half) = (
        scaled >> FRAC_BITS,
        scaled & ((1 << FRAC_BITS) - 1),
        1u128 << (FRAC_BITS - 1),
    );
    if rem > half || (rem == half && dec & 1 == 1) {
        dec += 1;
    }
    if dec == 100_000_000_000_000_000 {
        dec = 0;
        int_part += 1;
    }
    let mut text = format!("{}{int_part}", if sum < 0 { "-" } else { "" });
    if dec != 0 {
        let d = format!("{dec:017}");
        text.push('.');
        text.push_str(d.trim_end_matches('0'));
    }
    Some(text)
}

fn float_text(v: f64) -> String {
    // Redis prints INCRBYFLOAT results in fixed point (`%.17Lf`, trailing
    // zeros trimmed): an integral value prints every digit of its exact
    // value (2^63 as 9223372036854775808, not ...776000).
    if v.is_finite() && v.fract() == 0.0 && v.abs() >= 1e15 {
        return format!("{v:.0}");
    }
    resp::score(v)
}

/// Stops building a reply that has already outgrown the connection's
/// output room: false means the connection is being reset (see
/// [`Context::reserve`]), so the caller returns at once.
fn room(ctx: &mut Context, out: &Out) -> bool {
    match out.conn {
        Some(conn) if ctx.output_room(conn) < out.len() as u64 => {
            ctx.reserve(conn, out.len() as u64)
        }
        _ => true,
    }
}

/// A sorted-set score bound: `1.5`, `(1.5` (exclusive), `-inf`, `+inf`.
#[derive(Clone, Copy)]
struct Bound {
    value: f64,
    exclusive: bool,
}

fn bound_arg(a: &[u8]) -> Result<Bound, String> {
    let err = || "ERR min or max is not a float".to_string();
    let (exclusive, text) = match a.split_first() {
        Some((b'(', rest)) => (true, rest),
        _ => (false, a),
    };
    let value = float_arg(text).map_err(|_| err())?;
    Ok(Bound { value, exclusive })
}

impl Bound {
    fn below(&self, v: f64) -> bool {
        if self.exclusive {
            v > self.value
        } else {
            v >= self.value
        }
    }
    fn above(&self, v: f64) -> bool {
        if self.exclusive {
            v < self.value
        } else {
            v <= self.value
        }
    }
}

/// A set, or an empty one if the key is absent; WRONGTYPE otherwise.
fn set_of<'a>(db: &'a Db, key: &[u8]) -> Result<Option<&'a BTreeSet<Vec<u8>>>, String> {
    match db.data.get(key) {
        None => Ok(None),
        Some(Value::Set(s)) => Ok(Some(s)),
        Some(_) => Err(WRONGTYPE.into()),
    }
}

/// SINTER/SUNION/SDIFF of the given keys.
fn set_op(db: &Db, op: &str, keys: &[Vec<u8>]) -> Result<BTreeSet<Vec<u8>>, String> {
    let sets: Vec<Option<&BTreeSet<Vec<u8>>>> = keys
        .iter()
        .map(|k| set_of(db, k))
        .collect::<Result<_, _>>()?;
    let empty = BTreeSet::new();
    let first = sets.first().copied().flatten().unwrap_or(&empty);
    let result = match op {
        "inter" => first
            .iter()
            .filter(|m| sets[1..].iter().all(|s| s.is_some_and(|s| s.contains(*m))))
            .cloned()
            .collect(),
        "union" => sets
            .iter()
            .flatten()
            .flat_map(|s| s.iter().cloned())
            .collect(),
        _ => first
            .iter()
            .filter(|m| !sets[1..].iter().any(|s| s.is_some_and(|s| s.contains(*m))))
            .cloned()
            .collect(),
    };
    Ok(result)
}

/// Runs one of this module's commands (already arity-checked).
pub(crate) fn run(
    db: &mut Db,
    ctx: &mut Context,
    now: u64,
    cmd: &str,
    a: &[Vec<u8>],
    out: &mut Out,
) -> Reply {
    match cmd {
        // ---- strings
        "setnx" => {
            if db.data.contains_key(&a[1]) {
                int(out, 0);
            } else {
                db.put(&a[1], Value::Str(a[2].clone()), false);
                int(out, 1);
            }
        }
        "setex" | "psetex" => {
            let v = int_arg(&a[2])?;
            let invalid = || format!("ERR invalid expire time in '{cmd}' command");
            if v <= 0 {
                return Err(invalid());
            }
            let ms = if cmd == "setex" {
                v.checked_mul(1000).ok_or_else(invalid)?
            } else {
                v
            };
            let at = (now as i64).checked_add(ms).ok_or_else(invalid)?;
            db.put(&a[1], Value::Str(a[3].clone()), false);
            db.set_expire(&a[1], Some(at as u64));
            simple(out, "OK");
        }
        "getset" => {
            let old = typed!(db, a[1], Str).cloned();
            db.put(&a[1], Value::Str(a[2].clone()), false);
            match old {
                Some(v) => bulk(out, &v),
                None => nil(out),
            }
        }
        "getdel" => {
            if typed!(db, a[1], Str).is_none() {
                nil(out);
            } else if let Some(Value::Str(v)) = db.take(&a[1]) {
                bulk(out, &v);
            }
        }
        "getex" => {
            // Redis' order: the options' syntax, the key and its type,
            // then the expiry's value.
            let mut raw: Option<Option<(Vec<u8>, &[u8])>> = None;
            let mut i = 2;
            while i < a.len() {
                let opt = a[i].to_ascii_uppercase();
                match opt.as_slice() {
                    b"PERSIST" if raw.is_none() => raw = Some(None),
                    b"EX" | b"PX" | b"EXAT" | b"PXAT" if raw.is_none() && i + 1 < a.len() => {
                        i += 1;
                        raw = Some(Some((opt, &a[i])));
                    }
                    _ => return Err(SYNTAX.into()),
                }
                i += 1;
            }
            let Some(v) = typed!(db, a[1], Str).cloned() else {
                nil(out);
                return Ok(());
            };
            let expire: Option<Option<u64>> = match raw {
                None => None,
                Some(None) => Some(None),
                Some(Some((opt, val))) => Some(Some(expire_option_at(&opt, val, now, "getex")?)),
            };
            match expire {
                Some(Some(at)) if at <= now => {
                    db.remove(&a[1]);
                }
                Some(at) => db.set_expire(&a[1], at),
                None => {}
            }
            bulk(out, &v);
        }
        "msetnx" => {
            if a.len().is_multiple_of(2) {
                return Err(arity_error("msetnx"));
            }
            if a[1..].chunks(2).any(|kv| db.data.contains_key(&kv[0])) {
                int(out, 0);
            } else {
                for kv in a[1..].chunks(2) {
                    db.put(&kv[0], Value::Str(kv[1].clone()), false);
                }
                int(out, 1);
            }
        }
        "incrbyfloat" => {
            // Redis' order: the key's type, its value, then the increment.
            let cur = match typed!(db, a[1], Str) {
                Some(v) => float_arg(v)?,
                None => 0.0,
            };
            let by = float_arg(&a[2])?;
            let new = cur + by;
            let cur_text = typed!(db, a[1], Str)
                .cloned()
                .unwrap_or_else(|| b"0".to_vec());
            if let Some(text) = long_double_sum(&cur_text, cur, &a[2], by) {
                let text = text.into_bytes();
                db.put(&a[1], Value::Str(text.clone()), true);
                bulk(out, &text);
                return Ok(());
            }
            if !new.is_finite() {
                return Err("ERR increment would produce NaN or Infinity".into());
            }
            let text = float_text(new).into_bytes();
            // INCRBYFLOAT keeps the key's expiry, as in Redis.
            db.put(&a[1], Value::Str(text.clone()), true);
            bulk(out, &text);
        }
        "getrange" => {
            let (start, end) = (int_arg(&a[2])?, int_arg(&a[3])?);
            let s = typed!(db, a[1], Str).map(Vec::as_slice).unwrap_or_default();
            // Redis: both negative with start > end is empty; otherwise
            // the usual normalisation.
            if start < 0 && end < 0 && start > end {
                bulk(out, b"");
                return Ok(());
            }
            // Redis 7's arithmetic exactly (negative indexes clamp to 0,
            // so GETRANGE k -100 -100 is the first byte).
            let len = s.len() as i64;
            let start = if start < 0 {
                (len + start).max(0)
            } else {
                start
            };
            let end = if end < 0 { (len + end).max(0) } else { end }.min(len - 1);
            let r = (start <= end && len > 0).then_some((start as usize, end as usize));
            match r {
                Some((b, e)) => bulk(out, &s[b..=e]),
                None => bulk(out, b""),
            }
        }
        "setrange" => {
            let offset = int_arg(&a[2])?;
            if offset < 0 {
                return Err("ERR offset is out of range".into());
            }
            let offset = offset as usize;
            let max = usize::try_from(ctx.limits().max_value).unwrap_or(usize::MAX);
            let exists = typed!(db, a[1], Str).is_some();
            if !a[3].is_empty() && offset.saturating_add(a[3].len()) > max {
                return Err("ERR string exceeds maximum allowed size (proto-max-bulk-len)".into());
            }
            if a[3].is_empty() {
                let len = typed!(db, a[1], Str).map_or(0, Vec::len);
                int(out, len as i64);
                return Ok(());
            }
            if !exists {
                db.put(&a[1], Value::Str(Vec::new()), false);
            }
            let len = db.reweigh(&a[1], |v| match v {
                Value::Str(s) => {
                    if s.len() < offset + a[3].len() {
                        s.resize(offset + a[3].len(), 0);
                    }
                    s[offset..offset + a[3].len()].copy_from_slice(&a[3]);
                    s.len()
                }
                _ => 0,
            });
            int(out, len.unwrap_or(0) as i64);
        }

        // ---- keyspace
        "unlink" => {
            let n = a[1..].iter().filter(|k| db.remove(k)).count();
            int(out, n as i64);
        }
        "touch" => {
            let n = a[1..].iter().filter(|k| db.data.contains_key(k)).count();
            int(out, n as i64);
        }
        "type" => simple(out, db.data.get(&a[1]).map_or("none", type_name)),
        "persist" => {
            let had = db.data.contains_key(&a[1]) && db.expire_at(&a[1]).is_some();
            if had {
                db.set_expire(&a[1], None);
            }
            int(out, i64::from(had));
        }
        "expiretime" | "pexpiretime" => {
            if !db.data.contains_key(&a[1]) {
                int(out, -2);
            } else {
                match db.expire_at(&a[1]) {
                    None => int(out, -1),
                    Some(at) if cmd == "expiretime" => int(out, (at / 1000) as i64),
                    Some(at) => int(out, at as i64),
                }
            }
        }
        "rename" | "renamenx" => {
            if !db.data.contains_key(&a[1]) {
                return Err("ERR no such key".into());
            }
            // RENAMENX of a key to itself answers 0, as in Redis.
            if cmd == "renamenx" && db.data.contains_key(&a[2]) {
                int(out, 0);
                return Ok(());
            }
            if a[1] != a[2] {
                let at = db.expire_at(&a[1]);
                if let Some(v) = db.take(&a[1]) {
                    db.put(&a[2], v, false);
                    db.set_expire(&a[2], at);
                }
            }
            if cmd == "rename" {
                simple(out, "OK");
            } else {
                int(out, 1);
            }
        }
        "copy" => {
            let mut replace = false;
            for opt in &a[3..] {
                match opt.to_ascii_uppercase().as_slice() {
                    b"REPLACE" => replace = true,
                    // Another database would be another Db: not offered.
                    b"DB" => return Err("ERR COPY with DB is not supported by tandem kv".into()),
                    _ => return Err(SYNTAX.into()),
                }
            }
            if a[1] == a[2] {
                return Err("ERR source and destination objects are the same".into());
            }
            let Some(v) = db.data.get(&a[1]).cloned() else {
                int(out, 0);
                return Ok(());
            };
            if db.data.contains_key(&a[2]) && !replace {
                int(out, 0);
                return Ok(());
            }
            let at = db.expire_at(&a[1]);
            db.put(&a[2], v, false);
            db.set_expire(&a[2], at);
            int(out, 1);
        }
        "randomkey" => {
            let at = ctx.rng().next_u64() >> (64 - crate::db::SCAN_POSITION_BITS);
            match db.key_at_or_after(at) {
                Some(k) => bulk(out, k),
                None => nil(out),
            }
        }
        "keys" => {
            let p = pattern_arg(&a[1])?;
            let keys: Vec<&Vec<u8>> = db.data.keys().filter(|k| glob::matches(p, k)).collect();
            array(out, keys.len());
            for (i, k) in keys.into_iter().enumerate() {
                bulk(out, k);
                if i % 1024 == 1023 && !room(ctx, out) {
                    return Ok(());
                }
            }
        }
        "scan" => {
            let cursor = std::str::from_utf8(&a[1])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("ERR invalid cursor")?;
            let (pattern, count, kind) = scan_options(&a[2..], true)?;
            let (keys, next) = db.scan(cursor, count);
            let keys: Vec<&Vec<u8>> = keys
                .into_iter()
                .filter(|k| pattern.is_none_or(|p| glob::matches(p, k)))
                .filter(|k| {
                    kind.as_ref().is_none_or(|t| {
                        db.data
                            .get(k)
                            .is_some_and(|v| type_name(v).as_bytes() == t.as_slice())
                    })
                })
                .collect();
            array(out, 2);
            bulk(out, next.to_string().as_bytes());
            array(out, keys.len());
            for k in keys {
                bulk(out, k);
            }
        }
        "hscan" | "sscan" | "zscan" => {
            // Small and big collections alike come back whole with cursor
            // 0, as Redis does for its compact encodings: COUNT is a hint,
            // and the reply is bounded by the output cap like HGETALL's.
            let cursor = std::str::from_utf8(&a[2])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("ERR invalid cursor")?;
            let (pattern, _, _) = scan_options(&a[3..], false)?;
            let hit = |m: &[u8]| cursor == 0 && pattern.is_none_or(|p| glob::matches(p, m));
            let mut items: Vec<(&[u8], Option<Vec<u8>>)> = Vec::new();
            match (cmd, db.data.get(&a[1])) {
                (_, None) => {}
                ("hscan", Some(Value::Hash(h))) => {
                    items = h
                        .iter()
                        .filter(|(f, _)| hit(f))
                        .map(|(f, v)| (f.as_slice(), Some(v.clone())))
                        .collect()
                }
                ("sscan", Some(Value::Set(s))) => {
                    items = s
                        .iter()
                        .filter(|m| hit(m))
                        .map(|m| (m.as_slice(), None))
                        .collect()
                }
                ("zscan", Some(Value::ZSet(z))) => {
                    items = z
                        .scores
                        .iter()
                        .filter(|(m, _)| hit(m))
                        .map(|(m, s)| (m.as_slice(), Some(resp::score(s.0).into_bytes())))
                        .collect()
                }
                _ => return Err(WRONGTYPE.into()),
            }
            let per = if cmd == "sscan" { 1 } else { 2 };
            array(out, 2);
            bulk(out, b"0");
            array(out, items.len() * per);
            for (m, v) in items {
                bulk(out, m);
                if let Some(v) = v {
                    bulk(out, &v);
                }
            }
        }
        "object" => {
            let sub = a[1].to_ascii_uppercase();
            match (sub.as_slice(), a.len()) {
                (b"ENCODING", 3) => match db.data.get(&a[2]) {
                    None => nil(out),
                    Some(v) => bulk(out, encoding(v).as_bytes()),
                },
                (b"REFCOUNT", 3) => match db.data.get(&a[2]) {
                    None => nil(out),
                    Some(_) => int(out, 1),
                },
                _ => {
                    return Err(crate::commands::subcommand_error(
                        "object",
                        &a[1],
                        &["encoding", "refcount"],
                    ))
                }
            }
        }

        // ---- lists
        "lpushx" | "rpushx" => {
            let Some(l) = typed_mut!(db, a[1], List) else {
                int(out, 0);
                return Ok(());
            };
            for v in &a[2..] {
                if cmd == "lpushx" {
                    l.push_front(v.clone());
                } else {
                    l.push_back(v.clone());
                }
            }
            int(out, l.len() as i64);
            db.charge(a[2..].iter().map(|v| elem_weight(v)).sum());
        }
        "lindex" => {
            // As Redis: a missing key answers nil before the index is
            // parsed.
            let Some(l) = typed!(db, a[1], List) else {
                nil(out);
                return Ok(());
            };
            let i = int_arg(&a[2])?;
            let item = Some(l).and_then(|l| {
                let i = if i < 0 { l.len() as i64 + i } else { i };
                usize::try_from(i).ok().and_then(|i| l.get(i))
            });
            match item {
                Some(v) => bulk(out, v),
                None => nil(out),
            }
        }
        "lset" => {
            // Redis' order: the key, its type, then the index.
            let Some(l) = typed_mut!(db, a[1], List) else {
                return Err("ERR no such key".into());
            };
            let i = int_arg(&a[2])?;
            let i = if i < 0 { l.len() as i64 + i } else { i };
            let Some(slot) = usize::try_from(i).ok().and_then(|i| l.get_mut(i)) else {
                return Err("ERR index out of range".into());
            };
            let old = std::mem::replace(slot, a[3].clone());
            db.release(elem_weight(&old));
            db.charge(elem_weight(&a[3]));
            simple(out, "OK");
        }
        "lrem" => {
            let count = int_arg(&a[2])?;
            let Some(l) = typed_mut!(db, a[1], List) else {
                int(out, 0);
                return Ok(());
            };
            let limit = if count == 0 {
                usize::MAX
            } else {
                count.unsigned_abs() as usize
            };
            let mut removed = 0usize;
            if count >= 0 {
                let mut kept = std::collections::VecDeque::with_capacity(l.len());
                for v in l.drain(..) {
                    if removed < limit && v == a[3] {
                        removed += 1;
                    } else {
                        kept.push_back(v);
                    }
                }
                *l = kept;
            } else {
                let mut kept = std::collections::VecDeque::with_capacity(l.len());
                for v in l.drain(..).rev() {
                    if removed < limit && v == a[3] {
                        removed += 1;
                    } else {
                        kept.push_front(v);
                    }
                }
                *l = kept;
            }
            db.release(removed as u64 * elem_weight(&a[3]));
            db.drop_if_empty(&a[1]);
            int(out, removed as i64);
        }
        "ltrim" => {
            let (start, stop) = (int_arg(&a[2])?, int_arg(&a[3])?);
            if typed!(db, a[1], List).is_some() {
                db.reweigh(&a[1], |v| {
                    if let Value::List(l) = v {
                        match range(l.len(), start, stop) {
                            None => l.clear(),
                            Some((s, e)) => {
                                l.truncate(e + 1);
                                l.drain(..s);
                            }
                        }
                    }
                });
                db.drop_if_empty(&a[1]);
            }
            simple(out, "OK");
        }
        "rpoplpush" | "lmove" => {
            let (from_left, to_left) = if cmd == "rpoplpush" {
                (false, true)
            } else {
                let side = |s: &[u8]| match s.to_ascii_uppercase().as_slice() {
                    b"LEFT" => Ok(true),
                    b"RIGHT" => Ok(false),
                    _ => Err(SYNTAX.to_string()),
                };
                (side(&a[3])?, side(&a[4])?)
            };
            // As Redis: a missing source answers nil before the
            // destination is looked at; the destination's type is checked
            // before anything moves.
            if typed!(db, a[1], List).is_none_or(|l| l.is_empty()) {
                nil(out);
                return Ok(());
            }
            let _ = typed!(db, a[2], List);
            let Some(src) = typed_mut!(db, a[1], List) else {
                nil(out);
                return Ok(());
            };
            let v = if from_left {
                src.pop_front()
            } else {
                src.pop_back()
            };
            let Some(v) = v else {
                nil(out);
                return Ok(());
            };
            db.release(elem_weight(&v));
            let dst = typed_create!(db, a[2], List);
            if to_left {
                dst.push_front(v.clone());
            } else {
                dst.push_back(v.clone());
            }
            db.charge(elem_weight(&v));
            db.drop_if_empty(&a[1]);
            bulk(out, &v);
        }

        // ---- sets
        "smismember" => {
            let s = typed!(db, a[1], Set);
            array(out, a.len() - 2);
            for m in &a[2..] {
                int(out, i64::from(s.is_some_and(|s| s.contains(m))));
            }
        }
        "srandmember" => {
            if a.len() > 3 {
                return Err(SYNTAX.into());
            }
            let count = a.get(2).map(|c| int_arg(c)).transpose()?;
            let members: Vec<&Vec<u8>> = typed!(db, a[1], Set)
                .map(|s| s.iter().collect())
                .unwrap_or_default();
            match count {
                None => match members.len() {
                    0 => nil(out),
                    n => {
                        let i = ctx.rng().below(n as u64) as usize;
                        bulk(out, members[i]);
                    }
                },
                Some(c) if c >= 0 => {
                    let c = (c as usize).min(members.len());
                    // Distinct members: a random subset, in set order.
                    let mut picked = BTreeSet::new();
                    if c == members.len() {
                        picked.extend(0..c);
                    }
                    while picked.len() < c {
                        picked.insert(ctx.rng().below(members.len() as u64) as usize);
                    }
                    array(out, c);
                    for i in picked {
                        bulk(out, members[i]);
                    }
                }
                Some(c) => {
                    let c = c.unsigned_abs() as usize;
                    if members.is_empty() {
                        array(out, 0);
                        return Ok(());
                    }
                    // Repeats allowed: bounded by the output room, checked
                    // before the reply is built.
                    let need = (c as u64).saturating_mul(8);
                    if let Some(conn) = out.conn {
                        if !ctx.reserve(conn, need) {
                            return Ok(());
                        }
                    }
                    array(out, c);
                    for i in 0..c {
                        let j = ctx.rng().below(members.len() as u64) as usize;
                        bulk(out, members[j]);
                        if i % 1024 == 1023 && !room(ctx, out) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        "smove" => {
            // Redis' order: a missing source answers 0 before any type
            // check; a move within one set is a membership test.
            if !db.data.contains_key(&a[1]) {
                int(out, 0);
                return Ok(());
            }
            let src = typed!(db, a[1], Set);
            let _ = typed!(db, a[2], Set);
            if a[1] == a[2] {
                int(out, i64::from(src.is_some_and(|s| s.contains(&a[3]))));
                return Ok(());
            }
            let moved = match typed_mut!(db, a[1], Set) {
                Some(s) => s.remove(&a[3]),
                None => false,
            };
            if moved {
                db.release(elem_weight(&a[3]));
                db.drop_if_empty(&a[1]);
                let dst = typed_create!(db, a[2], Set);
                if dst.insert(a[3].clone()) {
                    db.charge(elem_weight(&a[3]));
                }
            }
            int(out, i64::from(moved));
        }
        "sinter" | "sunion" | "sdiff" => {
            let r = set_op(db, &cmd[1..], &a[1..])?;
            resp::set(out, r.len());
            for m in &r {
                bulk(out, m);
            }
        }
        "sinterstore" | "sunionstore" | "sdiffstore" => {
            let r = set_op(db, &cmd[1..cmd.len() - 5], &a[2..])?;
            let n = r.len();
            if r.is_empty() {
                db.remove(&a[1]);
            } else {
                db.put(&a[1], Value::Set(r), false);
            }
            int(out, n as i64);
        }

        // ---- hashes
        "hmset" => {
            if !a.len().is_multiple_of(2) {
                return Err(arity_error("hmset"));
            }
            let h = typed_create!(db, a[1], Hash);
            let (mut grown, mut freed) = (0, 0);
            for fv in a[2..].chunks(2) {
                grown += field_weight(&fv[0], &fv[1]);
                if let Some(old) = h.insert(fv[0].clone(), fv[1].clone()) {
                    freed += field_weight(&fv[0], &old);
                }
            }
            db.charge(grown);
            db.release(freed);
            simple(out, "OK");
        }
        "hsetnx" => {
            let h = typed_create!(db, a[1], Hash);
            let new = !h.contains_key(&a[2]);
            if new {
                h.insert(a[2].clone(), a[3].clone());
                db.charge(field_weight(&a[2], &a[3]));
            }
            int(out, i64::from(new));
        }
        "hmget" => {
            let h = typed!(db, a[1], Hash);
            array(out, a.len() - 2);
            for f in &a[2..] {
                match h.and_then(|h| h.get(f)) {
                    Some(v) => bulk(out, v),
                    None => nil(out),
                }
            }
        }
        "hexists" => {
            let yes = typed!(db, a[1], Hash).is_some_and(|h| h.contains_key(&a[2]));
            int(out, i64::from(yes));
        }
        "hkeys" | "hvals" => {
            let h = typed!(db, a[1], Hash);
            array(out, h.map_or(0, BTreeMap::len));
            for (f, v) in h.into_iter().flatten() {
                bulk(out, if cmd == "hkeys" { f } else { v });
            }
        }
        "hstrlen" => {
            let n = typed!(db, a[1], Hash)
                .and_then(|h| h.get(&a[2]))
                .map_or(0, Vec::len);
            int(out, n as i64);
        }
        "hincrby" | "hincrbyfloat" => {
            // Redis' order: the increment is parsed (and, for floats,
            // refused if infinite) before the key's type is checked.
            let by_int = if cmd == "hincrby" { int_arg(&a[3])? } else { 0 };
            let by_float = if cmd == "hincrbyfloat" {
                let f = float_arg(&a[3])?;
                if !f.is_finite() {
                    return Err("ERR value is NaN or Infinity".into());
                }
                f
            } else {
                0.0
            };
            let cur = typed!(db, a[1], Hash).and_then(|h| h.get(&a[2])).cloned();
            let text = if cmd == "hincrby" {
                let by = by_int;
                let cur = match &cur {
                    Some(v) => {
                        crate::resp::parse_i64(v).ok_or("ERR hash value is not an integer")?
                    }
                    None => 0,
                };
                let new = cur
                    .checked_add(by)
                    .ok_or("ERR increment or decrement would overflow")?;
                new.to_string()
            } else {
                let by = by_float;
                let cur_text = cur.clone();
                let cur = match &cur {
                    Some(v) => float_arg(v).map_err(|_| "ERR hash value is not a float")?,
                    None => 0.0,
                };
                let new = cur + by;
                if !new.is_finite() {
                    return Err("ERR increment would produce NaN or Infinity".into());
                }
                let cur_text = cur_text.unwrap_or_else(|| b"0".to_vec());
                long_double_sum(&cur_text, cur, &a[3], by).unwrap_or_else(|| float_text(new))
            };
            let h = typed_create!(db, a[1], Hash);
            let text = text.into_bytes();
            let grown = field_weight(&a[2], &text);
            if let Some(old) = h.insert(a[2].clone(), text.clone()) {
                db.release(field_weight(&a[2], &old));
            }
            db.charge(grown);
            if cmd == "hincrby" {
                int(out, crate::resp::parse_i64(&text).unwrap_or(0));
            } else {
                bulk(out, &text);
            }
        }

        // ---- sorted sets
        "zincrby" => {
            let by = float_arg(&a[2])?;
            let cur = typed!(db, a[1], ZSet).and_then(|z| z.scores.get(&a[3]).map(|s| s.0));
            let new = cur.unwrap_or(0.0) + by;
            if new.is_nan() {
                return Err("ERR resulting score is not a number (NaN)".into());
            }
            let z: &mut ZSet = typed_create!(db, a[1], ZSet);
            if z.insert(&a[3], new) {
                db.charge(member_weight(&a[3]));
            }
            double(out, new);
        }
        "zrem" => {
            let removed: Vec<&Vec<u8>> = match typed_mut!(db, a[1], ZSet) {
                Some(z) => a[2..].iter().filter(|m| z.remove(m)).collect(),
                None => Vec::new(),
            };
            db.release(removed.iter().map(|m| member_weight(m)).sum());
            db.drop_if_empty(&a[1]);
            int(out, removed.len() as i64);
        }
        "zrank" | "zrevrank" => {
            let z = typed!(db, a[1], ZSet);
            let rank = z.and_then(|z| {
                let s = *z.scores.get(&a[2])?;
                let below = z.order.range(..(s, a[2].clone())).count();
                Some(if cmd == "zrank" {
                    below
                } else {
                    z.order.len() - 1 - below
                })
            });
            match rank {
                Some(r) => int(out, r as i64),
                None => nil(out),
            }
        }
        "zcount" => {
            let (min, max) = (bound_arg(&a[2])?, bound_arg(&a[3])?);
            let n = typed!(db, a[1], ZSet).map_or(0, |z| {
                z.order
                    .iter()
                    .filter(|(s, _)| min.below(s.0) && max.above(s.0))
                    .count()
            });
            int(out, n as i64);
        }
        "zrangebyscore" => {
            // Redis' order: the options, then the range, then the key.
            let mut withscores = false;
            let mut limit: Option<(i64, i64)> = None;
            let mut i = 4;
            while i < a.len() {
                match a[i].to_ascii_uppercase().as_slice() {
                    b"WITHSCORES" => withscores = true,
                    b"LIMIT" if i + 2 < a.len() => {
                        limit = Some((int_arg(&a[i + 1])?, int_arg(&a[i + 2])?));
                        i += 2;
                    }
                    _ => return Err(SYNTAX.into()),
                }
                i += 1;
            }
            let (min, max) = (bound_arg(&a[2])?, bound_arg(&a[3])?);
            let empty = ZSet::default();
            let z = typed!(db, a[1], ZSet).unwrap_or(&empty);
            let (offset, count) = limit.unwrap_or((0, -1));
            let items: Vec<(&Vec<u8>, f64)> = if offset < 0 {
                Vec::new()
            } else {
                z.order
                    .range((Score(min.value), Vec::new())..)
                    .take_while(|(s, _)| max.above(s.0))
                    .filter(|(s, _)| min.below(s.0))
                    .skip(offset as usize)
                    .take(if count < 0 {
                        usize::MAX
                    } else {
                        count as usize
                    })
                    .map(|(s, m)| (m, s.0))
                    .collect()
            };
            let n = items.len();
            scored_reply(out, items.into_iter(), n, withscores);
        }
        "zrevrange" => {
            let (start, stop) = (int_arg(&a[2])?, int_arg(&a[3])?);
            let withscores = match a.get(4).map(|o| o.to_ascii_uppercase()) {
                None => false,
                Some(o) if o == b"WITHSCORES" && a.len() == 5 => true,
                Some(_) => return Err(SYNTAX.into()),
            };
            let empty = ZSet::default();
            let z = typed!(db, a[1], ZSet).unwrap_or(&empty);
            match range(z.order.len(), start, stop) {
                None => array(out, 0),
                Some((s, e)) => {
                    let n = e - s + 1;
                    let items = z
                        .order
                        .iter()
                        .rev()
                        .skip(s)
                        .take(n)
                        .map(|(sc, m)| (m, sc.0));
                    scored_reply(out, items, n, withscores);
                }
            }
        }
        "zmscore" => {
            let z = typed!(db, a[1], ZSet);
            array(out, a.len() - 2);
            for m in &a[2..] {
                match z.and_then(|z| z.scores.get(m)) {
                    Some(s) => double(out, s.0),
                    None => nil(out),
                }
            }
        }
        _ => {
            return Err(format!(
                "ERR unknown command '{cmd}', with args beginning with: "
            ))
        }
    }
    Ok(())
}

/// SCAN's options: the MATCH pattern, COUNT, and (for SCAN itself) TYPE.
type ScanOptions<'a> = (Option<&'a [u8]>, usize, Option<Vec<u8>>);

/// Parses [`ScanOptions`].
fn scan_options(opts: &[Vec<u8>], with_type: bool) -> Result<ScanOptions<'_>, String> {
    let (mut pattern, mut count, mut kind) = (None, SCAN_DEFAULT_COUNT, None);
    let mut i = 0;
    while i < opts.len() {
        let Some(v) = opts.get(i + 1) else {
            return Err(SYNTAX.into());
        };
        match opts[i].to_ascii_uppercase().as_slice() {
            b"MATCH" => pattern = Some(pattern_arg(v)?),
            b"COUNT" => {
                let n = int_arg(v)?;
                if n < 1 {
                    return Err(SYNTAX.into());
                }
                count = usize::try_from(n).unwrap_or(usize::MAX);
            }
            b"TYPE" if with_type => kind = Some(v.to_ascii_lowercase()),
            _ => return Err(SYNTAX.into()),
        }
        i += 2;
    }
    Ok((pattern, count, kind))
}

/// OBJECT ENCODING's answer: what Redis 7.2 would report for a value of
/// this size (its thresholds), since clients and tests look at it.
fn encoding(v: &Value) -> &'static str {
    const SMALL: usize = 128;
    const SHORT: usize = 64;
    match v {
        Value::Str(s) if s.len() <= 20 && crate::resp::parse_i64(s).is_some() => "int",
        Value::Str(s) if s.len() <= 44 => "embstr",
        Value::Str(_) => "raw",
        Value::List(l) if l.len() <= SMALL && l.iter().all(|e| e.len() <= SHORT) => "listpack",
        Value::List(_) => "quicklist",
        Value::Set(s)
            if s.len() <= 512 && s.iter().all(|m| crate::resp::parse_i64(m).is_some()) =>
        {
            "intset"
        }
        Value::Set(s) if s.len() <= SMALL && s.iter().all(|m| m.len() <= SHORT) => "listpack",
        Value::Set(_) => "hashtable",
        Value::Hash(h)
            if h.len() <= SMALL && h.iter().all(|(f, v)| f.len() <= SHORT && v.len() <= SHORT) =>
        {
            "listpack"
        }
        Value::Hash(_) => "hashtable",
        Value::ZSet(z) if z.scores.len() <= SMALL && z.scores.keys().all(|m| m.len() <= SHORT) => {
            "listpack"
        }
        Value::ZSet(_) => "skiplist",
    }
}
