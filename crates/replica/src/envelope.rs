//! The authenticated, replay-protected envelope around every message between
//! nodes (DESIGN §3.8: "nothing unauthenticated reaches the log").
//!
//! No sockets here: the node carries the sealed bytes over whatever transport
//! it likes. Every envelope names its sender and its recipient as
//! (slot, incarnation), carries a per-sender sequence number and ends with a
//! BLAKE3 keyed hash over everything before it, keyed with a key derived from
//! the cluster secret. Opening checks, in order: shape, MAC, recipient,
//! sender incarnation, replay — and each failure is its own error, counted by
//! [`Inbox`], so an operator (and the lab tests) can tell a forged message
//! from a replayed one from a message for a dead incarnation. Opening never
//! panics, whatever the bytes.
//!
//! Wire format (big-endian):
//! `"TDM1" | kind u8 | from.slot u16 | from.inc u64 | to.slot u16 | to.inc u64
//!  | seq u64 | body_len u32 | body | mac [32]`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use protobuf::Message as _;
use raft::eraftpb::Message;

use crate::id::{NodeId, ANY_INCARNATION};

const MAGIC: &[u8; 4] = b"TDM1";
const HEADER_LEN: usize = 4 + 1 + 10 + 10 + 8 + 4;
const MAC_LEN: usize = 32;
/// The largest body accepted: larger claims are malformed (a snapshot larger
/// than this must be chunked by the node).
pub const MAX_BODY: usize = 256 << 20;
/// How far behind the newest sequence number a message may arrive and still
/// be accepted once (the transport may reorder within this window).
pub const REPLAY_WINDOW: u64 = 1024;

const KIND_RAFT: u8 = 0;
const KIND_JOIN: u8 = 1;
/// A snapshot-stream message ([`crate::snapshot_stream`]): chunks and acks.
const KIND_SNAPSHOT: u8 = 2;

/// The key every envelope is authenticated with, derived from the cluster
/// secret (the bytes of the cluster key file).
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.write_str("ClusterKey(..)")
    }
}

/// Why a cluster secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The secret is too short to resist guessing.
    #[error("cluster key has {0} bytes; it needs at least 16 (generate 32 random bytes, e.g. `head -c 32 /dev/urandom | base64`)")]
    TooShort(usize),
    /// The key file could not be read.
    #[error("cannot read the cluster key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl ClusterKey {
    /// Derives the MAC key from the secret. Surrounding whitespace is ignored
    /// so that a trailing newline in the key file does not split the cluster.
    pub fn from_secret(secret: &[u8]) -> Result<Self, KeyError> {
        let trimmed = secret.trim_ascii();
        if trimmed.len() < 16 {
            return Err(KeyError::TooShort(trimmed.len()));
        }
        Ok(Self(blake3::derive_key(
            "tandem 2026 replication envelope v1",
            trimmed,
        )))
    }

    /// Reads the secret from `path` and derives the key.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_secret(&bytes)
    }

    fn mac(&self, bytes: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(&self.0, bytes)
    }
}

/// What an envelope carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A Raft message.
    Raft(Message),
    /// "I am a new incarnation of my slot: add me as a learner." Sent by a
    /// restarted node, which does not know its peers' incarnations, so it is
    /// the only body that may be addressed to [`ANY_INCARNATION`].
    Join,
    /// A piece of a snapshot transfer, or its acknowledgement
    /// ([`crate::snapshot_stream`]).
    Snapshot(crate::snapshot_stream::StreamMsg),
}

/// An envelope that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    /// The authenticated sender.
    pub from: NodeId,
    /// The sender's sequence number.
    pub seq: u64,
    /// The content.
    pub body: Body,
}

