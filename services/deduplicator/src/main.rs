//! `adpipe-deduplicator`: runs one deduplicator instance.

use std::process::ExitCode;

use adpipe_deduplicator::DedupSettings;
use adpipe_runtime::ServiceArgs;
use clap::Parser;

/// mimalloc, as every service (see `adpipe_runtime::Allocator`).
#[global_allocator]
static ALLOCATOR: adpipe_runtime::Allocator = adpipe_runtime::Allocator;

/// Drops duplicate events within a window of event time.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    adpipe_runtime::service_main(
        &args.service,
        |path| DedupSettings::load(path, std::env::vars()),
        adpipe_deduplicator::start,
    )
    .await
}
