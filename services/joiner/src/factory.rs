//! Builds a partition's join step: opens its two stores and restores them
//! from their changelogs (local data plus the changelog from the mark, or
//! the whole changelog on a host that has no usable local data).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use adpipe_codec::{Codec, value_subject};
use adpipe_events::EventKind;
use adpipe_runtime::emitted::{self, AlreadyEmitted, FedBy, ScanBounds};
use adpipe_runtime::{StepError, StepFactory, TaskAssignment, TimerClock};
use adpipe_state::changelog::ChangelogReader;
use adpipe_state::{Buckets, DiskOptions, DiskStore, MemoryStore, Recovery, StateStore};
use tracing::info;

use crate::config::{JoinerSettings, StoreKind};
use crate::state::JoinState;
use crate::step::{CLICKS, CONVERSIONS, Checkpoints, Encoders, JoinStep};

/// Builds join steps.
pub struct JoinFactory {
    settings: Arc<JoinerSettings>,
    reader: ChangelogReader,
    codec: Option<Codec>,
    /// Registered once, on the first assignment.
    encoders: Mutex<Option<Arc<Encoders>>>,
    /// Connected once, on the first assignment (`store = "aerospike"`).
    #[cfg(feature = "aerospike")]
    aerospike: Mutex<Option<Arc<aerospike::Client>>>,
}

impl JoinFactory {
    /// A factory for these settings (asks the cluster for its id: blocking).
    pub fn new(settings: JoinerSettings) -> Result<Self, String> {
        let config = settings.worker.kafka.client_config();
        let reader = ChangelogReader::new(config, &settings.worker.kafka.group_id)
            .map_err(|error| error.to_string())?;
        let codec = match settings.worker.registry_client() {
            Some(client) => Some(Codec::new(client.map_err(|error| error.to_string())?)),
            None => None,
        };
        Ok(JoinFactory {
            settings: Arc::new(settings),
            reader,
            codec,
            encoders: Mutex::new(None),
            #[cfg(feature = "aerospike")]
            aerospike: Mutex::new(None),
        })
    }

