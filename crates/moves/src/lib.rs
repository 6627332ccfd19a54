//! Plain-process connection moves: the live TCP sockets of an ordinary,
//! unreplicated server process moved, with the virtual IP, from one node to
//! another (docs/architecture.md §3.6).
//!
//! This is a separate product from the replicated node (`tandem-node`): no
//! log, no shadow TCP; the sockets are dumped with TCP_REPAIR where they
//! are and rebuilt on the target (docs/kernel-notes.md §2).
//! - [`site`]: one node's network namespace with the handles a move needs,
//!   opened in advance;
//! - [`migration`]: the move itself — lock, dump, transfer, restore, move
//!   the VIP, go live — with roll-back;
//! - [`echo`]: a plain echo server, the "legacy application" a move carries
//!   (`tandem tool echo-server`);
//! - [`scenario`]: a lab, the echo server behind the VIP, clients and
//!   moves, shared by `tandem demo --moves`, `tandem bench migrate` and the
//!   tests.

#![forbid(unsafe_code)]

pub mod echo;
pub mod migration;
pub mod scenario;
pub mod site;
