//! `adpipe-merger`: runs one merger instance.

use std::process::ExitCode;

use adpipe_merger::MergerSettings;
use adpipe_runtime::ServiceArgs;

/// mimalloc, as every service (see `adpipe_runtime::Allocator`).
#[global_allocator]
static ALLOCATOR: adpipe_runtime::Allocator = adpipe_runtime::Allocator;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ServiceArgs::parse_for(
        env!("CARGO_BIN_NAME"),
        "Merges the DCs' streams, partition by partition, in event-time order.",
    );
    adpipe_runtime::service_main(
        &args,
        |path| MergerSettings::load(path, std::env::vars()),
        adpipe_merger::start,
    )
    .await
}
