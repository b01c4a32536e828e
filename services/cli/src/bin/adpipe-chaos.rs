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
    match adpipe_cli::chaos::run(&args, &mut std::io::stdout()).await {
        Ok(report) if report.failures.is_empty() => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::FAILURE,
        Err(error) => {
            eprintln!("adpipe-chaos: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
