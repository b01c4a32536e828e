//! Consumed records in batches: how the consumer thread hands records to a
//! task.
//!
//! Contract: a [`RecordBatch`] holds consecutive records of one input
//! partition for one task (sub-partition), in offset order. Their keys,
//! values and headers are copied out of librdkafka's buffers once, into one
//! shared buffer, so a batch costs a few allocations however many records
//! it holds, and one channel message (instead of one per record). A
//! [`Consumed`] is one record of a batch, read like rdkafka's [`Message`];
//! outputs can share its key and value without copying
//! ([`crate::InputRecord::share`]).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use rdkafka::Timestamp;
use rdkafka::message::Message;

use crate::headers::Headers;

/// Records a batch holds at most (the consumer also hands batches over
/// whenever librdkafka has nothing more ready).
pub(crate) const MAX_BATCH_RECORDS: usize = 512;
/// Bytes of keys, values and headers a batch holds at most: its buffer
/// stays a size the allocator recycles from its free lists instead of
/// fresh pages the kernel must zero (seen under `perf` with 150 KiB ones).
pub(crate) const MAX_BATCH_BYTES: usize = 64 * 1024;

struct Meta {
    offset: i64,
    timestamp: Timestamp,
    key: Option<Range<usize>>,
    payload: Option<Range<usize>>,
    headers: Option<Range<usize>>,
    /// Bytes counted against the partition's queue.
    queued_bytes: usize,
}

/// A batch being filled on the consumer thread.
pub(crate) struct BatchBuilder {
    topic: Arc<str>,
    partition: i32,
    data: Vec<u8>,
    records: Vec<Meta>,
}

impl BatchBuilder {
    pub(crate) fn new(topic: Arc<str>, partition: i32) -> Self {
        BatchBuilder {
            topic,
            partition,
            data: Vec::new(),
            records: Vec::new(),
        }
    }

    /// Whether it holds as much as a batch should.
    pub(crate) fn is_full(&self) -> bool {
        self.records.len() >= MAX_BATCH_RECORDS || self.data.len() >= MAX_BATCH_BYTES
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Copies `message` in (it must belong to this batch's partition).
    pub(crate) fn push<M: Message>(&mut self, message: &M, queued_bytes: usize) {
        let data = &mut self.data;
        let mut copy = |part: Option<&[u8]>| {
            part.map(|part| {
                let start = data.len();
                data.extend_from_slice(part);
                start..data.len()
            })
        };
        let key = copy(message.key());
        let payload = copy(message.payload());
        let headers = message.headers().map(|headers| {
            let start = self.data.len();
            Headers::encode_into(&mut self.data, headers);
            start..self.data.len()
        });
        self.records.push(Meta {
            offset: message.offset(),
            timestamp: message.timestamp(),
            key,
            payload,
            headers,
            queued_bytes,
        });
    }

    /// The batch, ready to hand over; the builder starts empty again.
    pub(crate) fn finish(&mut self) -> Arc<RecordBatch> {
        // The next batch is likely as large: reserve once, not by doubling.
        let data_capacity = self.data.len().min(MAX_BATCH_BYTES + MAX_BATCH_BYTES / 4);
        let records_capacity = self.records.len();
        let data = Bytes::from(std::mem::replace(
            &mut self.data,
            Vec::with_capacity(data_capacity),
        ));
        let records = std::mem::replace(&mut self.records, Vec::with_capacity(records_capacity))
            .into_iter()
            .map(|meta| Stored {
                offset: meta.offset,
                timestamp: meta.timestamp,
                key: meta.key,
                payload: meta.payload,
                headers: meta
                    .headers
                    .and_then(|range| Headers::from_encoded(data.slice(range))),
                queued_bytes: meta.queued_bytes,
            })
            .collect();
        Arc::new(RecordBatch {
            topic: Arc::clone(&self.topic),
            partition: self.partition,
            data,
            records,
        })
    }
}

struct Stored {
    offset: i64,
    timestamp: Timestamp,
    key: Option<Range<usize>>,
    payload: Option<Range<usize>>,
    headers: Option<Headers>,
    queued_bytes: usize,
}

/// Consecutive records of one input partition, sharing one buffer.
pub struct RecordBatch {
    topic: Arc<str>,
    partition: i32,
    data: Bytes,
    records: Vec<Stored>,
}

impl RecordBatch {
    /// How many records it holds.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Its records' offsets, in order.
    pub(crate) fn offsets(&self) -> impl Iterator<Item = i64> + '_ {
        self.records.iter().map(|record| record.offset)
    }

    /// Bytes its records count against their partition's queue.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.records.iter().map(|record| record.queued_bytes).sum()
    }

    /// Record `index` of `batch`.
    pub(crate) fn record(batch: &Arc<RecordBatch>, index: usize) -> Consumed {
        debug_assert!(index < batch.len());
        Consumed {
            batch: Arc::clone(batch),
            index,
        }
    }
}

/// One consumed record (of a [`RecordBatch`]).
#[derive(Clone)]
pub struct Consumed {
    batch: Arc<RecordBatch>,
    index: usize,
}

