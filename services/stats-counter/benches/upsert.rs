//! The two ways a batch's increments reach PostgreSQL, side by side in one
//! run against the real server (`infra/postgres.sh start`; URL from
//! `ADPIPE_PG_URL`): `INSERT … SELECT FROM unnest(arrays) ON CONFLICT DO
//! UPDATE` against binary `COPY` into a staging table plus the same merge.
//! Run: `cargo bench -p adpipe-stats-counter --bench upsert`.
//!
//! Each iteration is one whole batch transaction (offset compare-and-set,
//! upsert returning the new totals, orphans, commit) of `rows` distinct
//! rows per bucket size, in steady state: the rows already exist, so every
//! upsert updates (a live stream adds to the current buckets). Throughput
//! is rows per second (both bucket sizes counted).

use std::hint::black_box;

use adpipe_events::samples;
use adpipe_stats_counter::{Increments, OffsetAdvance, PgStore, UpsertMethod};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn url() -> String {
    std::env::var("ADPIPE_PG_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:15432/adpipe".to_owned())
}

/// A batch with `rows` distinct rows per bucket size: impressions of
/// `rows` creatives in one minute.
fn batch(rows: u64) -> Increments {
    let mut increments = Increments::default();
    for n in 0..rows {
        let mut impression = samples::impression(n);
        impression.creative_id = i64::try_from(n).unwrap_or(i64::MAX);
        impression.event_time = 1_763_700_000_000;
        increments
            .add_impression(&impression)
            .unwrap_or_else(|error| panic!("sample impression: {error}"));
    }
    increments
}

fn upsert(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|error| panic!("tokio: {error}"));
    let mut group = c.benchmark_group("upsert");
    group.sample_size(20);
    for rows in [100_u64, 1_000, 10_000] {
        let increments = batch(rows);
        group.throughput(Throughput::Elements(2 * rows));
        for method in [UpsertMethod::Unnest, UpsertMethod::CopyMerge] {
            let schema = format!("stats_bench_{:016x}", rand::random::<u64>());
            let mut store = runtime.block_on(async {
                let mut store = PgStore::connect(&url(), &schema)
                    .await
                    .unwrap_or_else(|error| panic!("PostgreSQL at {}: {error}", url()));
                store
                    .migrate()
                    .await
                    .unwrap_or_else(|error| panic!("migrate: {error}"));
                store
            });
            let mut offset: Option<i64> = None;
            group.bench_with_input(
                BenchmarkId::new(format!("{method:?}"), rows),
                &increments,
                |b, increments| {
                    b.iter(|| {
                        let next = offset.unwrap_or(0) + 1;
                        let advance = [OffsetAdvance {
                            topic: "bench".to_owned(),
                            partition: 0,
                            expected: offset,
                            next,
                        }];
                        let totals = runtime
                            .block_on(store.commit("bench", &advance, increments, method))
                            .unwrap_or_else(|error| panic!("commit: {error}"));
                        offset = Some(next);
                        black_box(totals)
                    });
                },
            );
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
                    .await
                    .unwrap_or_else(|error| panic!("connect: {error}"));
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("drop schema {schema} cascade"))
                    .await
                    .unwrap_or_else(|error| panic!("drop: {error}"));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, upsert);
criterion_main!(benches);
