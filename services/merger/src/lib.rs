//! The merger: merges the streams of several DCs (design.md, service 1).
//!
//! Partition i of `<dc>.<kind>` for every configured DC (the DC topics as
//! MirrorMaker 2 replicated them to this cluster) goes into partition i of
//! `merged.<kind>`, in event-time order: one runtime task owns partition i
//! of every DC's topic of a kind and is fed in event-time order across them
//! (`adpipe_runtime::align`). In-band heartbeats from each DC (`adpipe
//! heartbeat`) let a DC with no traffic advance the merge; a DC whose
//! replication is cut is waited for `runtime.max-idle`, then the merge goes
//! on, and its backlog is merged later, counted and marked late.
//!
//! Each output carries its origin DC and source offset in headers, so a
//! restarted task resumes after the last records already merged (found at
//! the tail of its output partition) instead of re-emitting everything since
//! the last commit. Source offsets are committed only after the merged
//! output is acknowledged (the runtime's offset tracker).
#![warn(missing_docs)]

pub mod config;
pub mod resume;
pub mod step;

pub use config::MergerSettings;
pub use step::{MergeFactory, MergeStep};

/// Header: the DC the event was published in (shared with the dispatcher).
pub use adpipe_events::HEADER_ORIGIN_DC;
/// Header: the record's offset in its DC's replicated topic on this cluster.
pub const HEADER_SOURCE_OFFSET: &str = "adpipe.source.offset";
/// Header: how far (ms of event time) behind already merged records a
/// straggler came; absent on records merged in order.
pub const HEADER_LATENESS: &str = "adpipe.merge.lateness.ms";

/// Starts the merger (inside a tokio runtime).
pub fn start(
    settings: MergerSettings,
) -> Result<adpipe_runtime::WorkerHandle, adpipe_runtime::WorkerError> {
    let worker = settings.worker.clone();
    adpipe_runtime::start(worker, MergeFactory::new(settings))
}
