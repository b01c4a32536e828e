//! `adpipe reconcile --from … --to …`: one reconciliation of the chain
//! over those event-time hours (see the `adpipe-reconciler` library): the
//! table per hour and kind, every difference named and explained; exit 1
//! when one is unexplained. Settings come from the reconciler's defaults,
//! `--config` and `ADPIPE__…` variables, with these flags on top.

use std::io::Write;
use std::path::PathBuf;

use adpipe_reconciler::{ReconcileSettings, Span};
use clap::Args;

use crate::consume::StartAt;
use crate::target::KafkaTarget;

/// Arguments of `adpipe reconcile`.
#[derive(Args, Debug)]
pub struct ReconcileArgs {
    /// First hour: `time:RFC3339|ms` or `ago:DURATION` (rounded down to the hour).
    #[arg(long)]
    pub from: String,
    /// End: `time:…`, `ago:…` or `now` (rounded up to the hour).
    #[arg(long, default_value = "now")]
    pub to: String,
    /// The reconciler's TOML over its embedded defaults.
    #[arg(long, env = "ADPIPE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Central (replicas, merged, deduplicated, joined, DLQs).
    #[command(flatten)]
    pub kafka: KafkaTarget,
    /// Schema registry base URL.
    #[arg(long, env = "ADPIPE_REGISTRY_URL")]
    pub registry: Option<String>,
    /// The DCs (default dc1, dc2).
    #[arg(long = "dcs", value_delimiter = ',')]
    pub dcs: Vec<String>,
    /// A DC's own cluster, `NAME=host:port`, to check replication too (repeatable).
    #[arg(long = "dc")]
    pub dc_clusters: Vec<String>,
    /// Prefix of every topic (test topics).
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// A DC's replica on central, with {dc}, {prefix}, {kind} (default `{dc}.{prefix}{kind}`).
    #[arg(long)]
    pub replica: Option<String>,
    /// A consumer group of the chain, `STAGE=GROUP` (merger, deduplicator,
    /// joiner, stats-counter, files, elasticsearch, bigquery; an empty
    /// GROUP skips it).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// The stats-counter's PostgreSQL.
    #[arg(long, env = "ADPIPE_PG_URL")]
    pub postgres_url: Option<String>,
    /// Its schema.
    #[arg(long)]
    pub schema: Option<String>,
    /// The files loader's root.
    #[arg(long)]
    pub files_dir: Option<PathBuf>,
    /// Elasticsearch or OpenSearch.
    #[arg(long)]
    pub es_url: Option<String>,
    /// The Elasticsearch loader's index prefix.
    #[arg(long)]
    pub es_index_prefix: Option<String>,
    /// BigQuery's REST base (`$(infra/bigquery.sh url)/bigquery/v2` for
    /// the emulator).
    #[arg(long)]
    pub bq_url: Option<String>,
    /// The BigQuery loader's dataset.
    #[arg(long)]
    pub bq_dataset: Option<String>,
    /// BigQuery credentials: `none` (an emulator), `application-default`
    /// or a service-account key file.
    #[arg(long)]
    pub bq_credentials: Option<String>,
    /// The Redis of the DCs' profile loaders (each DC's dispatched events
    /// against its user profiles).
    #[arg(long)]
    pub profiles_url: Option<String>,
    /// A DC's profile key prefix, with {dc} (default `profile-{dc}:`).
    #[arg(long)]
    pub profiles_key_prefix: Option<String>,
    /// A DC's profile loader's consumer group, with {dc} (default
    /// `adpipe-loader-profiles-{dc}`).
    #[arg(long)]
    pub profiles_group: Option<String>,
    /// Also write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn time(text: &str, what: &str) -> anyhow::Result<i64> {
    if text == "now" {
        return Ok(adpipe_runtime::event_time::now_ms());
    }
    match text.parse::<StartAt>().map_err(anyhow::Error::msg)? {
        StartAt::Time(ms) => Ok(ms),
        _ => anyhow::bail!("--{what} {text:?}: use time:RFC3339|ms, ago:DURATION or now"),
    }
}

