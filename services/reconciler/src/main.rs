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
    let settings = match adpipe_runtime::load_settings(&args, |path| {
        ReconcileSettings::load(path, std::env::vars())
    }) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
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
        // A port in use: exit 2, as every setting that cannot work.
        Err(error) if error.is::<adpipe_reconciler::serve::ListenError>() => {
            eprintln!("invalid configuration:\n  - {error:#}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("{error:#}");
            ExitCode::from(1)
        }
    }
}
