//! The state store of every stateful adpipe service (design.md, "State").
//!
//! Contract:
//! - one store per task (partition i of a service's inputs), owned by the
//!   task's step: no locks, no sharing;
//! - entries are `key → (event_time, value)`, placed in **time buckets** by
//!   their event time. Expiry drops whole buckets older than a cutoff
//!   ([`StateStore::expire`]) — never key by key — and a size cap drops the
//!   oldest buckets early, counted (`adpipe_state_evicted_buckets_total`);
//! - a key may live in several buckets (written again with a later event
//!   time); [`StateStore::get`] returns the copy in the newest bucket;
//! - every change is also written, by the service, to a compacted
//!   **changelog** topic (partition i for partition i) *after* the output it
//!   belongs to is acknowledged; the local data plus the changelog from the
//!   store's [`Mark`] rebuild the state after a restart, and the changelog
//!   alone rebuilds it on another host ([`changelog::restore`]);
//! - [`Recovery`] says whether local data written after the last mark may be
//!   trusted after an unclean stop (see there).
//!
//! Backends: [`DiskStore`] (fjall, on local disk: the default, for state
//! larger than memory), [`MemoryStore`] (a map per bucket: small state,
//! tests, the baseline) and, with the feature `aerospike`, the shared
//! networked `aerospike::AerospikeStore`. All pass the same conformance
//! tests (`tests/conformance.rs`; Aerospike's only where `AEROSPIKE_HOSTS`
//! names a server).
#![warn(missing_docs)]

#[cfg(feature = "aerospike")]
pub mod aerospike;
pub mod bucket;
pub mod changelog;
mod disk;
pub mod file;
mod memory;
pub mod metrics;

pub use bucket::Buckets;
pub use bytes::Bytes;
pub use changelog::Mark;
pub use disk::{DiskOptions, DiskStore};
pub use memory::MemoryStore;

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The event time the entry was stored under (its bucket's).
    pub event_time: i64,
    /// The value.
    pub value: Bytes,
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Stored.
    Stored,
    /// Not stored: its bucket is already expired (older than the store's
    /// floor), so it would be dropped at once.
    Expired,
}

/// Sizes, for the state metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Entries (approximate for the disk store: an LSM tree counts a key
    /// written twice until compaction merges it).
    pub entries: u64,
    /// Bytes held in memory by the store's data (not its caches).
    pub memory_bytes: u64,
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// Live buckets.
    pub buckets: usize,
}

/// What an expiry dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Buckets dropped because they left the window.
    pub buckets: usize,
    /// Buckets dropped early because the store was over its size cap.
    pub evicted: usize,
}

/// Which local data may be trusted after an unclean stop (kill -9, power
/// loss), when a partition is assigned again on the same host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Local data is trusted only as of a clean [`StateStore::checkpoint`]
    /// taken after every output was acknowledged: the first change after a
    /// checkpoint withdraws it. For state that *claims* outputs exist (the
    /// deduplicator's seen ids: an id whose output was lost in the crash
    /// must not be remembered).
    CleanOnly,
    /// Local data written after the last mark may be kept: replaying the
    /// changelog from the mark over it converges, because an entry whose
    /// output was lost is written again when its input is replayed. For
    /// state that only *records inputs* (the joiner's impressions and
    /// clicks).
    LocalAhead,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The disk store failed (IO, corruption, locked by another process).
    #[error("state store {path}: {message}")]
    Disk {
        /// The store's directory.
        path: String,
        /// What failed.
        message: String,
    },
    /// A changelog record or a mark could not be read.
    #[error("state changelog: {0}")]
    Changelog(String),
    /// The changelog's cluster refused this client: its TLS or SASL
    /// settings are wrong (never retried).
    #[error("{hint}: {0}", hint = adpipe_kafka_client::REFUSED_HINT)]
    Refused(String),
    /// Kafka failed while restoring or checkpointing.
    #[error("state changelog {topic}-{partition}: {message}")]
    Kafka {
        /// Changelog topic.
        topic: String,
        /// Changelog partition.
        partition: i32,
        /// What failed.
        message: String,
    },
}

/// One partition's state.
///
/// Calls are synchronous and fast (memory, or a local LSM tree: a few
/// microseconds); a step calls them from `process` after its last `.await`.
pub trait StateStore: Send + 'static {
    /// The entry under `key` in the newest bucket holding it.
    fn get(&self, key: &[u8]) -> Result<Option<Entry>, StateError>;

    /// Stores `value` under `key` in the bucket of `event_time`.
    fn put(&mut self, key: &[u8], event_time: i64, value: &[u8]) -> Result<Put, StateError>;

    /// Removes `key` from every bucket.
    fn remove(&mut self, key: &[u8]) -> Result<(), StateError>;

    /// Drops every bucket that ends at or before `cutoff` (event time, ms),
    /// then, while the store is over its size cap, the oldest buckets but
    /// the newest. Entries are never deleted one by one.
    fn expire(&mut self, cutoff: i64) -> Result<Expired, StateError>;

    /// Sizes.
    fn stats(&self) -> StoreStats;

    /// The changelog position the local data is complete up to, if the
    /// local data may be used (see [`Recovery`]).
    fn mark(&self) -> Option<Mark>;

    /// Makes the local data durable and records that it is complete up to
    /// `mark` — called on a drained revoke or shutdown, when every output
    /// and changelog record was acknowledged.
    fn checkpoint(&mut self, mark: &Mark) -> Result<(), StateError>;

    /// Forgets everything, mark included (the changelog alone will rebuild
    /// the state).
    fn wipe(&mut self) -> Result<(), StateError>;

    /// Whether the data lives outside the instance (a networked store every
    /// instance sees): then a partition needs no restore when it moves.
    fn shared(&self) -> bool {
        false
    }

    /// Applies one changelog record: `value` is a changelog value
    /// ([`changelog::encode_value`]), `None` a tombstone.
    fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StateError> {
        match value {
            None => self.remove(key),
            Some(value) => {
                let (event_time, value) = changelog::decode_value(value)?;
                self.put(key, event_time, value).map(drop)
            }
        }
    }
}
