//! Shared set-up of the loader's tests: fresh topics and an in-process
//! registry on the real central cluster, config files for each sink,
//! events with their ground truth, and readers of what the stores hold
//! (Elasticsearch's own search API; files by Apache avro-tools in
//! `files.rs`). Needs `infra/kafka.sh start central` and, for the
//! Elasticsearch tests, `infra/elasticsearch.sh start` (`ADPIPE_ES_URL`);
//! for the profile tests, `infra/redis.sh start` (`ADPIPE_REDIS_URL`).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use adpipe_codec::{Codec, RegistryClient};
use adpipe_events::{EventKind, samples};
use adpipe_loader::LoaderSettings;
use adpipe_schema_registry::{RegistrySettings, RunningRegistry};
use rdkafka::ClientConfig;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

pub const PARTITIONS: i32 = 3;

pub fn es_url() -> String {
    std::env::var("ADPIPE_ES_URL").unwrap_or_else(|_| "http://127.0.0.1:19200".to_owned())
}

pub struct Rig {
    pub bootstrap: String,
    pub prefix: String,
    pub registry: RunningRegistry,
    codec: Codec,
    producer: FutureProducer,
}

impl Rig {
    /// Topics `<prefix>.imp`, `<prefix>.jclk`, `<prefix>.dlq`.
    pub async fn new(name: &str) -> Rig {
        let bootstrap = adpipe_testkit::kafka("central");
        let prefix = adpipe_testkit::unique(name);
        let names: Vec<String> = ["imp", "jclk", "dlq"]
            .iter()
            .map(|suffix| format!("{prefix}.{suffix}"))
            .collect();
        let specs: Vec<adpipe_testkit::TopicSpec<'_>> = names
            .iter()
            .map(|name| (name.as_str(), PARTITIONS, &[][..]))
            .collect();
        adpipe_testkit::create_topics(&bootstrap, &specs).await;
        let registry = adpipe_schema_registry::start(RegistrySettings::local(
            &bootstrap,
            &format!("{prefix}._schemas"),
        ))
        .await
        .expect("registry");
        Rig {
            codec: Codec::new(RegistryClient::new(&registry.url()).expect("client")),
            producer: ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("linger.ms", "0")
                .create()
                .expect("producer"),
            bootstrap,
            prefix,
            registry,
        }
    }

    /// A config file for `sink` with `sections` appended (the sink's own).
    pub fn config(&self, sink: &str, group: &str, sections: &str) -> PathBuf {
        let config = format!(
            r#"
[kafka]
bootstrap-servers = "{bootstrap}"
group-id = "{prefix}-{group}"
session-timeout = "6s"
[registry]
url = "{url}"
[runtime]
commit-interval = "200ms"
revoke-deadline = "3s"
retry-max-backoff = "1s"
dead-letter-topic = "{prefix}.dlq"
[http]
listen = "127.0.0.1:0"
[loader]
sink = "{sink}"
inputs = ["{prefix}.imp:impression", "{prefix}.jclk:joined-click"]
[loader.batch]
records = 200
wait = "300ms"
write-timeout = "5s"
{sections}
"#,
            bootstrap = self.bootstrap,
            prefix = self.prefix,
            url = self.registry.url(),
        );
        let path = std::env::temp_dir().join(format!("{}-{group}.toml", self.prefix));
        std::fs::write(&path, config).expect("config written");
        path
    }

    pub fn settings(&self, config: &std::path::Path) -> LoaderSettings {
        LoaderSettings::load(Some(config), std::iter::empty()).expect("valid")
    }

    pub async fn encode<T: serde::Serialize>(
        &self,
        suffix: &str,
        kind: EventKind,
        event: &T,
    ) -> Vec<u8> {
        self.codec
            .encoder(&format!("{}.{suffix}-value", self.prefix), kind.schema())
            .await
            .expect("encoder")
            .encode(event)
            .expect("encodes")
    }

    pub async fn send(&self, suffix: &str, partition: i32, value: &[u8]) {
        let topic = format!("{}.{suffix}", self.prefix);
        self.producer
            .send(
                FutureRecord::<(), [u8]>::to(&topic)
                    .partition(partition)
                    .payload(value)
                    .headers(OwnedHeaders::new()),
                Duration::from_secs(10),
            )
            .await
            .expect("produced");
    }

