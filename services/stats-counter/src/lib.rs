//! The stats-counter: exact real-time aggregates per time bucket and
//! dimensions in PostgreSQL (design.md, service 4).
//!
//! One runtime task per partition of each input (`deduplicated.impressions`,
//! `joined.clicks`, `joined.conversions`, `joined.orphans`) folds records
//! into a batch of increments ([`aggregate`]) and writes each batch to
//! PostgreSQL in one transaction with the partition's offset ([`store`],
//! [`step`]); partitions resume from the offsets stored there
//! ([`factory`]). The admin server also answers `GET /budget/today`
//! ([`budget`]); every changed row's total goes to the compacted topic
//! `stats.totals` (at least once; see [`factory`]).
#![warn(missing_docs)]

pub mod aggregate;
pub mod budget;
pub mod config;
pub mod factory;
pub mod step;
pub mod store;

pub use aggregate::{BucketSize, Counts, Dimensions, Increments, OrphanKey, Rejected, RowKey};
pub use config::StatsSettings;
pub use factory::StatsFactory;
pub use store::{OffsetAdvance, PgStore, StoreError, UpsertMethod};

/// Starts the stats-counter (inside a multi-threaded tokio runtime):
/// migrates the schema, then runs the worker (with the budget endpoint).
pub fn start(
    settings: StatsSettings,
) -> Result<adpipe_runtime::WorkerHandle, adpipe_runtime::WorkerError> {
    let worker = settings.worker.clone();
    let routes = budget::routes(&settings.postgres_url, &settings.schema);
    let runtime = tokio::runtime::Handle::current();
    let factory = tokio::task::block_in_place(|| StatsFactory::new(settings, runtime))
        .map_err(adpipe_runtime::WorkerError::Setup)?;
    adpipe_runtime::start_with_routes(worker, factory, Some(routes))
}
