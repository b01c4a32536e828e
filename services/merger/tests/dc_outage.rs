//! A DC cluster stopped for longer than `max-idle` (`infra/kafka.sh stop
//! dc2`): the merge goes on with dc1 alone; after `start dc2` the events
//! its bidders buffered meanwhile reach dc2, MirrorMaker 2 replicates them,
//! and the merger merges them too — late, counted, never dropped. Its own
//! test binary, because it takes dc2 away.

mod support;

use std::time::{Duration, Instant};

use support::{Rig, live_publications, merged_counts, published_counts};

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_dc_does_not_stall_the_merge_and_its_backlog_is_merged_late() {
    let mut rig = Rig::new("mg-outage", 2).await;
    rig.start_heartbeats(Duration::from_secs(2));
    tokio::task::block_in_place(|| rig.wait_for_replicas(Duration::from_secs(90)));
    let rate = 2_000.0;
    let publications = live_publications(12_000, rate);
    let (before, during) = publications.split_at(publications.len() / 3);
    let worker = adpipe_merger::start(rig.settings("max-idle = \"3s\"")).expect("starts");
    tokio::task::block_in_place(|| {
        rig.publish(before, rate);
        rig.wait_for_merged(before.len(), Duration::from_secs(120));
    });

    // dc2 goes away; both DCs' bidders keep publishing (dc2's buffer theirs).
    tokio::task::block_in_place(|| adpipe_testkit::kafka_script(&["stop", "dc2"]));
    let stopped_at = Instant::now();
    let during_dc1 = during
        .iter()
        .filter(|publication| publication.dc == "dc1")
        .count();
    let publishing = {
        let rig = std::sync::Arc::new(rig);
        let during = during.to_vec();
        let publisher = std::sync::Arc::clone(&rig);
        (
            rig,
            std::thread::spawn(move || {
                let mut pacer = adpipe_loadtest::pace::Pacer::new(Some(rate));
                for publication in &during {
                    pacer.wait_turn();
                    publisher
                        .bidders
                        .publish(
                            publication,
                            &publisher.dc_topic(publication.event.kind().plural()),
                        )
                        .expect("queued");
                }
            }),
        )
    };
    let (rig, publisher) = publishing;
    // The merge goes on with dc1 alone (after max-idle): dc1's part of the
    // outage traffic comes out while dc2 is still down.
    tokio::task::block_in_place(|| {
        rig.wait_for_merged(before.len() + during_dc1 * 9 / 10, Duration::from_secs(120))
    });
    assert!(
        !adpipe_testkit::broker_running("dc2"),
        "dc2 must still be down while dc1's events are merged"
    );
    let dc1_alone_after = stopped_at.elapsed();
    tokio::task::block_in_place(|| publisher.join()).expect("publisher");
    tokio::task::block_in_place(|| adpipe_testkit::kafka_script(&["start", "dc2"]));
    tokio::task::block_in_place(|| {
        rig.bidders
            .flush(Duration::from_secs(300))
            .expect("dc2's backlog delivered");
        rig.wait_for_merged(publications.len(), Duration::from_secs(300));
        rig.wait_committed_to_end(Duration::from_secs(120));
    });
    let late_metric =
        adpipe_testkit::metric_value(worker.http_address, "adpipe_late_records_total").await;
    worker.stop().await.expect("clean stop");
    let Ok(mut rig) = std::sync::Arc::try_unwrap(rig) else {
        panic!("the publisher still holds the rig");
    };
    rig.stop_heartbeats();

    let runtime = tokio::runtime::Handle::current();
    let merged = tokio::task::block_in_place(|| rig.read_merged(&runtime));
    assert_eq!(
        merged_counts(&merged),
        published_counts(&publications),
        "every record of both DCs merged exactly once"
    );
    let late_dc2 = merged
        .iter()
        .filter(|record| record.dc == "dc2" && record.lateness_ms.is_some())
        .count();
    let most_late = merged
        .iter()
        .filter_map(|record| record.lateness_ms)
        .max()
        .unwrap_or(0);
    println!(
        "dc2 stopped: dc1's outage traffic merged alone {dc1_alone_after:.1?} after the stop; {} merged in all, {late_dc2} of dc2's late (lateness up to {most_late} ms), adpipe_late_records_total {late_metric:?}",
        merged.len()
    );
    assert!(late_dc2 > 0, "dc2's backlog came late and is marked so");
    assert!(late_metric.unwrap_or(0.0) >= late_dc2 as f64);
    rig.registry.stop().await;
}
