//! Reading the stores into the ledger: the stats-counter's hourly totals
//! and stored offsets (PostgreSQL), the files loader's Avro files, the
//! Elasticsearch loader's documents, the BigQuery loader's rows and each
//! DC's user profiles (Redis, or Aerospike).
//!
//! Contract: a store's events land in the hour of their event time, by the
//! kind of the topic they came from (the orphans' files and indices by each
//! orphan's kind as read from `joined.orphans`; a profile entry by its
//! key's kind); a store that cannot be read fails the reconciliation with
//! the store named (never "0 found"). A dispatched event a profile rightly
//! lacks is explained in `ledger.store_explained`: its user's profile of
//! its kind holds `keep` newer entries (the cap dropped it), or it is
//! older than the TTL (expired, or never written).

use std::collections::HashMap;
use std::path::Path;

use adpipe_stats_counter::{BucketSize, PgStore};
use anyhow::Context;
use serde_json::{Value, json};

use crate::config::TopicNames;
use crate::ledger::{Bucket, Kind, Ledger, Stage, id_hash};
use crate::read::{Span, store_bucket};

/// The loaders' inputs: (topic, its kind; None: the orphans, either kind).
pub fn loader_inputs(topics: &TopicNames) -> Vec<(String, Option<Kind>)> {
    vec![
        (
            topics.deduplicated(Kind::Impression),
            Some(Kind::Impression),
        ),
        (topics.joined("clicks"), Some(Kind::Click)),
        (topics.joined("conversions"), Some(Kind::Conversion)),
        (topics.joined("orphans"), None),
    ]
}

fn kind_of(ledger: &Ledger, fixed: Option<Kind>, id: &str) -> Option<Kind> {
    fixed.or_else(|| ledger.orphan_kinds.get(&id_hash(id)).copied())
}

/// The stats' hourly totals into `ledger.counted`, and the offsets the
/// stats-counter stored for `group`: (topic, partition) → next offset.
pub async fn read_stats(
    ledger: &mut Ledger,
    url: &str,
    schema: &str,
    group: &str,
    span: Span,
) -> anyhow::Result<HashMap<(String, i32), i64>> {
    let store = PgStore::connect(url, schema)
        .await
        .with_context(|| format!("connecting to the stats' PostgreSQL (schema {schema})"))?;
    let in_span = |bucket_ms: i64| (span.from..span.to).contains(&bucket_ms);
    for (key, counts) in store
        .totals(BucketSize::Hour)
        .await
        .with_context(|| format!("reading the hourly stats in schema {schema}"))?
    {
        if !in_span(key.bucket_ms) {
            continue;
        }
        for (kind, count) in [
            (Kind::Impression, counts.impressions),
            (Kind::Click, counts.clicks),
            (Kind::Conversion, counts.conversions),
        ] {
            *ledger
                .counted
                .entry((Bucket::Hour(key.bucket_ms), kind, "stats".to_owned()))
                .or_default() += count;
        }
    }
    for (key, count) in store
        .orphan_totals(BucketSize::Hour)
        .await
        .with_context(|| format!("reading the hourly orphan counts in schema {schema}"))?
    {
        let Some(kind) = Kind::parse(&key.kind) else {
            continue;
        };
        if in_span(key.bucket_ms) {
            *ledger
                .counted
                .entry((
                    Bucket::Hour(key.bucket_ms),
                    kind,
                    format!("stats orphans {}", key.reason),
                ))
                .or_default() += count;
        }
    }
    Ok(store
        .group_offsets(group)
        .await
        .with_context(|| format!("reading the stats-counter's stored offsets of {group}"))?
        .into_iter()
        .map(|(topic, partition, offset)| ((topic, partition), offset))
        .collect())
}

