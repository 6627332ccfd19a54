//! What the `serde` feature needs beyond derives: the checked decoding of
//! [`SackBlocks`] (its `len` must not exceed the four slots it indexes).
//!
//! The replicated state (shadow TCP's snapshots) stores these types, so
//! their encodings are part of the snapshot format: change them only with a
//! new snapshot version.

use crate::tcp::{SackBlock, SackBlocks, MAX_SACK_BLOCKS};

/// The shape [`SackBlocks`] serialises as, decoded before it is checked.
#[derive(serde::Deserialize)]
pub(crate) struct SackBlocksRepr {
    blocks: [SackBlock; MAX_SACK_BLOCKS],
    len: u8,
}

impl TryFrom<SackBlocksRepr> for SackBlocks {
    type Error = String;

    fn try_from(repr: SackBlocksRepr) -> Result<SackBlocks, String> {
        if usize::from(repr.len) > MAX_SACK_BLOCKS {
            return Err(format!("{} SACK blocks, at most 4", repr.len));
        }
        Ok(SackBlocks {
            blocks: repr.blocks,
            len: repr.len,
        })
    }
}
