//! The deduplicator: drops every event whose event_id was already seen
//! within a window of event time (design.md, service 2).
//!
//! Runs on the shared worker runtime. State is one in-memory set of 128-bit
//! id hashes per partition, backed by a compacted changelog topic (partition
//! i of the changelog belongs to partition i of the input) and a local
//! snapshot file written on revoke and shutdown: on assignment the state is
//! the snapshot (if any) plus the changelog from the snapshot's offset, so it
//! survives restarts and moves with its partition on rebalance.
#![warn(missing_docs)]

pub mod config;
pub mod snapshot;
pub mod state;
pub mod step;
pub mod store;

pub use config::DedupSettings;
pub use step::{DedupFactory, DedupStep};

/// Starts the deduplicator (inside a tokio runtime).
pub fn start(
    settings: DedupSettings,
) -> Result<adpipe_runtime::WorkerHandle, adpipe_runtime::WorkerError> {
    let worker = settings.worker.clone();
    let factory = tokio::task::block_in_place(|| DedupFactory::new(settings))
        .map_err(|error| adpipe_runtime::WorkerError::Setup(error.to_string()))?;
    adpipe_runtime::start(worker, factory)
}
