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
    connection_at(&redis_url()).await
}

async fn connection_at(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|error| panic!("Redis at {url}: {error} (infra/redis.sh start)"))
}

/// The keys under `prefix`, by SCAN: one KEYS over the chaos run's two
/// million profile keys outlasted the connection's response timeout (the
/// 2M-record run's check panicked "keys: timed out").
async fn keys(connection: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(connection)
            .await
            .expect("keys");
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    // SCAN may return a key twice (a rehash between calls).
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Every profile key under `prefix` with its entries and expiry.
pub async fn dump(prefix: &str) -> BTreeMap<String, Profile> {
    dump_at(&redis_url(), prefix).await
}

/// Every profile key under `prefix` in the Redis at `url`.
pub async fn dump_at(url: &str, prefix: &str) -> BTreeMap<String, Profile> {
    let mut connection = connection_at(url).await;
    let mut dump = BTreeMap::new();
    for key in keys(&mut connection, prefix).await {
        let entries: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut connection)
            .await
            .expect("entries");
        let expires: i64 = redis::cmd("PEXPIRETIME")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .expect("expiry");
        dump.insert(key, (entries, expires));
    }
    dump
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
    let mut connection = connection().await;
    let keys = keys(&mut connection, prefix).await;
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
