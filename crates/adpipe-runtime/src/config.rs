//! Worker configuration: TOML, then `ADPIPE__SECTION__KEY` environment
//! overrides, then validation that lists every problem at once.
//!
//! Services embed their own sections next to `[kafka]`, `[runtime]` and
//! `[http]`; [`load_layers`] gives them the merged TOML tree to deserialize.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration that cannot be used; every problem is listed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read or parsed.
    #[error("configuration: {0}")]
    Load(String),
    /// The values break rules.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// The runtime's own defaults, under every service's.
pub const RUNTIME_DEFAULTS: &str = include_str!("../defaults.toml");

/// Reads [`RUNTIME_DEFAULTS`], overlays `defaults` (the service's embedded
/// TOML), then the file at `path` if given, then environment variables `ADPIPE__A__B=value` (which set
/// `a.b`; `-` may be written `_`). Values are parsed as TOML when they parse,
/// else taken as strings. An empty `ADPIPE__KAFKA__SECURITY__…` is unset.
pub fn load_layers(
    defaults: &str,
    path: Option<&Path>,
    env: impl Iterator<Item = (String, String)>,
) -> Result<toml::Table, ConfigError> {
    let mut merged: toml::Table = toml::from_str(RUNTIME_DEFAULTS)
        .map_err(|error| ConfigError::Load(format!("runtime defaults: {error}")))?;
    let service: toml::Table = toml::from_str(defaults)
        .map_err(|error| ConfigError::Load(format!("embedded defaults: {error}")))?;
    merge(&mut merged, service);
    if let Some(path) = path {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Load(format!("{}: {error}", path.display())))?;
        let file: toml::Table = toml::from_str(&text)
            .map_err(|error| ConfigError::Load(format!("{}: {error}", path.display())))?;
        merge(&mut merged, file);
    }
    for (name, value) in env {
        let Some(path) = name.strip_prefix("ADPIPE__") else {
            continue;
        };
        if adpipe_kafka_client::KafkaSecurity::unset_when_empty(path, &value) {
            continue;
        }
        let keys: Vec<String> = path
            .split("__")
            .map(|key| key.to_ascii_lowercase().replace('_', "-"))
            .collect();
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut table| table.remove("v"))
            .unwrap_or(toml::Value::String(value));
        set_path(&mut merged, &keys, parsed);
    }
    Ok(merged)
}

/// [`load_layers`], then deserializes the merged tree into a service's raw
/// configuration (unknown keys are errors there: `deny_unknown_fields`).
pub fn load_raw<T: serde::de::DeserializeOwned>(
    defaults: &str,
    path: Option<&Path>,
    env: impl Iterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    toml::Value::Table(load_layers(defaults, path, env)?)
        .try_into()
        .map_err(|error: toml::de::Error| ConfigError::Load(error.to_string()))
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(overlay_table)) => {
                merge(base_table, overlay_table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) {
    let Some((last, parents)) = keys.split_last() else {
        return;
    };
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        current = next;
    }
    current.insert(last.clone(), value);
}

/// Parses a humantime duration field.
pub fn duration(field: &str, text: &str, problems: &mut Vec<String>) -> Duration {
    humantime::parse_duration(text).unwrap_or_else(|error| {
        problems.push(format!("{field} = {text:?}: {error}"));
        Duration::ZERO
    })
}

/// Environment variable naming the directory under which relative state
/// directories resolve (a volume in containers).
pub const STATE_DIR_ENV: &str = "ADPIPE_STATE_DIR";

/// Where a service keeps local state given as `configured`: an absolute path
/// as it is; a relative one under `$ADPIPE_STATE_DIR`, else under `.adpipe/`
/// of the working directory — never loose in a source tree (`.adpipe/` is
/// git-ignored, like every generated file).
pub fn resolve_state_dir(configured: &Path, state_root: Option<&std::ffi::OsStr>) -> PathBuf {
    if configured.is_absolute() {
        return configured.to_owned();
    }
    let root = state_root.map_or_else(|| PathBuf::from(".adpipe"), PathBuf::from);
    root.join(configured)
}

/// `[kafka]`: the cluster a worker consumes from and produces to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaConfig {
    /// Bootstrap servers.
    pub bootstrap_servers: String,
    /// Consumer group; every instance of a service shares it.
    pub group_id: String,
    /// Consumer session timeout (a dead instance's partitions move after this).
    pub session_timeout: String,
    /// Extra librdkafka consumer properties, passed through.
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// Extra librdkafka producer properties, passed through.
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
    /// TLS and SASL (`[kafka.security]`), for every client of the worker.
    #[serde(default)]
    pub security: adpipe_kafka_client::KafkaSecurity,
}

