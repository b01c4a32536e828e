//! The chain's services as processes: each instance its real binary
//! (`target/<profile>/adpipe-<service>`), configured by the same
//! `ADPIPE__…` settings the demo gives the in-process services, with its
//! own metrics port and log file. The chaos harness kills them (SIGKILL),
//! stops them (SIGTERM), restarts them and adds second instances; a sampler
//! keeps each service's peak resident memory, with when it happened and
//! what the instance said it held then (state and queued records), so a
//! peak over the bound names its cause.
//!
//! Contract: an instance keeps its slot's state directory across restarts
//! (what a restarted container keeps on its volume); two instances of one
//! service never share one. Dropping the fleet kills what still runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use parking_lot::Mutex;

use crate::demo::chain::ServiceSpec;

/// One running (or last run) instance of a service.
struct Instance {
    child: Child,
    metrics: SocketAddr,
    started: Instant,
}

/// The processes of the chain.
pub struct Fleet {
    bin_dir: PathBuf,
    work_dir: PathBuf,
    specs: Vec<ServiceSpec>,
    /// (service index, slot) → its instance.
    running: Mutex<BTreeMap<(usize, u32), Instance>>,
    /// Per service: the peak RSS seen.
    peak_rss: Mutex<Vec<Peak>>,
    /// When the fleet was made: the run's clock for the peaks.
    born: Instant,
}

/// A service's highest RSS sample and its circumstances.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peak {
    /// Resident bytes.
    pub bytes: u64,
    /// When, on the fleet's clock (from the services' first start).
    pub at: Duration,
    /// How long the instance had run by then.
    pub instance_up: Duration,
    /// The instance's state and queued bytes (`adpipe_state_bytes`,
    /// `adpipe_queue_bytes`) asked right after: `None` before it was asked
    /// or when it did not answer.
    pub held: Option<Held>,
    /// The peak `held` was asked for (it is asked again only when the peak
    /// has grown by `ASK_AGAIN_BYTES` since).
    asked_at_bytes: u64,
}

/// What an instance reported holding.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    /// Bytes of its stores (the services' own estimate).
    pub state: u64,
    /// Bytes of records queued in front of its tasks.
    pub queued: u64,
}

impl Peak {
    /// "1062 MiB at 2650 s (instance up 1235 s; state 340 MiB, queued 90 MiB)".
    pub fn describe(&self) -> String {
        let held = match self.held {
            Some(held) => format!(
                "; state {} MiB, queued {} MiB",
                held.state >> 20,
                held.queued >> 20
            ),
            None => String::new(),
        };
        format!(
            "{} MiB at {} s (instance up {} s{held})",
            self.bytes >> 20,
            self.at.as_secs(),
            self.instance_up.as_secs()
        )
    }
}

/// A peak is explained again (its instance asked what it holds) only once
/// it has grown by this much: RSS creeps up by pages, asking on every
/// sample would be a request every 500 ms per service.
const ASK_AGAIN_BYTES: u64 = 32 << 20;

impl Fleet {
    /// A fleet of `specs` (none started yet); binaries from `bin_dir`,
    /// state and logs under `work_dir`.
    pub fn new(
        bin_dir: &Path,
        work_dir: &Path,
        specs: Vec<ServiceSpec>,
    ) -> anyhow::Result<Arc<Fleet>> {
        for spec in &specs {
            let binary = bin_dir.join(spec.binary);
            anyhow::ensure!(
                binary.is_file(),
                "{} not found: build the services first (`cargo build --workspace --bins`, --release for the full run)",
                binary.display()
            );
        }
        std::fs::create_dir_all(work_dir.join("logs"))?;
        let count = specs.len();
        Ok(Arc::new(Fleet {
            bin_dir: bin_dir.to_owned(),
            work_dir: work_dir.to_owned(),
            specs,
            running: Mutex::new(BTreeMap::new()),
            peak_rss: Mutex::new(vec![Peak::default(); count]),
            born: Instant::now(),
        }))
    }

    /// The services, in chain order.
    pub fn specs(&self) -> &[ServiceSpec] {
        &self.specs
    }

