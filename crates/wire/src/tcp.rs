//! TCP segments (RFC 9293): a checked view, the options, and an owned
//! representation.
//!
//! This is the input of shadow TCP, which must accept exactly what the
//! kernel accepts. Two option parsers are therefore offered:
//! [`OptionsMode::Strict`] reports every malformed option as a typed error
//! (for tests, diagnostics and anything tandem builds itself), while
//! [`OptionsMode::Linux`] reproduces the kernel's `tcp_parse_options()`:
//! stop at the first malformed option, ignore known options of the wrong
//! length — the kernel never drops a segment for its options, so a replica
//! must not either.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

use crate::checksum::{self, PseudoHeader};
use crate::error::{Layer, Result, WireError};
use crate::ip::IpProtocol;
use crate::seq::SeqNumber;

/// The length of a TCP header without options.
pub const HEADER_LEN: usize = 20;

/// The largest TCP header (data offset 15).
pub const MAX_HEADER_LEN: usize = 60;

/// The most option bytes a header can carry.
pub const MAX_OPTIONS_LEN: usize = MAX_HEADER_LEN - HEADER_LEN;

/// The most SACK blocks one option can carry: (40 - 2) / 8.
pub const MAX_SACK_BLOCKS: usize = 4;

mod field {
    use std::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    pub const OFF_RSV: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Option kinds (IANA "TCP Option Kind Numbers").
pub mod kind {
    /// End of Option List.
    pub const EOL: u8 = 0;
    /// No-Operation (padding).
    pub const NOP: u8 = 1;
    /// Maximum Segment Size.
    pub const MSS: u8 = 2;
    /// Window Scale.
    pub const WINDOW_SCALE: u8 = 3;
    /// SACK Permitted.
    pub const SACK_PERMITTED: u8 = 4;
    /// SACK.
    pub const SACK: u8 = 5;
    /// Timestamps.
    pub const TIMESTAMPS: u8 = 8;
}

/// The eight TCP control flags, as the byte at offset 13 holds them.
///
/// The four bits below the data offset (reserved, and AE/NS for ECN) are not
/// flags here; [`Packet::reserved_bits`] reads them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(u8);

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: TcpFlags = TcpFlags(0x01);
    /// Synchronize sequence numbers.
    pub const SYN: TcpFlags = TcpFlags(0x02);
    /// Reset the connection.
    pub const RST: TcpFlags = TcpFlags(0x04);
    /// Push.
    pub const PSH: TcpFlags = TcpFlags(0x08);
    /// The acknowledgement number is significant.
    pub const ACK: TcpFlags = TcpFlags(0x10);
    /// The urgent pointer is significant.
    pub const URG: TcpFlags = TcpFlags(0x20);
    /// ECN echo.
    pub const ECE: TcpFlags = TcpFlags(0x40);
    /// Congestion window reduced.
    pub const CWR: TcpFlags = TcpFlags(0x80);

