//! `adpipe`: the command line. Thin: parses arguments and calls the library.

use std::io::{BufRead, BufReader};
use std::process::ExitCode;

use adpipe_cli::{
    check, console, consume, demo, health, heartbeat, lag, produce, reconcile, replay, simulate,
    topology,
};
use clap::{Parser, Subcommand};

/// mimalloc, as every service (see `adpipe_runtime::Allocator`).
#[global_allocator]
static ALLOCATOR: adpipe_runtime::Allocator = adpipe_runtime::Allocator;

/// adpipe: a real-time ad-event pipeline on Kafka.
#[derive(Parser, Debug)]
#[command(version, about, after_help = adpipe_kafka_client::ENV_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the demo on an in-process Kafka (or real brokers with --brokers).
    Demo(demo::DemoArgs),
    /// Plan or apply topics/ declarations against live clusters.
    #[command(subcommand)]
    Topology(topology::TopologyCommand),
    /// Produce JSON lines as Avro records through the schema registry.
    Produce(produce::ProduceArgs),
    /// Consume Avro records from any topic as JSON lines.
    Consume(consume::ConsumeArgs),
    /// Publish simulated bidder traffic to DC clusters; write the ground truth.
    Simulate(simulate::SimulateArgs),
    /// Compare an output (topics or JSON lines) with a ground truth; exit 1 on loss.
    Check(check::CheckArgs),
    /// Publish a DC's in-band heartbeats (watermarks) until stopped.
    Heartbeat(heartbeat::HeartbeatArgs),
    /// Lag per group and partition: offsets, records and seconds behind.
    Lag(lag::LagArgs),
    /// Move a stopped group back to a time, an age or an offset (plan first).
    Replay(replay::ReplayArgs),
    /// Per hour and kind, what every stage and store holds; every difference
    /// named and explained; exit 1 on an unexplained one.
    Reconcile(Box<reconcile::ReconcileArgs>),
    /// Serve the pipeline's live console (a page) from the services' metrics.
    Console(console::ConsoleArgs),
    /// Ask a service's /livez (the container health check); exit 1 unless 2xx.
    Health(health::HealthArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    // Every Kafka client of the CLI is secured by ADPIPE__KAFKA__SECURITY__…:
    // settings that cannot work stop it here, each problem named.
    if let Err(problems) = adpipe_kafka_client::KafkaSecurity::from_env() {
        eprintln!("invalid configuration:\n  - {}", problems.join("\n  - "));
        return ExitCode::from(2);
    }
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    match cli.command {
        Command::Demo(args) => {
            demo::run(&args, &mut stdout).await?;
        }
        Command::Topology(command) => topology::run(&command, &mut stdout).await?,
        Command::Produce(args) => {
            let mut input: Box<dyn BufRead> = if args.input == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(BufReader::new(std::fs::File::open(&args.input)?))
            };
            let report = produce::run(&args, &mut input, &mut stderr).await?;
            eprintln!(
                "produced {} record(s) to {}; {} line(s) rejected",
                report.produced,
                args.topic,
                report.rejected.len()
            );
            if !report.rejected.is_empty() {
                // Partial success: everything valid went through.
                return Ok(ExitCode::from(2));
            }
        }
        Command::Simulate(args) => {
            simulate::run(&args, &mut stdout).await?;
        }
        Command::Check(args) => {
            if !check::run(&args, &mut stdout).await?.passed {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Heartbeat(args) => heartbeat::run(&args).await?,
        Command::Lag(args) => {
            lag::run(&args, &mut stdout).await?;
        }
        Command::Replay(args) => {
            replay::run(&args, &mut stdout).await?;
        }
        Command::Reconcile(args) => {
            if !reconcile::run(&args, &mut stdout).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Health(args) => health::run(&args).await?,
        Command::Console(args) => console::run(&args, &mut stdout).await?,
        Command::Consume(args) => {
            let report = consume::run(&args, &mut stdout, &mut stderr).await?;
            eprintln!(
                "{} record(s) decoded, {} undecodable",
                report.decoded, report.undecodable
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
