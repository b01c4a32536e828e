//! Shared by the runtime's broker tests: topics on the real central cluster
//! and a test step whose behaviour each record's value chooses.
#![allow(dead_code)] // each test binary uses part of it

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use adpipe_runtime::config::{HttpConfig, KafkaConfig, RuntimeConfig, load_layers};
use adpipe_runtime::{
    AssignedPartition, Emitter, Held, InputRecord, OutputRecord, OutputTopic, Step, StepError,
    StepFactory, TaskAssignment, Timer, TimerClock, WorkerSettings,
};
use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// A test's topics `<prefix>.<suffix>` on the central cluster: `in`, `out`,
/// `dlq`, plus `narrow` (the broker takes at most 2 KiB per batch) and
/// `fragile` (a test may deny writing to it with a real ACL).
pub struct Topics {
    pub bootstrap: String,
    pub prefix: String,
}

impl Topics {
    pub async fn create(name: &str, partitions: i32) -> Topics {
        Self::create_with_inputs(name, partitions, &["in"]).await
    }

    /// Like `create`, with several input topics (`in`, `in2`, …).
    pub async fn create_with_inputs(name: &str, partitions: i32, inputs: &[&str]) -> Topics {
        let bootstrap = adpipe_testkit::kafka("central");
        let prefix = adpipe_testkit::unique(name);
        let named = |suffix: &str| format!("{prefix}.{suffix}");
        let inputs: Vec<String> = inputs.iter().map(|input| named(input)).collect();
        let [output, dlq, narrow, fragile] = ["out", "dlq", "narrow", "fragile"].map(named);
        let mut specs: Vec<adpipe_testkit::TopicSpec<'_>> = inputs
            .iter()
            .map(|input| (input.as_str(), partitions, &[][..]))
            .collect();
        specs.extend([
            (output.as_str(), partitions, &[][..]),
            (dlq.as_str(), 1, &[][..]),
            (
                narrow.as_str(),
                partitions,
                &[("max.message.bytes", "2048")][..],
            ),
            (fragile.as_str(), partitions, &[][..]),
        ]);
        adpipe_testkit::create_topics(&bootstrap, &specs).await;
        Topics { bootstrap, prefix }
    }

    pub fn name(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }

    pub fn group(&self) -> String {
        format!("{}-group", self.prefix)
    }

    /// Worker settings: the runtime defaults, this test's topics, and `extra`
    /// TOML appended to the `[runtime]` section (it may open later sections).
    pub fn settings(&self, extra: &str) -> WorkerSettings {
        self.settings_for(&[&["in"]], extra)
    }

