//! Shared set-up of the stats-counter's service tests: fresh topics and an
//! in-process registry on the real central cluster, a config file, events
//! of every kind (good ones counted into a model, and bad ones), and the
//! readers the assertions need. Needs `infra/kafka.sh start central` and
//! `infra/postgres.sh start` (`ADPIPE_PG_URL`).
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use adpipe_codec::{Codec, Encoder, RegistryClient};
use adpipe_events::{
    Click, EventKind, Impression, JoinedClick, JoinedConversion, StatsTotal, samples,
};
use adpipe_runtime::dead_letter::{HEADER_OFFSET, HEADER_PARTITION, HEADER_TOPIC};
use adpipe_schema_registry::{RegistrySettings, RunningRegistry};
use adpipe_stats_counter::step::RowKeyText;
use adpipe_stats_counter::{BucketSize, Increments, PgStore, StatsSettings};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, FutureProducer, FutureRecord, Producer, ThreadedProducer,
};
use rdkafka::{Offset, TopicPartitionList};

pub const PARTITIONS: i32 = 3;
pub const INPUTS: [&str; 4] = ["imp", "jclk", "jcnv", "orph"];

pub fn pg_url() -> String {
    std::env::var("ADPIPE_PG_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:15432/adpipe".to_owned())
}

pub struct Rig {
    pub bootstrap: String,
    pub prefix: String,
    pub schema: String,
    pub config: std::path::PathBuf,
    _registry: RunningRegistry,
    codec: Codec,
    producer: FutureProducer,
}

impl Rig {
    pub async fn new(name: &str) -> Rig {
        let bootstrap = adpipe_testkit::kafka("central");
        let prefix = adpipe_testkit::unique(name);
        let names: Vec<String> = INPUTS
            .iter()
            .chain(&["dlq", "totals"])
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
        let schema = format!("stats_{}", prefix.replace(['-', '.'], "_"));
        let config = format!(
            r#"
[kafka]
bootstrap-servers = "{bootstrap}"
group-id = "{prefix}-group"
session-timeout = "6s"
[registry]
url = "{url}"
[runtime]
commit-interval = "200ms"
revoke-deadline = "3s"
dead-letter-topic = "{prefix}.dlq"
[http]
listen = "127.0.0.1:0"
[stats]
impressions = "{prefix}.imp"
joined-clicks = "{prefix}.jclk"
joined-conversions = "{prefix}.jcnv"
orphans = "{prefix}.orph"
totals-topic = "{prefix}.totals"
postgres-url = "{pg}"
schema = "{schema}"
batch-records = 50
batch-wait = "300ms"
"#,
            url = registry.url(),
            pg = pg_url(),
        );
        let path = std::env::temp_dir().join(format!("{prefix}.toml"));
        std::fs::write(&path, config).expect("config written");
        Rig {
            codec: Codec::new(RegistryClient::new(&registry.url()).expect("client")),
            producer: ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
                .expect("producer"),
            bootstrap,
            prefix,
            schema,
            config: path,
            _registry: registry,
        }
    }

    pub fn settings(&self) -> StatsSettings {
        StatsSettings::load(Some(&self.config), std::iter::empty()).expect("valid")
    }

    pub async fn send(&self, suffix: &str, partition: i32, value: &[u8], headers: OwnedHeaders) {
        let topic = format!("{}.{suffix}", self.prefix);
        self.producer
            .send(
                FutureRecord::<(), [u8]>::to(&topic)
                    .partition(partition)
                    .payload(value)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .expect("produced");
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

    /// Publishes events `from..to` of every kind (good ones counted into
    /// `expected`) and, for each kind, one record of bad input.
    pub async fn publish(&self, from: u64, to: u64, expected: &mut Increments) -> usize {
        let mut bad = 0;
        for n in from..to {
            let partition = i32::try_from(n % 3).expect("small");
            let mut impression = samples::impression(n);
            impression.currency = ["EUR", "USD"][(n % 2) as usize].to_owned();
            expected.add_impression(&impression).expect("good");
            let value = self.encode("imp", EventKind::Impression, &impression).await;
            self.send("imp", partition, &value, OwnedHeaders::new())
                .await;
            if n % 4 == 0 {
                let joined = samples::joined_click(n);
                expected.add_click(&joined).expect("good");
                let value = self.encode("jclk", EventKind::JoinedClick, &joined).await;
                self.send("jclk", partition, &value, OwnedHeaders::new())
                    .await;
            }
            if n % 10 == 0 {
                let joined = samples::joined_conversion(n);
                expected.add_conversion(&joined).expect("good");
                let value = self
                    .encode("jcnv", EventKind::JoinedConversion, &joined)
                    .await;
                self.send("jcnv", partition, &value, OwnedHeaders::new())
                    .await;
            }
            if n % 5 == 0 {
                let click = samples::click(n);
                expected.add_orphan(click.event_time, "click", "impression_not_found");
                let value = self.encode("orph", EventKind::Click, &click).await;
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "adpipe.orphan.reason",
                        value: Some("impression_not_found"),
                    })
                    .insert(Header {
                        key: "adpipe.orphan.kind",
                        value: Some("click"),
                    });
                self.send("orph", partition, &value, headers).await;
            }
        }
        // Bad input: not Avro at all, a negative cost, an absurd time, an
        // orphan without its reason.
        for suffix in INPUTS {
            self.send(suffix, 0, b"not avro", OwnedHeaders::new()).await;
            bad += 1;
        }
        let mut negative = samples::impression(to);
        negative.cost_micros = -1;
        let value = self.encode("imp", EventKind::Impression, &negative).await;
        self.send("imp", 1, &value, OwnedHeaders::new()).await;
        let mut absurd = samples::impression(to + 1);
        absurd.event_time = 0;
        let value = self.encode("imp", EventKind::Impression, &absurd).await;
        self.send("imp", 2, &value, OwnedHeaders::new()).await;
        let value = self
            .encode("orph", EventKind::Click, &samples::click(to))
            .await;
        self.send("orph", 1, &value, OwnedHeaders::new()).await;
        bad + 3
    }

