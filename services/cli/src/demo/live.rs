//! The demo's live view: while the chain runs, one line per stage, redrawn
//! every second — records in and out (total and per second), consumer lag,
//! late records, orphans, dead letters — from the stages' own metrics (the
//! process-wide Prometheus recorder every in-process service records into)
//! and their consumer groups' committed offsets against the partitions'
//! ends. On a terminal the lines redraw in place (indicatif); otherwise
//! (CI logs) they are printed every 5 s.
//!
//! Contract: the view only reads; stopping it stops its thread.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::consumer::Consumer;

use crate::metrics_text::{self, Sample, Selector};

/// What the view measures of one stage.
#[derive(Debug, Clone)]
pub struct StageProbe {
    /// The stage's name in the view.
    pub name: String,
    /// Its consumer group.
    pub group: String,
    /// Its input topics (its lag is measured on them).
    pub inputs: Vec<String>,
    /// Records it took in.
    pub consumed: Selector,
    /// Records it put out (acknowledged by Kafka or its store).
    pub produced: Selector,
    /// Records it found late.
    pub late: Vec<Selector>,
    /// Records it dead-lettered or its store refused.
    pub dead_lettered: Vec<Selector>,
    /// Orphans (the joiner).
    pub orphans: Option<Selector>,
    /// Its cluster, when not the one the view watches (a DC's).
    pub bootstrap: Option<String>,
    /// The topics it writes that other stages read (the console draws an
    /// edge from it to each stage with one of them among its inputs).
    pub outputs: Vec<String>,
}

/// One stage's figures at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageFigures {
    /// Records in, total.
    pub consumed: f64,
    /// Records out, total.
    pub produced: f64,
    /// Late records.
    pub late: f64,
    /// Dead letters.
    pub dead_lettered: f64,
    /// Orphans.
    pub orphans: Option<f64>,
    /// Records not yet committed by its group (None: not measured yet).
    pub lag: Option<i64>,
}

impl StageProbe {
    /// The stage's figures in `samples` (lag left unmeasured).
    pub fn figures(&self, samples: &[Sample]) -> StageFigures {
        let sum = |selectors: &[Selector]| selectors.iter().map(|s| s.sum(samples)).sum();
        StageFigures {
            consumed: self.consumed.sum(samples),
            produced: self.produced.sum(samples),
            late: sum(&self.late),
            dead_lettered: sum(&self.dead_lettered),
            orphans: self.orphans.as_ref().map(|selector| selector.sum(samples)),
            lag: None,
        }
    }
}

