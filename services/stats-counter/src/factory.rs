//! Builds a partition's counting step and tells the runtime where each
//! partition starts: at the offset stored in PostgreSQL with the
//! aggregates — or, when the group's Kafka commit is behind it, at that
//! commit, so the records in between are read again and their rows'
//! totals sent again (the commit only passes a batch once its totals are
//! acknowledged; see `adpipe_runtime::batching`). They are never counted
//! again: the step counts only from the stored offset.

use std::collections::HashMap;
use std::sync::Arc;

use adpipe_codec::{Codec, value_subject};
use adpipe_events::EventKind;
use adpipe_runtime::batching::Batching;
use adpipe_runtime::{AssignedPartition, StepError, StepFactory, TaskAssignment};
use parking_lot::Mutex;

use crate::config::StatsSettings;
use crate::step::{StatsStep, Target, TotalsOutput};
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
    /// The registry client for the totals' encoder.
    codec: Option<Codec>,
    /// The totals output, set up on first use.
    totals: Mutex<Option<TotalsOutput>>,
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
        let codec = match settings.worker.registry_client() {
            Some(client) => Some(Codec::new(
                client.map_err(|error| format!("the schema registry: {error}"))?,
            )),
            None => None,
        };
        Ok(StatsFactory {
            settings: Arc::new(settings),
            runtime,
            offsets: Mutex::new(None),
            assigned: Mutex::new(HashMap::new()),
            codec,
            totals: Mutex::new(None),
        })
    }

    /// The totals topic and its encoder (registered on first use), if
    /// totals are sent.
    fn totals(&self) -> Result<Option<TotalsOutput>, StepError> {
        let Some(topic) = &self.settings.totals_topic else {
            return Ok(None);
        };
        let mut slot = self.totals.lock();
        if let Some(output) = &*slot {
            return Ok(Some(output.clone()));
        }
        let codec = self.codec.as_ref().ok_or_else(|| {
            StepError::fatal("no_registry", "stats.totals-topic needs [registry] url")
        })?;
        // `create` runs on a blocking thread of the runtime: it may wait.
        let encoder = self
            .runtime
            .block_on(codec.encoder(&value_subject(topic), EventKind::StatsTotal.schema()))
            .map_err(|error| StepError::transient("registry", error.to_string()))?;
        let output = TotalsOutput {
            topic: Arc::from(topic.as_str()),
            encoder: Arc::new(encoder),
        };
        *slot = Some(output.clone());
        Ok(Some(output))
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
                    totals: self.totals()?,
                },
                settings.worker.event_time,
                None,
                stored,
            ),
            settings.limits,
        ))
    }

    const STORES_OFFSETS: bool = true;

    fn stored_offsets(
        &self,
        partitions: &[AssignedPartition],
    ) -> Result<Vec<(String, i32, i64)>, StepError> {
        let mut topics: Vec<&String> = partitions.iter().map(|p| &p.topic).collect();
        topics.sort_unstable();
        topics.dedup();
        let mut by_topic = HashMap::new();
        for topic in topics {
            by_topic.insert(topic, self.stored(topic)?);
        }
        let mut assigned = self.assigned.lock();
        let mut starts = Vec::new();
        for partition in partitions {
            let stored = by_topic
                .get(&partition.topic)
                .and_then(|stored| stored.get(&partition.partition).copied());
            assigned.insert((partition.topic.clone(), partition.partition), stored);
            if let Some(stored) = stored {
                // Behind the stored offset, the commit marks records whose
                // totals may not have been sent: start there to send them.
                let start = partition
                    .committed
                    .filter(|committed| *committed < stored)
                    .unwrap_or(stored);
                starts.push((partition.topic.clone(), partition.partition, start));
            }
        }
        Ok(starts)
    }
}
