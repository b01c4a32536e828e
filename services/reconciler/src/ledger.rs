//! The ledger: what each stage of the chain holds, per event-time hour and
//! kind of event — every record's id (hashed), how many copies, and where
//! each copy sits (topic, partition, offset) — plus the dead letters by
//! id, the orphans' reasons, the records no reader could decode, and the
//! counts of count-only stores (the stats in PostgreSQL).
//!
//! Contract: an event lands in the hour of its own event time (the same
//! hour at every stage, so stages compare hour by hour); a record of a
//! Kafka stage whose event time lies outside the reconciled hours but
//! whose record time lies inside lands in [`Bucket::Elsewhere`] (far-future
//! and ancient events: the merger dead-letters them). Ids are kept as
//! 64-bit hashes, with the text of each id once for the samples.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use serde::Serialize;

/// An hour of event time (its start, ms since the epoch), or the records
/// whose event time is outside the reconciled hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Bucket {
    /// The hour starting at this ms.
    Hour(i64),
    /// Event time outside the hours, record time inside.
    Elsewhere,
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bucket::Hour(start) => {
                let (year, month, day, hour) = adpipe_loader::record::civil(*start);
                write!(f, "{year:04}-{month:02}-{day:02} {hour:02}h")
            }
            Bucket::Elsewhere => write!(f, "elsewhere"),
        }
    }
}

/// 3,600,000 ms.
pub const HOUR_MS: i64 = 3_600_000;

/// The kind of event a record is (a joined click is a click).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Impression.
    Impression,
    /// Click (raw, joined or orphaned).
    Click,
    /// Conversion (raw, joined or orphaned).
    Conversion,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Impression, Kind::Click, Kind::Conversion];

    /// `impression`, `click`, `conversion`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Impression => "impression",
            Kind::Click => "click",
            Kind::Conversion => "conversion",
        }
    }

    /// `impressions`, `clicks`, `conversions` (topic names).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Impression => "impressions",
            Kind::Click => "clicks",
            Kind::Conversion => "conversions",
        }
    }

    /// The kind named `name` (singular).
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// A stage of the chain, or a store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Stage {
    /// A DC's own topic, on the DC's cluster.
    Source(String),
    /// Its copy on central (MirrorMaker 2's `<dc>.<topic>`).
    Replica(String),
    /// `merged.<kind>`.
    Merged,
    /// `deduplicated.<kind>`.
    Deduplicated,
    /// `joined.clicks`, `joined.conversions`.
    Joined,
    /// `joined.orphans`.
    Orphaned,
    /// `events-for-<dc>`: the dispatcher's output for a DC, read where
    /// that DC's profile loader reads it.
    Dispatched(String),
    /// A store a loader writes (`files`, `elasticsearch`, `profiles dc1`).
    Store(String),
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::Source(dc) => write!(f, "source {dc}"),
            Stage::Replica(dc) => write!(f, "replica {dc}"),
            Stage::Merged => write!(f, "merged"),
            Stage::Deduplicated => write!(f, "deduplicated"),
            Stage::Joined => write!(f, "joined"),
            Stage::Orphaned => write!(f, "orphans"),
            Stage::Dispatched(dc) => write!(f, "dispatched {dc}"),
            Stage::Store(store) => write!(f, "{store}"),
        }
    }
}

/// Where a copy sits in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// Index into [`Ledger::topic_name`].
    pub topic: u32,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// One event at one stage.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Records of it (more than one: copies).
    pub copies: u32,
    /// Where each copy sits (Kafka stages; empty for stores).
    pub places: Vec<Place>,
}

/// Everything one stage holds of one hour and kind.
#[derive(Debug, Clone, Default)]
pub struct Book {
    /// By id hash.
    pub seen: HashMap<u64, Seen>,
}

impl Book {
    /// Records, copies included.
    pub fn records(&self) -> u64 {
        self.seen.values().map(|seen| u64::from(seen.copies)).sum()
    }
}

