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
