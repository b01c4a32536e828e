//! The aggregates in PostgreSQL: versioned migrations, the batch
//! transaction, the stored offsets and the queries analysts and bidders run.
//!
//! Exactly-once contract: [`PgStore::commit`] writes a batch's increments
//! and advances its partitions' offsets in **one transaction**. Each offset
//! moves by compare-and-set (`… WHERE next_offset = expected`, exactly one
//! row or the whole transaction rolls back as [`StoreError::Fenced`]), so a
//! batch is counted at most once even when a zombie instance that lost its
//! partition still writes, and the service resumes from
//! [`PgStore::stored_offsets`], so it is counted at least once.
//!
//! Two ways to upsert the increments, measured side by side
//! ([`UpsertMethod`]): one `INSERT … SELECT FROM unnest(arrays) ON
//! CONFLICT DO UPDATE` per table, or a binary `COPY` into a temporary
//! staging table followed by the same merge from it.

use std::collections::HashMap;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement, Transaction};
use tracing::{info, warn};

use crate::aggregate::{BucketSize, Counts, Dimensions, Increments, OrphanKey, RowKey};

/// How a batch's increments reach the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpsertMethod {
    /// `INSERT … SELECT FROM unnest($1, …) ON CONFLICT DO UPDATE`.
    Unnest,
    /// Binary `COPY` into a staging table, then the same merge from it.
    CopyMerge,
}

/// One partition's offset moving forward with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetAdvance {
    /// Input topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The stored offset this batch started from (`None`: none stored yet).
    pub expected: Option<i64>,
    /// The next offset to read after this batch.
    pub next: i64,
}

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer moved the partition's offset first (a zombie, or a
    /// replay of a batch already counted): nothing of the batch was written.
    #[error(
        "{topic}-{partition}: stored offset is {found:?}, the batch expected {expected:?}: another instance owns it"
    )]
    Fenced {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// What the batch expected.
        expected: Option<i64>,
        /// What is stored.
        found: Option<i64>,
    },
    /// PostgreSQL failed (connection lost, server restarting, …).
    #[error("postgresql: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// A row's total after a commit (what goes to the totals topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Total {
    /// The row.
    pub key: RowKey,
    /// Its measures.
    pub counts: Counts,
    /// How many times it changed (1 when created; strictly increasing).
    pub version: i64,
}

/// The versioned schema, applied in order, each once (`{s}` = the schema).
/// The aggregate tables leave 30% of each page free (`fillfactor`): a
/// batch updates only measures, never an indexed column, so the new row
/// version fits on its page as a HOT update, without index writes.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "aggregates, orphans, offsets, views",
        r#"
create table {s}.offsets (
  consumer_group text not null,
  topic text not null,
  partition integer not null,
  next_offset bigint not null,
  updated_at timestamptz not null default now(),
  primary key (consumer_group, topic, partition)
);
create table {s}.stats_minute (
  bucket timestamptz not null,
  campaign_id bigint not null,
  creative_id bigint not null,
  advertiser_id bigint not null,
  publisher_id bigint not null,
  site text not null,
  ssp text not null,
  country text not null,
  dc text not null,
  currency text not null,
  impressions bigint not null,
  clicks bigint not null,
  conversions bigint not null,
  cost_micros bigint not null,
  conversion_value_micros bigint not null,
  primary key (bucket, campaign_id, creative_id, advertiser_id, publisher_id, site, ssp, country, dc, currency)
) with (fillfactor = 70);
create table {s}.stats_hour (like {s}.stats_minute including all) with (fillfactor = 70);
create table {s}.orphans_minute (
  bucket timestamptz not null,
  kind text not null,
  reason text not null,
  events bigint not null,
  primary key (bucket, kind, reason)
) with (fillfactor = 70);
create table {s}.orphans_hour (like {s}.orphans_minute including all) with (fillfactor = 70);
create view {s}.minute as
  select bucket, campaign_id, creative_id, advertiser_id, publisher_id, site, ssp, country, dc,
         currency, impressions, clicks, conversions, cost_micros, conversion_value_micros,
         cost_micros / 1e6 as cost, conversion_value_micros / 1e6 as conversion_value,
         case when impressions > 0 then clicks::float8 / impressions end as ctr
  from {s}.stats_minute;
