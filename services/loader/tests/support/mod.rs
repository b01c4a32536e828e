//! Shared set-up of the loader's tests: fresh topics and an in-process
//! registry on the real central cluster, config files for each sink,
//! events with their ground truth, and readers of what the stores hold
//! (Elasticsearch's own search API; files by Apache avro-tools in
//! `files.rs`). Needs `infra/kafka.sh start central` and, for the
//! Elasticsearch tests, `infra/elasticsearch.sh start` (`ADPIPE_ES_URL`).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
                .set("linger.ms", "5")
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
        let deadline = Instant::now() + timeout;
        for suffix in ["imp", "jclk"] {
            let (bootstrap, group, topic) = (
                self.bootstrap.clone(),
                format!("{}-{group}", self.prefix),
                format!("{}.{suffix}", self.prefix),
            );
            loop {
                let (b, g, t) = (bootstrap.clone(), group.clone(), topic.clone());
                let done = tokio::task::spawn_blocking(move || {
                    adpipe_testkit::committed_to_end(&b, &g, &t)
                })
                .await
                .expect("check");
                if done {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{topic} not committed to its end"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
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

    /// Every value of keyword `field` in `pattern`, one per document (paged
    /// with search_after on the field itself).
    pub async fn values(&self, pattern: &str, field: &str) -> Vec<String> {
        let mut values = Vec::new();
        let mut after: Option<Value> = None;
        loop {
            let mut body = json!({
                "size": 10000,
                "_source": false,
                "docvalue_fields": [field],
                "sort": [{field: "asc"}],
                "track_total_hits": false,
            });
            if let Some(after) = &after {
                body["search_after"] = after.clone();
            }
            let page = self
                .request(
                    reqwest::Method::POST,
                    &format!("{pattern}/_search"),
                    Some(body),
                )
                .await;
            let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
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
            after = hits.last().map(|hit| hit["sort"].clone());
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
