//! Per-connection state and the per-segment logic, mirroring the kernel's
//! receive path: `tcp_check_req()` for a pending handshake,
//! `tcp_validate_incoming()` + `tcp_ack()` + `tcp_data_queue()` for an
//! established connection, `tcp_timewait_state_process()` for TIME_WAIT.

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::hash::Fnv64;
use super::output::Output;
use super::reasm::Reassembly;
use super::segment::{SackBlocks, Segment, SeqNumber, TcpFlags, Timestamps};
use super::seq::{after, before, seq_at, Millis};
use super::{DropReason, Event, ShadowConfig, ShadowState};

/// The kernel's `TCP_PAWS_24DAYS`, in seconds: a `ts_recent` older than this
/// no longer rejects anything (the peer's clock may have wrapped).
const PAWS_24DAYS_S: u64 = 60 * 60 * 24 * 24;
/// The kernel's `TCP_PAWS_MSL`, in seconds: a RST failing PAWS is still
/// taken by a request or TIME_WAIT socket once `ts_recent` is this old.
const PAWS_MSL_S: u64 = 60;
/// The kernel's `TCP_MSS_DEFAULT`: the MSS assumed for IPv4 without the option.
const MSS_DEFAULT_V4: u16 = 536;
/// `IPV6_MIN_MTU` − 40 − 20: the MSS assumed for IPv6 without the option.
const MSS_DEFAULT_V6: u16 = 1220;
/// The smallest MSS an image can carry (`SocketImage::validate`).
const MSS_MIN: u16 = 64;
/// RFC 7323's largest shift; Linux clamps larger ones to it.
const MAX_WSCALE: u8 = 14;

/// The most recent timestamp accepted from the client, and when (log time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TsRecent {
    pub(crate) val: u32,
    pub(crate) stamp: Millis,
}

impl TsRecent {
    fn hash_into(this: &Option<TsRecent>, h: &mut Fnv64) {
        match this {
            Some(t) => h.bool(true).u32(t.val).u64(t.stamp.0),
            None => h.bool(false),
        };
    }
}

/// Seconds of log time between two instants, as the kernel's
/// `ktime_get_seconds()` differences go.
fn seconds_between(earlier: Millis, now: Millis) -> u64 {
    (now.0 / 1000).saturating_sub(earlier.0 / 1000)
}

/// The kernel's `tcp_paws_check()`: may a segment with `tsval` pass, given
/// `ts_recent` and a tolerance of `win` ticks?
fn paws_check(recent: Option<TsRecent>, tsval: u32, now: Millis, win: i32) -> bool {
    let Some(r) = recent else { return true };
    (r.val.wrapping_sub(tsval) as i32) <= win
        || seconds_between(r.stamp, now) >= PAWS_24DAYS_S
        // "Some OSes send SYN and SYNACK with tsval=0": 0 never rejects.
        || r.val == 0
}

/// The kernel's `tcp_paws_reject()` (request and TIME_WAIT sockets): strict,
/// and a RST passes once `ts_recent` is older than `TCP_PAWS_MSL`.
fn paws_reject(recent: Option<TsRecent>, tsval: u32, now: Millis, rst: bool) -> bool {
    if paws_check(recent, tsval, now, 0) {
        return false;
    }
    !(rst && recent.is_some_and(|r| seconds_between(r.stamp, now) >= PAWS_MSL_S))
}

/// One side's handshake segment: the SYN or the SYN-ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Hello {
    pub(crate) isn: SeqNumber,
    pub(crate) window: u16,
    pub(crate) mss: Option<u16>,
    pub(crate) wscale: Option<u8>,
    pub(crate) sack_permitted: bool,
    pub(crate) ts: Option<Timestamps>,
    pub(crate) at: Millis,
}

impl Hello {
    pub(crate) fn of(seg: &Segment<'_>, now: Millis) -> Hello {
        Hello {
            isn: seg.seq,
            window: seg.window,
            mss: seg.options.mss.filter(|&m| m != 0),
            wscale: seg.options.window_scale,
            sack_permitted: seg.options.sack_permitted,
            ts: seg.options.timestamps,
            at: now,
        }
    }

