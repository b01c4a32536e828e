//! The runtime on the real central cluster (`infra/kafka.sh start`), with
//! the test step of `support`: processing timeouts and failure actions,
//! sub-partitions, and the faults that must never lose a record — a
//! panicking step, an output the broker rejects, an output that is lost,
//! a revoke that must not wait for ever — plus held records and timers,
//! tasks with several time-aligned inputs, and the start-up topic check.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use adpipe_runtime::dead_letter::{
    HEADER_OFFSET, HEADER_OUTPUT_TOPIC, HEADER_PARTITION, HEADER_REASON, HEADER_TOPIC,
    HEADER_VALUE_OMITTED, REASON_OUTPUT_REJECTED,
};
use adpipe_runtime::{StepError, WorkerError, heartbeat};
use rdkafka::message::Message;
use support::{HOLD, Produced, TestFactory, Topics, header, records, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_step_is_cut_off_and_dead_lettered_while_the_partition_goes_on() {
    let topics = Topics::create("rt-timeout-dlq", 1).await;
    let input = records(40, &[(5, "hang"), (15, "hang"), (25, "hang"), (35, "hang")]);
    topics.produce(&input).await;
    let settings = topics.settings(
        "processing-timeout = \"300ms\"\n[runtime.on-error-kind]\nprocessing_timeout = \"dead-letter\"\n",
    );
    topics.run_to_end(settings, TestFactory::new(&topics)).await;

    let expected_out: Vec<String> = input
        .iter()
        .filter(|(_, _, value)| value.starts_with("good"))
        .map(|(_, _, value)| value.clone())
        .collect();
    assert_eq!(
        topics.values("out").await,
        expected_out,
        "every good record, in order, once"
    );
    let dead = topics.read("dlq").await;
    let dead_values: Vec<String> = dead.iter().map(|record| text(record.payload())).collect();
    assert_eq!(dead_values, ["hang-5", "hang-15", "hang-25", "hang-35"]);
    for record in &dead {
        assert_eq!(
            header(record, HEADER_REASON).as_deref(),
            Some("processing_timeout")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_cut_off_by_the_timeout_is_retried_by_default_and_its_outputs_leave_once() {
    let topics = Topics::create("rt-timeout-retry", 1).await;
    let input: Vec<(i32, String, String)> = ["a", "slow-once-b", "c"]
        .iter()
        .map(|value| (0, "user".to_owned(), (*value).to_owned()))
        .collect();
    topics.produce(&input).await;
    let settings = topics.settings("processing-timeout = \"300ms\"\n");
    topics.run_to_end(settings, TestFactory::new(&topics)).await;

    let out: Vec<(String, Option<String>)> = topics
        .read("out")
        .await
        .iter()
        .map(|record| (text(record.payload()), header(record, "attempt")))
        .collect();
    assert_eq!(
        out,
        [
            ("a".to_owned(), Some("1".to_owned())),
            ("slow-once-b".to_owned(), Some("2".to_owned())),
            ("c".to_owned(), Some("1".to_owned())),
        ],
        "the cut-off attempt emitted nothing; the retry did, in order"
    );
    assert!(topics.read("dlq").await.is_empty());
}

/// Without `on-error-kind`, a record that always hangs is retried
/// `processing-timeout-retries` times and then dead-lettered: it cannot
/// stall its partition for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_always_times_out_is_dead_lettered_after_bounded_retries() {
    let topics = Topics::create("rt-timeout-bounded", 1).await;
    topics.produce(&records(6, &[(2, "hang")])).await;
    let settings = topics.settings(
        "processing-timeout = \"200ms\"\nprocessing-timeout-retries = 2\nretry-initial-backoff = \"10ms\"\n",
    );
    topics.run_to_end(settings, TestFactory::new(&topics)).await;
    assert_eq!(topics.values("dlq").await, ["hang-2"]);
    assert_eq!(topics.values("out").await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_partitions_run_one_partitions_keys_in_parallel_and_keep_each_keys_order() {
    const KEYS: usize = 32;
    const PER_KEY: usize = 25;
    let topics = Topics::create("rt-subpartitions", 2).await;
    let mut input = Vec::new();
    for sequence in 0..PER_KEY {
        for key in 0..KEYS {
            input.push((
                (key % 2) as i32,
                format!("user-{key}"),
                format!("user-{key}/{sequence}"),
            ));
        }
    }
    topics.produce(&input).await;
    let settings = topics.settings("sub-partitions = 8\n");
    let mut factory = TestFactory::new(&topics);
    factory.delay = Duration::from_millis(2);
    let most_running = std::sync::Arc::clone(&factory.most_running);
    topics.run_to_end(settings, factory).await;

    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for record in topics.read("out").await {
        let value = text(record.payload());
        let (key, sequence) = value.split_once('/').expect("key/sequence");
        assert_eq!(text(record.key()), key, "key travels with its value");
        by_key
            .entry(key.to_owned())
            .or_default()
            .push(sequence.parse().expect("number"));
    }
    assert_eq!(by_key.len(), KEYS);
    for (key, sequences) in &by_key {
        assert_eq!(
            sequences,
            &(0..PER_KEY).collect::<Vec<_>>(),
            "{key}: every record once, in order"
        );
    }
    // 2 partitions alone allow 2 at once; sub-partitions allow up to 16.
    let most = most_running.load(Ordering::Acquire);
    assert!(
        most > 2,
        "sub-partitions should process more records at once than partitions; at most {most} were"
    );
}

/// A panic is not "done": the worker stops by itself, commits only the
/// records before the panicking one, and after the fix (a restart with a
/// calm step) that record and everything after it are processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_step_stops_the_worker_and_its_record_is_read_again() {
    let topics = Topics::create("rt-panic", 1).await;
    let input = records(20, &[(10, "panic")]);
    topics.produce(&input).await;
    let factory = TestFactory::new(&topics);
    let calm = std::sync::Arc::clone(&factory.calm);
    let worker = adpipe_runtime::start(topics.settings(""), factory).expect("starts");
    let reason = tokio::time::timeout(Duration::from_secs(60), worker.stopped())
        .await
        .expect("the worker stops by itself after a panic");
    assert!(
        reason.contains("panicked") && reason.contains("offset 10"),
        "{reason}"
    );
    let error = worker
        .stop()
        .await
        .expect_err("a stop after a panic reports it");
    assert!(matches!(error, WorkerError::Fatal(_)), "{error}");
    assert_eq!(
        topics.committed(),
        [Some(10)],
        "committed up to the panicking record, never past it"
    );

    calm.store(true, Ordering::Release);
    let mut restarted = TestFactory::new(&topics);
    restarted.calm = calm;
    topics.run_to_end(topics.settings(""), restarted).await;
    let out = topics.values("out").await;
    assert!(
        out.contains(&"panic-10".to_owned()),
        "the record is read again: {out:?}"
    );
    for (_, _, value) in &input {
        assert!(out.contains(value), "{value} missing");
    }
}

/// A step whose creation fails transiently (a leader election under the
/// restore's metadata request) is created again, and the partition goes on;
/// one that fails for good stops the worker with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_creation_failing_transiently_is_tried_again_and_for_good_stops_the_worker() {
    let topics = Topics::create("rt-create", 1).await;
    let input = records(20, &[]);
    topics.produce(&input).await;
    let factory = TestFactory::new(&topics);
    let failures = std::sync::Arc::clone(&factory.create_failures);
    failures.lock().extend([
        StepError::transient("metadata", "Not leader for partition"),
        StepError::transient("metadata", "Not leader for partition"),
    ]);
    topics.run_to_end(topics.settings(""), factory).await;
    assert!(failures.lock().is_empty(), "created on the third try");
    let out = topics.values("out").await;
    for (_, _, value) in &input {
        assert!(out.contains(value), "{value} missing");
    }

    let topics = Topics::create("rt-create-fatal", 1).await;
    topics.produce(&records(5, &[])).await;
    let factory = TestFactory::new(&topics);
    factory.create_failures.lock().push(StepError::fatal(
        "corrupt_state",
        "the snapshot does not match",
    ));
    let worker = adpipe_runtime::start(topics.settings(""), factory).expect("starts");
    let reason = tokio::time::timeout(Duration::from_secs(60), worker.stopped())
        .await
        .expect("the worker stops by itself");
    assert!(
        reason.contains("creating the step") && reason.contains("snapshot"),
        "{reason}"
    );
    let _ = worker.stop().await;
    assert_eq!(topics.committed(), [None], "nothing committed");
}

/// Outputs the broker (or librdkafka's size check) will never take go to
/// the dead-letter topic with the coordinates of their input; the worker
/// does not stop and everything else goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_that_can_never_be_written_are_dead_lettered_with_their_inputs_coordinates() {
    let topics = Topics::create("rt-rejected", 1).await;
    let input = records(12, &[(3, "big"), (7, "huge")]);
    topics.produce(&input).await;
    let worker =
        adpipe_runtime::start(topics.settings(""), TestFactory::new(&topics)).expect("starts");
    topics.wait_committed_to_end(Duration::from_secs(60)).await;
    worker
        .stop()
        .await
        .expect("the worker never stopped by itself");

    assert_eq!(
        topics.values("out").await.len(),
        10,
        "every other record went out"
    );
    let dead = topics.read("dlq").await;
    let by_offset: BTreeMap<String, &rdkafka::message::OwnedMessage> = dead
        .iter()
        .map(|record| (header(record, HEADER_OFFSET).unwrap_or_default(), record))
        .collect();
    assert_eq!(by_offset.keys().collect::<Vec<_>>(), ["3", "7"], "{dead:?}");
    for (offset, output_topic) in [("3", topics.name("narrow")), ("7", topics.name("out"))] {
        let record = by_offset[offset];
        assert_eq!(
            header(record, HEADER_REASON).as_deref(),
            Some(REASON_OUTPUT_REJECTED)
        );
        assert_eq!(header(record, HEADER_TOPIC), Some(topics.name("in")));
        assert_eq!(header(record, HEADER_PARTITION).as_deref(), Some("0"));
        assert_eq!(header(record, HEADER_OUTPUT_TOPIC), Some(output_topic));
        assert!(
            header(record, HEADER_VALUE_OMITTED).is_some(),
            "a too-large value is not kept"
        );
    }
}

/// A worker on a current-thread runtime (an application's own
/// `#[tokio::main(flavor = "current_thread")]`) still tells its step of the
/// stop: `block_in_place`, which lets a step block on the services'
/// multi-thread runtime, panics on this one, and the step never learnt that
/// it was drained (nor could it save its state).
#[tokio::test]
async fn a_step_on_a_current_thread_runtime_is_told_of_its_stop() {
    let topics = Topics::create("rt-current-thread", 1).await;
    topics.produce(&records(10, &[])).await;
    let factory = TestFactory::new(&topics);
    let revokes = std::sync::Arc::clone(&factory.revokes);
    topics.run_to_end(topics.settings(""), factory).await;
    assert_eq!(topics.values("out").await.len(), 10, "every record passed");
    assert_eq!(
        *revokes.lock(),
        [true],
        "the step learnt of its stop, drained"
    );
}

/// An output that is lost (writing its topic is denied by a real ACL, an
/// error librdkafka does not retry) is never "drained": the stop — the only
/// commit in this test — commits exactly the records before it, and the
/// step is told not to trust its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_after_a_lost_output_commits_only_the_prefix_and_is_not_drained() {
    let topics = Topics::create("rt-lost-output", 1).await;
    let fragile = topics.name("fragile");
    tokio::task::block_in_place(|| {
        adpipe_testkit::deny_topic(&topics.bootstrap, &fragile, "Write", true)
    });
    topics.produce(&records(10, &[(4, "fragile")])).await;
    let settings = topics.settings("commit-interval = \"1h\"\n");
    let factory = TestFactory::new(&topics);
    let revokes = std::sync::Arc::clone(&factory.revokes);
    let worker = adpipe_runtime::start(settings, factory).expect("starts");
    topics
        .wait_for_records("out", 9, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // the denial comes back
    let _ = worker.stop().await;
    tokio::task::block_in_place(|| {
        adpipe_testkit::deny_topic(&topics.bootstrap, &fragile, "Write", false)
    });
    assert_eq!(
        topics.committed(),
        [Some(4)],
        "the prefix before the lost output"
    );
    assert_eq!(
        *revokes.lock(),
        [false],
        "a partition with a lost output is not drained"
    );
}

/// A record whose output could not even be handed to the producer before a
/// stop (its queue full: one message allowed, held back by a long linger)
/// is abandoned after the step saw it. Its task has nothing in flight and
/// no failure, yet it is not drained: the step's state holds the record
/// (the deduplicator's seen id), and a snapshot of it would drop the record
/// as a duplicate when it is read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_an_output_waits_for_queue_space_is_not_drained() {
    let topics = Topics::create("rt-queue-full", 2).await;
    topics
        .produce(&[
            (0, "user-0".to_owned(), "good-0".to_owned()),
            (1, "user-1".to_owned(), "good-1".to_owned()),
        ])
        .await;
    let mut settings = topics.settings("commit-interval = \"1h\"\nrevoke-deadline = \"1s\"\n");
    for (key, value) in [
        ("queue.buffering.max.messages", "1"),
        ("linger.ms", "20000"),
    ] {
        settings
            .kafka
            .producer
            .insert(key.to_owned(), value.to_owned());
    }
    let factory = TestFactory::new(&topics);
    let revokes = std::sync::Arc::clone(&factory.revokes);
    let worker = adpipe_runtime::start(settings, factory).expect("starts");
    // Both records processed: one output lingers in the queue, the other
    // waits for space.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let _ = worker.stop().await;
    assert_eq!(topics.committed(), [None, None], "nothing is done");
    assert_eq!(
        *revokes.lock(),
        [false, false],
        "neither the partition with a lingering output nor the one whose output never left is drained"
    );
}

/// A partition revoked while its task's outputs still wait in the shared
/// producer (a long linger; a leader moving after a broker died did the
/// same in the chaos run) and assigned back to the same worker: its new
/// task is created only once those outputs are settled, so a step that
/// reads its output's tail to learn what was already emitted (the
/// deduplicator's and the joiner's resume scan) sees them. Without the
/// wait the new task saw an empty output and emitted everything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_back_after_a_revoke_waits_for_its_old_outputs_to_settle() {
    let topics = Topics::create("rt-settle", 2).await;
    let per_partition = 5;
    let produced: Vec<(i32, String, String)> = (0..2)
        .flat_map(|partition| {
            (0..per_partition).map(move |index| {
                (
                    partition,
                    format!("user-{partition}-{index}"),
                    format!("good-{partition}-{index}"),
                )
            })
        })
        .collect();
    topics.produce(&produced).await;
    let mut lingering = topics.settings("revoke-deadline = \"1s\"\n");
    lingering
        .kafka
        .producer
        .insert("linger.ms".to_owned(), "12000".to_owned());
    let mut factory = TestFactory::new(&topics);
    factory.watch_outputs = Some(topics.bootstrap.clone());
    let outputs_at_create = std::sync::Arc::clone(&factory.outputs_at_create);
    let first = adpipe_runtime::start(lingering, factory).expect("starts");
    // Both partitions' records processed; their outputs linger.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(outputs_at_create.lock().len(), 2, "one task per partition");
    // A second member: the eager rebalance revokes both partitions from the
    // first worker and gives one back.
    let second =
        adpipe_runtime::start(topics.settings(""), TestFactory::new(&topics)).expect("starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while outputs_at_create.lock().len() < 3 {
        assert!(Instant::now() < deadline, "no partition came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (partition, seen) = outputs_at_create.lock()[2];
    assert!(
        seen >= per_partition,
        "partition {partition} came back while its {per_partition} outputs were still in the producer: its new task saw {seen} in the output"
    );
    let _ = second.stop().await;
    let _ = first.stop().await;
}

/// A revoke (here a stop) never waits longer than the revoke deadline for
/// a step that hangs, a retry sleeping out a long backoff, or a restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_interrupts_a_hanging_step_a_retry_sleep_and_a_restore() {
    for (case, special, create_delay) in [
        ("hanging step", "hang", Duration::ZERO),
        ("retry sleep", "fail", Duration::ZERO),
        ("restore", "good", Duration::from_secs(3600)),
    ] {
        let topics = Topics::create("rt-interrupt", 1).await;
        topics.produce(&records(5, &[(2, special)])).await;
        let settings = topics.settings(
            "processing-timeout = \"1h\"\nretry-initial-backoff = \"1h\"\nretry-max-backoff = \"1h\"\nrevoke-deadline = \"2s\"\n",
        );
        let mut factory = TestFactory::new(&topics);
        factory.create_delay = create_delay;
        let end_restores = std::sync::Arc::clone(&factory.end_restores);
        let worker = adpipe_runtime::start(settings, factory).expect("starts");
        if create_delay.is_zero() {
            topics
                .wait_for_records("out", 2, Duration::from_secs(60))
                .await;
        } else {
            tokio::time::sleep(Duration::from_secs(5)).await; // assigned, restoring
        }
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(15), worker.stop())
            .await
            .unwrap_or_else(|_| panic!("{case}: the stop did not finish in time"))
            .expect("clean stop");
        let took = started.elapsed();
        // The revoke deadline (2 s) bounds the wait for outputs in flight;
        // nothing may wait out the step, the backoff or the restore.
        assert!(took < Duration::from_secs(4), "{case}: stop took {took:?}");
        end_restores.store(true, Ordering::Release);
        let expected = if create_delay.is_zero() {
            Some(2)
        } else {
            None
        };
        assert_eq!(
            topics.committed(),
            [expected],
            "{case}: the stuck record is not done"
        );
    }
}

