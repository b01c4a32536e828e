//! The user-profile sink: per user and kind of event (impression, click,
//! conversion), the most recent events bidders read — capped at `keep`
//! per kind, expiring `ttl` after the newest event's time.
//!
//! Contract:
//! - an entry is a small JSON object made from the event alone (its id,
//!   time, DC and the ids bidders use: campaign, creative, advertiser,
//!   impression, click, value), the same bytes every time the event is
//!   written: so writing an event that is already in the profile changes
//!   nothing — not its entries, not the cap's choice (the `keep` newest by
//!   event time, ties by entry), not the expiry (set to event time + `ttl`
//!   only if later than the current one);
//! - events already older than `ttl` are not written (they would expire at
//!   once) and counted in `adpipe_loader_profile_expired_total`;
//! - the store sits behind [`ProfileStore`]: [`RedisProfiles`] (a sorted
//!   set `<prefix><user>:<kind>` scored by event time, one pipeline per
//!   batch) runs here; Aerospike's (`aerospike` feature) is the production
//!   one RTB House used.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use adpipe_runtime::batching::Span;
use adpipe_runtime::{InputRecord, StepError};
use serde_json::{Map, Value};

use crate::config::ProfileBackend;
use crate::record::Identity;
use crate::sink::{Pending, Refusal, Sink, SinkFactory, Turns, take_turn};

/// What a profile keeps of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileEntry {
    /// The user.
    pub user_id: String,
    /// `impression`, `click` or `conversion`.
    pub kind: &'static str,
    /// Event time (ms).
    pub time_ms: i64,
    /// The entry (compact JSON), deterministic for the event.
    pub entry: String,
}

/// Fields an entry takes from the event, when present (from the event
/// itself first, then from its embedded impression).
const ENTRY_FIELDS: [&str; 8] = [
    "dc",
    "campaign_id",
    "creative_id",
    "advertiser_id",
    "impression_id",
    "click_id",
    "value_micros",
    "currency",
];

/// The profile entry of `event` (the JSON of its Avro value), identified
/// by `identity`; `None` for an event without a user.
pub fn entry_of(event: &Value, identity: &Identity) -> Option<ProfileEntry> {
    let (kind, main) = if let Some(conversion) = event.get("conversion") {
        ("conversion", conversion)
    } else if let Some(click) = event.get("click") {
        ("click", click)
    } else if event.get("order_id").is_some() {
        ("conversion", event)
    } else if event.get("impression_id").is_some() {
        ("click", event)
    } else {
        ("impression", event)
    };
    let user_id = main.get("user_id")?.as_str()?.to_owned();
    let impression = event.get("impression");
    let mut entry = Map::new();
    entry.insert("id".to_owned(), Value::from(identity.id.clone()));
    entry.insert("t".to_owned(), Value::from(identity.time_ms));
    for field in ENTRY_FIELDS {
        let value = main
            .get(field)
            .or_else(|| impression.and_then(|impression| impression.get(field)))
            .filter(|value| !value.is_null());
        if let Some(value) = value {
            entry.insert(field.to_owned(), value.clone());
        }
    }
    Some(ProfileEntry {
        user_id,
        kind,
        time_ms: identity.time_ms,
        entry: Value::Object(entry).to_string(),
    })
}

/// A profile store: upserts entries idempotently, with caps and expiry.
pub trait ProfileStore: Send + Sync + 'static {
    /// Writes `entries` (see the module's contract). An error fails the
    /// whole batch, which is written again (idempotent).
    fn upsert(
        &self,
        entries: &[&ProfileEntry],
        keep: usize,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
}

/// Profiles in Redis (or Valkey): a sorted set per user and kind.
pub struct RedisProfiles {
    client: redis::Client,
    prefix: String,
    connection: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl RedisProfiles {
    /// A store at `url` (`redis://host:port[/db]`), keys under `prefix`.
    pub fn new(url: &str, prefix: &str) -> Result<Self, String> {
        Ok(RedisProfiles {
            client: redis::Client::open(url)
                .map_err(|error| format!("profiles.url {url}: {error}"))?,
            prefix: prefix.to_owned(),
            connection: tokio::sync::Mutex::new(None),
        })
    }

    /// The key of `user`'s entries of `kind`.
    pub fn key(&self, user: &str, kind: &str) -> String {
        format!("{}{user}:{kind}", self.prefix)
    }

    /// Checks the server answers (at start: a clear error instead of a
    /// worker retrying for ever).
    pub async fn ping(&self) -> Result<(), String> {
        let mut connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|error| format!("Redis: {error}"))?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map_err(|error| format!("Redis: {error}"))?;
        *self.connection.lock().await = Some(connection);
        Ok(())
    }
}

