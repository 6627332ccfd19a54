//! Streaming a Raft snapshot to one peer in chunks, with flow control
//! (issue 10 item 3): a snapshot of any size reaches a restarted node
//! through a transport whose frames are small.
//!
//! raft-rs hands the leader one `MsgSnapshot` carrying the whole state. The
//! replica takes the data out of it and gives it to a [`SnapshotSender`],
//! which cuts it into [`Chunk`]s of at most `chunk_bytes`, each carrying the
//! data-less message as a header. At most `window_chunks` chunks are in
//! flight beyond what the receiver acknowledged. The [`SnapshotReceiver`]
//! assembles them in order and, once complete, hands back the original
//! `MsgSnapshot` with its data, which the replica steps into raft-rs; then
//! it acknowledges with `done`, and the leader reports the snapshot
//! finished (`report_snapshot(Finish)`). Without progress for `retry_ticks`
//! the sender goes back to the last acknowledged offset (go-back-N); after
//! `max_retries` such rounds it gives up and the leader reports
//! `Failure`, so raft-rs makes a new snapshot message later. A new
//! `MsgSnapshot` to the same peer supersedes its transfer.
//!
//! The receiver keeps one transfer at a time, bounded by the size the
//! leader announced, which must not exceed `max_snapshot_bytes`. A newer
//! transfer (higher raft term, then snapshot index, then transfer number)
//! replaces it; an older one is ignored; one idle for
//! `receive_idle_ticks` is dropped.
//!
//! Nothing here reads a clock or touches a socket: time is the replica's
//! tick count, messages in and out are values.

use std::collections::BTreeMap;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

use crate::id::NodeId;

/// Settings of snapshot streaming (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Largest piece of snapshot data in one chunk (default 1 MiB). Small
    /// enough that a chunk is far below the transport's frame limit and
    /// sealing one takes well under a millisecond.
    pub chunk_bytes: usize,
    /// Chunks sent beyond the receiver's acknowledged offset (default 8:
    /// 8 MiB in flight, well under the transport's per-peer queue).
    pub window_chunks: usize,
    /// Ticks without an acknowledgement that moves the transfer forward
    /// before the sender resends from the acknowledged offset (default 100,
    /// 1 s at the default tick).
    pub retry_ticks: u64,
    /// Resend rounds without progress before the transfer fails and raft is
    /// told (default 5).
    pub max_retries: u32,
    /// A partly received transfer with no chunk for this many ticks is
    /// dropped, freeing its memory (default 1000, 10 s).
    pub receive_idle_ticks: u64,
    /// The largest snapshot a receiver accepts (default 4 GiB); a larger
    /// announced size is refused before anything is allocated.
    pub max_snapshot_bytes: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            chunk_bytes: 1 << 20,
            window_chunks: 8,
            retry_ticks: 100,
            max_retries: 5,
            receive_idle_ticks: 1000,
            max_snapshot_bytes: 4 << 30,
        }
    }
}

impl StreamConfig {
    /// Checks the settings; the error says which one is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.chunk_bytes == 0 || self.chunk_bytes > 16 << 20 {
            return Err("snapshot chunk_bytes must be within 1 byte..=16 MiB".into());
        }
        if self.window_chunks == 0 {
            return Err("snapshot window_chunks must be at least 1".into());
        }
        if self.retry_ticks == 0 || self.receive_idle_ticks == 0 {
            return Err("snapshot retry_ticks and receive_idle_ticks must be at least 1".into());
        }
        if self.max_snapshot_bytes == 0 {
            return Err("max_snapshot_bytes must be at least 1".into());
        }
        Ok(())
    }
}

/// One piece of a snapshot transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The sender's number for this transfer (per sender incarnation).
    pub transfer: u64,
    /// Total size of the snapshot data.
    pub total: u64,
    /// Where `data` starts in it.
    pub offset: u64,
    /// The `MsgSnapshot` without its data, protobuf-encoded (the same in
    /// every chunk of a transfer).
    pub header: Vec<u8>,
    /// The bytes at `offset`.
    pub data: Vec<u8>,
}

