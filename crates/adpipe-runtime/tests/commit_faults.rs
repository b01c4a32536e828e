//! A commit the broker refuses is sent again. Its own test binary, because
//! it changes the central cluster's ACLs.
//!
//! The worker processes every record before its first periodic commit (a
//! long commit interval); before that commit is due, reading the input
//! topic is denied with a real ACL, so the broker refuses the commit
//! (TOPIC_AUTHORIZATION_FAILED, which librdkafka does not retry); then the
//! ACL is removed. No new record comes and no rebalance happens — only a
//! retried commit can bring the group to the end of the input. (Recording
//! a commit as done when it was merely sent left the group behind for ever:
//! the next owner re-processed everything since the last real commit.)

mod support;

use std::time::{Duration, Instant};

use support::{TestFactory, Topics, records};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_broker_refuses_is_sent_again() {
    let topics = Topics::create("rt-commit-retry", 1).await;
    topics.produce(&records(20, &[])).await;
    let started = Instant::now();
    // Long enough for the ACL to be in place before the first commit on a
    // loaded machine (10 s was not, once, in CI).
    let settings = topics.settings("commit-interval = \"25s\"\n");
    let worker = adpipe_runtime::start(settings, TestFactory::new(&topics)).expect("starts");
    topics
        .wait_for_records("out", 20, Duration::from_secs(20))
        .await;
    let input = topics.name("in");
    let bootstrap = topics.bootstrap.clone();
    tokio::task::block_in_place(|| adpipe_testkit::deny_topic(&bootstrap, &input, "Read", true));
    assert!(
        started.elapsed() < Duration::from_secs(24),
        "too slow to deny before the first commit ({:?}); the fault was not injected",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while adpipe_testkit::metric_value(worker.http_address, "adpipe_commit_failures_total")
        .await
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(Instant::now() < deadline, "the denied commit never failed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::task::block_in_place(|| adpipe_testkit::deny_topic(&bootstrap, &input, "Read", false));
    // The next tick (at most one interval away) must send it again.
    topics.wait_committed_to_end(Duration::from_secs(60)).await;
    worker.stop().await.expect("clean stop");
}
