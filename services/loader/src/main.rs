//! `adpipe-loader`: runs one loader instance (its sink chosen by configuration).

use std::process::ExitCode;

use adpipe_loader::LoaderSettings;
use adpipe_runtime::ServiceArgs;

/// mimalloc, as every service (see `adpipe_runtime::Allocator`).
#[global_allocator]
static ALLOCATOR: adpipe_runtime::Allocator = adpipe_runtime::Allocator;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ServiceArgs::parse_for(
        env!("CARGO_BIN_NAME"),
        "Writes topics into Elasticsearch or Avro files in batches, idempotently, committing only what the store acknowledged.",
    );
    adpipe_runtime::service_main(
        &args,
        |path| LoaderSettings::load(path, std::env::vars()),
        adpipe_loader::start,
    )
    .await
}
