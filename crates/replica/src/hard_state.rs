//! Raft's hard state — the term and the vote — persisted across restarts
//! (docs/membership.md).
//!
//! The log lives in memory, but a node keeps its voter identity (its slot)
//! when it restarts, so it must remember the two things Raft needs to stay
//! safe across a restart: the latest term it has seen (so it never accepts
//! a leader of an older term as proof that it has caught up) and whom it
//! voted for in that term (so it never votes twice). Both change only at
//! elections, so the fsync this costs is rare.
//!
//! The file is one line, `term vote`, written by temporary file, fsync,
//! rename and fsync of the directory: after a crash it holds either the old
//! or the new state, never a torn one.

use std::fs;
use std::io;
use std::path::Path;

/// The hard state a node must not forget: the term it has reached and the
/// raft id it voted for in that term (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardState {
    /// The highest term this node has seen.
    pub term: u64,
    /// The raft id of the candidate it voted for in `term` (0: none).
    pub vote: u64,
}

/// Reads the hard state stored at `path`; `None` if the file does not exist
/// (a node that never reached its first `ready`, which has sent nothing).
///
/// A file that exists but does not parse is an error, never read as "no
/// state": forgetting a term or a vote is exactly what it must not do.
pub fn load_hard_state(path: &Path) -> io::Result<Option<HardState>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: not a Raft hard state ({why}); remove it only together with this node's incarnation file and only if the whole group is re-created",
                path.display()
            ),
        )
    };
    let mut fields = text.split_whitespace();
    let mut number = |what: &str| -> io::Result<u64> {
        fields
            .next()
            .ok_or_else(|| bad(&format!("no {what}")))?
            .parse()
            .map_err(|e| bad(&format!("{what}: {e}")))
    };
    let term = number("term")?;
    let vote = number("vote")?;
    if fields.next().is_some() {
        return Err(bad("trailing fields"));
    }
    Ok(Some(HardState { term, vote }))
}

/// Writes `state` to `path` durably (temporary file, fsync, rename, fsync of
/// the directory). The caller does this before sending any message of the
/// `ready` that produced `state`.
pub fn save_hard_state(path: &Path, state: &HardState) -> io::Result<()> {
    crate::id::write_durably(path, format!("{} {}\n", state.term, state.vote).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_state_round_trips_and_refuses_garbage() {
        let dir = std::env::temp_dir().join(format!("tandem-hs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("raft-state");
        let _ = fs::remove_file(&path);
        assert_eq!(load_hard_state(&path).unwrap(), None);
        let hs = HardState { term: 7, vote: 3 };
        save_hard_state(&path, &hs).unwrap();
        assert_eq!(load_hard_state(&path).unwrap(), Some(hs));
        for garbage in ["", "7", "7 x", "7 3 9", "-1 2"] {
            fs::write(&path, garbage).unwrap();
            assert_eq!(
                load_hard_state(&path).unwrap_err().kind(),
                io::ErrorKind::InvalidData,
                "{garbage:?}"
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
