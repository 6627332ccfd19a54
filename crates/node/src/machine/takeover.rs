//! The takeover's plan (docs/architecture.md §3.5): which connections a new primary
//! rebuilds and in which order, how shadow TCP's image of a connection
//! becomes a socket TCP_REPAIR can build, what it sends to prompt the client
//! at once, and which logged packets it replays or re-injects. No I/O here:
//! the daemon carries these out.

use crate::group::Item;
use std::net::IpAddr;
use tandem_core::packet::segment_of;
use tandem_core::shadow::ConnKey;

/// A logged packet, parsed the way the log was written: options as Linux
/// reads them, checksum not checked (verified before proposing).
fn parse_logged(bytes: &[u8]) -> Option<tandem_wire::IpTcpRepr<'_>> {
    let checks = tandem_wire::tcp::ParseChecks {
        verify_checksum: false,
        options: tandem_wire::tcp::OptionsMode::Linux,
    };
    tandem_wire::IpTcpRepr::parse(bytes, checks).ok()
}

/// One connection a new primary rebuilds, as planned from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    pub key: ConnKey,
    /// The image to rebuild with TCP_REPAIR ([`for_restore`] applied).
    pub image: tandem_core::SocketImage,
    /// Our FIN is part of it (the service had closed).
    pub fin: bool,
    /// The client's FIN was received (the service was told).
    pub peer_closed: bool,
    /// Segments to send from a raw socket once it is live ([`replay_head`]).
    pub replay: Vec<Vec<u8>>,
}

/// What a new primary rebuilds (docs/architecture.md §3.5 step 4): every connection the
/// log knows, busiest first (the most output waiting goes live first), and
/// the handshakes among them (rebuilt ESTABLISHED: a client's retransmitted
/// SYN is answered with the logged SYN-ACK).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TakeoverPlan {
    pub connections: Vec<RestorePlan>,
    pub handshakes: Vec<ConnKey>,
}

/// Plans the takeover from shadow TCP at `now_ms` (log time).
pub fn plan(shadow: &tandem_core::shadow::ShadowTable, now_ms: u64) -> TakeoverPlan {
    use tandem_core::TcpState;
    let mut plan = TakeoverPlan::default();
    for key in shadow.keys() {
        let Some(image) = shadow.image(key, tandem_core::shadow::Millis(now_ms), TS_JUMP) else {
            continue;
        };
        if image.state == TcpState::SynRecv {
            plan.handshakes.push(*key);
        }
        let peer_closed = matches!(
            image.state,
            TcpState::CloseWait | TcpState::LastAck | TcpState::Closing
        );
        let image = for_restore(image);
        plan.connections.push(RestorePlan {
            key: *key,
            fin: image.state != TcpState::Established,
            peer_closed,
            replay: replay_head(&image),
            image,
        });
    }
    plan.connections
        .sort_by_key(|c| std::cmp::Reverse(c.image.send_queue.len()));
    plan
}

/// How far a new primary moves the TCP timestamp clock of every rebuilt
/// connection past the lower bound the log gives (docs/architecture.md §3.5): one hour,
/// so the old primary's clock can never have been ahead of it, and far below
/// the 2^31 ms PAWS horizon.
pub const TS_JUMP: u32 = 3_600_000;

/// Adjusts shadow TCP's image for a restore by a new primary: states
/// TCP_REPAIR cannot build directly become the nearest one it can — a
/// received FIN is already counted in rcv_nxt and the service was told
/// (CLOSE_WAIT → ESTABLISHED, LAST_ACK/CLOSING → FIN_WAIT1), and a handshake
/// whose SYN-ACK is logged is ESTABLISHED (SYN_RECV).
///
/// Every unacknowledged output byte stays *in flight* (snd_nxt = write_seq):
/// the client may have received and acknowledged bytes the log does not
/// know it has (its ACKs are logged lazily), and an ACK beyond snd_nxt is
/// discarded by the kernel as acknowledging unsent data — the connection
/// would deadlock. Bytes the client never got are sent again at once by
/// [`replay_head`], not after a retransmission timeout.
pub fn for_restore(mut image: tandem_core::SocketImage) -> tandem_core::SocketImage {
    use tandem_core::TcpState;
    image.unsent_len = 0;
    image.state = match image.state {
        TcpState::CloseWait | TcpState::SynRecv | TcpState::NewSynRecv => TcpState::Established,
        TcpState::LastAck | TcpState::Closing => TcpState::FinWait1,
        other => other,
    };
    image
}