    const NAMES: [(TcpFlags, &'static str); 8] = [
        (TcpFlags::FIN, "FIN"),
        (TcpFlags::SYN, "SYN"),
        (TcpFlags::RST, "RST"),
        (TcpFlags::PSH, "PSH"),
        (TcpFlags::ACK, "ACK"),
        (TcpFlags::URG, "URG"),
        (TcpFlags::ECE, "ECE"),
        (TcpFlags::CWR, "CWR"),
    ];

    /// No flag set.
    pub const fn empty() -> TcpFlags {
        TcpFlags(0)
    }

    /// The flags of a flag byte.
    pub const fn from_bits(bits: u8) -> TcpFlags {
        TcpFlags(bits)
    }

    /// The flag byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Sets the flags of `other`.
    pub fn insert(&mut self, other: TcpFlags) {
        self.0 |= other.0;
    }

    /// Clears the flags of `other`.
    pub fn remove(&mut self, other: TcpFlags) {
        self.0 &= !other.0;
    }

    /// FIN is set.
    pub const fn fin(self) -> bool {
        self.contains(TcpFlags::FIN)
    }

    /// SYN is set.
    pub const fn syn(self) -> bool {
        self.contains(TcpFlags::SYN)
    }

    /// RST is set.
    pub const fn rst(self) -> bool {
        self.contains(TcpFlags::RST)
    }

    /// PSH is set.
    pub const fn psh(self) -> bool {
        self.contains(TcpFlags::PSH)
    }

    /// ACK is set.
    pub const fn ack(self) -> bool {
        self.contains(TcpFlags::ACK)
    }

    /// URG is set.
    pub const fn urg(self) -> bool {
        self.contains(TcpFlags::URG)
    }

    /// ECE is set.
    pub const fn ece(self) -> bool {
        self.contains(TcpFlags::ECE)
    }

    /// CWR is set.
    pub const fn cwr(self) -> bool {
        self.contains(TcpFlags::CWR)
    }

    /// A SYN that can open a connection: no ACK, RST or FIN with it (a
    /// listener drops SYN|FIN, and SYN|RST or SYN|ACK open nothing).
    pub const fn is_opening_syn(self) -> bool {
        self.syn() && !self.ack() && !self.rst() && !self.fin()
    }

    /// A SYN-ACK: SYN and ACK, no RST or FIN.
    pub const fn is_synack(self) -> bool {
        self.syn() && self.ack() && !self.rst() && !self.fin()
    }
}

impl BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for TcpFlags {
    fn bitor_assign(&mut self, rhs: TcpFlags) {
        self.0 |= rhs.0;
    }
}

/// Prints the set flags by name, as `SYN|ACK` (or `-` when none is set).
impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, name) in TcpFlags::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One SACK block: the bytes `[left, right)` the receiver holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SackBlock {
    /// The first sequence number of the block.
    pub left: SeqNumber,
    /// The sequence number just past the block.
    pub right: SeqNumber,
}

/// Up to four SACK blocks, kept inline (no allocation per segment).
///
/// With the `serde` feature it serialises as `{ blocks: [SackBlock; 4], len:
/// u8 }` (the slots past `len` are zero unless set), and decoding refuses a
/// `len` above four, so a decoded set is as safe to use as a built one.
#[derive(Clone, Copy, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(try_from = "crate::serde_impls::SackBlocksRepr")
)]
pub struct SackBlocks {
    pub(crate) blocks: [SackBlock; MAX_SACK_BLOCKS],
    pub(crate) len: u8,
}

impl SackBlocks {
    /// No block.
    pub const fn new() -> SackBlocks {
        SackBlocks {
            blocks: [SackBlock {
                left: SeqNumber(0),
                right: SeqNumber(0),
            }; MAX_SACK_BLOCKS],
            len: 0,
        }
    }

    /// The blocks of a slice, refused when there are more than four.
    pub fn from_slice(blocks: &[SackBlock]) -> Result<SackBlocks> {
        let mut out = SackBlocks::new();
        for block in blocks {
            out.push(*block)?;
        }
        Ok(out)
    }

    /// Appends a block, refused when four are already held.
    pub fn push(&mut self, block: SackBlock) -> Result<()> {
        let Some(slot) = self.blocks.get_mut(usize::from(self.len)) else {
            return Err(WireError::TooManySackBlocks(usize::from(self.len) + 1));
        };
        *slot = block;
        self.len += 1;
        Ok(())
    }

    /// The blocks, in the order they appear on the wire.
    pub fn as_slice(&self) -> &[SackBlock] {
        // len never exceeds MAX_SACK_BLOCKS (push checks it).
        &self.blocks[..usize::from(self.len)]
    }

