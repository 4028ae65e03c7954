//! When a run of results changes a backend's state: `rise` successes in a
//! row bring it up, `fall` failures take it down.

/// Consecutive-result hysteresis: `rise` successes bring a backend up,
/// `fall` failures take it down; anything less changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracker {
    pub up: bool,
    successes: u32,
    failures: u32,
}

impl Tracker {
    pub fn new(up: bool) -> Self {
        Tracker {
            up,
            successes: 0,
            failures: 0,
        }
    }

    /// Feeds one result; returns the new state on a transition.
    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if !self.up && self.successes >= rise {
                self.up = true;
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.up && self.failures >= fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let mut t = Tracker::new(true);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(
            t.observe(true, 2, 3),
            None,
            "a success resets the failure count"
        );
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), Some(false));
        assert_eq!(t.observe(false, 2, 3), None, "already down");
        assert_eq!(t.observe(true, 2, 3), None);
        assert_eq!(t.observe(true, 2, 3), Some(true));
    }

    #[test]
    fn alternating_results_never_flap() {
        let mut t = Tracker::new(true);
        for i in 0..100 {
            assert_eq!(t.observe(i % 2 == 0, 2, 3), None);
        }
        let mut t = Tracker::new(false);
        for i in 0..100 {
            assert_eq!(t.observe(i % 2 == 0, 2, 3), None);
        }
    }
}
