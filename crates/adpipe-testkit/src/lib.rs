//! Test helpers for the real parts started by `infra/` scripts.
//!
//! Contract: nothing here starts or mocks a server. Tests find the clusters
//! that `infra/kafka.sh start` runs (through `infra/clusters.toml`) and fail
//! with a message that says how to start them when they are not there —
//! a missing broker fails the test, it never skips it.
#![warn(missing_docs)]

pub mod profiles;
pub mod slow_proxy;

pub use slow_proxy::SlowProxy;

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
    expect_answer(&bootstrap, &format!("Kafka cluster {cluster}"), cluster);
    bootstrap
}

/// Panics, saying how to start `cluster`, unless `bootstrap` answers a
/// metadata request.
fn expect_answer(bootstrap: &str, what: &str, cluster: &str) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("kafka client");
    if let Err(error) = consumer.fetch_metadata(None, Duration::from_secs(10)) {
        panic!(
            "{what} at {bootstrap} does not answer ({error}). Start it with \
             `infra/kafka.sh start {cluster}` (or run the full test command from \
             the README, which does it)."
        );
    }
}

/// A name no other test run uses, for topics, groups and subjects.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A topic to create: name, partitions, extra configs.
pub type TopicSpec<'a> = (&'a str, i32, &'a [(&'a str, &'a str)]);

/// Creates topics on `bootstrap`, with replication 1; panics with the
/// broker's reason when one cannot be made.
pub async fn create_topics(bootstrap: &str, topics: &[TopicSpec<'_>]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions, configs)| {
            configs.iter().fold(
                NewTopic::new(name, *partitions, TopicReplication::Fixed(1)),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    for result in admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await
        .expect("create topics")
    {
        if let Err((topic, code)) = result {
            panic!("topic {topic} not created: {code}");
        }
    }
    let expected = topics
        .iter()
        .map(|(name, partitions, _)| ((*name).to_owned(), *partitions))
        .collect();
    wait_in_metadata(bootstrap, expected).await;
}

/// Waits until the broker's metadata shows each topic with its partitions.
/// A broker answers a creation once its controller has the topic; its own
/// metadata may follow later on a loaded machine (a worker started at once
/// was told that an input "does not exist").
async fn wait_in_metadata(bootstrap: &str, expected: Vec<(String, i32)>) {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("kafka client");
        for (topic, partitions) in &expected {
            wait_for(
                &format!("topic {topic} in the broker's metadata"),
                Duration::from_secs(60),
                || try_partition_count(&consumer, topic).is_ok_and(|count| count == *partitions),
            );
        }
    })
    .await
    .expect("waits for the topics' metadata");
}

/// Deletes `topic` and creates it again with `partitions` (and `configs`),
/// waiting until the broker lets the new one be created.
pub async fn recreate_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin
        .delete_topics(&[topic], &options)
        .await
        .expect("delete topics")
    {
        if let Err((topic, code)) = result {
            panic!("topic {topic} not deleted: {code}");
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let new_topic = configs.iter().fold(
            NewTopic::new(topic, partitions, TopicReplication::Fixed(1)),
            |new_topic, (key, value)| new_topic.set(key, value),
        );
        let results = admin
            .create_topics(&[new_topic], &options)
            .await
            .expect("create topics");
        match results.into_iter().next() {
            Some(Ok(_)) => {
                return wait_in_metadata(bootstrap, vec![(topic.to_owned(), partitions)]).await;
            }
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists)))
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(Err((topic, code))) => panic!("topic {topic} not created again: {code}"),
            None => panic!("no answer to creating {topic}"),
        }
    }
}

/// Partitions of `topic`, from the cluster's metadata.
pub fn partition_count<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> i32 {
    try_partition_count(consumer, topic)
        .unwrap_or_else(|error| panic!("metadata of {topic}: {error}"))
}

/// [`partition_count`] that reports a failed metadata request.
pub fn try_partition_count<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Result<i32, rdkafka::error::KafkaError> {
    Ok(consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))?
        .topics()
        .first()
        .map_or(0, |topic| topic.partitions().len() as i32))
}

