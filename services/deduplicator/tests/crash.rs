//! kill -9 and broker restarts, with the real `adpipe-deduplicator` binary
//! against real Kafka, checked against the simulator's ground truth.
//!
//! `ADPIPE_CRASH_TEST_IMPRESSIONS` sets the load of the repeated-kill test
//! (default 1,000,000 impressions, plus clicks, conversions and 5% duplicates).

mod support;

use adpipe_testkit::{kill_9, terminate};

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use adpipe_codec::{Codec, RegistryClient};
use adpipe_loadtest::pace::FaultRounds;
use adpipe_loadtest::publish::SimPublisher;
use adpipe_loadtest::{GroundTruth, Publication, Simulation};
use adpipe_schema_registry::RunningRegistry;
use rand::Rng;
use support::{Pipeline, Tuning};

const PARTITIONS: i32 = 6;

/// Topics, a registry and a config on the central cluster, and a simulation
/// generated but not yet published.
struct Setup {
    bootstrap: String,
    group: String,
    prefix: String,
    registry: RunningRegistry,
    config_path: PathBuf,
    publisher: SimPublisher,
    publications: Vec<Publication>,
    truth: GroundTruth,
}

impl Setup {
    async fn new(name: &str, impressions: u64) -> Setup {
        let pipeline = Pipeline::create(name, PARTITIONS).await;
        let (publications, truth) = Simulation {
            impressions,
            ..Simulation::default()
        }
        .generate();
        let codec = Codec::new(RegistryClient::new(&pipeline.registry.url()).expect("client"));
        let prefix = pipeline.prefix.clone();
        let publisher = SimPublisher::new(&codec, &pipeline.bootstrap, |kind| {
            format!("{prefix}.in-{kind}")
        })
        .await
        .expect("publisher");
        let config_path = pipeline.write_config(&Tuning::fault_tests());
        Setup {
            group: pipeline.group(),
            bootstrap: pipeline.bootstrap,
            prefix: pipeline.prefix,
            registry: pipeline.registry,
            config_path,
            publisher,
            publications,
            truth,
        }
    }

    /// Publishes `publications` to the input topic and waits for the broker's acks.
    fn publish(&self, publications: &[Publication]) {
        let topic = format!("{}.in", self.prefix);
        tokio::task::block_in_place(|| {
            for publication in publications {
                self.publisher
                    .publish(publication, &topic)
                    .expect("published");
            }
            self.publisher
                .flush(Duration::from_secs(120))
                .expect("flushed");
        });
    }

    /// Starts the real binary. Each instance gets its own state directory,
    /// as containers on different hosts would, so nothing but the changelog
    /// can carry state from one to the other.
    fn spawn(&self, instance: &Instance) -> Child {
        Command::new(env!("CARGO_BIN_EXE_adpipe-deduplicator"))
            .arg("--config")
            .arg(&self.config_path)
            .env("ADPIPE__DEDUPLICATOR__STATE_DIR", &instance.state_dir)
            .env("ADPIPE__HTTP__LISTEN", instance.listen.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("deduplicator starts")
    }

    fn committed_to_end(&self) -> bool {
        adpipe_testkit::committed_to_end(
            &self.bootstrap,
            &self.group,
            &format!("{}.in", self.prefix),
        )
    }

    fn wait_committed_to_end(&self, timeout: Duration) {
        wait_until("the group to commit to the end", timeout, || {
            self.committed_to_end()
        });
    }

    async fn delivered_ids(&self) -> Vec<String> {
        let codec = std::sync::Arc::new(Codec::new(
            RegistryClient::new(&self.registry.url()).expect("client"),
        ));
        let topic = format!("{}.out", self.prefix);
        let bootstrap = self.bootstrap.clone();
        let runtime = tokio::runtime::Handle::current();
        // A plain blocking read loop on its own thread, like the services' consumers.
        tokio::task::spawn_blocking(move || {
            support::read_event_ids(&bootstrap, &topic, &codec, &runtime)
        })
        .await
        .expect("reader")
    }
}

/// Where one deduplicator process keeps its state and serves its metrics.
struct Instance {
    state_dir: PathBuf,
    listen: std::net::SocketAddr,
}

impl Instance {
    fn new(prefix: &str) -> Instance {
        // Ask the OS for a free loopback port, then hand it to the process.
        let listen = adpipe_testkit::free_loopback_address();
        Instance {
            state_dir: std::env::temp_dir()
                .join(adpipe_testkit::unique(&format!("{prefix}-state"))),
            listen,
        }
    }