    fn hash_into(&self, h: &mut Fnv64) {
        h.u32(self.isn.0).u32(u32::from(self.window));
        h.u32(self.mss.map_or(u32::MAX, u32::from));
        h.u32(self.wscale.map_or(u32::MAX, u32::from));
        h.bool(self.sack_permitted);
        match self.ts {
            Some(t) => h.bool(true).u32(t.tsval).u32(t.tsecr),
            None => h.bool(false),
        };
        h.u64(self.at.0);
    }
}

/// A handshake in progress: the SYN seen, the SYN-ACK maybe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct HalfOpen {
    pub(crate) syn: Hello,
    pub(crate) synack: Option<Hello>,
    /// The request socket's `ts_recent` (the SYN's TSval, then later ones).
    pub(crate) ts_recent: Option<TsRecent>,
}

impl HalfOpen {
    pub(crate) fn new(seg: &Segment<'_>, now: Millis) -> HalfOpen {
        HalfOpen {
            syn: Hello::of(seg, now),
            synack: None,
            ts_recent: seg.options.timestamps.map(|t| TsRecent {
                val: t.tsval,
                stamp: now,
            }),
        }
    }

    fn ts_ok(&self) -> bool {
        self.syn.ts.is_some() && self.synack.is_some_and(|s| s.ts.is_some())
    }

    /// The receive window offered in the SYN-ACK. The SYN-ACK's field is
    /// never scaled: it is exact below 65535, and a lower bound at 65535, in
    /// which case the clamp W (an upper bound) is used so we are never
    /// stricter than the kernel on data.
    fn synack_window(&self, cfg: &ShadowConfig) -> u32 {
        match self.synack {
            Some(s) if s.window < u16::MAX => u32::from(s.window),
            _ => cfg.window_clamp,
        }
    }

    pub(crate) fn hash_into(&self, h: &mut Fnv64) {
        self.syn.hash_into(h);
        match &self.synack {
            Some(s) => {
                h.bool(true);
                s.hash_into(h);
            }
            None => {
                h.bool(false);
            }
        }
        TsRecent::hash_into(&self.ts_recent, h);
    }

    pub(crate) fn state(&self) -> ShadowState {
        if self.synack.is_some() {
            ShadowState::SynAckSeen
        } else {
            ShadowState::SynSeen
        }
    }
}

/// What a segment did to the entry holding it.
pub(crate) enum Fate {
    Keep,
    Remove,
    Establish(Box<Open>),
    TimeWait(Box<TimeWait>),
    Reopen(Box<HalfOpen>),
}

/// The kernel's `tcp_in_window()` for request sockets.
fn in_window(seq: SeqNumber, end_seq: SeqNumber, s_win: SeqNumber, e_win: SeqNumber) -> bool {
    if seq == s_win {
        return true;
    }
    if after(end_seq, s_win) && before(seq, e_win) {
        return true;
    }
    seq == e_win && seq == end_seq
}

