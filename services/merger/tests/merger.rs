//! The merger against real Kafka: two DC clusters replicated to central by
//! the real MirrorMaker 2 (`infra/mirrormaker.sh start`), in-band
//! heartbeats, poison records, co-partitioning, and two instances sharing
//! the work.

mod support;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use adpipe_runtime::WorkerError;
use rdkafka::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::{
    DCS, KINDS, Rig, dead_letter_reasons, live_publications, merged_counts, published_counts,
    spawn_merger,
};

/// Events published live in both DCs (event time = wall clock, with
/// heartbeats): MirrorMaker 2 replicates them; every partition of the merged
/// output is in event-time order, with nothing late, and every published
/// record is merged exactly once, tagged with its DC and source offset.
/// Poison records in a DC topic go to the DLQ with their reason; the merge
/// goes on.
#[tokio::test(flavor = "multi_thread")]
async fn merges_two_dcs_in_event_time_order_through_mirror_maker() {
    let mut rig = Rig::new("mg-order", 3).await;
    rig.start_heartbeats(Duration::from_secs(5));
    tokio::task::block_in_place(|| rig.wait_for_replicas(Duration::from_secs(90)));
    let rate = 8_000.0;
    let publications = live_publications(12_000, rate);
    // Both DCs are live (heartbeats every 500 ms), so the merge never has
    // to go on without one: max-idle only has to outlast a stall of
    // MirrorMaker 2's copy (heartbeats stall with it). At 3 s, one such
    // stall let dc1 run ahead of dc2 (a record came 436 ms late; 1 run in
    // 3 here, and in CI).
    let worker = adpipe_merger::start(rig.settings("max-idle = \"30s\"")).expect("starts");

    let poison = [
        ("too_short", vec![0_u8, 0]),
        ("bad_magic_byte", vec![7, 0, 0, 0, 1, 2, 3]),
        ("unknown_schema_id", vec![0, 0x7f, 0xff, 0xff, 0xff, 2, 2]),
    ];
    let (first, rest) = publications.split_at(publications.len() / 2);
    tokio::task::block_in_place(|| rig.publish(first, rate));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &rig.dcs[0].bootstrap)
        .create()
        .expect("producer");
    for (_, bytes) in &poison {
        producer
            .send(
                FutureRecord::to(&rig.dc_topic("impressions"))
                    .partition(1)
                    .key("poison")
                    .payload(bytes),
                Duration::from_secs(10),
            )
            .await
            .expect("poison published");
    }
    tokio::task::block_in_place(|| rig.publish(rest, rate));
    tokio::task::block_in_place(|| {
        rig.wait_for_merged(publications.len(), Duration::from_secs(120));
        rig.wait_committed_to_end(Duration::from_secs(60));
    });
    let late = adpipe_testkit::metric_value(worker.http_address, "adpipe_late_records_total").await;
    worker.stop().await.expect("clean stop");
    rig.stop_heartbeats();

    let runtime = tokio::runtime::Handle::current();
    let merged = tokio::task::block_in_place(|| rig.read_merged(&runtime));
    assert_eq!(
        merged_counts(&merged),
        published_counts(&publications),
        "every published record merged exactly once"
    );
    assert_eq!(merged.len(), publications.len());
    let mut partitions: std::collections::BTreeMap<(String, i32), Vec<i64>> = Default::default();
    for record in &merged {
        assert!(record.source_offset >= 0, "{record:?}");
        assert_eq!(record.lateness_ms, None, "nothing late: {record:?}");
        partitions
            .entry((record.topic.clone(), record.partition))
            .or_default()
            .push(record.event_time);
    }
    assert_eq!(partitions.len(), KINDS.len() * 3);
    for ((topic, partition), times) in &partitions {
        assert!(
            times.windows(2).all(|pair| pair[0] <= pair[1]),
            "{topic}-{partition} is not in event-time order"
        );
    }
    assert_eq!(late, Some(0.0), "no record counted late");
    let dlq = format!("{}.dlq", rig.prefix);
    assert_eq!(
        dead_letter_reasons(&rig.central, &dlq),
        poison.map(|(reason, _)| reason.to_owned())
    );
    for record in adpipe_testkit::read_all(&rig.central, &dlq) {
        assert_eq!(
            adpipe_testkit::header_text(&record, "adpipe.dlq.topic"),
            Some(rig.replica("dc1", "impressions"))
        );
    }
    rig.registry.stop().await;
}