/// A held record (deferred acknowledgement) is committed only once it is
/// released, after its output — emitted later, from a timer — is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_record_is_committed_only_after_its_release() {
    let topics = Topics::create("rt-held", 1).await;
    topics.produce(&records(6, &[(2, "hold")])).await;
    let worker =
        adpipe_runtime::start(topics.settings(""), TestFactory::new(&topics)).expect("starts");
    topics
        .wait_for_records("out", 5, Duration::from_secs(60))
        .await;
    let held_since = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await; // a few commit ticks
    if held_since.elapsed() < HOLD {
        assert_eq!(topics.committed(), [Some(2)], "not past the held record");
    }
    topics.wait_committed_to_end(Duration::from_secs(30)).await;
    worker.stop().await.expect("clean stop");
    let out = topics.values("out").await;
    assert_eq!(out.len(), 6);
    assert_eq!(
        out.last().map(String::as_str),
        Some("hold-2"),
        "emitted after the others"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_to_start_when_its_topics_do_not_fit() {
    let topics = Topics::create_with_inputs("rt-topics", 2, &["in", "in2"]).await;
    adpipe_testkit::create_topics(&topics.bootstrap, &[(&topics.name("in3"), 3, &[])]).await;
    let mut settings = topics.settings_for(&[&["in", "in3"]], "");
    settings.outputs.push(adpipe_runtime::OutputTopic {
        topic: topics.name("missing-out"),
        partitions_like: None,
    });
    settings.outputs.push(adpipe_runtime::OutputTopic {
        topic: topics.name("dlq"), // 1 partition, but inputs have 2
        partitions_like: Some(topics.name("in")),
    });
    settings.dead_letter_topic = topics.name("missing-dlq");
    let Err(WorkerError::Topics(problems)) =
        adpipe_runtime::start(settings, TestFactory::new(&topics))
    else {
        panic!("must refuse to start");
    };
    let all = problems.join("\n");
    assert_eq!(problems.len(), 4, "{all}");
    for expected in [
        "not co-partitioned",
        "missing-out does not exist",
        "has 1 partitions",
        "missing-dlq",
    ] {
        assert!(all.contains(expected), "{expected}: {all}");
    }
}

/// A topic the cluster's first answer lacks (a broker behind its
/// controller) is looked for again before the worker refuses: here the
/// second input is created 3 s after the worker began its check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waits_a_moment_for_a_topic_the_cluster_does_not_yet_show() {
    let topics = Topics::create("rt-late-topic", 1).await;
    let late = topics.name("late");
    let bootstrap = topics.bootstrap.clone();
    let creator = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        adpipe_testkit::create_topics(&bootstrap, &[(&late, 1, &[])]).await;
    });
    let settings = topics.settings_for(&[&["in", "late"]], "max-idle = \"1s\"\n");
    let worker = adpipe_runtime::start(settings, TestFactory::new(&topics))
        .expect("starts once the late topic shows");
    creator.await.expect("topic created");
    let t = adpipe_runtime::event_time::now_ms() - 60_000;
    topics.produce_to("late", &[timed("from-late", t)]).await;
    topics
        .wait_for_records("out", 1, Duration::from_secs(60))
        .await;
    worker.stop().await.expect("clean stop");
    assert_eq!(topics.values("out").await, ["from-late"]);
}

