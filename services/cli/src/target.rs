//! Which cluster a command talks to: `--cluster NAME` from the cluster map,
//! or `--brokers host:port,...` directly.

use std::path::PathBuf;

use adpipe_topology::ClusterMap;
use anyhow::{Context, bail};
use clap::Args;

/// Options shared by every command that talks to one Kafka cluster.
#[derive(Args, Debug, Clone)]
pub struct KafkaTarget {
    /// Cluster name from the cluster map (see --clusters).
    #[arg(
        long,
        env = "ADPIPE_CLUSTER",
        default_value = "central",
        conflicts_with = "brokers"
    )]
    pub cluster: String,
    /// Bootstrap servers, instead of a named cluster.
    #[arg(long, env = "ADPIPE_BROKERS")]
    pub brokers: Option<String>,
    /// Cluster map file.
    #[arg(
        long,
        env = "ADPIPE_CLUSTERS_FILE",
        default_value = "infra/clusters.toml"
    )]
    pub clusters: PathBuf,
}

impl KafkaTarget {
    /// The bootstrap servers to use.
    pub fn bootstrap_servers(&self) -> anyhow::Result<String> {
        if let Some(brokers) = &self.brokers {
            return Ok(brokers.clone());
        }
        let map = ClusterMap::load(&self.clusters)
            .with_context(|| format!("reading cluster map {}", self.clusters.display()))?;
        match map.cluster(&self.cluster) {
            Some(cluster) => Ok(cluster.bootstrap_servers.clone()),
            None => bail!(
                "no cluster named {:?} in {}; known: {}",
                self.cluster,
                self.clusters.display(),
                map.clusters
                    .iter()
                    .map(|cluster| cluster.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The schema registry to use.
#[derive(Args, Debug, Clone)]
pub struct RegistryTarget {
    /// Schema registry base URL (Confluent-compatible).
    #[arg(
        long,
        env = "ADPIPE_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub registry: String,
}
