//! The verdict: the chain's flows (what each stage must find of the stage
//! before it) checked over the ledger, every difference named — flow,
//! hour, kind, how many, sample ids — and explained where the chain
//! explains it: dead-lettered by the stage's service (with the reason),
//! still in flight (the stage's consumer group has not committed past the
//! record), or copies that at-least-once delivery makes and idempotent
//! stages absorb. What nothing explains is a loss (or a stranger, or a
//! miscount) and fails the reconciliation.
//!
//! Contract: an event missing downstream is explained only by a dead
//! letter of the consuming service naming that event, by the store's own
//! rule (a profile's cap or TTL, as read from the store), or by an offset
//! its group has not committed; an event present downstream but not upstream,
//! a copy in a store that must hold each event once, and a count in the
//! stats that differs from the distinct events its consumer committed (a
//! copy in its input counted twice is a miscount: the totals must equal
//! the ground truth) are never explained.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::ledger::{Book, Bucket, Kind, Ledger, Place, Stage};

/// Committed positions of the chain's consumer groups.
#[derive(Debug, Clone, Default)]
pub struct Positions {
    /// (group, topic, partition) → the next offset the group will read.
    pub committed: HashMap<(String, String, i32), i64>,
}

impl Positions {
    /// Whether `group` has committed past `place` (None: unknown group →
    /// assume it has, so a loss is never hidden as "in flight").
    fn consumed(&self, ledger: &Ledger, group: Option<&str>, place: &Place) -> bool {
        let Some(group) = group else {
            return true;
        };
        let key = (
            group.to_owned(),
            ledger.topic_name(place.topic).to_owned(),
            place.partition,
        );
        self.committed
            .get(&key)
            .is_some_and(|committed| *committed > place.offset)
    }
}

/// What one stage must find of the stages before it.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Its name in the table (`merged → deduplicated`).
    pub name: String,
    /// Per kind, the stages whose events must arrive.
    pub from: BTreeMap<Kind, Vec<Stage>>,
    /// Per kind, the stages where they must arrive (any of them).
    pub to: BTreeMap<Kind, Vec<Stage>>,
    /// The service that consumes `from` (its dead letters explain).
    pub service: String,
    /// Its consumer group (its commits tell what is in flight).
    pub group: Option<String>,
    /// Whether `to` may hold copies (Kafka stages: at least once) or must
    /// hold each event once (stores).
    pub copies_allowed: bool,
}

/// A count-only store checked against the distinct events its consumer
/// committed: the stats-counter's totals.
#[derive(Debug, Clone)]
pub struct CountFlow {
    /// Its name in the table.
    pub name: String,
    /// Per kind, the stage it counts (orphans per reason).
    pub from: BTreeMap<Kind, Vec<Stage>>,
    /// The service (its dead letters are not counted).
    pub service: String,
    /// Its consumer group (its stored offsets say what it counted).
    pub group: Option<String>,
}

/// One difference, with its explanation (None: unexplained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The flow.
    pub flow: String,
    /// The hour.
    pub bucket: Bucket,
    /// The kind.
    pub kind: Kind,
    /// `missing`, `unexpected`, `copies`, `miscounted`, `undecodable`.
    pub what: String,
    /// How many events (records for copies and counts).
    pub count: i64,
    /// Why, when the chain explains it.
    pub explanation: Option<String>,
    /// Some of the ids.
    pub samples: Vec<String>,
}

/// How many sample ids a difference names.
const SAMPLES: usize = 5;

#[derive(Default)]
struct Tally {
    count: i64,
    samples: Vec<String>,
}

impl Tally {
    fn add(&mut self, count: i64, sample: impl FnOnce() -> String) {
        self.count += count;
        if self.samples.len() < SAMPLES {
            self.samples.push(sample());
        }
    }
}

