//! The BigQuery sink: streaming inserts (`tabledata.insertAll`) through
//! gcp-bigquery-client, into one table per input topic, partitioned by day
//! on the event time; each row's insertId is its event id.
//!
//! Exactly once — BigQuery deduplicates insertIds only best-effort (the
//! emulator not at all), so the rows carry their source coordinates and the
//! table is where each partition resumes (the offsets-with-the-data
//! pattern of the stats-counter and the files):
//! - every row holds `_partition` and `_offset`; at assignment a partition
//!   resumes after `MAX(_offset)` of its rows (`STORES_OFFSETS`), whatever
//!   the Kafka commit says — a batch inserted just before a kill -9 is
//!   never inserted again — unless a row is missing between the group's
//!   commit and that maximum ([`Target::resume_points`]): a record
//!   dead-lettered (bad, or refused by BigQuery) while the rows after it
//!   landed, whose dead letter a kill -9 may have cut off. Then it resumes
//!   at the commit, and a batch reaching down to the table's last row is
//!   sent only its rows the table lacks (asked by offset, [`Known`], once
//!   per [`PRESENCE_SPAN`] offsets): the bad record and the refused row
//!   are dead-lettered again, no row written twice;
//! - a batch goes in insertAll requests of its first unwritten rows (at
//!   most `rows-per-request`, 500 by default, and about
//!   [`MAX_REQUEST_BYTES`]: BigQuery refuses a request over 10 MB, which
//!   would stall the partition; a row too big to go even alone,
//!   [`MAX_ROW_BYTES`], is dead-lettered as `row_too_large`), one after
//!   another in offset order, each
//!   with `skipInvalidRows = false`: all its rows or none (rows BigQuery
//!   refuses are reported per row, the others marked `stopped`: the
//!   refused ones go to the dead-letter topic with BigQuery's reason and
//!   the rest are sent again) — so what landed of a batch is a prefix but
//!   for refused rows;
//! - after a failed request the sink does not know whether it landed:
//!   before the next attempt it reads `MAX(_offset)` again (and, for a
//!   batch reaching down to it, which offsets the table holds) and sends
//!   only the rows the table lacks;
//! - an insert the write timeout cut off goes on (keeping its turn) until
//!   BigQuery answers ([`InFlight`], [`PATIENCE`]): the batch's next
//!   attempt takes that answer, and the sink never asks the table what
//!   landed while one of its inserts is still out (asked before it, the
//!   table would miss its rows and they would be sent twice); nor does
//!   the partition's next owner, as far as the revoked sink waits for its
//!   insert ([`REVOKE_WAIT`], in `on_revoke`);
//! - a query BigQuery has not finished within its request (`jobComplete`
//!   false: no rows yet) is waited for ([`query_pages`]), and a query that
//!   failed is an error: neither is read as "no rows", which would send a
//!   partition's rows again.
//!
//! Left to BigQuery's own insertId de-duplication (best effort, about a
//! minute; the emulator has none): a request that failed in transit but
//! was applied, an insert unanswered in [`PATIENCE`] that lands after the
//! table was asked, an insert of a revoked sink still out after
//! [`REVOKE_WAIT`]. BigQuery takes an insertId of at most 128
//! characters: a longer event id is sent as its xxh3-128 digest ([`insert_id`]), the row
//! itself keeping the whole id — never a refused request for a legal
//! event. Proven here on the emulator (`infra/bigquery.sh`) after
//! kill -9 (`tests/bigquery.rs`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use adpipe_events::EventKind;
use adpipe_runtime::batching::Span;
use adpipe_runtime::{AssignedPartition, InputRecord, StepError};
use gcp_bigquery_client::Client;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::dataset::Dataset;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::query_response::ResultSet;
use gcp_bigquery_client::model::table::Table;
use gcp_bigquery_client::model::table_data_insert_all_request::TableDataInsertAllRequest;
use gcp_bigquery_client::model::table_data_insert_all_request_rows::TableDataInsertAllRequestRows;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use gcp_bigquery_client::model::table_schema::TableSchema;
use gcp_bigquery_client::model::time_partitioning::TimePartitioning;
use serde_json::Value;

use crate::config::{BigQuerySettings, Input};
use crate::in_flight::{BatchId, Carries, InFlight};
use crate::record::{Identity, schema_fields};
use crate::sink::{Pending, Refusal, Sink, SinkFactory, Turn, Turns};

/// The partitioning column: the event time as a TIMESTAMP.
pub const EVENT_TS: &str = "_event_ts";
/// The source partition of a row.
pub const PARTITION: &str = "_partition";
/// The source offset of a row.
pub const OFFSET: &str = "_offset";
/// About the most JSON (rows and their insertIds) one `insertAll` request
/// carries: BigQuery refuses a request over 10 MB, and a refused request
/// would be tried again for ever.
pub const MAX_REQUEST_BYTES: usize = 8_000_000;
/// The biggest row sent at all (JSON and insertId, with room for the
/// request around it under BigQuery's 10 MB): a bigger one would be refused
/// with its whole request every time, so it goes to the dead-letter topic.
pub const MAX_ROW_BYTES: usize = 9_000_000;
/// The longest insertId BigQuery takes (128 characters; bytes here, which
/// is never more lenient).
pub const MAX_INSERT_ID_BYTES: usize = 128;

/// The insertId of the row of `event_id`: the id itself, or — longer than
/// BigQuery takes — a digest of it, the same in every instance and run, so
/// a re-sent row still deduplicates.
pub fn insert_id(event_id: &str) -> String {
    if event_id.len() <= MAX_INSERT_ID_BYTES {
        event_id.to_owned()
    } else {
        format!(
            "xxh3-128:{:032x}",
            xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
        )
    }
}

/// No token: the emulator takes any request.
#[derive(Clone)]
struct NoToken;

#[async_trait::async_trait]
impl gcp_bigquery_client::auth::Authenticator for NoToken {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok(String::new())
    }
}

fn field_schema(name: &str, schema: &Value) -> TableFieldSchema {
    let mut field = match schema {
        Value::Array(branches) => {
            let branch = branches
                .iter()
                .find(|branch| branch.as_str() != Some("null"))
                .unwrap_or(&Value::Null);
            return field_schema(name, branch);
        }
        Value::Object(object) if object.get("type").and_then(Value::as_str) == Some("record") => {
            TableFieldSchema::record(name, record_schema(schema))
        }
        Value::Object(object) => primitive(name, object.get("type").and_then(Value::as_str)),
        Value::String(kind) => primitive(name, Some(kind)),
        _ => TableFieldSchema::string(name),
    };
    field.mode = Some("NULLABLE".to_owned());
    field
}

fn primitive(name: &str, kind: Option<&str>) -> TableFieldSchema {
    match kind {
        Some("long" | "int") => TableFieldSchema::integer(name),
        Some("double" | "float") => TableFieldSchema::float(name),
        Some("boolean") => TableFieldSchema::bool(name),
        Some("bytes") => TableFieldSchema::bytes(name),
        _ => TableFieldSchema::string(name),
    }
}

fn record_schema(schema: &Value) -> Vec<TableFieldSchema> {
    schema
        .get("fields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|field| {
            Some(field_schema(
                field.get("name")?.as_str()?,
                field.get("type")?,
            ))
        })
        .collect()
}

