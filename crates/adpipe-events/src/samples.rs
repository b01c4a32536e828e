//! Deterministic sample events for tests, benchmarks and the demo.
//!
//! Realistic sizes (an impression encodes to roughly 250 bytes) so benchmark
//! figures mean something; not a simulator (that lives in `loadtest/`).

use crate::{Attribution, Click, Conversion, Impression, JoinedClick, JoinedConversion};

/// Impression number `n`, for user `n % 1000`.
pub fn impression(n: u64) -> Impression {
    Impression {
        event_id: format!("imp-{n:016x}-5f1c2a9e-7b3d-4c1e-9a55-0d6f3b2c8e41"),
        event_time: 1_763_700_000_000 + i64::try_from(n).unwrap_or(i64::MAX) % 86_400_000,
        dc: if n.is_multiple_of(2) { "dc1" } else { "dc2" }.to_owned(),
        user_id: format!("user-{:08}", n % 1000),
        request_id: format!("req-{n:016x}-a1b2c3d4"),
        bid_id: format!("bid-{n:016x}"),
        campaign_id: 1_000 + i64::try_from(n % 50).unwrap_or(0),
        creative_id: 50_000 + i64::try_from(n % 400).unwrap_or(0),
        advertiser_id: 10 + i64::try_from(n % 20).unwrap_or(0),
        publisher_id: 700 + i64::try_from(n % 300).unwrap_or(0),
        site: "www.example-news-portal.com".to_owned(),
        ssp: "openx".to_owned(),
        url: format!("https://www.example-news-portal.com/world/2026/11/article-{n}.html?ref=home"),
        cost_micros: 1_250 + i64::try_from(n % 997).unwrap_or(0),
        currency: "EUR".to_owned(),
        device: "mobile".to_owned(),
        country: "PL".to_owned(),
    }
}

/// A click on [`impression`]`(n)`.
pub fn click(n: u64) -> Click {
    let impression = impression(n);
    Click {
        event_id: format!("clk-{n:016x}"),
        event_time: impression.event_time + 4_000,
        dc: impression.dc,
        user_id: impression.user_id,
        impression_id: impression.event_id,
        landing_url: format!("https://shop.example.com/product/{n}"),
    }
}

/// A conversion attributed to [`click`]`(n)`; every third one is post-view.
pub fn conversion(n: u64) -> Conversion {
    let click = click(n);
    Conversion {
        event_id: format!("cnv-{n:016x}"),
        event_time: click.event_time + 60_000,
        dc: click.dc,
        user_id: click.user_id,
        advertiser_id: 10 + i64::try_from(n % 20).unwrap_or(0),
        click_id: (!n.is_multiple_of(3)).then_some(click.event_id),
        order_id: format!("order-{n}"),
        value_micros: 49_990_000,
        currency: "PLN".to_owned(),
    }
}

/// [`click`]`(n)` joined with its impression.
pub fn joined_click(n: u64) -> JoinedClick {
    JoinedClick {
        click: click(n),
        impression: impression(n),
    }
}

/// [`conversion`]`(n)` joined with its click and impression.
pub fn joined_conversion(n: u64) -> JoinedConversion {
    JoinedConversion {
        conversion: conversion(n),
        click: click(n),
        impression: impression(n),
        attribution: Attribution::ClickId,
    }
}
