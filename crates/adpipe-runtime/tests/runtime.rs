//! The runtime on the real central cluster (`infra/kafka.sh start`), with
//! test steps: processing timeouts cut off a hanging step and the failure
//! action for `processing_timeout` decides what happens; sub-partitions run
//! one partition's keys in parallel while keeping each key's order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use adpipe_runtime::config::{HttpConfig, KafkaConfig, RuntimeConfig, load_layers};
use adpipe_runtime::dead_letter::HEADER_REASON;
use adpipe_runtime::{
    Emitter, InputRecord, OutputRecord, PartitionAssignment, Step, StepError, StepFactory,
    WorkerSettings,
};
use rdkafka::ClientConfig;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Topics `<prefix>.{in,out,dlq}` on the central cluster.
struct Topics {
    bootstrap: String,
    prefix: String,
}

impl Topics {
    async fn create(name: &str, partitions: i32) -> Topics {
        let bootstrap = adpipe_testkit::kafka("central");
        let prefix = adpipe_testkit::unique(name);
        let [input, output, dlq] = ["in", "out", "dlq"].map(|suffix| format!("{prefix}.{suffix}"));
        adpipe_testkit::create_topics(
            &bootstrap,
            &[
                (&input, partitions, &[]),
                (&output, partitions, &[]),
                (&dlq, 1, &[]),
            ],
        )
        .await;
        Topics { bootstrap, prefix }
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }

    /// Worker settings: the runtime defaults, this test's topics, and `extra` TOML.
    fn settings(&self, extra: &str) -> WorkerSettings {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "kebab-case")]
        struct Raw {
            kafka: KafkaConfig,
            runtime: RuntimeConfig,
            http: HttpConfig,
        }
        let service = format!(
            "[kafka]\nbootstrap-servers = \"{}\"\ngroup-id = \"{}-group\"\n\
             [runtime]\ndead-letter-topic = \"{}\"\ncommit-interval = \"200ms\"\n{extra}",
            self.bootstrap,
            self.prefix,
            self.name("dlq"),
        );
        let raw: Raw = toml::Value::Table(
            load_layers(&service, None, std::iter::empty()).expect("config layers"),
        )
        .try_into()
        .expect("config shape");
        let mut problems = Vec::new();
        let settings = WorkerSettings::validate(
            "runtime-test",
            vec![self.name("in")],
            raw.kafka,
            raw.runtime,
            raw.http,
            None,
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        settings
    }

    /// Produces `(partition, key, value)` records in order.
    async fn produce(&self, records: &[(i32, String, String)]) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        let input = self.name("in");
        for (partition, key, value) in records {
            producer
                .send(
                    FutureRecord::to(&input)
                        .partition(*partition)
                        .key(key)
                        .payload(value),
                    Duration::from_secs(10),
                )
                .await
                .expect("produced");
        }
    }

    async fn wait_committed_to_end(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (bootstrap, group, input) = (
                self.bootstrap.clone(),
                format!("{}-group", self.prefix),
                self.name("in"),
            );
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
                "input not committed to its end in {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs a worker until it has committed the whole input, then stops it.
    async fn run_to_end(&self, settings: WorkerSettings, factory: TestFactory) {
        let worker = adpipe_runtime::start(settings, factory).expect("worker starts");
        self.wait_committed_to_end(Duration::from_secs(120)).await;
        worker.stop().await.expect("clean stop");
    }

    async fn read(&self, suffix: &str) -> Vec<OwnedMessage> {
        let (bootstrap, topic) = (self.bootstrap.clone(), self.name(suffix));
        tokio::task::spawn_blocking(move || adpipe_testkit::read_all(&bootstrap, &topic))
            .await
            .expect("read")
    }
}

fn text(bytes: Option<&[u8]>) -> String {
    String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned()
}

/// A step that copies records, waits `delay` on each, hangs on values
/// starting with "hang", and hangs only the first attempt on values starting
/// with "slow-once". It counts how many records are being processed at once.
struct TestStep {
    output: String,
    delay: Duration,
    attempts: HashMap<String, u32>,
    running: Arc<AtomicUsize>,
    most_running: Arc<AtomicUsize>,
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
        let attempt = {
            let attempts = self.attempts.entry(value.clone()).or_default();
            *attempts += 1;
            *attempts
        };
        let hang = value.starts_with("hang") || (value.starts_with("slow-once") && attempt == 1);
        // Decrements even when the runtime drops this future mid-sleep.
        struct Running(Arc<AtomicUsize>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _running = Running(Arc::clone(&self.running));
        let delay = if hang {
            Duration::from_secs(3600)
        } else {
            self.delay
        };
        tokio::time::sleep(delay).await;
        let mut output = OutputRecord::new(&self.output, record.key, record.value);
        output.partition = Some(record.partition);
        output.headers = vec![("attempt".to_owned(), attempt.to_string().into_bytes())];
        out.emit(output);
        Ok(())
    }
}

struct TestFactory {
    output: String,
    delay: Duration,
    running: Arc<AtomicUsize>,
    most_running: Arc<AtomicUsize>,
}