/// Why `store = "aerospike"` cannot run in this build.
pub const AEROSPIKE_NOT_BUILT: &str =
    "profiles.store = \"aerospike\" needs a build with the aerospike feature";

/// The name a stored profile of `user`'s `kind` goes by
/// ([`StoredProfile::key`]): Redis's key `<prefix><user>:<kind>`;
/// Aerospike's record and bin as `<namespace>/<set>/<user>:<kind>`
/// (`prefix` = `namespace/set`, as configured).
pub fn stored_key(store: ProfileBackend, prefix: &str, user: &str, kind: &str) -> String {
    match store {
        ProfileBackend::Redis => format!("{prefix}{user}:{kind}"),
        ProfileBackend::Aerospike => format!("{prefix}/{user}:{kind}"),
    }
}

/// Hands every profile of the store at `url` under `prefix` to `visit`
/// (reconciliation, checks): [`RedisProfiles::visit_stored`], or
/// Aerospike's in a build with the `aerospike` feature.
pub async fn visit_stored(
    store: ProfileBackend,
    url: &str,
    prefix: &str,
    visit: impl FnMut(StoredProfile) -> Result<(), String>,
) -> Result<(), String> {
    match store {
        ProfileBackend::Redis => RedisProfiles::new(url, prefix)?.visit_stored(visit).await,
        #[cfg(feature = "aerospike")]
        ProfileBackend::Aerospike => {
            let store = crate::aerospike_profiles::AerospikeProfiles::connect(url, prefix).await?;
            let visited = store.visit_stored(visit).await;
            let closed = store.close().await;
            visited.and(closed)
        }
        #[cfg(not(feature = "aerospike"))]
        ProfileBackend::Aerospike => Err(AEROSPIKE_NOT_BUILT.to_owned()),
    }
}

/// How long reading back waits for one answer (a SCAN page, a pipeline).
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(60);

/// One profile key as stored: its entries (entry, score) oldest first and
/// its expiry (Unix ms; -1 without one).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredProfile {
    /// The name it goes by ([`stored_key`]): Redis's key
    /// `<prefix><user>:<kind>`, or `<namespace>/<set>/<user>:<kind>`.
    pub key: String,
    /// Its entries with their scores (event times), oldest first.
    pub entries: Vec<(String, f64)>,
    /// When it expires (Unix ms), -1 without an expiry.
    pub expires_ms: i64,
}

impl StoredProfile {
    /// The kind the key files (`impression`, `click`, `conversion`).
    pub fn kind(&self) -> &str {
        self.key.rsplit_once(':').map_or("", |(_, kind)| kind)
    }

    /// The event id of each entry (an entry that is no JSON object with an
    /// `id` is named as an error).
    pub fn event_ids(&self) -> Result<Vec<String>, String> {
        self.entries
            .iter()
            .map(|(entry, _)| {
                serde_json::from_str::<Value>(entry)
                    .ok()
                    .and_then(|entry| entry.get("id")?.as_str().map(str::to_owned))
                    .ok_or_else(|| format!("{}: an entry without an id: {entry}", self.key))
            })
            .collect()
    }
}

