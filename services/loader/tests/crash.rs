//! kill -9 and SIGTERM of real `adpipe-loader` binaries — one writing
//! Elasticsearch, one Avro files, one Parquet files, one user profiles in
//! Redis — while events keep coming, on the real central cluster,
//! Elasticsearch and Redis; then every store compared with the ground
//! truth: exactly one document per event in Elasticsearch, each event
//! exactly once in the files (read back by Apache avro-tools and by
//! pyarrow), each event exactly once in its user's profile, and nothing
//! dead-lettered. Peak RSS of each loader is measured.
//!
//! `ADPIPE_LOADER_CRASH_EVENTS` sets the load (default 1,000,000
//! impressions plus 100,000 joined clicks).

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use adpipe_loadtest::pace::FaultRounds;
use adpipe_testkit::{ChildGuard, kill_9, rss_bytes, terminate};
use rand::Rng;
use support::{CLICK_IDS, Es, IMPRESSION_IDS, PARTITIONS, Rig, assert_files_hold_once, load_truth};

/// One loader process: its config, group and metrics address.
struct Loader {
    name: &'static str,
    config: PathBuf,
    listen: SocketAddr,
    process: ChildGuard,
    peak_rss: u64,
    /// Its warnings and errors, over all its restarts (shown when a round
    /// stalls: the test's own output would bury them).
    log: PathBuf,
}

impl Loader {
    fn new(name: &'static str, config: PathBuf) -> Loader {
        let log = config.with_extension("log");
        let _ = std::fs::remove_file(&log);
        Loader {
            name,
            config,
            listen: adpipe_testkit::free_loopback_address(),
            process: ChildGuard::default(),
            peak_rss: 0,
            log,
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("loader log");
        let child: Child = Command::new(env!("CARGO_BIN_EXE_adpipe-loader"))
            .arg("--config")
            .arg(&self.config)
            .env("ADPIPE__HTTP__LISTEN", self.listen.to_string())
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().expect("loader log"))
            .stderr(log)
            .spawn()
            .expect("loader starts");
        self.process = ChildGuard::new(child);
    }

    /// The last lines the loader logged, and its write metrics now.
    async fn diagnosis(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        let metrics = adpipe_testkit::metrics_text(self.listen)
            .await
            .unwrap_or_else(|error| format!("metrics unreadable: {error}"));
        let metrics: Vec<&str> = metrics
            .lines()
            .filter(|line| line.starts_with("adpipe_loader_") && !line.contains("_bucket"))
            .collect();
        format!(
            "{} log lines, the last:\n{tail}\nmetrics:\n{}",
            lines.len(),
            metrics.join("\n")
        )
    }

    fn sample_rss(&mut self) {
        if let Some(rss) = self.process.id().and_then(rss_bytes) {
            self.peak_rss = self.peak_rss.max(rss);
        }
    }
}

