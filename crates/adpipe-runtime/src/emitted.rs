//! What a task already emitted for input records it is about to read again:
//! how a restarted stateful step avoids re-emitting after a kill -9.
//!
//! Contract: a step that uses this stamps every output with
//! [`HEADER_INPUT`] (`<input topic>@<offset>`, via [`stamped`]) and writes
//! partition i of its inputs to partition i of its outputs. A task reads
//! its inputs again from the group's committed offsets, so the outputs of
//! records at or after those offsets may already be in the output topics
//! (acknowledged, but the input not yet committed when the process died).
//! [`already_emitted`] reads each output partition backwards from its end,
//! and collects the outputs whose input offset is at or after its input's
//! commit; the step then [`takes`](AlreadyEmitted::take) each replayed
//! record's earlier output instead of emitting it again (and still writes
//! the state that output implies), counting it in
//! `adpipe_records_skipped_on_resume_total` (`Metric::RecordsSkippedOnResume`).
//!
//! Where the backwards read stops: outputs are emitted in input-offset order
//! per input, except for records a step held (they come out up to the hold
//! time later). So once an output of input I below I's commit is found,
//! stamped at time t, no output of I at or after the commit can be older
//! than `t - hold - slack`: reading goes on past that time, then stops
//! (for every input the caller says feeds that output). With no bound on
//! the hold, or an input never seen, it reads `limit` records at most.
//! Output timestamps must be the producer's (wall clock), not event times.
//! A record it misses is emitted twice — never lost.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::WorkerSettings;
use crate::headers::Headers;
use crate::step::InputRecord;

/// The header naming the input record an output came from:
/// `<input topic>@<offset>`.
pub const HEADER_INPUT: &str = "adpipe.input";

/// Records read per step backwards from the tail.
const CHUNK: i64 = 10_000;

/// How long a single broker request of the scan may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Between processing a record and its output's timestamp (producer queue,
/// retries): added to the hold when deciding where to stop.
const SLACK_MS: i64 = 10_000;

/// `headers` with [`HEADER_INPUT`] set to `record`'s coordinates (an
/// upstream stage's is replaced).
pub fn stamped(headers: &Headers, record: &InputRecord<'_>) -> Headers {
    headers.replaced(HEADER_INPUT, format!("{}@{}", record.topic, record.offset))
}

/// An input record's coordinates from a [`HEADER_INPUT`] value.
pub fn parse_input(value: &[u8]) -> Option<(&str, i64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (topic, offset) = text.rsplit_once('@')?;
    Some((topic, offset.parse().ok()?))
}

/// How far back to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanBounds {
    /// At most this many records per output partition (0: no scan).
    pub limit: u64,
    /// How long after a record is processed its output may come at most
    /// (ms, wall clock): 0 for a step that never holds; `None` when
    /// unbounded (then `limit` alone bounds the scan).
    pub hold_ms: Option<i64>,
}

/// An output topic and which of the task's inputs (indices into its input
/// topics) write to it.
#[derive(Debug, Clone)]
pub struct FedBy<'a> {
    /// The output topic (its partition = the task's partition).
    pub topic: &'a str,
    /// The inputs whose records emit to it.
    pub inputs: &'a [usize],
}

/// An output found in the scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierOutput {
    /// The topic it is in.
    pub topic: String,
    /// Its value.
    pub value: Option<Vec<u8>>,
}

/// The outputs a task's records at or after the committed offsets already
/// have, by (input index, input offset).
#[derive(Debug, Default)]
pub struct AlreadyEmitted {
    found: HashMap<(usize, i64), EarlierOutput>,
    /// Per input, the highest offset found (past it, nothing is left).
    highest: HashMap<usize, i64>,
}

impl AlreadyEmitted {
    /// Nothing emitted (a fresh task, or the scan switched off).
    pub fn none() -> Self {
        AlreadyEmitted::default()
    }

    /// These with the output of input `input`'s record at `offset` added
    /// (what a scan finds; for tests of a step).
    #[must_use]
    pub fn with(mut self, input: usize, offset: i64, output: EarlierOutput) -> Self {
        self.insert(input, offset, output);
        self
    }

    /// The earlier output of input `input`'s record at `offset`, removed.
    /// A record past every one found clears that input's leftovers (their
    /// inputs were not read again: a stale commit, or retention).
    pub fn take(&mut self, input: usize, offset: i64) -> Option<EarlierOutput> {
        if self.found.is_empty() {
            return None;
        }
        let earlier = self.found.remove(&(input, offset));
        if self.highest.get(&input).is_some_and(|&high| offset >= high) {
            self.found.retain(|&(other, _), _| other != input);
            self.highest.remove(&input);
        }
        earlier
    }

    /// How many are left.
    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// Whether none is left.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    fn insert(&mut self, input: usize, offset: i64, output: EarlierOutput) {
        self.found.entry((input, offset)).or_insert(output);
        let high = self.highest.entry(input).or_insert(offset);
        *high = (*high).max(offset);
    }
}

