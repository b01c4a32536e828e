//! Reading the event ids of an output — Kafka topics (Avro through the
//! registry) or JSON lines (`adpipe consume`, a file sink) — for
//! [`GroundTruth::check`](crate::GroundTruth::check).

use std::io::BufRead;

use adpipe_codec::Codec;
use rdkafka::message::Message;

/// Event ids read from an output, and what could not be read as an event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OutputIds {
    /// Every event id, with repetitions.
    pub ids: Vec<String>,
    /// Records or lines without a readable event id.
    pub unreadable: u64,
}

/// Why an output could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Kafka failed (no such topic, stalled partition, …).
    #[error("reading {topic}: {message}")]
    Kafka {
        /// The topic.
        topic: String,
        /// What went wrong.
        message: String,
    },
    /// A file could not be read.
    #[error("reading lines: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(serde::Deserialize)]
struct Identity {
    event_id: String,
}

impl OutputIds {
    /// Adds every record of `topic`, from its start to its end as of now.
    /// Records are decoded with the writer schema they name; one that does
    /// not decode (a foreign record, say) counts as unreadable. Blocking:
    /// call it from a blocking thread; `runtime` fetches unknown schemas.
    pub fn read_topic(
        &mut self,
        bootstrap: &str,
        topic: &str,
        codec: &Codec,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(), OutputError> {
        adpipe_testkit::try_for_each_record(bootstrap, topic, |message| {
            if adpipe_runtime::heartbeat::is_heartbeat(message) {
                return; // in-band progress of a DC topic, not an event
            }
            match decode_id(codec, runtime, message.payload().unwrap_or_default()) {
                Some(id) => self.ids.push(id),
                None => self.unreadable += 1,
            }
        })
        .map_err(|message| OutputError::Kafka {
            topic: topic.to_owned(),
            message,
        })
    }

    /// Adds every line of JSON lines: an object with `event_id`, or with
    /// `value.event_id` (`adpipe consume --metadata`). Blank lines are skipped.
    pub fn read_json_lines(&mut self, lines: impl BufRead) -> Result<(), OutputError> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Line {
            Event(Identity),
            WithMetadata { value: Identity },
        }
        for line in lines.lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Line>(&line) {
                Ok(Line::Event(identity) | Line::WithMetadata { value: identity }) => {
                    self.ids.push(identity.event_id);
                }
                Err(_) => self.unreadable += 1,
            }
        }
        Ok(())
    }
}

fn decode_id(codec: &Codec, runtime: &tokio::runtime::Handle, payload: &[u8]) -> Option<String> {
    let (schema_id, datum) = adpipe_codec::split_header(payload).ok()?;
    let writer = match codec.cached_writer_schema(schema_id) {
        Some(writer) => writer,
        None => runtime.block_on(codec.writer_schema(schema_id)).ok()?,
    };
    writer
        .decode_datum::<Identity>(datum)
        .ok()
        .map(|identity| identity.event_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_give_ids_in_both_shapes_and_count_the_rest() {
        let text = concat!(
            "{\"event_id\":\"imp-1\",\"user_id\":\"u\"}\n",
            "\n",
            "{\"topic\":\"t\",\"value\":{\"event_id\":\"clk-2\"}}\n",
            "{\"undecodable\":\"bad magic byte\",\"raw_base64\":\"AAA=\"}\n",
            "not json\n",
        );
        let mut output = OutputIds::default();
        output.read_json_lines(text.as_bytes()).expect("reads");
        assert_eq!(output.ids, ["imp-1", "clk-2"]);
        assert_eq!(output.unreadable, 2);
    }
}
