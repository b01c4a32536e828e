//! The in-memory backend: a hash map per time bucket, saved to a snapshot
//! file on checkpoint.
//!
//! For state that fits in memory (tests, small windows) and as the
//! baseline the disk store is measured against. Its local data is the
//! snapshot file alone, written atomically (temporary file, fsync, rename)
//! only at a checkpoint: after any stop, clean or not, the file describes
//! the state at its mark exactly, so both [`crate::Recovery`] policies hold.
//!
//! Snapshot format (little-endian): magic `ADPSTATE`, version u32 (1), mark
//! (u32 length + [`Mark::encode`]), floor bucket i64, entry count u64, then
//! per entry key (u32 length + bytes), event time i64, value (u32 length +
//! bytes); an xxh3-64 checksum of all preceding bytes ends it. A file that
//! fails any check is ignored (the changelog rebuilds the state).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use bytes::Bytes;
use tracing::warn;

use crate::file::{Reader, store_atomically};
use crate::{Buckets, Entry, Expired, Mark, Put, StateError, StateStore, StoreStats};

const MAGIC: &[u8; 8] = b"ADPSTATE";
const VERSION: u32 = 1;
/// Bytes a map entry costs beyond its key and value: the two `Bytes`
/// handles, the event time, the hash table's slot and its share of empty
/// slots, and the allocator's rounding.
const ENTRY_OVERHEAD: u64 = 96;

/// A partition's state in memory.
#[derive(Debug)]
pub struct MemoryStore {
    buckets: BTreeMap<i64, HashMap<Bytes, (i64, Bytes)>>,
    layout: Buckets,
    /// Buckets below this are expired: puts into them are refused.
    floor: i64,
    max_bytes: u64,
    bytes: u64,
    entries: u64,
    mark: Option<Mark>,
    snapshot: Option<PathBuf>,
}

impl MemoryStore {
    /// An empty store, never saved.
    pub fn new(layout: Buckets, max_bytes: u64) -> Self {
        MemoryStore {
            buckets: BTreeMap::new(),
            layout,
            floor: i64::MIN,
            max_bytes,
            bytes: 0,
            entries: 0,
            mark: None,
            snapshot: None,
        }
    }

    /// A store saved to `path` on checkpoint, loaded from it if a valid
    /// snapshot is there. Both [`crate::Recovery`] policies are met (see
    /// the module docs), so none is asked for.
    pub fn open(path: PathBuf, layout: Buckets, max_bytes: u64) -> Self {
        let mut store = MemoryStore::new(layout, max_bytes);
        match std::fs::read(&path) {
            Ok(bytes) => {
                if let Err(reason) = store.load(&bytes) {
                    warn!(path = %path.display(), reason, "ignoring the state snapshot");
                    store = MemoryStore::new(layout, max_bytes);
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => warn!(path = %path.display(), %error, "cannot read the state snapshot"),
        }
        store.snapshot = Some(path);
        store
    }

    fn encode(&self, mark: &Mark) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(64 + self.bytes as usize);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        let mark = mark.encode();
        put_blob(&mut bytes, &mark);
        bytes.extend_from_slice(&self.floor.to_le_bytes());
        bytes.extend_from_slice(&self.entries.to_le_bytes());
        // Oldest bucket first, so a reload puts newer copies last.
        for bucket in self.buckets.values() {
            for (key, (event_time, value)) in bucket {
                put_blob(&mut bytes, key);
                bytes.extend_from_slice(&event_time.to_le_bytes());
                put_blob(&mut bytes, value);
            }
        }
        let checksum = xxhash_rust::xxh3::xxh3_64(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        bytes
    }

    fn load(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        let body_len = bytes.len().checked_sub(8).ok_or("truncated")?;
        let (body, checksum) = bytes.split_at(body_len);
        if xxhash_rust::xxh3::xxh3_64(body).to_le_bytes() != checksum {
            return Err("checksum mismatch");
        }
        let mut reader = Reader::new(body);
        if reader.take(MAGIC.len())? != MAGIC {
            return Err("wrong magic");
        }
        if reader.take(4)? != VERSION.to_le_bytes() {
            return Err("unknown version");
        }
        let mark = Mark::decode(reader.blob()?).ok_or("bad mark")?;
        let floor = i64::from_le_bytes(reader.array()?);
        let count = u64::from_le_bytes(reader.array()?);
        for _ in 0..count {
            let key = reader.blob()?;
            let event_time = i64::from_le_bytes(reader.array()?);
            let value = reader.blob()?;
            self.insert(key, event_time, value);
        }
        if !reader.is_done() {
            return Err("trailing bytes");
        }
        self.floor = floor;
        self.mark = Some(mark);
        Ok(())
    }

    fn insert(&mut self, key: &[u8], event_time: i64, value: &[u8]) {
        let bucket = self.buckets.entry(self.layout.of(event_time)).or_default();
        let size = entry_size(key.len(), value.len());
        match bucket.insert(
            Bytes::copy_from_slice(key),
            (event_time, Bytes::copy_from_slice(value)),
        ) {
            Some((_, old)) => {
                self.bytes = self.bytes + size - entry_size(key.len(), old.len());
            }
            None => {
                self.bytes += size;
                self.entries += 1;
            }
        }
    }

    fn drop_bucket(&mut self, bucket: i64) {
        if let Some(map) = self.buckets.remove(&bucket) {
            self.entries -= map.len() as u64;
            self.bytes -= map
                .iter()
                .map(|(key, (_, value))| entry_size(key.len(), value.len()))
                .sum::<u64>();
        }
        self.floor = self.floor.max(bucket + 1);
    }
}

fn entry_size(key: usize, value: usize) -> u64 {
    (key + value) as u64 + ENTRY_OVERHEAD
}

fn put_blob(bytes: &mut Vec<u8>, blob: &[u8]) {
    let len = u32::try_from(blob.len()).unwrap_or(u32::MAX);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&blob[..len as usize]);
}

impl StateStore for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Entry>, StateError> {
        Ok(self.buckets.values().rev().find_map(|bucket| {
            bucket.get(key).map(|(event_time, value)| Entry {
                event_time: *event_time,
                value: value.clone(),
            })
        }))
    }

