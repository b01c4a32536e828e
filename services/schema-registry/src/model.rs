//! The registry's state and the log records that build it.
//!
//! Contract: the state is a pure function of the `_schemas` topic. Every
//! instance applies the same records in the same (log) order with
//! [`RegistryState::apply`], so every instance agrees on every id and version
//! without talking to the others. A record that would bind an id or a
//! (subject, version) to a second, different schema — the loser of a race
//! between two instances — is rejected by every instance alike; its writer
//! sees that and retries (see `store.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::compat::Compatibility;
use crate::error::ApiError;

/// Key of a record in the registry topic (Confluent-like JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keytype", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LogKey {
    /// One version of one subject.
    Schema {
        /// Subject name.
        subject: String,
        /// Version within the subject.
        version: i32,
    },
    /// Compatibility level, global when `subject` is `None`.
    Config {
        /// Subject, or `None` for the global level.
        subject: Option<String>,
    },
}

/// Value of a [`LogKey::Schema`] record; `None` (a tombstone) hard-deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaValue {
    /// Subject name (repeats the key, as Confluent's does).
    pub subject: String,
    /// Version (repeats the key).
    pub version: i32,
    /// Global id.
    pub id: u32,
    /// Canonical schema text.
    pub schema: String,
    /// Soft-deleted.
    pub deleted: bool,
}

/// Value of a [`LogKey::Config`] record; `None` resets to the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigValue {
    /// The level.
    #[serde(rename = "compatibilityLevel")]
    pub compatibility_level: Compatibility,
}

/// One record of the log, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    /// A schema version written, soft-deleted (Some) or hard-deleted (None).
    Schema(String, i32, Option<SchemaValue>),
    /// A compatibility level set (Some) or removed (None).
    Config(Option<String>, Option<ConfigValue>),
}

impl LogRecord {
    /// Decodes a record from the topic. Unknown key types (for example
    /// Confluent's NOOP) decode to `Ok(None)` and are skipped.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Option<LogRecord>, String> {
        let raw: serde_json::Value =
            serde_json::from_slice(key).map_err(|error| format!("key is not JSON: {error}"))?;
        let Ok(key) = serde_json::from_value::<LogKey>(raw) else {
            return Ok(None);
        };
        let record = match key {
            LogKey::Schema { subject, version } => {
                let value = value
                    .map(serde_json::from_slice::<SchemaValue>)
                    .transpose()
                    .map_err(|error| format!("schema value: {error}"))?;
                LogRecord::Schema(subject, version, value)
            }
            LogKey::Config { subject } => {
                let value = value
                    .map(serde_json::from_slice::<ConfigValue>)
                    .transpose()
                    .map_err(|error| format!("config value: {error}"))?;
                LogRecord::Config(subject, value)
            }
        };
        Ok(Some(record))
    }

    /// Encodes the record as (key, value) bytes.
    pub fn encode(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            LogRecord::Schema(subject, version, value) => (
                to_json(&LogKey::Schema {
                    subject: subject.clone(),
                    version: *version,
                }),
                value.as_ref().map(to_json),
            ),
            LogRecord::Config(subject, value) => (
                to_json(&LogKey::Config {
                    subject: subject.clone(),
                }),
                value.as_ref().map(to_json),
            ),
        }
    }
}

/// Serializes one of this module's plain structs, which cannot fail.
fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// A version of a subject as the state holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionEntry {
    /// Global id.
    pub id: u32,
    /// Soft-deleted.
    pub deleted: bool,
}

/// Whether [`RegistryState::apply`] took a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The record changed (or confirmed) the state.
    Accepted,
    /// The record lost a race and was ignored; the reason says which.
    Rejected(String),
}

/// Everything the registry knows, rebuilt from the log.
#[derive(Debug, Default)]
pub struct RegistryState {
    schemas: HashMap<u32, Arc<str>>,
    ids_by_schema: HashMap<Arc<str>, u32>,
    subjects: BTreeMap<String, BTreeMap<i32, VersionEntry>>,
    global_compatibility: Option<Compatibility>,
    subject_compatibility: HashMap<String, Compatibility>,
    max_id: u32,
}