create view {s}.hour as
  select bucket, campaign_id, creative_id, advertiser_id, publisher_id, site, ssp, country, dc,
         currency, impressions, clicks, conversions, cost_micros, conversion_value_micros,
         cost_micros / 1e6 as cost, conversion_value_micros / 1e6 as conversion_value,
         case when impressions > 0 then clicks::float8 / impressions end as ctr
  from {s}.stats_hour;
do $$ begin
  create role adpipe_reader nologin;
exception when duplicate_object or unique_violation then
  null; -- created by another schema's migration (roles are per server)
end $$;
grant usage on schema {s} to adpipe_reader;
grant select on {s}.minute, {s}.hour, {s}.orphans_minute, {s}.orphans_hour to adpipe_reader;
"#,
    ),
    (
        2,
        "a version per row, for the stats.totals topic",
        r#"
alter table {s}.stats_minute add column version bigint not null default 1;
alter table {s}.stats_hour add column version bigint not null default 1;
"#,
    ),
];

/// The dimension and measure columns of the stats tables, in order.
// Every upsert inserts its rows in key order (`order by` the key): batches
// of different partitions that touch the same rows lock them in the same
// order, so they wait for each other instead of deadlocking (PostgreSQL
// would abort one after its deadlock_timeout, 1 s, and the batch is tried
// again: exact, but slow).
/// The rows of a [`Columns`] as a table `u(b, c1…c9, m1…m5)`: bucket ms,
/// the nine dimensions, the five measures (parameters $1…$15).
const UNNEST_ROWS: &str =
    "unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
    $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
    $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[])
    as u(b, c1, c2, c3, c4, c5, c6, c7, c8, c9, m1, m2, m3, m4, m5)";

const STATS_COLUMNS: &str = "bucket, campaign_id, creative_id, advertiser_id, publisher_id, site, ssp, country, dc, currency, impressions, clicks, conversions, cost_micros, conversion_value_micros";
const STATS_KEY: &str = "bucket, campaign_id, creative_id, advertiser_id, publisher_id, site, ssp, country, dc, currency";
const STATS_ADD: &str = "impressions = t.impressions + excluded.impressions, clicks = t.clicks + excluded.clicks, conversions = t.conversions + excluded.conversions, cost_micros = t.cost_micros + excluded.cost_micros, conversion_value_micros = t.conversion_value_micros + excluded.conversion_value_micros, version = t.version + 1";
/// The columns of a row as returned: the bucket as epoch milliseconds.
const STATS_RETURNING: &str = "(extract(epoch from t.bucket) * 1000)::bigint, t.campaign_id, t.creative_id, t.advertiser_id, t.publisher_id, t.site, t.ssp, t.country, t.dc, t.currency, t.impressions, t.clicks, t.conversions, t.cost_micros, t.conversion_value_micros, t.version";

/// A connection to the aggregates of one schema.
pub struct PgStore {
    client: Client,
    schema: String,
    /// The staging table exists on this connection (`CopyMerge`).
    staging: bool,
    /// The batch transaction's statements, prepared once per connection
    /// (a round trip less per statement).
    prepared: Prepared,
}

/// Statements prepared on this connection, by SQL text.
type Prepared = HashMap<String, Statement>;

/// The statement for `sql`, prepared on first use.
async fn prepared(
    transaction: &Transaction<'_>,
    cache: &mut Prepared,
    sql: String,
) -> Result<Statement, tokio_postgres::Error> {
    if let Some(statement) = cache.get(&sql) {
        return Ok(statement.clone());
    }
    let statement = transaction.prepare(&sql).await?;
    cache.insert(sql, statement.clone());
    Ok(statement)
}

/// The columns of a batch's rows of one bucket size, as arrays.
#[derive(Default)]
struct Columns {
    bucket_ms: Vec<i64>,
    campaign: Vec<i64>,
    creative: Vec<i64>,
    advertiser: Vec<i64>,
    publisher: Vec<i64>,
    site: Vec<String>,
    ssp: Vec<String>,
    country: Vec<String>,
    dc: Vec<String>,
    currency: Vec<String>,
    impressions: Vec<i64>,
    clicks: Vec<i64>,
    conversions: Vec<i64>,
    cost: Vec<i64>,
    value: Vec<i64>,
}