impl RedisProfiles {
    /// A connection for reading back: a pipeline over a batch of keys on a
    /// loaded machine outlasts the client's default 500 ms per answer (the
    /// loader's crash test, a million keys, timed out in a cold CI run).
    async fn read_back_connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let mut connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|error| format!("Redis, reading {}*: {error}", self.prefix))?;
        connection.set_response_timeout(READ_BACK_TIMEOUT);
        Ok(connection)
    }

    /// Every key under the store's prefix, sorted, by SCAN (one KEYS over
    /// millions of keys outlasts the response timeout).
    pub async fn keys(&self) -> Result<Vec<String>, String> {
        let mut connection = self.read_back_connection().await?;
        self.scan(&mut connection).await
    }

    async fn scan(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> Result<Vec<String>, String> {
        let failed = |error: redis::RedisError| format!("Redis, reading {}*: {error}", self.prefix);
        let mut keys = std::collections::BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(10_000)
                .query_async(connection)
                .await
                .map_err(failed)?;
            // SCAN may return a key twice (a rehash between calls): a set.
            keys.extend(batch);
            if next == 0 {
                return Ok(keys.into_iter().collect());
            }
            cursor = next;
        }
    }

    /// Every key under the store's prefix, read back (tests): see
    /// [`RedisProfiles::visit_stored`].
    pub async fn stored(&self) -> Result<Vec<StoredProfile>, String> {
        let mut stored = Vec::new();
        self.visit_stored(|profile| {
            stored.push(profile);
            Ok(())
        })
        .await?;
        Ok(stored)
    }

    /// Hands every key under the store's prefix to `visit`, read back
    /// (reconciliation and checks): its keys, then each batch of keys'
    /// entries and expiries in one pipeline (one round trip per key took
    /// minutes over millions). Only a batch is held at a time: a 10M-event
    /// run's profiles take gigabytes as text. `visit`'s error ends it.
    pub async fn visit_stored(
        &self,
        mut visit: impl FnMut(StoredProfile) -> Result<(), String>,
    ) -> Result<(), String> {
        let failed = |error: redis::RedisError| format!("Redis, reading {}*: {error}", self.prefix);
        let mut connection = self.read_back_connection().await?;
        let keys = self.scan(&mut connection).await?;
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("ZRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES");
                pipe.cmd("PEXPIRETIME").arg(key);
            }
            let answers: Vec<redis::Value> =
                pipe.query_async(&mut connection).await.map_err(failed)?;
            for (key, pair) in chunk.iter().zip(answers.chunks(2)) {
                let [entries, expires] = pair else {
                    return Err(format!("Redis: no answer for {key}"));
                };
                let unreadable =
                    |error: redis::ParsingError| format!("Redis, reading {key}: {error}");
                visit(StoredProfile {
                    key: key.clone(),
                    entries: redis::from_redis_value_ref(entries).map_err(unreadable)?,
                    expires_ms: redis::from_redis_value_ref(expires).map_err(unreadable)?,
                })?;
            }
        }
        Ok(())
    }
}

fn unreachable(error: &redis::RedisError) -> StepError {
    StepError::transient("redis", error.to_string())
}

impl ProfileStore for RedisProfiles {
    async fn upsert(
        &self,
        entries: &[&ProfileEntry],
        keep: usize,
        ttl: Duration,
    ) -> Result<(), StepError> {
        let mut pipe = redis::pipe();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        for entry in entries {
            let key = self.key(&entry.user_id, entry.kind);
            let expires = entry.time_ms.saturating_add(ttl_ms);
            // Scores are doubles: event times in ms are exact (< 2^53).
            pipe.cmd("ZADD")
                .arg(&key)
                .arg(entry.time_ms as f64)
                .arg(&entry.entry)
                .ignore();
            pipe.cmd("ZREMRANGEBYRANK")
                .arg(&key)
                .arg(0)
                .arg(-keep - 1)
                .ignore();
            // NX sets the first expiry, GT only ever moves it later (GT
            // alone never applies to a key without one).
            pipe.cmd("PEXPIREAT")
                .arg(&key)
                .arg(expires)
                .arg("NX")
                .ignore();
            pipe.cmd("PEXPIREAT")
                .arg(&key)
                .arg(expires)
                .arg("GT")
                .ignore();
        }
        let mut slot = self.connection.lock().await;
        let mut connection = match slot.take() {
            Some(connection) => connection,
            None => self
                .client
                .get_multiplexed_async_connection()
                .await
                .map_err(|error| unreachable(&error))?,
        };
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(|error| unreachable(&error))?;
        *slot = Some(connection);
        Ok(())
    }
}

/// Makes each task's profile sink over one shared store.
pub struct ProfilesFactory<P: ProfileStore> {
    store: Arc<P>,
    keep: usize,
    ttl: Duration,
}

impl<P: ProfileStore> ProfilesFactory<P> {
    /// A factory writing into `store`, keeping `keep` entries per user and
    /// kind for `ttl` after the newest.
    pub fn new(store: P, keep: usize, ttl: Duration) -> Self {
        ProfilesFactory {
            store: Arc::new(store),
            keep,
            ttl,
        }
    }
}

