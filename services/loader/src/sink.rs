//! What a store must provide to be a loader sink.
//!
//! Contract:
//! - [`Sink::prepare`] turns one record into what the store writes (a JSON
//!   document, an Avro datum …) without IO; an error there is the record's
//!   own (dead-lettered by the runtime) and the batch is unchanged;
//! - [`Sink::write`] writes a whole batch **idempotently**: written twice
//!   (a retry after a timeout, a replay after a crash) it leaves the store
//!   as written once. It returns the records the store refused for good,
//!   with the store's reason (they go to the dead-letter topic, and the
//!   batch counts as written); any other failure is an `Err` — transient:
//!   the whole batch is tried again, nothing committed; fatal: the worker
//!   stops with nothing committed past the batch;
//! - a sink whose writes are idempotent only given where a partition
//!   resumes (files named by offset range) keeps that position itself,
//!   written with the data, and says where each partition resumes
//!   ([`SinkFactory::stored_offsets`]), as the stats-counter does;
//! - every request a sink sends the store holds one of the process's
//!   [`Turns`] while it is out. A sink whose request goes on after the
//!   write timeout cut its write off (Elasticsearch's `_bulk`, BigQuery's
//!   inserts and queries: [`crate::in_flight`]) keeps the turn until the
//!   store answered, so however slow the store gets it never has more than
//!   `writes-in-flight` of the process's requests at once; the other
//!   sinks' requests end with their write;
//! - a sink whose store says where partitions resume (BigQuery) waits for
//!   such a request when its partition is revoked ([`Sink::on_revoke`]):
//!   the runtime hands the partition on only after the task ended (up to
//!   the revoke deadline to another instance, up to its linger wait back
//!   to this one), and the next owner's question then sees its rows.

use std::future::Future;
use std::sync::Arc;

use adpipe_runtime::batching::Span;
use adpipe_runtime::{AssignedPartition, InputRecord, StepError};

use crate::record::{Identity, Source};

/// The process's turns at sending the store a request, shared by every
/// partition's sink (`loader.batch.writes-in-flight` of them).
pub type Turns = Arc<tokio::sync::Semaphore>;

/// One turn, held while a request is at the store.
pub type Turn = tokio::sync::OwnedSemaphorePermit;

/// Waits for a turn of `turns`.
pub async fn take_turn(turns: &Turns) -> Result<Turn, StepError> {
    Arc::clone(turns)
        .acquire_owned()
        .await
        .map_err(|_| StepError::fatal("loader_stopped", "the write turns were closed"))
}

/// One record of a batch: as read, its identity, and the store's form.
#[derive(Debug)]
pub struct Pending<I> {
    /// The record as consumed (for the dead-letter topic).
    pub source: Source,
    /// Its id and event time.
    pub identity: Identity,
    /// What the store writes.
    pub item: I,
}

#[cfg(test)]
impl<I> Pending<I> {
    /// Unit tests' record: `offset` of `topic`'s `partition`, without key,
    /// value or headers, its id `id` at `time_ms`, the store's form `item`.
    pub fn for_test(
        topic: &str,
        partition: i32,
        offset: i64,
        (id, time_ms): (String, i64),
        item: I,
    ) -> Pending<I> {
        Pending {
            source: Source {
                topic: std::sync::Arc::from(topic),
                partition,
                offset,
                key: None,
                value: None,
                headers: adpipe_runtime::Headers::default(),
            },
            identity: Identity {
                id,
                time_ms,
                version: None,
            },
            item,
        }
    }
}

/// A record the store refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Its index in the batch.
    pub index: usize,
    /// Short stable label (`adpipe.dlq.reason`), e.g. `mapping_rejected`.
    pub kind: &'static str,
    /// The store's own words.
    pub reason: String,
}

/// A store, as one task (one input partition) writes it.
pub trait Sink: Send + 'static {
    /// What a record becomes for this store.
    type Item: Send + Sync + 'static;

    /// Prepares `record`, whose identity is `identity` (no IO).
    fn prepare(
        &mut self,
        record: &InputRecord<'_>,
        identity: &Identity,
    ) -> Result<Self::Item, StepError>;

    /// Writes `batch` (records spanning `spans`) idempotently, each request
    /// to the store holding a turn of `turns`; returns the refused ones.
    /// Must return within the loader's write timeout or be cancel-safe when
    /// cut off by it.
    fn write(
        &mut self,
        batch: &[Pending<Self::Item>],
        spans: &[Span],
        turns: &Turns,
    ) -> impl Future<Output = Result<Vec<Refusal>, StepError>> + Send;

    /// Whether the store holds the record at `offset` already, as far as
    /// the sink knows without IO (files: below the partition's marker). A
    /// partition resumes at the group's commit when that is behind what
    /// the store holds ([`SinkFactory::stored_offsets`]): such records are
    /// read again only so that a bad one among them is dead-lettered again
    /// — its dead letter may have been cut off — and are not written.
    fn holds(&self, offset: i64) -> bool {
        let _ = offset;
        false
    }

    /// Called when the task's partition is revoked or the worker stops
    /// (blocking allowed: it runs inside `block_in_place`). A sink whose
    /// requests outlive its writes and whose store is asked where the
    /// partition resumes waits for them here, so the partition's next
    /// owner never asks before they landed.
    fn on_revoke(&mut self) {}
}

/// Makes the sink of each task, and sets the store up first.
pub trait SinkFactory: Send + Sync + 'static {
    /// The sink type.
    type Sink: Sink;
    /// Name in metrics and logs (`elasticsearch`, `files`).
    const NAME: &'static str;
    /// Whether the sink keeps where partitions resume
    /// ([`Self::stored_offsets`]).
    const STORES_OFFSETS: bool = false;

    /// The sink of partition `partition` of `topic` (blocking allowed).
    fn sink(&self, topic: &str, partition: i32) -> Result<Self::Sink, StepError>;

    /// Where these newly assigned partitions resume, for a sink that keeps
    /// it (see `adpipe_runtime::StepFactory::stored_offsets`); blocking
    /// allowed, briefly. Not past the group's commit where the store may
    /// lack a record the commit is behind: a record dead-lettered (bad, or
    /// refused by the store) while its batch's other records were written
    /// has its dead letter acknowledged only after them — a kill -9 in
    /// between leaves the store past it and the commit before it, and a
    /// partition resuming after the store's last record would never send
    /// that dead letter. Such a partition resumes at the commit: the
    /// records the store holds are not written again ([`Sink::holds`], or
    /// asked of the store), the bad ones dead-lettered again.
    fn stored_offsets(
        &self,
        partitions: &[AssignedPartition],
    ) -> Result<Vec<(String, i32, i64)>, StepError> {
        let _ = partitions;
        Ok(Vec::new())
    }
}
