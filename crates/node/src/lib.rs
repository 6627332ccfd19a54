//! The tandem node.
//!
//! The daemon ([`daemon`], `tandem node --config FILE`) runs one replicated
//! service. What it decides is [`machine`] (sans-IO, unit-tested and
//! simulated); the daemon owns the file descriptors and performs the
//! machine's requests: it captures client packets ([`capture`],
//! [`proposer`]), commits them through the replica group ([`transport`]
//! between nodes), applies them on every node ([`group`]), and answers
//! `tandem status` ([`admin`], [`report`]). Moving a plain process's
//! connections is another crate, `tandem-moves`.

#![forbid(unsafe_code)]

pub mod admin;
pub mod capture;
pub mod config;
pub mod daemon;
pub mod faults;
pub mod group;
pub mod machine;
pub mod metrics;
pub mod parameters;
pub mod proposer;
pub mod report;
pub mod services;
pub mod transport;