/// Why an envelope was rejected. Each is counted apart by [`Inbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not an envelope: wrong magic, truncated, bad lengths, unknown kind,
    /// or (authenticated but) an undecodable or inconsistent body.
    #[error("malformed envelope")]
    Malformed,
    /// The MAC does not match: forged, corrupted, or another cluster's key.
    #[error("bad MAC (forged or wrong cluster key)")]
    BadMac,
    /// Addressed to an earlier incarnation of this node: it was meant for a
    /// process that has died (and may have acknowledged entries this one
    /// forgot), so it must not be acted on.
    #[error("addressed to an old incarnation of this node")]
    StaleIncarnation,
    /// Addressed to another slot, or to a later incarnation than this one.
    #[error("addressed to another node")]
    WrongRecipient,
    /// From an incarnation of the sender's slot older than one already heard.
    #[error("from an old incarnation of the sender")]
    StaleSender,
    /// A sequence number already seen, or too far behind the newest.
    #[error("replayed (sequence number already seen)")]
    Replayed,
}

/// Seals a body from `from` to `to` with sequence number `seq`.
pub fn seal(key: &ClusterKey, from: NodeId, to: NodeId, seq: u64, body: &Body) -> Vec<u8> {
    let (kind, payload) = match body {
        Body::Raft(m) => (
            KIND_RAFT,
            // Encoding an in-memory protobuf message cannot fail short of
            // running out of memory.
            m.write_to_bytes().unwrap_or_default(),
        ),
        Body::Join => (KIND_JOIN, Vec::new()),
        Body::Snapshot(m) => (KIND_SNAPSHOT, m.encode()),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + MAC_LEN);
    out.extend_from_slice(MAGIC);
    out.push(kind);
    out.extend_from_slice(&from.slot.to_be_bytes());
    out.extend_from_slice(&from.incarnation.to_be_bytes());
    out.extend_from_slice(&to.slot.to_be_bytes());
    out.extend_from_slice(&to.incarnation.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    let mac = key.mac(&out);
    out.extend_from_slice(mac.as_bytes());
    out
}

/// Per-sender replay state: the newest sequence number accepted from each
/// slot's newest incarnation, and which of the [`REPLAY_WINDOW`] numbers
/// before it were seen.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    senders: BTreeMap<u16, SenderWindow>,
}

#[derive(Debug, Clone)]
struct SenderWindow {
    incarnation: u64,
    newest: u64,
    /// Bit i set: `newest - i` was seen.
    seen: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl SenderWindow {
    fn new(incarnation: u64) -> Self {
        Self {
            incarnation,
            newest: 0,
            seen: [0; (REPLAY_WINDOW / 64) as usize],
        }
    }

    fn bit(&self, back: u64) -> bool {
        self.seen[(back / 64) as usize] >> (back % 64) & 1 == 1
    }

    fn set(&mut self, back: u64) {
        self.seen[(back / 64) as usize] |= 1 << (back % 64);
    }

    fn check(&self, seq: u64) -> Result<(), EnvelopeError> {
        if seq > self.newest {
            return Ok(());
        }
        let back = self.newest - seq;
        if back >= REPLAY_WINDOW || self.bit(back) {
            return Err(EnvelopeError::Replayed);
        }
        Ok(())
    }

    fn accept(&mut self, seq: u64) {
        if seq > self.newest {
            let shift = seq - self.newest;
            let old = std::mem::replace(&mut self.seen, [0; (REPLAY_WINDOW / 64) as usize]);
            self.newest = seq;
            if shift < REPLAY_WINDOW {
                for back in 0..REPLAY_WINDOW - shift {
                    if old[(back / 64) as usize] >> (back % 64) & 1 == 1 {
                        self.set(back + shift);
                    }
                }
            }
        }
        self.set(self.newest - seq);
    }
}

impl ReplayWindow {
    /// An empty window: nothing heard yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks `from`/`seq` against what was seen, without recording it.
    fn check(&self, from: NodeId, seq: u64) -> Result<(), EnvelopeError> {
        match self.senders.get(&from.slot) {
            None => Ok(()),
            Some(w) if from.incarnation < w.incarnation => Err(EnvelopeError::StaleSender),
            // A newer incarnation starts its numbering afresh.
            Some(w) if from.incarnation > w.incarnation => Ok(()),
            Some(w) => w.check(seq),
        }
    }