    /// The number of blocks.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether there is no block.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl PartialEq for SackBlocks {
    fn eq(&self, other: &SackBlocks) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for SackBlocks {}

/// Hashes the blocks held, as equality compares them.
impl std::hash::Hash for SackBlocks {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl fmt::Debug for SackBlocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// The Timestamps option (RFC 7323).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Timestamps {
    /// TSval: the sender's timestamp clock.
    pub tsval: u32,
    /// TSecr: the latest TSval the sender has seen from its peer.
    pub tsecr: u32,
}

/// One TCP option as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpOption<'a> {
    /// End of Option List: the options stop here.
    EndOfList,
    /// No-Operation.
    NoOperation,
    /// Maximum Segment Size.
    MaxSegmentSize(u16),
    /// Window Scale: the shift count as sent (the kernel caps it at 14 on
    /// use; this crate reports the wire value).
    WindowScale(u8),
    /// SACK Permitted.
    SackPermitted,
    /// SACK blocks (1–4).
    Sack(SackBlocks),
    /// Timestamps.
    Timestamps(Timestamps),
    /// Any other option, skipped by its length.
    Unknown {
        /// The option kind.
        kind: u8,
        /// The bytes after the kind and length bytes.
        data: &'a [u8],
    },
}

/// The options of a header, one at a time, strictly checked.
///
/// Yields `Err` for the first malformed option (a missing or impossible
/// length byte, an option running past the header, a known option of the
/// wrong length) and then stops; stops after End of Option List.
#[derive(Debug, Clone)]
pub struct OptionsIter<'a> {
    rest: &'a [u8],
}

impl<'a> OptionsIter<'a> {
    /// Iterates over raw option bytes (the header after its first 20 bytes).
    pub fn new(options: &'a [u8]) -> OptionsIter<'a> {
        OptionsIter { rest: options }
    }
}

/// Splits one kind/length/body option off `data`, which starts with the
/// kind byte, or tells how its length is malformed.
fn split_option(data: &[u8]) -> std::result::Result<(u8, &[u8], &[u8]), WireError> {
    let (kind, len) = match data {
        [kind, len, ..] => (*kind, *len),
        [kind] => {
            return Err(WireError::BadOption {
                kind: *kind,
                len: 0,
            })
        }
        [] => return Err(WireError::BadOption { kind: 0, len: 0 }),
    };
    let size = usize::from(len);
    if size < 2 || size > data.len() {
        return Err(WireError::BadOption { kind, len });
    }
    Ok((kind, &data[2..size], &data[size..]))
}

fn be32(b: &[u8; 4]) -> u32 {
    u32::from_be_bytes(*b)
}

/// Decodes a known option's body, `None` when its length is wrong for its
/// kind (the caller decides whether that is an error).
fn decode_option(kind: u8, body: &[u8]) -> Option<TcpOption<'_>> {
    Some(match kind {
        kind::MSS => match body {
            [a, b] => TcpOption::MaxSegmentSize(u16::from_be_bytes([*a, *b])),
            _ => return None,
        },
        kind::WINDOW_SCALE => match body {
            [shift] => TcpOption::WindowScale(*shift),
            _ => return None,
        },
        kind::SACK_PERMITTED => match body {
            [] => TcpOption::SackPermitted,
            _ => return None,
        },
        kind::TIMESTAMPS => match body {
            [a, b, c, d, e, f, g, h] => TcpOption::Timestamps(Timestamps {
                tsval: be32(&[*a, *b, *c, *d]),
                tsecr: be32(&[*e, *f, *g, *h]),
            }),
            _ => return None,
        },
        kind::SACK => {
            if body.is_empty() || !body.len().is_multiple_of(8) || body.len() / 8 > MAX_SACK_BLOCKS
            {
                return None;
            }
            let mut blocks = SackBlocks::new();
            for chunk in body.chunks_exact(8) {
                let [a, b, c, d, e, f, g, h] = chunk else {
                    return None;
                };
                blocks
                    .push(SackBlock {
                        left: SeqNumber(be32(&[*a, *b, *c, *d])),
                        right: SeqNumber(be32(&[*e, *f, *g, *h])),
                    })
                    .ok()?;
            }
            TcpOption::Sack(blocks)
        }
        kind => TcpOption::Unknown { kind, data: body },
    })
}

impl<'a> Iterator for OptionsIter<'a> {
    type Item = Result<TcpOption<'a>>;

