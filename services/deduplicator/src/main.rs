//! `adpipe-deduplicator`: runs one deduplicator instance.

use std::path::PathBuf;
use std::process::ExitCode;

use adpipe_deduplicator::DedupSettings;
use clap::Parser;

/// Drops duplicate events within a window of event time.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML file overriding the embedded defaults (see defaults.toml).
    #[arg(long, env = "ADPIPE_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration, print it and exit.
    #[arg(long)]
    check_config: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let settings = match DedupSettings::load(args.config.as_deref(), std::env::vars()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{settings:#?}");
        return ExitCode::SUCCESS;
    }
    let worker = match adpipe_deduplicator::start(settings) {
        Ok(worker) => worker,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    adpipe_runtime::run_until_stopped(worker).await
}
