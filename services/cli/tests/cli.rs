//! The CLI against the real clusters from `infra/kafka.sh start`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use adpipe_cli::consume::{self, ConsumeArgs, StartAt};
use adpipe_cli::produce::{self, ProduceArgs};
use adpipe_cli::target::{ClusterMapFile, KafkaTarget, RegistryTarget};
use adpipe_cli::topology::{self, TopologyArgs, TopologyCommand};
use adpipe_events::{EventKind, Impression, samples};
use adpipe_schema_registry::RegistrySettings;

fn clusters_file() -> PathBuf {
    adpipe_testkit::clusters_file()
}

fn topology_file(
    dir: &std::path::Path,
    prefix: &str,
    keyed_partitions: i32,
    dlq_partitions: i32,
    retention: &str,
) -> PathBuf {
    let text = format!(
        r#"
[defaults]
partitions = {keyed_partitions}
replication = 3
min_insync_replicas = 2

[[topic]]
name = "{prefix}.events-{{cluster}}"
on = "dc"
keyed = true
cleanup_policy = "delete"
retention = "{retention}"
doc = "keyed, per DC"

[[topic]]
name = "{prefix}.dlq"
on = "central"
keyed = false
partitions = {dlq_partitions}
cleanup_policy = "delete"
retention = "1d"
doc = "unkeyed"

[[topic]]
name = "{prefix}.totals"
on = "central"
keyed = true
cleanup_policy = "compact"
doc = "compacted"
"#
    );
    let path = dir.join(format!(
        "{prefix}-{keyed_partitions}-{dlq_partitions}-{retention}.toml"
    ));
    std::fs::write(&path, text).expect("write topology");
    path
}

async fn run_topology(apply: bool, topology: PathBuf) -> (anyhow::Result<()>, String) {
    let args = TopologyArgs {
        topology,
        clusters: ClusterMapFile::new(clusters_file()),
        only: Vec::new(),
        show_undeclared: false,
        converge_timeout: std::time::Duration::from_secs(60),
    };
    let command = if apply {
        TopologyCommand::Apply(args)
    } else {
        TopologyCommand::Plan(args)
    };
    let mut out = Vec::new();
    let result = topology::run(&command, &mut out).await;
    (result, String::from_utf8(out).expect("utf8"))
}

fn line_for<'a>(output: &'a str, cluster: &str, topic: &str) -> &'a str {
    output
        .lines()
        .find(|line| line.starts_with(cluster) && line.split_whitespace().nth(2) == Some(topic))
        .unwrap_or_else(|| panic!("no line for {cluster}/{topic} in:\n{output}"))
}

fn partitions_of(cluster: &str, topic: &str) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", adpipe_testkit::kafka(cluster))
        .create()
        .expect("client");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata.topics()[0].partitions().len()
}

