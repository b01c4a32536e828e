//! Shared by the merger's tests: DC topics on the real dc1 and dc2
//! clusters (replicated to central by the real MirrorMaker 2 that
//! `infra/mirrormaker.sh` runs), a registry, bidders, heartbeats, merger
//! configs, and a reader of the merged output.
#![allow(dead_code)] // each test binary uses part of it

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adpipe_codec::{Codec, RegistryClient};
use adpipe_loadtest::Publication;
use adpipe_loadtest::bidders::{Bidders, DcCluster};
use adpipe_loadtest::pace::Pacer;
use adpipe_merger::{HEADER_LATENESS, HEADER_ORIGIN_DC, HEADER_SOURCE_OFFSET, MergerSettings};
use adpipe_runtime::heartbeat::{HeartbeatPublisher, HeartbeatSettings};
use adpipe_schema_registry::{RegistrySettings, RunningRegistry};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

pub const KINDS: [&str; 3] = ["impressions", "clicks", "conversions"];
pub const DCS: [&str; 2] = ["dc1", "dc2"];

/// One merged record, as read back.
#[derive(Debug, Clone)]
pub struct Merged {
    pub topic: String,
    pub partition: i32,
    pub dc: String,
    pub source_offset: i64,
    pub lateness_ms: Option<i64>,
    pub event_id: String,
    pub event_time: i64,
}

#[derive(serde::Deserialize)]
struct Identity {
    event_id: String,
    event_time: i64,
}

pub struct Rig {
    pub prefix: String,
    pub central: String,
    pub dcs: Vec<DcCluster>,
    pub registry: RunningRegistry,
    pub codec: Arc<Codec>,
    pub bidders: Bidders,
    pub partitions: i32,
    heartbeats: Vec<HeartbeatPublisher>,
}

impl Rig {
    /// DC topics `<prefix>.<kind>` on dc1 and dc2 (MirrorMaker 2 copies them
    /// to central as `<dc>.<prefix>.<kind>`), the merged topics and the DLQ
    /// on central, and a registry.
    pub async fn new(name: &str, partitions: i32) -> Rig {
        Self::build(name, partitions, true).await
    }

    /// A rig for tests that write the replicas on central themselves: no DC
    /// topics, so MirrorMaker 2 (running during `infra/test-all.sh`) never
    /// races the test to create a replica.
    pub async fn central_only(name: &str, partitions: i32) -> Rig {
        Self::build(name, partitions, false).await
    }

    async fn build(name: &str, partitions: i32, dc_topics: bool) -> Rig {
        let central = adpipe_testkit::kafka("central");
        let prefix = adpipe_testkit::unique(name);
        let dcs: Vec<DcCluster> = DCS
            .iter()
            .map(|dc| DcCluster {
                dc: (*dc).to_owned(),
                bootstrap: adpipe_testkit::kafka(dc),
            })
            .collect();
        for cluster in dcs.iter().filter(|_| dc_topics) {
            let names = KINDS.map(|kind| format!("{prefix}.{kind}"));
            let specs: Vec<adpipe_testkit::TopicSpec<'_>> = names
                .iter()
                .map(|name| (name.as_str(), partitions, &[][..]))
                .collect();
            adpipe_testkit::create_topics(&cluster.bootstrap, &specs).await;
        }
        let merged = KINDS.map(|kind| format!("{prefix}.merged.{kind}"));
        let dlq = format!("{prefix}.dlq");
        let mut specs: Vec<adpipe_testkit::TopicSpec<'_>> = merged
            .iter()
            .map(|name| (name.as_str(), partitions, &[][..]))
            .collect();
        specs.push((&dlq, 1, &[]));
        adpipe_testkit::create_topics(&central, &specs).await;
        let registry = adpipe_schema_registry::start(RegistrySettings::local(
            &central,
            &format!("{prefix}._schemas"),
        ))
        .await
        .expect("registry");
        let codec = Arc::new(Codec::new(
            RegistryClient::new(&registry.url()).expect("client"),
        ));
        let bidders = Bidders::new(&codec, &dcs, |kind| {
            format!("{prefix}.{}-value", kind.plural())
        })
        .await
        .expect("bidders");
        Rig {
            prefix,
            central,
            dcs,
            registry,
            codec,
            bidders,
            partitions,
            heartbeats: Vec::new(),
        }
    }

