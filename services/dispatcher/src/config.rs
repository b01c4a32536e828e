//! The dispatcher's configuration: the shared runtime sections plus `[dispatcher]`.

use std::path::Path;

use adpipe_runtime::config::{HttpConfig, KafkaConfig, RegistryConfig, RuntimeConfig, load_raw};
use adpipe_runtime::{ConfigError, OutputTopic, WorkerSettings};
use serde::Deserialize;

use crate::dispatch::{Routes, Serving};

/// The embedded defaults.
pub const DEFAULTS: &str = include_str!("../defaults.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    kafka: KafkaConfig,
    registry: RegistryConfig,
    runtime: RuntimeConfig,
    http: HttpConfig,
    dispatcher: RawDispatcher,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDispatcher {
    inputs: Vec<String>,
    dcs: Vec<String>,
    serving: String,
    replicas: usize,
    topic_prefix: String,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    /// Runtime settings: one input group per input topic, one output per DC.
    pub worker: WorkerSettings,
    /// Who serves which users, and where their events go.
    pub routes: Routes,
}

impl DispatcherSettings {
    /// Loads defaults, then `path`, then the environment, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = load_raw(DEFAULTS, path, env)?;
        let mut problems = Vec::new();
        let dispatcher = raw.dispatcher;
        if dispatcher.inputs.is_empty() {
            problems.push("dispatcher.inputs names no topic".to_owned());
        }
        if dispatcher.dcs.len() < 2 {
            problems.push(format!(
                "dispatcher.dcs = {:?}: profiles are synchronised between at least two DCs",
                dispatcher.dcs
            ));
        }
        let serving = Serving::parse(
            &dispatcher.serving,
            dispatcher.replicas,
            dispatcher.dcs.len(),
        )
        .unwrap_or_else(|problem| {
            problems.push(problem);
            Serving::All
        });
        let mut worker = WorkerSettings::validate(
            "dispatcher",
            dispatcher
                .inputs
                .iter()
                .map(|topic| vec![topic.clone()])
                .collect(),
            raw.kafka,
            raw.runtime,
            raw.http,
            Some(raw.registry),
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        let routes = Routes::new(dispatcher.dcs, serving, &dispatcher.topic_prefix);
        worker.outputs = routes
            .topics()
            .map(|topic| OutputTopic {
                topic: topic.to_owned(),
                partitions_like: None,
            })
            .collect();
        Ok(DispatcherSettings { worker, routes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let settings =
            DispatcherSettings::load(None, std::iter::empty()).expect("defaults validate");
        assert_eq!(settings.worker.input_groups.len(), 3);
        let outputs: Vec<&str> = settings
            .worker
            .outputs
            .iter()
            .map(|output| output.topic.as_str())
            .collect();
        assert_eq!(outputs, ["events-for-dc1", "events-for-dc2"]);
    }

    #[test]
    fn a_bad_rule_is_refused_by_name() {
        let env = [("ADPIPE__DISPATCHER__SERVING", "nearest")]
            .map(|(key, value)| (key.to_owned(), value.to_owned()));
        let error = DispatcherSettings::load(None, env.into_iter()).expect_err("refused");
        assert!(error.to_string().contains("dispatcher.serving"), "{error}");
    }
}
