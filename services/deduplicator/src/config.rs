//! The deduplicator's configuration: the shared runtime sections plus
//! `[deduplicator]`.

use std::path::Path;

use adpipe_runtime::config::{
    HttpConfig, KafkaConfig, RegistryConfig, RuntimeConfig, duration, load_raw,
};
use adpipe_runtime::{ConfigError, OutputTopic, WorkerSettings};
use serde::Deserialize;

/// The embedded defaults.
pub const DEFAULTS: &str = include_str!("../defaults.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    kafka: KafkaConfig,
    registry: RegistryConfig,
    runtime: RuntimeConfig,
    http: HttpConfig,
    deduplicator: RawDedup,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDedup {
    window: String,
    allowed_lateness: String,
    state_dir: std::path::PathBuf,
    resume_scan: u64,
    stream: Vec<Stream>,
}

/// One deduplicated stream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Stream {
    /// Topic read.
    pub input: String,
    /// Topic the first copy of each event goes to (same partition).
    pub output: String,
    /// Compacted topic of seen ids (same partition count as `input`).
    pub changelog: String,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct DedupSettings {
    /// Runtime settings.
    pub worker: WorkerSettings,
    /// Window in ms.
    pub window_ms: i64,
    /// Allowed lateness in ms.
    pub lateness_ms: i64,
    /// Where partition snapshots are kept (a volume in containers).
    pub state_dir: std::path::PathBuf,
    /// Streams.
    pub streams: Vec<Stream>,
    /// Records read at the tail of an output partition on restart to find
    /// what was already emitted (0: off, re-emit after a crash).
    pub resume_scan: u64,
}

impl DedupSettings {
    /// Loads defaults, then `path`, then the environment, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = env.collect();
        let state_root = env
            .iter()
            .find(|(name, _)| name == adpipe_runtime::config::STATE_DIR_ENV)
            .map(|(_, value)| std::ffi::OsString::from(value));
        let raw: RawConfig = load_raw(DEFAULTS, path, env.into_iter())?;
        let mut problems = Vec::new();
        let window = duration(
            "deduplicator.window",
            &raw.deduplicator.window,
            &mut problems,
        );
        let lateness = duration(
            "deduplicator.allowed-lateness",
            &raw.deduplicator.allowed_lateness,
            &mut problems,
        );
        if raw.runtime.sub_partitions != 1 {
            problems.push("runtime.sub-partitions must be 1 for the deduplicator (its state is per partition)".to_owned());
        }
        // Each stream is its own input group: its partitions are independent.
        let inputs = raw
            .deduplicator
            .stream
            .iter()
            .map(|stream| vec![stream.input.clone()])
            .collect();
        let worker = WorkerSettings::validate(
            "deduplicator",
            inputs,
            raw.kafka,
            raw.runtime,
            raw.http,
            Some(raw.registry),
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        let mut settings = DedupSettings {
            worker,
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            lateness_ms: i64::try_from(lateness.as_millis()).unwrap_or(i64::MAX),
            state_dir: adpipe_runtime::config::resolve_state_dir(
                &raw.deduplicator.state_dir,
                state_root.as_deref(),
            ),
            streams: Vec::new(),
            resume_scan: raw.deduplicator.resume_scan,
        };
        settings.set_streams(raw.deduplicator.stream);
        Ok(settings)
    }

    /// Replaces the streams, and with them the worker's inputs (one group
    /// per stream: their partitions are independent) and its outputs.
    pub fn set_streams(&mut self, streams: Vec<Stream>) {
        self.worker.input_groups = streams
            .iter()
            .map(|stream| vec![stream.input.clone()])
            .collect();
        self.worker.outputs = streams
            .iter()
            .flat_map(|stream| {
                [&stream.output, &stream.changelog].map(|topic| OutputTopic {
                    topic: topic.clone(),
                    partitions_like: Some(stream.input.clone()),
                })
            })
            .collect();
        self.streams = streams;
    }

    /// The stream an input topic belongs to.
    pub fn stream(&self, input: &str) -> Option<&Stream> {
        self.streams.iter().find(|stream| stream.input == input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let settings = DedupSettings::load(None, std::iter::empty()).expect("defaults validate");
        assert_eq!(settings.window_ms, 24 * 3_600_000);
        assert_eq!(settings.worker.input_topics().len(), 3);
        assert_eq!(settings.worker.outputs.len(), 6, "outputs and changelogs");
    }

    #[test]
    fn a_relative_state_dir_resolves_under_the_state_root() {
        let env = [("ADPIPE_STATE_DIR", "/var/lib/adpipe")]
            .map(|(key, value)| (key.to_owned(), value.to_owned()));
        let settings = DedupSettings::load(None, env.into_iter()).expect("valid");
        assert_eq!(
            settings.state_dir,
            std::path::PathBuf::from("/var/lib/adpipe/deduplicator")
        );
    }

    #[test]
    fn lists_every_problem() {
        let env = [
            ("ADPIPE__DEDUPLICATOR__WINDOW", "forever"),
            ("ADPIPE__RUNTIME__SUB_PARTITIONS", "4"),
            ("ADPIPE__RUNTIME__REVOKE_DEADLINE", "1m"),
            ("ADPIPE__RUNTIME__QUEUE_LOW_BYTES", "99999999"),
        ]
        .map(|(key, value)| (key.to_owned(), value.to_owned()));
        let error = DedupSettings::load(None, env.into_iter()).expect_err("invalid");
        let ConfigError::Invalid(problems) = error else {
            panic!("expected validation problems")
        };
        assert_eq!(problems.len(), 4, "{problems:#?}");
    }
}
