//! The loader's configuration: the shared runtime sections, `[loader]`
//! (which sink, which inputs, batch bounds) and one section per sink.

use std::path::{Path, PathBuf};
use std::time::Duration;

use adpipe_events::EventKind;
use adpipe_runtime::batching::BatchLimits;
use adpipe_runtime::config::{
    HttpConfig, KafkaConfig, RegistryConfig, RuntimeConfig, duration, load_raw,
};
use adpipe_runtime::{ConfigError, WorkerSettings};
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
    loader: RawLoader,
    elasticsearch: RawElasticsearch,
    files: RawFiles,
    profiles: RawProfiles,
    bigquery: BigQuerySettings,
}

/// `[bigquery]` (the loader's, and the reconciler's reading of its tables).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BigQuerySettings {
    /// The REST API's v2 base URL (the emulator's in tests).
    pub url: String,
    /// Project.
    pub project: String,
    /// Dataset (created if missing).
    pub dataset: String,
    /// Prefix of each input's table.
    pub table_prefix: String,
    /// `none` (an emulator), `application-default`, or the path of a
    /// service-account key file.
    pub credentials: String,
    /// Rows per `insertAll` request at most (BigQuery takes 50,000 and
    /// recommends 500); a batch is sent in requests of this many rows and
    /// at most [`MAX_REQUEST_BYTES`](crate::bigquery::MAX_REQUEST_BYTES).
    #[serde(default = "default_rows_per_request")]
    pub rows_per_request: usize,
}

fn default_rows_per_request() -> usize {
    500
}

