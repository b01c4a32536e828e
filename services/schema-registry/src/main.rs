//! `adpipe-schema-registry`: runs one registry instance.

use std::net::SocketAddr;
use std::time::Duration;

use adpipe_schema_registry::{RegistrySettings, StoreSettings};
use clap::Parser;

/// A Confluent-compatible schema registry backed by a compacted Kafka topic.
#[derive(Parser, Debug)]
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    // Its Kafka client is secured by ADPIPE__KAFKA__SECURITY__… (as the CLI's).
    if let Err(problems) = adpipe_kafka_client::KafkaSecurity::from_env() {
        anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
    }
    let settings = RegistrySettings {
        listen: args.listen,
        workers: args.workers,
        store: StoreSettings {
            bootstrap_servers: args.bootstrap_servers,
            topic: args.topic,
            replication: args.replication,
            startup_timeout: Duration::from_secs(60),
        },
    };
    let running = adpipe_schema_registry::start(settings).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping: finishing requests in flight");
    running.stop().await;
    Ok(())
}
