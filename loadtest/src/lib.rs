//! The bidder simulator and its ground truth.
//!
//! [`Simulation::generate`] produces a deterministic (seeded) stream of
//! impressions, clicks and conversions for several DCs, keyed by user id, in
//! RTB House's daily ratios (350M impressions : 3.5M clicks : 1.5M
//! conversions), with injected duplicates of the three kinds real pipelines
//! see — a bidder's retry (same DC, right after), the same event sent to two
//! DCs, and a late copy (re-sent much later). [`GroundTruth`] records what a
//! correct pipeline must deliver; [`GroundTruth::check`] compares any output
//! with it.
#![warn(missing_docs)]

pub mod bareloop;
pub mod bidders;
pub mod joins;
pub mod output;
pub mod pace;
pub mod passthrough;
pub mod publish;
mod truth_file;

pub use truth_file::TruthFileError;

use std::collections::{HashMap, HashSet};

use adpipe_events::{Click, Conversion, Impression};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Clicks per impression (3.5M / 350M).
pub const CLICK_RATE: f64 = 3.5 / 350.0;
/// Conversions per impression (1.5M / 350M).
pub const CONVERSION_RATE: f64 = 1.5 / 350.0;

/// One simulated event, as a bidder publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimEvent {
    /// An impression.
    Impression(Impression),
    /// A click.
    Click(Click),
    /// A conversion.
    Conversion(Conversion),
}

impl SimEvent {
    /// The event id.
    pub fn event_id(&self) -> &str {
        match self {
            SimEvent::Impression(event) => &event.event_id,
            SimEvent::Click(event) => &event.event_id,
            SimEvent::Conversion(event) => &event.event_id,
        }
    }

    /// The event's type.
    pub fn kind(&self) -> adpipe_events::EventKind {
        match self {
            SimEvent::Impression(_) => adpipe_events::EventKind::Impression,
            SimEvent::Click(_) => adpipe_events::EventKind::Click,
            SimEvent::Conversion(_) => adpipe_events::EventKind::Conversion,
        }
    }

    /// The event time (ms).
    pub fn event_time(&self) -> i64 {
        match self {
            SimEvent::Impression(event) => event.event_time,
            SimEvent::Click(event) => event.event_time,
            SimEvent::Conversion(event) => event.event_time,
        }
    }

    /// Restamps the event time (the latency benchmark stamps events with
    /// the moment they are published).
    pub fn set_event_time(&mut self, event_time_ms: i64) {
        match self {
            SimEvent::Impression(event) => event.event_time = event_time_ms,
            SimEvent::Click(event) => event.event_time = event_time_ms,
            SimEvent::Conversion(event) => event.event_time = event_time_ms,
        }
    }

    /// The user id (Kafka key).
    pub fn user_id(&self) -> &str {
        match self {
            SimEvent::Impression(event) => &event.user_id,
            SimEvent::Click(event) => &event.user_id,
            SimEvent::Conversion(event) => &event.user_id,
        }
    }
}

/// One publication: which DC's cluster gets which event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Datacenter the bidder publishes to.
    pub dc: String,
    /// The event.
    pub event: SimEvent,
    /// Whether this copy is an injected duplicate.
    pub duplicate: bool,
}

/// Simulation parameters.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// Seed: the same seed gives the same events.
    pub seed: u64,
    /// Impressions to generate (clicks and conversions follow the ratios).
    pub impressions: u64,
    /// Datacenter names.
    pub dcs: Vec<String>,
    /// Distinct users.
    pub users: u64,
    /// Fraction of events published twice.
    pub duplicate_rate: f64,
    /// First event time (ms).
    pub start_time_ms: i64,
    /// Event time between consecutive impressions (ms). A live run sets it
    /// from its publish rate so event times follow the wall clock.
    pub ms_per_impression: f64,
}

impl Default for Simulation {
    fn default() -> Self {
        Simulation {
            seed: 42,
            impressions: 100_000,
            dcs: vec!["dc1".to_owned(), "dc2".to_owned()],
            users: 20_000,
            duplicate_rate: 0.05,
            start_time_ms: 1_763_700_000_000,
            ms_per_impression: 1.0,
        }
    }
}

/// What a correct pipeline delivers for a simulation.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct GroundTruth {
    /// Unique impression ids.
    pub impressions: HashSet<String>,
    /// Unique click ids, with the impression each refers to.
    pub clicks: HashMap<String, String>,
    /// Unique conversion ids, with the click each reports (if any).
    pub conversions: HashMap<String, Option<String>>,
    /// Publications in all (uniques plus duplicates).
    pub published: u64,
    /// Injected duplicate copies.
    pub duplicates: u64,
}

impl GroundTruth {
    /// Unique events of every kind.
    pub fn uniques(&self) -> u64 {
        (self.impressions.len() + self.clicks.len() + self.conversions.len()) as u64
    }

    /// Whether an id belongs to the simulation.
    pub fn knows(&self, event_id: &str) -> bool {
        self.impressions.contains(event_id)
            || self.clicks.contains_key(event_id)
            || self.conversions.contains_key(event_id)
    }

