//! The pipeline's declared topics and the clusters they live on, and the
//! plan/apply that makes live clusters match the declaration.
//!
//! Contract: [`plan`] is pure — it compares a declaration with an observed
//! cluster and lists actions, marking every dangerous change as refused —
//! and [`live::apply`] carries out a plan only when nothing in it is
//! refused, so a second apply is a no-op.
#![warn(missing_docs)]

mod clusters;
mod declared;
pub mod live;
mod plan;

pub use clusters::{Cluster, ClusterMap, ClusterRole};
pub use declared::{CleanupPolicy, DesiredTopic, Topology, TopologyError};
pub use plan::{Action, ObservedTopic, TopicPlan, plan};
