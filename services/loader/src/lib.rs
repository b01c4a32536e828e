//! The loader: writes topics into a store in batches, idempotently, with
//! offsets committed only after the store acknowledged (design.md,
//! service 5).
//!
//! One runtime task per input partition folds records into a batch
//! ([`step`]), written through the configured [`sink`] when full or due:
//! [`elasticsearch`] (`_bulk`, `_id` = event id, a daily index, managed
//! templates) or [`files`] (Avro container files per topic/date/hour,
//! named by offset range, put in place atomically). A failing store fails
//! the write, which is tried again while the partition's queue fills and
//! pauses it; records the store refuses for good go to `dlq.loader` with
//! its reason.
#![warn(missing_docs)]

pub mod avro_file;
pub mod config;
pub mod elasticsearch;
pub mod factory;
pub mod files;
pub mod record;
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
                    settings.write_timeout,
                    &runtime,
                )
            })
            .map_err(WorkerError::Setup)?;
            adpipe_runtime::start(worker, LoaderFactory::new(sinks, settings))
        }
        SinkKind::Files => {
            let sinks = files::FilesFactory::new(&settings.files).map_err(WorkerError::Setup)?;
            adpipe_runtime::start(worker, LoaderFactory::new(sinks, settings))
        }
    }
}
