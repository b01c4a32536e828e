//! A service under test, as its real binary: started with a config file,
//! watched through its consumer group's commits and /proc, stopped with
//! SIGTERM like an orchestrator would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

/// A running service binary.
pub struct Service {
    name: &'static str,
    child: Child,
    peak_rss_kb: u64,
}

/// What a backlog run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BacklogRun {
    /// Records consumed per second, from the first commit to the last.
    pub records_per_sec: f64,
    /// Seconds from process start to the input committed to its end
    /// (startup, group join and state restore included).
    pub wall_seconds: f64,
    /// Seconds from process start to its first commit.
    pub first_commit_seconds: f64,
    /// CPU seconds (user + system, every thread) per million records over
    /// the whole run, startup and warm-up included.
    pub cpu_seconds_per_million: f64,
    /// The same over the first half of the backlog (from process start):
    /// the warm-up, where a JVM is still compiling.
    pub warmup_cpu_seconds_per_million: f64,
    /// Steady state: the second half of the backlog up to its last 1%
    /// (the drain: the joiner's held records waiting out their wall-clock
    /// wait, the last fetch and commit interval).
    pub steady_cpu_seconds_per_million: f64,
    /// Records per second over the steady state.
    pub steady_records_per_sec: f64,
    /// Cores busy over the steady state (CPU seconds per wall second).
    pub steady_cores_busy: f64,
    /// Records the run added to its output topic (filled in by the caller).
    pub output_records: i64,
}

/// A point of a run: when, CPU used so far, records committed so far.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    cpu_seconds: f64,
    committed: i64,
}

impl Service {
    /// Starts `binary --config config`.
    pub fn spawn(name: &'static str, binary: &Path, config: &Path) -> Result<Service, String> {
        Self::spawn_with(name, binary, config, &[])
    }

    /// Starts `binary --config config` with extra environment variables.
    pub fn spawn_with(
        name: &'static str,
        binary: &Path,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Result<Service, String> {
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn");
        Self::spawn_command(name, command)
    }

    /// Starts any command (a JVM, for the Kafka Streams peer); its stdout
    /// is dropped, its stderr shown.
    pub fn spawn_command(name: &'static str, mut command: Command) -> Result<Service, String> {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| format!("{name}: {:?}: {error}", command.get_program()))?;
        Ok(Service {
            name,
            child,
            peak_rss_kb: 0,
        })
    }

    /// How the process ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// CPU seconds the process used so far (user + system, all threads).
    pub fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(self.child.id()).unwrap_or(0.0)
    }

    /// Resident set size now, in KiB (and remembers the peak).
    pub fn sample_rss(&mut self) -> u64 {
        let rss = proc_status_kb(self.child.id(), "VmRSS:").unwrap_or(0);
        let peak = proc_status_kb(self.child.id(), "VmHWM:").unwrap_or(rss);
        self.peak_rss_kb = self.peak_rss_kb.max(peak);
        rss
    }

