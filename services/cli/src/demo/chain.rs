//! Starts the whole chain in this process, each service from its own
//! library on the shared runtime, configured the way its binary is (the
//! embedded defaults overlaid with `ADPIPE__…` settings): merger →
//! deduplicator → joiner → stats-counter (with PostgreSQL) → dispatcher →
//! loaders (Avro files; one embedded profile store per DC).
//!
//! With DC clusters (`--dc`), each DC's profile loader runs against its own
//! cluster and reads MirrorMaker 2's copy of the dispatcher's
//! `events-for-<dc>`; on one cluster it reads central's topic directly.

use std::path::PathBuf;
use std::time::Duration;

use adpipe_deduplicator::DedupSettings;
use adpipe_deduplicator::config::Stream;
use adpipe_events::EventKind;
use adpipe_loader::memory_profiles::MemoryProfiles;
use adpipe_runtime::WorkerHandle;
use anyhow::Context;

use super::live::StageProbe;
use super::names::Names;
use crate::metrics_text::Selector;

/// Where the chain runs and writes.
pub struct ChainPlan<'a> {
    /// Topic names.
    pub names: &'a Names,
    /// Kafka.
    pub bootstrap: &'a str,
    /// The schema registry.
    pub registry_url: String,
    /// Local state (the deduplicator's and joiner's stores); removed after.
    pub state_dir: PathBuf,
    /// The files loader's root; kept for the user to look at.
    pub files_dir: PathBuf,
    /// PostgreSQL and the schema for the stats-counter, when it runs.
    pub postgres: Option<(String, String)>,
    /// Elasticsearch and the index prefix, when a loader writes there.
    pub elasticsearch: Option<(String, String)>,
}

/// The running services.
pub struct Chain {
    /// (stage name, handle), upstream first.
    pub workers: Vec<(String, WorkerHandle)>,
    /// What the live view measures of each stage.
    pub probes: Vec<StageProbe>,
    /// Each DC's embedded profile store.
    pub profiles: Vec<(String, MemoryProfiles)>,
}

impl Chain {
    /// Stops every service, downstream first (so nothing upstream waits on
    /// a stopped reader); returns the names of those that took over 20 s.
    pub async fn stop(self) -> Vec<String> {
        let mut slow = Vec::new();
        for (name, worker) in self.workers.into_iter().rev() {
            if tokio::time::timeout(Duration::from_secs(20), worker.stop())
                .await
                .is_err()
            {
                slow.push(name);
            }
        }
        slow
    }
}

type Env = Vec<(String, String)>;

fn env(pairs: &[(&str, String)]) -> Env {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.clone()))
        .collect()
}

