//! `adpipe-stats-counter`: runs one stats-counter instance.

use std::process::ExitCode;

use adpipe_runtime::ServiceArgs;
use adpipe_stats_counter::StatsSettings;

/// mimalloc, as every service (see `adpipe_runtime::Allocator`).
#[global_allocator]
static ALLOCATOR: adpipe_runtime::Allocator = adpipe_runtime::Allocator;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ServiceArgs::parse_for(
        env!("CARGO_BIN_NAME"),
        "Counts impressions, clicks, conversions and orphans per minute and hour into PostgreSQL, exactly once.",
    );
    adpipe_runtime::service_main(
        &args,
        |path| StatsSettings::load(path, std::env::vars()),
        adpipe_stats_counter::start,
    )
    .await
}