    fn next(&mut self) -> Option<Result<TcpOption<'a>>> {
        let (&first, after_kind) = self.rest.split_first()?;
        match first {
            kind::EOL => {
                self.rest = &[];
                Some(Ok(TcpOption::EndOfList))
            }
            kind::NOP => {
                self.rest = after_kind;
                Some(Ok(TcpOption::NoOperation))
            }
            _ => {
                let data = self.rest;
                // Whatever happens, this iterator stops after an error.
                self.rest = &[];
                let (kind, body, rest) = match split_option(data) {
                    Ok(parts) => parts,
                    Err(e) => return Some(Err(e)),
                };
                match decode_option(kind, body) {
                    Some(option) => {
                        self.rest = rest;
                        Some(Ok(option))
                    }
                    None => Some(Err(WireError::BadOption {
                        kind,
                        // body.len() + 2 came from a length byte.
                        len: (body.len() + 2) as u8,
                    })),
                }
            }
        }
    }
}

/// How strictly options are parsed; see the module notes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OptionsMode {
    /// Every malformed option is an error ([`WireError::BadOption`]).
    #[default]
    Strict,
    /// As Linux's `tcp_parse_options()`: parsing stops silently at a
    /// malformed length (0, 1, or past the header), a known option of the
    /// wrong length is ignored, and the segment is never refused for its
    /// options. Whether an option is *used* (MSS only on a SYN, …) is left to
    /// the caller, which knows the connection's state.
    Linux,
}

/// The options tandem cares about, decoded; duplicates: the last one wins
/// (as in the kernel). Unknown options are not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OptionSet {
    /// Maximum Segment Size.
    pub mss: Option<u16>,
    /// Window Scale shift, as sent.
    pub window_scale: Option<u8>,
    /// SACK Permitted.
    pub sack_permitted: bool,
    /// SACK blocks (empty when there is no SACK option).
    pub sack_blocks: SackBlocks,
    /// Timestamps.
    pub timestamps: Option<Timestamps>,
}

impl OptionSet {
    /// Parses raw option bytes strictly ([`OptionsMode::Strict`]).
    pub fn parse(options: &[u8]) -> Result<OptionSet> {
        OptionSet::parse_mode(options, OptionsMode::Strict)
    }

    /// Parses raw option bytes as Linux does ([`OptionsMode::Linux`]); never
    /// fails.
    pub fn parse_linux(options: &[u8]) -> OptionSet {
        let mut set = OptionSet::default();
        let mut rest = options;
        while let Some((&first, after_kind)) = rest.split_first() {
            match first {
                kind::EOL => break,
                kind::NOP => rest = after_kind,
                _ => {
                    // tcp_parse_options(): "silly options" and partial
                    // options end the parse; the segment is still accepted.
                    let Ok((kind, body, after)) = split_option(rest) else {
                        break;
                    };
                    if let Some(option) = decode_option(kind, body) {
                        set.apply(option);
                    }
                    rest = after;
                }
            }
        }
        set
    }

    /// Parses raw option bytes in the given mode.
    pub fn parse_mode(options: &[u8], mode: OptionsMode) -> Result<OptionSet> {
        match mode {
            OptionsMode::Linux => Ok(OptionSet::parse_linux(options)),
            OptionsMode::Strict => {
                let mut set = OptionSet::default();
                for option in OptionsIter::new(options) {
                    set.apply(option?);
                }
                Ok(set)
            }
        }
    }

    fn apply(&mut self, option: TcpOption<'_>) {
        match option {
            TcpOption::MaxSegmentSize(mss) => self.mss = Some(mss),
            TcpOption::WindowScale(shift) => self.window_scale = Some(shift),
            TcpOption::SackPermitted => self.sack_permitted = true,
            TcpOption::Sack(blocks) => self.sack_blocks = blocks,
            TcpOption::Timestamps(ts) => self.timestamps = Some(ts),
            TcpOption::EndOfList | TcpOption::NoOperation | TcpOption::Unknown { .. } => {}
        }
    }

    /// The number of option bytes [`emit`](Self::emit) writes: a multiple of
    /// 4, possibly more than the 40 a header can hold (emit then refuses).
    pub fn emit_len(&self) -> usize {
        let mut len = 0;
        if self.mss.is_some() {
            len += 4;
        }
        match (self.sack_permitted, self.timestamps.is_some()) {
            (_, true) => len += 12,
            (true, false) => len += 4,
            (false, false) => {}
        }
        if self.window_scale.is_some() {
            len += 4;
        }
        if !self.sack_blocks.is_empty() {
            len += 4 + 8 * self.sack_blocks.len();
        }
        len
    }

