//! The loader: writes topics into a store in batches, idempotently, with
//! offsets committed only after the store acknowledged (design.md,
//! service 5).
//!
//! One runtime task per input partition folds records into a batch
//! ([`step`]), written through the configured [`sink`] when full or due:
//! [`elasticsearch`] (`_bulk`, `_id` = event id, a daily index, managed
//! templates), [`files`] (Avro container files or Parquet per topic/date/hour,
//! named by offset range, put in place atomically) or [`profiles`] (per-user
//! recent events for bidders, in Redis or Aerospike) or [`bigquery`] (one
//! table per topic, resuming after the offsets its rows carry). A failing store fails
//! the write, which is tried again while the partition's queue fills and
//! pauses it; records the store refuses for good go to `dlq.loader` with
//! its reason.
#![warn(missing_docs)]

#[cfg(feature = "aerospike")]
pub mod aerospike_profiles;
pub mod avro_file;
pub mod bigquery;
pub mod config;
pub mod elasticsearch;
pub mod factory;
pub mod files;
pub mod in_flight;
pub mod memory_profiles;
pub mod parquet_file;
pub mod profiles;
pub mod read_back;
pub mod record;
pub mod setup;
pub mod sink;
pub mod step;

pub use config::{LoaderSettings, SinkKind};
pub use factory::LoaderFactory;

use adpipe_runtime::{WorkerError, WorkerHandle};

/// Starts a loader (inside a multi-threaded tokio runtime): sets its store
/// up (templates, directories), then runs the worker.
pub fn start(settings: LoaderSettings) -> Result<WorkerHandle, WorkerError> {
    let worker = settings.worker.clone();
    match settings.sink {
        SinkKind::Elasticsearch => {
            let runtime = tokio::runtime::Handle::current();
            let sinks = tokio::task::block_in_place(|| {
                elasticsearch::ElasticsearchFactory::new(
                    &settings.elasticsearch,
                    &settings.inputs,
                    &runtime,
                )
            })
            .map_err(WorkerError::Setup)?;
            adpipe_runtime::start(worker, LoaderFactory::new(sinks, settings))
        }
        SinkKind::Bigquery => {
            let runtime = tokio::runtime::Handle::current();
            let sinks = tokio::task::block_in_place(|| {
                bigquery::BigQueryFactory::new(&settings.bigquery, &settings.inputs, &runtime)
            })
            .map_err(WorkerError::Setup)?;
            adpipe_runtime::start(worker, LoaderFactory::new(sinks, settings))
        }
        SinkKind::Files => {
            let sinks = files::FilesFactory::new(&settings.files).map_err(WorkerError::Setup)?;
            adpipe_runtime::start(worker, LoaderFactory::new(sinks, settings))
        }
        SinkKind::Profiles => {
            let profiles = &settings.profiles;
            match profiles.store {
                config::ProfileBackend::Redis => {
                    let store = profiles::RedisProfiles::new(&profiles.url, &profiles.key_prefix)
                        .map_err(WorkerError::Setup)?;
                    setup::block_until_ready("redis", || async {
                        store.ping().await.map_err(setup::SetupFailure::transient)
                    })
                    .map_err(WorkerError::Setup)?;
                    start_profiles(settings, store)
                }
                #[cfg(feature = "aerospike")]
                config::ProfileBackend::Aerospike => {
                    let store = setup::block_until_ready("aerospike", || async {
                        aerospike_profiles::AerospikeProfiles::connect(
                            &profiles.url,
                            &profiles.key_prefix,
                        )
                        .await
                        .map_err(setup::SetupFailure::transient)
                    })
                    .map_err(WorkerError::Setup)?;
                    start_profiles(settings, store)
                }
                #[cfg(not(feature = "aerospike"))]
                config::ProfileBackend::Aerospike => {
                    Err(WorkerError::Setup(profiles::AEROSPIKE_NOT_BUILT.to_owned()))
                }
            }
        }
    }
}

/// Starts a profile loader writing into `store` whatever
/// `settings.profiles.store` says: the demo's embedded
/// [`MemoryProfiles`](memory_profiles::MemoryProfiles), or a backend a
/// caller built itself.
pub fn start_profiles<P: profiles::ProfileStore>(
    settings: LoaderSettings,
    store: P,
) -> Result<WorkerHandle, WorkerError> {
    let sinks =
        profiles::ProfilesFactory::new(store, settings.profiles.keep, settings.profiles.ttl);
    adpipe_runtime::start(settings.worker.clone(), LoaderFactory::new(sinks, settings))
}