/// The running view.
pub struct LiveView {
    multi: MultiProgress,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LiveView {
    /// Starts redrawing `stages` measured on the cluster at `bootstrap`.
    pub fn start(stages: Vec<StageProbe>, bootstrap: &str) -> LiveView {
        let terminal = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template("{msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let lines: Vec<ProgressBar> = stages
            .iter()
            .map(|_| multi.add(ProgressBar::new_spinner().with_style(style.clone())))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            let bootstrap = bootstrap.to_owned();
            std::thread::Builder::new()
                .name("demo-live-view".to_owned())
                .spawn(move || redraw(&stages, &lines, &bootstrap, &stop, terminal))
                .ok()
        };
        LiveView {
            multi,
            stop,
            thread,
        }
    }

    /// A progress bar shown above the stages (hidden off a terminal).
    pub fn bar(&self, total: u64, label: &str) -> ProgressBar {
        self.multi.insert(0, crate::progress::bar(total, label))
    }

    /// Stops redrawing (the last lines stay on screen).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn redraw(
    stages: &[StageProbe],
    lines: &[ProgressBar],
    bootstrap: &str,
    stop: &AtomicBool,
    terminal: bool,
) {
    let recorder = adpipe_runtime::telemetry::install_recorder();
    let mut meter = Meter::new(stages.to_vec(), bootstrap);
    let mut last_printed = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let samples = recorder
            .as_ref()
            .map(|handle| metrics_text::parse(&handle.render()))
            .unwrap_or_default();
        let now = Instant::now();
        let readings = meter.read(&samples);
        let texts: Vec<String> = stages
            .iter()
            .zip(&readings)
            .map(|(stage, reading)| line(stage, reading))
            .collect();
        if terminal {
            for (bar, text) in lines.iter().zip(&texts) {
                bar.set_message(text.clone());
                bar.tick();
            }
        } else if last_printed.elapsed() >= Duration::from_secs(5) {
            eprintln!("{}", texts.join("\n"));
            last_printed = Instant::now();
        }
        // Sleep in small steps so stop is prompt.
        let until = now + Duration::from_secs(1);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One stage at one reading: its figures and its rates since the previous.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageReading {
    /// Totals and lag.
    pub figures: StageFigures,
    /// Records in per second.
    pub consumed_rate: f64,
    /// Records out per second.
    pub produced_rate: f64,
}

impl StageReading {
    /// `now`, with its rates against `before`, `seconds` earlier.
    pub fn between(now: StageFigures, before: Option<&StageFigures>, seconds: f64) -> StageReading {
        let rate = |total: f64, earlier: Option<f64>| {
            earlier.map_or(0.0, |earlier| ((total - earlier) / seconds).max(0.0))
        };
        StageReading {
            consumed_rate: rate(now.consumed, before.map(|b| b.consumed)),
            produced_rate: rate(now.produced, before.map(|b| b.produced)),
            figures: now,
        }
    }
}

/// Measures stages reading after reading — the live view's and the
/// console's one way: their metrics from the samples given, their groups'
/// lag, their rates since the previous reading. The lag takes round trips
/// to the brokers (a few per partition), so a thread of its own measures it
/// over and over and a reading takes its latest figure: a slow or
/// unreachable cluster leaves the lag unmeasured (`-`), never the rates
/// stale.
pub struct Meter {
    stages: Vec<StageProbe>,
    lags: Arc<parking_lot::Mutex<Vec<Option<i64>>>>,
    stop: Arc<AtomicBool>,
    previous: Option<(Instant, Vec<StageFigures>)>,
}

impl Meter {
    /// Measures `stages`, their groups on the cluster at `bootstrap` (or
    /// each stage's own).
    pub fn new(stages: Vec<StageProbe>, bootstrap: &str) -> Meter {
        let lags = Arc::new(parking_lot::Mutex::new(vec![None; stages.len()]));
        let stop = Arc::new(AtomicBool::new(false));
        let measured: Vec<(Option<String>, String, Vec<String>)> = stages
            .iter()
            .map(|stage| {
                (
                    stage.bootstrap.clone(),
                    stage.group.clone(),
                    stage.inputs.clone(),
                )
            })
            .collect();
        let bootstrap = bootstrap.to_owned();
        let (thread_lags, thread_stop) = (Arc::clone(&lags), Arc::clone(&stop));
        let _ = std::thread::Builder::new()
            .name("stage-lag".to_owned())
            .spawn(move || measure_lags(&measured, &bootstrap, &thread_lags, &thread_stop));
        Meter {
            stages,
            lags,
            stop,
            previous: None,
        }
    }

    /// The stages measured.
    pub fn stages(&self) -> &[StageProbe] {
        &self.stages
    }

    /// Every stage's reading now, given the metrics' `samples`.
    pub fn read(&mut self, samples: &[Sample]) -> Vec<StageReading> {
        let now = Instant::now();
        let lags = self.lags.lock().clone();
        let figures: Vec<StageFigures> = self
            .stages
            .iter()
            .zip(lags)
            .map(|(stage, lag)| StageFigures {
                lag,
                ..stage.figures(samples)
            })
            .collect();
        let seconds = self.previous.as_ref().map_or(1.0, |(at, _)| {
            now.duration_since(*at).as_secs_f64().max(0.001)
        });
        let readings = figures
            .iter()
            .enumerate()
            .map(|(index, now)| {
                let before = self.previous.as_ref().map(|(_, before)| &before[index]);
                StageReading::between(now.clone(), before, seconds)
            })
            .collect();
        self.previous = Some((now, figures));
        readings
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The lag thread: each stage's group lag, about every two seconds, into
/// `lags`, until `stop`.
fn measure_lags(
    stages: &[(Option<String>, String, Vec<String>)],
    bootstrap: &str,
    lags: &parking_lot::Mutex<Vec<Option<i64>>>,
    stop: &AtomicBool,
) {
    let clients: Vec<Option<crate::groups::GroupClient>> = stages
        .iter()
        .map(|(own, group, _)| {
            crate::groups::client(own.as_deref().unwrap_or(bootstrap), group).ok()
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        for (index, ((_, _, inputs), client)) in stages.iter().zip(&clients).enumerate() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let lag = client.as_ref().and_then(|client| group_lag(client, inputs));
            lags.lock()[index] = lag;
        }
        let until = started + Duration::from_secs(2);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The records `client`'s group has not committed on `inputs` (a partition
/// without a commit counts from its start).
fn group_lag(client: &crate::groups::GroupClient, inputs: &[String]) -> Option<i64> {
    if inputs.is_empty() {
        return None;
    }
    let partitions = crate::groups::partitions(client, inputs).ok()?;
    let committed: BTreeMap<_, _> = crate::groups::committed(client, &partitions).ok()?;
    let mut lag = 0;
    for partition in &partitions {
        let (low, high) = client
            .fetch_watermarks(&partition.0, partition.1, Duration::from_secs(2))
            .ok()?;
        let position = committed.get(partition).copied().unwrap_or(low).max(low);
        lag += (high - position).max(0);
    }
    Some(lag)
}

/// One stage's line: totals, rates, lag and trouble.
pub fn line(stage: &StageProbe, reading: &StageReading) -> String {
    let now = &reading.figures;
    let lag = now
        .lag
        .map_or_else(|| "-".to_owned(), |lag| lag.to_string());
    // Counters as whole numbers (an empty sum of floats is -0).
    let count = |value: f64| value.max(0.0).round() as u64;
    let mut text = format!(
        "{:<18} in {:>9} {:>8}/s  out {:>9} {:>8}/s  lag {:>7}  late {:>5}  dlq {:>4}",
        stage.name,
        count(now.consumed),
        count(reading.consumed_rate),
        count(now.produced),
        count(reading.produced_rate),
        lag,
        count(now.late),
        count(now.dead_lettered)
    );
    if let Some(orphans) = now.orphans {
        text.push_str(&format!("  orphans {}", count(orphans)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_shows_totals_rates_lag_and_trouble_of_its_stage_only() {
        let stage = StageProbe {
            name: "joiner".to_owned(),
            group: "g".to_owned(),
            inputs: vec![],
            consumed: Selector::new("adpipe_records_consumed_total", &[("service", "joiner")]),
            produced: Selector::new("adpipe_records_produced_total", &[("service", "joiner")]),
            late: vec![Selector::new(
                "adpipe_late_records_total",
                &[("service", "joiner")],
            )],
            dead_lettered: vec![Selector::new(
                "adpipe_dead_lettered_total",
                &[("service", "joiner")],
            )],
            orphans: Some(Selector::new("adpipe_joiner_orphans_total", &[])),
            bootstrap: None,
            outputs: vec![],
        };
        let samples = metrics_text::parse(
            "adpipe_records_consumed_total{service=\"joiner\",topic=\"a\"} 300\n\
             adpipe_records_consumed_total{service=\"merger\",topic=\"a\"} 999\n\
             adpipe_records_produced_total{service=\"joiner\",topic=\"b\"} 200\n\
             adpipe_joiner_orphans_total{kind=\"click\",reason=\"no_click\"} 4\n\
             adpipe_dead_lettered_total{service=\"joiner\",topic=\"a\",reason=\"x\"} 1\n",
        );
        let mut now = stage.figures(&samples);
        now.lag = Some(17);
        let before = StageFigures {
            consumed: 100.0,
            produced: 100.0,
            ..StageFigures::default()
        };
        let text = line(&stage, &StageReading::between(now, Some(&before), 2.0));
        assert!(text.starts_with("joiner"), "{text}");
        assert!(text.contains("in       300      100/s"), "{text}");
        assert!(text.contains("out       200       50/s"), "{text}");
        assert!(text.contains("lag      17"), "{text}");
        assert!(text.contains("dlq    1"), "{text}");
        assert!(text.ends_with("orphans 4"), "{text}");
    }
}