    /// Starts each DC's heartbeat publisher for this rig's DC topics.
    pub fn start_heartbeats(&mut self, grace: Duration) {
        for cluster in &self.dcs {
            self.heartbeats.push(
                HeartbeatPublisher::start(HeartbeatSettings {
                    bootstrap_servers: cluster.bootstrap.clone(),
                    topics: KINDS.iter().map(|kind| self.dc_topic(kind)).collect(),
                    interval: Duration::from_millis(500),
                    grace,
                })
                .expect("heartbeats"),
            );
        }
    }

    pub fn stop_heartbeats(&mut self) {
        for publisher in self.heartbeats.drain(..) {
            publisher.stop();
        }
    }

    pub fn dc_topic(&self, kind: &str) -> String {
        format!("{}.{kind}", self.prefix)
    }

    /// A DC topic's replica on central.
    pub fn replica(&self, dc: &str, kind: &str) -> String {
        format!("{dc}.{}.{kind}", self.prefix)
    }

    pub fn merged(&self, kind: &str) -> String {
        format!("{}.merged.{kind}", self.prefix)
    }

    pub fn group(&self) -> String {
        format!("{}-merger", self.prefix)
    }

    /// Waits until MirrorMaker 2 created every replica on central.
    pub fn wait_for_replicas(&self, within: Duration) {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.central)
            .create()
            .expect("client");
        let wanted: Vec<String> = DCS
            .iter()
            .flat_map(|dc| KINDS.map(|kind| self.replica(dc, kind)))
            .collect();
        let deadline = Instant::now() + within;
        loop {
            let metadata = client
                .fetch_metadata(None, Duration::from_secs(10))
                .expect("metadata");
            let missing: Vec<&String> = wanted
                .iter()
                .filter(|topic| {
                    !metadata.topics().iter().any(|found| {
                        found.name() == topic.as_str()
                            && found.partitions().len() == self.partitions as usize
                    })
                })
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "MirrorMaker 2 has not created {missing:?} (is infra/mirrormaker.sh running?)"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Creates the replicas on central directly (tests without MirrorMaker 2).
    pub async fn create_replicas(&self) {
        let names: Vec<String> = DCS
            .iter()
            .flat_map(|dc| KINDS.map(|kind| self.replica(dc, kind)))
            .collect();
        let specs: Vec<adpipe_testkit::TopicSpec<'_>> = names
            .iter()
            .map(|name| (name.as_str(), self.partitions, &[][..]))
            .collect();
        adpipe_testkit::create_topics(&self.central, &specs).await;
    }

    /// A merger config for this rig, with `extra` TOML in `[runtime]` and
    /// `merger_extra` in `[merger]`.
    pub fn write_config(&self, extra: &str, merger_extra: &str) -> PathBuf {
        let prefix = &self.prefix;
        let config = format!(
            r#"
[kafka]
bootstrap-servers = "{central}"
group-id = "{group}"
session-timeout = "6s"
[registry]
url = "{registry}"
[runtime]
dead-letter-topic = "{prefix}.dlq"
commit-interval = "200ms"
revoke-deadline = "3s"
{extra}
[http]
listen = "127.0.0.1:0"
[merger]
dcs = ["dc1", "dc2"]
input = "{{dc}}.{prefix}.{{kind}}"
output = "{prefix}.merged.{{kind}}"
{merger_extra}
"#,
            central = self.central,
            group = self.group(),
            registry = self.registry.url(),
        );
        let path = std::env::temp_dir().join(format!("{}.toml", adpipe_testkit::unique(prefix)));
        std::fs::write(&path, config).expect("config written");
        path
    }

    pub fn settings(&self, extra: &str) -> MergerSettings {
        MergerSettings::load(Some(&self.write_config(extra, "")), std::iter::empty())
            .expect("valid settings")
    }

    /// Publishes each publication to its DC's topic of its kind, paced at
    /// `rate` per second (0: as fast as possible), and waits for the acks.
    /// Blocking.
    pub fn publish(&self, publications: &[Publication], rate: f64) {
        let mut pacer = Pacer::new(Some(rate));
        for publication in publications {
            pacer.wait_turn();
            self.bidders
                .publish(
                    publication,
                    &self.dc_topic(publication.event.kind().plural()),
                )
                .expect("published");
        }
        self.bidders
            .flush(Duration::from_secs(300))
            .expect("flushed");
    }

    /// Every merged record of every kind. Blocking.
    pub fn read_merged(&self, runtime: &tokio::runtime::Handle) -> Vec<Merged> {
        let mut merged = Vec::new();
        for kind in KINDS {
            let topic = self.merged(kind);
            adpipe_testkit::for_each_record(&self.central, &topic, |message| {
                let header = |name: &str| {
                    message.headers().and_then(|headers| {
                        headers
                            .iter()
                            .find(|header| header.key == name)
                            .and_then(|header| header.value)
                            .map(|value| String::from_utf8_lossy(value).into_owned())
                    })
                };
                let payload = message.payload().unwrap_or_default();
                let (schema_id, datum) = adpipe_codec::split_header(payload).expect("framed");
                let writer = runtime
                    .block_on(self.codec.writer_schema(schema_id))
                    .expect("schema");
                let identity: Identity = writer.decode_datum(datum).expect("decodes");
                merged.push(Merged {
                    topic: topic.clone(),
                    partition: message.partition(),
                    dc: header(HEADER_ORIGIN_DC).unwrap_or_default(),
                    source_offset: header(HEADER_SOURCE_OFFSET)
                        .and_then(|text| text.parse().ok())
                        .unwrap_or(-1),
                    lateness_ms: header(HEADER_LATENESS).and_then(|text| text.parse().ok()),
                    event_id: identity.event_id,
                    event_time: identity.event_time,
                });
            });
        }
        merged
    }

    /// Waits until the merged topics hold at least `count` records.
    pub fn wait_for_merged(&self, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let have: i64 = KINDS
                .iter()
                .map(|kind| {
                    end_offsets(&self.central, &self.merged(kind))
                        .iter()
                        .sum::<i64>()
                })
                .sum();
            if have as usize >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "merged topics hold {have} of {count} records after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until the group committed every replica to its end.
    pub fn wait_committed_to_end(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for dc in DCS {
            for kind in KINDS {
                let topic = self.replica(dc, kind);
                while !adpipe_testkit::committed_to_end(&self.central, &self.group(), &topic) {
                    assert!(
                        Instant::now() < deadline,
                        "{topic} not committed to its end"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

/// Starts the real `adpipe-merger` binary with `config`, serving its
/// metrics on `listen`.
pub fn spawn_merger(config: &std::path::Path, listen: std::net::SocketAddr) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_adpipe-merger"))
        .arg("--config")
        .arg(config)
        .env("ADPIPE__HTTP__LISTEN", listen.to_string())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("merger starts")
}

/// Publications of a live simulation in both DCs (event times follow the
/// wall clock at `rate`; no duplicates, so each DC's stream is in order).
pub fn live_publications(impressions: u64, rate: f64) -> Vec<Publication> {
    let mut simulation = adpipe_loadtest::Simulation {
        impressions,
        duplicate_rate: 0.0,
        ..adpipe_loadtest::Simulation::default()
    };
    simulation.follow_wall_clock(adpipe_runtime::event_time::now_ms(), rate);
    simulation.generate().0
}

/// The dead-letter reasons in `topic`, in order.
pub fn dead_letter_reasons(bootstrap: &str, topic: &str) -> Vec<String> {
    adpipe_testkit::read_all(bootstrap, topic)
        .iter()
        .map(|record| adpipe_testkit::header_text(record, "adpipe.dlq.reason").unwrap_or_default())
        .collect()
}

/// The end offset of every partition of `topic`.
pub fn end_offsets(bootstrap: &str, topic: &str) -> Vec<i64> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("client");
    let partitions = adpipe_testkit::partition_count(&client, topic);
    (0..partitions)
        .map(|partition| {
            client
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .map_or(0, |(_, high)| high)
        })
        .collect()
}

/// How often each (DC, event id) was published.
pub fn published_counts(publications: &[Publication]) -> HashMap<(String, String), usize> {
    let mut counts = HashMap::new();
    for publication in publications {
        *counts
            .entry((
                publication.dc.clone(),
                publication.event.event_id().to_owned(),
            ))
            .or_default() += 1;
    }
    counts
}

/// How often each (DC, event id) was merged.
pub fn merged_counts(merged: &[Merged]) -> HashMap<(String, String), usize> {
    let mut counts = HashMap::new();
    for record in merged {
        *counts
            .entry((record.dc.clone(), record.event_id.clone()))
            .or_default() += 1;
    }
    counts
}
