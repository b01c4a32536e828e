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

/// The local cluster map (`infra/clusters.toml`, or `$ADPIPE_CLUSTERS_FILE`).
pub fn clusters() -> ClusterMap {
    let path = std::env::var("ADPIPE_CLUSTERS_FILE")
        .unwrap_or_else(|_| format!("{}/../../infra/clusters.toml", env!("CARGO_MANIFEST_DIR")));
    ClusterMap::load(std::path::Path::new(&path))
        .unwrap_or_else(|error| panic!("cannot read cluster map {path}: {error}"))
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