    /// Publishes impressions `from..to` and a joined click for every
    /// fourth; returns their event ids (the ground truth), per topic.
    pub async fn publish(&self, from: u64, to: u64) -> (BTreeSet<String>, BTreeSet<String>) {
        let (mut impressions, mut clicks) = (BTreeSet::new(), BTreeSet::new());
        for n in from..to {
            let partition = i32::try_from(n % 3).expect("small");
            let impression = samples::impression(n);
            impressions.insert(impression.event_id.clone());
            let value = self.encode("imp", EventKind::Impression, &impression).await;
            self.send("imp", partition, &value).await;
            if n % 4 == 0 {
                let joined = samples::joined_click(n);
                clicks.insert(joined.click.event_id.clone());
                let value = self.encode("jclk", EventKind::JoinedClick, &joined).await;
                self.send("jclk", partition, &value).await;
            }
        }
        (impressions, clicks)
    }

    /// The dead-letter topic's records.
    pub fn dead_lettered(&self) -> Vec<rdkafka::message::OwnedMessage> {
        adpipe_testkit::read_all(&self.bootstrap, &format!("{}.dlq", self.prefix))
    }

    pub async fn wait_committed_to_end(&self, group: &str, timeout: Duration) {
        let topics: Vec<String> = ["imp", "jclk"]
            .iter()
            .map(|suffix| format!("{}.{suffix}", self.prefix))
            .collect();
        adpipe_testkit::wait_committed_to_end(
            &self.bootstrap,
            &format!("{}-{group}", self.prefix),
            &topics,
            timeout,
        )
        .await;
    }
}

/// Elasticsearch as the tests read it: its own search API.
pub struct Es {
    pub url: String,
    client: reqwest::Client,
}

impl Es {
    pub fn new() -> Es {
        Es {
            url: es_url(),
            client: reqwest::Client::new(),
        }
    }

    pub async fn request(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.client.request(method, format!("{}/{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("Elasticsearch answers");
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status}: {value}");
        value
    }

    /// Documents in indices matching `pattern`, after a refresh.
    pub async fn count(&self, pattern: &str) -> u64 {
        self.request(
            reqwest::Method::POST,
            &format!("{pattern}/_refresh?ignore_unavailable=true&allow_no_indices=true"),
            None,
        )
        .await;
        self.request(
            reqwest::Method::GET,
            &format!("{pattern}/_count?ignore_unavailable=true&allow_no_indices=true"),
            None,
        )
        .await["count"]
            .as_u64()
            .expect("a count")
    }

    /// Every value of keyword `field` in `pattern`, one per document: one
    /// scroll in index order (search_after on the field itself sorted the
    /// million documents again for each page).
    pub async fn values(&self, pattern: &str, field: &str) -> Vec<String> {
        let mut values = Vec::new();
        let mut page = self
            .request(
                reqwest::Method::POST,
                &format!("{pattern}/_search?scroll=2m"),
                Some(json!({
                    "size": 10000,
                    "_source": false,
                    "docvalue_fields": [field],
                    "sort": ["_doc"],
                })),
            )
            .await;
        loop {
            let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
            let scroll_id = page["_scroll_id"].clone();
            if hits.is_empty() {
                self.request(
                    reqwest::Method::DELETE,
                    "_search/scroll",
                    Some(json!({ "scroll_id": scroll_id })),
                )
                .await;
                return values;
            }
            for hit in &hits {
                values.push(
                    hit["fields"][field][0]
                        .as_str()
                        .expect("a value")
                        .to_owned(),
                );
            }
            page = self
                .request(
                    reqwest::Method::POST,
                    "_search/scroll",
                    Some(json!({ "scroll": "2m", "scroll_id": scroll_id })),
                )
                .await;
        }
    }

    /// Asserts `pattern` holds exactly one document per id in `truth`, and
    /// no other (`field` holds the id).
    pub async fn assert_exactly_once(&self, pattern: &str, field: &str, truth: &BTreeSet<String>) {
        let count = self.count(pattern).await;
        let values = self.values(pattern, field).await;
        let distinct: BTreeSet<String> = values.iter().cloned().collect();
        assert_eq!(
            values.len() as u64,
            count,
            "{pattern}: every document has {field}"
        );
        assert_eq!(
            distinct.len(),
            values.len(),
            "{pattern}: an event in two documents"
        );
        let missing: Vec<&String> = truth.difference(&distinct).take(5).collect();
        let extra: Vec<&String> = distinct.difference(truth).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{pattern}: {} documents for {} events; missing e.g. {missing:?}, extra e.g. {extra:?}",
            values.len(),
            truth.len()
        );
    }

