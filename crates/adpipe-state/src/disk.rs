//! The disk backend: one fjall database per partition, one keyspace per
//! time bucket.
//!
//! Layout: `<dir>/` holds the database; keyspace `b<bucket>` the entries of
//! one bucket (value = event time, 8 bytes big-endian, then the value —
//! the changelog's format); keyspace `meta` the mark and the floor. Expiry
//! deletes whole keyspaces (milliseconds, whatever their size; never
//! `Keyspace::clear`, which pins the journal: fjall#288).
//!
//! Durability: writes go to fjall's journal buffer in the process (not even
//! a write(2) per put: that syscall was a fifth of the joiner's CPU); a
//! checkpoint writes and fsyncs it. A crash loses the unwritten tail — a
//! suffix, the journal keeps order — which the changelog replay from the
//! mark restores (every change reaches the changelog before its input is
//! committed). With
//! [`Recovery::CleanOnly`] the first change after opening or a checkpoint
//! removes the mark from `meta` (journaled before the change, so a
//! recovered change implies a recovered removal): data with changes after
//! its checkpoint is never trusted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::changelog::{decode_value, encode_value};
use crate::{Buckets, Entry, Expired, Mark, Put, Recovery, StateError, StateStore, StoreStats};

const MARK: &[u8] = b"mark";
const FLOOR: &[u8] = b"floor";

/// How a disk store is opened.
#[derive(Debug, Clone)]
pub struct DiskOptions {
    /// The bucket layout.
    pub buckets: Buckets,
    /// Size cap on disk (tables plus journal): over it, the oldest buckets
    /// are dropped early at the next [`StateStore::expire`].
    pub max_bytes: u64,
    /// Which local data survives an unclean stop.
    pub recovery: Recovery,
    /// Block cache (fjall's default: 32 MiB).
    pub cache_bytes: u64,
    /// Journal size after which memtables are flushed; bounds the replay
    /// an open does (fjall's default, 512 MiB, took seconds; minimum 64).
    pub max_journal_bytes: u64,
    /// Memtable size per bucket.
    pub memtable_bytes: u64,
}

impl DiskOptions {
    /// Options for a TTL: [`Buckets::for_ttl`], a 64 MiB journal, 8 MiB
    /// memtables and a 32 MiB cache (the joiner's defaults).
    pub fn new(ttl_ms: i64, max_bytes: u64, recovery: Recovery) -> Self {
        DiskOptions {
            buckets: Buckets::for_ttl(ttl_ms),
            max_bytes,
            recovery,
            cache_bytes: 32 << 20,
            max_journal_bytes: 64 << 20,
            memtable_bytes: 8 << 20,
        }
    }
}

/// A partition's state on local disk.
pub struct DiskStore {
    path: PathBuf,
    db: Database,
    meta: Keyspace,
    buckets: BTreeMap<i64, Keyspace>,
    options: DiskOptions,
    /// Buckets below this are expired: puts into them are refused.
    floor: i64,
    mark: Option<Mark>,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DiskStore")
            .field("path", &self.path)
            .field("buckets", &self.buckets.keys().collect::<Vec<_>>())
            .field("floor", &self.floor)
            .field("mark", &self.mark)
            .finish_non_exhaustive()
    }
}

fn bucket_name(bucket: i64) -> String {
    format!("b{bucket}")
}

impl DiskStore {
    /// Opens (or creates) the store in `dir`. Fails when another process
    /// holds it.
    pub fn open(dir: &Path, options: DiskOptions) -> Result<Self, StateError> {
        let error = |error: fjall::Error| disk_error(dir, error);
        std::fs::create_dir_all(dir).map_err(|io| disk_error(dir, io))?;
        let db = Database::builder(dir)
            .cache_size(options.cache_bytes)
            .max_journaling_size(options.max_journal_bytes.max(64 << 20))
            // One flush/compaction thread per partition's store: a worker
            // runs many partitions, each with its own database.
            .worker_threads(1)
            .manual_journal_persist(true)
            .open()
            .map_err(error)?;
        let meta = db
            .keyspace("meta", || {
                KeyspaceCreateOptions::default().manual_journal_persist(true)
            })
            .map_err(error)?;
        let mut buckets = BTreeMap::new();
        for name in db.list_keyspace_names() {
            if let Some(bucket) = name.strip_prefix('b').and_then(|n| n.parse::<i64>().ok()) {
                let keyspace = db
                    .keyspace(&name, || {
                        KeyspaceCreateOptions::default().manual_journal_persist(true)
                    })
                    .map_err(error)?;
                buckets.insert(bucket, keyspace);
            }
        }
        let floor = match meta.get(FLOOR).map_err(error)? {
            Some(bytes) => <[u8; 8]>::try_from(&bytes[..])
                .map(i64::from_le_bytes)
                .unwrap_or(i64::MIN),
            None => i64::MIN,
        };
        let mark = meta
            .get(MARK)
            .map_err(error)?
            .and_then(|bytes| Mark::decode(&bytes));
        Ok(DiskStore {
            path: dir.to_owned(),
            db,
            meta,
            buckets,
            options,
            floor,
            mark,
        })
    }