    /// Compares delivered event ids (with repetitions) against the truth.
    pub fn check<'a>(&self, delivered: impl IntoIterator<Item = &'a str>) -> CheckReport {
        self.count(delivered, |id| self.knows(id))
    }

    /// [`GroundTruth::check`] over ids as the caller keeps them: `key` turns
    /// an id of the truth into the delivered ids' form (a hash, where the
    /// text of millions of ids outgrows the memory).
    pub fn check_ids<K: Eq + std::hash::Hash>(
        &self,
        delivered: impl IntoIterator<Item = K>,
        key: impl Fn(&str) -> K,
    ) -> CheckReport {
        let known: HashSet<K> = self
            .impressions
            .iter()
            .chain(self.clicks.keys())
            .chain(self.conversions.keys())
            .map(|id| key(id))
            .collect();
        self.count(delivered, |id| known.contains(id))
    }

    /// Counts `delivered` (with repetitions) by what `knows` says of each.
    fn count<K: Eq + std::hash::Hash>(
        &self,
        delivered: impl IntoIterator<Item = K>,
        knows: impl Fn(&K) -> bool,
    ) -> CheckReport {
        let mut counts: HashMap<K, u64> = HashMap::new();
        let mut unknown = 0;
        for event_id in delivered {
            if knows(&event_id) {
                *counts.entry(event_id).or_default() += 1;
            } else {
                unknown += 1;
            }
        }
        let delivered_uniques = counts.len() as u64;
        CheckReport {
            expected_uniques: self.uniques(),
            delivered_uniques,
            missing: self.uniques() - delivered_uniques,
            delivered_more_than_once: counts.values().filter(|count| **count > 1).count() as u64,
            extra_copies: counts.values().map(|count| count.saturating_sub(1)).sum(),
            unknown,
        }
    }
}

/// The result of checking an output against the ground truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Unique events the truth holds.
    pub expected_uniques: u64,
    /// Distinct known events delivered.
    pub delivered_uniques: u64,
    /// Unique events never delivered (loss).
    pub missing: u64,
    /// Events delivered more than once.
    pub delivered_more_than_once: u64,
    /// Copies beyond the first.
    pub extra_copies: u64,
    /// Delivered ids the simulation never produced.
    pub unknown: u64,
}

impl CheckReport {
    /// No loss and no foreign events.
    pub fn complete(&self) -> bool {
        self.missing == 0 && self.unknown == 0
    }
}

impl Simulation {
    /// Live event times: the first event is `start_time_ms` (normally now)
    /// and event times advance with the wall clock when the publications
    /// are published at `rate` per second (0: as fast as possible, 1 ms apart).
    pub fn follow_wall_clock(&mut self, start_time_ms: i64, rate: f64) {
        self.start_time_ms = start_time_ms;
        self.ms_per_impression = if rate > 0.0 {
            1000.0 * self.publications_per_impression() / rate
        } else {
            1.0
        };
    }

    /// Publications per impression on average: the impression, its share
    /// of clicks and conversions, and the injected copies of all three.
    pub fn publications_per_impression(&self) -> f64 {
        (1.0 + CLICK_RATE + CONVERSION_RATE) * (1.0 + self.duplicate_rate)
    }

