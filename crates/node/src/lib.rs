//! The tandem node.
//!
//! Today it knows how to move live TCP connections, with the virtual IP, from
//! one node to another ([`migration`]), and how to capture client packets
//! and decide their fate ([`capture`]). The replicated daemon — log, apply,
//! takeover — grows here in later steps.

pub mod admin;
pub mod capture;
pub mod config;
pub mod group;
pub mod migration;
pub mod proposer;
pub mod report;
pub mod site;
pub mod transport;
