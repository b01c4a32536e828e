//! The closed set of event types, with their schemas and subjects.

use std::fmt;
use std::str::FromStr;

/// One of adpipe's event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A shown ad.
    Impression,
    /// A click on an impression.
    Click,
    /// An advertiser goal reached.
    Conversion,
    /// A click with its impression embedded.
    JoinedClick,
    /// A conversion with its click and impression embedded.
    JoinedConversion,
    /// The stats-counter's current total of one (bucket, dimensions) row.
    StatsTotal,
}

impl EventKind {
    /// Every kind, in pipeline order.
    pub const ALL: [EventKind; 6] = [
        EventKind::Impression,
        EventKind::Click,
        EventKind::Conversion,
        EventKind::JoinedClick,
        EventKind::JoinedConversion,
        EventKind::StatsTotal,
    ];

    /// The kinds bidders and trackers publish (the rest are joiner outputs).
    pub const PUBLISHED: [EventKind; 3] = [
        EventKind::Impression,
        EventKind::Click,
        EventKind::Conversion,
    ];

    /// The current Avro schema (JSON text) of this kind.
    pub fn schema(self) -> &'static str {
        match self {
            EventKind::Impression => include_str!("../../../schemas/impression.avsc"),
            EventKind::Click => include_str!("../../../schemas/click.avsc"),
            EventKind::Conversion => include_str!("../../../schemas/conversion.avsc"),
            EventKind::JoinedClick => include_str!("../../../schemas/joined_click.avsc"),
            EventKind::JoinedConversion => {
                include_str!("../../../schemas/joined_conversion.avsc")
            }
            EventKind::StatsTotal => include_str!("../../../schemas/stats_total.avsc"),
        }
    }

    /// Short lowercase name used on the command line and in topic names.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Impression => "impression",
            EventKind::Click => "click",
            EventKind::Conversion => "conversion",
            EventKind::JoinedClick => "joined-click",
            EventKind::JoinedConversion => "joined-conversion",
            EventKind::StatsTotal => "stats-total",
        }
    }

    /// Plural name, as topics of this kind are named (`impressions`,
    /// `merged.impressions`, `deduplicated.impressions`, …).
    pub fn plural(self) -> &'static str {
        match self {
            EventKind::Impression => "impressions",
            EventKind::Click => "clicks",
            EventKind::Conversion => "conversions",
            EventKind::JoinedClick => "joined-clicks",
            EventKind::JoinedConversion => "joined-conversions",
            EventKind::StatsTotal => "stats-totals",
        }
    }

    /// Fully qualified Avro record name.
    pub fn full_name(self) -> &'static str {
        match self {
            EventKind::Impression => "io.adpipe.events.Impression",
            EventKind::Click => "io.adpipe.events.Click",
            EventKind::Conversion => "io.adpipe.events.Conversion",
            EventKind::JoinedClick => "io.adpipe.events.JoinedClick",
            EventKind::JoinedConversion => "io.adpipe.events.JoinedConversion",
            EventKind::StatsTotal => "io.adpipe.events.StatsTotal",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of [`EventKind::ALL`].
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown event type {0:?}; expected one of impression, click, conversion, joined-click, joined-conversion, stats-total"
)]
pub struct UnknownEventKind(pub String);

impl FromStr for EventKind {
    type Err = UnknownEventKind;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let normalized = text.to_ascii_lowercase().replace('_', "-");
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.name() == normalized)
            .ok_or_else(|| UnknownEventKind(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_accept_underscores() {
        for kind in EventKind::ALL {
            assert_eq!(kind.name().parse::<EventKind>().ok(), Some(kind));
        }
        assert_eq!(
            "joined_click".parse::<EventKind>().ok(),
            Some(EventKind::JoinedClick)
        );
        assert!("impressions".parse::<EventKind>().is_err());
    }

    #[test]
    fn embedded_schemas_name_their_record() {
        for kind in EventKind::ALL {
            let schema: serde_json::Value =
                serde_json::from_str(kind.schema()).expect("schema is JSON");
            let full_name = format!(
                "{}.{}",
                schema["namespace"].as_str().expect("namespace"),
                schema["name"].as_str().expect("name")
            );
            assert_eq!(full_name, kind.full_name());
        }
    }
}