    pub async fn wait_committed_to_end(&self) {
        let topics: Vec<String> = INPUTS
            .iter()
            .map(|suffix| format!("{}.{suffix}", self.prefix))
            .collect();
        adpipe_testkit::wait_committed_to_end(
            &self.bootstrap,
            &format!("{}-group", self.prefix),
            &topics,
            Duration::from_secs(120),
        )
        .await;
    }

    /// Rewinds the Kafka group's commits to 0 (the service must not care).
    pub fn rewind_group(&self) {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", format!("{}-group", self.prefix))
            .create()
            .expect("consumer");
        let mut offsets = TopicPartitionList::new();
        for suffix in INPUTS {
            for partition in 0..PARTITIONS {
                offsets
                    .add_partition_offset(
                        &format!("{}.{suffix}", self.prefix),
                        partition,
                        Offset::Offset(0),
                    )
                    .expect("offset");
            }
        }
        consumer
            .commit(&offsets, CommitMode::Sync)
            .expect("rewound");
    }
}

impl Rig {
    /// Empties the totals topic (as if its records were lost).
    pub async fn empty_totals_topic(&self) {
        adpipe_testkit::recreate_topic(
            &self.bootstrap,
            &format!("{}.totals", self.prefix),
            PARTITIONS,
            &[],
        )
        .await;
    }

    /// Asserts the totals topic holds, for every row in PostgreSQL, that
    /// row's total as its highest version (what a reader of the compacted
    /// topic keeps), and nothing else; returns how many records it read.
    pub async fn assert_totals_topic(&self) -> usize {
        let records = adpipe_testkit::read_all(&self.bootstrap, &format!("{}.totals", self.prefix));
        let mut latest: HashMap<String, StatsTotal> = HashMap::new();
        for record in &records {
            let key = String::from_utf8(record.key().expect("keyed").to_vec()).expect("text");
            let total: StatsTotal = self
                .codec
                .decode(record.payload().expect("a value"))
                .await
                .expect("decodes");
            assert!(key.starts_with(&format!("{}|{}|", total.bucket_size, total.bucket_start)));
            match latest.get(&key) {
                Some(seen) if seen.version >= total.version => {}
                _ => {
                    latest.insert(key, total);
                }
            }
        }
        let store = PgStore::connect(&pg_url(), &self.schema)
            .await
            .expect("connects");
        let mut rows = 0;
        for size in BucketSize::ALL {
            for (key, counts) in store.totals(size).await.expect("reads") {
                rows += 1;
                let text = RowKeyText::of_key(&key).0;
                let sent = latest.get(&text).unwrap_or_else(|| {
                    panic!(
                        "no total on the topic for {text} ({} records, {} keys)",
                        records.len(),
                        latest.len()
                    )
                });
                assert_eq!(
                    [
                        sent.impressions,
                        sent.clicks,
                        sent.conversions,
                        sent.cost_micros,
                        sent.conversion_value_micros
                    ],
                    [
                        counts.impressions,
                        counts.clicks,
                        counts.conversions,
                        counts.cost_micros,
                        counts.conversion_value_micros
                    ],
                    "{text}: the topic's latest total"
                );
            }
        }
        assert_eq!(latest.len(), rows, "one key per row");
        records.len()
    }

