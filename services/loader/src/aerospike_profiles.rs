//! Profiles in Aerospike (feature `aerospike`): the store RTB House's
//! bidders read. One record per user in `namespace/set` (`[profiles]
//! key-prefix`), one map bin per kind (`impression`, `click`,
//! `conversion`) from entry (the deterministic JSON) to event time.
//!
//! Each record is written with its key (`send_key`), so a scan of the set
//! names the users: [`AerospikeProfiles::visit_stored`] reads every profile
//! back, the way the reconciliation reads Redis's.
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
    Bins, CITRUSLEAF_EPOCH_UNIX_SECS, Client, ClientPolicy, Expiration, Key, MapPolicy,
    MapReturnType, MapWriteFlags, PartitionFilter, QueryPolicy, Statement, Value, WritePolicy,
};
use futures::StreamExt;

use crate::profiles::{ProfileEntry, ProfileStore, StoredProfile};

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
        let (namespace, set) = crate::config::aerospike_location(location).ok_or_else(|| {
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

impl AerospikeProfiles {
    /// Closes the client: its cluster tender runs until closed, not until
    /// dropped (a reconciler connecting every minute would pile them up).
    pub async fn close(&self) -> Result<(), String> {
        self.client
            .close()
            .await
            .map_err(|error| format!("Aerospike, closing the client: {error}"))
    }

    /// Hands every profile in the set to `visit` (reconciliation, checks):
    /// one [`StoredProfile`] per user and kind, keyed
    /// `<namespace>/<set>/<user>:<kind>` ([`crate::profiles::stored_key`]),
    /// entries oldest first, the record's expiry. A scan of the set,
    /// record by record: only one is held at a time. A record written
    /// without its key (not by this store) is named as an error.
    pub async fn visit_stored(
        &self,
        mut visit: impl FnMut(StoredProfile) -> Result<(), String>,
    ) -> Result<(), String> {
        let failed = |error: aerospike::Error| {
            format!(
                "Aerospike, reading {}/{}: {error}",
                self.namespace, self.set
            )
        };
        let statement = Statement::new(self.namespace.clone(), self.set.clone(), Bins::All);
        let records = self
            .client
            .query(&QueryPolicy::default(), PartitionFilter::all(), statement)
            .await
            .map_err(failed)?;
        let mut records = records.into_stream();
        let location = format!("{}/{}", self.namespace, self.set);
        while let Some(record) = records.next().await {
            let record = record.map_err(failed)?;
            let Some(Value::String(user)) = record.key.as_ref().and_then(Key::user_key) else {
                return Err(format!(
                    "Aerospike, reading {location}: a record without its user key (not written by adpipe's loader)"
                ));
            };
            // Seconds since 2010-01-01 (Aerospike's epoch); 0: never.
            let expires_ms = match record.expiration() {
                0 => -1,
                at => (i64::from(at) + CITRUSLEAF_EPOCH_UNIX_SECS as i64) * 1000,
            };
            for kind in KINDS {
                let Some(bin) = record.bins.get(kind) else {
                    continue;
                };
                let mut entries = map_entries(bin).map_err(|error| {
                    format!("Aerospike, {location} {user}'s {kind} bin: {error}")
                })?;
                entries.sort_by(|(a, a_time), (b, b_time)| a_time.total_cmp(b_time).then(a.cmp(b)));
                visit(StoredProfile {
                    key: crate::profiles::stored_key(
                        crate::config::ProfileBackend::Aerospike,
                        &location,
                        user,
                        kind,
                    ),
                    entries,
                    expires_ms,
                })?;
            }
        }
        Ok(())
    }
}

/// A kind's bin as (entry, event time) pairs.
fn map_entries(bin: &Value) -> Result<Vec<(String, f64)>, String> {
    // The bins are key-value-ordered maps, which the client reads back as
    // `SortedMap`; the other map shapes are taken too.
    let pairs: Vec<(&Value, &Value)> = match bin {
        Value::SortedMap(map) => map.iter().collect(),
        Value::HashMap(map) => map.iter().collect(),
        Value::OrderedMap(map) => map.iter().collect(),
        Value::KeyValueList(pairs) => pairs.iter().map(|(entry, time)| (entry, time)).collect(),
        other => return Err(format!("not a map: {other:?}")),
    };
    pairs
        .into_iter()
        .map(|(entry, time)| match (entry, time) {
            (Value::String(entry), Value::Int(time)) => Ok((entry.clone(), *time as f64)),
            other => Err(format!("not an entry and its time: {other:?}")),
        })
        .collect()
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
                send_key: true,
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