    fn error(&self, error: fjall::Error) -> StateError {
        disk_error(&self.path, error)
    }

    /// Withdraws the mark before the first change after it, when local data
    /// newer than a checkpoint must not be trusted.
    fn before_change(&mut self) -> Result<(), StateError> {
        if self.options.recovery == Recovery::CleanOnly && self.mark.is_some() {
            self.meta.remove(MARK).map_err(|e| self.error(e))?;
            self.mark = None;
        }
        Ok(())
    }

    fn bucket(&mut self, bucket: i64) -> Result<&Keyspace, StateError> {
        if !self.buckets.contains_key(&bucket) {
            let memtable = self.options.memtable_bytes;
            let keyspace = self
                .db
                .keyspace(&bucket_name(bucket), || {
                    KeyspaceCreateOptions::default()
                        .max_memtable_size(memtable)
                        .manual_journal_persist(true)
                })
                .map_err(|e| self.error(e))?;
            self.buckets.insert(bucket, keyspace);
        }
        Ok(&self.buckets[&bucket])
    }

    fn drop_bucket(&mut self, bucket: i64) -> Result<(), StateError> {
        if let Some(keyspace) = self.buckets.remove(&bucket) {
            self.db
                .delete_keyspace(keyspace)
                .map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    fn set_floor(&mut self, floor: i64) -> Result<(), StateError> {
        if floor > self.floor {
            self.floor = floor;
            self.meta
                .insert(FLOOR, floor.to_le_bytes())
                .map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    fn data_bytes(&self) -> u64 {
        self.buckets.values().map(Keyspace::disk_space).sum::<u64>()
            + self.db.journal_disk_space().unwrap_or(0)
    }
}

fn disk_error(path: &Path, error: impl std::fmt::Display) -> StateError {
    StateError::Disk {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

impl StateStore for DiskStore {
    fn get(&self, key: &[u8]) -> Result<Option<Entry>, StateError> {
        for keyspace in self.buckets.values().rev() {
            if let Some(bytes) = keyspace.get(key).map_err(|e| self.error(e))? {
                let (event_time, value) = decode_value(&bytes)?;
                return Ok(Some(Entry {
                    event_time,
                    value: Bytes::copy_from_slice(value),
                }));
            }
        }
        Ok(None)
    }

    fn put(&mut self, key: &[u8], event_time: i64, value: &[u8]) -> Result<Put, StateError> {
        let bucket = self.options.buckets.of(event_time);
        if bucket < self.floor {
            return Ok(Put::Expired);
        }
        self.before_change()?;
        let keyspace = self.bucket(bucket)?.clone();
        keyspace
            .insert(key, encode_value(event_time, value))
            .map_err(|e| self.error(e))?;
        Ok(Put::Stored)
    }

    fn remove(&mut self, key: &[u8]) -> Result<(), StateError> {
        self.before_change()?;
        for keyspace in self.buckets.values() {
            // A tombstone only where the key is: most buckets never had it.
            if keyspace.contains_key(key).map_err(|e| self.error(e))? {
                keyspace.remove(key).map_err(|e| self.error(e))?;
            }
        }
        Ok(())
    }

    fn expire(&mut self, cutoff: i64) -> Result<Expired, StateError> {
        let floor = self.options.buckets.floor_for(cutoff);
        let mut expired = Expired::default();
        let old: Vec<i64> = self.buckets.range(..floor).map(|(&b, _)| b).collect();
        for bucket in old {
            self.drop_bucket(bucket)?;
            expired.buckets += 1;
        }
        self.set_floor(floor)?;
        while self.buckets.len() > 1 && self.data_bytes() > self.options.max_bytes {
            let Some((&oldest, _)) = self.buckets.first_key_value() else {
                break;
            };
            self.drop_bucket(oldest)?;
            self.set_floor(oldest + 1)?;
            expired.evicted += 1;
        }
        Ok(expired)
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            entries: self
                .buckets
                .values()
                .map(|keyspace| keyspace.approximate_len() as u64)
                .sum(),
            memory_bytes: self.db.write_buffer_size(),
            disk_bytes: self.data_bytes(),
            buckets: self.buckets.len(),
        }
    }

    fn mark(&self) -> Option<Mark> {
        self.mark.clone()
    }

    fn checkpoint(&mut self, mark: &Mark) -> Result<(), StateError> {
        self.meta
            .insert(MARK, mark.encode())
            .map_err(|e| self.error(e))?;
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.error(e))?;
        self.mark = Some(mark.clone());
        Ok(())
    }

    fn wipe(&mut self) -> Result<(), StateError> {
        let all: Vec<i64> = self.buckets.keys().copied().collect();
        for bucket in all {
            self.drop_bucket(bucket)?;
        }
        self.meta.remove(MARK).map_err(|e| self.error(e))?;
        self.meta.remove(FLOOR).map_err(|e| self.error(e))?;
        self.floor = i64::MIN;
        self.mark = None;
        Ok(())
    }
}
