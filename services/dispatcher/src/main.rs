//! `adpipe-dispatcher`: runs one dispatcher instance.

use std::process::ExitCode;

use adpipe_dispatcher::DispatcherSettings;
use adpipe_runtime::ServiceArgs;

/// mimalloc, as every service (see `adpipe_runtime::Allocator`).
#[global_allocator]
static ALLOCATOR: adpipe_runtime::Allocator = adpipe_runtime::Allocator;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ServiceArgs::parse_for(
        env!("CARGO_BIN_NAME"),
        "Sends processed events to the DCs that serve their users (events-for-<dc>), for user-profile synchronisation.",
    );
    adpipe_runtime::service_main(
        &args,
        |path| DispatcherSettings::load(path, std::env::vars()),
        adpipe_dispatcher::start,
    )
    .await
}
