//! A broker restart mid-run: the real `adpipe-deduplicator` binary keeps
//! running while the central cluster is stopped and started again
//! (`infra/kafka.sh stop|start central`), recovers by itself, and nothing is
//! lost. Its own test binary, because it takes the cluster away.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use adpipe_codec::{Codec, RegistryClient};
use adpipe_events::EventKind;
use adpipe_loadtest::publish::SimPublisher;
use adpipe_loadtest::{Publication, Simulation};
use support::{Pipeline, Tuning};

const PARTITIONS: i32 = 3;

fn kafka_script(action: &str) {
    adpipe_testkit::kafka_script(&[action, "central"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn recovers_from_a_broker_restart_without_loss() {
    let pipeline = Pipeline::create("restart", PARTITIONS).await;
    let config = pipeline.write_config(&Tuning {
        session_timeout: "30s",
        commit_interval: "200ms",
        revoke_deadline: "10s",
        window: "24h",
        allowed_lateness: "1h",
        queue_high_bytes: 8 << 20,
    });
    let (publications, truth) = Simulation {
        impressions: 300_000,
        ..Simulation::default()
    }
    .generate();
    // Impressions only: their schema is registered before the broker goes away.
    let impressions: Vec<&Publication> = publications
        .iter()
        .filter(|publication| publication.event.kind() == EventKind::Impression)
        .collect();
    let codec = Codec::new(RegistryClient::new(&pipeline.registry.url()).expect("client"));
    let input = format!("{}.in", pipeline.prefix);
    let prefix = &pipeline.prefix;
    let publisher = SimPublisher::new(&codec, &pipeline.bootstrap, |kind| {
        format!("{prefix}.in-{kind}")
    })
    .await
    .expect("publisher");
    tokio::task::block_in_place(|| {
        for publication in &impressions {
            publisher.publish(publication, &input).expect("published");
        }
        publisher.flush(Duration::from_secs(60)).expect("flushed");
    });

    let mut child = Command::new(env!("CARGO_BIN_EXE_adpipe-deduplicator"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .expect("deduplicator starts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    kafka_script("stop");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        child.try_wait().expect("status").is_none(),
        "the service must ride out the outage"
    );
    kafka_script("start");

    let group = pipeline.group();
    let bootstrap = pipeline.bootstrap.clone();
    let output = format!("{}.out", pipeline.prefix);
    let codec = std::sync::Arc::new(codec);
    let runtime = tokio::runtime::Handle::current();
    let ids = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !adpipe_testkit::committed_to_end(&bootstrap, &group, &input) {
            assert!(
                Instant::now() < deadline,
                "the group never committed to the end after the restart"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        support::read_event_ids(&bootstrap, &output, &codec, &runtime)
    })
    .await
    .expect("reader");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(child.wait().expect("exits").success());

    let unique_impressions: std::collections::HashSet<&str> =
        truth.impressions.iter().map(String::as_str).collect();
    let delivered: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(
        delivered, unique_impressions,
        "every unique impression, nothing else"
    );
    println!(
        "broker restart: {} impressions published, {} unique, {} delivered, {} emitted twice",
        impressions.len(),
        unique_impressions.len(),
        ids.len(),
        ids.len() - delivered.len()
    );
    pipeline.registry.stop().await;
}
