//! `adpipe-deduplicator`: runs one deduplicator instance.

use std::process::ExitCode;

use adpipe_deduplicator::DedupSettings;
use adpipe_runtime::ServiceArgs;

/// mimalloc, as every service (see `adpipe_runtime::Allocator`).
#[global_allocator]
static ALLOCATOR: adpipe_runtime::Allocator = adpipe_runtime::Allocator;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ServiceArgs::parse_for(
        env!("CARGO_BIN_NAME"),
        "Drops duplicate events within a window of event time.",
    );
    adpipe_runtime::service_main(
        &args,
        |path| DedupSettings::load(path, std::env::vars()),
        adpipe_deduplicator::start,
    )
    .await
}
