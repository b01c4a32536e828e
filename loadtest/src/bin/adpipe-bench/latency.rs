//! End-to-end latency at a fixed rate: events are stamped with the moment
//! they are published (event_time = now) and readers on the input and on
//! the service's output record `now − event_time` as each record arrives.
//! Publisher and readers share this process's clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use adpipe_codec::Codec;
use adpipe_loadtest::Publication;
use adpipe_loadtest::publish::SimPublisher;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

/// Latency percentiles of one reader, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Records measured (after the warm-up).
    pub records: usize,
    /// Median.
    pub p50_ms: i64,
    /// 99th percentile.
    pub p99_ms: i64,
    /// 99.9th percentile.
    pub p999_ms: i64,
    /// Largest.
    pub max_ms: i64,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

impl Percentiles {
    pub fn of(mut samples: Vec<i64>) -> Percentiles {
        samples.sort_unstable();
        let at = |quantile: f64| {
            let index =
                ((samples.len() as f64 * quantile) as usize).min(samples.len().saturating_sub(1));
            samples.get(index).copied().unwrap_or(0)
        };
        Percentiles {
            records: samples.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: samples.last().copied().unwrap_or(0),
        }
    }
}

/// The time of a record: an event's own, a joined conversion's
/// conversion's, a joined click's click's.
#[derive(serde::Deserialize)]
struct Stamp {
    #[serde(default)]
    event_time: Option<i64>,
    #[serde(default)]
    conversion: Option<InnerStamp>,
    #[serde(default)]
    click: Option<InnerStamp>,
}

#[derive(serde::Deserialize)]
struct InnerStamp {
    event_time: i64,
}

impl Stamp {
    fn event_time(&self) -> Option<i64> {
        self.event_time
            .or(self.conversion.as_ref().map(|inner| inner.event_time))
            .or(self.click.as_ref().map(|inner| inner.event_time))
    }
}

/// Reads `topic` from its end until `stop`, measuring records whose event
/// time is at or after `measure_from_ms` (the warm-up is left out).
fn read_latencies(
    bootstrap: &str,
    topic: &str,
    codec: &Codec,
    runtime: &tokio::runtime::Handle,
    measure_from_ms: i64,
    ready: &AtomicBool,
    stop: &AtomicBool,
) -> Result<Vec<i64>, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", reader_group(topic))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .map_err(|error| error.to_string())?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..adpipe_testkit::partition_count(&consumer, topic) {
        assignment
            .add_partition_offset(topic, partition, Offset::End)
            .map_err(|error| error.to_string())?;
    }
    consumer
        .assign(&assignment)
        .map_err(|error| error.to_string())?;
    let mut samples = Vec::new();
    let mut first_poll = true;
    while !stop.load(Ordering::Acquire) {
        let polled = consumer.poll(Duration::from_millis(100));
        if first_poll {
            // The End offsets are resolved by the first fetch.
            first_poll = false;
            ready.store(true, Ordering::Release);
        }
        let Some(message) = polled else { continue };
        let message = message.map_err(|error| format!("reading {topic}: {error}"))?;
        let received = now_ms();
        let Ok((schema_id, datum)) =
            adpipe_codec::split_header(message.payload().unwrap_or_default())
        else {
            continue;
        };
        let writer = match codec.cached_writer_schema(schema_id) {
            Some(writer) => writer,
            None => runtime
                .block_on(codec.writer_schema(schema_id))
                .map_err(|error| error.to_string())?,
        };
        let stamp: Stamp = writer
            .decode_datum(datum)
            .map_err(|error| error.to_string())?;
        let Some(event_time) = stamp.event_time() else {
            return Err(format!("{topic}: a record without an event time"));
        };
        if event_time >= measure_from_ms {
            samples.push(received - event_time);
        }
    }
    Ok(samples)
}

fn reader_group(topic: &str) -> String {
    format!("bench-latency-{topic}-{}", now_ms())
}

/// What a latency phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRun {
    /// Target publish rate (records/s).
    pub target_rate: f64,
    /// Achieved publish rate.
    pub published_rate: f64,
    /// Publisher → broker → reader of the input topic (one hop).
    pub input: Percentiles,
    /// Publisher → broker → service → broker → reader of its output.
    pub output: Percentiles,
}