/// Checks `flows` and `counts` over `ledger`.
pub fn differences(
    ledger: &Ledger,
    positions: &Positions,
    flows: &[Flow],
    counts: &[CountFlow],
) -> Vec<Difference> {
    let mut found = Vec::new();
    let cells = ledger.cells();
    for flow in flows {
        for (bucket, kind) in &cells {
            let (Some(from), Some(to)) = (flow.from.get(kind), flow.to.get(kind)) else {
                continue;
            };
            // Stores are read by event time only: they hold no strays.
            if *bucket == Bucket::Elsewhere
                && to.iter().any(|stage| matches!(stage, Stage::Store(_)))
            {
                continue;
            }
            found.extend(check_flow(
                ledger, positions, flow, *bucket, *kind, from, to,
            ));
        }
    }
    for flow in counts {
        for (bucket, kind) in &cells {
            if let Some(from) = flow.from.get(kind) {
                found.extend(check_count(ledger, positions, flow, *bucket, *kind, from));
            }
        }
    }
    found
}

fn check_flow(
    ledger: &Ledger,
    positions: &Positions,
    flow: &Flow,
    bucket: Bucket,
    kind: Kind,
    from: &[Stage],
    to: &[Stage],
) -> Vec<Difference> {
    // The stages of each side as one book: the one stage's own (most
    // flows), or a merged copy.
    let books = |stages: &[Stage]| -> std::borrow::Cow<'_, Book> {
        let mut present = stages
            .iter()
            .filter_map(|stage| ledger.book(bucket, kind, stage));
        match (present.next(), present.next()) {
            (None, _) => std::borrow::Cow::Owned(Book::default()),
            (Some(only), None) => std::borrow::Cow::Borrowed(only),
            (Some(first), Some(second)) => {
                let mut merged = first.clone();
                merged.absorb(second);
                for more in present {
                    merged.absorb(more);
                }
                std::borrow::Cow::Owned(merged)
            }
        }
    };
    let upstream = books(from);
    let downstream = books(to);
    let mut tallies: BTreeMap<(&'static str, Option<String>), Tally> = BTreeMap::new();
    for (hash, _) in upstream.events() {
        if downstream.contains(hash) {
            continue;
        }
        // By its id, or (a dead letter whose value was omitted: too large
        // to keep) by the coordinates of one of its copies.
        let letter = ledger
            .dead
            .get(&hash)
            .and_then(|letters| letters.iter().find(|letter| letter.service == flow.service))
            .or_else(|| {
                upstream.places(hash).find_map(|place| {
                    ledger
                        .dead_by_place
                        .get(&(
                            ledger.topic_name(place.topic).to_owned(),
                            place.partition,
                            place.offset,
                        ))
                        .filter(|letter| letter.service == flow.service)
                })
            });
        // A store that rightly lacks it (a profile's cap or expiry).
        let store_reason = to.iter().find_map(|stage| match stage {
            Stage::Store(store) => ledger.store_explained.get(&(store.clone(), hash)),
            _ => None,
        });
        let explanation = if let Some(letter) = letter {
            Some(format!(
                "dead-lettered by {}: {}",
                flow.service, letter.reason
            ))
        } else if let Some(reason) = store_reason {
            Some(reason.clone())
        } else if upstream
            .places(hash)
            .any(|place| !positions.consumed(ledger, flow.group.as_deref(), &place))
        {
            Some(format!(
                "in flight: {} has not committed it yet",
                flow.group.as_deref().unwrap_or(&flow.service)
            ))
        } else {
            None
        };
        tallies
            .entry(("missing", explanation))
            .or_default()
            .add(1, || ledger.name(hash).to_owned());
    }
    for (hash, copies) in downstream.events() {
        if !upstream.contains(hash) {
            tallies
                .entry(("unexpected", None))
                .or_default()
                .add(1, || ledger.name(hash).to_owned());
        }
        if copies > 1 {
            let explanation = flow
                .copies_allowed
                .then(|| "copies: bidder retries, cross-DC copies or at-least-once redelivery (removed by the deduplicator, absorbed by idempotent stores)".to_owned());
            tallies
                .entry(("copies", explanation))
                .or_default()
                .add(i64::from(copies - 1), || ledger.name(hash).to_owned());
        }
    }
    tallies
        .into_iter()
        .map(|((what, explanation), tally)| Difference {
            flow: flow.name.clone(),
            bucket,
            kind,
            what: what.to_owned(),
            count: tally.count,
            explanation,
            samples: tally.samples,
        })
        .collect()
}

