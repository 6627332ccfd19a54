//! The encrypted, authenticated, replay-protected envelope around every
//! message between nodes (docs/architecture.md §3.8: "nothing unauthenticated reaches the
//! log"; issue 10: nothing readable on the node network either).
//!
//! No sockets here: the node carries the sealed bytes over whatever transport
//! it likes. Every envelope names its sender and its recipient as
//! (slot, incarnation) and carries a per-sender sequence number; its body is
//! encrypted with ChaCha20-Poly1305 and the header is authenticated as
//! associated data. Opening checks, in order: shape, key, tag, recipient,
//! sender incarnation, replay — and each failure is its own error, counted by
//! [`Inbox`], so an operator (and the lab tests) can tell a forged message
//! from a replayed one from a message for a dead incarnation. Opening never
//! panics, whatever the bytes.
//!
//! # Keys and nonces
//! The cluster secret (the key file's bytes) is the HKDF-SHA256 input key.
//! Each envelope is sealed with a key derived for its *direction and
//! incarnations*: (domain, sender slot and incarnation, recipient slot and
//! incarnation). The nonce is the sender's sequence number. A sender numbers
//! its envelopes 1, 2, 3… once per incarnation, and incarnations are bumped
//! and fsynced before a node sends anything, so a (key, nonce) pair is
//! never used twice: a restarted sender has a new incarnation and so new
//! keys; a restarted recipient has a new incarnation and so new keys too;
//! messages to [`ANY_INCARNATION`] (join requests) use the key for "any" and
//! still take their nonce from the sender's one counter. The transport's
//! hellos ([`seal_hello`]) are numbered by their own counter, so they use
//! their own domain and thus their own keys. The one case this cannot
//! cover: removing the incarnation files to re-create a group starts every
//! node at incarnation 1 again, so a re-created group must get a new
//! cluster key (or keystreams of the old group would repeat).
//!
//! # Key rotation
//! A [`Keyring`] holds the key used to send and every key accepted (the
//! current one and, during a rotation, one other). Each envelope names its
//! key by a 4-byte public fingerprint derived from the secret, so a receiver
//! picks the key without trying them all; an unknown fingerprint is
//! [`EnvelopeError::BadMac`].
//!
//! # Wire format (big-endian)
//! `"TDM2" | kind u8 | flags u8 | key_id [4] | from.slot u16 | from.inc u64
//!  | to.slot u16 | to.inc u64 | seq u64 | body_len u32 | body | tag [16]`.
//! The body is ciphertext, except with [`FLAG_UNENCRYPTED`] (benchmarks
//! only, see [`Keyring::unencrypted_for_benchmarks`]), where the body is in
//! clear and authenticated as associated data.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use hkdf::Hkdf;
use protobuf::Message as _;
use raft::eraftpb::Message;
use sha2::Sha256;

use crate::id::{NodeId, ANY_INCARNATION};

const MAGIC: &[u8; 4] = b"TDM2";
/// Length of the header (the associated data).
pub const HEADER_LEN: usize = 4 + 1 + 1 + 4 + 10 + 10 + 8 + 4;
const TAG_LEN: usize = 16;
/// The largest body accepted: larger claims are malformed (a snapshot larger
/// than this must be chunked by the node).
pub const MAX_BODY: usize = 256 << 20;
/// How far behind the newest sequence number a message may arrive and still
/// be accepted once (the transport may reorder within this window).
pub const REPLAY_WINDOW: u64 = 1024;
/// Length of a sealed hello ([`seal_hello`]).
pub const HELLO_LEN: usize = HEADER_LEN + TAG_LEN;
/// Flag: the body is in clear (authenticated only). Sent only by a node
/// configured for it, accepted only by one configured for it.
pub const FLAG_UNENCRYPTED: u8 = 1;

const KIND_RAFT: u8 = 0;
const KIND_JOIN: u8 = 1;
const KIND_HELLO: u8 = 2;
/// A snapshot-stream message ([`crate::snapshot_stream`]): chunks and acks.
const KIND_SNAPSHOT: u8 = 3;

