//! Reading and changing live clusters through Kafka's admin API.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::declared::DesiredTopic;
use crate::plan::{Action, ObservedTopic, TopicPlan, plan};

const TIMEOUT: Duration = Duration::from_secs(15);

/// A failure talking to a cluster or applying a plan.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The admin client failed.
    #[error("cluster {cluster}: {source}")]
    Kafka {
        /// Cluster name.
        cluster: String,
        /// Client error.
        source: KafkaError,
    },
    /// The broker refused an operation.
    #[error("cluster {cluster}: {operation} {topic} failed: {code}")]
    Refused {
        /// Cluster name.
        cluster: String,
        /// What was attempted.
        operation: &'static str,
        /// Topic.
        topic: String,
        /// Broker error.
        code: RDKafkaErrorCode,
    },
    /// The plan holds refused changes; nothing was applied.
    #[error("the plan has {0} refused change(s); nothing was applied")]
    PlanRefused(usize),
    /// Applied changes were still not visible when the deadline passed.
    #[error(
        "cluster {cluster}: {} change(s) still not visible after {waited:?}: {}",
        pending.len(),
        pending.join(", ")
    )]
    NotConverged {
        /// Cluster name.
        cluster: String,
        /// How long it waited.
        waited: Duration,
        /// Topics whose plan still lists changes.
        pending: Vec<String>,
    },
}

/// An admin connection to one cluster.
pub struct LiveCluster {
    name: String,
    admin: AdminClient<DefaultClientContext>,
}

impl LiveCluster {
    /// Connects (lazily, as librdkafka does) to a cluster.
    pub fn connect(name: &str, bootstrap_servers: &str) -> Result<Self, LiveError> {
        // The CLI's clients: secured as the environment says.
        let admin = adpipe_kafka_client::env_client_config(bootstrap_servers)
            .create()
            .map_err(|source| LiveError::Kafka {
                cluster: name.to_owned(),
                source,
            })?;
        Ok(LiveCluster {
            name: name.to_owned(),
            admin,
        })
    }

    fn kafka_error(&self, source: KafkaError) -> LiveError {
        LiveError::Kafka {
            cluster: self.name.clone(),
            source,
        }
    }

    /// What the cluster holds: every topic, with the configs `desired`
    /// declares read back for the declared ones.
    pub async fn observe(&self, desired: &[DesiredTopic]) -> Result<Vec<ObservedTopic>, LiveError> {
        let metadata = self
            .admin
            .inner()
            .fetch_metadata(None, TIMEOUT)
            .map_err(|error| self.kafka_error(error))?;
        let mut observed = Vec::new();
        for topic in metadata.topics() {
            let partitions = topic.partitions();
            let has_data = partitions.iter().any(|partition| {
                self.admin
                    .inner()
                    .fetch_watermarks(topic.name(), partition.id(), TIMEOUT)
                    .map(|(_, high)| high > 0)
                    .unwrap_or(true) // unknown counts as in use: the safe side
            });
            let configs = match desired.iter().find(|want| want.name == topic.name()) {
                Some(want) => self.configs(topic.name(), want.configs.keys()).await?,
                None => BTreeMap::new(),
            };
            observed.push(ObservedTopic {
                name: topic.name().to_owned(),
                partitions: i32::try_from(partitions.len()).unwrap_or(i32::MAX),
                replication: partitions.first().map_or(0, |partition| {
                    i32::try_from(partition.replicas().len()).unwrap_or(0)
                }),
                configs,
                has_data,
            });
        }
        Ok(observed)
    }

