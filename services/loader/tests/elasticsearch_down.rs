//! Elasticsearch down for a while under load (`infra/elasticsearch.sh stop`,
//! then `start`), the real `adpipe-loader` binary writing to it: while it is
//! down nothing is committed past what it acknowledged, the partitions are
//! paused and the loader's memory stays bounded — far below the backlog
//! piling up in Kafka — and once it is back every event arrives, exactly
//! one document each. A SIGTERM while it is down, and one while a loader
//! started meanwhile waits in its set-up, each end the loader cleanly; a
//! loader left waiting gets going once the store is back. Stops and starts
//! the shared Elasticsearch: its own test binary, run apart from the tests
//! that use Elasticsearch (`infra/run-tests.py`, EXCLUSIVE).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use adpipe_testkit::{ChildGuard, rss_bytes, terminate, terminate_within};
use support::{Es, Rig, load_truth};

fn elasticsearch(action: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/elasticsearch.sh");
    let status = Command::new(script)
        .arg(action)
        .status()
        .expect("the script runs");
    assert!(status.success(), "infra/elasticsearch.sh {action}");
}

/// The real loader binary with `config`, serving its metrics on `listen`.
fn spawn_loader(config: &Path, listen: std::net::SocketAddr) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_adpipe-loader"))
        .arg("--config")
        .arg(config)
        .env("ADPIPE__HTTP__LISTEN", listen.to_string())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("loader starts")
}

/// Starts Elasticsearch again however the test ends (the next tests need it).
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            elasticsearch("start");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_down_pauses_the_loader_in_bounded_memory_and_loses_nothing() {
    let rig = Rig::new("loader-down").await;
    let es = Es::new();
    let config = rig.config(
        "elasticsearch",
        "down",
        &format!(
            "[elasticsearch]\nurl = \"{}\"\nindex-prefix = \"t-\"\n",
            support::es_url()
        ),
    );
    // Memory bounds a small container would set: per partition 2 MiB of
    // queue and a 2 MiB batch, 8 MiB of librdkafka prefetch in all.
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("records = 200", "records = 5000\nbytes = 2097152")
        .replace(
            "[runtime]",
            "[kafka.consumer]\n\"queued.max.messages.kbytes\" = \"8192\"\n[runtime]\nqueue-high-bytes = 2097152\nqueue-low-bytes = 524288",
        );
    std::fs::write(&config, text).expect("config");
    let listen = adpipe_testkit::free_loopback_address();
    let mut loader = ChildGuard::new(spawn_loader(&config, listen));
    let pid = loader.id().expect("running");
    let load = rig.load().await;
    let (up, down) = (20_000, 620_000);
    tokio::task::block_in_place(|| {
        for n in 0..up {
            load.send(n);
        }
        load.flush();
    });
    rig.wait_committed_to_end("down", Duration::from_secs(120))
        .await;
    let rss_up = rss_bytes(pid).expect("RSS");

    elasticsearch("stop");
    let _restart = RestartOnDrop;
    let committed = rig.committed_records("down");
    // Two equal backlogs, one after the other: a loader that buffered what
    // it cannot write would grow by the second one's size; a bounded one
    // stops consuming (pauses) and does not grow.
    let half = (down - up) / 2;
    let mut peaks = Vec::new();
    let mut paused_seen = 0.0_f64;
    for phase in 0..2 {
        let from = up + phase * half;
        tokio::task::block_in_place(|| {
            for n in from..from + half {
                load.send(n);
            }
            load.flush();
        });
        let mut peak = 0;
        let sampling = Instant::now();
        while sampling.elapsed() < Duration::from_secs(12) {
            peak = peak.max(rss_bytes(pid).expect("the loader keeps running"));
            let paused = adpipe_testkit::metric_value(listen, "adpipe_paused_partitions").await;
            paused_seen = paused_seen.max(paused.unwrap_or(0.0));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        peaks.push(peak);
    }
    let failures = adpipe_testkit::metric_value(listen, "adpipe_loader_write_failures_total")
        .await
        .unwrap_or(0.0);
    let committed_down = rig.committed_records("down");
    let half_bytes = half * 262; // An impression's value is ~262 bytes.
    println!(
        "Elasticsearch down under two backlogs of {half} events (~{} MiB each): loader RSS {} MiB before, peak {} MiB after the first, {} MiB after the second; {paused_seen} partitions paused; {failures} failed writes; committed {committed} -> {committed_down}",
        half_bytes >> 20,
        rss_up >> 20,
        peaks[0] >> 20,
        peaks[1] >> 20,
    );
    assert!(failures >= 1.0, "writes failed while the store was down");
    assert!(
        paused_seen >= 1.0,
        "partitions paused while the store was down"
    );
    // Nothing written, so nothing committed (at most the batches written
    // just before the stop, whose commit was still due).
    assert!(
        committed_down - committed < 6 * 5_000,
        "nothing committed past what the store acknowledged: {committed} -> {committed_down}"
    );
    assert!(
        peaks[1] < peaks[0] + half_bytes / 8,
        "bounded memory: RSS grew from {} to {} MiB with a second backlog of {} MiB",
        peaks[0] >> 20,
        peaks[1] >> 20,
        half_bytes >> 20
    );

    // SIGTERM while the store is down: a clean exit within the revoke
    // deadline (3 s) and a little, committing nothing it did not write.
    let stopped = terminate_within(loader.take(), Duration::from_secs(20));
    assert!(
        stopped.is_some_and(|status| status.success()),
        "SIGTERM with the store down ends the loader cleanly: {stopped:?}"
    );
    let committed_stopped = rig.committed_records("down");
    assert!(
        committed_stopped - committed < 6 * 5_000,
        "a graceful stop commits nothing the store did not acknowledge: {committed} -> {committed_stopped}"
    );

    // Started while the store is down, a loader waits in its set-up (no
    // endpoint yet); SIGTERM there is a clean exit too (it used to be the
    // signal's default action: killed, status 143).
    let waiting = spawn_loader(&config, listen);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        adpipe_testkit::metric_value(listen, "adpipe_assigned_partitions").await,
        None,
        "still setting up while the store is down"
    );
    let stopped = terminate_within(waiting, Duration::from_secs(10));
    assert!(
        stopped.is_some_and(|status| status.success()),
        "SIGTERM during set-up ends the loader cleanly: {stopped:?}"
    );

    // Started while the store is down and left waiting: the store comes
    // back, the set-up completes and every event arrives, once.
    let mut loader = ChildGuard::new(spawn_loader(&config, listen));
    tokio::time::sleep(Duration::from_secs(4)).await;
    elasticsearch("start");
    rig.wait_committed_to_end("down", Duration::from_secs(600))
        .await;
    terminate(loader.take());
    let (truth, click_truth) = load_truth(down);
    es.assert_loaded_once(&rig.prefix, &truth, &click_truth)
        .await;
    es.delete_indices(&format!("t-{}-*", rig.prefix)).await;
}