    /// Asserts every minute and hour row (and orphan row) equals `expected`.
    pub async fn assert_totals(&self, expected: &Increments) {
        let store = PgStore::connect(&pg_url(), &self.schema)
            .await
            .expect("connects");
        for size in BucketSize::ALL {
            let want = expected.rows_of(size);
            let got = store.totals(size).await.expect("reads");
            let differing = want
                .iter()
                .filter(|(key, counts)| got.get(*key) != Some(*counts))
                .count();
            assert!(
                differing == 0 && got.len() == want.len(),
                "{size:?}: each event once — {differing} of {} rows differ, {} rows stored",
                want.len(),
                got.len()
            );
            assert_eq!(
                store.orphan_totals(size).await.expect("reads"),
                expected.orphans_of(size)
            );
        }
    }

    /// The distinct source coordinates (topic, partition, offset) of the
    /// dead letters (the dead-letter topic is at-least-once).
    pub fn dead_lettered(&self) -> HashSet<(String, String, String)> {
        self.dead_letters().into_iter().collect()
    }

    /// The source coordinates (topic, partition, offset) of every dead
    /// letter, copies included.
    pub fn dead_letters(&self) -> Vec<(String, String, String)> {
        adpipe_testkit::read_all(&self.bootstrap, &format!("{}.dlq", self.prefix))
            .iter()
            .map(|record| {
                let header = |name: &str| {
                    record
                        .headers()
                        .and_then(|headers| {
                            headers
                                .iter()
                                .find(|header| header.key == name)
                                .and_then(|header| header.value)
                                .map(|value| String::from_utf8_lossy(value).into_owned())
                        })
                        .unwrap_or_default()
                };
                (
                    header(HEADER_TOPIC),
                    header(HEADER_PARTITION),
                    header(HEADER_OFFSET),
                )
            })
            .collect()
    }

    /// The group's committed offsets summed over every input partition.
    pub fn committed_records(&self) -> i64 {
        INPUTS
            .iter()
            .map(|suffix| {
                adpipe_testkit::committed_offsets(
                    &self.bootstrap,
                    &format!("{}-group", self.prefix),
                    &format!("{}.{suffix}", self.prefix),
                )
                .into_iter()
                .map(|offset| offset.unwrap_or(0))
                .sum::<i64>()
            })
            .sum()
    }
}

/// A blocking publisher of numbered events for the long tests (one
/// producer thread; encoders fetched once).
pub struct Load {
    prefix: String,
    producer: ThreadedProducer<DefaultProducerContext>,
    impressions: Encoder<Impression>,
    clicks: Encoder<JoinedClick>,
    conversions: Encoder<JoinedConversion>,
    orphans: Encoder<Click>,
}

/// Which inputs event `n` publishes to: an impression always, a joined
/// click for every 10th, a joined conversion for every 50th, an orphan
/// click for every 100th (offset by 3 so they are other numbers).
pub fn load_shape(n: u64) -> (bool, bool, bool) {
    (n.is_multiple_of(10), n.is_multiple_of(50), n % 100 == 3)
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
            conversions: self.encoder("jcnv", EventKind::JoinedConversion).await,
            orphans: self.encoder("orph", EventKind::Click).await,
        }
    }

    async fn encoder<T: serde::Serialize>(&self, suffix: &str, kind: EventKind) -> Encoder<T> {
        self.codec
            .encoder(&format!("{}.{suffix}-value", self.prefix), kind.schema())
            .await
            .expect("encoder")
    }
}

impl Load {
    /// Queues event `n` (see [`load_shape`]), partitioned by its number.
    pub fn send(&self, n: u64) {
        let partition = i32::try_from(n % PARTITIONS as u64).expect("small");
        let (click, conversion, orphan) = load_shape(n);
        let value = self
            .impressions
            .encode(&samples::impression(n))
            .expect("encodes");
        self.queue("imp", partition, &value, OwnedHeaders::new());
        if click {
            let value = self
                .clicks
                .encode(&samples::joined_click(n))
                .expect("encodes");
            self.queue("jclk", partition, &value, OwnedHeaders::new());
        }
        if conversion {
            let value = self
                .conversions
                .encode(&samples::joined_conversion(n))
                .expect("encodes");
            self.queue("jcnv", partition, &value, OwnedHeaders::new());
        }
        if orphan {
            let value = self.orphans.encode(&samples::click(n)).expect("encodes");
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: adpipe_events::HEADER_ORPHAN_REASON,
                    value: Some("impression_not_found"),
                })
                .insert(Header {
                    key: adpipe_events::HEADER_ORPHAN_KIND,
                    value: Some("click"),
                });
            self.queue("orph", partition, &value, headers);
        }
    }

    fn queue(&self, suffix: &str, partition: i32, value: &[u8], headers: OwnedHeaders) {
        let topic = format!("{}.{suffix}", self.prefix);
        let record = BaseRecord::<(), [u8]>::to(&topic)
            .partition(partition)
            .payload(value)
            .headers(headers);
        adpipe_testkit::queue_blocking(&self.producer, record);
    }

    /// Waits until everything queued is acknowledged.
    pub fn flush(&self) {
        self.producer
            .flush(Duration::from_secs(120))
            .expect("flushed");
    }
}
