//! The joiner on the real runtime against the real central cluster, checked
//! against the simulator's ground truth and an independent model of the
//! join rules (design.md): every expected join with the right embedded
//! impression and click (field by field), no unexpected join, orphans with
//! the right reason — and the state handed over to a new instance with an
//! empty state directory (a fresh host) through the changelogs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use adpipe_codec::{Codec, Encoder, RegistryClient, WriterSchema, split_header};
use adpipe_events::{
    Attribution, Click, Conversion, EventKind, Impression, JoinedClick, JoinedConversion,
};
use adpipe_joiner::{HEADER_ORPHAN_REASON, JoinerSettings};
use adpipe_loadtest::{SimEvent, Simulation};
use adpipe_schema_registry::{RegistrySettings, RunningRegistry};
use rdkafka::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const PARTITIONS: i32 = 3;

struct Rig {
    bootstrap: String,
    prefix: String,
    registry: RunningRegistry,
    config: std::path::PathBuf,
    producer: FutureProducer,
    impressions: Encoder<Impression>,
    clicks: Encoder<Click>,
    conversions: Encoder<Conversion>,
}

impl Rig {
    async fn new() -> Rig {
        let bootstrap = adpipe_testkit::kafka("central");
        let prefix = adpipe_testkit::unique("joiner");
        let topic = |suffix: &str| format!("{prefix}.{suffix}");
        let names: Vec<String> = ["imp", "clk", "cnv", "jclk", "jcnv", "orph", "implog", "clklog", "dlq"]
            .iter()
            .map(|suffix| topic(suffix))
            .collect();
        let compact: &[(&str, &str)] = &[("cleanup.policy", "compact")];
        let specs: Vec<adpipe_testkit::TopicSpec<'_>> = names
            .iter()
            .map(|name| {
                let config = if name.ends_with("log") { compact } else { &[] };
                let partitions = if name.ends_with("dlq") { 1 } else { PARTITIONS };
                (name.as_str(), partitions, config)
            })
            .collect();
        adpipe_testkit::create_topics(&bootstrap, &specs).await;
        let registry = adpipe_schema_registry::start(RegistrySettings::local(
            &bootstrap,
            &topic("_schemas"),
        ))
        .await
        .expect("registry");
        let config = format!(
            r#"
[kafka]
bootstrap-servers = "{bootstrap}"
group-id = "{prefix}-group"
session-timeout = "10s"
[registry]
url = "{url}"
[runtime]
commit-interval = "200ms"
revoke-deadline = "5s"
dead-letter-topic = "{prefix}.dlq"
max-idle = "1s"
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
wait = "3s"
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
            clicks: codec.encoder(&subject("clk"), EventKind::Click.schema()).await.expect("encoder"),
            conversions: codec
                .encoder(&subject("cnv"), EventKind::Conversion.schema())
                .await
                .expect("encoder"),
            producer: ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
                .expect("producer"),
            bootstrap,
            prefix,
            registry,
            config: path,
        }
    }

    /// A new instance's settings with its own empty state directory (a
    /// fresh host: its state reaches it only through the changelogs).
    fn settings(&self) -> JoinerSettings {
        let mut settings =
            JoinerSettings::load(Some(&self.config), std::iter::empty()).expect("valid");
        settings.state_dir = std::env::temp_dir().join(adpipe_testkit::unique(&format!("{}-state", self.prefix)));
        settings
    }

    /// Publishes events to their kind's topic, partitioned by user (the
    /// fixed partitioning every stage keeps).
    async fn publish(&self, events: &[SimEvent]) {
        let mut deliveries = Vec::new();
        for event in events {
            let (suffix, value) = match event {
                SimEvent::Impression(e) => ("imp", self.impressions.encode(e)),
                SimEvent::Click(e) => ("clk", self.clicks.encode(e)),
                SimEvent::Conversion(e) => ("cnv", self.conversions.encode(e)),
            };
            let value = value.expect("encodes");
            let user = event.user_id().to_owned();
            let partition = i32::try_from(
                user.bytes().map(u32::from).sum::<u32>() % PARTITIONS.unsigned_abs(),
            )
            .expect("fits");
            let topic = format!("{}.{suffix}", self.prefix);
            // Enqueued now (send_result), awaited in bulk: awaiting each
            // send in turn would wait out linger.ms per record.
            let delivery = self
                .producer
                .send_result(FutureRecord::to(&topic).partition(partition).key(&user).payload(&value))
                .map_err(|(error, _)| error)
                .expect("queued");
            deliveries.push(delivery);
            if deliveries.len() >= 5_000 {
                for delivery in deliveries.drain(..) {
                    delivery.await.expect("not cancelled").expect("delivered");
                }
            }
        }
        for delivery in deliveries {
            delivery.await.expect("not cancelled").expect("delivered");
        }
    }

    fn read(&self, suffix: &str) -> Vec<rdkafka::message::OwnedMessage> {
        adpipe_testkit::read_all(&self.bootstrap, &format!("{}.{suffix}", self.prefix))
    }
}