impl HalfOpen {
    /// A client segment on a pending handshake: `tcp_check_req()`.
    pub(crate) fn on_client(
        &mut self,
        cfg: &ShadowConfig,
        now: Millis,
        seg: &Segment<'_>,
        family_v6: bool,
        ev: &mut Vec<Event>,
    ) -> Fate {
        let flags = seg.flags;
        let Some(synack) = self.synack else {
            // No SYN-ACK logged: the kernel has not answered, so it holds no
            // request socket. A new SYN replaces the old one; anything else
            // cannot be part of this handshake.
            if flags.is_opening_syn() {
                if seg.seq != self.syn.isn {
                    *self = HalfOpen::new(seg, now);
                }
                return Fate::Keep;
            }
            ev.push(Event::Dropped(DropReason::NoSynAck));
            return Fate::Keep;
        };
        let ts = if self.ts_ok() {
            seg.options.timestamps
        } else {
            None
        };
        let rejected = ts.is_some_and(|t| paws_reject(self.ts_recent, t.tsval, now, flags.rst()));
        // A retransmitted SYN: the kernel re-sends its SYN-ACK, nothing changes.
        // (The kernel compares only the SYN, RST and ACK bits: an ECN-setup
        // SYN with ECE|CWR is a retransmission too.)
        let syn_rst_ack = TcpFlags::from_bits(
            flags.bits() & (TcpFlags::SYN | TcpFlags::RST | TcpFlags::ACK).bits(),
        );
        if syn_rst_ack == TcpFlags::SYN && seg.seq == self.syn.isn && !rejected {
            return Fate::Keep;
        }
        // An ACK of anything but our SYN: the listener answers with a RST
        // and the request stays.
        if flags.ack() && seg.ack != synack.isn + 1 {
            ev.push(Event::Dropped(DropReason::BadAck));
            return Fate::Keep;
        }
        let rcv_nxt = self.syn.isn + 1;
        let window = self.synack_window(cfg);
        if rejected {
            ev.push(Event::Dropped(DropReason::Paws));
            return Fate::Keep;
        }
        if !in_window(seg.seq, seg.end_seq(), rcv_nxt, rcv_nxt + window as usize) {
            ev.push(Event::Dropped(DropReason::OutOfWindow));
            return Fate::Keep;
        }
        if let Some(t) = ts {
            if !after(seg.seq, rcv_nxt) {
                self.ts_recent = Some(TsRecent {
                    val: t.tsval,
                    stamp: now,
                });
            }
        }
        // A SYN bit at the original ISN is just the old SYN again ("truncate
        // SYN"); any other in-window RST or SYN kills the request.
        let syn = flags.syn() && seg.seq != self.syn.isn;
        if flags.rst() || syn {
            ev.push(Event::HandshakeAborted);
            return Fate::Remove;
        }
        if !flags.ack() {
            ev.push(Event::Dropped(DropReason::NoAck));
            return Fate::Keep;
        }
        let mut open = Box::new(Open::from_handshake(self, &synack, seg, family_v6));
        ev.push(Event::Opened);
        if flags.syn() {
            // A SYN|ACK from the client at its ISN: the handshake completes;
            // its contents are not worth the corner cases.
            return Fate::Establish(open);
        }
        // The new socket then processes the same segment (tcp_child_process).
        match open.on_client(cfg, now, seg, ev) {
            Fate::Keep => Fate::Establish(open),
            other => other,
        }
    }
}

/// An established connection (or one closing: FIN_WAIT, CLOSE_WAIT, …).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Open {
    pub(crate) client_isn: SeqNumber,
    pub(crate) server_isn: SeqNumber,
    /// The MSS clamp: the client's MSS option (the kernel's `mss_clamp`).
    pub(crate) mss: u16,
    /// Shift applied to the client's windows (from its SYN).
    pub(crate) snd_wscale: u8,
    /// Shift applied to our windows (from the SYN-ACK).
    pub(crate) rcv_wscale: u8,
    pub(crate) wscale_ok: bool,
    pub(crate) sack_ok: bool,
    pub(crate) ts_ok: bool,
    pub(crate) rx: Reassembly,
    pub(crate) out: Output,
    pub(crate) snd_wl1: SeqNumber,
    pub(crate) snd_wnd: u32,
    pub(crate) max_window: u32,
    pub(crate) ts_recent: Option<TsRecent>,
    /// A lower bound of the server's timestamp clock: (value, log time).
    /// From the SYN-ACK's TSval, then from every TSecr the client echoes.
    pub(crate) ts_clock: Option<(u32, Millis)>,
    /// The client's latest SACK blocks.
    pub(crate) sack: SackBlocks,
    /// Our FIN was queued before the client's FIN arrived (we will be the
    /// one in TIME_WAIT).
    pub(crate) closed_first: bool,
    /// In-order client bytes received (rcv_nxt is past them: the kernel has
    /// acknowledged them) but held back by the input throttle, in order.
    pub(crate) pending: VecDeque<u8>,
    /// The client's FIN came in order while input was held back: the
    /// application hears of it after the held bytes.
    pub(crate) pending_fin: bool,
}

