//! The deduplicator's seen ids behind the shared state trait
//! (`adpipe_state::StateStore`), so that it is restored and checkpointed by
//! the same mechanism as every stateful service (`ChangelogReader`): local
//! data (its snapshot file) when its mark still describes the changelog,
//! plus the changelog from the mark; else the whole changelog.
//!
//! Why its own backend rather than `DiskStore` or `MemoryStore`: a seen id
//! is 16 bytes of hash and an event time — 24 bytes an entry in
//! [`DedupState`] against ~340 in a generic map and ~5 µs a lookup on disk
//! (README, "The state store"; `cargo bench -p adpipe-deduplicator --bench
//! state`). Its window (24 h) fits in memory; the changelog and the
//! snapshot make it durable.
//!
//! Keys are event ids (the changelog's keys), hashed on the way in; values
//! are empty (the changelog value is the first copy's event time alone).
//! Recovery is [`adpipe_state::Recovery::CleanOnly`] by construction: the
//! snapshot is written only at a checkpoint, taken only on a drained
//! revoke, so it never holds an id whose output may be missing.

use std::path::PathBuf;

use adpipe_state::{Bytes, Entry, Expired, Mark, Put, StateError, StateStore, StoreStats};
use tracing::warn;

use crate::snapshot;
use crate::state::{DedupState, id_hash};

/// A partition's seen ids, with the snapshot file that is its local data.
#[derive(Debug)]
pub struct DedupStore {
    state: DedupState,
    /// Where checkpoints are saved (`None`: never saved).
    path: Option<PathBuf>,
    mark: Option<Mark>,
    window_ms: i64,
    lateness_ms: i64,
}

impl DedupStore {
    /// A store over `state` that is never saved (tests).
    pub fn new(state: DedupState) -> Self {
        let (window_ms, lateness_ms) = state.window();
        DedupStore {
            state,
            path: None,
            mark: None,
            window_ms,
            lateness_ms,
        }
    }

    /// The store whose snapshot lives at `path`, loaded from it when it is
    /// a valid snapshot (whether it describes the changelog is checked by
    /// the restore).
    pub fn open(path: PathBuf, window_ms: i64, lateness_ms: i64) -> Self {
        let mut state = DedupState::new(window_ms, lateness_ms);
        let mark = match snapshot::load(&path, &mut state) {
            Ok(mark) => mark,
            Err(error) => {
                warn!(%error, "ignoring the snapshot; replaying the changelog");
                None
            }
        };
        DedupStore {
            state,
            path: Some(path),
            mark,
            window_ms,
            lateness_ms,
        }
    }

    /// The seen ids.
    pub fn state(&self) -> &DedupState {
        &self.state
    }

    /// The seen ids, to decide on events.
    pub fn state_mut(&mut self) -> &mut DedupState {
        &mut self.state
    }

    /// The seen ids, taken out.
    pub fn into_state(self) -> DedupState {
        self.state
    }
}

fn io(path: &std::path::Path, error: impl std::fmt::Display) -> StateError {
    StateError::Disk {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

impl StateStore for DedupStore {
    fn get(&self, key: &[u8]) -> Result<Option<Entry>, StateError> {
        Ok(self
            .state
            .first_seen(id_hash(&String::from_utf8_lossy(key)))
            .map(|event_time| Entry {
                event_time,
                value: Bytes::new(),
            }))
    }

    fn put(&mut self, key: &[u8], event_time: i64, _value: &[u8]) -> Result<Put, StateError> {
        if event_time < self.state.cutoff() {
            return Ok(Put::Expired);
        }
        self.state
            .remember(id_hash(&String::from_utf8_lossy(key)), event_time);
        Ok(Put::Stored)
    }

    fn remove(&mut self, key: &[u8]) -> Result<(), StateError> {
        self.state.forget(id_hash(&String::from_utf8_lossy(key)));
        Ok(())
    }

    fn expire(&mut self, _cutoff: i64) -> Result<Expired, StateError> {
        // Ids expire as the window moves, on every insert (`DedupState`).
        Ok(Expired::default())
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            entries: self.state.len() as u64,
            memory_bytes: self.state.heap_bytes() as u64,
            disk_bytes: 0,
            buckets: 0,
        }
    }

    fn mark(&self) -> Option<Mark> {
        self.mark.clone()
    }

    fn checkpoint(&mut self, mark: &Mark) -> Result<(), StateError> {
        let Some(path) = &self.path else {
            return Ok(()); // never saved: nothing local to trust
        };
        let bytes = snapshot::encode(mark, self.state.entries());
        snapshot::store(path, &bytes).map_err(|error| io(path, error))?;
        self.mark = Some(mark.clone());
        Ok(())
    }

    fn wipe(&mut self) -> Result<(), StateError> {
        self.state = DedupState::new(self.window_ms, self.lateness_ms);
        self.mark = None;
        let Some(path) = &self.path else {
            return Ok(());
        };
        match std::fs::remove_file(path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(io(path, error)),
            _ => Ok(()),
        }
    }
}