    /// Waits until `group` committed `inputs` up to `total` records,
    /// printing progress each second.
    pub fn run_backlog(
        &mut self,
        bootstrap: &str,
        group: &str,
        inputs: &[&str],
        total: i64,
    ) -> Result<BacklogRun, String> {
        let started = Instant::now();
        let mut first: Option<(Instant, i64)> = None;
        let mut half: Option<Mark> = None;
        let mut drain: Option<Mark> = None;
        let mut last_print = Instant::now();
        let watcher = CommitWatcher::new(bootstrap, group, inputs)?;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{} exited early: {status}", self.name));
            }
            let committed = watcher.committed();
            let now = Instant::now();
            if committed > 0 && first.is_none() {
                first = Some((now, committed));
            }
            if committed * 2 >= total && half.is_none() {
                half = Some(Mark {
                    at: now,
                    cpu_seconds: self.cpu_seconds(),
                    committed,
                });
            }
            if committed * 100 >= total * 99 && drain.is_none() {
                drain = Some(Mark {
                    at: now,
                    cpu_seconds: self.cpu_seconds(),
                    committed,
                });
            }
            let rss = self.sample_rss();
            if last_print.elapsed() >= Duration::from_secs(1) {
                eprintln!(
                    "  {}: {committed}/{total} committed, RSS {} MiB",
                    self.name,
                    rss / 1024
                );
                last_print = now;
            }
            if committed >= total {
                let end = Mark {
                    at: now,
                    cpu_seconds: self.cpu_seconds(),
                    committed,
                };
                let (first_at, first_committed) = first.unwrap_or((now, 0));
                let half = half.unwrap_or(end);
                let drain = drain.unwrap_or(end);
                let seconds = now.duration_since(first_at).as_secs_f64().max(1e-3);
                let per_million = |cpu: f64, records: i64| cpu * 1e6 / records.max(1) as f64;
                let steady_seconds = drain.at.duration_since(half.at).as_secs_f64().max(1e-3);
                let steady_cpu = drain.cpu_seconds - half.cpu_seconds;
                return Ok(BacklogRun {
                    records_per_sec: (total - first_committed) as f64 / seconds,
                    wall_seconds: now.duration_since(started).as_secs_f64(),
                    first_commit_seconds: first_at.duration_since(started).as_secs_f64(),
                    cpu_seconds_per_million: per_million(end.cpu_seconds, end.committed),
                    warmup_cpu_seconds_per_million: per_million(half.cpu_seconds, half.committed),
                    steady_cpu_seconds_per_million: per_million(
                        steady_cpu,
                        drain.committed - half.committed,
                    ),
                    steady_records_per_sec: (drain.committed - half.committed) as f64
                        / steady_seconds,
                    steady_cores_busy: steady_cpu / steady_seconds,
                    output_records: 0,
                });
            }
            if started.elapsed() > Duration::from_secs(900) {
                return Err(format!("{} did not finish in 15 minutes", self.name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for a clean exit; returns the peak RSS in KiB.
    pub fn stop(mut self) -> Result<u64, String> {
        self.sample_rss();
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|error| format!("kill: {error}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(self.peak_rss_kb),
                Ok(Some(status)) => return Err(format!("{} exited with {status}", self.name)),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = self.child.kill();
                    return Err(format!("{} did not stop on SIGTERM", self.name));
                }
            }
        }
    }
}

/// CPU seconds (user + system) of a process from /proc/PID/stat.
fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_second())
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A value from /proc/PID/status in KiB.
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|line| line.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Reads a group's committed offsets of some topics.
pub struct CommitWatcher {
    consumer: BaseConsumer,
    wanted: TopicPartitionList,
}

impl CommitWatcher {
    /// A watcher of `group` on every partition of `topics`.
    pub fn new(bootstrap: &str, group: &str, topics: &[&str]) -> Result<Self, String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .create()
            .map_err(|error| error.to_string())?;
        let mut wanted = TopicPartitionList::new();
        for topic in topics {
            for partition in 0..adpipe_testkit::partition_count(&consumer, topic) {
                wanted.add_partition(topic, partition);
            }
        }
        Ok(CommitWatcher { consumer, wanted })
    }

    /// Partitions watched.
    pub fn partitions(&self) -> usize {
        self.wanted.count()
    }

    /// Sum of committed offsets (0 for partitions without a commit).
    pub fn committed(&self) -> i64 {
        self.committed_by_partition()
            .iter()
            .map(|(_, _, offset)| offset)
            .sum()
    }

    /// Each partition's committed offset (0 without a commit; none when
    /// the group coordinator did not answer).
    pub fn committed_by_partition(&self) -> Vec<(String, i32, i64)> {
        self.consumer
            .committed_offsets(self.wanted.clone(), Duration::from_secs(10))
            .map(|list| {
                list.elements()
                    .iter()
                    .map(|element| {
                        let offset = match element.offset() {
                            Offset::Offset(offset) => offset,
                            _ => 0,
                        };
                        (element.topic().to_owned(), element.partition(), offset)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Sum of the high watermarks of `topic`.
pub fn topic_end(bootstrap: &str, topic: &str) -> Result<i64, String> {
    Ok(topic_ends(bootstrap, topic)?
        .iter()
        .map(|(_, end)| end)
        .sum())
}

/// Each partition's high watermark: (partition, offset).
pub fn topic_ends(bootstrap: &str, topic: &str) -> Result<Vec<(i32, i64)>, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|error| error.to_string())?;
    let mut ends = Vec::new();
    for partition in 0..adpipe_testkit::partition_count(&consumer, topic) {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map_err(|error| error.to_string())?;
        ends.push((partition, high));
    }
    Ok(ends)
}
