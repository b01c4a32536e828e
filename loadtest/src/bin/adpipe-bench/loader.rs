//! The loader's contenders: the unique impressions (what
//! `deduplicated.impressions` holds) written by the real `adpipe-loader`
//! into Avro files (deflate and uncompressed, two batch sizes), Parquet
//! files (Snappy, GZIP, uncompressed), Elasticsearch (four batch sizes),
//! user profiles in Redis and BigQuery (the emulator); a round counts only
//! once the group committed the backlog — i.e. once the store acknowledged
//! every batch — and is checked: every impression in the files (Avro read
//! back here with serde_avro_fast, Parquet counted from its footers), every
//! impression one document in Elasticsearch, one profile entry in Redis,
//! one row in BigQuery.
//!
//! Elasticsearch's own `_bulk` ceiling is measured in the same run with a
//! plain client: the same documents (ids, index mappings, bulk size), sent
//! as fast as six concurrent requests go, no Kafka, no decoding.

use std::path::{Path, PathBuf};
use std::time::Instant;

use adpipe_events::{EventKind, Impression};
use serde::Serialize;
use serde_json::json;

/// One configuration of the loader.
pub struct Variant {
    /// What `--only` calls it (`--only loader` selects them all, `files`
    /// and `es` each family).
    pub key: &'static str,
    /// Its name in the report.
    pub name: &'static str,
    /// `loader.sink`.
    pub sink: &'static str,
    /// `loader.batch.records`.
    pub batch_records: usize,
    /// `files.format` (files only).
    pub format: &'static str,
    /// `files.codec` (files only).
    pub codec: &'static str,
}

/// Where the stores of the contenders are (each family runs only when its
/// store is given).
pub struct Stores<'a> {
    /// Elasticsearch (`--es-url`).
    pub es_url: Option<&'a str>,
    /// Redis for the profiles (`--redis-url`).
    pub redis_url: Option<&'a str>,
    /// BigQuery's REST base (`--bq-url`, the emulator's `/bigquery/v2`).
    pub bq_url: Option<&'a str>,
}

impl Stores<'_> {
    /// Whether `sink`'s store is given (files need none).
    pub fn has(&self, sink: &str) -> bool {
        match sink {
            "elasticsearch" => self.es_url.is_some(),
            "profiles" => self.redis_url.is_some(),
            "bigquery" => self.bq_url.is_some(),
            _ => true,
        }
    }
}

/// The variants, in report order.
pub const VARIANTS: [Variant; 12] = [
    Variant {
        key: "files5000",
        name: "loader: Avro files (deflate), batches of 5,000",
        sink: "files",
        batch_records: 5_000,
        format: "avro",
        codec: "deflate",
    },
    Variant {
        key: "files5000n",
        name: "loader: Avro files (uncompressed), batches of 5,000",
        sink: "files",
        batch_records: 5_000,
        format: "avro",
        codec: "null",
    },
    Variant {
        key: "files50000",
        name: "loader: Avro files (deflate), batches of 50,000",
        sink: "files",
        batch_records: 50_000,
        format: "avro",
        codec: "deflate",
    },
    Variant {
        key: "parquet5000",
        name: "loader: Parquet files (Snappy), batches of 5,000",
        sink: "files",
        batch_records: 5_000,
        format: "parquet",
        codec: "snappy",
    },
    Variant {
        key: "parquet5000g",
        name: "loader: Parquet files (GZIP), batches of 5,000",
        sink: "files",
        batch_records: 5_000,
        format: "parquet",
        codec: "deflate",
    },
    Variant {
        key: "parquet5000n",
        name: "loader: Parquet files (uncompressed), batches of 5,000",
        sink: "files",
        batch_records: 5_000,
        format: "parquet",
        codec: "null",
    },
    Variant {
        key: "es500",
        name: "loader: Elasticsearch, batches of 500",
        sink: "elasticsearch",
        batch_records: 500,
        format: "",
        codec: "",
    },
    Variant {
        key: "es2000",
        name: "loader: Elasticsearch, batches of 2,000",
        sink: "elasticsearch",
        batch_records: 2_000,
        format: "",
        codec: "",
    },
    Variant {
        key: "es5000",
        name: "loader: Elasticsearch, batches of 5,000",
        sink: "elasticsearch",
        batch_records: 5_000,
        format: "",
        codec: "",
    },
    Variant {
        key: "es10000",
        name: "loader: Elasticsearch, batches of 10,000",
        sink: "elasticsearch",
        batch_records: 10_000,
        format: "",
        codec: "",
    },
    Variant {
        key: "profiles5000",
        name: "loader: profiles in Redis, batches of 5,000",
        sink: "profiles",
        batch_records: 5_000,
        format: "",
        codec: "",
    },
    Variant {
        key: "bigquery5000",
        name: "loader: BigQuery (the emulator), batches of 5,000",
        sink: "bigquery",
        batch_records: 5_000,
        format: "",
        codec: "",
    },
];

