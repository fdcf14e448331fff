//! Debouncing of a digital input (a button, a reed contact, a PIR output): a level counts
//! only once it has held for the debounce time, so a contact that bounces for a few
//! milliseconds makes one state change, not ten. Pure: the caller passes the time of each
//! edge and wakes the debouncer at the deadline it returns; there is no clock or timer here.

use std::time::{Duration, Instant};

/// The longest debounce window: no contact bounces for longer, and it keeps deadlines far
/// from overflowing.
pub const MAX_WINDOW: Duration = Duration::from_secs(60);

/// One input's debouncer.
#[derive(Debug, Clone)]
pub struct Debouncer {
    /// How long a level must hold.
    window: Duration,
    /// The level last reported (the input's state as the node tells it).
    stable: bool,
    /// The level seen last and since when, while it differs from `stable`.
    pending: Option<(bool, Instant)>,
}

impl Debouncer {
    /// A debouncer for an input that reads `initial` now. A zero `window` reports every
    /// change at once; a window is at most [`MAX_WINDOW`].
    pub fn new(initial: bool, window: Duration) -> Debouncer {
        Debouncer {
            window: window.min(MAX_WINDOW),
            stable: initial,
            pending: None,
        }
    }

    /// The level last reported.
    pub fn state(&self) -> bool {
        self.stable
    }

    /// The input read `level` at `at`. Returns the new state if it changes at once (no
    /// window), else when to call [`Debouncer::settle`] next, if anything is pending.
    pub fn edge(&mut self, level: bool, at: Instant) -> Step {
        if level == self.stable {
            // Back where it was before the level settled: a bounce, nothing to report.
            self.pending = None;
            return Step::Idle;
        }
        if self.window.is_zero() {
            self.stable = level;
            return Step::Changed(level);
        }
        match self.pending {
            Some((pending, _)) if pending == level => {}
            _ => self.pending = Some((level, at)),
        }
        match self.pending {
            Some((_, since)) => Step::WakeAt(since + self.window),
            None => Step::Idle,
        }
    }

    /// Called at (or after) the deadline [`Debouncer::edge`] gave: the new state if the
    /// pending level has held for the whole window.
    pub fn settle(&mut self, now: Instant) -> Step {
        match self.pending {
            Some((level, since)) if now.saturating_duration_since(since) >= self.window => {
                self.pending = None;
                self.stable = level;
                Step::Changed(level)
            }
            Some((_, since)) => Step::WakeAt(since + self.window),
            None => Step::Idle,
        }
    }
}

/// What the caller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing is pending.
    Idle,
    /// The state changed to this: publish it.
    Changed(bool),
    /// Call `settle` at this time.
    WakeAt(Instant),
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_bouncing_press_is_one_change() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(false, 20 * MS);
        // Contact bounce: high, low, high, low, high within 4 ms, then it holds.
        let mut wake = None;
        for (i, level) in [true, false, true, false, true].into_iter().enumerate() {
            match d.edge(level, t0 + MS * i as u32) {
                Step::WakeAt(at) => wake = Some(at),
                Step::Idle => {}
                Step::Changed(_) => panic!("a bounce was reported"),
            }
        }
        let wake = wake.expect("a settle is pending");
        assert_eq!(wake, t0 + 4 * MS + 20 * MS);
        // Woken early (another input's timer): still pending.
        assert_eq!(d.settle(t0 + 10 * MS), Step::WakeAt(wake));
        assert_eq!(d.settle(wake), Step::Changed(true));
        assert!(d.state());
        assert_eq!(d.settle(wake + MS), Step::Idle);
    }

    #[test]
    fn a_glitch_shorter_than_the_window_is_ignored() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(false, 20 * MS);
        assert!(matches!(d.edge(true, t0), Step::WakeAt(_)));
        assert_eq!(d.edge(false, t0 + 5 * MS), Step::Idle);
        assert_eq!(d.settle(t0 + 30 * MS), Step::Idle);
        assert!(!d.state());
    }

    #[test]
    fn without_a_window_every_change_counts() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(true, Duration::ZERO);
        assert_eq!(d.edge(false, t0), Step::Changed(false));
        assert_eq!(d.edge(false, t0), Step::Idle);
        assert_eq!(d.edge(true, t0), Step::Changed(true));
    }
}