/// A message of the snapshot stream, carried in its own envelope kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMsg {
    /// Sender to receiver.
    Chunk(Chunk),
    /// Receiver to sender: everything before `received` is held; `done`:
    /// the snapshot is complete and was handed to raft.
    Ack {
        /// The transfer.
        transfer: u64,
        /// Bytes held, from the start.
        received: u64,
        /// Complete.
        done: bool,
    },
    /// Receiver to sender: this transfer is refused (larger than the
    /// receiver's `max_snapshot_bytes`); retrying will not help soon.
    Refuse {
        /// The transfer.
        transfer: u64,
    },
}

const TAG_CHUNK: u8 = 0;
const TAG_ACK: u8 = 1;
const TAG_REFUSE: u8 = 2;

impl StreamMsg {
    /// Encodes: `tag u8 | fields` (big-endian); a chunk is `transfer u64 |
    /// total u64 | offset u64 | header_len u32 | header | data`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            StreamMsg::Chunk(c) => {
                let mut out = Vec::with_capacity(29 + c.header.len() + c.data.len());
                out.push(TAG_CHUNK);
                out.extend_from_slice(&c.transfer.to_be_bytes());
                out.extend_from_slice(&c.total.to_be_bytes());
                out.extend_from_slice(&c.offset.to_be_bytes());
                out.extend_from_slice(&(c.header.len() as u32).to_be_bytes());
                out.extend_from_slice(&c.header);
                out.extend_from_slice(&c.data);
                out
            }
            StreamMsg::Ack {
                transfer,
                received,
                done,
            } => {
                let mut out = Vec::with_capacity(18);
                out.push(TAG_ACK);
                out.extend_from_slice(&transfer.to_be_bytes());
                out.extend_from_slice(&received.to_be_bytes());
                out.push(u8::from(*done));
                out
            }
            StreamMsg::Refuse { transfer } => {
                let mut out = vec![TAG_REFUSE];
                out.extend_from_slice(&transfer.to_be_bytes());
                out
            }
        }
    }

    /// Decodes [`StreamMsg::encode`]'s bytes; anything else is `None`.
    pub fn decode(bytes: &[u8]) -> Option<StreamMsg> {
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(
                bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
            ))
        };
        match *bytes.first()? {
            TAG_CHUNK => {
                let transfer = u64_at(1)?;
                let total = u64_at(9)?;
                let offset = u64_at(17)?;
                let hlen = u32::from_be_bytes(bytes.get(25..29)?.try_into().ok()?) as usize;
                let header = bytes.get(29..29usize.checked_add(hlen)?)?.to_vec();
                let data = bytes[29 + hlen..].to_vec();
                Some(StreamMsg::Chunk(Chunk {
                    transfer,
                    total,
                    offset,
                    header,
                    data,
                }))
            }
            TAG_ACK if bytes.len() == 18 && bytes[17] <= 1 => Some(StreamMsg::Ack {
                transfer: u64_at(1)?,
                received: u64_at(9)?,
                done: bytes[17] == 1,
            }),
            TAG_REFUSE if bytes.len() == 9 => Some(StreamMsg::Refuse {
                transfer: u64_at(1)?,
            }),
            _ => None,
        }
    }
}

/// How a transfer ended, for `report_snapshot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferEnd {
    /// The receiver holds the whole snapshot and stepped it.
    Finished,
    /// Given up (no progress, or refused): raft should try again later.
    Failed,
}

/// Counters of snapshot streaming, for status displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Transfers started by this node (as leader).
    pub sends_started: u64,
    /// Transfers this node sent that the receiver completed.
    pub sends_finished: u64,
    /// Transfers this node gave up (no progress or refused).
    pub sends_failed: u64,
    /// Chunks sent, resends included.
    pub chunks_sent: u64,
    /// Snapshots this node received whole and handed to raft.
    pub received: u64,
    /// Chunks ignored: undecodable header, out of bounds, from an older
    /// transfer, or inconsistent with the transfer they claim.
    pub bad_chunks: u64,
    /// Transfers refused as larger than `max_snapshot_bytes`.
    pub refused: u64,
    /// Partly received transfers dropped (idle, or superseded).
    pub abandoned: u64,
}

#[derive(Debug)]
struct Outgoing {
    transfer: u64,
    header: Vec<u8>,
    /// The whole `MsgSnapshot` raft made: its data is shared with the log's
    /// snapshot (reference-counted), never copied whole.
    full: Message,
    /// Acknowledged by the receiver.
    acked: u64,
    /// Next offset to send.
    next: u64,
    /// An empty snapshot is one empty chunk: whether it went out.
    empty_sent: bool,
    last_progress: u64,
    retries: u32,
}

