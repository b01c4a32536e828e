//! The BigQuery sink on the emulator (`infra/bigquery.sh`) and the real
//! central cluster: one row per event, in a day-partitioned table per
//! topic — across a restart whose Kafka commit was rewound to the start,
//! and across kill -9 and SIGTERM of the real binary under load (the rows'
//! offsets decide where each partition resumes; the emulator does not
//! deduplicate insertIds, so nothing else could keep them single).
//!
//! `ADPIPE_BQ_CRASH_EVENTS` sets the kill test's load (default 1,000,000
//! impressions plus 100,000 joined clicks).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use adpipe_loadtest::pace::FaultRounds;
use adpipe_testkit::{ChildGuard, kill_9, terminate};
use serde_json::{Value, json};
use support::{Rig, load_truth};

fn bq_url() -> String {
    std::env::var("ADPIPE_BQ_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:19050/bigquery/v2".to_owned())
}

fn section(dataset: &str) -> String {
    format!(
        "[bigquery]\nurl = \"{}\"\nproject = \"adpipe\"\ndataset = \"{dataset}\"\ncredentials = \"none\"\n",
        bq_url()
    )
}

/// Runs `sql` on the emulator's REST API (not through the sink's client)
/// and returns its rows' values.
async fn query(sql: &str) -> Vec<Vec<Value>> {
    let response: Value = reqwest::Client::new()
        .post(format!("{}/projects/adpipe/queries", bq_url()))
        .json(&json!({"query": sql, "useLegacySql": false, "maxResults": 10_000_000}))
        .send()
        .await
        .expect("the emulator answers")
        .json()
        .await
        .expect("JSON");
    response["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{sql}: {response}"))
        .iter()
        .map(|row| {
            row["f"]
                .as_array()
                .expect("cells")
                .iter()
                .map(|cell| cell["v"].clone())
                .collect()
        })
        .collect()
}

/// Asserts `table` holds one row per id of `truth` (`id_column`) and no other.
async fn assert_one_row_each(
    dataset: &str,
    table: &str,
    id_column: &str,
    truth: &BTreeSet<String>,
) {
    let rows = query(&format!(
        "SELECT {id_column}, COUNT(*) FROM `adpipe.{dataset}.{table}` GROUP BY {id_column}"
    ))
    .await;
    let counts: BTreeMap<String, i64> = rows
        .iter()
        .map(|row| {
            (
                row[0].as_str().expect("an id").to_owned(),
                row[1]
                    .as_str()
                    .and_then(|n| n.parse().ok())
                    .or(row[1].as_i64())
                    .expect("a count"),
            )
        })
        .collect();
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        twice.is_empty(),
        "{table}: events in more than one row, e.g. {twice:?}"
    );
    let ids: BTreeSet<String> = counts.into_keys().collect();
    let missing: Vec<_> = truth.difference(&ids).take(5).collect();
    let extra: Vec<_> = ids.difference(truth).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{table}: {} events in rows for {}; missing e.g. {missing:?}, extra e.g. {extra:?}",
        ids.len(),
        truth.len()
    );
}

/// How long the rewound-commit test waits for the loader to commit to the
/// end of its input.
const COMMIT_PATIENCE: Duration = Duration::from_secs(600);

