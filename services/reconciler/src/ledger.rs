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
    /// The processed events (the dispatcher's inputs) that must reach
    /// `<dc>` by the dispatcher's routing, at their input coordinates.
    Routed(String),
    /// `events-for-<dc>` on central, where the dispatcher writes it (read
    /// for the routing's check, and when the DC's profile loader reads
    /// MirrorMaker 2's copy on the DC's own cluster: the copying is then a
    /// flow of its own).
    DispatchedCentral(String),
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
            Stage::Routed(dc) => write!(f, "routed to {dc}"),
            Stage::DispatchedCentral(dc) => write!(f, "dispatched {dc} (central)"),
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

impl Place {
    /// No place: a store's record.
    const NOWHERE: Place = Place {
        topic: u32::MAX,
        partition: -1,
        offset: -1,
    };
}

/// One event at one stage, 24 bytes: a 10M-event run's ledger holds ~80M
/// (every stage's every event), and a `Vec` of places each came to ~14 GB.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Records of it (more than one: copies).
    copies: u32,
    /// Where its first copy sits ([`Place::NOWHERE`] for a store).
    first: Place,
}

/// Everything one stage holds of one hour and kind: each event (by id
/// hash), its copies and where they sit.
#[derive(Debug, Clone, Default)]
pub struct Book {
    seen: HashMap<u64, Seen>,
    /// Where the second and later copies sit (copies are few).
    more_places: HashMap<u64, Vec<Place>>,
}

impl Book {
    /// Adds one copy of event `hash`, at `place` (Kafka stages).
    pub fn add(&mut self, hash: u64, place: Option<Place>) {
        let place = place.unwrap_or(Place::NOWHERE);
        let seen = self.seen.entry(hash).or_insert(Seen {
            copies: 0,
            first: place,
        });
        seen.copies += 1;
        if seen.copies > 1 && place != Place::NOWHERE {
            self.more_places.entry(hash).or_default().push(place);
        }
    }

    /// Every copy of `other` added to this one.
    pub fn absorb(&mut self, other: &Book) {
        for (hash, copies) in other.events() {
            for place in other.places(hash) {
                self.add(hash, Some(place));
            }
            // A store's copies have no places.
            let placed = other.places(hash).count() as u32;
            for _ in placed..copies {
                self.add(hash, None);
            }
        }
    }

    /// Each event: (id hash, copies).
    pub fn events(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.seen.iter().map(|(hash, seen)| (*hash, seen.copies))
    }

    /// The copies of event `hash` (0: not here).
    pub fn copies(&self, hash: u64) -> u32 {
        self.seen.get(&hash).map_or(0, |seen| seen.copies)
    }

    /// Whether event `hash` is here.
    pub fn contains(&self, hash: u64) -> bool {
        self.seen.contains_key(&hash)
    }

    /// Where the copies of event `hash` sit (none for a store's).
    pub fn places(&self, hash: u64) -> impl Iterator<Item = Place> + '_ {
        let first = self
            .seen
            .get(&hash)
            .map(|seen| seen.first)
            .filter(|place| *place != Place::NOWHERE);
        first
            .into_iter()
            .chain(self.more_places.get(&hash).into_iter().flatten().copied())
    }

    /// Distinct events.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// No events.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

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

/// Names kept once each, known by their index (topics, users).
#[derive(Debug, Default)]
struct Interned {
    names: Vec<String>,
    index: HashMap<String, u32>,
}

impl Interned {
    fn index(&mut self, name: &str) -> u32 {
        if let Some(index) = self.index.get(name) {
            return *index;
        }
        let index = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(name.to_owned());
        self.index.insert(name.to_owned(), index);
        index
    }

    fn name(&self, index: u32) -> &str {
        self.names.get(index as usize).map_or("?", String::as_str)
    }
}

/// What every stage holds.
#[derive(Debug, Default)]
pub struct Ledger {
    names: HashMap<u64, Box<str>>,
    topics: Interned,
    users: Interned,
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
    profile_owners: HashMap<u64, ProfileOwner>,
    /// Why a store rightly lacks an event: (store, id hash) → reason (a
    /// profile's cap or expiry).
    pub store_explained: HashMap<(String, u64), String>,
}

/// The profile a dispatched event is filed under, and its event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileOwner {
    /// The user: an index for [`Ledger::user_name`] (10M dispatched
    /// events name ~2M users).
    pub user: u32,
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
        self.topics.index(topic)
    }

    /// The name of topic `index`.
    pub fn topic_name(&self, index: u32) -> &str {
        self.topics.name(index)
    }

    /// Records that dispatched event `id` goes into `user`'s profile of
    /// its `kind`, at event time `time_ms`.
    pub fn profile_owner(&mut self, id: &str, user: &str, kind: Kind, time_ms: i64) {
        let user = self.users.index(user);
        self.profile_owners.insert(
            id_hash(id),
            ProfileOwner {
                user,
                kind,
                time_ms,
            },
        );
    }

    /// Every dispatched event's profile owner, by id hash.
    pub fn profile_owners(&self) -> impl Iterator<Item = (u64, &ProfileOwner)> {
        self.profile_owners
            .iter()
            .map(|(hash, owner)| (*hash, owner))
    }

    /// The name of user `index` ([`ProfileOwner::user`]).
    pub fn user_name(&self, index: u32) -> &str {
        self.users.name(index)
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
        self.books
            .entry((bucket, kind, stage))
            .or_default()
            .add(hash, place);
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
    fn an_event_at_a_stage_takes_24_bytes_beside_its_hash() {
        // 80M of them in a 10M-event run: each byte is 80 MB.
        assert_eq!(std::mem::size_of::<Seen>(), 24);
    }

    #[test]
    fn a_merged_book_keeps_every_copy_and_place() {
        let topic = 3;
        let place = |offset| Place {
            topic,
            partition: 0,
            offset,
        };
        let mut left = Book::default();
        left.add(1, Some(place(1)));
        left.add(2, Some(place(2)));
        let mut right = Book::default();
        right.add(1, Some(place(7)));
        right.add(1, Some(place(8)));
        left.absorb(&right);
        assert_eq!(left.copies(1), 3);
        assert_eq!(left.copies(2), 1);
        assert_eq!(
            left.places(1).map(|place| place.offset).collect::<Vec<_>>(),
            [1, 7, 8]
        );
        let mut store = Book::default();
        store.add(9, None);
        store.add(9, None);
        left.absorb(&store);
        assert_eq!((left.copies(9), left.places(9).count()), (2, 0));
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
        assert_eq!(book.len(), 2);
        assert_eq!(
            book.places(id_hash("c1"))
                .map(|place| place.offset)
                .collect::<Vec<_>>(),
            [5, 9]
        );
        assert_eq!(ledger.name(id_hash("c2")), "c2");
        assert_eq!(ledger.topic_name(topic), "merged.clicks");
    }
}
