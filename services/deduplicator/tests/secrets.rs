//! Secrets never show: the real `adpipe-deduplicator` binary runs over a
//! cluster that takes clients over SASL_SSL only (`infra/kafka.sh start
//! secure`), its password and the schema registry's write token given by
//! environment as an operator's container would, with every log level on;
//! it does its work, stops cleanly, and neither secret appears in anything
//! it wrote — nor in `--check-config`, which shows them as `<redacted>`.
//! The test sets up and checks through the broker's plaintext internal
//! listener.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use adpipe_codec::{Codec, RegistryClient};
use adpipe_loadtest::Simulation;
use adpipe_loadtest::publish::SimPublisher;
use support::{Pipeline, Tuning};

const TOKEN: &str = "registry-token-never-logged-7f3a";

/// The secrets and where the cluster is, as environment variables.
fn secret_environment(secured: &adpipe_testkit::SecuredCluster) -> Vec<(String, String)> {
    [
        (
            "ADPIPE__KAFKA__BOOTSTRAP_SERVERS",
            secured.bootstrap.clone(),
        ),
        ("ADPIPE__KAFKA__SECURITY__PROTOCOL", "sasl_ssl".to_owned()),
        (
            "ADPIPE__KAFKA__SECURITY__SASL_MECHANISM",
            "SCRAM-SHA-512".to_owned(),
        ),
        (
            "ADPIPE__KAFKA__SECURITY__SASL_USERNAME",
            secured.username.clone(),
        ),
        ("ADPIPE__KAFKA__SECURITY__SASL_PASSWORD", secured.password()),
        (
            "ADPIPE__KAFKA__SECURITY__SSL_CA_LOCATION",
            secured.ca.display().to_string(),
        ),
        ("ADPIPE__REGISTRY__TOKEN", TOKEN.to_owned()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

/// The real deduplicator with `config` and `environment`, its state under
/// `workdir`, its endpoints on a free port.
fn deduplicator(
    config: &std::path::Path,
    environment: &[(String, String)],
    workdir: &std::path::Path,
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_adpipe-deduplicator"));
    command
        .arg("--config")
        .arg(config)
        .envs(environment.iter().map(|(k, v)| (k, v)))
        .env("ADPIPE__DEDUPLICATOR__STATE_DIR", workdir.join("state"))
        .env("ADPIPE__HTTP__LISTEN", "127.0.0.1:0");
    command
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_run_with_secrets_never_shows_them() {
    let secured = adpipe_testkit::secured_kafka("secure");
    let password = secured.password();
    assert!(password.len() >= 16, "a password worth hiding");
    let pipeline =
        Pipeline::create_on(secured.internal.clone(), "dedup-secrets", 3, Some(TOKEN)).await;
    let config = pipeline.write_config(&Tuning::fault_tests());
    let environment = secret_environment(&secured);
    let workdir = std::env::temp_dir().join(format!("{}-run", pipeline.prefix));
    std::fs::create_dir_all(&workdir).expect("work dir");

    // --check-config shows the settings, secrets redacted.
    let checked = Command::new(env!("CARGO_BIN_EXE_adpipe-deduplicator"))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .envs(environment.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("--check-config runs");
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(checked.status.success(), "{shown}");
    assert!(
        shown.contains(&secured.bootstrap),
        "the settings shown: {shown}"
    );
    assert_eq!(
        shown.matches("<redacted>").count(),
        2,
        "password and token: {shown}"
    );
    assert!(!shown.contains(&password), "the password in --check-config");
    assert!(!shown.contains(TOKEN), "the token in --check-config");

    // Events in, through the internal listener (the registry wants its token).
    let codec = Codec::new(
        RegistryClient::new(&pipeline.registry.url())
            .and_then(|client| client.with_token(Some(TOKEN)))
            .expect("client"),
    );
    let prefix = pipeline.prefix.clone();
    let publisher = SimPublisher::new(&codec, &pipeline.bootstrap, |kind| {
        format!("{prefix}.in-{kind}")
    })
    .await
    .expect("publisher");
    let (publications, _) = Simulation {
        impressions: 2_000,
        ..Simulation::default()
    }
    .generate();
    let input = format!("{}.in", pipeline.prefix);
    tokio::task::block_in_place(|| {
        for publication in &publications {
            publisher.publish(publication, &input).expect("published");
        }
        publisher.flush(Duration::from_secs(60)).expect("flushed");
    });

    // The service run, every log level on, its output kept.
    let log_path = workdir.join("deduplicator.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let child = deduplicator(&config, &environment, &workdir)
        .env("RUST_LOG", "trace")
        // librdkafka's own debug lines too (they reach the log through
        // tracing), where a client's configuration would show first.
        .env("ADPIPE__KAFKA__CONSUMER__DEBUG", "security,broker,conf")
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("deduplicator starts");
    let mut guard = adpipe_testkit::ChildGuard::new(child);
    let bootstrap = pipeline.bootstrap.clone();
    let group = pipeline.group();
    tokio::task::block_in_place(|| {
        adpipe_testkit::wait_for(
            "the run to commit its input to the end",
            Duration::from_secs(120),
            || adpipe_testkit::committed_to_end(&bootstrap, &group, &input),
        );
    });
    let mut child = guard.take();
    adpipe_testkit::sigterm(&child);
    let status = child.wait().expect("the run ends");
    let written = std::fs::read_to_string(&log_path).expect("the run's log");
    assert!(status.success(), "the run ended with {status}:\n{written}");
    // It did log, at length, and it did work over SASL_SSL.
    assert!(
        written.lines().count() > 100,
        "only {} log lines",
        written.lines().count()
    );
    assert!(
        written.contains("SASL") || written.contains("sasl"),
        "no SASL in librdkafka's debug lines: the run did not log what it should"
    );
    assert!(
        !written.contains(&password),
        "the password is in {}",
        log_path.display()
    );
    assert!(
        !written.contains(TOKEN),
        "the registry token is in {}",
        log_path.display()
    );
    let _ = std::fs::remove_dir_all(&workdir);
}

/// A wrong password ends the real binary at once with a clear error: its
/// changelog reader's question for the cluster id, made before the worker's
/// own start-up check, stops at the refusal instead of waiting its 30 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_ends_the_service_at_once_with_a_clear_error() {
    let secured = adpipe_testkit::secured_kafka("secure");
    let pipeline =
        Pipeline::create_on(secured.internal.clone(), "dedup-refused", 3, Some(TOKEN)).await;
    let config = pipeline.write_config(&Tuning::fault_tests());
    let workdir = std::env::temp_dir().join(format!("{}-run", pipeline.prefix));
    let mut environment = secret_environment(&secured);
    for (name, value) in &mut environment {
        if name == "ADPIPE__KAFKA__SECURITY__SASL_PASSWORD" {
            *value = "not-the-password".to_owned();
        }
    }
    let started = std::time::Instant::now();
    let ran = tokio::task::block_in_place(|| {
        deduplicator(&config, &environment, &workdir)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .expect("the deduplicator runs")
    });
    let took = started.elapsed();
    println!(
        "a wrong password: the deduplicator exited {} after {took:?}",
        ran.status
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(
        !ran.status.success(),
        "it ran with a wrong password: {said}"
    );
    assert!(
        said.contains("Kafka refused the connection, check [kafka.security]"),
        "not a clear error: {said}"
    );
    assert!(
        !said.contains("not-the-password"),
        "the password shows: {said}"
    );
    // At once: the worker's check alone answers in seconds; the changelog
    // reader's 30 s question made it ~40 s.
    assert!(
        took < Duration::from_secs(25),
        "it took {took:?} to give up: {said}"
    );
    let _ = std::fs::remove_dir_all(&workdir);
}