impl KafkaConfig {
    /// A client configuration for this cluster, secured as configured
    /// (every client a worker creates starts from it).
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        adpipe_kafka_client::client_config(&self.bootstrap_servers, &self.security)
    }
}

/// `[runtime]`: how the worker runtime behaves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RuntimeConfig {
    /// A partition whose queued bytes exceed this is paused.
    pub queue_high_bytes: usize,
    /// A paused partition resumes when its queue falls below this.
    pub queue_low_bytes: usize,
    /// All partitions' queues together: past this many assigned partitions
    /// at `queue-high-bytes`, each is paused at its share instead.
    pub queue_total_bytes: usize,
    /// How often done offsets are committed.
    pub commit_interval: String,
    /// Longest one attempt at a record may take before it is cut off and
    /// fails with kind `processing_timeout` (transient: retried, unless
    /// `on-error-kind` says otherwise).
    pub processing_timeout: String,
    /// On revoke or shutdown, how long to wait for in-flight outputs; must be
    /// below the session timeout.
    pub revoke_deadline: String,
    /// First retry delay for transient failures (doubles up to the maximum).
    pub retry_initial_backoff: String,
    /// Largest retry delay.
    pub retry_max_backoff: String,
    /// Actors per partition, chosen by key hash (1 = off).
    pub sub_partitions: u16,
    /// Topic for records that cannot be processed.
    pub dead_letter_topic: String,
    /// `dead-letter` (default) or `stop` for poison records.
    pub on_poison: FailureAction,
    /// Overrides by error kind (the `adpipe.dlq.reason` label, e.g.
    /// `processing_timeout = "dead-letter"`, `unknown_schema_id = "retry"`).
    #[serde(default)]
    pub on_error_kind: BTreeMap<String, FailureAction>,
    /// A record cut off by the processing timeout is retried this many
    /// times, then handled by `on-error-kind.processing_timeout` (default:
    /// dead-letter), so one record that always hangs cannot stall its
    /// partition for ever.
    pub processing_timeout_retries: u32,
    /// A task with several time-aligned inputs proceeds without an input
    /// that is at its end and silent for this long (no record, no heartbeat).
    pub max_idle: String,
    /// Event times further than this past the wall clock are dead-lettered
    /// (`event_time_in_future`); see `event_time.rs`.
    pub max_event_time_skew: String,
}

/// What the runtime does with a record whose step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureAction {
    /// Try the record again after a backoff (doubling up to the maximum),
    /// for as long as it takes: a dependency that is down loses nothing.
    Retry,
    /// Send it to the dead-letter topic and go on.
    DeadLetter,
    /// Stop the worker (for pipelines where a gap is worse than a halt); a
    /// restart resumes from the last commit.
    Stop,
}

/// `[http]`: metrics and health endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpConfig {
    /// Listen address for /metrics, /livez, /readyz (loopback by default).
    pub listen: SocketAddr,
}

/// `[registry]`: the schema registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegistryConfig {
    /// Base URL.
    pub url: String,
    /// The registry's write token (`ADPIPE__REGISTRY__TOKEN`), when it has
    /// one: registering this service's output schemas needs it.
    #[serde(default)]
    pub token: Option<adpipe_kafka_client::Secret>,
    /// A file holding the token instead.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// A topic a worker writes to, checked at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputTopic {
    /// Topic name.
    pub topic: String,
    /// An input topic it must have as many partitions as (fixed
    /// partitioning: output partition i belongs to input partition i).
    pub partitions_like: Option<String>,
}