    async fn configs<'k>(
        &self,
        topic: &str,
        keys: impl Iterator<Item = &'k String>,
    ) -> Result<BTreeMap<String, String>, LiveError> {
        let all = self.dynamic_and_default_configs(topic).await?;
        Ok(keys
            .filter_map(|key| all.get(key).map(|(value, _)| (key.clone(), value.clone())))
            .collect())
    }

    /// Every config of a topic: value, and whether it is set on the topic.
    async fn dynamic_and_default_configs(
        &self,
        topic: &str,
    ) -> Result<BTreeMap<String, (String, bool)>, LiveError> {
        let resources = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
            .await
            .map_err(|error| self.kafka_error(error))?;
        let mut configs = BTreeMap::new();
        for resource in resources {
            let resource = resource.map_err(|code| LiveError::Refused {
                cluster: self.name.clone(),
                operation: "describe configs of",
                topic: topic.to_owned(),
                code,
            })?;
            for entry in resource.entries {
                if let Some(value) = entry.value {
                    configs.insert(
                        entry.name,
                        (value, entry.source == ConfigSource::DynamicTopic),
                    );
                }
            }
        }
        Ok(configs)
    }

    /// Carries out the plans for this cluster. Refuses to start if any plan
    /// holds a refused change.
    pub async fn apply(&self, plans: &[TopicPlan]) -> Result<usize, LiveError> {
        let refused = plans.iter().filter(|plan| plan.refused()).count();
        if refused > 0 {
            return Err(LiveError::PlanRefused(refused));
        }
        let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        let mut applied = 0;
        for plan in plans.iter().filter(|plan| plan.changes()) {
            let Some(desired) = &plan.desired else {
                continue;
            };
            for action in &plan.actions {
                match action {
                    Action::Create => self.create(desired, &options).await?,
                    Action::AddPartitions { to, .. } => {
                        let count = usize::try_from(*to).unwrap_or(0);
                        let results = self
                            .admin
                            .create_partitions(
                                [&NewPartitions::new(&desired.name, count)],
                                &options,
                            )
                            .await
                            .map_err(|error| self.kafka_error(error))?;
                        self.check(results, "add partitions to")?;
                    }
                    Action::AlterConfigs(_) => self.alter(desired, &options).await?,
                    Action::UpToDate | Action::Refuse(_) | Action::Undeclared => continue,
                }
                applied += 1;
            }
        }
        Ok(applied)
    }

    /// Waits until the cluster shows every declared topic as `desired`
    /// says (the plan lists no change), polling metadata and configs: a
    /// created topic reaches the brokers' metadata a moment after the
    /// controller acknowledged it, so `apply` followed at once by `plan`
    /// could otherwise see it missing and create it again.
    pub async fn wait_until_converged(
        &self,
        desired: &[DesiredTopic],
        deadline: Duration,
    ) -> Result<(), LiveError> {
        let started = std::time::Instant::now();
        loop {
            let observed = self.observe(desired).await?;
            let pending: Vec<String> = plan(&self.name, desired, &observed)
                .into_iter()
                .filter(TopicPlan::changes)
                .map(|topic_plan| topic_plan.topic)
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= deadline {
                return Err(LiveError::NotConverged {
                    cluster: self.name.clone(),
                    waited: started.elapsed(),
                    pending,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn create(
        &self,
        desired: &DesiredTopic,
        options: &AdminOptions,
    ) -> Result<(), LiveError> {
        let mut topic = NewTopic::new(
            &desired.name,
            desired.partitions,
            TopicReplication::Fixed(desired.replication),
        );
        for (key, value) in &desired.configs {
            topic = topic.set(key, value);
        }
        let results = self
            .admin
            .create_topics([&topic], options)
            .await
            .map_err(|error| self.kafka_error(error))?;
        // Another `apply` may have created it a moment ago: that is success.
        let results = results
            .into_iter()
            .map(|result| match result {
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => Ok(name),
                other => other,
            })
            .collect();
        self.check(results, "create")
    }

    async fn alter(&self, desired: &DesiredTopic, options: &AdminOptions) -> Result<(), LiveError> {
        // AlterConfigs replaces the topic's whole dynamic config, so carry
        // over what others set on the topic and overlay the declared values.
        let mut merged: BTreeMap<String, String> = self
            .dynamic_and_default_configs(&desired.name)
            .await?
            .into_iter()
            .filter(|(_, (_, dynamic))| *dynamic)
            .map(|(key, (value, _))| (key, value))
            .collect();
        merged.extend(desired.configs.clone());
        let mut request = AlterConfig::new(ResourceSpecifier::Topic(&desired.name));
        for (key, value) in &merged {
            request = request.set(key, value);
        }
        let results = self
            .admin
            .alter_configs([&request], options)
            .await
            .map_err(|error| self.kafka_error(error))?;
        for result in results {
            if let Err((_, code)) = result {
                return Err(LiveError::Refused {
                    cluster: self.name.clone(),
                    operation: "alter configs of",
                    topic: desired.name.clone(),
                    code,
                });
            }
        }
        Ok(())
    }

    fn check(
        &self,
        results: Vec<Result<String, (String, RDKafkaErrorCode)>>,
        operation: &'static str,
    ) -> Result<(), LiveError> {
        for result in results {
            if let Err((topic, code)) = result {
                return Err(LiveError::Refused {
                    cluster: self.name.clone(),
                    operation,
                    topic,
                    code,
                });
            }
        }
        Ok(())
    }
}