impl Outgoing {
    fn data(&self) -> &[u8] {
        &self.full.get_snapshot().data
    }

    fn total(&self) -> u64 {
        self.data().len() as u64
    }
}

/// The leader's side: one transfer per peer at most.
#[derive(Debug)]
pub struct SnapshotSender {
    cfg: StreamConfig,
    next_transfer: u64,
    out: BTreeMap<NodeId, Outgoing>,
}

impl SnapshotSender {
    /// A sender with no transfer.
    pub fn new(cfg: StreamConfig) -> Self {
        Self {
            cfg,
            next_transfer: 1,
            out: BTreeMap::new(),
        }
    }

    /// Starts sending `msg`, a `MsgSnapshot` with its data, to `to`.
    /// Replaces any transfer to `to` (raft made a new snapshot message: it
    /// no longer waits for the old one). Returns the transfer's number.
    pub fn start(&mut self, to: NodeId, msg: Message, now: u64) -> u64 {
        let transfer = self.next_transfer;
        self.next_transfer += 1;
        let mut header = msg.clone();
        header.mut_snapshot().data = Default::default();
        self.out.insert(
            to,
            Outgoing {
                transfer,
                header: header.write_to_bytes().unwrap_or_default(),
                full: msg,
                acked: 0,
                next: 0,
                empty_sent: false,
                last_progress: now,
                retries: 0,
            },
        );
        transfer
    }

    /// Drops every transfer (leadership lost: raft no longer waits for them).
    pub fn clear(&mut self) {
        self.out.clear();
    }

    /// Drops the transfer to `to`, if any (that process is gone: a new
    /// incarnation holds its slot).
    pub fn cancel(&mut self, to: NodeId) {
        self.out.remove(&to);
    }

    /// True if some transfer is running.
    pub fn is_busy(&self) -> bool {
        !self.out.is_empty()
    }

    /// The peers with a transfer running.
    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.out.keys().copied()
    }

    /// True if [`SnapshotSender::poll`] has chunks to send now.
    pub fn has_chunks(&self) -> bool {
        self.out.values().any(|o| self.window_open(o))
    }

    fn window_open(&self, o: &Outgoing) -> bool {
        let window = (self.cfg.window_chunks * self.cfg.chunk_bytes) as u64;
        if o.total() == 0 {
            return !o.empty_sent;
        }
        o.next < o.total() && o.next - o.acked < window
    }

    /// Handles a receiver's answer; returns how the transfer ended, if it
    /// did. Answers for a transfer not running (old, or from another peer)
    /// are ignored.
    pub fn on_reply(&mut self, from: NodeId, msg: &StreamMsg, now: u64) -> Option<TransferEnd> {
        let o = self.out.get_mut(&from)?;
        match *msg {
            StreamMsg::Ack {
                transfer,
                received,
                done,
            } if transfer == o.transfer => {
                if done {
                    self.out.remove(&from);
                    return Some(TransferEnd::Finished);
                }
                if received > o.acked && received <= o.total() {
                    o.acked = received;
                    o.next = o.next.max(received);
                    o.last_progress = now;
                    o.retries = 0;
                } else if received < o.acked {
                    // The receiver holds less than it said: it dropped the
                    // transfer (idle too long) and starts it again from
                    // what it holds now.
                    o.acked = received;
                    o.next = received;
                    o.empty_sent = false;
                }
                None
            }
            StreamMsg::Refuse { transfer } if transfer == o.transfer => {
                self.out.remove(&from);
                Some(TransferEnd::Failed)
            }
            _ => None,
        }
    }

    /// Checks for transfers without progress: each goes back to its
    /// acknowledged offset, or fails after `max_retries` rounds. Returns
    /// the failed ones.
    pub fn on_tick(&mut self, now: u64) -> Vec<NodeId> {
        let mut failed = Vec::new();
        for (&to, o) in self.out.iter_mut() {
            if now.saturating_sub(o.last_progress) < self.cfg.retry_ticks {
                continue;
            }
            o.retries += 1;
            if o.retries > self.cfg.max_retries {
                failed.push(to);
                continue;
            }
            o.last_progress = now;
            o.next = o.acked;
            o.empty_sent = false;
        }
        for to in &failed {
            self.out.remove(to);
        }
        failed
    }

    /// The chunks to send now, filling each transfer's window.
    pub fn poll(&mut self) -> Vec<(NodeId, StreamMsg)> {
        let window = (self.cfg.window_chunks * self.cfg.chunk_bytes) as u64;
        let mut msgs = Vec::new();
        for (&to, o) in self.out.iter_mut() {
            if o.total() == 0 {
                if !o.empty_sent {
                    o.empty_sent = true;
                    msgs.push((to, chunk_of(o, 0, 0)));
                }
                continue;
            }
            while o.next < o.total() && o.next - o.acked < window {
                let len = (o.total() - o.next).min(self.cfg.chunk_bytes as u64);
                msgs.push((to, chunk_of(o, o.next, len)));
                o.next += len;
            }
        }
        msgs
    }
}

