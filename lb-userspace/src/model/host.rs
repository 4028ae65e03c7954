//! What belongs to one balancer host rather than to a VIP: the balancer's
//! capacity, the outer source of encapsulated packets, how the program is
//! attached, and where frames to a backend leave.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    defaults::{DEFAULT_CONNTRACK_SIZE, DEFAULT_MAX_VIPS, DEFAULT_TABLE_POOL},
    vip::{Forwarding, VipId, VipSettings},
};

/// The balancer's capacity, fixed when it is loaded (`[limits]` in lbd's
/// config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_vips: u32,
    /// Maglev slots all VIPs share; a VIP takes twice its table size.
    pub table_pool: u32,
    /// Flows in the connection table (split over the possible CPUs).
    pub conntrack_size: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_vips: DEFAULT_MAX_VIPS,
            table_pool: DEFAULT_TABLE_POOL,
            conntrack_size: DEFAULT_CONNTRACK_SIZE,
        }
    }
}

/// The outer source of `ipip` packets, per family: an address, or a prefix
/// (the host bits then come from the flow hash).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncapSources {
    pub v4: Option<(Ipv4Addr, u8)>,
    pub v6: Option<(Ipv6Addr, u8)>,
}

impl EncapSources {
    /// The family a VIP forwarding with `ipip` has no outer source for, as
    /// the config file names it (`"v4"`, `"v6"`); `None` when it needs none
    /// or has one.
    pub fn missing_for(&self, vip: &VipId, settings: &VipSettings) -> Option<&'static str> {
        if settings.forwarding != Forwarding::Ipip {
            return None;
        }
        match vip.addr {
            IpAddr::V4(_) if self.v4.is_none() => Some("v4"),
            IpAddr::V6(_) if self.v6.is_none() => Some("v6"),
            _ => None,
        }
    }
}

/// How to attach: `Auto` tries native (driver) mode, then generic. Written
/// `auto`, `native`, `generic` (config file, `lbd decap --xdp-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Auto,
    Native,
    Generic,
}

impl std::str::FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AttachMode::Auto),
            "native" => Ok(AttachMode::Native),
            "generic" => Ok(AttachMode::Generic),
            _ => Err(format!("{s:?} is not auto, native or generic")),
        }
    }
}

/// Where frames to a backend leave: resolved by the control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// The egress interface's MTU (0: unknown); a packet that would leave
    /// larger once encapsulated is answered with ICMP "too big".
    pub mtu: u32,
}

/// A MAC address as `ip link` writes it (`02:00:00:00:00:0b`).
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