impl BigQuerySettings {
    /// The same with the URL's trailing `/` removed (paths are appended).
    pub fn trimmed(mut self) -> Self {
        self.url = self.url.trim_end_matches('/').to_owned();
        self
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawProfiles {
    store: ProfileBackend,
    url: String,
    key_prefix: String,
    keep: usize,
    ttl: String,
}

/// Which store holds the profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileBackend {
    /// Redis or Valkey (`redis://host:port`).
    Redis,
    /// Aerospike (`host:port[,host:port…]`; the `aerospike` build feature).
    Aerospike,
}

/// The namespace and set of Aerospike's profiles (`profiles.key-prefix`
/// = `namespace/set`), both named.
pub fn aerospike_location(key_prefix: &str) -> Option<(&str, &str)> {
    key_prefix
        .split_once('/')
        .filter(|(namespace, set)| !namespace.is_empty() && !set.is_empty() && !set.contains('/'))
}

/// `[profiles]`, validated.
#[derive(Debug, Clone)]
pub struct ProfilesSettings {
    /// The store.
    pub store: ProfileBackend,
    /// Where it is.
    pub url: String,
    /// Prefix of every key (Redis) or the set (Aerospike: `namespace/set`).
    pub key_prefix: String,
    /// Entries kept per user and kind (the newest).
    pub keep: usize,
    /// How long after its newest event a user's entries of a kind expire.
    pub ttl: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLoader {
    sink: SinkKind,
    inputs: Vec<String>,
    batch: RawBatch,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBatch {
    records: usize,
    bytes: usize,
    wait: String,
    write_timeout: String,
    writes_in_flight: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawElasticsearch {
    url: String,
    index_prefix: String,
    shards: u32,
    replicas: u32,
    refresh_interval: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFiles {
    dir: PathBuf,
    format: FileFormat,
    codec: FileCodec,
}

/// Which store a loader instance writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    /// Elasticsearch or OpenSearch (`_bulk`).
    Elasticsearch,
    /// Avro container files, partitioned by topic, date and hour.
    Files,
    /// Per-user recent events for bidders (Redis, Aerospike).
    Profiles,
    /// BigQuery tables, one per topic, partitioned by day.
    Bigquery,
}

/// The compression of files: Avro blocks, Parquet pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileCodec {
    /// Uncompressed.
    Null,
    /// Deflate: raw deflate in Avro (what every Avro reader supports),
    /// GZIP in Parquet.
    Deflate,
    /// Snappy: Parquet only (the usual Parquet codec).
    Snappy,
}

/// The layout of files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileFormat {
    /// Avro object container files (`.avro`): the datums as consumed.
    Avro,
    /// Parquet (`.parquet`): columns, for analysts' engines.
    Parquet,
}

/// One input topic and the kinds of event it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The topic.
    pub topic: String,
    /// Its event kinds (several for `joined.orphans`: clicks and conversions).
    pub kinds: Vec<EventKind>,
}

/// `[elasticsearch]`, validated.
#[derive(Debug, Clone)]
pub struct ElasticsearchSettings {
    /// Base URL.
    pub url: String,
    /// Prefix of every index and template name.
    pub index_prefix: String,
    /// Primary shards per daily index.
    pub shards: u32,
    /// Replicas per daily index.
    pub replicas: u32,
    /// The indices' refresh interval (as Elasticsearch spells it).
    pub refresh_interval: String,
}

/// `[files]`, validated.
#[derive(Debug, Clone)]
pub struct FilesSettings {
    /// Root directory (relative: under `$ADPIPE_STATE_DIR`).
    pub dir: PathBuf,
    /// Avro or Parquet.
    pub format: FileFormat,
    /// Block (Avro) or page (Parquet) codec.
    pub codec: FileCodec,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct LoaderSettings {
    /// Runtime settings: one input group per input topic.
    pub worker: WorkerSettings,
    /// The sink.
    pub sink: SinkKind,
    /// Input topics with their kinds.
    pub inputs: Vec<Input>,
    /// When a partition's batch is written.
    pub limits: BatchLimits,
    /// Bound of one write (its wait for a turn included).
    pub write_timeout: Duration,
    /// How many partitions' writes run at once in this process.
    pub writes_in_flight: usize,
    /// `[elasticsearch]`.
    pub elasticsearch: ElasticsearchSettings,
    /// `[files]`.
    pub files: FilesSettings,
    /// `[profiles]`.
    pub profiles: ProfilesSettings,
    /// `[bigquery]`.
    pub bigquery: BigQuerySettings,
}

impl LoaderSettings {
    /// Loads defaults, then `path`, then the environment, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = load_raw(DEFAULTS, path, env)?;
        let mut problems = Vec::new();
        let loader = raw.loader;
        let wait = duration("loader.batch.wait", &loader.batch.wait, &mut problems);
        let write_timeout = duration(
            "loader.batch.write-timeout",
            &loader.batch.write_timeout,
            &mut problems,
        );
        if loader.batch.writes_in_flight == 0 {
            problems.push("loader.batch.writes-in-flight must be at least 1".to_owned());
        }
        if loader.batch.records == 0 {
            problems.push("loader.batch.records must be at least 1".to_owned());
        }
        if loader.inputs.is_empty() {
            problems.push("loader.inputs names no topic".to_owned());
        }
        let mut inputs = Vec::new();
        for entry in loader.inputs {
            let Some((topic, kinds)) = entry.split_once(':') else {
                problems.push(format!(
                    "loader.inputs: {entry:?} is not \"topic:kind\" (e.g. \"deduplicated.impressions:impression\")"
                ));
                continue;
            };
            let parsed: Result<Vec<EventKind>, _> =
                kinds.split('|').map(|kind| kind.trim().parse()).collect();
            match parsed {
                Ok(kinds) => inputs.push(Input {
                    topic: topic.trim().to_owned(),
                    kinds,
                }),
                Err(error) => problems.push(format!("loader.inputs: {entry:?}: {error}")),
            }
        }
        let worker = WorkerSettings::validate(
            "loader",
            inputs
                .iter()
                .map(|input| vec![input.topic.clone()])
                .collect(),
            raw.kafka,
            raw.runtime,
            raw.http,
            Some(raw.registry),
            &mut problems,
        );
        if write_timeout >= worker.processing_timeout {
            problems.push(format!(
                "loader.batch.write-timeout ({write_timeout:?}) must be below runtime.processing-timeout ({:?}): a slow store must never dead-letter a record",
                worker.processing_timeout
            ));
        }
        let profiles = raw.profiles;
        let ttl = duration("profiles.ttl", &profiles.ttl, &mut problems);
        if loader.sink == SinkKind::Profiles
            && profiles.store == ProfileBackend::Aerospike
            && aerospike_location(&profiles.key_prefix).is_none()
        {
            problems.push(format!(
                "profiles.key-prefix {:?}: Aerospike's profiles are named \"namespace/set\"",
                profiles.key_prefix
            ));
        }
        if profiles.keep == 0 {
            problems.push("profiles.keep must be at least 1".to_owned());
        }
        let es = raw.elasticsearch;
        if es.index_prefix.chars().any(|c| c.is_ascii_uppercase()) {
            problems.push(format!(
                "elasticsearch.index-prefix {:?}: index names are lowercase",
                es.index_prefix
            ));
        }
        if raw.files.format == FileFormat::Avro && raw.files.codec == FileCodec::Snappy {
            problems.push(
                "files.codec = \"snappy\" is for Parquet; Avro files take \"deflate\" or \"null\""
                    .to_owned(),
            );
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(LoaderSettings {
            worker,
            sink: loader.sink,
            inputs,
            limits: BatchLimits {
                max_records: loader.batch.records,
                max_bytes: loader.batch.bytes,
                max_wait: wait,
            },
            write_timeout,
            writes_in_flight: loader.batch.writes_in_flight,
            elasticsearch: ElasticsearchSettings {
                url: es.url.trim_end_matches('/').to_owned(),
                index_prefix: es.index_prefix,
                shards: es.shards,
                replicas: es.replicas,
                refresh_interval: es.refresh_interval,
            },
            files: FilesSettings {
                dir: adpipe_runtime::config::resolve_state_dir(
                    &raw.files.dir,
                    std::env::var_os(adpipe_runtime::config::STATE_DIR_ENV).as_deref(),
                ),
                format: raw.files.format,
                codec: raw.files.codec,
            },
            bigquery: raw.bigquery.trimmed(),
            profiles: ProfilesSettings {
                store: profiles.store,
                url: profiles.url,
                key_prefix: profiles.key_prefix,
                keep: profiles.keep,
                ttl,
            },
        })
    }

