//! The in-memory Raft log (docs/architecture.md §3.8: no fsync — an fsync costs more than
//! the whole replication round trip).
//!
//! It is safe only together with incarnations (see [`crate::id`]): a process
//! that lost this log never comes back as the voter that acknowledged it.
//!
//! Unlike raft-rs's `MemStorage`, the snapshot here carries the
//! application's bytes and sits exactly at the index the application
//! compacted to, with the configuration that was in force at that index.

use std::cell::Cell;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// An in-memory [`raft::Storage`]: a snapshot followed by the entries after it.
///
/// Invariant: `entries` are contiguous and start at `snapshot.index + 1`.
#[derive(Debug, Clone, Default)]
pub struct MemLog {
    hard_state: HardState,
    /// The configuration after the last applied configuration change
    /// (or the snapshot's): what raft-rs restarts from.
    conf_state: ConfState,
    snapshot: Snapshot,
    entries: Vec<Entry>,
    /// Set when raft-rs asked for a snapshot this log cannot give (the
    /// recipient is not in the snapshot's configuration: raft-rs would make
    /// it refuse the snapshot). Only the application can take a new one.
    /// A `Cell` because raft-rs asks through `&self`.
    snapshot_wanted: Cell<bool>,
}

impl MemLog {
    /// An empty log: a node that joins and waits to be sent a snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// A log bootstrapped with an initial configuration, as every founding
    /// voter of a cluster starts: a snapshot at index 1, term 1, holding
    /// `conf_state` and no application data (the service's initial state).
    ///
    /// Starting at index 1 rather than 0 means a node that joins later can
    /// never be sent entries from index 1: it always begins with a snapshot,
    /// so every replica's history starts from the same state.
    pub fn bootstrap(conf_state: ConfState) -> Self {
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 1;
        snapshot.mut_metadata().term = 1;
        snapshot.mut_metadata().set_conf_state(conf_state.clone());
        let hard_state = HardState {
            term: 1,
            commit: 1,
            ..Default::default()
        };
        Self {
            hard_state,
            conf_state,
            snapshot,
            entries: Vec::new(),
            snapshot_wanted: Cell::new(false),
        }
    }

    /// The index of the first entry still held (one past the snapshot).
    pub fn first(&self) -> u64 {
        self.snapshot.get_metadata().index + 1
    }

    /// The index of the last entry held (the snapshot's if there is none).
    pub fn last(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot.get_metadata().index, |e| e.index)
    }

    /// The persisted hard state (term, vote, commit).
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The current configuration.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The current snapshot (index 0 and no data if none was ever taken).
    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.snapshot
    }

    /// True (once) if a snapshot was requested that the current one cannot
    /// serve; the application should take a new one (`Replica::compact`).
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Number of entries held after the snapshot.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry follows the snapshot.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a new hard state.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// Records the commit index (raft-rs reports it apart from the hard state
    /// in a `LightReady`).
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    /// Records the configuration after a configuration change was applied.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Appends entries, truncating any conflicting suffix first (raft-rs
    /// guarantees the first new index is at most `last + 1`).
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), StorageError> {
        let Some(first_new) = ents.first().map(|e| e.index) else {
            return Ok(());
        };
        if first_new < self.first() {
            // Overwriting a compacted prefix would mean committed entries differ.
            return Err(StorageError::Compacted);
        }
        if first_new > self.last() + 1 {
            return Err(StorageError::Unavailable);
        }
        let keep = (first_new - self.first()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
        Ok(())
    }

    /// Replaces everything with a snapshot received from the leader.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let meta = snapshot.get_metadata();
        if meta.index < self.snapshot.get_metadata().index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.conf_state = meta.get_conf_state().clone();
        self.entries.clear();
        self.snapshot = snapshot;
        Ok(())
    }

    /// Takes a snapshot at `index` (which must be held, applied and
    /// committed) carrying `data` and the configuration `conf_state` in force
    /// at `index`, and drops every entry up to it.
    pub fn compact(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        if index <= self.snapshot.get_metadata().index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        if index > self.last() || index > self.hard_state.commit {
            return Err(StorageError::Unavailable);
        }
        let term = self.term_of(index)?;
        let drop = (index + 1 - self.first()) as usize;
        self.entries.drain(..drop);
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = index;
        snapshot.mut_metadata().term = term;
        snapshot.mut_metadata().set_conf_state(conf_state);
        snapshot.data = data.into();
        self.snapshot = snapshot;
        Ok(())
    }

    fn term_of(&self, idx: u64) -> Result<u64, StorageError> {
        let meta = self.snapshot.get_metadata();
        if idx == meta.index {
            return Ok(meta.term);
        }
        if idx < self.first() {
            return Err(StorageError::Compacted);
        }
        if idx > self.last() {
            return Err(StorageError::Unavailable);
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }
}

