//! Start-up check of every topic a worker reads or writes.
//!
//! Contract: before it joins its group, a worker checks, from the cluster's
//! metadata, that every input, output and the dead-letter topic exist, that
//! the topics of each input group have the same partition count (a task
//! owns partition i of each), and that every output that follows an input's
//! partitioning has as many partitions as that input. It refuses to start
//! with one message listing every problem, instead of failing record by
//! record (or crash-looping) later. A cluster that does not answer (down,
//! or its leaders moving: a worker restarted during an outage) is asked
//! again with backoff for up to [`CLUSTER_PATIENCE`], each failure logged.
//! An answer with problems is asked for again for up to
//! [`PROBLEM_PATIENCE`] before the worker refuses: the broker that
//! answered may not yet know a topic (or the partitions) its controller
//! just created (a chaos run's merger was refused so, on a cluster of
//! three).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::WorkerSettings;

/// Problems with the topics `settings` names, from `partitions` (topic →
/// partition count of the topics that exist). Pure, for unit tests.
pub fn problems(settings: &WorkerSettings, partitions: &HashMap<String, usize>) -> Vec<String> {
    let mut problems = Vec::new();
    let missing = |role: &str, topic: &str, problems: &mut Vec<String>| {
        if partitions.contains_key(topic) {
            false
        } else {
            problems.push(format!("{role} topic {topic} does not exist"));
            true
        }
    };
    for group in &settings.input_groups {
        let mut counts = Vec::new();
        for topic in group {
            if !missing("input", topic, &mut problems) {
                counts.push((topic, partitions[topic]));
            }
        }
        if let Some((first, count)) = counts.first()
            && counts.iter().any(|(_, other)| other != count)
        {
            let listed: Vec<String> = counts
                .iter()
                .map(|(topic, count)| format!("{topic} has {count}"))
                .collect();
            problems.push(format!(
                "the inputs read together with {first} are not co-partitioned: {}",
                listed.join(", ")
            ));
        }
    }
    for output in &settings.outputs {
        if missing("output", &output.topic, &mut problems) {
            continue;
        }
        if let Some(input) = &output.partitions_like
            && let (Some(want), Some(have)) = (partitions.get(input), partitions.get(&output.topic))
            && want != have
        {
            problems.push(format!(
                "output topic {} has {have} partitions but its input {input} has {want} (partition i must stay partition i)",
                output.topic
            ));
        }
    }
    missing("dead-letter", &settings.dead_letter_topic, &mut problems);
    problems
}

/// How long a worker starting waits for its cluster to answer.
pub const CLUSTER_PATIENCE: Duration = Duration::from_secs(300);

/// How long a worker starting asks again while the cluster's answer has
/// problems (a broker's metadata lags its controller's by moments).
pub const PROBLEM_PATIENCE: Duration = Duration::from_secs(15);

/// Reads the cluster's topics and returns [`problems`].
pub fn check(settings: &WorkerSettings) -> Result<Vec<String>, rdkafka::error::KafkaError> {
    // The watch: a refused password shows only in the error callback.
    let client: BaseConsumer<adpipe_kafka_client::RefusalWatch> = settings
        .kafka
        .client_config()
        .create_with_context(adpipe_kafka_client::RefusalWatch::default())?;
    let give_up = std::time::Instant::now() + PROBLEM_PATIENCE;
    loop {
        let problems = problems(settings, &partition_counts(settings, &client)?);
        if problems.is_empty() || std::time::Instant::now() >= give_up {
            return Ok(problems);
        }
        tracing::warn!(
            ?problems,
            "the cluster's answer has problems; looking again"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Topic → partition count of every topic in one metadata answer, asking
/// again while the cluster does not answer (up to [`CLUSTER_PATIENCE`]).
fn partition_counts(
    settings: &WorkerSettings,
    client: &BaseConsumer<adpipe_kafka_client::RefusalWatch>,
) -> Result<HashMap<String, usize>, rdkafka::error::KafkaError> {
    let deadline = std::time::Instant::now() + CLUSTER_PATIENCE;
    let mut backoff = Duration::from_millis(500);
    let metadata = loop {
        // Short attempts: a refusal is known within one of them.
        match client.fetch_metadata(None, Duration::from_secs(10)) {
            Ok(metadata) => break metadata,
            Err(error) => {
                if let Some(refusal) = adpipe_kafka_client::refusal_after(client) {
                    return Err(refusal);
                }
                if adpipe_kafka_client::refused(&error)
                    || std::time::Instant::now() + backoff >= deadline
                {
                    return Err(error);
                }
                tracing::warn!(%error, retry_in = ?backoff, bootstrap = %settings.kafka.bootstrap_servers, "Kafka does not answer; asking again");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    };
    Ok(metadata
        .topics()
        .iter()
        .filter(|topic| topic.error().is_none())
        .map(|topic| (topic.name().to_owned(), topic.partitions().len()))
        .collect())
}
