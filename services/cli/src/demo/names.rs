//! The demo's topic names: the pipeline's (topologies/pipeline.toml), under
//! a unique prefix on a real cluster so runs never share topics. On one
//! cluster the bidders write straight into the replicas' names; with DC
//! clusters (`--dc`) they write their own topics there and MirrorMaker 2
//! names the replicas on central `<dc>.<topic>`.

use std::collections::BTreeMap;

use adpipe_events::EventKind;

/// Partitions of every keyed demo topic (the pipeline's count).
pub const PARTITIONS: i32 = 12;

/// The demo's topics.
pub struct Names {
    /// Prefix of every topic (empty on the in-process cluster).
    pub prefix: String,
    /// The simulated DCs.
    pub dcs: Vec<String>,
    /// Each DC's own cluster, when MirrorMaker 2 carries its topics.
    pub dc_clusters: BTreeMap<String, String>,
    /// Central's alias in MirrorMaker 2 (`central`; the chaos test's
    /// `chaos`): its copies on a DC are named `<alias>.<topic>`.
    pub central_alias: String,
}

impl Names {
    /// Whether the DCs have clusters of their own (MirrorMaker 2 between).
    pub fn mirrored(&self) -> bool {
        !self.dc_clusters.is_empty()
    }
    /// A DC's own topic of `kind`, on its cluster.
    pub fn source(&self, kind: EventKind) -> String {
        format!("{}{}", self.prefix, kind.plural())
    }
    /// The template of the replicas (`{dc}`, `{prefix}`, `{kind}`).
    pub fn replica_template(&self) -> &'static str {
        if self.mirrored() {
            "{dc}.{prefix}{kind}"
        } else {
            "{prefix}{dc}.{kind}"
        }
    }
    /// A DC's topic of `kind` on central, as MirrorMaker 2 names it.
    pub fn replica(&self, dc: &str, kind: EventKind) -> String {
        self.replica_template()
            .replace("{dc}", dc)
            .replace("{prefix}", &self.prefix)
            .replace("{kind}", kind.plural())
    }
    /// Where the bidders of `dc` publish: (cluster, topic) — `None` for
    /// the cluster means central.
    pub fn publish_target(&self, dc: &str, kind: EventKind) -> (Option<&str>, String) {
        match self.dc_clusters.get(dc) {
            Some(bootstrap) => (Some(bootstrap), self.source(kind)),
            None => (None, self.replica(dc, kind)),
        }
    }
    /// `merged.<kind>`.
    pub fn merged(&self, kind: EventKind) -> String {
        format!("{}merged.{}", self.prefix, kind.plural())
    }
    /// `deduplicated.<kind>`.
    pub fn deduplicated(&self, kind: EventKind) -> String {
        format!("{}deduplicated.{}", self.prefix, kind.plural())
    }
    /// The deduplicator's changelog of `kind`.
    pub fn changelog(&self, kind: EventKind) -> String {
        format!("{}deduplicator.{}.changelog", self.prefix, kind.plural())
    }
    /// `joined.clicks`, `joined.conversions`, `joined.orphans`.
    pub fn joined(&self, what: &str) -> String {
        format!("{}joined.{what}", self.prefix)
    }
    /// The joiner's changelog of `store`.
    pub fn joiner_changelog(&self, store: &str) -> String {
        format!("{}joiner.{store}.changelog", self.prefix)
    }
    /// `events-for-<dc>`: the dispatcher's output for `dc`.
    pub fn events_for(&self, dc: &str) -> String {
        format!("{}events-for-{dc}", self.prefix)
    }
    /// Where `dc`'s profile loader reads its events: (cluster, topic) —
    /// MirrorMaker 2's copy on the DC's cluster, or central's topic.
    pub fn events_at(&self, dc: &str) -> (Option<&str>, String) {
        match self.dc_clusters.get(dc) {
            Some(bootstrap) => (Some(bootstrap), self.events_at_dc(dc)),
            None => (None, self.events_for(dc)),
        }
    }
    /// MirrorMaker 2's copy of `events-for-<dc>` on `dc`'s own cluster
    /// (`{dc}` gives the reconciler's template).
    pub fn events_at_dc(&self, dc: &str) -> String {
        format!("{}.{}", self.central_alias, self.events_for(dc))
    }
    /// The topics a DC's own cluster needs: its bidders' and its profile
    /// loader's dead-letter topic (MirrorMaker 2 makes the rest).
    pub fn dc_topics(&self) -> Vec<(String, i32)> {
        EventKind::PUBLISHED
            .into_iter()
            .map(|kind| (self.source(kind), PARTITIONS))
            .chain([(self.dlq("loader"), 1)])
            .collect()
    }
    /// The dispatcher's inputs: the processed events whose users' profiles
    /// every DC keeps.
    pub fn dispatched(&self) -> Vec<String> {
        vec![
            self.deduplicated(EventKind::Impression),
            self.joined("clicks"),
            self.joined("conversions"),
        ]
    }
    /// `dlq.<service>`.
    pub fn dlq(&self, service: &str) -> String {
        format!("{}dlq.{service}", self.prefix)
    }
    /// The stats-counter's compacted totals.
    pub fn totals(&self) -> String {
        format!("{}stats.totals", self.prefix)
    }
    /// Every topic of central with its partitions (the replicas only when
    /// no MirrorMaker 2 makes them).
    pub fn all(&self) -> Vec<(String, i32)> {
        let mut topics: Vec<(String, i32)> = EventKind::PUBLISHED
            .into_iter()
            .flat_map(|kind| {
                let replicas = self
                    .dcs
                    .iter()
                    .filter(|_| !self.mirrored())
                    .map(move |dc| self.replica(dc, kind));
                replicas.chain([
                    self.merged(kind),
                    self.deduplicated(kind),
                    self.changelog(kind),
                ])
            })
            .chain(["clicks", "conversions", "orphans"].map(|what| self.joined(what)))
            .chain(["impressions", "clicks"].map(|store| self.joiner_changelog(store)))
            .chain(self.dcs.iter().map(|dc| self.events_for(dc)))
            .chain([self.totals()])
            .map(|topic| (topic, PARTITIONS))
            .collect();
        for service in adpipe_reconciler::SERVICES {
            topics.push((self.dlq(service), 1));
        }
        topics.push((format!("{}_schemas", self.prefix), 1));
        topics
    }
}
