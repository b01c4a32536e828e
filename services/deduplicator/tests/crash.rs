//! kill -9 and broker restarts, with the real `adpipe-deduplicator` binary
//! against real Kafka, checked against the simulator's ground truth.
//!
//! `ADPIPE_CRASH_TEST_IMPRESSIONS` sets the load (default 1,000,000
//! impressions, plus clicks, conversions and 5% duplicates).

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use adpipe_codec::{Codec, RegistryClient};
use adpipe_loadtest::publish::SimPublisher;
use adpipe_loadtest::{GroundTruth, Simulation};
use adpipe_schema_registry::RunningRegistry;
use rand::Rng;
use support::{Pipeline, Tuning};

const PARTITIONS: i32 = 6;

struct Setup {
    bootstrap: String,
    group: String,
    prefix: String,
    registry: RunningRegistry,
    config_path: std::path::PathBuf,
    truth: GroundTruth,
}

async fn setup(impressions: u64) -> Setup {
    let pipeline = Pipeline::create("crash", PARTITIONS).await;
    let (bootstrap, prefix, registry) = (&pipeline.bootstrap, &pipeline.prefix, &pipeline.registry);
    let names = [format!("{prefix}.in")];

    let (publications, truth) = Simulation {
        impressions,
        ..Simulation::default()
    }
    .generate();
    let codec = Codec::new(RegistryClient::new(&registry.url()).expect("client"));
    let publisher = SimPublisher::new(&codec, bootstrap, |kind| format!("{prefix}.in-{kind}"))
        .await
        .expect("publisher");
    tokio::task::block_in_place(|| {
        for publication in &publications {
            publisher
                .publish(publication, &names[0])
                .expect("published");
        }
        publisher.flush(Duration::from_secs(120)).expect("flushed");
    });

    let config_path = pipeline.write_config(&Tuning {
        session_timeout: "6s",
        commit_interval: "200ms",
        revoke_deadline: "3s",
        window: "24h",
        allowed_lateness: "1h",
        queue_high_bytes: 8 << 20,
    });
    Setup {
        group: pipeline.group(),
        bootstrap: pipeline.bootstrap,
        prefix: pipeline.prefix,
        registry: pipeline.registry,
        config_path,
        truth,
    }
}

fn spawn(setup: &Setup) -> Child {
    Command::new(env!("CARGO_BIN_EXE_adpipe-deduplicator"))
        .arg("--config")
        .arg(&setup.config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("deduplicator starts")
}

fn committed_to_end(setup: &Setup) -> bool {
    adpipe_testkit::committed_to_end(
        &setup.bootstrap,
        &setup.group,
        &format!("{}.in", setup.prefix),
    )
}

async fn delivered_ids(setup: &Setup) -> Vec<String> {
    let codec = std::sync::Arc::new(Codec::new(
        RegistryClient::new(&setup.registry.url()).expect("client"),
    ));
    let topic = format!("{}.out", setup.prefix);
    let bootstrap = setup.bootstrap.clone();
    let runtime = tokio::runtime::Handle::current();
    // A plain blocking read loop on its own thread, like the services' consumers.
    tokio::task::spawn_blocking(move || {
        support::read_event_ids(&bootstrap, &topic, &codec, &runtime)
    })
    .await
    .expect("reader")
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().expect("exits");
    assert!(status.success(), "graceful stop exits cleanly: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_event_is_lost_across_repeated_kill_9() {
    let impressions = std::env::var("ADPIPE_CRASH_TEST_IMPRESSIONS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1_000_000);
    let setup = setup(impressions).await;
    let mut rng = rand::rng();
    let mut child = spawn(&setup);
    let kills = 4;
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_500..5_000))).await;
        child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix: no drain, no commit
        child.wait().expect("reaped");
        child = spawn(&setup);
    }
    wait_until(
        "the group to commit to the end",
        Duration::from_secs(600),
        || committed_to_end(&setup),
    );
    terminate(child);

    let ids = delivered_ids(&setup).await;
    let report = setup.truth.check(ids.iter().map(String::as_str));
    println!(
        "kill -9 x{kills}: published {} ({} duplicates injected), uniques {}, delivered {} records, missing {}, emitted twice {} ({:.4}% of uniques)",
        setup.truth.published,
        setup.truth.duplicates,
        report.expected_uniques,
        ids.len(),
        report.missing,
        report.extra_copies,
        report.extra_copies as f64 * 100.0 / report.expected_uniques as f64
    );
    assert_eq!(report.missing, 0, "no event may be lost");
    assert_eq!(report.unknown, 0);
    // Re-emissions come only from records in flight at a kill whose changelog
    // entry was not yet acknowledged: a window of one commit interval.
    assert!(
        report.extra_copies * 50 < report.expected_uniques,
        "{report:?}"
    );
    setup.registry.stop().await;
}
