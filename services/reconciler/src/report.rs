//! The reconciliation's result: per hour and kind, what each stage holds
//! (events; records where copies differ), and every difference — the
//! unexplained first. Printed as a table by `adpipe reconcile`, served as
//! JSON by the continuous reconciler.

use std::io::Write;

use serde::Serialize;

use std::collections::BTreeMap;

use crate::ledger::{Book, Bucket, Kind, Ledger, Stage};
use crate::read::Span;
use crate::verdict::Difference;

/// One stage's holding in one cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holding {
    /// The stage (`merged`, `replica dc1`, `stats`, `files`, …).
    pub stage: String,
    /// Distinct events (the stats: the count).
    pub events: i64,
    /// Records, copies included.
    pub records: i64,
}

/// One row: an hour and kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The hour.
    pub bucket: Bucket,
    /// The kind.
    pub kind: Kind,
    /// What each stage holds.
    pub holdings: Vec<Holding>,
}

/// The orphans of `book` per reason (`  orphans: <reason>`).
fn orphans_by_reason(ledger: &Ledger, book: &Book) -> Vec<Holding> {
    let mut reasons: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for (hash, copies) in book.events() {
        let reason = ledger.orphan_reasons.get(&hash).map_or("?", String::as_str);
        let slot = reasons.entry(reason).or_default();
        slot.0 += 1;
        slot.1 += i64::from(copies);
    }
    reasons
        .into_iter()
        .map(|(reason, (events, records))| Holding {
            stage: format!("  orphans: {reason}"),
            events,
            records,
        })
        .collect()
}

/// The result of one reconciliation.
#[derive(Debug, Clone, Serialize)]
pub struct Reconciliation {
    /// First hour (ms).
    pub from: i64,
    /// End (ms).
    pub to: i64,
    /// The rows.
    pub rows: Vec<Row>,
    /// Every difference, unexplained first.
    pub differences: Vec<Difference>,
}

impl Reconciliation {
    /// Summarises `ledger` and sorts `differences`.
    pub fn new(
        ledger: &Ledger,
        span: Span,
        mut differences: Vec<Difference>,
        samples: usize,
    ) -> Reconciliation {
        let stages = ledger.stages();
        let rows = ledger
            .cells()
            .into_iter()
            .map(|(bucket, kind)| {
                let mut holdings: Vec<Holding> = Vec::new();
                for stage in &stages {
                    let Some(book) = ledger.book(bucket, kind, stage) else {
                        continue;
                    };
                    holdings.push(Holding {
                        stage: stage.to_string(),
                        events: book.len() as i64,
                        records: book.records() as i64,
                    });
                    if *stage == Stage::Orphaned {
                        holdings.extend(orphans_by_reason(ledger, book));
                    }
                }
                for ((_, _, measure), count) in ledger
                    .counted
                    .range((bucket, kind, String::new())..)
                    .take_while(|((b, k, _), _)| *b == bucket && *k == kind)
                {
                    holdings.push(Holding {
                        stage: measure.clone(),
                        events: *count,
                        records: *count,
                    });
                }
                Row {
                    bucket,
                    kind,
                    holdings,
                }
            })
            .collect();
        differences.sort_by(|a, b| {
            (a.explanation.is_some(), &a.flow, a.bucket, a.kind, &a.what).cmp(&(
                b.explanation.is_some(),
                &b.flow,
                b.bucket,
                b.kind,
                &b.what,
            ))
        });
        for difference in &mut differences {
            difference.samples.truncate(samples);
        }
        Reconciliation {
            from: span.from,
            to: span.to,
            rows,
            differences,
        }
    }

    /// The differences nothing explains.
    pub fn unexplained(&self) -> impl Iterator<Item = &Difference> {
        self.differences
            .iter()
            .filter(|difference| difference.explanation.is_none())
    }

    /// Prints the table and the differences.
    pub fn print(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "reconciled {} to {} (event time, UTC)",
            Bucket::Hour(self.from),
            Bucket::Hour(self.to)
        )?;
        for row in &self.rows {
            writeln!(out, "\n{} {}", row.bucket, row.kind.name())?;
            for holding in &row.holdings {
                let copies = if holding.records != holding.events {
                    format!("  ({} records)", holding.records)
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "  {:<40} {:>10}{copies}",
                    holding.stage, holding.events
                )?;
            }
        }
        let unexplained = self.unexplained().count();
        writeln!(
            out,
            "\n{} differences, {unexplained} unexplained",
            self.differences.len()
        )?;
        for difference in &self.differences {
            writeln!(
                out,
                "  {} {:<34} {} {:<10} {:<11} {:>8}  {}{}",
                if difference.explanation.is_none() {
                    "!!"
                } else {
                    "  "
                },
                difference.flow,
                difference.bucket,
                difference.kind.name(),
                difference.what,
                difference.count,
                difference.explanation.as_deref().unwrap_or("UNEXPLAINED"),
                if difference.samples.is_empty() {
                    String::new()
                } else {
                    let shown: Vec<String> = difference
                        .samples
                        .iter()
                        .map(|sample| shortened(sample))
                        .collect();
                    format!("; e.g. {}", shown.join(", "))
                }
            )?;
        }
        Ok(())
    }
}

/// A sample as the table shows it: whole up to [`SHOWN_SAMPLE_CHARS`],
/// else its start and its length (an event id of hundreds of bytes — one
/// the loader dead-letters for Elasticsearch — would fill the screen).
fn shortened(sample: &str) -> String {
    if sample.chars().count() <= SHOWN_SAMPLE_CHARS {
        return sample.to_owned();
    }
    let start: String = sample.chars().take(SHOWN_SAMPLE_CHARS - 16).collect();
    format!("{start}…({} bytes)", sample.len())
}

/// The longest sample the table shows whole.
const SHOWN_SAMPLE_CHARS: usize = 96;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_sample_is_shown_by_its_start_and_length() {
        let short = "dc1.impressions-8@230: wrong magic byte";
        assert_eq!(shortened(short), short);
        let long = format!("imp-refused-{}", "é".repeat(300));
        let shown = shortened(&long);
        assert!(shown.starts_with("imp-refused-éé"), "{shown}");
        assert!(
            shown.ends_with(&format!("…({} bytes)", long.len())),
            "{shown}"
        );
        assert!(shown.chars().count() <= SHOWN_SAMPLE_CHARS, "{shown}");
    }
}
