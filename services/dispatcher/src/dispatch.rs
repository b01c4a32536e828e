//! Routing: which DCs serve a user, and the step that sends each processed
//! event to every serving DC but the one it was seen in.
//!
//! Contract: an event's origin is the merger's `adpipe.origin.dc` header
//! (the DC whose topic the merged copy came from), else the event's own
//! `dc` field; the event goes, unchanged (key, value, headers: no copy), to
//! `<topic-prefix><dc>` for each serving DC other than the origin —
//! MirrorMaker 2 carries it there, where a profile loader writes it. At
//! least once: the input is done only when every copy is acknowledged;
//! a copy sent twice changes nothing in a profile (idempotent upsert).

use std::sync::Arc;

use adpipe_events::HEADER_ORIGIN_DC;
use adpipe_runtime::{
    Emitter, InputRecord, OutputRecord, Step, StepError, StepFactory, TaskAssignment,
};
use serde::Deserialize;

/// Which DCs serve a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// Every DC serves every user.
    All,
    /// `replicas` DCs per user, consecutive from a stable hash of its id.
    UserHash {
        /// DCs per user.
        replicas: usize,
    },
}

impl Serving {
    /// The rule `[dispatcher] serving` (`all`, `user-hash`) and `replicas`
    /// name between `dcs` DCs; a wrong one is named in the error.
    pub fn parse(serving: &str, replicas: usize, dcs: usize) -> Result<Serving, String> {
        match serving {
            "all" => Ok(Serving::All),
            "user-hash" if (1..=dcs).contains(&replicas) => Ok(Serving::UserHash { replicas }),
            "user-hash" => Err(format!(
                "dispatcher.replicas = {replicas} must be between 1 and the {dcs} DCs"
            )),
            other => Err(format!(
                "dispatcher.serving = {other:?}: expected \"all\" or \"user-hash\""
            )),
        }
    }
}

/// The DCs, their output topics and the serving rule.
#[derive(Debug, Clone)]
pub struct Routes {
    dcs: Vec<(String, Arc<str>)>,
    serving: Serving,
}

/// FNV-1a, 64 bits: the same on every build and platform (std's hasher is
/// not guaranteed to be), so every instance routes a user alike.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Routes {
    /// Routes between `dcs`, output topics `<prefix><dc>`.
    pub fn new(dcs: Vec<String>, serving: Serving, prefix: &str) -> Self {
        Routes {
            dcs: dcs
                .into_iter()
                .map(|dc| {
                    let topic = Arc::from(format!("{prefix}{dc}"));
                    (dc, topic)
                })
                .collect(),
            serving,
        }
    }

    /// Every output topic.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.dcs.iter().map(|(_, topic)| &**topic)
    }

    /// The DCs (with their topics) that must receive an event of `user`
    /// seen in `origin`.
    pub fn targets<'a>(
        &'a self,
        user: &str,
        origin: &'a str,
    ) -> impl Iterator<Item = &'a (String, Arc<str>)> + 'a {
        let count = self.dcs.len();
        let (first, serving) = match self.serving {
            Serving::All => (0, count),
            Serving::UserHash { replicas } => {
                let first = usize::try_from(stable_hash(user) % count as u64).unwrap_or(0);
                (first, replicas)
            }
        };
        (0..serving)
            .map(move |i| &self.dcs[(first + i) % count])
            .filter(move |(dc, _)| dc != origin)
    }
}

#[derive(Deserialize, Default)]
struct Party {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    dc: Option<String>,
    #[serde(default)]
    event_time: Option<i64>,
}

/// What routing reads of an event: its user, DC and time (of the event
/// itself, or of the click / conversion a joined record is about).
#[derive(Deserialize)]
pub struct RouteFields {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    dc: Option<String>,
    #[serde(default)]
    event_time: Option<i64>,
    #[serde(default)]
    click: Option<Party>,
    #[serde(default)]
    conversion: Option<Party>,
}

/// Whom an event is routed for, and where it was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The user (the event's own, else its conversion's, else its click's).
    pub user: String,
    /// The DC it was seen in: the merger's origin header, else that
    /// party's `dc`.
    pub origin: String,
    /// That party's event time.
    pub event_time: Option<i64>,
}