impl Consumed {
    fn stored(&self) -> &Stored {
        &self.batch.records[self.index]
    }

    fn part(&self, range: Option<&Range<usize>>) -> Option<&[u8]> {
        range.map(|range| &self.batch.data[range.clone()])
    }

    /// Its index in its batch.
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// The buffer key, value and headers borrow from.
    pub(crate) fn shared_buffer(&self) -> &Bytes {
        &self.batch.data
    }

    /// Bytes the record counts against its partition's queue.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.stored().queued_bytes
    }
}

impl std::fmt::Debug for Consumed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}@{}", self.topic(), self.partition(), self.offset())
    }
}

impl Consumed {
    // The accessors of rdkafka's `Message` (which cannot be implemented
    // here: it has an unsafe method, and this workspace forbids unsafe).

    /// The record's key.
    pub fn key(&self) -> Option<&[u8]> {
        self.part(self.stored().key.as_ref())
    }

    /// The record's payload.
    pub fn payload(&self) -> Option<&[u8]> {
        self.part(self.stored().payload.as_ref())
    }

    /// The record's topic.
    pub fn topic(&self) -> &str {
        &self.batch.topic
    }

    /// The record's partition.
    pub fn partition(&self) -> i32 {
        self.batch.partition
    }

    /// The record's offset.
    pub fn offset(&self) -> i64 {
        self.stored().offset
    }

    /// The record's timestamp.
    pub fn timestamp(&self) -> Timestamp {
        self.stored().timestamp
    }

    /// The record's headers.
    pub fn headers(&self) -> Option<&Headers> {
        self.stored().headers.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

    fn message(
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        header: bool,
    ) -> OwnedMessage {
        let headers = header.then(|| {
            OwnedHeaders::new().insert(Header {
                key: "h",
                value: Some(&offset.to_string()),
            })
        });
        OwnedMessage::new(
            value.map(<[u8]>::to_vec),
            key.map(<[u8]>::to_vec),
            "t".to_owned(),
            Timestamp::CreateTime(1_000 + offset),
            3,
            offset,
            headers,
        )
    }

    #[test]
    fn a_batch_gives_back_every_record_as_consumed() {
        let mut builder = BatchBuilder::new(Arc::from("t"), 3);
        builder.push(&message(7, Some(b"k7"), Some(b"v7"), true), 10);
        builder.push(&message(8, None, None, false), 20);
        builder.push(&message(9, Some(b""), Some(b"v9"), true), 30);
        let batch = builder.finish();
        assert!(builder.is_empty());
        assert_eq!(batch.len(), 3);
        let records: Vec<Consumed> = (0..3)
            .map(|index| RecordBatch::record(&batch, index))
            .collect();
        assert_eq!(records[0].key(), Some(b"k7".as_slice()));
        assert_eq!(records[0].payload(), Some(b"v7".as_slice()));
        assert_eq!(
            records[0]
                .headers()
                .and_then(|headers| headers.value_of("h")),
            Some(b"7".as_slice())
        );
        assert_eq!(records[1].key(), None);
        assert_eq!(records[1].payload(), None);
        assert!(records[1].headers().is_none());
        assert_eq!(records[2].key(), Some(b"".as_slice()));
        assert_eq!(records[2].offset(), 9);
        assert_eq!(records[2].timestamp().to_millis(), Some(1_009));
        assert_eq!((records[2].topic(), records[2].partition()), ("t", 3));
        assert_eq!(
            records.iter().map(Consumed::queued_bytes).sum::<usize>(),
            60
        );
    }

    #[test]
    fn an_output_shares_its_inputs_bytes_and_copies_anything_else() {
        let mut builder = BatchBuilder::new(Arc::from("t"), 0);
        builder.push(&message(1, Some(b"key"), Some(b"value"), true), 1);
        let batch = builder.finish();
        let consumed = RecordBatch::record(&batch, 0);
        let headers = consumed.headers().cloned().unwrap_or_default();
        let record = crate::InputRecord {
            topic: consumed.topic(),
            input: 0,
            partition: 0,
            offset: 1,
            timestamp_ms: None,
            key: consumed.key(),
            value: consumed.payload(),
            headers: &headers,
            shared: Some(consumed.shared_buffer()),
            writer: None,
            lateness_ms: None,
            event_time_ms: None,
        };
        let value = record.share(record.value).expect("a value");
        assert_eq!(&value[..], b"value");
        assert_eq!(
            value.as_ptr(),
            consumed.payload().expect("a value").as_ptr(),
            "a slice of the batch's buffer, not a copy"
        );
        let elsewhere = b"value".to_vec();
        let copied = record.share(Some(&elsewhere)).expect("a value");
        assert_eq!(&copied[..], b"value");
        assert_ne!(copied.as_ptr(), elsewhere.as_ptr());
        assert_eq!(record.share(Some(b"")).map(|bytes| bytes.len()), Some(0));
        assert_eq!(record.share(None), None);
    }
}