    /// Asserts the impression and joined-click indices the tests' loaders
    /// write (index prefix `t-`, then `prefix`) hold each event of `truth`
    /// and `click_truth` exactly once.
    pub async fn assert_loaded_once(
        &self,
        prefix: &str,
        truth: &BTreeSet<String>,
        click_truth: &BTreeSet<String>,
    ) {
        self.assert_exactly_once(&format!("t-{prefix}-imp-*"), "event_id", truth)
            .await;
        self.assert_exactly_once(&format!("t-{prefix}-jclk-*"), "click.event_id", click_truth)
            .await;
    }

    pub async fn delete_indices(&self, pattern: &str) {
        let _ = self
            .client
            .delete(format!(
                "{}/{pattern}?ignore_unavailable=true&allow_no_indices=true",
                self.url
            ))
            .send()
            .await;
    }
}

/// A blocking publisher of numbered events for the long tests: impression
/// `n` on `<prefix>.imp`, and its joined click on `<prefix>.jclk` for every
/// tenth `n`; partitioned by number.
pub struct Load {
    prefix: String,
    producer: rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    impressions: adpipe_codec::Encoder<adpipe_events::Impression>,
    clicks: adpipe_codec::Encoder<adpipe_events::JoinedClick>,
}

impl Rig {
    pub async fn load(&self) -> Load {
        Load {
            prefix: self.prefix.clone(),
            producer: ClientConfig::new()
                .set("bootstrap.servers", &self.bootstrap)
                .set("linger.ms", "20")
                .set("queue.buffering.max.messages", "200000")
                .create()
                .expect("producer"),
            impressions: self.encoder("imp", EventKind::Impression).await,
            clicks: self.encoder("jclk", EventKind::JoinedClick).await,
        }
    }

    async fn encoder<T: serde::Serialize>(
        &self,
        suffix: &str,
        kind: EventKind,
    ) -> adpipe_codec::Encoder<T> {
        self.codec
            .encoder(&format!("{}.{suffix}-value", self.prefix), kind.schema())
            .await
            .expect("encoder")
    }

    /// Runs a `sink` loader (group `slow`, config `section`) to the end of
    /// its input with writes cut off after 1 s and two requests at the
    /// store at once, the store behind `proxy` (slower than that); asserts
    /// writes were cut off, the store never held more than two requests,
    /// and nothing was dead-lettered.
    pub async fn load_through_slow_store(
        &self,
        sink: &str,
        section: &str,
        proxy: &adpipe_testkit::SlowProxy,
        patience: Duration,
    ) {
        let config = self.config(sink, "slow", section);
        let text = std::fs::read_to_string(&config).expect("config").replace(
            "write-timeout = \"5s\"",
            "write-timeout = \"1s\"\nwrites-in-flight = 2",
        );
        std::fs::write(&config, text).expect("config");
        let loader = adpipe_loader::start(self.settings(&config)).expect("starts");
        self.wait_committed_to_end("slow", patience).await;
        let timeouts = adpipe_testkit::metric_value_where(
            loader.http_address,
            "adpipe_loader_write_failures_total",
            r#"kind="timeout""#,
        )
        .await;
        loader.stop().await.expect("clean stop");
        assert!(
            timeouts.is_some_and(|timeouts| timeouts > 0.0),
            "the writes were cut off by the write timeout: {timeouts:?}"
        );
        assert!(
            proxy.most_held_at_once() <= 2,
            "at most writes-in-flight requests at the store at once, held {}",
            proxy.most_held_at_once()
        );
        assert!(self.dead_lettered().is_empty(), "nothing dead-lettered");
    }

    /// Rewinds `group`'s commits on both inputs to 0 (only a sink's own
    /// offsets may then decide where it resumes).
    pub fn rewind_group(&self, group: &str) {
        use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", format!("{}-{group}", self.prefix))
            .create()
            .expect("consumer");
        let mut offsets = rdkafka::TopicPartitionList::new();
        for suffix in ["imp", "jclk"] {
            for partition in 0..PARTITIONS {
                offsets
                    .add_partition_offset(
                        &format!("{}.{suffix}", self.prefix),
                        partition,
                        rdkafka::Offset::Offset(0),
                    )
                    .expect("offset");
            }
        }
        consumer
            .commit(&offsets, CommitMode::Sync)
            .expect("rewound");
    }

