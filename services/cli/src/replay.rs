//! `adpipe replay`: moves a stopped group's position back (or forward) to a
//! point in time, an age or an offset, per topic and partition. Shows the
//! plan first and changes nothing without `--execute`; refuses while the
//! group has active members (a running instance would commit over the
//! reset). With `--postgres-url`, also resets the offsets the stats-counter
//! stores in PostgreSQL for that group — the ones it really resumes from;
//! totals of replayed records are then counted again, which is what a
//! replay after wiping (or restoring) the aggregates wants.

use std::io::Write;

use anyhow::bail;
use clap::Args;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::consume::StartAt;
use crate::groups::{self, StoredOffsets};
use crate::target::KafkaTarget;

/// Arguments of `adpipe replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub kafka: KafkaTarget,
    /// The (stopped) consumer group to move.
    #[arg(long)]
    pub group: String,
    /// Where to: `time:2026-12-02T10:00:00Z` (or epoch ms), `ago:2h`,
    /// `offset:N`, `beginning` or `end`.
    #[arg(long)]
    pub to: StartAt,
    /// Only these topics (default: every topic the group has a position on).
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Apply the plan (without it, only show it).
    #[arg(long)]
    pub execute: bool,
    /// The stats-counter's PostgreSQL: reset its stored offsets too.
    #[arg(long, env = "ADPIPE_PG_URL")]
    pub postgres_url: Option<String>,
    /// The stats-counter's schema.
    #[arg(long, default_value = "adpipe_stats")]
    pub schema: String,
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The group's position now (the stored offset when there is one).
    pub from: Option<i64>,
    /// The new position.
    pub to: i64,
}

/// Plans (and with `--execute` applies) the reset; returns the moves.
pub async fn run(args: &ReplayArgs, out: &mut dyn Write) -> anyhow::Result<Vec<Move>> {
    let bootstrap = args.kafka.bootstrap_servers()?;
    let group = &args.group;
    let active: Vec<_> = groups::groups(&bootstrap, Some(group))?
        .into_iter()
        .filter(|info| !info.members.is_empty())
        .collect();
    if let Some(info) = active.first() {
        bail!(
            "group {group} has {} active member(s) ({}); stop them first: a running instance would commit over the reset",
            info.members.len(),
            info.members.join(", ")
        );
    }
    let client = groups::client(&bootstrap, group)?;
    let mut stored = match &args.postgres_url {
        Some(url) => Some(StoredOffsets::connect(url, &args.schema).await?),
        None => None,
    };
    let stored_now = match &stored {
        Some(stored) => stored.of(group).await?,
        None => Default::default(),
    };
    let all = groups::partitions(&client, &args.topics)?;
    let committed = groups::committed(&client, &all)?;
    let partitions: Vec<_> = if args.topics.is_empty() {
        all.into_iter()
            .filter(|partition| {
                committed.contains_key(partition) || stored_now.contains_key(partition)
            })
            .collect()
    } else {
        all
    };
    if partitions.is_empty() {
        bail!("group {group} has no position on any topic; name the topics with --topic");
    }

    // Resolve the target per partition, clamped to what the log holds.
    let mut wanted = TopicPartitionList::new();
    for (topic, partition) in &partitions {
        let offset = match args.to {
            StartAt::Beginning => Offset::Beginning,
            StartAt::End => Offset::End,
            StartAt::Offset(offset) | StartAt::Time(offset) => Offset::Offset(offset),
        };
        wanted.add_partition_offset(topic, *partition, offset)?;
    }
    if let StartAt::Time(_) = args.to {
        wanted = client.offsets_for_times(wanted, std::time::Duration::from_secs(10))?;
    }
    let mut moves = Vec::new();
    for (topic, partition) in &partitions {
        let key = (topic.clone(), *partition);
        let (low, high) = groups::watermarks(&client, &key)?;
        let to = match wanted
            .find_partition(topic, *partition)
            .map(|found| found.offset())
        {
            Some(Offset::Offset(offset)) => offset.clamp(low, high),
            Some(Offset::Beginning) => low,
            // `End`, or no record at or after the time: the end.
            _ => high,
        };
        moves.push(Move {
            topic: topic.clone(),
            partition: *partition,
            from: stored_now.get(&key).or(committed.get(&key)).copied(),
            to,
        });
    }

    let target = match args.to {
        StartAt::Beginning => "the beginning".to_owned(),
        StartAt::End => "the end".to_owned(),
        StartAt::Offset(offset) => format!("offset {offset}"),
        StartAt::Time(ms) => format!(
            "the first record at or after {}",
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
            )
        ),
    };
    writeln!(out, "plan for group {group}: to {target}")?;
    writeln!(
        out,
        "{:<40} {:>4} {:>12} {:>12} {:>12}",
        "TOPIC", "PART", "FROM", "TO", "RE-READ"
    )?;
    for step in &moves {
        writeln!(
            out,
            "{:<40} {:>4} {:>12} {:>12} {:>12}",
            step.topic,
            step.partition,
            step.from
                .map_or("-".to_owned(), |offset| offset.to_string()),
            step.to,
            step.from
                .map_or("-".to_owned(), |from| (from - step.to).to_string())
        )?;
    }
    if !args.execute {
        writeln!(out, "nothing changed: run again with --execute to apply")?;
        return Ok(moves);
    }
    let mut commit = TopicPartitionList::new();
    for step in &moves {
        commit.add_partition_offset(&step.topic, step.partition, Offset::Offset(step.to))?;
    }
    client.commit(&commit, CommitMode::Sync)?;
    if let Some(stored) = &mut stored {
        let offsets: Vec<(String, i32, i64)> = moves
            .iter()
            .map(|step| (step.topic.clone(), step.partition, step.to))
            .collect();
        stored.reset(group, &offsets).await?;
        writeln!(
            out,
            "applied: the group's Kafka commits and its offsets in PostgreSQL ({}) moved",
            args.schema
        )?;
    } else {
        writeln!(out, "applied: the group's Kafka commits moved")?;
    }
    Ok(moves)
}
