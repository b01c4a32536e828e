//! The pure diff between a declaration and what a cluster holds.

use std::collections::BTreeMap;
use std::fmt;

use crate::declared::DesiredTopic;

/// A topic as a live cluster holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedTopic {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor of partition 0.
    pub replication: i32,
    /// Current values of the configs adpipe manages.
    pub configs: BTreeMap<String, String>,
    /// Whether any partition holds (or held) records.
    pub has_data: bool,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do.
    UpToDate,
    /// The topic is missing.
    Create,
    /// Raise the partition count (safe: unkeyed, or keyed and empty).
    AddPartitions {
        /// Current count.
        from: i32,
        /// Declared count.
        to: i32,
    },
    /// Set configs to their declared values: (key, current, declared).
    AlterConfigs(Vec<(String, Option<String>, String)>),
    /// A change this tool will not make; the reason says why and what to do.
    Refuse(String),
    /// On the cluster but not declared; left alone.
    Undeclared,
}

/// The actions for one topic on one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPlan {
    /// Cluster name.
    pub cluster: String,
    /// Topic name.
    pub topic: String,
    /// The declaration (absent for undeclared topics).
    pub desired: Option<DesiredTopic>,
    /// What to do.
    pub actions: Vec<Action>,
}

impl TopicPlan {
    /// Whether applying would change something.
    pub fn changes(&self) -> bool {
        self.actions.iter().any(|action| {
            matches!(
                action,
                Action::Create | Action::AddPartitions { .. } | Action::AlterConfigs(_)
            )
        })
    }

    /// Whether the plan holds a refused change.
    pub fn refused(&self) -> bool {
        self.actions
            .iter()
            .any(|action| matches!(action, Action::Refuse(_)))
    }
}

