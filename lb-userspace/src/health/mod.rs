//! Active health checks, probing apart from acting: one task per (VIP,
//! backend) probes ([`probe`](mod@probe), `task`); the [`Checker`] turns results
//! into transitions ([`tracker`]) and applies them through the daemon.
//! Each probes the backend's own address from this host on a jittered
//! schedule; transitions follow rise/fall hysteresis.
//!
//! A check never waits on another: each task has its own timer and timeout,
//! so one slow backend cannot delay the rest.
//!
//! Checks target the backend address, not the VIP: a backend must accept
//! the probe there. With `ipip`, the backend's stack sees ordinary traffic to
//! its address. With `l2dsr`, the VIP sits on the backend's loopback and the
//! service usually listens on the VIP only: make it listen on the wildcard
//! address (or on the backend address too) so the probe is answered.

pub mod probe;
mod task;
pub mod tracker;

pub use probe::probe;
pub use task::Observation;
pub use tracker::Tracker;

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use tokio::{
    sync::{mpsc, Notify},
    task::JoinHandle,
};

use crate::{
    daemon::Shared as SharedDaemon,
    metrics::Metrics,
    model::{HealthSpec, VipId},
};
use task::spawn_task;

struct Checked {
    spec: HealthSpec,
    task: JoinHandle<()>,
    tracker: Tracker,
}

/// Runs the checks the desired state asks for and applies their verdicts.
pub struct Checker {
    daemon: SharedDaemon,
    metrics: Arc<Metrics>,
    checked: HashMap<(VipId, IpAddr), Checked>,
    tx: mpsc::Sender<Observation>,
    rx: mpsc::Receiver<Observation>,
}

impl Checker {
    pub fn new(daemon: SharedDaemon, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        Checker {
            daemon,
            metrics,
            checked: HashMap::new(),
            tx,
            rx,
        }
    }

    /// Runs until dropped: reconciles the set of checks whenever `changed`
    /// is notified, and handles every probe result.
    pub async fn run(mut self, changed: Arc<Notify>) {
        self.reconcile();
        loop {
            tokio::select! {
                _ = changed.notified() => self.reconcile(),
                Some(obs) = self.rx.recv() => self.handle(obs),
            }
        }
    }

    /// Starts checks for backends that need one, stops those no longer
    /// wanted, restarts those whose settings changed.
    fn reconcile(&mut self) {
        let d = self.daemon.lock().unwrap_or_else(|p| p.into_inner());
        let mut wanted: HashMap<(VipId, IpAddr), HealthSpec> = HashMap::new();
        for (id, v) in &d.desired().vips {
            // Each backend by its own check if it has one, else the VIP's;
            // kind `none` is not probed.
            for b in &v.backends {
                if let Some(spec) = v.active_check(b) {
                    wanted.insert((*id, b.addr), spec.clone());
                }
            }
        }
        self.checked.retain(|key, c| {
            let keep = wanted.get(key) == Some(&c.spec);
            if !keep {
                c.task.abort();
            }
            keep
        });
        for (key, spec) in wanted {
            if self.checked.contains_key(&key) {
                continue;
            }
            // Start from what this node saw last, else what the maps say: a
            // new backend was added down, one adopted from a previous lbd
            // keeps its state.
            let up = !d.locally_down(&key.0, &key.1);
            self.metrics.start_checking(&key.0, &key.1);
            let task = spawn_task(key.0, key.1, spec.clone(), self.tx.clone());
            self.checked.insert(
                key,
                Checked {
                    spec,
                    task,
                    tracker: Tracker::new(up),
                },
            );
        }
        drop(d);
        self.metrics.set_checked(self.checked.len());
    }

    fn handle(&mut self, obs: Observation) {
        let key = (obs.vip, obs.addr);
        let Some(c) = self.checked.get_mut(&key) else {
            return; // a result from a task stopped meanwhile
        };
        let ok = obs.result.is_ok();
        self.metrics
            .observe_check(&obs.vip, &obs.addr, ok, obs.duration);
        let Some(up) = c.tracker.observe(ok, c.spec.rise, c.spec.fall) else {
            return;
        };
        let mut d = self.daemon.lock().unwrap_or_else(|p| p.into_inner());
        let applied = d.set_backend_health(&obs.vip, obs.addr, up);
        let fail_open = d.balancer().fail_open(&obs.vip);
        drop(d);
        let elapsed = obs.at.elapsed();
        match applied {
            Ok(()) if up => {
                tracing::info!(vip = %obs.vip, backend = %obs.addr, "backend is UP: back in the table")
            }
            Ok(()) => {
                self.metrics.observe_failover(elapsed);
                tracing::warn!(
                    vip = %obs.vip,
                    backend = %obs.addr,
                    reason = obs.result.as_ref().err().map(String::as_str).unwrap_or(""),
                    apply_ms = elapsed.as_secs_f64() * 1e3,
                    "backend is DOWN: out of the table, its flows move"
                );
            }
            Err(e) => {
                tracing::error!(vip = %obs.vip, backend = %obs.addr, "applying health state failed: {e}");
                // The maps did not change: neither did the state. The next
                // result retries the transition.
                if let Some(c) = self.checked.get_mut(&key) {
                    c.tracker = Tracker::new(!up);
                }
                return;
            }
        }
        self.metrics.transition(&obs.vip, &obs.addr, up);
        if fail_open {
            tracing::error!(vip = %obs.vip, "ALL BACKENDS DOWN: failing open, sending to all of them");
        }
    }
}
