//! The joins a correct joiner produces for a simulation, computed from the
//! published (unique) events by the rules of design.md ("Join and stats
//! rules, precisely") — written apart from the joiner's code, so that the
//! tests and the demo compare it against an independent reading.
//!
//! Assumes what the simulator guarantees: a click comes after its
//! impression's publication, and every click a conversion could be
//! attributed to is published before that conversion.

use std::collections::{BTreeMap, HashMap};

use adpipe_events::{Attribution, Impression, JoinedClick, JoinedConversion};

use crate::SimEvent;

/// What the rules say must come out.
#[derive(Default)]
pub struct ExpectedJoins {
    /// Joined clicks by click id.
    pub clicks: HashMap<String, JoinedClick>,
    /// Joined conversions by conversion id.
    pub conversions: HashMap<String, JoinedConversion>,
    /// Orphans by event id, with their reason.
    pub orphans: HashMap<String, &'static str>,
}

/// The expected joins and orphans of `published` (unique events).
pub fn expected(published: &[SimEvent]) -> ExpectedJoins {
    let impressions: HashMap<&str, &Impression> = published
        .iter()
        .filter_map(|event| match event {
            SimEvent::Impression(impression) => Some((impression.event_id.as_str(), impression)),
            _ => None,
        })
        .collect();
    let mut expected = ExpectedJoins::default();
    // Joined clicks per user and advertiser, for last-click attribution.
    let mut by_user: HashMap<(&str, i64), Vec<&JoinedClick>> = HashMap::new();
    let mut joined: BTreeMap<String, JoinedClick> = BTreeMap::new();
    for event in published {
        if let SimEvent::Click(click) = event {
            match impressions.get(click.impression_id.as_str()) {
                Some(impression) => {
                    joined.insert(
                        click.event_id.clone(),
                        JoinedClick {
                            click: click.clone(),
                            impression: (*impression).clone(),
                        },
                    );
                }
                None => {
                    expected
                        .orphans
                        .insert(click.event_id.clone(), "impression_not_found");
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
        let SimEvent::Conversion(conversion) = event else {
            continue;
        };
        let attributed = match &conversion.click_id {
            Some(click_id) => match joined.get(click_id) {
                Some(click) => Some((click, Attribution::ClickId)),
                None if expected.orphans.contains_key(click_id) => {
                    expected
                        .orphans
                        .insert(conversion.event_id.clone(), "impression_not_found");
                    continue;
                }
                None => {
                    expected
                        .orphans
                        .insert(conversion.event_id.clone(), "click_not_found");
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
                            (a.click.event_time, &a.click.event_id)
                                .cmp(&(b.click.event_time, &b.click.event_id))
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
                expected
                    .orphans
                    .insert(conversion.event_id.clone(), "no_click");
            }
        }
    }
    expected.clicks = joined.into_iter().collect();
    expected
}
