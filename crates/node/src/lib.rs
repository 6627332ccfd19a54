//! The tandem node.
//!
//! Today it knows how to move live TCP connections, with the virtual IP, from
//! one node to another ([`migration`]). The replicated daemon — capture, log,
//! apply, takeover — grows here in later steps.

pub mod migration;
pub mod site;