impl RegistryState {
    /// Applies one record in log order.
    pub fn apply(&mut self, record: LogRecord) -> Applied {
        match record {
            LogRecord::Config(None, value) => {
                self.global_compatibility = value.map(|value| value.compatibility_level);
                Applied::Accepted
            }
            LogRecord::Config(Some(subject), Some(value)) => {
                self.subject_compatibility
                    .insert(subject, value.compatibility_level);
                Applied::Accepted
            }
            LogRecord::Config(Some(subject), None) => {
                self.subject_compatibility.remove(&subject);
                Applied::Accepted
            }
            LogRecord::Schema(subject, version, None) => {
                self.hard_delete(&subject, version);
                Applied::Accepted
            }
            LogRecord::Schema(subject, version, Some(value)) => {
                self.apply_schema(subject, version, value)
            }
        }
    }

    fn apply_schema(&mut self, subject: String, version: i32, value: SchemaValue) -> Applied {
        if value.subject != subject || value.version != version {
            return Applied::Rejected("value does not match its key".to_owned());
        }
        let text: Arc<str> = Arc::from(value.schema.as_str());
        if let Some(bound) = self.schemas.get(&value.id)
            && **bound != *text
        {
            return Applied::Rejected(format!("id {} already names another schema", value.id));
        }
        if let Some(&other_id) = self.ids_by_schema.get(&text)
            && other_id != value.id
        {
            return Applied::Rejected(format!("schema already has id {other_id}"));
        }
        let versions = self.subjects.entry(subject).or_default();
        if let Some(existing) = versions.get(&version)
            && existing.id != value.id
        {
            return Applied::Rejected(format!(
                "version {version} already holds id {}",
                existing.id
            ));
        }
        versions.insert(
            version,
            VersionEntry {
                id: value.id,
                deleted: value.deleted,
            },
        );
        self.schemas.insert(value.id, Arc::clone(&text));
        self.ids_by_schema.insert(text, value.id);
        self.max_id = self.max_id.max(value.id);
        Applied::Accepted
    }

    fn hard_delete(&mut self, subject: &str, version: i32) {
        let Some(versions) = self.subjects.get_mut(subject) else {
            return;
        };
        let Some(removed) = versions.remove(&version) else {
            return;
        };
        if versions.is_empty() {
            self.subjects.remove(subject);
        }
        let still_used = self
            .subjects
            .values()
            .any(|versions| versions.values().any(|entry| entry.id == removed.id));
        if !still_used && let Some(text) = self.schemas.remove(&removed.id) {
            self.ids_by_schema.remove(&text);
        }
    }

    /// Schema text by global id.
    pub fn schema(&self, id: u32) -> Option<&Arc<str>> {
        self.schemas.get(&id)
    }

    /// The id a canonical schema text already has, if any.
    pub fn id_of(&self, canonical: &str) -> Option<u32> {
        self.ids_by_schema.get(canonical).copied()
    }

    /// The next unused id.
    pub fn next_id(&self) -> u32 {
        self.max_id + 1
    }

    /// Subjects with at least one version (live ones only unless `deleted`).
    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, versions)| deleted || versions.values().any(|entry| !entry.deleted))
            .map(|(subject, _)| subject.clone())
            .collect()
    }

    /// Versions of a subject, oldest first. Errors when there is none.
    pub fn versions(
        &self,
        subject: &str,
        deleted: bool,
    ) -> Result<Vec<(i32, &VersionEntry)>, ApiError> {
        let versions: Vec<_> = self
            .subjects
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|(_, entry)| deleted || !entry.deleted)
            .map(|(version, entry)| (*version, entry))
            .collect();
        if versions.is_empty() {
            return Err(ApiError::subject_not_found(subject));
        }
        Ok(versions)
    }

    /// Every version of a subject, soft-deleted or not (none is an empty map).
    pub fn all_versions(&self, subject: &str) -> Option<&BTreeMap<i32, VersionEntry>> {
        self.subjects.get(subject)
    }

    /// The (subject, version) pairs that use an id.
    pub fn usages(&self, id: u32) -> Vec<(String, i32)> {
        self.subjects
            .iter()
            .flat_map(|(subject, versions)| {
                versions
                    .iter()
                    .filter(move |(_, entry)| entry.id == id && !entry.deleted)
                    .map(move |(version, _)| (subject.clone(), *version))
            })
            .collect()
    }

    /// The level that applies to a subject.
    pub fn effective_compatibility(&self, subject: Option<&str>) -> Compatibility {
        subject
            .and_then(|subject| self.subject_compatibility.get(subject).copied())
            .or(self.global_compatibility)
            .unwrap_or_default()
    }

    /// The level set on the subject itself, if any.
    pub fn subject_compatibility(&self, subject: &str) -> Option<Compatibility> {
        self.subject_compatibility.get(subject).copied()
    }
}

