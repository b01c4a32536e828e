//! `adpipe check`: compares an output — Kafka topics, or JSON lines from
//! `adpipe consume` or a file sink — with the ground truth `adpipe simulate`
//! wrote, and says what was lost, what came more than once and what the
//! simulation never produced.

use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::sync::Arc;

use adpipe_codec::Codec;
use adpipe_loadtest::output::OutputIds;
use adpipe_loadtest::{CheckReport, GroundTruth};
use anyhow::{Context, bail};
use clap::Args;

use crate::target::{KafkaTarget, RegistryTarget};

/// Arguments of `adpipe check`.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// The ground truth written by `adpipe simulate`.
    #[arg(long, default_value = "truth.json")]
    pub truth: PathBuf,
    /// A topic to read from its start to its current end. Repeatable.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// A JSON-lines file (`-` for stdin) whose lines carry `event_id` or
    /// `value.event_id`. Repeatable.
    #[arg(long = "input")]
    pub inputs: Vec<String>,
    /// Also fail when an event came more than once (by default copies are
    /// reported: sinks downstream of at-least-once outputs are idempotent).
    #[arg(long)]
    pub exact: bool,
    #[command(flatten)]
    pub kafka: KafkaTarget,
    #[command(flatten)]
    pub registry: RegistryTarget,
}

/// The comparison, and whether it passes under the chosen strictness.
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    /// Loss, copies and strangers.
    pub report: CheckReport,
    /// Records or lines without a readable event id.
    pub unreadable: u64,
    /// No loss, no unknown events, and (with `--exact`) no copies.
    pub passed: bool,
}

/// Reads the outputs, compares them with the truth and prints a table.
pub async fn run(args: &CheckArgs, out: &mut dyn Write) -> anyhow::Result<CheckOutcome> {
    if args.topics.is_empty() && args.inputs.is_empty() {
        bail!("nothing to check: give --topic and/or --input");
    }
    let truth = GroundTruth::load(&args.truth)?;
    let mut output = OutputIds::default();
    for input in &args.inputs {
        if input == "-" {
            output.read_json_lines(std::io::stdin().lock())?;
        } else {
            let file = std::fs::File::open(input).with_context(|| format!("opening {input}"))?;
            output
                .read_json_lines(BufReader::new(file))
                .with_context(|| format!("reading {input}"))?;
        }
    }
    if !args.topics.is_empty() {
        let bootstrap = args.kafka.bootstrap_servers()?;
        let codec = Arc::new(Codec::new(args.registry.client()?));
        let topics = args.topics.clone();
        let runtime = tokio::runtime::Handle::current();
        // The reader blocks; it fetches unknown writer schemas on `runtime`.
        output = tokio::task::spawn_blocking(move || -> anyhow::Result<OutputIds> {
            for topic in &topics {
                output.read_topic(&bootstrap, topic, &codec, &runtime)?;
            }
            Ok(output)
        })
        .await??;
    }
    let report = truth.check(output.ids.iter().map(String::as_str));
    let passed = report.complete() && (!args.exact || report.extra_copies == 0);
    print_table(out, &truth, &output, &report, passed)?;
    Ok(CheckOutcome {
        report,
        unreadable: output.unreadable,
        passed,
    })
}

fn print_table(
    out: &mut dyn Write,
    truth: &GroundTruth,
    output: &OutputIds,
    report: &CheckReport,
    passed: bool,
) -> std::io::Result<()> {
    let rows = [
        ("records read", output.ids.len() as u64),
        ("  without an event id", output.unreadable),
        ("uniques in the ground truth", report.expected_uniques),
        ("uniques delivered", report.delivered_uniques),
        ("missing (lost)", report.missing),
        ("delivered more than once", report.delivered_more_than_once),
        ("  extra copies", report.extra_copies),
        ("not in the simulation", report.unknown),
    ];
    for (label, value) in rows {
        writeln!(out, "{label:<34} {value:>10}")?;
    }
    writeln!(
        out,
        "(simulation: {} published, {} duplicates injected)",
        truth.published, truth.duplicates
    )?;
    writeln!(
        out,
        "{}",
        if passed {
            "PASS"
        } else {
            "FAIL: the output does not match the ground truth"
        }
    )
}
