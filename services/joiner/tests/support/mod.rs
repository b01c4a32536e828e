//! Shared set-up of the joiner's broker tests: fresh topics and an
//! in-process registry on the real central cluster, a config file, a
//! scenario from the simulator, an independent model of the join rules, and
//! readers of what came out. Each test binary uses a part of it.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use adpipe_codec::{Codec, Encoder, RegistryClient, WriterSchema, split_header};
use adpipe_events::{Click, Conversion, EventKind, Impression, JoinedClick, JoinedConversion};
use adpipe_joiner::{HEADER_ORPHAN_KIND, HEADER_ORPHAN_REASON, JoinerSettings};
use adpipe_loadtest::joins::ExpectedJoins;
use adpipe_loadtest::{SimEvent, Simulation};
use adpipe_schema_registry::{RegistrySettings, RunningRegistry};
use rdkafka::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// Topics `<prefix>.{imp,clk,cnv}` (inputs), `{jclk,jcnv,orph}` (outputs),
/// `{implog,clklog}` (changelogs) and `dlq`, a registry and a config.
pub struct Rig {
    pub bootstrap: String,
    pub prefix: String,
    pub registry: RunningRegistry,
    pub config: std::path::PathBuf,
    pub partitions: i32,
    producer: ThreadedProducer<DefaultProducerContext>,
    impressions: Encoder<Impression>,
    clicks: Encoder<Click>,
    conversions: Encoder<Conversion>,
}

impl Rig {
    pub async fn new(name: &str, partitions: i32, wait: &str) -> Rig {
        let bootstrap = adpipe_testkit::kafka("central");
        let prefix = adpipe_testkit::unique(name);
        let topic = |suffix: &str| format!("{prefix}.{suffix}");
        let names: Vec<String> = [
            "imp", "clk", "cnv", "jclk", "jcnv", "orph", "implog", "clklog", "dlq",
        ]
        .iter()
        .map(|suffix| topic(suffix))
        .collect();
        let compact: &[(&str, &str)] = &[("cleanup.policy", "compact")];
        let specs: Vec<adpipe_testkit::TopicSpec<'_>> = names
            .iter()
            .map(|name| {
                let config = if name.ends_with("log") { compact } else { &[] };
                let count = if name.ends_with("dlq") { 1 } else { partitions };
                (name.as_str(), count, config)
            })
            .collect();
        adpipe_testkit::create_topics(&bootstrap, &specs).await;
        let registry =
            adpipe_schema_registry::start(RegistrySettings::local(&bootstrap, &topic("_schemas")))
                .await
                .expect("registry");
        // max-idle: the joiner's default (5 s). With 1 s, a machine running
        // other tests beside this one (infra/run-tests.py) stalled the
        // publisher's clicks past it: a conversion went ahead of its click
        // and was attributed to an older one — the test's expectations
        // assume the alignment that heartbeats or a patient max-idle give.
        let config = format!(
            r#"
[kafka]
bootstrap-servers = "{bootstrap}"
group-id = "{prefix}-group"
session-timeout = "6s"
[registry]
url = "{url}"
[runtime]
commit-interval = "200ms"
revoke-deadline = "3s"
dead-letter-topic = "{prefix}.dlq"
max-idle = "5s"
[http]
listen = "127.0.0.1:0"
[joiner]
impressions = "{prefix}.imp"
clicks = "{prefix}.clk"
conversions = "{prefix}.cnv"
joined-clicks = "{prefix}.jclk"
joined-conversions = "{prefix}.jcnv"
orphans = "{prefix}.orph"
impressions-changelog = "{prefix}.implog"
clicks-changelog = "{prefix}.clklog"
wait = "{wait}"
checkpoint-interval = "2s"
"#,
            url = registry.url()
        );
        let path = std::env::temp_dir().join(format!("{prefix}.toml"));
        std::fs::write(&path, config).expect("config written");
        let codec = Codec::new(RegistryClient::new(&registry.url()).expect("client"));
        let subject = |suffix: &str| format!("{prefix}.{suffix}-value");
        Rig {
            impressions: codec
                .encoder(&subject("imp"), EventKind::Impression.schema())
                .await
                .expect("encoder"),
            clicks: codec
                .encoder(&subject("clk"), EventKind::Click.schema())
                .await
                .expect("encoder"),
            conversions: codec
                .encoder(&subject("cnv"), EventKind::Conversion.schema())
                .await
                .expect("encoder"),
            producer: ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("linger.ms", "20")
                .create()
                .expect("producer"),
            bootstrap,
            prefix,
            registry,
            config: path,
            partitions,
        }
    }

