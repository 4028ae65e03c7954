//! Announcing VIP addresses: lbd writes one host route per address it
//! wants announced (`/32`, `/128`) into a kernel routing table of its own,
//! and the node's BGP speaker (BIRD or FRR, importing that table) tells the
//! routers. lbd never speaks BGP.
//!
//! The parts, probing apart from acting:
//! * here, [`decide`]: which addresses should be announced and why, a pure
//!   function of what the daemon knows (VIPs, health, drain, attach);
//! * [`routes`]: the kernel table, over rtnetlink (list, add, remove only
//!   routes lbd owns);
//! * [`node`]: the node's drain flag on disk (it survives restarts);
//! * the loop that makes the table match the decision, on every change and
//!   once a second, is lbd's (`lbd/announce.rs`): it needs the daemon.
//!
//! Routes stay when lbd stops or dies, as the pinned balancer keeps
//! forwarding: a restarted lbd adopts them. `lbd detach` removes them.

pub mod node;
pub mod routes;

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::model::AnnounceWhen;

/// Why an address is (or is not) announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A VIP on the address has a healthy backend with weight.
    Healthy,
    /// `when = "always"`.
    Always,
    /// `when = "never"`.
    Never,
    /// The balancer is not attached (yet).
    NotAttached,
    /// lbd has not read the store since it started: what it forwards may
    /// be out of date ([store] announce_before_read = false).
    StoreNotRead,
    /// `lbctl node drain`.
    Drained,
    /// Every VIP on the address has all its backends down and fails open:
    /// better another node or site serves it.
    FailOpen,
    /// No VIP on the address has a backend that is up and weighted.
    NoHealthyBackend,
    /// No VIP uses the address (any more): lbd's route to it is a leftover.
    NoVip,
}

impl Reason {
    /// For `lbctl node status`.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Healthy => "a VIP on it has a healthy backend",
            Reason::Always => "announce when = \"always\"",
            Reason::Never => "announce when = \"never\"",
            Reason::NotAttached => "the balancer is not attached",
            Reason::StoreNotRead => {
                "lbd has not read the store since it started (announce_before_read = false)"
            }
            Reason::Drained => "the node is drained (lbctl node undrain announces again)",
            Reason::FailOpen => "its VIPs fail open: every backend is down",
            Reason::NoHealthyBackend => "no VIP on it has a healthy backend with weight",
            Reason::NoVip => "no VIP uses it; lbd's route to it is left over",
        }
    }
}

impl Reason {
    /// Whether an address with this reason is announced.
    pub fn announces(self) -> bool {
        matches!(self, Reason::Healthy | Reason::Always)
    }
}

/// What the decision looks at for one VIP: its address, whether any backend
/// is up with a weight above zero, and whether it fails open.
#[derive(Clone, Copy, Debug)]
pub struct VipView {
    pub addr: IpAddr,
    pub has_healthy: bool,
    pub fail_open: bool,
}

/// Which addresses to announce, and why: one reason per address that any
/// VIP uses ([`Reason::announces`] says whether it is announced).
pub fn decide(
    when: AnnounceWhen,
    attached: bool,
    store_unread: bool,
    drained: bool,
    vips: &[VipView],
) -> BTreeMap<IpAddr, Reason> {
    let mut out: BTreeMap<IpAddr, Reason> = BTreeMap::new();
    for v in vips {
        let mine = if when == AnnounceWhen::Never {
            Reason::Never
        } else if !attached {
            Reason::NotAttached
        } else if store_unread {
            Reason::StoreNotRead
        } else if drained {
            Reason::Drained
        } else if when == AnnounceWhen::Always {
            Reason::Always
        } else if v.has_healthy && !v.fail_open {
            Reason::Healthy
        } else if v.fail_open {
            Reason::FailOpen
        } else {
            Reason::NoHealthyBackend
        };
        // One healthy VIP is enough for the address; among withdrawn ones,
        // fail-open is the more telling reason.
        out.entry(v.addr)
            .and_modify(|e| {
                if !e.announces() && (mine.announces() || mine == Reason::FailOpen) {
                    *e = mine;
                }
            })
            .or_insert(mine);
    }
    out
}

/// What `lbctl node status` and the metrics show: per address, the
/// reason decided and whether the route is in the table now.
#[derive(Clone, Debug, Default)]
pub struct AnnounceView {
    /// Address → (reason, route present in the table at the last look).
    pub addrs: BTreeMap<IpAddr, (Reason, bool)>,
    /// Routes added or removed since lbd started.
    pub changes: u64,
    /// The last reconcile's failure, if it failed.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(addr: &str, has_healthy: bool, fail_open: bool) -> VipView {
        VipView {
            addr: addr.parse().unwrap(),
            has_healthy,
            fail_open,
        }
    }

    fn one(d: &BTreeMap<IpAddr, Reason>, addr: &str) -> (bool, Reason) {
        let r = d[&addr.parse::<IpAddr>().unwrap()];
        (r.announces(), r)
    }

    #[test]
    fn an_address_needs_one_healthy_vip() {
        let vips = [
            vip("10.0.0.1", false, false),
            vip("10.0.0.1", true, false),
            vip("10.0.0.2", false, true),
            vip("10.0.0.3", false, false),
            vip("fd00::1", true, false),
        ];
        let d = decide(AnnounceWhen::Healthy, true, false, false, &vips);
        assert_eq!(one(&d, "10.0.0.1"), (true, Reason::Healthy));
        assert_eq!(one(&d, "10.0.0.2"), (false, Reason::FailOpen));
        assert_eq!(one(&d, "10.0.0.3"), (false, Reason::NoHealthyBackend));
        assert_eq!(one(&d, "fd00::1"), (true, Reason::Healthy));
    }

    #[test]
    fn fail_open_never_counts_as_healthy() {
        // A fail-open VIP reports its backends "up" in the table it uses.
        let d = decide(
            AnnounceWhen::Healthy,
            true,
            false,
            false,
            &[vip("10.0.0.1", true, true)],
        );
        assert_eq!(one(&d, "10.0.0.1"), (false, Reason::FailOpen));
    }

    #[test]
    fn drain_attach_and_when_override_health() {
        let vips = [vip("10.0.0.1", true, false), vip("10.0.0.2", false, false)];
        let d = decide(AnnounceWhen::Healthy, true, false, true, &vips);
        assert_eq!(one(&d, "10.0.0.1"), (false, Reason::Drained));
        let d = decide(AnnounceWhen::Healthy, false, false, false, &vips);
        assert_eq!(one(&d, "10.0.0.1"), (false, Reason::NotAttached));
        let d = decide(AnnounceWhen::Always, true, false, false, &vips);
        assert_eq!(one(&d, "10.0.0.2"), (true, Reason::Always));
        let d = decide(AnnounceWhen::Always, true, false, true, &vips);
        assert_eq!(one(&d, "10.0.0.2"), (false, Reason::Drained));
        let d = decide(AnnounceWhen::Never, true, false, false, &vips);
        assert_eq!(one(&d, "10.0.0.1"), (false, Reason::Never));
        // A node that has not read its store yet announces nothing, even
        // with when = "always"; a drain still says it is drained after.
        let d = decide(AnnounceWhen::Always, true, true, false, &vips);
        assert_eq!(one(&d, "10.0.0.2"), (false, Reason::StoreNotRead));
        let d = decide(AnnounceWhen::Healthy, true, true, true, &vips);
        assert_eq!(one(&d, "10.0.0.1"), (false, Reason::StoreNotRead));
    }
}
