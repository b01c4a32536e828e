//! Shared set-up of the deduplicator's broker tests: fresh topics and an
//! in-process registry on the real central cluster, a config file, and
//! readers of what came out. Each test binary uses a part of it.
#![allow(dead_code)]

use std::path::PathBuf;

use adpipe_codec::Codec;

use adpipe_schema_registry::{RegistrySettings, RunningRegistry};

/// Topics `<prefix>.{in,out,log,dlq}` and a registry, on the central cluster.
pub struct Pipeline {
    pub bootstrap: String,
    pub prefix: String,
    pub registry: RunningRegistry,
}

/// How the deduplicator under test is tuned.
pub struct Tuning<'a> {
    pub session_timeout: &'a str,
    pub commit_interval: &'a str,
    pub revoke_deadline: &'a str,
    pub window: &'a str,
    pub allowed_lateness: &'a str,
    /// Small queues make backpressure (pause/resume) happen in tests.
    pub queue_high_bytes: usize,
}

impl Tuning<'static> {
    /// The fault tests' tuning: short sessions and commits, a day's window.
    pub fn fault_tests() -> Self {
        Tuning {
            session_timeout: "6s",
            commit_interval: "200ms",
            revoke_deadline: "3s",
            window: "24h",
            allowed_lateness: "1h",
            queue_high_bytes: 8 << 20,
        }
    }
}

impl Pipeline {
    /// Creates the topics (the input, output and changelog with `partitions`).
    pub async fn create(name: &str, partitions: i32) -> Pipeline {
        Pipeline::create_on(adpipe_testkit::kafka("central"), name, partitions, None).await
    }

    /// As [`Pipeline::create`], on the cluster at `bootstrap`, the
    /// registry guarded by `token` when given.
    pub async fn create_on(
        bootstrap: String,
        name: &str,
        partitions: i32,
        token: Option<&str>,
    ) -> Pipeline {
        let prefix = adpipe_testkit::unique(name);
        let names = ["in", "out", "log", "dlq"].map(|suffix| format!("{prefix}.{suffix}"));
        adpipe_testkit::create_topics(
            &bootstrap,
            &[
                (&names[0], partitions, &[]),
                (&names[1], partitions, &[]),
                (&names[2], partitions, &[("cleanup.policy", "compact")]),
                (&names[3], 1, &[]),
            ],
        )
        .await;
        let mut settings = RegistrySettings::local(&bootstrap, &format!("{prefix}._schemas"));
        settings.access.token = token.map(adpipe_kafka_client::Secret::new);
        let registry = adpipe_schema_registry::start(settings)
            .await
            .expect("registry");
        Pipeline {
            bootstrap,
            prefix,
            registry,
        }
    }

    /// Writes a deduplicator config for this pipeline and returns its path.
    pub fn write_config(&self, tuning: &Tuning<'_>) -> PathBuf {
        let Pipeline {
            bootstrap,
            prefix,
            registry,
        } = self;
        let config = format!(
            r#"
[kafka]
bootstrap-servers = "{bootstrap}"
group-id = "{prefix}-group"
session-timeout = "{session}"
[registry]
url = "{registry_url}"
[runtime]
commit-interval = "{commit}"
revoke-deadline = "{revoke}"
dead-letter-topic = "{prefix}.dlq"
queue-high-bytes = {high}
queue-low-bytes = {low}
[http]
listen = "127.0.0.1:0"
[deduplicator]
state-dir = "{state_dir}"
window = "{window}"
allowed-lateness = "{lateness}"
[[deduplicator.stream]]
input = "{prefix}.in"
output = "{prefix}.out"
changelog = "{prefix}.log"
"#,
            registry_url = registry.url(),
            state_dir = std::env::temp_dir()
                .join(format!("{prefix}-state"))
                .display(),
            session = tuning.session_timeout,
            commit = tuning.commit_interval,
            revoke = tuning.revoke_deadline,
            window = tuning.window,
            lateness = tuning.allowed_lateness,
            high = tuning.queue_high_bytes,
            low = tuning.queue_high_bytes / 4,
        );
        let path = std::env::temp_dir().join(format!("{prefix}.toml"));
        std::fs::write(&path, config).expect("config written");
        path
    }

    /// The consumer group the deduplicator uses.
    pub fn group(&self) -> String {
        format!("{}-group", self.prefix)
    }
}

/// Every event id in `topic`, decoded with whatever writer schema each
/// record names. Blocking: call it on a blocking thread.
pub fn read_event_ids(
    bootstrap: &str,
    topic: &str,
    codec: &Codec,
    runtime: &tokio::runtime::Handle,
) -> Vec<String> {
    let mut output = adpipe_loadtest::output::OutputIds::default();
    output
        .read_topic(bootstrap, topic, codec, runtime)
        .expect("output readable");
    assert_eq!(output.unreadable, 0, "every output record is an event");
    output.ids
}
