//! What `adpipe lag` and `adpipe replay` read about consumer groups: their
//! members, their committed offsets (per partition of every topic they
//! have one on), the partitions' ends, and the offsets the stats-counter
//! stores in PostgreSQL beside its aggregates (its real position: it never
//! resumes from the Kafka commit).
//!
//! Blocking calls (librdkafka's group and offset requests); fine in a CLI.

use std::collections::BTreeMap;
use std::time::Duration;

use adpipe_stats_counter::PgStore;
use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A (topic, partition).
pub type Partition = (String, i32);

/// A consumer group as the broker describes it.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    /// Group id.
    pub name: String,
    /// `Stable`, `Empty`, `PreparingRebalance`, …
    pub state: String,
    /// Its members' client ids (and hosts).
    pub members: Vec<String>,
}

/// A client of the CLI that knows when the cluster refused it.
pub type GroupClient = BaseConsumer<adpipe_kafka_client::RefusalWatch>;

/// A client for `group` (never subscribes: reads and commits offsets only).
pub fn client(bootstrap: &str, group: &str) -> anyhow::Result<GroupClient> {
    adpipe_kafka_client::env_client_config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create_with_context(adpipe_kafka_client::RefusalWatch::default())
        .context("creating a Kafka client")
}

/// `error` of a request by `client`, named as the cluster's refusal when
/// it refused the client (a wrong password times requests out; librdkafka
/// says why only in an error event, served by a poll).
pub fn explain(
    client: &GroupClient,
    error: rdkafka::error::KafkaError,
    doing: &str,
) -> anyhow::Error {
    match adpipe_kafka_client::refusal_after(client) {
        Some(refusal) => anyhow::anyhow!(
            "{doing}: Kafka refused the connection, check ADPIPE__KAFKA__SECURITY__… (protocol, mechanism, user, password, CA): {refusal}"
        ),
        None => anyhow::Error::new(error).context(doing.to_owned()),
    }
}

/// Every group on the cluster (or just `only`), with members.
pub fn groups(bootstrap: &str, only: Option<&str>) -> anyhow::Result<Vec<GroupInfo>> {
    let client = client(bootstrap, "adpipe-cli")?;
    let list = client
        .fetch_group_list(only, TIMEOUT)
        .map_err(|error| explain(&client, error, "listing consumer groups"))?;
    let mut groups: Vec<GroupInfo> = list
        .groups()
        .iter()
        .filter(|group| group.protocol_type() == "consumer" || group.protocol_type().is_empty())
        .map(|group| GroupInfo {
            name: group.name().to_owned(),
            state: group.state().to_owned(),
            members: group
                .members()
                .iter()
                .map(|member| format!("{}@{}", member.client_id(), member.client_host()))
                .collect(),
        })
        .collect();
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(groups)
}

/// Every partition of every topic (internal ones left out), or of `topics`.
pub fn partitions(client: &GroupClient, topics: &[String]) -> anyhow::Result<Vec<Partition>> {
    let metadata = client
        .fetch_metadata(None, TIMEOUT)
        .map_err(|error| explain(client, error, "reading the cluster's topics"))?;
    let mut partitions = Vec::new();
    for topic in metadata.topics() {
        let name = topic.name();
        let wanted = if topics.is_empty() {
            !name.starts_with("__")
        } else {
            topics.iter().any(|wanted| wanted == name)
        };
        if wanted {
            partitions.extend(
                topic
                    .partitions()
                    .iter()
                    .map(|partition| (name.to_owned(), partition.id())),
            );
        }
    }
    for topic in topics {
        anyhow::ensure!(
            partitions.iter().any(|(name, _)| name == topic),
            "no topic {topic:?} on the cluster"
        );
    }
    partitions.sort();
    Ok(partitions)
}

/// The committed offset of `client`'s group on each of `partitions` that
/// has one.
pub fn committed(
    client: &GroupClient,
    partitions: &[Partition],
) -> anyhow::Result<BTreeMap<Partition, i64>> {
    let mut list = TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition(topic, *partition);
    }
    let committed = client
        .committed_offsets(list, TIMEOUT)
        .context("reading the group's committed offsets")?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => {
                Some(((element.topic().to_owned(), element.partition()), offset))
            }
            _ => None,
        })
        .collect())
}

/// The (low, high) watermarks of a partition.
pub fn watermarks(
    client: &GroupClient,
    (topic, partition): &Partition,
) -> anyhow::Result<(i64, i64)> {
    client
        .fetch_watermarks(topic, *partition, TIMEOUT)
        .with_context(|| format!("reading the end of {topic}-{partition}"))
}

/// Where the stats-counter's groups stand in PostgreSQL.
pub struct StoredOffsets {
    store: PgStore,
    schema: String,
}

impl StoredOffsets {
    /// Connects to the stats-counter's `schema` at `url`.
    pub async fn connect(url: &str, schema: &str) -> anyhow::Result<StoredOffsets> {
        let store = PgStore::connect(url, schema)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
        Ok(StoredOffsets {
            store,
            schema: schema.to_owned(),
        })
    }

    /// Every offset stored for `group`.
    pub async fn of(&self, group: &str) -> anyhow::Result<BTreeMap<Partition, i64>> {
        Ok(self
            .store
            .group_offsets(group)
            .await
            .with_context(|| {
                format!(
                    "reading the stored offsets in schema {} (the stats-counter's, made at its first start; name it with --schema)",
                    self.schema
                )
            })?
            .into_iter()
            .map(|(topic, partition, offset)| ((topic, partition), offset))
            .collect())
    }

    /// Stores `offsets` for `group` (the group is stopped).
    pub async fn reset(
        &mut self,
        group: &str,
        offsets: &[(String, i32, i64)],
    ) -> anyhow::Result<()> {
        self.store
            .reset_offsets(group, offsets)
            .await
            .context("resetting the stored offsets")
    }
}
