//! The library behind the `tandem` binary: what its subcommands share with
//! the end-to-end tests.

pub mod echo;
pub mod scenario;
pub mod synflood;