    /// A new in-process instance's settings with its own empty state
    /// directory (a fresh host: state reaches it only through the changelogs).
    pub fn settings(&self) -> JoinerSettings {
        let mut settings =
            JoinerSettings::load(Some(&self.config), std::iter::empty()).expect("valid");
        settings.state_dir = self.fresh_state_dir();
        settings
    }

    pub fn fresh_state_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(adpipe_testkit::unique(&format!("{}-state", self.prefix)))
    }

    pub fn topic(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }

    /// Queues one event on its kind's topic, partitioned by user (the
    /// fixed partitioning every stage keeps). Blocking when the queue is full.
    pub fn send(&self, event: &SimEvent) {
        let (suffix, value) = match event {
            SimEvent::Impression(e) => ("imp", self.impressions.encode(e)),
            SimEvent::Click(e) => ("clk", self.clicks.encode(e)),
            SimEvent::Conversion(e) => ("cnv", self.conversions.encode(e)),
        };
        let value = value.expect("encodes");
        let user = event.user_id();
        let partition = i32::try_from(
            user.bytes().map(u32::from).sum::<u32>() % self.partitions.unsigned_abs(),
        )
        .expect("fits");
        let topic = self.topic(suffix);
        let record = BaseRecord::to(&topic)
            .partition(partition)
            .key(user)
            .payload(&value);
        adpipe_testkit::queue_blocking(&self.producer, record);
    }

    /// Queues raw bytes on `<prefix>.<suffix>` (poison for the tests).
    pub fn send_raw(&self, suffix: &str, partition: i32, key: &str, value: &[u8]) {
        let topic = self.topic(suffix);
        let record = BaseRecord::to(&topic)
            .partition(partition)
            .key(key)
            .payload(value);
        self.producer
            .send(record)
            .map_err(|(error, _)| error)
            .expect("queued");
    }

    /// Waits until everything queued is acknowledged.
    pub fn flush(&self) {
        self.producer
            .flush(Duration::from_secs(120))
            .expect("flushed");
    }

    /// Publishes and waits for the acks (blocking).
    pub fn publish(&self, events: &[SimEvent]) {
        for event in events {
            self.send(event);
        }
        self.flush();
    }

    pub fn read(&self, suffix: &str) -> Vec<rdkafka::message::OwnedMessage> {
        adpipe_testkit::read_all(&self.bootstrap, &self.topic(suffix))
    }

    pub fn group(&self) -> String {
        format!("{}-group", self.prefix)
    }

    /// Whether the group committed every input partition to its end.
    pub fn committed_to_end(&self, inputs: &[&str]) -> bool {
        inputs.iter().all(|suffix| {
            adpipe_testkit::committed_to_end(&self.bootstrap, &self.group(), &self.topic(suffix))
        })
    }

    /// The group's committed offsets summed over the inputs.
    pub fn committed_sum(&self) -> i64 {
        ["imp", "clk", "cnv"]
            .iter()
            .flat_map(|suffix| {
                adpipe_testkit::committed_offsets(
                    &self.bootstrap,
                    &self.group(),
                    &self.topic(suffix),
                )
            })
            .flatten()
            .sum()
    }
}

pub use adpipe_testkit::wait_for;

fn decode<T: serde::de::DeserializeOwned>(
    kind: EventKind,
    message: &rdkafka::message::OwnedMessage,
) -> T {
    let (_, datum) = split_header(message.payload().expect("a value")).expect("framed");
    WriterSchema::parse(0, kind.schema().to_owned())
        .expect("schema")
        .decode_datum(datum)
        .expect("decodes")
}

/// Every output, by event id, every copy kept.
#[derive(Default)]
pub struct Produced {
    pub clicks: HashMap<String, Vec<JoinedClick>>,
    pub conversions: HashMap<String, Vec<JoinedConversion>>,
    pub orphans: HashMap<String, Vec<String>>,
}

impl Produced {
    /// Outputs beyond the first of each event (re-emitted after a crash).
    pub fn copies(&self) -> usize {
        let extra = |count: usize| count.saturating_sub(1);
        self.clicks.values().map(|c| extra(c.len())).sum::<usize>()
            + self
                .conversions
                .values()
                .map(|c| extra(c.len()))
                .sum::<usize>()
            + self.orphans.values().map(|c| extra(c.len())).sum::<usize>()
    }
}

