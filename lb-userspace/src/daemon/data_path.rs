//! The seam between the daemon's core and the data path: what the core asks
//! of it, and nothing more. The balancer implements it over its maps; the
//! core's unit tests use an in-memory fake that can refuse any write.

use std::net::IpAddr;

use lb_common::debug::DebugConfig;

use crate::{
    balancer::{Balancer, MapsError},
    model::{BackendSpec, EncapSources, NextHop, TierShare, VipId, VipSettings},
};

/// What the daemon's core writes to and reads from the data path. Every
/// write either happens whole or fails with nothing changed, so the core
/// can undo a change VIP by VIP.
pub trait DataPath {
    /// Kept whole (with its causes, e.g. the errno) for the messages.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The VIPs it holds.
    fn vips(&self) -> Vec<VipId>;
    /// A VIP's backends as last given (`None`: no such VIP).
    fn backends(&self, vip: &VipId) -> Option<Vec<BackendSpec>>;
    /// Creates a VIP without backends, or changes its settings.
    fn upsert_vip(&mut self, vip: VipId, settings: VipSettings) -> Result<(), Self::Error>;
    fn remove_vip(&mut self, vip: &VipId) -> Result<(), Self::Error>;
    /// Replaces a VIP's backend set; the VIP switches to it in one step.
    fn set_backends(&mut self, vip: VipId, backends: &[BackendSpec]) -> Result<(), Self::Error>;
    /// Marks backends down before they are added (they start down until
    /// their checks pass).
    fn preset_down(&mut self, vip: &VipId, addrs: &[IpAddr]) -> Result<(), Self::Error>;
    /// Clears a down mark without touching the table (the next
    /// `set_backends` takes it in).
    fn preset_up(&mut self, vip: &VipId, addr: IpAddr);
    /// A health verdict: the backend leaves or rejoins the VIP's table.
    fn set_backend_down(
        &mut self,
        vip: &VipId,
        addr: IpAddr,
        down: bool,
    ) -> Result<(), Self::Error>;
    fn is_down(&self, vip: &VipId, addr: &IpAddr) -> bool;
    /// Every backend that could take traffic is down, and the table holds
    /// them all anyway.
    fn fail_open(&self, vip: &VipId) -> bool;
    /// Each tier's backends and share of new flows, nearest first.
    fn tier_shares(&self, vip: &VipId) -> Vec<TierShare>;
    fn set_encap_sources(&mut self, src: &EncapSources) -> Result<(), Self::Error>;
    /// ICMP "too big" answers per second and CPU; `None`: off.
    fn set_too_big(&mut self, per_sec: Option<u32>) -> Result<(), Self::Error>;
    /// Lets the program send out of `ifindex`.
    fn add_tx_port(&mut self, ifindex: u32) -> Result<(), Self::Error>;
    fn set_next_hop(&mut self, addr: IpAddr, next_hop: Option<NextHop>) -> Result<(), Self::Error>;
    /// The data path's id of a VIP (what the trace filters on).
    fn vip_index(&self, vip: &VipId) -> Option<u32>;
    /// Switches the decision trace.
    fn set_trace(&mut self, cfg: DebugConfig) -> Result<(), Self::Error>;
}

impl DataPath for Balancer {
    type Error = MapsError;

    fn vips(&self) -> Vec<VipId> {
        Balancer::vips(self).map(|(id, _)| *id).collect()
    }
    fn backends(&self, vip: &VipId) -> Option<Vec<BackendSpec>> {
        Balancer::backends(self, vip)
    }
    fn upsert_vip(&mut self, vip: VipId, settings: VipSettings) -> Result<(), MapsError> {
        Balancer::upsert_vip(self, vip, settings)
    }
    fn remove_vip(&mut self, vip: &VipId) -> Result<(), MapsError> {
        Balancer::remove_vip(self, vip)
    }
    fn set_backends(&mut self, vip: VipId, backends: &[BackendSpec]) -> Result<(), MapsError> {
        Balancer::set_backends(self, vip, backends)
    }
    fn preset_down(&mut self, vip: &VipId, addrs: &[IpAddr]) -> Result<(), MapsError> {
        Balancer::preset_down(self, vip, addrs)
    }
    fn preset_up(&mut self, vip: &VipId, addr: IpAddr) {
        Balancer::preset_up(self, vip, addr)
    }
    fn set_backend_down(&mut self, vip: &VipId, addr: IpAddr, down: bool) -> Result<(), MapsError> {
        Balancer::set_backend_down(self, vip, addr, down)
    }
    fn is_down(&self, vip: &VipId, addr: &IpAddr) -> bool {
        Balancer::is_down(self, vip, addr)
    }
    fn fail_open(&self, vip: &VipId) -> bool {
        Balancer::fail_open(self, vip)
    }
    fn tier_shares(&self, vip: &VipId) -> Vec<TierShare> {
        Balancer::tier_shares(self, vip)
    }
    fn set_encap_sources(&mut self, src: &EncapSources) -> Result<(), MapsError> {
        Balancer::set_encap_sources(self, src)
    }
    fn set_too_big(&mut self, per_sec: Option<u32>) -> Result<(), MapsError> {
        Balancer::set_too_big(self, per_sec)
    }
    fn add_tx_port(&mut self, ifindex: u32) -> Result<(), MapsError> {
        Balancer::add_tx_port(self, ifindex)
    }
    fn set_next_hop(&mut self, addr: IpAddr, next_hop: Option<NextHop>) -> Result<(), MapsError> {
        Balancer::set_next_hop(self, addr, next_hop)
    }
    fn vip_index(&self, vip: &VipId) -> Option<u32> {
        Balancer::vip_index(self, vip)
    }
    fn set_trace(&mut self, cfg: DebugConfig) -> Result<(), MapsError> {
        Balancer::set_trace(self, cfg)
    }
}
