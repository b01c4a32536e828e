//! `adpipe lag`: per group and partition, the committed offset, the end,
//! the lag in records and in seconds (now − the timestamp of the next
//! record to consume) — for every group at once, like Kafka's
//! consumer-groups tool. With `--postgres-url`, a group whose offsets the
//! stats-counter stores in PostgreSQL is measured from those (its real
//! position), the Kafka commit shown beside them.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::groups::{self, Partition, StoredOffsets};
use crate::target::KafkaTarget;

/// Arguments of `adpipe lag`.
#[derive(Args, Debug)]
pub struct LagArgs {
    #[command(flatten)]
    pub kafka: KafkaTarget,
    /// Only this group (default: every group on the cluster).
    #[arg(long)]
    pub group: Option<String>,
    /// The stats-counter's PostgreSQL: its groups' stored offsets count.
    #[arg(long, env = "ADPIPE_PG_URL")]
    pub postgres_url: Option<String>,
    /// The stats-counter's schema.
    #[arg(long, default_value = "adpipe_stats")]
    pub schema: String,
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct LagRow {
    /// Group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The Kafka group's committed offset.
    pub committed: Option<i64>,
    /// The offset stored in PostgreSQL, for the stats-counter's groups.
    pub stored: Option<i64>,
    /// The partition's end (high watermark).
    pub end: i64,
    /// Records not yet consumed (from the stored offset when there is one).
    pub lag: i64,
    /// Age of the next record to consume, seconds (0 without lag).
    pub lag_seconds: f64,
}

/// Measures every group (or `args.group`) and prints the table; returns the rows.
pub async fn run(args: &LagArgs, out: &mut dyn Write) -> anyhow::Result<Vec<LagRow>> {
    let bootstrap = args.kafka.bootstrap_servers()?;
    let stored = match &args.postgres_url {
        Some(url) => Some(StoredOffsets::connect(url, &args.schema).await?),
        None => None,
    };
    let mut rows = Vec::new();
    let all_groups = groups::groups(&bootstrap, args.group.as_deref())?;
    // Every partition of the cluster, read once for all groups.
    let partitions = groups::partitions(&groups::client(&bootstrap, "adpipe-cli")?, &[])?;
    for group in &all_groups {
        let client = groups::client(&bootstrap, &group.name)?;
        let committed = groups::committed(&client, &partitions)?;
        let stored = match &stored {
            Some(stored) => stored.of(&group.name).await?,
            None => BTreeMap::new(),
        };
        let mut positions: Vec<Partition> =
            committed.keys().chain(stored.keys()).cloned().collect();
        positions.sort();
        positions.dedup();
        let mut group_rows = Vec::new();
        for partition in positions {
            let (_, end) = groups::watermarks(&client, &partition)?;
            let (committed, stored) = (
                committed.get(&partition).copied(),
                stored.get(&partition).copied(),
            );
            let at = stored.or(committed).unwrap_or(end);
            group_rows.push(LagRow {
                group: group.name.clone(),
                topic: partition.0,
                partition: partition.1,
                committed,
                stored,
                end,
                lag: (end - at).max(0),
                lag_seconds: 0.0,
            });
        }
        lag_seconds(&bootstrap, &mut group_rows)?;
        rows.extend(group_rows);
    }
    writeln!(
        out,
        "{:<32} {:<40} {:>4} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "GROUP", "TOPIC", "PART", "COMMITTED", "STORED", "END", "LAG", "LAG-S"
    )?;
    for row in &rows {
        let show = |offset: Option<i64>| offset.map_or("-".to_owned(), |offset| offset.to_string());
        writeln!(
            out,
            "{:<32} {:<40} {:>4} {:>12} {:>12} {:>12} {:>10} {:>10.1}",
            row.group,
            row.topic,
            row.partition,
            show(row.committed),
            show(row.stored),
            row.end,
            row.lag,
            row.lag_seconds
        )?;
    }
    for group in &all_groups {
        writeln!(
            out,
            "group {}: {} ({} member(s){})",
            group.name,
            group.state,
            group.members.len(),
            if group.members.is_empty() {
                String::new()
            } else {
                format!(": {}", group.members.join(", "))
            }
        )?;
    }
    Ok(rows)
}

/// Fills in each lagging row's age: now − the timestamp of the record at
/// its position (read with one assignment for all of them, up to 10 s).
fn lag_seconds(bootstrap: &str, rows: &mut [LagRow]) -> anyhow::Result<()> {
    let lagging: Vec<usize> = (0..rows.len())
        .filter(|&index| rows[index].lag > 0)
        .collect();
    if lagging.is_empty() {
        return Ok(());
    }
    let reader: BaseConsumer = adpipe_kafka_client::env_client_config(bootstrap)
        .set("group.id", "adpipe-cli-lag")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut list = TopicPartitionList::new();
    for &index in &lagging {
        let row = &rows[index];
        let at = row.stored.or(row.committed).unwrap_or(row.end);
        list.add_partition_offset(&row.topic, row.partition, Offset::Offset(at))?;
    }
    reader.assign(&list)?;
    let now = adpipe_runtime::event_time::now_ms();
    let mut missing = lagging.len();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while missing > 0 && std::time::Instant::now() < deadline {
        let Some(Ok(message)) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Some(timestamp) = message.timestamp().to_millis() else {
            continue;
        };
        if let Some(&index) = lagging.iter().find(|&&index| {
            rows[index].topic == message.topic()
                && rows[index].partition == message.partition()
                && rows[index].lag_seconds == 0.0
        }) {
            rows[index].lag_seconds = ((now - timestamp).max(0) as f64 / 1000.0).max(0.001);
            missing -= 1;
            // This partition is measured: stop fetching it.
            let mut done = TopicPartitionList::new();
            done.add_partition(message.topic(), message.partition());
            let _ = reader.pause(&done);
        }
    }
    Ok(())
}
