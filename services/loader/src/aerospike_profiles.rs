//! Profiles in Aerospike (feature `aerospike`): the store RTB House's
//! bidders read. One record per user in `namespace/set` (`[profiles]
//! key-prefix`), one map bin per kind (`impression`, `click`,
//! `conversion`) from entry (the deterministic JSON) to event time.
//!
//! Per user and batch one `operate`: map puts (an entry already there is
//! the same key and value: nothing changes), a trim to the `keep` highest
//! ranks (newest event times; `remove_by_rank_range_from(-keep)`
//! inverted), reads of each bin's newest time — under `DontUpdate`, so the
//! write itself never moves the expiry; then a `touch` sets the record to
//! expire `ttl` after the newest event time of all its bins (the same
//! instant however often the same events are written).
//!
//! **Never run against a server here** (none can be installed on the
//! development machine): `tests/aerospike_profiles.rs` runs when
//! `AEROSPIKE_HOSTS` names one, and prints SKIPPED otherwise.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use adpipe_runtime::StepError;
use aerospike::operations::maps;
use aerospike::{
    Client, ClientPolicy, Expiration, Key, MapPolicy, MapReturnType, MapWriteFlags, Value,
    WritePolicy,
};

use crate::profiles::{ProfileEntry, ProfileStore};

/// The kinds, as bin names.
const KINDS: [&str; 3] = ["impression", "click", "conversion"];

/// Profiles in an Aerospike set.
pub struct AerospikeProfiles {
    client: Arc<Client>,
    namespace: String,
    set: String,
}

fn failed(error: &aerospike::Error) -> StepError {
    StepError::transient("aerospike", error.to_string())
}

impl AerospikeProfiles {
    /// Connects to `hosts` (`host:port[,…]`); profiles in `location`
    /// (`namespace/set`).
    pub async fn connect(hosts: &str, location: &str) -> Result<Self, String> {
        let (namespace, set) = location.split_once('/').ok_or_else(|| {
            format!("profiles.key-prefix {location:?}: expected \"namespace/set\"")
        })?;
        let client = Client::new(&ClientPolicy::default(), &hosts.to_owned())
            .await
            .map_err(|error| format!("Aerospike at {hosts}: {error}"))?;
        Ok(AerospikeProfiles {
            client: Arc::new(client),
            namespace: namespace.to_owned(),
            set: set.to_owned(),
        })
    }

    /// The record of `user`.
    pub fn key(&self, user: &str) -> Result<Key, StepError> {
        Key::new(
            self.namespace.clone(),
            self.set.clone(),
            Value::from(user.to_owned()),
        )
        .map_err(|error| failed(&error))
    }
}

/// The largest integer in an operate result (a list of times, or nil).
fn newest(value: &Value) -> Option<i64> {
    match value {
        Value::Int(time) => Some(*time),
        Value::List(values) | Value::MultiResult(values) => values.iter().filter_map(newest).max(),
        _ => None,
    }
}

impl ProfileStore for AerospikeProfiles {
    async fn upsert(
        &self,
        entries: &[&ProfileEntry],
        keep: usize,
        ttl: Duration,
    ) -> Result<(), StepError> {
        let mut by_user: BTreeMap<&str, Vec<&ProfileEntry>> = BTreeMap::new();
        for entry in entries {
            by_user.entry(&entry.user_id).or_default().push(entry);
        }
        let policy = MapPolicy::new(maps::MapOrder::KeyValueOrdered, MapWriteFlags::DEFAULT);
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        for (user, entries) in by_user {
            let key = self.key(user)?;
            let mut ops = Vec::new();
            for entry in &entries {
                ops.push(maps::put(
                    &policy,
                    entry.kind,
                    Value::from(entry.entry.clone()),
                    Value::from(entry.time_ms),
                ));
            }
            for kind in KINDS {
                if entries.iter().any(|entry| entry.kind == kind) {
                    ops.push(maps::remove_by_rank_range_from(
                        kind,
                        -keep,
                        MapReturnType::NONE.inverted(),
                    ));
                }
            }
            let reads = ops.len();
            for kind in KINDS {
                ops.push(maps::get_by_rank_range_from(kind, -1, MapReturnType::VALUE));
            }
            let write = WritePolicy {
                expiration: Expiration::DontUpdate,
                ..WritePolicy::default()
            };
            let record = self
                .client
                .operate(&write, &key, &ops)
                .await
                .map_err(|error| failed(&error))?;
            let newest_time = record
                .results
                .as_ref()
                .map(|results| results.iter().skip(reads).filter_map(newest).max())
                .unwrap_or_default();
            let Some(newest_time) = newest_time else {
                continue;
            };
            let expires_in_s =
                (newest_time.saturating_add(ttl_ms) - adpipe_runtime::event_time::now_ms()) / 1000;
            let touch = WritePolicy {
                expiration: Expiration::Seconds(
                    u32::try_from(expires_in_s.max(1)).unwrap_or(u32::MAX),
                ),
                ..WritePolicy::default()
            };
            self.client
                .touch(&touch, &key)
                .await
                .map_err(|error| failed(&error))?;
        }
        Ok(())
    }
}