fn chunk_of(o: &Outgoing, offset: u64, len: u64) -> StreamMsg {
    StreamMsg::Chunk(Chunk {
        transfer: o.transfer,
        total: o.total(),
        offset,
        header: o.header.clone(),
        data: o.data()[offset as usize..(offset + len) as usize].to_vec(),
    })
}

#[derive(Debug)]
struct Incoming {
    from: NodeId,
    transfer: u64,
    header: Vec<u8>,
    /// (raft term of the message, snapshot index): what "newer" means.
    rank: (u64, u64),
    total: u64,
    buf: Vec<u8>,
    last_heard: u64,
}

/// What the receiver makes of a chunk.
#[derive(Debug, Default)]
pub struct Received {
    /// The answer to send back to the chunk's sender, if any.
    pub reply: Option<StreamMsg>,
    /// The complete `MsgSnapshot`, data included, to step into raft.
    pub complete: Option<Message>,
}

/// The receiving side: one transfer at a time.
#[derive(Debug)]
pub struct SnapshotReceiver {
    cfg: StreamConfig,
    me: NodeId,
    cur: Option<Incoming>,
    /// The last transfer completed, and its rank: late chunks of it are
    /// answered `done` again instead of starting it over, and transfers
    /// older than it are ignored.
    finished: Option<(NodeId, u64, (u64, u64))>,
}

impl SnapshotReceiver {
    /// A receiver for node `me`.
    pub fn new(cfg: StreamConfig, me: NodeId) -> Self {
        Self {
            cfg,
            me,
            cur: None,
            finished: None,
        }
    }

    /// Bytes held by a partly received transfer (the memory it pins).
    pub fn held_bytes(&self) -> usize {
        self.cur.as_ref().map_or(0, |c| c.buf.capacity())
    }

    /// Drops a partly received transfer that has been idle too long.
    /// Returns true if one was dropped.
    pub fn on_tick(&mut self, now: u64) -> bool {
        let idle = self
            .cur
            .as_ref()
            .is_some_and(|c| now.saturating_sub(c.last_heard) >= self.cfg.receive_idle_ticks);
        if idle {
            self.cur = None;
        }
        idle
    }

