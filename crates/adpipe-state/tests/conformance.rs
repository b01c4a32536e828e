//! Every backend against the same contract (`adpipe_state` docs): newest
//! bucket wins, whole-bucket expiry, the size cap, checkpoint and reopen,
//! the two recovery policies — and a model check of random operations.

use std::collections::HashMap;
use std::path::PathBuf;

use adpipe_state::{Buckets, DiskOptions, DiskStore, Mark, MemoryStore, Put, Recovery, StateStore};
use proptest::prelude::*;

/// A fresh directory under the target dir (removed first).
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("state-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

const WIDTH: i64 = 10;

fn disk(dir: &std::path::Path, recovery: Recovery) -> DiskStore {
    let mut options = DiskOptions::new(8 * WIDTH, u64::MAX, recovery);
    options.buckets = Buckets::new(WIDTH);
    DiskStore::open(dir, options).expect("opens")
}

fn memory(dir: &std::path::Path) -> MemoryStore {
    MemoryStore::open(dir.join("p0.state"), Buckets::new(WIDTH), u64::MAX)
}

fn mark(offset: i64) -> Mark {
    Mark {
        cluster_id: "cluster".into(),
        topic: "log".into(),
        partition: 0,
        offset,
        last_record: (b"k".to_vec(), b"v".to_vec()),
    }
}

fn value(store: &impl StateStore, key: &[u8]) -> Option<(i64, Vec<u8>)> {
    store
        .get(key)
        .expect("reads")
        .map(|entry| (entry.event_time, entry.value.to_vec()))
}

/// The behaviour every backend shares, on a fresh store.
fn newest_bucket_wins_and_buckets_expire_whole(store: &mut impl StateStore) {
    assert_eq!(store.put(b"a", 5, b"old").expect("puts"), Put::Stored);
    assert_eq!(store.put(b"a", 25, b"new").expect("puts"), Put::Stored);
    assert_eq!(store.put(b"b", 7, b"b").expect("puts"), Put::Stored);
    assert_eq!(
        value(store, b"a"),
        Some((25, b"new".to_vec())),
        "newest bucket wins"
    );
    // Older within the same bucket: a plain overwrite.
    store.put(b"b", 3, b"b2").expect("puts");
    assert_eq!(value(store, b"b"), Some((3, b"b2".to_vec())));
    assert_eq!(store.stats().buckets, 2);

    // Cutoff 10 ends bucket 0 ([0, 10)): a and b's old copies go.
    let expired = store.expire(10).expect("expires");
    assert_eq!((expired.buckets, expired.evicted), (1, 0));
    assert_eq!(value(store, b"b"), None);
    assert_eq!(value(store, b"a"), Some((25, b"new".to_vec())));
    assert_eq!(
        store.put(b"c", 9, b"late").expect("puts"),
        Put::Expired,
        "its bucket is gone"
    );
    assert_eq!(value(store, b"c"), None);

    store.remove(b"a").expect("removes");
    assert_eq!(value(store, b"a"), None);
    store
        .apply(b"d", Some(&adpipe_state::changelog::encode_value(31, b"x")))
        .expect("applies");
    assert_eq!(value(store, b"d"), Some((31, b"x".to_vec())));
    store.apply(b"d", None).expect("a tombstone applies");
    assert_eq!(value(store, b"d"), None);
}

#[test]
fn memory_store_meets_the_contract() {
    newest_bucket_wins_and_buckets_expire_whole(&mut MemoryStore::new(
        Buckets::new(WIDTH),
        u64::MAX,
    ));
}

#[test]
fn disk_store_meets_the_contract() {
    let dir = scratch("contract");
    newest_bucket_wins_and_buckets_expire_whole(&mut disk(&dir, Recovery::LocalAhead));
}

/// Over the cap, the oldest buckets go (but never the newest).
fn the_cap_evicts_oldest_buckets(store: &mut impl StateStore) {
    let big = vec![7_u8; 4096];
    for bucket in 0..5 {
        for n in 0..50_u32 {
            store
                .put(&n.to_be_bytes(), bucket * WIDTH, &big)
                .expect("puts");
        }
    }
    let expired = store.expire(i64::MIN).expect("expires");
    assert_eq!(expired.buckets, 0);
    assert!(expired.evicted >= 1, "over the cap: {expired:?}");
    assert!(store.stats().buckets >= 1, "the newest bucket is kept");
    assert_eq!(
        value(store, &0_u32.to_be_bytes()).map(|(time, _)| time),
        Some(4 * WIDTH)
    );
    assert_eq!(
        store.put(b"x", 0, b"x").expect("puts"),
        Put::Expired,
        "an evicted bucket stays expired"
    );
}

#[test]
fn memory_store_evicts_over_its_cap() {
    the_cap_evicts_oldest_buckets(&mut MemoryStore::new(Buckets::new(WIDTH), 600 * 1024));
}

#[test]
fn disk_store_evicts_over_its_cap() {
    let dir = scratch("cap");
    let mut options = DiskOptions::new(8 * WIDTH, 1, Recovery::LocalAhead);
    options.buckets = Buckets::new(WIDTH);
    the_cap_evicts_oldest_buckets(&mut DiskStore::open(&dir, options).expect("opens"));
}

#[test]
fn disk_store_reopens_with_its_data_mark_and_floor() {
    let dir = scratch("reopen");
    {
        let mut store = disk(&dir, Recovery::LocalAhead);
        assert_eq!(store.mark(), None);
        store.put(b"a", 15, b"one").expect("puts");
        store.expire(10).expect("expires");
        store.checkpoint(&mark(7)).expect("checkpoints");
        store.put(b"b", 16, b"after the mark").expect("puts");
    }
    let store = disk(&dir, Recovery::LocalAhead);
    assert_eq!(store.mark(), Some(mark(7)));
    assert_eq!(value(&store, b"a"), Some((15, b"one".to_vec())));
    assert_eq!(
        value(&store, b"b"),
        Some((16, b"after the mark".to_vec())),
        "LocalAhead keeps data written after the mark"
    );
    let mut store = store;
    assert_eq!(
        store.put(b"c", 5, b"c").expect("puts"),
        Put::Expired,
        "the floor survived"
    );
}

#[test]
fn clean_only_withdraws_the_mark_at_the_first_change() {
    let dir = scratch("clean-only");
    {
        let mut store = disk(&dir, Recovery::CleanOnly);
        store.put(b"a", 15, b"one").expect("puts");
        store.checkpoint(&mark(3)).expect("checkpoints");
    }
    {
        let mut store = disk(&dir, Recovery::CleanOnly);
        assert_eq!(store.mark(), Some(mark(3)), "nothing changed since");
        store.put(b"b", 15, b"two").expect("puts");
        assert_eq!(store.mark(), None);
    }
    let mut store = disk(&dir, Recovery::CleanOnly);
    assert_eq!(
        store.mark(),
        None,
        "changed after its checkpoint: not trusted"
    );
    store.wipe().expect("wipes");
    assert_eq!(value(&store, b"a"), None);
    assert_eq!(store.stats().buckets, 0);
}

#[test]
fn memory_store_reloads_its_checkpoint_and_ignores_a_damaged_one() {
    let dir = scratch("memory-reopen");
    {
        let mut store = memory(&dir);
        store.put(b"a", 15, b"one").expect("puts");
        store.put(b"a", 25, b"two").expect("puts");
        store.checkpoint(&mark(9)).expect("checkpoints");
        store.put(b"b", 26, b"not saved").expect("puts");
    }
    let store = memory(&dir);
    assert_eq!(store.mark(), Some(mark(9)));
    assert_eq!(value(&store, b"a"), Some((25, b"two".to_vec())));
    assert_eq!(
        value(&store, b"b"),
        None,
        "only the checkpoint is local data"
    );
    let path = dir.join("p0.state");
    let mut bytes = std::fs::read(&path).expect("saved");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).expect("damaged");
    let store = memory(&dir);
    assert_eq!((store.mark(), store.stats().entries), (None, 0));
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, i64, u8),
    Remove(u8),
    Expire(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..20, 0i64..100, any::<u8>()).prop_map(|(k, t, v)| Op::Put(k, t, v)),
        1 => (0u8..20).prop_map(Op::Remove),
        1 => (0i64..100).prop_map(Op::Expire),
    ]
}

