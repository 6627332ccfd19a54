//! The keyspace: values by key, expiry times, an index by expiry time so
//! expired keys are purged in a deterministic order at a deterministic log
//! position, and an index by key hash that SCAN's cursors point into.
//!
//! What a snapshot holds (values, expiry times and their index) lives in
//! persistent, copy-on-write ordered maps (`imbl`): [`Db::snapshot_copy`]
//! is O(1), and a write after it copies only the path to the key it
//! changes and, if the snapshot still shares it, that key's value (values
//! sit behind an `Arc`). So the node encodes a snapshot of any size on
//! another thread while the log goes on being applied (docs/architecture.md
//! §3.7). Iteration is in key order, as with `BTreeMap`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tandem_core::shadow::hash::Fnv64;

/// A value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Value {
    Str(#[serde(with = "byte_string")] Vec<u8>),
    List(VecDeque<Vec<u8>>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
    Set(BTreeSet<Vec<u8>>),
    ZSet(ZSet),
}

impl Value {
    fn is_empty_aggregate(&self) -> bool {
        match self {
            Value::Str(_) => false,
            Value::List(l) => l.is_empty(),
            Value::Hash(h) => h.is_empty(),
            Value::Set(s) => s.is_empty(),
            Value::ZSet(z) => z.scores.is_empty(),
        }
    }
}

/// A string value encoded as one byte string. postcard writes a byte
/// string exactly as it writes a sequence of `u8` (the length, then the
/// bytes), so snapshots are unchanged; but as one copy instead of one call
/// per byte: a snapshot of 100 MiB of values, which the node copies on its
/// event loop, took ~0.7 s that way and takes a few tens of ms this way.
mod byte_string {
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(ByteBuf)
    }

    struct ByteBuf;

    impl<'de> de::Visitor<'de> for ByteBuf {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    #[cfg(test)]
    mod tests {
        use crate::db::Value;
        use serde::{Deserialize, Serialize};

        /// `Value` as it was encoded before: a plain sequence of bytes.
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        enum PlainValue {
            Str(Vec<u8>),
        }

        #[test]
        fn a_byte_string_is_encoded_as_the_plain_sequence_was() {
            for len in [0usize, 1, 127, 128, 300, 70_000] {
                let bytes: Vec<u8> = (0..len).map(|i| (i * 13 % 256) as u8).collect();
                let new = postcard::to_stdvec(&Value::Str(bytes.clone())).unwrap();
                let old = postcard::to_stdvec(&PlainValue::Str(bytes.clone())).unwrap();
                assert_eq!(new, old, "len {len}");
                let back: Value = postcard::from_bytes(&old).unwrap();
                assert_eq!(back, Value::Str(bytes));
            }
        }
    }
}

/// A score with a total order (NaN never gets in: parsing refuses it).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Score(pub f64);

impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A sorted set: score by member, and (score, member) in Redis's order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ZSet {
    pub scores: BTreeMap<Vec<u8>, Score>,
    pub order: BTreeSet<(Score, Vec<u8>)>,
}

impl ZSet {
    /// Sets a member's score; true if the member is new.
    pub fn insert(&mut self, member: &[u8], score: f64) -> bool {
        // -0 and 0 are one score for Redis; total_cmp would split them.
        let score = Score(if score == 0.0 { 0.0 } else { score });
        let old = self.scores.insert(member.to_vec(), score);
        if let Some(old) = old {
            self.order.remove(&(old, member.to_vec()));
        }
        self.order.insert((score, member.to_vec()));
        old.is_none()
    }

    /// Removes and returns the highest (score, member).
    pub fn pop_max(&mut self) -> Option<(Vec<u8>, f64)> {
        let (score, member) = self.order.pop_last()?;
        self.scores.remove(&member);
        Some((member, score.0))
    }

    /// Removes a member; true if it was there.
    pub fn remove(&mut self, member: &[u8]) -> bool {
        match self.scores.remove(member) {
            Some(s) => {
                self.order.remove(&(s, member.to_vec()));
                true
            }
            None => false,
        }
    }

    /// Removes and returns the lowest (score, member).
    pub fn pop_min(&mut self) -> Option<(Vec<u8>, f64)> {
        let (score, member) = self.order.pop_first()?;
        self.scores.remove(&member);
        Some((member, score.0))
    }
}