/// Key domains: envelopes and hellos are numbered by different counters,
/// so they must never share a key.
const DOMAIN_ENVELOPE: u8 = 0;
const DOMAIN_HELLO: u8 = 1;

const SALT: &[u8] = b"tandem 2026 replication v2";

/// One cluster secret, ready to derive per-direction keys from.
#[derive(Clone)]
pub struct ClusterKey {
    prk: Hkdf<Sha256>,
    id: [u8; 4],
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material; the fingerprint is public.
        write!(f, "ClusterKey({})", self.fingerprint())
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
    /// Takes the secret. Surrounding whitespace is ignored so that a
    /// trailing newline in the key file does not split the cluster.
    pub fn from_secret(secret: &[u8]) -> Result<Self, KeyError> {
        let trimmed = secret.trim_ascii();
        if trimmed.len() < 16 {
            return Err(KeyError::TooShort(trimmed.len()));
        }
        let prk = Hkdf::<Sha256>::new(Some(SALT), trimmed);
        let mut id = [0u8; 4];
        // 4 bytes is a valid HKDF-SHA256 output length.
        prk.expand(b"tandem key fingerprint", &mut id)
            .unwrap_or_default();
        Ok(Self { prk, id })
    }

    /// Reads the secret from `path`.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_secret(&bytes)
    }

    /// A public name of this key (hex of the 4-byte fingerprint carried in
    /// every envelope), for logs and status: it tells which key a node
    /// uses without revealing it.
    pub fn fingerprint(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The AEAD for one domain and direction.
    fn cipher(&self, domain: u8, from: NodeId, to: NodeId) -> ChaCha20Poly1305 {
        let mut info = [0u8; 16 + 1 + 20];
        info[..16].copy_from_slice(b"tandem envelope\0");
        info[16] = domain;
        info[17..19].copy_from_slice(&from.slot.to_be_bytes());
        info[19..27].copy_from_slice(&from.incarnation.to_be_bytes());
        info[27..29].copy_from_slice(&to.slot.to_be_bytes());
        info[29..37].copy_from_slice(&to.incarnation.to_be_bytes());
        let mut okm = [0u8; 32];
        // 32 bytes is a valid HKDF-SHA256 output length.
        self.prk.expand(&info, &mut okm).unwrap_or_default();
        ChaCha20Poly1305::new(&okm.into())
    }
}

/// The keys of one node: the one it sends with, and those it accepts.
#[derive(Clone, Debug)]
pub struct Keyring {
    send: ClusterKey,
    /// Accepted keys, `send` first.
    accept: Vec<ClusterKey>,
    unencrypted: bool,
}

impl From<ClusterKey> for Keyring {
    fn from(key: ClusterKey) -> Self {
        Keyring::new(key, None)
    }
}

impl Keyring {
    /// Sends with `current`; accepts `current` and `other` (during a
    /// rotation: the next key before the switch, the previous one after).
    pub fn new(current: ClusterKey, other: Option<ClusterKey>) -> Self {
        let mut accept = vec![current.clone()];
        accept.extend(other.filter(|o| o.id != current.id));
        Keyring {
            send: current,
            accept,
            unencrypted: false,
        }
    }

    /// Benchmarks only: send bodies in clear (still authenticated) and
    /// accept such bodies. Exists to measure what encryption costs; never
    /// use it where the node network can be observed.
    pub fn unencrypted_for_benchmarks(mut self) -> Self {
        self.unencrypted = true;
        self
    }

    /// Whether bodies are sent in clear.
    pub fn is_unencrypted(&self) -> bool {
        self.unencrypted
    }

    /// The key used to send.
    pub fn current(&self) -> &ClusterKey {
        &self.send
    }

    /// Every accepted key, the current one first.
    pub fn accepted(&self) -> &[ClusterKey] {
        &self.accept
    }

