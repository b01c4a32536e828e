//! The Aerospike profile store (feature `aerospike`) against a real server
//! named by `AEROSPIKE_HOSTS` (`host:port`, namespace `test`). None can be
//! installed on the development machine: without the variable the test
//! prints SKIPPED and checks nothing.
#![cfg(feature = "aerospike")]

use std::time::Duration;

use adpipe_loader::aerospike_profiles::AerospikeProfiles;
use adpipe_loader::config::ProfileBackend;
use adpipe_loader::profiles::{ProfileEntry, ProfileStore};
use aerospike::{Bins, ReadPolicy, Value};

fn entry(user: &str, n: i64) -> ProfileEntry {
    ProfileEntry {
        user_id: user.to_owned(),
        kind: "impression",
        time_ms: adpipe_runtime::event_time::now_ms() - 60_000 + n,
        entry: format!("{{\"id\":\"imp-{n}\"}}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aerospike_profiles_keep_the_newest_and_a_rewrite_changes_nothing() {
    let Ok(hosts) = std::env::var("AEROSPIKE_HOSTS") else {
        println!(
            "SKIPPED: AEROSPIKE_HOSTS is not set (no Aerospike server here); the Aerospike profile store was not tested"
        );
        return;
    };
    let store = AerospikeProfiles::connect(&hosts, "test/adpipe_profiles")
        .await
        .expect("connects");
    let user = format!("user-{}", std::process::id());
    let entries: Vec<ProfileEntry> = (0..3).map(|n| entry(&user, n)).collect();
    let refs: Vec<&ProfileEntry> = entries.iter().collect();
    store
        .upsert(&refs, 2, Duration::from_secs(3600))
        .await
        .expect("written");
    let key = store.key(&user).expect("key");
    let client = aerospike::Client::new(&aerospike::ClientPolicy::default(), &hosts)
        .await
        .expect("client");
    let first = client
        .get(&ReadPolicy::default(), &key, Bins::All)
        .await
        .expect("read");
    let map = first.bins.get("impression").expect("the impressions bin");
    let text = format!("{map:?}");
    assert!(
        text.contains("imp-1") && text.contains("imp-2") && !text.contains("imp-0"),
        "{text}"
    );
    store
        .upsert(&refs, 2, Duration::from_secs(3600))
        .await
        .expect("written again");
    let again = client
        .get(&ReadPolicy::default(), &key, Bins::All)
        .await
        .expect("read");
    assert_eq!(
        again.bins.get("impression"),
        Some(map as &Value),
        "entries unchanged"
    );
    let (a, b) = (first.time_to_live(), again.time_to_live());
    let drift = a.zip(b).map(|(a, b)| a.abs_diff(b));
    assert!(
        drift.is_some_and(|drift| drift <= Duration::from_secs(2)),
        "expiry unchanged: {a:?} then {b:?}"
    );

    // Read back as the reconciliation reads it: a scan of the set names
    // the user (the key was sent), the entries oldest first, the expiry
    // an hour after the newest event.
    let mut stored = Vec::new();
    adpipe_loader::profiles::visit_stored(
        ProfileBackend::Aerospike,
        &hosts,
        "test/adpipe_profiles",
        |profile| {
            stored.push(profile);
            Ok(())
        },
    )
    .await
    .expect("scanned");
    let key = adpipe_loader::profiles::stored_key(
        ProfileBackend::Aerospike,
        "test/adpipe_profiles",
        &user,
        "impression",
    );
    let profile = stored
        .iter()
        .find(|profile| profile.key == key)
        .unwrap_or_else(|| panic!("{key} among {} profiles scanned", stored.len()));
    assert_eq!(profile.kind(), "impression");
    assert_eq!(
        profile.event_ids().expect("ids"),
        vec!["imp-1".to_owned(), "imp-2".to_owned()]
    );
    let newest = entries[2].time_ms;
    assert!(
        (profile.expires_ms - (newest + 3_600_000)).abs() <= 2_000,
        "expires {} vs newest + 1 h {}",
        profile.expires_ms,
        newest + 3_600_000
    );
}