/// What a key costs in the memory accounting besides its name and value:
/// its slot in the B-tree and the value's header (a stated constant, so the
/// figure is the same on every replica whatever the allocator does).
pub(crate) const KEY_OVERHEAD: u64 = 64;
/// What one element of a list or set, or one field of a hash, costs besides
/// its bytes.
pub(crate) const ELEM_OVERHEAD: u64 = 32;
/// What one sorted-set member costs besides twice its bytes (it is kept in
/// both indexes).
pub(crate) const ZSET_OVERHEAD: u64 = 64;
/// What an expiry costs besides twice the key (it is in two indexes).
pub(crate) const EXPIRE_OVERHEAD: u64 = 48;
/// What a key's entry in the SCAN index costs besides the key's bytes.
pub(crate) const SCAN_INDEX_OVERHEAD: u64 = 40;

/// A key's SCAN position: its FNV-1a 64 hash, mixed, cut to 53 bits so
/// cursors stay below 2^53 — JavaScript clients hold a cursor as a double
/// (node-redis 4 parses it with `Number`), exact only up to there; a larger
/// cursor came back rounded and the iteration skipped keys — and odd so it
/// is never 0 (the cursor that starts and ends a scan).
pub(crate) const SCAN_POSITION_BITS: u32 = 53;

/// A key's SCAN position (see [`SCAN_POSITION_BITS`]).
pub(crate) fn scan_hash(key: &[u8]) -> u64 {
    let mut h = Fnv64::new();
    h.bytes(key);
    // FNV-1a leaves keys that differ in their last bytes close together in
    // the high bits; MurmurHash3's finalizer spreads them over the whole
    // range (RANDOMKEY draws a point in it).
    let mut x = h.finish();
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    (x >> (64 - SCAN_POSITION_BITS)) | 1
}

/// What a key costs besides its value: its slot in the B-tree, its value's
/// header, and its entry in the SCAN index.
pub(crate) fn key_base_weight(key: &[u8]) -> u64 {
    KEY_OVERHEAD + SCAN_INDEX_OVERHEAD + 2 * key.len() as u64
}

/// A list or set element's accounted size.
pub(crate) fn elem_weight(e: &[u8]) -> u64 {
    ELEM_OVERHEAD + e.len() as u64
}

/// A hash field's accounted size.
pub(crate) fn field_weight(f: &[u8], v: &[u8]) -> u64 {
    ELEM_OVERHEAD + f.len() as u64 + v.len() as u64
}

/// A sorted-set member's accounted size.
pub(crate) fn member_weight(m: &[u8]) -> u64 {
    ZSET_OVERHEAD + 2 * m.len() as u64
}

/// A key's accounted size with its value (expiry aside).
pub(crate) fn key_weight(key: &[u8], value: &Value) -> u64 {
    let v: u64 = match value {
        Value::Str(s) => s.len() as u64,
        Value::List(l) => l.iter().map(|e| elem_weight(e)).sum(),
        Value::Set(s) => s.iter().map(|e| elem_weight(e)).sum(),
        Value::Hash(h) => h.iter().map(|(f, v)| field_weight(f, v)).sum(),
        Value::ZSet(z) => z.scores.keys().map(|m| member_weight(m)).sum(),
    };
    key_base_weight(key) + v
}

/// Values by key: a copy-on-write ordered map (see the module's comment),
/// encoded as a `BTreeMap<Vec<u8>, Value>` would be.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Keyspace(imbl::OrdMap<Vec<u8>, Arc<Value>>);

impl Keyspace {
    pub fn get(&self, key: &[u8]) -> Option<&Value> {
        self.0.get(key).map(|v| &**v)
    }

    /// The value to change in place (copied first if a snapshot shares it).
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut Value> {
        self.0.get_mut(key).map(Arc::make_mut)
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.0.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn keys(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.0.keys()
    }

    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.0.values().map(|v| &**v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Value)> {
        self.0.iter().map(|(k, v)| (k, &**v))
    }

    /// Stores a value; the one it replaces, if any, still shared with a
    /// snapshot that holds it (weighing it copies nothing).
    pub fn insert(&mut self, key: Vec<u8>, value: Value) -> Option<Arc<Value>> {
        self.0.insert(key, Arc::new(value))
    }

    /// Removes a key; its value as [`Keyspace::insert`] returns one.
    pub fn remove(&mut self, key: &[u8]) -> Option<Arc<Value>> {
        self.0.remove(key)
    }
}

impl Serialize for Keyspace {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Keyspace {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Keyspace;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of keys to values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Keyspace, A::Error> {
                let mut out = imbl::OrdMap::new();
                while let Some((k, v)) = map.next_entry::<Vec<u8>, Value>()? {
                    out.insert(k, Arc::new(v));
                }
                Ok(Keyspace(out))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// The keyspace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Db {
    pub data: Keyspace,
    expires: imbl::OrdMap<Vec<u8>, u64>,
    by_time: imbl::OrdSet<(u64, Vec<u8>)>,
    /// Every key by [`scan_hash`]: SCAN walks this order, so a cursor (a
    /// hash) means the same position on every replica and after a
    /// failover, whatever was added or removed meanwhile (derived, rebuilt
    /// after a restore).
    #[serde(skip)]
    by_hash: BTreeSet<(u64, Vec<u8>)>,
    /// Accounted bytes of everything above (derived: kept up to date by
    /// every change, recomputed after a restore).
    #[serde(skip)]
    used: u64,
}

impl Db {
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn expires_len(&self) -> usize {
        self.expires.len()
    }