/// The table schema of a topic of `kinds`: every field of their Avro
/// schemas (times stay INTEGER milliseconds, as in the events), plus the
/// partitioning TIMESTAMP and the source coordinates.
pub fn table_schema(kinds: &[EventKind]) -> TableSchema {
    let mut fields: Vec<TableFieldSchema> = schema_fields(kinds)
        .iter()
        .map(|(name, schema)| field_schema(name, schema))
        .collect();
    let mut event_ts = TableFieldSchema::timestamp(EVENT_TS);
    event_ts.mode = Some("REQUIRED".to_owned());
    fields.push(event_ts);
    fields.push(TableFieldSchema::integer(PARTITION));
    fields.push(TableFieldSchema::integer(OFFSET));
    TableSchema::new(fields)
}

/// The table of `topic`: `<prefix><topic>`, other characters than letters,
/// digits and `_` as `_`.
pub fn table_id(prefix: &str, topic: &str) -> String {
    let name: String = topic
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}{name}")
}

/// `ms` as a TIMESTAMP literal (`2025-11-21 04:40:00.123 UTC`): a JSON
/// number means seconds to BigQuery but microseconds to the emulator; text
/// means the same to both.
pub fn timestamp_text(ms: i64) -> String {
    let (year, month, day, hour) = crate::record::civil(ms);
    let in_hour = ms.rem_euclid(3_600_000);
    format!(
        "{year:04}-{month:02}-{day:02} {hour:02}:{:02}:{:02}.{:03} UTC",
        in_hour / 60_000,
        in_hour % 60_000 / 1000,
        in_hour % 1000
    )
}

fn failed(kind: &'static str, error: &BQError) -> StepError {
    StepError::transient(kind, error.to_string())
}

fn is_conflict(error: &BQError) -> bool {
    matches!(error, BQError::ResponseError { error } if error.error.code == 409)
}

/// Where a sink writes.
#[derive(Clone)]
struct Target {
    client: Arc<Client>,
    project: String,
    dataset: String,
    /// Rows per insert at most.
    rows_per_request: usize,
}

impl Target {
    /// `MAX(_offset)` of `partition`'s rows in `table`; `None` without any.
    async fn stored(&self, table: &str, partition: i32) -> Result<Option<i64>, StepError> {
        let sql = format!(
            "SELECT {PARTITION}, MAX({OFFSET}) FROM `{}.{}.{table}` WHERE {PARTITION} = {partition} GROUP BY {PARTITION}",
            self.project, self.dataset
        );
        let mut stored = None;
        self.each_row(sql, |row| {
            // The query's WHERE keeps only this partition's row.
            if let Some(&offset) = row.get(1) {
                stored = Some(offset);
            }
        })
        .await?;
        Ok(stored)
    }

    /// Where each of these partitions of `table` resumes, given the
    /// group's committed offset of each: after its last row when every
    /// offset from the commit to that row has its row. Else a row missing
    /// there was refused or its record dead-lettered, and the dead letter
    /// may not have been acknowledged (a kill -9 after the rest of its
    /// batch landed): no offset — the partition resumes at the commit, its
    /// records are read again, the rows the table holds not sent again
    /// ([`Known`]) and the missing ones dead-lettered
    /// again. A partition without a commit resumes after its last row.
    async fn resume_points(
        &self,
        table: &str,
        partitions: &[(i32, Option<i64>)],
    ) -> Result<HashMap<i32, i64>, StepError> {
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        let bounds: Vec<String> = partitions
            .iter()
            .map(|(partition, committed)| {
                format!(
                    "({PARTITION} = {partition} AND {OFFSET} >= {})",
                    committed.unwrap_or(0)
                )
            })
            .collect();
        let sql = format!(
            "SELECT {PARTITION}, MAX({OFFSET}), COUNT(DISTINCT {OFFSET}) FROM `{}.{}.{table}` \
             WHERE {} GROUP BY {PARTITION}",
            self.project,
            self.dataset,
            bounds.join(" OR ")
        );
        let mut resume = HashMap::new();
        self.each_row(sql, |row| {
            let &[partition, last, count] = row else {
                return;
            };
            let Ok(partition) = i32::try_from(partition) else {
                return;
            };
            let committed = partitions
                .iter()
                .find(|(p, _)| *p == partition)
                .and_then(|(_, committed)| *committed);
            match committed {
                Some(committed) if count != last - committed + 1 => tracing::info!(
                    table,
                    partition,
                    committed,
                    last,
                    rows = count,
                    "rows missing between the commit and the table's last row (refused or \
                     dead-lettered records): resuming at the commit, to dead-letter them again"
                ),
                _ => {
                    resume.insert(partition, last + 1);
                }
            }
        })
        .await?;
        Ok(resume)
    }

    /// The offsets in `first..=last` of `partition`'s rows in `table`.
    async fn present(
        &self,
        table: &str,
        partition: i32,
        (first, last): (i64, i64),
    ) -> Result<HashSet<i64>, StepError> {
        let sql = format!(
            "SELECT DISTINCT {OFFSET} FROM `{}.{}.{table}` \
             WHERE {PARTITION} = {partition} AND {OFFSET} >= {first} AND {OFFSET} <= {last}",
            self.project, self.dataset
        );
        let mut present = HashSet::new();
        self.each_row(sql, |row| {
            present.extend(row.first().copied());
        })
        .await?;
        Ok(present)
    }

    /// Runs `sql` and hands `row` each row's integer columns (as far as
    /// the first that is not one).
    async fn each_row(&self, sql: String, mut row: impl FnMut(&[i64])) -> Result<(), StepError> {
        let mut request = QueryRequest::new(sql);
        request.max_results = Some(100_000);
        let mut values = Vec::new();
        query_pages(&self.client, &self.project, request, |rows| {
            let columns = rows.column_names().len();
            while rows.next_row() {
                values.clear();
                for column in 0..columns {
                    match rows.get_i64(column)? {
                        Some(value) => values.push(value),
                        None => break,
                    }
                }
                row(&values);
            }
            Ok(())
        })
        .await
        .map_err(|error| StepError::transient("bigquery_query", error))
    }
}

/// Runs `request` and hands each page of its rows to `page`, the first to
/// the last. BigQuery answers a query it has not finished within the
/// request (10 s by default) with `jobComplete` false and no rows: read as
/// an answer, "no rows" would make a sink send a partition's rows again.
/// Such a query's results are asked for again (each ask waiting up to
/// 10 s at BigQuery) until it finished, for up to [`PATIENCE`].
pub async fn query_pages(
    client: &Client,
    project: &str,
    request: QueryRequest,
    mut page: impl FnMut(&mut ResultSet) -> Result<(), BQError>,
) -> Result<(), String> {
    let max_results = request.max_results;
    let asked = tokio::time::Instant::now();
    let mut response = client
        .job()
        .query(project, request)
        .await
        .map_err(|error| error.to_string())?;
    loop {
        let complete = response.job_complete == Some(true);
        let job = response.job_reference.clone().unwrap_or_default();
        let page_token = response.page_token.clone();
        if complete && response.schema.is_none() && response.errors.is_some() {
            // A query that failed (the emulator answers so, with 200): no
            // rows, and not "no rows".
            return Err(format!("the query failed: {:?}", response.errors));
        }
        if complete {
            page(&mut ResultSet::new_from_query_response(response))
                .map_err(|error| error.to_string())?;
            if page_token.is_none() {
                return Ok(());
            }
        } else if asked.elapsed() > PATIENCE {
            return Err(format!(
                "BigQuery had not finished the query in {PATIENCE:?}"
            ));
        } else {
            // BigQuery may answer before its `timeoutMs`: not a busy loop.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let Some(job_id) = job.job_id else {
            return Err("BigQuery answered a query it had not finished without its job".to_owned());
        };
        let parameters =
            gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters {
                page_token: page_token.filter(|_| complete),
                max_results,
                location: job.location,
                timeout_ms: Some(10_000),
                ..Default::default()
            };
        response = client
            .job()
            .get_query_results(project, &job_id, parameters)
            .await
            .map_err(|error| error.to_string())?
            .into();
    }
}

