//! `adpipe-passthrough`: the runtime with no logic, a benchmark baseline.

use std::process::ExitCode;

use adpipe_loadtest::passthrough;
use adpipe_runtime::ServiceArgs;
use clap::Parser;

/// mimalloc, as every service (see `adpipe_runtime::Allocator`).
#[global_allocator]
static ALLOCATOR: adpipe_runtime::Allocator = adpipe_runtime::Allocator;

/// Copies input topics to `<input><suffix>`, partition by partition
/// (`[passthrough] inputs`, `output-suffix`).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    passthrough::service_main(&args.service).await
}