    fn accept(&mut self, from: NodeId, seq: u64) {
        let w = self
            .senders
            .entry(from.slot)
            .or_insert_with(|| SenderWindow::new(from.incarnation));
        if from.incarnation > w.incarnation {
            *w = SenderWindow::new(from.incarnation);
        }
        w.accept(seq);
    }
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Opens an envelope addressed to `me`: verifies shape, MAC, recipient,
/// sender incarnation and sequence number, and records the sequence number in
/// `window` only if everything passed.
pub fn open(
    key: &ClusterKey,
    me: NodeId,
    bytes: &[u8],
    window: &mut ReplayWindow,
) -> Result<Opened, EnvelopeError> {
    use EnvelopeError::*;
    if bytes.len() < HEADER_LEN + MAC_LEN || &bytes[..4] != MAGIC {
        return Err(Malformed);
    }
    let kind = bytes[4];
    let from = NodeId {
        slot: be_u16(&bytes[5..]),
        incarnation: be_u64(&bytes[7..]),
    };
    let to = NodeId {
        slot: be_u16(&bytes[15..]),
        incarnation: be_u64(&bytes[17..]),
    };
    let seq = be_u64(&bytes[25..]);
    let body_len = u32::from_be_bytes([bytes[33], bytes[34], bytes[35], bytes[36]]) as usize;
    if body_len > MAX_BODY
        || bytes.len() != HEADER_LEN + body_len + MAC_LEN
        || kind > KIND_SNAPSHOT
        || from.incarnation == ANY_INCARNATION
        || from.incarnation > crate::id::MAX_INCARNATION
        || seq == 0
    {
        return Err(Malformed);
    }
    let (signed, mac) = bytes.split_at(HEADER_LEN + body_len);
    // blake3::Hash's equality is constant-time.
    if key.mac(signed) != blake3::Hash::from_bytes(mac.try_into().map_err(|_| Malformed)?) {
        return Err(BadMac);
    }
    if to.slot != me.slot {
        return Err(WrongRecipient);
    }
    if to.incarnation == ANY_INCARNATION {
        if kind != KIND_JOIN {
            return Err(WrongRecipient);
        }
    } else if to.incarnation < me.incarnation {
        return Err(StaleIncarnation);
    } else if to.incarnation > me.incarnation {
        return Err(WrongRecipient);
    }
    window.check(from, seq)?;
    let body = match kind {
        KIND_JOIN if body_len == 0 => Body::Join,
        KIND_RAFT => {
            let m = Message::parse_from_bytes(&signed[HEADER_LEN..]).map_err(|_| Malformed)?;
            // The raft-level addresses must agree with the authenticated ones,
            // or a peer could speak for another node inside its own envelope.
            if m.from != from.raft_id() || m.to != me.raft_id() {
                return Err(Malformed);
            }
            Body::Raft(m)
        }
        KIND_SNAPSHOT => Body::Snapshot(
            crate::snapshot_stream::StreamMsg::decode(&signed[HEADER_LEN..]).ok_or(Malformed)?,
        ),
        _ => return Err(Malformed),
    };
    window.accept(from, seq);
    Ok(Opened { from, seq, body })
}

/// Counts of envelopes accepted and rejected, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnvelopeStats {
    /// Envelopes that passed every check.
    pub accepted: u64,
    /// [`EnvelopeError::Malformed`].
    pub malformed: u64,
    /// [`EnvelopeError::BadMac`].
    pub bad_mac: u64,
    /// [`EnvelopeError::StaleIncarnation`].
    pub stale_incarnation: u64,
    /// [`EnvelopeError::WrongRecipient`].
    pub wrong_recipient: u64,
    /// [`EnvelopeError::StaleSender`].
    pub stale_sender: u64,
    /// [`EnvelopeError::Replayed`].
    pub replayed: u64,
}

impl EnvelopeStats {
    /// Total rejected envelopes.
    pub fn rejected(&self) -> u64 {
        self.malformed
            + self.bad_mac
            + self.stale_incarnation
            + self.wrong_recipient
            + self.stale_sender
            + self.replayed
    }
}

/// The receiving side of one node: its identity, the key, the replay window
/// and the counters.
#[derive(Debug, Clone)]
pub struct Inbox {
    me: NodeId,
    key: ClusterKey,
    window: ReplayWindow,
    stats: EnvelopeStats,
}

impl Inbox {
    /// An inbox for node `me`.
    pub fn new(me: NodeId, key: ClusterKey) -> Self {
        Self {
            me,
            key,
            window: ReplayWindow::new(),
            stats: EnvelopeStats::default(),
        }
    }