    fn find(&self, id: [u8; 4]) -> impl Iterator<Item = &ClusterKey> {
        self.accept.iter().filter(move |k| k.id == id)
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
    /// Not an envelope: wrong magic, truncated, bad lengths, unknown kind or
    /// flags, or (authenticated but) an undecodable or inconsistent body.
    #[error("malformed envelope")]
    Malformed,
    /// The tag does not verify or the key is unknown: forged, corrupted, or
    /// another cluster's key.
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

fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n.into()
}

/// The header fields of an envelope.
struct Header {
    kind: u8,
    flags: u8,
    key_id: [u8; 4],
    from: NodeId,
    to: NodeId,
    seq: u64,
    body_len: usize,
}

impl Header {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&self.from.slot.to_be_bytes());
        out.extend_from_slice(&self.from.incarnation.to_be_bytes());
        out.extend_from_slice(&self.to.slot.to_be_bytes());
        out.extend_from_slice(&self.to.incarnation.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        // Callers keep bodies below MAX_BODY, which fits in a u32.
        out.extend_from_slice(&(self.body_len as u32).to_be_bytes());
    }

    /// Parses and checks the shape of `bytes` (header, lengths, identities).
    fn parse(bytes: &[u8]) -> Result<Header, EnvelopeError> {
        use EnvelopeError::Malformed;
        if bytes.len() < HEADER_LEN + TAG_LEN || &bytes[..4] != MAGIC {
            return Err(Malformed);
        }
        let h = Header {
            kind: bytes[4],
            flags: bytes[5],
            key_id: [bytes[6], bytes[7], bytes[8], bytes[9]],
            from: NodeId {
                slot: be_u16(&bytes[10..]),
                incarnation: be_u64(&bytes[12..]),
            },
            to: NodeId {
                slot: be_u16(&bytes[20..]),
                incarnation: be_u64(&bytes[22..]),
            },
            seq: be_u64(&bytes[30..]),
            body_len: u32::from_be_bytes([bytes[38], bytes[39], bytes[40], bytes[41]]) as usize,
        };
        if h.body_len > MAX_BODY
            || bytes.len() != HEADER_LEN + h.body_len + TAG_LEN
            || h.flags & !FLAG_UNENCRYPTED != 0
            || h.from.incarnation == ANY_INCARNATION
            || h.from.incarnation > crate::id::MAX_INCARNATION
            || h.seq == 0
        {
            return Err(Malformed);
        }
        Ok(h)
    }
}

/// Seals `payload` under `cipher`; the header is associated data.
fn seal_with(cipher: &ChaCha20Poly1305, header: &Header, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
    header.write(&mut out);
    out.extend_from_slice(payload);
    let tag = if header.flags & FLAG_UNENCRYPTED != 0 {
        // Body in clear: authenticate header and body, encrypt nothing.
        cipher.encrypt_in_place_detached(&nonce(header.seq), &out, &mut [])
    } else {
        let (head, body) = out.split_at_mut(HEADER_LEN);
        cipher.encrypt_in_place_detached(&nonce(header.seq), head, body)
    };
    // Encryption fails only for bodies beyond ChaCha20's 256 GiB limit.
    let tag = tag.unwrap_or_default();
    out.extend_from_slice(&tag);
    out
}

/// Verifies (and decrypts) `bytes` under `cipher`; returns the plaintext
/// body.
fn open_with(
    cipher: &ChaCha20Poly1305,
    header: &Header,
    bytes: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let (signed, tag) = bytes.split_at(HEADER_LEN + header.body_len);
    let tag = Tag::from_slice(tag);
    if header.flags & FLAG_UNENCRYPTED != 0 {
        cipher
            .decrypt_in_place_detached(&nonce(header.seq), signed, &mut [], tag)
            .map_err(|_| EnvelopeError::BadMac)?;
        Ok(signed[HEADER_LEN..].to_vec())
    } else {
        let mut body = signed[HEADER_LEN..].to_vec();
        cipher
            .decrypt_in_place_detached(&nonce(header.seq), &signed[..HEADER_LEN], &mut body, tag)
            .map_err(|_| EnvelopeError::BadMac)?;
        Ok(body)
    }
}