/// Most output bytes a new primary sends again from user space per
/// connection at takeover (about an initial congestion window).
const REPLAY_BYTES: usize = 10 * 1448;

/// Segments carrying the head of a rebuilt connection's unacknowledged
/// output (and our FIN if that is all that is left), as the restored socket
/// would retransmit them — sent from a raw socket right after it goes live.
/// A rebuilt socket has no RTT estimate, so its own retransmission waits 1
/// to 3 s; these make the client answer now: it takes bytes it lacks, and
/// acknowledges (as a duplicate) what it already has, which moves the
/// socket's snd_una to the client's real position.
pub fn replay_head(image: &tandem_core::SocketImage) -> Vec<Vec<u8>> {
    use tandem_wire::{IpRepr, Ipv4Repr, SeqNumber, TcpFlags, TcpOptionSet, TcpRepr, Timestamps};
    let (IpAddr::V4(local), IpAddr::V4(peer)) = (image.local.ip(), image.peer.ip()) else {
        return Vec::new();
    };
    let data = image.unacked();
    let mss = (image.mss as usize).clamp(64, 1448);
    let rcv_wscale = image.options.window_scale.map_or(0, |w| w.rcv);
    let window = (image.window.rcv_wnd >> rcv_wscale).min(65_535) as u16;
    let segment = |seq: u32, flags: TcpFlags, payload: &[u8]| -> Option<Vec<u8>> {
        let mut options = TcpOptionSet::default();
        if image.options.timestamps {
            options.timestamps = Some(Timestamps {
                tsval: image.timestamp,
                tsecr: 0,
            });
        }
        tandem_wire::IpTcpRepr {
            ip: IpRepr::V4(Ipv4Repr::tcp(local, peer)),
            tcp: TcpRepr {
                src_port: image.local.port(),
                dst_port: image.peer.port(),
                seq_number: SeqNumber(seq),
                ack_number: SeqNumber(image.rcv_nxt),
                flags,
                window_len: window,
                urgent_at: 0,
                options,
                payload,
            },
        }
        .to_bytes()
        .ok()
    };
    let start = image.snd_una();
    let head = &data[..data.len().min(REPLAY_BYTES)];
    let mut out: Vec<Vec<u8>> = head
        .chunks(mss)
        .enumerate()
        .filter_map(|(i, chunk)| {
            let seq = start.wrapping_add((i * mss) as u32);
            segment(seq, TcpFlags::ACK | TcpFlags::PSH, chunk)
        })
        .collect();
    if data.is_empty() && image.fin_unacked() {
        out.extend(segment(
            image.write_seq.wrapping_sub(1),
            TcpFlags::ACK | TcpFlags::FIN,
            &[],
        ));
    }
    out
}

/// The connection of a logged SYN-ACK (from the server), and the packet
/// re-emitted with its checksums computed (a SYN-ACK captured on OUTPUT may
/// carry only the partial checksum the NIC was to complete).
pub fn synack_for_replay(bytes: &[u8]) -> Option<(ConnKey, Vec<u8>)> {
    let repr = parse_logged(bytes)?;
    let flags = repr.tcp.flags;
    if !(flags.contains(tandem_wire::TcpFlags::SYN) && flags.contains(tandem_wire::TcpFlags::ACK)) {
        return None;
    }
    let key = ConnKey::of(
        tandem_core::classify::Direction::FromServer,
        &segment_of(&repr),
    );
    Some((key, repr.to_bytes().ok()?))
}

