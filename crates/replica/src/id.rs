//! Node identity: (slot, incarnation), and the incarnation file bumped at
//! every start.
//!
//! docs/architecture.md §3.8: the log lives in memory, so a restarted process has forgotten
//! entries it may have acknowledged. It must therefore never come back as the
//! voter it was: its Raft id includes an incarnation that grows at every start
//! and is fsynced before the process talks to anyone.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Bits of the Raft id that hold the incarnation (the slot takes the rest).
pub const INCARNATION_BITS: u32 = 48;
/// The largest incarnation that fits in a Raft id.
pub const MAX_INCARNATION: u64 = (1 << INCARNATION_BITS) - 1;
/// The incarnation every founding member of a cluster has: the nodes of a
/// fresh cluster all start at 1 and bootstrap together; any higher
/// incarnation is a restart and joins as a learner.
pub const FIRST_INCARNATION: u64 = 1;
/// Incarnation 0 never names a process; in an envelope's destination it means
/// "whichever incarnation holds the slot" and is accepted only for join
/// requests (a restarted node does not know its peers' incarnations).
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

    /// The u64 id raft-rs knows the node by: slot in the high 16 bits,
    /// incarnation in the low 48. Never 0 for a real process (incarnations
    /// start at 1), which raft-rs reserves for "no node".
    pub fn raft_id(self) -> u64 {
        (u64::from(self.slot) << INCARNATION_BITS) | (self.incarnation & MAX_INCARNATION)
    }

    /// The inverse of [`NodeId::raft_id`].
    pub fn from_raft_id(id: u64) -> Self {
        Self {
            slot: (id >> INCARNATION_BITS) as u16,
            incarnation: id & MAX_INCARNATION,
        }
    }
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
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    {
        let mut f = fs::File::create(tmp)?;
        writeln!(f, "{next}")?;
        f.sync_all()?;
    }
    fs::rename(tmp, path)?;
    // The rename itself must be durable, or a crash could bring back the old
    // number: fsync the directory entry.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::File::open(dir)?.sync_all()?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_id_round_trips() {
        for (slot, inc) in [(0, 1), (1, 1), (7, 42), (u16::MAX, MAX_INCARNATION)] {
            let id = NodeId::new(slot, inc);
            assert_ne!(id.raft_id(), 0);
            assert_eq!(NodeId::from_raft_id(id.raft_id()), id);
        }
        // Same slot, later incarnation: a different raft id.
        assert_ne!(NodeId::new(2, 1).raft_id(), NodeId::new(2, 2).raft_id());
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
