//! User-profile synchronisation end to end on the local clusters: processed
//! events on central → the dispatcher → `events-for-<dc>` → MirrorMaker 2
//! (`infra/mirrormaker.sh`) → `central.events-for-<dc>` on each DC's own
//! cluster → a profile loader per DC → that DC's profiles in Redis. An
//! event seen in dc1 appears in dc2's profiles and not in dc1's (dc1's own
//! loader has it), and the other way round; dispatching everything a second
//! time changes no profile. Needs `infra/kafka.sh start`,
//! `infra/mirrormaker.sh start` and `infra/redis.sh start`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use adpipe_codec::{Codec, RegistryClient};
use adpipe_events::{EventKind, samples};
use adpipe_schema_registry::RegistrySettings;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn write_config(name: &str, text: String) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("config written");
    path
}

/// Waits until `topic` exists on `bootstrap` with `records` records.
fn wait_replicated(bootstrap: &str, topic: &str, records: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let count = std::panic::catch_unwind(|| adpipe_testkit::read_all(bootstrap, topic).len())
            .unwrap_or(0);
        if count >= records {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} on {bootstrap}: {count} of {records} records replicated"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_seen_in_one_dc_reaches_the_other_dcs_profiles_once() {
    let central = adpipe_testkit::kafka("central");
    let dcs = [
        ("dc1", adpipe_testkit::kafka("dc1")),
        ("dc2", adpipe_testkit::kafka("dc2")),
    ];
    let prefix = adpipe_testkit::unique("sync");
    let names: Vec<String> = ["imp", "jclk", "events-for-dc1", "events-for-dc2", "dlq"]
        .iter()
        .map(|suffix| format!("{prefix}.{suffix}"))
        .collect();
    let specs: Vec<adpipe_testkit::TopicSpec<'_>> = names
        .iter()
        .map(|name| (name.as_str(), 3, &[][..]))
        .collect();
    adpipe_testkit::create_topics(&central, &specs).await;
    let dlq = format!("{prefix}.dlq");
    for (_, bootstrap) in &dcs {
        adpipe_testkit::create_topics(bootstrap, &[(dlq.as_str(), 1, &[][..])]).await;
    }
    let registry = adpipe_schema_registry::start(RegistrySettings::local(
        &central,
        &format!("{prefix}._schemas"),
    ))
    .await
    .expect("registry");
    let codec = Codec::new(RegistryClient::new(&registry.url()).expect("client"));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &central)
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    // Impressions 0..400 (even n seen in dc1, odd in dc2) and a joined
    // click for every fourth (dc1): as the joiner and deduplicator left them.
    let mut seen_in: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let impressions = codec
        .encoder(
            &format!("{prefix}.imp-value"),
            EventKind::Impression.schema(),
        )
        .await
        .expect("encoder");
    let clicks = codec
        .encoder(
            &format!("{prefix}.jclk-value"),
            EventKind::JoinedClick.schema(),
        )
        .await
        .expect("encoder");
    for n in 0..400_u64 {
        let impression = samples::impression(n);
        let dc = if n % 2 == 0 { "dc1" } else { "dc2" };
        assert_eq!(impression.dc, dc);
        seen_in
            .entry(dc)
            .or_default()
            .insert(impression.event_id.clone());
        let value = impressions.encode(&impression).expect("encodes");
        let topic = format!("{prefix}.imp");
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&impression.user_id)
                    .payload(&value),
                Duration::from_secs(10),
            )
            .await
            .expect("sent");
        if n % 4 == 0 {
            let joined = samples::joined_click(n);
            seen_in
                .entry("dc1")
                .or_default()
                .insert(joined.click.event_id.clone());
            let value = clicks.encode(&joined).expect("encodes");
            let topic = format!("{prefix}.jclk");
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key(&joined.click.user_id)
                        .payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .expect("sent");
        }
    }

    let dispatcher_config = |group: &str| {
        write_config(
            &format!("{prefix}-dispatcher-{group}"),
            format!(
                r#"
[kafka]
bootstrap-servers = "{central}"
group-id = "{prefix}-dispatcher-{group}"
[registry]
url = "{url}"
[runtime]
commit-interval = "200ms"
dead-letter-topic = "{prefix}.dlq"
[http]
listen = "127.0.0.1:0"
[dispatcher]
inputs = ["{prefix}.imp", "{prefix}.jclk"]
dcs = ["dc1", "dc2"]
topic-prefix = "{prefix}.events-for-"
"#,
                url = registry.url()
            ),
        )
    };
    let settings = |path: &std::path::Path| {
        adpipe_dispatcher::DispatcherSettings::load(Some(path), std::iter::empty()).expect("valid")
    };
    let dispatcher =
        adpipe_dispatcher::start(settings(&dispatcher_config("first"))).expect("starts");
    // In dc2: the 200 impressions and 100 clicks seen in dc1; in dc1: the
    // 200 impressions seen in dc2 — carried by MirrorMaker 2.
    tokio::task::block_in_place(|| {
        wait_replicated(
            &dcs[1].1,
            &format!("central.{prefix}.events-for-dc2"),
            300,
            Duration::from_secs(120),
        );
        wait_replicated(
            &dcs[0].1,
            &format!("central.{prefix}.events-for-dc1"),
            200,
            Duration::from_secs(120),
        );
    });
    dispatcher.stop().await.expect("clean stop");

    // One profile loader per DC, on that DC's cluster.
    let mut loaders = Vec::new();
    for (dc, bootstrap) in &dcs {
        let config = write_config(
            &format!("{prefix}-profiles-{dc}"),
            format!(
                r#"
[kafka]
bootstrap-servers = "{bootstrap}"
group-id = "{prefix}-profiles-{dc}"
[registry]
url = "{url}"
[runtime]
commit-interval = "200ms"
dead-letter-topic = "{prefix}.dlq"
[http]
listen = "127.0.0.1:0"
[loader]
sink = "profiles"
inputs = ["central.{prefix}.events-for-{dc}:impression|joined-click"]
[loader.batch]
records = 100
wait = "200ms"
write-timeout = "5s"
[profiles]
url = "{redis}"
key-prefix = "{prefix}:{dc}:"
keep = 10
ttl = "3650d"
"#,
                url = registry.url(),
                redis = adpipe_testkit::profiles::redis_url()
            ),
        );
        let settings =
            adpipe_loader::LoaderSettings::load(Some(&config), std::iter::empty()).expect("valid");
        loaders.push(adpipe_loader::start(settings).expect("a profile loader starts"));
    }
    let wait_profiles = |dc: &'static str, want: usize| {
        let prefix = format!("{prefix}:{dc}:");
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let ids = adpipe_testkit::profiles::event_ids(&prefix, "").await;
                if ids.len() >= want || Instant::now() > deadline {
                    return ids;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    let in_dc2 = wait_profiles("dc2", 300).await;
    let in_dc1 = wait_profiles("dc1", 200).await;
    let ids =
        |profiles: &BTreeMap<String, usize>| profiles.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(
        ids(&in_dc2),
        seen_in["dc1"],
        "dc2 knows exactly what dc1 saw"
    );
    assert_eq!(
        ids(&in_dc1),
        seen_in["dc2"],
        "dc1 knows exactly what dc2 saw"
    );
    assert!(
        in_dc1.values().chain(in_dc2.values()).all(|&n| n == 1),
        "each event once"
    );

    // Everything dispatched again (a second group): duplicates on the
    // events-for topics, no change in any profile.
    let dispatcher =
        adpipe_dispatcher::start(settings(&dispatcher_config("again"))).expect("starts");
    tokio::task::block_in_place(|| {
        wait_replicated(
            &dcs[1].1,
            &format!("central.{prefix}.events-for-dc2"),
            600,
            Duration::from_secs(120),
        );
        wait_replicated(
            &dcs[0].1,
            &format!("central.{prefix}.events-for-dc1"),
            400,
            Duration::from_secs(120),
        );
    });
    dispatcher.stop().await.expect("clean stop");
    for (dc, bootstrap) in &dcs {
        let (bootstrap, group, topic) = (
            bootstrap.clone(),
            format!("{prefix}-profiles-{dc}"),
            format!("central.{prefix}.events-for-{dc}"),
        );
        tokio::task::block_in_place(|| {
            adpipe_testkit::wait_for(
                "the loader read the duplicates",
                Duration::from_secs(60),
                || adpipe_testkit::committed_to_end(&bootstrap, &group, &topic),
            )
        });
    }
    for loader in loaders {
        loader.stop().await.expect("clean stop");
    }
    assert_eq!(
        adpipe_testkit::profiles::event_ids(&format!("{prefix}:dc2:"), "").await,
        in_dc2,
        "dc2 unchanged"
    );
    assert_eq!(
        adpipe_testkit::profiles::event_ids(&format!("{prefix}:dc1:"), "").await,
        in_dc1,
        "dc1 unchanged"
    );
}
