//! The cached codec: writer schemas by id for decoding, registered schemas
//! for encoding.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_avro_fast::de::{DeserializerConfig, DeserializerState};

use crate::error::{DecodeError, EncodeError};
use crate::registry::{RegistryClient, RegistryError, SCHEMA_NOT_FOUND};
use crate::wire::{SchemaId, split_header, write_header};

/// Longest array or map a datum may claim. Our schemas have none, but the
/// generic JSON path decodes any schema, and the library's default (10^9)
/// lets a corrupt length spin for a second.
const MAX_SEQUENCE_LEN: usize = 1 << 20;

/// A writer schema fetched from the registry, parsed once.
#[derive(Debug)]
pub struct WriterSchema {
    /// Registry id.
    pub id: SchemaId,
    /// Schema text as the registry returned it.
    pub text: String,
    /// Parsed form used by the decoder.
    pub parsed: serde_avro_fast::Schema,
}

impl WriterSchema {
    /// Parses `text` as the schema registered under `id`.
    pub fn parse(id: SchemaId, text: String) -> Result<Self, DecodeError> {
        let parsed = text
            .parse()
            .map_err(
                |error: serde_avro_fast::schema::SchemaError| DecodeError::InvalidSchema {
                    id,
                    reason: error.to_string(),
                },
            )?;
        Ok(WriterSchema { id, text, parsed })
    }

    /// Decodes a bare Avro datum written with this schema into `T`.
    ///
    /// Synchronous and allocation-light: this is the per-record hot path once
    /// the schema is cached.
    pub fn decode_datum<T: DeserializeOwned>(&self, datum: &[u8]) -> Result<T, DecodeError> {
        let mut config = DeserializerConfig::new(&self.parsed);
        config.max_seq_size = MAX_SEQUENCE_LEN;
        let mut state = DeserializerState::with_config(
            serde_avro_fast::de::read::SliceRead::new(datum),
            config,
        );
        T::deserialize(state.deserializer()).map_err(|error| DecodeError::MalformedDatum {
            schema_id: self.id,
            reason: error.to_string(),
        })
    }
}

/// Decodes Confluent-framed records and builds encoders, caching schemas.
///
/// Cheap to share: wrap it in an `Arc` and use it from every partition actor.
#[derive(Debug)]
pub struct Codec {
    registry: RegistryClient,
    writers: RwLock<HashMap<SchemaId, Arc<WriterSchema>>>,
}

impl Codec {
    /// A codec that resolves schema ids through `registry`.
    pub fn new(registry: RegistryClient) -> Self {
        Codec {
            registry,
            writers: RwLock::new(HashMap::new()),
        }
    }

    /// The registry this codec uses.
    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    /// The writer schema for `id`, from the cache or else the registry.
    pub async fn writer_schema(&self, id: SchemaId) -> Result<Arc<WriterSchema>, DecodeError> {
        if let Some(schema) = self.cached_writer_schema(id) {
            return Ok(schema);
        }
        let text = self
            .registry
            .schema_by_id(id)
            .await
            .map_err(|error| match error {
                RegistryError::Refused { status: 404, .. }
                | RegistryError::Refused {
                    error_code: SCHEMA_NOT_FOUND,
                    ..
                } => DecodeError::UnknownSchemaId(id),
                other => DecodeError::Registry(other),
            })?;
        let schema = Arc::new(WriterSchema::parse(id, text)?);
        self.writers.write().insert(id, Arc::clone(&schema));
        Ok(schema)
    }

    /// The writer schema for `id` if it is already cached (no IO).
    pub fn cached_writer_schema(&self, id: SchemaId) -> Option<Arc<WriterSchema>> {
        self.writers.read().get(&id).cloned()
    }

    /// Decodes a framed record into `T`, resolving the writer schema.
    pub async fn decode<T: DeserializeOwned>(&self, record: &[u8]) -> Result<T, DecodeError> {
        let (id, datum) = split_header(record)?;
        let writer = self.writer_schema(id).await?;
        writer.decode_datum(datum)
    }

    /// Decodes any framed record into JSON, whatever its schema (for the CLI
    /// and the dead-letter inspector). Unions appear as their value.
    pub async fn decode_json(
        &self,
        record: &[u8],
    ) -> Result<(SchemaId, serde_json::Value), DecodeError> {
        let (id, datum) = split_header(record)?;
        let writer = self.writer_schema(id).await?;
        Ok((id, writer.decode_datum(datum)?))
    }

    /// Registers `schema` under `subject` (or finds it) and returns an encoder
    /// for values of type `T` with that schema.
    pub async fn encoder<T: Serialize>(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Encoder<T>, EncodeError> {
        let parsed: serde_avro_fast::Schema =
            schema
                .parse()
                .map_err(|error: serde_avro_fast::schema::SchemaError| {
                    EncodeError::InvalidSchema(error.to_string())
                })?;
        let id = self.registry.register(subject, schema).await?;
        Ok(Encoder::new(id, parsed))
    }
}

/// Encodes values of `T` with one registered schema. No IO, no locks.
#[derive(Debug)]
pub struct Encoder<T> {
    schema_id: SchemaId,
    schema: serde_avro_fast::Schema,
    _values: PhantomData<fn(&T)>,
}

impl<T: Serialize> Encoder<T> {
    /// An encoder for a schema already registered under `schema_id`.
    pub fn new(schema_id: SchemaId, schema: serde_avro_fast::Schema) -> Self {
        Encoder {
            schema_id,
            schema,
            _values: PhantomData,
        }
    }

    /// The registry id written into every record.
    pub fn schema_id(&self) -> SchemaId {
        self.schema_id
    }

    /// Appends the framed record for `value` to `out`. On error `out` is left
    /// as it was.
    pub fn encode_into(&self, value: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        write_header(self.schema_id, out);
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&self.schema);
        match serde_avro_fast::to_datum(value, &mut *out, &mut config) {
            Ok(_) => Ok(()),
            Err(error) => {
                out.truncate(start);
                Err(EncodeError::Mismatch {
                    schema_id: self.schema_id,
                    reason: error.to_string(),
                })
            }
        }
    }

    /// The framed record for `value`.
    pub fn encode(&self, value: &T) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(value, &mut out)?;
        Ok(out)
    }
}
