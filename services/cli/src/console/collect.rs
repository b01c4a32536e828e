//! The console's data. Every second: each stage's reading (the live view's
//! [`Meter`]: totals, rates, its group's lag) from the services' metrics —
//! the process's own recorder (the demo, whose services run in it) or every
//! target's `/metrics` (a deployment); each stage's instances and the
//! partitions they own (`adpipe_partition_assigned` on its inputs); the
//! rates of the last five minutes for the charts; the latest reconciliation
//! (given by the demo, or fetched from a reconciler's `/reconcile`).
//!
//! Contract: it only reads. A target that does not answer is named in
//! `problems`; the others still count.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::demo::live::{Meter, StageProbe, StageReading};
use crate::metrics_text::{self, Sample};

/// Points of history kept: five minutes at one a second.
pub const HISTORY: usize = 300;
/// The graph's node for the stages nothing measured feeds: the DCs'
/// topics the bidders publish to.
pub const SOURCES: &str = "DC topics";

/// Where the services' metrics come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// This process's recorder (the demo's in-process services).
    Recorder,
    /// These `/metrics` URLs, one per service instance.
    Scrape(Vec<String>),
}

/// One stage as the page shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageView {
    /// Its name.
    pub name: String,
    /// The stages (or [`SOURCES`]) whose outputs it reads.
    pub upstream: Vec<String>,
    /// Instances owning partitions of its inputs.
    pub instances: usize,
    /// Input partitions owned.
    pub partitions: usize,
    /// Records in, total.
    pub in_total: u64,
    /// Records out, total.
    pub out_total: u64,
    /// Records in per second.
    pub in_rate: f64,
    /// Records out per second.
    pub out_rate: f64,
    /// Records its group has not committed (None: not measured).
    pub lag: Option<i64>,
    /// Late records.
    pub late: u64,
    /// Dead letters (and refusals by its store).
    pub dead_lettered: u64,
    /// Orphans (the joiner).
    pub orphans: Option<u64>,
}

/// One second of the charts: each stage's rates, in the stages' order.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// Records in per second, per stage.
    pub in_rate: Vec<f64>,
    /// Records out per second, per stage.
    pub out_rate: Vec<f64>,
}

/// Everything the page shows.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ConsoleState {
    /// The page's title.
    pub title: String,
    /// When the stages were last read (ms since the epoch; 0: not yet).
    pub updated_ms: i64,
    /// The stages, upstream first.
    pub stages: Vec<StageView>,
    /// The last minutes' rates.
    pub history: VecDeque<Point>,
    /// The latest reconciliation (`adpipe reconcile`'s result as JSON).
    pub reconcile: Option<serde_json::Value>,
    /// What could not be read.
    pub problems: Vec<String>,
}

/// The stages whose outputs `stage` reads; none: [`SOURCES`].
pub fn upstream(stage: &StageProbe, stages: &[StageProbe]) -> Vec<String> {
    let feeding: Vec<String> = stages
        .iter()
        .filter(|other| {
            other.name != stage.name && other.outputs.iter().any(|t| stage.inputs.contains(t))
        })
        .map(|other| other.name.clone())
        .collect();
    if feeding.is_empty() {
        vec![SOURCES.to_owned()]
    } else {
        feeding
    }
}

/// The page's view of `stage`: its `reading`, and the instances and
/// partitions that own its inputs in `samples`.
pub fn view(
    stage: &StageProbe,
    stages: &[StageProbe],
    reading: &StageReading,
    samples: &[Sample],
) -> StageView {
    let owned: Vec<&Sample> = samples
        .iter()
        .filter(|sample| {
            sample.name == "adpipe_partition_assigned"
                && sample.value >= 0.5
                && sample
                    .labels
                    .get("topic")
                    .is_some_and(|topic| stage.inputs.contains(topic))
        })
        .collect();
    let partitions: BTreeSet<(&str, &str)> = owned
        .iter()
        .map(|sample| {
            let label = |name: &str| sample.labels.get(name).map_or("", String::as_str);
            (label("topic"), label("partition"))
        })
        .collect();
    // Scraped samples carry their instance; the recorder's are one process.
    let instances: BTreeSet<&str> = owned
        .iter()
        .map(|sample| sample.labels.get("instance").map_or("", String::as_str))
        .collect();
    let figures = &reading.figures;
    let count = |value: f64| value.max(0.0).round() as u64;
    StageView {
        name: stage.name.clone(),
        upstream: upstream(stage, stages),
        instances: instances.len(),
        partitions: partitions.len(),
        in_total: count(figures.consumed),
        out_total: count(figures.produced),
        in_rate: reading.consumed_rate,
        out_rate: reading.produced_rate,
        lag: figures.lag,
        late: count(figures.late),
        dead_lettered: count(figures.dead_lettered),
        orphans: figures.orphans.map(count),
    }
}

