//! The embedded profile store: user profiles in this process's memory,
//! for `adpipe demo` (which runs every stage in one process and needs no
//! server) and for tests of the profile sink's contract.
//!
//! Contract: the same as [`RedisProfiles`](crate::profiles::RedisProfiles)
//! — per user and kind, a set of entries ordered by (event time, entry),
//! the `keep` newest kept, the whole set expiring `ttl` after its newest
//! event — so writing an entry twice changes nothing. Clones share one
//! store: the demo keeps one to read what the loader wrote. Nothing is
//! persisted; a production loader runs Redis or Aerospike.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adpipe_runtime::StepError;

use crate::profiles::{ProfileEntry, ProfileStore};

/// One user's entries of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// (event time, entry JSON), oldest first.
    pub entries: BTreeSet<(i64, String)>,
    /// Event time (ms) after which the profile is gone.
    pub expires_ms: i64,
}

/// Profiles in memory, keyed by (user, kind).
#[derive(Debug, Clone, Default)]
pub struct MemoryProfiles {
    profiles: Arc<Mutex<BTreeMap<(String, &'static str), Profile>>>,
}

impl MemoryProfiles {
    /// An empty store.
    pub fn new() -> Self {
        MemoryProfiles::default()
    }

    /// Every profile not yet expired at `now_ms`.
    pub fn snapshot(&self, now_ms: i64) -> BTreeMap<(String, &'static str), Profile> {
        let profiles = self
            .profiles
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        profiles
            .iter()
            .filter(|(_, profile)| profile.expires_ms > now_ms)
            .map(|(key, profile)| (key.clone(), profile.clone()))
            .collect()
    }
}

impl ProfileStore for MemoryProfiles {
    async fn upsert(
        &self,
        entries: &[&ProfileEntry],
        keep: usize,
        ttl: Duration,
    ) -> Result<(), StepError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let mut profiles = self
            .profiles
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for entry in entries {
            let profile = profiles
                .entry((entry.user_id.clone(), entry.kind))
                .or_default();
            profile.entries.insert((entry.time_ms, entry.entry.clone()));
            while profile.entries.len() > keep {
                profile.entries.pop_first();
            }
            profile.expires_ms = profile.expires_ms.max(entry.time_ms.saturating_add(ttl_ms));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, time_ms: i64) -> ProfileEntry {
        ProfileEntry {
            user_id: user.to_owned(),
            kind: "impression",
            time_ms,
            entry: format!("{{\"id\":\"e{time_ms}\"}}"),
        }
    }

    #[tokio::test]
    async fn keeps_the_newest_once_each_and_expires_after_the_newest() {
        let store = MemoryProfiles::new();
        let ttl = Duration::from_millis(1_000);
        let first: Vec<ProfileEntry> = (1..=4).map(|time| entry("u", time * 100)).collect();
        let refs: Vec<&ProfileEntry> = first.iter().collect();
        store.upsert(&refs, 3, ttl).await.expect("written");
        store.upsert(&refs, 3, ttl).await.expect("written twice");
        let profiles = store.snapshot(0);
        let profile = &profiles[&("u".to_owned(), "impression")];
        let times: Vec<i64> = profile.entries.iter().map(|(time, _)| *time).collect();
        assert_eq!(times, [200, 300, 400], "the three newest, each once");
        assert_eq!(profile.expires_ms, 1_400);
        // An older event arriving late neither displaces a newer one nor
        // moves the expiry back.
        let late = entry("u", 50);
        store.upsert(&[&late], 3, ttl).await.expect("written");
        assert_eq!(store.snapshot(0)[&("u".to_owned(), "impression")], *profile);
        assert!(store.snapshot(1_400).is_empty(), "expired");
    }
}