fn encode(body: &Body) -> (u8, Vec<u8>) {
    match body {
        Body::Raft(m) => (
            KIND_RAFT,
            // Encoding an in-memory protobuf message cannot fail short of
            // running out of memory.
            m.write_to_bytes().unwrap_or_default(),
        ),
        Body::Join => (KIND_JOIN, Vec::new()),
        Body::Snapshot(m) => (KIND_SNAPSHOT, m.encode()),
    }
}

/// Seals a body from `from` to `to` with sequence number `seq` under the
/// current key of `keys`. A (from, to, seq) must never be sealed twice under
/// one key: [`Outbox`] guarantees it.
pub fn seal(keys: &Keyring, from: NodeId, to: NodeId, seq: u64, body: &Body) -> Vec<u8> {
    let cipher = keys.send.cipher(DOMAIN_ENVELOPE, from, to);
    seal_body(keys, &cipher, from, to, seq, body)
}

fn seal_body(
    keys: &Keyring,
    cipher: &ChaCha20Poly1305,
    from: NodeId,
    to: NodeId,
    seq: u64,
    body: &Body,
) -> Vec<u8> {
    let (kind, payload) = encode(body);
    let header = Header {
        kind,
        flags: if keys.unencrypted {
            FLAG_UNENCRYPTED
        } else {
            0
        },
        key_id: keys.send.id,
        from,
        to,
        seq,
        body_len: payload.len(),
    };
    seal_with(cipher, &header, &payload)
}

/// Seals the transport's hello: the first frame on every replication
/// connection, proving the connecting node holds a cluster key before the
/// receiver buffers anything large. `counter` must increase with every
/// hello of this incarnation (the receiver refuses one not newer than the
/// last it accepted from the slot). Always [`HELLO_LEN`] bytes.
pub fn seal_hello(keys: &Keyring, from: NodeId, to_slot: u16, counter: u64) -> Vec<u8> {
    let to = NodeId {
        slot: to_slot,
        incarnation: ANY_INCARNATION,
    };
    let header = Header {
        kind: KIND_HELLO,
        flags: 0,
        key_id: keys.send.id,
        from,
        to,
        seq: counter,
        body_len: 0,
    };
    seal_with(&keys.send.cipher(DOMAIN_HELLO, from, to), &header, &[])
}

