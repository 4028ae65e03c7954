//! Backend entries: written before a table names them, cleared after none
//! does; health's down marks and the resolved next hops live here too.

use std::net::IpAddr;

use lb_common::{user::addr_words, Backend, BACKEND_F_ACTIVE, BACKEND_F_DOWN, BACKEND_F_NEXTHOP};

use super::{
    error::{map_err, Result},
    Balancer, MapsError,
};
use crate::model::{BackendSpec, NextHop, VipId};

impl Balancer {
    pub(super) fn write_backend(
        &mut self,
        id: u32,
        vip_id: u32,
        spec: &BackendSpec,
        down: bool,
    ) -> Result<()> {
        let addr = spec.addr;
        let (words, family) = addr_words(addr);
        let mut b = Backend {
            addr: words,
            vip_id,
            family,
            weight: spec.weight,
            flags: BACKEND_F_ACTIVE,
            ..Default::default()
        };
        if down {
            b.flags |= BACKEND_F_DOWN;
        }
        if let Some(nh) = self.next_hops.get(&addr) {
            b.flags |= BACKEND_F_NEXTHOP;
            b.ifindex = nh.ifindex;
            b.dst_mac = nh.dst_mac;
            b.src_mac = nh.src_mac;
            b.mtu = nh.mtu.min(u16::MAX as u32) as u16;
        }
        self.backend_map.set(id, b, 0).map_err(map_err("BACKENDS"))
    }

    pub(super) fn clear_backend(&mut self, id: u32) -> Result<()> {
        self.backend_map
            .set(id, Backend::default(), 0)
            .map_err(map_err("BACKENDS"))?;
        if !self.free_backend_ids.contains(&id) {
            self.free_backend_ids.push_back(id);
        }
        Ok(())
    }

    /// Marks a backend up or down (health). A down backend leaves the table
    /// and its connection entries are ignored; its weight is kept.
    pub fn set_backend_down(&mut self, vip: &VipId, addr: IpAddr, down: bool) -> Result<()> {
        let state = self.vips.get_mut(vip).ok_or(MapsError::UnknownVip(*vip))?;
        if state.down.contains(&addr) == down {
            return Ok(());
        }
        if down {
            state.down.push(addr);
        } else {
            state.down.retain(|a| *a != addr);
        }
        let specs: Vec<BackendSpec> = state.backends.iter().map(|(b, _)| *b).collect();
        self.set_backends(*vip, &specs)
    }

    /// Marks backends down before they are first added (a backend under
    /// health checks starts down until it passes them); takes effect with
    /// the next `set_backends`.
    pub fn preset_down(&mut self, vip: &VipId, addrs: &[IpAddr]) -> Result<()> {
        let state = self.vips.get_mut(vip).ok_or(MapsError::UnknownVip(*vip))?;
        for a in addrs {
            if !state.down.contains(a) {
                state.down.push(*a);
            }
        }
        Ok(())
    }

    /// Clears a backend's down mark (health checks turned off); takes
    /// effect with the next `set_backends`.
    pub fn preset_up(&mut self, vip: &VipId, addr: IpAddr) {
        if let Some(state) = self.vips.get_mut(vip) {
            state.down.retain(|a| *a != addr);
        }
    }

    /// Whether a backend is marked down (health).
    pub fn is_down(&self, vip: &VipId, addr: &IpAddr) -> bool {
        self.vips.get(vip).is_some_and(|s| s.down.contains(addr))
    }

    /// Whether every backend of the VIP is down and it sends to all of them.
    pub fn fail_open(&self, vip: &VipId) -> bool {
        self.vips.get(vip).is_some_and(|s| s.fail_open)
    }

    /// Each tier's backends and share of the VIP's new flows, nearest first.
    pub fn tier_shares(&self, vip: &VipId) -> Vec<crate::model::TierShare> {
        self.vips
            .get(vip)
            .map(|s| s.tiers.clone())
            .unwrap_or_default()
    }

    /// Sets (or forgets) the resolved next hop of a backend address, for
    /// every VIP that uses it.
    pub fn set_next_hop(&mut self, addr: IpAddr, next_hop: Option<NextHop>) -> Result<()> {
        match next_hop {
            Some(nh) => {
                self.next_hops.insert(addr, nh);
            }
            None => {
                self.next_hops.remove(&addr);
            }
        }
        let users: Vec<(u32, u32, BackendSpec, bool)> = self
            .vips
            .values()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .filter(|(b, _)| b.addr == addr)
                    .map(|(b, id)| (*id, s.vip_id, *b, !s.fail_open && s.down.contains(&addr)))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (id, vip_id, spec, down) in users {
            self.write_backend(id, vip_id, &spec, down)?;
        }
        Ok(())
    }
}
