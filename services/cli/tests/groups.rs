//! `adpipe lag` and `adpipe replay` against the real central cluster and
//! PostgreSQL (`infra/postgres.sh start`, `ADPIPE_PG_URL`): lag in records
//! and seconds; a replay to a time shows its plan and changes nothing
//! without `--execute`; refuses while the group has a member; moves both
//! the Kafka commits and the stats-counter's stored offsets.

use std::time::Duration;

use adpipe_cli::consume::StartAt;
use adpipe_cli::lag::{self, LagArgs};
use adpipe_cli::replay::{self, ReplayArgs};
use adpipe_cli::target::{ClusterMapFile, KafkaTarget};
use adpipe_stats_counter::PgStore;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

fn target(bootstrap: &str) -> KafkaTarget {
    KafkaTarget {
        cluster: "central".to_owned(),
        brokers: Some(bootstrap.to_owned()),
        clusters: ClusterMapFile::new(adpipe_testkit::clusters_file()),
    }
}

fn pg_url() -> String {
    std::env::var("ADPIPE_PG_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:15432/adpipe".to_owned())
}

/// Produces `count` records to `partition` stamped `age` ago.
async fn produce(bootstrap: &str, topic: &str, partition: i32, count: usize, age: Duration) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    let stamp =
        adpipe_runtime::event_time::now_ms() - i64::try_from(age.as_millis()).expect("small");
    for index in 0..count {
        let value = format!("record-{index}");
        producer
            .send(
                FutureRecord::<(), str>::to(topic)
                    .partition(partition)
                    .payload(&value)
                    .timestamp(stamp),
                Duration::from_secs(10),
            )
            .await
            .expect("produced");
    }
}

fn committed(bootstrap: &str, group: &str, topic: &str) -> Vec<Option<i64>> {
    adpipe_testkit::committed_offsets(bootstrap, group, topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_and_replay_move_a_stopped_group_and_its_stored_offsets() {
    let bootstrap = adpipe_testkit::kafka("central");
    let topic = adpipe_testkit::unique("cli-replay");
    let group = format!("{topic}-group");
    adpipe_testkit::create_topics(&bootstrap, &[(topic.as_str(), 2, &[])]).await;
    // Per partition: 10 records an hour old, 10 ten minutes old.
    for partition in 0..2 {
        produce(&bootstrap, &topic, partition, 10, Duration::from_secs(3600)).await;
        produce(&bootstrap, &topic, partition, 10, Duration::from_secs(600)).await;
    }
    // The group consumed everything.
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .create()
        .expect("client");
    let mut end = TopicPartitionList::new();
    for partition in 0..2 {
        end.add_partition_offset(&topic, partition, Offset::Offset(20))
            .expect("offset");
    }
    client.commit(&end, CommitMode::Sync).expect("committed");
    drop(client);

    let lag_args = |postgres_url: Option<String>, schema: &str| LagArgs {
        kafka: target(&bootstrap),
        group: Some(group.clone()),
        postgres_url,
        schema: schema.to_owned(),
    };
    let mut out = Vec::new();
    let rows = lag::run(&lag_args(None, "adpipe_stats"), &mut out)
        .await
        .expect("lag");
    assert_eq!(rows.len(), 2, "{}", String::from_utf8_lossy(&out));
    assert!(rows.iter().all(|row| row.lag == 0 && row.end == 20));

    // Five more, a minute old, on partition 0: 5 behind, about 60 s.
    produce(&bootstrap, &topic, 0, 5, Duration::from_secs(60)).await;
    let rows = lag::run(&lag_args(None, "adpipe_stats"), &mut Vec::new())
        .await
        .expect("lag");
    let first = rows.iter().find(|row| row.partition == 0).expect("p0");
    assert_eq!((first.lag, first.end), (5, 25));
    assert!(
        (55.0..120.0).contains(&first.lag_seconds),
        "the next record is a minute old: {}",
        first.lag_seconds
    );

    // Half an hour ago: offset 10 in each partition. The plan alone changes nothing.
    let half_hour_ago = adpipe_runtime::event_time::now_ms() - 1_800_000;
    let replay_args = |execute: bool, postgres_url: Option<String>, schema: &str| ReplayArgs {
        kafka: target(&bootstrap),
        group: group.clone(),
        to: StartAt::Time(half_hour_ago),
        topics: Vec::new(),
        execute,
        postgres_url,
        schema: schema.to_owned(),
    };
    let mut plan = Vec::new();
    let moves = replay::run(&replay_args(false, None, "adpipe_stats"), &mut plan)
        .await
        .expect("plans");
    let plan = String::from_utf8_lossy(&plan);
    assert!(plan.contains("--execute"), "{plan}");
    assert_eq!(
        moves
            .iter()
            .map(|step| (step.from, step.to))
            .collect::<Vec<_>>(),
        [(Some(20), 10), (Some(20), 10)],
        "{plan}"
    );
    assert_eq!(committed(&bootstrap, &group, &topic), [Some(20), Some(20)]);

    // A member in the group: refused.
    let member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .create()
        .expect("member");
    member.subscribe(&[&topic]).expect("subscribes");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while member.assignment().map_or(0, |list| list.count()) == 0 {
        assert!(std::time::Instant::now() < deadline, "never assigned");
        let _ = member.poll(Duration::from_millis(100));
    }
    let refused = replay::run(&replay_args(true, None, "adpipe_stats"), &mut Vec::new())
        .await
        .expect_err("refused while a member is active");
    assert!(refused.to_string().contains("active member"), "{refused}");
    member.unsubscribe();
    member.close_queue().ok();
    drop(member);

    // The stats-counter stored its offsets in PostgreSQL (at the end);
    // executing moves both those and the Kafka commits.
    let schema = format!("cli_{}", topic.replace(['-', '.'], "_"));
    let mut store = PgStore::connect(&pg_url(), &schema)
        .await
        .expect("connects");
    store.migrate().await.expect("migrates");
    store
        .reset_offsets(&group, &[(topic.clone(), 0, 25), (topic.clone(), 1, 20)])
        .await
        .expect("stored");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let moves = loop {
        // The member's leave may take a moment to be seen.
        match replay::run(&replay_args(true, Some(pg_url()), &schema), &mut Vec::new()).await {
            Ok(moves) => break moves,
            Err(error) if std::time::Instant::now() < deadline => {
                assert!(error.to_string().contains("active member"), "{error}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => panic!("{error}"),
        }
    };
    assert_eq!(
        moves
            .iter()
            .map(|step| (step.from, step.to))
            .collect::<Vec<_>>(),
        [(Some(25), 10), (Some(20), 10)],
        "from the stored offsets"
    );
    assert_eq!(committed(&bootstrap, &group, &topic), [Some(10), Some(10)]);
    let stored = store.group_offsets(&group).await.expect("reads");
    assert_eq!(
        stored,
        [(topic.clone(), 0, 10), (topic.clone(), 1, 10)],
        "the stored offsets moved too"
    );
    let rows = lag::run(&lag_args(Some(pg_url()), &schema), &mut Vec::new())
        .await
        .expect("lag");
    assert_eq!(
        rows.iter()
            .map(|row| (row.stored, row.lag))
            .collect::<Vec<_>>(),
        [(Some(10), 15), (Some(10), 10)]
    );
}