    /// Accounted bytes of the keyspace, for the memory budget.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Adds to the accounted bytes (a command grew a value in place).
    pub fn charge(&mut self, bytes: u64) {
        self.used = self.used.saturating_add(bytes);
    }

    /// Takes from the accounted bytes (a command shrank a value in place).
    pub fn release(&mut self, bytes: u64) {
        self.used = self.used.saturating_sub(bytes);
    }

    /// The accounted bytes computed from scratch (after a restore, and to
    /// check the running figure in tests).
    pub fn recount(&self) -> u64 {
        let data: u64 = self.data.iter().map(|(k, v)| key_weight(k, v)).sum();
        let expires: u64 = self
            .expires
            .keys()
            .map(|k| EXPIRE_OVERHEAD + 2 * k.len() as u64)
            .sum();
        data + expires
    }

    /// Feeds the whole keyspace into `h`, in key order: every key, its
    /// value (kind and contents, lengths first so nothing is ambiguous) and
    /// its expiry. Hashes the bytes where they lie, without encoding a
    /// snapshot first.
    pub fn hash_into(&self, h: &mut Fnv64) {
        let bytes = |h: &mut Fnv64, b: &[u8]| {
            h.u64(b.len() as u64).bytes(b);
        };
        h.u64(self.data.len() as u64);
        for (key, value) in self.data.iter() {
            bytes(h, key);
            match value {
                Value::Str(s) => {
                    h.u64(0);
                    bytes(h, s);
                }
                Value::List(l) => {
                    h.u64(1).u64(l.len() as u64);
                    for e in l {
                        bytes(h, e);
                    }
                }
                Value::Hash(m) => {
                    h.u64(2).u64(m.len() as u64);
                    for (f, v) in m {
                        bytes(h, f);
                        bytes(h, v);
                    }
                }
                Value::Set(s) => {
                    h.u64(3).u64(s.len() as u64);
                    for e in s {
                        bytes(h, e);
                    }
                }
                Value::ZSet(z) => {
                    h.u64(4).u64(z.scores.len() as u64);
                    for (m, score) in &z.scores {
                        bytes(h, m);
                        h.u64(score.0.to_bits());
                    }
                }
            }
        }
        h.u64(self.expires.len() as u64);
        for (key, at) in self.expires.iter() {
            bytes(h, key);
            h.u64(*at);
        }
    }

    /// Rebuilds what is derived from the data: the running figure (from
    /// [`Db::recount`]) and the SCAN index.
    pub fn reset_used(&mut self) {
        self.used = self.recount();
        self.by_hash = self
            .data
            .keys()
            .map(|k| (scan_hash(k), k.clone()))
            .collect();
    }

    /// Removes every key whose expiry (ms of log time) is `now` or earlier;
    /// returns them (WATCH sees an expiry as a change).
    pub fn purge(&mut self, now: u64) -> Vec<Vec<u8>> {
        let mut gone = Vec::new();
        while let Some((at, _)) = self.by_time.get_min() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.by_time.remove_min() {
                if self.expires.remove(&key).is_some() {
                    self.release(EXPIRE_OVERHEAD + 2 * key.len() as u64);
                }
                if let Some(v) = self.data.remove(&key) {
                    self.by_hash.remove(&(scan_hash(&key), key.clone()));
                    self.release(key_weight(&key, &v));
                }
                gone.push(key);
            }
        }
        gone
    }

    /// Removes a key and its expiry, returning its value.
    pub fn take(&mut self, key: &[u8]) -> Option<Value> {
        self.set_expire(key, None);
        let v = self.data.remove(key)?;
        self.by_hash.remove(&(scan_hash(key), key.to_vec()));
        self.release(key_weight(key, &v));
        // Copied only if a snapshot still shares it.
        Some(Arc::unwrap_or_clone(v))
    }

    /// Removes a key and its expiry; true if it existed.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        self.take(key).is_some()
    }

    /// Stores a value, dropping any expiry unless `keep_ttl`.
    pub fn put(&mut self, key: &[u8], value: Value, keep_ttl: bool) {
        if !keep_ttl {
            self.set_expire(key, None);
        }
        self.charge(key_weight(key, &value));
        match self.data.insert(key.to_vec(), value) {
            Some(old) => self.release(key_weight(key, &old)),
            None => {
                self.by_hash.insert((scan_hash(key), key.to_vec()));
            }
        }
    }