    /// Opens `bytes`, counting the outcome.
    pub fn open(&mut self, bytes: &[u8]) -> Result<Opened, EnvelopeError> {
        let r = open(&self.key, self.me, bytes, &mut self.window);
        let s = &mut self.stats;
        match r {
            Ok(_) => s.accepted += 1,
            Err(EnvelopeError::Malformed) => s.malformed += 1,
            Err(EnvelopeError::BadMac) => s.bad_mac += 1,
            Err(EnvelopeError::StaleIncarnation) => s.stale_incarnation += 1,
            Err(EnvelopeError::WrongRecipient) => s.wrong_recipient += 1,
            Err(EnvelopeError::StaleSender) => s.stale_sender += 1,
            Err(EnvelopeError::Replayed) => s.replayed += 1,
        }
        r
    }

    /// The counters so far.
    pub fn stats(&self) -> EnvelopeStats {
        self.stats
    }
}

/// The sending side of one node: numbers and seals envelopes.
#[derive(Debug, Clone)]
pub struct Outbox {
    me: NodeId,
    key: ClusterKey,
    next_seq: u64,
}

impl Outbox {
    /// An outbox for node `me`; numbering starts at 1 for every incarnation
    /// (receivers reset their window when a new incarnation appears).
    pub fn new(me: NodeId, key: ClusterKey) -> Self {
        Self {
            me,
            key,
            next_seq: 1,
        }
    }

    /// Skips `n` sequence numbers (see `Replica::skip_sequence_numbers`).
    #[doc(hidden)]
    pub fn skip(&mut self, n: u64) {
        self.next_seq += n;
    }

