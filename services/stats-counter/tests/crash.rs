//! kill -9 and SIGTERM of the real `adpipe-stats-counter` binary while
//! events keep coming, a second instance joining (the partitions split) and
//! leaving again, all against the real central cluster and PostgreSQL; then
//! the totals compared with a ground truth computed here from the published
//! events alone (not with the service's own aggregation code): per bucket
//! (minute and hour), campaign and currency, every measure exact — not one
//! event counted twice or missed — and the totals topic holds every row's
//! final total (at least once, across the kills).
//!
//! `ADPIPE_STATS_CRASH_EVENTS` sets the load (default 900,000 numbered
//! events: 900,000 impressions plus 90,000 joined clicks, 18,000 joined
//! conversions and 9,000 orphans, 1,017,000 records).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adpipe_events::samples;
use adpipe_loadtest::pace::FaultRounds;
use adpipe_runtime::dead_letter::{HEADER_ERROR, HEADER_OFFSET, HEADER_REASON, HEADER_TOPIC};
use adpipe_stats_counter::{BucketSize, PgStore};
use adpipe_testkit::{ChildGuard, kill_9, terminate, wait_for};
use rand::Rng;
use support::{INPUTS, PARTITIONS, Rig, load_shape, pg_url};

/// Sums per (bucket size, bucket start, campaign, currency).
type Truth = HashMap<(BucketSize, i64, i64, String), [i64; 5]>;

/// What events `0..events` must add up to, from the sample events' fields:
/// an impression counts with its cost in its own minute; a click and a
/// conversion in theirs, under their impression's campaign; a conversion's
/// value in its own currency.
fn truth(events: u64) -> (Truth, HashMap<(BucketSize, i64), i64>) {
    let mut rows = Truth::new();
    let mut orphans = HashMap::new();
    let mut add = |time: i64, campaign: i64, currency: &str, measures: [i64; 5]| {
        for size in BucketSize::ALL {
            let bucket = time - time.rem_euclid(size.millis());
            let sums = rows
                .entry((size, bucket, campaign, currency.to_owned()))
                .or_default();
            for (sum, add) in sums.iter_mut().zip(measures) {
                *sum += add;
            }
        }
    };
    for n in 0..events {
        let impression = samples::impression(n);
        add(
            impression.event_time,
            impression.campaign_id,
            &impression.currency,
            [1, 0, 0, impression.cost_micros, 0],
        );
        let (click, conversion, orphan) = load_shape(n);
        if click {
            let click = samples::click(n);
            add(
                click.event_time,
                impression.campaign_id,
                &impression.currency,
                [0, 1, 0, 0, 0],
            );
        }
        if conversion {
            let conversion = samples::conversion(n);
            add(
                conversion.event_time,
                impression.campaign_id,
                &conversion.currency,
                [0, 0, 1, 0, conversion.value_micros],
            );
        }
        if orphan {
            let time = samples::click(n).event_time;
            for size in BucketSize::ALL {
                *orphans
                    .entry((size, time - time.rem_euclid(size.millis())))
                    .or_default() += 1;
            }
        }
    }
    (rows, orphans)
}

/// The stored totals summed to the truth's granularity.
async fn stored(schema: &str) -> (Truth, HashMap<(BucketSize, i64), i64>) {
    let store = PgStore::connect(&pg_url(), schema).await.expect("connects");
    let mut rows = Truth::new();
    let mut orphans = HashMap::new();
    for size in BucketSize::ALL {
        for (key, counts) in store.totals(size).await.expect("reads") {
            let sums = rows
                .entry((
                    size,
                    key.bucket_ms,
                    key.dimensions.campaign_id,
                    key.dimensions.currency,
                ))
                .or_default();
            let measures = [
                counts.impressions,
                counts.clicks,
                counts.conversions,
                counts.cost_micros,
                counts.conversion_value_micros,
            ];
            for (sum, add) in sums.iter_mut().zip(measures) {
                *sum += add;
            }
        }
        for (key, count) in store.orphan_totals(size).await.expect("reads") {
            *orphans.entry((size, key.bucket_ms)).or_default() += count;
        }
    }
    (rows, orphans)
}

/// One stats-counter process's metrics address.
struct Instance {
    listen: SocketAddr,
}

impl Instance {
    fn new() -> Instance {
        Instance {
            listen: adpipe_testkit::free_loopback_address(),
        }
    }