fn timed(value: &str, timestamp_ms: i64) -> Produced {
    Produced {
        partition: 0,
        key: "user".to_owned(),
        value: Some(value.to_owned()),
        timestamp_ms: Some(timestamp_ms),
        headers: Vec::new(),
    }
}

fn heartbeat_at(watermark_ms: i64) -> Produced {
    Produced {
        partition: 0,
        key: "heartbeat".to_owned(),
        value: None,
        timestamp_ms: Some(watermark_ms),
        headers: vec![(heartbeat::HEADER.to_owned(), watermark_ms.to_string())],
    }
}

/// Two inputs in one task: records go to the step in event-time order
/// across both; when one input is at its end and silent for `max-idle`,
/// the other goes on alone; its straggler is processed and marked late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_inputs_are_fed_in_event_time_order_and_stragglers_come_late() {
    let topics = Topics::create_with_inputs("rt-aligned", 1, &["in", "in2"]).await;
    let t = adpipe_runtime::event_time::now_ms() - 600_000;
    topics
        .produce_to(
            "in",
            &[
                timed("a10", t + 10),
                timed("a30", t + 30),
                timed("a50", t + 50),
            ],
        )
        .await;
    topics
        .produce_to(
            "in2",
            &[
                timed("b20", t + 20),
                timed("b40", t + 40),
                timed("b60", t + 60),
            ],
        )
        .await;
    let settings = topics.settings_for(&[&["in", "in2"]], "max-idle = \"1s\"\n");
    let worker = adpipe_runtime::start(settings, TestFactory::new(&topics)).expect("starts");
    // b60 can only go once "in" is idle (at its end, silent for 1 s).
    topics
        .wait_for_records("out", 6, Duration::from_secs(60))
        .await;
    assert_eq!(
        topics.values("out").await,
        ["a10", "b20", "a30", "b40", "a50", "b60"]
    );
    topics
        .produce_to("in", &[timed("a25-straggler", t + 25)])
        .await;
    topics
        .wait_for_records("out", 7, Duration::from_secs(30))
        .await;
    topics.wait_committed_to_end(Duration::from_secs(30)).await;
    topics
        .wait_committed_to_end_of("in2", Duration::from_secs(30))
        .await;
    worker.stop().await.expect("clean stop");
    let out = topics.read("out").await;
    let straggler = out.last().expect("seven records");
    assert_eq!(text(straggler.payload()), "a25-straggler");
    assert_eq!(
        header(straggler, "lateness").as_deref(),
        Some("35"),
        "60 - 25"
    );
}

