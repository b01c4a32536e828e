//! `adpipe-bareloop`: consume → produce with librdkafka alone, the
//! benchmark's ceiling for the runtime (see `adpipe_loadtest::bareloop`).
//! Takes the pass-through's configuration file.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use adpipe_loadtest::passthrough::PassThroughSettings;
use adpipe_runtime::ServiceArgs;

/// mimalloc, as every service (see `adpipe_runtime::Allocator`).
#[global_allocator]
static ALLOCATOR: adpipe_runtime::Allocator = adpipe_runtime::Allocator;

fn main() -> ExitCode {
    let args = ServiceArgs::parse_for(
        env!("CARGO_BIN_NAME"),
        "Copies input topics to <input><suffix> with no runtime at all.",
    );
    adpipe_runtime::init_logging();
    let settings = match PassThroughSettings::load(args.config.as_deref(), std::env::vars()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let on_signal = Arc::clone(&stop);
    let signals = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(runtime) = runtime {
            runtime.block_on(adpipe_runtime::shutdown_signal());
        }
        on_signal.store(true, Ordering::Release);
    });
    let result = adpipe_loadtest::bareloop::run(&settings, &stop);
    drop(signals);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