impl ReconcileArgs {
    /// The settings: defaults, `--config`, the environment, then the flags.
    pub fn settings(&self) -> anyhow::Result<ReconcileSettings> {
        let mut flags: Vec<(String, String)> = Vec::new();
        let mut set = |key: &str, value: String| flags.push((format!("ADPIPE__{key}"), value));
        let list = |items: &[String]| {
            let quoted: Vec<String> = items.iter().map(|item| format!("{item:?}")).collect();
            format!("[{}]", quoted.join(", "))
        };
        let text = |value: &str| format!("{value:?}");
        set(
            "KAFKA__BOOTSTRAP_SERVERS",
            text(&self.kafka.bootstrap_servers()?),
        );
        if let Some(registry) = &self.registry {
            set("REGISTRY__URL", text(registry));
        }
        if !self.dcs.is_empty() {
            set("RECONCILE__DCS", list(&self.dcs));
        }
        if !self.dc_clusters.is_empty() {
            set("RECONCILE__DC_CLUSTERS", list(&self.dc_clusters));
        }
        if let Some(prefix) = &self.topic_prefix {
            set("RECONCILE__TOPIC_PREFIX", text(prefix));
        }
        if let Some(replica) = &self.replica {
            set("RECONCILE__REPLICA", text(replica));
        }
        for entry in &self.groups {
            let (stage, group) = entry
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--group {entry:?}: use STAGE=GROUP"))?;
            set(
                &format!(
                    "RECONCILE__GROUPS__{}",
                    stage.to_ascii_uppercase().replace('-', "_")
                ),
                text(group),
            );
        }
        if let Some(url) = &self.postgres_url {
            set("STATS__POSTGRES_URL", text(url));
        }
        if let Some(schema) = &self.schema {
            set("STATS__SCHEMA", text(schema));
        }
        if let Some(dir) = &self.files_dir {
            set("FILES__DIR", text(&dir.display().to_string()));
        }
        if let Some(url) = &self.es_url {
            set("ELASTICSEARCH__URL", text(url));
        }
        if let Some(prefix) = &self.es_index_prefix {
            set("ELASTICSEARCH__INDEX_PREFIX", text(prefix));
        }
        if let Some(url) = &self.bq_url {
            set("BIGQUERY__URL", text(url));
        }
        if let Some(dataset) = &self.bq_dataset {
            set("BIGQUERY__DATASET", text(dataset));
        }
        if let Some(credentials) = &self.bq_credentials {
            set("BIGQUERY__CREDENTIALS", text(credentials));
        }
        if let Some(url) = &self.profiles_url {
            set("PROFILES__URL", text(url));
        }
        if let Some(prefix) = &self.profiles_key_prefix {
            set("PROFILES__KEY_PREFIX", text(prefix));
        }
        if let Some(group) = &self.profiles_group {
            set("PROFILES__GROUP", text(group));
        }
        Ok(ReconcileSettings::load(
            self.config.as_deref(),
            std::env::vars().chain(flags),
        )?)
    }

    /// The hours: `--from` rounded down, `--to` rounded up.
    pub fn span(&self, settings: &ReconcileSettings) -> anyhow::Result<Span> {
        let hour = adpipe_reconciler::ledger::HOUR_MS;
        let from = time(&self.from, "from")?;
        let to = time(&self.to, "to")?;
        let from = from - from.rem_euclid(hour);
        let to = to + (hour - to.rem_euclid(hour)) % hour;
        if to <= from {
            anyhow::bail!("--to must be after --from");
        }
        Ok(Span {
            from,
            to,
            slack_ms: settings.slack.as_millis() as i64,
        })
    }
}

/// Reconciles and prints; returns whether every difference is explained.
pub async fn run(args: &ReconcileArgs, out: &mut dyn Write) -> anyhow::Result<bool> {
    let settings = args.settings()?;
    let span = args.span(&settings)?;
    let result = adpipe_reconciler::reconcile(&settings, span).await?;
    result.print(out)?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
    }
    Ok(result.unexplained().next().is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReconcileArgs,
    }

    #[test]
    fn flags_land_in_the_reconcilers_settings_and_the_hours_round_outwards() {
        let cli = Cli::try_parse_from([
            "reconcile",
            "--from",
            "time:2026-12-03T10:20:00Z",
            "--to",
            "time:2026-12-03T12:05:00Z",
            "--brokers",
            "127.0.0.1:1",
            "--dc",
            "dc1=127.0.0.1:2",
            "--topic-prefix",
            "t.",
            "--group",
            "files=my-files",
            "--group",
            "elasticsearch=",
            "--postgres-url",
            "postgresql://u@h/db",
            "--schema",
            "s",
        ])
        .expect("parses");
        let settings = cli.args.settings().expect("valid");
        assert_eq!(settings.bootstrap, "127.0.0.1:1");
        assert_eq!(settings.dcs[0].bootstrap.as_deref(), Some("127.0.0.1:2"));
        assert_eq!(settings.dcs[1].bootstrap, None);
        assert_eq!(
            settings
                .topics
                .replica("dc2", adpipe_reconciler::ledger::Kind::Click),
            "dc2.t.clicks"
        );
        assert_eq!(settings.groups.files, "my-files");
        assert_eq!(settings.groups.elasticsearch, "");
        assert_eq!(
            settings.stats,
            Some(("postgresql://u@h/db".to_owned(), "s".to_owned()))
        );
        let span = cli.args.span(&settings).expect("a span");
        let hour = adpipe_reconciler::ledger::HOUR_MS;
        assert_eq!(span.from % hour, 0);
        assert_eq!(span.to - span.from, 3 * hour, "10:00 to 13:00");
        let bad = Cli::try_parse_from([
            "reconcile",
            "--from",
            "ago:1h",
            "--brokers",
            "b",
            "--group",
            "files",
        ])
        .expect("parses");
        assert!(bad.args.settings().is_err(), "--group needs STAGE=GROUP");
    }
}