/// A heartbeat (an in-band watermark) lets the other input's records up
/// to it pass while its own input has no data; never further. Heartbeats
/// never reach the step, and their offsets are committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_advance_an_input_without_data_and_never_reach_the_step() {
    let topics = Topics::create_with_inputs("rt-heartbeat", 1, &["in", "in2"]).await;
    let t = adpipe_runtime::event_time::now_ms() - 600_000;
    topics
        .produce_to(
            "in",
            &[
                timed("a10", t + 10),
                timed("a20", t + 20),
                timed("a30", t + 30),
            ],
        )
        .await;
    topics.produce_to("in2", &[heartbeat_at(t + 25)]).await;
    // A long max-idle: only the heartbeat can let "in" pass.
    let settings = topics.settings_for(&[&["in", "in2"]], "max-idle = \"1h\"\n");
    let worker = adpipe_runtime::start(settings, TestFactory::new(&topics)).expect("starts");
    topics
        .wait_for_records("out", 2, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        topics.values("out").await,
        ["a10", "a20"],
        "a30 is past the watermark"
    );
    topics.produce_to("in2", &[heartbeat_at(t + 35)]).await;
    topics
        .wait_for_records("out", 3, Duration::from_secs(30))
        .await;
    topics
        .wait_committed_to_end_of("in2", Duration::from_secs(30))
        .await;
    worker.stop().await.expect("clean stop");
    assert_eq!(topics.values("out").await, ["a10", "a20", "a30"]);
}