impl<P: ProfileStore> SinkFactory for ProfilesFactory<P> {
    type Sink = ProfilesSink<P>;
    const NAME: &'static str = "profiles";

    fn sink(&self, _topic: &str, _partition: i32) -> Result<ProfilesSink<P>, StepError> {
        Ok(ProfilesSink {
            store: Arc::clone(&self.store),
            keep: self.keep,
            ttl: self.ttl,
        })
    }
}

/// One task's profile sink.
pub struct ProfilesSink<P: ProfileStore> {
    store: Arc<P>,
    keep: usize,
    ttl: Duration,
}

impl<P: ProfileStore> Sink for ProfilesSink<P> {
    /// `None`: an event already expired, not written.
    type Item = Option<ProfileEntry>;

    fn prepare(
        &mut self,
        record: &InputRecord<'_>,
        identity: &Identity,
    ) -> Result<Option<ProfileEntry>, StepError> {
        let event: Value = record.decode()?;
        let entry = entry_of(&event, identity).ok_or_else(|| {
            StepError::poison("no_user_id", "the event names no user_id to file it under")
        })?;
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        if entry.time_ms.saturating_add(ttl_ms) <= adpipe_runtime::event_time::now_ms() {
            metrics::counter!("adpipe_loader_profile_expired_total").increment(1);
            return Ok(None);
        }
        Ok(Some(entry))
    }

    async fn write(
        &mut self,
        batch: &[Pending<Option<ProfileEntry>>],
        _spans: &[Span],
        turns: &Turns,
    ) -> Result<Vec<Refusal>, StepError> {
        let _turn = take_turn(turns).await?;
        let entries: Vec<&ProfileEntry> = batch
            .iter()
            .filter_map(|pending| pending.item.as_ref())
            .collect();
        if !entries.is_empty() {
            self.store.upsert(&entries, self.keep, self.ttl).await?;
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adpipe_events::samples;

    #[cfg(not(feature = "aerospike"))]
    #[tokio::test]
    async fn reading_aerospike_without_the_feature_says_so() {
        let error = visit_stored(ProfileBackend::Aerospike, "127.0.0.1:3000", "a/b", |_| {
            Ok(())
        })
        .await
        .expect_err("not built");
        assert_eq!(error, AEROSPIKE_NOT_BUILT);
    }

    fn identity(id: &str, time_ms: i64) -> Identity {
        Identity {
            id: id.to_owned(),
            time_ms,
            version: None,
        }
    }

    #[test]
    fn entries_carry_what_bidders_use_and_are_the_same_each_time() {
        let impression = serde_json::to_value(samples::impression(7)).expect("JSON");
        let entry = entry_of(&impression, &identity("i7", 5)).expect("a user");
        assert_eq!(entry.kind, "impression");
        assert_eq!(entry.user_id, "user-00000007");
        let fields: Value = serde_json::from_str(&entry.entry).expect("JSON");
        assert_eq!(fields["campaign_id"], 1007);
        assert!(fields.get("url").is_none(), "light: no URL");
        assert_eq!(entry_of(&impression, &identity("i7", 5)), Some(entry));

        let click = serde_json::to_value(samples::joined_click(7)).expect("JSON");
        let entry = entry_of(&click, &identity("c7", 6)).expect("a user");
        assert_eq!(entry.kind, "click");
        let fields: Value = serde_json::from_str(&entry.entry).expect("JSON");
        assert_eq!(fields["campaign_id"], 1007, "from the embedded impression");
        assert!(fields["impression_id"].is_string());

        let conversion = serde_json::to_value(samples::joined_conversion(7)).expect("JSON");
        let entry = entry_of(&conversion, &identity("v7", 7)).expect("a user");
        assert_eq!(entry.kind, "conversion");
        let fields: Value = serde_json::from_str(&entry.entry).expect("JSON");
        assert_eq!(fields["value_micros"], 49_990_000);
        assert_eq!(fields["advertiser_id"], 17);

        let orphan = serde_json::to_value(samples::click(7)).expect("JSON");
        assert_eq!(
            entry_of(&orphan, &identity("c7", 6)).expect("a user").kind,
            "click"
        );
    }
}