impl Open {
    fn from_handshake(h: &HalfOpen, synack: &Hello, ack: &Segment<'_>, family_v6: bool) -> Open {
        let wscale_ok = h.syn.wscale.is_some() && synack.wscale.is_some();
        let snd_wscale = if wscale_ok {
            h.syn.wscale.unwrap_or(0).min(MAX_WSCALE)
        } else {
            0
        };
        let rcv_wscale = if wscale_ok {
            synack.wscale.unwrap_or(0).min(MAX_WSCALE)
        } else {
            0
        };
        let default_mss = if family_v6 {
            MSS_DEFAULT_V6
        } else {
            MSS_DEFAULT_V4
        };
        let ts_ok = h.ts_ok();
        // tcp_rcv_state_process(SYN_RECV): snd_wnd from the completing ACK,
        // scaled; snd_wl1 its sequence number; max_window the same.
        let nwin = u32::from(ack.window) << snd_wscale;
        Open {
            client_isn: h.syn.isn,
            server_isn: synack.isn,
            mss: h.syn.mss.unwrap_or(default_mss).max(MSS_MIN),
            snd_wscale,
            rcv_wscale,
            wscale_ok,
            sack_ok: h.syn.sack_permitted && synack.sack_permitted,
            ts_ok,
            rx: Reassembly::new(),
            out: Output::new(),
            snd_wl1: ack.seq,
            snd_wnd: nwin,
            max_window: nwin,
            ts_recent: if ts_ok { h.ts_recent } else { None },
            ts_clock: synack.ts.filter(|_| ts_ok).map(|t| (t.tsval, synack.at)),
            sack: SackBlocks::default(),
            closed_first: false,
            pending: VecDeque::new(),
            pending_fin: false,
        }
    }

    /// Whether the input throttle is on: more unacknowledged output than
    /// the limit (decided from logged ACKs only).
    pub(crate) fn throttled(&self, cfg: &ShadowConfig) -> bool {
        self.out.unacked().len() as u64 > cfg.output_limit
    }

    /// Whether input (bytes or the FIN) is being held back.
    pub(crate) fn holding(&self) -> bool {
        !self.pending.is_empty() || self.pending_fin
    }

    /// Client bytes handed to the application so far.
    pub(crate) fn delivered(&self) -> u64 {
        self.rx.next().saturating_sub(self.pending.len() as u64)
    }

    /// In-order input `bytes` (and the client's FIN after them, if `fin`):
    /// delivered now, or held back behind what is already held.
    fn receive(&mut self, cfg: &ShadowConfig, bytes: Vec<u8>, fin: bool, ev: &mut Vec<Event>) {
        if self.holding() || self.throttled(cfg) {
            self.pending.extend(bytes);
            self.pending_fin |= fin;
            return;
        }
        if !bytes.is_empty() {
            ev.push(Event::Delivered(bytes));
        }
        if fin {
            ev.push(Event::PeerClosed);
        }
    }

    /// Delivers what the throttle held, once the unacknowledged output is
    /// back within the limit.
    pub(crate) fn release(&mut self, cfg: &ShadowConfig, ev: &mut Vec<Event>) {
        if !self.holding() || self.throttled(cfg) {
            return;
        }
        // Taking the buffer gives its memory back.
        let bytes: Vec<u8> = std::mem::take(&mut self.pending).into();
        if !bytes.is_empty() {
            ev.push(Event::Delivered(bytes));
        }
        if std::mem::take(&mut self.pending_fin) {
            ev.push(Event::PeerClosed);
        }
    }

    /// The next sequence number expected from the client.
    pub(crate) fn rcv_nxt(&self) -> SeqNumber {
        seq_at(self.client_isn + 1, self.rx.consumed())
    }

    /// The oldest unacknowledged sequence number of ours.
    pub(crate) fn snd_una(&self) -> SeqNumber {
        seq_at(self.server_isn + 1, self.out.seq_acked())
    }

    /// After the last byte (and FIN) the application queued.
    pub(crate) fn write_seq(&self) -> SeqNumber {
        seq_at(self.server_isn + 1, self.out.seq_used())
    }