/// Reads the stages every second into a shared [`ConsoleState`].
pub struct Collector {
    state: Arc<Mutex<ConsoleState>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the collector reads, and where.
pub struct Reading {
    /// The page's title.
    pub title: String,
    /// The services' metrics.
    pub source: Source,
    /// The stages.
    pub probes: Vec<StageProbe>,
    /// The cluster their groups are on (a stage may name its own).
    pub bootstrap: String,
    /// A reconciler's base URL (its `/reconcile` is fetched every 15 s).
    pub reconciler: Option<String>,
}

impl Collector {
    /// Starts reading.
    pub fn start(reading: Reading) -> std::io::Result<Collector> {
        let state = Arc::new(Mutex::new(ConsoleState {
            title: reading.title.clone(),
            ..ConsoleState::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("console-collector".to_owned())
                .spawn(move || collect(reading, &state, &stop))?
        };
        Ok(Collector {
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// The shared state.
    pub fn state(&self) -> Arc<Mutex<ConsoleState>> {
        Arc::clone(&self.state)
    }

    /// Stops reading.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn collect(reading: Reading, state: &Mutex<ConsoleState>, stop: &AtomicBool) {
    // Scraping is HTTP on a small runtime of this thread's own; the
    // lag's round trips block (as in the live view).
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    // No idle connections kept: between readings nothing drives this
    // runtime, so a connection the service closed meanwhile (its
    // keep-alive ran out) would be reused and fail the next reading.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_default();
    let recorder = match reading.source {
        Source::Recorder => adpipe_runtime::telemetry::install_recorder(),
        Source::Scrape(_) => None,
    };
    let mut meter = Meter::new(reading.probes.clone(), &reading.bootstrap);
    let mut reconciled_at: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let (samples, mut problems) = match &reading.source {
            Source::Recorder => (
                recorder
                    .as_ref()
                    .map(|handle| metrics_text::parse(&handle.render()))
                    .unwrap_or_default(),
                Vec::new(),
            ),
            Source::Scrape(targets) => runtime.block_on(scrape(&client, targets)),
        };
        let readings = meter.read(&samples);
        let views: Vec<StageView> = meter
            .stages()
            .iter()
            .zip(&readings)
            .map(|(stage, reading)| view(stage, meter.stages(), reading, &samples))
            .collect();
        let mut reconcile = None;
        if let Some(url) = &reading.reconciler
            && reconciled_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(15))
        {
            reconciled_at = Some(Instant::now());
            match runtime.block_on(fetch_reconciliation(&client, url)) {
                Ok(value) => reconcile = Some(value),
                Err(error) => problems.push(format!("{url}/reconcile: {error:#}")),
            }
        }
        if let Ok(mut state) = state.lock() {
            let at_ms = adpipe_runtime::event_time::now_ms();
            state.history.push_back(Point {
                at_ms,
                in_rate: views.iter().map(|view| view.in_rate).collect(),
                out_rate: views.iter().map(|view| view.out_rate).collect(),
            });
            while state.history.len() > HISTORY {
                state.history.pop_front();
            }
            state.updated_ms = at_ms;
            state.stages = views;
            state.problems = problems;
            if reconcile.is_some() {
                state.reconcile = reconcile;
            }
        }
        let until = started + Duration::from_secs(1);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Every target's samples, each labelled with its `instance`; the targets
/// that did not answer, named.
async fn scrape(client: &reqwest::Client, targets: &[String]) -> (Vec<Sample>, Vec<String>) {
    let answers = futures::future::join_all(targets.iter().map(|url| async move {
        let text = client
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok::<_, reqwest::Error>((url, text))
    }))
    .await;
    let mut samples = Vec::new();
    let mut problems = Vec::new();
    for (answer, url) in answers.into_iter().zip(targets) {
        match answer {
            Ok((url, text)) => {
                for mut sample in metrics_text::parse(&text) {
                    sample.labels.insert("instance".to_owned(), url.clone());
                    samples.push(sample);
                }
            }
            Err(error) => problems.push(format!("{url}: {:#}", anyhow::Error::new(error))),
        }
    }
    (samples, problems)
}

async fn fetch_reconciliation(
    client: &reqwest::Client,
    base: &str,
) -> anyhow::Result<serde_json::Value> {
    let url = format!("{}/reconcile", base.trim_end_matches('/'));
    let text = client
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(serde_json::from_str(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::live::StageFigures;
    use crate::metrics_text::Selector;

    fn stage(name: &str, inputs: &[&str], outputs: &[&str]) -> StageProbe {
        StageProbe {
            name: name.to_owned(),
            group: format!("g-{name}"),
            inputs: inputs.iter().map(|t| t.to_string()).collect(),
            consumed: Selector::new("adpipe_records_consumed_total", &[("service", name)]),
            produced: Selector::new("adpipe_records_produced_total", &[("service", name)]),
            late: vec![],
            dead_lettered: vec![],
            orphans: None,
            bootstrap: None,
            outputs: outputs.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn a_stage_is_fed_by_the_stages_whose_outputs_it_reads_and_else_by_the_sources() {
        let stages = [
            stage("merger", &["dc1.clicks", "dc2.clicks"], &["merged.clicks"]),
            stage("dedup", &["merged.clicks"], &["deduplicated.clicks"]),
            stage("joiner", &["deduplicated.clicks"], &["joined.clicks"]),
            stage("loader", &["deduplicated.clicks", "joined.clicks"], &[]),
        ];
        assert_eq!(upstream(&stages[0], &stages), vec![SOURCES]);
        assert_eq!(upstream(&stages[1], &stages), vec!["merger"]);
        assert_eq!(upstream(&stages[3], &stages), vec!["dedup", "joiner"]);
    }

    #[test]
    fn a_view_counts_the_partitions_and_instances_owning_its_inputs_only() {
        let stages = [stage(
            "dedup",
            &["merged.clicks", "merged.impressions"],
            &[],
        )];
        let samples = metrics_text::parse(
            "adpipe_partition_assigned{topic=\"merged.clicks\",partition=\"0\",instance=\"a\"} 1\n\
             adpipe_partition_assigned{topic=\"merged.clicks\",partition=\"1\",instance=\"b\"} 1\n\
             adpipe_partition_assigned{topic=\"merged.impressions\",partition=\"0\",instance=\"b\"} 1\n\
             adpipe_partition_assigned{topic=\"merged.clicks\",partition=\"2\",instance=\"c\"} 0\n\
             adpipe_partition_assigned{topic=\"joined.clicks\",partition=\"0\",instance=\"d\"} 1\n",
        );
        let reading = StageReading::between(
            StageFigures {
                consumed: 30.0,
                produced: 20.0,
                lag: Some(4),
                ..StageFigures::default()
            },
            Some(&StageFigures::default()),
            2.0,
        );
        let view = view(&stages[0], &stages, &reading, &samples);
        assert_eq!((view.partitions, view.instances), (3, 2), "{view:?}");
        assert_eq!((view.in_total, view.out_total), (30, 20));
        assert_eq!(
            (view.in_rate, view.out_rate, view.lag),
            (15.0, 10.0, Some(4))
        );
    }

    /// A real service endpoint (the runtime's telemetry server and its
    /// recorder) and one nobody serves: the first one's figures are shown,
    /// the second is named in the problems.
    #[tokio::test(flavor = "multi_thread")]
    async fn scraping_shows_what_the_services_serve_and_names_those_that_do_not_answer() {
        let health = Arc::new(adpipe_runtime::telemetry::Health::default());
        let (address, server) = adpipe_runtime::telemetry::serve(
            "127.0.0.1:0".parse().expect("an address"),
            health,
            None,
        )
        .expect("the telemetry server");
        metrics::counter!("adpipe_records_consumed_total", "service" => "console-test", "topic" => "in.console")
            .increment(7);
        metrics::gauge!("adpipe_partition_assigned", "topic" => "in.console", "partition" => "3")
            .set(1.0);
        let nobody = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("an address")
        };
        let collector = Collector::start(Reading {
            title: "test".to_owned(),
            source: Source::Scrape(vec![
                format!("http://{address}/metrics"),
                format!("http://{nobody}/metrics"),
            ]),
            probes: vec![stage("console-test", &["in.console"], &[])],
            bootstrap: "127.0.0.1:1".to_owned(),
            reconciler: None,
        })
        .expect("the collector");
        let state = collector.state();
        let deadline = Instant::now() + Duration::from_secs(30);
        let seen = loop {
            let seen = state.lock().expect("the state").clone();
            let shown = seen.stages.first().is_some_and(|view| view.in_total == 7);
            if (shown && !seen.problems.is_empty()) || Instant::now() > deadline {
                break seen;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        tokio::task::spawn_blocking(move || collector.stop())
            .await
            .expect("stopped");
        server.stop(true).await;
        let view = &seen.stages[0];
        assert_eq!(view.in_total, 7, "{seen:?}");
        assert_eq!((view.instances, view.partitions), (1, 1), "{seen:?}");
        assert_eq!(seen.problems.len(), 1, "{:?}", seen.problems);
        assert!(
            seen.problems[0].contains(&nobody.to_string()),
            "{:?}",
            seen.problems
        );
        assert!(!seen.history.is_empty());
    }
}
