//! The `adpipe` command line. The CLI is the composition root of the
//! project: it may use any library crate, including services' libraries (the
//! demo runs the schema registry in-process), while services never depend on
//! each other.

pub mod chaos;
pub mod check;
pub mod console;
pub mod consume;
pub mod demo;
pub mod groups;
pub mod health;
pub mod heartbeat;
pub mod lag;
pub mod metrics_text;
pub mod produce;
mod progress;
pub mod reconcile;
pub mod replay;
pub mod simulate;
pub mod target;
pub mod topology;
