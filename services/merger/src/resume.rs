//! Where a restarted merge task resumes: after the last source offset of
//! each DC already in its output partition.
//!
//! Contract: a task emits each DC's records in that DC's offset order into
//! one output partition (one producer, idempotent, in order), with the
//! origin DC and source offset in headers. So if the output holds source
//! offset X of a DC, it holds every earlier record of that DC the task
//! merged, and after a crash the records up to X need not be merged again,
//! though the group's commit may be older. Reading is bounded
//! (`resume-scan` records from the tail); a DC not found there resumes at
//! the commit, as without this.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::{HEADER_ORIGIN_DC, HEADER_SOURCE_OFFSET};

/// Records read per step backwards from the tail.
const CHUNK: i64 = 10_000;

/// The last source offset of each DC in `output`'s `partition`, reading at
/// most `limit` records from its end (blocking IO).
pub fn last_source_offsets(
    bootstrap: &str,
    output: &str,
    partition: i32,
    dcs: &[String],
    limit: u64,
) -> Result<HashMap<String, i64>, rdkafka::error::KafkaError> {
    let mut found: HashMap<String, i64> = HashMap::new();
    if limit == 0 {
        return Ok(found);
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.auto.commit", "false")
        .set("group.id", "adpipe-merger-resume")
        .set("queued.max.messages.kbytes", "4096")
        .create()?;
    let (low, high) = consumer.fetch_watermarks(output, partition, Duration::from_secs(30))?;
    let floor = high
        .saturating_sub(i64::try_from(limit).unwrap_or(i64::MAX))
        .max(low);
    let mut end = high;
    while end > floor && found.len() < dcs.len() {
        let start = end.saturating_sub(CHUNK).max(floor);
        let mut chunk: HashMap<String, i64> = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(output, partition, Offset::Offset(start))?;
        consumer.assign(&assignment)?;
        loop {
            let Some(result) = consumer.poll(Duration::from_secs(30)) else {
                return Err(rdkafka::error::KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                ));
            };
            let message = result?;
            if message.offset() >= end {
                break;
            }
            if let Some((dc, offset)) = origin(&message)
                && !found.contains_key(dc)
            {
                let entry = chunk.entry(dc.to_owned()).or_insert(offset);
                *entry = (*entry).max(offset);
            }
            if message.offset() + 1 >= end {
                break;
            }
        }
        for (dc, offset) in chunk {
            found.entry(dc).or_insert(offset);
        }
        end = start;
    }
    found.retain(|dc, _| dcs.contains(dc));
    Ok(found)
}

fn origin<'a>(message: &'a rdkafka::message::BorrowedMessage<'_>) -> Option<(&'a str, i64)> {
    let headers = message.headers()?;
    let mut dc = None;
    let mut offset = None;
    for header in headers.iter() {
        match header.key {
            HEADER_ORIGIN_DC => {
                dc = header
                    .value
                    .and_then(|value| std::str::from_utf8(value).ok())
            }
            HEADER_SOURCE_OFFSET => {
                offset = header
                    .value
                    .and_then(|value| std::str::from_utf8(value).ok())
                    .and_then(|text| text.parse().ok());
            }
            _ => {}
        }
    }
    Some((dc?, offset?))
}