/// Validated runtime settings.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Service name (metric label, client id).
    pub service: String,
    /// Input groups: each a list of co-partitioned topics; a task owns
    /// partition i of every topic of its group (records fed in event-time
    /// order when the group has several topics).
    pub input_groups: Vec<Vec<String>>,
    /// Topics written (besides the dead-letter topic), checked at start-up.
    pub outputs: Vec<OutputTopic>,
    /// Kafka section, as given.
    pub kafka: KafkaConfig,
    /// Session timeout.
    pub session_timeout: Duration,
    /// Pause above this many queued bytes per partition.
    pub queue_high_bytes: usize,
    /// Resume below this.
    pub queue_low_bytes: usize,
    /// Every partition's queue together (see [`WorkerSettings::queue_marks`]).
    pub queue_total_bytes: usize,
    /// Commit period.
    pub commit_interval: Duration,
    /// Per-record processing budget.
    pub processing_timeout: Duration,
    /// Drain budget on revoke and shutdown.
    pub revoke_deadline: Duration,
    /// First retry delay.
    pub retry_initial_backoff: Duration,
    /// Largest retry delay.
    pub retry_max_backoff: Duration,
    /// Actors per partition.
    pub sub_partitions: NonZeroU16,
    /// Dead-letter topic.
    pub dead_letter_topic: String,
    /// Poison handling.
    pub on_poison: FailureAction,
    /// Actions by error kind, overriding the disposition's.
    pub on_error_kind: BTreeMap<String, FailureAction>,
    /// Retries of a record cut off by the processing timeout.
    pub processing_timeout_retries: u32,
    /// Idle time after which an aligned task proceeds without an input.
    pub max_idle: Duration,
    /// Accepted event times.
    pub event_time: crate::event_time::EventTimePolicy,
    /// Metrics and health address.
    pub http_listen: SocketAddr,
    /// Registry URL when values are decoded, `None` to pass bytes through.
    pub registry_url: Option<String>,
    /// The registry's write token, if it has one.
    pub registry_token: Option<adpipe_kafka_client::Secret>,
}

impl WorkerSettings {
    /// Validates the shared sections, appending every problem to `problems`.
    pub fn validate(
        service: &str,
        input_groups: Vec<Vec<String>>,
        kafka: KafkaConfig,
        runtime: RuntimeConfig,
        http: HttpConfig,
        registry: Option<RegistryConfig>,
        problems: &mut Vec<String>,
    ) -> WorkerSettings {
        let session_timeout = duration("kafka.session-timeout", &kafka.session_timeout, problems);
        let mut kafka = kafka;
        match kafka.security.clone().resolve() {
            Ok(security) => kafka.security = security,
            Err(security_problems) => problems.extend(security_problems),
        }
        let revoke_deadline = duration(
            "runtime.revoke-deadline",
            &runtime.revoke_deadline,
            problems,
        );
        let retry_initial_backoff = duration(
            "runtime.retry-initial-backoff",
            &runtime.retry_initial_backoff,
            problems,
        );
        let retry_max_backoff = duration(
            "runtime.retry-max-backoff",
            &runtime.retry_max_backoff,
            problems,
        );
        if revoke_deadline >= session_timeout {
            problems.push(format!(
                "runtime.revoke-deadline ({revoke_deadline:?}) must be below kafka.session-timeout ({session_timeout:?}), or a slow drain gets the instance expelled mid-rebalance"
            ));
        }
        if runtime.queue_low_bytes >= runtime.queue_high_bytes {
            problems.push(
                "runtime.queue-low-bytes must be below runtime.queue-high-bytes (hysteresis)"
                    .to_owned(),
            );
        }
        if runtime.queue_total_bytes < runtime.queue_high_bytes {
            problems.push(
                "runtime.queue-total-bytes must be at least runtime.queue-high-bytes (one partition's queue)"
                    .to_owned(),
            );
        }
        if retry_initial_backoff > retry_max_backoff {
            problems
                .push("runtime.retry-initial-backoff exceeds runtime.retry-max-backoff".to_owned());
        }
        if input_groups.iter().all(Vec::is_empty) {
            problems.push("no input topics".to_owned());
        }
        let mut seen = std::collections::BTreeSet::new();
        for topic in input_groups.iter().flatten() {
            if !seen.insert(topic) {
                problems.push(format!("input topic {topic} is listed twice"));
            }
        }
        if runtime.sub_partitions > 1 && input_groups.iter().any(|group| group.len() > 1) {
            problems.push(
                "runtime.sub-partitions must be 1 when a task has several time-aligned inputs"
                    .to_owned(),
            );
        }
        let max_idle = duration("runtime.max-idle", &runtime.max_idle, problems);
        let max_event_time_skew = duration(
            "runtime.max-event-time-skew",
            &runtime.max_event_time_skew,
            problems,
        );
        if kafka.bootstrap_servers.trim().is_empty() {
            problems.push("kafka.bootstrap-servers is empty".to_owned());
        }
        if runtime.on_poison == FailureAction::Retry {
            problems.push(
                "runtime.on-poison = \"retry\" would retry the same bad bytes forever; use \"dead-letter\" or \"stop\"".to_owned(),
            );
        }
        let sub_partitions = NonZeroU16::new(runtime.sub_partitions).unwrap_or_else(|| {
            problems.push("runtime.sub-partitions must be at least 1".to_owned());
            NonZeroU16::MIN
        });
        WorkerSettings {
            service: service.to_owned(),
            input_groups,
            outputs: Vec::new(),
            processing_timeout_retries: runtime.processing_timeout_retries,
            max_idle,
            event_time: crate::event_time::EventTimePolicy {
                max_future_skew: max_event_time_skew,
            },
            session_timeout,
            queue_high_bytes: runtime.queue_high_bytes,
            queue_low_bytes: runtime.queue_low_bytes,
            queue_total_bytes: runtime.queue_total_bytes,
            commit_interval: duration(
                "runtime.commit-interval",
                &runtime.commit_interval,
                problems,
            ),
            processing_timeout: duration(
                "runtime.processing-timeout",
                &runtime.processing_timeout,
                problems,
            ),
            revoke_deadline,
            retry_initial_backoff,
            retry_max_backoff,
            sub_partitions,
            dead_letter_topic: runtime.dead_letter_topic,
            on_poison: runtime.on_poison,
            on_error_kind: runtime.on_error_kind,
            http_listen: http.listen,
            registry_token: registry.as_ref().and_then(|registry| {
                adpipe_kafka_client::secret_from(
                    "registry.token",
                    registry.token.clone(),
                    registry.token_file.as_deref(),
                )
                .map_err(|problem| problems.push(problem))
                .ok()
                .flatten()
            }),
            registry_url: registry.map(|registry| registry.url),
            kafka,
        }
    }
}

