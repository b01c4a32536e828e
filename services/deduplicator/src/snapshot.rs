//! The local on-disk copy of a partition's state, so that a restart reads
//! only the changelog's tail instead of all of it (Kafka Streams keeps a
//! local store plus a checkpoint offset for the same reason).
//!
//! One file per changelog partition, `<state-dir>/<changelog>/<partition>.snapshot`,
//! written atomically (temporary file, fsync, rename) when a partition is
//! revoked or the service stops *after every output and changelog entry was
//! acknowledged and none was lost*. It holds the remembered ids and the
//! changelog offset up to which they are complete. Restoring = load the
//! file, then replay the changelog from that offset. So the file never
//! claims an id whose output might be missing, and a stale file (an older
//! shutdown, another instance owned the partition since) only means
//! replaying more of the changelog.
//!
//! A snapshot is bound to what it describes: the cluster's id, the
//! changelog topic and partition, and the changelog record it ends at (key
//! and value of the record at `offset − 1`). A file from another cluster,
//! for another partition, or for a changelog that was deleted and created
//! again (whose offset `offset − 1` holds another record, or none) is
//! ignored — the changelog alone rebuilds the state — never loaded.
//!
//! Format (little-endian): magic `ADPDEDUP`, version u32 (3), the mark
//! (u32 length + `adpipe_state::Mark::encode`: offset, partition, cluster
//! id, topic, last record's key and value), entry count u64, entries (hash
//! hi u64, hash lo u64, event time i64), then an xxh3-64 checksum of all
//! preceding bytes. A file that fails any check is ignored (full replay),
//! never trusted — a version-2 file from before the shared state crate is
//! one of those: the first restart after the upgrade replays the changelog.

use std::path::{Path, PathBuf};

use adpipe_state::file::{Reader, store_atomically};

use crate::state::DedupState;

const MAGIC: &[u8; 8] = b"ADPDEDUP";
const VERSION: u32 = 3;
const ENTRY: usize = 24;

/// What a snapshot describes: which changelog, where, up to which record
/// (the shared state mark: `adpipe_state::Mark`).
pub use adpipe_state::Mark as Binding;

/// A decoded snapshot, its entries read in place from the file's bytes
/// (a partition's ids are not copied into a list before the table).
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// What it describes.
    pub binding: Binding,
    /// The entries' bytes, checked: `ENTRY` bytes each.
    entries: &'a [u8],
}

impl Snapshot<'_> {
    /// (id hash, first event time) of every entry.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = (u128, i64)> + '_ {
        self.entries.chunks_exact(ENTRY).map(|entry| {
            let word = |at: usize| entry[at..at + 8].try_into().expect("8 bytes");
            let id = (u128::from(u64::from_le_bytes(word(0))) << 64)
                | u128::from(u64::from_le_bytes(word(8)));
            (id, i64::from_le_bytes(word(16)))
        })
    }
}

/// Where a changelog partition's snapshot lives.
pub fn snapshot_path(state_dir: &Path, changelog: &str, partition: i32) -> PathBuf {
    state_dir
        .join(changelog)
        .join(format!("{partition}.snapshot"))
}

