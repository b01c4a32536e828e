//! The stats-counter's configuration: the shared runtime sections plus `[stats]`.

use std::path::Path;
use std::time::Duration;

use adpipe_runtime::batching::BatchLimits;
use adpipe_runtime::config::{
    HttpConfig, KafkaConfig, RegistryConfig, RuntimeConfig, duration, load_raw,
};
use adpipe_runtime::{ConfigError, OutputTopic, WorkerSettings};
use serde::Deserialize;

use crate::store::UpsertMethod;

/// The embedded defaults.
pub const DEFAULTS: &str = include_str!("../defaults.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    kafka: KafkaConfig,
    registry: RegistryConfig,
    runtime: RuntimeConfig,
    http: HttpConfig,
    stats: RawStats,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawStats {
    impressions: String,
    joined_clicks: String,
    joined_conversions: String,
    orphans: String,
    postgres_url: String,
    schema: String,
    upsert: UpsertMethod,
    batch_records: usize,
    batch_bytes: usize,
    batch_wait: String,
    write_timeout: String,
    closed_after: String,
    totals_topic: String,
}

/// What an input topic holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// `deduplicated.impressions`.
    Impressions,
    /// `joined.clicks`.
    JoinedClicks,
    /// `joined.conversions`.
    JoinedConversions,
    /// `joined.orphans`.
    Orphans,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct StatsSettings {
    /// Runtime settings: one input group per input topic.
    pub worker: WorkerSettings,
    /// Each input topic and its kind.
    pub inputs: Vec<(String, InputKind)>,
    /// PostgreSQL connection URL.
    pub postgres_url: String,
    /// The schema of the tables and views.
    pub schema: String,
    /// How increments are upserted.
    pub upsert: UpsertMethod,
    /// When a partition's batch is written.
    pub limits: BatchLimits,
    /// How long a write may take before it is abandoned and tried again.
    pub write_timeout: Duration,
    /// How long after its end a bucket counts as closed: a later event in
    /// it is a correction (`adpipe_stats_corrections_total`).
    pub closed_after: Duration,
    /// The compacted topic every changed row's total is sent to (`None`:
    /// configured empty, no topic).
    pub totals_topic: Option<String>,
}

impl StatsSettings {
    /// Loads defaults, then `path`, then the environment, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = load_raw(DEFAULTS, path, env)?;
        let mut problems = Vec::new();
        let stats = raw.stats;
        let batch_wait = duration("stats.batch-wait", &stats.batch_wait, &mut problems);
        let write_timeout = duration("stats.write-timeout", &stats.write_timeout, &mut problems);
        let closed_after = duration("stats.closed-after", &stats.closed_after, &mut problems);
        if stats.batch_records == 0 {
            problems.push("stats.batch-records must be at least 1".to_owned());
        }
        let inputs = vec![
            (stats.impressions, InputKind::Impressions),
            (stats.joined_clicks, InputKind::JoinedClicks),
            (stats.joined_conversions, InputKind::JoinedConversions),
            (stats.orphans, InputKind::Orphans),
        ];
        let mut worker = WorkerSettings::validate(
            "stats-counter",
            inputs
                .iter()
                .map(|(topic, _)| vec![topic.clone()])
                .collect(),
            raw.kafka,
            raw.runtime,
            raw.http,
            Some(raw.registry),
            &mut problems,
        );
        if write_timeout >= worker.processing_timeout {
            problems.push(format!(
                "stats.write-timeout ({write_timeout:?}) must be below runtime.processing-timeout ({:?}): a slow database must never dead-letter a record",
                worker.processing_timeout
            ));
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        let totals_topic = Some(stats.totals_topic).filter(|topic| !topic.is_empty());
        worker.outputs = totals_topic
            .iter()
            .map(|topic| OutputTopic {
                topic: topic.clone(),
                partitions_like: None,
            })
            .collect();
        Ok(StatsSettings {
            worker,
            inputs,
            postgres_url: stats.postgres_url,
            schema: stats.schema,
            upsert: stats.upsert,
            limits: BatchLimits {
                max_records: stats.batch_records,
                max_bytes: stats.batch_bytes,
                max_wait: batch_wait,
            },
            write_timeout,
            closed_after,
            totals_topic,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let settings = StatsSettings::load(None, std::iter::empty()).expect("defaults validate");
        assert_eq!(settings.worker.input_groups.len(), 4);
        assert_eq!(settings.upsert, UpsertMethod::CopyMerge);
        assert_eq!(settings.limits.max_records, 10_000);
    }

    #[test]
    fn a_write_timeout_over_the_processing_timeout_is_refused() {
        let env = [("ADPIPE__STATS__WRITE_TIMEOUT", "1min")]
            .map(|(key, value)| (key.to_owned(), value.to_owned()));
        assert!(StatsSettings::load(None, env.into_iter()).is_err());
    }
}