    /// Generates the publications, in publication order, and the truth.
    pub fn generate(&self) -> (Vec<Publication>, GroundTruth) {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut truth = GroundTruth::default();
        let mut publications = Vec::new();
        let mut late: Vec<(usize, Publication)> = Vec::new();
        // Per user: last impression and last click, for realistic references.
        let mut last_impression: HashMap<u64, String> = HashMap::new();
        let mut last_click: HashMap<u64, String> = HashMap::new();
        let dc_count = self.dcs.len().max(1);
        for n in 0..self.impressions {
            let user = rng.random_range(0..self.users.max(1));
            let dc = self.dcs[rng.random_range(0..dc_count)].clone();
            let time = self.start_time_ms + (n as f64 * self.ms_per_impression) as i64;
            let mut impression = adpipe_events::samples::impression(n);
            impression.event_id = format!("imp-{}-{n}", self.seed);
            impression.user_id = format!("user-{user:08}");
            impression.dc = dc.clone();
            impression.event_time = time;
            truth.impressions.insert(impression.event_id.clone());
            last_impression.insert(user, impression.event_id.clone());
            let mut batch = vec![SimEvent::Impression(impression.clone())];
            if rng.random_bool(CLICK_RATE) {
                let click = Click {
                    event_id: format!("clk-{}-{n}", self.seed),
                    event_time: time + 1,
                    dc: dc.clone(),
                    user_id: impression.user_id.clone(),
                    impression_id: impression.event_id.clone(),
                    landing_url: format!("https://shop.example/p/{n}"),
                };
                truth
                    .clicks
                    .insert(click.event_id.clone(), click.impression_id.clone());
                last_click.insert(user, click.event_id.clone());
                batch.push(SimEvent::Click(click));
            }
            if rng.random_bool(CONVERSION_RATE) {
                // About 70% post-click (reporting the user's last click), the rest post-view.
                let click_id = last_click
                    .get(&user)
                    .filter(|_| rng.random_bool(0.7))
                    .cloned();
                let conversion = Conversion {
                    event_id: format!("cnv-{}-{n}", self.seed),
                    event_time: time + 2,
                    dc: dc.clone(),
                    user_id: impression.user_id.clone(),
                    advertiser_id: impression.advertiser_id,
                    click_id: click_id.clone(),
                    order_id: format!("order-{n}"),
                    value_micros: rng.random_range(1_000_000..500_000_000),
                    currency: "EUR".to_owned(),
                };
                truth
                    .conversions
                    .insert(conversion.event_id.clone(), click_id);
                batch.push(SimEvent::Conversion(conversion));
            }
            for event in batch {
                publications.push(Publication {
                    dc: dc.clone(),
                    event: event.clone(),
                    duplicate: false,
                });
                if rng.random_bool(self.duplicate_rate) {
                    let copy_dc = match rng.random_range(0..3) {
                        // The same event sent to another DC.
                        0 if dc_count > 1 => self
                            .dcs
                            .iter()
                            .find(|other| **other != dc)
                            .cloned()
                            .unwrap_or(dc.clone()),
                        _ => dc.clone(),
                    };
                    let copy = Publication {
                        dc: copy_dc,
                        event,
                        duplicate: true,
                    };
                    if rng.random_bool(0.2) {
                        // A late copy, re-sent up to a few thousand events later.
                        late.push((publications.len() + rng.random_range(100..5_000), copy));
                    } else {
                        publications.push(copy); // a bidder's immediate retry
                    }
                }
            }
            while let Some(position) = late.iter().position(|(due, _)| *due <= publications.len()) {
                publications.push(late.swap_remove(position).1);
            }
        }
        publications.extend(late.into_iter().map(|(_, copy)| copy));
        truth.published = publications.len() as u64;
        truth.duplicates = publications
            .iter()
            .filter(|publication| publication.duplicate)
            .count() as u64;
        (publications, truth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_advance_at_the_configured_pace() {
        let simulation = Simulation {
            impressions: 50_000,
            ms_per_impression: 2.5,
            ..Simulation::default()
        };
        let (publications, truth) = simulation.generate();
        let impression_times: Vec<i64> = publications
            .iter()
            .filter(|publication| !publication.duplicate)
            .filter_map(|publication| match &publication.event {
                SimEvent::Impression(impression) => Some(impression.event_time),
                _ => None,
            })
            .collect();
        assert_eq!(impression_times[0], simulation.start_time_ms);
        assert_eq!(impression_times[2] - impression_times[0], 5);
        assert_eq!(
            impression_times[49_999] - simulation.start_time_ms,
            (49_999.0 * 2.5) as i64
        );
        // The estimate a live run paces event time with matches the mix.
        let actual = truth.published as f64 / 50_000.0;
        let estimate = simulation.publications_per_impression();
        assert!(
            (actual / estimate - 1.0).abs() < 0.01,
            "{actual} vs {estimate}"
        );
    }

    #[test]
    fn generates_realistic_ratios_and_consistent_truth() {
        let simulation = Simulation {
            impressions: 200_000,
            ..Simulation::default()
        };
        let (publications, truth) = simulation.generate();
        assert_eq!(truth.impressions.len(), 200_000);
        let clicks = truth.clicks.len() as f64 / 200_000.0;
        assert!((clicks - CLICK_RATE).abs() < 0.002, "click rate {clicks}");
        assert!(!truth.conversions.is_empty());
        assert_eq!(truth.published, publications.len() as u64);
        assert_eq!(truth.published, truth.uniques() + truth.duplicates);
        // Every click refers to an impression of the same user that came before.
        let users: HashMap<&str, &str> = publications
            .iter()
            .filter_map(|publication| match &publication.event {
                SimEvent::Impression(impression) => {
                    Some((impression.event_id.as_str(), impression.user_id.as_str()))
                }
                _ => None,
            })
            .collect();
        for publication in &publications {
            if let SimEvent::Click(click) = &publication.event {
                assert_eq!(
                    users.get(click.impression_id.as_str()),
                    Some(&click.user_id.as_str())
                );
            }
        }
        // Deterministic.
        assert_eq!(simulation.generate().0, publications);
    }

    #[test]
    fn the_checker_counts_loss_and_extra_copies() {
        let (_, truth) = Simulation {
            impressions: 1_000,
            ..Simulation::default()
        }
        .generate();
        let mut delivered: Vec<String> = truth.impressions.iter().cloned().collect();
        delivered.extend(truth.clicks.keys().cloned());
        delivered.extend(truth.conversions.keys().cloned());
        let lost = delivered.pop().expect("something");
        delivered.push(delivered[0].clone());
        delivered.push("not-ours".to_owned());
        assert!(!delivered.contains(&lost));
        let report = truth.check(delivered.iter().map(String::as_str));
        assert_eq!(
            (report.missing, report.extra_copies, report.unknown),
            (1, 1, 1)
        );
        assert!(!truth.check(std::iter::empty()).complete());
    }
}