/// A record a service dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The service.
    pub service: String,
    /// Its reason (the error kind).
    pub reason: String,
}

/// A record no reader could decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    /// Where it is.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Why.
    pub error: String,
    /// A hash of its bytes (the same record copied elsewhere has the same).
    pub value_hash: u64,
}

/// What every stage holds.
#[derive(Debug, Default)]
pub struct Ledger {
    names: HashMap<u64, Box<str>>,
    topics: Vec<String>,
    topic_index: HashMap<String, u32>,
    /// (bucket, kind, stage) → its events.
    pub books: BTreeMap<(Bucket, Kind, Stage), Book>,
    /// Dead letters by id hash.
    pub dead: HashMap<u64, Vec<DeadLetter>>,
    /// Dead letters whose value did not decode, by the coordinates of the
    /// record they stand for: (topic, partition, offset) → (service, reason).
    pub dead_by_place: HashMap<(String, i32, i64), DeadLetter>,
    /// Each orphan's reason, by id hash.
    pub orphan_reasons: HashMap<u64, String>,
    /// Each orphan's kind, by id hash (the files of `joined.orphans` hold
    /// both kinds).
    pub orphan_kinds: HashMap<u64, Kind>,
    /// Records in the reconciled range that did not decode.
    pub undecodable: Vec<Undecodable>,
    /// Count-only stores: (bucket, kind, measure) → count (the stats:
    /// `stats`, `stats orphans <reason>`).
    pub counted: BTreeMap<(Bucket, Kind, String), i64>,
    /// Whose profile each dispatched event goes into, by id hash.
    pub profile_owners: HashMap<u64, ProfileOwner>,
    /// Why a store rightly lacks an event: (store, id hash) → reason (a
    /// profile's cap or expiry).
    pub store_explained: HashMap<(String, u64), String>,
}

/// The profile a dispatched event is filed under, and its event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileOwner {
    /// The user.
    pub user: String,
    /// Its kind.
    pub kind: Kind,
    /// Its event time (ms).
    pub time_ms: i64,
}

/// The hash an id is kept by.
pub fn id_hash(id: &str) -> u64 {
    // SipHash with fixed keys: the same in every run of one build.
    let mut hasher = std::hash::DefaultHasher::new();
    id.hash(&mut hasher);
    hasher.finish()
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// The index of `topic` (for [`Place`]).
    pub fn topic(&mut self, topic: &str) -> u32 {
        if let Some(index) = self.topic_index.get(topic) {
            return *index;
        }
        let index = u32::try_from(self.topics.len()).unwrap_or(u32::MAX);
        self.topics.push(topic.to_owned());
        self.topic_index.insert(topic.to_owned(), index);
        index
    }

    /// The name of topic `index`.
    pub fn topic_name(&self, index: u32) -> &str {
        self.topics.get(index as usize).map_or("?", String::as_str)
    }

    /// The text of an id seen before.
    pub fn name(&self, hash: u64) -> &str {
        self.names.get(&hash).map_or("?", |name| name)
    }

    fn remember(&mut self, id: &str) -> u64 {
        let hash = id_hash(id);
        self.names.entry(hash).or_insert_with(|| id.into());
        hash
    }

    /// Records one copy of event `id` at `stage`.
    pub fn record(
        &mut self,
        bucket: Bucket,
        kind: Kind,
        stage: Stage,
        id: &str,
        place: Option<Place>,
    ) {
        let hash = self.remember(id);
        let seen = self
            .books
            .entry((bucket, kind, stage))
            .or_default()
            .seen
            .entry(hash)
            .or_default();
        seen.copies += 1;
        if let Some(place) = place {
            seen.places.push(place);
        }
    }

    /// Records that `service` dead-lettered event `id` for `reason`.
    pub fn dead_letter(&mut self, id: &str, service: &str, reason: &str) {
        let hash = self.remember(id);
        let letters = self.dead.entry(hash).or_default();
        let letter = DeadLetter {
            service: service.to_owned(),
            reason: reason.to_owned(),
        };
        if !letters.contains(&letter) {
            letters.push(letter);
        }
    }

    /// Records an orphan's kind and reason.
    pub fn orphan_reason(&mut self, id: &str, kind: Kind, reason: &str) {
        let hash = self.remember(id);
        self.orphan_reasons.insert(hash, reason.to_owned());
        self.orphan_kinds.insert(hash, kind);
    }

    /// The book of `stage` for (`bucket`, `kind`), if it holds anything.
    pub fn book(&self, bucket: Bucket, kind: Kind, stage: &Stage) -> Option<&Book> {
        self.books.get(&(bucket, kind, stage.clone()))
    }

    /// Every (bucket, kind) any stage holds, in order.
    pub fn cells(&self) -> Vec<(Bucket, Kind)> {
        let mut cells: Vec<(Bucket, Kind)> = self
            .books
            .keys()
            .map(|(bucket, kind, _)| (*bucket, *kind))
            .chain(
                self.counted
                    .keys()
                    .map(|(bucket, kind, _)| (*bucket, *kind)),
            )
            .collect();
        cells.sort();
        cells.dedup();
        cells
    }

    /// Every stage that holds anything, in order.
    pub fn stages(&self) -> Vec<Stage> {
        let mut stages: Vec<Stage> = self
            .books
            .keys()
            .map(|(_, _, stage)| stage.clone())
            .collect();
        stages.sort();
        stages.dedup();
        stages
    }
}

