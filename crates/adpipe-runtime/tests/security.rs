//! TLS and SASL to Kafka, against a real broker that takes clients over
//! SASL_SSL only (`infra/kafka.sh start secure`: certificates made for the
//! run, SCRAM-SHA-512 and PLAIN). The test sets up and checks through the
//! broker's plaintext internal listener; the worker under test connects
//! over SASL_SSL with `[kafka.security]` alone: its consumer, producer,
//! start-up topic check and commits all go through it.

mod support;

use std::time::{Duration, Instant};

use adpipe_kafka_client::{KafkaSecurity, Mechanism, Protocol, Secret};
use adpipe_testkit::SecuredCluster;
use support::{TestFactory, Topics, records};

fn security(secured: &SecuredCluster, mechanism: Mechanism, password: &str) -> KafkaSecurity {
    KafkaSecurity {
        protocol: Protocol::SaslSsl,
        sasl_mechanism: Some(mechanism),
        sasl_username: Some(secured.username.clone()),
        sasl_password: Some(Secret::new(password)),
        ssl_ca_location: Some(secured.ca.clone()),
        ..KafkaSecurity::default()
    }
    .resolve()
    .expect("valid security settings")
}

/// A test's topics on the secured cluster, made through its internal
/// listener (so `Topics`' helpers produce and read there).
async fn secured_topics(secured: &SecuredCluster, name: &str) -> Topics {
    let prefix = adpipe_testkit::unique(name);
    let named: Vec<String> = ["in", "out", "dlq", "narrow", "fragile"]
        .iter()
        .map(|suffix| format!("{prefix}.{suffix}"))
        .collect();
    let specs: Vec<adpipe_testkit::TopicSpec<'_>> = named
        .iter()
        .map(|topic| (topic.as_str(), 3, &[][..]))
        .collect();
    adpipe_testkit::create_topics(&secured.internal, &specs).await;
    Topics {
        bootstrap: secured.internal.clone(),
        prefix,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_reads_and_writes_over_sasl_ssl_with_scram_and_with_plain() {
    let secured = adpipe_testkit::secured_kafka("secure");
    for mechanism in [Mechanism::ScramSha512, Mechanism::Plain] {
        let topics = secured_topics(&secured, "secured-worker").await;
        topics.produce(&records(300, &[])).await;
        let mut settings = topics.settings("");
        settings.kafka.bootstrap_servers = secured.bootstrap.clone();
        settings.kafka.security = security(&secured, mechanism, &secured.password());
        topics.run_to_end(settings, TestFactory::new(&topics)).await;
        let out = topics.values("out").await;
        assert_eq!(out.len(), 300, "{mechanism:?}: {} outputs", out.len());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_stops_the_worker_at_start_with_a_clear_error() {
    let secured = adpipe_testkit::secured_kafka("secure");
    let topics = secured_topics(&secured, "secured-refused").await;
    let mut settings = topics.settings("");
    settings.kafka.bootstrap_servers = secured.bootstrap.clone();
    settings.kafka.security = security(&secured, Mechanism::ScramSha512, "not-the-password");
    let started = Instant::now();
    let error = match adpipe_runtime::start(settings, TestFactory::new(&topics)) {
        Ok(worker) => {
            let _ = worker.stop().await;
            panic!("a worker started with a wrong password");
        }
        Err(error) => error.to_string(),
    };
    let took = started.elapsed();
    assert!(
        error.to_lowercase().contains("authentication"),
        "not a clear error: {error}"
    );
    assert!(
        !error.contains("not-the-password"),
        "the password shows: {error}"
    );
    // Fails fast: not after the minutes of patience an unreachable cluster gets.
    assert!(took < Duration::from_secs(60), "took {took:?}: {error}");
}