/// A backlog on many partitions queues at most `queue-total-bytes`
/// together: each partition is paused at its share of it, not at
/// `queue-high-bytes` — and every record still goes through once the
/// tasks take them. The tasks restore (slowly) while the consumer fetches,
/// like a deduplicator restarted behind on every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_on_many_partitions_queues_at_most_the_total() {
    const PARTITIONS: i32 = 6;
    const PER_PARTITION: usize = 3_000; // ~3 MiB: over queue-high-bytes
    let topics = Topics::create("rt-queue-total", PARTITIONS).await;
    let padding = "x".repeat(1_000);
    let input: Vec<(i32, String, String)> = (0..PARTITIONS)
        .flat_map(|partition| {
            let padding = &padding;
            (0..PER_PARTITION).map(move |index| {
                (
                    partition,
                    format!("user-{index}"),
                    format!("good-{partition}-{index}-{padding}"),
                )
            })
        })
        .collect();
    topics.produce(&input).await;
    // One partition alone may queue 2 MiB; all six together 3 MiB.
    let settings = topics.settings(
        "queue-high-bytes = 2097152\nqueue-low-bytes = 524288\nqueue-total-bytes = 3145728\n",
    );
    let mut factory = TestFactory::new(&topics);
    factory.create_delay = Duration::from_secs(3600);
    let end_restores = std::sync::Arc::clone(&factory.end_restores);
    adpipe_runtime::telemetry::install_recorder().expect("a recorder");
    let worker = adpipe_runtime::start(settings, factory).expect("starts");

    // Queued bytes by partition, as the worker reports them.
    let input_topic = topics.name("in");
    let queued = || -> Vec<f64> {
        let text = adpipe_runtime::telemetry::render().expect("rendered");
        (0..PARTITIONS)
            .map(|partition| {
                let labels = format!("topic=\"{input_topic}\",partition=\"{partition}\"");
                adpipe_testkit::metric_sum_in(&text, "adpipe_queue_bytes", &labels).unwrap_or(0.0)
            })
            .collect()
    };
    // Wait until every partition has queued what it may (the fetches stop).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = queued();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = queued();
        if now == last && now.iter().all(|bytes| *bytes > 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "queues still moving: {now:?}");
        last = now;
    }
    let share = 3_145_728.0 / f64::from(PARTITIONS);
    let one_record = 1_200.0; // the value, key and the runtime's per-record count
    for (partition, bytes) in last.iter().enumerate() {
        assert!(
            *bytes <= share + one_record,
            "partition {partition} queued {bytes} bytes, over its share {share}: {last:?}"
        );
        assert!(
            *bytes >= share / 2.0,
            "partition {partition} queued only {bytes} bytes (was it fetched?): {last:?}"
        );
    }

    // The restores end: every record goes through, once.
    end_restores.store(true, Ordering::Release);
    topics.wait_committed_to_end(Duration::from_secs(120)).await;
    worker.stop().await.expect("clean stop");
    let mut out = topics.values("out").await;
    out.sort();
    let mut expected: Vec<String> = input.into_iter().map(|(_, _, value)| value).collect();
    expected.sort();
    assert_eq!(out.len(), expected.len(), "every record, once");
    assert!(out == expected, "the outputs are the inputs");
}