/// Calls `each` for every record in `topic` (all partitions), up to the
/// high watermarks read at the start, holding one record at a time.
/// Blocking: call it from a blocking thread (a poll loop inside an async
/// task stalls on large topics). Panics on errors; see
/// [`try_for_each_record`] for tools.
pub fn for_each_record(
    bootstrap: &str,
    topic: &str,
    each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) {
    try_for_each_record(bootstrap, topic, each)
        .unwrap_or_else(|error| panic!("reading {topic}: {error}"));
}

/// [`for_each_record`] that reports failures instead of panicking (the
/// simulator's checker reads outputs with it). A topic whose records stop
/// coming for 30 s before its end fails.
pub fn try_for_each_record(
    bootstrap: &str,
    topic: &str,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), String> {
    use rdkafka::{Offset, TopicPartitionList};
    let kafka = |error: rdkafka::error::KafkaError| error.to_string();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(kafka)?;
    let partitions = try_partition_count(&consumer, topic).map_err(kafka)?;
    if partitions == 0 {
        return Err(format!("no topic {topic} on {bootstrap}"));
    }
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0;
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .map_err(kafka)?;
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map_err(kafka)?;
        remaining += high - low;
    }
    consumer.assign(&assignment).map_err(kafka)?;
    let mut read = 0;
    while remaining > 0 {
        match consumer.poll(Duration::from_secs(30)) {
            Some(Ok(message)) => {
                each(&message);
                remaining -= 1;
                read += 1;
            }
            Some(Err(error)) => return Err(error.to_string()),
            None => {
                return Err(format!(
                    "stalled with {remaining} records left after {read}"
                ));
            }
        }
    }
    Ok(())
}

/// Every record in `topic` (see [`for_each_record`]), in partition order.
pub fn read_all(bootstrap: &str, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::message::Message;
    let mut records = Vec::new();
    for_each_record(bootstrap, topic, |message| records.push(message.detach()));
    records.sort_by_key(|record| (record.partition(), record.offset()));
    records
}

/// Whether `group` has committed every partition of `topic` up to its end.
pub fn committed_to_end(bootstrap: &str, group: &str, topic: &str) -> bool {
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
        return false;
    };
    let mut wanted = TopicPartitionList::new();
    for partition in metadata
        .topics()
        .iter()
        .flat_map(|topic| topic.partitions())
    {
        wanted.add_partition(topic, partition.id());
    }
    let Ok(committed) = consumer.committed_offsets(wanted, Duration::from_secs(10)) else {
        return false;
    };
    committed.elements().iter().all(|element| {
        let high = consumer
            .fetch_watermarks(topic, element.partition(), Duration::from_secs(10))
            .map_or(-1, |(_, high)| high);
        match element.offset() {
            Offset::Offset(offset) => offset == high,
            _ => high == 0, // nothing to commit in an empty partition
        }
    })
}

