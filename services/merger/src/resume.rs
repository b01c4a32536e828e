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
use std::ops::ControlFlow;

use adpipe_runtime::emitted::read_back;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Headers, Message, OwnedMessage};

use crate::{HEADER_ORIGIN_DC, HEADER_SOURCE_OFFSET};

/// The last source offset of each DC in `output`'s `partition`, reading at
/// most `limit` records from its end (blocking IO).
pub fn last_source_offsets(
    kafka: &adpipe_runtime::config::KafkaConfig,
    output: &str,
    partition: i32,
    dcs: &[String],
    limit: u64,
) -> Result<HashMap<String, i64>, rdkafka::error::KafkaError> {
    let mut found: HashMap<String, i64> = HashMap::new();
    if limit == 0 {
        return Ok(found);
    }
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("enable.auto.commit", "false")
        .set("group.id", "adpipe-merger-resume")
        .set("queued.max.messages.kbytes", "4096")
        .create()?;
    read_back(&consumer, output, partition, limit, |chunk| {
        // The newest chunk holding a DC has its last offset.
        let mut in_chunk: HashMap<String, i64> = HashMap::new();
        for (dc, offset) in chunk.iter().filter_map(origin) {
            if !found.contains_key(dc) {
                let entry = in_chunk.entry(dc.to_owned()).or_insert(offset);
                *entry = (*entry).max(offset);
            }
        }
        found.extend(in_chunk);
        if dcs.iter().all(|dc| found.contains_key(dc)) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    found.retain(|dc, _| dcs.contains(dc));
    Ok(found)
}

fn origin(message: &OwnedMessage) -> Option<(&str, i64)> {
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
