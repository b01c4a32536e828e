//! The Elasticsearch sink on a real server (`infra/elasticsearch.sh`) and
//! the real central cluster: one document per event, across a full replay
//! by a second group; a document Elasticsearch refuses (a mapping conflict)
//! and a record that is not Avro go to the dead-letter topic with the
//! reason, and nothing else is lost. An Elasticsearch slower than the
//! loader's write timeout still gets every event, once.

mod support;

use std::time::Duration;

use adpipe_events::{EventKind, samples};
use adpipe_runtime::dead_letter::{HEADER_ERROR, HEADER_OFFSET, HEADER_REASON, HEADER_TOPIC};
use serde_json::json;
use support::{Es, Rig};

fn es_section(prefix: &str) -> String {
    format!(
        "[elasticsearch]\nurl = \"{}\"\nindex-prefix = \"t-\"\nrefresh-interval = \"200ms\"\n# {prefix}\n",
        support::es_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_one_document_across_a_replay_and_refusals_are_dead_lettered() {
    let rig = Rig::new("loader-es").await;
    let es = Es::new();
    let impressions = format!("t-{}-imp", rig.prefix);
    let clicks = format!("t-{}-jclk", rig.prefix);
    // Someone made the index of 2020-01-01 by hand, with cost_micros as a
    // boolean: Elasticsearch refuses that day's impressions.
    es.request(
        reqwest::Method::PUT,
        &format!("{impressions}-2020.01.01"),
        Some(json!({"mappings": {"properties": {"cost_micros": {"type": "boolean"}}}})),
    )
    .await;
    let (truth, click_truth) = rig.publish(0, 600).await;
    let mut conflicting = samples::impression(10_000);
    conflicting.event_time = 1_577_880_000_000; // 2020-01-01T12:00Z
    let value = rig.encode("imp", EventKind::Impression, &conflicting).await;
    rig.send("imp", 1, &value).await;
    rig.send("imp", 2, b"not avro").await;
    // An id Elasticsearch refuses as an `_id` (it refuses the whole
    // `_bulk` request for it): dead-lettered, its partition goes on.
    let mut long_id = samples::impression(10_001);
    long_id.event_id = "i".repeat(adpipe_loader::elasticsearch::MAX_ID_BYTES + 1);
    let long_id_value = rig.encode("imp", EventKind::Impression, &long_id).await;
    rig.send("imp", 0, &long_id_value).await;

    let config = rig.config("elasticsearch", "first", &es_section(&rig.prefix));
    let loader = adpipe_loader::start(rig.settings(&config)).expect("starts");
    rig.wait_committed_to_end("first", Duration::from_secs(120))
        .await;
    let written =
        adpipe_testkit::metric_value(loader.http_address, "adpipe_loader_records_total").await;
    loader.stop().await.expect("clean stop");
    assert_eq!(
        written,
        Some(750.0),
        "records written (600 impressions, 150 clicks)"
    );

    es.assert_exactly_once(&format!("{impressions}-*"), "event_id", &truth)
        .await;
    es.assert_exactly_once(&format!("{clicks}-*"), "click.event_id", &click_truth)
        .await;
    // Daily indices by event time, mapped by the loader's template.
    let mapping = es
        .request(
            reqwest::Method::GET,
            &format!("{impressions}-2025.11.21/_mapping"),
            None,
        )
        .await;
    let properties = &mapping[format!("{impressions}-2025.11.21")]["mappings"]["properties"];
    assert_eq!(properties["event_time"]["type"], "date");
    assert_eq!(properties["site"]["type"], "keyword");
    assert_eq!(properties["url"]["type"], "text");

    let dead = rig.dead_lettered();
    assert_eq!(
        dead.len(),
        3,
        "the refused document, the bad bytes and the long id"
    );
    let too_long = dead
        .iter()
        .find(|record| {
            adpipe_testkit::header_text(*record, HEADER_REASON).as_deref()
                == Some("elasticsearch_id_too_long")
        })
        .expect("the long id, dead-lettered");
    use rdkafka::message::Message;
    assert_eq!(too_long.payload(), Some(&long_id_value[..]));
    let refused = dead
        .iter()
        .find(|record| {
            adpipe_testkit::header_text(*record, HEADER_REASON).as_deref()
                == Some("mapping_rejected")
        })
        .expect("the mapping conflict, dead-lettered");
    let error = adpipe_testkit::header_text(refused, HEADER_ERROR).expect("the store's words");
    assert!(error.contains("cost_micros"), "{error}");
    assert_eq!(
        adpipe_testkit::header_text(refused, HEADER_TOPIC).as_deref(),
        Some(format!("{}.imp", rig.prefix).as_str())
    );
    assert_eq!(
        adpipe_testkit::header_text(refused, HEADER_OFFSET).as_deref(),
        Some("200")
    );
    assert_eq!(
        refused.payload(),
        Some(&value[..]),
        "the record as it was read"
    );

    // A second group reads everything again: documents are overwritten,
    // not added (each now at _version 2).
    let config = rig.config("elasticsearch", "replay", &es_section(&rig.prefix));
    let loader = adpipe_loader::start(rig.settings(&config)).expect("starts");
    rig.wait_committed_to_end("replay", Duration::from_secs(120))
        .await;
    loader.stop().await.expect("clean stop");
    es.assert_exactly_once(&format!("{impressions}-*"), "event_id", &truth)
        .await;
    es.assert_exactly_once(&format!("{clicks}-*"), "click.event_id", &click_truth)
        .await;
    let first = samples::impression(0);
    let document = es
        .request(
            reqwest::Method::GET,
            &format!("{impressions}-2025.11.21/_doc/{}", first.event_id),
            None,
        )
        .await;
    assert_eq!(document["_version"], 2);
    assert_eq!(document["_source"]["campaign_id"], first.campaign_id);
    es.delete_indices(&format!("t-{}-*", rig.prefix)).await;
}

/// Elasticsearch behind a proxy that holds every answer 2.5 s, the
/// loader's write timeout 1 s: every attempt is cut off before its answer.
/// The loader still writes every event, once, because a cut-off `_bulk`
/// request goes on and the batch's next attempt takes its answer; and the
/// store never holds more than `writes-in-flight` of its requests at once.
/// (Abandoned and sent again, as before, no batch was ever written and the
/// abandoned requests piled up at the store.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_slower_than_the_write_timeout_gets_every_event_once() {
    let rig = Rig::new("loader-es-slow").await;
    let es = Es::new();
    let upstream = support::address_of(&support::es_url());
    let proxy = adpipe_testkit::SlowProxy::start(upstream, Duration::from_millis(2500)).await;
    let (truth, click_truth) = rig.publish(0, 600).await;
    let section = format!(
        "[elasticsearch]\nurl = \"http://{}\"\nindex-prefix = \"t-\"\nrefresh-interval = \"200ms\"\n",
        proxy.address
    );
    rig.load_through_slow_store("elasticsearch", &section, &proxy, Duration::from_secs(180))
        .await;
    es.assert_loaded_once(&rig.prefix, &truth, &click_truth)
        .await;
    es.delete_indices(&format!("t-{}-*", rig.prefix)).await;
}