/// When a partition's queue is paused and resumed, in queued bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueMarks {
    /// Paused above this.
    pub high: usize,
    /// Resumed below this.
    pub low: usize,
}

/// The smallest share a partition's queue gets however many partitions
/// there are: a few of the consumer's record batches (64 KiB each), so a
/// partition is never paused before its first batch is handed over.
pub const MIN_QUEUE_HIGH_BYTES: usize = 256 * 1024;

impl WorkerSettings {
    /// The marks of each partition's queue when `assigned` partitions are:
    /// `queue-high-bytes` and `queue-low-bytes`, unless that many queues
    /// at the high mark would hold more than `queue-total-bytes` — then
    /// each partition's share of it (the low mark scaled alike), at least
    /// [`MIN_QUEUE_HIGH_BYTES`]. Why: a backlog fills every queue to its
    /// high mark, so per-partition marks alone let memory grow with the
    /// partitions assigned (the 10M chaos run's deduplicator, 36 input
    /// partitions behind after a restart, went over 1 GiB). Each partition
    /// keeps its own share rather than drawing on one shared count, so an
    /// aligned task is never paused on an input it waits for because the
    /// others filled a common budget.
    pub fn queue_marks(&self, assigned: usize) -> QueueMarks {
        let configured = QueueMarks {
            high: self.queue_high_bytes,
            low: self.queue_low_bytes,
        };
        let share = self.queue_total_bytes / assigned.max(1);
        if share >= configured.high {
            return configured;
        }
        let high = share.max(MIN_QUEUE_HIGH_BYTES).min(configured.high);
        // low / high as configured; u128 so the product cannot overflow.
        let low = (configured.low as u128 * high as u128 / configured.high as u128) as usize;
        QueueMarks { high, low }
    }

    /// A client of the schema registry, with its write token; `None` when
    /// the worker passes bytes through.
    pub fn registry_client(
        &self,
    ) -> Option<Result<adpipe_codec::RegistryClient, adpipe_codec::RegistryError>> {
        let url = self.registry_url.as_deref()?;
        Some(adpipe_codec::RegistryClient::new(url).and_then(|client| {
            client.with_token(
                self.registry_token
                    .as_ref()
                    .map(adpipe_kafka_client::Secret::expose),
            )
        }))
    }

    /// Every input topic, in group order.
    pub fn input_topics(&self) -> Vec<String> {
        self.input_groups.iter().flatten().cloned().collect()
    }

