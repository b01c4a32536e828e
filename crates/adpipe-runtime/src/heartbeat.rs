//! In-band progress: heartbeat records.
//!
//! Contract: a heartbeat is a record with the header [`HEADER`] holding a
//! watermark (decimal ms since the epoch) and no value, written into every
//! partition of a DC's topics by that DC's heartbeat publisher (`adpipe
//! heartbeat`). It says: the DC published everything with an event time at
//! or before the watermark. Because MirrorMaker 2 replicates it in order
//! with the data, a DC with no traffic still advances a merge, while a DC
//! whose replication is cut sends none — so "no heartbeat" means "unknown",
//! never "nothing happened" (see `crate::align`).
//!
//! The runtime consumes heartbeats itself: a step never sees one, its
//! offset is done at once, and in a time-aligned task it advances its
//! input's watermark. Other readers of DC topics skip them
//! ([`is_heartbeat`]).

/// Header carrying a heartbeat's watermark (decimal ms since the epoch).
pub const HEADER: &str = "adpipe.heartbeat";

/// The watermark of a heartbeat record, or `None` for any other record.
/// Only records without a value are checked, so data records cost one
/// comparison.
pub fn watermark<M: rdkafka::message::Message>(message: &M) -> Option<i64> {
    use rdkafka::message::Headers;
    if message.payload().is_some() {
        return None;
    }
    let headers = message.headers()?;
    headers
        .iter()
        .find(|header| header.key == HEADER)
        .and_then(|header| header.value)
        .and_then(|value| std::str::from_utf8(value).ok())
        .and_then(|text| text.parse().ok())
}

/// Whether a record is a heartbeat (readers of DC topics skip these).
pub fn is_heartbeat<M: rdkafka::message::Message>(message: &M) -> bool {
    watermark(message).is_some()
}
