//! The stats-counter's contenders: the unique impressions (what
//! `deduplicated.impressions` holds) counted into PostgreSQL at batch sizes
//! 100, 1,000, 10,000 and 50,000 (bounded by count alone) with the default
//! upsert (binary COPY + merge), and
//! at 10,000 with the other one (multi-row INSERT … ON CONFLICT over
//! arrays), and at 10,000 without the totals topic (what sending the
//! totals costs). Each writes its own schema and totals topic; after a round the
//! impressions counted in PostgreSQL must equal the impressions published
//! (exact, not at least).

use adpipe_stats_counter::{BucketSize, PgStore};

/// One configuration of the stats-counter.
pub struct Variant {
    /// What `--only` calls it (`--only stats` selects them all).
    pub key: &'static str,
    /// Its name in the report.
    pub name: &'static str,
    /// `stats.batch-records`.
    pub batch_records: usize,
    /// `stats.upsert`.
    pub upsert: &'static str,
    /// Whether it sends the totals to its `stats.totals` topic.
    pub totals: bool,
    /// `stats.batch-wait`: long enough that a partition's batch fills by
    /// count at the rates measured here.
    pub batch_wait: &'static str,
}

/// The variants, in report order.
pub const VARIANTS: [Variant; 6] = [
    Variant {
        key: "stats100",
        name: "stats-counter, batches of 100",
        batch_records: 100,
        upsert: "copy-merge",
        totals: true,
        batch_wait: "1s",
    },
    Variant {
        key: "stats1000",
        name: "stats-counter, batches of 1,000",
        batch_records: 1_000,
        upsert: "copy-merge",
        totals: true,
        batch_wait: "1s",
    },
    Variant {
        key: "stats10000",
        name: "stats-counter, batches of 10,000",
        batch_records: 10_000,
        upsert: "copy-merge",
        totals: true,
        batch_wait: "1s",
    },
    Variant {
        key: "stats50000",
        name: "stats-counter, batches of 50,000",
        batch_records: 50_000,
        upsert: "copy-merge",
        totals: true,
        batch_wait: "10s",
    },
    Variant {
        key: "stats10000u",
        name: "stats-counter, batches of 10,000, unnest upsert",
        batch_records: 10_000,
        upsert: "unnest",
        totals: true,
        batch_wait: "1s",
    },
    Variant {
        key: "stats10000n",
        name: "stats-counter, batches of 10,000, no totals topic",
        batch_records: 10_000,
        upsert: "copy-merge",
        totals: false,
        batch_wait: "1s",
    },
];

/// The topics a stats-counter contender reads besides the impressions
/// (empty here: joined clicks, joined conversions, orphans).
pub const EMPTY_INPUTS: [&str; 3] = ["stats-jclk", "stats-jcnv", "stats-orph"];

/// The `[registry]` and `[stats]` sections of a contender's config.
pub fn sections(
    variant: &Variant,
    registry_url: &str,
    impressions: &str,
    empty_inputs: &[String],
    totals_topic: &str,
    postgres_url: &str,
    schema: &str,
) -> String {
    format!(
        "[registry]\nurl = \"{registry_url}\"\n\
         [stats]\nimpressions = \"{impressions}\"\njoined-clicks = \"{}\"\n\
         joined-conversions = \"{}\"\norphans = \"{}\"\ntotals-topic = \"{totals_topic}\"\n\
         postgres-url = \"{postgres_url}\"\nschema = \"{schema}\"\nupsert = \"{}\"\n\
         batch-records = {}\nbatch-bytes = 67108864\nbatch-wait = \"{}\"\n",
        empty_inputs[0],
        empty_inputs[1],
        empty_inputs[2],
        variant.upsert,
        variant.batch_records,
        variant.batch_wait,
        totals_topic = if variant.totals { totals_topic } else { "" },
    )
}

/// The impressions counted in `schema`'s minute table, and its rows; the
/// schema is dropped afterwards (generated data is not kept).
pub async fn counted(postgres_url: &str, schema: &str) -> Result<(i64, usize), String> {
    let store = PgStore::connect(postgres_url, schema)
        .await
        .map_err(|error| error.to_string())?;
    let rows = store
        .totals(BucketSize::Minute)
        .await
        .map_err(|error| error.to_string())?;
    let impressions = rows.values().map(|counts| counts.impressions).sum();
    store
        .drop_schema()
        .await
        .map_err(|error| error.to_string())?;
    Ok((impressions, rows.len()))
}
