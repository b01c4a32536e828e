//! Test helpers for the real parts started by `infra/` scripts.
//!
//! Contract: nothing here starts or mocks a server. Tests find the clusters
//! that `infra/kafka.sh start` runs (through `infra/clusters.toml`) and fail
//! with a message that says how to start them when they are not there —
//! a missing broker fails the test, it never skips it.
#![warn(missing_docs)]

use std::time::Duration;

use adpipe_topology::ClusterMap;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Path of the local cluster map: `$ADPIPE_CLUSTERS_FILE`, else
/// `infra/clusters.toml`.
pub fn clusters_file() -> std::path::PathBuf {
    std::env::var_os("ADPIPE_CLUSTERS_FILE").map_or_else(
        || {
            std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../infra/clusters.toml"
            ))
        },
        std::path::PathBuf::from,
    )
}

/// The local cluster map (see [`clusters_file`]).
pub fn clusters() -> ClusterMap {
    let path = clusters_file();
    ClusterMap::load(&path)
        .unwrap_or_else(|error| panic!("cannot read cluster map {}: {error}", path.display()))
}

/// Bootstrap servers of the named local cluster, after checking that it
/// answers a metadata request.
pub fn kafka(cluster: &str) -> String {
    let map = clusters();
    let bootstrap = map
        .cluster(cluster)
        .unwrap_or_else(|| panic!("no cluster {cluster} in infra/clusters.toml"))
        .bootstrap_servers
        .clone();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("kafka client");
    if let Err(error) = consumer.fetch_metadata(None, Duration::from_secs(10)) {
        panic!(
            "Kafka cluster {cluster} at {bootstrap} does not answer ({error}). \
             Start the real clusters with `infra/kafka.sh start` (or run the full \
             test command from the README, which does it)."
        );
    }
    bootstrap
}

/// A name no other test run uses, for topics, groups and subjects.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}
