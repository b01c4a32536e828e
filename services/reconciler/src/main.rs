//! `adpipe-reconciler`: the continuous reconciler (see the library's
//! `serve`); `adpipe reconcile` is the one-shot form.

use std::process::ExitCode;

use adpipe_reconciler::ReconcileSettings;
use adpipe_runtime::ServiceArgs;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ServiceArgs::parse_for(
        env!("CARGO_BIN_NAME"),
        "Reconciles the chain every interval, per closed hour and kind, and exports the differences as metrics.",
    );
    adpipe_runtime::init_logging();
    let settings = match ReconcileSettings::load(args.config.as_deref(), std::env::vars()) {
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
    let stop = async {
        // SIGTERM (a container stopping) or Ctrl-C.
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    match adpipe_reconciler::serve::serve(settings, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error:#}");
            ExitCode::from(1)
        }
    }
}