    pub(crate) fn state(&self) -> ShadowState {
        let peer = self.rx.fin_done();
        match (self.out.closed(), self.out.fin_acked(), peer) {
            (false, _, false) => ShadowState::Established,
            (false, _, true) => ShadowState::CloseWait,
            (true, false, false) => ShadowState::FinWait1,
            (true, true, false) => ShadowState::FinWait2,
            (true, false, true) if self.closed_first => ShadowState::Closing,
            (true, false, true) => ShadowState::LastAck,
            (true, true, true) => ShadowState::TimeWait,
        }
    }

    /// The server's timestamp clock at `now`, by the best lower bound known.
    pub(crate) fn ts_clock_at(&self, now: Millis) -> Option<u32> {
        self.ts_clock
            .map(|(val, at)| val.wrapping_add(now.since(at) as u32))
    }

    /// The highest right edge of the out-of-order data we hold, as a
    /// sequence number (our own SACK blocks' highest edge).
    fn max_sack_edge(&self) -> Option<SeqNumber> {
        self.rx
            .held_end()
            .map(|end| seq_at(self.client_isn + 1, end))
    }

    /// A client segment on an established (or closing) connection.
    pub(crate) fn on_client(
        &mut self,
        cfg: &ShadowConfig,
        now: Millis,
        seg: &Segment<'_>,
        ev: &mut Vec<Event>,
    ) -> Fate {
        let flags = seg.flags;
        let ts = if self.ts_ok {
            seg.options.timestamps
        } else {
            None
        };
        // 1. PAWS (tcp_validate_incoming). A RST is taken even if it fails.
        // The kernel's exception for a "disordered" pure duplicate ACK lets
        // through a segment that changes nothing, so dropping it is the same.
        if let Some(t) = ts {
            if !flags.rst() && !paws_check(self.ts_recent, t.tsval, now, 1) {
                ev.push(Event::Dropped(DropReason::Paws));
                return Fate::Keep;
            }
        }
        // 2. The window (tcp_sequence). Our left edge is rcv_nxt (the kernel
        // uses rcv_wup ≤ rcv_nxt, set when it last sent an ACK, which is not
        // in the log): a segment wholly before rcv_nxt is a duplicate either
        // way; only its ACK field might be lost, which a later ACK repeats.
        // Our right edge rcv_nxt + W is at or past the kernel's (its window
        // never exceeds the clamp W and never shrinks), so we never drop
        // in-window data.
        let rcv_nxt = self.rcv_nxt();
        if before(seg.end_seq(), rcv_nxt) || after(seg.seq, rcv_nxt + cfg.window_clamp as usize) {
            // tcp_reset_check(): after the client's FIN, a RST at rcv_nxt − 1
            // (outside the window, since the FIN was acked) still resets.
            if flags.rst() && self.rx.fin_done() && seg.seq == rcv_nxt - 1 {
                ev.push(Event::Reset);
                return Fate::Remove;
            }
            ev.push(Event::Dropped(DropReason::OutOfWindow));
            return Fate::Keep;
        }
        // 3. RST, RFC 5961 §3.2 as Linux does it: exactly rcv_nxt, or our
        // highest SACK edge; any other in-window RST gets a challenge ACK.
        if flags.rst() {
            let exact =
                seg.seq == rcv_nxt || (self.sack_ok && self.max_sack_edge() == Some(seg.seq));
            if exact {
                ev.push(Event::Reset);
                return Fate::Remove;
            }
            ev.push(Event::Dropped(DropReason::RstNotExact));
            return Fate::Keep;
        }
        // 4. A SYN on an established connection: challenge ACK (RFC 5961 §4).
        if flags.syn() {
            ev.push(Event::Dropped(DropReason::SynOnEstablished));
            return Fate::Keep;
        }
        // 5. tcp_ack().
        if !flags.ack() {
            ev.push(Event::Dropped(DropReason::NoAck));
            return Fate::Keep;
        }
        let snd_una = self.snd_una();
        // The kernel rejects an ACK beyond snd_nxt; we bound it by write_seq
        // (snd_nxt ≤ write_seq; what lies between was never sent, so only a
        // forger can ack it — documented divergence).
        if after(seg.ack, self.write_seq()) {
            ev.push(Event::Dropped(DropReason::AckUnsent));
            return Fate::Keep;
        }
        if before(seg.ack, snd_una - self.max_window as usize) {
            ev.push(Event::Dropped(DropReason::AckTooOld));
            return Fate::Keep;
        }
        if !before(seg.ack, snd_una) {
            let nwin = u32::from(seg.window) << self.snd_wscale;
            // tcp_may_update_window()
            if after(seg.ack, snd_una)
                || after(seg.seq, self.snd_wl1)
                || (seg.seq == self.snd_wl1 && (nwin > self.snd_wnd || nwin == 0))
            {
                self.snd_wnd = nwin;
                self.snd_wl1 = seg.seq;
                self.max_window = self.max_window.max(nwin);
            }
            let delta = u64::from(seg.ack.offset_from(snd_una));
            let released = self.out.ack_to(self.out.seq_acked().saturating_add(delta));
            if released > 0 {
                ev.push(Event::Acked(released));
            }
            // tcp_replace_ts_recent(): only from a segment that starts at or
            // before the left edge (approximating rcv_wup by rcv_nxt).
            if let Some(t) = ts {
                if !after(seg.seq, rcv_nxt) && paws_check(self.ts_recent, t.tsval, now, 0) {
                    self.ts_recent = Some(TsRecent {
                        val: t.tsval,
                        stamp: now,
                    });
                }
            }
        }
        if let Some(t) = ts {
            if t.tsecr != 0 {
                let known = self.ts_clock_at(now);
                let best = match known {
                    // Not the kernel's after(tsecr, k) on timestamps, that
                    // is before(k, tsecr): (s32)(k - tsecr) < 0.
                    Some(k) if (k.wrapping_sub(t.tsecr) as i32) >= 0 => k,
                    _ => t.tsecr,
                };
                self.ts_clock = Some((best, now));
            }
        }
        if self.sack_ok {
            self.sack = seg.options.sack_blocks;
        }
        // 6. Data and FIN (tcp_data_queue). After the client's FIN, new data
        // is ignored (CLOSE_WAIT/CLOSING/LAST_ACK).
        if !self.rx.fin_done() {
            let first = self.client_isn + 1;
            let next_seq = seq_at(first, self.rx.next());
            let delta = seg.seq - next_seq;
            let (start, skip) = if delta >= 0 {
                (self.rx.next().saturating_add(delta as u64), 0usize)
            } else {
                let back = u64::from(delta.unsigned_abs());
                match self.rx.next().checked_sub(back) {
                    Some(s) => (s, 0),
                    // Starts before the stream itself (at or before the
                    // ISN): only the part from offset 0 on can be data.
                    None => (
                        0,
                        usize::try_from(back - self.rx.next()).unwrap_or(usize::MAX),
                    ),
                }
            };
            let payload = seg.payload.get(skip..).unwrap_or(&[]);
            let got = self
                .rx
                .insert(start, payload, flags.fin(), cfg.reassembly_limit());
            if !got.delivered.is_empty() || got.fin {
                self.receive(cfg, got.delivered, got.fin, ev);
            }
        }
        // 7. The input throttle: this segment's ACK may have brought the
        // unacknowledged output back within the limit.
        self.release(cfg, ev);
        self.settle(cfg, now, ev)
    }

