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
    stopped: Option<String>,
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
        state.last_error = Some((now_ms(), text.clone()));
        state.stopped = Some(text);
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
        self.state().stopped.clone()
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
