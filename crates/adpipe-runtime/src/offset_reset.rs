//! Records the broker deleted before this service read them.
//!
//! Contract: when a partition's next record no longer exists on the broker
//! (retention, or `DeleteRecords`, removed it while the service was behind
//! or down), librdkafka's fetch fails "out of range", and the consumer
//! jumps to the partition's new start (`auto.offset.reset = earliest`)
//! saying so only in a log line. Those records are lost to the service; the
//! runtime cannot bring them back, but it never hides them:
//! - [`OffsetReset::parse`] reads that log line (the only place librdkafka
//!   reports it) into the partition and the offset the fetch failed at;
//! - the consumer resolves the range once it knows where the partition
//!   starts now — the first record after the reset, or, when none follows,
//!   the log start offset in the statistics — and [`report_deleted`] counts
//!   it (`adpipe_records_deleted_unread_total`) and logs it as an error;
//!   the range starts at the group's commit at the latest, so a service
//!   that stores its own offsets, restarted below a loss already counted,
//!   does not count it again;
//! - when no record follows, the commit still moves to the new start, so
//!   the group's lag stays true (before, the partition showed the deleted
//!   records as lag for ever, which looked like a stalled consumer).
//!
//! A reset that moves backwards (a committed offset past the log's end:
//! the topic was recreated or truncated) is not counted: nothing was
//! deleted unread. Note that a worker which keeps running fences offsets
//! at or below those it already took (`OffsetTracker::register`), so a
//! recreated topic is read again from its start only after a restart.

use tracing::error;

use crate::telemetry::Metric;

/// librdkafka's word for the failed fetch (`rd_kafka_err2str` of
/// `OFFSET_OUT_OF_RANGE`), in its `OFFSET` log line.
const OUT_OF_RANGE: &str = "Offset out of range";

/// A fetch that failed out of range, after which librdkafka moved the
/// partition to its new start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetReset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The offset the fetch wanted: the first record the service missed.
    pub at: i64,
}

impl OffsetReset {
    /// Reads librdkafka's log line `[thrd:main]: <topic> [<partition>]:
    /// offset reset (at offset <n> …) to …: Broker: Offset out of range`
    /// (facility `OFFSET`); `None` for any other line, and for a reset that
    /// had no offset yet.
    pub fn parse(facility: &str, message: &str) -> Option<OffsetReset> {
        if facility != "OFFSET" || !message.contains(OUT_OF_RANGE) {
            return None;
        }
        // The line starts with the thread that logged it, `[thrd:main]: `.
        let message = match message.strip_prefix("[thrd:") {
            Some(rest) => rest.split_once("]: ")?.1,
            None => message,
        };
        // Topic names cannot hold " [" (only [a-zA-Z0-9._-]).
        let (topic, rest) = message.split_once(" [")?;
        let (partition, rest) = rest.split_once(']')?;
        let (_, at) = rest.split_once("offset reset (at offset ")?;
        let at = at.split(|c: char| !c.is_ascii_digit()).next()?;
        Some(OffsetReset {
            topic: topic.to_owned(),
            partition: partition.parse().ok()?,
            at: at.parse().ok()?,
        })
    }
}

/// The partition's count of offsets deleted unread (created at 0 when the
/// partition is assigned, so `increase()` sees the first loss).
pub fn deleted_counter(service: &str, topic: &str, partition: i32) -> metrics::Counter {
    metrics::counter!(
        Metric::RecordsDeletedUnread.name(),
        "service" => service.to_owned(),
        "topic" => topic.to_owned(),
        "partition" => partition.to_string()
    )
}

/// Counts and reports offsets `from..to` of a partition as deleted before
/// they were read (nothing when the range is empty).
pub fn report_deleted(service: &str, topic: &str, partition: i32, from: i64, to: i64) {
    let Ok(count) = u64::try_from(to - from) else {
        return;
    };
    if count == 0 {
        return;
    }
    deleted_counter(service, topic, partition).increment(count);
    error!(
        service,
        topic,
        partition,
        from,
        to,
        count,
        "records were deleted from the broker (retention or DeleteRecords) before this service read them: they are lost to it; going on from the partition's new start"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line librdkafka 2.12 wrote when retention deleted a segment a
    /// deduplicator had not read yet (the chain benchmark, 2026-12-06).
    const SEEN: &str = "[thrd:main]: bench-da6e782f.adpipe2.merged.impressions [5]: offset reset (at offset 145459 (leader epoch 0), broker 1) to offset BEGINNING (leader epoch -1): fetch failed due to requested offset not available on the broker: Broker: Offset out of range";

    #[test]
    fn an_out_of_range_reset_names_its_partition_and_the_first_missed_offset() {
        assert_eq!(
            OffsetReset::parse("OFFSET", SEEN),
            Some(OffsetReset {
                topic: "bench-da6e782f.adpipe2.merged.impressions".to_owned(),
                partition: 5,
                at: 145_459,
            })
        );
    }

    #[test]
    fn other_offset_lines_and_resets_without_an_offset_are_not_losses() {
        assert_eq!(OffsetReset::parse("FETCH", SEEN), None);
        let no_commit = "t [0]: offset reset (at offset INVALID (leader epoch -1), broker -1) to offset BEGINNING (leader epoch -1): no previously committed offset available: Local: No offset stored";
        assert_eq!(OffsetReset::parse("OFFSET", no_commit), None);
        let invalid = "t [0]: offset reset (at offset INVALID, broker 1) to offset BEGINNING: fetch failed: Broker: Offset out of range";
        assert_eq!(OffsetReset::parse("OFFSET", invalid), None);
    }
}
