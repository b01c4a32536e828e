//! The joiner's configuration: the shared runtime sections plus `[joiner]`.

use std::path::{Path, PathBuf};

use adpipe_runtime::config::{
    HttpConfig, KafkaConfig, RegistryConfig, RuntimeConfig, duration, load_raw,
};
use adpipe_runtime::{ConfigError, OutputTopic, TimerClock, WorkerSettings};
use serde::Deserialize;

use crate::step::{Topics, Windows};

/// The embedded defaults.
pub const DEFAULTS: &str = include_str!("../defaults.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    kafka: KafkaConfig,
    registry: RegistryConfig,
    runtime: RuntimeConfig,
    http: HttpConfig,
    joiner: RawJoiner,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawJoiner {
    impressions: String,
    clicks: String,
    conversions: String,
    joined_clicks: String,
    joined_conversions: String,
    orphans: String,
    impressions_changelog: String,
    clicks_changelog: String,
    click_window: String,
    attribution_window: String,
    wait: String,
    wait_clock: String,
    store: String,
    state_dir: PathBuf,
    impressions_cap_mib: u64,
    clicks_cap_mib: u64,
    store_cache_mib: u64,
    store_memtable_mib: u64,
    aerospike_hosts: String,
    aerospike_namespace: String,
    checkpoint_interval: String,
    resume_scan: u64,
}

/// Which backend holds the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// fjall on local disk.
    Disk,
    /// In memory, with a snapshot file.
    Memory,
    /// The shared Aerospike cluster (built with the feature `aerospike`).
    Aerospike,
}

/// The memory one disk store may hold (fjall's block cache and memtable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreMemory {
    /// Block cache, bytes.
    pub cache_bytes: u64,
    /// Memtable per time bucket, bytes: flushed to disk when full.
    pub memtable_bytes: u64,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct JoinerSettings {
    /// Runtime settings: one input group, impressions, clicks, conversions.
    pub worker: WorkerSettings,
    /// Output and changelog topics.
    pub topics: Topics,
    /// Windows and the wait.
    pub windows: Windows,
    /// The backend.
    pub store: StoreKind,
    /// Local state root.
    pub state_dir: PathBuf,
    /// Size caps per partition in bytes: impressions, clicks.
    pub caps: (u64, u64),
    /// Memory of each disk store (one per partition and kind), in bytes:
    /// its block cache and its memtable (per time bucket).
    pub store_memory: StoreMemory,
    /// Aerospike seeds (`host:port,…`) and namespace, for `store = "aerospike"`.
    pub aerospike: (String, String),
    /// Between two checkpoints of a partition's stores while it works.
    pub checkpoint_interval: std::time::Duration,
    /// Records read at the tail of each output partition on restart to
    /// find what was already emitted (0: off, re-emit after a crash).
    pub resume_scan: u64,
}

fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl JoinerSettings {
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
        let joiner = &raw.joiner;
        let click_ms = millis(duration(
            "joiner.click-window",
            &joiner.click_window,
            &mut problems,
        ));
        let attribution_ms = millis(duration(
            "joiner.attribution-window",
            &joiner.attribution_window,
            &mut problems,
        ));
        let wait_ms = millis(duration("joiner.wait", &joiner.wait, &mut problems));
        let checkpoint_interval = duration(
            "joiner.checkpoint-interval",
            &joiner.checkpoint_interval,
            &mut problems,
        );
        let wait_clock = match joiner.wait_clock.as_str() {
            "wall" => TimerClock::Wall,
            "event" => TimerClock::Event,
            other => {
                problems.push(format!(
                    "joiner.wait-clock = {other:?}: expected \"wall\" or \"event\""
                ));
                TimerClock::Wall
            }
        };
        let store = match joiner.store.as_str() {
            "disk" => StoreKind::Disk,
            "memory" => StoreKind::Memory,
            other => {
                problems.push(format!(
                    "joiner.store = {other:?}: expected \"disk\" or \"memory\""
                ));
                StoreKind::Disk
            }
        };
        if joiner.store_memtable_mib == 0 {
            // fjall would flush a table to disk for every write.
            problems.push("joiner.store-memtable-mib = 0: expected at least 1".to_owned());
        }
        // runtime.sub-partitions = 1 is checked by the runtime: a task
        // with several time-aligned inputs owns whole partitions.
        let inputs = vec![
            joiner.impressions.clone(),
            joiner.clicks.clone(),
            joiner.conversions.clone(),
        ];
        let mut worker = WorkerSettings::validate(
            "joiner",
            vec![inputs],
            raw.kafka,
            raw.runtime,
            raw.http,
            Some(raw.registry),
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        let joiner = raw.joiner;
        worker.outputs = [
            &joiner.joined_clicks,
            &joiner.joined_conversions,
            &joiner.orphans,
            &joiner.impressions_changelog,
            &joiner.clicks_changelog,
        ]
        .map(|topic| OutputTopic {
            topic: topic.clone(),
            partitions_like: Some(joiner.impressions.clone()),
        })
        .into_iter()
        .collect();
        Ok(JoinerSettings {
            worker,
            topics: Topics {
                joined_clicks: joiner.joined_clicks.as_str().into(),
                joined_conversions: joiner.joined_conversions.as_str().into(),
                orphans: joiner.orphans.as_str().into(),
                impressions_changelog: joiner.impressions_changelog.as_str().into(),
                clicks_changelog: joiner.clicks_changelog.as_str().into(),
            },
            windows: Windows {
                click_ms,
                attribution_ms,
                wait_ms,
                wait_clock,
            },
            store,
            state_dir: adpipe_runtime::config::resolve_state_dir(
                &joiner.state_dir,
                state_root.as_deref(),
            ),
            caps: (
                joiner.impressions_cap_mib << 20,
                joiner.clicks_cap_mib << 20,
            ),
            store_memory: StoreMemory {
                cache_bytes: joiner.store_cache_mib << 20,
                memtable_bytes: joiner.store_memtable_mib << 20,
            },
            aerospike: (joiner.aerospike_hosts, joiner.aerospike_namespace),
            checkpoint_interval,
            resume_scan: joiner.resume_scan,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let settings = JoinerSettings::load(None, std::iter::empty()).expect("defaults validate");
        assert_eq!(settings.worker.input_groups.len(), 1);
        assert_eq!(settings.worker.input_groups[0].len(), 3);
        assert_eq!(settings.windows.attribution_ms, 30 * 86_400_000);
        assert_eq!(settings.windows.wait_clock, TimerClock::Wall);
        assert_eq!(settings.worker.outputs.len(), 5);
        assert_eq!(settings.store, StoreKind::Disk);
    }

    #[test]
    fn a_disk_stores_memory_is_set_in_mib() {
        let env = [
            ("ADPIPE__JOINER__STORE_CACHE_MIB", "4"),
            ("ADPIPE__JOINER__STORE_MEMTABLE_MIB", "2"),
        ]
        .map(|(key, value)| (key.to_owned(), value.to_owned()));
        let settings = JoinerSettings::load(None, env.into_iter()).expect("valid");
        assert_eq!(
            settings.store_memory,
            StoreMemory {
                cache_bytes: 4 << 20,
                memtable_bytes: 2 << 20
            }
        );
        let defaults = JoinerSettings::load(None, std::iter::empty()).expect("valid");
        assert_eq!(
            defaults.store_memory.cache_bytes,
            32 << 20,
            "fjall's own default"
        );
    }

    #[test]
    fn lists_every_problem() {
        let env = [
            ("ADPIPE__JOINER__WAIT", "a while"),
            ("ADPIPE__JOINER__WAIT_CLOCK", "sundial"),
            ("ADPIPE__JOINER__STORE", "tape"),
            ("ADPIPE__JOINER__STORE_MEMTABLE_MIB", "0"),
            ("ADPIPE__RUNTIME__SUB_PARTITIONS", "2"),
        ]
        .map(|(key, value)| (key.to_owned(), value.to_owned()));
        let ConfigError::Invalid(problems) =
            JoinerSettings::load(None, env.into_iter()).expect_err("invalid")
        else {
            panic!("expected validation problems")
        };
        assert_eq!(problems.len(), 5, "{problems:#?}");
    }
}
