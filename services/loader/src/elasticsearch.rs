//! The Elasticsearch / OpenSearch sink: `_bulk` over plain HTTP (the
//! official crate is alpha-only; the `_bulk` API is the same in both).
//!
//! Contract:
//! - a record becomes the JSON of its Avro value (nested records as
//!   objects), indexed with `_id` = its event id into
//!   `<prefix><topic>-<YYYY.MM.DD>` by its event time (UTC), so a replay
//!   overwrites the document instead of adding one; records with a version
//!   (the stats totals) are indexed with `version_type=external`, so an
//!   older total never overwrites a newer one;
//! - at start the loader puts one index template per input (`<prefix><topic>`),
//!   its mappings made from the inputs' Avro schemas ([`mappings`]);
//! - `_bulk` answers 200 even when items fail, so every item is checked:
//!   429 and 5xx items are sent again with backoff (then the whole batch
//!   fails, transiently); a version conflict (409) means a newer version
//!   is already there — done; any other refusal (a mapping conflict, a
//!   document too large) goes to the dead-letter topic with the store's
//!   reason. A failed request (connection refused, timeout, 5xx) fails the
//!   batch, transiently: the partition pauses until the store is back;
//! - a `_bulk` request cut off by the write timeout is not abandoned: it
//!   goes on (keeping its turn) until Elasticsearch answers, and the
//!   batch's next attempt takes that answer instead of sending the
//!   documents again ([`InFlight`], [`BULK_PATIENCE`]);
//! - an event id longer than Elasticsearch's `_id` limit (512 bytes) goes
//!   to the dead-letter topic before the write: Elasticsearch refuses the
//!   whole `_bulk` request for it (400), which would stall the partition.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use adpipe_events::EventKind;
use adpipe_runtime::batching::Span;
use adpipe_runtime::{InputRecord, StepError};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::config::{ElasticsearchSettings, Input};
use crate::in_flight::{Carries, InFlight};
use crate::record::{Identity, civil, schema_fields};
use crate::sink::{Pending, Refusal, Sink, SinkFactory, Turn, Turns};

/// Attempts at the items Elasticsearch answered 429 or 5xx, within one write.
const ITEM_ATTEMPTS: u32 = 5;
/// Backoff before the first retry of such items (doubles).
const ITEM_BACKOFF: Duration = Duration::from_millis(100);
/// How long a request setting the store up may take (then it is tried
/// again, up to the setup's patience).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a `_bulk` request may wait for Elasticsearch's answer, beyond
/// the write timeout that cuts off the write that sent it ([`InFlight`]).
const BULK_PATIENCE: Duration = Duration::from_secs(120);
/// Elasticsearch's longest `_id`, bytes.
pub const MAX_ID_BYTES: usize = 512;

/// A field's mapping for analysts: ids, names and codes are `keyword`
/// (exact filters and terms aggregations); URLs are `text` for full-text
/// search with a `keyword` sub-field; times are `date`; money in micros
/// and ids stay `long` (sums and exact matches).
fn field_mapping(name: &str, schema: &Value) -> Value {
    match schema {
        Value::String(primitive) => primitive_mapping(name, primitive, None),
        Value::Array(branches) => branches
            .iter()
            .find(|branch| branch.as_str() != Some("null"))
            .map_or_else(
                || json!({"type": "keyword"}),
                |branch| field_mapping(name, branch),
            ),
        Value::Object(object) => match object.get("type").and_then(Value::as_str) {
            Some("record") => json!({"properties": record_properties(schema)}),
            Some("enum") => json!({"type": "keyword"}),
            Some("array") => object.get("items").map_or_else(
                || json!({"type": "keyword"}),
                |items| field_mapping(name, items),
            ),
            Some(primitive) => primitive_mapping(
                name,
                primitive,
                object.get("logicalType").and_then(Value::as_str),
            ),
            None => json!({"type": "keyword"}),
        },
        _ => json!({"type": "keyword"}),
    }
}

fn primitive_mapping(name: &str, primitive: &str, logical: Option<&str>) -> Value {
    match (primitive, logical) {
        ("long", Some("timestamp-millis")) => json!({"type": "date", "format": "epoch_millis"}),
        ("long", _) => json!({"type": "long"}),
        ("int", _) => json!({"type": "integer"}),
        ("double", _) => json!({"type": "double"}),
        ("float", _) => json!({"type": "float"}),
        ("boolean", _) => json!({"type": "boolean"}),
        ("bytes", _) => json!({"type": "binary"}),
        ("string", _) if name.ends_with("url") => json!({
            "type": "text",
            "fields": {"keyword": {"type": "keyword", "ignore_above": 2048}}
        }),
        _ => json!({"type": "keyword", "ignore_above": 1024}),
    }
}