    /// Records committed by `group` over both inputs.
    pub fn committed_records(&self, group: &str) -> i64 {
        ["imp", "jclk"]
            .iter()
            .map(|suffix| {
                adpipe_testkit::committed_offsets(
                    &self.bootstrap,
                    &format!("{}-{group}", self.prefix),
                    &format!("{}.{suffix}", self.prefix),
                )
                .into_iter()
                .map(|offset| offset.unwrap_or(0))
                .sum::<i64>()
            })
            .sum()
    }
}

/// The ground truth of `Load`ing events `0..events`: impression ids, click ids.
pub fn load_truth(events: u64) -> (BTreeSet<String>, BTreeSet<String>) {
    let impressions = (0..events)
        .map(|n| samples::impression(n).event_id)
        .collect();
    let clicks = (0..events)
        .filter(|n| n.is_multiple_of(10))
        .map(|n| samples::click(n).event_id)
        .collect();
    (impressions, clicks)
}

impl Load {
    /// Queues event `n`.
    pub fn send(&self, n: u64) {
        let partition = i32::try_from(n % PARTITIONS as u64).expect("small");
        let value = self
            .impressions
            .encode(&samples::impression(n))
            .expect("encodes");
        self.queue("imp", partition, &value);
        if n.is_multiple_of(10) {
            let value = self
                .clicks
                .encode(&samples::joined_click(n))
                .expect("encodes");
            self.queue("jclk", partition, &value);
        }
    }

    fn queue(&self, suffix: &str, partition: i32, value: &[u8]) {
        let topic = format!("{}.{suffix}", self.prefix);
        adpipe_testkit::queue_blocking(
            &self.producer,
            rdkafka::producer::BaseRecord::<(), [u8]>::to(&topic)
                .partition(partition)
                .payload(value),
        );
    }

    pub fn flush(&self) {
        use rdkafka::producer::Producer;
        self.producer
            .flush(Duration::from_secs(120))
            .expect("flushed");
    }
}

/// The event files (Avro, Parquet) under `dir`, sorted.
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if !path.ends_with("_adpipe") {
                    stack.push(path);
                }
            } else if path
                .extension()
                .is_some_and(|ext| ext == "avro" || ext == "parquet")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The records of `files`, each read by a reader nobody here wrote:
/// Avro files by Apache avro-tools, Parquet files by pyarrow.
pub fn read_files(files: &[PathBuf]) -> Vec<serde_json::Value> {
    read_files_as(files, None)
}

/// Like [`read_files`], each record only as far as `projection` names it.
fn read_files_as(files: &[PathBuf], projection: Option<&EventIds>) -> Vec<serde_json::Value> {
    let (parquet, avro): (Vec<PathBuf>, Vec<PathBuf>) = files
        .iter()
        .cloned()
        .partition(|file| file.extension().is_some_and(|ext| ext == "parquet"));
    let mut records = read_with_avro_tools(&avro, projection.map(|ids| ids.avro_reader_schema));
    records.extend(read_with_pyarrow(
        &parquet,
        projection.map(|ids| ids.parquet_columns),
    ));
    records
}

/// Where an event's id and time are in its record, and how the readers
/// read only them: a million records read whole, as JSON, took most of the
/// loader's kill -9 test's checks.
pub struct EventIds {
    /// avro-tools' reader schema: the writer's record with those fields
    /// only (Avro's schema resolution skips the others).
    avro_reader_schema: &'static str,
    /// pyarrow's columns (comma-separated, top level).
    parquet_columns: &'static str,
    /// The id and event time of a record as read.
    pub pick: fn(&serde_json::Value) -> (String, i64),
}

/// An impression's `event_id` and `event_time`.
pub const IMPRESSION_IDS: EventIds = EventIds {
    avro_reader_schema: r#"{"type": "record", "name": "Impression", "namespace": "io.adpipe.events", "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}"#,
    parquet_columns: "event_id,event_time",
    pick: impression_id,
};

