//! What the reconciler reads: central and the DC clusters, the topic
//! names, the chain's consumer groups, the stores — from the embedded
//! defaults, a file and `ADPIPE__…` variables (like every service), and
//! for `adpipe reconcile` its flags on top.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use adpipe_runtime::ConfigError;
use adpipe_runtime::config::{duration, load_layers};
use serde::Deserialize;

use crate::ledger::Kind;

/// The embedded defaults.
pub const DEFAULTS: &str = include_str!("../defaults.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    kafka: RawKafka,
    registry: RawUrl,
    http: RawHttp,
    reconcile: RawReconcile,
    stats: RawStats,
    files: RawFiles,
    elasticsearch: RawElasticsearch,
    bigquery: adpipe_loader::config::BigQuerySettings,
    profiles: RawProfiles,
    dispatcher: RawDispatcher,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDispatcher {
    serving: String,
    replicas: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawProfiles {
    store: adpipe_loader::config::ProfileBackend,
    url: String,
    key_prefix: String,
    group: String,
    keep: usize,
    ttl: String,
}

/// The DCs' user profiles (Redis, or Aerospike), as their profile loaders
/// write them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfilesSettings {
    /// The store.
    pub store: adpipe_loader::config::ProfileBackend,
    /// The Redis (`redis://host:port[/db]`), or Aerospike's hosts
    /// (`host:port[,host:port…]`).
    pub url: String,
    /// A DC's key prefix (`{dc}`): Aerospike's `namespace/set`.
    pub key_prefix: String,
    /// A DC's profile loader's consumer group (`{dc}`; empty: unknown).
    pub group: String,
    /// The newest entries the loaders keep per user and kind.
    pub keep: usize,
    /// How long after the newest event's time a profile expires.
    pub ttl: Duration,
}

impl ProfilesSettings {
    /// `dc`'s key prefix.
    pub fn key_prefix(&self, dc: &str) -> String {
        self.key_prefix.replace("{dc}", dc)
    }
    /// `dc`'s profile loader's group.
    pub fn group(&self, dc: &str) -> String {
        self.group.replace("{dc}", dc)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKafka {
    bootstrap_servers: String,
    properties: BTreeMap<String, String>,
    #[serde(default)]
    security: adpipe_kafka_client::KafkaSecurity,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawUrl {
    url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHttp {
    listen: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawReconcile {
    dcs: Vec<String>,
    dc_clusters: Vec<String>,
    topic_prefix: String,
    source: String,
    replica: String,
    dispatched: String,
    dispatched_at_dc: String,
    slack: String,
    samples: usize,
    groups: Groups,
    serve: RawServe,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawServe {
    interval: String,
    lookback: String,
    close_by: CloseBy,
    close_after: String,
    heartbeat_scan: i64,
}

/// What closes an hour for the continuous reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloseBy {
    /// Every DC's heartbeat watermark passed its end.
    Heartbeats,
    /// The wall clock passed its end.
    WallClock,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawStats {
    postgres_url: String,
    schema: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFiles {
    dir: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawElasticsearch {
    url: String,
    index_prefix: String,
}

/// The chain's consumer groups (empty: that stage is not reconciled).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Groups {
    /// The merger's.
    pub merger: String,
    /// The deduplicator's.
    pub deduplicator: String,
    /// The joiner's.
    pub joiner: String,
    /// The stats-counter's (its offsets stored in PostgreSQL count).
    pub stats_counter: String,
    /// The files loader's.
    pub files: String,
    /// The Elasticsearch loader's.
    pub elasticsearch: String,
    /// The BigQuery loader's.
    pub bigquery: String,
    /// The dispatcher's.
    pub dispatcher: String,
}

/// One DC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dc {
    /// Its name.
    pub name: String,
    /// Its own cluster, when its own topics are read too.
    pub bootstrap: Option<String>,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// Central.
    pub bootstrap: String,
    /// Extra librdkafka properties and TLS/SASL, for every client.
    pub kafka_client: adpipe_kafka_client::ClientSettings,
    /// The schema registry.
    pub registry_url: String,
    /// The continuous reconciler's admin address.
    pub listen: SocketAddr,
    /// The DCs.
    pub dcs: Vec<Dc>,
    /// Topic names.
    pub topics: TopicNames,
    /// How long before the first hour reading starts.
    pub slack: Duration,
    /// Sample ids per difference.
    pub samples: usize,
    /// The chain's groups.
    pub groups: Groups,
    /// PostgreSQL URL and schema of the stats, when reconciled.
    pub stats: Option<(String, String)>,
    /// The files loader's root, when reconciled.
    pub files_dir: Option<PathBuf>,
    /// Elasticsearch URL and index prefix, when reconciled.
    pub elasticsearch: Option<(String, String)>,
    /// The BigQuery loader's tables, when reconciled.
    pub bigquery: Option<adpipe_loader::config::BigQuerySettings>,
    /// The DCs' profiles, when reconciled.
    pub profiles: Option<ProfilesSettings>,
    /// The dispatcher's routing between the DCs, when reconciled
    /// (`[dispatcher] serving` set): which DCs each processed event must
    /// be dispatched to.
    pub routes: Option<adpipe_dispatcher::dispatch::Routes>,
    /// Continuous mode: how often.
    pub interval: Duration,
    /// Continuous mode: how far back.
    pub lookback: Duration,
    /// Continuous mode: what closes an hour.
    pub close_by: CloseBy,
    /// Continuous mode: how long after its end (by the watermarks or the
    /// clock) an hour is closed.
    pub close_after: Duration,
    /// Continuous mode: records read back per partition for its newest heartbeat.
    pub heartbeat_scan: i64,
}

/// The pipeline's topic names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    /// `{prefix}` in templates and before every central topic.
    pub prefix: String,
    /// A DC's own topic: `{prefix}`, `{kind}` (plural).
    pub source: String,
    /// Its replica on central: `{dc}`, `{prefix}`, `{kind}`.
    pub replica: String,
    /// The dispatcher's topic for a DC on central: `{prefix}`, `{dc}`.
    pub dispatched: String,
    /// Its copy on the DC's own cluster: `{prefix}`, `{dc}`.
    pub dispatched_at_dc: String,
}

impl TopicNames {
    /// A DC's own topic of `kind`.
    pub fn source(&self, kind: Kind) -> String {
        self.source
            .replace("{prefix}", &self.prefix)
            .replace("{kind}", kind.plural())
    }
    /// Its replica on central.
    pub fn replica(&self, dc: &str, kind: Kind) -> String {
        self.replica
            .replace("{dc}", dc)
            .replace("{prefix}", &self.prefix)
            .replace("{kind}", kind.plural())
    }
    /// `merged.<kind>`.
    pub fn merged(&self, kind: Kind) -> String {
        format!("{}merged.{}", self.prefix, kind.plural())
    }
    /// `deduplicated.<kind>`.
    pub fn deduplicated(&self, kind: Kind) -> String {
        format!("{}deduplicated.{}", self.prefix, kind.plural())
    }
    /// `joined.clicks`, `joined.conversions`, `joined.orphans`.
    pub fn joined(&self, what: &str) -> String {
        format!("{}joined.{what}", self.prefix)
    }
    /// The dispatcher's topic for `dc` on central.
    pub fn dispatched(&self, dc: &str) -> String {
        self.dispatched
            .replace("{prefix}", &self.prefix)
            .replace("{dc}", dc)
    }
    /// Its copy on `dc`'s own cluster.
    pub fn dispatched_at_dc(&self, dc: &str) -> String {
        self.dispatched_at_dc
            .replace("{prefix}", &self.prefix)
            .replace("{dc}", dc)
    }
    /// `dlq.<service>`.
    pub fn dlq(&self, service: &str) -> String {
        format!("{}dlq.{service}", self.prefix)
    }
}

impl ReconcileSettings {
    /// Loads defaults, then `path`, then the environment, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut layers = load_layers(DEFAULTS, path, env)?;
        // The layers start from the worker runtime's defaults; the
        // reconciler is no worker (it reads, outside any group).
        layers.remove("runtime");
        if let Some(toml::Value::Table(kafka)) = layers.get_mut("kafka") {
            kafka.remove("session-timeout");
        }
        let raw: RawConfig = toml::Value::Table(layers)
            .try_into()
            .map_err(|error: toml::de::Error| ConfigError::Load(error.to_string()))?;
        let mut problems = Vec::new();
        let reconcile = raw.reconcile;
        let slack = duration("reconcile.slack", &reconcile.slack, &mut problems);
        let interval = duration(
            "reconcile.serve.interval",
            &reconcile.serve.interval,
            &mut problems,
        );
        let lookback = duration(
            "reconcile.serve.lookback",
            &reconcile.serve.lookback,
            &mut problems,
        );
        let close_after = duration(
            "reconcile.serve.close-after",
            &reconcile.serve.close_after,
            &mut problems,
        );
        let profiles_ttl = duration("profiles.ttl", &raw.profiles.ttl, &mut problems);
        if !raw.profiles.url.is_empty()
            && raw.profiles.store == adpipe_loader::config::ProfileBackend::Aerospike
        {
            if !cfg!(feature = "aerospike") {
                problems.push(adpipe_loader::profiles::AEROSPIKE_NOT_BUILT.to_owned());
            }
            let prefix = raw.profiles.key_prefix.replace("{dc}", "dc");
            if adpipe_loader::config::aerospike_location(&prefix).is_none() {
                problems.push(format!(
                    "profiles.key-prefix {:?}: Aerospike's profiles are named \"namespace/set\" (with {{dc}})",
                    raw.profiles.key_prefix
                ));
            }
        }
        if raw.profiles.keep == 0 {
            problems.push("profiles.keep must be at least 1".to_owned());
        }
        if reconcile.dcs.is_empty() {
            problems.push("reconcile.dcs names no DC".to_owned());
        }
        let mut clusters = BTreeMap::new();
        for entry in &reconcile.dc_clusters {
            match entry.split_once('=') {
                Some((dc, bootstrap)) if reconcile.dcs.iter().any(|known| known == dc) => {
                    clusters.insert(dc.to_owned(), bootstrap.to_owned());
                }
                Some((dc, _)) => problems.push(format!(
                    "reconcile.dc-clusters: {dc:?} is not one of reconcile.dcs {:?}",
                    reconcile.dcs
                )),
                None => problems.push(format!(
                    "reconcile.dc-clusters: {entry:?} is not \"dc=host:port\""
                )),
            }
        }
        if !reconcile.replica.contains("{dc}") {
            problems.push(format!(
                "reconcile.replica = {:?} must contain {{dc}}",
                reconcile.replica
            ));
        }
        let serving = match raw.dispatcher.serving.as_str() {
            "" => None,
            serving => adpipe_dispatcher::dispatch::Serving::parse(
                serving,
                raw.dispatcher.replicas,
                reconcile.dcs.len(),
            )
            .map_err(|problem| problems.push(problem))
            .ok(),
        };
        if serving.is_some() && reconcile.groups.dispatcher.is_empty() {
            problems.push(
                "dispatcher.serving is set but reconcile.groups.dispatcher is empty: the dispatcher's commits tell what is in flight".to_owned(),
            );
        }
        let routes = serving.map(|serving| {
            adpipe_dispatcher::dispatch::Routes::new(reconcile.dcs.clone(), serving, "")
        });
        let security = match raw.kafka.security.resolve() {
            Ok(security) => security,
            Err(security_problems) => {
                problems.extend(security_problems);
                adpipe_kafka_client::KafkaSecurity::default()
            }
        };
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        let non_empty = |text: String| (!text.is_empty()).then_some(text);
        Ok(ReconcileSettings {
            bootstrap: raw.kafka.bootstrap_servers,
            kafka_client: adpipe_kafka_client::ClientSettings {
                properties: raw.kafka.properties,
                security,
            },
            registry_url: raw.registry.url,
            listen: raw.http.listen,
            dcs: reconcile
                .dcs
                .into_iter()
                .map(|name| Dc {
                    bootstrap: clusters.get(&name).cloned(),
                    name,
                })
                .collect(),
            topics: TopicNames {
                prefix: reconcile.topic_prefix,
                source: reconcile.source,
                replica: reconcile.replica,
                dispatched: reconcile.dispatched,
                dispatched_at_dc: reconcile.dispatched_at_dc,
            },
            slack,
            samples: reconcile.samples,
            groups: reconcile.groups,
            stats: non_empty(raw.stats.postgres_url).map(|url| (url, raw.stats.schema)),
            files_dir: non_empty(raw.files.dir).map(PathBuf::from),
            elasticsearch: non_empty(raw.elasticsearch.url).map(|url| {
                (
                    url.trim_end_matches('/').to_owned(),
                    raw.elasticsearch.index_prefix,
                )
            }),
            bigquery: (!raw.bigquery.url.is_empty()).then(|| raw.bigquery.trimmed()),
            profiles: non_empty(raw.profiles.url).map(|url| ProfilesSettings {
                store: raw.profiles.store,
                url,
                key_prefix: raw.profiles.key_prefix,
                group: raw.profiles.group,
                keep: raw.profiles.keep,
                ttl: profiles_ttl,
            }),
            routes,
            interval,
            lookback,
            close_by: reconcile.serve.close_by,
            close_after,
            heartbeat_scan: reconcile.serve.heartbeat_scan,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_bad_settings_are_named() {
        let settings = ReconcileSettings::load(None, std::iter::empty()).expect("defaults");
        assert_eq!(settings.topics.replica("dc1", Kind::Click), "dc1.clicks");
        assert!(settings.stats.is_none() && settings.files_dir.is_none());
        assert!(settings.bigquery.is_none() && settings.profiles.is_none());
        assert_eq!(settings.topics.dispatched("dc2"), "events-for-dc2");
        assert_eq!(
            settings.topics.dispatched_at_dc("dc2"),
            "central.events-for-dc2"
        );
        let env = [
            ("ADPIPE__RECONCILE__TOPIC_PREFIX", "t."),
            (
                "ADPIPE__RECONCILE__DC_CLUSTERS",
                "[\"dc1=h:1\", \"dc9=h:2\", \"nonsense\"]",
            ),
        ]
        .map(|(key, value)| (key.to_owned(), value.to_owned()));
        let Err(ConfigError::Invalid(problems)) = ReconcileSettings::load(None, env.into_iter())
        else {
            panic!("two bad entries");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("dc9"), "{problems:?}");
    }

    #[test]
    fn aerospike_profiles_and_the_routing_are_checked_at_load() {
        let load = |pairs: &[(&str, &str)]| {
            ReconcileSettings::load(
                None,
                pairs
                    .iter()
                    .map(|(key, value)| (format!("ADPIPE__{key}"), (*value).to_owned())),
            )
        };
        let aerospike = |prefix: &'static str| {
            load(&[
                ("PROFILES__STORE", "\"aerospike\""),
                ("PROFILES__URL", "\"127.0.0.1:3000\""),
                ("PROFILES__KEY_PREFIX", prefix),
            ])
        };
        let error = aerospike("\"profile-{dc}:\"").expect_err("not namespace/set");
        assert!(error.to_string().contains("namespace/set"), "{error}");
        let valid = aerospike("\"adpipe/profiles-{dc}\"");
        if cfg!(feature = "aerospike") {
            valid.expect("valid");
        } else {
            let error = valid.expect_err("not built");
            assert!(error.to_string().contains("aerospike feature"), "{error}");
        }
        let routes = load(&[
            ("DISPATCHER__SERVING", "\"user-hash\""),
            ("DISPATCHER__REPLICAS", "1"),
        ])
        .expect("valid")
        .routes
        .expect("routing reconciled");
        assert_eq!(routes.topics().count(), 2);
        let error = load(&[("DISPATCHER__SERVING", "\"some\"")]).expect_err("unknown");
        assert!(error.to_string().contains("dispatcher.serving"), "{error}");
        assert!(
            load(&[]).expect("defaults").routes.is_none(),
            "off by default"
        );
    }
}