/// Reads the three outputs (blocking).
pub fn produced(rig: &Rig) -> Produced {
    let mut out = Produced::default();
    for message in rig.read("jclk") {
        let joined: JoinedClick = decode(EventKind::JoinedClick, &message);
        out.clicks
            .entry(joined.click.event_id.clone())
            .or_default()
            .push(joined);
    }
    for message in rig.read("jcnv") {
        let joined: JoinedConversion = decode(EventKind::JoinedConversion, &message);
        out.conversions
            .entry(joined.conversion.event_id.clone())
            .or_default()
            .push(joined);
    }
    for message in rig.read("orph") {
        let reason = adpipe_testkit::header_text(&message, HEADER_ORPHAN_REASON).expect("a reason");
        let id = match adpipe_testkit::header_text(&message, HEADER_ORPHAN_KIND).as_deref() {
            Some("click") => decode::<Click>(EventKind::Click, &message).event_id,
            Some("conversion") => decode::<Conversion>(EventKind::Conversion, &message).event_id,
            other => panic!("orphan kind {other:?}"),
        };
        out.orphans.entry(id).or_default().push(reason);
    }
    out
}

/// Every expected output came, every copy of it equal to the expectation
/// field by field (a re-emitted join never differs), and nothing else.
pub fn assert_matches(expected: &ExpectedJoins, produced: &Produced) {
    let mut problems = Vec::new();
    fn check<T: PartialEq + std::fmt::Debug>(
        what: &str,
        expected: &HashMap<String, T>,
        produced: &HashMap<String, Vec<T>>,
        problems: &mut Vec<String>,
    ) {
        for (id, want) in expected {
            match produced.get(id) {
                None => problems.push(format!("{what} {id}: missing")),
                Some(copies) => {
                    for got in copies.iter().filter(|got| *got != want) {
                        problems.push(format!("{what} {id}: got {got:?}, expected {want:?}"));
                    }
                }
            }
        }
    }
    check(
        "joined click",
        &expected.clicks,
        &produced.clicks,
        &mut problems,
    );
    check(
        "joined conversion",
        &expected.conversions,
        &produced.conversions,
        &mut problems,
    );
    let reasons: HashMap<String, String> = expected
        .orphans
        .iter()
        .map(|(id, reason)| (id.clone(), (*reason).to_owned()))
        .collect();
    check("orphan", &reasons, &produced.orphans, &mut problems);
    let known: HashSet<&String> = expected
        .clicks
        .keys()
        .chain(expected.conversions.keys())
        .chain(expected.orphans.keys())
        .collect();
    for (what, ids) in [
        ("joined click", produced.clicks.keys().collect::<Vec<_>>()),
        ("joined conversion", produced.conversions.keys().collect()),
        ("orphan", produced.orphans.keys().collect()),
    ] {
        for id in ids {
            if !known.contains(id) || (what == "orphan") != expected.orphans.contains_key(id) {
                // An orphan's reason says which partner it did not find.
                let reasons = produced.orphans.get(id).filter(|_| what == "orphan");
                problems.push(format!("{what} {id}: unexpected {reasons:?}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems, first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
}

/// The simulation's unique events (few users, so that they click and
/// convert repeatedly: last-click attribution needs a history), with the
/// impressions of every 50th click withheld (their clicks, and conversions
/// naming them, must become orphans) and every 10th click published before
/// its impression.
pub fn scenario(impressions: u64) -> Vec<SimEvent> {
    // Few users, so that they click and convert repeatedly (last-click
    // attribution needs a history).
    let simulation = Simulation {
        impressions,
        users: 300,
        duplicate_rate: 0.0,
        ..Simulation::default()
    };
    let (publications, _truth) = simulation.generate();
    let events: Vec<SimEvent> = publications
        .into_iter()
        .filter(|p| !p.duplicate)
        .map(|p| p.event)
        .collect();
    let mut withheld = HashSet::new();
    let mut early = HashSet::new();
    for (n, click) in events
        .iter()
        .filter_map(|e| match e {
            SimEvent::Click(c) => Some(c),
            _ => None,
        })
        .enumerate()
    {
        if n % 50 == 7 {
            withheld.insert(click.impression_id.clone());
        } else if n % 10 == 3 {
            early.insert(click.impression_id.clone());
        }
    }
    let mut ordered = Vec::with_capacity(events.len());
    let mut held_back: HashMap<String, SimEvent> = HashMap::new();
    for event in events {
        match &event {
            SimEvent::Impression(i) if withheld.contains(&i.event_id) => {}
            SimEvent::Impression(i) if early.contains(&i.event_id) => {
                held_back.insert(i.event_id.clone(), event.clone());
            }
            SimEvent::Click(c) if early.contains(&c.impression_id) => {
                // The click first, its impression right after (another DC
                // replicated it later), within the wait.
                ordered.push(event.clone());
                if let Some(impression) = held_back.remove(&c.impression_id) {
                    ordered.push(impression);
                }
            }
            _ => ordered.push(event),
        }
    }
    ordered.extend(held_back.into_values());
    ordered
}
