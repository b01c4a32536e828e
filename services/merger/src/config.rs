//! The merger's configuration: the shared runtime sections plus `[merger]`.

use std::path::Path;

use adpipe_runtime::config::{HttpConfig, KafkaConfig, RegistryConfig, RuntimeConfig, load_raw};
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
    merger: RawMerger,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawMerger {
    dcs: Vec<String>,
    kinds: Vec<String>,
    input: String,
    output: String,
    resume_scan: u64,
}

/// One kind of event merged: its input topic per DC, and its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedStream {
    /// The replicated topic of each DC, in the order of `dcs`.
    pub inputs: Vec<String>,
    /// The merged topic.
    pub output: String,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct MergerSettings {
    /// Runtime settings (one input group per kind: that kind's DC topics).
    pub worker: WorkerSettings,
    /// DC names, in tie-break order; input i of a task is `dcs[i]`.
    pub dcs: Vec<String>,
    /// One stream per kind.
    pub streams: Vec<MergedStream>,
    /// Records read at the tail of an output partition on restart.
    pub resume_scan: u64,
}

impl MergerSettings {
    /// Loads defaults, then `path`, then the environment, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = load_raw(DEFAULTS, path, env)?;
        let mut problems = Vec::new();
        let merger = &raw.merger;
        if merger.dcs.is_empty() {
            problems.push("merger.dcs is empty".to_owned());
        }
        if merger.kinds.is_empty() {
            problems.push("merger.kinds is empty".to_owned());
        }
        if !merger.input.contains("{dc}") || !merger.input.contains("{kind}") {
            problems.push(format!(
                "merger.input = {:?} must name both {{dc}} and {{kind}}",
                merger.input
            ));
        }
        if !merger.output.contains("{kind}") {
            problems.push(format!(
                "merger.output = {:?} must name {{kind}}",
                merger.output
            ));
        }
        if raw.runtime.sub_partitions != 1 {
            problems.push(
                "runtime.sub-partitions must be 1 for the merger (a task merges whole partitions)"
                    .to_owned(),
            );
        }
        let streams: Vec<MergedStream> = merger
            .kinds
            .iter()
            .map(|kind| MergedStream {
                inputs: merger
                    .dcs
                    .iter()
                    .map(|dc| merger.input.replace("{dc}", dc).replace("{kind}", kind))
                    .collect(),
                output: merger.output.replace("{kind}", kind),
            })
            .collect();
        let mut worker = WorkerSettings::validate(
            "merger",
            streams.iter().map(|stream| stream.inputs.clone()).collect(),
            raw.kafka,
            raw.runtime,
            raw.http,
            Some(raw.registry),
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        worker.outputs = streams
            .iter()
            .map(|stream| OutputTopic {
                topic: stream.output.clone(),
                partitions_like: stream.inputs.first().cloned(),
            })
            .collect();
        Ok(MergerSettings {
            worker,
            dcs: raw.merger.dcs,
            streams,
            resume_scan: raw.merger.resume_scan,
        })
    }

    /// The stream whose inputs are `inputs`.
    pub fn stream(&self, inputs: &[String]) -> Option<&MergedStream> {
        self.streams.iter().find(|stream| stream.inputs == inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_merge_every_kind_of_both_dcs() {
        let settings = MergerSettings::load(None, std::iter::empty()).expect("valid");
        assert_eq!(
            settings.worker.input_groups,
            [
                ["dc1.impressions", "dc2.impressions"],
                ["dc1.clicks", "dc2.clicks"],
                ["dc1.conversions", "dc2.conversions"],
            ]
        );
        assert_eq!(settings.streams[1].output, "merged.clicks");
        assert_eq!(
            settings.worker.outputs[2].partitions_like.as_deref(),
            Some("dc1.conversions")
        );
    }

    #[test]
    fn lists_every_problem() {
        let env = [
            ("ADPIPE__MERGER__INPUT", "\"{kind}\""),
            ("ADPIPE__MERGER__OUTPUT", "\"merged\""),
            ("ADPIPE__RUNTIME__SUB_PARTITIONS", "2"),
        ]
        .map(|(key, value)| (key.to_owned(), value.to_owned()));
        let Err(ConfigError::Invalid(problems)) = MergerSettings::load(None, env.into_iter())
        else {
            panic!("invalid");
        };
        let all = problems.join("\n");
        for expected in [
            "merger.input",
            "merger.output",
            "sub-partitions must be 1 for the merger",
        ] {
            assert!(all.contains(expected), "{expected}: {all}");
        }
    }
}