/// Whether `--only` (empty: everything) selects `variant`.
pub fn selected(only: &[String], variant: &Variant) -> bool {
    only.is_empty()
        || only.iter().any(|only| {
            only == variant.key
                || only == "loader"
                || (only == "files" && variant.sink == "files")
                || (only == "es" && variant.sink == "elasticsearch")
                || (only == variant.sink)
        })
}

/// The `[registry]`, `[loader]` and sink sections of a contender's config
/// (`place`: the files' directory, the Elasticsearch index prefix, the
/// profiles' key prefix or the BigQuery dataset).
pub fn sections(
    variant: &Variant,
    registry_url: &str,
    input: &str,
    stores: &Stores<'_>,
    place: &str,
) -> String {
    let sink = match variant.sink {
        "files" => format!(
            "[files]\ndir = \"{place}\"\nformat = \"{}\"\ncodec = \"{}\"\n",
            variant.format, variant.codec
        ),
        // Room for every impression of a user: each is one entry.
        "profiles" => format!(
            "[profiles]\nurl = \"{}\"\nkey-prefix = \"{place}\"\nkeep = 100000\nttl = \"3650d\"\n",
            stores.redis_url.unwrap_or_default()
        ),
        "bigquery" => format!(
            "[bigquery]\nurl = \"{}\"\nproject = \"adpipe\"\ndataset = \"{place}\"\ncredentials = \"none\"\n",
            stores.bq_url.unwrap_or_default()
        ),
        _ => format!(
            "[elasticsearch]\nurl = \"{}\"\nindex-prefix = \"{place}\"\nrefresh-interval = \"30s\"\n",
            stores.es_url.unwrap_or_default()
        ),
    };
    format!(
        "[registry]\nurl = \"{registry_url}\"\n\
         [loader]\nsink = \"{}\"\ninputs = [\"{input}:impression\"]\n\
         [loader.batch]\nrecords = {}\nbytes = 67108864\nwait = \"200ms\"\nwrite-timeout = \"9s\"\n{sink}",
        variant.sink, variant.batch_records,
    )
}

/// What a files round left: records in its files and their bytes; the
/// directory is removed afterwards (generated data is not kept).
pub fn files_written(dir: &Path) -> Result<(u64, u64), String> {
    let mut records = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).map_err(|error| format!("{}: {error}", dir.display()))?
        {
            let path = entry.map_err(|error| error.to_string())?.path();
            if path.is_dir() {
                if !path.ends_with("_adpipe") {
                    stack.push(path);
                }
                continue;
            }
            let data =
                std::fs::read(&path).map_err(|error| format!("{}: {error}", path.display()))?;
            bytes += data.len() as u64;
            if path.extension().is_some_and(|ext| ext == "parquet") {
                let reader =
                    parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(data))
                        .map_err(|error| format!("{}: {error}", path.display()))?;
                let rows = parquet::file::reader::FileReader::metadata(&reader)
                    .file_metadata()
                    .num_rows();
                records += u64::try_from(rows).unwrap_or(0);
                continue;
            }
            let mut reader =
                serde_avro_fast::object_container_file_encoding::Reader::from_slice(&data)
                    .map_err(|error| format!("{}: {error}", path.display()))?;
            for impression in reader.deserialize::<Impression>() {
                impression.map_err(|error| format!("{}: {error}", path.display()))?;
                records += 1;
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok((records, bytes))
}

/// Profile entries under the key prefix `prefix` (each impression is one);
/// deletes them afterwards.
pub async fn profile_entries(redis_url: &str, prefix: &str) -> Result<u64, String> {
    let mut connection = redis::Client::open(redis_url)
        .map_err(|error| error.to_string())?
        .get_multiplexed_async_connection()
        .await
        .map_err(|error| format!("Redis at {redis_url}: {error}"))?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection)
        .await
        .map_err(|error| error.to_string())?;
    let mut entries = 0;
    for key in &keys {
        let count: u64 = redis::cmd("ZCARD")
            .arg(key)
            .query_async(&mut connection)
            .await
            .map_err(|error| error.to_string())?;
        entries += count;
    }
    for chunk in keys.chunks(100) {
        let () = redis::cmd("UNLINK")
            .arg(chunk)
            .query_async(&mut connection)
            .await
            .map_err(|error| error.to_string())?;
    }
    Ok(entries)
}

