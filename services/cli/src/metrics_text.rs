//! Reading Prometheus' text exposition format (what every service's
//! `/metrics` serves and the process-wide recorder renders): samples with
//! their labels, and sums over the samples a selector picks — for the
//! demo's live view and the console, which show the services' own metrics.
//!
//! Contract: comment lines and histogram/summary series (`_bucket`, `_sum`,
//! `_count`, quantiles) are kept like any other sample; a line that does not
//! parse is skipped (a reader must not stop on one odd sample).

use std::collections::BTreeMap;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Label name → value.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Every sample of `text`.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, BTreeMap::new(), rest)
        }
    };
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `a="x",b="y\"z"` → {a: x, b: y"z}.
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(labels);
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                other => value.push(other),
            }
        }
        labels.insert(name.trim().to_owned(), value);
    }
}

/// Picks samples: a metric name and labels that must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// Metric name.
    pub metric: &'static str,
    /// (label, value) pairs every picked sample has.
    pub labels: Vec<(&'static str, String)>,
}

impl Selector {
    /// `metric` with the given labels.
    pub fn new(metric: &'static str, labels: &[(&'static str, &str)]) -> Self {
        Selector {
            metric,
            labels: labels
                .iter()
                .map(|(name, value)| (*name, (*value).to_owned()))
                .collect(),
        }
    }

    /// Whether `sample` is one this selector picks.
    pub fn picks(&self, sample: &Sample) -> bool {
        sample.name == self.metric
            && self
                .labels
                .iter()
                .all(|(name, value)| sample.labels.get(*name) == Some(value))
    }

    /// The sum of the samples picked from `samples` (0 when none).
    pub fn sum(&self, samples: &[Sample]) -> f64 {
        samples
            .iter()
            .filter(|sample| self.picks(sample))
            .map(|sample| sample.value)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_with_and_without_labels_and_sums_what_a_selector_picks() {
        let text = r#"# HELP adpipe_records_consumed_total Records consumed.
# TYPE adpipe_records_consumed_total counter
adpipe_records_consumed_total{service="merger",topic="dc1.impressions"} 120
adpipe_records_consumed_total{service="merger",topic="dc2.impressions"} 30 1700000000000
adpipe_records_consumed_total{service="joiner",topic="x"} 7
adpipe_dead_lettered_total{service="merger",reason="say \"no\", twice"} 2
adpipe_paused_partitions 1
garbage line {
"#;
        let samples = parse(text);
        assert_eq!(samples.len(), 5, "{samples:?}");
        let merger = Selector::new("adpipe_records_consumed_total", &[("service", "merger")]);
        assert_eq!(merger.sum(&samples), 150.0);
        assert_eq!(
            Selector::new("adpipe_paused_partitions", &[]).sum(&samples),
            1.0
        );
        assert_eq!(samples[3].labels["reason"], "say \"no\", twice");
        assert_eq!(
            Selector::new("adpipe_records_consumed_total", &[("service", "loader")]).sum(&samples),
            0.0
        );
    }
}