    /// Writes the options into `buf` (exactly [`emit_len`](Self::emit_len)
    /// bytes, at most 40) in the layout Linux uses, every option aligned so
    /// that no padding is needed: MSS; SACK-permitted and timestamps
    /// (`SACKOK TS`, `NOP NOP TS` or `NOP NOP SACKOK`); `NOP WS`;
    /// `NOP NOP SACK`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        let len = self.emit_len();
        if len > MAX_OPTIONS_LEN {
            return Err(WireError::OptionsTooLong(len));
        }
        if buf.len() < len {
            return Err(WireError::Truncated {
                needed: len,
                got: buf.len(),
            });
        }
        let mut out = Writer { buf, pos: 0 };
        if let Some(mss) = self.mss {
            out.put(&[kind::MSS, 4]);
            out.put(&mss.to_be_bytes());
        }
        match (self.sack_permitted, self.timestamps) {
            (sack_ok, Some(ts)) => {
                if sack_ok {
                    out.put(&[kind::SACK_PERMITTED, 2]);
                } else {
                    out.put(&[kind::NOP, kind::NOP]);
                }
                out.put(&[kind::TIMESTAMPS, 10]);
                out.put(&ts.tsval.to_be_bytes());
                out.put(&ts.tsecr.to_be_bytes());
            }
            (true, None) => out.put(&[kind::NOP, kind::NOP, kind::SACK_PERMITTED, 2]),
            (false, None) => {}
        }
        if let Some(shift) = self.window_scale {
            out.put(&[kind::NOP, kind::WINDOW_SCALE, 3, shift]);
        }
        if !self.sack_blocks.is_empty() {
            // 2 + 8 × (at most 4) fits a byte.
            let size = (2 + 8 * self.sack_blocks.len()) as u8;
            out.put(&[kind::NOP, kind::NOP, kind::SACK, size]);
            for block in self.sack_blocks.as_slice() {
                out.put(&block.left.0.to_be_bytes());
                out.put(&block.right.0.to_be_bytes());
            }
        }
        // Every group above is a multiple of 4 bytes; should a future one
        // not be, pad with End of Option List (zero bytes) to the word.
        while !out.pos.is_multiple_of(4) {
            out.put(&[kind::EOL]);
        }
        Ok(())
    }
}

/// A cursor over a buffer already checked to be long enough.
struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }
}

/// Which checks [`Repr::parse_with`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParseChecks {
    /// Verify the TCP checksum. Turn off only for packets whose checksum the
    /// kernel has verified or will fill in (NFQUEUE's
    /// `CHECKSUM_UNNECESSARY` / `CHECKSUM_PARTIAL`, e.g. the server's own
    /// SYN-ACK captured on OUTPUT).
    pub verify_checksum: bool,
    /// How options are parsed.
    pub options: OptionsMode,
}

impl Default for ParseChecks {
    /// Checksum verified, options strict.
    fn default() -> ParseChecks {
        ParseChecks {
            verify_checksum: true,
            options: OptionsMode::Strict,
        }
    }
}

/// A view of a TCP segment in a buffer holding exactly the segment (the IP
/// payload).
///
/// Built with [`new_checked`](Self::new_checked), every accessor is in
/// bounds: the buffer holds 20 bytes and the data offset is between 20 and
/// the segment's length. Built with [`new_unchecked`](Self::new_unchecked),
/// accessors panic on a buffer shorter than what they read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

fn be16(buf: &[u8], range: std::ops::Range<usize>) -> u16 {
    let b = &buf[range];
    u16::from_be_bytes([b[0], b[1]])
}

