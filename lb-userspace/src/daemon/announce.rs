//! The daemon's side of announcing: what it decides from the state it
//! holds, the node's drain flag, and what the announcer last found in the
//! table. The announcer (lbd's task) does the netlink work and reports back
//! through [`Daemon::record_announce`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use tokio::sync::{watch, Notify};

use super::{ApplyError, Daemon, DataPath};
use crate::{
    announce::{self, node, node::NodeState, AnnounceView, Reason, VipView},
    api::types::{AddressStatus, NodeStatus},
    model::{announce::ROUTE_PROTOCOL, AnnounceWhen},
};

/// What the daemon keeps for announcing.
pub(super) struct Announcing {
    pub(super) node: NodeState,
    pub(super) view: AnnounceView,
    /// Wakes the announcer: something that changes the decision happened.
    pub(super) wake: Arc<Notify>,
    /// Bumped by every drain and undrain; the announcer reports the epoch
    /// its decision saw, so a drain request can wait for its own effect.
    pub(super) epoch: u64,
    pub(super) settled: watch::Sender<u64>,
}

impl Default for Announcing {
    fn default() -> Self {
        Announcing {
            node: NodeState::default(),
            view: AnnounceView::default(),
            wake: Arc::new(Notify::new()),
            epoch: 0,
            settled: watch::channel(0).0,
        }
    }
}

impl<D: DataPath> Daemon<D> {
    /// The node's state as saved (at start, before anything is announced).
    pub fn set_node_state(&mut self, node: NodeState) {
        self.announcing.node = node;
    }

    pub fn node_state(&self) -> NodeState {
        self.announcing.node
    }

    /// What the announcer waits on.
    pub fn announce_wake(&self) -> Arc<Notify> {
        self.announcing.wake.clone()
    }

    pub(super) fn announce_changed(&self) {
        self.announcing.wake.notify_one();
    }

    /// Which addresses should be announced now, and the drain epoch this
    /// decision reflects.
    pub fn announce_decisions(&self) -> (BTreeMap<IpAddr, Reason>, u64) {
        let when = self.config.announce.map_or(AnnounceWhen::Never, |a| a.when);
        let vips: Vec<VipView> = self
            .status_health()
            .into_iter()
            .map(|(id, backends, fail_open)| VipView {
                addr: id.addr,
                has_healthy: backends.iter().any(|(_, up, w)| *up && *w > 0),
                fail_open,
            })
            .collect();
        (
            announce::decide(
                when,
                self.program_id != 0,
                self.store_unread(),
                self.announcing.node.drained,
                &vips,
            ),
            self.announcing.epoch,
        )
    }

    /// The announcer's report: the decision it acted on, what lbd's routes
    /// in the table are now (`None`: the table could not be read; what was
    /// known before stands), how many it changed, its failure if any.
    pub fn record_announce(
        &mut self,
        decisions: BTreeMap<IpAddr, Reason>,
        epoch: u64,
        present: Option<&BTreeSet<IpAddr>>,
        changes: u64,
        error: Option<String>,
    ) {
        let view = &mut self.announcing.view;
        let was = std::mem::take(&mut view.addrs);
        let in_table = |a: &IpAddr| match present {
            Some(p) => p.contains(a),
            None => was.get(a).is_some_and(|(_, p)| *p),
        };
        view.addrs = decisions
            .into_iter()
            .map(|(a, d)| {
                let p = in_table(&a);
                (a, (d, p))
            })
            .collect();
        // A route of lbd's that no VIP uses any more (a removal failed).
        let leftovers: Vec<IpAddr> = match present {
            Some(p) => p.iter().copied().collect(),
            None => was
                .iter()
                .filter(|(_, (_, p))| *p)
                .map(|(a, _)| *a)
                .collect(),
        };
        for a in leftovers {
            view.addrs.entry(a).or_insert((Reason::NoVip, true));
        }
        view.changes += changes;
        view.error = error;
        self.announcing.settled.send_replace(epoch);
    }

    /// Reports the drain epochs the announcer has acted on.
    pub fn announce_settled(&self) -> watch::Receiver<u64> {
        self.announcing.settled.subscribe()
    }

    pub fn announce_view(&self) -> &AnnounceView {
        &self.announcing.view
    }

    /// Drains (or undrains) the node: saved first, so a restart keeps it.
    /// Returns the epoch to wait for.
    pub fn set_drained(&mut self, drained: bool) -> Result<(String, u64), ApplyError> {
        if self.announcing.node.drained == drained {
            let what = if drained {
                "already drained"
            } else {
                "not drained"
            };
            return Ok((what.to_string(), self.announcing.epoch));
        }
        let next = node::now(drained);
        node::save(&self.config.state_dir, &next)
            .map_err(|e| ApplyError::Kernel(format!("saving the node state: {e:#}")))?;
        self.announcing.node = next;
        self.announcing.epoch += 1;
        self.announce_changed();
        let what = if drained { "drained" } else { "undrained" };
        Ok((what.to_string(), self.announcing.epoch))
    }

    /// `lbctl node status`.
    pub fn node_status(&self) -> NodeStatus {
        let node = self.announcing.node;
        let announce = self.config.announce;
        let managed = announce.and_then(|a| a.table).is_some();
        let (mut decisions, _) = self.announce_decisions();
        let view = &self.announcing.view;
        // Routes still in the table for addresses no VIP uses now.
        for (a, (d, present)) in &view.addrs {
            if *present {
                decisions.entry(*a).or_insert(*d);
            }
        }
        let addresses = decisions
            .iter()
            .map(|(addr, d)| {
                let announced = managed && view.addrs.get(addr).is_some_and(|(_, p)| *p);
                AddressStatus {
                    address: *addr,
                    announced,
                    wanted: managed && d.announces(),
                    reason: *d,
                    why: if managed {
                        d.describe().to_string()
                    } else {
                        "no [announce] table: lbd writes no routes".to_string()
                    },
                }
            })
            .collect();
        NodeStatus {
            drained: node.drained,
            since: node
                .since()
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            table: announce.and_then(|a| a.table),
            when: announce.map(|a| a.when),
            protocol: ROUTE_PROTOCOL,
            addresses,
            changes: view.changes,
            error: view.error.clone(),
        }
    }
}
