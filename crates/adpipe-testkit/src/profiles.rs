//! Readers of the user profiles the loader writes into Redis
//! (`infra/redis.sh`, `ADPIPE_REDIS_URL`): what the tests compare with
//! their ground truth. Keys are `<prefix><user>:<kind>`, sorted sets of JSON
//! entries (each with the event's `id`) scored by event time.

use std::collections::BTreeMap;

/// One profile key: its entries (entry, score) oldest first, and its expiry
/// (Unix ms; -1 without one).
pub type Profile = (Vec<(String, f64)>, i64);

/// The Redis of the tests: `$ADPIPE_REDIS_URL`, else `infra/redis.sh`'s
/// default.
pub fn redis_url() -> String {
    std::env::var("ADPIPE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379".to_owned())
}

async fn connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|error| panic!("Redis at {}: {error} (infra/redis.sh start)", redis_url()))
}

/// Every profile key under `prefix` with its entries and expiry.
pub async fn dump(prefix: &str) -> BTreeMap<String, Profile> {
    dump_at(&redis_url(), prefix).await
}

/// Every profile key under `prefix` in the Redis at `url`, read as the
/// reconciler reads them (`RedisProfiles::stored`).
pub async fn dump_at(url: &str, prefix: &str) -> BTreeMap<String, Profile> {
    adpipe_loader::profiles::RedisProfiles::new(url, prefix)
        .expect("a Redis URL")
        .stored()
        .await
        .unwrap_or_else(|error| panic!("{error} (infra/redis.sh start)"))
        .into_iter()
        .map(|stored| (stored.key, (stored.entries, stored.expires_ms)))
        .collect()
}

/// How often each event id appears among the entries of the keys under
/// `prefix` whose name ends with `suffix` (e.g. `":click"`, or `""`).
pub async fn event_ids(prefix: &str, suffix: &str) -> BTreeMap<String, usize> {
    event_ids_at(&redis_url(), prefix, suffix).await
}

/// [`event_ids`] in the Redis at `url`.
pub async fn event_ids_at(url: &str, prefix: &str, suffix: &str) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for (key, (entries, _)) in dump_at(url, prefix).await {
        if !key.ends_with(suffix) {
            continue;
        }
        for (entry, _) in entries {
            let entry: serde_json::Value = serde_json::from_str(&entry).expect("a JSON entry");
            let id = entry["id"]
                .as_str()
                .expect("an entry with an id")
                .to_owned();
            *ids.entry(id).or_default() += 1;
        }
    }
    ids
}

/// Deletes every key under `prefix` (what a test wrote).
pub async fn delete(prefix: &str) {
    // The keys only: reading every entry too doubled the work.
    let keys = adpipe_loader::profiles::RedisProfiles::new(&redis_url(), prefix)
        .expect("a Redis URL")
        .keys()
        .await
        .unwrap_or_else(|error| panic!("{error} (infra/redis.sh start)"));
    let mut connection = connection().await;
    // UNLINK frees in the background: DEL of a million entries outlasts
    // the client's response timeout.
    for chunk in keys.chunks(100) {
        let () = redis::cmd("UNLINK")
            .arg(chunk)
            .query_async(&mut connection)
            .await
            .expect("unlinked");
    }
}
