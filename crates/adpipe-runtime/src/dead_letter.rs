//! Dead-letter records: the original key, value and headers, plus why and
//! where from, in `adpipe.dlq.*` headers.

use std::time::{SystemTime, UNIX_EPOCH};

use rdkafka::message::{Message, OwnedMessage};

use crate::config::WorkerSettings;
use crate::step::{OutputRecord, StepError};

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

/// Builds the dead-letter record for `record`.
pub fn dead_letter_record(
    settings: &WorkerSettings,
    record: &OwnedMessage,
    headers: &[(String, Vec<u8>)],
    error: &StepError,
) -> OutputRecord {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let mut output = OutputRecord::new(&settings.dead_letter_topic, record.key(), record.payload());
    output.headers = headers.to_vec();
    output.headers.extend([
        (HEADER_ERROR.to_owned(), error.message.clone().into_bytes()),
        (HEADER_REASON.to_owned(), error.kind.as_bytes().to_vec()),
        (HEADER_TOPIC.to_owned(), record.topic().as_bytes().to_vec()),
        (
            HEADER_PARTITION.to_owned(),
            record.partition().to_string().into_bytes(),
        ),
        (
            HEADER_OFFSET.to_owned(),
            record.offset().to_string().into_bytes(),
        ),
        (
            HEADER_SERVICE.to_owned(),
            settings.service.as_bytes().to_vec(),
        ),
        (HEADER_TIME.to_owned(), now_ms.to_string().into_bytes()),
    ]);
    output
}