fn tables(rig: &Rig) -> (String, String) {
    let clean = |suffix: &str| format!("{}.{suffix}", rig.prefix).replace(['.', '-'], "_");
    (clean("imp"), clean("jclk"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_row_per_event_across_a_rewound_commit() {
    let rig = Rig::new("loader-bq").await;
    let dataset = rig.prefix.replace('-', "_");
    let (imp_table, clk_table) = tables(&rig);
    let (mut truth, mut click_truth) = rig.publish(0, 600).await;
    let config = rig.config("bigquery", "bq", &section(&dataset));
    let loader = adpipe_loader::start(rig.settings(&config)).expect("starts");
    // Liveness guards only (seconds on a quiet machine): in a cold CI run
    // the emulator, busy with the kill -9 test beside this one, had not
    // taken these 600 events after 120 s.
    rig.wait_committed_to_end("bq", COMMIT_PATIENCE).await;
    loader.stop().await.expect("clean stop");
    assert_one_row_each(&dataset, &imp_table, "event_id", &truth).await;
    assert_one_row_each(&dataset, &clk_table, "click.event_id", &click_truth).await;
    // Partitioned by day on the event time.
    let days = query(&format!(
        "SELECT DATE(_event_ts), COUNT(*) FROM `adpipe.{dataset}.{imp_table}` GROUP BY 1"
    ))
    .await;
    assert_eq!(days.len(), 1);
    assert_eq!(days[0][0], "2025-11-21");

    // The Kafka commit rewound to 0: the table's offsets decide.
    rig.rewind_group("bq");
    let (more, more_clicks) = rig.publish(600, 900).await;
    truth.extend(more);
    click_truth.extend(more_clicks);
    let loader = adpipe_loader::start(rig.settings(&config)).expect("starts again");
    rig.wait_committed_to_end("bq", COMMIT_PATIENCE).await;
    loader.stop().await.expect("clean stop");
    assert_one_row_each(&dataset, &imp_table, "event_id", &truth).await;
    assert_one_row_each(&dataset, &clk_table, "click.event_id", &click_truth).await;
}

/// A record dead-lettered before the store (not Avro) whose dead letter
/// was not acknowledged when the loader died, though the rows after it had
/// landed: the group's commit is behind the record, the table's rows past
/// it — the state a kill -9 leaves between the batch's insert and the dead
/// letter's acknowledgement, made here by rewinding the commit. The table
/// misses the record's offset, so its partition resumes at the commit (not
/// after the table's last row) and the record is dead-lettered again; the
/// rows stay one per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_a_crash_cut_off_is_sent_again_not_skipped() {
    use adpipe_runtime::dead_letter::HEADER_OFFSET;
    let rig = Rig::new("loader-bq-dlq").await;
    let dataset = rig.prefix.replace('-', "_");
    let (imp_table, clk_table) = tables(&rig);
    let (mut truth, mut click_truth) = rig.publish(0, 300).await;
    rig.send("imp", 1, b"not avro").await;
    let (more, more_clicks) = rig.publish(300, 600).await;
    truth.extend(more);
    click_truth.extend(more_clicks);
    let config = rig.config("bigquery", "bq", &section(&dataset));
    let dead_letters = || {
        rig.dead_lettered()
            .iter()
            .map(|dead| adpipe_testkit::header_text(dead, HEADER_OFFSET).expect("offset header"))
            .collect::<Vec<String>>()
    };
    for (run, dead_lettered) in [(1, 1), (2, 2)] {
        let loader = adpipe_loader::start(rig.settings(&config)).expect("starts");
        rig.wait_committed_to_end("bq", COMMIT_PATIENCE).await;
        loader.stop().await.expect("clean stop");
        assert_one_row_each(&dataset, &imp_table, "event_id", &truth).await;
        assert_one_row_each(&dataset, &clk_table, "click.event_id", &click_truth).await;
        assert_eq!(
            dead_letters(),
            vec!["100".to_owned(); dead_lettered],
            "run {run}: the record at offset 100 of partition 1, dead-lettered once per run"
        );
        // The commit behind the dead letter, as a crash before its
        // acknowledgement leaves it.
        rig.rewind_group("bq");
    }
}

/// Every insert takes longer than the write timeout (a proxy holds
/// BigQuery's answers 2.5 s; the write timeout is 1 s): each cut-off
/// insert is joined by its batch's next attempt, never sent again, and the
/// emulator never has more than `writes-in-flight` of them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_slower_than_the_write_timeout_gets_one_row_per_event() {
    let rig = Rig::new("loader-bq-slow").await;
    let dataset = rig.prefix.replace('-', "_");
    let (imp_table, clk_table) = tables(&rig);
    let proxy = adpipe_testkit::SlowProxy::start(
        support::address_of(&bq_url()),
        Duration::from_millis(2500),
    )
    .await;
    let (truth, click_truth) = rig.publish(0, 600).await;
    let section =
        section(&dataset).replace(&bq_url(), &format!("http://{}/bigquery/v2", proxy.address));
    rig.load_through_slow_store("bigquery", &section, &proxy, COMMIT_PATIENCE)
        .await;
    assert_one_row_each(&dataset, &imp_table, "event_id", &truth).await;
    assert_one_row_each(&dataset, &clk_table, "click.event_id", &click_truth).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_row_per_event_across_kill_9_and_sigterm() {
    let events: u64 = std::env::var("ADPIPE_BQ_CRASH_EVENTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1_000_000);
    let started = std::time::Instant::now();
    let rig = Rig::new("loader-bq-crash").await;
    let dataset = rig.prefix.replace('-', "_");
    let (imp_table, clk_table) = tables(&rig);
    let config = rig.config("bigquery", "bq", &section(&dataset));
    // Commits every 5 s: a kill mostly finds inserted batches not yet
    // committed, which the restart reads again. The emulator (Python over
    // DuckDB) is far slower than BigQuery, and slower as its tables grow:
    // six partitions' inserts at once may take many seconds, and a short
    // write timeout would only resend (and queue) the same rows again and
    // again — a cold CI run once made no progress for ten minutes so.
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("records = 200", "records = 1000")
        .replace("write-timeout = \"5s\"", "write-timeout = \"50s\"")
        .replace(
            "commit-interval = \"200ms\"",
            "commit-interval = \"5s\"\nprocessing-timeout = \"60s\"",
        );
    std::fs::write(&config, text).expect("config");
    let listen = adpipe_testkit::free_loopback_address();
    let spawn = || {
        ChildGuard::new(
            Command::new(env!("CARGO_BIN_EXE_adpipe-loader"))
                .arg("--config")
                .arg(&config)
                .env("ADPIPE__HTTP__LISTEN", listen.to_string())
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("loader starts"),
        )
    };
    let load = rig.load().await;
    let rounds = ["kill", "kill", "term", "kill", "kill"];
    // Publishing spans every fault (the last share is held back until the
    // last one).
    let pacing = FaultRounds::new(events, rounds.len() as u64, Duration::from_secs(8));
    let load = std::sync::Arc::new(load);
    let publishing = pacing.spawn_publisher(
        {
            let load = std::sync::Arc::clone(&load);
            move |n| load.send(n)
        },
        move || load.flush(),
    );
    let mut loader = spawn();
    let (mut kills, mut terms) = (0, 0);
    for (round, how) in rounds.iter().enumerate() {
        adpipe_testkit::wait_assigned(
            listen,
            &format!("round {round}"),
            6,
            Duration::from_secs(120),
        )
        .await;
        let before = rig.committed_records("bq");
        tokio::task::block_in_place(|| {
            adpipe_testkit::wait_for(
                &format!("progress in round {round}"),
                Duration::from_secs(120),
                || rig.committed_records("bq") > before,
            )
        });
        tokio::time::sleep(Duration::from_millis(800 + 700 * (round as u64 % 3))).await;
        pacing.fault();
        if *how == "term" {
            terminate(loader.take());
            terms += 1;
        } else {
            let mut victim = loader.take();
            kill_9(&mut victim);
            kills += 1;
        }
        loader = spawn();
    }
    tokio::task::block_in_place(|| publishing.join()).expect("publisher");
    // The emulator inserts a few thousand rows a second at best.
    rig.wait_committed_to_end("bq", Duration::from_secs(600 + events / 500))
        .await;
    terminate(loader.take());
    println!(
        "BigQuery emulator: kill -9 x{kills}, SIGTERM x{terms} while publishing {events} impressions and {} clicks (the publisher mid-share at {} of them), {:.0} s",
        events / 10,
        pacing.in_flight_at_faults(),
        started.elapsed().as_secs_f64()
    );
    let (truth, click_truth) = load_truth(events);
    assert_one_row_each(&dataset, &imp_table, "event_id", &truth).await;
    assert_one_row_each(&dataset, &clk_table, "click.event_id", &click_truth).await;
}
