//! The simulated bidders of several datacenters: one producer per DC
//! cluster, each publication sent to the cluster of its DC — so the
//! cross-DC copies the simulation injects really land in two clusters.

use std::collections::BTreeMap;
use std::time::Duration;

use adpipe_codec::Codec;
use adpipe_events::EventKind;

use crate::Publication;
use crate::publish::{PublishError, SimPublisher};

/// A DC name and the bootstrap servers of its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcCluster {
    /// Datacenter name, as the simulation's publications carry it.
    pub dc: String,
    /// Its cluster's bootstrap servers.
    pub bootstrap: String,
}

/// Why the bidders could not publish.
#[derive(Debug, thiserror::Error)]
pub enum BiddersError {
    /// A publication names a DC without a cluster.
    #[error("no cluster for DC {0:?}")]
    UnknownDc(String),
    /// Encoding or producing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// One [`SimPublisher`] per DC.
pub struct Bidders {
    by_dc: BTreeMap<String, SimPublisher>,
}

impl Bidders {
    /// Connects to every DC's cluster and registers the event schemas under
    /// `subject_for(kind)` (one registry for all DCs, as in production).
    pub async fn new(
        codec: &Codec,
        clusters: &[DcCluster],
        subject_for: impl Fn(EventKind) -> String,
    ) -> Result<Bidders, PublishError> {
        let mut by_dc = BTreeMap::new();
        for cluster in clusters {
            let publisher = SimPublisher::new(codec, &cluster.bootstrap, &subject_for).await?;
            by_dc.insert(cluster.dc.clone(), publisher);
        }
        Ok(Bidders { by_dc })
    }

    /// Queues a publication to `topic` in its DC's cluster. Blocking.
    pub fn publish(&self, publication: &Publication, topic: &str) -> Result<(), BiddersError> {
        let publisher = self
            .by_dc
            .get(&publication.dc)
            .ok_or_else(|| BiddersError::UnknownDc(publication.dc.clone()))?;
        Ok(publisher.publish(publication, topic)?)
    }

    /// Waits until every DC acknowledged everything queued.
    pub fn flush(&self, timeout: Duration) -> Result<(), BiddersError> {
        for publisher in self.by_dc.values() {
            publisher.flush(timeout)?;
        }
        Ok(())
    }
}
