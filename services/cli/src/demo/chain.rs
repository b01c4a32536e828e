//! Starts the whole chain in this process, each service from its own
//! library on the shared runtime, configured the way its binary is (the
//! embedded defaults overlaid with `ADPIPE__…` settings): merger →
//! deduplicator → joiner → stats-counter (with PostgreSQL) → dispatcher →
//! loaders (Avro files; a profile store per DC: embedded, or Redis).
//!
//! With DC clusters (`--dc`), each DC's profile loader runs against its own
//! cluster and reads MirrorMaker 2's copy of the dispatcher's
//! `events-for-<dc>`; on one cluster it reads central's topic directly.

use std::path::PathBuf;
use std::time::Duration;

use adpipe_deduplicator::DedupSettings;
use adpipe_events::EventKind;
use adpipe_loader::memory_profiles::MemoryProfiles;
use adpipe_runtime::WorkerHandle;
use anyhow::Context;

use super::live::StageProbe;
use super::names::Names;
use crate::metrics_text::Selector;

/// What a loader input holds (its files' and tables' kinds), by topic.
pub fn loader_kinds(names: &Names, topic: &str) -> Vec<EventKind> {
    if topic == names.joined("clicks") {
        vec![EventKind::JoinedClick]
    } else if topic == names.joined("conversions") {
        vec![EventKind::JoinedConversion]
    } else if topic == names.joined("orphans") {
        vec![EventKind::Click, EventKind::Conversion]
    } else {
        vec![EventKind::Impression]
    }
}

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
    /// BigQuery and the run's dataset, when a loader writes there.
    pub bigquery: Option<adpipe_loader::config::BigQuerySettings>,
    /// Where the profile loaders write.
    pub profiles: ProfileStore,
    /// How long the joiner waits for a partner (`15s`: a replay — what
    /// finds none within it never will, and long enough for the
    /// impressions' deduplication to catch up on a loaded 2-core machine;
    /// at 2 s a fresh-clone run orphaned 3 clicks whose impressions were
    /// still on their way).
    pub joiner_wait: String,
    /// How long a silent DC or input holds the merge and the joiner back.
    pub max_idle: String,
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

/// `ADPIPE__…` settings, in order.
pub type Env = Vec<(String, String)>;

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

/// The profile loaders' cap per user and kind: above any user's events in
/// a run, so the checks see every event in its profile.
pub const PROFILE_KEEP: usize = 1_000_000;

/// Where each DC's profile loader writes.
#[derive(Debug, Clone)]
pub enum ProfileStore {
    /// One embedded store per DC in this process (the demo).
    Embedded,
    /// Redis at this URL, each DC's entries under its own key prefix
    /// (`<topic prefix>profile-<dc>:`): services run as processes.
    Redis(String),
}