impl Columns {
    fn of(increments: &Increments, size: BucketSize) -> Columns {
        let mut columns = Columns::default();
        for (key, counts) in increments.rows.iter().filter(|(key, _)| key.size == size) {
            let dimensions = &key.dimensions;
            columns.bucket_ms.push(key.bucket_ms);
            columns.campaign.push(dimensions.campaign_id);
            columns.creative.push(dimensions.creative_id);
            columns.advertiser.push(dimensions.advertiser_id);
            columns.publisher.push(dimensions.publisher_id);
            columns.site.push(dimensions.site.clone());
            columns.ssp.push(dimensions.ssp.clone());
            columns.country.push(dimensions.country.clone());
            columns.dc.push(dimensions.dc.clone());
            columns.currency.push(dimensions.currency.clone());
            columns.impressions.push(counts.impressions);
            columns.clicks.push(counts.clicks);
            columns.conversions.push(counts.conversions);
            columns.cost.push(counts.cost_micros);
            columns.value.push(counts.conversion_value_micros);
        }
        columns
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 15] {
        [
            &self.bucket_ms,
            &self.campaign,
            &self.creative,
            &self.advertiser,
            &self.publisher,
            &self.site,
            &self.ssp,
            &self.country,
            &self.dc,
            &self.currency,
            &self.impressions,
            &self.clicks,
            &self.conversions,
            &self.cost,
            &self.value,
        ]
    }
}

fn total_of(size: BucketSize, row: &tokio_postgres::Row) -> Total {
    Total {
        key: RowKey {
            size,
            bucket_ms: row.get(0),
            dimensions: Dimensions {
                campaign_id: row.get(1),
                creative_id: row.get(2),
                advertiser_id: row.get(3),
                publisher_id: row.get(4),
                site: row.get(5),
                ssp: row.get(6),
                country: row.get(7),
                dc: row.get(8),
                currency: row.get(9),
            },
        },
        counts: Counts {
            impressions: row.get(10),
            clicks: row.get(11),
            conversions: row.get(12),
            cost_micros: row.get(13),
            conversion_value_micros: row.get(14),
        },
        version: row.get(15),
    }
}