/// Reads `topic`/`partition` backwards from its end in chunks of up to
/// [`CHUNK`] records, at most `limit` records: `visit` gets each chunk in
/// offset order, newest chunk first, and stops the read with `Break`
/// (blocking IO).
pub fn read_back(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    limit: u64,
    mut visit: impl FnMut(&[OwnedMessage]) -> ControlFlow<()>,
) -> Result<(), rdkafka::error::KafkaError> {
    if limit == 0 {
        return Ok(());
    }
    let (low, high) = consumer.fetch_watermarks(topic, partition, TIMEOUT)?;
    let floor = high
        .saturating_sub(i64::try_from(limit).unwrap_or(i64::MAX))
        .max(low);
    let mut end = high;
    while end > floor {
        let start = end.saturating_sub(CHUNK).max(floor);
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
        consumer.assign(&assignment)?;
        let mut chunk = Vec::new();
        loop {
            let Some(result) = consumer.poll(TIMEOUT) else {
                return Err(rdkafka::error::KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                ));
            };
            let message = result?;
            if message.offset() >= end {
                break;
            }
            let last = message.offset() + 1 >= end;
            chunk.push(message.detach());
            if last {
                break;
            }
        }
        if visit(&chunk).is_break() {
            break;
        }
        end = start;
    }
    Ok(())
}

/// The outputs already emitted for records of `inputs` (partition
/// `partition`) at or after the worker group's committed offsets, found in
/// `outputs` (blocking IO).
pub fn already_emitted(
    settings: &WorkerSettings,
    inputs: &[String],
    partition: i32,
    outputs: &[FedBy<'_>],
    bounds: ScanBounds,
) -> Result<AlreadyEmitted, rdkafka::error::KafkaError> {
    let mut emitted = AlreadyEmitted::none();
    if bounds.limit == 0 {
        return Ok(emitted);
    }
    let consumer: BaseConsumer = settings
        .kafka
        .client_config()
        // Never subscribes (so never joins the group): reads its commits.
        .set("group.id", &settings.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("queued.max.messages.kbytes", "4096")
        .create()?;
    let mut wanted = TopicPartitionList::new();
    for topic in inputs {
        wanted.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(wanted, TIMEOUT)?;
    // No commit: the input is read from its start, so every output counts.
    let commits: Vec<i64> = inputs
        .iter()
        .map(|topic| {
            committed
                .find_partition(topic, partition)
                .and_then(|element| match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                })
                .unwrap_or(i64::MIN)
        })
        .collect();
    for output in outputs {
        // Per input feeding this output: stop once past this timestamp.
        let mut stop_before: HashMap<usize, i64> = HashMap::new();
        read_back(&consumer, output.topic, partition, bounds.limit, |chunk| {
            for message in chunk.iter().rev() {
                let timestamp = message.timestamp().to_millis().unwrap_or(i64::MIN);
                if !output.inputs.is_empty()
                    && output.inputs.iter().all(|input| {
                        stop_before
                            .get(input)
                            .is_some_and(|&before| timestamp < before)
                    })
                {
                    return ControlFlow::Break(());
                }
                let Some((input, offset)) = input_of(message, inputs) else {
                    continue;
                };
                if offset >= commits[input] {
                    emitted.insert(
                        input,
                        offset,
                        EarlierOutput {
                            topic: output.topic.to_owned(),
                            value: message.payload().map(<[u8]>::to_vec),
                        },
                    );
                } else if let Some(hold) = bounds.hold_ms {
                    stop_before
                        .entry(input)
                        .or_insert(timestamp.saturating_sub(hold + SLACK_MS));
                }
            }
            ControlFlow::Continue(())
        })?;
    }
    Ok(emitted)
}

/// Which of `inputs` (index) and offset `message` came from.
fn input_of(message: &OwnedMessage, inputs: &[String]) -> Option<(usize, i64)> {
    use rdkafka::message::Headers as _;
    let header = message
        .headers()?
        .iter()
        .find(|header| header.key == HEADER_INPUT)?;
    let (topic, offset) = parse_input(header.value?)?;
    let input = inputs.iter().position(|known| known == topic)?;
    Some((input, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_header_round_trips_and_replaces_an_upstream_one() {
        let upstream = Headers::from_pairs([("adpipe.input", "merged.impressions@7"), ("t", "1")]);
        let record = InputRecord {
            topic: "deduplicated.clicks",
            input: 1,
            partition: 3,
            offset: 42,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: &upstream,
            shared: None,
            writer: None,
            lateness_ms: None,
            event_time_ms: None,
        };
        let headers = stamped(&upstream, &record);
        let inputs: Vec<_> = headers
            .entries()
            .filter(|(name, _)| *name == HEADER_INPUT)
            .collect();
        assert_eq!(inputs.len(), 1, "one input header: {headers:?}");
        assert_eq!(
            parse_input(headers.value_of(HEADER_INPUT).expect("stamped")),
            Some(("deduplicated.clicks", 42))
        );
        assert_eq!(headers.value_of("t"), Some(&b"1"[..]));
        assert_eq!(parse_input(b"no-offset"), None);
        assert_eq!(parse_input(b"a@b"), None);
    }

    #[test]
    fn a_taken_output_is_gone_and_passing_the_highest_clears_the_rest() {
        let mut emitted = AlreadyEmitted::none();
        let output = |topic: &str| EarlierOutput {
            topic: topic.to_owned(),
            value: None,
        };
        emitted.insert(0, 10, output("a"));
        emitted.insert(0, 12, output("a"));
        emitted.insert(0, 14, output("a"));
        emitted.insert(1, 5, output("b"));
        assert_eq!(emitted.take(0, 11), None);
        assert_eq!(emitted.take(0, 10), Some(output("a")));
        assert_eq!(emitted.take(0, 10), None, "taken once");
        // Offset 12 was never read again; passing 14 forgets it.
        assert_eq!(emitted.take(0, 14), Some(output("a")));
        assert_eq!(emitted.len(), 1);
        assert_eq!(emitted.take(1, 5), Some(output("b")));
        assert!(emitted.is_empty());
    }
}
