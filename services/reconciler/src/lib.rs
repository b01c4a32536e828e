//! The reconciler: per event-time hour and kind of event, what every stage
//! of the chain and every store holds — each DC's source topics and their
//! replicas on central, merged, deduplicated, joined and orphaned (by
//! reason), the stats in PostgreSQL, the files, Elasticsearch, BigQuery,
//! each DC's dispatched events and its user profiles — and every
//! difference between them named (stage, hour, kind, how many, sample ids)
//! and explained where the chain explains it (dead letters with their
//! reasons, records still in flight, at-least-once copies). What nothing
//! explains fails `adpipe reconcile` (exit 1) and shows in the continuous
//! reconciler's metrics, so an operator learns of a loss within the hour.
//!
//! [`ledger`] holds what was read, [`read`] and [`stores`] read it,
//! [`verdict`] checks the chain's flows over it, [`report`] prints the
//! table, [`serve`] runs it continuously.
#![warn(missing_docs)]

pub mod config;
pub mod ledger;
pub mod read;
pub mod report;
pub mod serve;
pub mod stores;
pub mod verdict;
pub mod watermarks;

use std::collections::BTreeMap;

use adpipe_codec::{Codec, RegistryClient};
use anyhow::Context;

pub use config::ReconcileSettings;
use ledger::{Kind, Ledger, Stage};
pub use read::Span;
use read::{KindOf, StageTopic};
pub use report::Reconciliation;
use verdict::{CountFlow, Flow, Positions};

/// The services of the chain, each with its dead-letter topic `dlq.<service>`.
pub const SERVICES: [&str; 6] = [
    "merger",
    "deduplicator",
    "joiner",
    "stats-counter",
    "dispatcher",
    "loader",
];

