//! Services that store their own offsets (the stats-counter keeps them in
//! PostgreSQL, in the transaction of its results): on the real central
//! cluster, a partition whose service knows where it left off starts
//! exactly there — not at the group's commit — and a service that cannot
//! tell stops instead of resuming from a guess.

mod support;

use std::sync::Arc;
use std::time::Duration;

use adpipe_runtime::AssignedPartition;
use parking_lot::Mutex;
use support::{StoringFactory, TestFactory, Topics, records};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_starts_at_the_offset_its_service_stored_not_at_the_groups_commit() {
    let topics = Topics::create("rt-stored", 2).await;
    topics.produce(&records(10, &[])).await; // partition 0, offsets 0..9
    topics.commit_group_offset(8);
    let asked = Arc::new(Mutex::new(Vec::new()));
    let factory = StoringFactory {
        inner: TestFactory::new(&topics),
        stored: Ok(vec![(topics.name("in"), 0, 3)]),
        asked: Arc::clone(&asked),
    };
    let worker = adpipe_runtime::start(topics.settings(""), factory).expect("starts");
    topics
        .wait_for_records("out", 7, Duration::from_secs(60))
        .await;
    topics.wait_committed_to_end(Duration::from_secs(30)).await;
    worker.stop().await.expect("clean stop");
    let out = topics.values("out").await;
    let expected: Vec<String> = (3..10).map(|index| format!("good-{index}")).collect();
    assert_eq!(
        out, expected,
        "from the stored offset 3: not from the group's 8, not from 0"
    );
    let asked = asked.lock();
    let partition = |partition, committed| AssignedPartition {
        topic: topics.name("in"),
        partition,
        committed,
    };
    assert!(
        asked.iter().any(|partitions| {
            partitions.contains(&partition(0, Some(8))) && partitions.contains(&partition(1, None))
        }),
        "asked about both assigned partitions, with the group's commits: {asked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_cannot_tell_its_offsets_stops_instead_of_guessing() {
    let topics = Topics::create("rt-stored-down", 1).await;
    topics.produce(&records(5, &[])).await;
    let factory = StoringFactory {
        inner: TestFactory::new(&topics),
        stored: Err("the database is down".to_owned()),
        asked: Arc::default(),
    };
    let worker = adpipe_runtime::start(topics.settings(""), factory).expect("starts");
    let reason = tokio::time::timeout(Duration::from_secs(60), worker.stopped())
        .await
        .expect("the worker stops by itself");
    assert!(reason.contains("the database is down"), "{reason}");
    let _ = worker.stop().await;
    assert!(
        topics.values("out").await.is_empty(),
        "nothing processed from a guessed offset"
    );
}