/// Rows in the table the loader made for `topic` in `dataset`, and
/// how many distinct event ids they hold.
pub async fn bigquery_rows(bq_url: &str, dataset: &str, topic: &str) -> Result<(u64, u64), String> {
    let table = adpipe_loader::bigquery::table_id("", topic);
    let sql = format!("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM `adpipe.{dataset}.{table}`");
    let response = json_answer(
        client()
            .post(format!("{bq_url}/projects/adpipe/queries"))
            .json(&json!({"query": sql, "useLegacySql": false})),
    )
    .await?;
    let cell = |index: usize| {
        let value = &response["rows"][0]["f"][index]["v"];
        value
            .as_str()
            .and_then(|text| text.parse().ok())
            .or(value.as_u64())
            .ok_or_else(|| format!("{sql}: {response}"))
    };
    Ok((cell(0)?, cell(1)?))
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Sends `request` and reads its answer as JSON.
async fn json_answer(request: reqwest::RequestBuilder) -> Result<serde_json::Value, String> {
    request
        .send()
        .await
        .map_err(|error| error.to_string())?
        .json()
        .await
        .map_err(|error| error.to_string())
}

/// Documents in the indices `<prefix>*`; deletes them afterwards.
pub async fn documents(es_url: &str, prefix: &str) -> Result<u64, String> {
    let client = client();
    let refresh = client
        .post(format!("{es_url}/{prefix}*/_refresh"))
        .send()
        .await
        .map_err(|error| error.to_string())?;
    if !refresh.status().is_success() {
        return Err(format!("refresh {prefix}*: {}", refresh.status()));
    }
    let count = json_answer(client.get(format!("{es_url}/{prefix}*/_count"))).await?;
    let _ = client.delete(format!("{es_url}/{prefix}*")).send().await;
    let _ = client
        .delete(format!("{es_url}/_index_template/{prefix}*"))
        .send()
        .await;
    count["count"]
        .as_u64()
        .ok_or_else(|| format!("no count: {count}"))
}

/// Elasticsearch's `_bulk` ceiling on this machine, in the same run.
#[derive(Debug, Serialize)]
pub struct Ceiling {
    /// Documents per second.
    pub docs_per_sec: f64,
    /// Documents per request.
    pub bulk: usize,
    /// Requests in flight.
    pub concurrency: usize,
}

/// Indexes `impressions` (as JSON, `_id` = event id) into fresh daily
/// indices as the loader makes them (its mappings, one shard each, a day
/// per index by event time), `bulk` per request, `concurrency` requests in
/// flight; the bodies are built before the clock starts. Twice: the first
/// pass only warms Elasticsearch's JVM up (the loader's rounds come later,
/// on a warm server), the second is measured.
pub async fn ceiling(
    es_url: &str,
    index: &str,
    impressions: &[Impression],
    bulk: usize,
    concurrency: usize,
) -> Result<Ceiling, String> {
    let mut measured = 0.0;
    for pass in ["warmup", "measured"] {
        let base = format!("{index}-{pass}");
        measured = ceiling_pass(es_url, &base, impressions, bulk, concurrency).await?;
        let _ = client().delete(format!("{es_url}/{base}-*")).send().await;
    }
    Ok(Ceiling {
        docs_per_sec: measured,
        bulk,
        concurrency,
    })
}

async fn ceiling_pass(
    es_url: &str,
    base: &str,
    impressions: &[Impression],
    bulk: usize,
    concurrency: usize,
) -> Result<f64, String> {
    let client = client();
    let daily = |impression: &Impression| {
        adpipe_loader::elasticsearch::daily_index(base, impression.event_time)
    };
    let days: std::collections::BTreeSet<String> = impressions.iter().map(daily).collect();
    for day in &days {
        let created = client
            .put(format!("{es_url}/{day}"))
            .json(&json!({
                "settings": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "30s"},
                "mappings": adpipe_loader::elasticsearch::mappings(&[EventKind::Impression]),
            }))
            .send()
            .await
            .map_err(|error| error.to_string())?;
        if !created.status().is_success() {
            return Err(format!("creating {day}: {}", created.status()));
        }
    }
    let bodies: Vec<Vec<u8>> = impressions
        .chunks(bulk)
        .map(|chunk| {
            let mut body = Vec::new();
            for impression in chunk {
                body.extend_from_slice(
                    format!(
                        "{{\"index\":{{\"_index\":\"{}\",\"_id\":\"{}\"}}}}\n",
                        daily(impression),
                        impression.event_id
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(&serde_json::to_vec(impression).unwrap_or_default());
                body.push(b'\n');
            }
            body
        })
        .collect();
    let queue = std::sync::Arc::new(parking_lot::Mutex::new(bodies));
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..concurrency {
        let (client, queue, url) = (client.clone(), queue.clone(), format!("{es_url}/_bulk"));
        senders.push(tokio::spawn(async move {
            loop {
                let Some(body) = queue.lock().pop() else {
                    return Ok::<_, String>(());
                };
                let answer: serde_json::Value = client
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .map_err(|error| error.to_string())?
                    .json()
                    .await
                    .map_err(|error| error.to_string())?;
                if answer["errors"] != json!(false) {
                    return Err("the ceiling's bulk had item errors".to_owned());
                }
            }
        }));
    }
    for sender in senders {
        sender.await.map_err(|error| error.to_string())??;
    }
    Ok(impressions.len() as f64 / started.elapsed().as_secs_f64())
}

/// The files directory of a contender's round.
pub fn files_dir(config_dir: &Path, prefix: &str, key: &str, round: usize) -> PathBuf {
    config_dir.join(format!("{prefix}-{key}{round}-files"))
}
