//! What an operator asks for: VIPs and their backends, independent of how the
//! maps encode them. Validation lives here so every input path (config file,
//! API, tests) refuses the same things with the same words.

use std::{fmt, net::IpAddr};

use lb_common::{PROTO_TCP, PROTO_UDP};

use crate::maglev;

/// Largest weight a backend may have. Weights are relative; this bound keeps
/// the Maglev arithmetic far from overflow and matches IPVS's range.
pub const MAX_WEIGHT: u32 = 65535;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    /// Maglev over the 5-tuple.
    #[default]
    Maglev,
    /// Maglev over the source address only: a client sticks to one backend.
    SourceHash,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// IPv4-in-IPv4 / IPv6-in-IPv6 to the backend address.
    #[default]
    Ipip,
    /// Same IP packet, Ethernet destination = the backend's MAC.
    L2dsr,
}

/// A VIP's identity: address, port (0 = every port) and protocol. Written
/// and parsed as `ADDR[:PORT]/PROTO` (IPv6 in brackets when a port is given),
/// also in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipId {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for VipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.addr, self.port) {
            (IpAddr::V4(a), 0) => write!(f, "{a}/{}", self.proto),
            (IpAddr::V6(a), 0) => write!(f, "[{a}]/{}", self.proto),
            (IpAddr::V4(a), p) => write!(f, "{a}:{p}/{}", self.proto),
            (IpAddr::V6(a), p) => write!(f, "[{a}]:{p}/{}", self.proto),
        }
    }
}

impl std::str::FromStr for VipId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_vip(s)
    }
}

impl serde::Serialize for VipId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for VipId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses `ADDR[:PORT]/PROTO`, with IPv6 addresses in brackets when a port
/// is given (`[2001:db8::1]:443/tcp`); a bare IPv6 address is port-less.
fn parse_vip(s: &str) -> Result<VipId, String> {
    let (addr_port, proto) = s
        .rsplit_once('/')
        .ok_or_else(|| format!("{s:?}: expected ADDR[:PORT]/PROTO, e.g. 10.0.0.1:80/tcp"))?;
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        other => return Err(format!("{s:?}: protocol {other:?} is not tcp or udp")),
    };
    let bad_port = |p: &str| format!("{s:?}: port {p:?} is not a number in 1..=65535");
    let (addr, port) = if let Some(rest) = addr_port.strip_prefix('[') {
        let (a, p) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing ']'"))?;
        let port = match p.strip_prefix(':') {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad_port(p))?,
            None if p.is_empty() => 0,
            None => return Err(format!("{s:?}: unexpected {p:?} after ']'")),
        };
        (a, port)
    } else if addr_port.matches(':').count() == 1 {
        let (a, p) = addr_port.split_once(':').expect("one colon");
        (
            a,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad_port(p))?,
        )
    } else {
        (addr_port, 0)
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
    Ok(VipId { addr, port, proto })
}

/// How a VIP treats its flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VipSettings {
    pub scheduler: Scheduler,
    pub forwarding: Forwarding,
    /// No connection table: every packet is placed by the Maglev table alone.
    pub stateless: bool,
    /// Prime; at most `lb_common::MAGLEV_MAX_SIZE`.
    pub table_size: u32,
}

impl Default for VipSettings {
    fn default() -> Self {
        VipSettings {
            scheduler: Scheduler::Maglev,
            forwarding: Forwarding::Ipip,
            stateless: false,
            table_size: maglev::DEFAULT_TABLE_SIZE,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackendSpec {
    pub addr: IpAddr,
    /// 0 = drained: no new flows, established ones stay.
    pub weight: u32,
}

/// Why a VIP or backend set is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("table size {0} is not a prime between 2 and {max}", max = lb_common::MAGLEV_MAX_SIZE)]
    TableSize(u32),
    #[error("backend {backend} is {}, but VIP {vip} is {}: ipip forwarding keeps the family (IPv4 in IPv4, IPv6 in IPv6)", family(.backend), family(&.vip.addr))]
    FamilyMismatch { vip: VipId, backend: IpAddr },
    #[error("backend {backend} of VIP {vip}: weight {weight} is out of range 0..={MAX_WEIGHT}")]
    Weight {
        vip: VipId,
        backend: IpAddr,
        weight: u32,
    },
    #[error("backend {backend} is listed twice for VIP {vip}")]
    DuplicateBackend { vip: VipId, backend: IpAddr },
    #[error("backend address {0} is not usable (unspecified, multicast or broadcast)")]
    BadBackendAddr(IpAddr),
    #[error("VIP address {0} is not usable (unspecified, multicast or broadcast)")]
    BadVipAddr(IpAddr),
}

fn family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn usable(a: &IpAddr) -> bool {
    !(a.is_unspecified() || a.is_multicast() || *a == IpAddr::from([255, 255, 255, 255]))
}

/// Checks a VIP's own settings.
pub fn validate_vip(vip: &VipId, settings: &VipSettings) -> Result<(), SpecError> {
    if !usable(&vip.addr) {
        return Err(SpecError::BadVipAddr(vip.addr));
    }
    let size = settings.table_size;
    if size > lb_common::MAGLEV_MAX_SIZE || !maglev::is_prime(size) {
        return Err(SpecError::TableSize(size));
    }
    Ok(())
}

/// Checks a VIP's backend set as a whole.
pub fn validate_backends(
    vip: &VipId,
    settings: &VipSettings,
    backends: &[BackendSpec],
) -> Result<(), SpecError> {
    for (i, b) in backends.iter().enumerate() {
        if !usable(&b.addr) {
            return Err(SpecError::BadBackendAddr(b.addr));
        }
        if settings.forwarding == Forwarding::Ipip && b.addr.is_ipv4() != vip.addr.is_ipv4() {
            return Err(SpecError::FamilyMismatch {
                vip: *vip,
                backend: b.addr,
            });
        }
        if b.weight > MAX_WEIGHT {
            return Err(SpecError::Weight {
                vip: *vip,
                backend: b.addr,
                weight: b.weight,
            });
        }
        if backends[..i].iter().any(|o| o.addr == b.addr) {
            return Err(SpecError::DuplicateBackend {
                vip: *vip,
                backend: b.addr,
            });
        }
    }
    Ok(())
}