/// The longest prefix of `entries` whose encoded size stays within `max`
/// (always at least one entry), as `raft::util::limit_size` would leave it,
/// but cloning only what is kept. Cloning the whole range first made a
/// leader catching up a follower that missed seconds of log copy the whole
/// gap for every message of up to `max_size_per_msg` bytes: quadratic, and
/// long enough (~0.3 s for 2 s of log) to miss its own heartbeats.
fn take_limited(entries: &[Entry], max: Option<u64>) -> Vec<Entry> {
    let max = match max {
        None | Some(raft::NO_LIMIT) => return entries.to_vec(),
        Some(max) => max,
    };
    let mut size = 0u64;
    let mut kept = Vec::new();
    for entry in entries {
        size += u64::from(entry.compute_size());
        if !kept.is_empty() && size > max {
            break;
        }
        kept.push(entry.clone());
    }
    kept
}

impl Storage for MemLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - self.first()) as usize;
        let hi = (high - self.first()) as usize;
        Ok(take_limited(&self.entries[lo..hi], max_size.into()))
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.term_of(idx).map_err(raft::Error::Store)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // A snapshot older than asked for, or taken before the recipient was
        // added (it would refuse a snapshot whose configuration lacks it), is
        // not there yet: the application takes snapshots
        // (`Replica::compact`), raft cannot make one.
        let cs = self.snapshot.get_metadata().get_conf_state();
        let knows_to = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners_next)
            .any(|&id| id == to);
        if self.snapshot.get_metadata().index < request_index || !knows_to {
            self.snapshot_wanted.set(true);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    proptest::proptest! {
        #[test]
        fn take_limited_keeps_what_limit_size_keeps(
            sizes in proptest::collection::vec(0usize..300, 0..40),
            max in proptest::option::of(0u64..4000),
        ) {
            let entries: Vec<Entry> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| Entry {
                    index: i as u64 + 1,
                    term: 1,
                    data: vec![7; n].into(),
                    ..Default::default()
                })
                .collect();
            let mut expected = entries.clone();
            raft::util::limit_size(&mut expected, max);
            proptest::prop_assert_eq!(take_limited(&entries, max), expected);
        }
    }

    fn cs(voters: &[u64]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn bootstrap_starts_after_index_one() {
        let log = MemLog::bootstrap(cs(&[1, 2, 3]));
        assert_eq!((log.first(), log.last()), (2, 1));
        assert_eq!(log.term(1).unwrap(), 1);
        assert_eq!(
            log.initial_state().unwrap().conf_state.voters,
            vec![1, 2, 3]
        );
        assert_eq!(log.snapshot(0, 2).unwrap().get_metadata().index, 1);
        assert!(!log.take_snapshot_wanted());
        // Node 4 is not in the snapshot's configuration: it would refuse it.
        assert!(log.snapshot(0, 4).is_err());
        assert!(log.take_snapshot_wanted());
        assert!(!log.take_snapshot_wanted());
    }

    #[test]
    fn append_truncates_conflicts_and_rejects_gaps() {
        let mut log = MemLog::bootstrap(cs(&[1]));
        log.append(&[ent(2, 1), ent(3, 1), ent(4, 1)]).unwrap();
        log.append(&[ent(3, 2)]).unwrap();
        assert_eq!(log.last(), 3);
        assert_eq!(log.term(3).unwrap(), 2);
        assert_eq!(log.append(&[ent(9, 2)]), Err(StorageError::Unavailable));
        assert_eq!(log.append(&[ent(1, 2)]), Err(StorageError::Compacted));
        let got = log
            .entries(2, 4, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), vec![2, 3]);
        assert!(log
            .entries(5, 6, None, GetEntriesContext::empty(false))
            .is_err());
        assert!(matches!(
            log.term(7),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
    }

    #[test]
    fn compact_keeps_app_bytes_and_conf_at_index() {
        let mut log = MemLog::bootstrap(cs(&[1]));
        log.append(&[ent(2, 1), ent(3, 2), ent(4, 2)]).unwrap();
        // Not committed yet: refused.
        assert!(log.compact(3, cs(&[1]), b"s".to_vec()).is_err());
        log.set_commit(4);
        log.compact(3, cs(&[1, 5]), b"state@3".to_vec()).unwrap();
        assert_eq!((log.first(), log.last()), (4, 4));
        assert_eq!(log.term(3).unwrap(), 2);
        assert!(matches!(
            log.term(2),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        let snap = log.snapshot(0, 5).unwrap();
        assert!(log.snapshot(0, 6).is_err());
        assert_eq!(&snap.data[..], b"state@3");
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 5]);
        assert!(log.snapshot(4, 5).is_err());
        // Compacting backwards is refused, not a panic.
        assert!(log.compact(2, cs(&[1]), vec![]).is_err());
    }

    #[test]
    fn apply_snapshot_replaces_everything() {
        let mut log = MemLog::new();
        assert_eq!(log.last(), 0);
        let mut s = Snapshot::default();
        s.mut_metadata().index = 10;
        s.mut_metadata().term = 3;
        s.mut_metadata().set_conf_state(cs(&[1, 2]));
        log.apply_snapshot(s).unwrap();
        assert_eq!((log.first(), log.last()), (11, 10));
        assert_eq!(log.hard_state().commit, 10);
        assert_eq!(log.conf_state().voters, vec![1, 2]);
        log.append(&[ent(11, 3)]).unwrap();
        assert_eq!(log.last(), 11);
    }
}