/// The measure a count-only store keeps for events of `stage`: `stats`,
/// or `stats orphans <reason>` for an orphan.
pub fn measure(stage: &Stage, orphan_reason: Option<&str>) -> String {
    match (stage, orphan_reason) {
        (Stage::Orphaned, Some(reason)) => format!("stats orphans {reason}"),
        (Stage::Orphaned, None) => "stats orphans ?".to_owned(),
        _ => "stats".to_owned(),
    }
}

fn check_count(
    ledger: &Ledger,
    positions: &Positions,
    flow: &CountFlow,
    bucket: Bucket,
    kind: Kind,
    from: &[Stage],
) -> Vec<Difference> {
    // measure → (events the group committed, events in flight, records
    // it committed: more than the events when its input held copies)
    let mut expected: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for stage in from {
        let Some(book) = ledger.book(bucket, kind, stage) else {
            continue;
        };
        for (hash, _) in book.events() {
            let reason = ledger.orphan_reasons.get(&hash).map(String::as_str);
            let slot = expected.entry(measure(stage, reason)).or_default();
            let dead = ledger
                .dead
                .get(&hash)
                .is_some_and(|letters| letters.iter().any(|l| l.service == flow.service));
            if dead {
                continue;
            }
            let consumed = book
                .places(hash)
                .filter(|place| positions.consumed(ledger, flow.group.as_deref(), place))
                .count() as i64;
            if consumed > 0 {
                slot.0 += 1;
                slot.2 += consumed;
            } else if book.places(hash).next().is_some() {
                slot.1 += 1;
            }
        }
    }
    for (counted_bucket, counted_kind, measure) in ledger.counted.keys() {
        if *counted_bucket == bucket && *counted_kind == kind {
            expected.entry(measure.clone()).or_default();
        }
    }
    let mut found = Vec::new();
    for (measure, (committed, in_flight, records)) in expected {
        let counted = ledger
            .counted
            .get(&(bucket, kind, measure.clone()))
            .copied()
            .unwrap_or(0);
        if counted != committed {
            found.push(Difference {
                flow: format!("{} ({measure})", flow.name),
                bucket,
                kind,
                what: "miscounted".to_owned(),
                count: counted - committed,
                explanation: None,
                samples: vec![if records == committed {
                    format!("counted {counted}, the events it committed say {committed}")
                } else {
                    format!(
                        "counted {counted}, the events it committed say {committed} (its input held {} copies: {records} records)",
                        records - committed
                    )
                }],
            });
        }
        if in_flight > 0 {
            found.push(Difference {
                flow: format!("{} ({measure})", flow.name),
                bucket,
                kind,
                what: "missing".to_owned(),
                count: in_flight,
                explanation: Some(format!(
                    "in flight: {} has not committed them yet",
                    flow.group.as_deref().unwrap_or(&flow.service)
                )),
                samples: Vec::new(),
            });
        }
    }
    found
}

