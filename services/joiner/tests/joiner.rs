//! The joiner on the real runtime against the real central cluster, checked
//! against an independent model of the join rules (design.md) computed from
//! the simulator's events: every expected join with the right embedded
//! impression and click (field by field), no unexpected join, orphans with
//! the right reason — and the state handed over to a new instance with an
//! empty state directory (a fresh host) through the changelogs.

mod support;

use std::time::{Duration, Instant};

use adpipe_loadtest::joins::expected;
use support::{Rig, assert_matches, produced, scenario, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_match_the_rules_and_survive_a_handover_to_a_fresh_host() {
    let rig = Rig::new("joiner", 3, "3s").await;
    let mut first_half = scenario(40_000);
    let second_half = first_half.split_off(first_half.len() / 2);
    let all: Vec<_> = first_half.iter().chain(&second_half).cloned().collect();
    let expected = expected(&all);
    assert!(
        expected.clicks.len() > 300
            && expected.orphans.len() > 5
            && expected.conversions.len() > 50,
        "a meaningful scenario: {} clicks, {} conversions, {} orphans",
        expected.clicks.len(),
        expected.conversions.len(),
        expected.orphans.len()
    );

    let started = Instant::now();
    tokio::task::block_in_place(|| rig.publish(&first_half));
    let first = adpipe_joiner::start(rig.settings()).expect("starts");
    tokio::task::block_in_place(|| {
        wait_for("the first half", Duration::from_secs(120), || {
            rig.committed_to_end(&["imp"])
        })
    });
    first.stop().await.expect("clean stop");
    eprintln!("{:?}: first instance stopped", started.elapsed());

    // A new instance on a fresh host: the impressions and clicks of the
    // first half reach it only through the changelogs.
    let second = adpipe_joiner::start(rig.settings()).expect("starts again");
    tokio::task::block_in_place(|| rig.publish(&second_half));
    tokio::task::block_in_place(|| {
        wait_for("every input committed", Duration::from_secs(180), || {
            rig.committed_to_end(&["imp", "clk", "cnv"])
        })
    });
    second.stop().await.expect("clean stop");
    eprintln!("{:?}: second instance stopped", started.elapsed());

    let produced = tokio::task::block_in_place(|| produced(&rig));
    assert_matches(&expected, &produced);
    let dead = tokio::task::block_in_place(|| rig.read("dlq"));
    assert!(dead.is_empty(), "nothing dead-lettered: {}", dead.len());
    println!(
        "joined {} clicks and {} conversions, {} orphans, {} copies re-emitted",
        produced.clicks.len(),
        produced.conversions.len(),
        produced.orphans.len(),
        produced.copies()
    );
    rig.registry.stop().await;
}

/// Poison records (not Confluent-framed, a truncated datum) and absurd
/// event times (seconds instead of milliseconds, a month ahead) in every
/// input: each goes to the dead-letter topic with its reason, and every
/// join of the good events is still exactly what the rules say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_absurd_times_are_dead_lettered_and_the_joins_go_on() {
    use adpipe_loadtest::SimEvent;
    let rig = Rig::new("joiner-poison", 3, "2s").await;
    let good = scenario(5_000);
    let expected = expected(&good);
    let Some(SimEvent::Impression(template)) = good.first().cloned() else {
        panic!("the scenario starts with an impression")
    };
    let absurd: Vec<SimEvent> = [
        5_000_i64,
        adpipe_runtime::event_time::now_ms() + 30 * 86_400_000,
    ]
    .into_iter()
    .enumerate()
    .map(|(n, event_time)| {
        let mut impression = template.clone();
        impression.event_id = format!("absurd-{n}");
        impression.event_time = event_time;
        SimEvent::Impression(impression)
    })
    .collect();
    tokio::task::block_in_place(|| {
        let (first, rest) = good.split_at(good.len() / 2);
        rig.publish(first);
        for (n, suffix) in ["imp", "clk", "cnv"].iter().enumerate() {
            let partition = n as i32 % 3;
            rig.send_raw(suffix, partition, "user-poison", &[0xFF, 0, 0, 0, 1, 2, 3]);
            rig.send_raw(suffix, partition, "user-poison", &[0, 0, 0, 0, 1, 0x80]);
        }
        rig.publish(&absurd);
        rig.publish(rest);
    });
    let joiner = adpipe_joiner::start(rig.settings()).expect("starts");
    tokio::task::block_in_place(|| {
        wait_for("every input committed", Duration::from_secs(120), || {
            rig.committed_to_end(&["imp", "clk", "cnv"])
        })
    });
    joiner.stop().await.expect("clean stop");

    let dead = tokio::task::block_in_place(|| rig.read("dlq"));
    let reasons: Vec<String> = dead
        .iter()
        .map(|message| {
            adpipe_testkit::header_text(message, adpipe_runtime::dead_letter::HEADER_REASON)
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        dead.len(),
        8,
        "6 poison records and 2 absurd times: {reasons:?}"
    );
    assert!(
        reasons.iter().all(|reason| !reason.is_empty()),
        "{reasons:?}"
    );
    for reason in ["event_time_implausible", "event_time_in_future"] {
        assert_eq!(
            reasons.iter().filter(|r| *r == reason).count(),
            1,
            "{reasons:?}"
        );
    }
    let produced = tokio::task::block_in_place(|| produced(&rig));
    assert_matches(&expected, &produced);
    rig.registry.stop().await;
}
