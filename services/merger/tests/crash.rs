//! kill -9 of the real `adpipe-merger` binary, several times, while over a
//! million events flow from two DC clusters through the real MirrorMaker 2:
//! nothing is lost; what a kill makes the merger emit twice is counted, and
//! the deduplicator downstream removes it, so the deduplicated output equals
//! the simulator's ground truth exactly.
//!
//! `ADPIPE_MERGER_CRASH_IMPRESSIONS` sets the load (default 1,000,000
//! impressions plus clicks, conversions and 5% duplicates);
//! `ADPIPE_MERGER_RESUME_SCAN=0` turns off resuming after the source
//! offsets found in the output (to measure what it saves).

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use adpipe_deduplicator::DedupSettings;
use adpipe_deduplicator::config::Stream;
use adpipe_loadtest::Simulation;
use rand::Rng;
use support::{DCS, KINDS, Rig, merged_counts, published_counts, spawn_merger};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

async fn assigned(listen: std::net::SocketAddr) -> u64 {
    adpipe_testkit::metric_value(listen, "adpipe_assigned_partitions")
        .await
        .map_or(0, |value| value as u64)
}

fn committed_sum(rig: &Rig) -> i64 {
    DCS.iter()
        .flat_map(|dc| KINDS.map(|kind| rig.replica(dc, kind)))
        .flat_map(|topic| adpipe_testkit::committed_offsets(&rig.central, &rig.group(), &topic))
        .flatten()
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_event_is_lost_across_repeated_kill_9_of_the_merger() {
    const PARTITIONS: i32 = 6;
    let impressions = env_number("ADPIPE_MERGER_CRASH_IMPRESSIONS", 1_000_000);
    let resume_scan = env_number("ADPIPE_MERGER_RESUME_SCAN", 100_000);
    let rig = std::sync::Arc::new(Rig::new("mg-crash", PARTITIONS).await);
    tokio::task::block_in_place(|| rig.wait_for_replicas(Duration::from_secs(90)));
    // Historical event times (the last a minute ago): no heartbeats, which
    // promise live ones; the merge waits for both DCs' data or max-idle.
    let mut simulation = Simulation {
        impressions,
        ..Simulation::default()
    };
    let span_ms = (impressions as f64 * simulation.publications_per_impression()) as i64;
    simulation.follow_wall_clock(adpipe_runtime::event_time::now_ms() - span_ms - 60_000, 0.0);
    let (publications, truth) = simulation.generate();
    let publications = std::sync::Arc::new(publications);
    let config = rig.write_config("max-idle = \"2s\"", &format!("resume-scan = {resume_scan}"));
    let publishing = {
        let (rig, publications) = (
            std::sync::Arc::clone(&rig),
            std::sync::Arc::clone(&publications),
        );
        // About 10 s of publishing, so kills land while it goes on.
        std::thread::spawn(move || rig.publish(&publications, publications.len() as f64 / 10.0))
    };
    let listen = adpipe_testkit::free_loopback_address();
    let mut child = spawn_merger(&config, listen);
    let mut rng = rand::rng();
    let kills = 4;
    let all = (DCS.len() * KINDS.len()) as u64 * PARTITIONS as u64;
    let mut committed_before = committed_sum(&rig);
    for round in 0..kills {
        let deadline = Instant::now() + Duration::from_secs(120);
        while assigned(listen).await != all {
            assert!(Instant::now() < deadline, "round {round}: not assigned");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        while committed_sum(&rig) <= committed_before {
            assert!(Instant::now() < deadline, "round {round}: no progress");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
        committed_before = committed_sum(&rig);
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        child = spawn_merger(&config, listen);
    }
    tokio::task::block_in_place(|| publishing.join()).expect("publisher");
    tokio::task::block_in_place(|| {
        rig.wait_for_merged(publications.len(), Duration::from_secs(600));
        rig.wait_committed_to_end(Duration::from_secs(300));
    });
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(child.wait().expect("exits").success());

    let runtime = tokio::runtime::Handle::current();
    let merged = tokio::task::block_in_place(|| rig.read_merged(&runtime));
    let published = published_counts(&publications);
    let merged_by_event = merged_counts(&merged);
    let lost: Vec<_> = published
        .iter()
        .filter(|(key, count)| merged_by_event.get(*key).copied().unwrap_or(0) < **count)
        .collect();
    assert!(
        lost.is_empty(),
        "{} published records never merged, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    let mut by_source: HashMap<(String, String, i32, i64), usize> = HashMap::new();
    for record in &merged {
        *by_source
            .entry((
                record.dc.clone(),
                record.topic.clone(),
                record.partition,
                record.source_offset,
            ))
            .or_default() += 1;
    }
    let re_emitted: usize = by_source.values().map(|count| count - 1).sum();
    let late = merged
        .iter()
        .filter(|record| record.lateness_ms.is_some())
        .count();

    // The deduplicator downstream turns at-least-once into exactly-once.
    let dedup_out = KINDS.map(|kind| format!("{}.dedup.{kind}", rig.prefix));
    let dedup_log = KINDS.map(|kind| format!("{}.dedup-log.{kind}", rig.prefix));
    let mut specs: Vec<adpipe_testkit::TopicSpec<'_>> = Vec::new();
    for name in dedup_out.iter().chain(&dedup_log) {
        specs.push((name.as_str(), PARTITIONS, &[]));
    }
    adpipe_testkit::create_topics(&rig.central, &specs).await;
    let env = [
        ("ADPIPE__KAFKA__BOOTSTRAP_SERVERS", rig.central.clone()),
        ("ADPIPE__KAFKA__GROUP_ID", format!("{}-dedup", rig.prefix)),
        ("ADPIPE__REGISTRY__URL", rig.registry.url()),
        (
            "ADPIPE__RUNTIME__DEAD_LETTER_TOPIC",
            format!("{}.dlq", rig.prefix),
        ),
        ("ADPIPE__RUNTIME__COMMIT_INTERVAL", "200ms".to_owned()),
        ("ADPIPE__HTTP__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "ADPIPE__DEDUPLICATOR__STATE_DIR",
            std::env::temp_dir()
                .join(format!("{}-dedup", rig.prefix))
                .display()
                .to_string(),
        ),
    ]
    .map(|(key, value)| (key.to_owned(), value));
    let mut dedup = DedupSettings::load(None, env.into_iter()).expect("dedup settings");
    dedup.set_streams(
        KINDS
            .iter()
            .enumerate()
            .map(|(index, kind)| Stream {
                input: rig.merged(kind),
                output: dedup_out[index].clone(),
                changelog: dedup_log[index].clone(),
            })
            .collect(),
    );
    let worker = adpipe_deduplicator::start(dedup).expect("deduplicator starts");
    let deadline = Instant::now() + Duration::from_secs(600);
    for kind in KINDS {
        let group = format!("{}-dedup", rig.prefix);
        while !adpipe_testkit::committed_to_end(&rig.central, &group, &rig.merged(kind)) {
            assert!(Instant::now() < deadline, "deduplicator did not finish");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    worker.stop().await.expect("clean stop");
    let mut ids = adpipe_loadtest::output::OutputIds::default();
    for topic in &dedup_out {
        let codec = std::sync::Arc::clone(&rig.codec);
        tokio::task::block_in_place(|| ids.read_topic(&rig.central, topic, &codec, &runtime))
            .expect("read");
    }
    let report = truth.check(ids.ids.iter().map(String::as_str));
    println!(
        "merger kill -9 x{kills} (resume-scan {resume_scan}): published {} ({} duplicates), merged {} records, re-emitted by kills {re_emitted} ({:.4}%), late {late}; deduplicated: uniques {}, missing {}, extra copies {}",
        truth.published,
        truth.duplicates,
        merged.len(),
        re_emitted as f64 * 100.0 / truth.published as f64,
        report.expected_uniques,
        report.missing,
        report.extra_copies,
    );
    assert_eq!(report.missing, 0, "no event lost");
    assert_eq!(report.extra_copies, 0, "exactly once after deduplication");
    assert_eq!(report.unknown, 0);
    let Ok(rig) = std::sync::Arc::try_unwrap(rig) else {
        panic!("the publisher still holds the rig");
    };
    rig.registry.stop().await;
}
