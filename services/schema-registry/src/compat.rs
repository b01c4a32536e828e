//! Compatibility levels and the checks they imply, on top of apache-avro's
//! schema-resolution rules (`SchemaCompatibility::can_read`).

use std::fmt;
use std::str::FromStr;

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use serde::{Deserialize, Serialize};

/// Confluent's compatibility levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    /// A new schema reads data written with the latest one.
    #[default]
    Backward,
    /// A new schema reads data written with every earlier one.
    BackwardTransitive,
    /// The latest schema reads data written with the new one.
    Forward,
    /// Every earlier schema reads data written with the new one.
    ForwardTransitive,
    /// Backward and forward against the latest.
    Full,
    /// Backward and forward against every earlier one.
    FullTransitive,
    /// No check.
    None,
}

impl Compatibility {
    /// Whether the check covers every earlier version or only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Compatibility::BackwardTransitive
                | Compatibility::ForwardTransitive
                | Compatibility::FullTransitive
        )
    }

    fn checks_backward(self) -> bool {
        matches!(
            self,
            Compatibility::Backward
                | Compatibility::BackwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }

    fn checks_forward(self) -> bool {
        matches!(
            self,
            Compatibility::Forward
                | Compatibility::ForwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }

    /// Checks `candidate` against `existing` (oldest first). Returns one
    /// message per violation; empty means compatible.
    pub fn check(self, candidate: &Schema, existing: &[(i32, Schema)]) -> Vec<String> {
        let against: &[(i32, Schema)] = match existing {
            [] => return Vec::new(),
            _ if self == Compatibility::None => return Vec::new(),
            _ if self.is_transitive() => existing,
            [.., latest] => std::slice::from_ref(latest),
        };
        let mut messages = Vec::new();
        for (version, old) in against {
            if self.checks_backward()
                && let Err(error) = SchemaCompatibility::can_read(old, candidate)
            {
                messages.push(format!(
                    "new schema cannot read data written with version {version} (BACKWARD): {error}"
                ));
            }
            if self.checks_forward()
                && let Err(error) = SchemaCompatibility::can_read(candidate, old)
            {
                messages.push(format!(
                    "version {version} cannot read data written with the new schema (FORWARD): {error}"
                ));
            }
        }
        messages
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Compatibility::Backward => "BACKWARD",
            Compatibility::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Compatibility::Forward => "FORWARD",
            Compatibility::ForwardTransitive => "FORWARD_TRANSITIVE",
            Compatibility::Full => "FULL",
            Compatibility::FullTransitive => "FULL_TRANSITIVE",
            Compatibility::None => "NONE",
        };
        f.write_str(text)
    }
}

impl FromStr for Compatibility {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(text.to_ascii_uppercase()))
            .map_err(|_| format!("Invalid compatibility level: {text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
        ))
        .expect("test schema")
    }

    #[test]
    fn levels_follow_confluent_semantics() {
        let v1 = record(r#"{"name":"a","type":"string"}"#);
        // Adding a field with a default: backward and forward compatible.
        let with_default =
            record(r#"{"name":"a","type":"string"},{"name":"b","type":"long","default":0}"#);
        // Adding a field without a default: forward only.
        let without_default = record(r#"{"name":"a","type":"string"},{"name":"b","type":"long"}"#);
        let history = vec![(1, v1.clone())];
        for level in [
            Compatibility::Backward,
            Compatibility::Forward,
            Compatibility::Full,
        ] {
            assert!(level.check(&with_default, &history).is_empty(), "{level}");
        }
        assert_eq!(
            Compatibility::Backward
                .check(&without_default, &history)
                .len(),
            1
        );
        assert!(
            Compatibility::Forward
                .check(&without_default, &history)
                .is_empty()
        );
        assert_eq!(
            Compatibility::Full.check(&without_default, &history).len(),
            1
        );
        assert!(
            Compatibility::None
                .check(&without_default, &history)
                .is_empty()
        );
    }

    #[test]
    fn transitive_levels_check_every_version() {
        // v3 requires `b`: v2 wrote it, v1 did not. Only the transitive check,
        // which also reads v1 data, sees the break.
        let v1 = record(r#"{"name":"a","type":"int"}"#);
        let v2 = record(r#"{"name":"a","type":"int"},{"name":"b","type":"int","default":1}"#);
        let v3 = record(r#"{"name":"a","type":"int"},{"name":"b","type":"int"}"#);
        let history = vec![(1, v1), (2, v2)];
        assert!(Compatibility::Backward.check(&v3, &history).is_empty());
        assert_eq!(
            Compatibility::BackwardTransitive.check(&v3, &history).len(),
            1
        );
    }

    #[test]
    fn parses_levels_case_insensitively() {
        assert_eq!(
            "full_transitive".parse::<Compatibility>(),
            Ok(Compatibility::FullTransitive)
        );
        assert!("SIDEWAYS".parse::<Compatibility>().is_err());
    }
}
