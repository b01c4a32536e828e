//! `adpipe-passthrough-counted`: the pass-through with a counting global
//! allocator, for the benchmark's allocations per record (the hot path's
//! cost). At exit it writes `allocations reallocations bytes` to the file
//! named by `ADPIPE_ALLOC_REPORT`.

use std::alloc::System;
use std::process::ExitCode;

use adpipe_loadtest::passthrough;
use adpipe_runtime::ServiceArgs;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ServiceArgs::parse_for(
        env!("CARGO_BIN_NAME"),
        "The pass-through, counting allocations.",
    );
    let code = passthrough::service_main(&args).await;
    let stats = GLOBAL.stats();
    if let Some(path) = std::env::var_os("ADPIPE_ALLOC_REPORT") {
        let report = format!(
            "{} {} {}\n",
            stats.allocations, stats.reallocations, stats.bytes_allocated
        );
        if let Err(error) = std::fs::write(&path, report) {
            eprintln!("allocation report: {error}");
        }
    }
    code
}
