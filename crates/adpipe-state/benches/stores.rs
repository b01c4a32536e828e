//! The candidate stores on the joiner's access pattern, in one run:
//! `DiskStore` (fjall, the default), redb (a B-tree, one table per bucket,
//! the other pure-Rust candidate; RocksDB is out: 13 minutes of C++ per
//! build profile here) and `MemoryStore` (the baseline).
//! Run: `cargo bench -p adpipe-state --bench stores`.
//!
//! - `put`: 1,000 impressions (~45-byte id keys, 250-byte values) into a
//!   partition already holding 200k, in the newest bucket;
//! - `get_hit` / `get_miss`: a click's lookup of an impression that is
//!   stored (spread over 4 buckets) / that is not;
//! - `expire_bucket`: dropping a bucket of 100k entries.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use adpipe_state::{Buckets, DiskOptions, DiskStore, MemoryStore, Recovery, StateStore};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use redb::{ReadableDatabase, TableDefinition};

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_763_700_000_000;
const FILLED: u64 = 200_000;
const VALUE: [u8; 250] = [0x5a; 250];

fn key(n: u64) -> Vec<u8> {
    format!("imp-42-{n}-3f6c1d2e-9b7a-4c55-8e21-{n:012}").into_bytes()
}

/// Event time of the n-th of `FILLED` entries: four buckets of one hour.
fn time(n: u64) -> i64 {
    T0 + (n * 4 / FILLED) as i64 * HOUR
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adpipe-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn disk(dir: &std::path::Path) -> DiskStore {
    let mut options = DiskOptions::new(24 * HOUR, u64::MAX, Recovery::LocalAhead);
    options.buckets = Buckets::new(HOUR);
    DiskStore::open(dir, options).expect("opens")
}

/// redb with the same layout: one table per bucket, a write transaction
/// per 1,000 puts without fsync (`Durability::None`), as fjall's journal.
struct Redb {
    db: redb::Database,
}

fn table(bucket: i64) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    // Table names must be 'static: the few bucket names are leaked once.
    let name: &'static str = Box::leak(format!("b{bucket}").into_boxed_str());
    TableDefinition::new(name)
}

impl Redb {
    fn open(dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).expect("dir");
        Redb {
            db: redb::Database::create(dir.join("state.redb")).expect("opens"),
        }
    }

    fn put_many(&self, entries: impl Iterator<Item = (Vec<u8>, i64)>) {
        let mut tx = self.db.begin_write().expect("tx");
        tx.set_durability(redb::Durability::None)
            .expect("durability");
        for (key, time) in entries {
            let mut value = time.to_be_bytes().to_vec();
            value.extend_from_slice(&VALUE);
            let mut table = tx.open_table(table(time.div_euclid(HOUR))).expect("table");
            table.insert(&key[..], &value[..]).expect("inserts");
        }
        tx.commit().expect("commits");
    }

    fn get(&self, key: &[u8], buckets: &[i64]) -> Option<Vec<u8>> {
        let tx = self.db.begin_read().expect("tx");
        buckets.iter().rev().find_map(|&bucket| {
            let table = tx.open_table(table(bucket)).ok()?;
            table.get(key).ok()?.map(|value| value.value().to_vec())
        })
    }
}

fn fill(store: &mut impl StateStore) {
    for n in 0..FILLED {
        store.put(&key(n), time(n), &VALUE).expect("puts");
    }
}

