//! Which Kafka clusters exist and what role each plays (infra/clusters.toml
//! locally; a file of the same shape per production environment).

use std::path::Path;

use serde::Deserialize;

use crate::declared::TopologyError;

/// What a cluster is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterRole {
    /// A datacenter cluster that bidders publish to.
    Dc,
    /// The cluster of merged, deduplicated, joined and counted data.
    Central,
}

/// One cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Name, e.g. `dc1`.
    pub name: String,
    /// Role.
    pub role: ClusterRole,
    /// Bootstrap servers.
    pub bootstrap_servers: String,
    /// A secured local cluster's plaintext listener for its own traffic
    /// (`internal_port`; tests set up through it, never the code under test).
    pub internal_servers: Option<String>,
}

/// Every cluster of one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMap {
    /// The clusters, in file order (not the on-demand ones).
    pub clusters: Vec<Cluster>,
    /// Clusters started only when named (`on_demand = true`: the chaos
    /// test's three-broker central); never planned or mirrored.
    pub on_demand: Vec<Cluster>,
    /// Upper bound on replication (1 for single-broker local clusters).
    pub max_replication: Option<i32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    cluster: Vec<RawCluster>,
    #[serde(default)]
    settings: RawSettings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    role: ClusterRole,
    /// Local clusters give a loopback port ...
    port: Option<u16>,
    /// ... used by infra/kafka.sh only.
    #[allow(dead_code)]
    controller_port: Option<u16>,
    /// A local cluster's further nodes' ports (in its bootstrap servers) ...
    #[serde(default)]
    more_ports: Vec<u16>,
    /// ... and their controllers' (infra/kafka.sh only).
    #[allow(dead_code)]
    #[serde(default)]
    more_controller_ports: Vec<u16>,
    /// Started only when named.
    #[serde(default)]
    on_demand: bool,
    /// A secured cluster's plaintext listener for its own traffic ...
    internal_port: Option<u16>,
    /// ... and how it takes clients (`sasl_ssl`); infra/kafka.sh only.
    #[allow(dead_code)]
    security: Option<String>,
    /// ... production ones their bootstrap servers.
    bootstrap_servers: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    max_replication: Option<i32>,
}

impl ClusterMap {
    /// Reads a cluster map file.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| TopologyError::Io(path.display().to_string(), error.to_string()))?;
        Self::parse(&text)
    }

    /// Parses a cluster map.
    pub fn parse(text: &str) -> Result<Self, TopologyError> {
        let raw: RawMap =
            toml::from_str(text).map_err(|error| TopologyError::Parse(error.to_string()))?;
        let mut clusters = Vec::new();
        let mut on_demand = Vec::new();
        let mut problems = Vec::new();
        for cluster in raw.cluster {
            let bootstrap_servers = match (cluster.bootstrap_servers, cluster.port) {
                (Some(servers), _) => servers,
                (None, Some(port)) => std::iter::once(port)
                    .chain(cluster.more_ports.iter().copied())
                    .map(|port| format!("127.0.0.1:{port}"))
                    .collect::<Vec<_>>()
                    .join(","),
                (None, None) => {
                    problems.push(format!(
                        "cluster {} has neither bootstrap_servers nor port",
                        cluster.name
                    ));
                    continue;
                }
            };
            let entry = Cluster {
                name: cluster.name,
                role: cluster.role,
                bootstrap_servers,
                internal_servers: cluster
                    .internal_port
                    .map(|port| format!("127.0.0.1:{port}")),
            };
            if cluster.on_demand {
                on_demand.push(entry);
            } else {
                clusters.push(entry);
            }
        }
        if !clusters
            .iter()
            .any(|cluster| cluster.role == ClusterRole::Central)
        {
            problems.push("no cluster has role \"central\"".to_owned());
        }
        if !problems.is_empty() {
            return Err(TopologyError::Invalid(problems));
        }
        Ok(ClusterMap {
            clusters,
            on_demand,
            max_replication: raw.settings.max_replication,
        })
    }

    /// The cluster with this name (an on-demand one too).
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters
            .iter()
            .chain(&self.on_demand)
            .find(|cluster| cluster.name == name)
    }

    /// The central cluster.
    pub fn central(&self) -> Option<&Cluster> {
        self.clusters
            .iter()
            .find(|cluster| cluster.role == ClusterRole::Central)
    }

    /// The datacenter clusters.
    pub fn dcs(&self) -> impl Iterator<Item = &Cluster> {
        self.clusters
            .iter()
            .filter(|cluster| cluster.role == ClusterRole::Dc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_local_cluster_map() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/clusters.toml");
        let map = ClusterMap::load(&path).expect("infra/clusters.toml is valid");
        assert_eq!(map.dcs().count(), 2);
        assert_eq!(
            map.central().map(|c| c.bootstrap_servers.as_str()),
            Some("127.0.0.1:39092")
        );
        assert_eq!(map.max_replication, Some(1));
        assert_eq!(
            map.clusters.len(),
            3,
            "the on-demand cluster is not planned"
        );
        assert_eq!(
            map.cluster("chaos").map(|c| c.bootstrap_servers.as_str()),
            Some("127.0.0.1:49092,127.0.0.1:49094,127.0.0.1:49096"),
            "every node of a multi-node cluster bootstraps"
        );
    }

    #[test]
    fn rejects_a_map_without_central_or_address() {
        let error =
            ClusterMap::parse("[[cluster]]\nname = \"dc1\"\nrole = \"dc\"\n").expect_err("invalid");
        let text = error.to_string();
        assert!(
            text.contains("neither bootstrap_servers nor port"),
            "{text}"
        );
        assert!(text.contains("central"), "{text}");
    }
}
