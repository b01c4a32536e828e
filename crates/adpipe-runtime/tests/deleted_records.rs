//! Records the broker deleted before the service read them, on the real
//! central cluster: `DeleteRecords` moves the log start past the group's
//! commit exactly as retention does when a service is behind (how the chain
//! benchmark's deduplicator lost a segment of 2025-dated records). The
//! runtime cannot bring them back; it counts them
//! (`adpipe_records_deleted_unread_total`) and, when no record follows
//! them, still moves the commit to the partition's new start.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{StoringFactory, TestFactory, Topics, records};

/// A one-partition test topic with `produced` records of which an earlier
/// instance committed the first 10, the broker then deleting those before
/// `deleted_before` unread.
async fn deleted_after_a_commit_at_10(name: &str, produced: usize, deleted_before: i64) -> Topics {
    let topics = Topics::create(name, 1).await;
    topics.produce(&records(produced, &[])).await;
    topics.commit_group_offset(10);
    topics.delete_records_before(deleted_before).await;
    adpipe_runtime::telemetry::install_recorder().expect("a recorder");
    topics
}

/// Offsets of `in`-0 the worker reported as deleted unread.
fn deleted_unread(topics: &Topics) -> Option<f64> {
    let text = adpipe_runtime::telemetry::render().expect("rendered");
    let labels = format!("topic=\"{}\",partition=\"0\"", topics.name("in"));
    adpipe_testkit::metric_sum_in(&text, "adpipe_records_deleted_unread_total", &labels)
}

/// An instance read 10 records and stopped; 90 more came, then the broker
/// deleted offsets 10..60 unread. The next instance reads 60..99, counts
/// the 50 it can never read, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_unread_are_counted_and_the_rest_goes_through() {
    let topics = deleted_after_a_commit_at_10("rt-deleted", 100, 60).await;
    topics
        .run_to_end(topics.settings(""), TestFactory::new(&topics))
        .await;
    let expected: Vec<String> = (60..100).map(|index| format!("good-{index}")).collect();
    assert_eq!(topics.values("out").await, expected);
    assert_eq!(
        deleted_unread(&topics),
        Some(50.0),
        "offsets 10..60 were deleted before the worker read them"
    );
}

/// Every record after the commit was deleted, and none follows: the group
/// commits the partition's new start (its lag is 0, not the deleted
/// records for ever), and the loss is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_unread_records_were_all_deleted_commits_its_new_start() {
    let topics = deleted_after_a_commit_at_10("rt-deleted-all", 30, 30).await;
    let worker = adpipe_runtime::start(topics.settings(""), TestFactory::new(&topics))
        .expect("worker starts");
    // Statistics come every 5 s; the reset is seen at the first after it.
    topics.wait_committed_to_end(Duration::from_secs(60)).await;
    worker.stop().await.expect("clean stop");
    assert_eq!(topics.committed(), [Some(30)]);
    assert!(topics.values("out").await.is_empty());
    assert_eq!(deleted_unread(&topics), Some(20.0));
}

/// A service that stores its own offsets (as the stats-counter does) had
/// stored 10 when everything after it was deleted. Its first instance
/// counts the 20 and commits the group to 30; its store still says 10, so
/// the next instance starts there, finds them gone again — and must not
/// count them twice: the range starts at the group's commit at the latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_restarted_below_a_counted_deletion_does_not_count_it_again() {
    let topics = deleted_after_a_commit_at_10("rt-deleted-stored", 30, 30).await;
    let storing = || StoringFactory {
        inner: TestFactory::new(&topics),
        stored: Ok(vec![(topics.name("in"), 0, 10)]),
        asked: Arc::default(),
    };
    let first = adpipe_runtime::start(topics.settings(""), storing()).expect("starts");
    topics.wait_committed_to_end(Duration::from_secs(60)).await;
    first.stop().await.expect("clean stop");
    assert_eq!(deleted_unread(&topics), Some(20.0));

    // The next instance: records after the deletion reach it, and the
    // first of them settles the reset it met at 10.
    let second = adpipe_runtime::start(topics.settings(""), storing()).expect("starts");
    topics.produce(&records(35, &[])[30..]).await;
    topics
        .wait_for_records("out", 5, Duration::from_secs(60))
        .await;
    topics.wait_committed_to_end(Duration::from_secs(60)).await;
    second.stop().await.expect("clean stop");
    let expected: Vec<String> = (30..35).map(|index| format!("good-{index}")).collect();
    assert_eq!(topics.values("out").await, expected);
    assert_eq!(
        deleted_unread(&topics),
        Some(20.0),
        "offsets 10..30 were counted by the first instance"
    );
}
