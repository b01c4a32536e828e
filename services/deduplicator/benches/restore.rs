//! A restart's memory: every partition of a deduplicator's changelog
//! restored at once, as after a kill -9 (no snapshot), the way its factory
//! does it (`ChangelogReader::restore` into a `DedupStore`, one blocking
//! thread a partition). Reports each variant's peak RSS and time, each in
//! a process of its own (a peak is per process): the restore consumers'
//! pre-fetch as set now (`adpipe_state::changelog::RESTORE_PREFETCH`) and
//! as it was (librdkafka's `queued.min.messages` default with 4 MiB).
//!
//! Needs the central cluster (`infra/kafka.sh start`). Run:
//! `cargo bench -p adpipe-deduplicator --bench restore [-- IDS PARTITIONS]`
//! (default: 4,300,000 ids over 36 partitions, what the 10M chaos run's
//! deduplicator restored mid-run).

use std::time::{Duration, Instant};

use adpipe_deduplicator::store::DedupStore;
use adpipe_state::changelog::ChangelogReader;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const HOUR_MS: i64 = 3_600_000;
const T0: i64 = 1_763_700_000_000;

/// The variants compared: name and the consumer settings it adds.
const VARIANTS: [(&str, &[(&str, &str)]); 2] = [
    (
        "before (librdkafka's defaults, 4 MiB queues)",
        &[
            ("queued.min.messages", "100000"),
            ("queued.max.messages.kbytes", "4096"),
            ("max.partition.fetch.bytes", "1048576"),
        ],
    ),
    ("now (RESTORE_PREFETCH)", &[]),
];

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    if args.first().map(String::as_str) == Some("child") {
        child(&args[1..]);
        return;
    }
    let number = |at: usize, default: u64| {
        args.get(at)
            .map_or(default, |text| text.parse().expect("a number"))
    };
    let ids = number(0, 4_300_000);
    let partitions = number(1, 36) as i32;
    let bootstrap = adpipe_testkit::kafka("central");
    let topic = adpipe_testkit::unique("bench-restore");
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(adpipe_testkit::create_topics(
            &bootstrap,
            &[(topic.as_str(), partitions, &[][..])],
        ));
    fill(&bootstrap, &topic, ids, partitions);
    println!(
        "restoring {ids} ids from {partitions} partitions of {topic} at once, each variant in its own process"
    );
    let mut peaks = Vec::new();
    for (variant, (name, _)) in VARIANTS.iter().enumerate() {
        let output = std::process::Command::new(std::env::current_exe().expect("this binary"))
            .args(["child", &variant.to_string(), &bootstrap, &topic])
            .arg(partitions.to_string())
            .output()
            .expect("the child runs");
        assert!(output.status.success(), "{output:?}");
        let report = String::from_utf8_lossy(&output.stdout);
        let fields: Vec<f64> = report
            .split_whitespace()
            .filter_map(|field| field.parse().ok())
            .collect();
        let [peak_mib, seconds, kept, state_mib] = fields[..] else {
            panic!("unreadable report {report:?}");
        };
        assert_eq!(kept as u64, ids, "every id restored");
        println!(
            "{name:<44} peak RSS {peak_mib:>6.0} MiB  {seconds:>5.1} s  (the state's tables: {state_mib:.0} MiB)"
        );
        peaks.push(peak_mib);
    }
    println!("now / before: {:.2}x peak RSS", peaks[1] / peaks[0]);
}

/// Writes `ids` changelog records (id, 8-byte first-seen time) round the
/// partitions, the way the deduplicator does (lz4 batches).
fn fill(bootstrap: &str, topic: &str, ids: u64, partitions: i32) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.size", "262144")
        .create()
        .expect("a producer");
    for n in 0..ids {
        let id = format!("imp-42-{n}-3f6c1d2e-9b7a-4c55-8e21-{n:012}");
        let time = (T0 + n as i64).to_be_bytes();
        let mut record = BaseRecord::<str, [u8]>::to(topic)
            .partition((n % partitions as u64) as i32)
            .key(&id)
            .payload(&time[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, returned)) => {
                    record = returned;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).expect("flushed");
}

/// One variant: restores every partition at once, prints peak MiB,
/// seconds, ids kept and the MiB their tables hold.
fn child(args: &[String]) {
    let [variant, bootstrap, topic, partitions, settings @ ..] = args else {
        panic!("child VARIANT BOOTSTRAP TOPIC PARTITIONS [KEY=VALUE…]");
    };
    let variant: usize = variant.parse().expect("a variant");
    let partitions: i32 = partitions.parse().expect("partitions");
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in VARIANTS[variant].1 {
        config.set(*key, *value);
    }
    // Settings to try by hand (`child 1 … key=value`; `at-once=N`: how
    // many partitions restore at once, all by default as in the service).
    let mut restores_at_once = usize::MAX;
    for setting in settings {
        match setting.split_once('=').expect("KEY=VALUE") {
            ("at-once", count) => restores_at_once = count.parse().expect("a count"),
            (key, value) => {
                config.set(key, value);
            }
        }
    }
    let group = adpipe_testkit::unique("bench-restore");
    let reader = ChangelogReader::new(config, &group).expect("a reader");
    let state_dir = std::env::temp_dir().join(&group);
    let started = Instant::now();
    let next = std::sync::atomic::AtomicI32::new(0);
    let stores: Vec<DedupStore> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..restores_at_once.min(partitions as usize))
            .map(|_| {
                let (reader, state_dir, next) = (&reader, &state_dir, &next);
                scope.spawn(move || {
                    let mut stores = Vec::new();
                    loop {
                        let partition = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if partition >= partitions {
                            return stores;
                        }
                        let path = state_dir.join(format!("{partition}.snapshot"));
                        let mut store = DedupStore::open(path, 24 * HOUR_MS, HOUR_MS);
                        reader
                            .restore(&mut store, topic, partition)
                            .expect("restored");
                        stores.push(store);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a restore thread"))
            .collect()
    });
    // The states are kept to the end: they are what a restarted
    // deduplicator holds.
    let kept: usize = stores.iter().map(|store| store.state().len()).sum();
    let state_mib = stores
        .iter()
        .map(|store| store.state().heap_bytes())
        .sum::<usize>() as f64
        / (1024.0 * 1024.0);
    let seconds = started.elapsed().as_secs_f64();
    let peak = adpipe_testkit::peak_rss_bytes(std::process::id()).expect("peak RSS");
    println!(
        "{:.1} {seconds:.2} {kept} {state_mib:.1}",
        peak as f64 / (1024.0 * 1024.0)
    );
}
