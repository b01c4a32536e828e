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
//! A service provides a [`Step`] (and a [`StepFactory`] that
//! restores its state); it never sees offsets.
#![warn(missing_docs)]

mod ack;
mod actor;
pub mod config;
mod consumer;
pub mod dead_letter;
mod offsets;
mod producer;
mod service_main;
mod step;
pub mod telemetry;
mod worker;

pub use ack::AckToken;
pub use config::{ConfigError, FailureAction, WorkerSettings};
pub use offsets::OffsetTracker;
pub use producer::{PRODUCER_DEFAULTS, producer_config};
pub use service_main::{ServiceArgs, init_logging, service_main};
pub use step::{
    Emitter, InputRecord, OutputRecord, PartitionAssignment, Step, StepError, StepFactory,
};
pub use worker::{WorkerError, WorkerHandle, run_until_stopped, shutdown_signal, start};