#[tokio::test(flavor = "multi_thread")]
async fn topology_apply_is_idempotent_and_refuses_dangerous_changes() {
    for cluster in ["dc1", "dc2", "central"] {
        adpipe_testkit::kafka(cluster);
    }
    let dir = std::env::temp_dir();
    let prefix = adpipe_testkit::unique("topo");
    let events_dc1 = format!("{prefix}.events-dc1");
    let events_dc2 = format!("{prefix}.events-dc2");
    let dlq = format!("{prefix}.dlq");

    let initial = topology_file(&dir, &prefix, 4, 2, "3d");
    let (result, plan) = run_topology(false, initial.clone()).await;
    result.expect("plan");
    assert!(line_for(&plan, "dc1", &events_dc1).contains("create"));
    assert!(line_for(&plan, "dc2", &events_dc2).contains("create"));
    assert!(line_for(&plan, "central", &dlq).contains("partitions=2 replication=1"));

    let (result, applied) = run_topology(true, initial.clone()).await;
    result.expect("apply");
    assert!(applied.contains("applied 4 change(s)"), "{applied}");
    let (result, again) = run_topology(true, initial.clone()).await;
    result.expect("second apply");
    assert!(again.contains("applied 0 change(s)"), "{again}");
    assert!(line_for(&again, "dc1", &events_dc1).contains(" ok "));
    assert_eq!(partitions_of("dc1", &events_dc1), 4);

    // Data in dc1's keyed topic: repartitioning it would move users.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", adpipe_testkit::kafka("dc1"))
        .create()
        .expect("producer");
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&events_dc1)
                .key("user-1")
                .payload("x"),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered");
    let grown = topology_file(&dir, &prefix, 6, 1, "3d");
    let (result, refused) = run_topology(true, grown).await;
    let error = result.expect_err("apply must refuse");
    assert!(error.to_string().contains("refusing to apply"), "{error}");
    assert!(line_for(&refused, "dc1", &events_dc1).contains("REFUSED"));
    assert!(line_for(&refused, "dc1", &events_dc1).contains("move users"));
    assert!(
        line_for(&refused, "dc2", &events_dc2).contains("4 -> 6"),
        "empty keyed topic may grow"
    );
    assert!(line_for(&refused, "central", &dlq).contains("cannot shrink"));
    assert_eq!(
        partitions_of("dc2", &events_dc2),
        4,
        "a refused plan changes nothing"
    );

    // A config change is applied, then the plan is clean again.
    let longer = topology_file(&dir, &prefix, 4, 2, "5d");
    let (result, plan) = run_topology(false, longer.clone()).await;
    result.expect("plan");
    assert!(
        line_for(&plan, "dc1", &events_dc1).contains("retention.ms: 259200000 -> 432000000"),
        "{plan}"
    );
    run_topology(true, longer.clone())
        .await
        .0
        .expect("apply config");
    let (_, clean) = run_topology(false, longer).await;
    assert!(
        line_for(&clean, "dc2", &events_dc2).contains(" ok "),
        "{clean}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_and_consume_round_trip_from_a_point_in_time() {
    let bootstrap = adpipe_testkit::kafka("central");
    let registry = adpipe_schema_registry::start(RegistrySettings::local(
        &bootstrap,
        &adpipe_testkit::unique("_schemas"),
    ))
    .await
    .expect("registry");
    let topic = adpipe_testkit::unique("cli-impressions");
    {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<_> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("admin");
        admin
            .create_topics(
                [&NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .expect("create");
    }
    let kafka = KafkaTarget {
        cluster: "central".into(),
        brokers: Some(bootstrap.clone()),
        clusters: ClusterMapFile::new(clusters_file()),
    };
    let registry_target = RegistryTarget::at(registry.url());
    let produce_args = |_: ()| ProduceArgs {
        kafka: kafka.clone(),
        registry: registry_target.clone(),
        topic: topic.clone(),
        kind: EventKind::Impression,
        input: "-".into(),
    };
    let lines = |range: std::ops::Range<u64>| {
        let mut text = Vec::new();
        for n in range {
            writeln!(
                text,
                "{}",
                serde_json::to_string(&samples::impression(n)).expect("json")
            )
            .expect("write");
        }
        text
    };

    let first = lines(0..50);
    let mut errors = Vec::new();
    let report = produce::run(&produce_args(()), &mut first.as_slice(), &mut errors)
        .await
        .expect("produce");
    assert_eq!((report.produced, report.rejected.len()), (50, 0));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let boundary = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut second = lines(50..80);
    second.extend_from_slice(b"{\"event_id\": 1}\n");
    let report = produce::run(&produce_args(()), &mut second.as_slice(), &mut errors)
        .await
        .expect("produce");
    assert_eq!(report.produced, 30);
    assert_eq!(
        report
            .rejected
            .iter()
            .map(|(line, _)| *line)
            .collect::<Vec<_>>(),
        vec![31]
    );

    let consume_args = |from: StartAt| ConsumeArgs {
        kafka: kafka.clone(),
        registry: registry_target.clone(),
        topic: topic.clone(),
        from,
        partition: None,
        max: None,
        follow: false,
        metadata: false,
    };
    let read = |output: Vec<u8>| -> Vec<Impression> {
        String::from_utf8(output)
            .expect("utf8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("impression JSON"))
            .collect()
    };
    let mut out = Vec::new();
    let report = consume::run(&consume_args(StartAt::Beginning), &mut out, &mut errors)
        .await
        .expect("consume");
    assert_eq!(report.decoded, 80);
    let mut everything = read(out);
    everything.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    let mut expected: Vec<_> = (0..80).map(samples::impression).collect();
    expected.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    assert_eq!(everything, expected);

    let since = boundary
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis();
    let mut out = Vec::new();
    consume::run(
        &consume_args(StartAt::Time(i64::try_from(since).expect("ms"))),
        &mut out,
        &mut errors,
    )
    .await
    .expect("consume from time");
    let mut later: Vec<_> = read(out).into_iter().map(|event| event.event_id).collect();
    later.sort();
    let mut expected_later: Vec<_> = (50..80).map(|n| samples::impression(n).event_id).collect();
    expected_later.sort();
    assert_eq!(later, expected_later);
    registry.stop().await;
}
