//! The declaration in `topologies/*.toml`, validated.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::clusters::{Cluster, ClusterMap, ClusterRole};

/// A problem with a topology or cluster file.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Io(String, String),
    /// The file is not valid TOML of the expected shape.
    #[error("invalid topology: {0}")]
    Parse(String),
    /// The content breaks a rule; every problem is listed.
    #[error("invalid topology:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Kafka's cleanup policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanupPolicy {
    /// Facts: deleted after retention.
    Delete,
    /// Dimensions and aggregates: the last record per key is kept.
    Compact,
    /// State changelogs: compacted, and records older than the retention
    /// deleted too (ids that left a window).
    #[serde(rename = "compact,delete")]
    CompactDelete,
}

impl CleanupPolicy {
    fn as_config(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    defaults: RawDefaults,
    topic: Vec<RawTopic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    partitions: i32,
    replication: i32,
    min_insync_replicas: i32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopic {
    name: String,
    on: ClusterRole,
    keyed: bool,
    partitions: Option<i32>,
    cleanup_policy: CleanupPolicy,
    retention: Option<String>,
    #[serde(default)]
    configs: BTreeMap<String, String>,
    #[allow(dead_code)]
    doc: String,
}

/// One declared topic, before it is placed on clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredTopic {
    name: String,
    on: ClusterRole,
    keyed: bool,
    partitions: i32,
    configs: BTreeMap<String, String>,
}

/// The validated declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    topics: Vec<DeclaredTopic>,
    replication: i32,
    min_insync_replicas: i32,
}

/// A topic as it should exist on one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTopic {
    /// Cluster name.
    pub cluster: String,
    /// Topic name (with `{cluster}` replaced).
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor (capped by the cluster map).
    pub replication: i32,
    /// Keyed by user id: partition count is part of the data layout.
    pub keyed: bool,
    /// Topic configs adpipe manages.
    pub configs: BTreeMap<String, String>,
}

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| TopologyError::Io(path.display().to_string(), error.to_string()))?;
        Self::parse(&text)
    }

    /// Parses and validates a topology, listing every problem.
    pub fn parse(text: &str) -> Result<Self, TopologyError> {
        let raw: RawTopology =
            toml::from_str(text).map_err(|error| TopologyError::Parse(error.to_string()))?;
        let mut problems = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut topics = Vec::new();
        for topic in raw.topic {
            // A name may be declared once per role (dlq.loader: on central
            // and in every DC, where the profile loaders run).
            if !seen.insert((topic.name.clone(), topic.on)) {
                problems.push(format!("topic {} is declared twice", topic.name));
            }
            let partitions = match (topic.keyed, topic.partitions) {
                (true, Some(partitions)) if partitions != raw.defaults.partitions => {
                    problems.push(format!(
                        "keyed topic {} declares {partitions} partitions; every keyed topic must have defaults.partitions ({}) so partition i holds the same users everywhere",
                        topic.name, raw.defaults.partitions
                    ));
                    partitions
                }
                (_, Some(partitions)) => partitions,
                (_, None) => raw.defaults.partitions,
            };
            if partitions < 1 {
                problems.push(format!("topic {} needs at least one partition", topic.name));
            }
            let mut configs = topic.configs;
            configs.insert(
                "cleanup.policy".to_owned(),
                topic.cleanup_policy.as_config().to_owned(),
            );
            match (&topic.retention, topic.cleanup_policy) {
                (Some(retention), CleanupPolicy::Delete | CleanupPolicy::CompactDelete) => {
                    match humantime::parse_duration(retention) {
                        Ok(duration) => {
                            configs.insert("retention.ms".to_owned(), duration_ms(duration));
                        }
                        Err(error) => problems.push(format!(
                            "topic {}: retention {retention:?}: {error}",
                            topic.name
                        )),
                    }
                }
                (None, CleanupPolicy::Delete | CleanupPolicy::CompactDelete) => {
                    problems.push(format!(
                        "topic {} deletes old data but declares no retention",
                        topic.name
                    ));
                }
                (Some(_), CleanupPolicy::Compact) => problems.push(format!(
                    "topic {} is compacted; retention would delete the latest value per key",
                    topic.name
                )),
                (None, CleanupPolicy::Compact) => {}
            }
            topics.push(DeclaredTopic {
                name: topic.name,
                on: topic.on,
                keyed: topic.keyed,
                partitions,
                configs,
            });
        }
        if raw.defaults.min_insync_replicas > raw.defaults.replication {
            problems.push("defaults.min_insync_replicas exceeds defaults.replication".to_owned());
        }
        if !problems.is_empty() {
            return Err(TopologyError::Invalid(problems));
        }
        Ok(Topology {
            topics,
            replication: raw.defaults.replication,
            min_insync_replicas: raw.defaults.min_insync_replicas,
        })
    }

    /// The topics one cluster should hold.
    pub fn desired_for(&self, cluster: &Cluster, map: &ClusterMap) -> Vec<DesiredTopic> {
        let replication = map
            .max_replication
            .map_or(self.replication, |cap| cap.min(self.replication));
        let min_insync = self.min_insync_replicas.min(replication);
        let dcs: Vec<&str> = map
            .clusters
            .iter()
            .filter(|cluster| cluster.role == ClusterRole::Dc)
            .map(|cluster| cluster.name.as_str())
            .collect();
        self.topics
            .iter()
            .filter(|topic| topic.on == cluster.role)
            .flat_map(|topic| {
                // `{dc}`: one topic per DC cluster of the map (replicas of
                // the DCs' topics, and per-DC outputs, on central).
                let names: Vec<String> = if topic.name.contains("{dc}") {
                    dcs.iter()
                        .map(|dc| topic.name.replace("{dc}", dc))
                        .collect()
                } else {
                    vec![topic.name.clone()]
                };
                names.into_iter().map(move |name| {
                    let mut configs = topic.configs.clone();
                    configs.insert("min.insync.replicas".to_owned(), min_insync.to_string());
                    DesiredTopic {
                        cluster: cluster.name.clone(),
                        name: name.replace("{cluster}", &cluster.name),
                        partitions: topic.partitions,
                        replication,
                        keyed: topic.keyed,
                        configs,
                    }
                })
            })
            .collect()
    }

    /// Partition count shared by every keyed topic.
    pub fn keyed_partitions(&self) -> Option<i32> {
        self.topics
            .iter()
            .find(|topic| topic.keyed)
            .map(|topic| topic.partitions)
    }
}