impl TestFactory {
    fn new(output: String, delay: Duration) -> Self {
        TestFactory {
            output,
            delay,
            running: Arc::default(),
            most_running: Arc::default(),
        }
    }
}

impl StepFactory for TestFactory {
    type Step = TestStep;
    fn create(&self, _: &PartitionAssignment) -> Result<TestStep, StepError> {
        Ok(TestStep {
            output: self.output.clone(),
            delay: self.delay,
            attempts: HashMap::new(),
            running: Arc::clone(&self.running),
            most_running: Arc::clone(&self.most_running),
        })
    }
}

fn header(record: &OwnedMessage, name: &str) -> Option<String> {
    record
        .headers()?
        .iter()
        .find(|header| header.key == name)
        .map(|header| text(header.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_step_is_cut_off_and_dead_lettered_while_the_partition_goes_on() {
    let topics = Topics::create("rt-timeout-dlq", 1).await;
    let records: Vec<(i32, String, String)> = (0..40)
        .map(|index| {
            let value = if index % 10 == 5 {
                format!("hang-{index}")
            } else {
                format!("good-{index}")
            };
            (0, format!("user-{index}"), value)
        })
        .collect();
    topics.produce(&records).await;
    let settings = topics.settings(
        "processing-timeout = \"300ms\"\n[runtime.on-error-kind]\nprocessing_timeout = \"dead-letter\"\n",
    );
    topics
        .run_to_end(
            settings,
            TestFactory::new(topics.name("out"), Duration::ZERO),
        )
        .await;

    let out: Vec<String> = topics
        .read("out")
        .await
        .iter()
        .map(|record| text(record.payload()))
        .collect();
    let expected_out: Vec<String> = records
        .iter()
        .filter(|(_, _, value)| value.starts_with("good"))
        .map(|(_, _, value)| value.clone())
        .collect();
    assert_eq!(out, expected_out, "every good record, in order, once");
    let dead = topics.read("dlq").await;
    let dead_values: Vec<String> = dead.iter().map(|record| text(record.payload())).collect();
    assert_eq!(dead_values, ["hang-5", "hang-15", "hang-25", "hang-35"]);
    for record in &dead {
        assert_eq!(
            header(record, HEADER_REASON).as_deref(),
            Some("processing_timeout")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_cut_off_by_the_timeout_is_retried_by_default_and_its_outputs_leave_once() {
    let topics = Topics::create("rt-timeout-retry", 1).await;
    let records: Vec<(i32, String, String)> = ["a", "slow-once-b", "c"]
        .iter()
        .map(|value| (0, "user".to_owned(), (*value).to_owned()))
        .collect();
    topics.produce(&records).await;
    let settings = topics.settings("processing-timeout = \"300ms\"\n");
    topics
        .run_to_end(
            settings,
            TestFactory::new(topics.name("out"), Duration::ZERO),
        )
        .await;

    let out: Vec<(String, Option<String>)> = topics
        .read("out")
        .await
        .iter()
        .map(|record| (text(record.payload()), header(record, "attempt")))
        .collect();
    assert_eq!(
        out,
        [
            ("a".to_owned(), Some("1".to_owned())),
            ("slow-once-b".to_owned(), Some("2".to_owned())),
            ("c".to_owned(), Some("1".to_owned())),
        ],
        "the cut-off attempt emitted nothing; the retry did, in order"
    );
    assert!(topics.read("dlq").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_partitions_run_one_partitions_keys_in_parallel_and_keep_each_keys_order() {
    const KEYS: usize = 32;
    const PER_KEY: usize = 25;
    let topics = Topics::create("rt-subpartitions", 2).await;
    let mut records = Vec::new();
    for sequence in 0..PER_KEY {
        for key in 0..KEYS {
            records.push((
                (key % 2) as i32,
                format!("user-{key}"),
                format!("user-{key}/{sequence}"),
            ));
        }
    }
    topics.produce(&records).await;
    let settings = topics.settings("sub-partitions = 8\n");
    let factory = TestFactory::new(topics.name("out"), Duration::from_millis(2));
    let most_running = Arc::clone(&factory.most_running);
    topics.run_to_end(settings, factory).await;

    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for record in topics.read("out").await {
        let value = text(record.payload());
        let (key, sequence) = value.split_once('/').expect("key/sequence");
        assert_eq!(text(record.key()), key, "key travels with its value");
        by_key
            .entry(key.to_owned())
            .or_default()
            .push(sequence.parse().expect("number"));
    }
    assert_eq!(by_key.len(), KEYS);
    for (key, sequences) in &by_key {
        assert_eq!(
            sequences,
            &(0..PER_KEY).collect::<Vec<_>>(),
            "{key}: every record once, in order"
        );
    }
    // 2 partitions alone allow 2 at once; sub-partitions allow up to 16.
    let most = most_running.load(Ordering::Acquire);
    assert!(
        most > 2,
        "sub-partitions should process more records at once than partitions; at most {most} were"
    );
}