/// A client packet of a handed-over entry that carries bytes or a FIN, re-
/// emitted with its checksum computed (it may have been captured with the
/// partial checksum of an offloading NIC).
pub fn handed_over_packet(item: &Item) -> Option<Vec<u8>> {
    let Item::Packet {
        from_server: false,
        bytes,
    } = item
    else {
        return None;
    };
    let repr = parse_logged(bytes)?;
    let flags = repr.tcp.flags;
    let carries = !repr.tcp.payload.is_empty() || flags.contains(tandem_wire::TcpFlags::FIN);
    (carries
        && !flags.contains(tandem_wire::TcpFlags::SYN)
        && !flags.contains(tandem_wire::TcpFlags::RST))
    .then(|| repr.to_bytes().ok())
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::image::{RepairWindow, TcpOptions, WindowScale};
    use tandem_core::{SocketImage, TcpState};

    fn image(state: TcpState, send: usize) -> SocketImage {
        SocketImage {
            local: "198.18.0.100:6379".parse().unwrap(),
            peer: "198.18.0.2:40000".parse().unwrap(),
            state,
            rcv_nxt: 1_000,
            write_seq: 5_000 + send as u32 + u32::from(state != TcpState::Established),
            recv_queue: Vec::new(),
            send_queue: (0..send).map(|i| i as u8).collect(),
            unsent_len: 0,
            mss: 1448,
            options: TcpOptions {
                sack: true,
                timestamps: true,
                window_scale: Some(WindowScale { snd: 7, rcv: 7 }),
            },
            timestamp: 77,
            window: RepairWindow {
                snd_wl1: 1_000,
                snd_wnd: 65_535,
                max_window: 65_535,
                rcv_wnd: 262_144,
                rcv_wup: 1_000,
            },
        }
    }

    #[test]
    fn states_map_to_what_tcp_repair_can_build_and_output_stays_in_flight() {
        for (from, to) in [
            (TcpState::Established, TcpState::Established),
            (TcpState::CloseWait, TcpState::Established),
            (TcpState::SynRecv, TcpState::Established),
            (TcpState::FinWait1, TcpState::FinWait1),
            (TcpState::FinWait2, TcpState::FinWait2),
            (TcpState::LastAck, TcpState::FinWait1),
            (TcpState::Closing, TcpState::FinWait1),
        ] {
            let mut img = image(from, 3_000);
            img.unsent_len = 100;
            let restored = for_restore(img);
            assert_eq!(restored.state, to, "{from:?}");
            assert_eq!(restored.unsent_len, 0, "{from:?}: every byte in flight");
        }
    }

    #[test]
    fn the_replayed_head_starts_at_snd_una_and_is_bounded() {
        let img = image(TcpState::Established, 40_000);
        let packets = replay_head(&img);
        assert_eq!(packets.len(), REPLAY_BYTES.div_ceil(1448));
        let mut expected_seq = img.snd_una();
        let mut total = 0;
        for p in &packets {
            let repr = parse_logged(p).expect("a well-formed segment");
            assert_eq!(repr.tcp.seq_number.0, expected_seq);
            assert_eq!(repr.tcp.ack_number.0, img.rcv_nxt);
            assert_eq!(repr.tcp.options.timestamps.map(|t| t.tsval), Some(77));
            let payload = repr.tcp.payload;
            assert_eq!(payload, &img.send_queue[total..total + payload.len()]);
            expected_seq = expected_seq.wrapping_add(payload.len() as u32);
            total += payload.len();
        }
        assert_eq!(total, REPLAY_BYTES);
        // The checksum is right: a strict parse accepts it.
        let strict = tandem_wire::tcp::ParseChecks {
            verify_checksum: true,
            options: tandem_wire::tcp::OptionsMode::Linux,
        };
        assert!(tandem_wire::IpTcpRepr::parse(&packets[0], strict).is_ok());
    }

    #[test]
    fn a_lone_unacknowledged_fin_is_replayed() {
        let img = image(TcpState::FinWait1, 0);
        let packets = replay_head(&img);
        assert_eq!(packets.len(), 1);
        let repr = parse_logged(&packets[0]).unwrap();
        assert!(repr.tcp.flags.contains(tandem_wire::TcpFlags::FIN));
        assert_eq!(repr.tcp.seq_number.0, img.write_seq.wrapping_sub(1));
        // Nothing to replay when everything was acknowledged.
        assert!(replay_head(&image(TcpState::FinWait2, 0)).is_empty());
        assert!(replay_head(&image(TcpState::Established, 0)).is_empty());
    }
}