fn duration_ms(duration: Duration) -> String {
    duration.as_millis().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(relative: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(relative)
    }

    #[test]
    fn the_pipeline_topology_is_valid_and_places_topics() {
        let topology = Topology::load(&repo_file("topologies/pipeline.toml")).expect("valid");
        let map = ClusterMap::load(&repo_file("infra/clusters.toml")).expect("valid");
        let dc1 = map.cluster("dc1").expect("dc1");
        let dc1_topics = topology.desired_for(dc1, &map);
        let names: Vec<_> = dc1_topics.iter().map(|topic| topic.name.as_str()).collect();
        assert!(
            names.contains(&"impressions") && names.contains(&"central.events-for-dc1"),
            "{names:?}"
        );
        let central = map.cluster("central").expect("central");
        let central_topics = topology.desired_for(central, &map);
        let central_names: Vec<_> = central_topics
            .iter()
            .map(|topic| topic.name.as_str())
            .collect();
        for replica in [
            "dc1.impressions",
            "dc2.impressions",
            "dc2.conversions",
            "events-for-dc2",
        ] {
            assert!(
                central_names.contains(&replica),
                "{replica}: {central_names:?}"
            );
        }
        assert!(!names.contains(&"_schemas"));
        // Fixed partitioning: the same count for every keyed topic in every cluster.
        let keyed: Vec<i32> = map
            .clusters
            .iter()
            .flat_map(|cluster| topology.desired_for(cluster, &map))
            .filter(|topic| topic.keyed)
            .map(|topic| topic.partitions)
            .collect();
        assert!(
            keyed
                .iter()
                .all(|partitions| Some(*partitions) == topology.keyed_partitions())
        );
        // Local clusters have one broker.
        assert!(dc1_topics.iter().all(|topic| topic.replication == 1));
        assert!(
            dc1_topics
                .iter()
                .all(|topic| topic.configs["min.insync.replicas"] == "1")
        );
        let impressions = &dc1_topics[0];
        assert_eq!(impressions.configs["retention.ms"], "259200000");
    }

    #[test]
    fn lists_every_problem_at_once() {
        let text = r#"
[defaults]
partitions = 12
replication = 3
min_insync_replicas = 2

[[topic]]
name = "a"
on = "dc"
keyed = true
partitions = 6
cleanup_policy = "delete"
doc = ""

[[topic]]
name = "a"
on = "dc"
keyed = false
cleanup_policy = "compact"
retention = "1d"
doc = ""
"#;
        let TopologyError::Invalid(problems) = Topology::parse(text).expect_err("invalid") else {
            panic!("expected validation problems");
        };
        assert_eq!(problems.len(), 4, "{problems:#?}");
    }
}
