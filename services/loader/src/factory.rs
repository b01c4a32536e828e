//! The runtime's step factory for any sink: one [`LoaderStep`] per input
//! partition, batched, with the sink's own resume positions when it keeps
//! them.

use std::sync::Arc;

use adpipe_runtime::batching::Batching;
use adpipe_runtime::{AssignedPartition, StepError, StepFactory, TaskAssignment};

use crate::config::LoaderSettings;
use crate::sink::SinkFactory;
use crate::step::{LoaderStep, StepTarget};

/// Builds loading steps over the sinks `F` makes.
pub struct LoaderFactory<F: SinkFactory> {
    sinks: F,
    settings: Arc<LoaderSettings>,
    turns: crate::sink::Turns,
}

impl<F: SinkFactory> LoaderFactory<F> {
    /// A factory over `sinks`.
    pub fn new(sinks: F, settings: LoaderSettings) -> Self {
        LoaderFactory {
            sinks,
            turns: Arc::new(tokio::sync::Semaphore::new(settings.writes_in_flight)),
            settings: Arc::new(settings),
        }
    }
}

impl<F: SinkFactory> StepFactory for LoaderFactory<F> {
    type Step = Batching<LoaderStep<F::Sink>>;

    fn create(&self, assignment: &TaskAssignment) -> Result<Self::Step, StepError> {
        let topic = assignment
            .inputs
            .first()
            .ok_or_else(|| StepError::fatal("no_input", "a task without an input"))?;
        let sink = self.sinks.sink(topic, assignment.partition)?;
        let settings = &self.settings;
        Ok(Batching::new(
            LoaderStep::new(
                sink,
                topic,
                StepTarget {
                    sink: F::NAME,
                    dead_letter_topic: Arc::from(settings.worker.dead_letter_topic.as_str()),
                    service: settings.worker.service.clone(),
                    write_timeout: settings.write_timeout,
                    turns: Arc::clone(&self.turns),
                },
            ),
            settings.limits,
        ))
    }

    const STORES_OFFSETS: bool = F::STORES_OFFSETS;

    fn stored_offsets(
        &self,
        partitions: &[AssignedPartition],
    ) -> Result<Vec<(String, i32, i64)>, StepError> {
        self.sinks.stored_offsets(partitions)
    }
}
