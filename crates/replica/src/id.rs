//! Node identity: (slot, incarnation), and the incarnation file bumped at
//! every start.
//!
//! docs/architecture.md §3.8 and docs/membership.md: the log lives in memory, so a
//! restarted process has forgotten entries it may have acknowledged. Its
//! Raft identity is its slot, stable across restarts (the voter set never
//! changes when a node restarts); the incarnation, which grows at every start
//! and is fsynced before the process talks to anyone, tells its peers that
//! the process behind the slot is new: envelopes are keyed by it, and a
//! leader that sees a new incarnation forgets what the old one acknowledged.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Bits of [`NodeId::packed`] that hold the incarnation (the slot takes the
/// rest).
pub const INCARNATION_BITS: u32 = 48;
/// The largest incarnation that fits in a Raft id.
pub const MAX_INCARNATION: u64 = (1 << INCARNATION_BITS) - 1;
/// The incarnation every founding member of a cluster has: the nodes of a
/// fresh cluster all start at 1 and bootstrap together; any higher
/// incarnation is a restart, which abstains from elections until it has
/// caught up (docs/membership.md).
pub const FIRST_INCARNATION: u64 = 1;
/// Incarnation 0 never names a process; in an envelope's destination it means
/// "whichever incarnation holds the slot" and is accepted only for join
/// announcements (a restarted node does not know its peers' incarnations).
pub const ANY_INCARNATION: u64 = 0;

/// A node's identity: the slot it occupies in the cluster (its place in the
/// configuration file: address, name) and the incarnation of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId {
    /// The configured position of the node; stable across restarts.
    pub slot: u16,
    /// Which start of the process on that slot; grows at every start.
    pub incarnation: u64,
}

impl NodeId {
    /// A node id; `incarnation` must fit in [`INCARNATION_BITS`] bits.
    pub fn new(slot: u16, incarnation: u64) -> Self {
        debug_assert!(incarnation <= MAX_INCARNATION);
        Self { slot, incarnation }
    }

    /// The u64 id raft-rs knows the node by: its slot, plus one (raft-rs
    /// reserves 0 for "no node"). The same for every incarnation of the
    /// slot: a restart does not change the voter set.
    pub fn raft_id(self) -> u64 {
        raft_id_of_slot(self.slot)
    }

    /// The id packed in one u64 (slot in the high 16 bits, incarnation in the
    /// low 48), as log entries name their proposer. Never 0 for a real
    /// process (incarnations start at 1).
    pub fn packed(self) -> u64 {
        (u64::from(self.slot) << INCARNATION_BITS) | (self.incarnation & MAX_INCARNATION)
    }

    /// The inverse of [`NodeId::packed`].
    pub fn from_packed(id: u64) -> Self {
        Self {
            slot: (id >> INCARNATION_BITS) as u16,
            incarnation: id & MAX_INCARNATION,
        }
    }
}

/// The raft-rs id of `slot` (see [`NodeId::raft_id`]).
pub fn raft_id_of_slot(slot: u16) -> u64 {
    u64::from(slot) + 1
}

/// The slot a raft-rs id names (the inverse of [`raft_id_of_slot`]; 0, "no
/// node", has none).
pub fn slot_of_raft_id(id: u64) -> Option<u16> {
    id.checked_sub(1).and_then(|s| u16::try_from(s).ok())
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.slot, self.incarnation)
    }
}

/// Reads the incarnation stored at `path` (0 if the file does not exist),
/// adds one, writes it back durably (temporary file, fsync, rename, fsync of
/// the directory) and returns the new value. Called once at every start,
/// before the node sends anything.
///
/// A file that exists but does not hold a number is an error, never treated
/// as 0: restarting at a low incarnation could reuse an id that once voted.
pub fn bump_incarnation(path: &Path) -> io::Result<u64> {
    let current = match fs::read_to_string(path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: not an incarnation number ({e}); fix or remove the file only if this node's data is also gone",
                    path.display()
                ),
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    if current >= MAX_INCARNATION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: incarnation {current} is exhausted", path.display()),
        ));
    }
    let next = current + 1;
    write_durably(path, format!("{next}\n").as_bytes())?;
    Ok(next)
}

/// Replaces the file at `path` with `contents` so that a crash leaves
/// either the old or the new contents: a temporary file, fsync, rename, then
/// an fsync of the directory so that the rename itself is durable (else a
/// crash could bring back the old file).
pub(crate) fn write_durably(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    {
        let mut f = fs::File::create(tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for (slot, inc) in [(0, 1), (1, 1), (7, 42), (u16::MAX, MAX_INCARNATION)] {
            let id = NodeId::new(slot, inc);
            assert_ne!(id.raft_id(), 0);
            assert_ne!(id.packed(), 0);
            assert_eq!(NodeId::from_packed(id.packed()), id);
            assert_eq!(slot_of_raft_id(id.raft_id()), Some(slot));
        }
        assert_eq!(slot_of_raft_id(0), None);
        // Same slot, later incarnation: the same voter, a different process.
        assert_eq!(NodeId::new(2, 1).raft_id(), NodeId::new(2, 2).raft_id());
        assert_ne!(NodeId::new(2, 1).packed(), NodeId::new(2, 2).packed());
    }

    #[test]
    fn bump_counts_up_and_persists() {
        let dir = std::env::temp_dir().join(format!("tandem-inc-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("incarnation");
        let _ = fs::remove_file(&path);
        assert_eq!(bump_incarnation(&path).unwrap(), 1);
        assert_eq!(bump_incarnation(&path).unwrap(), 2);
        assert_eq!(fs::read_to_string(&path).unwrap().trim(), "2");
        fs::write(&path, "garbage").unwrap();
        assert_eq!(
            bump_incarnation(&path).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        fs::write(&path, format!("{MAX_INCARNATION}")).unwrap();
        assert!(bump_incarnation(&path).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
