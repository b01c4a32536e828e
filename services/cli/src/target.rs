//! Which cluster a command talks to: `--cluster NAME` from the cluster map,
//! or `--brokers host:port,...` directly.

use std::path::PathBuf;

use adpipe_topology::ClusterMap;
use anyhow::{Context, bail};
use clap::Args;

/// The cluster map: which clusters exist and where (`infra/clusters.toml`).
#[derive(Args, Debug, Clone)]
pub struct ClusterMapFile {
    /// Cluster map file.
    #[arg(
        long = "clusters",
        env = "ADPIPE_CLUSTERS_FILE",
        default_value = "infra/clusters.toml"
    )]
    pub path: PathBuf,
}

impl ClusterMapFile {
    /// The map at `path` (or `infra/clusters.toml`).
    pub fn new(path: PathBuf) -> ClusterMapFile {
        ClusterMapFile { path }
    }

    /// Reads and validates the map.
    pub fn load(&self) -> anyhow::Result<ClusterMap> {
        ClusterMap::load(&self.path)
            .with_context(|| format!("reading cluster map {}", self.path.display()))
    }

    /// The bootstrap servers of the cluster called `name`.
    pub fn bootstrap_servers(&self, name: &str) -> anyhow::Result<String> {
        let map = self.load()?;
        match map.cluster(name) {
            Some(cluster) => Ok(cluster.bootstrap_servers.clone()),
            None => bail!(
                "no cluster named {name:?} in {}; known: {}",
                self.path.display(),
                map.clusters
                    .iter()
                    .map(|cluster| cluster.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

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
    #[command(flatten)]
    pub clusters: ClusterMapFile,
}

impl KafkaTarget {
    /// The bootstrap servers to use.
    pub fn bootstrap_servers(&self) -> anyhow::Result<String> {
        match &self.brokers {
            Some(brokers) => Ok(brokers.clone()),
            None => self.clusters.bootstrap_servers(&self.cluster),
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
    /// The registry's write token, when it has one (registering schemas
    /// needs it). Prefer the environment or --registry-token-file.
    #[arg(long, env = "ADPIPE_REGISTRY_TOKEN", hide_env_values = true)]
    pub registry_token: Option<String>,
    /// A file holding the registry's write token.
    #[arg(long, env = "ADPIPE_REGISTRY_TOKEN_FILE")]
    pub registry_token_file: Option<std::path::PathBuf>,
}

impl RegistryTarget {
    /// The registry at `url`, without a token.
    pub fn at(url: String) -> Self {
        RegistryTarget {
            registry: url,
            registry_token: None,
            registry_token_file: None,
        }
    }

    /// A client of the registry, sending its token if one is given.
    pub fn client(&self) -> anyhow::Result<adpipe_codec::RegistryClient> {
        let token = adpipe_kafka_client::secret_from(
            "registry token",
            self.registry_token
                .clone()
                .map(adpipe_kafka_client::Secret::new),
            self.registry_token_file.as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
        Ok(adpipe_codec::RegistryClient::new(&self.registry)?
            .with_token(token.as_ref().map(adpipe_kafka_client::Secret::expose))?)
    }
}