/// A joined click's `click.event_id` and `click.event_time`.
pub const CLICK_IDS: EventIds = EventIds {
    avro_reader_schema: r#"{"type": "record", "name": "JoinedClick", "namespace": "io.adpipe.events", "fields": [
        {"name": "click", "type": {"type": "record", "name": "Click", "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}}]}"#,
    parquet_columns: "click",
    pick: click_id,
};

/// The rows of Parquet `files` as pyarrow reads them (`infra/pyarrow.sh`),
/// only `columns` when given.
pub fn read_with_pyarrow(files: &[PathBuf], columns: Option<&str>) -> Vec<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/pyarrow.sh");
    let mut records = Vec::new();
    for chunk in files.chunks(500) {
        let mut command = Command::new(&script);
        command.arg("tojson");
        if let Some(columns) = columns {
            command.arg(format!("--columns={columns}"));
        }
        let output = command.args(chunk).output().expect("pyarrow runs");
        assert!(
            output.status.success(),
            "pyarrow read every file: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in String::from_utf8(output.stdout).expect("UTF-8").lines() {
            records.push(serde_json::from_str(line).expect("JSON"));
        }
    }
    records
}

/// The records of `files` as avro-tools reads them (JSON, one per line),
/// through `reader_schema` when given.
pub fn read_with_avro_tools(
    files: &[PathBuf],
    reader_schema: Option<&str>,
) -> Vec<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/avro-tools.sh");
    let mut records = Vec::new();
    // avro-tools starts a JVM per command: many files at a time.
    for chunk in files.chunks(1000) {
        // Tests of one binary run concurrently: a name of this call's own.
        let joined = std::env::temp_dir().join(format!(
            "loader-files-{}-{}.avro",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        let status = Command::new(&script)
            .arg("cat")
            .args(chunk)
            .arg(&joined)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("avro-tools runs");
        assert!(status.success(), "avro-tools cat read every file");
        let mut command = Command::new(&script);
        command.arg("tojson");
        if let Some(schema) = reader_schema {
            command.arg(format!("--reader-schema={schema}"));
        }
        let output = command.arg(&joined).output().expect("avro-tools runs");
        assert!(output.status.success(), "avro-tools tojson");
        for line in String::from_utf8(output.stdout).expect("UTF-8").lines() {
            records.push(serde_json::from_str(line).expect("JSON"));
        }
        let _ = std::fs::remove_file(&joined);
    }
    records
}

/// Asserts the files of `topic` under `dir` hold each id of `truth` once
/// (`id` picks it from a record) and nothing else; each file is in the
/// directory of its records' date and hour.
pub fn assert_files_hold_once(dir: &Path, topic: &str, truth: &BTreeSet<String>, ids: &EventIds) {
    let files = event_files(&dir.join(topic));
    assert!(!files.is_empty(), "{topic}: no files");
    let mut by_hour = BTreeMap::<PathBuf, Vec<PathBuf>>::new();
    for file in files {
        let name = file
            .file_name()
            .and_then(|name| name.to_str())
            .expect("a name");
        assert!(name.starts_with(&format!("{topic}-p000")), "{name}");
        by_hour
            .entry(file.parent().expect("in a dir").to_owned())
            .or_default()
            .push(file);
    }
    let mut seen = BTreeMap::<String, usize>::new();
    for (hour_dir, files) in &by_hour {
        for record in read_files_as(files, Some(ids)) {
            let (event_id, time) = (ids.pick)(&record);
            let (year, month, day, hour) = adpipe_loader::record::civil(time);
            assert!(
                hour_dir.ends_with(format!("date={year:04}-{month:02}-{day:02}/hour={hour:02}")),
                "{event_id} at {time} in {}",
                hour_dir.display()
            );
            *seen.entry(event_id).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        twice.is_empty(),
        "{topic}: events in files more than once, e.g. {twice:?}"
    );
    let ids: BTreeSet<String> = seen.into_keys().collect();
    let missing: Vec<_> = truth.difference(&ids).take(5).collect();
    let extra: Vec<_> = ids.difference(truth).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{topic}: {} events in files for {}; missing e.g. {missing:?}, extra e.g. {extra:?}",
        ids.len(),
        truth.len()
    );
}

fn impression_id(record: &serde_json::Value) -> (String, i64) {
    (
        record["event_id"].as_str().expect("event_id").to_owned(),
        record["event_time"].as_i64().expect("event_time"),
    )
}

fn click_id(record: &serde_json::Value) -> (String, i64) {
    impression_id(&record["click"])
}

/// The host:port of an `http://host:port/…` URL (for a proxy in front).
pub fn address_of(url: &str) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let authority = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("an authority");
    authority
        .to_socket_addrs()
        .expect("an address")
        .next()
        .expect("an address")
}
