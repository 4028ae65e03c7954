//! The data path's decision trace in user space (`lbctl debug`): the
//! balancer writes one aya-log record per traced packet (see
//! `lb_common::debug`); lbd reads them, names the VIP, backend and outcome
//! each refers to, writes the line to its log and keeps the last
//! [`KEPT_EVENTS`] for `lbctl debug` to follow.
//!
//! Reading is split from naming: the aya-log reader (a `log::Log`) only
//! parses records into [`Pending`]; the daemon, which knows the ids, turns
//! them into lines ([`TraceLog`]).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lb_common::debug::DebugEvent;

use crate::model::VipId;

/// Lines `lbctl debug` can still fetch.
pub const KEPT_EVENTS: usize = 2000;

/// Records read from the data path, not yet named.
#[derive(Clone, Default)]
pub struct Pending(Arc<Mutex<Vec<DebugEvent>>>);

impl Pending {
    /// Everything read so far, oldest first.
    pub fn take(&self) -> Vec<DebugEvent> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl log::Log for Pending {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let text = record.args().to_string();
        match DebugEvent::parse(&text) {
            Some(e) => {
                let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
                // Bounded even if nobody names them (a stuck daemon lock).
                if v.len() < KEPT_EVENTS {
                    v.push(e);
                }
            }
            None => tracing::warn!(record = %text, "unexpected record from the data path"),
        }
    }

    fn flush(&self) {}
}

/// The trace window the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Only this VIP, or every VIP.
    pub vip: Option<VipId>,
    pub until: Instant,
}

/// The named lines, numbered so a follower asks only for new ones.
#[derive(Default)]
pub struct TraceLog {
    lines: VecDeque<(u64, String)>,
    next: u64,
    pub window: Option<Window>,
}

impl TraceLog {
    pub fn push(&mut self, line: String) {
        if self.lines.len() == KEPT_EVENTS {
            self.lines.pop_front();
        }
        self.lines.push_back((self.next, line));
        self.next += 1;
    }

    /// Lines numbered `after` and later, and the number to ask for next.
    pub fn since(&self, after: u64) -> (Vec<(u64, String)>, u64) {
        let lines = self
            .lines
            .iter()
            .filter(|(n, _)| *n >= after)
            .cloned()
            .collect();
        (lines, self.next)
    }

    /// The window, if still open at `now`.
    pub fn open(&self, now: Instant) -> Option<Window> {
        self.window.filter(|w| now <= w.until)
    }

    /// Time left in the window.
    pub fn left(&self, now: Instant) -> Duration {
        self.open(now)
            .map_or(Duration::ZERO, |w| w.until.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;

    #[test]
    fn records_become_pending_events_and_lines_are_numbered() {
        let p = Pending::default();
        p.log(
            &log::Record::builder()
                .args(format_args!(
                    "lbtrace 4 1 0 0 0 2 0 0 0 5555 80 6 3 2 7 12 2"
                ))
                .build(),
        );
        p.log(&log::Record::builder().args(format_args!("garbage")).build());
        let got = p.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].backend_id, 12);
        assert!(p.take().is_empty());

        let mut t = TraceLog::default();
        for i in 0..KEPT_EVENTS + 5 {
            t.push(format!("line {i}"));
        }
        let (all, next) = t.since(0);
        assert_eq!(all.len(), KEPT_EVENTS, "bounded");
        assert_eq!(next, (KEPT_EVENTS + 5) as u64);
        let (new, _) = t.since(next - 2);
        assert_eq!(new.len(), 2);
        assert!(t.since(next).0.is_empty());
    }
}
