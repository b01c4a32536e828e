//! The one worker runtime every adpipe service runs on.
//!
//! Contract (design.md, "The worker runtime"):
//! - one consumer per instance, polled on its own thread; records go to one
//!   actor per partition (or sub-partition by key) with queues bounded in
//!   bytes: a partition above the high mark is paused, and resumed below the
//!   low mark;
//! - a record is done when every output it emitted is acknowledged by Kafka
//!   (or it emitted none); only the contiguous prefix of done offsets is
//!   committed ([`OffsetTracker`]);
//! - a step that takes longer than the processing timeout is cut off (its
//!   future dropped) and fails with kind `processing_timeout`;
//! - failures are classified: transient ones are retried with backoff,
//!   poison records go to the dead-letter topic with the reason and source
//!   coordinates in headers, fatal ones stop the worker so its supervisor
//!   restarts it from the last commit; the action can be overridden per
//!   error kind (`[runtime.on-error-kind]`);
//! - on revoke or SIGTERM, in-flight outputs get until the revoke deadline,
//!   the done prefix is committed, and revoked partitions are fenced;
//! - Prometheus metrics, `/livez` and `/readyz`.
//!
//! - a panic in a step never counts as done: the record is abandoned and the
//!   worker stops; an output the broker rejects for good goes to the
//!   dead-letter topic with its input's coordinates;
//! - a task owns partition i of every topic of its input group; with several
//!   inputs it is fed in event-time order ([`align`]), advanced by in-band
//!   [`heartbeat`]s or, for an input at its end and silent, after `max-idle`;
//! - a step may hold a record and complete it later ([`Held`]) and set
//!   wall-clock or event-time timers ([`Emitter::set_timer`]);
//! - the topics a worker reads and writes are checked before it starts.
//!
//! A service provides a [`Step`] (and a [`StepFactory`] that
//! restores its state); it never sees offsets.
#![warn(missing_docs)]

mod ack;
pub mod align;
mod batch;
pub mod batching;
pub mod config;
mod consumer;
pub mod dead_letter;
pub mod emitted;
pub mod event_time;
mod headers;
pub mod heartbeat;
mod offset_reset;
mod offsets;
mod producer;
mod service_main;
mod step;
mod task;
pub mod telemetry;
mod timers;
pub mod topics;
mod worker;

pub use ack::{AckToken, Held};
/// The shared byte buffers of [`OutputRecord`]s.
pub use bytes::Bytes;
pub use config::{ConfigError, FailureAction, OutputTopic, WorkerSettings};
pub use consumer::CONSUMER_DEFAULTS;
pub use event_time::EventTimePolicy;
pub use headers::{HeaderEntries, Headers, header_bytes, header_text};
pub use offsets::OffsetTracker;
pub use producer::{PRODUCER_DEFAULTS, producer_config};
pub use service_main::{ServiceArgs, init_logging, load_settings, service_main};
pub use step::{
    AssignedPartition, Emitter, InputRecord, OutputRecord, PROCESSING_TIMEOUT, Step, StepError,
    StepFactory, TaskAssignment, Timer, TimerClock,
};
pub use worker::{
    StopRequest, WorkerError, WorkerHandle, run_until_stopped, shutdown_signal, start,
    start_with_routes,
};

/// The global allocator of every service binary:
/// `#[global_allocator] static ALLOCATOR: adpipe_runtime::Allocator = adpipe_runtime::Allocator;`
///
/// Records are allocated on the consumer's thread and freed on a task's;
/// with glibc's malloc those cross-thread frees (and its arena
/// consolidation) took about a quarter of the pass-through's CPU under
/// `perf`. mimalloc frees to the owning thread's heap without a lock.
pub use mimalloc::MiMalloc as Allocator;