/// Reads every stage and store for `span` and checks the chain's flows.
pub async fn reconcile(settings: &ReconcileSettings, span: Span) -> anyhow::Result<Reconciliation> {
    let codec = Codec::new(
        RegistryClient::new(&settings.registry_url)
            .with_context(|| format!("the schema registry at {}", settings.registry_url))?,
    );
    let mut ledger = Ledger::new();
    let topics = &settings.topics;
    let properties = &settings.kafka_client;
    let central = |stage: Stage, topic: String, kind: KindOf| StageTopic {
        stage,
        bootstrap: settings.bootstrap.clone(),
        topic,
        kind,
        routes: None,
    };
    // The dispatcher's inputs: the processed events (not the orphans).
    let routes = settings.routes.clone().map(std::sync::Arc::new);
    let dispatcher_input = |mut stage_topic: StageTopic| {
        stage_topic.routes.clone_from(&routes);
        stage_topic
    };
    let mut stage_topics = Vec::new();
    for kind in Kind::ALL {
        for dc in &settings.dcs {
            if let Some(bootstrap) = &dc.bootstrap {
                stage_topics.push(StageTopic {
                    stage: Stage::Source(dc.name.clone()),
                    bootstrap: bootstrap.clone(),
                    topic: topics.source(kind),
                    kind: KindOf::Fixed(kind),
                    routes: None,
                });
            }
            stage_topics.push(central(
                Stage::Replica(dc.name.clone()),
                topics.replica(&dc.name, kind),
                KindOf::Fixed(kind),
            ));
        }
        stage_topics.push(central(
            Stage::Merged,
            topics.merged(kind),
            KindOf::Fixed(kind),
        ));
        let deduplicated = central(
            Stage::Deduplicated,
            topics.deduplicated(kind),
            KindOf::Fixed(kind),
        );
        stage_topics.push(if kind == Kind::Impression {
            dispatcher_input(deduplicated)
        } else {
            deduplicated
        });
    }
    stage_topics.push(dispatcher_input(central(
        Stage::Joined,
        topics.joined("clicks"),
        KindOf::Fixed(Kind::Click),
    )));
    stage_topics.push(dispatcher_input(central(
        Stage::Joined,
        topics.joined("conversions"),
        KindOf::Fixed(Kind::Conversion),
    )));
    stage_topics.push(central(
        Stage::Orphaned,
        topics.joined("orphans"),
        KindOf::OrphanHeader,
    ));
    // The stage of `events-for-<dc>` on central: `Dispatched` itself
    // where the DC's profile loader reads it there (a DC without a
    // cluster of its own, profiles reconciled), else `DispatchedCentral`.
    let dispatched_on_central = |dc: &config::Dc| {
        if settings.profiles.is_some() && dc.bootstrap.is_none() {
            Stage::Dispatched(dc.name.clone())
        } else {
            Stage::DispatchedCentral(dc.name.clone())
        }
    };
    // Each DC's dispatched events, read where its profile loader reads
    // them (its own cluster's copy when known: the loader's commits are
    // offsets of that copy).
    let dispatched = |dc: &config::Dc| match &dc.bootstrap {
        Some(bootstrap) => (bootstrap.clone(), topics.dispatched_at_dc(&dc.name)),
        None => (settings.bootstrap.clone(), topics.dispatched(&dc.name)),
    };
    for dc in &settings.dcs {
        if settings.profiles.is_some() {
            let (bootstrap, topic) = dispatched(dc);
            stage_topics.push(StageTopic {
                stage: Stage::Dispatched(dc.name.clone()),
                bootstrap,
                topic,
                kind: KindOf::ByValue,
                routes: None,
            });
        }
        // Central's copy: the routing's check reads it, and so does the
        // check of MirrorMaker 2's copying to the DC's own cluster — unless
        // it was read just above (a DC without a cluster of its own).
        let needed =
            settings.routes.is_some() || (settings.profiles.is_some() && dc.bootstrap.is_some());
        let read_above = settings.profiles.is_some() && dc.bootstrap.is_none();
        if needed && !read_above {
            stage_topics.push(central(
                dispatched_on_central(dc),
                topics.dispatched(&dc.name),
                KindOf::ByValue,
            ));
        }
    }
    // The groups' committed offsets are read before the topics: an event
    // committed while the topics are read then counts as in flight, never
    // as missing (read after, it could be committed past yet absent from
    // an output read before it arrived).
    let groups = &settings.groups;
    let mut positions = Positions::default();
    let mut note = |group: &str, committed: std::collections::HashMap<(String, i32), i64>| {
        for ((topic, partition), offset) in committed {
            positions
                .committed
                .insert((group.to_owned(), topic, partition), offset);
        }
    };
    let topics_of = |stage: &Stage| -> Vec<String> {
        stage_topics
            .iter()
            .filter(|topic| {
                &topic.stage == stage
                    || matches!(
                        (stage, &topic.stage),
                        (Stage::Replica(_), Stage::Replica(_))
                    )
            })
            .map(|topic| topic.topic.clone())
            .collect()
    };
    let loader_topics: Vec<String> = stores::loader_inputs(topics)
        .into_iter()
        .map(|(topic, _)| topic)
        .collect();
    for (group, inputs) in [
        (&groups.merger, topics_of(&Stage::Replica(String::new()))),
        (&groups.deduplicator, topics_of(&Stage::Merged)),
        (&groups.joiner, topics_of(&Stage::Deduplicated)),
        (&groups.files, loader_topics.clone()),
        (&groups.elasticsearch, loader_topics.clone()),
        (&groups.bigquery, loader_topics.clone()),
        (
            &groups.dispatcher,
            if settings.routes.is_some() {
                dispatcher_topics(topics)
            } else {
                Vec::new()
            },
        ),
    ] {
        if !group.is_empty() && !inputs.is_empty() {
            note(
                group,
                read::committed(&settings.bootstrap, group, &inputs, properties)?,
            );
        }
    }
    if let Some(profiles) = &settings.profiles {
        for dc in &settings.dcs {
            let (bootstrap, topic) = dispatched(dc);
            let group = profiles.group(&dc.name);
            if !group.is_empty() {
                note(
                    &group,
                    read::committed(&bootstrap, &group, &[topic], properties)?,
                );
            }
        }
    }
    for stage_topic in &stage_topics {
        read::read_stage(&mut ledger, &codec, stage_topic, span, properties)
            .await
            .with_context(|| format!("reading {} ({})", stage_topic.topic, stage_topic.stage))?;
    }
    for service in SERVICES {
        read::read_dead_letters(
            &mut ledger,
            &codec,
            &settings.bootstrap,
            &topics.dlq(service),
            properties,
        )
        .await?;
    }

    if settings.profiles.is_some() {
        for dc in &settings.dcs {
            let (bootstrap, _) = dispatched(dc);
            // A DC's profile loader dead-letters into its own cluster.
            if bootstrap != settings.bootstrap {
                read::read_dead_letters(
                    &mut ledger,
                    &codec,
                    &bootstrap,
                    &topics.dlq("loader"),
                    properties,
                )
                .await?;
            }
        }
    }
    let mut count_flows = Vec::new();
    if let Some((url, schema)) = &settings.stats {
        let stored =
            stores::read_stats(&mut ledger, url, schema, &groups.stats_counter, span).await?;
        note(&groups.stats_counter, stored);
        count_flows.push(CountFlow {
            name: "→ stats".to_owned(),
            from: loader_sources(),
            service: "stats-counter".to_owned(),
            group: Some(groups.stats_counter.clone()),
        });
    }
    let mut flows = chain_flows(settings);
    if settings.routes.is_some() {
        for dc in &settings.dcs {
            flows.push(Flow {
                name: format!("routed → dispatched {dc}", dc = dc.name),
                from: every_kind(vec![Stage::Routed(dc.name.clone())]),
                to: every_kind(vec![dispatched_on_central(dc)]),
                service: "dispatcher".to_owned(),
                group: group(&groups.dispatcher),
                copies_allowed: true,
            });
        }
    }
    if let Some(dir) = &settings.files_dir {
        stores::read_files(&mut ledger, dir, topics, span)?;
        flows.push(store_flow("files", &groups.files));
    }
    if let Some((url, prefix)) = &settings.elasticsearch {
        stores::read_elasticsearch(&mut ledger, url, prefix, topics, span).await?;
        flows.push(store_flow("elasticsearch", &groups.elasticsearch));
    }
    if let Some(bigquery) = &settings.bigquery {
        stores::read_bigquery(&mut ledger, bigquery, topics, span).await?;
        flows.push(store_flow("bigquery", &groups.bigquery));
    }
    if let Some(profiles) = &settings.profiles {
        for dc in &settings.dcs {
            stores::read_profiles(&mut ledger, profiles, &dc.name, span).await?;
            let mut flow = store_flow(&stores::profiles_store(&dc.name), &profiles.group(&dc.name));
            flow.name = format!("dispatched {dc} → profiles {dc}", dc = dc.name);
            flow.from = every_kind(vec![Stage::Dispatched(dc.name.clone())]);
            flows.push(flow);
            if dc.bootstrap.is_some() {
                // MirrorMaker 2's copy to the DC: a copying that stops
                // (its worker for the DC gave up during the DC's outage)
                // leaves the profiles consistent with the copy, not with
                // what was dispatched.
                flows.push(mirror_flow(
                    format!("central → {dc} (MirrorMaker 2)", dc = dc.name),
                    Stage::DispatchedCentral(dc.name.clone()),
                    Stage::Dispatched(dc.name.clone()),
                ));
            }
        }
    }
    let mut differences = verdict::differences(&ledger, &positions, &flows, &count_flows);
    differences.extend(verdict::undecodable(&ledger));
    Ok(Reconciliation::new(
        &ledger,
        span,
        differences,
        settings.samples,
    ))
}