/// The records of the Avro files under `dir` into `ledger` as stage `files`.
pub fn read_files(
    ledger: &mut Ledger,
    dir: &Path,
    topics: &TopicNames,
    span: Span,
) -> anyhow::Result<u64> {
    let found = adpipe_loader::read_back::avro_identities(dir)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("reading the files under {}", dir.display()))?;
    let mut read = 0;
    for (topic, fixed) in loader_inputs(topics) {
        for identity in found.get(&topic).into_iter().flatten() {
            let (Some(bucket), Some(kind)) = (
                store_bucket(identity.time_ms, span),
                kind_of(ledger, fixed, &identity.id),
            ) else {
                continue;
            };
            ledger.record(
                bucket,
                kind,
                Stage::Store("files".to_owned()),
                &identity.id,
                None,
            );
            read += 1;
        }
    }
    Ok(read)
}

/// The documents of the loader's daily indices covering the span into
/// `ledger` as stage `elasticsearch`.
pub async fn read_elasticsearch(
    ledger: &mut Ledger,
    url: &str,
    index_prefix: &str,
    topics: &TopicNames,
    span: Span,
) -> anyhow::Result<u64> {
    let mut read = 0;
    for (topic, fixed) in loader_inputs(topics) {
        for (id, time) in elasticsearch_documents(url, index_prefix, &topic, span).await? {
            let (Some(bucket), Some(kind)) =
                (store_bucket(time, span), kind_of(ledger, fixed, &id))
            else {
                continue;
            };
            ledger.record(
                bucket,
                kind,
                Stage::Store("elasticsearch".to_owned()),
                &id,
                None,
            );
            read += 1;
        }
    }
    Ok(read)
}

/// The rows of the BigQuery loader's tables (one per loader input) whose
/// event time is in the span into `ledger` as stage `bigquery`.
pub async fn read_bigquery(
    ledger: &mut Ledger,
    settings: &adpipe_loader::config::BigQuerySettings,
    topics: &TopicNames,
    span: Span,
) -> anyhow::Result<u64> {
    use adpipe_events::EventKind;
    let client = adpipe_loader::bigquery::client(settings)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut read = 0;
    for (topic, fixed) in loader_inputs(topics) {
        // What the loader's table of that topic holds.
        let kinds: &[EventKind] = match fixed {
            Some(Kind::Impression) => &[EventKind::Impression],
            Some(Kind::Click) => &[EventKind::JoinedClick],
            Some(Kind::Conversion) => &[EventKind::JoinedConversion],
            None => &[EventKind::Click, EventKind::Conversion],
        };
        let rows = adpipe_loader::bigquery::row_identities(
            &client,
            settings,
            &topic,
            kinds,
            (span.from, span.to),
        )
        .await
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("reading BigQuery at {} for {topic}", settings.url))?;
        for (id, time) in rows {
            let (Some(bucket), Some(kind)) =
                (store_bucket(time, span), kind_of(ledger, fixed, &id))
            else {
                continue;
            };
            ledger.record(bucket, kind, Stage::Store("bigquery".to_owned()), &id, None);
            read += 1;
        }
    }
    Ok(read)
}

/// The store name of `dc`'s profiles (`profiles dc1`).
pub fn profiles_store(dc: &str) -> String {
    format!("profiles {dc}")
}

