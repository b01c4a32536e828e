//! What a batch of events adds to the aggregates (pure logic, no IO).
//!
//! Contract (design.md, "Join and stats rules"): every event counts in the
//! bucket of its own `event_time`, in a minute and an hour bucket:
//! - an impression: one impression and its cost, under its dimensions;
//! - a joined click: one click, under its impression's dimensions;
//! - a joined conversion: one conversion and its value, under the
//!   attributed click's impression's dimensions, in the conversion's
//!   currency (money is summed per currency: no exchange rates);
//! - an orphan: one count per (bucket, kind, reason), kept apart from the
//!   campaign stats so reconciliation can account for every event.
//!
//! Bad input never reaches the sums: a negative cost or value, or a
//! currency that is not three capital letters, is a [`Rejected`] record
//! (the caller dead-letters it with the reason). An empty text dimension
//! (site, ssp, country, dc) is counted under [`UNKNOWN`] instead.

use std::collections::HashMap;

use adpipe_events::{Impression, JoinedClick, JoinedConversion};

/// The value an empty text dimension is counted under.
pub const UNKNOWN: &str = "unknown";

/// The bucket sizes, each with its own table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BucketSize {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
}

impl BucketSize {
    /// Every size, in table order.
    pub const ALL: [BucketSize; 2] = [BucketSize::Minute, BucketSize::Hour];

    /// The bucket's length in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            BucketSize::Minute => 60_000,
            BucketSize::Hour => 3_600_000,
        }
    }

    /// The start of the bucket holding `event_time_ms`.
    pub fn start_of(self, event_time_ms: i64) -> i64 {
        event_time_ms.div_euclid(self.millis()) * self.millis()
    }

    /// The name used in table and view names.
    pub fn name(self) -> &'static str {
        match self {
            BucketSize::Minute => "minute",
            BucketSize::Hour => "hour",
        }
    }
}

/// The dimensions a row is counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dimensions {
    /// Campaign id.
    pub campaign_id: i64,
    /// Creative id.
    pub creative_id: i64,
    /// Advertiser id.
    pub advertiser_id: i64,
    /// Publisher id.
    pub publisher_id: i64,
    /// Site or app domain.
    pub site: String,
    /// Supply-side platform.
    pub ssp: String,
    /// Country code.
    pub country: String,
    /// The impression's datacenter.
    pub dc: String,
    /// The currency of the row's money.
    pub currency: String,
}

/// A row's key: bucket size, bucket start (ms) and dimensions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    /// Bucket size.
    pub size: BucketSize,
    /// Bucket start, milliseconds since the epoch.
    pub bucket_ms: i64,
    /// Dimensions.
    pub dimensions: Dimensions,
}

/// The measures of a row (increments in a batch, totals in the store).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Impressions.
    pub impressions: i64,
    /// Joined clicks.
    pub clicks: i64,
    /// Joined conversions.
    pub conversions: i64,
    /// Sum of the impressions' cost, micros.
    pub cost_micros: i64,
    /// Sum of the conversions' value, micros.
    pub conversion_value_micros: i64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.impressions += other.impressions;
        self.clicks += other.clicks;
        self.conversions += other.conversions;
        self.cost_micros += other.cost_micros;
        self.conversion_value_micros += other.conversion_value_micros;
    }
}

/// An orphan row's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrphanKey {
    /// Bucket size.
    pub size: BucketSize,
    /// Bucket start, milliseconds since the epoch.
    pub bucket_ms: i64,
    /// `click` or `conversion`.
    pub kind: String,
    /// The joiner's reason.
    pub reason: String,
}

/// A record that cannot be counted, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Rejected {
    /// Machine-readable reason (the dead-letter reason).
    pub kind: &'static str,
    /// What was wrong.
    pub message: String,
}

