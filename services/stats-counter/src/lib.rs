//! The stats-counter: exact real-time aggregates per time bucket and
//! dimensions in PostgreSQL (design.md, service 4).
//!
//! Built so far: the counting rules ([`aggregate`]) and the PostgreSQL side
//! ([`store`]): versioned migrations, the batch transaction that writes the
//! increments and moves the partitions' offsets by compare-and-set (a
//! replayed or zombie batch is refused whole), the stored offsets a
//! restarted instance resumes from, the analysts' views and the budget
//! query. The runtime side (offsets owned by the service, batches) comes
//! next (issue 10).
#![warn(missing_docs)]

pub mod aggregate;
pub mod store;

pub use aggregate::{BucketSize, Counts, Dimensions, Increments, OrphanKey, Rejected, RowKey};
pub use store::{OffsetAdvance, PgStore, StoreError, UpsertMethod};
