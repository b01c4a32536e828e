//! `adpipe heartbeat`: the in-band progress of one DC. Writes a watermark
//! record into every partition of the DC's event topics every interval,
//! until SIGTERM (see `adpipe_runtime::heartbeat` for what it promises).

use std::time::Duration;

use adpipe_runtime::heartbeat::{HeartbeatPublisher, HeartbeatSettings};
use clap::Args;

use crate::target::KafkaTarget;

/// Arguments of `adpipe heartbeat`.
#[derive(Args, Debug)]
pub struct HeartbeatArgs {
    #[command(flatten)]
    pub kafka: KafkaTarget,
    /// Topics whose every partition gets heartbeats (repeatable).
    #[arg(long = "topic", default_values = ["impressions", "clicks", "conversions"])]
    pub topics: Vec<String>,
    /// Time between heartbeats.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// How far behind the wall clock the announced watermark stays (the
    /// longest a bidder's event takes to reach the broker).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
}

/// Publishes until SIGTERM or Ctrl-C.
pub async fn run(args: &HeartbeatArgs) -> anyhow::Result<()> {
    let publisher = HeartbeatPublisher::start(HeartbeatSettings {
        bootstrap_servers: args.kafka.bootstrap_servers()?,
        topics: args.topics.clone(),
        interval: args.interval,
        grace: args.grace,
    })?;
    adpipe_runtime::shutdown_signal().await;
    tokio::task::spawn_blocking(move || publisher.stop()).await?;
    Ok(())
}