fn record_properties(schema: &Value) -> Map<String, Value> {
    let mut properties = Map::new();
    for field in schema
        .get("fields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(name), Some(kind)) =
            (field.get("name").and_then(Value::as_str), field.get("type"))
        {
            properties.insert(name.to_owned(), field_mapping(name, kind));
        }
    }
    properties
}

/// The mappings of an index holding records of `kinds` (the union of
/// their fields). `dynamic: false`: a field a newer schema adds is kept in
/// `_source` without breaking the index; the loader's template at the next
/// start maps it in new indices.
pub fn mappings(kinds: &[EventKind]) -> Value {
    let properties: Map<String, Value> = schema_fields(kinds)
        .into_iter()
        .map(|(name, schema)| {
            let mapping = field_mapping(&name, &schema);
            (name, mapping)
        })
        .collect();
    json!({"dynamic": false, "properties": properties})
}

/// The name base of `topic`'s indices and template: `<prefix><topic>`, dots
/// as dashes, lowercase.
pub fn index_base(prefix: &str, topic: &str) -> String {
    format!("{prefix}{}", topic.replace('.', "-").to_ascii_lowercase())
}

/// The daily index of an event at `time_ms` under `base`.
pub fn daily_index(base: &str, time_ms: i64) -> String {
    let (year, month, day, _) = civil(time_ms);
    format!("{base}-{year:04}.{month:02}.{day:02}")
}

fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .map_err(|error| format!("HTTP client: {error}"))
}

/// Sets Elasticsearch up and makes each task's sink.
pub struct ElasticsearchFactory {
    client: reqwest::Client,
    settings: ElasticsearchSettings,
}

impl ElasticsearchFactory {
    /// Connects and puts the index template of every input (blocking: call
    /// it outside the async runtime's worker threads or in
    /// `block_in_place`). Waits for a server that is unreachable or
    /// answers 5xx (up to [`SETUP_PATIENCE`](crate::setup::SETUP_PATIENCE));
    /// fails with the server's words when it refuses a template.
    pub fn new(
        settings: &ElasticsearchSettings,
        inputs: &[Input],
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, String> {
        let client = http_client(SETUP_TIMEOUT)?;
        runtime.block_on(crate::setup::until_ready(
            "elasticsearch",
            crate::setup::SETUP_PATIENCE,
            || async {
                for input in inputs {
                    put_template(&client, settings, input).await?;
                }
                Ok(())
            },
        ))?;
        Ok(ElasticsearchFactory {
            client,
            settings: settings.clone(),
        })
    }
}

async fn put_template(
    client: &reqwest::Client,
    settings: &ElasticsearchSettings,
    input: &Input,
) -> Result<(), crate::setup::SetupFailure> {
    use crate::setup::SetupFailure;
    let base = index_base(&settings.index_prefix, &input.topic);
    let kinds: Vec<&str> = input.kinds.iter().map(|kind| kind.name()).collect();
    let body = json!({
        "index_patterns": [format!("{base}-*")],
        "priority": 200,
        "template": {
            "settings": {
                "number_of_shards": settings.shards,
                "number_of_replicas": settings.replicas,
                "refresh_interval": settings.refresh_interval,
            },
            "mappings": mappings(&input.kinds),
        },
        "_meta": {"managed_by": "adpipe-loader", "topic": input.topic, "kinds": kinds.join("|")},
    });
    let url = format!("{}/_index_template/{base}", settings.url);
    let response = client.put(&url).json(&body).send().await.map_err(|error| {
        SetupFailure::transient(format!("Elasticsearch at {}: {error}", settings.url))
    })?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(SetupFailure::from_status(
            status,
            format!("putting index template {base}: {status}: {text}"),
        ));
    }
    Ok(())
}

impl SinkFactory for ElasticsearchFactory {
    type Sink = ElasticsearchSink;
    const NAME: &'static str = "elasticsearch";

    fn sink(&self, topic: &str, _partition: i32) -> Result<ElasticsearchSink, StepError> {
        Ok(ElasticsearchSink {
            client: self.client.clone(),
            bulk_url: format!("{}/_bulk", self.settings.url),
            index_base: index_base(&self.settings.index_prefix, topic),
            in_flight: InFlight::default(),
        })
    }
}

/// One task's Elasticsearch sink.
pub struct ElasticsearchSink {
    client: reqwest::Client,
    bulk_url: String,
    index_base: String,
    /// The `_bulk` request the last write was cut off waiting for (a
    /// slow Elasticsearch once got every abandoned request sent again: no
    /// progress for 300 s in CI).
    in_flight: InFlight<BulkAnswer>,
}