/// A client of `settings.url` with the configured credentials (`none` for
/// the emulator).
pub async fn client(settings: &BigQuerySettings) -> Result<Client, String> {
    let mut builder = gcp_bigquery_client::client_builder::ClientBuilder::new();
    builder.with_v2_base_url(settings.url.clone());
    match settings.credentials.as_str() {
        "none" => builder.build_from_authenticator(Arc::new(NoToken)).await,
        "application-default" => builder.build_from_application_default_credentials().await,
        key_file => builder.build_from_service_account_key_file(key_file).await,
    }
    .map_err(|error| format!("BigQuery client ({}): {error}", settings.credentials))
}

/// The columns of a row's identity (its event id, which is its insertId,
/// and its event time in ms) in a table of `kinds`.
pub fn identity_columns(kinds: &[EventKind]) -> (&'static str, &'static str) {
    match kinds {
        [EventKind::JoinedClick] => ("click.event_id", "click.event_time"),
        [EventKind::JoinedConversion] => ("conversion.event_id", "conversion.event_time"),
        _ => ("event_id", "event_time"),
    }
}

/// (event id, event time) of every row of `topic`'s table whose event time
/// lies in `from_ms..to_ms`, page by page (what reconciliation counts).
pub async fn row_identities(
    client: &Client,
    settings: &BigQuerySettings,
    topic: &str,
    kinds: &[EventKind],
    (from_ms, to_ms): (i64, i64),
) -> Result<Vec<(String, i64)>, String> {
    let (id, time) = identity_columns(kinds);
    let table = table_id(&settings.table_prefix, topic);
    let sql = format!(
        "SELECT {id}, {time} FROM `{}.{}.{table}` WHERE {time} >= {from_ms} AND {time} < {to_ms}",
        settings.project, settings.dataset
    );
    let mut request = QueryRequest::new(sql.clone());
    request.max_results = Some(100_000);
    let mut identities = Vec::new();
    query_pages(client, &settings.project, request, |rows| {
        while rows.next_row() {
            if let (Some(id), Some(time)) = (rows.get_string(0)?, rows.get_i64(1)?) {
                identities.push((id, time));
            }
        }
        Ok(())
    })
    .await
    .map_err(|error| format!("{sql}: {error}"))?;
    Ok(identities)
}

/// Sets BigQuery up (client, dataset, tables) and makes each task's sink.
pub struct BigQueryFactory {
    target: Target,
    prefix: String,
    /// Where the resume queries run (`stored_offsets` is called on the
    /// consumer's own thread).
    runtime: tokio::runtime::Handle,
}

impl BigQueryFactory {
    /// Builds the client (credentials as configured), then creates the
    /// dataset and each input's table where missing (blocking: call it in
    /// `block_in_place`).
    pub fn new(
        settings: &BigQuerySettings,
        inputs: &[Input],
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, String> {
        runtime.block_on(async {
            let client = client(settings).await?;
            let target = Target {
                client: Arc::new(client),
                project: settings.project.clone(),
                dataset: settings.dataset.clone(),
                rows_per_request: settings.rows_per_request.max(1),
            };
            match target
                .client
                .dataset()
                .create(Dataset::new(&settings.project, &settings.dataset))
                .await
            {
                Ok(_) => {}
                Err(error) if is_conflict(&error) => {}
                Err(error) => {
                    return Err(format!(
                        "creating dataset {}.{} at {}: {error}",
                        settings.project, settings.dataset, settings.url
                    ));
                }
            }
            for input in inputs {
                let table_id = table_id(&settings.table_prefix, &input.topic);
                let table = Table::new(
                    &settings.project,
                    &settings.dataset,
                    &table_id,
                    table_schema(&input.kinds),
                )
                .time_partitioning(TimePartitioning::per_day().field(EVENT_TS));
                match target.client.table().create(table).await {
                    Ok(_) => {}
                    Err(error) if is_conflict(&error) => {}
                    Err(error) => return Err(format!("creating table {table_id}: {error}")),
                }
            }
            Ok(BigQueryFactory {
                target,
                prefix: settings.table_prefix.clone(),
                runtime: runtime.clone(),
            })
        })
    }
}

impl SinkFactory for BigQueryFactory {
    type Sink = BigQuerySink;
    const NAME: &'static str = "bigquery";
    const STORES_OFFSETS: bool = true;

    fn sink(&self, topic: &str, partition: i32) -> Result<BigQuerySink, StepError> {
        Ok(BigQuerySink::new(
            self.target.clone(),
            table_id(&self.prefix, topic),
            partition,
        ))
    }

    fn stored_offsets(
        &self,
        partitions: &[AssignedPartition],
    ) -> Result<Vec<(String, i32, i64)>, StepError> {
        let mut topics: Vec<&String> = partitions.iter().map(|p| &p.topic).collect();
        topics.sort_unstable();
        topics.dedup();
        let mut starts = Vec::new();
        for topic in topics {
            let table = table_id(&self.prefix, topic);
            let assigned: Vec<(i32, Option<i64>)> = partitions
                .iter()
                .filter(|p| &p.topic == topic)
                .map(|p| (p.partition, p.committed))
                .collect();
            let resume = self
                .runtime
                .block_on(self.target.resume_points(&table, &assigned))?;
            for (partition, _) in assigned {
                if let Some(offset) = resume.get(&partition) {
                    starts.push((topic.clone(), partition, *offset));
                }
            }
        }
        Ok(starts)
    }
}

/// One task's BigQuery sink.
pub struct BigQuerySink {
    target: Target,
    table: String,
    partition: i32,
    /// The partition's last offset in the table, as far as the sink knows:
    /// rows after it are not there. Below it a row may be missing (refused,
    /// or its record dead-lettered before the store: see
    /// [`Target::resume_points`]), so a batch reaching down there is
    /// written by [`Self::known`], not by this.
    table_end: Option<i64>,
    /// Which offsets the table holds, over a range (asked when a batch
    /// reaches down to `table_end`, then kept up by the sink's inserts).
    known: Option<Known>,
    /// Whether the table must be asked first (at the start, or after a
    /// request that may or may not have landed).
    uncertain: bool,
    /// The insert the last write was cut off waiting for.
    in_flight: InFlight<InsertAnswer>,
    /// The question where the partition's rows end, if a write was cut
    /// off waiting for its answer.
    question: InFlight<Result<TableAnswer, StepError>>,
    /// What BigQuery refused of the batch being written, kept for its next attempt: a write cut off while the
    /// rest was re-sent must not forget them — once the rest landed, the
    /// table no longer says that they did not.
    refused: Option<(BatchId, Vec<Refusal>)>,
}

/// How long an insert or a query may wait for BigQuery's answer, beyond
/// the write timeout that cuts off the write that sent it ([`InFlight`]).
const PATIENCE: Duration = Duration::from_secs(120);

/// How long a revoked sink waits for its insert still out
/// ([`Sink::on_revoke`]): within the runtime's default revoke deadline
/// (15 s, the outputs' acknowledgements first) and a stopping worker's
/// limit (25 s), so a slow insert delays a rebalance or a SIGTERM but
/// never fails them.
const REVOKE_WAIT: Duration = Duration::from_secs(10);

/// What the table says before a batch is written: the partition's last
/// offset in it, and — when the batch reaches down there — which offsets
/// from the batch's first on it holds.
type TableAnswer = (Option<i64>, Option<Known>);

/// Offsets one question about which rows the table holds covers at least:
/// a partition resumed far behind its table's end asks once per this many,
/// not once per batch (each question reads the table's `_partition` and
/// `_offset` columns whole).
const PRESENCE_SPAN: i64 = 100_000;

/// Which offsets in `from..=to` of the partition the table holds.
#[derive(Debug)]
pub struct Known {
    from: i64,
    to: i64,
    present: HashSet<i64>,
}

impl Known {
    /// Whether it says anything of each offset in `first..=last`.
    fn covers(&self, first: i64, last: i64) -> bool {
        self.from <= first && last <= self.to
    }

