//! The stats-counter as a service, on the real central cluster and a real
//! PostgreSQL (see `support`): every good event counted exactly once across
//! a restart — even with the Kafka group's offsets rewound behind
//! PostgreSQL's — and every bad one dead-lettered; the budget endpoint
//! answers from those totals.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use adpipe_events::{EventKind, samples};
use adpipe_stats_counter::budget::BudgetReport;
use adpipe_stats_counter::{BucketSize, Increments};
use rdkafka::message::OwnedHeaders;
use support::Rig;

/// `GET /budget/today` at the samples' day: each campaign's spend per
/// currency equals the cost counted into the model; `campaign_id` filters.
async fn assert_budget_endpoint(admin: SocketAddr, expected: &Increments) {
    let day = samples::impression(0).event_time;
    let mut want: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for (key, counts) in expected.rows_of(BucketSize::Hour) {
        if key.bucket_ms.div_euclid(86_400_000) == day.div_euclid(86_400_000)
            && counts.cost_micros > 0
        {
            *want
                .entry((key.dimensions.campaign_id, key.dimensions.currency))
                .or_default() += counts.cost_micros;
        }
    }
    let get = |query: String| async move {
        reqwest::get(format!("http://{admin}/budget/today?{query}"))
            .await
            .expect("answers")
            .error_for_status()
            .expect("200")
            .json::<BudgetReport>()
            .await
            .expect("a report")
    };
    let report = get(format!("at={day}")).await;
    assert_eq!(report.day_start_ms, day - day.rem_euclid(86_400_000));
    let got: BTreeMap<(i64, String), i64> = report
        .campaigns
        .iter()
        .map(|spend| {
            (
                (spend.campaign_id, spend.currency.clone()),
                spend.spend_micros,
            )
        })
        .collect();
    assert_eq!(got, want, "spend per campaign and currency");
    let one = get(format!("at={day}&campaign_id=1007")).await;
    assert!(!one.campaigns.is_empty());
    assert!(one.campaigns.iter().all(|spend| spend.campaign_id == 1007));
    // Another day: nothing spent.
    let later = get(format!("at={}", day + 3 * 86_400_000)).await;
    assert!(later.campaigns.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_counted_once_across_a_restart_and_bad_input_is_dead_lettered() {
    let rig = Rig::new("stats-svc").await;
    let mut expected = Increments::default();
    // Bad records of the first run: some followed by good records of their
    // partitions (stored past them), some at the partitions' ends.
    let bad_stored_past = rig.publish(0, 150, &mut expected).await;
    let bad_at_end = rig.publish(150, 300, &mut expected).await;
    let worker = adpipe_stats_counter::start(rig.settings()).expect("starts");
    rig.wait_committed_to_end().await;
    worker.stop().await.expect("clean stop");
    rig.assert_totals_topic().await;
    // The totals topic loses its records; the group's commits are rewound
    // below: the rows of every record before the stored offsets get their
    // totals sent again (never counted again).
    rig.empty_totals_topic().await;

    // Stopped: more events come, and the Kafka group's offsets are rewound
    // to 0 — only the offsets stored in PostgreSQL may decide.
    let bad_after_restart = rig.publish(300, 500, &mut expected).await;
    // Two hours late, after later events of its partition: its minute and
    // hour are closed, it still counts there, as one correction of each.
    let mut late = samples::impression(600);
    late.event_time -= 2 * 3_600_000;
    expected.add_impression(&late).expect("good");
    let value = rig.encode("imp", EventKind::Impression, &late).await;
    rig.send("imp", 0, &value, OwnedHeaders::new()).await;
    rig.rewind_group();
    let worker = adpipe_stats_counter::start(rig.settings()).expect("starts again");
    rig.wait_committed_to_end().await;
    assert_budget_endpoint(worker.http_address, &expected).await;
    for size in ["minute", "hour"] {
        let corrections = adpipe_testkit::metric_value_where(
            worker.http_address,
            "adpipe_stats_corrections_total",
            &format!("bucket_size=\"{size}\""),
        )
        .await;
        assert_eq!(corrections, Some(1.0), "{size} corrections");
    }
    worker.stop().await.expect("clean stop");

    rig.assert_totals(&expected).await;
    rig.assert_totals_topic().await;
    assert_eq!(
        rig.dead_lettered().len(),
        bad_stored_past + bad_at_end + bad_after_restart,
        "every bad record dead-lettered"
    );
    // The commit rewound to 0 is what a crash leaves between a stored
    // batch and the dead letter of a bad record before it: each bad record
    // the stored offsets are past is read again and dead-lettered again
    // (its first dead letter may have been cut off), never skipped — the
    // one with `event_time` 0 too (before the policy's floor: a decision
    // that does not depend on the clock). Those at the partitions' ends are
    // read again as new records.
    assert_eq!(
        rig.dead_letters().len(),
        2 * bad_stored_past + 2 * bad_at_end + bad_after_restart,
        "those the commit is behind dead-lettered once more"
    );
}