    /// Ends the connection when both FINs are in and ours is acknowledged.
    pub(crate) fn settle(&self, cfg: &ShadowConfig, now: Millis, ev: &mut Vec<Event>) -> Fate {
        if !(self.rx.fin_done() && self.out.fin_acked()) {
            return Fate::Keep;
        }
        ev.push(Event::Closed);
        if self.closed_first {
            // The active closer keeps TIME_WAIT.
            Fate::TimeWait(Box::new(TimeWait {
                rcv_nxt: self.rcv_nxt(),
                ts_recent: self.ts_recent,
                until: now.plus(cfg.time_wait_ms),
            }))
        } else {
            Fate::Remove
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.rx.heap_bytes() + self.out.heap_bytes() + self.pending.capacity()
    }

    /// Checks what the per-segment code relies on (a decoded snapshot).
    pub(crate) fn validate(&self, cfg: &ShadowConfig) -> Result<(), &'static str> {
        self.rx.validate(cfg.reassembly_limit())?;
        self.out.validate()?;
        if self.snd_wscale > MAX_WSCALE || self.rcv_wscale > MAX_WSCALE {
            return Err("window scale above 14");
        }
        if self.mss < MSS_MIN {
            return Err("MSS below the minimum");
        }
        if self.pending.len() as u64 > self.rx.next() {
            return Err("more input held back than received");
        }
        if self.pending_fin && !self.rx.fin_done() {
            return Err("a held-back FIN that was not received");
        }
        Ok(())
    }