    async fn wait_assigned(&self, what: &str, expected: u64, timeout: Duration) {
        adpipe_testkit::wait_assigned(self.listen, what, expected, timeout).await;
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The group's committed offsets summed over the input's partitions.
fn committed_sum(setup: &Setup) -> i64 {
    adpipe_testkit::committed_offsets(
        &setup.bootstrap,
        &setup.group,
        &format!("{}.in", setup.prefix),
    )
    .into_iter()
    .flatten()
    .sum()
}

/// kill -9 at random moments while the bidders keep publishing, with a
/// graceful SIGTERM restart mixed in (so later restores start from a
/// snapshot plus the changelog's tail, and are then killed again). Every
/// kill lands while the victim owns all partitions, and the group must make
/// progress after every restart. Nothing may be lost.
#[tokio::test(flavor = "multi_thread")]
async fn no_event_is_lost_across_repeated_kill_9() {
    let impressions = std::env::var("ADPIPE_CRASH_TEST_IMPRESSIONS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1_000_000);
    let setup = std::sync::Arc::new(Setup::new("crash", impressions).await);
    let instance = Instance::new(&setup.prefix);
    let restarts = ["kill", "kill", "term", "kill", "kill", "term", "kill"];
    // Publishing spans the restarts however long they take here: a round
    // (assignment, progress, a random pause) takes 2–5 s, and the last
    // share of the records is held back until the last restart.
    let pacing = FaultRounds::new(
        setup.publications.len() as u64,
        restarts.len() as u64,
        Duration::from_secs(5),
    );
    let topic = format!("{}.in", setup.prefix);
    let publishing = pacing.spawn_publisher(
        {
            let setup = std::sync::Arc::clone(&setup);
            move |n| {
                let publication = &setup.publications[usize::try_from(n).expect("small")];
                setup
                    .publisher
                    .publish(publication, &topic)
                    .expect("published");
            }
        },
        {
            let setup = std::sync::Arc::clone(&setup);
            move || {
                setup
                    .publisher
                    .flush(Duration::from_secs(120))
                    .expect("flushed");
            }
        },
    );
    let mut rng = rand::rng();
    let mut child = setup.spawn(&instance);
    let wait = Duration::from_secs(120);
    let (mut kills, mut terms) = (0, 0);
    let mut committed_before = committed_sum(&setup);
    for (round, how) in restarts.iter().enumerate() {
        // The victim owns its partitions and is working when it goes.
        instance
            .wait_assigned(&format!("round {round}"), PARTITIONS as u64, wait)
            .await;
        wait_until(&format!("progress in round {round}"), wait, || {
            committed_sum(&setup) > committed_before
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
        committed_before = committed_sum(&setup);
        pacing.fault();
        if *how == "term" {
            terminate(child);
            terms += 1;
        } else {
            kill_9(&mut child);
            kills += 1;
        }
        child = setup.spawn(&instance);
    }
    tokio::task::block_in_place(|| publishing.join()).expect("publisher");
    setup.wait_committed_to_end(Duration::from_secs(600));
    terminate(child);

    let ids = setup.delivered_ids().await;
    let report = setup.truth.check(ids.iter().map(String::as_str));
    println!(
        "the publisher was mid-share at {} of the faults (at the others its share was out, a backlog or none)",
        pacing.in_flight_at_faults()
    );
    println!(
        "kill -9 x{kills} and SIGTERM x{terms} while publishing: published {} ({} duplicates injected), uniques {}, delivered {} records, missing {}, emitted twice {} ({:.4}% of uniques)",
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
    // Records in flight at a kill are read again; their outputs already in
    // the topic are found (`resume-scan`) and not emitted twice. With
    // ADPIPE__DEDUPLICATOR__RESUME_SCAN=0 this fails (copies re-emitted).
    assert_eq!(report.extra_copies, 0, "emitted twice: {report:?}");
    let _ = std::fs::remove_dir_all(&instance.state_dir);
    let Ok(setup) = std::sync::Arc::try_unwrap(setup) else {
        panic!("the publisher still holds the setup");
    };
    setup.registry.stop().await;
}

/// Two binaries in one group; one is killed with SIGKILL (no revoke, no
/// snapshot, no leave-group). After the session timeout the survivor owns
/// every partition, and its state for the dead one's partitions comes from
/// the changelog alone, so every copy of what the dead one emitted is dropped.
#[tokio::test(flavor = "multi_thread")]
async fn a_survivor_drops_duplicates_of_what_a_killed_instance_saw() {
    let setup = Setup::new("handover-kill", 20_000).await;
    let publications = &setup.publications;
    let (before_join, rest) = publications.split_at(publications.len() * 2 / 5);
    let (while_both, after_kill) = rest.split_at(rest.len() / 2);
    let (doomed, survivor) = (Instance::new(&setup.prefix), Instance::new(&setup.prefix));
    let wait = Duration::from_secs(60);

    // The doomed instance alone sees the first part on all partitions…
    let mut doomed_child = setup.spawn(&doomed);
    setup.publish(before_join);
    doomed.wait_assigned("alone", PARTITIONS as u64, wait).await;
    setup.wait_committed_to_end(wait);

    // …then shares the group: half the partitions each, both see the second part.
    let survivor_child = setup.spawn(&survivor);
    let half = PARTITIONS as u64 / 2;
    survivor.wait_assigned("the joiner", half, wait).await;
    doomed.wait_assigned("the first", half, wait).await;
    setup.publish(while_both);
    setup.wait_committed_to_end(wait);

    // SIGKILL, then copies of everything published so far plus the last part.
    kill_9(&mut doomed_child);
    let copies_of_everything_seen: Vec<Publication> = before_join
        .iter()
        .chain(while_both)
        .cloned()
        .map(|mut publication| {
            publication.duplicate = true;
            publication
        })
        .collect();
    setup.publish(&copies_of_everything_seen);
    setup.publish(after_kill);
    // The broker notices the death only after the session timeout (6 s).
    survivor
        .wait_assigned("the survivor", PARTITIONS as u64, wait)
        .await;
    setup.wait_committed_to_end(wait);
    terminate(survivor_child);

    let ids = setup.delivered_ids().await;
    let report = setup.truth.check(ids.iter().map(String::as_str));
    println!(
        "handover after kill -9: published {} + {} copies of what was seen, uniques {}, delivered {} records, missing {}, emitted twice {}",
        setup.truth.published,
        copies_of_everything_seen.len(),
        report.expected_uniques,
        ids.len(),
        report.missing,
        report.extra_copies,
    );
    assert_eq!(report.missing, 0, "no event may be lost");
    assert_eq!(report.unknown, 0);
    // Nothing was in flight at the kill (the group had committed to the end),
    // so no copy may pass: not of the dead one's events, not of the survivor's.
    assert_eq!(report.extra_copies, 0, "{report:?}");
    for instance in [doomed, survivor] {
        let _ = std::fs::remove_dir_all(instance.state_dir);
    }
    setup.registry.stop().await;
}
