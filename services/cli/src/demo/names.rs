//! The demo's topic names: the pipeline's (topologies/pipeline.toml), under
//! a unique prefix on a real cluster so runs never share topics.

use adpipe_events::EventKind;

/// Partitions of every keyed demo topic (the pipeline's count).
pub const PARTITIONS: i32 = 12;

/// The demo's topics.
pub struct Names {
    /// Prefix of every topic (empty on the in-process cluster).
    pub prefix: String,
    /// The simulated DCs.
    pub dcs: Vec<String>,
}

impl Names {
    /// `<dc>.<kind>`: a DC's topic as MirrorMaker 2 names it on central.
    pub fn replica(&self, dc: &str, kind: EventKind) -> String {
        format!("{}{dc}.{}", self.prefix, kind.plural())
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
    /// Every topic with its partitions.
    pub fn all(&self) -> Vec<(String, i32)> {
        let mut topics: Vec<(String, i32)> = EventKind::PUBLISHED
            .into_iter()
            .flat_map(|kind| {
                let replicas = self.dcs.iter().map(move |dc| self.replica(dc, kind));
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