/// DC topics that are not co-partitioned (another partition count) are
/// found at start-up: the merger refuses to start and says which.
#[tokio::test(flavor = "multi_thread")]
async fn refuses_dc_topics_with_different_partition_counts() {
    let rig = Rig::central_only("mg-copart", 2).await;
    let names: Vec<(String, i32)> = KINDS
        .iter()
        .flat_map(|kind| {
            [
                (rig.replica("dc1", kind), 2),
                (
                    rig.replica("dc2", kind),
                    if *kind == "clicks" { 3 } else { 2 },
                ),
            ]
        })
        .collect();
    let specs: Vec<adpipe_testkit::TopicSpec<'_>> = names
        .iter()
        .map(|(name, partitions)| (name.as_str(), *partitions, &[][..]))
        .collect();
    adpipe_testkit::create_topics(&rig.central, &specs).await;
    let Err(WorkerError::Topics(problems)) = adpipe_merger::start(rig.settings("")) else {
        panic!("must refuse to start");
    };
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("not co-partitioned")
            && problems[0].contains(&rig.replica("dc2", "clicks")),
        "{problems:?}"
    );
    rig.registry.stop().await;
}

struct Instance {
    child: Child,
    listen: std::net::SocketAddr,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill(); // never leave a process behind a failed test
        let _ = self.child.wait();
    }
}

impl Instance {
    fn spawn(config: &std::path::Path) -> Instance {
        let listen = adpipe_testkit::free_loopback_address();
        let child = spawn_merger(config, listen);
        Instance { child, listen }
    }

    /// The (topic, partition) pairs this instance owns, from its metrics.
    async fn owned(&self) -> Vec<(String, i32)> {
        let Ok(response) = reqwest::get(format!("http://{}/metrics", self.listen)).await else {
            return Vec::new();
        };
        let body = response.text().await.unwrap_or_default();
        let mut owned: Vec<(String, i32)> = body
            .lines()
            .filter_map(|line| line.strip_prefix("adpipe_partition_assigned{"))
            .filter(|labels| labels.ends_with("} 1"))
            .filter_map(|labels| {
                let topic = labels.split("topic=\"").nth(1)?.split('"').next()?;
                let partition = labels.split("partition=\"").nth(1)?.split('"').next()?;
                Some((topic.to_owned(), partition.parse().ok()?))
            })
            .collect();
        owned.sort();
        owned
    }
}

/// Two instances in one group: each partition index is owned whole (every
/// DC's partition i of a kind by the same instance). After one is killed
/// with SIGKILL, the other owns everything and merges what comes next.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_whole_partition_indexes_and_one_takes_over() {
    let rig = Rig::central_only("mg-group", 4).await;
    rig.create_replicas().await;
    let config = rig.write_config("max-idle = \"1s\"", "");
    let first = Instance::spawn(&config);
    let second = Instance::spawn(&config);
    let all: usize = DCS.len() * KINDS.len() * 4;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (owned_first, owned_second) = loop {
        let (a, b) = (first.owned().await, second.owned().await);
        if !a.is_empty() && !b.is_empty() && a.len() + b.len() == all {
            break (a, b);
        }
        assert!(
            Instant::now() < deadline,
            "no shared assignment: {a:?} / {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (owner, other) in [(&owned_first, &owned_second), (&owned_second, &owned_first)] {
        for (topic, partition) in owner {
            let kind = topic.rsplit('.').next().unwrap_or_default();
            for dc in DCS {
                let sibling = (rig.replica(dc, kind), *partition);
                assert!(
                    owner.contains(&sibling),
                    "{sibling:?} is not with {topic}-{partition}"
                );
                assert!(!other.contains(&sibling));
            }
        }
    }

    let mut doomed = first;
    doomed.child.kill().expect("SIGKILL");
    doomed.child.wait().expect("reaped");
    drop(doomed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while second.owned().await.len() != all {
        assert!(Instant::now() < deadline, "the survivor did not take over");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // What comes next, in every partition of both DCs' replicas, is merged.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &rig.central)
        .create()
        .expect("producer");
    let codec = &rig.codec;
    let encoder = codec
        .encoder(
            &format!("{}.impressions-value", rig.prefix),
            adpipe_events::EventKind::Impression.schema(),
        )
        .await
        .expect("encoder");
    let now = adpipe_runtime::event_time::now_ms();
    let mut sent = 0;
    for (n, dc) in DCS.iter().enumerate() {
        for partition in 0..4 {
            let mut event = adpipe_events::samples::impression(n as u64 * 10 + partition as u64);
            event.event_time = now;
            let value = encoder.encode(&event).expect("encodes");
            producer
                .send(
                    FutureRecord::to(&rig.replica(dc, "impressions"))
                        .partition(partition)
                        .key(&event.user_id)
                        .payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .expect("sent");
            sent += 1;
        }
    }
    tokio::task::block_in_place(|| rig.wait_for_merged(sent, Duration::from_secs(60)));
    let mut survivor = second;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(survivor.child.id().to_string())
        .status();
    assert!(survivor.child.wait().expect("exits").success());
    let merged = adpipe_testkit::read_all(&rig.central, &rig.merged("impressions"));
    assert_eq!(merged.len(), sent, "each merged once");
    for record in &merged {
        assert!(record.payload().is_some());
    }
    rig.registry.stop().await;
}