fn be32_at(buf: &[u8], range: std::ops::Range<usize>) -> u32 {
    let b = &buf[range];
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it (for emitting into it).
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a 20-byte header and that the data
    /// offset is at least 5 words and no longer than the segment. Options
    /// are checked only when parsed.
    pub fn check_len(&self) -> Result<()> {
        let got = self.buffer.as_ref().len();
        if got < HEADER_LEN {
            return Err(WireError::Truncated {
                needed: HEADER_LEN,
                got,
            });
        }
        let len = self.header_len();
        if len < HEADER_LEN || len > got {
            return Err(WireError::BadHeaderLength {
                len,
                min: HEADER_LEN,
                max: got.min(MAX_HEADER_LEN),
            });
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The sequence number.
    pub fn seq_number(&self) -> SeqNumber {
        SeqNumber(be32_at(self.buffer.as_ref(), field::SEQ))
    }

    /// The acknowledgement number (meaningful only with ACK).
    pub fn ack_number(&self) -> SeqNumber {
        SeqNumber(be32_at(self.buffer.as_ref(), field::ACK))
    }

    /// The header length in bytes (data offset × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::OFF_RSV] >> 4) * 4
    }

    /// The four bits between the data offset and the flags (reserved, and
    /// AE for accurate ECN), as the low bits of the result.
    pub fn reserved_bits(&self) -> u8 {
        self.buffer.as_ref()[field::OFF_RSV] & 0x0f
    }

    /// The control flags.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buffer.as_ref()[field::FLAGS])
    }

    /// The window, unscaled.
    pub fn window_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::WINDOW)
    }

    /// The checksum as stored.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The urgent pointer.
    pub fn urgent_at(&self) -> u16 {
        be16(self.buffer.as_ref(), field::URGENT)
    }

    /// The raw option bytes.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The options, one at a time, strictly checked.
    pub fn options_iter(&self) -> OptionsIter<'_> {
        OptionsIter::new(self.options())
    }

    /// The payload: everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// The sequence space the segment occupies: payload, plus one for SYN,
    /// plus one for FIN.
    pub fn segment_len(&self) -> usize {
        let flags = self.flags();
        self.payload().len() + usize::from(flags.syn()) + usize::from(flags.fin())
    }

    fn sum_without_checksum(&self, ph: &PseudoHeader) -> u64 {
        let buf = self.buffer.as_ref();
        ph.sum(IpProtocol::TCP, buf.len())
            + checksum::sum(&buf[..field::CHECKSUM.start])
            + checksum::sum(&buf[field::CHECKSUM.end..])
    }

    /// Whether the checksum verifies over the whole buffer and the
    /// pseudo-header `ph`.
    pub fn verify_checksum(&self, ph: &PseudoHeader) -> bool {
        let buf = self.buffer.as_ref();
        checksum::verifies(ph.sum(IpProtocol::TCP, buf.len()) + checksum::sum(buf))
    }

    /// The checksum this segment should carry under `ph`.
    pub fn expected_checksum(&self, ph: &PseudoHeader) -> u16 {
        checksum::finish(self.sum_without_checksum(ph))
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload, borrowed for as long as the underlying buffer.
    pub fn into_payload(self) -> &'a [u8] {
        let start = self.header_len();
        &self.buffer.as_ref()[start..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, port: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&port.to_be_bytes());
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, port: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&port.to_be_bytes());
    }

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, seq: SeqNumber) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&seq.0.to_be_bytes());
    }

    /// Sets the acknowledgement number.
    pub fn set_ack_number(&mut self, ack: SeqNumber) {
        self.buffer.as_mut()[field::ACK].copy_from_slice(&ack.0.to_be_bytes());
    }

    /// Sets the header length in bytes (stored as `len / 4` in 4 bits) and
    /// clears the reserved bits.
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::OFF_RSV] = ((len / 4) as u8 & 0x0f) << 4;
    }

    /// Sets the control flags.
    pub fn set_flags(&mut self, flags: TcpFlags) {
        self.buffer.as_mut()[field::FLAGS] = flags.0;
    }

    /// Sets the window.
    pub fn set_window_len(&mut self, window: u16) {
        self.buffer.as_mut()[field::WINDOW].copy_from_slice(&window.to_be_bytes());
    }

    /// Sets the checksum as given.
    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the urgent pointer.
    pub fn set_urgent_at(&mut self, urgent: u16) {
        self.buffer.as_mut()[field::URGENT].copy_from_slice(&urgent.to_be_bytes());
    }

    /// The raw option bytes, mutably.
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// The payload, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }

    /// Computes and stores the checksum over the whole buffer and `ph`.
    pub fn fill_checksum(&mut self, ph: &PseudoHeader) {
        let value = self.expected_checksum(ph);
        self.set_checksum(value);
    }
}

