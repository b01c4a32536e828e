//! `adpipe-joiner`: runs one joiner instance.

use std::process::ExitCode;

use adpipe_joiner::JoinerSettings;
use adpipe_runtime::ServiceArgs;

/// mimalloc, as every service (see `adpipe_runtime::Allocator`).
#[global_allocator]
static ALLOCATOR: adpipe_runtime::Allocator = adpipe_runtime::Allocator;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ServiceArgs::parse_for(
        env!("CARGO_BIN_NAME"),
        "Joins clicks with impressions and conversions with clicks; orphans with a reason.",
    );
    adpipe_runtime::service_main(
        &args,
        |path| JoinerSettings::load(path, std::env::vars()),
        adpipe_joiner::start,
    )
    .await
}
