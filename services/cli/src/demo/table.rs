//! The demo's result: one table per stage against the ground truth, where
//! the outputs are, and the verdict.

use std::io::Write;
use std::time::Duration;

use adpipe_loadtest::GroundTruth;

use super::DemoReport;

/// Prints one table per stage and the verdict.
pub fn print_table(
    out: &mut dyn Write,
    report: &DemoReport,
    truth: &GroundTruth,
    elapsed: Duration,
) -> anyhow::Result<()> {
    let check = &report.check;
    writeln!(out)?;
    writeln!(out, "{:<34} {:>10}", "events published", report.published)?;
    writeln!(
        out,
        "{:<34} {:>10}",
        "  of which duplicates injected", report.duplicates_injected
    )?;
    writeln!(
        out,
        "{:<34} {:>10}  (every publication, copies included: {})",
        "merged",
        report.merged,
        if report.merged == report.published {
            "as published"
        } else {
            "DIFFERS"
        }
    )?;
    writeln!(
        out,
        "{:<34} {:>10}",
        "duplicates removed",
        report.published.saturating_sub(report.delivered)
    )?;
    writeln!(
        out,
        "{:<34} {:>10}",
        "uniques delivered", check.delivered_uniques
    )?;
    writeln!(
        out,
        "{:<34} {:>10}  ({} impressions, {} clicks, {} conversions)",
        "uniques in the ground truth",
        check.expected_uniques,
        truth.impressions.len(),
        truth.clicks.len(),
        truth.conversions.len()
    )?;
    writeln!(out, "{:<34} {:>10}", "missing (lost)", check.missing)?;
    writeln!(
        out,
        "{:<34} {:>10}",
        "delivered more than once", check.delivered_more_than_once
    )?;
    let joins = &report.joins;
    writeln!(
        out,
        "\n{:<34} {:>10} {:>10} {:>10}",
        "joiner", "expected", "produced", "wrong"
    )?;
    for (what, (expected, produced, wrong)) in [
        ("joined clicks", joins.clicks),
        ("joined conversions", joins.conversions),
    ] {
        writeln!(out, "{what:<34} {expected:>10} {produced:>10} {wrong:>10}")?;
    }
    for (reason, (expected, produced)) in &joins.orphans {
        writeln!(
            out,
            "{:<34} {expected:>10} {produced:>10}",
            format!("orphans: {reason}")
        )?;
    }
    writeln!(
        out,
        "{:<34} {:>10} {:>10}",
        "unexpected outputs", 0, joins.unexpected
    )?;
    if let Some(stats) = &report.stats {
        writeln!(
            out,
            "\n{:<34} {:>10} {:>10}",
            format!("stats-counter ({})", stats.schema),
            "expected",
            "counted"
        )?;
        for (what, expected, counted) in &stats.measures {
            writeln!(out, "{what:<34} {expected:>10} {counted:>10}")?;
        }
    }
    for (title, tallies) in [
        ("dispatcher (events-for-<dc>)", &report.dispatched),
        ("loader: Avro files", &report.files),
        (
            "loader: Elasticsearch (one document each)",
            &report.elasticsearch,
        ),
        ("loader: BigQuery (one row each)", &report.bigquery),
        ("loader: profiles (one entry each)", &report.profiles),
    ] {
        if tallies.is_empty() {
            continue;
        }
        writeln!(
            out,
            "\n{title:<44} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "expected", "found", "missing", "twice", "unexpected"
        )?;
        for tally in tallies {
            writeln!(
                out,
                "{:<44} {:>10} {:>10} {:>10} {:>10} {:>10}",
                tally.what,
                tally.expected,
                tally.found,
                tally.missing(),
                tally.twice,
                tally.unexpected
            )?;
        }
    }
    writeln!(
        out,
        "\n{:<44} {:<36} reason",
        "bad input (into dc1's impressions)", "where it ended"
    )?;
    for record in &report.bad_input {
        let (service, reason) = record
            .dead_letter
            .clone()
            .unwrap_or_else(|| ("NOT dead-lettered".to_owned(), String::new()));
        writeln!(
            out,
            "{:<44} {:<36} {reason}",
            record.class,
            format!("dlq.{service}")
        )?;
    }
    if !report
        .bad_input
        .iter()
        .any(|record| record.service == "loader")
    {
        writeln!(
            out,
            "{:<44} {:<36} needs Elasticsearch (--es-url): no other store refuses a well-formed event",
            "a store refusing a write", "not run"
        )?;
    }
    writeln!(out, "\noutputs:")?;
    for (what, place) in &report.outputs {
        writeln!(out, "  {what:<32} {place}")?;
    }
    let verdict = if report.matches() {
        "matches the ground truth"
    } else {
        "DOES NOT match the ground truth"
    };
    writeln!(out, "\noutput {verdict} ({elapsed:.1?})")?;
    Ok(())
}