/// The offset `group` has committed in each partition of `topic` (`None`
/// where it committed nothing).
pub fn committed_offsets(bootstrap: &str, group: &str, topic: &str) -> Vec<Option<i64>> {
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let partitions = partition_count(&consumer, topic);
    let mut wanted = TopicPartitionList::new();
    for partition in 0..partitions {
        wanted.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(wanted, Duration::from_secs(10))
        .expect("committed offsets");
    let mut offsets = vec![None; usize::try_from(partitions).unwrap_or(0)];
    for element in committed.elements() {
        if let (Offset::Offset(offset), Ok(index)) =
            (element.offset(), usize::try_from(element.partition()))
        {
            offsets[index] = Some(offset);
        }
    }
    offsets
}

/// Runs `infra/kafka.sh ARGS…` (stop, start, tool, …) for the clusters
/// this run uses (`ADPIPE_CLUSTERS_FILE`, `ADPIPE_STATE_DIR`); panics if it fails.
pub fn kafka_script(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/kafka.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("infra/kafka.sh runs");
    assert!(status.success(), "infra/kafka.sh {args:?} failed");
}

/// Denies (`deny = true`) or stops denying everyone `operation` (e.g. `Read`)
/// on `topic` of the cluster at `bootstrap`, with Kafka's own ACL tool: the
/// local clusters enforce ACLs but allow what no ACL names (`infra/kafka.sh`),
/// so this injects a real authorization failure for one topic. (Once an ACL
/// names the topic, nothing else is allowed by default any more, so every
/// other operation is allowed explicitly alongside the denial.)
pub fn deny_topic(bootstrap: &str, topic: &str, operation: &str, deny: bool) {
    let change = if deny { "--add" } else { "--remove" };
    let acl = |principal_flag: &str, operation: &str| {
        kafka_script(&[
            "tool",
            "org.apache.kafka.tools.AclCommand",
            "--bootstrap-server",
            bootstrap,
            change,
            "--force",
            principal_flag,
            "User:*",
            "--operation",
            operation,
            "--topic",
            topic,
        ]);
    };
    acl("--allow-principal", "All");
    acl("--deny-principal", operation);
}

fn broker_pid_file(cluster: &str) -> std::path::PathBuf {
    let state_dir = std::env::var_os("ADPIPE_STATE_DIR").map_or_else(
        || std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.adpipe")),
        std::path::PathBuf::from,
    );
    state_dir.join("kafka").join(cluster).join("kafka.pid")
}

/// The process id of a local cluster's broker, from the pid file
/// `infra/kafka.sh` keeps under `$ADPIPE_STATE_DIR` (default `.adpipe`).
pub fn broker_pid(cluster: &str) -> u32 {
    let path = broker_pid_file(cluster);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .trim()
        .parse()
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Whether a local cluster's broker process runs (per its pid file).
pub fn broker_running(cluster: &str) -> bool {
    std::fs::read_to_string(broker_pid_file(cluster))
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// The sum over every series of `metric` served at
/// `http://{address}/metrics`, if present.
pub async fn metric_value(address: std::net::SocketAddr, metric: &str) -> Option<f64> {
    metric_value_where(address, metric, "").await
}

/// The sum over the series of `metric` whose line contains `labels` (e.g.
/// `from="mark"`), if present.
pub async fn metric_value_where(
    address: std::net::SocketAddr,
    metric: &str,
    labels: &str,
) -> Option<f64> {
    metric_sum_in(&metrics_text(address).await.ok()?, metric, labels)
}

/// The Prometheus text a process serves at `address`'s `/metrics`.
pub async fn metrics_text(address: std::net::SocketAddr) -> Result<String, reqwest::Error> {
    reqwest::get(format!("http://{address}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await
}

/// The sum over the series of `metric` in Prometheus text `body` whose
/// line contains `labels`, if present (what [`metric_value_where`] reads,
/// for a process's own rendered metrics).
pub fn metric_sum_in(body: &str, metric: &str, labels: &str) -> Option<f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|line| line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|sum, value| sum + value)
}

/// A header's value as text, if the record has it.
pub fn header_text<M: rdkafka::message::Message>(message: &M, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    message
        .headers()?
        .iter()
        .find(|header| header.key == name)
        .and_then(|header| header.value)
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// A loopback address with a port nothing listens on right now (for a
/// process under test to serve its metrics on).
pub fn free_loopback_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
}

/// Sends SIGTERM to `child` (std has no SIGTERM; kill(1) sends it — the
/// child is not reaped yet, so its pid is still its own).
pub fn sigterm(child: &std::process::Child) {
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
}

/// Stops a service process with SIGTERM and asserts it exits cleanly (a
/// graceful stop: drain, commit, checkpoint).
pub fn terminate(mut child: std::process::Child) {
    sigterm(&child);
    let status = child.wait().expect("exits");
    assert!(status.success(), "graceful stop exits cleanly: {status}");
}

/// Sends SIGTERM and waits up to `grace` for the process to exit; its
/// status, or `None` if it was still running then (it is killed, so
/// nothing is left behind).
pub fn terminate_within(
    mut child: std::process::Child,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    sigterm(&child);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Kills a service process with SIGKILL (std's `kill` on Unix): no drain,
/// no commit, no checkpoint.
pub fn kill_9(child: &mut std::process::Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

/// Waits until the service serving metrics on `address` owns `expected`
/// partitions (its `adpipe_assigned_partitions` gauge).
pub async fn wait_assigned(
    address: std::net::SocketAddr,
    what: &str,
    expected: u64,
    timeout: Duration,
) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let assigned = metric_value(address, "adpipe_assigned_partitions")
            .await
            .map(|value| value as u64);
        if assigned == Some(expected) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: expected {expected} partitions, has {assigned:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Queues `record` on a threaded producer, waiting while its local queue is
/// full (a test publishing a large load faster than the broker takes it).
pub fn queue_blocking<K, P>(
    producer: &rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    mut record: rdkafka::producer::BaseRecord<'_, K, P>,
) where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((error, _)) => panic!("cannot queue: {error}"),
        }
    }
}

/// A service process killed (SIGKILL) and reaped when dropped, so a test
/// that fails half-way leaves no instance running.
#[derive(Debug, Default)]
pub struct ChildGuard(Option<std::process::Child>);

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: std::process::Child) -> Self {
        ChildGuard(Some(child))
    }

    /// Whether a process is guarded.
    pub fn is_running(&self) -> bool {
        self.0.is_some()
    }

    /// The guarded process's id.
    pub fn id(&self) -> Option<u32> {
        self.0.as_ref().map(std::process::Child::id)
    }

    /// Takes the process out (to stop it the test's way).
    pub fn take(&mut self) -> std::process::Child {
        self.0.take().expect("a running process")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `done` every 200 ms (blocking) until it holds; panics naming
/// `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    assert!(poll_until(timeout, done), "timed out waiting for {what}");
}

/// Polls `done` every 200 ms (blocking) until it holds (true) or `timeout`
/// passed (false): for a caller that says more than [`wait_for`] when it
/// gives up.
pub fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// Resident memory of process `pid` (VmRSS), if it runs.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// The highest resident memory process `pid` has had (VmHWM), if it runs.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM:")
}

/// A field of `/proc/<pid>/status` given in kB, in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Waits (async) until `group` has committed every partition of each of
/// `topics` to its end; panics naming the first topic that is not after
/// `timeout`.
pub async fn wait_committed_to_end(
    bootstrap: &str,
    group: &str,
    topics: &[String],
    timeout: Duration,
) {
    let deadline = std::time::Instant::now() + timeout;
    for topic in topics {
        loop {
            let (b, g, t) = (bootstrap.to_owned(), group.to_owned(), topic.clone());
            let done = tokio::task::spawn_blocking(move || committed_to_end(&b, &g, &t))
                .await
                .expect("check");
            if done {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{topic} not committed to its end by {group}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A cluster that takes clients over SASL_SSL (`security = "sasl_ssl"` in
/// the cluster map; `infra/kafka.sh start secure`): where its listeners are
/// and what a client needs to connect.
#[derive(Debug, Clone)]
pub struct SecuredCluster {
    /// The SASL_SSL listener.
    pub bootstrap: String,
    /// The plaintext listener of the broker's own traffic (a test sets up
    /// and checks through it, never the code under test).
    pub internal: String,
    /// Its user (`adpipe`; SCRAM-SHA-512 and PLAIN).
    pub username: String,
    /// The file holding the user's password.
    pub password_file: std::path::PathBuf,
    /// The CA that signed the broker's certificate.
    pub ca: std::path::PathBuf,
}

impl SecuredCluster {
    /// The user's password.
    pub fn password(&self) -> String {
        std::fs::read_to_string(&self.password_file)
            .expect("the password file")
            .trim()
            .to_owned()
    }
}

/// The secured local cluster `name`, after checking that its plaintext
/// listener answers (panics saying how to start it otherwise).
pub fn secured_kafka(name: &str) -> SecuredCluster {
    let map = clusters();
    let cluster = map
        .cluster(name)
        .unwrap_or_else(|| panic!("no cluster {name} in infra/clusters.toml"));
    let internal = cluster
        .internal_servers
        .clone()
        .unwrap_or_else(|| panic!("cluster {name} has no internal_port: not a secured cluster"));
    expect_answer(
        &internal,
        &format!("the secured Kafka cluster {name}'s plaintext listener"),
        name,
    );
    let state = std::env::var_os("ADPIPE_STATE_DIR").map_or_else(
        || std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.adpipe")),
        std::path::PathBuf::from,
    );
    SecuredCluster {
        bootstrap: cluster.bootstrap_servers.clone(),
        internal,
        username: "adpipe".to_owned(),
        password_file: state.join("kafka").join(format!("{name}.password")),
        ca: state
            .join("kafka")
            .join(format!("{name}-tls"))
            .join("ca.pem"),
    }
}