/// What a batch adds: increments per row and per orphan row.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Increments {
    /// Campaign rows.
    pub rows: HashMap<RowKey, Counts>,
    /// Orphan rows.
    pub orphans: HashMap<OrphanKey, i64>,
    /// Empty text dimensions counted under [`UNKNOWN`], by dimension.
    pub unknown_dimensions: HashMap<&'static str, u64>,
    /// Events that landed in a bucket already closed (see [`Closing`]),
    /// by bucket size: corrections of totals already reported.
    pub corrections: HashMap<BucketSize, u64>,
}

/// Tells which buckets an event corrects: a bucket is closed once the
/// latest event time seen (in one input partition) is `closed_after`
/// past its end. Late events still count in their own bucket (totals are
/// corrected, never dropped); this only measures how often that happens.
/// Event time, not the clock, so a replay of old data is not all "late".
#[derive(Debug, Clone)]
pub struct Closing {
    closed_after_ms: i64,
    high_water_ms: Option<i64>,
}

impl Closing {
    /// Buckets close `closed_after_ms` after their end.
    pub fn new(closed_after_ms: i64) -> Closing {
        Closing {
            closed_after_ms,
            high_water_ms: None,
        }
    }

    /// Notes an event at `event_time_ms`; returns the bucket sizes whose
    /// bucket for it was already closed.
    pub fn observe(&mut self, event_time_ms: i64) -> impl Iterator<Item = BucketSize> + use<> {
        let high = self.high_water_ms.unwrap_or(event_time_ms);
        self.high_water_ms = Some(high.max(event_time_ms));
        let closed_after = self.closed_after_ms;
        BucketSize::ALL
            .into_iter()
            .filter(move |size| size.start_of(event_time_ms) + size.millis() + closed_after <= high)
    }
}

fn check_currency(currency: &str) -> Result<(), Rejected> {
    if currency.len() == 3 && currency.bytes().all(|byte| byte.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(Rejected {
            kind: "invalid_currency",
            message: format!(
                "currency {currency:?} is not an ISO 4217 code (three capital letters)"
            ),
        })
    }
}

fn check_money(kind: &'static str, field: &str, micros: i64) -> Result<(), Rejected> {
    if micros < 0 {
        return Err(Rejected {
            kind,
            message: format!("{field} is negative ({micros})"),
        });
    }
    Ok(())
}

