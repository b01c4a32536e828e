//! What the loader keeps of a consumed record until its batch is written:
//! the original bytes and coordinates (for the dead-letter topic, should
//! the store refuse it) and its identity in stores (id and event time).
//!
//! Contract: an event's id is its own `event_id` — for a joined record the
//! event it is about, `conversion.event_id` before `click.event_id` — so a
//! replay overwrites the same document / row / profile entry instead of
//! adding one. Records without one (the stats totals) are identified by
//! their Kafka key and versioned by their `version`. The event time orders
//! a record into its day index, date/hour directory or table partition.

use adpipe_runtime::{Bytes, Headers, InputRecord, StepError};
use serde::Deserialize;

/// A record as consumed, shared with the consumer's buffer (no copy).
#[derive(Debug, Clone)]
pub struct Source {
    /// Topic.
    pub topic: std::sync::Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Headers,
}

impl Source {
    /// Keeps `record`.
    pub fn of(record: &InputRecord<'_>, topic: &std::sync::Arc<str>) -> Source {
        Source {
            topic: std::sync::Arc::clone(topic),
            partition: record.partition,
            offset: record.offset,
            key: record.share(record.key),
            value: record.share(record.value),
            headers: record.headers.clone(),
        }
    }
}

/// A record's identity in stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Document id, insert id, profile entry id.
    pub id: String,
    /// Event time (ms since the epoch, UTC).
    pub time_ms: i64,
    /// A version of the identified thing, when records of one id supersede
    /// each other (the stats totals): the store keeps the highest.
    pub version: Option<i64>,
}

#[derive(Deserialize, Default)]
struct Inner {
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    event_time: Option<i64>,
}

/// The fields identities are made of; the decoder skips every other one.
#[derive(Deserialize)]
pub(crate) struct IdentityFields {
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    event_time: Option<i64>,
    #[serde(default)]
    conversion: Option<Inner>,
    #[serde(default)]
    click: Option<Inner>,
    #[serde(default)]
    bucket_start: Option<i64>,
    #[serde(default)]
    version: Option<i64>,
}

impl Identity {
    /// Reads the identity of `record` (decoding only the fields it needs).
    /// A record without an id and time is poison: it cannot be written
    /// idempotently.
    pub fn of(record: &InputRecord<'_>) -> Result<Identity, StepError> {
        Identity::from_fields(record.decode()?, record.key)
    }

    /// The identity of a record whose identifying fields are `fields` and
    /// whose key is `key`.
    pub(crate) fn from_fields(
        fields: IdentityFields,
        key: Option<&[u8]>,
    ) -> Result<Identity, StepError> {
        let nested = fields.conversion.or(fields.click).unwrap_or_default();
        let time_ms = fields
            .event_time
            .or(nested.event_time)
            .or(fields.bucket_start)
            .ok_or_else(|| {
                StepError::poison(
                    "no_event_time",
                    "the record has no event_time to file it by",
                )
            })?;
        if let Some(id) = fields.event_id.or(nested.event_id) {
            return Ok(Identity {
                id,
                time_ms,
                version: None,
            });
        }
        let key = key
            .filter(|key| !key.is_empty())
            .and_then(|key| std::str::from_utf8(key).ok())
            .ok_or_else(|| {
                StepError::poison(
                    "no_event_id",
                    "the record has neither an event_id nor a UTF-8 key to identify it by",
                )
            })?;
        Ok(Identity {
            id: key.to_owned(),
            time_ms,
            version: fields.version,
        })
    }
}

/// The fields of the Avro records of `kinds`, in schema order, each once
/// (a topic of several kinds — the orphans — has the union of theirs):
/// what the stores' mappings and table schemas are made from.
pub fn schema_fields(kinds: &[adpipe_events::EventKind]) -> Vec<(String, serde_json::Value)> {
    let mut fields: Vec<(String, serde_json::Value)> = Vec::new();
    for kind in kinds {
        let schema: serde_json::Value =
            serde_json::from_str(kind.schema()).unwrap_or(serde_json::Value::Null);
        for field in schema
            .get("fields")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(name), Some(kind)) = (
                field.get("name").and_then(serde_json::Value::as_str),
                field.get("type"),
            ) else {
                continue;
            };
            if !fields.iter().any(|(seen, _)| seen == name) {
                fields.push((name.to_owned(), kind.clone()));
            }
        }
    }
    fields
}

/// `(year, month, day, hour)` of `ms` since the epoch, UTC (proleptic
/// Gregorian; Howard Hinnant's `civil_from_days`).
pub fn civil(ms: i64) -> (i64, u32, u32, u32) {
    let days = ms.div_euclid(86_400_000);
    let hour = u32::try_from(ms.rem_euclid(86_400_000) / 3_600_000).unwrap_or(0);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, hour)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_instants() {
        assert_eq!(civil(0), (1970, 1, 1, 0));
        // 2026-12-02T19:52:17Z
        assert_eq!(civil(1_796_241_137_000), (2026, 12, 2, 19));
        // 2024-02-29T23:59:59.999Z, a leap day.
        assert_eq!(civil(1_709_251_199_999), (2024, 2, 29, 23));
        assert_eq!(civil(1_709_251_200_000), (2024, 3, 1, 0));
        assert_eq!(civil(-1), (1969, 12, 31, 23));
    }
}
