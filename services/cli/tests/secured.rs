//! The CLI over a cluster that takes clients over SASL_SSL only
//! (`infra/kafka.sh start secure`): its TLS and SASL settings come from
//! `ADPIPE__KAFKA__SECURITY__…` alone; the password never shows in its
//! output, even with every log level on; a wrong password ends it at once
//! with a clear error.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use adpipe_testkit::SecuredCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn adpipe(secured: &SecuredCluster, password_file: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adpipe"))
        .args(args)
        .env("RUST_LOG", "trace")
        .env("ADPIPE__KAFKA__SECURITY__PROTOCOL", "sasl_ssl")
        .env("ADPIPE__KAFKA__SECURITY__SASL_MECHANISM", "SCRAM-SHA-512")
        .env("ADPIPE__KAFKA__SECURITY__SASL_USERNAME", &secured.username)
        .env("ADPIPE__KAFKA__SECURITY__SASL_PASSWORD_FILE", password_file)
        .env("ADPIPE__KAFKA__SECURITY__SSL_CA_LOCATION", &secured.ca)
        .output()
        .expect("adpipe runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_reads_over_sasl_ssl_and_never_shows_the_password() {
    let secured = adpipe_testkit::secured_kafka("secure");
    let topic = adpipe_testkit::unique("cli-secured");
    adpipe_testkit::create_topics(&secured.internal, &[(topic.as_str(), 1, &[])]).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &secured.internal)
        .create()
        .expect("a producer on the internal listener");
    for index in 0..3 {
        let value = format!("plain-{index}");
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .expect("produced");
    }
    let output = adpipe(
        &secured,
        &secured.password_file,
        &[
            "consume",
            "--brokers",
            &secured.bootstrap,
            "--topic",
            &topic,
            "--max",
            "3",
        ],
    );
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(all.contains("0 record(s) decoded, 3 undecodable"), "{all}");
    let password = secured.password();
    assert!(!all.contains(&password), "the password shows in the output");
}

#[test]
fn a_wrong_password_ends_the_cli_at_once_with_a_clear_error() {
    let secured = adpipe_testkit::secured_kafka("secure");
    let wrong = std::env::temp_dir().join(adpipe_testkit::unique("wrong-password"));
    std::fs::write(&wrong, "not-the-password\n").expect("a password file");
    let started = Instant::now();
    let output = adpipe(
        &secured,
        &wrong,
        &["lag", "--brokers", &secured.bootstrap, "--group", "nobody"],
    );
    let took = started.elapsed();
    let _ = std::fs::remove_file(&wrong);
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(all.to_lowercase().contains("authentication"), "{all}");
    assert!(
        !all.contains("not-the-password"),
        "the password shows: {all}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

/// Every value of `topic` at `bootstrap`, once it holds `expected` records
/// (MirrorMaker 2 makes the topic when it first sees its source).
fn wait_mirrored(bootstrap: &str, topic: &str, expected: usize) -> Vec<String> {
    use rdkafka::message::Message;
    let deadline = Instant::now() + Duration::from_secs(180);
    let metadata: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("a metadata client");
    loop {
        if adpipe_testkit::try_partition_count(&metadata, topic).is_ok_and(|count| count > 0) {
            let values: Vec<String> = adpipe_testkit::read_all(bootstrap, topic)
                .iter()
                .filter_map(|record| {
                    record
                        .payload()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                })
                .collect();
            if values.len() >= expected {
                return values;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{topic} at {bootstrap}: not mirrored within 180 s. Is MirrorMaker 2 to the secured \
             cluster running? `ADPIPE_MM2_CENTRAL=secure ADPIPE_MM2_TOPIC_PREFIX=mm2-secured- \
             infra/mirrormaker.sh start` (the full test command does)"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// MirrorMaker 2 (`infra/mirrormaker.sh` with `ADPIPE_MM2_CENTRAL=secure`)
/// reads from and writes into a central that takes clients over SASL_SSL
/// only: a DC's impressions land on it, its `events-for-<dc>` land on the
/// DC, every record once. Its password reaches it by environment only.
#[tokio::test(flavor = "multi_thread")]
async fn mirrormaker_2_mirrors_to_and_from_a_sasl_ssl_central() {
    let secured = adpipe_testkit::secured_kafka("secure");
    let dc1 = adpipe_testkit::kafka("dc1");
    let prefix = adpipe_testkit::unique("mm2-secured");
    let to_central = format!("{prefix}.impressions");
    let to_dc = format!("{prefix}.events-for-dc1");
    adpipe_testkit::create_topics(&dc1, &[(to_central.as_str(), 2, &[])]).await;
    adpipe_testkit::create_topics(&secured.internal, &[(to_dc.as_str(), 2, &[])]).await;
    let produce = |bootstrap: &str, topic: &str, what: &str| {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .expect("a producer");
        let topic = topic.to_owned();
        let what = what.to_owned();
        async move {
            for index in 0..50 {
                let value = format!("{what}-{index}");
                producer
                    .send(
                        FutureRecord::<(), _>::to(&topic)
                            .payload(&value)
                            .partition(index % 2),
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("produced");
            }
        }
    };
    produce(&dc1, &to_central, "impression").await;
    produce(&secured.internal, &to_dc, "event").await;
    // Read back where they land (the secured side through its internal listener).
    let (internal, dc1_servers) = (secured.internal.clone(), dc1.clone());
    let landed = tokio::task::spawn_blocking(move || {
        (
            wait_mirrored(&internal, &format!("dc1.{to_central}"), 50),
            wait_mirrored(&dc1_servers, &format!("secure.{to_dc}"), 50),
        )
    })
    .await
    .expect("reader");
    for (values, what) in [(landed.0, "impression"), (landed.1, "event")] {
        let mut sorted = values.clone();
        sorted.sort();
        let mut expected: Vec<String> = (0..50).map(|index| format!("{what}-{index}")).collect();
        expected.sort();
        assert_eq!(sorted, expected, "{what}s mirrored once each");
    }
    let state = std::env::var_os("ADPIPE_STATE_DIR").map_or_else(
        || std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.adpipe")),
        std::path::PathBuf::from,
    );
    let properties = std::fs::read_to_string(state.join("mirrormaker-secure/mm2.properties"))
        .expect("MirrorMaker 2's generated configuration");
    assert!(
        properties.contains("secure.security.protocol = SASL_SSL"),
        "{properties}"
    );
    assert!(
        !properties.contains(&secured.password()),
        "the password in mm2.properties"
    );
}