/// The contract as a model: per key, the copies by bucket.
#[derive(Default)]
struct Model {
    copies: HashMap<u8, std::collections::BTreeMap<i64, (i64, u8)>>,
    floor: i64,
}

impl Model {
    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Put(key, time, value) if time.div_euclid(WIDTH) >= self.floor => {
                self.copies
                    .entry(key)
                    .or_default()
                    .insert(time.div_euclid(WIDTH), (time, value));
            }
            Op::Put(..) => {}
            Op::Remove(key) => {
                self.copies.remove(&key);
            }
            Op::Expire(cutoff) => {
                self.floor = self.floor.max(cutoff.div_euclid(WIDTH));
                let floor = self.floor;
                for copies in self.copies.values_mut() {
                    copies.retain(|&bucket, _| bucket >= floor);
                }
            }
        }
    }

    fn get(&self, key: u8) -> Option<(i64, Vec<u8>)> {
        let (_, &(time, value)) = self.copies.get(&key)?.last_key_value()?;
        Some((time, vec![value]))
    }
}

fn run(store: &mut impl StateStore, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    for op in ops {
        match *op {
            Op::Put(key, time, value) => {
                store.put(&[key], time, &[value]).expect("puts");
            }
            Op::Remove(key) => store.remove(&[key]).expect("removes"),
            Op::Expire(cutoff) => {
                store.expire(cutoff).expect("expires");
            }
        }
        model.apply(op);
        for key in 0..20 {
            prop_assert_eq!(
                value(store, &[key]),
                model.get(key),
                "key {} after {:?}",
                key,
                op
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn memory_store_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(&mut MemoryStore::new(Buckets::new(WIDTH), u64::MAX), &ops)?;
    }

    #[test]
    fn disk_store_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = scratch(&format!("model-{}", std::process::id()));
        run(&mut disk(&dir, Recovery::LocalAhead), &ops)?;
    }
}

/// The Aerospike backend against the same contract, where a server runs:
/// `AEROSPIKE_HOSTS=host:3000 [AEROSPIKE_NAMESPACE=test] cargo test -p
/// adpipe-state --features aerospike`. Without it the test says it was
/// skipped — it proves nothing then.
#[cfg(feature = "aerospike")]
#[tokio::test(flavor = "multi_thread")]
async fn aerospike_store_meets_the_contract() {
    use adpipe_state::aerospike::{AerospikeStore, connect};
    let Ok(hosts) = std::env::var("AEROSPIKE_HOSTS") else {
        eprintln!(
            "SKIPPED aerospike_store_meets_the_contract: AEROSPIKE_HOSTS is not set (no Aerospike server was tested)"
        );
        return;
    };
    let namespace = std::env::var("AEROSPIKE_NAMESPACE").unwrap_or_else(|_| "test".to_owned());
    let client = connect(&hosts).await.expect("connects");
    let set = format!("adpipe_conformance_{}", std::process::id());
    // Event times near now: the server's TTL counts from the wall clock.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let base = now - now.rem_euclid(WIDTH * 1_000_000);
    let mut store = AerospikeStore::new(client, &namespace, &set, 0, 8 * WIDTH * 1_000_000);
    // Scaled: buckets of WIDTH * 1e6 ms around now.
    let t = |n: i64| base + n * 1_000_000;
    assert_eq!(store.put(b"a", t(5), b"old").expect("puts"), Put::Stored);
    assert_eq!(store.put(b"a", t(25), b"new").expect("puts"), Put::Stored);
    assert_eq!(
        store.put(b"a", t(15), b"between").expect("puts"),
        Put::Stored
    );
    assert_eq!(
        value(&store, b"a"),
        Some((t(25), b"new".to_vec())),
        "a newer copy is never overwritten"
    );
    store.remove(b"a").expect("removes");
    assert_eq!(value(&store, b"a"), None);
    assert!(store.shared(), "a partition needs no restore when it moves");
}