    /// Seals `body` for `to` with the next sequence number.
    pub fn seal(&mut self, to: NodeId, body: &Body) -> Vec<u8> {
        let seq = self.next_seq;
        self.next_seq += 1;
        seal(&self.key, self.me, to, seq, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use raft::eraftpb::MessageType;

    fn key() -> ClusterKey {
        ClusterKey::from_secret(b"0123456789abcdef0123456789abcdef\n").unwrap()
    }

    fn msg(from: NodeId, to: NodeId) -> Body {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = from.raft_id();
        m.to = to.raft_id();
        m.term = 7;
        Body::Raft(m)
    }

    const A: NodeId = NodeId {
        slot: 1,
        incarnation: 3,
    };
    const B: NodeId = NodeId {
        slot: 2,
        incarnation: 5,
    };

    #[test]
    fn round_trip_and_every_rejection() {
        let k = key();
        let mut out = Outbox::new(A, k.clone());
        let mut inbox = Inbox::new(B, k.clone());
        let e1 = out.seal(B, &msg(A, B));
        let got = inbox.open(&e1).unwrap();
        assert_eq!((got.from, got.seq, got.body), (A, 1, msg(A, B)));
        // Replayed.
        assert_eq!(inbox.open(&e1), Err(EnvelopeError::Replayed));
        // Forged: one bit flipped in the body, or another cluster's key.
        let mut forged = out.seal(B, &msg(A, B));
        let n = forged.len();
        forged[n - 40] ^= 1;
        assert_eq!(inbox.open(&forged), Err(EnvelopeError::BadMac));
        let other = ClusterKey::from_secret(b"another cluster's secret key!!").unwrap();
        let e = seal(&other, A, B, 99, &msg(A, B));
        assert_eq!(inbox.open(&e), Err(EnvelopeError::BadMac));
        // Addressed to an old incarnation of B.
        let old_b = NodeId::new(2, 4);
        let e = out.seal(old_b, &msg(A, old_b));
        assert_eq!(inbox.open(&e), Err(EnvelopeError::StaleIncarnation));
        // Addressed elsewhere.
        let c = NodeId::new(3, 1);
        let e = out.seal(c, &msg(A, c));
        assert_eq!(inbox.open(&e), Err(EnvelopeError::WrongRecipient));
        // Raft message to "any" incarnation: refused; Join: accepted.
        let any = NodeId::new(2, ANY_INCARNATION);
        let e = out.seal(any, &msg(A, B));
        assert_eq!(inbox.open(&e), Err(EnvelopeError::WrongRecipient));
        let e = out.seal(any, &Body::Join);
        assert_eq!(inbox.open(&e).unwrap().body, Body::Join);
        // A newer incarnation of A resets the window; then the old one is stale.
        let a4 = NodeId::new(1, 4);
        let e = seal(&k, a4, B, 1, &msg(a4, B));
        assert!(inbox.open(&e).is_ok());
        let e = out.seal(B, &msg(A, B));
        assert_eq!(inbox.open(&e), Err(EnvelopeError::StaleSender));
        // Truncated.
        assert_eq!(inbox.open(&e1[..10]), Err(EnvelopeError::Malformed));
        // Authenticated but raft addresses disagree with the envelope's.
        let e = seal(&k, a4, B, 2, &msg(c, B));
        assert_eq!(inbox.open(&e), Err(EnvelopeError::Malformed));
        let s = inbox.stats();
        assert_eq!(
            (
                s.accepted,
                s.replayed,
                s.bad_mac,
                s.stale_incarnation,
                s.wrong_recipient,
                s.stale_sender,
                s.malformed
            ),
            (3, 1, 2, 1, 2, 1, 2)
        );
        assert_eq!(s.rejected(), 9);
    }

    #[test]
    fn window_accepts_reordering_once() {
        let k = key();
        let mut w = ReplayWindow::new();
        let e = |seq| seal(&k, A, B, seq, &msg(A, B));
        for seq in [5, 3, 4, 1, 2000, 1990] {
            assert!(open(&k, B, &e(seq), &mut w).is_ok(), "seq {seq}");
        }
        for seq in [5, 3, 1990, 2000, 100] {
            assert_eq!(
                open(&k, B, &e(seq), &mut w),
                Err(EnvelopeError::Replayed),
                "seq {seq}"
            );
        }
        assert!(open(&k, B, &e(1500), &mut w).is_ok());
    }

    #[test]
    fn short_secret_refused() {
        assert!(matches!(
            ClusterKey::from_secret(b"  short \n"),
            Err(KeyError::TooShort(5))
        ));
    }

    proptest! {
        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut w = ReplayWindow::new();
            let _ = open(&key(), B, &bytes, &mut w);
        }

        #[test]
        fn open_never_panics_on_mutated_envelopes(
            idx in any::<prop::sample::Index>(),
            xor in 1u8..,
            cut in any::<prop::sample::Index>(),
        ) {
            let k = key();
            let mut w = ReplayWindow::new();
            let mut e = seal(&k, A, B, 1, &msg(A, B));
            let i = idx.index(e.len());
            e[i] ^= xor;
            prop_assert!(open(&k, B, &e, &mut w).is_err());
            let e = seal(&k, A, B, 2, &msg(A, B));
            let _ = open(&k, B, &e[..cut.index(e.len())], &mut w);
        }
    }
}