/// Encodes a snapshot.
pub fn encode(binding: &Binding, entries: impl ExactSizeIterator<Item = (u128, i64)>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64 + entries.len() * ENTRY + 8);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    let mark = binding.encode();
    bytes.extend_from_slice(&(mark.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&mark);
    bytes.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (id, event_time) in entries {
        bytes.extend_from_slice(&((id >> 64) as u64).to_le_bytes());
        bytes.extend_from_slice(&(id as u64).to_le_bytes());
        bytes.extend_from_slice(&event_time.to_le_bytes());
    }
    let checksum = xxhash_rust::xxh3::xxh3_64(&bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    bytes
}

/// Why a snapshot file was not used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Not a valid snapshot (truncated, wrong magic or version, bad checksum).
    #[error("{0}: not a valid snapshot ({1})")]
    Invalid(PathBuf, &'static str),
}

/// Decodes a snapshot, checking length, magic, version and checksum.
pub fn decode(bytes: &[u8]) -> Result<Snapshot<'_>, &'static str> {
    if bytes.len() < MAGIC.len() + 4 + 8 {
        return Err("truncated");
    }
    let (body, checksum) = bytes.split_at(bytes.len() - 8);
    if xxhash_rust::xxh3::xxh3_64(body).to_le_bytes() != checksum {
        return Err("checksum mismatch");
    }
    let mut reader = Reader::new(body);
    if reader.take(MAGIC.len())? != MAGIC {
        return Err("wrong magic");
    }
    if reader.array::<4>()? != VERSION.to_le_bytes() {
        return Err("unknown version");
    }
    let binding = Binding::decode(reader.blob()?).ok_or("bad mark")?;
    let count = u64::from_le_bytes(reader.array()?) as usize;
    if body.len()
        != reader
            .position()
            .saturating_add(count.saturating_mul(ENTRY))
    {
        return Err("entry count does not match the length");
    }
    let entries = reader.take(count.saturating_mul(ENTRY))?;
    Ok(Snapshot { binding, entries })
}

/// Loads the snapshot at `path` into `state` (sized for it at once) and
/// returns what it describes; `Ok(None)` when there is none. An invalid
/// file adds nothing to `state`: it is checked whole first.
pub fn load(path: &Path, state: &mut DedupState) -> Result<Option<Binding>, SnapshotError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(SnapshotError::Io(path.to_owned(), error)),
    };
    let snapshot =
        decode(&bytes).map_err(|reason| SnapshotError::Invalid(path.to_owned(), reason))?;
    let entries = snapshot.entries();
    state.reserve(entries.len());
    for (id, event_time) in entries {
        state.remember(id, event_time);
    }
    Ok(Some(snapshot.binding))
}

/// Writes `bytes` to `path` atomically: a crash leaves the old file or the
/// new one, never half of one.
pub fn store(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    store_atomically(path, bytes).map_err(|error| SnapshotError::Io(path.to_owned(), error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(offset: i64) -> Binding {
        Binding {
            cluster_id: "cluster-a".to_owned(),
            topic: "log".to_owned(),
            partition: 3,
            offset,
            last_record: (b"event-9".to_vec(), 7_i64.to_be_bytes().to_vec()),
        }
    }

    #[test]
    fn round_trips_and_rejects_every_corruption() {
        let entries = vec![(u128::MAX - 7, 1_000), (42, -5), (1 << 100, i64::MAX)];
        let bytes = encode(&binding(1234), entries.clone().into_iter());
        let decoded = decode(&bytes).expect("decodes");
        assert_eq!(decoded.binding, binding(1234));
        assert_eq!(decoded.entries().collect::<Vec<_>>(), entries);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(decode(&flipped).is_err(), "bit flip at {at}");
        }
    }

    #[test]
    fn stores_atomically_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("adpipe-snapshot-{}", std::process::id()));
        let path = snapshot_path(&dir, "log", 3);
        let empty = || DedupState::new(100, 0);
        assert!(
            load(&path, &mut empty())
                .expect("no file is fine")
                .is_none()
        );
        store(&path, &encode(&binding(9), [(1, 2)].into_iter())).expect("stored");
        store(&path, &encode(&binding(10), [(1, 2), (3, 4)].into_iter())).expect("replaced");
        let mut state = empty();
        let loaded = load(&path, &mut state).expect("loads").expect("exists");
        assert_eq!(loaded.offset, 10);
        assert_eq!(
            (state.first_seen(1), state.first_seen(3)),
            (Some(2), Some(4))
        );
        assert_eq!(state.len(), 2);
        std::fs::write(&path, b"garbage").expect("written");
        let mut state = empty();
        assert!(matches!(
            load(&path, &mut state),
            Err(SnapshotError::Invalid(..))
        ));
        assert!(state.is_empty(), "nothing of an invalid file is loaded");
        let _ = std::fs::remove_dir_all(dir);
    }
}