fn config(rig: &Rig, name: &str, sections: &str) -> PathBuf {
    rig.config(name, name, sections)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_once_in_each_store_across_kill_9_and_sigterm() {
    let events: u64 = std::env::var("ADPIPE_LOADER_CRASH_EVENTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1_000_000);
    let rig = Arc::new(Rig::new("loader-crash").await);
    let es = Es::new();
    let dir = std::env::temp_dir().join(&rig.prefix);
    let (avro_dir, parquet_dir) = (dir.join("avro"), dir.join("parquet"));
    let profile_prefix = format!("{}:", rig.prefix);
    // Users are n % 1000: room for every event of each, so the profiles
    // must hold each event exactly once (the cap is tested in profiles.rs).
    let keep = events.div_ceil(1000).max(1);
    let mut loaders = [
        Loader::new(
            "elasticsearch",
            config(
                &rig,
                "elasticsearch",
                &format!(
                    "[elasticsearch]\nurl = \"{}\"\nindex-prefix = \"t-\"\n",
                    support::es_url()
                ),
            ),
        ),
        Loader::new(
            "files",
            config(
                &rig,
                "files",
                &format!("[files]\ndir = \"{}\"\n", avro_dir.display()),
            ),
        ),
        Loader::new(
            "parquet",
            rig.config(
                "files",
                "parquet",
                &format!(
                    "[files]\ndir = \"{}\"\nformat = \"parquet\"\n",
                    parquet_dir.display()
                ),
            ),
        ),
        Loader::new(
            "profiles",
            config(
                &rig,
                "profiles",
                &format!(
                    "[profiles]\nurl = \"{}\"\nkey-prefix = \"{profile_prefix}\"\nkeep = {keep}\nttl = \"3650d\"\n",
                    adpipe_testkit::profiles::redis_url()
                ),
            ),
        ),
    ];
    for loader in &mut loaders {
        // Batches of the default size (files: closed every 2 s at the
        // latest), and commits every 5 s (Kafka Streams commits every 30 s):
        // a kill mostly finds batches written but not yet committed, which
        // the restart reads again — what the stores must not duplicate.
        let text = std::fs::read_to_string(&loader.config).expect("config");
        let wait = if matches!(loader.name, "files" | "parquet") {
            "2s"
        } else {
            "1s"
        };
        let text = text
            .replace("records = 200", "records = 5000")
            .replace("wait = \"300ms\"", &format!("wait = \"{wait}\""))
            .replace("commit-interval = \"200ms\"", "commit-interval = \"5s\"");
        std::fs::write(&loader.config, text).expect("config");
    }
    let load = rig.load().await;
    // Rounds go round the four loaders, each killed twice and stopped
    // once; publishing spans them all (the last share of the records is
    // held back until the last fault).
    let rounds = [
        (0, "kill"),
        (1, "kill"),
        (2, "kill"),
        (3, "kill"),
        (0, "term"),
        (1, "kill"),
        (2, "term"),
        (3, "kill"),
        (0, "kill"),
        (1, "term"),
        (2, "kill"),
        (3, "term"),
    ];
    let pacing = FaultRounds::new(events, rounds.len() as u64, Duration::from_secs(10));
    let load = std::sync::Arc::new(load);
    let publishing = pacing.spawn_publisher(
        {
            let load = std::sync::Arc::clone(&load);
            move |n| load.send(n)
        },
        move || load.flush(),
    );
    let started = std::time::Instant::now();
    for loader in &mut loaders {
        loader.spawn();
    }
    let mut rng = rand::rng();
    let (mut kills, mut terms) = (0, 0);
    for (round, (which, how)) in rounds.iter().enumerate() {
        let loader = &mut loaders[*which];
        adpipe_testkit::wait_assigned(
            loader.listen,
            &format!("round {round}: {}", loader.name),
            2 * PARTITIONS as u64,
            Duration::from_secs(120),
        )
        .await;
        let before = rig.committed_records(loader.name);
        // A liveness guard only: a cold Elasticsearch on a loaded machine
        // once took longer than 120 s to its first commit.
        let progressed = tokio::task::block_in_place(|| {
            adpipe_testkit::poll_until(Duration::from_secs(300), || {
                rig.committed_records(loader.name) > before
            })
        });
        assert!(
            progressed,
            "no progress of {} in round {round} in 300 s; {}",
            loader.name,
            loader.diagnosis().await
        );
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2_000))).await;
        for loader in &mut loaders {
            loader.sample_rss();
        }
        let loader = &mut loaders[*which];
        pacing.fault();
        if *how == "term" {
            terminate(loader.process.take());
            terms += 1;
        } else {
            let mut victim = loader.process.take();
            kill_9(&mut victim);
            kills += 1;
        }
        loader.spawn();
    }
    tokio::task::block_in_place(|| publishing.join()).expect("publisher");
    println!("faults done after {:.1} s", started.elapsed().as_secs_f64());
    for loader in &mut loaders {
        rig.wait_committed_to_end(loader.name, Duration::from_secs(900))
            .await;
        loader.sample_rss();
        terminate(loader.process.take());
    }
    println!("drained after {:.1} s", started.elapsed().as_secs_f64());
    let rss: Vec<String> = loaders
        .iter()
        .map(|loader| format!("{} {} MiB", loader.name, loader.peak_rss >> 20))
        .collect();
    println!(
        "kill -9 x{kills}, SIGTERM x{terms} while publishing {events} impressions and {} joined clicks (the publisher mid-share at {} of them); peak RSS: {}",
        events / 10,
        pacing.in_flight_at_faults(),
        rss.join(", ")
    );

    // Each check's time is printed: they bound this test's time in CI.
    let timed = |what: &str, since: std::time::Instant| {
        println!("{what} checked in {:.1} s", since.elapsed().as_secs_f64());
    };
    let (truth, click_truth) = load_truth(events);
    let since = std::time::Instant::now();
    es.assert_loaded_once(&rig.prefix, &truth, &click_truth)
        .await;
    timed("Elasticsearch", since);
    tokio::task::block_in_place(|| {
        for dir in [&avro_dir, &parquet_dir] {
            let since = std::time::Instant::now();
            assert_files_hold_once(dir, &format!("{}.imp", rig.prefix), &truth, &IMPRESSION_IDS);
            assert_files_hold_once(
                dir,
                &format!("{}.jclk", rig.prefix),
                &click_truth,
                &CLICK_IDS,
            );
            timed(&dir.display().to_string(), since);
        }
    });
    let since = std::time::Instant::now();
    assert_profiles_hold_once(&profile_prefix, "impression", &truth).await;
    assert_profiles_hold_once(&profile_prefix, "click", &click_truth).await;
    timed("profiles", since);
    assert!(rig.dead_lettered().is_empty(), "nothing dead-lettered");
    for loader in &loaders {
        assert!(
            loader.peak_rss < 512 << 20,
            "{} loader: peak RSS {} MiB",
            loader.name,
            loader.peak_rss >> 20
        );
    }
    es.delete_indices(&format!("t-{}-*", rig.prefix)).await;
    adpipe_testkit::profiles::delete(&profile_prefix).await;
    remove(&dir);
    for loader in &loaders {
        let _ = std::fs::remove_file(&loader.log);
    }
}

/// Every event of `truth` exactly once among the profile entries of `kind`
/// under `prefix` (an entry is the event's JSON, its id in `id`).
async fn assert_profiles_hold_once(prefix: &str, kind: &str, truth: &BTreeSet<String>) {
    let seen = adpipe_testkit::profiles::event_ids(prefix, &format!(":{kind}")).await;
    let twice: Vec<&String> = seen
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(id, _)| id)
        .take(5)
        .collect();
    let ids: BTreeSet<String> = seen.keys().cloned().collect();
    let missing: Vec<&String> = truth.difference(&ids).take(5).collect();
    let extra: Vec<&String> = ids.difference(truth).take(5).collect();
    assert!(
        twice.is_empty() && missing.is_empty() && extra.is_empty(),
        "{kind} profiles: {} entries for {} events; twice e.g. {twice:?}, missing e.g. {missing:?}, extra e.g. {extra:?}",
        seen.values().sum::<usize>(),
        truth.len()
    );
}

fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