    pub(crate) fn hash_into(&self, h: &mut Fnv64) {
        h.u32(self.client_isn.0)
            .u32(self.server_isn.0)
            .u32(u32::from(self.mss));
        h.u32(u32::from(self.snd_wscale))
            .u32(u32::from(self.rcv_wscale));
        h.bool(self.wscale_ok).bool(self.sack_ok).bool(self.ts_ok);
        self.rx.hash_into(h);
        self.out.hash_into(h);
        h.u32(self.snd_wl1.0).u32(self.snd_wnd).u32(self.max_window);
        TsRecent::hash_into(&self.ts_recent, h);
        match self.ts_clock {
            Some((v, at)) => h.bool(true).u32(v).u64(at.0),
            None => h.bool(false),
        };
        h.u64(self.sack.as_slice().len() as u64);
        for b in self.sack.as_slice() {
            h.u32(b.left.0).u32(b.right.0);
        }
        h.bool(self.closed_first);
        h.u64(self.pending.len() as u64);
        let (a, b) = self.pending.as_slices();
        h.bytes(a).bytes(b).bool(self.pending_fin);
    }
}

/// What remains of a connection we closed first: enough to answer a new
/// SYN on the same tuple as `tcp_timewait_state_process()` does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TimeWait {
    pub(crate) rcv_nxt: SeqNumber,
    pub(crate) ts_recent: Option<TsRecent>,
    pub(crate) until: Millis,
}

impl TimeWait {
    pub(crate) fn on_client(
        &mut self,
        cfg: &ShadowConfig,
        now: Millis,
        seg: &Segment<'_>,
        ev: &mut Vec<Event>,
    ) -> Fate {
        let flags = seg.flags;
        let ts = seg.options.timestamps.filter(|_| self.ts_recent.is_some());
        let rejected = ts.is_some_and(|t| paws_reject(self.ts_recent, t.tsval, now, flags.rst()));
        if !rejected && seg.seq == self.rcv_nxt && (seg.seq_len() == 0 || flags.rst()) {
            if flags.rst() {
                // TIME_WAIT assassination (tcp_rfc1337 = 0, the default).
                return Fate::Remove;
            }
            if !flags.syn() {
                // A bare ACK re-arms the TIME_WAIT timer.
                self.until = now.plus(cfg.time_wait_ms);
                return Fate::Keep;
            }
        }
        let newer = after(seg.seq, self.rcv_nxt)
            || ts.is_some_and(|t| {
                self.ts_recent
                    .is_some_and(|r| (r.val.wrapping_sub(t.tsval) as i32) < 0)
            });
        if flags.is_opening_syn() && !rejected && newer {
            return Fate::Reopen(Box::new(HalfOpen::new(seg, now)));
        }
        ev.push(Event::Dropped(DropReason::TimeWait));
        Fate::Keep
    }

    pub(crate) fn hash_into(&self, h: &mut Fnv64) {
        h.u32(self.rcv_nxt.0).u64(self.until.0);
        TsRecent::hash_into(&self.ts_recent, h);
    }
}

/// Feeds an address into a hash, field by field (platform-independent).
pub(crate) fn hash_addr(addr: &SocketAddr, h: &mut Fnv64) {
    match addr {
        SocketAddr::V4(a) => {
            h.bytes(&[4])
                .bytes(&a.ip().octets())
                .u32(u32::from(a.port()));
        }
        SocketAddr::V6(a) => {
            h.bytes(&[6])
                .bytes(&a.ip().octets())
                .u32(u32::from(a.port()));
            h.u32(a.flowinfo()).u32(a.scope_id());
        }
    }
}
