//! The profile sink on a real Redis (`infra/redis.sh`) and the real central
//! cluster: each user's newest `keep` events per kind, exactly as the
//! events say, with their expiry at the newest event's time + ttl; a full
//! replay by a second group changes nothing at all (entries, scores,
//! expiry); an event older than the ttl is not written.

mod support;

use std::time::Duration;

use adpipe_events::{EventKind, samples};
use adpipe_testkit::profiles::{self, redis_url};
use support::Rig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_keep_the_newest_events_and_a_replay_changes_nothing() {
    let rig = Rig::new("loader-profiles").await;
    let prefix = format!("{}:", rig.prefix);
    let sections = format!(
        "[profiles]\nurl = \"{}\"\nkey-prefix = \"{prefix}\"\nkeep = 2\nttl = \"3650d\"\n",
        redis_url()
    );
    // Users n % 1000: three impressions each (n, n + 1000, n + 2000).
    rig.publish(0, 3000).await;
    let mut ancient = samples::impression(5000);
    ancient.event_time = 1_000_000_000_000; // 2001: older than the ttl.
    let value = rig.encode("imp", EventKind::Impression, &ancient).await;
    rig.send("imp", 0, &value).await;

    let config = rig.config("profiles", "first", &sections);
    let loader = adpipe_loader::start(rig.settings(&config)).expect("starts");
    rig.wait_committed_to_end("first", Duration::from_secs(120))
        .await;
    let expired =
        adpipe_testkit::metric_value(loader.http_address, "adpipe_loader_profile_expired_total")
            .await;
    loader.stop().await.expect("clean stop");
    assert_eq!(expired, Some(1.0), "the ancient impression is not written");

    let first = profiles::dump(&prefix).await;
    // 1000 users with impressions; clicks every fourth n: users ≡ 0 mod 4.
    let impression_keys = first
        .keys()
        .filter(|key| key.ends_with(":impression"))
        .count();
    let click_keys = first.keys().filter(|key| key.ends_with(":click")).count();
    assert_eq!(
        (impression_keys, click_keys, first.len()),
        (1000, 250, 1250)
    );
    for user in [0_u64, 1, 421, 999] {
        let key = format!("{prefix}{}:impression", samples::impression(user).user_id);
        let (entries, expires) = &first[&key];
        let ids: Vec<String> = entries
            .iter()
            .map(|(entry, _)| {
                let entry: serde_json::Value = serde_json::from_str(entry).expect("JSON");
                entry["id"].as_str().expect("an id").to_owned()
            })
            .collect();
        // The two newest of n, n + 1000, n + 2000, oldest first.
        let want: Vec<String> = [user + 1000, user + 2000]
            .iter()
            .map(|&n| samples::impression(n).event_id)
            .collect();
        assert_eq!(ids, want, "{key}");
        let newest = samples::impression(user + 2000).event_time;
        assert_eq!(entries[1].1 as i64, newest, "scored by event time");
        assert_eq!(
            *expires,
            newest + 3650 * 86_400_000,
            "expires ttl after the newest"
        );
    }
    assert!(!first.keys().any(|key| {
        key.contains(&ancient.user_id)
            && key.ends_with(":impression")
            && first[key]
                .0
                .iter()
                .any(|(entry, _)| entry.contains(&ancient.event_id))
    }));

    // Everything again, by a second group: not one byte changes.
    let config = rig.config("profiles", "replay", &sections);
    let loader = adpipe_loader::start(rig.settings(&config)).expect("starts");
    rig.wait_committed_to_end("replay", Duration::from_secs(120))
        .await;
    loader.stop().await.expect("clean stop");
    let again = profiles::dump(&prefix).await;
    assert!(again == first, "a replay changed the profiles");
}
