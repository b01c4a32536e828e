//! The stats-counter's PostgreSQL side against a real server: start it with
//! `infra/postgres.sh start` (`infra/test-all.sh` does); the URL comes from
//! `ADPIPE_PG_URL` (default: that script's). Each test works in a schema of
//! its own.

use std::collections::HashMap;

use adpipe_events::samples;
use adpipe_stats_counter::{
    BucketSize, Increments, OffsetAdvance, PgStore, StoreError, UpsertMethod,
};
use rand::{Rng, SeedableRng};

fn url() -> String {
    std::env::var("ADPIPE_PG_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:15432/adpipe".to_owned())
}

fn fresh_schema() -> String {
    format!("stats_test_{:016x}", rand::random::<u64>())
}

async fn store(schema: &str) -> PgStore {
    let mut store = PgStore::connect(&url(), schema)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "PostgreSQL at {}: {error} (run infra/postgres.sh start)",
                url()
            )
        });
    store.migrate().await.expect("migrates");
    store
}

async fn raw_client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connects");
    tokio::spawn(connection);
    client
}

/// `count` random events: impressions, joined clicks and conversions and
/// orphans over a few campaigns, hours and currencies.
fn random_batch(rng: &mut rand::rngs::StdRng, count: usize) -> Increments {
    let mut increments = Increments::default();
    for _ in 0..count {
        let n = rng.random_range(0..5_000_u64);
        let hour = rng.random_range(0..3_i64) * 3_600_000;
        match rng.random_range(0..10) {
            0 => {
                let mut joined = samples::joined_click(n);
                joined.click.event_time += hour;
                increments.add_click(&joined).expect("counts");
            }
            1 => {
                let mut joined = samples::joined_conversion(n);
                joined.conversion.event_time += hour;
                joined.conversion.currency = ["EUR", "USD"][(n % 2) as usize].to_owned();
                increments.add_conversion(&joined).expect("counts");
            }
            2 => increments.add_orphan(
                samples::click(n).event_time + hour,
                "click",
                ["impression_not_found", "outside_window"][(n % 2) as usize],
            ),
            _ => {
                let mut impression = samples::impression(n);
                impression.event_time += hour;
                impression.currency = ["EUR", "USD", "PLN"][(n % 3) as usize].to_owned();
                increments.add_impression(&impression).expect("counts");
            }
        }
    }
    increments
}

fn advance(partition: i32, expected: Option<i64>, next: i64) -> Vec<OffsetAdvance> {
    vec![OffsetAdvance {
        topic: "joined.clicks".to_owned(),
        partition,
        expected,
        next,
    }]
}

#[tokio::test]
async fn migrations_apply_once_and_analysts_read_the_views_but_cannot_write() {
    let schema = fresh_schema();
    let mut first = PgStore::connect(&url(), &schema).await.expect("connects");
    assert_eq!(first.migrate().await.expect("migrates"), 2, "both versions");
    let mut second = PgStore::connect(&url(), &schema).await.expect("connects");
    assert_eq!(second.migrate().await.expect("migrates"), 0, "applied once");
    let client = raw_client().await;
    client
        .batch_execute("set role adpipe_reader")
        .await
        .expect("the reader role exists");
    for view in ["minute", "hour", "orphans_minute", "orphans_hour"] {
        client
            .query(&format!("select * from {schema}.{view}"), &[])
            .await
            .unwrap_or_else(|error| panic!("{view} is readable: {error}"));
    }
    let refused = client
        .execute(&format!("delete from {schema}.stats_minute"), &[])
        .await
        .expect_err("the reader cannot write");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{refused:?}"
    );
}

