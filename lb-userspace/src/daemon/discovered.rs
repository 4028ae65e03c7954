//! Backends that come from a VIP's source (`backends_from`), beside the
//! ones the desired state lists. The declared state (config file, store,
//! lbctl) and what the sources found are kept apart: changes and the store
//! only ever see the declared one; the maps get both. A backend the source
//! stops listing drains (weight 0: no new flows, established ones go on)
//! for the source's `drain`, then leaves; a new one joins down when its VIP
//! is checked, and must pass like any new backend.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::{ApplyError, Daemon, DataPath};
use crate::{
    model::{
        backend::usable,
        defaults::{MAX_TIER, MAX_WEIGHT},
        discovery::{Found, Set, Source},
        BackendsFrom, VipId,
    },
    state::{BackendDesired, DesiredState},
};

/// One VIP's source, as the daemon keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceView {
    /// What the source lists, as the guard let it through.
    pub set: Set,
    /// Backends it no longer lists, draining until the time given.
    pub gone: BTreeMap<IpAddr, (Found, SystemTime)>,
    #[serde(skip)]
    pub status: SourceStatus,
}

/// How the source is doing, for status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStatus {
    pub last_answer: Option<SystemTime>,
    /// Lookups fail since then, with the latest error: the set is kept.
    pub stale: Option<(SystemTime, String)>,
    /// What the guard holds back (an empty answer, a large removal).
    pub held: Option<String>,
    /// Records left out of the latest answer, and why.
    pub left_out: Vec<String>,
    /// The latest answer could not be applied (the maps keep the last).
    pub refused: Option<String>,
}

/// What a source round brings.
pub struct Round {
    /// The set to apply, if it changed.
    pub apply: Option<Set>,
    pub status: SourceStatus,
}

impl<D: DataPath> Daemon<D> {
    /// The state the maps get: the declared one, and every VIP's
    /// discovered backends that its list does not name (draining ones at
    /// weight 0).
    pub(super) fn effective_of(&self, declared: &DesiredState) -> DesiredState {
        let mut out = declared.clone();
        for (id, v) in out.vips.iter_mut() {
            let Some(view) = self
                .discovered
                .get(id)
                .filter(|_| v.backends_from.is_some())
            else {
                continue;
            };
            let listed: Vec<IpAddr> = v.backends.iter().map(|b| b.addr).collect();
            let family = id.addr.is_ipv4();
            let found = view.set.iter().map(|(a, f)| (a, f, false));
            let gone = view
                .gone
                .iter()
                .filter(|(a, _)| !view.set.contains_key(a))
                .map(|(a, (f, _))| (a, f, true));
            for (addr, f, drained) in found.chain(gone) {
                // What a source says is checked here, one backend at a
                // time, so one bad entry cannot hold up the rest.
                if listed.contains(addr) || addr.is_ipv4() != family || !usable(addr) {
                    continue;
                }
                v.backends.push(BackendDesired {
                    addr: *addr,
                    weight: f.weight.min(MAX_WEIGHT),
                    tier: f.tier.min(MAX_TIER),
                    drained,
                    health: None,
                });
            }
        }
        out
    }

    /// Every VIP's DNS source, for the discovery task.
    pub fn discovery_sources(&self) -> Vec<(VipId, BackendsFrom)> {
        self.declared
            .vips
            .iter()
            .filter_map(|(id, v)| Some((*id, v.backends_from.clone()?)))
            .filter(|(_, from)| from.source != Source::Registered)
            .collect()
    }

    /// The backends registered in the store, by VIP (all of them, as just
    /// read): each VIP that takes registrations gets its own. They pass no
    /// hold: a lease that expired is its agent's word, not a flaky answer
    /// (and a store that cannot be reached changes nothing here).
    pub fn set_registered(
        &mut self,
        registered: &BTreeMap<VipId, Set>,
    ) -> Result<bool, ApplyError> {
        let vips: Vec<VipId> = self
            .declared
            .vips
            .iter()
            .filter(|(_, v)| {
                v.backends_from
                    .as_ref()
                    .is_some_and(|b| b.source == Source::Registered)
            })
            .map(|(id, _)| *id)
            .collect();
        let mut changed = false;
        for id in vips {
            let set = registered.get(&id).cloned().unwrap_or_default();
            let same = self.discovered.get(&id).is_some_and(|v| v.set == set);
            let status = SourceStatus {
                last_answer: Some(SystemTime::now()),
                ..SourceStatus::default()
            };
            let round = Round {
                apply: (!same).then_some(set),
                status,
            };
            match self.set_discovered(&id, round) {
                Ok(c) => changed |= c,
                Err(e) => tracing::error!(vip = %id, "registered backends not applied: {e}"),
            }
        }
        Ok(changed)
    }

    /// The set a VIP's source last brought (to seed its guard after a
    /// restart: fail static from the first lookup on).
    pub fn discovered_set(&self, vip: &VipId) -> Option<Set> {
        self.discovered.get(vip).map(|v| v.set.clone())
    }

    /// One round of a VIP's source. Backends it no longer lists start
    /// draining; ones it lists again stop.
    pub fn set_discovered(&mut self, vip: &VipId, round: Round) -> Result<bool, ApplyError> {
        let Some(drain) = self
            .declared
            .vips
            .get(vip)
            .and_then(|v| v.backends_from.as_ref())
            .map(|b| b.drain)
        else {
            return Ok(false);
        };
        let before = self.discovered.get(vip).cloned();
        let view = self.discovered.entry(*vip).or_default();
        view.status = round.status;
        let Some(set) = round.apply else {
            return Ok(false);
        };
        let until = SystemTime::now()
            .checked_add(drain)
            .unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(u32::MAX as u64 * 8));
        for (addr, f) in &view.set {
            if !set.contains_key(addr) {
                view.gone.insert(*addr, (*f, until));
            }
        }
        view.gone.retain(|a, _| !set.contains_key(a));
        view.set = set;
        match self.apply(self.declared.clone()) {
            Ok(_) => Ok(true),
            Err(e) => {
                // The maps keep what they had; so does the view.
                let status = self.discovered[vip].status.clone();
                match before {
                    Some(b) => self.discovered.insert(*vip, b),
                    None => self.discovered.remove(vip),
                };
                let view = self.discovered.entry(*vip).or_default();
                view.status = SourceStatus {
                    refused: Some(e.to_string()),
                    ..status
                };
                Err(e)
            }
        }
    }

    /// Drained backends whose time is up leave; sources of VIPs that no
    /// longer have one are forgotten. True when the maps changed.
    pub fn expire_discovered(&mut self, now: SystemTime) -> Result<bool, ApplyError> {
        let declared = &self.declared;
        self.discovered.retain(|id, _| {
            declared
                .vips
                .get(id)
                .is_some_and(|v| v.backends_from.is_some())
        });
        let mut changed = false;
        for view in self.discovered.values_mut() {
            let n = view.gone.len();
            view.gone.retain(|_, (_, until)| *until > now);
            changed |= view.gone.len() != n;
        }
        if changed {
            self.apply(self.declared.clone())?;
        }
        Ok(changed)
    }

    /// A VIP's source state, for status.
    pub fn source_view(&self, vip: &VipId) -> Option<&SourceView> {
        self.discovered.get(vip)
    }

    /// What is persisted beside the declared state.
    pub(super) fn discovered_to_save(&self) -> &BTreeMap<VipId, SourceView> {
        &self.discovered
    }
}

/// How long ago, for people.
pub fn ago(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}
