//! Fail static: what of a discovery source's answers is applied.
//!
//! - A failed lookup keeps the last applied set and marks the source stale.
//! - An empty answer replacing a non-empty set is applied only once it has
//!   persisted for `hold_empty`.
//! - An answer that would remove more than `max_remove_percent` of the set
//!   has its removals held until the same answer has persisted for
//!   `hold_removal`; its additions and weight changes apply at once.
//!
//! "Persisted" means every answer since the first one was the same set: a
//! different answer, or a failed lookup, starts the wait again. The guard is
//! pure (the caller passes the time), so every rule is unit-tested.

use std::time::{Duration, Instant};

use crate::model::defaults::{
    DEFAULT_HOLD_EMPTY, DEFAULT_HOLD_REMOVAL, DEFAULT_MAX_REMOVE_PERCENT,
};
pub use crate::model::discovery::{Found, Set};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardPolicy {
    pub hold_empty: Duration,
    pub max_remove_percent: u32,
    pub hold_removal: Duration,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        GuardPolicy {
            hold_empty: DEFAULT_HOLD_EMPTY,
            max_remove_percent: DEFAULT_MAX_REMOVE_PERCENT,
            hold_removal: DEFAULT_HOLD_REMOVAL,
        }
    }
}

/// Why (part of) an answer was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    /// Lookups fail since then (the error is the latest one).
    Stale { since: Instant, error: String },
    /// The answer is empty since then.
    Empty { since: Instant },
    /// The answer would remove `removed` of `of` backends, since then.
    LargeRemoval {
        since: Instant,
        removed: usize,
        of: usize,
    },
}

/// What to do with an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The set to apply now, if it differs from the one applied.
    pub apply: Option<Set>,
    /// What is held back, if anything.
    pub held: Option<Held>,
}

/// One source's fail-static state.
#[derive(Debug, Default)]
pub struct Guard {
    policy: GuardPolicy,
    applied: Option<Set>,
    stale_since: Option<Instant>,
    /// A guarded answer, when it was first seen and how long it must
    /// persist. Its rule holds while the same answer comes back, even once
    /// its additions, applied, make the removal look smaller.
    pending: Option<(Set, Instant, Duration)>,
}

impl Guard {
    pub fn new(policy: GuardPolicy) -> Guard {
        Guard {
            policy,
            ..Default::default()
        }
    }

    /// A guard that starts from `set` as applied (what a restarted lbd
    /// persisted): the first answer is then held to the same rules as any.
    pub fn seeded(policy: GuardPolicy, set: Set) -> Guard {
        Guard {
            policy,
            applied: Some(set),
            ..Default::default()
        }
    }

    /// The set last applied (`None`: no answer yet).
    pub fn applied(&self) -> Option<&Set> {
        self.applied.as_ref()
    }

    /// Whether the latest lookup failed.
    pub fn stale(&self) -> bool {
        self.stale_since.is_some()
    }

    /// Takes one answer of the source at `now`.
    pub fn observe(&mut self, now: Instant, answer: Result<Set, String>) -> Verdict {
        let set = match answer {
            Err(error) => {
                let since = *self.stale_since.get_or_insert(now);
                self.pending = None;
                return Verdict {
                    apply: None,
                    held: Some(Held::Stale { since, error }),
                };
            }
            Ok(set) => set,
        };
        self.stale_since = None;
        let Some(applied) = &self.applied else {
            // The first answer: nothing to protect yet.
            self.pending = None;
            return self.apply(set, None);
        };
        let removed = applied.keys().filter(|a| !set.contains_key(a)).count();
        let guard = if let Some((_, _, hold)) = self.pending.as_ref().filter(|p| p.0 == set) {
            Some(*hold)
        } else if set.is_empty() && !applied.is_empty() {
            Some(self.policy.hold_empty)
        } else if removed * 100 > self.policy.max_remove_percent as usize * applied.len() {
            Some(self.policy.hold_removal)
        } else {
            None
        };
        let Some(hold) = guard else {
            self.pending = None;
            return self.apply(set, None);
        };
        let since = match &self.pending {
            Some((p, since, _)) if *p == set => *since,
            _ => {
                self.pending = Some((set.clone(), now, hold));
                now
            }
        };
        if now.duration_since(since) >= hold {
            self.pending = None;
            return self.apply(set, None);
        }
        let held = if set.is_empty() {
            Held::Empty { since }
        } else {
            Held::LargeRemoval {
                since,
                removed,
                of: applied.len(),
            }
        };
        // Additions and changed weights now; the removals wait.
        let mut partial = applied.clone();
        partial.extend(set);
        self.apply(partial, Some(held))
    }

