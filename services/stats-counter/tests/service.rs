//! The stats-counter as a service, on the real central cluster and a real
//! PostgreSQL (see `support`): every good event counted exactly once across
//! a restart — even with the Kafka group's offsets rewound behind
//! PostgreSQL's — and every bad one dead-lettered.

mod support;

use adpipe_stats_counter::Increments;
use support::Rig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_counted_once_across_a_restart_and_bad_input_is_dead_lettered() {
    let rig = Rig::new("stats-svc").await;
    let mut expected = Increments::default();
    let mut bad = rig.publish(0, 300, &mut expected).await;
    let worker = adpipe_stats_counter::start(rig.settings()).expect("starts");
    rig.wait_committed_to_end().await;
    worker.stop().await.expect("clean stop");

    // Stopped: more events come, and the Kafka group's offsets are rewound
    // to 0 — only the offsets stored in PostgreSQL may decide.
    bad += rig.publish(300, 500, &mut expected).await;
    rig.rewind_group();
    let worker = adpipe_stats_counter::start(rig.settings()).expect("starts again");
    rig.wait_committed_to_end().await;
    worker.stop().await.expect("clean stop");

    rig.assert_totals(&expected).await;
    assert_eq!(
        rig.dead_lettered().len(),
        bad,
        "every bad record dead-lettered (at least once: one after a partition's last written batch is dead-lettered again after a restart)"
    );
}
