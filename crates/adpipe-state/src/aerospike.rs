//! The Aerospike backend (feature `aerospike`): the shared networked store
//! for deployments whose state outgrows local disks (design.md, "State";
//! RTB House ran 80 TB on it).
//!
//! Layout: namespace as configured, set `<service>_<store>` (sets are few:
//! one per service and store, never per partition), record key = partition
//! (4 bytes big-endian) + the store key, bins `t` (event time) and `v`
//! (value). A record expires on the server `ttl` after its event time
//! (Aerospike's wall-clock TTL); within an instance, buckets older than the
//! last `expire` cutoff read as absent, as in every backend.
//!
//! Newest bucket wins: a put carries a filter expression `t ≤ new t`, so an
//! older copy never overwrites a newer one (the server answers
//! FILTERED_OUT, which is success here).
//!
//! The store is **shared**: its data lives on the server, written before
//! the output it belongs to is acknowledged, and outlives any instance, so
//! a partition moving to another host needs no replay
//! ([`StateStore::shared`]); the changelog is still written (switching
//! backends stays possible), checkpoints and wipes do nothing.
//!
//! The trait is synchronous (a local store answers in microseconds); this
//! backend waits for the network inside `tokio::task::block_in_place`, so
//! it needs the multi-threaded runtime every service runs on.
//!
//! Tested by `tests/conformance.rs` when `AEROSPIKE_HOSTS` is set (no
//! server can be installed on the development machine: those tests print
//! that they were skipped).

use std::future::Future;
use std::sync::Arc;

use aerospike::expressions::{int_bin, int_val, le};
use aerospike::{
    Bin, Bins, Client, ClientPolicy, Error, Expiration, Key, ReadPolicy, ResultCode, Value,
    WritePolicy,
};
use bytes::Bytes;

use crate::{Buckets, Entry, Expired, Mark, Put, StateError, StateStore, StoreStats};

/// Connects to an Aerospike cluster (`host:port[,host:port…]`).
pub async fn connect(hosts: &str) -> Result<Arc<Client>, StateError> {
    Client::new(&ClientPolicy::default(), &hosts.to_owned())
        .await
        .map(Arc::new)
        .map_err(|error| failure(hosts, &error))
}

fn failure(what: &str, error: &Error) -> StateError {
    StateError::Disk {
        path: format!("aerospike {what}"),
        message: error.to_string(),
    }
}

/// One partition's state in an Aerospike set.
pub struct AerospikeStore {
    client: Arc<Client>,
    namespace: String,
    set: String,
    partition: i32,
    ttl_ms: i64,
    layout: Buckets,
    /// Buckets below this read as absent (the last `expire` cutoff's).
    floor: i64,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for AerospikeStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AerospikeStore")
            .field("namespace", &self.namespace)
            .field("set", &self.set)
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

impl AerospikeStore {
    /// The store of `partition` in `namespace`/`set`, entries kept `ttl_ms`
    /// after their event time. Call inside the tokio runtime.
    pub fn new(
        client: Arc<Client>,
        namespace: &str,
        set: &str,
        partition: i32,
        ttl_ms: i64,
    ) -> Self {
        AerospikeStore {
            client,
            namespace: namespace.to_owned(),
            set: set.to_owned(),
            partition,
            ttl_ms,
            layout: Buckets::for_ttl(ttl_ms),
            floor: i64::MIN,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    fn key(&self, key: &[u8]) -> Result<Key, StateError> {
        let bytes = [&self.partition.to_be_bytes()[..], key].concat();
        Key::new(self.namespace.clone(), self.set.clone(), Value::Blob(bytes))
            .map_err(|error| failure("key", &error))
    }

    fn wait<T>(&self, future: impl Future<Output = T>) -> T {
        tokio::task::block_in_place(|| self.runtime.block_on(future))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

impl StateStore for AerospikeStore {
    fn get(&self, key: &[u8]) -> Result<Option<Entry>, StateError> {
        let key = self.key(key)?;
        let record = match self.wait(self.client.get(&ReadPolicy::default(), &key, Bins::All)) {
            Ok(record) => record,
            Err(error) if error.matches(&[ResultCode::KeyNotFoundError]) => return Ok(None),
            Err(error) => return Err(failure("get", &error)),
        };
        let event_time = match record.bins.get("t") {
            Some(Value::Int(time)) => *time,
            _ => {
                return Err(StateError::Changelog(
                    "an aerospike record without its event time".to_owned(),
                ));
            }
        };
        if self.layout.of(event_time) < self.floor {
            return Ok(None);
        }
        let value = match record.bins.get("v") {
            Some(Value::Blob(bytes)) => Bytes::copy_from_slice(bytes),
            _ => Bytes::new(),
        };
        Ok(Some(Entry { event_time, value }))
    }

    fn put(&mut self, key: &[u8], event_time: i64, value: &[u8]) -> Result<Put, StateError> {
        let remaining_ms = event_time
            .saturating_add(self.ttl_ms)
            .saturating_sub(now_ms());
        if self.layout.of(event_time) < self.floor || remaining_ms <= 0 {
            return Ok(Put::Expired);
        }
        let mut policy = WritePolicy {
            expiration: Expiration::Seconds(
                u32::try_from(remaining_ms / 1_000 + 1).unwrap_or(u32::MAX),
            ),
            ..WritePolicy::default()
        };
        // Newest bucket wins: never overwrite a later copy.
        policy.base_policy.filter_expression =
            Some(le(int_bin("t".to_owned()), int_val(event_time)));
        let bins = [
            Bin::new("t".to_owned(), Value::Int(event_time)),
            Bin::new("v".to_owned(), Value::Blob(value.to_vec())),
        ];
        let key = self.key(key)?;
        match self.wait(self.client.put(&policy, &key, &bins)) {
            Ok(()) => Ok(Put::Stored),
            Err(error) if error.matches(&[ResultCode::FilteredOut]) => Ok(Put::Stored),
            Err(error) => Err(failure("put", &error)),
        }
    }

    fn remove(&mut self, key: &[u8]) -> Result<(), StateError> {
        let key = self.key(key)?;
        self.wait(self.client.delete(&WritePolicy::default(), &key))
            .map(drop)
            .map_err(|error| failure("delete", &error))
    }

    fn expire(&mut self, cutoff: i64) -> Result<Expired, StateError> {
        // The server expires records by their TTL; older buckets read as
        // absent from now on.
        self.floor = self.floor.max(self.layout.floor_for(cutoff));
        Ok(Expired::default())
    }

    fn stats(&self) -> StoreStats {
        // Sizes live on the server (asinfo); not counted per partition here.
        StoreStats::default()
    }

    fn mark(&self) -> Option<Mark> {
        None
    }

    fn checkpoint(&mut self, _mark: &Mark) -> Result<(), StateError> {
        Ok(()) // every write is already on the server
    }

    fn wipe(&mut self) -> Result<(), StateError> {
        Ok(()) // shared data is never wiped by one instance
    }

    fn shared(&self) -> bool {
        true
    }
}
