//! PostgreSQL stopped and started again under a running stats-counter (its
//! own test binary: the restart would disturb other tests' connections).
//! The service waits — writes tried again with backoff, nothing committed
//! to Kafka, nothing dead-lettered, the budget endpoint answering 503 —
//! and resumes; the totals are exact.
//! Restarts the server with `infra/postgres.sh` (the same environment —
//! `ADPIPE_STATE_DIR`, `ADPIPE_PG_PORT` — that started it).

mod support;

use std::process::Command;
use std::time::Duration;

use adpipe_stats_counter::Increments;
use support::Rig;

fn postgres(command: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/postgres.sh");
    let status = Command::new(script)
        .arg(command)
        .status()
        .expect("infra/postgres.sh runs");
    assert!(status.success(), "infra/postgres.sh {command} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_waits_out_a_postgres_restart_and_the_totals_stay_exact() {
    let rig = Rig::new("stats-pg-restart").await;
    let mut expected = Increments::default();
    let mut bad = rig.publish(0, 200, &mut expected).await;
    let worker = adpipe_stats_counter::start(rig.settings()).expect("starts");
    rig.wait_committed_to_end().await;
    let committed_before = rig.committed_records();

    postgres("stop");
    bad += rig.publish(200, 400, &mut expected).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let committed_while_down = rig.committed_records();
    // The budget endpoint says it cannot answer rather than answer zeros.
    let budget = reqwest::get(format!("http://{}/budget/today", worker.http_address))
        .await
        .expect("answers");
    assert_eq!(budget.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    postgres("start");
    rig.wait_committed_to_end().await;
    worker.stop().await.expect("clean stop");

    // Bad records need no write: they may be committed while it is down.
    assert!(
        committed_while_down - committed_before <= i64::try_from(bad).expect("small"),
        "good records committed to Kafka while PostgreSQL was down: {committed_before} → {committed_while_down}"
    );
    rig.assert_totals(&expected).await;
    assert_eq!(
        rig.dead_lettered().len(),
        bad,
        "bad input dead-lettered, nothing else"
    );
}
