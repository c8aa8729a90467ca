//! What a stage tells the operations surface about itself: which of its dependencies are failing
//! now (readiness) and the last error it met (a connector's status `trace`). Shared between the
//! stage's tasks and the REST handlers; cheap to update.

use std::collections::BTreeMap;
use std::sync::Mutex;

use wx_codec::now_ms;

/// The health of one stage.
#[derive(Debug, Default)]
pub struct StageHealth {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failing: BTreeMap<&'static str, String>,
    last_error: Option<(i64, String)>,
    /// Why the task ended with an error, and when (UTC ms).
    stopped: Option<(i64, String)>,
}

impl StageHealth {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `component` (e.g. `mysql`, `search`, `wecom`) is failing with `error` (no secrets, no
    /// message content).
    pub fn failing(&self, component: &'static str, error: impl std::fmt::Display) {
        let text = format!("{component}: {error}");
        let mut state = self.state();
        state.failing.insert(component, text.clone());
        state.last_error = Some((now_ms(), text));
    }

    /// `component` works again.
    pub fn recovered(&self, component: &'static str) {
        self.state().failing.remove(component);
    }

    /// The stage's task ended (with an error, or cleanly on shutdown).
    pub fn stopped(&self, reason: impl std::fmt::Display) {
        let mut state = self.state();
        let text = reason.to_string();
        let at = now_ms();
        state.last_error = Some((at, text.clone()));
        state.stopped = Some((at, text));
    }

    /// The components failing now, with their errors.
    pub fn failures(&self) -> BTreeMap<&'static str, String> {
        self.state().failing.clone()
    }

    /// The last error and when (UTC ms).
    pub fn last_error(&self) -> Option<(i64, String)> {
        self.state().last_error.clone()
    }

    /// Why the stage stopped, once it has.
    pub fn stop_reason(&self) -> Option<String> {
        self.state().stopped.as_ref().map(|(_, why)| why.clone())
    }

    /// When (UTC ms) the stage stopped with an error, once it has.
    pub fn stopped_at(&self) -> Option<i64> {
        self.state().stopped.as_ref().map(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_clear_on_recovery_but_the_last_error_stays() {
        let h = StageHealth::default();
        h.failing("mysql", "connection refused");
        h.failing("search", "429");
        assert_eq!(h.failures().len(), 2);
        h.recovered("mysql");
        assert_eq!(h.failures().keys().copied().collect::<Vec<_>>(), ["search"]);
        h.recovered("search");
        assert!(h.failures().is_empty());
        assert_eq!(h.last_error().map(|e| e.1).as_deref(), Some("search: 429"));
        assert!(h.stop_reason().is_none());
        h.stopped("fatal");
        assert_eq!(h.stop_reason().as_deref(), Some("fatal"));
    }
}

/// The readiness component of the stage's topics' partitions whose leader does not answer
/// (`leaders::watch`).
pub const LEADERS: &str = "kafka-leaders";

/// The readiness component of a stage's sends that fail and are retried.
pub const SENDS: &str = "kafka-sends";

/// A stage's producer's [`wx_kafka::SendWatch`]: a send retried shows as [`SENDS`] failing
/// (with the topic and the broker's error) until one goes through. Cheap when nothing failed:
/// one atomic load per acknowledged send.
#[derive(Debug)]
pub struct SendHealth {
    health: std::sync::Arc<StageHealth>,
    failing: std::sync::atomic::AtomicBool,
}

impl SendHealth {
    pub fn new(health: std::sync::Arc<StageHealth>) -> SendHealth {
        SendHealth {
            health,
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl wx_kafka::SendWatch for SendHealth {
    fn failing(&self, topic: &str, error: &wx_kafka::KafkaError) {
        self.failing
            .store(true, std::sync::atomic::Ordering::Release);
        self.health.failing(
            SENDS,
            format!("sends to {topic} fail and are retried: {error}"),
        );
    }

    fn recovered(&self) {
        if self
            .failing
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            self.health.recovered(SENDS);
        }
    }
}
