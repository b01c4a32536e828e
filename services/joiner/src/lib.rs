//! The joiner: joins each click with its impression and each conversion
//! with its click and that click's impression (design.md, service 3).
//!
//! One runtime task owns partition i of `deduplicated.impressions`,
//! `.clicks` and `.conversions` (co-partitioned by user) and is fed in
//! event-time order across the three (`adpipe_runtime::align`), so a click
//! normally meets its impression already in state. Impressions are stored
//! (never emitted, never rewritten); clicks go to `joined.clicks`,
//! conversions to `joined.conversions` (attribution rules: [`rules`]); what
//! finds no partner waits, held, then goes to `joined.orphans` unchanged
//! with the reason in headers — never silently dropped.
//!
//! State per partition lives in two `adpipe_state` stores on local disk
//! (impressions for the click window, clicks for the attribution window),
//! each backed by a compacted changelog topic: restored after a restart
//! from local data plus the changelog's tail, and on another host from the
//! changelog alone ([`factory`]).
#![warn(missing_docs)]

pub mod config;
pub mod factory;
pub mod rules;
pub mod state;
pub mod step;

pub use config::JoinerSettings;
pub use factory::JoinFactory;
pub use step::JoinStep;

/// The orphan headers (reason: [`rules::OrphanReason::name`]), shared with
/// the stats-counter that reads them.
pub use adpipe_events::{HEADER_ORPHAN_KIND, HEADER_ORPHAN_REASON};

/// Starts the joiner (inside a tokio runtime).
pub fn start(
    settings: JoinerSettings,
) -> Result<adpipe_runtime::WorkerHandle, adpipe_runtime::WorkerError> {
    let worker = settings.worker.clone();
    let factory = tokio::task::block_in_place(|| JoinFactory::new(settings))
        .map_err(adpipe_runtime::WorkerError::Setup)?;
    adpipe_runtime::start(worker, factory)
}