/// What the rules say must come out, computed from the published events
/// alone (not with the joiner's code).
#[derive(Default)]
struct Expected {
    clicks: HashMap<String, JoinedClick>,
    conversions: HashMap<String, JoinedConversion>,
    orphans: HashMap<String, &'static str>,
}

fn expected(published: &[SimEvent]) -> Expected {
    let impressions: HashMap<&str, &Impression> = published
        .iter()
        .filter_map(|event| match event {
            SimEvent::Impression(impression) => Some((impression.event_id.as_str(), impression)),
            _ => None,
        })
        .collect();
    let mut expected = Expected::default();
    // Joined clicks per user and advertiser, for last-click attribution.
    let mut by_user: HashMap<(&str, i64), Vec<&JoinedClick>> = HashMap::new();
    let mut joined: BTreeMap<String, JoinedClick> = BTreeMap::new();
    for event in published {
        if let SimEvent::Click(click) = event {
            match impressions.get(click.impression_id.as_str()) {
                Some(impression) => {
                    joined.insert(
                        click.event_id.clone(),
                        JoinedClick { click: click.clone(), impression: (*impression).clone() },
                    );
                }
                None => {
                    expected.orphans.insert(click.event_id.clone(), "impression_not_found");
                }
            }
        }
    }
    for click in joined.values() {
        by_user
            .entry((click.click.user_id.as_str(), click.impression.advertiser_id))
            .or_default()
            .push(click);
    }
    for event in published {
        let SimEvent::Conversion(conversion) = event else { continue };
        let attributed = match &conversion.click_id {
            Some(click_id) => match joined.get(click_id) {
                Some(click) => Some((click, Attribution::ClickId)),
                None if expected.orphans.contains_key(click_id) => {
                    expected.orphans.insert(conversion.event_id.clone(), "impression_not_found");
                    continue;
                }
                None => {
                    expected.orphans.insert(conversion.event_id.clone(), "click_not_found");
                    continue;
                }
            },
            None => by_user
                .get(&(conversion.user_id.as_str(), conversion.advertiser_id))
                .and_then(|clicks| {
                    clicks
                        .iter()
                        .filter(|c| c.click.event_time <= conversion.event_time)
                        .max_by(|a, b| {
                            (a.click.event_time, &a.click.event_id).cmp(&(b.click.event_time, &b.click.event_id))
                        })
                })
                .map(|click| (*click, Attribution::LastClick)),
        };
        match attributed {
            Some((click, attribution)) => {
                expected.conversions.insert(
                    conversion.event_id.clone(),
                    JoinedConversion {
                        conversion: conversion.clone(),
                        click: click.click.clone(),
                        impression: click.impression.clone(),
                        attribution,
                    },
                );
            }
            None => {
                expected.orphans.insert(conversion.event_id.clone(), "no_click");
            }
        }
    }
    expected.clicks = joined.into_iter().collect();
    expected
}

fn decode<T: serde::de::DeserializeOwned>(kind: EventKind, message: &rdkafka::message::OwnedMessage) -> T {
    let (_, datum) = split_header(message.payload().expect("a value")).expect("framed");
    WriterSchema::parse(0, kind.schema().to_owned())
        .expect("schema")
        .decode_datum(datum)
        .expect("decodes")
}

/// What came out, by event id (the last copy of each; copies counted).
struct Produced {
    clicks: HashMap<String, JoinedClick>,
    conversions: HashMap<String, JoinedConversion>,
    orphans: HashMap<String, String>,
    copies: usize,
}

fn produced(rig: &Rig) -> Produced {
    let mut out = Produced { clicks: HashMap::new(), conversions: HashMap::new(), orphans: HashMap::new(), copies: 0 };
    for message in rig.read("jclk") {
        let joined: JoinedClick = decode(EventKind::JoinedClick, &message);
        out.copies += usize::from(out.clicks.insert(joined.click.event_id.clone(), joined).is_some());
    }
    for message in rig.read("jcnv") {
        let joined: JoinedConversion = decode(EventKind::JoinedConversion, &message);
        out.copies += usize::from(out.conversions.insert(joined.conversion.event_id.clone(), joined).is_some());
    }
    for message in rig.read("orph") {
        let reason = adpipe_testkit::header_text(&message, HEADER_ORPHAN_REASON).expect("a reason");
        let id = match adpipe_testkit::header_text(&message, "adpipe.orphan.kind").as_deref() {
            Some("click") => decode::<Click>(EventKind::Click, &message).event_id,
            Some("conversion") => decode::<Conversion>(EventKind::Conversion, &message).event_id,
            other => panic!("orphan kind {other:?}"),
        };
        out.copies += usize::from(out.orphans.insert(id, reason).is_some());
    }
    out
}

