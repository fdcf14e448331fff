//! The set of topics that hold a retained message, as seen where publishes enter the broker.
//!
//! rumqttd keeps the retained messages themselves (in memory) and does not report how many it
//! holds, so the edge and the in-process client feed every publish through this index to keep
//! `roost_mqtt_retained_messages` true. It mirrors rumqttd's rules, including its deletion of a
//! retained message by an empty payload even without the retain flag (../docs/broker.md).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;

/// A shared index of retained topics; cloning shares it.
#[derive(Clone)]
pub struct RetainedIndex {
    topics: Arc<Mutex<HashSet<Box<str>>>>,
    gauge: IntGauge,
}

impl RetainedIndex {
    /// An empty index that reports its size on `gauge`.
    pub fn new(gauge: IntGauge) -> Self {
        RetainedIndex {
            topics: Arc::default(),
            gauge,
        }
    }

    /// Records a publish on `topic`; `retain` and `empty` are its flag and payload state.
    pub fn observe(&self, topic: &str, retain: bool, empty: bool) {
        if topic.is_empty() || (!retain && !empty) {
            return;
        }
        // A poisoned lock only means another thread panicked mid-insert; the set is still a
        // valid set, so keep using it.
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if empty {
            topics.remove(topic);
        } else if !topics.contains(topic) {
            topics.insert(topic.into());
        }
        self.gauge
            .set(i64::try_from(topics.len()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_sets_and_deletes() {
        let index = RetainedIndex::new(IntGauge::new("t", "t").unwrap());
        index.observe("a", true, false);
        index.observe("a", true, false);
        index.observe("b", true, false);
        index.observe("c", false, false);
        assert_eq!(index.gauge.get(), 2);
        index.observe("a", true, true);
        assert_eq!(index.gauge.get(), 1);
        // rumqttd deletes on an empty payload even without the retain flag.
        index.observe("b", false, true);
        assert_eq!(index.gauge.get(), 0);
    }
}