    /// The Aerospike client, connected on first use.
    #[cfg(feature = "aerospike")]
    fn aerospike(&self) -> Result<Arc<aerospike::Client>, StepError> {
        let mut slot = self
            .aerospike
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = &*slot {
            return Ok(Arc::clone(client));
        }
        let hosts = &self.settings.aerospike.0;
        let client = tokio::runtime::Handle::current()
            .block_on(adpipe_state::aerospike::connect(hosts))
            .map_err(|error| StepError::transient("state_store", error.to_string()))?;
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    /// The outputs already emitted for clicks and conversions that will be
    /// read again (`adpipe_runtime::emitted`).
    fn already_emitted(&self, assignment: &TaskAssignment) -> Result<AlreadyEmitted, StepError> {
        let topics = &self.settings.topics;
        let windows = &self.settings.windows;
        let already = emitted::already_emitted(
            &self.settings.worker,
            &assignment.inputs,
            assignment.partition,
            &[
                FedBy {
                    topic: &topics.joined_clicks,
                    inputs: &[CLICKS],
                },
                FedBy {
                    topic: &topics.joined_conversions,
                    inputs: &[CONVERSIONS],
                },
                FedBy {
                    topic: &topics.orphans,
                    inputs: &[CLICKS, CONVERSIONS],
                },
            ],
            ScanBounds {
                limit: self.settings.resume_scan,
                // A record waits at most `wait` on the wall clock, a
                // conversion behind its waiting click about twice that.
                hold_ms: match windows.wait_clock {
                    TimerClock::Wall => Some(windows.wait_ms.saturating_mul(3)),
                    TimerClock::Event => None,
                },
            },
        )
        .map_err(|error| StepError::transient("resume_scan", error.to_string()))?;
        info!(
            partition = assignment.partition,
            already_emitted = already.len(),
            "joiner resumes"
        );
        Ok(already)
    }

    /// The output encoders, registered with the registry on first use.
    fn encoders(&self) -> Result<Arc<Encoders>, StepError> {
        let mut slot = self
            .encoders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(encoders) = &*slot {
            return Ok(Arc::clone(encoders));
        }
        let codec = self
            .codec
            .as_ref()
            .ok_or_else(|| StepError::fatal("no_registry", "the joiner needs [registry] url"))?;
        let topics = &self.settings.topics;
        // `create` runs on a blocking thread of the runtime: it may wait.
        let encoders = tokio::runtime::Handle::current().block_on(async {
            Ok::<_, adpipe_codec::EncodeError>(Encoders {
                joined_click: codec
                    .encoder(
                        &value_subject(&topics.joined_clicks),
                        EventKind::JoinedClick.schema(),
                    )
                    .await?,
                joined_conversion: codec
                    .encoder(
                        &value_subject(&topics.joined_conversions),
                        EventKind::JoinedConversion.schema(),
                    )
                    .await?,
            })
        });
        let encoders = Arc::new(
            encoders.map_err(|error| StepError::transient("registry", error.to_string()))?,
        );
        *slot = Some(Arc::clone(&encoders));
        Ok(encoders)
    }

    /// Opens and restores one store of a partition.
    fn store(
        &self,
        name: &str,
        changelog: &str,
        partition: i32,
        ttl_ms: i64,
        cap: u64,
    ) -> Result<Box<dyn StateStore>, StepError> {
        let dir: PathBuf = self.settings.state_dir.join(name);
        let mut store: Box<dyn StateStore> = match self.settings.store {
            StoreKind::Disk => {
                let mut options = DiskOptions::new(ttl_ms, cap, Recovery::LocalAhead);
                options.cache_bytes = self.settings.store_memory.cache_bytes;
                options.memtable_bytes = self.settings.store_memory.memtable_bytes;
                Box::new(
                    DiskStore::open(&dir.join(partition.to_string()), options)
                        .map_err(|error| StepError::transient("state_store", error.to_string()))?,
                )
            }
            StoreKind::Memory => Box::new(MemoryStore::open(
                dir.join(format!("{partition}.state")),
                Buckets::for_ttl(ttl_ms),
                cap,
            )),
            #[cfg(feature = "aerospike")]
            StoreKind::Aerospike => Box::new(adpipe_state::aerospike::AerospikeStore::new(
                self.aerospike()?,
                &self.settings.aerospike.1,
                &format!("joiner_{name}"),
                partition,
                ttl_ms,
            )),
            #[cfg(not(feature = "aerospike"))]
            StoreKind::Aerospike => {
                return Err(StepError::fatal(
                    "no_aerospike",
                    "built without the aerospike feature",
                ));
            }
        };
        let restored = self
            .reader
            .restore(store.as_mut(), changelog, partition)
            .map_err(|error| StepError::transient("changelog_restore", error.to_string()))?;
        info!(store = name, partition, from_mark = ?restored.from_mark, replayed = restored.replayed, why_not_local = ?restored.why_not_local, "joiner store ready");
        Ok(store)
    }
}

impl StepFactory for JoinFactory {
    type Step = JoinStep;

    fn create(&self, assignment: &TaskAssignment) -> Result<JoinStep, StepError> {
        let encoders = self.encoders()?;
        let settings = &self.settings;
        let partition = assignment.partition;
        let impressions = self.store(
            "impressions",
            &settings.topics.impressions_changelog,
            partition,
            settings.windows.click_ms,
            settings.caps.0,
        )?;
        let clicks = self.store(
            "clicks",
            &settings.topics.clicks_changelog,
            partition,
            settings.windows.attribution_ms,
            settings.caps.1,
        )?;
        let already = self.already_emitted(assignment)?;
        Ok(JoinStep::new(
            partition,
            settings.topics.clone(),
            settings.windows,
            encoders,
            JoinState::new(impressions, clicks),
            settings.caps,
        )
        .with_checkpoints(Checkpoints {
            reader: self.reader.clone(),
            interval: settings.checkpoint_interval,
        })
        .with_already_emitted(already))
    }
}
