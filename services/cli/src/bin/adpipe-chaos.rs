//! `adpipe-chaos`: the whole chain under faults (see `adpipe_cli::chaos`;
//! `loadtest/chaos.sh` starts the servers and runs it). Exit 1 on any
//! failure, 2 on bad arguments.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = adpipe_cli::chaos::ChaosArgs::parse();
    // Interrupted (Ctrl-C, or SIGTERM from a CI's timeout) at any point of
    // the run: the run is dropped, and with it the fleet, which kills every
    // service it started (the signal used to be heeded only while
    // publishing, and a harness stopped while draining ran on).
    let mut out = std::io::stdout();
    let run = tokio::select! {
        run = adpipe_cli::chaos::run(&args, &mut out) => run,
        () = adpipe_runtime::shutdown_signal() => {
            eprintln!("adpipe-chaos: stopped by a signal; the services it started are stopped too");
            return std::process::ExitCode::FAILURE;
        }
    };
    match run {
        Ok(report) if report.failures.is_empty() => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::FAILURE,
        Err(error) => {
            eprintln!("adpipe-chaos: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
