//! The image of one TCP endpoint: everything TCP_REPAIR needs to rebuild it.
//!
//! An image is a plain value. It is produced by dumping a live socket (the
//! Linux layer) or, later, by shadow TCP from logged packets; it crosses the
//! network serialised with serde; it is consumed by a restore on another
//! node. Sequence numbers are kept exactly as the kernel reports them
//! (32-bit, wrapping), never normalised, so an image restored elsewhere
//! continues the very same byte stream.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// TCP states, numbered as the kernel numbers them (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

impl TcpState {
    /// The state for the kernel's numeric `tcpi_state`, if it is one.
    pub fn from_kernel(value: u8) -> Option<TcpState> {
        Some(match value {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            3 => TcpState::SynRecv,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            10 => TcpState::Listen,
            11 => TcpState::Closing,
            12 => TcpState::NewSynRecv,
            _ => return None,
        })
    }

    /// The kernel's number for this state.
    pub fn to_kernel(self) -> u8 {
        match self {
            TcpState::Established => 1,
            TcpState::SynSent => 2,
            TcpState::SynRecv => 3,
            TcpState::FinWait1 => 4,
            TcpState::FinWait2 => 5,
            TcpState::TimeWait => 6,
            TcpState::Close => 7,
            TcpState::CloseWait => 8,
            TcpState::LastAck => 9,
            TcpState::Listen => 10,
            TcpState::Closing => 11,
            TcpState::NewSynRecv => 12,
        }
    }

    /// The name the kernel and `ss` use.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
        }
    }
}

impl std::fmt::Display for TcpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Window scale shifts negotiated in the handshake (RFC 7323), 0..=14 each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WindowScale {
    /// As the kernel's `tcpi_snd_wscale`: the shift we apply to the windows the peer sends.
    pub snd: u8,
    /// As `tcpi_rcv_wscale`: the shift we apply to the windows we advertise.
    pub rcv: u8,
}

/// The TCP options negotiated in the handshake, as TCP_REPAIR_OPTIONS sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TcpOptions {
    /// Selective acknowledgements (RFC 2018) were agreed.
    pub sack: bool,
    /// Timestamps (RFC 7323) were agreed.
    pub timestamps: bool,
    /// Window scaling was agreed, with these shifts.
    pub window_scale: Option<WindowScale>,
}

/// The five fields of `struct tcp_repair_window`, in the kernel's units
/// (bytes, already scaled) and sequence space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct RepairWindow {
    /// Sequence number of the segment that last updated the send window.
    pub snd_wl1: u32,
    /// The peer's receive window: how much we may have in flight.
    pub snd_wnd: u32,
    /// The largest window the peer ever offered.
    pub max_window: u32,
    /// The receive window we last advertised.
    pub rcv_wnd: u32,
    /// rcv_nxt when we last advertised a window.
    pub rcv_wup: u32,
}

/// One TCP endpoint, complete enough to rebuild it on another machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SocketImage {
    /// Our address (the service's virtual IP and port).
    pub local: SocketAddr,
    /// The client's address.
    pub peer: SocketAddr,
    /// The state the socket was in when dumped.
    pub state: TcpState,
    /// The next sequence number expected from the peer (after `recv_queue`).
    pub rcv_nxt: u32,
    /// The sequence number after the last byte queued for sending (after
    /// `send_queue`, and after our FIN if one was queued).
    pub write_seq: u32,
    /// Bytes the peer sent and we acknowledged, not yet read by the application.
    pub recv_queue: Vec<u8>,
    /// Bytes written by the application and not yet acknowledged by the peer:
    /// first those in flight, then `unsent_len` bytes never sent.
    pub send_queue: Vec<u8>,
    /// How many bytes at the end of `send_queue` were never sent.
    pub unsent_len: u32,
    /// The maximum segment size (the clamp the kernel reports in repair mode).
    pub mss: u32,
    /// Options agreed in the handshake.
    pub options: TcpOptions,
    /// The socket's timestamp clock (TCP_TIMESTAMP), in ms ticks.
    pub timestamp: u32,
    /// The window state (TCP_REPAIR_WINDOW).
    pub window: RepairWindow,
}

