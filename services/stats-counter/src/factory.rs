//! Builds a partition's counting step and tells the runtime where each
//! partition left off: the offsets stored in PostgreSQL with the
//! aggregates (never the Kafka group's commit).

use std::collections::HashMap;
use std::sync::Arc;

use adpipe_runtime::batching::Batching;
use adpipe_runtime::{StepError, StepFactory, TaskAssignment};
use parking_lot::Mutex;

use crate::config::StatsSettings;
use crate::step::{StatsStep, Target};
use crate::store::{PgStore, StoreError};

/// Builds counting steps.
pub struct StatsFactory {
    settings: Arc<StatsSettings>,
    runtime: tokio::runtime::Handle,
    /// The connection offsets are read on (the consumer's thread).
    offsets: Mutex<Option<PgStore>>,
    /// What the last assignment read for each partition (`None`: nothing
    /// stored), handed to the step created for it: read once, and the very
    /// offset the runtime starts the partition at.
    assigned: Mutex<HashMap<(String, i32), Option<i64>>>,
}

fn transient(error: StoreError) -> StepError {
    StepError::transient("postgres", error.to_string())
}

impl StatsFactory {
    /// A factory; applies the schema's migrations first (blocking).
    pub fn new(settings: StatsSettings, runtime: tokio::runtime::Handle) -> Result<Self, String> {
        runtime.block_on(async {
            let mut store = PgStore::connect(&settings.postgres_url, &settings.schema)
                .await
                .map_err(|error| format!("PostgreSQL at {}: {error}", settings.postgres_url))?;
            store
                .migrate()
                .await
                .map_err(|error| format!("migrating {}: {error}", settings.schema))?;
            Ok::<_, String>(())
        })?;
        Ok(StatsFactory {
            settings: Arc::new(settings),
            runtime,
            offsets: Mutex::new(None),
            assigned: Mutex::new(HashMap::new()),
        })
    }

    fn stored(&self, topic: &str) -> Result<HashMap<i32, i64>, StepError> {
        let settings = &self.settings;
        let mut slot = self.offsets.lock();
        self.runtime.block_on(async {
            let store = match slot.take() {
                Some(store) if !store.is_closed() => store,
                _ => PgStore::connect(&settings.postgres_url, &settings.schema)
                    .await
                    .map_err(transient)?,
            };
            let stored = store
                .stored_offsets(&settings.worker.kafka.group_id, topic)
                .await
                .map_err(transient)?;
            *slot = Some(store);
            Ok(stored)
        })
    }
}

impl StepFactory for StatsFactory {
    type Step = Batching<StatsStep>;

    fn create(&self, assignment: &TaskAssignment) -> Result<Batching<StatsStep>, StepError> {
        let settings = &self.settings;
        let topic = assignment
            .inputs
            .first()
            .ok_or_else(|| StepError::fatal("no_input", "a task without an input"))?;
        let kind = settings
            .inputs
            .iter()
            .find(|(name, _)| name == topic)
            .map(|(_, kind)| *kind)
            .ok_or_else(|| StepError::fatal("unknown_input", format!("not an input: {topic}")))?;
        let known = self
            .assigned
            .lock()
            .remove(&(topic.clone(), assignment.partition));
        let stored = match known {
            Some(stored) => stored,
            None => self.stored(topic)?.get(&assignment.partition).copied(),
        };
        Ok(Batching::new(
            StatsStep::new(
                kind,
                Target {
                    url: settings.postgres_url.clone(),
                    schema: settings.schema.clone(),
                    group: settings.worker.kafka.group_id.clone(),
                    method: settings.upsert,
                    write_timeout: settings.write_timeout,
                    closed_after: settings.closed_after,
                },
                settings.worker.event_time,
                None,
                stored,
            ),
            settings.limits,
        ))
    }

    fn stored_offsets(
        &self,
        partitions: &[(String, i32)],
    ) -> Result<Vec<(String, i32, i64)>, StepError> {
        let mut topics: Vec<&String> = partitions.iter().map(|(topic, _)| topic).collect();
        topics.sort_unstable();
        topics.dedup();
        let mut by_topic = HashMap::new();
        for topic in topics {
            by_topic.insert(topic, self.stored(topic)?);
        }
        let mut assigned = self.assigned.lock();
        let mut starts = Vec::new();
        for (topic, partition) in partitions {
            let stored = by_topic
                .get(topic)
                .and_then(|stored| stored.get(partition).copied());
            assigned.insert((topic.clone(), *partition), stored);
            if let Some(offset) = stored {
                starts.push((topic.clone(), *partition, offset));
            }
        }
        Ok(starts)
    }
}