/// The entries of `dc`'s profiles whose event time is in the span into
/// `ledger` as stage `profiles <dc>`, and the cap's and the TTL's
/// explanations for the dispatched events they lack (read the dispatched
/// stage first: its events name their users).
pub async fn read_profiles(
    ledger: &mut Ledger,
    settings: &crate::config::ProfilesSettings,
    dc: &str,
    span: Span,
) -> anyhow::Result<u64> {
    let prefix = settings.key_prefix(dc);
    let store_name = profiles_store(dc);
    let mut read = 0;
    // Per key: how many entries, and the oldest one's event time.
    let mut fullness: HashMap<String, (usize, f64)> = HashMap::new();
    adpipe_loader::profiles::visit_stored(settings.store, &settings.url, &prefix, |profile| {
        let Some(kind) = Kind::parse(profile.kind()) else {
            return Err(format!("key {} names no kind", profile.key));
        };
        let ids = profile.event_ids()?;
        for ((_, score), id) in profile.entries.iter().zip(ids) {
            if let Some(bucket) = store_bucket(*score as i64, span) {
                ledger.record(bucket, kind, Stage::Store(store_name.clone()), &id, None);
                read += 1;
            }
        }
        let oldest = profile
            .entries
            .first()
            .map_or(f64::MAX, |(_, score)| *score);
        fullness.insert(profile.key, (profile.entries.len(), oldest));
        Ok(())
    })
    .await
    .map_err(anyhow::Error::msg)
    .with_context(|| format!("reading {dc}'s profiles"))?;
    let now = adpipe_runtime::event_time::now_ms();
    let ttl_ms = i64::try_from(settings.ttl.as_millis()).unwrap_or(i64::MAX);
    let mut explained = Vec::new();
    for (hash, owner) in ledger.profile_owners() {
        let key = adpipe_loader::profiles::stored_key(
            settings.store,
            &prefix,
            ledger.user_name(owner.user),
            owner.kind.name(),
        );
        let reason = match fullness.get(key.as_str()) {
            // Not newer than the oldest of a full profile: the cap's (an
            // equal time is decided by the entries' bytes; taken as the
            // cap's).
            Some((entries, oldest))
                if *entries >= settings.keep && owner.time_ms as f64 <= *oldest =>
            {
                format!(
                    "beyond the profile cap: {key} keeps the newest {}",
                    settings.keep
                )
            }
            _ if owner.time_ms.saturating_add(ttl_ms) <= now => {
                format!(
                    "expired: older than the profiles' TTL ({})",
                    humantime::format_duration(settings.ttl)
                )
            }
            _ => continue,
        };
        explained.push(((store_name.clone(), hash), reason));
    }
    ledger.store_explained.extend(explained);
    Ok(read)
}

/// (document id, event time) of every document the Elasticsearch loader
/// wrote for `topic` in the daily indices covering the span (a scroll over
/// `_id` and the event time; missing indices are no documents).
pub async fn elasticsearch_documents(
    url: &str,
    index_prefix: &str,
    topic: &str,
    span: Span,
) -> anyhow::Result<Vec<(String, i64)>> {
    let http = reqwest::Client::new();
    let base = adpipe_loader::elasticsearch::index_base(index_prefix, topic);
    let indices: Vec<String> = (span.from.div_euclid(86_400_000)
        ..=(span.to - 1).div_euclid(86_400_000))
        .map(|day| adpipe_loader::elasticsearch::daily_index(&base, day * 86_400_000))
        .collect();
    let mut documents = Vec::new();
    let mut page: Value = answer(
        http.post(format!(
            "{url}/{}/_search?scroll=1m&ignore_unavailable=true&allow_no_indices=true",
            indices.join(",")
        ))
        .json(&json!({
            "size": 5000,
            "sort": ["_doc"],
            "_source": ["event_time", "click.event_time", "conversion.event_time"],
        })),
    )
    .await
    .with_context(|| format!("searching Elasticsearch at {url} for {topic}"))?;
    loop {
        let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
        if hits.is_empty() {
            break;
        }
        for hit in &hits {
            if let (Some(id), Some(time)) = (hit["_id"].as_str(), event_time(&hit["_source"])) {
                documents.push((id.to_owned(), time));
            }
        }
        let scroll_id = page["_scroll_id"].as_str().unwrap_or_default().to_owned();
        page = answer(
            http.post(format!("{url}/_search/scroll"))
                .json(&json!({"scroll": "1m", "scroll_id": scroll_id})),
        )
        .await
        .with_context(|| format!("scrolling Elasticsearch at {url} for {topic}"))?;
    }
    if let Some(scroll_id) = page["_scroll_id"].as_str() {
        let _ = http
            .delete(format!("{url}/_search/scroll"))
            .json(&json!({"scroll_id": scroll_id}))
            .send()
            .await;
    }
    Ok(documents)
}

fn event_time(source: &Value) -> Option<i64> {
    let time = |value: &Value| value.as_i64().or_else(|| value.as_f64().map(|f| f as i64));
    time(&source["event_time"])
        .or_else(|| time(&source["conversion"]["event_time"]))
        .or_else(|| time(&source["click"]["event_time"]))
}

async fn answer(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request.send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        anyhow::bail!("{status}: {body}");
    }
    Ok(body)
}
