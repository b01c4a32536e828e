//! In-band progress: heartbeat records.
//!
//! Contract: a heartbeat is a record with the header [`HEADER`] holding a
//! watermark (decimal ms since the epoch) and no value, written into every
//! partition of a DC's topics by that DC's heartbeat publisher (`adpipe
//! heartbeat`). It says: the DC published everything with an event time at
//! or before the watermark. Because MirrorMaker 2 replicates it in order
//! with the data, a DC with no traffic still advances a merge, while a DC
//! whose replication is cut sends none — so "no heartbeat" means "unknown",
//! never "nothing happened" (see `crate::align`).
//!
//! The runtime consumes heartbeats itself: a step never sees one, its
//! offset is done at once, and in a time-aligned task it advances its
//! input's watermark. Other readers of DC topics skip them
//! ([`is_heartbeat`]).

/// Header carrying a heartbeat's watermark (decimal ms since the epoch).
pub const HEADER: &str = "adpipe.heartbeat";

/// The watermark of a heartbeat record, or `None` for any other record.
/// Only records without a value are checked, so data records cost one
/// comparison.
pub fn watermark<M: rdkafka::message::Message>(message: &M) -> Option<i64> {
    watermark_of(message.payload(), message.headers())
}

/// [`watermark`] from a record's value and headers.
pub(crate) fn watermark_of<H: rdkafka::message::Headers>(
    payload: Option<&[u8]>,
    headers: Option<&H>,
) -> Option<i64> {
    if payload.is_some() {
        return None;
    }
    headers?
        .iter()
        .find(|header| header.key == HEADER)
        .and_then(|header| header.value)
        .and_then(|value| std::str::from_utf8(value).ok())
        .and_then(|text| text.parse().ok())
}

/// Whether a record is a heartbeat (readers of DC topics skip these).
pub fn is_heartbeat<M: rdkafka::message::Message>(message: &M) -> bool {
    watermark(message).is_some()
}

/// Publishes a heartbeat into every partition of some topics of one DC
/// cluster, every `interval`, until stopped (the DC side of in-band
/// progress; `adpipe heartbeat` runs one).
///
/// The watermark is the wall clock minus `grace`: events are stamped by the
/// bidders when they happen and reach the broker within a moment, so by the
/// time `now − grace` is announced, every event up to it was published.
/// An event that breaks the promise (a bidder that buffered it longer) is
/// not lost: the merge processes it as late.
pub struct HeartbeatPublisher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How a heartbeat publisher runs.
#[derive(Debug, Clone)]
pub struct HeartbeatSettings {
    /// The DC cluster.
    pub bootstrap_servers: String,
    /// Topics whose every partition gets heartbeats.
    pub topics: Vec<String>,
    /// Time between heartbeats.
    pub interval: std::time::Duration,
    /// How far behind the wall clock the announced watermark stays.
    pub grace: std::time::Duration,
}

impl HeartbeatPublisher {
    /// Starts publishing on a thread of its own.
    pub fn start(settings: HeartbeatSettings) -> Result<Self, rdkafka::error::KafkaError> {
        use rdkafka::producer::BaseProducer;
        let producer: BaseProducer = crate::producer::producer_config(&settings.bootstrap_servers)
            .set("client.id", "adpipe-heartbeat")
            .create()?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::Builder::new()
                .name("adpipe-heartbeat".to_owned())
                .spawn(move || run(&producer, &settings, &stop))
                .map_err(|error| {
                    rdkafka::error::KafkaError::ClientCreation(format!(
                        "cannot start the heartbeat thread: {error}"
                    ))
                })?
        };
        Ok(HeartbeatPublisher {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops publishing (after flushing what was sent).
    pub fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HeartbeatPublisher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
    }
}

fn run(
    producer: &rdkafka::producer::BaseProducer,
    settings: &HeartbeatSettings,
    stop: &std::sync::atomic::AtomicBool,
) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, Producer};
    use std::time::{Duration, Instant};
    let mut partitions: Vec<(String, i32)> = Vec::new();
    let mut refreshed: Option<Instant> = None;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let started = Instant::now();
        // New topics and partitions are picked up every minute.
        if refreshed.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
            partitions = settings
                .topics
                .iter()
                .flat_map(|topic| {
                    let count = producer
                        .client()
                        .fetch_metadata(Some(topic), Duration::from_secs(5))
                        .ok()
                        .and_then(|metadata| {
                            metadata
                                .topics()
                                .first()
                                .map(|topic| topic.partitions().len())
                        })
                        .unwrap_or(0);
                    (0..count).map(move |partition| (topic.clone(), partition as i32))
                })
                .collect();
            refreshed = Some(Instant::now());
        }
        let grace_ms = i64::try_from(settings.grace.as_millis()).unwrap_or(i64::MAX);
        let watermark = crate::event_time::now_ms().saturating_sub(grace_ms);
        let text = watermark.to_string();
        for (topic, partition) in &partitions {
            let headers = OwnedHeaders::new().insert(Header {
                key: HEADER,
                value: Some(text.as_bytes()),
            });
            let record: BaseRecord<'_, (), ()> = BaseRecord::to(topic)
                .partition(*partition)
                .timestamp(watermark)
                .headers(headers);
            if let Err((error, _)) = producer.send(record) {
                tracing::warn!(%error, topic, partition, "heartbeat not sent");
            }
        }
        producer.poll(Duration::ZERO);
        while started.elapsed() < settings.interval
            && !stop.load(std::sync::atomic::Ordering::Acquire)
        {
            producer.poll(Duration::from_millis(50));
        }
    }
    let _ = producer.flush(Duration::from_secs(5));
}
