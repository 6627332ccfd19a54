//! Snapshots of the shadow TCP table (docs/architecture.md §3.7).
//!
//! The table serialises with serde (the node writes it with postcard, inside
//! the service group's snapshot); decoding goes through [`TableSnapshot`],
//! which checks every invariant the per-segment code relies on before it
//! hands out a [`ShadowTable`], and then checks the rebuilt table's state
//! hash against the one recorded when the snapshot was taken. Bad bytes give
//! a [`SnapshotError`], never a panic and never a table that would misbehave
//! later.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::hash::Fnv64;
use super::segment::ConnKey;
use super::table::{Entry, ShadowTable};
use super::ShadowConfig;

// The table knows nothing of snapshots: this module reads its entries,
// writes them, and rebuilds a table through `ShadowTable::from_entries`,
// which checks what the per-segment code relies on.

/// The table snapshot format's version.
const TABLE_VERSION: u32 = 1;

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes do not decode.
    #[error("the snapshot does not decode: {0}")]
    Decode(String),
    /// Written by a format this code does not know.
    #[error("unknown snapshot version {0}")]
    Version(u32),
    /// Decodes, but breaks an invariant of the state it claims to be.
    #[error("inconsistent snapshot: {0}")]
    Invalid(String),
    /// Decodes and is consistent, but the rebuilt state's hash differs from
    /// the one recorded when it was taken.
    #[error("restored state hash {restored:#018x} differs from the recorded {recorded:#018x}")]
    HashMismatch {
        /// The hash recorded in the snapshot.
        recorded: u64,
        /// The hash of the state rebuilt from it.
        restored: u64,
    },
    /// The service's (or the SDK runtime's) part was refused.
    #[error("the service's snapshot was refused: {0}")]
    Service(String),
}

/// Appends an integrity check to an encoded snapshot: FNV-1a 64 of the
/// bytes, 8 bytes little-endian. The state hash inside a snapshot does not
/// cover everything (output bytes are covered by their running hash, which
/// cannot be recomputed from the unacknowledged tail alone), so this catches
/// corruption the state hash would miss.
pub fn seal(mut body: Vec<u8>) -> Vec<u8> {
    let check = Fnv64::new().bytes(&body).finish();
    body.extend_from_slice(&check.to_le_bytes());
    body
}

/// Checks and strips what [`seal`] appended.
pub fn unseal(bytes: &[u8]) -> Result<&[u8], SnapshotError> {
    let Some(cut) = bytes.len().checked_sub(8) else {
        return Err(SnapshotError::Decode("too short".into()));
    };
    let (body, check) = bytes.split_at(cut);
    let mut want = [0u8; 8];
    want.copy_from_slice(check);
    if Fnv64::new().bytes(body).finish() != u64::from_le_bytes(want) {
        return Err(SnapshotError::Decode("integrity check failed".into()));
    }
    Ok(body)
}

/// What [`ShadowTable`]'s `Serialize` writes (borrowed).
#[derive(Serialize)]
struct TableOut<'a> {
    version: u32,
    entries: &'a BTreeMap<ConnKey, Entry>,
    hash: u64,
}

impl Serialize for ShadowTable {
    /// The entries and the state hash; decode with [`TableSnapshot`].
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TableOut {
            version: TABLE_VERSION,
            entries: self.entries(),
            hash: self.state_hash(),
        }
        .serialize(s)
    }
}

impl ShadowTable {
    /// The whole table, encoded with postcard: every entry with its
    /// reassembly and output buffers, held-back input, TIME_WAIT entries and
    /// the state hash (checked on restore), then an integrity check
    /// ([`seal`]). The configuration is not included: every replica
    /// has it. (A bigger snapshot embeds the table through its `Serialize`
    /// impl and decodes it with [`TableSnapshot`].)
    pub fn snapshot(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail.
        seal(postcard::to_stdvec(self).unwrap_or_default())
    }

    /// Rebuilds a table from [`ShadowTable::snapshot`]'s bytes, under
    /// `config` (the one every replica uses). Bad bytes are an error.
    pub fn restore(config: ShadowConfig, bytes: &[u8]) -> Result<ShadowTable, SnapshotError> {
        let body = unseal(bytes)?;
        let snapshot: TableSnapshot =
            postcard::from_bytes(body).map_err(|e| SnapshotError::Decode(e.to_string()))?;
        snapshot.into_table(config)
    }
}

/// A decoded, not yet checked, shadow TCP table: deserialise this (it reads
/// what `ShadowTable`'s `Serialize` wrote), then [`TableSnapshot::into_table`].
#[derive(Debug, Deserialize)]
pub struct TableSnapshot {
    version: u32,
    entries: BTreeMap<ConnKey, Entry>,
    hash: u64,
}

impl TableSnapshot {
    /// Checks the decoded table against `config` (which must be the
    /// configuration every replica uses) and rebuilds it; its state hash
    /// must equal the one recorded in the snapshot.
    pub fn into_table(self, config: ShadowConfig) -> Result<ShadowTable, SnapshotError> {
        if self.version != TABLE_VERSION {
            return Err(SnapshotError::Version(self.version));
        }
        let table =
            ShadowTable::from_entries(config, self.entries).map_err(SnapshotError::Invalid)?;
        let restored = table.state_hash();
        if restored != self.hash {
            return Err(SnapshotError::HashMismatch {
                recorded: self.hash,
                restored,
            });
        }
        Ok(table)
    }
}