    fn apply(&mut self, set: Set, held: Option<Held>) -> Verdict {
        let apply = (self.applied.as_ref() != Some(&set)).then(|| set.clone());
        self.applied = Some(set);
        Verdict { apply, held }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn set(addrs: &[u8]) -> Set {
        addrs
            .iter()
            .map(|i| {
                (
                    IpAddr::from([10, 0, 0, *i]),
                    Found {
                        weight: 100,
                        tier: 0,
                    },
                )
            })
            .collect()
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn small_changes_apply_at_once() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardPolicy::default());
        assert_eq!(
            g.observe(t0, Ok(set(&[1, 2, 3]))).apply,
            Some(set(&[1, 2, 3]))
        );
        let v = g.observe(t0, Ok(set(&[1, 2, 3])));
        assert_eq!(
            v,
            Verdict {
                apply: None,
                held: None
            }
        );
        // One of three removed (33% ≤ 50%), one added.
        let v = g.observe(secs(t0, 1), Ok(set(&[1, 2, 4])));
        assert_eq!(v.apply, Some(set(&[1, 2, 4])));
        assert_eq!(v.held, None);
    }

    #[test]
    fn a_failed_lookup_keeps_the_set_and_marks_it_stale() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardPolicy::default());
        g.observe(t0, Ok(set(&[1, 2])));
        let v = g.observe(secs(t0, 5), Err("timed out".into()));
        assert_eq!(v.apply, None);
        assert_eq!(
            v.held,
            Some(Held::Stale {
                since: secs(t0, 5),
                error: "timed out".into()
            })
        );
        // Still stale since the first failure.
        let v = g.observe(secs(t0, 9), Err("SERVFAIL".into()));
        assert!(matches!(v.held, Some(Held::Stale { since, .. }) if since == secs(t0, 5)));
        assert!(g.stale());
        assert_eq!(g.applied(), Some(&set(&[1, 2])));
        g.observe(secs(t0, 10), Ok(set(&[1, 2])));
        assert!(!g.stale());
    }

    #[test]
    fn an_empty_answer_waits_for_hold_empty() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardPolicy::default());
        g.observe(t0, Ok(set(&[1, 2])));
        let v = g.observe(secs(t0, 1), Ok(set(&[])));
        assert_eq!(v.apply, None);
        assert_eq!(v.held, Some(Held::Empty { since: secs(t0, 1) }));
        assert_eq!(g.observe(secs(t0, 30), Ok(set(&[]))).apply, None);
        // Persisted 30 s: applied.
        assert_eq!(g.observe(secs(t0, 31), Ok(set(&[]))).apply, Some(set(&[])));
        // An interrupted spell starts again.
        let mut g = Guard::new(GuardPolicy::default());
        g.observe(t0, Ok(set(&[1, 2])));
        g.observe(secs(t0, 1), Ok(set(&[])));
        g.observe(secs(t0, 20), Err("timed out".into()));
        g.observe(secs(t0, 25), Ok(set(&[])));
        assert_eq!(g.observe(secs(t0, 40), Ok(set(&[]))).apply, None);
        assert_eq!(g.observe(secs(t0, 55), Ok(set(&[]))).apply, Some(set(&[])));
    }

    #[test]
    fn a_large_removal_waits_but_additions_do_not() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardPolicy::default());
        g.observe(t0, Ok(set(&[1, 2, 3, 4])));
        // Three of four gone (75% > 50%), one new: the new one now, the
        // removals held.
        let v = g.observe(secs(t0, 1), Ok(set(&[1, 9])));
        assert_eq!(v.apply, Some(set(&[1, 2, 3, 4, 9])));
        assert_eq!(
            v.held,
            Some(Held::LargeRemoval {
                since: secs(t0, 1),
                removed: 3,
                of: 4
            })
        );
        // The same answer, persisting: applied after hold_removal.
        assert_eq!(g.observe(secs(t0, 20), Ok(set(&[1, 9]))).apply, None);
        assert_eq!(
            g.observe(secs(t0, 31), Ok(set(&[1, 9]))).apply,
            Some(set(&[1, 9]))
        );
    }

    #[test]
    fn a_held_removal_stays_held_once_its_additions_are_in() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardPolicy::default());
        g.observe(t0, Ok(set(&[1, 2, 3, 4])));
        // Three of four replaced: after the additions, three of seven would
        // go, under half, but it is the same answer and still waits.
        g.observe(secs(t0, 1), Ok(set(&[1, 7, 8, 9])));
        let v = g.observe(secs(t0, 2), Ok(set(&[1, 7, 8, 9])));
        assert_eq!(v.apply, None);
        assert!(matches!(v.held, Some(Held::LargeRemoval { .. })));
        assert_eq!(
            g.observe(secs(t0, 31), Ok(set(&[1, 7, 8, 9]))).apply,
            Some(set(&[1, 7, 8, 9]))
        );
    }

    #[test]
    fn weights_change_at_once_even_while_removals_wait() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardPolicy::default());
        g.observe(t0, Ok(set(&[1, 2, 3])));
        let mut next = set(&[1]);
        next.get_mut(&IpAddr::from([10, 0, 0, 1])).unwrap().weight = 7;
        let v = g.observe(secs(t0, 1), Ok(next));
        let applied = v.apply.unwrap();
        assert_eq!(applied.len(), 3);
        assert_eq!(applied[&IpAddr::from([10, 0, 0, 1])].weight, 7);
    }
}