    /// Settings with the given input groups (topic suffixes).
    pub fn settings_for(&self, groups: &[&[&str]], extra: &str) -> WorkerSettings {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "kebab-case")]
        struct Raw {
            kafka: KafkaConfig,
            runtime: RuntimeConfig,
            http: HttpConfig,
        }
        let service = format!(
            "[kafka]\nbootstrap-servers = \"{}\"\ngroup-id = \"{}\"\nsession-timeout = \"10s\"\n\
             [runtime]\ndead-letter-topic = \"{}\"\ncommit-interval = \"200ms\"\nrevoke-deadline = \"5s\"\n",
            self.bootstrap,
            self.group(),
            self.name("dlq"),
        );
        // The test's own settings, layered over those like a --config file.
        let overrides =
            std::env::temp_dir().join(format!("{}.toml", adpipe_testkit::unique("rt-config")));
        std::fs::write(&overrides, format!("[runtime]\n{extra}")).expect("config written");
        let layers = load_layers(&service, Some(&overrides), std::iter::empty());
        let _ = std::fs::remove_file(&overrides);
        let raw: Raw = toml::Value::Table(layers.expect("config layers"))
            .try_into()
            .expect("config shape");
        let mut problems = Vec::new();
        let groups: Vec<Vec<String>> = groups
            .iter()
            .map(|group| group.iter().map(|suffix| self.name(suffix)).collect())
            .collect();
        let first_input = groups[0][0].clone();
        let mut settings = WorkerSettings::validate(
            "runtime-test",
            groups,
            raw.kafka,
            raw.runtime,
            raw.http,
            None,
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        settings.outputs = ["out", "narrow", "fragile"]
            .map(|suffix| OutputTopic {
                topic: self.name(suffix),
                partitions_like: Some(first_input.clone()),
            })
            .to_vec();
        settings
    }

    /// Produces `(partition, key, value)` records in order to `in`.
    pub async fn produce(&self, records: &[(i32, String, String)]) {
        let records: Vec<Produced> = records
            .iter()
            .map(|(partition, key, value)| Produced {
                partition: *partition,
                key: key.clone(),
                value: Some(value.clone()),
                timestamp_ms: None,
                headers: Vec::new(),
            })
            .collect();
        self.produce_to("in", &records).await;
    }

    /// Produces records to `<prefix>.<suffix>` in order.
    pub async fn produce_to(&self, suffix: &str, records: &[Produced]) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        let topic = self.name(suffix);
        // Sent all at once, then awaited (idempotence keeps each
        // partition's order): one at a time, each waits out the linger.
        let mut deliveries = Vec::with_capacity(records.len());
        for record in records {
            let mut headers = OwnedHeaders::new();
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let mut future = FutureRecord::to(&topic)
                .partition(record.partition)
                .key(&record.key)
                .headers(headers);
            if let Some(value) = &record.value {
                future = future.payload(value);
            }
            if let Some(timestamp) = record.timestamp_ms {
                future = future.timestamp(timestamp);
            }
            match producer.send_result(future) {
                Ok(delivery) => deliveries.push(delivery),
                Err((error, _)) => panic!("not queued: {error}"),
            }
        }
        for delivery in deliveries {
            delivery
                .await
                .expect("the producer lives")
                .expect("produced");
        }
    }

    /// Commits `offset` for the test's group on `in`-0, as an earlier
    /// instance would have.
    pub fn commit_group_offset(&self, offset: i64) {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", self.group())
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        consumer
            .commit(&self.in_0_at(offset), CommitMode::Sync)
            .expect("committed");
    }

    /// `in`-0 at `offset`, as the admin and consumer calls take it.
    fn in_0_at(&self, offset: i64) -> TopicPartitionList {
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&self.name("in"), 0, Offset::Offset(offset))
            .expect("offset");
        offsets
    }

    /// Deletes the records of `in`-0 before `before` (`DeleteRecords`:
    /// the log start moves, as retention moves it).
    pub async fn delete_records_before(&self, before: i64) {
        let admin: AdminClient<_> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("admin client");
        let deleted = admin
            .delete_records(&self.in_0_at(before), &AdminOptions::new())
            .await
            .expect("deleted");
        for element in deleted.elements() {
            assert!(element.error().is_ok(), "not deleted: {element:?}");
        }
    }

    pub fn committed(&self) -> Vec<Option<i64>> {
        adpipe_testkit::committed_offsets(&self.bootstrap, &self.group(), &self.name("in"))
    }

    pub async fn wait_committed_to_end(&self, within: Duration) {
        self.wait_committed_to_end_of("in", within).await;
    }

    pub async fn wait_committed_to_end_of(&self, suffix: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (bootstrap, group, input) =
                (self.bootstrap.clone(), self.group(), self.name(suffix));
            let done = tokio::task::spawn_blocking(move || {
                adpipe_testkit::committed_to_end(&bootstrap, &group, &input)
            })
            .await
            .expect("check");
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{suffix} not committed to its end in {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs a worker until it has committed the whole input, then stops it.
    pub async fn run_to_end(&self, settings: WorkerSettings, factory: TestFactory) {
        let worker = adpipe_runtime::start(settings, factory).expect("worker starts");
        self.wait_committed_to_end(Duration::from_secs(120)).await;
        worker.stop().await.expect("clean stop");
    }

    pub async fn read(&self, suffix: &str) -> Vec<OwnedMessage> {
        let (bootstrap, topic) = (self.bootstrap.clone(), self.name(suffix));
        tokio::task::spawn_blocking(move || adpipe_testkit::read_all(&bootstrap, &topic))
            .await
            .expect("read")
    }

    /// The values in `<prefix>.<suffix>`, in partition/offset order.
    pub async fn values(&self, suffix: &str) -> Vec<String> {
        self.read(suffix)
            .await
            .iter()
            .map(|record| text(record.payload()))
            .collect()
    }

    /// Waits until `<prefix>.<suffix>` holds at least `count` records.
    pub async fn wait_for_records(&self, suffix: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let have = self.read(suffix).await.len();
            if have >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{suffix} has {have} of {count} records after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A record to produce.
#[derive(Debug, Clone)]
pub struct Produced {
    pub partition: i32,
    pub key: String,
    pub value: Option<String>,
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, String)>,
}

/// Bytes lz4 cannot shrink (limits apply to compressed batches).
fn incompressible(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

pub fn text(bytes: Option<&[u8]>) -> String {
    String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned()
}

pub fn header(record: &OwnedMessage, name: &str) -> Option<String> {
    record
        .headers()?
        .iter()
        .find(|header| header.key == name)
        .map(|header| text(header.value))
}

/// A step that copies each record to `out`, except where its value says
/// otherwise:
/// - `hang…` never finishes; `slow-once…` hangs on its first attempt only;
/// - `panic…` panics (unless the factory's `calm` is set);
/// - `fail…` fails transiently, always;
/// - `big…` emits 10 KiB to `narrow` (the broker rejects it);
/// - `huge…` emits 2 MiB to `out` (over librdkafka's `message.max.bytes`);
/// - `fragile…` emits to `fragile` (which a test may forbid writing to);
/// - `hold…` is held and emitted 2 s later from a wall-clock timer.
///
/// Every output carries headers `attempt` and `lateness` (ms, when late).
pub struct TestStep {
    prefix: String,
    delay: Duration,
    attempts: HashMap<String, u32>,
    running: Arc<AtomicUsize>,
    most_running: Arc<AtomicUsize>,
    calm: Arc<AtomicBool>,
    revokes: Arc<Mutex<Vec<bool>>>,
    held: HashMap<u64, (Held, OutputRecord)>,
    next_hold: u64,
}

/// How long a `hold…` record is held.
pub const HOLD: Duration = Duration::from_secs(2);

impl TestStep {
    fn output(&self, suffix: &str, record: &InputRecord<'_>, attempt: u32) -> OutputRecord {
        let mut output = OutputRecord::new(
            &format!("{}.{suffix}", self.prefix),
            record.key,
            record.value,
        );
        output.partition = Some(record.partition);
        output.headers = adpipe_runtime::Headers::from_pairs([("attempt", attempt.to_string())]);
        if let Some(lateness) = record.lateness_ms {
            output.headers = output.headers.with("lateness", lateness.to_string());
        }
        output
    }
}

impl Step for TestStep {
    async fn process(
        &mut self,
        record: &InputRecord<'_>,
        out: &mut Emitter,
    ) -> Result<(), StepError> {
        let value = text(record.value);
        let now = self.running.fetch_add(1, Ordering::AcqRel) + 1;
        self.most_running.fetch_max(now, Ordering::AcqRel);
        // Decrements even when the runtime drops this future mid-sleep.
        struct Running(Arc<AtomicUsize>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _running = Running(Arc::clone(&self.running));
        let attempt = {
            let attempts = self.attempts.entry(value.clone()).or_default();
            *attempts += 1;
            *attempts
        };
        let hang = value.starts_with("hang") || (value.starts_with("slow-once") && attempt == 1);
        let delay = if hang {
            Duration::from_secs(3600)
        } else {
            self.delay
        };
        tokio::time::sleep(delay).await;
        if value.starts_with("panic") && !self.calm.load(Ordering::Acquire) {
            panic!("test step told to panic on {value}");
        }
        if value.starts_with("fail") {
            return Err(StepError::transient("test_failure", "told to fail"));
        }
        let mut output = self.output("out", record, attempt);
        if value.starts_with("big") {
            output = self.output("narrow", record, attempt);
            output.value = Some(incompressible(10 * 1024).into());
        } else if value.starts_with("huge") {
            output.value = Some(incompressible(2 * 1024 * 1024).into());
        } else if value.starts_with("fragile") {
            output = self.output("fragile", record, attempt);
        } else if value.starts_with("hold") {
            let id = self.next_hold;
            self.next_hold += 1;
            let at = adpipe_runtime::event_time::now_ms() + HOLD.as_millis() as i64;
            out.set_timer(TimerClock::Wall, at, id);
            self.held.insert(id, (out.hold(), output));
            return Ok(());
        }
        out.emit(output);
        Ok(())
    }

    async fn on_timer(&mut self, timer: Timer, out: &mut Emitter) -> Result<(), StepError> {
        if let Some((held, output)) = self.held.remove(&timer.id) {
            out.emit_held(&held, output);
            held.release();
        }
        Ok(())
    }

    fn on_revoke(&mut self, drained: bool) {
        self.revokes.lock().push(drained);
    }
}

pub struct TestFactory {
    pub prefix: String,
    pub delay: Duration,
    pub create_delay: Duration,
    pub running: Arc<AtomicUsize>,
    pub most_running: Arc<AtomicUsize>,
    /// Set: `panic…` records no longer panic (the bug was fixed).
    pub calm: Arc<AtomicBool>,
    /// What `on_revoke` was told, in order.
    pub revokes: Arc<Mutex<Vec<bool>>>,
    /// Set: a slow restore (`create_delay`) ends at once.
    pub end_restores: Arc<AtomicBool>,
    /// Errors the next creations return, first first.
    pub create_failures: Arc<Mutex<Vec<StepError>>>,
    /// Set (the cluster's bootstrap): each creation records its partition
    /// and how many records `out` holds there at that moment.
    pub watch_outputs: Option<String>,
    /// What each creation saw of `out` (with `watch_outputs`).
    pub outputs_at_create: Arc<Mutex<Vec<(i32, i64)>>>,
}

impl TestFactory {
    pub fn new(topics: &Topics) -> Self {
        TestFactory {
            prefix: topics.prefix.clone(),
            delay: Duration::ZERO,
            create_delay: Duration::ZERO,
            running: Arc::default(),
            most_running: Arc::default(),
            calm: Arc::default(),
            revokes: Arc::default(),
            end_restores: Arc::default(),
            create_failures: Arc::default(),
            watch_outputs: None,
            outputs_at_create: Arc::default(),
        }
    }
}

impl StepFactory for TestFactory {
    type Step = TestStep;
    fn create(&self, assignment: &TaskAssignment) -> Result<TestStep, StepError> {
        if let Some(bootstrap) = &self.watch_outputs {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .create()
                .expect("client");
            let (low, high) = consumer
                .fetch_watermarks(
                    &format!("{}.out", self.prefix),
                    assignment.partition,
                    Duration::from_secs(10),
                )
                .expect("watermarks");
            self.outputs_at_create
                .lock()
                .push((assignment.partition, high - low));
        }
        // A slow restore that the test can end (a blocking thread would
        // otherwise keep the test's runtime from shutting down).
        let started = Instant::now();
        while started.elapsed() < self.create_delay && !self.end_restores.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(20));
        }
        {
            let mut failures = self.create_failures.lock();
            if !failures.is_empty() {
                return Err(failures.remove(0));
            }
        }
        Ok(TestStep {
            prefix: self.prefix.clone(),
            delay: self.delay,
            attempts: HashMap::new(),
            running: Arc::clone(&self.running),
            most_running: Arc::clone(&self.most_running),
            calm: Arc::clone(&self.calm),
            revokes: Arc::clone(&self.revokes),
            held: HashMap::new(),
            next_hold: 0,
        })
    }
}

/// `count` records on partition 0 with values `good-i`, except where
/// `special` names another value for index i.
pub fn records(count: usize, special: &[(usize, &str)]) -> Vec<(i32, String, String)> {
    (0..count)
        .map(|index| {
            let value = special.iter().find(|(at, _)| *at == index).map_or_else(
                || format!("good-{index}"),
                |(_, value)| format!("{value}-{index}"),
            );
            (0, format!("user-{index}"), value)
        })
        .collect()
}

/// The partitions the runtime asked about, per rebalance.
pub type Asked = Arc<Mutex<Vec<Vec<AssignedPartition>>>>;

/// The test step, with offsets "stored" by the service.
pub struct StoringFactory {
    pub inner: TestFactory,
    pub stored: Result<Vec<(String, i32, i64)>, String>,
    /// What the runtime asked for, per rebalance.
    pub asked: Asked,
}

impl StepFactory for StoringFactory {
    type Step = TestStep;

    fn create(&self, assignment: &TaskAssignment) -> Result<TestStep, StepError> {
        self.inner.create(assignment)
    }

    const STORES_OFFSETS: bool = true;

    fn stored_offsets(
        &self,
        partitions: &[AssignedPartition],
    ) -> Result<Vec<(String, i32, i64)>, StepError> {
        self.asked.lock().push(partitions.to_vec());
        self.stored
            .clone()
            .map_err(|message| StepError::transient("offset_store", message))
    }
}
