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