/// Why an image cannot be restored as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("local address {local} and peer address {peer} are of different families")]
    MixedFamilies { local: SocketAddr, peer: SocketAddr },
    #[error("{unsent} unsent bytes claimed but the send queue holds only {queued}")]
    UnsentBeyondQueue { unsent: u32, queued: usize },
    #[error("window scale shift {0} is above the maximum of 14")]
    WindowScaleTooLarge(u8),
    #[error("a maximum segment size of {0} is not usable")]
    BadMss(u32),
    #[error("queues of {0} bytes do not fit TCP's 32-bit sequence space")]
    QueueTooLarge(usize),
}

/// The largest shift RFC 7323 allows.
pub const MAX_WINDOW_SCALE: u8 = 14;

impl SocketImage {
    /// Whether `write_seq` counts a FIN of ours that the peer has not
    /// acknowledged yet (as the kernel counts it in these states).
    pub fn fin_unacked(&self) -> bool {
        matches!(
            self.state,
            TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck
        )
    }

    /// The oldest unacknowledged sequence number: the start of `send_queue`
    /// (write_seq, less the queued bytes, less our FIN while unacknowledged).
    pub fn snd_una(&self) -> u32 {
        self.write_seq
            .wrapping_sub(self.send_queue.len() as u32)
            .wrapping_sub(u32::from(self.fin_unacked()))
    }

    /// The sequence number of the first byte of `recv_queue`.
    pub fn recv_queue_seq(&self) -> u32 {
        self.rcv_nxt.wrapping_sub(self.recv_queue.len() as u32)
    }

    /// Bytes sent at least once and not yet acknowledged.
    pub fn unacked(&self) -> &[u8] {
        let sent = self.send_queue.len() - (self.unsent_len as usize).min(self.send_queue.len());
        &self.send_queue[..sent]
    }

    /// Bytes queued by the application and never sent.
    pub fn unsent(&self) -> &[u8] {
        let sent = self.unacked().len();
        &self.send_queue[sent..]
    }