/// Normalizes a schema's JSON text so that whitespace and key order do not
/// create new ids: parsed, keys sorted, written compactly.
pub fn canonicalize(schema: &str) -> Result<String, ApiError> {
    let value: serde_json::Value = serde_json::from_str(schema)
        .map_err(|error| ApiError::invalid_schema(format!("not JSON: {error}")))?;
    Ok(sorted(value).to_string())
}

fn sorted(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let ordered: BTreeMap<String, serde_json::Value> = map
                .into_iter()
                .map(|(key, value)| (key, sorted(value)))
                .collect();
            serde_json::Value::Object(ordered.into_iter().collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(subject: &str, version: i32, id: u32, schema: &str) -> LogRecord {
        LogRecord::Schema(
            subject.to_owned(),
            version,
            Some(SchemaValue {
                subject: subject.to_owned(),
                version,
                id,
                schema: schema.to_owned(),
                deleted: false,
            }),
        )
    }

    #[test]
    fn the_first_claim_on_an_id_or_version_wins() {
        let mut state = RegistryState::default();
        assert_eq!(state.apply(put("a", 1, 1, "\"string\"")), Applied::Accepted);
        // Another instance raced and claimed id 1 for a different schema.
        assert!(matches!(
            state.apply(put("b", 1, 1, "\"long\"")),
            Applied::Rejected(_)
        ));
        // ... or version a/1 for a different id.
        assert!(matches!(
            state.apply(put("a", 1, 2, "\"long\"")),
            Applied::Rejected(_)
        ));
        // Re-applying the winner is harmless (replay after a restart).
        assert_eq!(state.apply(put("a", 1, 1, "\"string\"")), Applied::Accepted);
        assert_eq!(state.subjects(false), vec!["a".to_owned()]);
        assert_eq!(state.next_id(), 2);
    }

    #[test]
    fn records_survive_an_encode_decode_round_trip() {
        for record in [
            put("s", 3, 9, "{\"type\":\"string\"}"),
            LogRecord::Schema("s".into(), 3, None),
            LogRecord::Config(
                None,
                Some(ConfigValue {
                    compatibility_level: Compatibility::Full,
                }),
            ),
            LogRecord::Config(Some("s".into()), None),
        ] {
            let (key, value) = record.encode();
            let decoded = LogRecord::decode(&key, value.as_deref()).expect("decodes");
            assert_eq!(decoded, Some(record));
        }
        assert_eq!(
            LogRecord::decode(br#"{"keytype":"NOOP","magic":0}"#, None),
            Ok(None)
        );
    }

    #[test]
    fn hard_delete_frees_an_id_only_when_unused() {
        let mut state = RegistryState::default();
        state.apply(put("a", 1, 1, "\"string\""));
        state.apply(put("b", 1, 1, "\"string\""));
        state.apply(LogRecord::Schema("a".into(), 1, None));
        assert!(state.schema(1).is_some(), "still used by b");
        state.apply(LogRecord::Schema("b".into(), 1, None));
        assert!(state.schema(1).is_none());
    }

    #[test]
    fn canonical_form_ignores_whitespace_and_key_order() {
        let one = canonicalize(r#"{"type": "record", "name": "R", "fields": []}"#).expect("ok");
        let two = canonicalize(r#"{"name":"R","fields":[],"type":"record"}"#).expect("ok");
        assert_eq!(one, two);
    }
}
