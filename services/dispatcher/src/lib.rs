//! The dispatcher: user-profile synchronisation between DCs (design.md,
//! service 5). It reads the processed events on the central cluster and
//! sends each to `events-for-<dc>` for every DC that serves its user but
//! did not see it ([`dispatch`]); MirrorMaker 2 carries those topics to
//! their DCs, where the loader's profile sink writes them — so a user seen
//! in one DC is known to every DC's bidders.
#![warn(missing_docs)]

pub mod config;
pub mod dispatch;

pub use config::DispatcherSettings;
pub use dispatch::{DispatchFactory, Routes, Serving};

/// Starts the dispatcher (inside a tokio runtime).
pub fn start(
    settings: DispatcherSettings,
) -> Result<adpipe_runtime::WorkerHandle, adpipe_runtime::WorkerError> {
    adpipe_runtime::start(settings.worker, DispatchFactory::new(settings.routes))
}