/// Elasticsearch's answer to a `_bulk` request: status and body.
type BulkAnswer = Result<(reqwest::StatusCode, bytes::Bytes), String>;

/// One `_bulk` item: the action line and the document, ready to send.
#[derive(Debug)]
pub struct Document {
    action: String,
    source: Vec<u8>,
}

#[derive(Deserialize)]
struct BulkResponse {
    errors: bool,
    #[serde(default)]
    items: Vec<HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<Value>,
}

/// What became of one item.
enum Outcome {
    Done,
    Again,
    Refused(&'static str, String),
}

fn outcome(item: &BulkItem) -> Outcome {
    match item.status {
        200..=299 | 409 => Outcome::Done,
        429 | 500.. => Outcome::Again,
        _ => {
            let error = item.error.as_ref();
            let kind = error
                .and_then(|error| error.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            let reason = error
                .and_then(|error| error.get("reason"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let cause = error
                .and_then(|error| error.get("caused_by"))
                .and_then(|cause| cause.get("reason"))
                .and_then(Value::as_str)
                .map(|cause| format!(" ({cause})"))
                .unwrap_or_default();
            // A field whose value does not fit its mapping: ES 8 says
            // document_parsing_exception, OpenSearch mapper_parsing_exception.
            let label = if kind.contains("mapp") || kind.contains("parsing") {
                "mapping_rejected"
            } else {
                "document_rejected"
            };
            Outcome::Refused(
                label,
                format!("HTTP {}: {kind}: {reason}{cause}", item.status),
            )
        }
    }
}

/// Sends `indices` of `batch` as one `_bulk` request on a task of its
/// own, which keeps `turn` until Elasticsearch answered.
fn send(
    client: &reqwest::Client,
    bulk_url: &str,
    batch: &[Pending<Document>],
    indices: &[usize],
    turn: Turn,
) -> tokio::task::JoinHandle<BulkAnswer> {
    let size: usize = indices
        .iter()
        .map(|&index| batch[index].item.action.len() + batch[index].item.source.len() + 2)
        .sum();
    let mut body = Vec::with_capacity(size);
    for &index in indices {
        let document = &batch[index].item;
        body.extend_from_slice(document.action.as_bytes());
        body.push(b'\n');
        body.extend_from_slice(&document.source);
        body.push(b'\n');
    }
    let request = client
        .post(bulk_url)
        .header("content-type", "application/x-ndjson")
        .timeout(BULK_PATIENCE)
        .body(body);
    tokio::spawn(async move {
        let _turn = turn;
        let response = request.send().await.map_err(|error| error.to_string())?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|error| error.to_string())?;
        Ok((status, bytes))
    })
}

impl ElasticsearchSink {
    /// Sends the items `indices` of `batch` in one `_bulk` request (or
    /// joins the one already carrying them) and sorts them into done,
    /// again and refused.
    async fn bulk(
        &mut self,
        batch: &[Pending<Document>],
        indices: &[usize],
        turns: &Turns,
    ) -> Result<Vec<(usize, Outcome)>, StepError> {
        let (client, bulk_url) = (&self.client, &self.bulk_url);
        let (status, bytes) = self
            .in_flight
            .answer(Carries::new(batch, indices), turns, |turn| {
                send(client, bulk_url, batch, indices, turn)
            })
            .await?
            .map_err(|error| StepError::transient("elasticsearch_unreachable", error))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned();
            return Err(StepError::transient(
                "elasticsearch_refused",
                format!("_bulk answered {status}: {text}"),
            ));
        }
        let parsed: BulkResponse = serde_json::from_slice(&bytes).map_err(|error| {
            StepError::transient("elasticsearch_answer", format!("_bulk answer: {error}"))
        })?;
        if !parsed.errors {
            return Ok(indices
                .iter()
                .map(|&index| (index, Outcome::Done))
                .collect());
        }
        if parsed.items.len() != indices.len() {
            return Err(StepError::transient(
                "elasticsearch_answer",
                format!(
                    "_bulk answered {} items for {}",
                    parsed.items.len(),
                    indices.len()
                ),
            ));
        }
        Ok(indices
            .iter()
            .zip(&parsed.items)
            .map(|(&index, item)| (index, item.values().next().map_or(Outcome::Again, outcome)))
            .collect())
    }
}

impl Sink for ElasticsearchSink {
    type Item = Document;

    fn prepare(
        &mut self,
        record: &InputRecord<'_>,
        identity: &Identity,
    ) -> Result<Document, StepError> {
        if identity.id.len() > MAX_ID_BYTES {
            return Err(StepError::poison(
                "elasticsearch_id_too_long",
                format!(
                    "event id of {} bytes: Elasticsearch takes at most {MAX_ID_BYTES} as a document's _id",
                    identity.id.len()
                ),
            ));
        }
        let value: Value = record.decode()?;
        let source = serde_json::to_vec(&value)
            .map_err(|error| StepError::poison("not_json", error.to_string()))?;
        let index = daily_index(&self.index_base, identity.time_ms);
        let id = serde_json::to_string(&identity.id)
            .map_err(|error| StepError::poison("not_json", error.to_string()))?;
        let mut action = String::with_capacity(64 + index.len() + id.len());
        let _ = write!(action, r#"{{"index":{{"_index":"{index}","_id":{id}"#);
        if let Some(version) = identity.version {
            let _ = write!(action, r#","version":{version},"version_type":"external""#);
        }
        action.push_str("}}");
        Ok(Document { action, source })
    }

    async fn write(
        &mut self,
        batch: &[Pending<Document>],
        _spans: &[Span],
        turns: &Turns,
    ) -> Result<Vec<Refusal>, StepError> {
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut refusals = Vec::new();
        let mut backoff = ITEM_BACKOFF;
        for attempt in 1..=ITEM_ATTEMPTS {
            let mut again = Vec::new();
            for (index, outcome) in self.bulk(batch, &pending, turns).await? {
                match outcome {
                    Outcome::Done => {}
                    Outcome::Again => again.push(index),
                    Outcome::Refused(kind, reason) => refusals.push(Refusal {
                        index,
                        kind,
                        reason,
                    }),
                }
            }
            if again.is_empty() {
                return Ok(refusals);
            }
            metrics::counter!("adpipe_loader_item_retries_total", "sink" => "elasticsearch")
                .increment(again.len() as u64);
            if attempt < ITEM_ATTEMPTS {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            pending = again;
        }
        Err(StepError::transient(
            "elasticsearch_busy",
            format!(
                "{} items still answered 429/5xx after {ITEM_ATTEMPTS} attempts",
                pending.len()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_follow_the_schemas() {
        let impression = mappings(&[EventKind::Impression]);
        let properties = &impression["properties"];
        assert_eq!(properties["event_id"]["type"], "keyword");
        assert_eq!(properties["event_time"]["type"], "date");
        assert_eq!(properties["cost_micros"]["type"], "long");
        assert_eq!(properties["url"]["type"], "text");
        assert_eq!(properties["url"]["fields"]["keyword"]["type"], "keyword");
        let joined = mappings(&[EventKind::JoinedConversion]);
        assert_eq!(
            joined["properties"]["impression"]["properties"]["campaign_id"]["type"],
            "long"
        );
        assert_eq!(joined["properties"]["attribution"]["type"], "keyword");
        assert_eq!(
            joined["properties"]["conversion"]["properties"]["click_id"]["type"],
            "keyword"
        );
        let orphans = mappings(&[EventKind::Click, EventKind::Conversion]);
        assert!(orphans["properties"]["impression_id"].is_object());
        assert!(orphans["properties"]["order_id"].is_object());
    }

    #[test]
    fn indices_are_daily_and_lowercase() {
        let base = index_base("adpipe-", "Deduplicated.Impressions");
        assert_eq!(base, "adpipe-deduplicated-impressions");
        assert_eq!(
            daily_index(&base, 1_796_241_137_000),
            "adpipe-deduplicated-impressions-2026.12.02"
        );
    }

    #[test]
    fn items_are_sorted_by_status() {
        let item = |status, error: Option<Value>| BulkItem { status, error };
        assert!(matches!(outcome(&item(201, None)), Outcome::Done));
        assert!(matches!(outcome(&item(409, None)), Outcome::Done));
        assert!(matches!(outcome(&item(429, None)), Outcome::Again));
        assert!(matches!(outcome(&item(503, None)), Outcome::Again));
        let refused = outcome(&item(
            400,
            Some(
                json!({"type": "document_parsing_exception", "reason": "failed to parse field [event_time] of type [boolean]",
                "caused_by": {"type": "x", "reason": "Failed to parse value [1] as only [true] or [false] are allowed."}}),
            ),
        ));
        match refused {
            Outcome::Refused(kind, reason) => {
                assert_eq!(kind, "mapping_rejected");
                assert!(reason.contains("event_time"), "{reason}");
                assert!(reason.contains("only [true]"), "{reason}");
            }
            _ => panic!("a 400 is refused"),
        }
        assert!(matches!(
            outcome(&item(
                400,
                Some(json!({"type": "mapper_parsing_exception", "reason": "x"}))
            )),
            Outcome::Refused("mapping_rejected", _)
        ));
    }
}
