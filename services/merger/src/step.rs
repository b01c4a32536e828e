//! The merge step and its factory.
//!
//! The runtime hands the step each task's records already in event-time
//! order across the DCs (input i of a task is DC i); the step forwards each
//! one, bytes untouched, to the same partition of the merged topic, stamped
//! with its event time and with its origin DC, source offset and (for a
//! straggler) lateness in headers. Records the output already holds from
//! before a crash ([`crate::resume`]) are acknowledged without output.

use std::borrow::Cow;
use std::sync::Arc;

use adpipe_runtime::telemetry::Metric;
use adpipe_runtime::{
    Emitter, Headers, InputRecord, OutputRecord, Step, StepError, StepFactory, TaskAssignment,
};
use serde::Deserialize;
use tracing::info;

use crate::config::{MergedStream, MergerSettings};
use crate::{HEADER_LATENESS, HEADER_ORIGIN_DC, HEADER_SOURCE_OFFSET};

/// The one field the merge orders by; the rest of the record is skipped by
/// the decoder and forwarded untouched as bytes.
#[derive(Debug, Deserialize)]
struct EventTime {
    event_time: i64,
}

/// Merges partition `partition` of one kind's DC topics.
pub struct MergeStep {
    output: Arc<str>,
    partition: i32,
    dcs: Vec<String>,
    /// Per input: source offsets up to this one are already in the output.
    resume_after: Vec<Option<i64>>,
    skipped: metrics::Counter,
}

impl MergeStep {
    /// A step writing to `output`'s `partition`; input i is `dcs[i]`;
    /// `resume_after[i]` is the last source offset of input i already merged.
    pub fn new(
        output: String,
        partition: i32,
        dcs: Vec<String>,
        resume_after: Vec<Option<i64>>,
    ) -> Self {
        let skipped = metrics::counter!(Metric::RecordsSkippedOnResume.name(), "service" => "merger", "topic" => output.clone());
        MergeStep {
            output: Arc::from(output),
            partition,
            dcs,
            resume_after,
            skipped,
        }
    }
}

impl Step for MergeStep {
    fn event_time(&self, record: &InputRecord<'_>) -> Result<i64, StepError> {
        Ok(record.decode::<EventTime>()?.event_time)
    }

    async fn process(
        &mut self,
        record: &InputRecord<'_>,
        out: &mut Emitter,
    ) -> Result<(), StepError> {
        let event_time = match record.event_time_ms {
            Some(event_time) => event_time,
            None => self.event_time(record)?,
        };
        out.observe_event_time(event_time)?;
        if self
            .resume_after
            .get(record.input)
            .copied()
            .flatten()
            .is_some_and(|after| record.offset <= after)
        {
            self.skipped.increment(1);
            return Ok(()); // merged before the restart: done, no output
        }
        let dc = self.dcs.get(record.input).map_or("", String::as_str);
        let mut output = OutputRecord::sharing(
            &self.output,
            record.share(record.key),
            record.share(record.value),
        );
        output.partition = Some(self.partition);
        output.timestamp_ms = Some(event_time);
        // The merge's own headers replace any the record already carried.
        let kept = record
            .headers
            .entries()
            .filter(|(name, _)| {
                ![HEADER_ORIGIN_DC, HEADER_SOURCE_OFFSET, HEADER_LATENESS].contains(name)
            })
            .map(|(name, value)| (name, Cow::Borrowed(value.unwrap_or_default())));
        let source_offset = record.offset.to_string().into_bytes();
        let lateness = record.lateness_ms.map(|lateness| {
            (
                HEADER_LATENESS,
                Cow::Owned(lateness.to_string().into_bytes()),
            )
        });
        output.headers = Headers::from_pairs(
            kept.chain([
                (HEADER_ORIGIN_DC, Cow::Borrowed(dc.as_bytes())),
                (HEADER_SOURCE_OFFSET, Cow::Owned(source_offset)),
            ])
            .chain(lateness),
        );
        out.emit(output);
        Ok(())
    }
}

/// Builds a step per task, finding where each DC resumes.
pub struct MergeFactory {
    settings: Arc<MergerSettings>,
}

impl MergeFactory {
    /// A factory for these settings.
    pub fn new(settings: MergerSettings) -> Self {
        MergeFactory {
            settings: Arc::new(settings),
        }
    }

