//! Codec errors and what a worker should do about each.

use crate::registry::RegistryError;
use crate::wire::SchemaId;

/// What a worker should do with a record that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Retry with backoff: the cause is outside the record (a dependency is down).
    Transient,
    /// The record itself is bad: dead-letter it and go on.
    Poison,
    /// Nothing will work until an operator acts: stop.
    Fatal,
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the 5-byte Confluent header.
    #[error("record of {len} bytes is shorter than the 5-byte Confluent header")]
    TooShort {
        /// Length of the record.
        len: usize,
    },
    /// First byte is not the Confluent magic byte 0.
    #[error("wrong magic byte {0:#04x}: not a Confluent-framed record")]
    BadMagicByte(u8),
    /// The registry does not know the schema id.
    #[error("unknown schema id {0}")]
    UnknownSchemaId(SchemaId),
    /// The registry returned a schema that does not parse.
    #[error("schema id {id} is not a valid Avro schema: {reason}")]
    InvalidSchema {
        /// The schema id.
        id: SchemaId,
        /// Parser message.
        reason: String,
    },
    /// The datum does not match its writer schema (truncated, corrupt, or of
    /// a type the reader cannot take).
    #[error("malformed Avro datum for schema id {schema_id}: {reason}")]
    MalformedDatum {
        /// Writer schema id from the header.
        schema_id: SchemaId,
        /// Decoder message.
        reason: String,
    },
    /// The writer schema could not be fetched.
    #[error("schema registry: {0}")]
    Registry(#[from] RegistryError),
}

impl DecodeError {
    /// Whether to retry, dead-letter or stop.
    pub fn disposition(&self) -> Disposition {
        match self {
            DecodeError::Registry(error) => error.disposition(),
            DecodeError::TooShort { .. }
            | DecodeError::BadMagicByte(_)
            | DecodeError::UnknownSchemaId(_)
            | DecodeError::InvalidSchema { .. }
            | DecodeError::MalformedDatum { .. } => Disposition::Poison,
        }
    }

    /// A short stable label for metrics and dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooShort { .. } => "too_short",
            DecodeError::BadMagicByte(_) => "bad_magic_byte",
            DecodeError::UnknownSchemaId(_) => "unknown_schema_id",
            DecodeError::InvalidSchema { .. } => "invalid_schema",
            DecodeError::MalformedDatum { .. } => "malformed_datum",
            DecodeError::Registry(_) => "registry",
        }
    }
}

/// Why a value could not be encoded or its schema registered.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The value does not fit the schema (a bug in the caller's types).
    #[error("value does not fit schema id {schema_id}: {reason}")]
    Mismatch {
        /// Schema the encoder was built for.
        schema_id: SchemaId,
        /// Serializer message.
        reason: String,
    },
    /// The local schema text does not parse.
    #[error("invalid Avro schema: {0}")]
    InvalidSchema(String),
    /// Registering or looking up the schema failed.
    #[error("schema registry: {0}")]
    Registry(#[from] RegistryError),
}

impl EncodeError {
    /// Whether to retry, dead-letter or stop.
    pub fn disposition(&self) -> Disposition {
        match self {
            EncodeError::Registry(error) => error.disposition(),
            EncodeError::Mismatch { .. } => Disposition::Poison,
            EncodeError::InvalidSchema(_) => Disposition::Fatal,
        }
    }
}
