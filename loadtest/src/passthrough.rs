//! The pass-through service: consume → produce on the shared runtime with
//! no logic at all. It is the benchmark baseline that separates what the
//! runtime costs from what a service's logic costs (`adpipe-bench`).

use std::path::Path;
use std::sync::Arc;

use adpipe_runtime::config::{HttpConfig, KafkaConfig, RuntimeConfig, load_raw};
use adpipe_runtime::{
    ConfigError, Emitter, InputRecord, OutputRecord, OutputTopic, Step, StepError, StepFactory,
    TaskAssignment, WorkerSettings,
};
use serde::Deserialize;

const DEFAULTS: &str = r#"
[kafka]
bootstrap-servers = "127.0.0.1:39092"
group-id = "adpipe-passthrough"

[runtime]
dead-letter-topic = "dlq.passthrough"
"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    kafka: KafkaConfig,
    runtime: RuntimeConfig,
    http: HttpConfig,
    passthrough: RawPassThrough,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPassThrough {
    /// Topics read.
    inputs: Vec<String>,
    /// Appended to an input's name to name its output topic.
    output_suffix: String,
}

/// Validated pass-through settings.
#[derive(Debug, Clone)]
pub struct PassThroughSettings {
    /// Runtime settings.
    pub worker: WorkerSettings,
    /// Output topic = input topic + this.
    pub output_suffix: String,
}

impl PassThroughSettings {
    /// Loads the embedded defaults, then `path`, then the environment.
    pub fn load(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = load_raw(DEFAULTS, path, env)?;
        let mut problems = Vec::new();
        if raw.passthrough.output_suffix.is_empty() {
            problems.push(
                "passthrough.output-suffix must not be empty (it would read its own output)"
                    .to_owned(),
            );
        }
        let outputs = raw
            .passthrough
            .inputs
            .iter()
            .map(|input| OutputTopic {
                topic: format!("{input}{}", raw.passthrough.output_suffix),
                partitions_like: Some(input.clone()),
            })
            .collect();
        let inputs = raw
            .passthrough
            .inputs
            .into_iter()
            .map(|input| vec![input])
            .collect();
        let mut worker = WorkerSettings::validate(
            "passthrough",
            inputs,
            raw.kafka,
            raw.runtime,
            raw.http,
            None,
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        worker.outputs = outputs;
        Ok(PassThroughSettings {
            worker,
            output_suffix: raw.passthrough.output_suffix,
        })
    }
}

/// Copies each record, key, value and headers, to the same partition of
/// the output topic.
pub struct PassThrough {
    output: Arc<str>,
    partition: i32,
}

impl Step for PassThrough {
    async fn process(
        &mut self,
        record: &InputRecord<'_>,
        out: &mut Emitter,
    ) -> Result<(), StepError> {
        // Shared, not copied: the step allocates nothing per record.
        let mut output = OutputRecord::sharing(
            &self.output,
            record.share(record.key),
            record.share(record.value),
        );
        output.partition = Some(self.partition);
        output.headers = record.headers.clone();
        out.emit(output);
        Ok(())
    }
}

/// Builds a [`PassThrough`] per partition.
pub struct PassThroughFactory {
    /// Output topic = input topic + this.
    pub output_suffix: String,
}

impl StepFactory for PassThroughFactory {
    type Step = PassThrough;

    fn create(&self, assignment: &TaskAssignment) -> Result<PassThrough, StepError> {
        let input = assignment.inputs.first().map_or("", String::as_str);
        Ok(PassThrough {
            output: Arc::from(format!("{input}{}", self.output_suffix)),
            partition: assignment.partition,
        })
    }
}

/// Starts the pass-through service (inside a tokio runtime).
pub fn start(
    settings: PassThroughSettings,
) -> Result<adpipe_runtime::WorkerHandle, adpipe_runtime::WorkerError> {
    adpipe_runtime::start(
        settings.worker,
        PassThroughFactory {
            output_suffix: settings.output_suffix,
        },
    )
}

/// The body of the pass-through binaries' `main` (plain and counted).
pub async fn service_main(args: &adpipe_runtime::ServiceArgs) -> std::process::ExitCode {
    adpipe_runtime::service_main(
        args,
        |path| PassThroughSettings::load(path, std::env::vars()),
        start,
    )
    .await
}