    fn put(&mut self, key: &[u8], event_time: i64, value: &[u8]) -> Result<Put, StateError> {
        if self.layout.of(event_time) < self.floor {
            return Ok(Put::Expired);
        }
        self.insert(key, event_time, value);
        Ok(Put::Stored)
    }

    fn remove(&mut self, key: &[u8]) -> Result<(), StateError> {
        for bucket in self.buckets.values_mut() {
            if let Some((_, value)) = bucket.remove(key) {
                self.entries -= 1;
                self.bytes -= entry_size(key.len(), value.len());
            }
        }
        Ok(())
    }

    fn expire(&mut self, cutoff: i64) -> Result<Expired, StateError> {
        let floor = self.layout.floor_for(cutoff);
        let mut expired = Expired::default();
        while let Some((&oldest, _)) = self.buckets.first_key_value() {
            if oldest >= floor {
                break;
            }
            self.drop_bucket(oldest);
            expired.buckets += 1;
        }
        self.floor = self.floor.max(floor);
        while self.bytes > self.max_bytes && self.buckets.len() > 1 {
            if let Some((&oldest, _)) = self.buckets.first_key_value() {
                self.drop_bucket(oldest);
                expired.evicted += 1;
            }
        }
        Ok(expired)
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            entries: self.entries,
            memory_bytes: self.bytes,
            disk_bytes: 0,
            buckets: self.buckets.len(),
        }
    }

    fn mark(&self) -> Option<Mark> {
        self.mark.clone()
    }

    fn checkpoint(&mut self, mark: &Mark) -> Result<(), StateError> {
        let Some(path) = &self.snapshot else {
            return Ok(()); // never saved: nothing local to trust
        };
        store_atomically(path, &self.encode(mark)).map_err(|error| StateError::Disk {
            path: path.display().to_string(),
            message: error.to_string(),
        })?;
        self.mark = Some(mark.clone());
        Ok(())
    }

    fn wipe(&mut self) -> Result<(), StateError> {
        self.buckets.clear();
        self.bytes = 0;
        self.entries = 0;
        self.floor = i64::MIN;
        self.mark = None;
        if let Some(path) = &self.snapshot {
            match std::fs::remove_file(path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StateError::Disk {
                        path: path.display().to_string(),
                        message: error.to_string(),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}
