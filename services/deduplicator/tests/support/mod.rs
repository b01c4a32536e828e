//! Shared set-up of the deduplicator's broker tests: fresh topics and an
//! in-process registry on the real central cluster, and a config file.

use std::path::PathBuf;

use adpipe_schema_registry::{RegistrySettings, RunningRegistry};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};

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

impl Pipeline {
    /// Creates the topics (the input, output and changelog with `partitions`).
    pub async fn create(name: &str, partitions: i32) -> Pipeline {
        let bootstrap = adpipe_testkit::kafka("central");
        let prefix = adpipe_testkit::unique(name);
        let admin: AdminClient<_> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("admin");
        let names = ["in", "out", "log", "dlq"].map(|suffix| format!("{prefix}.{suffix}"));
        let topics = [
            NewTopic::new(&names[0], partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&names[1], partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&names[2], partitions, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact"),
            NewTopic::new(&names[3], 1, TopicReplication::Fixed(1)),
        ];
        for result in admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .expect("create")
        {
            result.expect("topic created");
        }
        let registry = adpipe_schema_registry::start(RegistrySettings::local(
            &bootstrap,
            &format!("{prefix}._schemas"),
        ))
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
window = "{window}"
allowed-lateness = "{lateness}"
[[deduplicator.stream]]
input = "{prefix}.in"
output = "{prefix}.out"
changelog = "{prefix}.log"
"#,
            registry_url = registry.url(),
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