    /// What to do about `error`: its kind's override, else by disposition
    /// (transient: retry; poison: `on-poison`; fatal: stop).
    /// `timeouts` counts the attempts at this record cut off so far: past
    /// `processing-timeout-retries` a timeout is dead-lettered (unless
    /// `on-error-kind.processing_timeout` says otherwise).
    pub fn action_for(&self, error: &crate::StepError, timeouts: u32) -> FailureAction {
        if let Some(action) = self.on_error_kind.get(error.kind) {
            return *action;
        }
        if error.kind == crate::step::PROCESSING_TIMEOUT {
            return if timeouts > self.processing_timeout_retries {
                FailureAction::DeadLetter
            } else {
                FailureAction::Retry
            };
        }
        match error.disposition {
            adpipe_codec::Disposition::Transient => FailureAction::Retry,
            adpipe_codec::Disposition::Poison => self.on_poison,
            adpipe_codec::Disposition::Fatal => FailureAction::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_state_dirs_resolve_under_the_state_root() {
        let root = std::ffi::OsStr::new("/var/lib/adpipe");
        assert_eq!(
            resolve_state_dir(Path::new("deduplicator"), Some(root)),
            PathBuf::from("/var/lib/adpipe/deduplicator")
        );
        assert_eq!(
            resolve_state_dir(Path::new("deduplicator"), None),
            PathBuf::from(".adpipe/deduplicator")
        );
        assert_eq!(
            resolve_state_dir(Path::new("/data/dedup"), Some(root)),
            PathBuf::from("/data/dedup")
        );
    }

    /// Settings from the runtime's defaults with `runtime` overlaid.
    fn settings_with(runtime: &str) -> Result<WorkerSettings, Vec<String>> {
        #[derive(Deserialize)]
        struct Sections {
            kafka: KafkaConfig,
            runtime: RuntimeConfig,
            http: HttpConfig,
        }
        let defaults = format!(
            "[kafka]\nbootstrap-servers = \"a:1\"\ngroup-id = \"g\"\n[runtime]\ndead-letter-topic = \"dlq\"\n{runtime}"
        );
        let sections: Sections = load_raw(&defaults, None, std::iter::empty()).expect("loads");
        let mut problems = Vec::new();
        let settings = WorkerSettings::validate(
            "test",
            vec![vec!["in".to_owned()]],
            sections.kafka,
            sections.runtime,
            sections.http,
            None,
            &mut problems,
        );
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(problems)
        }
    }

    #[test]
    fn queues_share_the_total_once_the_partitions_would_exceed_it() {
        let settings = settings_with(
            "queue-high-bytes = 8388608\nqueue-low-bytes = 2097152\nqueue-total-bytes = 100663296",
        )
        .expect("valid");
        let configured = QueueMarks {
            high: 8 << 20,
            low: 2 << 20,
        };
        assert_eq!(settings.queue_marks(0), configured);
        assert_eq!(
            settings.queue_marks(12),
            configured,
            "12 × 8 MiB fit 96 MiB"
        );
        let shared = settings.queue_marks(36);
        assert_eq!(shared.high, (96 << 20) / 36);
        assert_eq!(shared.low, shared.high / 4, "the low mark scaled alike");
        assert!(36 * shared.high <= 96 << 20);
        let floor = settings.queue_marks(10_000);
        assert_eq!(floor.high, MIN_QUEUE_HIGH_BYTES);
        assert_eq!(floor.low, MIN_QUEUE_HIGH_BYTES / 4);
    }

    #[test]
    fn a_total_below_one_queue_is_refused() {
        let problems = settings_with(
            "queue-high-bytes = 8388608\nqueue-low-bytes = 2097152\nqueue-total-bytes = 4194304",
        )
        .expect_err("invalid");
        assert!(
            problems
                .iter()
                .any(|problem| problem.contains("queue-total-bytes")),
            "{problems:?}"
        );
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let defaults = "[kafka]\nbootstrap-servers = \"a:1\"\n[runtime]\nsub-partitions = 1\n";
        let env = vec![
            (
                "ADPIPE__KAFKA__BOOTSTRAP_SERVERS".to_owned(),
                "b:2".to_owned(),
            ),
            ("ADPIPE__RUNTIME__SUB_PARTITIONS".to_owned(), "4".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        let merged = load_layers(defaults, None, env.into_iter()).expect("loads");
        assert_eq!(merged["kafka"]["bootstrap-servers"].as_str(), Some("b:2"));
        assert_eq!(merged["runtime"]["sub-partitions"].as_integer(), Some(4));
    }
}
