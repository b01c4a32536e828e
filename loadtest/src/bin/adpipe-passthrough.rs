//! `adpipe-passthrough`: the runtime with no logic, a benchmark baseline.

use std::process::ExitCode;

use adpipe_loadtest::passthrough;
use adpipe_runtime::ServiceArgs;

/// mimalloc, as every service (see `adpipe_runtime::Allocator`).
#[global_allocator]
static ALLOCATOR: adpipe_runtime::Allocator = adpipe_runtime::Allocator;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ServiceArgs::parse_for(
        env!("CARGO_BIN_NAME"),
        "Copies input topics to <input><suffix>, partition by partition ([passthrough] inputs, output-suffix).",
    );
    passthrough::service_main(&args).await
}