/// A TOML array of strings, as `ADPIPE__…` list settings take.
fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("{item:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

impl ChainPlan<'_> {
    /// The settings every service shares, for `group` (its consumer group
    /// and dead-letter topic are named after `service`).
    fn common(&self, group: &str, service: &str) -> Env {
        env(&[
            (
                "ADPIPE__KAFKA__BOOTSTRAP_SERVERS",
                self.bootstrap.to_owned(),
            ),
            (
                "ADPIPE__KAFKA__GROUP_ID",
                format!("{}adpipe-{group}", self.names.prefix),
            ),
            ("ADPIPE__REGISTRY__URL", self.registry_url.clone()),
            ("ADPIPE__HTTP__LISTEN", "127.0.0.1:0".to_owned()),
            (
                "ADPIPE__RUNTIME__DEAD_LETTER_TOPIC",
                self.names.dlq(service),
            ),
            ("ADPIPE__KAFKA__SESSION_TIMEOUT", "10s".to_owned()),
            ("ADPIPE__RUNTIME__REVOKE_DEADLINE", "5s".to_owned()),
        ])
    }

    fn group(&self, group: &str) -> String {
        format!("{}adpipe-{group}", self.names.prefix)
    }

    /// Starts every service; `out` hears where each serves its metrics.
    pub fn start(&self, out: &mut dyn std::io::Write) -> anyhow::Result<Chain> {
        let names = self.names;
        let mut chain = Chain {
            workers: Vec::new(),
            probes: Vec::new(),
            profiles: Vec::new(),
        };
        let runtime_probe =
            |stage: &str, service: &str, group: String, inputs: Vec<String>| StageProbe {
                name: stage.to_owned(),
                group,
                inputs,
                consumed: Selector::new("adpipe_records_consumed_total", &[("service", service)]),
                produced: Selector::new("adpipe_records_produced_total", &[("service", service)]),
                late: vec![Selector::new(
                    "adpipe_late_records_total",
                    &[("service", service)],
                )],
                dead_lettered: vec![Selector::new(
                    "adpipe_dead_lettered_total",
                    &[("service", service)],
                )],
                orphans: None,
                bootstrap: None,
            };

        // merger
        let mut merger_env = self.common("merger", "merger");
        merger_env.extend(env(&[
            (
                "ADPIPE__MERGER__INPUT",
                names.replica_template().replace("{prefix}", &names.prefix),
            ),
            (
                "ADPIPE__MERGER__OUTPUT",
                format!("{}merged.{{kind}}", names.prefix),
            ),
            // Replayed events: no live heartbeats; a DC silent this long is done.
            ("ADPIPE__RUNTIME__MAX_IDLE", "1s".to_owned()),
            // So the demo's oversize record is one (see bad_input.rs).
            (
                "ADPIPE__KAFKA__PRODUCER",
                format!(
                    "{{ \"message.max.bytes\" = \"{}\" }}",
                    super::bad_input::MERGER_MAX_RECORD_BYTES
                ),
            ),
        ]));
        let mut merger = adpipe_merger::MergerSettings::load(None, merger_env.into_iter())?;
        merger.dcs = names.dcs.clone();
        let handle = adpipe_merger::start(merger).context("starting the merger")?;
        let replicas: Vec<String> = EventKind::PUBLISHED
            .into_iter()
            .flat_map(|kind| names.dcs.iter().map(move |dc| names.replica(dc, kind)))
            .collect();
        chain.add(
            out,
            "merger",
            handle,
            runtime_probe("merger", "merger", self.group("merger"), replicas),
        )?;

        // deduplicator
        let mut dedup_env = self.common("deduplicator", "deduplicator");
        dedup_env.push((
            "ADPIPE__DEDUPLICATOR__STATE_DIR".to_owned(),
            self.state_dir.join("deduplicator").display().to_string(),
        ));
        let mut dedup = DedupSettings::load(None, dedup_env.into_iter())?;
        dedup.set_streams(
            EventKind::PUBLISHED
                .into_iter()
                .map(|kind| Stream {
                    input: names.merged(kind),
                    output: names.deduplicated(kind),
                    changelog: names.changelog(kind),
                })
                .collect(),
        );
        let handle = adpipe_deduplicator::start(dedup).context("starting the deduplicator")?;
        let merged = EventKind::PUBLISHED.map(|kind| names.merged(kind)).to_vec();
        chain.add(
            out,
            "deduplicator",
            handle,
            runtime_probe(
                "deduplicator",
                "deduplicator",
                self.group("deduplicator"),
                merged,
            ),
        )?;

        // joiner
        let mut joiner_env = self.common("joiner", "joiner");
        joiner_env.extend(env(&[
            (
                "ADPIPE__JOINER__IMPRESSIONS",
                names.deduplicated(EventKind::Impression),
            ),
            (
                "ADPIPE__JOINER__CLICKS",
                names.deduplicated(EventKind::Click),
            ),
            (
                "ADPIPE__JOINER__CONVERSIONS",
                names.deduplicated(EventKind::Conversion),
            ),
            ("ADPIPE__JOINER__JOINED_CLICKS", names.joined("clicks")),
            (
                "ADPIPE__JOINER__JOINED_CONVERSIONS",
                names.joined("conversions"),
            ),
            ("ADPIPE__JOINER__ORPHANS", names.joined("orphans")),
            (
                "ADPIPE__JOINER__IMPRESSIONS_CHANGELOG",
                names.joiner_changelog("impressions"),
            ),
            (
                "ADPIPE__JOINER__CLICKS_CHANGELOG",
                names.joiner_changelog("clicks"),
            ),
            (
                "ADPIPE__JOINER__STATE_DIR",
                self.state_dir.join("joiner").display().to_string(),
            ),
            // A replay: what finds no partner within 15 s never will — long
            // enough for the impressions' deduplication to catch up on a
            // loaded 2-core machine (at 2 s a fresh-clone run orphaned 3
            // clicks whose impressions were still on their way).
            ("ADPIPE__JOINER__WAIT", "15s".to_owned()),
            ("ADPIPE__RUNTIME__MAX_IDLE", "1s".to_owned()),
        ]));
        let joiner = adpipe_joiner::JoinerSettings::load(None, joiner_env.into_iter())?;
        let handle = adpipe_joiner::start(joiner).context("starting the joiner")?;
        let deduplicated = EventKind::PUBLISHED
            .map(|kind| names.deduplicated(kind))
            .to_vec();
        let mut probe = runtime_probe("joiner", "joiner", self.group("joiner"), deduplicated);
        probe.orphans = Some(Selector::new("adpipe_joiner_orphans_total", &[]));
        chain.add(out, "joiner", handle, probe)?;

        let stats_inputs = vec![
            names.deduplicated(EventKind::Impression),
            names.joined("clicks"),
            names.joined("conversions"),
            names.joined("orphans"),
        ];
        // stats-counter
        if let Some((url, schema)) = &self.postgres {
            let mut stats_env = self.common("stats-counter", "stats-counter");
            stats_env.extend(env(&[
                (
                    "ADPIPE__STATS__IMPRESSIONS",
                    names.deduplicated(EventKind::Impression),
                ),
                ("ADPIPE__STATS__JOINED_CLICKS", names.joined("clicks")),
                (
                    "ADPIPE__STATS__JOINED_CONVERSIONS",
                    names.joined("conversions"),
                ),
                ("ADPIPE__STATS__ORPHANS", names.joined("orphans")),
                ("ADPIPE__STATS__TOTALS_TOPIC", names.totals()),
                ("ADPIPE__STATS__POSTGRES_URL", url.clone()),
                ("ADPIPE__STATS__SCHEMA", schema.clone()),
                ("ADPIPE__STATS__BATCH_WAIT", "200ms".to_owned()),
            ]));
            let stats = adpipe_stats_counter::StatsSettings::load(None, stats_env.into_iter())?;
            let handle =
                adpipe_stats_counter::start(stats).context("starting the stats-counter")?;
            writeln!(
                out,
                "stats-counter: PostgreSQL schema {schema}, budget on http://{}/budget/today",
                handle.http_address
            )?;
            chain.add(
                out,
                "stats-counter",
                handle,
                runtime_probe(
                    "stats-counter",
                    "stats-counter",
                    self.group("stats-counter"),
                    stats_inputs.clone(),
                ),
            )?;
        } else {
            writeln!(
                out,
                "stats-counter: skipped (no --postgres-url; `infra/postgres.sh start` runs one, `infra/postgres.sh url` names it)"
            )?;
        }

        // dispatcher
        let mut dispatcher_env = self.common("dispatcher", "dispatcher");
        dispatcher_env.extend(env(&[
            ("ADPIPE__DISPATCHER__INPUTS", toml_list(&names.dispatched())),
            ("ADPIPE__DISPATCHER__DCS", toml_list(&names.dcs)),
            (
                "ADPIPE__DISPATCHER__TOPIC_PREFIX",
                format!("{}events-for-", names.prefix),
            ),
        ]));
        let dispatcher =
            adpipe_dispatcher::DispatcherSettings::load(None, dispatcher_env.into_iter())?;
        let handle = adpipe_dispatcher::start(dispatcher).context("starting the dispatcher")?;
        chain.add(
            out,
            "dispatcher",
            handle,
            runtime_probe(
                "dispatcher",
                "dispatcher",
                self.group("dispatcher"),
                names.dispatched(),
            ),
        )?;

        // the files loader, and the Elasticsearch one
        let file_inputs = [
            (names.deduplicated(EventKind::Impression), "impression"),
            (names.joined("clicks"), "joined-click"),
            (names.joined("conversions"), "joined-conversion"),
            (names.joined("orphans"), "click|conversion"),
        ];
        let inputs = toml_list(&file_inputs.map(|(topic, kinds)| format!("{topic}:{kinds}")));
        let mut files_env = self.common("loader-files", "loader");
        files_env.extend(env(&[
            ("ADPIPE__LOADER__SINK", "files".to_owned()),
            ("ADPIPE__LOADER__INPUTS", inputs.clone()),
            ("ADPIPE__LOADER__BATCH__WAIT", "500ms".to_owned()),
            ("ADPIPE__FILES__DIR", self.files_dir.display().to_string()),
        ]));
        let files = adpipe_loader::LoaderSettings::load(None, files_env.into_iter())?;
        let handle = adpipe_loader::start(files).context("starting the files loader")?;
        chain.add(
            out,
            "loader (files)",
            handle,
            loader_probe(
                "loader (files)",
                self.group("loader-files"),
                stats_inputs.clone(),
                "files",
                None,
            ),
        )?;
        if let Some((url, prefix)) = &self.elasticsearch {
            let mut es_env = self.common("loader-elasticsearch", "loader");
            es_env.extend(env(&[
                ("ADPIPE__LOADER__SINK", "elasticsearch".to_owned()),
                ("ADPIPE__LOADER__INPUTS", inputs),
                ("ADPIPE__LOADER__BATCH__WAIT", "500ms".to_owned()),
                ("ADPIPE__ELASTICSEARCH__URL", url.clone()),
                ("ADPIPE__ELASTICSEARCH__INDEX_PREFIX", prefix.clone()),
            ]));
            let settings = adpipe_loader::LoaderSettings::load(None, es_env.into_iter())?;
            let handle =
                adpipe_loader::start(settings).context("starting the Elasticsearch loader")?;
            chain.add(
                out,
                "loader (es)",
                handle,
                loader_probe(
                    "loader (es)",
                    self.group("loader-elasticsearch"),
                    stats_inputs,
                    "elasticsearch",
                    None,
                ),
            )?;
        }

        // a profile loader per DC, each with its embedded store
        for dc in &names.dcs {
            let group = format!("loader-profiles-{dc}");
            let (cluster, topic) = names.events_at(dc);
            let mut profiles_env = self.common(&group, "loader");
            profiles_env.extend(env(&[
                ("ADPIPE__LOADER__SINK", "profiles".to_owned()),
                (
                    "ADPIPE__LOADER__INPUTS",
                    toml_list(&[format!("{topic}:impression|joined-click|joined-conversion")]),
                ),
                ("ADPIPE__LOADER__BATCH__WAIT", "200ms".to_owned()),
                // Every event stays in its profile, so the check sees each.
                ("ADPIPE__PROFILES__KEEP", "1000000".to_owned()),
            ]));
            if let Some(cluster) = cluster {
                profiles_env.push((
                    "ADPIPE__KAFKA__BOOTSTRAP_SERVERS".to_owned(),
                    cluster.to_owned(),
                ));
            }
            let settings = adpipe_loader::LoaderSettings::load(None, profiles_env.into_iter())?;
            let store = MemoryProfiles::new();
            let handle = adpipe_loader::start_profiles(settings, store.clone())
                .with_context(|| format!("starting {dc}'s profile loader"))?;
            let stage = format!("profiles ({dc})");
            let mut probe = loader_probe(
                &stage,
                self.group(&group),
                vec![topic.clone()],
                "profiles",
                Some(topic),
            );
            probe.bootstrap = cluster.map(str::to_owned);
            chain.add(out, &stage, handle, probe)?;
            chain.profiles.push((dc.clone(), store));
        }
        Ok(chain)
    }
}

/// A loader's figures: records it wrote (its sink's counter, on `topic`
/// when several loaders of one sink run) in and out, refusals as dead
/// letters.
fn loader_probe(
    stage: &str,
    group: String,
    inputs: Vec<String>,
    sink: &str,
    topic: Option<String>,
) -> StageProbe {
    let mut written = Selector::new("adpipe_loader_records_total", &[("sink", sink)]);
    if let Some(topic) = topic {
        written.labels.push(("topic", topic));
    }
    StageProbe {
        name: stage.to_owned(),
        group,
        inputs,
        consumed: written.clone(),
        produced: written,
        late: Vec::new(),
        dead_lettered: vec![Selector::new(
            "adpipe_loader_refused_total",
            &[("sink", sink)],
        )],
        orphans: None,
        bootstrap: None,
    }
}

impl Chain {
    fn add(
        &mut self,
        out: &mut dyn std::io::Write,
        stage: &str,
        handle: WorkerHandle,
        probe: StageProbe,
    ) -> anyhow::Result<()> {
        writeln!(
            out,
            "{stage}: running, metrics on http://{}/metrics",
            handle.http_address
        )?;
        self.workers.push((stage.to_owned(), handle));
        self.probes.push(probe);
        Ok(())
    }
}
