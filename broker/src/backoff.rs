//! Capped exponential reconnect backoff with jitter, for every link a node dials: its peers
//! (the mesh) and the cluster's witness broker.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Waits that start at `min`, double up to `max`, and are each jittered to between half and
/// all of their nominal length, so that nodes that lost a link together do not retry
/// together.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff whose first wait is `min` and whose waits never exceed `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The next wait (jittered); the one after it is twice as long, up to the cap.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next.mul_f64(0.5 + 0.5 * unit_random());
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// The link is up: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A random number that is never 0 (not for secrets): the process id and the clock,
/// through the standard library's randomly keyed hasher.
pub(crate) fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

/// A number in [0, 1).
fn unit_random() -> f64 {
    (random_u64() % 10_000) as f64 / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_with_jitter_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        for nominal in [100, 200, 350, 350] {
            let wait = b.next_wait();
            let nominal = Duration::from_millis(nominal);
            assert!(
                wait >= nominal / 2 && wait <= nominal,
                "{wait:?} for {nominal:?}"
            );
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));
    }
}
