//! Event structs, field for field as in `schemas/*.avsc`.

use serde::{Deserialize, Serialize};

use crate::{Event, EventKind};

/// An ad shown to a user (`io.adpipe.events.Impression`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impression {
    /// Globally unique id assigned by the bidder.
    pub event_id: String,
    /// Milliseconds since the Unix epoch.
    pub event_time: i64,
    /// Producing datacenter.
    pub dc: String,
    /// Pseudonymous user id (the Kafka key).
    pub user_id: String,
    /// Bid request id.
    pub request_id: String,
    /// Winning bid id.
    pub bid_id: String,
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
    /// Page URL.
    pub url: String,
    /// Price paid, millionths of `currency`.
    pub cost_micros: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Device class; added in schema version 2.
    #[serde(default = "default_device")]
    pub device: String,
    /// ISO country code, `ZZ` when unknown; added in schema version 2.
    #[serde(default = "default_country")]
    pub country: String,
}

/// A click on an impression (`io.adpipe.events.Click`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Click {
    /// Globally unique id.
    pub event_id: String,
    /// Milliseconds since the Unix epoch.
    pub event_time: i64,
    /// Producing datacenter.
    pub dc: String,
    /// Pseudonymous user id (the Kafka key).
    pub user_id: String,
    /// `event_id` of the clicked impression.
    pub impression_id: String,
    /// Landing URL; added in schema version 2.
    #[serde(default)]
    pub landing_url: String,
}

/// An advertiser goal reached (`io.adpipe.events.Conversion`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversion {
    /// Globally unique id.
    pub event_id: String,
    /// Milliseconds since the Unix epoch.
    pub event_time: i64,
    /// Receiving datacenter.
    pub dc: String,
    /// Pseudonymous user id (the Kafka key).
    pub user_id: String,
    /// Advertiser id.
    pub advertiser_id: i64,
    /// Reported click; `None` for post-view conversions.
    #[serde(default)]
    pub click_id: Option<String>,
    /// Advertiser's order id.
    pub order_id: String,
    /// Value, millionths of `currency`.
    pub value_micros: i64,
    /// ISO 4217 currency code; added in schema version 2.
    #[serde(default = "default_currency")]
    pub currency: String,
}

/// A click with its impression (`io.adpipe.events.JoinedClick`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinedClick {
    /// The click.
    pub click: Click,
    /// The impression it refers to.
    pub impression: Impression,
}

/// How a conversion was attributed to a click.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Attribution {
    /// The click the conversion tag reported.
    ClickId,
    /// The user's last click within the attribution window.
    LastClick,
    /// Written by a producer that predates the field.
    #[default]
    Unknown,
}

/// A conversion with its click and impression (`io.adpipe.events.JoinedConversion`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinedConversion {
    /// The conversion.
    pub conversion: Conversion,
    /// The attributed click.
    pub click: Click,
    /// The attributed click's impression.
    pub impression: Impression,
    /// How `click` was chosen.
    pub attribution: Attribution,
}

/// The current total of one (bucket, dimensions) row of the stats-counter
/// (`io.adpipe.events.StatsTotal`, topic `stats.totals`). Not an event: no
/// id, no user; the latest `version` of a key is its total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsTotal {
    /// `minute` or `hour`.
    pub bucket_size: String,
    /// Start of the bucket, milliseconds since the epoch.
    pub bucket_start: i64,
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
    /// Currency of the money.
    pub currency: String,
    /// Impressions.
    pub impressions: i64,
    /// Joined clicks.
    pub clicks: i64,
    /// Joined conversions.
    pub conversions: i64,
    /// Cost, micros.
    pub cost_micros: i64,
    /// Conversion value, micros.
    pub conversion_value_micros: i64,
    /// Changes of the row so far (strictly increasing per key).
    pub version: i64,
}

fn default_device() -> String {
    "unknown".to_owned()
}

fn default_country() -> String {
    "ZZ".to_owned()
}

fn default_currency() -> String {
    "USD".to_owned()
}

impl Event for Impression {
    const KIND: EventKind = EventKind::Impression;
    fn event_id(&self) -> &str {
        &self.event_id
    }
    fn event_time_ms(&self) -> i64 {
        self.event_time
    }
    fn user_id(&self) -> &str {
        &self.user_id
    }
}

impl Event for Click {
    const KIND: EventKind = EventKind::Click;
    fn event_id(&self) -> &str {
        &self.event_id
    }
    fn event_time_ms(&self) -> i64 {
        self.event_time
    }
    fn user_id(&self) -> &str {
        &self.user_id
    }
}

impl Event for Conversion {
    const KIND: EventKind = EventKind::Conversion;
    fn event_id(&self) -> &str {
        &self.event_id
    }
    fn event_time_ms(&self) -> i64 {
        self.event_time
    }
    fn user_id(&self) -> &str {
        &self.user_id
    }
}

/// A joined click is identified by its click: one click yields one joined click.
impl Event for JoinedClick {
    const KIND: EventKind = EventKind::JoinedClick;
    fn event_id(&self) -> &str {
        &self.click.event_id
    }
    fn event_time_ms(&self) -> i64 {
        self.click.event_time
    }
    fn user_id(&self) -> &str {
        &self.click.user_id
    }
}

/// A joined conversion is identified by its conversion.
impl Event for JoinedConversion {
    const KIND: EventKind = EventKind::JoinedConversion;
    fn event_id(&self) -> &str {
        &self.conversion.event_id
    }
    fn event_time_ms(&self) -> i64 {
        self.conversion.event_time
    }
    fn user_id(&self) -> &str {
        &self.conversion.user_id
    }
}
