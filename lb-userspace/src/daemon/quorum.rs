//! Health that all nodes agree on (`health_decision = "quorum"`): this
//! node's checks give its own observations; every node publishes them in
//! its report; a backend leaves the table when a majority of the live nodes
//! (those with a report in the store, this one included) observe it down.
//! All nodes decide from the same reports, so they build the same table
//! even while one node's path to a backend fails. A node that cannot reach
//! the store decides from its own observations and says so.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use tokio::sync::Notify;

use super::{checked, ApplyError, Daemon, DataPath};
use crate::{
    model::{HealthDecision, VipId},
    store::report::NodeReport,
};

/// A backend as votes name it: `VIP BACKEND`.
pub fn vote_key(vip: &VipId, addr: &IpAddr) -> String {
    format!("{vip} {addr}")
}

/// What the daemon keeps for quorum decisions.
#[derive(Default)]
pub(super) struct Votes {
    /// This node's own verdicts by its checks (true: down). A backend it
    /// has no verdict for yet counts as the table has it (new ones start
    /// down).
    pub(super) observed: BTreeMap<(VipId, IpAddr), bool>,
    /// The other live nodes' observations: node → the backends it sees down.
    pub(super) peers: BTreeMap<String, BTreeSet<String>>,
    /// Woken when this node's observations change, so its report goes out
    /// at once rather than at the next probe.
    pub(super) changed: Arc<Notify>,
}

/// Cut off from the store for less than a node report's lease: the
/// others' last votes are as alive as their reports would be.
fn recent(link: &super::store::StoreLink) -> bool {
    link.since
        .elapsed()
        .is_ok_and(|e| e < crate::model::defaults::STORE_NODE_TTL)
}

/// How this node decides health right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deciding {
    Local,
    /// With this many live nodes (this one included).
    Quorum(usize),
    /// Configured for quorum, but cut off from the store.
    LocalFallback,
}

impl<D: DataPath> Daemon<D> {
    pub fn deciding(&self) -> Deciding {
        match (self.config.health_decision, &self.store) {
            (HealthDecision::Quorum, Some(link))
                if link.read && (link.reachable || recent(link)) =>
            {
                Deciding::Quorum(self.votes.peers.len() + 1)
            }
            (HealthDecision::Quorum, Some(_)) => Deciding::LocalFallback,
            _ => Deciding::Local,
        }
    }

    fn quorum_configured(&self) -> bool {
        self.config.health_decision == HealthDecision::Quorum && self.store.is_some()
    }

    /// This node's checks' verdict. Locally decided, it is the table's;
    /// under quorum it is a vote, and the table follows the majority.
    pub(super) fn observe(
        &mut self,
        vip: &VipId,
        addr: IpAddr,
        up: bool,
    ) -> Result<(), ApplyError> {
        if !self.quorum_configured() {
            return self.mark(vip, addr, !up);
        }
        if self.votes.observed.insert((*vip, addr), !up) != Some(!up) {
            self.votes.changed.notify_one();
        }
        self.decide_health()
    }

    /// The other nodes' reports, as just read from the store.
    pub fn set_peer_reports(&mut self, reports: &[NodeReport]) -> Result<(), ApplyError> {
        let me = self.store.as_ref().map(|s| s.settings.node.clone());
        self.votes.peers = reports
            .iter()
            .filter(|r| Some(&r.node) != me.as_ref() && r.refused.is_none())
            .map(|r| (r.node.clone(), r.observed_down.clone()))
            .collect();
        self.decide_health()
    }

    /// The backends this node's own checks see down (what it publishes).
    pub fn observed_down(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (id, v) in &self.desired.vips {
            for b in v.backends.iter().filter(|b| checked(v, b)) {
                if self.locally_down(id, &b.addr) {
                    out.insert(vote_key(id, &b.addr));
                }
            }
        }
        out
    }

    /// Whether this node's own checks see the backend down.
    pub fn locally_down(&self, vip: &VipId, addr: &IpAddr) -> bool {
        self.votes
            .observed
            .get(&(*vip, *addr))
            .copied()
            .unwrap_or_else(|| self.data_path.is_down(vip, addr))
    }

    /// Makes every checked backend's mark in the maps what the decision
    /// says: the majority's under quorum, this node's own otherwise.
    pub(super) fn decide_health(&mut self) -> Result<(), ApplyError> {
        let deciding = self.deciding();
        let mut marks = Vec::new();
        for (id, v) in &self.desired.vips {
            for b in v.backends.iter().filter(|b| checked(v, b)) {
                let mine = self.locally_down(id, &b.addr);
                let down = match deciding {
                    Deciding::Quorum(live) => {
                        let key = vote_key(id, &b.addr);
                        let votes = usize::from(mine)
                            + self
                                .votes
                                .peers
                                .values()
                                .filter(|d| d.contains(&key))
                                .count();
                        votes * 2 > live
                    }
                    Deciding::Local | Deciding::LocalFallback => mine,
                };
                if down != self.data_path.is_down(id, &b.addr) {
                    marks.push((*id, b.addr, down));
                }
            }
        }
        for (id, addr, down) in marks {
            self.mark(&id, addr, down)?;
            tracing::info!(
                vip = %id,
                backend = %addr,
                decided = ?deciding,
                "backend is {} by {}",
                if down { "DOWN" } else { "UP" },
                match deciding {
                    Deciding::Quorum(_) => "the nodes' majority",
                    Deciding::Local => "this node's checks",
                    Deciding::LocalFallback => "this node's checks (the store is unreachable)",
                }
            );
        }
        self.votes.observed.retain(|(id, addr), _| {
            self.desired
                .vips
                .get(id)
                .is_some_and(|v| v.backends.iter().any(|b| b.addr == *addr))
        });
        Ok(())
    }

    /// What the store follower waits on to publish at once.
    pub fn votes_changed(&self) -> Arc<Notify> {
        self.votes.changed.clone()
    }
}
