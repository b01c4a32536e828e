//! Confluent wire format and Avro codec: every service's hot path.
//!
//! A record value on every adpipe topic is `0x00 | schema id (u32, big endian)
//! | Avro binary datum`, exactly as Confluent's serializers write it, so any
//! Confluent-compatible client reads what adpipe writes and the other way round.
//!
//! Contract:
//! - Decoding never panics on any input; every failure is a [`DecodeError`]
//!   whose [`Disposition`] says whether retrying can help (registry down) or
//!   the record is poison (dead-letter it).
//! - Writer schemas are fetched from the registry once per id and cached;
//!   the datum is decoded with the *writer* schema straight into the Rust type,
//!   and fields the writer did not know take the reader's serde defaults,
//!   which `adpipe-events` keeps equal to the `.avsc` defaults (this is Avro
//!   schema resolution for the record-evolution cases adpipe allows).
//! - Encoders register (or look up) their schema once and then encode with no
//!   IO and no locking.
#![warn(missing_docs)]

mod codec;
mod error;
mod registry;
mod wire;

pub use codec::{Codec, Encoder, WriterSchema};
pub use error::{DecodeError, Disposition, EncodeError};
pub use registry::{RegisteredSchema, RegistryClient, RegistryError};
pub use wire::{HEADER_LEN, MAGIC_BYTE, SchemaId, split_header, write_header};

/// The Confluent TopicNameStrategy subject for a topic's record values.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}
