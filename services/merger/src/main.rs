//! `adpipe-merger`: runs one merger instance.

use std::process::ExitCode;

use adpipe_merger::MergerSettings;
use adpipe_runtime::ServiceArgs;
use clap::Parser;

/// mimalloc, as every service (see `adpipe_runtime::Allocator`).
#[global_allocator]
static ALLOCATOR: adpipe_runtime::Allocator = adpipe_runtime::Allocator;

/// Merges the DCs' streams, partition by partition, in event-time order.
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
        |path| MergerSettings::load(path, std::env::vars()),
        adpipe_merger::start,
    )
    .await
}