/// The exactly-once mechanism: a batch moves its offsets by compare-and-set
/// in the transaction that adds its counts, so a replay of a batch already
/// counted, or a zombie's batch, is refused whole.
#[tokio::test]
async fn a_replayed_or_zombie_batch_is_refused_and_counts_nothing() {
    let schema = fresh_schema();
    let mut store = store(&schema).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (first, second) = (random_batch(&mut rng, 500), random_batch(&mut rng, 500));
    store
        .commit("g", &advance(0, None, 100), &first, UpsertMethod::Unnest)
        .await
        .expect("the first batch commits");
    let replay = store
        .commit("g", &advance(0, None, 100), &first, UpsertMethod::Unnest)
        .await;
    assert!(
        matches!(
            replay,
            Err(StoreError::Fenced {
                found: Some(100),
                ..
            })
        ),
        "a replayed batch must be refused: {:?}",
        replay.map(|totals| format!("committed again, {} rows", totals.len()))
    );
    store
        .commit(
            "g",
            &advance(0, Some(100), 200),
            &second,
            UpsertMethod::Unnest,
        )
        .await
        .expect("the next batch commits");
    let stale = store
        .commit(
            "g",
            &advance(0, Some(100), 200),
            &second,
            UpsertMethod::CopyMerge,
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::Fenced { .. })),
        "a stale batch must be refused: {:?}",
        stale.map(|totals| format!("committed again, {} rows", totals.len()))
    );

    // Two instances that both believe they own partition 0 from 200.
    let (mut owner, mut zombie) = (
        store,
        PgStore::connect(&url(), &schema).await.expect("connects"),
    );
    let (mine, theirs) = (random_batch(&mut rng, 300), random_batch(&mut rng, 300));
    let (to_300, to_250) = (advance(0, Some(200), 300), advance(0, Some(200), 250));
    let (a, b) = tokio::join!(
        owner.commit("g", &to_300, &mine, UpsertMethod::Unnest),
        zombie.commit("g", &to_250, &theirs, UpsertMethod::Unnest),
    );
    assert!(
        a.is_ok() != b.is_ok(),
        "exactly one writer wins: owner ok {}, zombie ok {}",
        a.is_ok(),
        b.is_ok()
    );
    let mut expected = first;
    expected.merge(second);
    let winner_offset = if a.is_ok() {
        expected.merge(mine);
        300
    } else {
        expected.merge(theirs);
        250
    };
    assert_eq!(
        owner
            .stored_offsets("g", "joined.clicks")
            .await
            .expect("reads"),
        HashMap::from([(0, winner_offset)])
    );
    for size in BucketSize::ALL {
        assert_eq!(
            owner.totals(size).await.expect("reads"),
            expected.rows_of(size),
            "{size:?} totals are every committed batch once"
        );
        assert_eq!(
            owner.orphan_totals(size).await.expect("reads"),
            expected.orphans_of(size)
        );
    }
}

#[tokio::test]
async fn both_upsert_methods_give_the_same_totals_and_return_them() {
    let (unnest_schema, copy_schema) = (fresh_schema(), fresh_schema());
    let (mut unnest, mut copy) = (store(&unnest_schema).await, store(&copy_schema).await);
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut expected = Increments::default();
    let mut offset = None;
    for round in 0..6_i64 {
        let batch = random_batch(&mut rng, 2_000);
        let next = (round + 1) * 1_000;
        let returned_unnest = unnest
            .commit("g", &advance(3, offset, next), &batch, UpsertMethod::Unnest)
            .await
            .expect("commits");
        let returned_copy = copy
            .commit(
                "g",
                &advance(3, offset, next),
                &batch,
                UpsertMethod::CopyMerge,
            )
            .await
            .expect("commits");
        expected.merge(batch.clone());
        // What a commit returns is each touched row's new total.
        for returned in [returned_unnest, returned_copy] {
            assert_eq!(returned.len(), batch.rows.len());
            for total in returned {
                assert_eq!(
                    Some(&total.counts),
                    expected.rows.get(&total.key),
                    "{:?}",
                    total.key
                );
                assert!((1..=round + 1).contains(&total.version));
            }
        }
        offset = Some(next);
    }
    for size in BucketSize::ALL {
        let want = expected.rows_of(size);
        assert_eq!(unnest.totals(size).await.expect("reads"), want);
        assert_eq!(copy.totals(size).await.expect("reads"), want);
        assert_eq!(
            unnest.orphan_totals(size).await.expect("reads"),
            copy.orphan_totals(size).await.expect("reads")
        );
    }
}

#[tokio::test]
async fn spend_today_is_the_days_cost_per_campaign_and_currency() {
    let schema = fresh_schema();
    let mut store = store(&schema).await;
    let mut increments = Increments::default();
    let mut yesterday = samples::impression(1);
    let today_start = yesterday.event_time.div_euclid(86_400_000) * 86_400_000 + 86_400_000;
    yesterday.event_time = today_start - 1;
    increments.add_impression(&yesterday).expect("counts");
    let mut want: HashMap<(i64, String), i64> = HashMap::new();
    for n in 0..40 {
        let mut impression = samples::impression(n);
        impression.event_time = today_start + i64::try_from(n).expect("small") * 1_000_000;
        impression.campaign_id = 1_000 + i64::try_from(n % 3).expect("small");
        increments.add_impression(&impression).expect("counts");
        *want
            .entry((impression.campaign_id, impression.currency.clone()))
            .or_default() += impression.cost_micros;
    }
    store
        .commit(
            "g",
            &advance(0, None, 41),
            &increments,
            UpsertMethod::Unnest,
        )
        .await
        .expect("commits");
    let spend = store
        .spend_today(today_start + 80_000_000)
        .await
        .expect("reads");
    let got: HashMap<(i64, String), i64> = spend
        .into_iter()
        .map(|(campaign, currency, micros)| ((campaign, currency), micros))
        .collect();
    assert_eq!(got, want, "yesterday's impression is not in today's spend");
}
