//! Dead-letter records: the original key, value and headers, plus why and
//! where from, in `adpipe.dlq.*` headers.
//!
//! Two kinds: an *input* the step could not process (poison, a failure
//! action of `dead-letter`), and an *output* the broker rejected for good
//! (too large, invalid), which carries the coordinates of the input that
//! produced it and the topic it was meant for.

use std::time::{SystemTime, UNIX_EPOCH};

use rdkafka::error::RDKafkaErrorCode;
use std::sync::Arc;

use crate::ack::AckToken;
use crate::config::WorkerSettings;
use crate::step::{InputRecord, OutputRecord, StepError};

/// Header: the error message.
pub const HEADER_ERROR: &str = "adpipe.dlq.error";
/// Header: the error kind (e.g. `bad_magic_byte`).
pub const HEADER_REASON: &str = "adpipe.dlq.reason";
/// Header: source topic.
pub const HEADER_TOPIC: &str = "adpipe.dlq.topic";
/// Header: source partition.
pub const HEADER_PARTITION: &str = "adpipe.dlq.partition";
/// Header: source offset.
pub const HEADER_OFFSET: &str = "adpipe.dlq.offset";
/// Header: service that gave up.
pub const HEADER_SERVICE: &str = "adpipe.dlq.service";
/// Header: when (ms since the epoch).
pub const HEADER_TIME: &str = "adpipe.dlq.time";
/// Header (rejected outputs): the topic the output was meant for.
pub const HEADER_OUTPUT_TOPIC: &str = "adpipe.dlq.output.topic";
/// Header (rejected outputs): the value's size when it was too large to keep.
pub const HEADER_VALUE_OMITTED: &str = "adpipe.dlq.value.omitted.bytes";
/// Reason of a rejected output.
pub const REASON_OUTPUT_REJECTED: &str = "output_rejected";

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis())
}

fn coordinates(
    reason: &str,
    error: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    service: &str,
) -> [(&'static str, Vec<u8>); 7] {
    [
        (HEADER_ERROR, error.as_bytes().to_vec()),
        (HEADER_REASON, reason.as_bytes().to_vec()),
        (HEADER_TOPIC, topic.as_bytes().to_vec()),
        (HEADER_PARTITION, partition.to_string().into_bytes()),
        (HEADER_OFFSET, offset.to_string().into_bytes()),
        (HEADER_SERVICE, service.as_bytes().to_vec()),
        (HEADER_TIME, now_ms().to_string().into_bytes()),
    ]
}

/// Builds the dead-letter record for an input `record` the step failed on:
/// its key, value and headers, plus the reason and its coordinates.
pub fn dead_letter_record(
    settings: &WorkerSettings,
    record: &InputRecord<'_>,
    error: &StepError,
) -> OutputRecord {
    let mut output = OutputRecord::sharing(
        &Arc::from(settings.dead_letter_topic.as_str()),
        record.share(record.key),
        record.share(record.value),
    );
    output.headers = record.headers.extended(coordinates(
        error.kind,
        &error.message,
        record.topic,
        record.partition,
        record.offset,
        &settings.service,
    ));
    output
}

/// Where a record was read: topic, partition, offset.
#[derive(Debug, Clone, Copy)]
pub struct Coordinates<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A consumed record a store refused for good after the step had kept it
/// (a loader's batch), and why.
#[derive(Debug)]
pub struct Refused<'a> {
    /// Where it was read.
    pub source: Coordinates<'a>,
    /// Its key, as read.
    pub key: Option<bytes::Bytes>,
    /// Its value, as read.
    pub value: Option<bytes::Bytes>,
    /// Its headers, as read.
    pub headers: &'a crate::Headers,
    /// Short stable label (`adpipe.dlq.reason`).
    pub reason: &'a str,
    /// The store's own words (`adpipe.dlq.error`).
    pub error: &'a str,
}

/// Builds the dead letter of a [`Refused`] record: its key, value and
/// headers as read, with the store's reason and the record's coordinates.
pub fn refused_record(
    dead_letter_topic: &Arc<str>,
    service: &str,
    refused: Refused<'_>,
) -> OutputRecord {
    let mut output = OutputRecord::sharing(dead_letter_topic, refused.key, refused.value);
    output.headers = refused.headers.extended(coordinates(
        refused.reason,
        refused.error,
        refused.source.topic,
        refused.source.partition,
        refused.source.offset,
        service,
    ));
    output
}

/// Builds the dead letter of an output the broker rejected for good: its
/// key, headers and value — unless it was rejected for its size, when only
/// the size is kept (the dead letter would be refused too) — with the
/// coordinates of the input it came from, which stays in its topic.
pub fn rejected_output_record(
    dead_letter_topic: &str,
    service: &str,
    token: &AckToken,
    output: &OutputRecord,
    code: RDKafkaErrorCode,
) -> OutputRecord {
    let source = token.source();
    let value_len = output.value.as_ref().map_or(0, bytes::Bytes::len);
    let keep_value = !matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
    );
    let mut record = OutputRecord::sharing(
        &Arc::from(dead_letter_topic),
        output.key.clone(),
        output.value.clone().filter(|_| keep_value),
    );
    let value_omitted =
        (!keep_value).then(|| (HEADER_VALUE_OMITTED, value_len.to_string().into_bytes()));
    record.headers = output.headers.extended(
        coordinates(
            REASON_OUTPUT_REJECTED,
            &code.to_string(),
            &source.topic,
            source.partition,
            token.offset(),
            service,
        )
        .into_iter()
        .chain([(HEADER_OUTPUT_TOPIC, output.topic.as_bytes().to_vec())])
        .chain(value_omitted),
    );
    record
}
