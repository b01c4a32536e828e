//! `adpipe simulate` and `adpipe check` against the real DC clusters from
//! `infra/kafka.sh start`, with adpipe's registry on the central cluster.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use adpipe_cli::check::{self, CheckArgs};
use adpipe_cli::consume::{self, ConsumeArgs, StartAt};
use adpipe_cli::simulate::{self, SimulateArgs};
use adpipe_cli::target::{ClusterMapFile, KafkaTarget, RegistryTarget};
use adpipe_codec::{Codec, RegistryClient};
use adpipe_events::EventKind;
use adpipe_loadtest::output::OutputIds;
use adpipe_loadtest::publish::ORIGIN_DC_HEADER;
use adpipe_schema_registry::RegistrySettings;
use rdkafka::message::{Headers, Message};

const KINDS: [EventKind; 3] = [
    EventKind::Impression,
    EventKind::Click,
    EventKind::Conversion,
];

fn kafka_target(cluster: &str) -> KafkaTarget {
    KafkaTarget {
        cluster: cluster.to_owned(),
        brokers: None,
        clusters: ClusterMapFile::new(adpipe_testkit::clusters_file()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bidders_publish_to_their_dc_at_the_rate_and_the_checker_judges_outputs() {
    let prefix = format!("{}.", adpipe_testkit::unique("sim"));
    let dcs = ["dc1", "dc2"];
    for dc in dcs {
        let names = KINDS.map(|kind| format!("{prefix}{}", kind.plural()));
        let specs: Vec<adpipe_testkit::TopicSpec<'_>> = names
            .iter()
            .map(|name| (name.as_str(), 3, &[][..]))
            .collect();
        adpipe_testkit::create_topics(&adpipe_testkit::kafka(dc), &specs).await;
    }
    let registry = adpipe_schema_registry::start(RegistrySettings::local(
        &adpipe_testkit::kafka("central"),
        &format!("{prefix}_schemas"),
    ))
    .await
    .expect("registry");
    let registry_target = RegistryTarget::at(registry.url());
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).expect("dir");
    let truth_path = dir.join("truth.json");
    let rate = 2_000.0;
    let args = SimulateArgs {
        dcs: dcs.map(str::to_owned).to_vec(),
        impressions: 3_000,
        rate,
        duplicate_rate: 0.1,
        users: 500,
        seed: 7,
        topic_prefix: prefix.clone(),
        truth: truth_path.clone(),
        clusters: ClusterMapFile::new(adpipe_testkit::clusters_file()),
        registry: registry_target.clone(),
    };
    let mut printed = Vec::new();
    let simulated = simulate::run(&args, &mut printed).await.expect("simulates");
    let truth = simulated.truth;
    assert_eq!(
        simulated.per_dc.iter().map(|(_, count)| count).sum::<u64>(),
        truth.published
    );

    // Each DC's cluster holds exactly that DC's publications, stamped with it.
    let codec = Arc::new(Codec::new(
        RegistryClient::new(&registry.url()).expect("client"),
    ));
    let runtime = tokio::runtime::Handle::current();
    let mut ids_by_dc: HashMap<&str, HashSet<String>> = HashMap::new();
    let mut all = OutputIds::default();
    let mut timestamps = Vec::new();
    for dc in dcs {
        let bootstrap = adpipe_testkit::kafka(dc);
        let mut in_dc = OutputIds::default();
        for kind in KINDS {
            let topic = args.topic(kind);
            let (bootstrap, codec, runtime) =
                (bootstrap.clone(), Arc::clone(&codec), runtime.clone());
            let (read, stamps) = tokio::task::spawn_blocking(move || {
                let mut read = OutputIds::default();
                read.read_topic(&bootstrap, &topic, &codec, &runtime)
                    .expect("reads");
                let mut stamps = Vec::new();
                adpipe_testkit::for_each_record(&bootstrap, &topic, |message| {
                    let origin = message
                        .headers()
                        .and_then(|headers| headers.iter().find(|h| h.key == ORIGIN_DC_HEADER))
                        .and_then(|header| header.value)
                        .map(|value| String::from_utf8_lossy(value).into_owned());
                    assert_eq!(origin.as_deref(), Some(dc), "origin header");
                    stamps.push(message.timestamp().to_millis().expect("timestamp"));
                });
                (read, stamps)
            })
            .await
            .expect("reader");
            in_dc.ids.extend(read.ids);
            assert_eq!(read.unreadable, 0);
            timestamps.extend(stamps);
        }
        let published_here = simulated
            .per_dc
            .iter()
            .find(|(name, _)| name == dc)
            .map(|(_, count)| *count);
        assert_eq!(Some(in_dc.ids.len() as u64), published_here, "{dc}");
        ids_by_dc.insert(dc, in_dc.ids.iter().cloned().collect());
        all.ids.extend(in_dc.ids);
    }
    let report = truth.check(all.ids.iter().map(String::as_str));
    assert_eq!((report.missing, report.unknown), (0, 0), "{report:?}");
    assert_eq!(
        report.extra_copies, truth.duplicates,
        "every injected copy was published"
    );
    assert!(
        ids_by_dc["dc1"]
            .intersection(&ids_by_dc["dc2"])
            .next()
            .is_some(),
        "some events were sent to both DCs"
    );
    // Paced: the n-th record is not sent before n / rate seconds.
    let span_ms =
        timestamps.iter().max().expect("records") - timestamps.iter().min().expect("records");
    let paced_ms = (truth.published - 1) as f64 * 1000.0 / rate;
    assert!(
        span_ms as f64 >= paced_ms * 0.95,
        "{span_ms} ms for {paced_ms} ms of pacing"
    );

    // The checker: one DC alone misses the other's events …
    let check_args =
        |cluster: &str, topics: Vec<String>, inputs: Vec<String>, exact: bool| CheckArgs {
            truth: truth_path.clone(),
            topics,
            inputs,
            exact,
            kafka: kafka_target(cluster),
            registry: registry_target.clone(),
        };
    let dc1_topics: Vec<String> = KINDS.iter().map(|kind| args.topic(*kind)).collect();
    let mut table = Vec::new();
    let dc1_only = check::run(&check_args("dc1", dc1_topics, vec![], false), &mut table)
        .await
        .expect("checks");
    assert!(!dc1_only.passed);
    assert!(dc1_only.report.missing > 0);
    assert!(String::from_utf8_lossy(&table).contains("FAIL"));

    // … while both DCs dumped by `adpipe consume` into one JSON-lines file
    // hold every event: a pass, unless copies are refused (--exact).
    let dump = dir.join("both-dcs.jsonl");
    let mut lines = Vec::new();
    for dc in dcs {
        for kind in KINDS {
            let consume_args = ConsumeArgs {
                kafka: kafka_target(dc),
                registry: registry_target.clone(),
                topic: args.topic(kind),
                from: StartAt::Beginning,
                partition: None,
                max: None,
                follow: false,
                metadata: true,
            };
            consume::run(&consume_args, &mut lines, &mut Vec::new())
                .await
                .expect("consumes");
        }
    }
    std::fs::write(&dump, &lines).expect("dump written");
    let input = vec![dump.display().to_string()];
    let lenient = check::run(
        &check_args("dc1", vec![], input.clone(), false),
        &mut Vec::new(),
    )
    .await
    .expect("checks");
    assert!(lenient.passed, "{:?}", lenient.report);
    assert_eq!(lenient.report.extra_copies, truth.duplicates);
    let exact = check::run(&check_args("dc1", vec![], input, true), &mut Vec::new())
        .await
        .expect("checks");
    assert!(!exact.passed, "copies fail --exact");

    // A DC without the topics is refused before anything is published.
    let missing = SimulateArgs {
        topic_prefix: format!("{prefix}absent."),
        ..args.clone()
    };
    let error = simulate::run(&missing, &mut Vec::new())
        .await
        .expect_err("no topics");
    assert!(format!("{error:#}").contains("does not exist"), "{error:#}");

    let _ = std::fs::remove_dir_all(dir);
    registry.stop().await;
}