impl PgStore {
    /// Connects to `url` (a `postgresql://` URL) for the tables of `schema`.
    pub async fn connect(url: &str, schema: &str) -> Result<PgStore, StoreError> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                warn!(%error, "postgresql connection ended");
            }
        });
        Ok(PgStore {
            client,
            schema: quote_ident(schema),
            staging: false,
            prepared: Prepared::new(),
        })
    }

    /// Whether the connection is gone (the server restarted or went away).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Applies the migrations not applied yet, each in its own transaction,
    /// under a lock so instances starting together apply each once.
    /// Returns how many were applied.
    pub async fn migrate(&mut self) -> Result<usize, StoreError> {
        let s = &self.schema;
        let mut applied = 0;
        for (version, description, sql) in MIGRATIONS {
            let transaction = self.client.transaction().await?;
            transaction
                .execute("select pg_advisory_xact_lock(hashtext($1))", &[s])
                .await?;
            transaction
                .batch_execute(&format!(
                    "create schema if not exists {s};
                     create table if not exists {s}.schema_migrations (
                       version integer primary key, description text not null,
                       applied_at timestamptz not null default now())"
                ))
                .await?;
            let done = transaction
                .query_opt(
                    &format!("select 1 from {s}.schema_migrations where version = $1"),
                    &[version],
                )
                .await?
                .is_some();
            if !done {
                transaction.batch_execute(&sql.replace("{s}", s)).await?;
                transaction
                    .execute(
                        &format!(
                            "insert into {s}.schema_migrations (version, description) values ($1, $2)"
                        ),
                        &[version, description],
                    )
                    .await?;
                applied += 1;
                info!(schema = s, version, description, "migration applied");
            }
            transaction.commit().await?;
        }
        Ok(applied)
    }

    /// The offsets stored for `group` on `topic`, by partition.
    pub async fn stored_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<HashMap<i32, i64>, StoreError> {
        let rows = self
            .client
            .query(
                &format!(
                    "select partition, next_offset from {}.offsets where consumer_group = $1 and topic = $2",
                    self.schema
                ),
                &[&group, &topic],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Drops the schema with everything in it (benchmarks clean up).
    pub async fn drop_schema(&self) -> Result<(), StoreError> {
        self.client
            .batch_execute(&format!(
                "drop schema if exists {} cascade",
                quote_ident(&self.schema)
            ))
            .await?;
        Ok(())
    }

    /// Every offset stored for `group`: (topic, partition, next offset).
    pub async fn group_offsets(&self, group: &str) -> Result<Vec<(String, i32, i64)>, StoreError> {
        let rows = self
            .client
            .query(
                &format!(
                    "select topic, partition, next_offset from {}.offsets where consumer_group = $1
                     order by 1, 2",
                    self.schema
                ),
                &[&group],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect())
    }

    /// Stores `offsets` for `group` unconditionally (an operator's reset of
    /// a stopped group: `adpipe replay`).
    pub async fn reset_offsets(
        &mut self,
        group: &str,
        offsets: &[(String, i32, i64)],
    ) -> Result<(), StoreError> {
        let transaction = self.client.transaction().await?;
        for (topic, partition, offset) in offsets {
            transaction
                .execute(
                    &format!(
                        "insert into {}.offsets (consumer_group, topic, partition, next_offset) values ($1, $2, $3, $4)
                         on conflict (consumer_group, topic, partition) do update set next_offset = excluded.next_offset, updated_at = now()",
                        self.schema
                    ),
                    &[&group, topic, partition, offset],
                )
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Writes one batch: its offsets (compare-and-set) and increments, in
    /// one transaction. Returns the new totals of every row it touched.
    pub async fn commit(
        &mut self,
        group: &str,
        offsets: &[OffsetAdvance],
        increments: &Increments,
        method: UpsertMethod,
    ) -> Result<Vec<Total>, StoreError> {
        if method == UpsertMethod::CopyMerge && !self.staging {
            self.client
                .batch_execute(
                    "create temporary table if not exists adpipe_stats_stage (
                       size text not null, bucket_ms bigint not null, campaign_id bigint not null,
                       creative_id bigint not null, advertiser_id bigint not null,
                       publisher_id bigint not null, site text not null, ssp text not null,
                       country text not null, dc text not null, currency text not null,
                       impressions bigint not null, clicks bigint not null,
                       conversions bigint not null, cost_micros bigint not null,
                       conversion_value_micros bigint not null
                     ) on commit delete rows",
                )
                .await?;
            self.staging = true;
        }
        let PgStore {
            client,
            schema,
            prepared: cache,
            ..
        } = self;
        let transaction = client.transaction().await?;
        advance_offsets(&transaction, cache, schema, group, offsets).await?;
        let totals = match method {
            UpsertMethod::Unnest => upsert_unnest(&transaction, cache, schema, increments).await?,
            UpsertMethod::CopyMerge => upsert_copy(&transaction, cache, schema, increments).await?,
        };
        upsert_orphans(&transaction, cache, schema, increments).await?;
        transaction.commit().await?;
        Ok(totals)
    }

    /// Every row of one bucket size (tests and reconciliation).
    pub async fn totals(&self, size: BucketSize) -> Result<HashMap<RowKey, Counts>, StoreError> {
        let rows = self
            .client
            .query(
                &format!(
                    "select {STATS_RETURNING} from {}.stats_{} as t",
                    self.schema,
                    size.name()
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let total = total_of(size, row);
                (total.key, total.counts)
            })
            .collect())
    }

    /// The current totals of the rows `increments` touches (those that
    /// exist), as a commit returns them: for sending a row's total again.
    pub async fn current(&self, increments: &Increments) -> Result<Vec<Total>, StoreError> {
        let mut totals = Vec::new();
        for size in BucketSize::ALL {
            let columns = Columns::of(increments, size);
            if columns.bucket_ms.is_empty() {
                continue;
            }
            let sql = format!(
                "select {STATS_RETURNING}
                 from {UNNEST_ROWS}
                 join {schema}.stats_{size} as t
                   on t.bucket = to_timestamp(u.b / 1000.0) and t.campaign_id = u.c1
                  and t.creative_id = u.c2 and t.advertiser_id = u.c3 and t.publisher_id = u.c4
                  and t.site = u.c5 and t.ssp = u.c6 and t.country = u.c7 and t.dc = u.c8
                  and t.currency = u.c9",
                schema = self.schema,
                size = size.name()
            );
            let rows = self.client.query(&sql, &columns.params()).await?;
            totals.extend(rows.iter().map(|row| total_of(size, row)));
        }
        Ok(totals)
    }

    /// Every orphan row of one bucket size.
    pub async fn orphan_totals(
        &self,
        size: BucketSize,
    ) -> Result<HashMap<OrphanKey, i64>, StoreError> {
        let rows = self
            .client
            .query(
                &format!(
                    "select (extract(epoch from bucket) * 1000)::bigint, kind, reason, events from {}.orphans_{}",
                    self.schema,
                    size.name()
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    OrphanKey {
                        size,
                        bucket_ms: row.get(0),
                        kind: row.get(1),
                        reason: row.get(2),
                    },
                    row.get(3),
                )
            })
            .collect())
    }

    /// Spend per campaign and currency in the UTC day that holds `now_ms` (what a bidder polls to stop over-budget campaigns);
    /// currencies a campaign spent nothing in (a conversion's) are left out.
    pub async fn spend_today(&self, now_ms: i64) -> Result<Vec<(i64, String, i64)>, StoreError> {
        let day_start = now_ms.div_euclid(86_400_000) * 86_400_000;
        let rows = self
            .client
            .query(
                &format!(
                    "select campaign_id, currency, sum(cost_micros)::bigint from {}.stats_hour
                     where bucket >= to_timestamp($1::bigint / 1000.0)
                       and bucket < to_timestamp(($1::bigint + 86400000) / 1000.0)
                     group by 1, 2 having sum(cost_micros) > 0 order by 1, 2",
                    self.schema
                ),
                &[&day_start],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect())
    }
}