/// The stages a loader (and the stats-counter) reads, per kind.
fn loader_sources() -> BTreeMap<Kind, Vec<Stage>> {
    BTreeMap::from([
        (Kind::Impression, vec![Stage::Deduplicated]),
        (Kind::Click, vec![Stage::Joined, Stage::Orphaned]),
        (Kind::Conversion, vec![Stage::Joined, Stage::Orphaned]),
    ])
}

fn every_kind(stages: Vec<Stage>) -> BTreeMap<Kind, Vec<Stage>> {
    Kind::ALL
        .into_iter()
        .map(|kind| (kind, stages.clone()))
        .collect()
}

/// The dispatcher's inputs: the processed events.
fn dispatcher_topics(topics: &config::TopicNames) -> Vec<String> {
    vec![
        topics.deduplicated(Kind::Impression),
        topics.joined("clicks"),
        topics.joined("conversions"),
    ]
}

fn group(name: &str) -> Option<String> {
    (!name.is_empty()).then(|| name.to_owned())
}

/// The Kafka flows: source → replica (per DC read at its own cluster),
/// replicas → merged, merged → deduplicated, deduplicated → joined + orphans.
fn chain_flows(settings: &ReconcileSettings) -> Vec<Flow> {
    let groups = &settings.groups;
    let mut flows = Vec::new();
    for dc in settings.dcs.iter().filter(|dc| dc.bootstrap.is_some()) {
        flows.push(mirror_flow(
            format!("{dc} → central (MirrorMaker 2)", dc = dc.name),
            Stage::Source(dc.name.clone()),
            Stage::Replica(dc.name.clone()),
        ));
    }
    let replicas: Vec<Stage> = settings
        .dcs
        .iter()
        .map(|dc| Stage::Replica(dc.name.clone()))
        .collect();
    flows.push(Flow {
        name: "replicas → merged".to_owned(),
        from: every_kind(replicas),
        to: every_kind(vec![Stage::Merged]),
        service: "merger".to_owned(),
        group: group(&groups.merger),
        copies_allowed: true,
    });
    flows.push(Flow {
        name: "merged → deduplicated".to_owned(),
        from: every_kind(vec![Stage::Merged]),
        to: every_kind(vec![Stage::Deduplicated]),
        service: "deduplicator".to_owned(),
        group: group(&groups.deduplicator),
        copies_allowed: true,
    });
    let joined = vec![Stage::Joined, Stage::Orphaned];
    flows.push(Flow {
        name: "deduplicated → joined + orphans".to_owned(),
        from: BTreeMap::from([
            (Kind::Click, vec![Stage::Deduplicated]),
            (Kind::Conversion, vec![Stage::Deduplicated]),
        ]),
        to: BTreeMap::from([(Kind::Click, joined.clone()), (Kind::Conversion, joined)]),
        service: "joiner".to_owned(),
        group: group(&groups.joiner),
        copies_allowed: true,
    });
    flows
}

/// MirrorMaker 2's copying of every kind from one topic to another
/// (copies allowed; no group of ours commits it).
fn mirror_flow(name: String, from: Stage, to: Stage) -> Flow {
    Flow {
        name,
        from: every_kind(vec![from]),
        to: every_kind(vec![to]),
        service: "mirrormaker".to_owned(),
        group: None,
        copies_allowed: true,
    }
}

/// A loader's flow: each processed event and orphan exactly once in `store`.
fn store_flow(store: &str, loader_group: &str) -> Flow {
    Flow {
        name: format!("→ {store}"),
        from: loader_sources(),
        to: every_kind(vec![Stage::Store(store.to_owned())]),
        service: "loader".to_owned(),
        group: group(loader_group),
        copies_allowed: false,
    }
}