    /// The value at `key`, created by `make` (empty, and charged as an
    /// empty key) if absent.
    pub fn get_or_create(&mut self, key: &[u8], make: impl FnOnce() -> Value) -> &mut Value {
        if !self.data.contains_key(key) {
            self.charge(key_base_weight(key));
            self.by_hash.insert((scan_hash(key), key.to_vec()));
            self.data.insert(key.to_vec(), make());
        }
        match self.data.get_mut(key) {
            Some(value) => value,
            None => unreachable!("inserted above"),
        }
    }

    /// Runs `f` on the value at `key`, if there is one, and re-weighs the
    /// key after it (for changes whose size effect is not worth tracking by
    /// hand; O(size of the value), for commands that are O(size) anyway).
    pub fn reweigh<R>(&mut self, key: &[u8], f: impl FnOnce(&mut Value) -> R) -> Option<R> {
        let v = self.data.get_mut(key)?;
        let before = key_weight(key, v);
        let r = f(v);
        let after = key_weight(key, v);
        self.used = self.used.saturating_sub(before).saturating_add(after);
        Some(r)
    }

    /// Up to about `count` keys from SCAN position `cursor` on, in
    /// [`scan_hash`] order, and the cursor to continue from (0: done).
    /// Keys sharing one hash are never split across calls, so a call
    /// always moves on.
    pub fn scan(&self, cursor: u64, count: usize) -> (Vec<&Vec<u8>>, u64) {
        let mut keys = Vec::new();
        let mut last = None;
        for (h, k) in self.by_hash.range((cursor, Vec::new())..) {
            if keys.len() >= count.max(1) && last != Some(*h) {
                return (keys, *h);
            }
            last = Some(*h);
            keys.push(k);
        }
        (keys, 0)
    }

    /// The first key at or after SCAN position `at`, wrapping around
    /// (RANDOMKEY draws `at`: O(log n), and as near uniform as the hash
    /// spreads keys, like Redis' own bucket sampling).
    pub fn key_at_or_after(&self, at: u64) -> Option<&Vec<u8>> {
        self.by_hash
            .range((at, Vec::new())..)
            .next()
            .or_else(|| self.by_hash.first())
            .map(|(_, k)| k)
    }

    /// Removes `key` if it holds an empty list, hash, set or sorted set
    /// (Redis never keeps empty aggregates).
    pub fn drop_if_empty(&mut self, key: &[u8]) {
        if self.data.get(key).is_some_and(Value::is_empty_aggregate) {
            self.remove(key);
        }
    }

    /// The key's expiry time, if it has one.
    pub fn expire_at(&self, key: &[u8]) -> Option<u64> {
        self.expires.get(key).copied()
    }

    /// Sets or clears the key's expiry time.
    pub fn set_expire(&mut self, key: &[u8], at: Option<u64>) {
        if let Some(old) = self.expires.remove(key) {
            self.by_time.remove(&(old, key.to_vec()));
            self.release(EXPIRE_OVERHEAD + 2 * key.len() as u64);
        }
        if let Some(at) = at {
            self.expires.insert(key.to_vec(), at);
            self.by_time.insert((at, key.to_vec()));
            self.charge(EXPIRE_OVERHEAD + 2 * key.len() as u64);
        }
    }

    pub fn clear(&mut self) {
        *self = Db::default();
    }

    /// What a snapshot encodes of this keyspace, in O(1): it shares the
    /// data with `self` until either changes (the derived SCAN index and
    /// accounted bytes are left out; a restore rebuilds them).
    pub fn snapshot_copy(&self) -> Db {
        Db {
            data: self.data.clone(),
            expires: self.expires.clone(),
            by_time: self.by_time.clone(),
            by_hash: BTreeSet::new(),
            used: 0,
        }
    }

    /// Consistency of a restored keyspace (the indexes agree with the data).
    pub fn check(&self) -> Result<(), String> {
        let ok = self.expires.len() == self.by_time.len()
            && self.by_hash.len() == self.data.len()
            && self
                .by_time
                .iter()
                .all(|(at, k)| self.expires.get(k) == Some(at) && self.data.contains_key(k))
            && self.data.values().all(|v| match v {
                Value::ZSet(z) => {
                    z.scores.len() == z.order.len()
                        && z.order
                            .iter()
                            .all(|(s, m)| z.scores.get(m) == Some(s) && !s.0.is_nan())
                }
                _ => true,
            });
        if ok {
            Ok(())
        } else {
            Err("inconsistent keyspace indexes".into())
        }
    }
}