/// Moves each partition's offset from `expected` to `next`, or fails the
/// whole transaction as [`StoreError::Fenced`].
async fn advance_offsets(
    transaction: &Transaction<'_>,
    cache: &mut Prepared,
    schema: &str,
    group: &str,
    offsets: &[OffsetAdvance],
) -> Result<(), StoreError> {
    for advance in offsets {
        let changed = match advance.expected {
            Some(expected) => {
                let update = prepared(
                    transaction,
                    cache,
                    format!(
                        "update {schema}.offsets set next_offset = $4, updated_at = now()
                         where consumer_group = $1 and topic = $2 and partition = $3 and next_offset = $5"
                    ),
                )
                .await?;
                transaction
                    .execute(
                        &update,
                        &[
                            &group,
                            &advance.topic,
                            &advance.partition,
                            &advance.next,
                            &expected,
                        ],
                    )
                    .await?
            }
            None => {
                let insert = prepared(
                    transaction,
                    cache,
                    format!(
                        "insert into {schema}.offsets (consumer_group, topic, partition, next_offset)
                         values ($1, $2, $3, $4) on conflict do nothing"
                    ),
                )
                .await?;
                transaction
                    .execute(
                        &insert,
                        &[&group, &advance.topic, &advance.partition, &advance.next],
                    )
                    .await?
            }
        };
        if changed != 1 {
            let found = transaction
                .query_opt(
                    &format!(
                        "select next_offset from {schema}.offsets
                         where consumer_group = $1 and topic = $2 and partition = $3"
                    ),
                    &[&group, &advance.topic, &advance.partition],
                )
                .await?
                .map(|row| row.get(0));
            return Err(StoreError::Fenced {
                topic: advance.topic.clone(),
                partition: advance.partition,
                expected: advance.expected,
                found,
            });
        }
    }
    Ok(())
}