    /// Checks what a restore relies on; a dumped image always passes.
    pub fn validate(&self) -> Result<(), ImageError> {
        if self.local.is_ipv4() != self.peer.is_ipv4() {
            return Err(ImageError::MixedFamilies {
                local: self.local,
                peer: self.peer,
            });
        }
        if self.unsent_len as usize > self.send_queue.len() {
            return Err(ImageError::UnsentBeyondQueue {
                unsent: self.unsent_len,
                queued: self.send_queue.len(),
            });
        }
        if let Some(ws) = self.options.window_scale {
            let worst = ws.snd.max(ws.rcv);
            if worst > MAX_WINDOW_SCALE {
                return Err(ImageError::WindowScaleTooLarge(worst));
            }
        }
        if !(64..=65535).contains(&self.mss) {
            return Err(ImageError::BadMss(self.mss));
        }
        for len in [self.send_queue.len(), self.recv_queue.len()] {
            if len >= (1usize << 31) {
                return Err(ImageError::QueueTooLarge(len));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> SocketImage {
        SocketImage {
            local: "198.18.0.100:7000".parse().unwrap(),
            peer: "198.18.0.2:40000".parse().unwrap(),
            state: TcpState::Established,
            rcv_nxt: 5,
            write_seq: 3,
            recv_queue: b"hello".to_vec(),
            send_queue: b"abcdef".to_vec(),
            unsent_len: 2,
            mss: 1448,
            options: TcpOptions {
                sack: true,
                timestamps: true,
                window_scale: Some(WindowScale { snd: 7, rcv: 7 }),
            },
            timestamp: 123,
            window: RepairWindow::default(),
        }
    }

    #[test]
    fn sequence_arithmetic_wraps() {
        let image = sample();
        // write_seq 3 with 6 bytes queued: the queue started 3 bytes before zero.
        assert_eq!(image.snd_una(), u32::MAX - 2);
        assert_eq!(image.recv_queue_seq(), 0);
        assert_eq!(image.unacked(), b"abcd");
        assert_eq!(image.unsent(), b"ef");
    }

    #[test]
    fn an_unacknowledged_fin_is_not_part_of_snd_una() {
        let mut image = sample();
        let open = image.snd_una();
        // Our FIN queued after the same bytes: write_seq one further, snd_una
        // where it was.
        image.state = TcpState::FinWait1;
        image.write_seq = image.write_seq.wrapping_add(1);
        assert_eq!(image.snd_una(), open);
        // FIN and bytes acknowledged: nothing left, snd_una = write_seq.
        image.state = TcpState::FinWait2;
        image.send_queue.clear();
        image.unsent_len = 0;
        assert_eq!(image.snd_una(), image.write_seq);
    }

    #[test]
    fn validation_names_the_problem() {
        let mut image = sample();
        assert_eq!(image.validate(), Ok(()));
        image.unsent_len = 7;
        assert!(matches!(
            image.validate(),
            Err(ImageError::UnsentBeyondQueue {
                unsent: 7,
                queued: 6
            })
        ));
        let mut image = sample();
        image.options.window_scale = Some(WindowScale { snd: 15, rcv: 0 });
        assert_eq!(image.validate(), Err(ImageError::WindowScaleTooLarge(15)));
        let mut image = sample();
        image.peer = "[2001:db8::1]:5".parse().unwrap();
        assert!(matches!(
            image.validate(),
            Err(ImageError::MixedFamilies { .. })
        ));
        let mut image = sample();
        image.mss = 10;
        assert_eq!(image.validate(), Err(ImageError::BadMss(10)));
    }

    #[test]
    fn kernel_state_numbers_round_trip() {
        for n in 0..=255u8 {
            if let Some(state) = TcpState::from_kernel(n) {
                assert_eq!(state.to_kernel(), n);
            } else {
                assert!(n == 0 || n > 12, "state {n} should be known");
            }
        }
    }

    fn arb_image() -> impl Strategy<Value = SocketImage> {
        (
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<u32>(),
            (
                any::<bool>(),
                any::<bool>(),
                proptest::option::of((0u8..15, 0u8..15)),
            ),
            any::<[u32; 5]>(),
        )
            .prop_map(
                |(la, lp, pa, pp, rcv_nxt, write_seq, recv_queue, send_queue, ts, opts, w)| {
                    let unsent_len = (ts as usize % (send_queue.len() + 1)) as u32;
                    SocketImage {
                        local: (la, lp).into(),
                        peer: (pa, pp).into(),
                        state: TcpState::Established,
                        rcv_nxt,
                        write_seq,
                        recv_queue,
                        send_queue,
                        unsent_len,
                        mss: 536 + ts % 9000,
                        options: TcpOptions {
                            sack: opts.0,
                            timestamps: opts.1,
                            window_scale: opts.2.map(|(snd, rcv)| WindowScale { snd, rcv }),
                        },
                        timestamp: ts,
                        window: RepairWindow {
                            snd_wl1: w[0],
                            snd_wnd: w[1],
                            max_window: w[2],
                            rcv_wnd: w[3],
                            rcv_wup: w[4],
                        },
                    }
                },
            )
    }

    proptest! {
        /// An image survives both wire encodings unchanged, so it can cross the network.
        #[test]
        fn serialisation_round_trips(image in arb_image()) {
            let bytes = postcard::to_stdvec(&image).unwrap();
            prop_assert_eq!(&postcard::from_bytes::<SocketImage>(&bytes).unwrap(), &image);
            let json = serde_json::to_string(&image).unwrap();
            prop_assert_eq!(&serde_json::from_str::<SocketImage>(&json).unwrap(), &image);
            prop_assert!(image.unacked().len() + image.unsent().len() == image.send_queue.len());
        }

        /// Truncated or corrupted bytes give an error, never a panic.
        #[test]
        fn corrupted_bytes_never_panic(image in arb_image(), cut in any::<usize>(), flip in any::<(usize, u8)>()) {
            let mut bytes = postcard::to_stdvec(&image).unwrap();
            let cut = cut % (bytes.len() + 1);
            bytes.truncate(cut);
            if !bytes.is_empty() {
                let at = flip.0 % bytes.len();
                bytes[at] ^= flip.1;
            }
            let _ = postcard::from_bytes::<SocketImage>(&bytes);
        }
    }
}
