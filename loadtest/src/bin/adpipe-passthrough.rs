//! `adpipe-passthrough`: the runtime with no logic, a benchmark baseline.

use std::path::PathBuf;
use std::process::ExitCode;

use adpipe_loadtest::passthrough::{self, PassThroughSettings};
use clap::Parser;

/// Copies input topics to `<input><suffix>`, partition by partition.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML file over the embedded defaults ([passthrough] inputs, output-suffix).
    #[arg(long, env = "ADPIPE_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let settings = match PassThroughSettings::load(args.config.as_deref(), std::env::vars()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    match passthrough::start(settings) {
        Ok(worker) => adpipe_runtime::run_until_stopped(worker).await,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
