//! The files sink on the real central cluster, its files read back by
//! readers nobody here wrote — Apache avro-tools (`infra/avro-tools.sh`)
//! for Avro, pyarrow (`infra/pyarrow.sh`) for Parquet: every event once,
//! in its topic/date/hour directory, in files named from partition and
//! offset range — across a restart whose Kafka commit was rewound behind
//! what the files hold (a bad record there dead-lettered again, not
//! skipped), and after a crash between putting a batch's files in place
//! and recording it; Parquet rows equal to the Avro records.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use adpipe_loader::files::{Marker, PartitionPaths};
use adpipe_runtime::dead_letter::HEADER_OFFSET;
use support::{CLICK_IDS, IMPRESSION_IDS, Rig, assert_files_hold_once, event_files, read_files};

fn files_section(dir: &Path, format: &str, codec: &str) -> String {
    format!(
        "[files]\ndir = \"{}\"\nformat = \"{format}\"\ncodec = \"{codec}\"\n",
        dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_in_the_avro_files_once_across_a_rewound_commit_and_a_crash_mid_batch() {
    files_hold_each_event_once("avro", "deflate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_in_the_parquet_files_once_across_a_rewound_commit_and_a_crash_mid_batch() {
    files_hold_each_event_once("parquet", "snappy").await;
}

async fn files_hold_each_event_once(format: &str, codec: &str) {
    let rig = Rig::new(&format!("loader-{format}")).await;
    let dir = std::env::temp_dir().join(&rig.prefix);
    let (mut truth, mut click_truth) = rig.publish(0, 300).await;
    // A bad record with files written past it: dead-lettered.
    rig.send("imp", 1, b"not avro").await;
    let (more, more_clicks) = rig.publish(300, 600).await;
    truth.extend(more);
    click_truth.extend(more_clicks);
    let config = rig.config("files", "files", &files_section(&dir, format, codec));
    let loader = adpipe_loader::start(rig.settings(&config)).expect("starts");
    rig.wait_committed_to_end("files", Duration::from_secs(120))
        .await;
    // The metrics recorder is the test process's: later runs (and the
    // other tests' loaders) add to it; the topics are this test's own.
    let own_topics = format!("topic=\"{}.", rig.prefix);
    let written = |address| {
        let own_topics = own_topics.clone();
        async move {
            adpipe_testkit::metric_value_where(address, "adpipe_loader_records_total", &own_topics)
                .await
                .expect("a count")
        }
    };
    let first_run = written(loader.http_address).await;
    loader.stop().await.expect("clean stop");
    assert_eq!(first_run, 750.0, "600 impressions and 150 clicks written");
    let imp_topic = format!("{}.imp", rig.prefix);
    let clk_topic = format!("{}.jclk", rig.prefix);
    assert_files_hold_once(&dir, &imp_topic, &truth, &IMPRESSION_IDS);
    assert_files_hold_once(&dir, &clk_topic, &click_truth, &CLICK_IDS);

    // Stopped: the Kafka group's commits are rewound to 0 — only the
    // markers may decide where each partition resumes.
    rig.rewind_group("files");
    // And partition 0 crashed after its last batch's files were staged and
    // the marker said pending: the batch is finished at the next start.
    let paths = PartitionPaths::new(&dir, &imp_topic, 0);
    let marker = paths.read_marker().expect("a marker");
    let next = marker.next.expect("an offset");
    let last_file = event_files(&dir.join(&imp_topic))
        .into_iter()
        .filter(|file| {
            file.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| {
                    name.contains("-p0000-")
                        && name.ends_with(&format!("{:020}.{format}", next - 1))
                })
        })
        .collect::<Vec<_>>();
    assert!(
        !last_file.is_empty(),
        "the last batch's files of partition 0"
    );
    let staging = dir.join("_adpipe/staging").join(&imp_topic).join("p0");
    let mut pending_files = Vec::new();
    for file in &last_file {
        let staged = staging.join(file.file_name().expect("a name"));
        std::fs::rename(file, &staged).expect("moved back to staging");
        pending_files.push((staged, file.clone()));
    }
    let first_of_last = pending_files.len();
    let rolled_back = Marker {
        next: Some(next - 1), // Not the real start of the batch: never read, the batch is finished instead.
        pending: Some(adpipe_loader::files::PendingBatch {
            next,
            files: pending_files,
        }),
    };
    std::fs::write(
        dir.join("_adpipe").join(&imp_topic).join("p0.json"),
        serde_json::to_vec(&rolled_back).expect("JSON"),
    )
    .expect("marker rolled back");
    assert!(first_of_last > 0);

    // Restarted with nothing new: the files hold every record, read again
    // from the commit (0, behind the markers) but not written again; the
    // group's commit moves to the end by itself.
    let loader = adpipe_loader::start(rig.settings(&config)).expect("starts again");
    rig.wait_committed_to_end("files", Duration::from_secs(60))
        .await;
    assert_eq!(
        written(loader.http_address).await,
        first_run,
        "nothing written again"
    );
    // The commit at 0 is also what a kill -9 leaves between a batch's
    // files and the dead letter of a bad record before them: read again
    // from the commit, the bad record is dead-lettered again, not skipped.
    let dead_letters: Vec<Option<String>> = rig
        .dead_lettered()
        .iter()
        .map(|dead| adpipe_testkit::header_text(dead, HEADER_OFFSET))
        .collect();
    assert_eq!(
        dead_letters,
        [Some("100".to_owned()), Some("100".to_owned())]
    );
    let (more, more_clicks) = rig.publish(600, 900).await;
    truth.extend(more);
    click_truth.extend(more_clicks);
    rig.wait_committed_to_end("files", Duration::from_secs(120))
        .await;
    let both_runs = written(loader.http_address).await;
    loader.stop().await.expect("clean stop");
    assert_eq!(
        both_runs - first_run,
        375.0,
        "only the 300 new impressions and 75 new clicks read and written"
    );
    assert_eq!(
        paths.read_marker().expect("a marker").pending,
        None,
        "the pending batch finished"
    );
    assert_files_hold_once(&dir, &imp_topic, &truth, &IMPRESSION_IDS);
    assert_files_hold_once(&dir, &clk_topic, &click_truth, &CLICK_IDS);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_rows_as_pyarrow_reads_them_equal_the_avro_records_as_avro_tools_reads_them() {
    let rig = Rig::new("loader-formats").await;
    let (truth, click_truth) = rig.publish(0, 400).await;
    let mut read = Vec::new();
    for (format, codec) in [("avro", "null"), ("parquet", "deflate")] {
        let dir = std::env::temp_dir().join(format!("{}-{format}", rig.prefix));
        let config = rig.config("files", format, &files_section(&dir, format, codec));
        let loader = adpipe_loader::start(rig.settings(&config)).expect("starts");
        rig.wait_committed_to_end(format, Duration::from_secs(120))
            .await;
        loader.stop().await.expect("clean stop");
        let mut topics = Vec::new();
        for (suffix, ids, truth) in [
            ("imp", &IMPRESSION_IDS, &truth),
            ("jclk", &CLICK_IDS, &click_truth),
        ] {
            let topic = format!("{}.{suffix}", rig.prefix);
            assert_files_hold_once(&dir, &topic, truth, ids);
            let mut records: Vec<String> = read_files(&event_files(&dir.join(&topic)))
                .iter()
                .map(|record| serde_json::to_string(record).expect("JSON"))
                .collect();
            records.sort();
            topics.push(records);
        }
        read.push(topics);
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert_eq!(read[0][0].len(), 400);
    assert_eq!(
        read[0], read[1],
        "every field of every record the same in both formats"
    );
}

/// Mounts a tmpfs of `size` at `dir` (root only); `false` when it cannot.
fn mount_tmpfs(dir: &Path, size: &str, remount: bool) -> bool {
    let options = if remount {
        format!("remount,size={size}")
    } else {
        format!("size={size}")
    };
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|status| status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_loader_with_nothing_committed_past_its_files() {
    let rig = Rig::new("loader-full").await;
    let dir = std::env::temp_dir().join(&rig.prefix);
    std::fs::create_dir_all(&dir).expect("dir");
    // 3,000 impressions uncompressed are ~800 KB: a 256 KiB disk fills.
    if !mount_tmpfs(&dir, "256k", false) {
        println!("SKIPPED: a small disk needs `mount -t tmpfs` (root); not run here");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _unmount = Unmount(dir.clone());
    let (truth, click_truth) = rig.publish(0, 3000).await;
    let config = rig.config(
        "files",
        "full",
        &format!("[files]\ndir = \"{}\"\ncodec = \"null\"\n", dir.display()),
    );
    let loader = adpipe_loader::start(rig.settings(&config)).expect("starts");
    let reason = tokio::time::timeout(Duration::from_secs(60), loader.stopped())
        .await
        .expect("the worker stops by itself");
    assert!(
        reason.contains("disk_full") || reason.contains("No space left"),
        "{reason}"
    );
    let _ = loader.stop().await;
    // Nothing committed past what the files hold: per partition, the
    // group's commit is at most the marker's next offset.
    for (suffix, topic) in [
        ("imp", format!("{}.imp", rig.prefix)),
        ("jclk", format!("{}.jclk", rig.prefix)),
    ] {
        let committed = adpipe_testkit::committed_offsets(
            &rig.bootstrap,
            &format!("{}-full", rig.prefix),
            &topic,
        );
        for (partition, committed) in committed.iter().enumerate() {
            let marker =
                PartitionPaths::new(&dir, &topic, i32::try_from(partition).expect("small"))
                    .read_marker()
                    .expect("a marker or none");
            let stored = marker.next.unwrap_or(0);
            assert!(
                committed.unwrap_or(0) <= stored,
                "{suffix} partition {partition}: committed {committed:?} past the files ({stored})"
            );
        }
    }
    // An operator frees space (the disk grows); the loader starts again and
    // everything is in the files once.
    assert!(mount_tmpfs(&dir, "16m", true), "remount bigger");
    let loader = adpipe_loader::start(rig.settings(&config)).expect("starts again");
    rig.wait_committed_to_end("full", Duration::from_secs(120))
        .await;
    loader.stop().await.expect("clean stop");
    assert_files_hold_once(
        &dir,
        &format!("{}.imp", rig.prefix),
        &truth,
        &IMPRESSION_IDS,
    );
    assert_files_hold_once(
        &dir,
        &format!("{}.jclk", rig.prefix),
        &click_truth,
        &CLICK_IDS,
    );
}