impl Increments {
    /// Nothing added yet.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.orphans.is_empty()
    }

    /// The impression's dimensions with money in `currency`; empty text
    /// dimensions counted under [`UNKNOWN`].
    fn dimensions(&mut self, impression: &Impression, currency: &str) -> Dimensions {
        let mut text = |name: &'static str, value: &str| {
            if value.is_empty() {
                *self.unknown_dimensions.entry(name).or_default() += 1;
                UNKNOWN.to_owned()
            } else {
                value.to_owned()
            }
        };
        Dimensions {
            campaign_id: impression.campaign_id,
            creative_id: impression.creative_id,
            advertiser_id: impression.advertiser_id,
            publisher_id: impression.publisher_id,
            site: text("site", &impression.site),
            ssp: text("ssp", &impression.ssp),
            country: text("country", &impression.country),
            dc: text("dc", &impression.dc),
            currency: currency.to_owned(),
        }
    }

    fn add_row(&mut self, event_time_ms: i64, dimensions: Dimensions, counts: Counts) {
        for size in BucketSize::ALL {
            let key = RowKey {
                size,
                bucket_ms: size.start_of(event_time_ms),
                dimensions: dimensions.clone(),
            };
            self.rows.entry(key).or_default().add(counts);
        }
    }

    /// Counts an impression (and its cost).
    pub fn add_impression(&mut self, impression: &Impression) -> Result<(), Rejected> {
        check_money("negative_cost", "cost_micros", impression.cost_micros)?;
        check_currency(&impression.currency)?;
        let dimensions = self.dimensions(impression, &impression.currency);
        self.add_row(
            impression.event_time,
            dimensions,
            Counts {
                impressions: 1,
                cost_micros: impression.cost_micros,
                ..Counts::default()
            },
        );
        Ok(())
    }

    /// Counts a joined click under its impression's dimensions.
    pub fn add_click(&mut self, joined: &JoinedClick) -> Result<(), Rejected> {
        check_currency(&joined.impression.currency)?;
        let dimensions = self.dimensions(&joined.impression, &joined.impression.currency);
        self.add_row(
            joined.click.event_time,
            dimensions,
            Counts {
                clicks: 1,
                ..Counts::default()
            },
        );
        Ok(())
    }

    /// Counts a joined conversion (and its value) under the attributed
    /// click's impression's dimensions, in the conversion's currency.
    pub fn add_conversion(&mut self, joined: &JoinedConversion) -> Result<(), Rejected> {
        let conversion = &joined.conversion;
        check_money("negative_value", "value_micros", conversion.value_micros)?;
        check_currency(&conversion.currency)?;
        let dimensions = self.dimensions(&joined.impression, &conversion.currency);
        self.add_row(
            conversion.event_time,
            dimensions,
            Counts {
                conversions: 1,
                conversion_value_micros: conversion.value_micros,
                ..Counts::default()
            },
        );
        Ok(())
    }

    /// Counts an orphan of `kind` (`click`, `conversion`) with `reason`.
    pub fn add_orphan(&mut self, event_time_ms: i64, kind: &str, reason: &str) {
        for size in BucketSize::ALL {
            let key = OrphanKey {
                size,
                bucket_ms: size.start_of(event_time_ms),
                kind: kind.to_owned(),
                reason: reason.to_owned(),
            };
            *self.orphans.entry(key).or_default() += 1;
        }
    }

    /// The rows of one bucket size (what its table should hold, for
    /// increments counted from nothing).
    pub fn rows_of(&self, size: BucketSize) -> HashMap<RowKey, Counts> {
        self.rows
            .iter()
            .filter(|(key, _)| key.size == size)
            .map(|(key, counts)| (key.clone(), *counts))
            .collect()
    }

    /// The orphan rows of one bucket size.
    pub fn orphans_of(&self, size: BucketSize) -> HashMap<OrphanKey, i64> {
        self.orphans
            .iter()
            .filter(|(key, _)| key.size == size)
            .map(|(key, count)| (key.clone(), *count))
            .collect()
    }

    /// Adds another batch's increments to these.
    pub fn merge(&mut self, other: Increments) {
        for (key, counts) in other.rows {
            self.rows.entry(key).or_default().add(counts);
        }
        for (key, count) in other.orphans {
            *self.orphans.entry(key).or_default() += count;
        }
        for (dimension, count) in other.unknown_dimensions {
            *self.unknown_dimensions.entry(dimension).or_default() += count;
        }
        for (size, count) in other.corrections {
            *self.corrections.entry(size).or_default() += count;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adpipe_events::samples;

    #[test]
    fn an_event_behind_a_closed_bucket_is_a_correction_of_that_size_only() {
        let minute = 60_000;
        let mut closing = Closing::new(minute);
        let corrected = |closing: &mut Closing, time| closing.observe(time).collect::<Vec<_>>();
        // 10:00:30 first: nothing is closed before anything was seen.
        let hour = 10 * 3_600_000;
        assert!(corrected(&mut closing, hour + 30_000).is_empty());
        // 10:02:00 closes 10:00 (ends 10:01, closed at 10:02), not 10:01.
        assert!(corrected(&mut closing, hour + 2 * minute).is_empty());
        assert_eq!(
            corrected(&mut closing, hour + 59_999),
            vec![BucketSize::Minute]
        );
        assert!(corrected(&mut closing, hour + minute + 1).is_empty());
        // 11:01:00 closes the 10 o'clock hour: a 10:30 event corrects both.
        assert!(corrected(&mut closing, hour + 61 * minute).is_empty());
        assert_eq!(
            corrected(&mut closing, hour + 30 * minute),
            vec![BucketSize::Minute, BucketSize::Hour]
        );
    }

    fn totals(increments: &Increments, size: BucketSize) -> Counts {
        let mut sum = Counts::default();
        for (key, counts) in &increments.rows {
            if key.size == size {
                sum.add(*counts);
            }
        }
        sum
    }

    #[test]
    fn each_event_counts_once_per_bucket_size_under_its_impressions_dimensions() {
        let mut increments = Increments::default();
        let impression = samples::impression(1);
        increments.add_impression(&impression).expect("counts");
        let joined_click = samples::joined_click(1);
        increments.add_click(&joined_click).expect("counts");
        let joined_conversion = samples::joined_conversion(1);
        increments
            .add_conversion(&joined_conversion)
            .expect("counts");
        for size in BucketSize::ALL {
            assert_eq!(
                totals(&increments, size),
                Counts {
                    impressions: 1,
                    clicks: 1,
                    conversions: 1,
                    cost_micros: impression.cost_micros,
                    conversion_value_micros: joined_conversion.conversion.value_micros,
                }
            );
        }
        let click_row = increments
            .rows
            .keys()
            .find(|key| {
                key.size == BucketSize::Minute
                    && key.bucket_ms == BucketSize::Minute.start_of(joined_click.click.event_time)
                    && key.dimensions.campaign_id == joined_click.impression.campaign_id
            })
            .expect("the click's row is in its own bucket, under its impression's campaign");
        assert_eq!(click_row.dimensions.site, joined_click.impression.site);
    }

    #[test]
    fn buckets_start_at_whole_minutes_and_hours_before_1970_too() {
        assert_eq!(BucketSize::Minute.start_of(119_999), 60_000);
        assert_eq!(BucketSize::Hour.start_of(3_600_000), 3_600_000);
        assert_eq!(BucketSize::Minute.start_of(-1), -60_000);
    }

    #[test]
    fn bad_money_is_rejected_and_empty_dimensions_count_as_unknown() {
        let mut increments = Increments::default();
        let mut impression = samples::impression(2);
        impression.cost_micros = -5;
        assert_eq!(
            increments
                .add_impression(&impression)
                .map_err(|error| error.kind),
            Err("negative_cost")
        );
        impression.cost_micros = 5;
        impression.currency = "euro".to_owned();
        assert_eq!(
            increments
                .add_impression(&impression)
                .map_err(|error| error.kind),
            Err("invalid_currency")
        );
        assert!(increments.is_empty(), "a rejected record adds nothing");
        impression.currency = "EUR".to_owned();
        impression.site.clear();
        increments.add_impression(&impression).expect("counts");
        assert!(
            increments
                .rows
                .keys()
                .all(|key| key.dimensions.site == UNKNOWN)
        );
        assert_eq!(increments.unknown_dimensions.get("site"), Some(&1));
        let mut conversion = samples::joined_conversion(2);
        conversion.conversion.value_micros = -1;
        assert_eq!(
            increments
                .add_conversion(&conversion)
                .map_err(|error| error.kind),
            Err("negative_value")
        );
    }

    #[test]
    fn merging_batches_equals_counting_them_together() {
        let (mut one, mut two, mut both) = (
            Increments::default(),
            Increments::default(),
            Increments::default(),
        );
        for n in 0..20 {
            let impression = samples::impression(n % 3);
            let target = if n % 2 == 0 { &mut one } else { &mut two };
            target.add_impression(&impression).expect("counts");
            target.add_orphan(impression.event_time, "click", "impression_not_found");
            both.add_impression(&impression).expect("counts");
            both.add_orphan(impression.event_time, "click", "impression_not_found");
        }
        one.merge(two);
        assert_eq!(one, both);
    }
}
