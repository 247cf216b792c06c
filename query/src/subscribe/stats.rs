//! Counters of subscriptions, and their `/metrics` families.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Counters of the subscription hub (part of the engine's `QueryStats`).
#[derive(Debug, Default)]
pub struct SubscriptionStats {
    /// Subscriptions open now.
    pub subscribers: AtomicU64,
    /// Subscribers dropped because they fell behind.
    pub dropped: AtomicU64,
    /// Changes given positions, per table.
    pub changes: Mutex<BTreeMap<String, u64>>,
}

impl SubscriptionStats {
    pub(crate) fn add_changes(&self, table: &str, n: usize) {
        if let Ok(mut c) = self.changes.lock() {
            *c.entry(table.to_string()).or_default() += n as u64;
        }
    }

    /// Encodes `weir_subscribers`, `weir_subscribers_dropped_total` and
    /// `weir_subscription_changes_total`.
    pub fn encode(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let none: [(&str, &str); 0] = [];
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        e.encode_descriptor(
            "weir_subscribers",
            "Subscriptions (WebSocket and SSE) open now.",
            None,
            MetricType::Gauge,
        )?
        .encode_family(&none)?
        .encode_gauge(&(get(&self.subscribers) as i64))?;
        e.encode_descriptor(
            "weir_subscribers_dropped",
            "Subscribers dropped because they fell behind (did not read their changes).",
            None,
            MetricType::Counter,
        )?
        .encode_family(&none)?
        .encode_counter::<NoLabelSet, u64, u64>(&get(&self.dropped), None)?;
        let changes: Vec<(String, u64)> = self
            .changes
            .lock()
            .map(|c| c.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        let mut m = e.encode_descriptor(
            "weir_subscription_changes",
            "Changes given to subscribers (each once, whatever the number of subscribers), per table.",
            None,
            MetricType::Counter,
        )?;
        for (table, n) in &changes {
            m.encode_family(&[("table", table.as_str())])?
                .encode_counter::<NoLabelSet, u64, u64>(n, None)?;
        }
        Ok(())
    }
}