/// Checks a hello addressed to slot `me_slot`; returns its authenticated
/// sender and counter. Freshness (the counter) is the caller's to check.
pub fn open_hello(
    keys: &Keyring,
    me_slot: u16,
    bytes: &[u8],
) -> Result<(NodeId, u64), EnvelopeError> {
    let h = Header::parse(bytes)?;
    if h.kind != KIND_HELLO || h.body_len != 0 || h.flags != 0 {
        return Err(EnvelopeError::Malformed);
    }
    let mut verified = false;
    for key in keys.find(h.key_id) {
        if open_with(&key.cipher(DOMAIN_HELLO, h.from, h.to), &h, bytes).is_ok() {
            verified = true;
            break;
        }
    }
    if !verified {
        return Err(EnvelopeError::BadMac);
    }
    if h.to.slot != me_slot || h.to.incarnation != ANY_INCARNATION {
        return Err(EnvelopeError::WrongRecipient);
    }
    Ok((h.from, h.seq))
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
            self.newest = seq;
            // Bit `back` moves to `back + shift`: a shift of the bitmap by
            // whole words and bits (this runs for nearly every envelope, so
            // not bit by bit).
            if shift >= REPLAY_WINDOW {
                self.seen = [0; (REPLAY_WINDOW / 64) as usize];
            } else {
                let words = (shift / 64) as usize;
                let bits = (shift % 64) as u32;
                for i in (0..self.seen.len()).rev() {
                    let mut v = 0;
                    if let Some(src) = i.checked_sub(words) {
                        v = self.seen[src] << bits;
                        if bits > 0 && src > 0 {
                            v |= self.seen[src - 1] >> (64 - bits);
                        }
                    }
                    self.seen[i] = v;
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

/// Ciphers derived already, so that a steady stream of envelopes does not
/// run HKDF for each one. Filled only with keys that opened or sealed an
/// envelope (never by a forger's header), and bounded anyway.
#[derive(Clone, Default)]
struct CipherCache {
    ciphers: BTreeMap<([u8; 4], NodeId, NodeId), ChaCha20Poly1305>,
}

/// Entries kept: a few per peer incarnation; more means churn, so start over.
const CIPHER_CACHE_MAX: usize = 64;

impl fmt::Debug for CipherCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CipherCache({} ciphers)", self.ciphers.len())
    }
}

impl CipherCache {
    fn get(&self, key: &ClusterKey, from: NodeId, to: NodeId) -> Option<&ChaCha20Poly1305> {
        self.ciphers.get(&(key.id, from, to))
    }

    fn insert(&mut self, key: &ClusterKey, from: NodeId, to: NodeId, c: ChaCha20Poly1305) {
        if self.ciphers.len() >= CIPHER_CACHE_MAX {
            self.ciphers.clear();
        }
        self.ciphers.insert((key.id, from, to), c);
    }
}

/// Opens an envelope addressed to `me`: verifies shape, tag, recipient,
/// sender incarnation and sequence number, and records the sequence number in
/// `window` only if everything passed.
pub fn open(
    keys: &Keyring,
    me: NodeId,
    bytes: &[u8],
    window: &mut ReplayWindow,
) -> Result<Opened, EnvelopeError> {
    open_cached(keys, &mut CipherCache::default(), me, bytes, window)
}

fn open_cached(
    keys: &Keyring,
    cache: &mut CipherCache,
    me: NodeId,
    bytes: &[u8],
    window: &mut ReplayWindow,
) -> Result<Opened, EnvelopeError> {
    use EnvelopeError::*;
    let h = Header::parse(bytes)?;
    if !matches!(h.kind, KIND_RAFT | KIND_JOIN | KIND_SNAPSHOT) {
        return Err(Malformed);
    }
    if h.flags & FLAG_UNENCRYPTED != 0 && !keys.unencrypted {
        // A node not configured for clear text never takes it.
        return Err(Malformed);
    }
    let mut body = None;
    for key in keys.find(h.key_id) {
        let opened = match cache.get(key, h.from, h.to) {
            Some(c) => open_with(c, &h, bytes),
            None => {
                let c = key.cipher(DOMAIN_ENVELOPE, h.from, h.to);
                let r = open_with(&c, &h, bytes);
                if r.is_ok() {
                    cache.insert(key, h.from, h.to, c);
                }
                r
            }
        };
        if let Ok(b) = opened {
            body = Some(b);
            break;
        }
    }
    let Some(payload) = body else {
        return Err(BadMac);
    };
    let (kind, from, to, seq) = (h.kind, h.from, h.to, h.seq);
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
        KIND_JOIN if payload.is_empty() => Body::Join,
        KIND_RAFT => {
            let m = Message::parse_from_bytes(&payload).map_err(|_| Malformed)?;
            // The raft-level addresses must agree with the authenticated ones,
            // or a peer could speak for another node inside its own envelope.
            if m.from != from.raft_id() || m.to != me.raft_id() {
                return Err(Malformed);
            }
            Body::Raft(m)
        }
        KIND_SNAPSHOT => {
            Body::Snapshot(crate::snapshot_stream::StreamMsg::decode(&payload).ok_or(Malformed)?)
        }
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

/// The receiving side of one node: its identity, the keys, the replay
/// window and the counters.
#[derive(Debug, Clone)]
pub struct Inbox {
    me: NodeId,
    keys: Keyring,
    cache: CipherCache,
    window: ReplayWindow,
    stats: EnvelopeStats,
}

impl Inbox {
    /// An inbox for node `me`.
    pub fn new(me: NodeId, keys: impl Into<Keyring>) -> Self {
        Self {
            me,
            keys: keys.into(),
            cache: CipherCache::default(),
            window: ReplayWindow::new(),
            stats: EnvelopeStats::default(),
        }
    }

    /// Replaces the keys (a rotation step); the replay window is kept.
    pub fn set_keys(&mut self, keys: Keyring) {
        self.keys = keys;
        self.cache = CipherCache::default();
    }

    /// Opens `bytes`, counting the outcome.
    pub fn open(&mut self, bytes: &[u8]) -> Result<Opened, EnvelopeError> {
        let r = open_cached(
            &self.keys,
            &mut self.cache,
            self.me,
            bytes,
            &mut self.window,
        );
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

/// The sender named in an envelope's header, unchecked. Meaningful only
/// for an envelope that [`Inbox::open`] refused as
/// [`EnvelopeError::StaleIncarnation`]: the tag is verified before the
/// recipient, so that sender is authentic (it sealed to a dead incarnation
/// of this node because it has not heard of this one yet).
pub fn sender_of(bytes: &[u8]) -> Option<NodeId> {
    Header::parse(bytes).ok().map(|h| h.from)
}

/// The sending side of one node: numbers and seals envelopes. One counter
/// for all recipients, so a sequence number (the nonce) is never used twice
/// in an incarnation, whatever key it is sealed under.
#[derive(Debug, Clone)]
pub struct Outbox {
    me: NodeId,
    keys: Keyring,
    cache: CipherCache,
    next_seq: u64,
}

impl Outbox {
    /// An outbox for node `me`; numbering starts at 1 for every incarnation
    /// (receivers reset their window when a new incarnation appears, and
    /// the new incarnation's keys are new).
    pub fn new(me: NodeId, keys: impl Into<Keyring>) -> Self {
        Self {
            me,
            keys: keys.into(),
            cache: CipherCache::default(),
            next_seq: 1,
        }
    }

    /// Replaces the keys (a rotation step); numbering goes on.
    pub fn set_keys(&mut self, keys: Keyring) {
        self.keys = keys;
        self.cache = CipherCache::default();
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
        let key = &self.keys.send;
        let cipher = match self.cache.get(key, self.me, to) {
            Some(c) => c.clone(),
            None => {
                let c = key.cipher(DOMAIN_ENVELOPE, self.me, to);
                self.cache.insert(key, self.me, to, c.clone());
                c
            }
        };
        seal_body(&self.keys, &cipher, self.me, to, seq, body)
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

    fn keys() -> Keyring {
        key().into()
    }

    fn other_key() -> ClusterKey {
        ClusterKey::from_secret(b"another cluster's secret key!!").unwrap()
    }

    fn msg(from: NodeId, to: NodeId) -> Body {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = from.raft_id();
        m.to = to.raft_id();
        m.term = 7;
        Body::Raft(m)
    }

    /// An append carrying `data` as an entry: something worth hiding.
    fn append(from: NodeId, to: NodeId, data: &[u8]) -> Body {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.from = from.raft_id();
        m.to = to.raft_id();
        let e = raft::eraftpb::Entry {
            data: data.to_vec().into(),
            ..Default::default()
        };
        m.entries = vec![e].into();
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

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn round_trip_and_every_rejection() {
        let k = keys();
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
        forged[n - 20] ^= 1;
        assert_eq!(inbox.open(&forged), Err(EnvelopeError::BadMac));
        let e = seal(&other_key().into(), A, B, 99, &msg(A, B));
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
    fn the_body_is_encrypted() {
        let secret = b"a value nobody on the wire may read: 7c1f0a";
        let mut out = Outbox::new(A, keys());
        let sealed = out.seal(B, &append(A, B, secret));
        assert!(!contains(&sealed, secret));
        assert!(!contains(&sealed, b"a value nobody"));
        let opened = open(&keys(), B, &sealed, &mut ReplayWindow::new()).unwrap();
        assert_eq!(opened.body, append(A, B, secret));
    }

    #[test]
    fn the_key_is_per_direction_and_incarnation() {
        let k = keys();
        let body = append(A, B, b"same plaintext");
        // The same body and sequence number under different directions or
        // incarnations gives unrelated ciphertexts.
        let ab = seal(&k, A, B, 1, &body);
        let ba = seal(&k, B, A, 1, &body);
        let ab_next_inc = seal(&k, NodeId::new(1, 4), B, 1, &body);
        let to_new_b = seal(&k, A, NodeId::new(2, 6), 1, &body);
        let c = |e: &[u8]| e[HEADER_LEN..].to_vec();
        assert_ne!(c(&ab), c(&ba));
        assert_ne!(c(&ab), c(&ab_next_inc));
        assert_ne!(c(&ab), c(&to_new_b));
        // An envelope with its header rewritten to claim another direction
        // does not open: the key is bound to the header.
        let mut redirected = ab.clone();
        redirected[10..12].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(
            open(&k, B, &redirected, &mut ReplayWindow::new()),
            Err(EnvelopeError::BadMac)
        );
        // B's envelope to A does not open at B (wrong direction).
        let mut to_b = ba.clone();
        to_b[20..22].copy_from_slice(&2u16.to_be_bytes());
        to_b[22..30].copy_from_slice(&5u64.to_be_bytes());
        assert_eq!(
            open(&k, B, &to_b, &mut ReplayWindow::new()),
            Err(EnvelopeError::BadMac)
        );
    }

    #[test]
    fn nonces_are_unique_across_sequence_numbers() {
        let mut out = Outbox::new(A, keys());
        let body = append(A, B, &[0u8; 64]);
        let mut seen = std::collections::BTreeSet::new();
        let mut streams = std::collections::BTreeSet::new();
        for i in 1..=1000u64 {
            let e = out.seal(B, &body);
            let seq = be_u64(&e[30..]);
            assert_eq!(seq, i);
            assert!(seen.insert(seq), "sequence number {seq} reused");
            // Same plaintext, distinct keystream each time.
            assert!(streams.insert(e[HEADER_LEN..].to_vec()));
        }
        // Join messages to "any" incarnation share the sender's counter.
        let j = out.seal(NodeId::new(2, ANY_INCARNATION), &Body::Join);
        assert_eq!(be_u64(&j[30..]), 1001);
    }

    #[test]
    fn rotation_accepts_the_other_key_and_sends_with_the_current() {
        let (old, new) = (key(), other_key());
        let mut old_only = Inbox::new(B, Keyring::new(old.clone(), None));
        let mut both = Inbox::new(B, Keyring::new(old.clone(), Some(new.clone())));
        let mut new_only = Inbox::new(B, Keyring::new(new.clone(), None));
        let mut sender = Outbox::new(A, Keyring::new(old.clone(), Some(new.clone())));
        let e = sender.seal(B, &msg(A, B));
        assert!(old_only.open(&e).is_ok());
        assert!(both.open(&e).is_ok());
        assert_eq!(new_only.open(&e), Err(EnvelopeError::BadMac));
        // The switch: send with the new key, still accept the old.
        sender.set_keys(Keyring::new(new.clone(), Some(old.clone())));
        let e = sender.seal(B, &msg(A, B));
        assert_eq!(be_u64(&e[30..]), 2, "numbering goes on across a reload");
        assert!(both.open(&e).is_ok());
        assert!(new_only.open(&e).is_ok());
        assert_eq!(old_only.open(&e), Err(EnvelopeError::BadMac));
        assert_ne!(old.fingerprint(), new.fingerprint());
        assert_eq!(old.fingerprint().len(), 8);
    }

    #[test]
    fn clear_text_is_only_for_nodes_configured_for_it() {
        let plain = keys().unencrypted_for_benchmarks();
        let e = seal(&plain, A, B, 1, &append(A, B, b"visible value"));
        assert!(contains(&e, b"visible value"));
        assert!(open(&plain, B, &e, &mut ReplayWindow::new()).is_ok());
        assert_eq!(
            open(&keys(), B, &e, &mut ReplayWindow::new()),
            Err(EnvelopeError::Malformed)
        );
        // Still authenticated.
        let mut t = e.clone();
        let at = t.len() - 20;
        t[at] ^= 4;
        assert_eq!(
            open(&plain, B, &t, &mut ReplayWindow::new()),
            Err(EnvelopeError::BadMac)
        );
    }

    #[test]
    fn hellos_open_only_for_their_slot_and_key() {
        let k = keys();
        let h = seal_hello(&k, A, 2, 7);
        assert_eq!(h.len(), HELLO_LEN);
        assert_eq!(open_hello(&k, 2, &h), Ok((A, 7)));
        assert_eq!(open_hello(&k, 3, &h), Err(EnvelopeError::WrongRecipient));
        assert_eq!(
            open_hello(&other_key().into(), 2, &h),
            Err(EnvelopeError::BadMac)
        );
        // An envelope is not a hello, and a hello is not an envelope.
        let e = seal(&k, A, B, 1, &msg(A, B));
        assert_eq!(open_hello(&k, 2, &e), Err(EnvelopeError::Malformed));
        assert_eq!(
            open(&k, B, &h, &mut ReplayWindow::new()),
            Err(EnvelopeError::Malformed)
        );
        for i in 0..h.len() {
            let mut t = h.clone();
            t[i] ^= 0x40;
            assert!(open_hello(&k, 2, &t).is_err(), "byte {i}");
        }
    }

    #[test]
    fn window_accepts_reordering_once() {
        let k = keys();
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
        /// The replay window accepts exactly what a plain set of seen
        /// numbers and "no further back than the window" would.
        #[test]
        fn the_window_agrees_with_a_model(
            steps in proptest::collection::vec(
                (prop_oneof![0u64..70, 0u64..1500], any::<bool>()),
                1..400,
            ),
        ) {
            let mut w = SenderWindow::new(1);
            let mut seen = std::collections::BTreeSet::new();
            let mut newest = 0u64;
            for (seq, jump) in steps {
                // Forward by some, or back to a number likely seen.
                let seq = if jump { newest + seq } else { newest.saturating_sub(seq) }.max(1);
                let fresh = !seen.contains(&seq) && (seq > newest || newest - seq < REPLAY_WINDOW);
                prop_assert_eq!(w.check(seq).is_ok(), fresh, "seq {} newest {}", seq, newest);
                if fresh {
                    w.accept(seq);
                    seen.insert(seq);
                    newest = newest.max(seq);
                }
            }
        }

        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut w = ReplayWindow::new();
            let _ = open(&keys(), B, &bytes, &mut w);
            let _ = open_hello(&keys(), 2, &bytes);
        }

        /// Tampering with any byte of an envelope (header, ciphertext or
        /// tag) gets it rejected; cutting it never panics.
        #[test]
        fn any_tampered_byte_is_rejected(
            idx in any::<prop::sample::Index>(),
            xor in 1u8..,
            cut in any::<prop::sample::Index>(),
            data in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let k = keys();
            let mut w = ReplayWindow::new();
            let mut e = seal(&k, A, B, 1, &append(A, B, &data));
            let i = idx.index(e.len());
            e[i] ^= xor;
            prop_assert!(open(&k, B, &e, &mut w).is_err());
            let e = seal(&k, A, B, 2, &append(A, B, &data));
            let _ = open(&k, B, &e[..cut.index(e.len())], &mut w);
            // The untampered one still opens.
            prop_assert!(open(&k, B, &e, &mut w).is_ok());
        }
    }
}
