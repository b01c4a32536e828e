//! The fault schedule: which fault, when, against what — drawn from the
//! run's seed before it starts and printed, so a failing run can be read
//! against it (and replayed with the same seed).
//!
//! Contract: kills are spread over every service in turn (a seeded
//! shuffle, so each service is killed `kills / services` times or one
//! more); the moments fall in the middle 10–85 % of the publishing, where
//! every stage has work; outages of a DC and of Elasticsearch do not
//! overlap each other.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL an instance of the service (one that owns partitions and
    /// made progress), restart it after `after`.
    Kill { service: usize, after: Duration },
    /// SIGTERM the service (a rolling restart), start it again at once.
    Restart { service: usize },
    /// A second instance of the service joins (a rebalance) and leaves
    /// (SIGTERM) after `stay`.
    SecondInstance { service: usize, stay: Duration },
    /// SIGKILL central broker `node` (leader failover), restart it after `down`.
    Broker { node: u32, down: Duration },
    /// A DC's whole cluster stops (cleanly), and starts after `down`.
    DcDown { dc: String, down: Duration },
    /// Elasticsearch stops, and starts after `down`.
    SearchDown { down: Duration },
}

/// A fault and its moment after the start of publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// When.
    pub at: Duration,
    /// What.
    pub fault: Fault,
}

/// What the schedule is drawn for.
#[derive(Debug, Clone)]
pub struct Shape {
    /// How long the bidders publish.
    pub publishing: Duration,
    /// The services' names, in chain order.
    pub services: Vec<String>,
    /// SIGKILLs of service instances, in total.
    pub kills: usize,
    /// The DCs (one of them goes down).
    pub dcs: Vec<String>,
    /// Brokers of central.
    pub brokers: u32,
    /// Whether an Elasticsearch loader runs (then it goes down once).
    pub search: bool,
    /// How long a DC or Elasticsearch stays down.
    pub outage: Duration,
}

/// Draws the schedule: `kills` SIGKILLs, an eighth as many SIGTERM
/// restarts (at least 2), a sixteenth as many second instances (at least
/// 1), a broker kill per 25 kills (at least 1), one DC outage and one
/// Elasticsearch outage.
pub fn draw(seed: u64, shape: &Shape) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc4a0_5eed);
    let window =
        |rng: &mut StdRng, from: f64, to: f64| shape.publishing.mul_f64(rng.random_range(from..to));
    let mut order: Vec<usize> = (0..shape.services.len()).collect();
    order.shuffle(&mut rng);
    let mut planned = Vec::new();
    for kill in 0..shape.kills {
        planned.push(Planned {
            at: window(&mut rng, 0.1, 0.85),
            fault: Fault::Kill {
                service: order[kill % order.len()],
                after: Duration::from_millis(rng.random_range(500..5_000)),
            },
        });
    }
    for _ in 0..(shape.kills / 8).max(2) {
        planned.push(Planned {
            at: window(&mut rng, 0.1, 0.85),
            fault: Fault::Restart {
                service: rng.random_range(0..shape.services.len()),
            },
        });
    }
    for _ in 0..(shape.kills / 16).max(1) {
        planned.push(Planned {
            at: window(&mut rng, 0.1, 0.7),
            fault: Fault::SecondInstance {
                service: rng.random_range(0..shape.services.len()),
                stay: shape.publishing.mul_f64(0.1).max(Duration::from_secs(20)),
            },
        });
    }
    for _ in 0..(shape.kills / 25).max(1) {
        planned.push(Planned {
            at: window(&mut rng, 0.15, 0.8),
            fault: Fault::Broker {
                node: rng.random_range(1..=shape.brokers),
                down: Duration::from_secs(rng.random_range(10..30)),
            },
        });
    }
    // The outages one after the other: a DC in the first half, the store
    // in the second.
    if let Some(dc) = shape.dcs.choose(&mut rng) {
        planned.push(Planned {
            at: window(&mut rng, 0.15, 0.3),
            fault: Fault::DcDown {
                dc: dc.clone(),
                down: shape.outage,
            },
        });
    }
    if shape.search {
        planned.push(Planned {
            at: window(&mut rng, 0.5, 0.6),
            fault: Fault::SearchDown { down: shape.outage },
        });
    }
    planned.sort_by_key(|planned| planned.at);
    planned
}

/// A fault in words, with the services' names.
pub struct Described<'a>(pub &'a Fault, pub &'a [String]);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |service: &usize| self.1[*service].as_str();
        match self.0 {
            Fault::Kill { service, after } => {
                write!(f, "kill -9 {}, restart after {after:.1?}", name(service))
            }
            Fault::Restart { service } => write!(f, "SIGTERM {} and restart", name(service)),
            Fault::SecondInstance { service, stay } => write!(
                f,
                "a second {} joins, leaves after {}s",
                name(service),
                stay.as_secs()
            ),
            Fault::Broker { node, down } => {
                write!(
                    f,
                    "kill -9 central broker {node}, restart after {}s",
                    down.as_secs()
                )
            }
            Fault::DcDown { dc, down } => {
                write!(f, "{dc}'s cluster down for {}s", down.as_secs())
            }
            Fault::SearchDown { down } => {
                write!(f, "Elasticsearch down for {}s", down.as_secs())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(kills: usize) -> Shape {
        Shape {
            publishing: Duration::from_secs(200),
            services: (0..9).map(|i| format!("s{i}")).collect(),
            kills,
            dcs: vec!["dc1".into(), "dc2".into()],
            brokers: 3,
            search: true,
            outage: Duration::from_secs(60),
        }
    }

    #[test]
    fn every_service_is_killed_and_the_schedule_is_the_seeds() {
        let planned = draw(7, &shape(50));
        assert_eq!(planned, draw(7, &shape(50)), "same seed, same schedule");
        let mut kills = [0; 9];
        for item in &planned {
            if let Fault::Kill { service, .. } = item.fault {
                kills[service] += 1;
            }
            assert!(item.at >= Duration::from_secs(20) && item.at <= Duration::from_secs(170));
        }
        assert!(kills.iter().all(|count| *count >= 5), "{kills:?}");
        assert_eq!(kills.iter().sum::<i32>(), 50);
        // 50 kills + 6 restarts + 3 second instances + 2 brokers + 2 outages.
        assert_eq!(planned.len(), 63);
        assert!(planned.windows(2).all(|pair| pair[0].at <= pair[1].at));
    }

    #[test]
    fn the_short_run_still_has_every_kind_of_fault() {
        let planned = draw(1, &shape(10));
        let has = |test: fn(&Fault) -> bool| planned.iter().any(|item| test(&item.fault));
        assert!(has(|fault| matches!(fault, Fault::Restart { .. })));
        assert!(has(|fault| matches!(fault, Fault::SecondInstance { .. })));
        assert!(has(|fault| matches!(fault, Fault::Broker { .. })));
        assert!(has(|fault| matches!(fault, Fault::DcDown { .. })));
        assert!(has(|fault| matches!(fault, Fault::SearchDown { .. })));
        assert_eq!(planned.len(), 16);
    }
}