    /// Handles a chunk from the (authenticated) `from`. `stats` counts bad,
    /// refused and abandoned transfers.
    pub fn on_chunk(
        &mut self,
        from: NodeId,
        chunk: Chunk,
        now: u64,
        stats: &mut StreamStats,
    ) -> Received {
        let mut got = Received::default();
        if self
            .finished
            .is_some_and(|(f, t, _)| (f, t) == (from, chunk.transfer))
        {
            got.reply = Some(StreamMsg::Ack {
                transfer: chunk.transfer,
                received: chunk.total,
                done: true,
            });
            return got;
        }
        let end = chunk.offset.checked_add(chunk.data.len() as u64);
        if end.is_none_or(|end| end > chunk.total) {
            stats.bad_chunks += 1;
            return got;
        }
        let same = |c: &Incoming| c.from == from && c.transfer == chunk.transfer;
        if let Some(cur) = self.cur.as_ref().filter(|c| same(c)) {
            if cur.header != chunk.header || cur.total != chunk.total {
                stats.bad_chunks += 1;
                return got;
            }
        } else {
            let Some(rank) = self.check_header(from, &chunk.header) else {
                stats.bad_chunks += 1;
                return got;
            };
            if chunk.total > self.cfg.max_snapshot_bytes {
                stats.refused += 1;
                got.reply = Some(StreamMsg::Refuse {
                    transfer: chunk.transfer,
                });
                return got;
            }
            if let Some((_, transfer, done_rank)) = self.finished {
                if (rank, chunk.transfer) <= (done_rank, transfer) {
                    // Older than the snapshot already handed to raft.
                    stats.bad_chunks += 1;
                    return got;
                }
            }
            if let Some(cur) = &self.cur {
                let newer = (rank, chunk.transfer) > (cur.rank, cur.transfer);
                if !newer {
                    // An older transfer (a deposed leader's, or one
                    // already replaced): ignored.
                    stats.bad_chunks += 1;
                    return got;
                }
                stats.abandoned += 1;
            }
            self.cur = Some(Incoming {
                from,
                transfer: chunk.transfer,
                header: chunk.header.clone(),
                rank,
                total: chunk.total,
                // Bounded by max_snapshot_bytes (checked above).
                buf: Vec::with_capacity(chunk.total as usize),
                last_heard: now,
            });
        }
        let Some(cur) = self.cur.as_mut() else {
            return got;
        };
        cur.last_heard = now;
        let held = cur.buf.len() as u64;
        if chunk.offset == held {
            cur.buf.extend_from_slice(&chunk.data);
        }
        // A duplicate (offset before) or a gap (after: a chunk was lost or
        // reordered) only gets the offset held: the sender goes back to it
        // when its retry timer runs out.
        if cur.buf.len() as u64 == cur.total {
            let Some(cur) = self.cur.take() else {
                return got;
            };
            let Ok(mut m) = Message::parse_from_bytes(&cur.header) else {
                return got; // checked when the transfer started
            };
            m.mut_snapshot().data = cur.buf.into();
            stats.received += 1;
            self.finished = Some((from, cur.transfer, cur.rank));
            got.complete = Some(m);
            got.reply = Some(StreamMsg::Ack {
                transfer: chunk.transfer,
                received: chunk.total,
                done: true,
            });
        } else {
            got.reply = Some(StreamMsg::Ack {
                transfer: chunk.transfer,
                received: cur.buf.len() as u64,
                done: false,
            });
        }
        got
    }