fn put(c: &mut Criterion) {
    let mut group = c.benchmark_group("put");
    group.throughput(Throughput::Elements(1_000));
    group.sample_size(20);
    let dir = scratch("put-disk");
    let mut store = disk(&dir);
    fill(&mut store);
    let mut next = FILLED;
    group.bench_function("fjall", |b| {
        b.iter(|| {
            for _ in 0..1_000 {
                next += 1;
                store
                    .put(&key(next), time(FILLED - 1), &VALUE)
                    .expect("puts");
            }
        })
    });
    drop(store);
    let redb_dir = scratch("put-redb");
    let redb = Redb::open(&redb_dir);
    redb.put_many((0..FILLED).map(|n| (key(n), time(n))));
    let mut next = FILLED;
    group.bench_function("redb", |b| {
        b.iter(|| {
            redb.put_many((0..1_000).map(|_| {
                next += 1;
                (key(next), time(FILLED - 1))
            }))
        })
    });
    drop(redb);
    let mut memory = MemoryStore::new(Buckets::new(HOUR), u64::MAX);
    fill(&mut memory);
    let mut next = FILLED;
    group.bench_function("memory", |b| {
        b.iter(|| {
            for _ in 0..1_000 {
                next += 1;
                memory
                    .put(&key(next), time(FILLED - 1), &VALUE)
                    .expect("puts");
            }
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(redb_dir);
}

fn get(c: &mut Criterion) {
    let dir = scratch("get-disk");
    let mut store = disk(&dir);
    fill(&mut store);
    let redb_dir = scratch("get-redb");
    let redb = Redb::open(&redb_dir);
    for chunk in (0..FILLED).collect::<Vec<_>>().chunks(10_000) {
        redb.put_many(chunk.iter().map(|&n| (key(n), time(n))));
    }
    let buckets: Vec<i64> = (0..4).map(|b| (T0 + b * HOUR).div_euclid(HOUR)).collect();
    let mut memory = MemoryStore::new(Buckets::new(HOUR), u64::MAX);
    fill(&mut memory);
    for (name, offset) in [("get_hit", 0), ("get_miss", FILLED * 10)] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(1));
        let mut n = 0_u64;
        let mut next = move || {
            n = (n + 7_919) % FILLED;
            key(n + offset)
        };
        group.bench_function("fjall", |b| {
            b.iter(|| black_box(store.get(&next()).expect("reads")))
        });
        group.bench_function("redb", |b| {
            b.iter(|| black_box(redb.get(&next(), &buckets)))
        });
        group.bench_function("memory", |b| {
            b.iter(|| black_box(memory.get(&next()).expect("reads")))
        });
        group.finish();
    }
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(redb_dir);
}

/// Times only the drop of a bucket holding `entries`; the fill is set-up.
fn expire(c: &mut Criterion) {
    const ENTRIES: u64 = 100_000;
    let mut group = c.benchmark_group("expire_bucket");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ENTRIES));
    group.bench_function(BenchmarkId::new("fjall", ENTRIES), |b| {
        b.iter_custom(|rounds| {
            let mut spent = Duration::ZERO;
            for round in 0..rounds {
                let dir = scratch(&format!("expire-{round}"));
                let mut store = disk(&dir);
                for n in 0..ENTRIES {
                    store.put(&key(n), T0, &VALUE).expect("puts");
                }
                store.put(b"newer", T0 + HOUR, &VALUE).expect("puts");
                let started = Instant::now();
                let expired = store.expire(T0 + HOUR).expect("expires");
                spent += started.elapsed();
                assert_eq!(expired.buckets, 1);
                drop(store);
                let _ = std::fs::remove_dir_all(dir);
            }
            spent
        })
    });
    group.bench_function(BenchmarkId::new("redb", ENTRIES), |b| {
        b.iter_custom(|rounds| {
            let mut spent = Duration::ZERO;
            for round in 0..rounds {
                let dir = scratch(&format!("expire-redb-{round}"));
                let redb = Redb::open(&dir);
                redb.put_many((0..ENTRIES).map(|n| (key(n), T0)));
                let started = Instant::now();
                let tx = redb.db.begin_write().expect("tx");
                tx.delete_table(table(T0.div_euclid(HOUR))).expect("drops");
                tx.commit().expect("commits");
                spent += started.elapsed();
                drop(redb);
                let _ = std::fs::remove_dir_all(dir);
            }
            spent
        })
    });
    group.bench_function(BenchmarkId::new("memory", ENTRIES), |b| {
        b.iter_custom(|rounds| {
            let mut spent = Duration::ZERO;
            for _ in 0..rounds {
                let mut store = MemoryStore::new(Buckets::new(HOUR), u64::MAX);
                for n in 0..ENTRIES {
                    store.put(&key(n), T0, &VALUE).expect("puts");
                }
                let started = Instant::now();
                store.expire(T0 + HOUR).expect("expires");
                spent += started.elapsed();
            }
            spent
        })
    });
    group.finish();
}

criterion_group!(benches, put, get, expire);
criterion_main!(benches);