impl RouteFields {
    /// The event's [`Route`], given its `adpipe.origin.dc` header; an
    /// event without a user or an origin is poison.
    pub fn route(self, origin_header: Option<&[u8]>) -> Result<Route, StepError> {
        let own = Party {
            user_id: self.user_id,
            dc: self.dc,
            event_time: self.event_time,
        };
        let event = match (own.user_id.is_some(), self.conversion, self.click) {
            (true, _, _) => own,
            (false, Some(conversion), _) => conversion,
            (false, None, Some(click)) => click,
            (false, None, None) => Party::default(),
        };
        let user = event.user_id.ok_or_else(|| {
            StepError::poison("no_user_id", "the event names no user_id to route by")
        })?;
        let origin = match origin_header.map(std::str::from_utf8) {
            Some(Ok(origin)) => origin.to_owned(),
            _ => event.dc.ok_or_else(|| {
                StepError::poison("no_origin_dc", "neither an origin header nor a dc field")
            })?,
        };
        Ok(Route {
            user,
            origin,
            event_time: event.event_time,
        })
    }
}

/// The dispatching step of one input partition.
pub struct DispatchStep {
    routes: Arc<Routes>,
}

impl Step for DispatchStep {
    async fn process(
        &mut self,
        record: &InputRecord<'_>,
        out: &mut Emitter,
    ) -> Result<(), StepError> {
        let fields: RouteFields = record.decode()?;
        let route = fields.route(record.header(HEADER_ORIGIN_DC))?;
        if let Some(time) = route.event_time {
            out.observe_event_time(time)?;
        }
        for (dc, topic) in self.routes.targets(&route.user, &route.origin) {
            let mut output =
                OutputRecord::sharing(topic, record.share(record.key), record.share(record.value));
            output.headers = record.headers.clone();
            output.timestamp_ms = record.timestamp_ms;
            out.emit(output);
            metrics::counter!("adpipe_dispatcher_routed_total", "dc" => dc.clone()).increment(1);
        }
        Ok(())
    }
}

/// Builds dispatching steps (stateless).
pub struct DispatchFactory {
    routes: Arc<Routes>,
}

impl DispatchFactory {
    /// A factory over `routes`.
    pub fn new(routes: Routes) -> Self {
        DispatchFactory {
            routes: Arc::new(routes),
        }
    }
}

impl StepFactory for DispatchFactory {
    type Step = DispatchStep;

    fn create(&self, _assignment: &TaskAssignment) -> Result<DispatchStep, StepError> {
        Ok(DispatchStep {
            routes: Arc::clone(&self.routes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dcs(routes: &Routes, user: &str, origin: &str) -> Vec<String> {
        routes
            .targets(user, origin)
            .map(|(dc, _)| dc.clone())
            .collect()
    }

    #[test]
    fn every_dc_but_the_origin_when_all_serve() {
        let routes = Routes::new(
            vec!["dc1".into(), "dc2".into(), "dc3".into()],
            Serving::All,
            "events-for-",
        );
        assert_eq!(dcs(&routes, "u", "dc2"), ["dc1", "dc3"]);
        let topics: Vec<&str> = routes
            .targets("u", "dc1")
            .map(|(_, topic)| &**topic)
            .collect();
        assert_eq!(topics, ["events-for-dc2", "events-for-dc3"]);
    }

    #[test]
    fn user_hash_picks_the_same_replicas_for_a_user_everywhere() {
        let routes = Routes::new(
            vec!["dc1".into(), "dc2".into(), "dc3".into()],
            Serving::UserHash { replicas: 2 },
            "events-for-",
        );
        let mut spread = std::collections::BTreeMap::<String, usize>::new();
        for n in 0..300 {
            let user = format!("user-{n}");
            let from_elsewhere = dcs(&routes, &user, "dc-none");
            assert_eq!(from_elsewhere.len(), 2, "{user}");
            assert_eq!(from_elsewhere, dcs(&routes, &user, "dc-none"), "stable");
            for dc in &from_elsewhere {
                *spread.entry(dc.clone()).or_default() += 1;
                // Seen in a serving DC: only the other serving DC gets it.
                let others = dcs(&routes, &user, dc);
                assert_eq!(others.len(), 1);
                assert_ne!(&others[0], dc);
            }
        }
        assert!(
            spread.values().all(|&count| count > 150),
            "spread over DCs: {spread:?}"
        );
    }
}
