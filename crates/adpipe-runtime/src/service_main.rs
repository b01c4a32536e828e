//! The body of every service binary's `main`: flags, logging, configuration
//! errors, `--check-config`, then the worker until SIGTERM or a fatal error.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::ConfigError;
use crate::worker::{StopRequest, WorkerError, WorkerHandle, run_until_stopped};

/// The flags every service binary takes (flatten it into the binary's own).
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// TOML file over the embedded defaults (see the service's defaults.toml).
    #[arg(long, env = "ADPIPE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print it and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl ServiceArgs {
    /// Parses the process's arguments for the binary `name` (pass
    /// `env!("CARGO_BIN_NAME")`), described by `about` in `--help`; exits
    /// with clap's message on bad flags, `--help` and `--version`.
    pub fn parse_for(name: &'static str, about: &'static str) -> ServiceArgs {
        use clap::{Args, FromArgMatches};
        let command = clap::Command::new(name).version(env!("CARGO_PKG_VERSION"));
        // After augment_args, which sets ServiceArgs' own doc as the about.
        let matches = ServiceArgs::augment_args(command)
            .about(about)
            .get_matches();
        ServiceArgs::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }
}

/// Logs to stdout at `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// Loads the settings with `load`; `Err` is the exit code to leave with:
/// 2 after listing every problem, 0 after printing them for
/// `--check-config` (every service binary, worker or not, the same way).
pub fn load_settings<S: Debug>(
    args: &ServiceArgs,
    load: impl FnOnce(Option<&Path>) -> Result<S, ConfigError>,
) -> Result<S, ExitCode> {
    let settings = load(args.config.as_deref()).map_err(|error| {
        eprintln!("{error}");
        ExitCode::from(2)
    })?;
    if args.check_config {
        println!("{settings:#?}");
        return Err(ExitCode::SUCCESS);
    }
    Ok(settings)
}

/// Loads the settings with `load` (exit 2 listing every problem), prints
/// them for `--check-config`, else starts the worker with `start` and runs
/// it until stopped (exit 0 on SIGTERM — during set-up too — 1 after a
/// fatal error).
pub async fn service_main<S: Debug>(
    args: &ServiceArgs,
    load: impl FnOnce(Option<&Path>) -> Result<S, ConfigError>,
    start: impl FnOnce(S) -> Result<WorkerHandle, WorkerError>,
) -> ExitCode {
    init_logging();
    let settings = match load_settings(args, load) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let stop = StopRequest::listen();
    match start(settings) {
        Ok(worker) => run_until_stopped(worker, stop).await,
        // A port in use is a setting that cannot work: exit 2, as for the
        // others, and nothing was started.
        Err(error @ WorkerError::Http(..)) => {
            eprintln!("invalid configuration:\n  - {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
