//! `adpipe topology plan|apply`: make the live clusters match topologies/.

use std::io::Write;
use std::path::PathBuf;

use adpipe_topology::live::LiveCluster;
use adpipe_topology::{TopicPlan, Topology, plan};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::target::ClusterMapFile;

/// Topology subcommands.
#[derive(Subcommand, Debug)]
pub enum TopologyCommand {
    /// Show what differs between the declaration and the live clusters.
    Plan(TopologyArgs),
    /// Create missing topics, raise partitions where safe and update configs.
    /// Refuses (and changes nothing) if the plan holds a dangerous change.
    Apply(TopologyArgs),
}

/// Where the declaration and the clusters are.
#[derive(Args, Debug)]
pub struct TopologyArgs {
    /// Topic declaration.
    #[arg(long, default_value = "topologies/pipeline.toml")]
    pub topology: PathBuf,
    #[command(flatten)]
    pub clusters: ClusterMapFile,
    /// Only these clusters (repeatable); all by default.
    #[arg(long = "only")]
    pub only: Vec<String>,
    /// Also list topics on the clusters that the topology does not declare.
    #[arg(long)]
    pub show_undeclared: bool,
    /// `apply` returns once every change is visible on the clusters; it
    /// fails after this long, naming what is still missing.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub converge_timeout: std::time::Duration,
}

/// Runs a topology subcommand, writing the plan to `out`.
pub async fn run(command: &TopologyCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let (args, apply) = match command {
        TopologyCommand::Plan(args) => (args, false),
        TopologyCommand::Apply(args) => (args, true),
    };
    let topology = Topology::load(&args.topology)?;
    let map = args.clusters.load()?;
    let mut all_plans = Vec::new();
    for cluster in &map.clusters {
        if !args.only.is_empty() && !args.only.contains(&cluster.name) {
            continue;
        }
        let desired = topology.desired_for(cluster, &map);
        let live = LiveCluster::connect(&cluster.name, &cluster.bootstrap_servers)?;
        let observed = live.observe(&desired).await.with_context(|| {
            format!(
                "reading cluster {} at {}",
                cluster.name, cluster.bootstrap_servers
            )
        })?;
        let plans = plan(&cluster.name, &desired, &observed);
        for topic_plan in &plans {
            let undeclared = topic_plan.desired.is_none();
            if args.show_undeclared || !undeclared {
                write!(out, "{topic_plan}")?;
            }
        }
        all_plans.push((live, plans));
    }
    let every_plan = all_plans.iter().flat_map(|(_, plans)| plans.iter());
    let summary = Summary::of(every_plan);
    writeln!(
        out,
        "\n{} to create, {} to change, {} refused, {} up to date; {} undeclared topic(s) left alone{}",
        summary.create,
        summary.change,
        summary.refused,
        summary.up_to_date,
        summary.undeclared,
        if args.show_undeclared {
            ""
        } else {
            " (--show-undeclared lists them)"
        }
    )?;
    if !apply {
        return Ok(());
    }
    if summary.refused > 0 {
        bail!(
            "refusing to apply: {} change(s) above are marked REFUSED; nothing was changed",
            summary.refused
        );
    }
    let mut applied = 0;
    for (live, plans) in &all_plans {
        applied += live.apply(plans).await?;
    }
    // Only a change the clusters show counts as applied: wait until
    // a plan of every cluster lists nothing left to do.
    for (live, plans) in &all_plans {
        let desired: Vec<_> = plans
            .iter()
            .filter_map(|topic_plan| topic_plan.desired.clone())
            .collect();
        live.wait_until_converged(&desired, args.converge_timeout)
            .await?;
    }
    writeln!(out, "applied {applied} change(s)")?;
    Ok(())
}

#[derive(Default)]
struct Summary {
    create: usize,
    change: usize,
    refused: usize,
    up_to_date: usize,
    undeclared: usize,
}

impl Summary {
    fn of<'a>(plans: impl Iterator<Item = &'a TopicPlan>) -> Self {
        let mut summary = Summary::default();
        for topic_plan in plans {
            use adpipe_topology::Action;
            if topic_plan.refused() {
                summary.refused += 1;
            } else if topic_plan.actions.contains(&Action::Create) {
                summary.create += 1;
            } else if topic_plan.changes() {
                summary.change += 1;
            } else if topic_plan.actions.contains(&Action::UpToDate) {
                summary.up_to_date += 1;
            } else if topic_plan.actions.contains(&Action::Undeclared) {
                summary.undeclared += 1;
            }
        }
        summary
    }
}
