//! Rust types for the events in `schemas/*.avsc`.
//!
//! Contract: every struct here mirrors its schema field for field, in schema
//! order, and every field the schema gives a default carries the *same*
//! default through `#[serde(default = ...)]`. Decoding an old record (written
//! before a field existed) then yields exactly what Avro schema resolution
//! would. `adpipe-codec`'s tests check both properties against the `.avsc`
//! files, so a schema change that forgets the Rust side fails CI.
//!
//! The schema texts are embedded from `schemas/` at compile time, so the
//! binaries carry the schemas they were built against.
#![warn(missing_docs)]

mod kinds;
pub mod samples;
mod types;

pub use kinds::{EventKind, UnknownEventKind};
pub use types::{
    Attribution, Click, Conversion, Impression, JoinedClick, JoinedConversion, StatsTotal,
};

/// What every adpipe event exposes to the pipeline, whatever its type.
pub trait Event {
    /// Which schema this type belongs to.
    const KIND: EventKind;
    /// Globally unique id; the deduplication key.
    fn event_id(&self) -> &str;
    /// Event time in milliseconds since the Unix epoch.
    fn event_time_ms(&self) -> i64;
    /// The Kafka key and partitioning key.
    fn user_id(&self) -> &str;
}

/// Header of an orphan in `joined.orphans` (written by the joiner, read by
/// the stats-counter): why it found no partner (design.md, "Join and stats
/// rules").
pub const HEADER_ORPHAN_REASON: &str = "adpipe.orphan.reason";
/// Header of an orphan: `click` or `conversion`.
pub const HEADER_ORPHAN_KIND: &str = "adpipe.orphan.kind";
/// Header (written by the merger, read by the dispatcher): the DC the event
/// was published in, whose topic the merged copy came from.
pub const HEADER_ORIGIN_DC: &str = "adpipe.origin.dc";