    fn stream(&self, assignment: &TaskAssignment) -> Result<&MergedStream, StepError> {
        self.settings.stream(&assignment.inputs).ok_or_else(|| {
            StepError::fatal(
                "unknown_stream",
                format!("no merged stream reads {:?}", assignment.inputs),
            )
        })
    }
}

impl StepFactory for MergeFactory {
    type Step = MergeStep;

    fn create(&self, assignment: &TaskAssignment) -> Result<MergeStep, StepError> {
        let stream = self.stream(assignment)?;
        let dcs = self.settings.dcs.clone();
        let last = crate::resume::last_source_offsets(
            &self.settings.worker.kafka,
            &stream.output,
            assignment.partition,
            &dcs,
            self.settings.resume_scan,
        )
        .map_err(|error| StepError::transient("resume_scan", error.to_string()))?;
        let resume_after: Vec<Option<i64>> = dcs.iter().map(|dc| last.get(dc).copied()).collect();
        info!(output = %stream.output, partition = assignment.partition, ?resume_after, "merge task resumes");
        Ok(MergeStep::new(
            stream.output.clone(),
            assignment.partition,
            dcs,
            resume_after,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adpipe_codec::{Encoder, WriterSchema};
    use adpipe_events::{EventKind, Impression, samples};

    fn header<'a>(output: &'a OutputRecord, name: &str) -> Option<&'a str> {
        output
            .headers
            .value_of(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    #[tokio::test]
    async fn forwards_untouched_with_origin_offset_lateness_and_event_time() {
        let writer = Arc::new(
            WriterSchema::parse(1, EventKind::Impression.schema().to_owned()).expect("schema"),
        );
        let encoder =
            Encoder::<Impression>::new(1, EventKind::Impression.schema().parse().expect("schema"));
        let event = samples::impression(3);
        let value = encoder.encode(&event).expect("encodes");
        // A bidder's own origin header is replaced by the merger's.
        let headers = Headers::from_pairs([("adpipe.origin.dc", "bidder-said"), ("trace", "t1")]);
        let record = |input, offset, lateness_ms| InputRecord {
            topic: "dc2.impressions",
            input,
            partition: 5,
            offset,
            timestamp_ms: None,
            key: Some(event.user_id.as_bytes()),
            value: Some(&value),
            headers: &headers,
            shared: None,
            writer: Some(Arc::clone(&writer)),
            lateness_ms,
            event_time_ms: None,
        };
        let mut step = MergeStep::new(
            "merged.impressions".to_owned(),
            5,
            vec!["dc1".to_owned(), "dc2".to_owned()],
            vec![None, Some(41)],
        );
        assert_eq!(
            step.event_time(&record(1, 0, None)).expect("decodes"),
            event.event_time
        );

        let mut out = Emitter::default();
        step.process(&record(1, 42, Some(250)), &mut out)
            .await
            .expect("merges");
        let outputs: Vec<&OutputRecord> = out.outputs().collect();
        let [output] = outputs[..] else {
            panic!("one output")
        };
        assert_eq!(
            (&*output.topic, output.partition),
            ("merged.impressions", Some(5))
        );
        assert_eq!(
            output.value.as_deref(),
            Some(value.as_slice()),
            "bytes untouched"
        );
        assert_eq!(output.timestamp_ms, Some(event.event_time));
        assert_eq!(header(output, HEADER_ORIGIN_DC), Some("dc2"));
        assert_eq!(header(output, HEADER_SOURCE_OFFSET), Some("42"));
        assert_eq!(header(output, HEADER_LATENESS), Some("250"));
        assert_eq!(header(output, "trace"), Some("t1"));
        assert_eq!(output.headers.entries().count(), 4);

        // Already merged before a restart: acknowledged, not emitted again.
        let mut again = Emitter::default();
        step.process(&record(1, 41, None), &mut again)
            .await
            .expect("skips");
        assert_eq!(again.outputs().len(), 0);
        let mut other_dc = Emitter::default();
        step.process(&record(0, 41, None), &mut other_dc)
            .await
            .expect("merges");
        assert_eq!(other_dc.outputs().len(), 1, "the resume point is per DC");
    }
}
