//! The one retry backoff of every stage: capped exponential with full jitter (AWS's "full
//! jitter"), so workers that failed together do not retry together. Attempt 0 waits up to
//! `base`, each further attempt doubles the ceiling, never above `cap`; every wait is at least
//! 10 ms.

use std::time::Duration;

/// The wait before retry number `attempt` (from 0) when the random draw is `unit_random` in
/// [0, 1]. Pure: [`Backoff`] draws the number.
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration, unit_random: f64) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    ceiling
        .mul_f64(unit_random.clamp(0.0, 1.0))
        .max(Duration::from_millis(10))
}

/// A retry loop's backoff: [`Backoff::next_delay`] for each failure, [`Backoff::reset`] after a
/// success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let delay = backoff_delay(self.attempt, self.base, self.cap, rand::random::<f64>());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Back to the first wait (the call succeeded).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let base = Duration::from_millis(500);
        let cap = Duration::from_secs(30);
        assert_eq!(backoff_delay(0, base, cap, 1.0), base);
        assert_eq!(backoff_delay(3, base, cap, 1.0), Duration::from_secs(4));
        assert_eq!(backoff_delay(20, base, cap, 1.0), cap);
        assert_eq!(backoff_delay(5, base, cap, 0.5), Duration::from_secs(8));
        assert_eq!(backoff_delay(5, base, cap, 0.0), Duration::from_millis(10));
        let mut backoff = Backoff::new(base, cap);
        for attempt in 0..40 {
            let ceiling = backoff_delay(attempt, base, cap, 1.0);
            assert!(backoff.next_delay() <= ceiling, "attempt {attempt}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= base);
    }
}