/// One service instance of the chain: which binary, configured how, and
/// what the live view measures of it.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// The stage's name (`merger`, `loader (files)`, `profiles (dc1)` …).
    pub stage: String,
    /// Its binary (`adpipe-merger` …), whose library the demo runs in-process.
    pub binary: &'static str,
    /// Its settings as `ADPIPE__…` variables over its embedded defaults.
    pub env: Env,
    /// What the live view measures of it.
    pub probe: StageProbe,
    /// The DC of a profile loader.
    pub dc: Option<String>,
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

    /// The consumer group of `group` under the run's prefix.
    pub fn group(&self, group: &str) -> String {
        format!("{}adpipe-{group}", self.names.prefix)
    }

    /// Every service of the chain, upstream first, with its settings.
    pub fn services(&self) -> Vec<ServiceSpec> {
        let names = self.names;
        let mut services = Vec::new();
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
                outputs: Vec::new(),
            };
        let mut add = |stage: &str, binary: &'static str, env: Env, probe: StageProbe| {
            services.push(ServiceSpec {
                stage: stage.to_owned(),
                binary,
                env,
                probe,
                dc: None,
            });
        };

        // merger
        let mut merger_env = self.common("merger", "merger");
        merger_env.extend(env(&[
            ("ADPIPE__MERGER__DCS", toml_list(&names.dcs)),
            (
                "ADPIPE__MERGER__INPUT",
                names.replica_template().replace("{prefix}", &names.prefix),
            ),
            (
                "ADPIPE__MERGER__OUTPUT",
                format!("{}merged.{{kind}}", names.prefix),
            ),
            // No live heartbeats from the simulated bidders: a DC silent
            // this long is idle (replayed: done).
            ("ADPIPE__RUNTIME__MAX_IDLE", self.max_idle.clone()),
            // So the demo's oversize record is one (see bad_input.rs).
            (
                "ADPIPE__KAFKA__PRODUCER",
                format!(
                    "{{ \"message.max.bytes\" = \"{}\" }}",
                    super::bad_input::MERGER_MAX_RECORD_BYTES
                ),
            ),
        ]));
        let replicas: Vec<String> = EventKind::PUBLISHED
            .into_iter()
            .flat_map(|kind| names.dcs.iter().map(move |dc| names.replica(dc, kind)))
            .collect();
        let mut probe = runtime_probe("merger", "merger", self.group("merger"), replicas);
        probe.outputs = EventKind::PUBLISHED.map(|kind| names.merged(kind)).to_vec();
        add("merger", "adpipe-merger", merger_env, probe);

        // deduplicator
        let mut dedup_env = self.common("deduplicator", "deduplicator");
        let streams: Vec<String> = EventKind::PUBLISHED
            .into_iter()
            .map(|kind| {
                format!(
                    "{{ input = {:?}, output = {:?}, changelog = {:?} }}",
                    names.merged(kind),
                    names.deduplicated(kind),
                    names.changelog(kind)
                )
            })
            .collect();
        dedup_env.extend(env(&[
            (
                "ADPIPE__DEDUPLICATOR__STATE_DIR",
                self.state_dir.join("deduplicator").display().to_string(),
            ),
            (
                "ADPIPE__DEDUPLICATOR__STREAM",
                format!("[{}]", streams.join(", ")),
            ),
        ]));
        let merged = EventKind::PUBLISHED.map(|kind| names.merged(kind)).to_vec();
        let mut probe = runtime_probe(
            "deduplicator",
            "deduplicator",
            self.group("deduplicator"),
            merged,
        );
        probe.outputs = EventKind::PUBLISHED
            .map(|kind| names.deduplicated(kind))
            .to_vec();
        add("deduplicator", "adpipe-deduplicator", dedup_env, probe);

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
            ("ADPIPE__JOINER__WAIT", self.joiner_wait.clone()),
            ("ADPIPE__RUNTIME__MAX_IDLE", self.max_idle.clone()),
        ]));
        let deduplicated = EventKind::PUBLISHED
            .map(|kind| names.deduplicated(kind))
            .to_vec();
        let mut probe = runtime_probe("joiner", "joiner", self.group("joiner"), deduplicated);
        probe.orphans = Some(Selector::new("adpipe_joiner_orphans_total", &[]));
        probe.outputs = ["clicks", "conversions", "orphans"]
            .map(|what| names.joined(what))
            .to_vec();
        add("joiner", "adpipe-joiner", joiner_env, probe);

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
            add(
                "stats-counter",
                "adpipe-stats-counter",
                stats_env,
                runtime_probe(
                    "stats-counter",
                    "stats-counter",
                    self.group("stats-counter"),
                    stats_inputs.clone(),
                ),
            );
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
        let mut probe = runtime_probe(
            "dispatcher",
            "dispatcher",
            self.group("dispatcher"),
            names.dispatched(),
        );
        // central's events-for-<dc>, and the DCs' copies MirrorMaker 2 makes
        probe.outputs = names
            .dcs
            .iter()
            .flat_map(|dc| [names.events_for(dc), names.events_at(dc).1])
            .collect();
        add("dispatcher", "adpipe-dispatcher", dispatcher_env, probe);

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
        add(
            "loader (files)",
            "adpipe-loader",
            files_env,
            loader_probe(
                "loader (files)",
                self.group("loader-files"),
                stats_inputs.clone(),
                "files",
                None,
            ),
        );
        if let Some((url, prefix)) = &self.elasticsearch {
            let mut es_env = self.common("loader-elasticsearch", "loader");
            es_env.extend(env(&[
                ("ADPIPE__LOADER__SINK", "elasticsearch".to_owned()),
                ("ADPIPE__LOADER__INPUTS", inputs.clone()),
                ("ADPIPE__LOADER__BATCH__WAIT", "500ms".to_owned()),
                ("ADPIPE__ELASTICSEARCH__URL", url.clone()),
                ("ADPIPE__ELASTICSEARCH__INDEX_PREFIX", prefix.clone()),
            ]));
            add(
                "loader (es)",
                "adpipe-loader",
                es_env,
                loader_probe(
                    "loader (es)",
                    self.group("loader-elasticsearch"),
                    stats_inputs.clone(),
                    "elasticsearch",
                    None,
                ),
            );
        }
        if let Some(bigquery) = &self.bigquery {
            let mut bq_env = self.common("loader-bigquery", "loader");
            bq_env.extend(env(&[
                ("ADPIPE__LOADER__SINK", "bigquery".to_owned()),
                ("ADPIPE__LOADER__INPUTS", inputs.clone()),
                ("ADPIPE__LOADER__BATCH__WAIT", "500ms".to_owned()),
                ("ADPIPE__BIGQUERY__URL", bigquery.url.clone()),
                ("ADPIPE__BIGQUERY__PROJECT", bigquery.project.clone()),
                ("ADPIPE__BIGQUERY__DATASET", bigquery.dataset.clone()),
                (
                    "ADPIPE__BIGQUERY__CREDENTIALS",
                    bigquery.credentials.clone(),
                ),
            ]));
            add(
                "loader (bigquery)",
                "adpipe-loader",
                bq_env,
                loader_probe(
                    "loader (bigquery)",
                    self.group("loader-bigquery"),
                    stats_inputs,
                    "bigquery",
                    None,
                ),
            );
        }

        // a profile loader per DC
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
                ("ADPIPE__PROFILES__KEEP", PROFILE_KEEP.to_string()),
            ]));
            if let ProfileStore::Redis(url) = &self.profiles {
                profiles_env.extend(env(&[
                    ("ADPIPE__PROFILES__STORE", "redis".to_owned()),
                    ("ADPIPE__PROFILES__URL", url.clone()),
                    ("ADPIPE__PROFILES__KEY_PREFIX", self.profile_prefix(dc)),
                ]));
            }
            if let Some(cluster) = cluster {
                profiles_env.push((
                    "ADPIPE__KAFKA__BOOTSTRAP_SERVERS".to_owned(),
                    cluster.to_owned(),
                ));
            }
            let stage = format!("profiles ({dc})");
            let mut probe = loader_probe(
                &stage,
                self.group(&group),
                vec![topic.clone()],
                "profiles",
                Some(topic),
            );
            probe.bootstrap = cluster.map(str::to_owned);
            services.push(ServiceSpec {
                stage,
                binary: "adpipe-loader",
                env: profiles_env,
                probe,
                dc: Some(dc.clone()),
            });
        }
        services
    }

    /// The key prefix of `dc`'s profiles in a shared Redis.
    pub fn profile_prefix(&self, dc: &str) -> String {
        format!("{}profile-{dc}:", self.names.prefix)
    }

    /// Starts every service in this process, each from its library the way
    /// its binary starts it; `out` hears where each serves its metrics.
    pub fn start(&self, out: &mut dyn std::io::Write) -> anyhow::Result<Chain> {
        let mut chain = Chain {
            workers: Vec::new(),
            probes: Vec::new(),
            profiles: Vec::new(),
        };
        if self.postgres.is_none() {
            writeln!(
                out,
                "stats-counter: skipped (no --postgres-url; `infra/postgres.sh start` runs one, `infra/postgres.sh url` names it)"
            )?;
        }
        for spec in self.services() {
            let vars = spec.env.clone().into_iter();
            let handle: anyhow::Result<WorkerHandle> = match spec.binary {
                "adpipe-merger" => Ok(adpipe_merger::start(adpipe_merger::MergerSettings::load(
                    None, vars,
                )?)?),
                "adpipe-deduplicator" => Ok(adpipe_deduplicator::start(DedupSettings::load(
                    None, vars,
                )?)?),
                "adpipe-joiner" => Ok(adpipe_joiner::start(adpipe_joiner::JoinerSettings::load(
                    None, vars,
                )?)?),
                "adpipe-stats-counter" => {
                    let handle = adpipe_stats_counter::start(
                        adpipe_stats_counter::StatsSettings::load(None, vars)?,
                    )?;
                    if let Some((_, schema)) = &self.postgres {
                        writeln!(
                            out,
                            "stats-counter: PostgreSQL schema {schema}, budget on http://{}/budget/today",
                            handle.http_address
                        )?;
                    }
                    Ok(handle)
                }
                "adpipe-dispatcher" => Ok(adpipe_dispatcher::start(
                    adpipe_dispatcher::DispatcherSettings::load(None, vars)?,
                )?),
                "adpipe-loader" => {
                    let settings = adpipe_loader::LoaderSettings::load(None, vars)?;
                    match (&spec.dc, &self.profiles) {
                        (Some(dc), ProfileStore::Embedded) => {
                            let store = MemoryProfiles::new();
                            chain.profiles.push((dc.clone(), store.clone()));
                            Ok(adpipe_loader::start_profiles(settings, store)?)
                        }
                        _ => Ok(adpipe_loader::start(settings)?),
                    }
                }
                other => Err(anyhow::anyhow!("no service {other} in the chain")),
            };
            let handle = handle.with_context(|| format!("starting the {}", spec.stage))?;
            chain.add(out, &spec.stage, handle, spec.probe)?;
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
        outputs: Vec::new(),
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