    /// Starts (or restarts) instance `slot` of service `index`.
    pub fn start(&self, index: usize, slot: u32) -> anyhow::Result<()> {
        let spec = &self.specs[index];
        let metrics = adpipe_testkit::free_loopback_address();
        let slug = slug(&spec.stage);
        let log_path = self
            .work_dir
            .join("logs")
            .join(format!("{slug}-{slot}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut command = Command::new(self.bin_dir.join(spec.binary));
        command
            .envs(spec.env.iter().map(|(key, value)| (key, value)))
            .env("ADPIPE__HTTP__LISTEN", metrics.to_string())
            // The slot's own state (a restarted instance finds its stores).
            .env(
                "ADPIPE_STATE_DIR",
                self.work_dir.join("state").join(format!("{slug}-{slot}")),
            )
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // State directories given as settings are the slot's too.
        for (key, value) in &spec.env {
            if key.ends_with("__STATE_DIR") {
                command.env(key, format!("{value}-{slot}"));
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", spec.binary))?;
        self.running.lock().insert(
            (index, slot),
            Instance {
                child,
                metrics,
                started: Instant::now(),
            },
        );
        Ok(())
    }

    /// Starts one instance of every service.
    pub fn start_all(&self) -> anyhow::Result<()> {
        for index in 0..self.specs.len() {
            self.start(index, 1)?;
        }
        Ok(())
    }

    /// Whether instance `slot` of `index` runs, owns partitions and has
    /// taken records since it started (so a kill interrupts real work).
    pub async fn working(&self, index: usize, slot: u32) -> bool {
        let Some(address) = self.metrics_address(index, slot) else {
            return false;
        };
        let assigned = adpipe_testkit::metric_value(address, "adpipe_assigned_partitions").await;
        let consumed = adpipe_testkit::metric_value(address, "adpipe_records_consumed_total").await;
        assigned.unwrap_or(0.0) > 0.0 && consumed.unwrap_or(0.0) > 0.0
    }

    fn metrics_address(&self, index: usize, slot: u32) -> Option<SocketAddr> {
        let mut running = self.running.lock();
        let instance = running.get_mut(&(index, slot))?;
        match instance.child.try_wait() {
            Ok(None) => Some(instance.metrics),
            _ => None,
        }
    }

    /// How long instance `slot` of `index` has run (None: not running).
    pub fn uptime(&self, index: usize, slot: u32) -> Option<Duration> {
        self.metrics_address(index, slot)?;
        self.running
            .lock()
            .get(&(index, slot))
            .map(|instance| instance.started.elapsed())
    }

    /// SIGKILL: the instance dies at once, mid-work.
    pub fn kill(&self, index: usize, slot: u32) {
        if let Some(mut instance) = self.running.lock().remove(&(index, slot)) {
            let _ = instance.child.kill();
            let _ = instance.child.wait();
        }
    }

    /// SIGTERM, and waits up to `grace` for a clean exit (then SIGKILL);
    /// how it ended.
    pub fn terminate(&self, index: usize, slot: u32, grace: Duration) -> Stopped {
        let Some(instance) = self.running.lock().remove(&(index, slot)) else {
            return Stopped::NotRunning;
        };
        match adpipe_testkit::terminate_within(instance.child, grace) {
            Some(status) => Stopped::Exited(status),
            None => Stopped::Killed(grace),
        }
    }

    /// Instances that exited by themselves (not by the harness), taken
    /// out of the fleet: (service index, slot, stage, status). A service
    /// that stops on its own is a failure.
    pub fn exited(&self) -> Vec<(usize, u32, String, String)> {
        let mut running = self.running.lock();
        let mut exited = Vec::new();
        for ((index, slot), instance) in running.iter_mut() {
            if let Ok(Some(status)) = instance.child.try_wait() {
                exited.push((
                    *index,
                    *slot,
                    self.specs[*index].stage.clone(),
                    status.to_string(),
                ));
            }
        }
        for (index, slot, _, _) in &exited {
            running.remove(&(*index, *slot));
        }
        exited
    }

    /// Records the current RSS of every instance into the peaks; asks an
    /// instance that set a new peak (grown by `ASK_AGAIN_BYTES` since its
    /// service's last asked one) what it holds, through `runtime` (the
    /// sampler is a thread of its own).
    pub fn sample_rss(&self, runtime: &tokio::runtime::Handle) {
        let mut to_ask = Vec::new();
        {
            let running = self.running.lock();
            let mut peaks = self.peak_rss.lock();
            for ((index, _), instance) in running.iter() {
                let Some(rss) = adpipe_testkit::rss_bytes(instance.child.id()) else {
                    continue;
                };
                let peak = &mut peaks[*index];
                if rss > peak.bytes {
                    peak.bytes = rss;
                    peak.at = self.born.elapsed();
                    peak.instance_up = instance.started.elapsed();
                    if rss >= peak.asked_at_bytes + ASK_AGAIN_BYTES {
                        peak.asked_at_bytes = rss;
                        peak.held = None;
                        to_ask.push((*index, rss, instance.metrics));
                    }
                }
            }
        }
        for (index, rss, address) in to_ask {
            let held = runtime.block_on(async {
                Some(Held {
                    state: adpipe_testkit::metric_value(address, "adpipe_state_bytes")
                        .await
                        .unwrap_or(0.0) as u64,
                    queued: adpipe_testkit::metric_value(address, "adpipe_queue_bytes").await?
                        as u64,
                })
            });
            let mut peaks = self.peak_rss.lock();
            // Unless a higher peak was set meanwhile (by another instance).
            if peaks[index].asked_at_bytes == rss {
                peaks[index].held = held;
            }
        }
    }

    /// (stage, peak) per service.
    pub fn peaks(&self) -> Vec<(String, Peak)> {
        let peaks = self.peak_rss.lock();
        self.specs
            .iter()
            .zip(peaks.iter())
            .map(|(spec, peak)| (spec.stage.clone(), *peak))
            .collect()
    }

    /// Stops every instance, downstream first; returns those that did not
    /// stop cleanly within 30 s.
    pub fn stop_all(&self) -> Vec<String> {
        let mut keys: Vec<(usize, u32)> = self.running.lock().keys().copied().collect();
        keys.reverse();
        keys.into_iter()
            .filter(|(index, slot)| {
                !self
                    .terminate(*index, *slot, Duration::from_secs(30))
                    .clean()
            })
            .map(|(index, slot)| format!("{} #{slot}", self.specs[index].stage))
            .collect()
    }

    /// Where instance logs are.
    pub fn logs(&self) -> PathBuf {
        self.work_dir.join("logs")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for instance in self.running.get_mut().values_mut() {
            let _ = instance.child.kill();
            let _ = instance.child.wait();
        }
    }
}

/// A stage's name as a file name: `loader (files)` → `loader-files`.
fn slug(stage: &str) -> String {
    stage
        .chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => Some(c),
            ' ' => Some('-'),
            _ => None,
        })
        .collect()
}

/// How an instance ended after SIGTERM.
#[derive(Debug, Clone, Copy)]
pub enum Stopped {
    /// It was not running (nothing to stop).
    NotRunning,
    /// It exited by itself, with this status.
    Exited(std::process::ExitStatus),
    /// Still running after the grace: killed (SIGKILL).
    Killed(Duration),
}

impl Stopped {
    /// A clean stop: exited by itself with status 0 (or nothing ran).
    pub fn clean(self) -> bool {
        match self {
            Stopped::NotRunning => true,
            Stopped::Exited(status) => status.success(),
            Stopped::Killed(_) => false,
        }
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::NotRunning => write!(f, "was not running"),
            Stopped::Exited(status) if status.success() => write!(f, "clean exit"),
            Stopped::Exited(status) => write!(f, "exited unclean: {status}"),
            Stopped::Killed(grace) => write!(f, "no exit within {grace:?}: killed"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stage_names_become_file_names() {
        assert_eq!(super::slug("loader (files)"), "loader-files");
        assert_eq!(super::slug("profiles (dc1)"), "profiles-dc1");
    }
}
