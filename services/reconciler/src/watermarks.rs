//! The DCs' watermarks, from their heartbeats: what closes an hour for the
//! continuous reconciler.
//!
//! Contract: a DC's watermark is the least, over every partition of its
//! replica topics on central, of the newest heartbeat found in that
//! partition's last `scan` records (heartbeats travel in order with the
//! data through MirrorMaker 2, so it says: everything the DC published up
//! to then reached central). A partition with no heartbeat there makes the
//! DC's watermark unknown — "no heartbeat" never means "nothing happened" —
//! and an hour closes only once every DC's watermark passed its end.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::ReconcileSettings;
use crate::ledger::Kind;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The newest heartbeat in the last `scan` records of `topic`'s `partition`.
fn newest_heartbeat(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    scan: i64,
) -> anyhow::Result<Option<i64>> {
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, TIMEOUT)
        .with_context(|| format!("reading the end of {topic}-{partition}"))?;
    let start = (high - scan).max(low);
    if start >= high {
        return Ok(None);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&assignment)?;
    let mut newest = None;
    loop {
        let Some(message) = consumer.poll(TIMEOUT) else {
            anyhow::bail!("{topic}-{partition}: nothing read for {TIMEOUT:?} before its end");
        };
        let message = message?;
        if let Some(watermark) = adpipe_runtime::heartbeat::watermark(&message) {
            newest = Some(newest.map_or(watermark, |seen: i64| seen.max(watermark)));
        }
        if message.offset() + 1 >= high {
            return Ok(newest);
        }
    }
}

/// Each DC's watermark (None: unknown), from the last `scan` records of
/// each partition of its replica topics.
pub fn dc_watermarks(
    settings: &ReconcileSettings,
    scan: i64,
) -> anyhow::Result<BTreeMap<String, Option<i64>>> {
    let mut config = settings.kafka_client.client_config(&settings.bootstrap);
    config
        .set("group.id", "adpipe-reconciler-watermarks")
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create()?;
    let mut watermarks = BTreeMap::new();
    for dc in &settings.dcs {
        let mut least: Option<Option<i64>> = None;
        for kind in Kind::ALL {
            let topic = settings.topics.replica(&dc.name, kind);
            let metadata = consumer
                .fetch_metadata(Some(&topic), TIMEOUT)
                .with_context(|| format!("reading the metadata of {topic}"))?;
            for partition in metadata.topics().iter().flat_map(|meta| meta.partitions()) {
                let newest = newest_heartbeat(&consumer, &topic, partition.id(), scan)?;
                least = Some(match (least, newest) {
                    (None, newest) => newest,
                    (Some(Some(seen)), Some(newest)) => Some(seen.min(newest)),
                    _ => None,
                });
            }
        }
        watermarks.insert(dc.name.clone(), least.flatten());
    }
    Ok(watermarks)
}

/// Where the closed hours end: the least DC watermark, when every DC has
/// one.
pub fn closed_until(watermarks: &BTreeMap<String, Option<i64>>) -> Option<i64> {
    watermarks
        .values()
        .copied()
        .collect::<Option<Vec<i64>>>()?
        .into_iter()
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_close_at_the_slowest_dc_and_not_at_all_while_one_is_unknown() {
        let known = BTreeMap::from([("dc1".to_owned(), Some(500)), ("dc2".to_owned(), Some(300))]);
        assert_eq!(closed_until(&known), Some(300));
        let unknown = BTreeMap::from([("dc1".to_owned(), Some(500)), ("dc2".to_owned(), None)]);
        assert_eq!(closed_until(&unknown), None);
    }
}
