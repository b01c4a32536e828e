//! The broker's own ceiling: Kafka's ProducerPerformance and
//! ConsumerPerformance, from the same jars the local clusters run, through
//! `infra/kafka.sh tool`.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// What one Kafka perf tool reported.
#[derive(Debug, Clone, Serialize)]
pub struct ToolRun {
    /// Records per second.
    pub records_per_sec: f64,
    /// The tool's summary line, verbatim.
    pub summary: String,
}

fn run(kafka_sh: &Path, args: &[String]) -> Result<String, String> {
    let output = Command::new(kafka_sh)
        .arg("tool")
        .args(args)
        .output()
        .map_err(|error| format!("{}: {error}", kafka_sh.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "{} failed ({}): {}{}",
            args[0],
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(stdout)
}

/// Runs ProducerPerformance: `records` of `record_size` bytes, unthrottled.
pub fn producer_perf(
    kafka_sh: &Path,
    bootstrap: &str,
    topic: &str,
    records: u64,
    record_size: usize,
) -> Result<ToolRun, String> {
    let mut args: Vec<String> = [
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        &records.to_string(),
        "--record-size",
        &record_size.to_string(),
        "--throughput",
        "-1",
        "--command-property",
        &format!("bootstrap.servers={bootstrap}"),
    ]
    .map(str::to_owned)
    .to_vec();
    // The runtime's producer settings, so the ceiling is measured like-for-like.
    // One flag, then every property (a repeated flag replaces the earlier).
    args.extend(
        adpipe_runtime::PRODUCER_DEFAULTS
            .iter()
            .map(|(key, value)| format!("{key}={value}")),
    );
    let stdout = run(kafka_sh, &args)?;
    // "N records sent, R records/sec (M MB/sec), ..." is the last line.
    let summary = stdout
        .lines()
        .rev()
        .find(|line| line.contains("records sent"))
        .ok_or_else(|| format!("no summary in ProducerPerformance output: {stdout}"))?
        .to_owned();
    let rate = summary
        .split(", ")
        .nth(1)
        .and_then(|field| field.split(' ').next())
        .and_then(|number| number.parse().ok())
        .ok_or_else(|| format!("cannot read the rate in {summary:?}"))?;
    Ok(ToolRun {
        records_per_sec: rate,
        summary,
    })
}

/// Runs ConsumerPerformance over `records` of `topic` in a fresh group;
/// the rate is `fetch.nMsg.sec` (the group join excluded, as for ours).
pub fn consumer_perf(
    kafka_sh: &Path,
    bootstrap: &str,
    topic: &str,
    records: u64,
    group: &str,
) -> Result<ToolRun, String> {
    let args: Vec<String> = [
        "org.apache.kafka.tools.ConsumerPerformance",
        "--bootstrap-server",
        bootstrap,
        "--topic",
        topic,
        "--num-records",
        &records.to_string(),
        "--group",
        group,
    ]
    .map(str::to_owned)
    .to_vec();
    let stdout = run(kafka_sh, &args)?;
    let mut lines = stdout.lines().filter(|line| line.contains(','));
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| format!("no header in ConsumerPerformance output: {stdout}"))?
        .split(',')
        .map(str::trim)
        .collect();
    let summary = lines
        .next()
        .ok_or_else(|| format!("no data line in ConsumerPerformance output: {stdout}"))?
        .to_owned();
    let values: Vec<&str> = summary.split(',').map(str::trim).collect();
    let rate = header
        .iter()
        .position(|name| *name == "fetch.nMsg.sec")
        .and_then(|index| values.get(index))
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| format!("cannot read fetch.nMsg.sec in {summary:?}"))?;
    Ok(ToolRun {
        records_per_sec: rate,
        summary: format!("{}\n{summary}", header.join(", ")),
    })
}
