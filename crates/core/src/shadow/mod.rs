//! Shadow TCP (work in progress).
pub mod hash;
pub mod reasm;
pub mod segment;
pub mod seq;