    fn spawn(&self, rig: &Rig) -> Child {
        Command::new(env!("CARGO_BIN_EXE_adpipe-stats-counter"))
            .arg("--config")
            .arg(&rig.config)
            .env("ADPIPE__HTTP__LISTEN", self.listen.to_string())
            .env("ADPIPE__STATS__BATCH_RECORDS", "2000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("stats-counter starts")
    }

    async fn wait_assigned(&self, what: &str, expected: u64) {
        // Alone, after a kill -9 the broker waits out the dead member's session.
        adpipe_testkit::wait_assigned(self.listen, what, expected, Duration::from_secs(120)).await;
    }
}

/// Waits until the two instances share every partition, each owning some.
async fn wait_split(first: &Instance, second: &Instance, all: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let owned = |instance: &Instance| {
            adpipe_testkit::metric_value(instance.listen, "adpipe_assigned_partitions")
        };
        let (a, b) = (owned(first).await, owned(second).await);
        if let (Some(a), Some(b)) = (a, b)
            && a >= 1.0
            && b >= 1.0
            && (a + b) as u64 == all
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "two instances: partitions {a:?} + {b:?}, not a split of {all}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn totals_stay_exact_across_kill_9_sigterm_and_a_rebalance() {
    let events: u64 = std::env::var("ADPIPE_STATS_CRASH_EVENTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(900_000);
    let rig = Arc::new(Rig::new("stats-crash").await);
    let load = rig.load().await;
    let all = u64::try_from(PARTITIONS).expect("small") * INPUTS.len() as u64;
    // Each round: assignment (after a kill -9 the broker waits out the 6 s
    // session), progress, a random pause; publishing spans them all (the
    // last share of the records is held back until the last fault).
    let rounds = [
        "kill", "kill", "term", "join", "kill", "leave", "kill", "term", "kill",
    ];
    let pacing = FaultRounds::new(events, rounds.len() as u64, Duration::from_secs(12));
    let load = std::sync::Arc::new(load);
    let publishing = pacing.spawn_publisher(
        {
            let load = std::sync::Arc::clone(&load);
            move |n| load.send(n)
        },
        move || load.flush(),
    );

    let (first, second) = (Instance::new(), Instance::new());
    let mut child = ChildGuard::new(first.spawn(&rig));
    let mut joined = ChildGuard::default();
    let mut rng = rand::rng();
    let (mut kills, mut terms) = (0, 0);
    let mut committed_before = rig.committed_records();
    for (round, how) in rounds.iter().enumerate() {
        if joined.is_running() {
            wait_split(&first, &second, all).await;
        } else {
            first.wait_assigned(&format!("round {round}"), all).await;
        }
        tokio::task::block_in_place(|| {
            wait_for(
                &format!("progress in round {round}"),
                Duration::from_secs(120),
                || rig.committed_records() > committed_before,
            )
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2_500))).await;
        committed_before = rig.committed_records();
        pacing.fault();
        match *how {
            "join" => {
                // A second instance takes half the partitions, mid-batch.
                joined = ChildGuard::new(second.spawn(&rig));
                wait_split(&first, &second, all).await;
            }
            "leave" => {
                terminate(joined.take());
                terms += 1;
            }
            "term" => {
                terminate(child.take());
                terms += 1;
                child = ChildGuard::new(first.spawn(&rig));
            }
            _ => {
                let mut victim = child.take();
                kill_9(&mut victim);
                kills += 1;
                child = ChildGuard::new(first.spawn(&rig));
            }
        }
    }
    tokio::task::block_in_place(|| publishing.join()).expect("publisher");
    rig.wait_committed_to_end().await;
    terminate(child.take());

    let (want, want_orphans) = truth(events);
    let (got, got_orphans) = stored(&rig.schema).await;
    let records: u64 = (0..events)
        .map(|n| {
            let (click, conversion, orphan) = load_shape(n);
            1 + u64::from(click) + u64::from(conversion) + u64::from(orphan)
        })
        .sum();
    println!(
        "the publisher was mid-share at {} of the faults (at the others its share was out, a backlog or none)",
        pacing.in_flight_at_faults()
    );
    println!(
        "kill -9 x{kills}, SIGTERM x{terms}, a second instance joined and left, while publishing {records} records: {} (bucket, campaign, currency) sums compared",
        want.len()
    );
    let differing: Vec<_> = want
        .iter()
        .filter(|(key, sums)| got.get(*key) != Some(*sums))
        .take(5)
        .map(|(key, sums)| format!("{key:?}: want {sums:?}, got {:?}", got.get(key)))
        .collect();
    assert!(
        differing.is_empty() && got.len() == want.len(),
        "totals differ from the ground truth ({} stored, {} expected): {differing:#?}",
        got.len(),
        want.len()
    );
    assert_eq!(got_orphans, want_orphans, "orphan counts");
    let sent = rig.assert_totals_topic().await;
    println!("stats.totals: {sent} records, every row's latest total equal to PostgreSQL's");
    let dead: Vec<String> =
        adpipe_testkit::read_all(&rig.bootstrap, &format!("{}.dlq", rig.prefix))
            .iter()
            .take(5)
            .map(|record| {
                let header = |name| adpipe_testkit::header_text(record, name).unwrap_or_default();
                format!(
                    "{} at {}:{}: {}",
                    header(HEADER_REASON),
                    header(HEADER_TOPIC),
                    header(HEADER_OFFSET),
                    header(HEADER_ERROR)
                )
            })
            .collect();
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:#?}");
}
