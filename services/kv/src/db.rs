//! The keyspace: values by key, expiry times, and an index by expiry time
//! so expired keys are purged in a deterministic order at a deterministic
//! log position.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

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

    /// Removes and returns the lowest (score, member).
    pub fn pop_min(&mut self) -> Option<(Vec<u8>, f64)> {
        let (score, member) = self.order.pop_first()?;
        self.scores.remove(&member);
        Some((member, score.0))
    }
}

/// The keyspace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Db {
    pub data: BTreeMap<Vec<u8>, Value>,
    expires: BTreeMap<Vec<u8>, u64>,
    by_time: BTreeSet<(u64, Vec<u8>)>,
}

impl Db {
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn expires_len(&self) -> usize {
        self.expires.len()
    }

    /// Removes every key whose expiry (ms of log time) is `now` or earlier.
    pub fn purge(&mut self, now: u64) {
        while let Some((at, _)) = self.by_time.first() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.by_time.pop_first() {
                self.expires.remove(&key);
                self.data.remove(&key);
            }
        }
    }

    /// Removes a key and its expiry; true if it existed.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        self.set_expire(key, None);
        self.data.remove(key).is_some()
    }

    /// Stores a value, dropping any expiry unless `keep_ttl`.
    pub fn put(&mut self, key: &[u8], value: Value, keep_ttl: bool) {
        if !keep_ttl {
            self.set_expire(key, None);
        }
        self.data.insert(key.to_vec(), value);
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
        }
        if let Some(at) = at {
            self.expires.insert(key.to_vec(), at);
            self.by_time.insert((at, key.to_vec()));
        }
    }

    pub fn clear(&mut self) {
        *self = Db::default();
    }

    /// Consistency of a restored keyspace (the indexes agree with the data).
    pub fn check(&self) -> Result<(), String> {
        let ok = self.expires.len() == self.by_time.len()
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