impl fmt::Display for TopicPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for action in &self.actions {
            let (verb, detail) = match action {
                Action::UpToDate => ("ok", String::new()),
                Action::Create => (
                    "create",
                    match &self.desired {
                        Some(desired) => format!(
                            "partitions={} replication={} {}",
                            desired.partitions,
                            desired.replication,
                            desired
                                .configs
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(" ")
                        ),
                        None => String::new(),
                    },
                ),
                Action::AddPartitions { from, to } => ("partitions", format!("{from} -> {to}")),
                Action::AlterConfigs(changes) => (
                    "configure",
                    changes
                        .iter()
                        .map(|(key, current, declared)| {
                            format!(
                                "{key}: {} -> {declared}",
                                current.as_deref().unwrap_or("(default)")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                Action::Refuse(reason) => ("REFUSED", reason.clone()),
                Action::Undeclared => ("undeclared", "not in the topology; left alone".to_owned()),
            };
            writeln!(
                f,
                "{:<10} {:<11} {:<32} {}",
                self.cluster, verb, self.topic, detail
            )?;
        }
        Ok(())
    }
}

/// Compares what one cluster should hold with what it holds.
pub fn plan(cluster: &str, desired: &[DesiredTopic], observed: &[ObservedTopic]) -> Vec<TopicPlan> {
    let mut plans: Vec<TopicPlan> = desired
        .iter()
        .map(|want| {
            let actions = match observed.iter().find(|have| have.name == want.name) {
                None => vec![Action::Create],
                Some(have) => diff(want, have),
            };
            TopicPlan {
                cluster: cluster.to_owned(),
                topic: want.name.clone(),
                desired: Some(want.clone()),
                actions,
            }
        })
        .collect();
    for have in observed {
        let internal = have.name.starts_with("__");
        if !internal && !desired.iter().any(|want| want.name == have.name) {
            plans.push(TopicPlan {
                cluster: cluster.to_owned(),
                topic: have.name.clone(),
                desired: None,
                actions: vec![Action::Undeclared],
            });
        }
    }
    plans
}

fn diff(want: &DesiredTopic, have: &ObservedTopic) -> Vec<Action> {
    let mut actions = Vec::new();
    if have.partitions > want.partitions {
        actions.push(Action::Refuse(format!(
            "has {} partitions, declared {}: Kafka cannot shrink a topic; fix the declaration or migrate to a new topic",
            have.partitions, want.partitions
        )));
    } else if have.partitions < want.partitions {
        if want.keyed && have.has_data {
            actions.push(Action::Refuse(format!(
                "keyed topic holds data: raising partitions {} -> {} would move users to other partitions and break partition-local merging and joining; migrate to a new topic instead",
                have.partitions, want.partitions
            )));
        } else {
            actions.push(Action::AddPartitions {
                from: have.partitions,
                to: want.partitions,
            });
        }
    }
    if have.replication != want.replication {
        actions.push(Action::Refuse(format!(
            "replication is {}, declared {}: changing it needs a partition reassignment (kafka-reassign-partitions), which this tool does not do",
            have.replication, want.replication
        )));
    }
    let changes: Vec<_> = want
        .configs
        .iter()
        .filter(|(key, value)| have.configs.get(*key) != Some(*value))
        .map(|(key, value)| (key.clone(), have.configs.get(key).cloned(), value.clone()))
        .collect();
    if !changes.is_empty() {
        actions.push(Action::AlterConfigs(changes));
    }
    if actions.is_empty() {
        actions.push(Action::UpToDate);
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(keyed: bool, partitions: i32) -> DesiredTopic {
        DesiredTopic {
            cluster: "dc1".into(),
            name: "t".into(),
            partitions,
            replication: 1,
            keyed,
            configs: BTreeMap::from([("cleanup.policy".into(), "delete".into())]),
        }
    }

    fn observed(partitions: i32, has_data: bool, policy: &str) -> ObservedTopic {
        ObservedTopic {
            name: "t".into(),
            partitions,
            replication: 1,
            configs: BTreeMap::from([("cleanup.policy".into(), policy.into())]),
            has_data,
        }
    }

    fn actions(want: DesiredTopic, have: Option<ObservedTopic>) -> Vec<Action> {
        plan("dc1", &[want], &have.into_iter().collect::<Vec<_>>())
            .remove(0)
            .actions
    }

    #[test]
    fn creates_missing_and_leaves_matching_topics_alone() {
        assert_eq!(actions(desired(true, 12), None), vec![Action::Create]);
        assert_eq!(
            actions(desired(true, 12), Some(observed(12, true, "delete"))),
            vec![Action::UpToDate]
        );
    }

    #[test]
    fn refuses_to_shrink_or_repartition_keyed_topics_in_use() {
        assert!(matches!(
            actions(desired(false, 3), Some(observed(6, false, "delete")))[0],
            Action::Refuse(_)
        ));
        assert!(matches!(
            actions(desired(true, 12), Some(observed(6, true, "delete")))[0],
            Action::Refuse(_)
        ));
    }

    #[test]
    fn raises_partitions_where_safe() {
        let grow = Action::AddPartitions { from: 6, to: 12 };
        assert_eq!(
            actions(desired(true, 12), Some(observed(6, false, "delete"))),
            vec![grow.clone()]
        );
        assert_eq!(
            actions(desired(false, 12), Some(observed(6, true, "delete"))),
            vec![grow]
        );
    }

    #[test]
    fn updates_drifted_configs_and_reports_undeclared_topics() {
        let drifted = actions(desired(true, 12), Some(observed(12, true, "compact")));
        assert_eq!(
            drifted,
            vec![Action::AlterConfigs(vec![(
                "cleanup.policy".into(),
                Some("compact".into()),
                "delete".into()
            )])]
        );
        let mut stray = observed(1, false, "delete");
        stray.name = "stray".into();
        let plans = plan("dc1", &[], &[stray]);
        assert_eq!(plans[0].actions, vec![Action::Undeclared]);
        assert!(!plans[0].changes());
    }
}