/// Records that did not decode: each explained by a dead letter of the
/// service that read it (matched by its coordinates), or — a DC's record
/// MirrorMaker 2 copied to central — by the dead letter of its copy (the
/// same bytes in another topic); else unexplained.
pub fn undecodable(ledger: &Ledger) -> Vec<Difference> {
    let letter_of = |record: &crate::ledger::Undecodable| {
        ledger
            .dead_by_place
            .get(&(record.topic.clone(), record.partition, record.offset))
    };
    let mut tallies: BTreeMap<Option<String>, Tally> = BTreeMap::new();
    for record in &ledger.undecodable {
        let explanation = match letter_of(record) {
            Some(letter) => Some(format!(
                "dead-lettered by {}: {}",
                letter.service, letter.reason
            )),
            None => ledger
                .undecodable
                .iter()
                .filter(|copy| copy.topic != record.topic && copy.value_hash == record.value_hash)
                .find_map(|copy| {
                    letter_of(copy).map(|letter| {
                        format!(
                            "copied to {}, dead-lettered there by {}: {}",
                            copy.topic, letter.service, letter.reason
                        )
                    })
                }),
        };
        tallies.entry(explanation).or_default().add(1, || {
            format!(
                "{}-{}@{}: {}",
                record.topic, record.partition, record.offset, record.error
            )
        });
    }
    tallies
        .into_iter()
        .map(|(explanation, tally)| Difference {
            flow: "undecodable records".to_owned(),
            bucket: Bucket::Elsewhere,
            kind: Kind::Impression,
            what: "undecodable".to_owned(),
            count: tally.count,
            explanation,
            samples: tally.samples,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(copies_allowed: bool) -> Flow {
        Flow {
            name: "merged → deduplicated".to_owned(),
            from: BTreeMap::from([(Kind::Click, vec![Stage::Merged])]),
            to: BTreeMap::from([(Kind::Click, vec![Stage::Deduplicated])]),
            service: "deduplicator".to_owned(),
            group: Some("g".to_owned()),
            copies_allowed,
        }
    }

    fn ledger() -> (Ledger, Positions) {
        let mut ledger = Ledger::new();
        let merged = ledger.topic("merged.clicks");
        let hour = Bucket::Hour(0);
        for (offset, id) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            let place = Place {
                topic: merged,
                partition: 0,
                offset: offset as i64,
            };
            ledger.record(hour, Kind::Click, Stage::Merged, id, Some(place));
        }
        // a: arrived twice; b: dead-lettered; c: lost; d: arrived; e: not consumed yet.
        ledger.record(hour, Kind::Click, Stage::Deduplicated, "a", None);
        ledger.record(hour, Kind::Click, Stage::Deduplicated, "a", None);
        ledger.dead_letter("b", "deduplicator", "far_future");
        ledger.record(hour, Kind::Click, Stage::Deduplicated, "d", None);
        ledger.record(hour, Kind::Click, Stage::Deduplicated, "z", None);
        let positions = Positions {
            committed: HashMap::from([(("g".to_owned(), "merged.clicks".to_owned(), 0), 4)]),
        };
        (ledger, positions)
    }

    fn find<'a>(found: &'a [Difference], what: &str, explained: bool) -> &'a Difference {
        found
            .iter()
            .find(|d| d.what == what && d.explanation.is_some() == explained)
            .unwrap_or_else(|| panic!("no {what} (explained: {explained}) in {found:#?}"))
    }

    #[test]
    fn each_difference_is_named_and_explained_only_by_what_the_chain_says() {
        let (ledger, positions) = ledger();
        let found = differences(&ledger, &positions, &[flow(true)], &[]);
        let lost = found
            .iter()
            .find(|d| d.what == "missing" && d.explanation.is_none())
            .expect("c is lost");
        assert_eq!(
            (lost.count, lost.samples.clone()),
            (1, vec!["c".to_owned()])
        );
        let dead = found
            .iter()
            .find(|d| d.explanation.as_deref() == Some("dead-lettered by deduplicator: far_future"))
            .expect("b explained");
        assert_eq!(dead.samples, ["b"]);
        let in_flight = found
            .iter()
            .find(|d| {
                d.explanation
                    .as_deref()
                    .is_some_and(|e| e.starts_with("in flight"))
            })
            .expect("e in flight");
        assert_eq!(in_flight.samples, ["e"]);
        assert_eq!(find(&found, "unexpected", false).samples, ["z"]);
        assert_eq!(
            find(&found, "copies", true).count,
            1,
            "a's copy is explained here"
        );
        let strict = differences(&ledger, &positions, &[flow(false)], &[]);
        assert_eq!(
            find(&strict, "copies", false).samples,
            ["a"],
            "but not in a store"
        );
    }

    #[test]
    fn an_undecodable_record_is_explained_by_its_own_dead_letter_or_its_copys() {
        use crate::ledger::{DeadLetter, Undecodable};
        let mut ledger = Ledger::new();
        let record = |topic: &str, offset: i64, value_hash: u64| Undecodable {
            topic: topic.to_owned(),
            partition: 3,
            offset,
            error: "bad magic byte".to_owned(),
            value_hash,
        };
        // dc1's record, its copy on central (dead-lettered there), and a
        // record nobody dead-lettered.
        ledger.undecodable.push(record("impressions", 7, 42));
        ledger.undecodable.push(record("dc1.impressions", 9, 42));
        ledger.undecodable.push(record("dc1.impressions", 10, 43));
        ledger.dead_by_place.insert(
            ("dc1.impressions".to_owned(), 3, 9),
            DeadLetter {
                service: "merger".to_owned(),
                reason: "bad_magic_byte".to_owned(),
            },
        );
        let found = undecodable(&ledger);
        let count = |prefix: Option<&str>| -> i64 {
            found
                .iter()
                .filter(|d| match (prefix, &d.explanation) {
                    (None, None) => true,
                    (Some(prefix), Some(explanation)) => explanation.starts_with(prefix),
                    _ => false,
                })
                .map(|d| d.count)
                .sum()
        };
        assert_eq!(count(Some("dead-lettered by merger")), 1, "{found:#?}");
        assert_eq!(count(Some("copied to dc1.impressions")), 1, "{found:#?}");
        assert_eq!(count(None), 1, "{found:#?}");
    }

    #[test]
    fn a_count_differs_only_from_what_its_consumer_committed() {
        let (mut ledger, positions) = ledger();
        let counts = CountFlow {
            name: "stats".to_owned(),
            from: BTreeMap::from([(Kind::Click, vec![Stage::Merged])]),
            service: "deduplicator".to_owned(),
            group: Some("g".to_owned()),
        };
        // Committed: a, b, c, d (offsets 0..3); b dead-lettered → 3 counted.
        ledger
            .counted
            .insert((Bucket::Hour(0), Kind::Click, "stats".to_owned()), 3);
        let found = differences(&ledger, &positions, &[], std::slice::from_ref(&counts));
        assert!(found.iter().all(|d| d.what != "miscounted"), "{found:#?}");
        assert_eq!(find(&found, "missing", true).count, 1, "e in flight");
        ledger
            .counted
            .insert((Bucket::Hour(0), Kind::Click, "stats".to_owned()), 4);
        let found = differences(&ledger, &positions, &[], std::slice::from_ref(&counts));
        assert_eq!(
            find(&found, "miscounted", false).count,
            1,
            "one counted twice"
        );
        // A copy of a in the counted input: the totals must still count a
        // once (counting the copy is the over-count, not the truth).
        let merged = ledger.topic("merged.clicks");
        let copy = Place {
            topic: merged,
            partition: 0,
            offset: 3,
        };
        ledger.record(Bucket::Hour(0), Kind::Click, Stage::Merged, "a", Some(copy));
        let found = differences(&ledger, &positions, &[], std::slice::from_ref(&counts));
        let over = find(&found, "miscounted", false);
        assert_eq!(over.count, 1, "4 counted for 3 events: {found:#?}");
        assert!(over.samples[0].contains("1 copies"), "{over:?}");
        ledger
            .counted
            .insert((Bucket::Hour(0), Kind::Click, "stats".to_owned()), 3);
        let found = differences(&ledger, &positions, &[], &[counts]);
        assert!(found.iter().all(|d| d.what != "miscounted"), "{found:#?}");
    }
}
