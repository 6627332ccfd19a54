//! The sans-I/O heart of tandem.
//!
//! Nothing in this crate touches a socket, a file or a clock: values go in,
//! values come out, so every replica computes the same thing from the same
//! input (docs/architecture.md §3.2, §3.4). It holds:
//! - [`classify`] and [`cookie`]: what the primary does with each captured
//!   packet (commit, release, drop), with the SYN-flood defence;
//! - [`packet`]: a parsed packet turned into what the rest of core reads;
//! - [`shadow`]: shadow TCP, every connection's state rebuilt from logged
//!   packets, which produces a [`SocketImage`] for each connection a new
//!   primary rebuilds;
//! - [`image`]: the [`SocketImage`], the description of one TCP endpoint
//!   that `tandem-sys` dumps and restores with TCP_REPAIR;
//! - [`sdk`]: the service SDK and the runtime that applies events to a
//!   service deterministically.
//!
//! The TCP vocabulary (flags, options, sequence numbers) is `tandem-wire`'s.

// No `unsafe` in this crate; in its test build only, the shadow tests'
// counting allocator (a `GlobalAlloc` cannot be written without it) is
// allowed by name.
#![cfg_attr(not(test), forbid(unsafe_code))]
#![cfg_attr(test, deny(unsafe_code))]

pub mod classify;
pub mod cookie;
pub mod image;
pub mod packet;
pub mod sdk;
pub mod shadow;

pub use image::{ImageError, RepairWindow, SocketImage, TcpOptions, TcpState, WindowScale};
