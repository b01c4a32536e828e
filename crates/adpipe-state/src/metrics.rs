//! The state metrics a store's owner reports (labels: service, store,
//! partition). The runtime's own `adpipe_state_entries` / `adpipe_state_bytes`
//! come from `Step::state_entries` / `Step::state_bytes`; these add what
//! only the store knows.
//!
//! - `adpipe_state_disk_bytes`: tables plus journal on disk;
//! - `adpipe_state_cap_bytes`: the size cap (an alert compares the two);
//! - `adpipe_state_buckets`: live time buckets;
//! - `adpipe_state_expired_buckets_total`: buckets dropped by TTL;
//! - `adpipe_state_evicted_buckets_total`: buckets dropped early by the cap
//!   (state lost before its TTL: the alert `StateOverCap` fires on it).

use metrics::{Counter, Gauge};

use crate::{Expired, StoreStats};

/// The metric handles of one store.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    disk_bytes: Gauge,
    buckets: Gauge,
    expired: Counter,
    evicted: Counter,
}

impl StoreMetrics {
    /// Handles for `store` of partition `partition` of `service`, with its
    /// size cap.
    pub fn new(service: &str, store: &str, partition: i32, cap_bytes: u64) -> Self {
        let labels = [
            ("service", service.to_owned()),
            ("store", store.to_owned()),
            ("partition", partition.to_string()),
        ];
        metrics::gauge!("adpipe_state_cap_bytes", &labels).set(cap_bytes as f64);
        StoreMetrics {
            disk_bytes: metrics::gauge!("adpipe_state_disk_bytes", &labels),
            buckets: metrics::gauge!("adpipe_state_buckets", &labels),
            expired: metrics::counter!("adpipe_state_expired_buckets_total", &labels),
            evicted: metrics::counter!("adpipe_state_evicted_buckets_total", &labels),
        }
    }

    /// Records an expiry and the sizes after it.
    pub fn record(&self, expired: Expired, stats: StoreStats) {
        self.expired.increment(expired.buckets as u64);
        self.evicted.increment(expired.evicted as u64);
        self.disk_bytes.set(stats.disk_bytes as f64);
        self.buckets.set(stats.buckets as f64);
    }
}

impl Drop for StoreMetrics {
    /// The store closed (its partition went): its sizes read 0 here.
    fn drop(&mut self) {
        self.disk_bytes.set(0.0);
        self.buckets.set(0.0);
    }
}