/// A TCP segment, decoded; the payload borrows from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr<'a> {
    /// The source port.
    pub src_port: u16,
    /// The destination port.
    pub dst_port: u16,
    /// The sequence number.
    pub seq_number: SeqNumber,
    /// The acknowledgement number, as on the wire (meaningful only with
    /// ACK; kept regardless so that a segment round-trips exactly).
    pub ack_number: SeqNumber,
    /// The control flags (any combination, even one TCP forbids: shadow TCP
    /// must see what the client sent to reject it as the kernel does).
    pub flags: TcpFlags,
    /// The window, unscaled.
    pub window_len: u16,
    /// The urgent pointer.
    pub urgent_at: u16,
    /// The decoded options.
    pub options: OptionSet,
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> Repr<'a> {
    /// Parses a segment with the default checks: the checksum over `ph`
    /// verified, options strict.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Packet<&'a T>,
        ph: &PseudoHeader,
    ) -> Result<Repr<'a>> {
        Repr::parse_with(packet, ph, ParseChecks::default())
    }

    /// Parses a segment with the checks `checks` asks for. The lengths are
    /// checked again, so an unchecked view is safe too; the reserved bits
    /// are not represented.
    pub fn parse_with<T: AsRef<[u8]> + ?Sized>(
        packet: &Packet<&'a T>,
        ph: &PseudoHeader,
        checks: ParseChecks,
    ) -> Result<Repr<'a>> {
        packet.check_len()?;
        if checks.verify_checksum && !packet.verify_checksum(ph) {
            return Err(WireError::BadChecksum {
                layer: Layer::Tcp,
                found: packet.checksum(),
                expected: packet.expected_checksum(ph),
            });
        }
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            urgent_at: packet.urgent_at(),
            options: OptionSet::parse_mode(packet.options(), checks.options)?,
            payload: packet.into_payload(),
        })
    }

    /// The header length [`emit`](Self::emit) writes (may exceed 60 when the
    /// options do not fit; emit then refuses).
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options.emit_len()
    }

    /// The segment's length: header plus payload.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// The sequence space the segment occupies: payload, plus one for SYN,
    /// plus one for FIN.
    pub fn segment_len(&self) -> usize {
        self.payload.len() + usize::from(self.flags.syn()) + usize::from(self.flags.fin())
    }

    /// The sequence number just past the segment (wrapping).
    pub fn seq_end(&self) -> SeqNumber {
        self.seq_number + self.segment_len()
    }

    /// Writes the segment — header, options, payload and the checksum over
    /// `ph` — into `packet`, whose buffer must be exactly
    /// [`buffer_len`](Self::buffer_len) bytes: the checksum covers the whole
    /// buffer, so a longer one is refused rather than silently mis-summed.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        ph: &PseudoHeader,
    ) -> Result<()> {
        let options_len = self.options.emit_len();
        if options_len > MAX_OPTIONS_LEN {
            return Err(WireError::OptionsTooLong(options_len));
        }
        let header_len = HEADER_LEN + options_len;
        let needed = header_len + self.payload.len();
        let got = packet.buffer.as_ref().len();
        if got < needed {
            return Err(WireError::Truncated { needed, got });
        }
        if got > needed {
            return Err(WireError::BufferTooLong { needed, got });
        }
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.set_header_len(header_len);
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_checksum(0);
        packet.set_urgent_at(self.urgent_at);
        self.options.emit(packet.options_mut())?;
        packet.payload_mut().copy_from_slice(self.payload);
        packet.fill_checksum(ph);
        Ok(())
    }
}