async fn upsert_unnest(
    transaction: &Transaction<'_>,
    cache: &mut Prepared,
    schema: &str,
    increments: &Increments,
) -> Result<Vec<Total>, StoreError> {
    let mut totals = Vec::with_capacity(increments.rows.len());
    for size in BucketSize::ALL {
        let columns = Columns::of(increments, size);
        if columns.bucket_ms.is_empty() {
            continue;
        }
        let sql = format!(
            "insert into {schema}.stats_{size} as t ({STATS_COLUMNS})
             select to_timestamp(b / 1000.0), c1, c2, c3, c4, c5, c6, c7, c8, c9, m1, m2, m3, m4, m5
             from {UNNEST_ROWS}
             order by b, c1, c2, c3, c4, c5, c6, c7, c8, c9
             on conflict ({STATS_KEY}) do update set {STATS_ADD}
             returning {STATS_RETURNING}",
            size = size.name()
        );
        let statement = prepared(transaction, cache, sql).await?;
        let rows = transaction.query(&statement, &columns.params()).await?;
        totals.extend(rows.iter().map(|row| total_of(size, row)));
    }
    Ok(totals)
}

async fn upsert_copy(
    transaction: &Transaction<'_>,
    cache: &mut Prepared,
    schema: &str,
    increments: &Increments,
) -> Result<Vec<Total>, StoreError> {
    let sink = transaction
        .copy_in(
            "copy adpipe_stats_stage (size, bucket_ms, campaign_id, creative_id, advertiser_id, publisher_id, site, ssp, country, dc, currency, impressions, clicks, conversions, cost_micros, conversion_value_micros) from stdin (format binary)",
        )
        .await?;
    let types = [
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    let mut writer = std::pin::pin!(writer);
    for (key, counts) in &increments.rows {
        let dimensions = &key.dimensions;
        writer
            .as_mut()
            .write(&[
                &key.size.name(),
                &key.bucket_ms,
                &dimensions.campaign_id,
                &dimensions.creative_id,
                &dimensions.advertiser_id,
                &dimensions.publisher_id,
                &dimensions.site,
                &dimensions.ssp,
                &dimensions.country,
                &dimensions.dc,
                &dimensions.currency,
                &counts.impressions,
                &counts.clicks,
                &counts.conversions,
                &counts.cost_micros,
                &counts.conversion_value_micros,
            ])
            .await?;
    }
    writer.finish().await?;
    let mut totals = Vec::with_capacity(increments.rows.len());
    for size in BucketSize::ALL {
        let sql = format!(
            "insert into {schema}.stats_{name} as t ({STATS_COLUMNS})
             select to_timestamp(bucket_ms / 1000.0), campaign_id, creative_id, advertiser_id,
                    publisher_id, site, ssp, country, dc, currency, impressions, clicks,
                    conversions, cost_micros, conversion_value_micros
             from adpipe_stats_stage where size = $1
             order by bucket_ms, campaign_id, creative_id, advertiser_id, publisher_id, site, ssp,
                      country, dc, currency
             on conflict ({STATS_KEY}) do update set {STATS_ADD}
             returning {STATS_RETURNING}",
            name = size.name()
        );
        let statement = prepared(transaction, cache, sql).await?;
        let rows = transaction.query(&statement, &[&size.name()]).await?;
        totals.extend(rows.iter().map(|row| total_of(size, row)));
    }
    Ok(totals)
}

async fn upsert_orphans(
    transaction: &Transaction<'_>,
    cache: &mut Prepared,
    schema: &str,
    increments: &Increments,
) -> Result<(), StoreError> {
    for size in BucketSize::ALL {
        let (mut buckets, mut kinds, mut reasons, mut counts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (key, count) in increments
            .orphans
            .iter()
            .filter(|(key, _)| key.size == size)
        {
            buckets.push(key.bucket_ms);
            kinds.push(key.kind.as_str());
            reasons.push(key.reason.as_str());
            counts.push(*count);
        }
        if buckets.is_empty() {
            continue;
        }
        let statement = prepared(
            transaction,
            cache,
            format!(
                "insert into {schema}.orphans_{size} as t (bucket, kind, reason, events)
                 select to_timestamp(b / 1000.0), k, r, n
                 from unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[]) as u(b, k, r, n)
                 order by b, k, r
                 on conflict (bucket, kind, reason) do update set events = t.events + excluded.events",
                size = size.name()
            ),
        )
        .await?;
        transaction
            .execute(&statement, &[&buckets, &kinds, &reasons, &counts])
            .await?;
    }
    Ok(())
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
