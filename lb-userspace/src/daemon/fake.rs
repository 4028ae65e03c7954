//! An in-memory [`DataPath`] for the core's unit tests: it keeps what it is
//! told like the balancer's mirror does, and refuses the n-th write when
//! asked to, so every rollback path can be walked.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::debug::DebugConfig;

use super::DataPath;
use crate::model::{
    tier::{self, TierMember},
    BackendSpec, EncapSources, NextHop, TierShare, VipId, VipSettings,
};

/// VIPs with their settings and backends.
pub type Vips = BTreeMap<VipId, (VipSettings, Vec<BackendSpec>)>;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FakeDataPath {
    pub vips: Vips,
    pub down: BTreeSet<(VipId, IpAddr)>,
    pub encap: EncapSources,
    pub too_big: Option<u32>,
    pub next_hops: BTreeMap<IpAddr, NextHop>,
    pub tx_ports: BTreeSet<u32>,
    pub trace: Option<DebugConfig>,
    /// Writes so far (refused ones included).
    pub writes: usize,
    /// The write (counted like `writes`, from 1) that is refused.
    fail_at: Option<usize>,
}

/// A write the fake refused.
#[derive(Debug)]
pub struct Refused(pub usize);

impl std::error::Error for Refused {}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "write {} refused", self.0)
    }
}

impl FakeDataPath {
    /// Refuses the `n`-th write from now (1 = the next one).
    pub fn fail_in(&mut self, n: usize) {
        self.fail_at = Some(self.writes + n);
    }

    /// What it holds, without the counters: to compare two fakes.
    pub fn contents(&self) -> (Vips, BTreeSet<(VipId, IpAddr)>) {
        (self.vips.clone(), self.down.clone())
    }

    fn write(&mut self) -> Result<(), Refused> {
        self.writes += 1;
        if self.fail_at == Some(self.writes) {
            self.fail_at = None;
            return Err(Refused(self.writes));
        }
        Ok(())
    }

    fn vip_mut(&mut self, vip: &VipId) -> Result<&mut (VipSettings, Vec<BackendSpec>), Refused> {
        let n = self.writes;
        self.vips.get_mut(vip).ok_or(Refused(n))
    }
}

impl DataPath for FakeDataPath {
    type Error = Refused;

    fn vips(&self) -> Vec<VipId> {
        self.vips.keys().copied().collect()
    }
    fn backends(&self, vip: &VipId) -> Option<Vec<BackendSpec>> {
        self.vips.get(vip).map(|(_, b)| b.clone())
    }
    fn upsert_vip(&mut self, vip: VipId, settings: VipSettings) -> Result<(), Refused> {
        self.write()?;
        self.vips.entry(vip).or_insert((settings, Vec::new())).0 = settings;
        Ok(())
    }
    fn remove_vip(&mut self, vip: &VipId) -> Result<(), Refused> {
        self.write()?;
        self.vips.remove(vip);
        self.down.retain(|(v, _)| v != vip);
        Ok(())
    }
    fn set_backends(&mut self, vip: VipId, backends: &[BackendSpec]) -> Result<(), Refused> {
        self.write()?;
        self.vip_mut(&vip)?.1 = backends.to_vec();
        Ok(())
    }
    // Like the balancer's, a mark in the mirror only: not a write that can
    // be refused.
    fn preset_down(&mut self, vip: &VipId, addrs: &[IpAddr]) -> Result<(), Refused> {
        self.vip_mut(vip)?;
        self.down.extend(addrs.iter().map(|a| (*vip, *a)));
        Ok(())
    }
    fn preset_up(&mut self, vip: &VipId, addr: IpAddr) {
        self.down.remove(&(*vip, addr));
    }
    fn set_backend_down(&mut self, vip: &VipId, addr: IpAddr, down: bool) -> Result<(), Refused> {
        self.vip_mut(vip)?;
        // Like the balancer's: no write when nothing changes.
        if self.is_down(vip, &addr) == down {
            return Ok(());
        }
        self.write()?;
        if down {
            self.down.insert((*vip, addr));
        } else {
            self.down.remove(&(*vip, addr));
        }
        Ok(())
    }
    fn is_down(&self, vip: &VipId, addr: &IpAddr) -> bool {
        self.down.contains(&(*vip, *addr))
    }
    fn fail_open(&self, vip: &VipId) -> bool {
        let Some((_, backends)) = self.vips.get(vip) else {
            return false;
        };
        let mut weighted = backends.iter().filter(|b| b.weight > 0).peekable();
        weighted.peek().is_some() && weighted.all(|b| self.is_down(vip, &b.addr))
    }
    fn tier_shares(&self, vip: &VipId) -> Vec<TierShare> {
        let Some((settings, backends)) = self.vips.get(vip) else {
            return Vec::new();
        };
        let members: Vec<TierMember> = backends
            .iter()
            .map(|b| TierMember::new(b, !self.is_down(vip, &b.addr)))
            .collect();
        tier::plan(&settings.tiers, &members).shares
    }
    fn set_encap_sources(&mut self, src: &EncapSources) -> Result<(), Refused> {
        self.write()?;
        self.encap = *src;
        Ok(())
    }
    fn set_too_big(&mut self, per_sec: Option<u32>) -> Result<(), Refused> {
        self.write()?;
        self.too_big = per_sec;
        Ok(())
    }
    fn add_tx_port(&mut self, ifindex: u32) -> Result<(), Refused> {
        self.write()?;
        self.tx_ports.insert(ifindex);
        Ok(())
    }
    fn set_next_hop(&mut self, addr: IpAddr, next_hop: Option<NextHop>) -> Result<(), Refused> {
        self.write()?;
        match next_hop {
            Some(nh) => self.next_hops.insert(addr, nh),
            None => self.next_hops.remove(&addr),
        };
        Ok(())
    }
    fn vip_index(&self, vip: &VipId) -> Option<u32> {
        self.vips.keys().position(|v| v == vip).map(|i| i as u32)
    }
    fn set_trace(&mut self, cfg: DebugConfig) -> Result<(), Refused> {
        self.write()?;
        self.trace = Some(cfg);
        Ok(())
    }
}