    /// The input of `topic`.
    pub fn input(&self, topic: &str) -> Option<&Input> {
        self.inputs.iter().find(|input| input.topic == topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn defaults_are_valid() {
        let settings = LoaderSettings::load(None, std::iter::empty()).expect("defaults validate");
        assert_eq!(settings.sink, SinkKind::Elasticsearch);
        assert_eq!(settings.inputs.len(), 4);
        let orphans = settings.input("joined.orphans").expect("orphans");
        assert_eq!(orphans.kinds, [EventKind::Click, EventKind::Conversion]);
        assert_eq!(settings.worker.dead_letter_topic, "dlq.loader");
    }

    #[test]
    fn an_unknown_kind_and_a_slow_write_are_refused_by_name() {
        let error = LoaderSettings::load(
            None,
            env(&[
                ("ADPIPE__LOADER__BATCH__WRITE_TIMEOUT", "1h"),
                ("ADPIPE__LOADER__SINK", "files"),
            ]),
        )
        .expect_err("refused");
        assert!(error.to_string().contains("write-timeout"), "{error}");
        let file = std::env::temp_dir().join(format!("loader-kinds-{}.toml", std::process::id()));
        std::fs::write(&file, "[loader]\ninputs = [\"x:impresion\", \"y\"]\n").expect("written");
        let error = LoaderSettings::load(Some(&file), std::iter::empty()).expect_err("refused");
        assert!(
            error
                .to_string()
                .contains("\"x:impresion\": unknown event type"),
            "{error}"
        );
        assert!(error.to_string().contains("\"y\" is not"), "{error}");
    }

    #[test]
    fn aerospike_profiles_are_named_namespace_and_set() {
        let profiles = |key_prefix: &str| {
            LoaderSettings::load(
                None,
                env(&[
                    ("ADPIPE__LOADER__SINK", "profiles"),
                    (
                        "ADPIPE__LOADER__INPUTS",
                        "[\"events-for-dc1:impression|click|conversion\"]",
                    ),
                    ("ADPIPE__PROFILES__STORE", "aerospike"),
                    ("ADPIPE__PROFILES__URL", "127.0.0.1:3000"),
                    ("ADPIPE__PROFILES__KEY_PREFIX", key_prefix),
                ]),
            )
        };
        let settings = profiles("adpipe/profiles-dc1").expect("valid");
        assert_eq!(settings.profiles.store, ProfileBackend::Aerospike);
        for wrong in ["profile-dc1:", "adpipe/", "/profiles", "a/b/c"] {
            let error = profiles(wrong).expect_err(wrong);
            assert!(error.to_string().contains("\"namespace/set\""), "{error}");
        }
    }
}
