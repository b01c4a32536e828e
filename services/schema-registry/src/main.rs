//! `adpipe-schema-registry`: runs one registry instance.

use std::net::SocketAddr;
use std::time::Duration;

use adpipe_kafka_client::Secret;
use adpipe_schema_registry::{RegistrySettings, StoreSettings, WriteAccess};
use clap::Parser;

/// A Confluent-compatible schema registry backed by a compacted Kafka topic.
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// Address to listen on. Loopback by default; use 0.0.0.0 in a container.
    #[arg(long, env = "ADPIPE_REGISTRY_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Kafka bootstrap servers of the cluster that holds the registry topic.
    #[arg(
        long,
        env = "ADPIPE_REGISTRY_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:19092"
    )]
    bootstrap_servers: String,
    /// The registry topic.
    #[arg(long, env = "ADPIPE_REGISTRY_TOPIC", default_value = "_schemas")]
    topic: String,
    /// Replication factor if the topic has to be created.
    #[arg(long, env = "ADPIPE_REGISTRY_REPLICATION", default_value_t = 1)]
    replication: i32,
    /// HTTP worker threads.
    #[arg(long, env = "ADPIPE_REGISTRY_WORKERS", default_value_t = 2)]
    workers: usize,
    /// The write token: registering, deleting and setting compatibility
    /// need it (Bearer, or Basic with it as password). Prefer the
    /// environment or --token-file to the command line.
    #[arg(long, env = "ADPIPE_REGISTRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the write token.
    #[arg(long, env = "ADPIPE_REGISTRY_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Serve changes without a token on an address other than loopback
    /// (only where the network alone guards the registry).
    #[arg(long, env = "ADPIPE_REGISTRY_OPEN_WRITES")]
    open_writes: bool,
    /// Longest request body taken, bytes (larger: 413 in Confluent's shape).
    #[arg(long, env = "ADPIPE_REGISTRY_MAX_REQUEST_BYTES", default_value_t = adpipe_schema_registry::access::DEFAULT_BODY_LIMIT)]
    max_request_bytes: usize,
    /// Print the settings (secrets redacted) and exit: 0 when they can be
    /// served, 2 naming every problem otherwise. Connects to nothing.
    #[arg(long)]
    check_config: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let settings = match settings(args.clone()) {
        Ok(settings) => settings,
        Err(problems) => {
            eprintln!(
                "adpipe-schema-registry: invalid configuration:\n  - {}",
                problems.join("\n  - ")
            );
            // As every adpipe binary: exit 2, nothing started.
            std::process::exit(2);
        }
    };
    if args.check_config {
        println!("{settings:#?}");
        return Ok(());
    }
    // The port first: in use, the registry stops here (exit 2, as any
    // setting that cannot work), before it reads anything from Kafka.
    let listener = match std::net::TcpListener::bind(settings.listen) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "adpipe-schema-registry: --listen {}: {error}",
                settings.listen
            );
            std::process::exit(2);
        }
    };
    let running = match adpipe_schema_registry::start_on(listener, settings).await {
        Ok(running) => running,
        Err(error) => {
            eprintln!("adpipe-schema-registry: {}", error.message);
            std::process::exit(1);
        }
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping: finishing requests in flight");
    running.stop().await;
    Ok(())
}

/// The settings `args` ask for, or every problem with them (no secret in
/// any). Its Kafka client is secured by ADPIPE__KAFKA__SECURITY__… (as
/// the CLI's).
fn settings(args: Args) -> Result<RegistrySettings, Vec<String>> {
    let mut problems = Vec::new();
    if let Err(security) = adpipe_kafka_client::KafkaSecurity::from_env() {
        problems.extend(security);
    }
    let token = adpipe_kafka_client::secret_from(
        "registry token",
        args.token.map(Secret::new),
        args.token_file.as_deref(),
    )
    .unwrap_or_else(|problem| {
        problems.push(problem);
        None
    });
    let access = WriteAccess {
        token: token.filter(|token| !token.expose().is_empty()),
        open_writes: args.open_writes,
    };
    if let Err(problem) = access.check_listen(args.listen) {
        problems.push(problem);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(RegistrySettings {
        listen: args.listen,
        workers: args.workers,
        store: StoreSettings {
            bootstrap_servers: args.bootstrap_servers,
            topic: args.topic,
            replication: args.replication,
            startup_timeout: Duration::from_secs(60),
        },
        access,
        max_request_bytes: args.max_request_bytes,
    })
}