    /// A header must be a data-less `MsgSnapshot` from the chunk's sender
    /// to this node; returns its (term, snapshot index).
    fn check_header(&self, from: NodeId, header: &[u8]) -> Option<(u64, u64)> {
        let m = Message::parse_from_bytes(header).ok()?;
        let ok = m.get_msg_type() == MessageType::MsgSnapshot
            && m.from == from.raft_id()
            && m.to == self.me.raft_id()
            && m.has_snapshot()
            && m.get_snapshot().data.is_empty();
        ok.then(|| (m.term, m.get_snapshot().get_metadata().index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEADER: NodeId = NodeId {
        slot: 1,
        incarnation: 1,
    };
    const OTHER: NodeId = NodeId {
        slot: 3,
        incarnation: 1,
    };
    const ME: NodeId = NodeId {
        slot: 2,
        incarnation: 2,
    };

    fn cfg() -> StreamConfig {
        StreamConfig {
            chunk_bytes: 10,
            window_chunks: 3,
            retry_ticks: 5,
            max_retries: 2,
            receive_idle_ticks: 50,
            max_snapshot_bytes: 1000,
        }
    }

    fn header(from: NodeId, term: u64, index: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.from = from.raft_id();
        m.to = ME.raft_id();
        m.term = term;
        m.mut_snapshot().mut_metadata().index = index;
        m.mut_snapshot().mut_metadata().term = term;
        m
    }

    fn with(mut m: Message, data: Vec<u8>) -> Message {
        m.mut_snapshot().data = data.into();
        m
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    fn chunk(m: StreamMsg) -> Chunk {
        match m {
            StreamMsg::Chunk(c) => c,
            other => panic!("not a chunk: {other:?}"),
        }
    }

    /// Delivers every message both ways through a lossless, in-order link
    /// until the transfer ends; `mangle` may drop/reorder/duplicate what the
    /// sender emits each round. Returns the completed message and the end.
    fn run(
        tx: &mut SnapshotSender,
        rx: &mut SnapshotReceiver,
        mut mangle: impl FnMut(u64, Vec<(NodeId, StreamMsg)>) -> Vec<(NodeId, StreamMsg)>,
    ) -> (Option<Message>, Option<TransferEnd>, StreamStats) {
        let mut stats = StreamStats::default();
        let mut complete = None;
        for now in 0..5000u64 {
            if !tx.on_tick(now).is_empty() {
                return (complete, Some(TransferEnd::Failed), stats);
            }
            let sent = mangle(now, tx.poll());
            for (to, m) in sent {
                assert_eq!(to, ME);
                let got = rx.on_chunk(LEADER, chunk(m), now, &mut stats);
                if let Some(m) = got.complete {
                    assert!(complete.is_none(), "completed twice");
                    complete = Some(m);
                }
                if let Some(reply) = got.reply {
                    if let Some(end) = tx.on_reply(ME, &reply, now) {
                        return (complete, Some(end), stats);
                    }
                }
            }
        }
        (complete, None, stats)
    }

    fn assert_whole(m: Option<Message>, want: &[u8], index: u64) {
        let m = m.expect("snapshot completed");
        assert_eq!(m.get_msg_type(), MessageType::MsgSnapshot);
        assert_eq!(m.get_snapshot().get_metadata().index, index);
        assert_eq!(&m.get_snapshot().data[..], want);
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let msgs = [
            StreamMsg::Chunk(Chunk {
                transfer: 9,
                total: 100,
                offset: 40,
                header: vec![1, 2, 3],
                data: vec![4; 10],
            }),
            StreamMsg::Ack {
                transfer: 9,
                received: 50,
                done: true,
            },
            StreamMsg::Refuse { transfer: 3 },
        ];
        for m in msgs {
            let enc = m.encode();
            assert_eq!(StreamMsg::decode(&enc), Some(m.clone()));
            // Every truncation of an ack or refusal, and every truncation of
            // a chunk inside its fixed fields or header, is refused.
            let fixed = match &m {
                StreamMsg::Chunk(c) => 29 + c.header.len(),
                _ => enc.len(),
            };
            for cut in 0..fixed {
                assert_eq!(StreamMsg::decode(&enc[..cut]), None, "{m:?} cut {cut}");
            }
        }
        assert_eq!(StreamMsg::decode(&[7, 0, 0]), None);
        let mut bad_done = StreamMsg::Ack {
            transfer: 1,
            received: 2,
            done: false,
        }
        .encode();
        bad_done[17] = 2;
        assert_eq!(StreamMsg::decode(&bad_done), None);
    }

    #[test]
    fn a_snapshot_streams_in_windowed_chunks() {
        let mut tx = SnapshotSender::new(cfg());
        let mut rx = SnapshotReceiver::new(cfg(), ME);
        let want = data(95);
        tx.start(ME, with(header(LEADER, 4, 70), want.clone()), 0);
        // The first poll fills exactly the window.
        let first = tx.poll();
        assert_eq!(first.len(), 3);
        assert!(!tx.has_chunks());
        let mut stats = StreamStats::default();
        for (_, m) in first {
            let c = chunk(m);
            assert!(c.data.len() <= 10);
            let got = rx.on_chunk(LEADER, c, 0, &mut stats);
            assert!(got.complete.is_none());
            tx.on_reply(ME, &got.reply.unwrap(), 0);
        }
        assert_eq!(rx.held_bytes(), 95, "reserved the announced size");
        let (m, end, _) = run(&mut tx, &mut rx, |_, m| m);
        assert_eq!(end, Some(TransferEnd::Finished));
        assert_whole(m, &want, 70);
        assert!(!tx.is_busy());
        assert_eq!(rx.held_bytes(), 0);
    }

    #[test]
    fn an_empty_snapshot_is_one_empty_chunk() {
        let mut tx = SnapshotSender::new(cfg());
        let mut rx = SnapshotReceiver::new(cfg(), ME);
        tx.start(ME, with(header(LEADER, 2, 1), Vec::new()), 0);
        let (m, end, _) = run(&mut tx, &mut rx, |_, m| m);
        assert_eq!(end, Some(TransferEnd::Finished));
        assert_whole(m, &[], 1);
    }

    #[test]
    fn loss_reorder_and_duplicates_still_deliver_exactly() {
        let want = data(203);
        // Reverse every other round, drop every seventh chunk sent,
        // duplicate every fourth.
        let mut n = 0u64;
        let mut tx = SnapshotSender::new(StreamConfig {
            max_retries: 100,
            ..cfg()
        });
        let mut rx = SnapshotReceiver::new(cfg(), ME);
        tx.start(ME, with(header(LEADER, 4, 70), want.clone()), 0);
        let (m, end, _) = run(&mut tx, &mut rx, |now, mut msgs| {
            let mut out = Vec::new();
            if now.is_multiple_of(2) {
                msgs.reverse();
            }
            for m in msgs {
                n += 1;
                if n.is_multiple_of(7) {
                    continue;
                }
                if n.is_multiple_of(4) {
                    out.push(m.clone());
                }
                out.push(m);
            }
            out
        });
        assert_eq!(end, Some(TransferEnd::Finished));
        assert_whole(m, &want, 70);
    }

    #[test]
    fn a_silent_receiver_makes_the_transfer_fail_after_retries() {
        let mut tx = SnapshotSender::new(cfg());
        tx.start(ME, with(header(LEADER, 4, 70), data(50)), 0);
        let mut sent = 0;
        let mut failed_at = None;
        for now in 0..100 {
            if !tx.on_tick(now).is_empty() {
                failed_at = Some(now);
                break;
            }
            sent += tx.poll().len();
        }
        // 3 chunks per round: the first, then 2 resend rounds, then failure.
        assert_eq!(sent, 9);
        assert_eq!(failed_at, Some(15));
        assert!(!tx.is_busy());
    }

    #[test]
    fn a_restarted_sender_starts_over_and_the_receiver_follows() {
        let want = data(60);
        let mut rx = SnapshotReceiver::new(cfg(), ME);
        let mut stats = StreamStats::default();
        // The first leader process sends a bit, then dies.
        let mut old = SnapshotSender::new(cfg());
        old.start(ME, with(header(LEADER, 4, 70), want.clone()), 0);
        for (_, m) in old.poll().into_iter().take(2) {
            rx.on_chunk(LEADER, chunk(m), 0, &mut stats);
        }
        assert_eq!(rx.held_bytes(), 60);
        // A new leader (next term, its own numbering from 1) takes over.
        let mut tx = SnapshotSender::new(cfg());
        tx.start(ME, with(header(OTHER, 5, 80), want.clone()), 1);
        let mut complete = None;
        for now in 1..50 {
            tx.on_tick(now);
            for (_, m) in tx.poll() {
                let got = rx.on_chunk(OTHER, chunk(m), now, &mut stats);
                complete = complete.or(got.complete);
                if let Some(r) = got.reply {
                    tx.on_reply(ME, &r, now);
                }
            }
            // The dead leader's late chunks change nothing.
            old.on_tick(now);
            for (_, m) in old.poll() {
                let got = rx.on_chunk(LEADER, chunk(m), now, &mut stats);
                assert!(got.complete.is_none() && got.reply.is_none());
            }
        }
        assert_whole(complete, &want, 80);
        assert_eq!(stats.abandoned, 1);
        assert!(stats.bad_chunks >= 1);
    }

    #[test]
    fn a_new_snapshot_supersedes_the_running_transfer() {
        let mut tx = SnapshotSender::new(cfg());
        let mut rx = SnapshotReceiver::new(cfg(), ME);
        let mut stats = StreamStats::default();
        let first = tx.start(ME, with(header(LEADER, 4, 70), data(60)), 0);
        for (_, m) in tx.poll().into_iter().take(1) {
            rx.on_chunk(LEADER, chunk(m), 0, &mut stats);
        }
        let newer = data(33).into_iter().rev().collect::<Vec<_>>();
        let second = tx.start(ME, with(header(LEADER, 4, 90), newer.clone()), 1);
        assert!(second > first);
        // A late ack of the first transfer is ignored.
        let late = StreamMsg::Ack {
            transfer: first,
            received: 0,
            done: true,
        };
        assert_eq!(tx.on_reply(ME, &late, 1), None);
        let (m, end, _) = run(&mut tx, &mut rx, |_, m| m);
        assert_eq!(end, Some(TransferEnd::Finished));
        assert_whole(m, &newer, 90);
    }

    #[test]
    fn a_restarted_receiver_gets_it_from_the_start() {
        let want = data(60);
        let mut tx = SnapshotSender::new(cfg());
        tx.start(ME, with(header(LEADER, 4, 70), want.clone()), 0);
        let mut stats = StreamStats::default();
        let mut rx = SnapshotReceiver::new(cfg(), ME);
        for (_, m) in tx.poll() {
            let got = rx.on_chunk(LEADER, chunk(m), 0, &mut stats);
            tx.on_reply(ME, &got.reply.unwrap(), 0);
        }
        // The receiver loses everything it held (same identity, as a
        // process that kept its incarnation would): the next chunk leaves a
        // gap, the ack says 0, and after the retry timer the sender goes back.
        let mut rx = SnapshotReceiver::new(cfg(), ME);
        let (m, end, _) = run(&mut tx, &mut rx, |_, m| m);
        assert_eq!(end, Some(TransferEnd::Finished));
        assert_whole(m, &want, 70);
    }

    #[test]
    fn bad_chunks_are_ignored_and_oversized_snapshots_refused() {
        let mut rx = SnapshotReceiver::new(cfg(), ME);
        let mut stats = StreamStats::default();
        let good = header(LEADER, 4, 70).write_to_bytes().unwrap();
        let mk = |header: Vec<u8>, total, offset, data: Vec<u8>| Chunk {
            transfer: 1,
            total,
            offset,
            header,
            data,
        };
        // Not a header at all; a header naming another sender; a header
        // with data inside; another message type.
        let mut with_data = header(LEADER, 4, 70);
        with_data.mut_snapshot().data = vec![1].into();
        let mut append = header(LEADER, 4, 70);
        append.set_msg_type(MessageType::MsgAppend);
        for h in [
            vec![0xff; 7],
            header(OTHER, 4, 70).write_to_bytes().unwrap(),
            with_data.write_to_bytes().unwrap(),
            append.write_to_bytes().unwrap(),
        ] {
            let got = rx.on_chunk(LEADER, mk(h, 20, 0, vec![1; 10]), 0, &mut stats);
            assert!(got.reply.is_none() && got.complete.is_none());
        }
        assert_eq!(stats.bad_chunks, 4);
        assert_eq!(rx.held_bytes(), 0);
        // Larger than the cap: refused before anything is allocated.
        let got = rx.on_chunk(LEADER, mk(good.clone(), 1001, 0, vec![1]), 0, &mut stats);
        assert_eq!(got.reply, Some(StreamMsg::Refuse { transfer: 1 }));
        assert_eq!((stats.refused, rx.held_bytes()), (1, 0));
        // Past the announced end, or a changed total: ignored.
        rx.on_chunk(LEADER, mk(good.clone(), 20, 0, vec![1; 10]), 0, &mut stats);
        let got = rx.on_chunk(LEADER, mk(good.clone(), 20, 10, vec![1; 11]), 0, &mut stats);
        assert!(got.reply.is_none());
        let got = rx.on_chunk(LEADER, mk(good.clone(), 21, 10, vec![1; 11]), 0, &mut stats);
        assert!(got.reply.is_none());
        let got = rx.on_chunk(
            LEADER,
            mk(good.clone(), 20, u64::MAX, vec![1]),
            0,
            &mut stats,
        );
        assert!(got.reply.is_none());
        assert_eq!(stats.bad_chunks, 7);
        // The transfer itself is intact and completes.
        let got = rx.on_chunk(LEADER, mk(good, 20, 10, vec![2; 10]), 0, &mut stats);
        let m = got.complete.unwrap();
        assert_eq!(&m.get_snapshot().data[..10], &[1; 10]);
        assert_eq!(&m.get_snapshot().data[10..], &[2; 10]);
        // A refused transfer makes the sender give up at once.
        let mut tx = SnapshotSender::new(cfg());
        let t = tx.start(ME, with(header(LEADER, 4, 70), data(5)), 0);
        let end = tx.on_reply(ME, &StreamMsg::Refuse { transfer: t }, 0);
        assert_eq!(end, Some(TransferEnd::Failed));
    }

    #[test]
    fn an_idle_partial_transfer_is_dropped() {
        let mut rx = SnapshotReceiver::new(cfg(), ME);
        let mut tx = SnapshotSender::new(cfg());
        tx.start(ME, with(header(LEADER, 4, 70), data(60)), 0);
        let mut stats = StreamStats::default();
        let c = chunk(tx.poll().remove(0).1);
        rx.on_chunk(LEADER, c, 3, &mut stats);
        assert_eq!(rx.held_bytes(), 60);
        assert!(!rx.on_tick(52));
        assert!(rx.on_tick(53));
        assert_eq!(rx.held_bytes(), 0);
    }
}