    /// Whether the table holds `offset`, if it knows.
    fn holds(&self, offset: i64) -> Option<bool> {
        (self.from..=self.to)
            .contains(&offset)
            .then(|| self.present.contains(&offset))
    }
}

/// BigQuery's answer to an insert: the rows it refused, with its reasons
/// (by index in the request).
type InsertAnswer = Result<Vec<(usize, String)>, StepError>;

/// A row, ready to insert.
#[derive(Debug)]
pub struct Row {
    insert_id: String,
    json: Value,
    offset: i64,
    /// Its size in a request (JSON and insertId), about.
    bytes: usize,
}

/// The row of a record decoded as `json`, from `partition` at `offset`:
/// its columns plus the event time and source coordinates. A poison error
/// for a value that is not a record, or a row over [`MAX_ROW_BYTES`] —
/// one BigQuery would never take: the record goes to the dead-letter topic
/// with the reason, instead of its request being refused for ever.
fn row_of(
    mut json: Value,
    partition: i32,
    offset: i64,
    identity: &Identity,
) -> Result<Row, StepError> {
    let object = json
        .as_object_mut()
        .ok_or_else(|| StepError::poison("not_a_record", "the value is not an Avro record"))?;
    object.insert(
        EVENT_TS.to_owned(),
        Value::from(timestamp_text(identity.time_ms)),
    );
    object.insert(PARTITION.to_owned(), Value::from(partition));
    object.insert(OFFSET.to_owned(), Value::from(offset));
    let insert_id = insert_id(&identity.id);
    let bytes = json_bytes(&json) + insert_id.len() + 32;
    if bytes > MAX_ROW_BYTES {
        return Err(StepError::poison(
            "row_too_large",
            format!(
                "its BigQuery row takes {bytes} bytes of JSON, over the {MAX_ROW_BYTES} one insertAll request can carry (BigQuery refuses a request over 10 MB)"
            ),
        ));
    }
    Ok(Row {
        bytes,
        insert_id,
        json,
        offset,
    })
}

/// How many bytes `json` takes as JSON text.
fn json_bytes(json: &Value) -> usize {
    /// Counts what is written to it.
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` to an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut counter, json);
    counter.0
}

/// Runs `request` on a task of its own, which keeps `turn` until BigQuery
/// answered or [`PATIENCE`] ran out (then a transient `kind`).
fn spawn_request<T: Send + 'static>(
    turn: Turn,
    kind: &'static str,
    request: impl Future<Output = Result<T, StepError>> + Send + 'static,
) -> tokio::task::JoinHandle<Result<T, StepError>> {
    tokio::spawn(async move {
        let _turn = turn;
        tokio::time::timeout(PATIENCE, request)
            .await
            .unwrap_or_else(|_| {
                Err(StepError::transient(
                    kind,
                    format!("no answer from BigQuery in {PATIENCE:?}"),
                ))
            })
    })
}

/// One insert of `rows` into `table`: the rows BigQuery refused.
async fn insert(
    target: &Target,
    table: &str,
    rows: Vec<TableDataInsertAllRequestRows>,
) -> InsertAnswer {
    let mut request = TableDataInsertAllRequest::new();
    request
        .add_rows(rows)
        .map_err(|error| failed("bigquery_insert", &error))?;
    let response = target
        .client
        .tabledata()
        .insert_all(&target.project, &target.dataset, table, request)
        .await
        .map_err(|error| failed("bigquery_insert", &error))?;
    let mut errors = Vec::new();
    let mut stopped_rows = 0;
    for error in response.insert_errors.into_iter().flatten() {
        let reasons = error.errors.unwrap_or_default();
        if reasons
            .iter()
            .all(|reason| reason.reason.as_deref() == Some("stopped"))
        {
            stopped_rows += 1;
            continue;
        }
        let text = reasons
            .iter()
            .map(|reason| {
                format!(
                    "{}: {}",
                    reason.reason.as_deref().unwrap_or("invalid"),
                    reason.message.as_deref().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let index = error.index.and_then(|index| usize::try_from(index).ok());
        let Some(index) = index else {
            // Not a row's own refusal: nothing of the request is known
            // inserted or refused.
            return Err(StepError::transient("bigquery_insert", text));
        };
        errors.push((index, text));
    }
    if errors.is_empty() && stopped_rows > 0 {
        // Rows stopped for no refused row: not inserted, so not written.
        return Err(StepError::transient(
            "bigquery_insert",
            format!("BigQuery stopped {stopped_rows} rows and refused none"),
        ));
    }
    Ok(errors)
}

impl BigQuerySink {
    /// A new sink of `partition` into `table`: it asks the table first.
    fn new(target: Target, table: String, partition: i32) -> Self {
        BigQuerySink {
            target,
            table,
            partition,
            table_end: None,
            known: None,
            uncertain: true,
            in_flight: InFlight::default(),
            question: InFlight::default(),
            refused: None,
        }
    }

    /// The records of `batch` not yet in the table, as far as it knows,
    /// and not refused by BigQuery.
    fn unwritten(&self, batch: &[Pending<Row>]) -> Vec<usize> {
        let refused = self
            .refused
            .as_ref()
            .map_or(&[][..], |(_, refused)| refused);
        (0..batch.len())
            .filter(|&index| {
                let offset = batch[index].item.offset;
                // Up to the table's end, where it knows; `must_ask` made
                // sure it knows down there.
                let in_table = self.table_end.is_some_and(|end| offset <= end)
                    && self
                        .known
                        .as_ref()
                        .and_then(|known| known.holds(offset))
                        .unwrap_or(true);
                !in_table && !refused.iter().any(|refusal| refusal.index == index)
            })
            .collect()
    }

    /// The next insert of `batch`: its first unwritten rows, at most
    /// `rows_per_request` of them and about [`MAX_REQUEST_BYTES`] (one row
    /// at least); none when the batch is written.
    fn first_request(&self, batch: &[Pending<Row>]) -> Vec<usize> {
        let mut bytes = 0;
        self.unwritten(batch)
            .into_iter()
            .enumerate()
            .take_while(|&(count, index)| {
                bytes += batch[index].item.bytes;
                count == 0 || (count < self.target.rows_per_request && bytes <= MAX_REQUEST_BYTES)
            })
            .map(|(_, index)| index)
            .collect()
    }

    /// Notes that the rows `landed` of `batch` are in the table. Every
    /// other offset of the batch up to the last of them is not: refused,
    /// its record dead-lettered, or — known before — already there (the
    /// inserts go in offset order, and `must_ask` asked down there).
    fn landed(&mut self, batch: &[Pending<Row>], landed: &[usize]) {
        let offsets = landed.iter().map(|&index| batch[index].item.offset);
        let (Some(first), Some(last)) = (offsets.clone().min(), offsets.clone().max()) else {
            return;
        };
        match &mut self.known {
            Some(known) if known.from <= first => {
                known.present.extend(offsets);
                known.to = known.to.max(last);
            }
            _ => {
                self.known = Some(Known {
                    from: first,
                    to: last,
                    present: offsets.collect(),
                });
            }
        }
        self.table_end = Some(self.table_end.map_or(last, |end| end.max(last)));
    }

    /// Forgets what it knows of offsets wholly below `batch`: batches only
    /// move on, so that is never asked again — kept, `known` would grow by
    /// every row the sink ever inserted.
    fn forget_below(&mut self, batch: &[Pending<Row>]) {
        if let (Some(first), Some(known)) = (batch.first(), &self.known)
            && known.to < first.item.offset
        {
            self.known = None;
        }
    }

    /// Whether the table must be asked before `batch` is written: after a
    /// request that may have landed, or when the batch reaches down to
    /// rows the table held before (which of them it holds).
    fn must_ask(&self, batch: &[Pending<Row>]) -> bool {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return self.uncertain;
        };
        let (first, last) = (first.item.offset, last.item.offset);
        let unknown_below_end = self.table_end.is_some_and(|end| {
            first <= end
                && self
                    .known
                    .as_ref()
                    .is_none_or(|known| !known.covers(first, last.min(end)))
        });
        self.uncertain || unknown_below_end
    }

    /// Reads where the partition's rows end in the table (when uncertain)
    /// and, when `batch` reaches down there, which offsets the table holds
    /// from the batch's first on, over [`PRESENCE_SPAN`] offsets at least
    /// (on a task of its own, like an insert: a store slower than the
    /// write timeout still answers the next attempt).
    async fn ask_table(&mut self, batch: &[Pending<Row>], turns: &Turns) -> Result<(), StepError> {
        let (target, table, partition) = (&self.target, &self.table, self.partition);
        let span = batch
            .first()
            .zip(batch.last())
            .map(|(first, last)| (first.item.offset, last.item.offset));
        let known_end = (!self.uncertain).then_some(self.table_end);
        let (end, known) = self
            .question
            .answer(Carries::new(batch, &[]), turns, |turn| {
                let (target, table) = (target.clone(), table.clone());
                spawn_request(turn, "bigquery_query", async move {
                    let end = match known_end {
                        Some(end) => end,
                        None => target.stored(&table, partition).await?,
                    };
                    let known = match (end, span) {
                        (Some(end), Some((first, last))) if first <= end => {
                            let to = end.min(first + PRESENCE_SPAN.max(last - first + 1) - 1);
                            let present = target.present(&table, partition, (first, to)).await?;
                            Some(Known {
                                from: first,
                                to,
                                present,
                            })
                        }
                        _ => None,
                    };
                    Ok((end, known))
                })
            })
            .await??;
        self.table_end = end;
        self.known = known;
        self.uncertain = false;
        Ok(())
    }
}

impl Sink for BigQuerySink {
    type Item = Row;

    fn prepare(&mut self, record: &InputRecord<'_>, identity: &Identity) -> Result<Row, StepError> {
        row_of(record.decode()?, record.partition, record.offset, identity)
    }

    async fn write(
        &mut self,
        batch: &[Pending<Row>],
        spans: &[Span],
        turns: &Turns,
    ) -> Result<Vec<Refusal>, StepError> {
        let this_batch = BatchId::of(batch);
        if self
            .refused
            .as_ref()
            .is_none_or(|(of, _)| *of != this_batch)
        {
            self.refused = Some((this_batch, Vec::new()));
        }
        self.forget_below(batch);
        match self.in_flight.carrying() {
            // Joined below: its answer says whether it landed.
            Some(carried) if *carried == Carries::new(batch, &self.first_request(batch)) => {}
            Some(_) => {
                self.in_flight.settle().await;
                self.ask_table(batch, turns).await?;
            }
            None if self.must_ask(batch) => self.ask_table(batch, turns).await?,
            None => {}
        }
        // One insert at a time, of the first unwritten rows (up to the
        // request's bounds), each all or none: what landed is a prefix of
        // the batch but for refused rows, and a write cut off mid-batch
        // leaves its next attempt the same first request to join.
        loop {
            let sending = self.first_request(batch);
            if sending.is_empty() {
                break;
            }
            // From here until the answer, the sink cannot know what landed.
            self.uncertain = true;
            let (target, table) = (&self.target, &self.table);
            let errors = self
                .in_flight
                .answer(Carries::new(batch, &sending), turns, |turn| {
                    let rows = sending
                        .iter()
                        .map(|&index| TableDataInsertAllRequestRows {
                            insert_id: Some(batch[index].item.insert_id.clone()),
                            json: batch[index].item.json.clone(),
                        })
                        .collect();
                    let (target, table) = (target.clone(), table.clone());
                    spawn_request(turn, "bigquery_insert", async move {
                        insert(&target, &table, rows).await
                    })
                })
                .await??;
            self.uncertain = false;
            if errors.is_empty() {
                self.landed(batch, &sending);
                continue;
            }
            // Nothing was inserted: the refused rows go to the dead-letter
            // topic (kept until the batch is written), the stopped ones in
            // the next request.
            let refused = errors
                .iter()
                .map(|(index, _)| sending.get(*index).copied())
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| {
                    StepError::transient(
                        "bigquery_insert",
                        format!(
                            "BigQuery named a row beyond the {} it was sent",
                            sending.len()
                        ),
                    )
                })?;
            if let Some((_, refusals)) = &mut self.refused {
                for ((_, reason), index) in errors.into_iter().zip(refused) {
                    if refusals.iter().all(|refusal| refusal.index != index) {
                        refusals.push(Refusal {
                            index,
                            kind: "row_rejected",
                            reason,
                        });
                    }
                }
            }
        }
        if let Some(span) = spans.first() {
            self.table_end = Some(self.table_end.map_or(span.last, |end| end.max(span.last)));
        }
        Ok(self
            .refused
            .take()
            .map(|(_, refusals)| refusals)
            .unwrap_or_default())
    }

    fn on_revoke(&mut self) {
        // Only the insert: a question that lands late changes nothing.
        self.in_flight.settle_blocking(REVOKE_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gcp_bigquery_client::model::field_type::FieldType;
    use serde_json::json;

    /// Answers BigQuery's REST calls on a loopback port with `answers`,
    /// one per request in order (each on its own connection, after its
    /// delay), and keeps the requests it was sent (line, newline, body). Only for what the
    /// emulator never does: leave a query unfinished within the request,
    /// refuse a row of a valid record.
    fn canned_bigquery(
        answers: Vec<(Duration, String)>,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let url = format!(
            "http://{}/bigquery/v2",
            listener.local_addr().expect("address")
        );
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sent = Arc::clone(&requests);
        std::thread::spawn(move || {
            for (delay, answer) in answers {
                let (stream, _) = listener.accept().expect("accepts");
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                reader.read_line(&mut line).expect("request line");
                let (mut length, mut gzip) = (0, false);
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).expect("header");
                    if header.trim_end().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().expect("length");
                        }
                        gzip |=
                            name.eq_ignore_ascii_case("content-encoding") && value.trim() == "gzip";
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).expect("body");
                if gzip {
                    let mut plain = Vec::new();
                    flate2::read::GzDecoder::new(&body[..])
                        .read_to_end(&mut plain)
                        .expect("gzip");
                    body = plain;
                }
                sent.lock().expect("requests").push(format!(
                    "{}\n{}",
                    line.trim_end(),
                    String::from_utf8_lossy(&body)
                ));
                std::thread::sleep(delay);
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        (url, requests)
    }

    async fn canned_target(url: String) -> Target {
        let settings = BigQuerySettings {
            url,
            project: "p".to_owned(),
            dataset: "d".to_owned(),
            table_prefix: String::new(),
            credentials: "none".to_owned(),
            rows_per_request: 500,
        };
        Target {
            client: Arc::new(client(&settings).await.expect("client")),
            project: "p".to_owned(),
            dataset: "d".to_owned(),
            rows_per_request: 500,
        }
    }

    /// The job of the canned queries.
    const JOB: &str = r#""jobReference": {"projectId": "p", "jobId": "job-1"}"#;

    /// The answer to an insert that took every row.
    fn inserted() -> String {
        r#"{"kind": "bigquery#tableDataInsertAllResponse"}"#.to_owned()
    }

    /// Which of `offsets` (rows `imp-<offset>`) each of `requests` carried.
    fn inserted_offsets(requests: &[String], offsets: std::ops::Range<i64>) -> Vec<Vec<i64>> {
        requests
            .iter()
            .map(|request| {
                offsets
                    .clone()
                    .filter(|offset| request.contains(&format!("imp-{offset}\"")))
                    .collect()
            })
            .collect()
    }

    /// The answer to a query of integer columns: `rows` of their values.
    fn finished_query(job: &str, rows: &[&[i64]]) -> String {
        let columns = rows.first().map_or(2, |row| row.len());
        let fields: Vec<String> = (0..columns)
            .map(|column| format!(r#"{{"name": "f{column}_", "type": "INTEGER"}}"#))
            .collect();
        let rows: Vec<String> = rows
            .iter()
            .map(|row| {
                let cells: Vec<String> = row
                    .iter()
                    .map(|value| format!(r#"{{"v": "{value}"}}"#))
                    .collect();
                format!(r#"{{"f": [{}]}}"#, cells.join(", "))
            })
            .collect();
        format!(
            r#"{{"kind": "bigquery#queryResponse", "jobComplete": true, {job},
                "schema": {{"fields": [{}]}}, "rows": [{}], "totalRows": "{}"}}"#,
            fields.join(", "),
            rows.join(", "),
            rows.len()
        )
    }

    #[tokio::test]
    async fn a_query_bigquery_has_not_finished_is_waited_for_not_read_as_no_rows() {
        let job = r#""jobReference": {"projectId": "p", "jobId": "job-1", "location": "EU"}"#;
        let unfinished =
            format!(r#"{{"kind": "bigquery#queryResponse", "jobComplete": false, {job}}}"#);
        let (url, requests) = canned_bigquery(vec![
            (Duration::ZERO, unfinished.clone()),
            (Duration::ZERO, unfinished),
            (Duration::ZERO, finished_query(job, &[&[3, 41]])),
        ]);
        let stored = canned_target(url)
            .await
            .stored("t", 3)
            .await
            .expect("answered");
        assert_eq!(
            stored,
            Some(41),
            "where the partition's rows end, once BigQuery finished the query"
        );
        let requests = requests.lock().expect("requests").clone();
        assert_eq!(requests.len(), 3, "{requests:?}");
        assert!(
            requests[0].starts_with("POST /bigquery/v2/projects/p/queries"),
            "{requests:?}"
        );
        for poll in &requests[1..] {
            assert!(
                poll.starts_with("GET /bigquery/v2/projects/p/queries/job-1")
                    && poll.contains("location=EU"),
                "the job's results asked for where it runs: {requests:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_query_that_failed_is_an_error_not_no_rows() {
        let failed = r#"{"kind": "bigquery#queryResponse", "jobComplete": true,
            "jobReference": {"projectId": "p", "jobId": "job-1"},
            "errors": [{"reason": "invalidQuery", "message": "Table not found: t"}]}"#;
        let (url, _) = canned_bigquery(vec![(Duration::ZERO, failed.to_owned())]);
        let stored = canned_target(url).await.stored("t", 3).await;
        let error = stored.expect_err("a failed query is not an empty table");
        assert!(matches!(
            error.disposition,
            adpipe_codec::Disposition::Transient
        ));
        assert!(error.message.contains("Table not found"), "{error}");
    }

    fn row(offset: i64) -> Pending<Row> {
        let id = format!("imp-{offset}");
        let item = Row {
            insert_id: id.clone(),
            json: json!({ "event_id": id }),
            offset,
            bytes: 40,
        };
        Pending::for_test("t", 0, offset, (id, 1_796_241_137_042), item)
    }

    /// A new sink of partition 0 of table `t` at the canned BigQuery `url`.
    async fn canned_sink(url: String) -> BigQuerySink {
        BigQuerySink::new(canned_target(url).await, "t".to_owned(), 0)
    }

    fn spans(first: i64, last: i64) -> [Span; 1] {
        [Span {
            topic: "t".to_owned(),
            partition: 0,
            first,
            last,
        }]
    }

    #[tokio::test]
    async fn a_partition_with_a_row_missing_after_its_commit_resumes_at_the_commit() {
        let (url, requests) = canned_bigquery(vec![(
            Duration::ZERO,
            // (partition, last offset, rows) from each partition's commit.
            finished_query(JOB, &[&[0, 102, 2], &[1, 60, 11], &[2, 9, 7]]),
        )]);
        let resume = canned_target(url)
            .await
            .resume_points(
                "t",
                &[(0, Some(100)), (1, Some(50)), (2, None), (3, Some(7))],
            )
            .await
            .expect("answered");
        assert_eq!(
            resume,
            // 0: a row of 100..=102 missing (refused, or its record
            // dead-lettered): at the commit, to dead-letter it again.
            // 1: every row of 50..=60 there: after them. 2: no commit:
            // after the last row. 3: no row since its commit: at it.
            HashMap::from([(1, 61), (2, 10)]),
        );
        let requests = requests.lock().expect("requests").clone();
        assert!(
            requests[0].contains("_partition = 0 AND _offset >= 100")
                && requests[0].contains("_partition = 2 AND _offset >= 0"),
            "{requests:?}"
        );
    }

    #[tokio::test]
    async fn a_row_missing_below_the_tables_end_is_sent_again_and_its_refusal_returned() {
        // A kill -9 after the batch's other rows landed, before the dead
        // letter of the row BigQuery refused was acknowledged: the table
        // holds 100, 102 and (a later batch's) 105; the partition resumed
        // at its commit (100).
        let inserted = inserted();
        let (url, requests) = canned_bigquery(vec![
            (Duration::ZERO, finished_query(JOB, &[&[0, 105]])),
            (
                Duration::ZERO,
                finished_query(JOB, &[&[100], &[102], &[105]]),
            ),
            // 101 refused, 103 stopped for it; then 103 alone, inserted.
            (
                Duration::ZERO,
                r#"{"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": [
                    {"index": 0, "errors": [{"reason": "invalid", "message": "no such field: x"}]},
                    {"index": 1, "errors": [{"reason": "stopped", "message": ""}]}]}"#
                    .to_owned(),
            ),
            (Duration::ZERO, inserted.clone()),
            // The next batch: 104 and 106, without asking again.
            (Duration::ZERO, inserted),
        ]);
        let mut sink = canned_sink(url).await;
        let turns: Turns = Arc::new(tokio::sync::Semaphore::new(2));
        let batch = [row(100), row(101), row(102), row(103)];
        let refusals = sink
            .write(&batch, &spans(100, 103), &turns)
            .await
            .expect("written");
        let next_batch = [row(104), row(105), row(106)];
        let next_refusals = sink
            .write(&next_batch, &spans(104, 106), &turns)
            .await
            .expect("written");
        let requests = requests.lock().expect("requests").clone();
        assert_eq!(
            refusals
                .iter()
                .map(|refusal| (refusal.index, refusal.kind))
                .collect::<Vec<_>>(),
            [(1, "row_rejected")],
            "the missing row refused again, for the dead-letter topic: {requests:?}"
        );
        assert!(next_refusals.is_empty());
        assert_eq!(requests.len(), 5, "{requests:?}");
        assert!(
            requests[1].contains("_offset >= 100 AND _offset <= 105"),
            "which rows the table holds, from the batch's first to the table's end, asked once: {requests:?}"
        );
        assert_eq!(
            inserted_offsets(&requests[2..], 100..107),
            [vec![101, 103], vec![103], vec![104, 106]],
            "the missing rows sent again, the ones the table holds not: {requests:?}"
        );
    }

    #[tokio::test]
    async fn which_rows_the_table_holds_is_asked_once_per_presence_span_not_per_batch() {
        // Resumed at its commit (100) far behind the table's end (250,000):
        // the table holds 100 and 102, then 100,100. One question covers
        // PRESENCE_SPAN offsets from the first batch's first; a batch past
        // them asks again, for the next span.
        let inserted = inserted();
        let (url, requests) = canned_bigquery(vec![
            (Duration::ZERO, finished_query(JOB, &[&[0, 250_000]])),
            (Duration::ZERO, finished_query(JOB, &[&[100], &[102]])),
            (Duration::ZERO, inserted.clone()),
            // 104 and 105: known absent, sent without asking.
            (Duration::ZERO, inserted.clone()),
            (Duration::ZERO, finished_query(JOB, &[&[100_100]])),
            (Duration::ZERO, inserted),
        ]);
        let mut sink = canned_sink(url).await;
        let turns: Turns = Arc::new(tokio::sync::Semaphore::new(2));
        let batches: [&[i64]; 3] = [&[100, 101, 102, 103], &[104, 105], &[100_100, 100_101]];
        for offsets in batches {
            let batch: Vec<Pending<Row>> = offsets.iter().copied().map(row).collect();
            let (first, last) = (offsets[0], offsets[offsets.len() - 1]);
            let refusals = sink
                .write(&batch, &spans(first, last), &turns)
                .await
                .expect("written");
            assert!(refusals.is_empty());
        }
        let requests = requests.lock().expect("requests").clone();
        assert_eq!(requests.len(), 6, "{requests:?}");
        let span_end = 100 + PRESENCE_SPAN - 1;
        assert!(
            requests[1].contains(&format!("_offset >= 100 AND _offset <= {span_end}")),
            "the first question covers PRESENCE_SPAN offsets: {requests:?}"
        );
        assert!(
            requests[4].contains(&format!(
                "_offset >= 100100 AND _offset <= {}",
                100_100 + PRESENCE_SPAN - 1
            )),
            "a batch past it asks for the next span: {requests:?}"
        );
        let inserts = [2, 3, 5].map(|index| requests[index].clone());
        assert_eq!(
            inserted_offsets(&inserts, 100..100_102),
            [vec![101, 103], vec![104, 105], vec![100_101]],
            "only the rows the table lacks: {requests:?}"
        );
    }

    #[tokio::test]
    async fn a_batch_goes_in_bounded_requests_and_a_cut_off_one_is_joined_not_sent_again() {
        let inserted = inserted();
        let (url, requests) = canned_bigquery(vec![
            (Duration::ZERO, finished_query(JOB, &[])),
            (Duration::ZERO, inserted.clone()),
            // The second request is answered after the write timeout.
            (Duration::from_secs(3), inserted.clone()),
            (Duration::ZERO, inserted.clone()),
            // The next batch, without asking the table.
            (Duration::ZERO, inserted.clone()),
            (Duration::ZERO, inserted),
        ]);
        let mut sink = canned_sink(url).await;
        sink.target.rows_per_request = 2;
        let turns: Turns = Arc::new(tokio::sync::Semaphore::new(2));
        let batch: Vec<Pending<Row>> = (100..105).map(row).collect();
        let cut_off = tokio::time::timeout(
            Duration::from_secs(1),
            sink.write(&batch, &spans(100, 104), &turns),
        )
        .await;
        assert!(cut_off.is_err(), "the write timeout cut the write off");
        let refusals = sink
            .write(&batch, &spans(100, 104), &turns)
            .await
            .expect("written");
        assert!(refusals.is_empty());
        let next_batch: Vec<Pending<Row>> = (105..108).map(row).collect();
        sink.write(&next_batch, &spans(105, 107), &turns)
            .await
            .expect("written");
        assert_eq!(
            sink.known.as_ref().map(|known| known.present.len()),
            Some(3),
            "only the last batch's offsets kept in memory, not every row ever inserted"
        );
        let requests = requests.lock().expect("requests").clone();
        assert_eq!(
            inserted_offsets(&requests[1..4], 100..105),
            [vec![100, 101], vec![102, 103], vec![104]],
            "two rows a request, in offset order; the cut-off one joined, not sent again: {requests:?}"
        );
    }

    /// Writes one row against an insert answered `insert_errors`: the
    /// answer must be a transient failure (nothing known inserted or
    /// refused), after which the table is asked again.
    async fn assert_insert_answer_is_a_failure(insert_errors: &str) {
        let (url, _) = canned_bigquery(vec![
            (Duration::ZERO, finished_query(JOB, &[])),
            (
                Duration::ZERO,
                format!(
                    r#"{{"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": {insert_errors}}}"#
                ),
            ),
        ]);
        let mut sink = canned_sink(url).await;
        let turns: Turns = Arc::new(tokio::sync::Semaphore::new(2));
        let result = sink.write(&[row(100)], &spans(100, 100), &turns).await;
        let error = result
            .map(|refusals| refusals.len())
            .expect_err("not a row inserted, nor one refused");
        assert!(
            matches!(error.disposition, adpipe_codec::Disposition::Transient),
            "{error}"
        );
        assert!(sink.uncertain, "the table is asked before the next attempt");
    }

    #[tokio::test]
    async fn an_answer_of_rows_stopped_and_none_refused_is_a_failure_not_rows_written() {
        assert_insert_answer_is_a_failure(
            r#"[{"index": 0, "errors": [{"reason": "stopped", "message": ""}]}]"#,
        )
        .await;
    }

    #[tokio::test]
    async fn an_error_of_no_row_is_a_failure_not_a_row_refused() {
        // An error the answer ties to no row: not this row's refusal (its
        // record would be dead-lettered), nothing known of the request.
        assert_insert_answer_is_a_failure(
            r#"[{"errors": [{"reason": "backendError", "message": "try again"}]}]"#,
        )
        .await;
    }

    #[tokio::test]
    async fn a_request_is_bounded_by_its_bytes_too() {
        let mut sink = canned_sink("http://127.0.0.1:9/bigquery/v2".to_owned()).await;
        let big = |offset| {
            let mut pending = row(offset);
            pending.item.bytes = 3_000_000;
            pending
        };
        let batch = [big(0), big(1), big(2), big(3), big(4)];
        sink.table_end = None;
        sink.uncertain = false;
        // 6 MB fit under the 8 MB bound, 9 MB do not.
        assert_eq!(sink.first_request(&batch), [0, 1]);
        sink.landed(&batch, &[0, 1]);
        assert_eq!(sink.first_request(&batch), [2, 3]);
        sink.landed(&batch, &[2, 3]);
        assert_eq!(sink.first_request(&batch), [4]);
        sink.landed(&batch, &[4]);
        assert!(sink.first_request(&batch).is_empty());
        // A row bigger than the bound still goes, alone.
        let mut huge = row(5);
        huge.item.bytes = MAX_ROW_BYTES;
        assert_eq!(sink.first_request(&[huge, row(6)]), [0]);
    }

    #[test]
    fn a_row_too_big_for_any_request_is_refused_as_poison_not_sent() {
        let identity = Identity {
            id: "imp-1".to_owned(),
            time_ms: 1_796_241_137_042,
            version: None,
        };
        // The row's JSON with a `note` of `length` characters.
        let with_note = |length| row_of(json!({ "note": "x".repeat(length) }), 3, 41, &identity);
        let small = with_note(10).expect("a small row");
        assert_eq!(small.json[PARTITION], 3);
        assert_eq!(small.json[OFFSET], 41);
        assert_eq!(
            small.bytes,
            serde_json::to_string(&small.json).expect("JSON").len() + 5 + 32
        );
        // The largest note that still fits, then one character more.
        let fitting = MAX_ROW_BYTES - (small.bytes - 10);
        let at_bound = with_note(fitting).map(|row| row.bytes).ok();
        assert_eq!(at_bound, Some(MAX_ROW_BYTES));
        // Its size, not the row, on failure: no 9 MB of output.
        let error = with_note(fitting + 1)
            .map(|row| row.bytes)
            .expect_err("over the bound: refused");
        assert_eq!(error.kind, "row_too_large");
        assert_eq!(error.disposition, adpipe_codec::Disposition::Poison);
        assert!(error.message.contains("10 MB"), "{}", error.message);
    }

    #[tokio::test]
    async fn a_refused_row_is_not_forgotten_when_the_rest_outlives_the_write() {
        let stopped = r#"{"reason": "stopped", "message": ""}"#;
        let (url, requests) = canned_bigquery(vec![
            // Where the partition's rows end: none yet.
            (Duration::ZERO, finished_query(JOB, &[])),
            // The first insert: the middle row refused, the others stopped.
            (
                Duration::ZERO,
                format!(
                    r#"{{"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": [
                        {{"index": 0, "errors": [{stopped}]}},
                        {{"index": 1, "errors": [{{"reason": "invalid", "message": "no such field: x"}}]}},
                        {{"index": 2, "errors": [{stopped}]}}]}}"#
                ),
            ),
            // The others again: landed, answered after the write timeout.
            (Duration::from_secs(3), inserted()),
        ]);
        let mut sink = canned_sink(url).await;
        let turns: Turns = Arc::new(tokio::sync::Semaphore::new(2));
        let batch = [row(100), row(101), row(102)];
        let spans = spans(100, 102);
        let cut_off =
            tokio::time::timeout(Duration::from_secs(1), sink.write(&batch, &spans, &turns)).await;
        assert!(cut_off.is_err(), "the write timeout cut the write off");
        assert_eq!(
            requests.lock().expect("requests").len(),
            3,
            "cut off while the second insert was out (else this run proves nothing)"
        );
        let refusals = sink.write(&batch, &spans, &turns).await.expect("written");
        assert_eq!(
            refusals
                .iter()
                .map(|refusal| (refusal.index, refusal.kind))
                .collect::<Vec<_>>(),
            [(1, "row_rejected")],
            "the refused row goes to the dead-letter topic: {:?}",
            requests.lock().expect("requests")
        );
        assert_eq!(
            requests.lock().expect("requests").len(),
            3,
            "the second attempt joined the insert in flight"
        );
    }

    #[test]
    fn an_insert_id_longer_than_bigquery_takes_is_a_stable_digest() {
        let short = "imp-0000000000000001-5f1c2a9e-7b3d-4c1e-9a55-0d6f3b2c8e41";
        assert_eq!(insert_id(short), short);
        let at_limit = "x".repeat(MAX_INSERT_ID_BYTES);
        assert_eq!(insert_id(&at_limit), at_limit);
        let long = format!("imp-refused-by-elasticsearch-{}", "x".repeat(512));
        let digest = insert_id(&long);
        assert!(digest.len() <= MAX_INSERT_ID_BYTES, "{digest}");
        assert_eq!(insert_id(&long), digest, "the same in every run");
        let other = format!("{long}y");
        assert_ne!(insert_id(&other), digest);
    }

    #[test]
    fn tables_follow_the_schemas() {
        let schema = table_schema(&[EventKind::JoinedClick]);
        let fields = schema.fields.as_ref().expect("fields");
        let names: Vec<&str> = fields.iter().map(|field| field.name.as_str()).collect();
        assert_eq!(names, ["click", "impression", EVENT_TS, PARTITION, OFFSET]);
        let impression = &fields[1];
        assert!(matches!(impression.r#type, FieldType::Record));
        let nested = impression.fields.as_ref().expect("fields");
        let cost = nested
            .iter()
            .find(|field| field.name == "cost_micros")
            .expect("cost");
        assert!(matches!(cost.r#type, FieldType::Integer));
        assert_eq!(fields[2].mode.as_deref(), Some("REQUIRED"));
        assert_eq!(table_id("t_", "joined.clicks-x"), "t_joined_clicks_x");
        assert_eq!(
            timestamp_text(1_796_241_137_042),
            "2026-12-02 19:52:17.042 UTC"
        );
    }
}