/// Compares field by field; names the first differences.
fn assert_matches(expected: &Expected, produced: &Produced) {
    let mut problems = Vec::new();
    for (id, join) in &expected.clicks {
        match produced.clicks.get(id) {
            Some(got) if got == join => {}
            Some(got) => problems.push(format!("click {id}: got {got:?}, expected {join:?}")),
            None => problems.push(format!("click {id}: no join")),
        }
    }
    for (id, join) in &expected.conversions {
        match produced.conversions.get(id) {
            Some(got) if got == join => {}
            Some(got) => problems.push(format!("conversion {id}: got click {} ({:?}), expected {} ({:?})", got.click.event_id, got.attribution, join.click.event_id, join.attribution)),
            None => problems.push(format!("conversion {id}: no join")),
        }
    }
    for (id, reason) in &expected.orphans {
        match produced.orphans.get(id) {
            Some(got) if got == reason => {}
            other => problems.push(format!("orphan {id}: got {other:?}, expected {reason}")),
        }
    }
    let known: HashSet<&String> = expected.clicks.keys().chain(expected.conversions.keys()).chain(expected.orphans.keys()).collect();
    for id in produced.clicks.keys().chain(produced.conversions.keys()).chain(produced.orphans.keys()) {
        if !known.contains(id) {
            problems.push(format!("{id}: unexpected output"));
        }
    }
    assert!(problems.is_empty(), "{} problems, first: {:#?}", problems.len(), &problems[..problems.len().min(10)]);
}

/// The simulation's unique events, with the impressions of every 50th
/// click withheld (their clicks, and conversions naming them, must become
/// orphans) and every 10th click published before its impression.
fn scenario(impressions: u64) -> (Vec<SimEvent>, Vec<SimEvent>) {
    // Few users, so that they click and convert repeatedly (last-click
    // attribution needs a history).
    let simulation = Simulation { impressions, users: 300, duplicate_rate: 0.0, ..Simulation::default() };
    let (publications, _truth) = simulation.generate();
    let events: Vec<SimEvent> = publications.into_iter().filter(|p| !p.duplicate).map(|p| p.event).collect();
    let mut withheld = HashSet::new();
    let mut early = HashSet::new();
    for (n, click) in events.iter().filter_map(|e| match e { SimEvent::Click(c) => Some(c), _ => None }).enumerate() {
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
    let half = ordered.len() / 2;
    let second = ordered.split_off(half);
    (ordered, second)
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_match_the_rules_and_survive_a_handover_to_a_fresh_host() {
    let rig = Rig::new().await;
    let (first_half, second_half) = scenario(40_000);
    let all: Vec<SimEvent> = first_half.iter().chain(&second_half).cloned().collect();
    let expected = expected(&all);
    assert!(expected.clicks.len() > 300 && expected.orphans.len() > 5 && expected.conversions.len() > 50,
        "a meaningful scenario: {} clicks, {} conversions, {} orphans", expected.clicks.len(), expected.conversions.len(), expected.orphans.len());

    let started = Instant::now();
    rig.publish(&first_half).await;
    eprintln!("{:?}: first half published", started.elapsed());
    let first = adpipe_joiner::start(rig.settings()).expect("starts");
    let group = format!("{}-group", rig.prefix);
    let (bootstrap, imp) = (rig.bootstrap.clone(), format!("{}.imp", rig.prefix));
    let committed = move || adpipe_testkit::committed_to_end(&bootstrap, &group, &imp);
    tokio::task::block_in_place(|| wait_for("the first half", Duration::from_secs(120), committed.clone()));
    eprintln!("{:?}: first half committed", started.elapsed());
    first.stop().await.expect("clean stop");
    eprintln!("{:?}: first instance stopped", started.elapsed());

    // A new instance on a fresh host: the impressions and clicks of the
    // first half reach it only through the changelogs.
    let second = adpipe_joiner::start(rig.settings()).expect("starts again");
    rig.publish(&second_half).await;
    eprintln!("{:?}: second half published", started.elapsed());
    let (bootstrap, group, topics) = (rig.bootstrap.clone(), format!("{}-group", rig.prefix), ["imp", "clk", "cnv"].map(|s| format!("{}.{s}", rig.prefix)));
    tokio::task::block_in_place(|| {
        wait_for("every input committed", Duration::from_secs(180), || {
            topics.iter().all(|topic| adpipe_testkit::committed_to_end(&bootstrap, &group, topic))
        })
    });
    eprintln!("{:?}: every input committed", started.elapsed());
    second.stop().await.expect("clean stop");

    let produced = tokio::task::block_in_place(|| produced(&rig));
    assert_matches(&expected, &produced);
    let dead = tokio::task::block_in_place(|| rig.read("dlq"));
    assert!(dead.is_empty(), "nothing dead-lettered: {}", dead.len());
    println!(
        "joined {} clicks and {} conversions, {} orphans, {} copies re-emitted",
        produced.clicks.len(),
        produced.conversions.len(),
        produced.orphans.len(),
        produced.copies
    );
    rig.registry.stop().await;
}
