//! The deduplicator on the real runtime against real Kafka: duplicates,
//! poison records, restarts, late copies and rebalances.

mod support;

use std::time::{Duration, Instant};

use adpipe_codec::{Codec, Encoder, RegistryClient};
use adpipe_deduplicator::DedupSettings;
use adpipe_events::{EventKind, Impression, samples};
use adpipe_schema_registry::RunningRegistry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::{Pipeline, Tuning};

struct Fixture {
    bootstrap: String,
    prefix: String,
    group: String,
    partitions: i32,
    registry: RunningRegistry,
    encoder: Encoder<Impression>,
    producer: FutureProducer,
    config_path: std::path::PathBuf,
}

impl Fixture {
    async fn new(partitions: i32, window: &str, lateness: &str) -> Fixture {
        let pipeline = Pipeline::create("dedup", partitions).await;
        let config_path = pipeline.write_config(&Tuning {
            session_timeout: "10s",
            commit_interval: "100ms",
            revoke_deadline: "5s",
            window,
            allowed_lateness: lateness,
            queue_high_bytes: 65_536,
        });
        let codec = Codec::new(RegistryClient::new(&pipeline.registry.url()).expect("client"));
        let encoder = codec
            .encoder(
                &format!("{}.in-value", pipeline.prefix),
                EventKind::Impression.schema(),
            )
            .await
            .expect("encoder");
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &pipeline.bootstrap)
            .create()
            .expect("producer");
        Fixture {
            group: pipeline.group(),
            bootstrap: pipeline.bootstrap,
            prefix: pipeline.prefix,
            partitions,
            registry: pipeline.registry,
            encoder,
            producer,
            config_path,
        }
    }

    /// Settings of a new instance, with its own empty state directory (as
    /// a fresh container): state reaches it only through the changelog.
    fn settings(&self) -> DedupSettings {
        self.settings_with_state_dir(
            std::env::temp_dir().join(adpipe_testkit::unique(&format!("{}-state", self.prefix))),
        )
    }

    fn settings_with_state_dir(&self, state_dir: std::path::PathBuf) -> DedupSettings {
        let mut settings = DedupSettings::load(Some(&self.config_path), std::iter::empty())
            .expect("valid settings");
        settings.state_dir = state_dir;
        settings
    }

    async fn send(&self, partition: i32, key: &[u8], value: &[u8]) {
        let topic = format!("{}.in", self.prefix);
        self.producer
            .send(
                FutureRecord::to(&topic)
                    .partition(partition)
                    .key(key)
                    .payload(value),
                Duration::from_secs(10),
            )
            .await
            .expect("delivered");
    }

    async fn send_event(&self, event: &Impression) {
        let partition = i32::try_from(
            event.user_id.bytes().map(u32::from).sum::<u32>() % self.partitions.unsigned_abs(),
        )
        .expect("fits");
        self.send(
            partition,
            event.user_id.as_bytes(),
            &self.encoder.encode(event).expect("encodes"),
        )
        .await;
    }

    /// Reads a topic from the start until `expected` records or the timeout.
    fn read(
        &self,
        suffix: &str,
        expected: usize,
        timeout: Duration,
    ) -> Vec<rdkafka::message::OwnedMessage> {
        let topic = format!("{}.{suffix}", self.prefix);
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", adpipe_testkit::unique("reader"))
            .set("isolation.level", "read_committed")
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("metadata");
        let mut assignment = TopicPartitionList::new();
        for partition in metadata.topics()[0].partitions() {
            assignment
                .add_partition_offset(&topic, partition.id(), Offset::Beginning)
                .expect("assign");
        }
        consumer.assign(&assignment).expect("assign");
        let mut records = Vec::new();
        let deadline = Instant::now() + timeout;
        while records.len() < expected && Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                records.push(message.detach());
            }
        }
        records
    }

    /// Waits until the group committed every input partition to its end.
    fn wait_committed_to_end(&self, timeout: Duration) {
        let topic = format!("{}.in", self.prefix);
        let deadline = Instant::now() + timeout;
        while !adpipe_testkit::committed_to_end(&self.bootstrap, &self.group, &topic) {
            assert!(
                Instant::now() < deadline,
                "group did not commit {topic} to its end in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn event_ids(
    records: &[rdkafka::message::OwnedMessage],
    writer: &adpipe_codec::WriterSchema,
) -> Vec<String> {
    records
        .iter()
        .map(|record| {
            let (_, datum) =
                adpipe_codec::split_header(record.payload().expect("value")).expect("framed");
            writer
                .decode_datum::<Impression>(datum)
                .expect("impression")
                .event_id
        })
        .collect()
}

fn writer() -> adpipe_codec::WriterSchema {
    adpipe_codec::WriterSchema::parse(0, EventKind::Impression.schema().to_owned()).expect("schema")
}

fn at(n: u64, event_time: i64) -> Impression {
    let mut event = samples::impression(n);
    event.event_time = event_time;
    event
}

#[tokio::test(flavor = "multi_thread")]
async fn drops_duplicates_and_dead_letters_poison_without_stopping() {
    let fixture = Fixture::new(3, "24h", "1h").await;
    let uniques: Vec<Impression> = (0..300).map(samples::impression).collect();
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("too_short", vec![0, 0]),
        ("bad_magic_byte", vec![7, 0, 0, 0, 1, 2, 3]),
        ("unknown_schema_id", vec![0, 0x7f, 0xff, 0xff, 0xff, 2, 2]),
        ("malformed_datum", {
            let mut truncated = fixture.encoder.encode(&uniques[0]).expect("encodes");
            truncated.truncate(40);
            truncated
        }),
    ];
    for (n, event) in uniques.iter().enumerate() {
        fixture.send_event(event).await;
        if n % 2 == 0 {
            fixture.send_event(&uniques[n / 2]).await; // a retry of an earlier event
        }
        if n % 75 == 0 {
            let (_, bytes) = &poison[n / 75];
            fixture.send(0, b"poison", bytes).await;
        }
    }
    let worker = adpipe_deduplicator::start(fixture.settings()).expect("starts");
    // Everything consumed is committed only once its outputs are acknowledged,
    // so after this the outputs are complete; reading one more than expected
    // (briefly) proves there is no extra.
    fixture.wait_committed_to_end(Duration::from_secs(60));

    let output = fixture.read("out", uniques.len() + 1, Duration::from_secs(3));
    let mut seen = event_ids(&output, &writer());
    seen.sort();
    let mut expected: Vec<_> = uniques.iter().map(|event| event.event_id.clone()).collect();
    expected.sort();
    assert_eq!(seen, expected, "every unique once, no duplicate");

    let dead = fixture.read("dlq", poison.len() + 1, Duration::from_secs(3));
    assert_eq!(dead.len(), poison.len());
    for (record, (reason, bytes)) in dead.iter().zip(&poison) {
        let headers = record.headers().expect("headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|header| header.key == name)
                .and_then(|header| header.value)
                .map(|value| String::from_utf8_lossy(value).into_owned())
        };
        assert_eq!(header("adpipe.dlq.reason").as_deref(), Some(*reason));
        assert_eq!(
            header("adpipe.dlq.topic"),
            Some(format!("{}.in", fixture.prefix))
        );
        assert_eq!(header("adpipe.dlq.partition").as_deref(), Some("0"));
        assert!(header("adpipe.dlq.error").is_some_and(|error| !error.is_empty()));
        assert_eq!(
            record.payload(),
            Some(bytes.as_slice()),
            "original value kept"
        );
        assert_eq!(record.key(), Some(b"poison".as_slice()));
    }

    let metrics = reqwest::get(format!("http://{}/metrics", worker.http_address))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(metrics.contains("adpipe_dead_lettered_total"), "{metrics}");
    assert!(
        metrics.contains("adpipe_event_lag_seconds_bucket"),
        "histograms have buckets"
    );
    let ready = reqwest::get(format!("http://{}/readyz", worker.http_address))
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    worker.stop().await.expect("clean stop");
    fixture.registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn state_survives_a_restart_and_late_copies_follow_the_window() {
    let fixture = Fixture::new(1, "1h", "0s").await;
    let t0 = 1_763_700_000_000;
    let hour = 3_600_000;
    let (a, b) = (at(1, t0), at(2, t0));
    fixture.send_event(&a).await;
    fixture.send_event(&b).await;
    let first = adpipe_deduplicator::start(fixture.settings()).expect("starts");
    assert_eq!(fixture.read("out", 2, Duration::from_secs(30)).len(), 2);
    fixture.wait_committed_to_end(Duration::from_secs(30));
    first.stop().await.expect("clean stop");

    // A new instance restores the seen ids from the changelog.
    fixture.send_event(&a).await; // inside the window: dropped
    let c = at(3, t0 + 2 * hour);
    fixture.send_event(&c).await; // moves the watermark two hours on
    fixture.send_event(&b).await; // now outside the window: passes
    let second = adpipe_deduplicator::start(fixture.settings()).expect("restarts");
    fixture.wait_committed_to_end(Duration::from_secs(30));
    let output = fixture.read("out", 5, Duration::from_secs(5));
    let ids = event_ids(&output, &writer());
    assert_eq!(
        ids,
        vec![
            a.event_id.clone(),
            b.event_id.clone(),
            c.event_id,
            b.event_id
        ]
    );
    second.stop().await.expect("clean stop");
    fixture.registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn state_moves_with_its_partition_on_rebalance() {
    let fixture = Fixture::new(2, "24h", "1h").await;
    let events: Vec<Impression> = (0..200).map(samples::impression).collect();
    for event in &events {
        fixture.send_event(event).await;
    }
    let first = adpipe_deduplicator::start(fixture.settings()).expect("starts");
    assert_eq!(
        fixture
            .read("out", events.len(), Duration::from_secs(30))
            .len(),
        events.len()
    );
    fixture.wait_committed_to_end(Duration::from_secs(30));

    // A second instance joins (it takes one partition), then the first leaves
    // (the second takes both): every partition's state moved with it.
    let second = adpipe_deduplicator::start(fixture.settings()).expect("second starts");
    tokio::time::sleep(Duration::from_secs(4)).await;
    first.stop().await.expect("first stops");
    for event in &events {
        fixture.send_event(event).await; // all duplicates
    }
    let fresh = samples::impression(10_000);
    fixture.send_event(&fresh).await;
    fixture.wait_committed_to_end(Duration::from_secs(60));
    let output = fixture.read("out", events.len() + 2, Duration::from_secs(5));
    assert_eq!(
        output.len(),
        events.len() + 1,
        "only the fresh event got through"
    );
    assert!(event_ids(&output, &writer()).contains(&fresh.event_id));
    second.stop().await.expect("clean stop");
    fixture.registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_loads_its_snapshot_and_replays_only_the_changelog_tail() {
    use adpipe_deduplicator::snapshot::{self, snapshot_path};
    use adpipe_deduplicator::state::id_hash;
    use adpipe_runtime::{StepFactory, TaskAssignment};

    /// A snapshot file's contents, owned, to doctor and write back.
    #[derive(Clone)]
    struct Saved {
        binding: snapshot::Binding,
        entries: Vec<(u128, i64)>,
    }
    let load = |path: &std::path::Path| {
        let bytes = std::fs::read(path).expect("saved");
        let decoded = snapshot::decode(&bytes).expect("valid");
        Saved {
            binding: decoded.binding.clone(),
            entries: decoded.entries().collect(),
        }
    };

    let fixture = Fixture::new(1, "24h", "1h").await;
    let state_dir = std::env::temp_dir().join(adpipe_testkit::unique("snapshot-state"));
    let t0 = samples::impression(0).event_time;
    let firsts: Vec<Impression> = (0..20).map(|n| at(n, t0 + n as i64)).collect();
    for event in &firsts {
        fixture.send_event(event).await;
    }
    let worker = adpipe_deduplicator::start(fixture.settings_with_state_dir(state_dir.clone()))
        .expect("starts");
    fixture.wait_committed_to_end(Duration::from_secs(60));
    worker.stop().await.expect("clean stop");

    // A clean stop saved the state, bound to the changelog's end.
    let settings = fixture.settings_with_state_dir(state_dir.clone());
    let changelog = settings.streams[0].changelog.clone();
    let path = snapshot_path(&state_dir, &changelog, 0);
    let saved = load(&path);
    assert_eq!(saved.binding.offset, 20, "one changelog entry per unique");
    assert_eq!(
        (saved.binding.topic.as_str(), saved.binding.partition),
        (changelog.as_str(), 0)
    );
    assert_eq!(
        saved.binding.last_record.0,
        firsts[19].event_id.as_bytes(),
        "ends at the last entry"
    );
    assert!(!saved.binding.cluster_id.is_empty());
    assert_eq!(saved.entries.len(), 20);

    // Restore reads the snapshot: an id only the snapshot holds is restored…
    let factory = adpipe_deduplicator::DedupFactory::new(settings.clone()).expect("factory");
    let marker = id_hash("only-in-the-snapshot");
    let mut doctored = saved.entries.clone();
    doctored.push((marker, t0 + 30));
    let write = |snapshot: &Saved| {
        snapshot::store(
            &path,
            &snapshot::encode(&snapshot.binding, snapshot.entries.clone().into_iter()),
        )
        .expect("written");
    };
    let doctored = Saved {
        binding: saved.binding.clone(),
        entries: doctored,
    };
    write(&doctored);
    let stream = &settings.streams[0];
    let restored = factory.restore(stream, 0).expect("restores");
    assert!(restored.state().contains(marker), "the snapshot was used");
    assert_eq!(
        (restored.state().len(), restored.from_snapshot),
        (21, Some(20))
    );
    // …but a snapshot bound to another cluster, another partition, an
    // offset past the changelog's end, or a corrupt file is ignored, and the
    // changelog alone rebuilds the state.
    let rebound = |change: &dyn Fn(&mut snapshot::Binding)| {
        let mut snapshot = doctored.clone();
        change(&mut snapshot.binding);
        snapshot
    };
    for (case, snapshot) in [
        (
            "another cluster",
            rebound(&|binding| binding.cluster_id = "another-cluster".to_owned()),
        ),
        (
            "another partition",
            rebound(&|binding| binding.partition = 5),
        ),
        ("past the end", rebound(&|binding| binding.offset = 999)),
    ] {
        write(&snapshot);
        let replayed = factory.restore(stream, 0).expect("restores");
        assert!(
            !replayed.state().contains(marker),
            "{case}: must not be loaded"
        );
        assert_eq!(
            (replayed.state().len(), replayed.from_snapshot),
            (20, None),
            "{case}"
        );
    }
    std::fs::write(&path, b"not a snapshot").expect("written");
    assert_eq!(
        factory.restore(stream, 0).expect("restores").state().len(),
        20
    );
    let step = factory
        .create(&TaskAssignment {
            group: 0,
            inputs: vec![stream.input.clone()],
            partition: 0,
            sub_partition: 0,
            sub_partitions: 1,
        })
        .expect("creates");
    assert_eq!(step.state().len(), 20);

    // Restarted on the saved state plus the tail: copies dropped, news pass.
    write(&saved);
    let news: Vec<Impression> = (20..25).map(|n| at(n, t0 + n as i64)).collect();
    for event in firsts.iter().chain(&news) {
        fixture.send_event(event).await;
    }
    let worker = adpipe_deduplicator::start(fixture.settings_with_state_dir(state_dir.clone()))
        .expect("restarts");
    fixture.wait_committed_to_end(Duration::from_secs(60));
    worker.stop().await.expect("clean stop");
    let output = fixture.read("out", 26, Duration::from_secs(3));
    let ids = event_ids(&output, &writer());
    assert_eq!(ids.len(), 25, "20 firsts + 5 news, no copy of a first");
    let resaved = load(&path);
    assert_eq!(resaved.binding.offset, 25);
    assert_eq!(resaved.entries.len(), 25);

    // The changelog is deleted and created again, and refilled past the
    // snapshot's offset with other events: the record the snapshot ended
    // at is gone, so the snapshot is not loaded.
    let doctored = Saved {
        binding: resaved.binding.clone(),
        entries: resaved
            .entries
            .iter()
            .copied()
            .chain([(marker, t0 + 30)])
            .collect(),
    };
    write(&doctored);
    adpipe_testkit::recreate_topic(
        &fixture.bootstrap,
        &changelog,
        1,
        &[("cleanup.policy", "compact,delete")],
    )
    .await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &fixture.bootstrap)
        .create()
        .expect("producer");
    for n in 0..30 {
        producer
            .send(
                FutureRecord::to(&changelog)
                    .partition(0)
                    .key(&format!("other-{n}"))
                    .payload(&(t0 + n).to_be_bytes()[..]),
                Duration::from_secs(10),
            )
            .await
            .expect("delivered");
    }
    let replayed = factory.restore(stream, 0).expect("restores");
    assert_eq!(
        replayed.from_snapshot, None,
        "a recreated changelog's snapshot is ignored"
    );
    assert!(!replayed.state().contains(marker));
    assert!(!replayed.state().contains(id_hash(&firsts[0].event_id)));
    assert!(replayed.state().contains(id_hash("other-29")));
    assert_eq!(replayed.state().len(), 30);
    let _ = std::fs::remove_dir_all(state_dir);
    fixture.registry.stop().await;
}

/// Absurd event times (zero, seconds, microseconds, the far future) go to
/// the dead-letter topic with their reason before they touch the window: a
/// far-future time cannot move it, so copies of recent events are still
/// dropped after it, and the partition goes on.
#[tokio::test(flavor = "multi_thread")]
async fn absurd_event_times_are_dead_lettered_and_never_move_the_window() {
    let fixture = Fixture::new(1, "1h", "1m").await;
    let now = adpipe_runtime::event_time::now_ms();
    let recent: Vec<Impression> = (0..10).map(|n| at(n, now - 60_000 + n as i64)).collect();
    let absurd = [
        (at(100, 0), "event_time_implausible"),
        (at(101, now / 1000), "event_time_implausible"),
        (at(102, now * 1000), "event_time_in_future"),
        (at(103, now + 30 * 86_400_000), "event_time_in_future"),
    ];
    for event in &recent {
        fixture.send_event(event).await;
    }
    for (event, _) in &absurd {
        fixture.send_event(event).await;
    }
    // Copies of the recent events: with the window moved to the far
    // future, they would be outside it and pass.
    for event in &recent {
        fixture.send_event(event).await;
    }
    let worker = adpipe_deduplicator::start(fixture.settings()).expect("starts");
    fixture.wait_committed_to_end(Duration::from_secs(60));
    worker.stop().await.expect("clean stop");

    let output = fixture.read("out", recent.len() + 1, Duration::from_secs(3));
    let mut seen = event_ids(&output, &writer());
    seen.sort();
    let mut expected: Vec<String> = recent.iter().map(|event| event.event_id.clone()).collect();
    expected.sort();
    assert_eq!(seen, expected, "each recent event once; no absurd one");
    let dead = fixture.read("dlq", absurd.len() + 1, Duration::from_secs(3));
    let reasons: Vec<String> = dead
        .iter()
        .map(|record| {
            let header = record
                .headers()
                .and_then(|headers| {
                    headers
                        .iter()
                        .find(|header| header.key == "adpipe.dlq.reason")
                })
                .and_then(|header| header.value)
                .unwrap_or_default();
            String::from_utf8_lossy(header).into_owned()
        })
        .collect();
    let expected_reasons: Vec<&str> = absurd.iter().map(|(_, reason)| *reason).collect();
    assert_eq!(reasons, expected_reasons);
    fixture.registry.stop().await;
}