/// Publishes `publications` (each to `input_of(publication)`) at `rate`
/// per second for about `duration`, reading `input` (one hop) and `output`
/// meanwhile.
#[allow(clippy::too_many_arguments)]
pub fn run(
    bootstrap: &str,
    publisher: &SimPublisher,
    codec: Arc<Codec>,
    publications: Vec<Publication>,
    input_of: &dyn Fn(&Publication) -> String,
    input: &str,
    output: &str,
    rate: f64,
    duration: Duration,
) -> Result<LatencyRun, String> {
    let runtime = tokio::runtime::Handle::current();
    let warm_up = Duration::from_secs(2);
    let measure_from_ms = now_ms() + warm_up.as_millis() as i64 + 1000;
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = [input, output]
        .into_iter()
        .map(|topic| {
            let (bootstrap, topic, codec, runtime, stop) = (
                bootstrap.to_owned(),
                topic.to_owned(),
                Arc::clone(&codec),
                runtime.clone(),
                Arc::clone(&stop),
            );
            let ready = Arc::new(AtomicBool::new(false));
            let reader_ready = Arc::clone(&ready);
            let thread = std::thread::spawn(move || {
                read_latencies(
                    &bootstrap,
                    &topic,
                    &codec,
                    &runtime,
                    measure_from_ms,
                    &reader_ready,
                    &stop,
                )
            });
            (thread, ready)
        })
        .collect();
    while !readers
        .iter()
        .all(|(_, ready)| ready.load(Ordering::Acquire))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut pacer = adpipe_loadtest::pace::Pacer::new(Some(rate));
    for mut publication in publications {
        if pacer.elapsed() >= duration {
            break;
        }
        pacer.wait_turn();
        publication.event.set_event_time(now_ms());
        publisher
            .publish(&publication, &input_of(&publication))
            .map_err(|error| error.to_string())?;
    }
    let published_rate = pacer.achieved_rate();
    publisher
        .flush(Duration::from_secs(30))
        .map_err(|error| error.to_string())?;
    std::thread::sleep(Duration::from_secs(3)); // let the tail arrive
    stop.store(true, Ordering::Release);
    let mut results = Vec::new();
    for (thread, _) in readers {
        results.push(
            thread
                .join()
                .map_err(|_| "latency reader panicked".to_owned())??,
        );
    }
    let output_samples = results.pop().unwrap_or_default();
    let input_samples = results.pop().unwrap_or_default();
    Ok(LatencyRun {
        target_rate: rate,
        published_rate,
        input: Percentiles::of(input_samples),
        output: Percentiles::of(output_samples),
    })
}

/// The event time of every record of `topic` from the offsets `from`
/// (partition, offset) to the partitions' ends now, as (partition, offset,
/// event time): an event's own, a joined conversion's conversion's, a
/// joined click's click's.
pub async fn event_times(
    bootstrap: &str,
    topic: &str,
    from: &[(i32, i64)],
    codec: &Codec,
) -> Result<Vec<(i32, i64, i64)>, String> {
    let ends = crate::service::topic_ends(bootstrap, topic)?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", reader_group(topic))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|error| error.to_string())?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0;
    for &(partition, offset) in from {
        let end = ends
            .iter()
            .find(|(p, _)| *p == partition)
            .map_or(offset, |(_, end)| *end);
        if end > offset {
            remaining += end - offset;
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(offset))
                .map_err(|error| error.to_string())?;
        }
    }
    if remaining == 0 {
        return Ok(Vec::new());
    }
    consumer
        .assign(&assignment)
        .map_err(|error| error.to_string())?;
    let mut times = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while remaining > 0 {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "{topic}: {remaining} records not read in 2 minutes"
            ));
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.map_err(|error| format!("reading {topic}: {error}"))?;
        let end = ends
            .iter()
            .find(|(p, _)| *p == message.partition())
            .map_or(0, |(_, end)| *end);
        if message.offset() >= end {
            continue;
        }
        remaining -= 1;
        let (schema_id, datum) = adpipe_codec::split_header(message.payload().unwrap_or_default())
            .map_err(|error| format!("{topic}: {error}"))?;
        let writer = codec
            .writer_schema(schema_id)
            .await
            .map_err(|error| error.to_string())?;
        let stamp: Stamp = writer
            .decode_datum(datum)
            .map_err(|error| error.to_string())?;
        let event_time = stamp
            .event_time()
            .ok_or_else(|| format!("{topic}: a record without an event time"))?;
        times.push((message.partition(), message.offset(), event_time));
    }
    Ok(times)
}
