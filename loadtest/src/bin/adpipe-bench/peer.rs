//! The Kafka Streams peer (`loadtest/kstreams`): adpipe's pass-through,
//! deduplicator and whole chain written as a Kafka Streams user would, run as a JVM on the
//! same broker and backlog, so the figures compare as ratios.

use std::path::PathBuf;
use std::process::Command;

use crate::service::Service;

/// How to start the peer: the JVM and the classpath `build.sh` printed.
pub struct KafkaStreamsPeer {
    pub java: PathBuf,
    pub classpath: String,
    pub threads: u32,
    pub state_dir: PathBuf,
}

/// One job of the peer and where it reads and writes.
pub struct PeerJob<'a> {
    /// `passthrough`, `dedup`, `merge`, `join` or `count`.
    pub job: &'static str,
    /// The application id, which is also its consumer group.
    pub application_id: &'a str,
    pub input: &'a str,
    pub output: &'a str,
    /// Its last argument: the dedup's window in hours, the join's and the
    /// count's schemas directory (ignored by the others).
    pub option: &'a str,
}

impl KafkaStreamsPeer {
    /// Starts `job`; `registry_url` serves the dedup's writer schemas.
    pub fn spawn(
        &self,
        name: &'static str,
        bootstrap: &str,
        job: &PeerJob<'_>,
        registry_url: &str,
    ) -> Result<Service, String> {
        let mut command = Command::new(&self.java);
        command
            .arg("-cp")
            .arg(&self.classpath)
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
            // Its advice about a handler for global tables, which it has not.
            .arg("-Dorg.slf4j.simpleLogger.log.org.apache.kafka.streams.StreamsConfig=error")
            .arg("io.adpipe.peer.PeerJob")
            .args([
                job.job,
                bootstrap,
                job.application_id,
                job.input,
                job.output,
            ])
            .arg(&self.state_dir)
            .arg(self.threads.to_string())
            .args([registry_url, job.option]);
        Service::spawn_command(name, command)
    }
}
