//! The sans-I/O heart of tandem.
//!
//! Nothing in this crate touches a socket, a file or a clock: values go in,
//! values come out, so every replica computes the same thing from the same
//! input. Today it holds the [`SocketImage`], the description of one TCP
//! endpoint that the Linux layer dumps and restores with TCP_REPAIR; shadow
//! TCP will produce the same value from logged packets.

pub mod classify;
pub mod cookie;
pub mod image;
pub mod sdk;
pub mod shadow;

pub use image::{ImageError, RepairWindow, SocketImage, TcpOptions, TcpState, WindowScale};