/// The bucket of an event at `event_ms` whose record was written at
/// `record_ms`, when reconciling `[from, to)`: its hour when inside;
/// `Elsewhere` when only the record time is inside; `None` (not in this
/// reconciliation) otherwise. Stores pass no record time.
pub fn bucket_of(event_ms: i64, record_ms: Option<i64>, from: i64, to: i64) -> Option<Bucket> {
    if (from..to).contains(&event_ms) {
        return Some(Bucket::Hour(event_ms - event_ms.rem_euclid(HOUR_MS)));
    }
    match record_ms {
        Some(record_ms) if (from..to).contains(&record_ms) => Some(Bucket::Elsewhere),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_land_in_the_hour_of_their_event_time_and_strays_elsewhere() {
        let from = 10 * HOUR_MS;
        let to = 12 * HOUR_MS;
        assert_eq!(
            bucket_of(11 * HOUR_MS + 5, Some(0), from, to),
            Some(Bucket::Hour(11 * HOUR_MS))
        );
        assert_eq!(
            bucket_of(99 * HOUR_MS, Some(from + 1), from, to),
            Some(Bucket::Elsewhere)
        );
        assert_eq!(bucket_of(99 * HOUR_MS, Some(to), from, to), None);
        assert_eq!(bucket_of(99 * HOUR_MS, None, from, to), None);
    }

    #[test]
    fn copies_and_places_add_up_per_stage() {
        let mut ledger = Ledger::new();
        let topic = ledger.topic("merged.clicks");
        let place = |offset| {
            Some(Place {
                topic,
                partition: 1,
                offset,
            })
        };
        let hour = Bucket::Hour(0);
        ledger.record(hour, Kind::Click, Stage::Merged, "c1", place(5));
        ledger.record(hour, Kind::Click, Stage::Merged, "c1", place(9));
        ledger.record(hour, Kind::Click, Stage::Merged, "c2", place(6));
        let book = ledger
            .book(hour, Kind::Click, &Stage::Merged)
            .expect("a book");
        assert_eq!(book.records(), 3);
        assert_eq!(book.seen.len(), 2);
        assert_eq!(book.seen[&id_hash("c1")].places.len(), 2);
        assert_eq!(ledger.name(id_hash("c2")), "c2");
        assert_eq!(ledger.topic_name(topic), "merged.clicks");
    }
}
