//! A VIP: its identity (`ADDR[:PORT]/PROTO`), protocol, scheduler,
//! forwarding method and settings.

use std::{fmt, net::IpAddr};

use lb_common::{PROTO_TCP, PROTO_UDP};

use super::{defaults::DEFAULT_TABLE_SIZE, tier::TierPolicy};

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
    /// Weighted round-robin over new flows: a smooth sequence walked by a
    /// per-CPU cursor. Needs the connection table.
    RoundRobin,
    /// Weighted least-connections (IPVS `sed`): the fewest active
    /// connections per weight. Needs the connection table.
    LeastConnections,
}

impl Scheduler {
    /// Whether the scheduler's choice depends on more than the flow (its
    /// flows must be kept in the connection table).
    pub fn needs_conntrack(self) -> bool {
        matches!(self, Scheduler::RoundRobin | Scheduler::LeastConnections)
    }

    /// The name in the config file, lbctl and the API.
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Maglev => "maglev",
            Scheduler::SourceHash => "source-hash",
            Scheduler::RoundRobin => "round-robin",
            Scheduler::LeastConnections => "least-connections",
        }
    }
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
pub fn parse_vip(s: &str) -> Result<VipId, String> {
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
    /// How new flows spill to farther tiers (`[vip.tiers]`).
    #[serde(default)]
    pub tiers: TierPolicy,
}

impl Default for VipSettings {
    fn default() -> Self {
        VipSettings {
            scheduler: Scheduler::Maglev,
            forwarding: Forwarding::Ipip,
            stateless: false,
            table_size: DEFAULT_TABLE_SIZE,
            tiers: TierPolicy::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vips() {
        let v = |s| parse_vip(s).unwrap();
        assert_eq!(
            v("10.0.0.1:80/tcp"),
            VipId {
                addr: "10.0.0.1".parse().unwrap(),
                port: 80,
                proto: Proto::Tcp
            }
        );
        assert_eq!(v("10.0.0.1/udp").port, 0);
        assert_eq!(v("[2001:db8::1]:443/tcp").port, 443);
        assert_eq!(v("2001:db8::1/tcp").port, 0);
        assert_eq!(v("[2001:db8::1]/udp").port, 0);
        for bad in [
            "10.0.0.1:80",
            "10.0.0.1:0/tcp",
            "10.0.0.1:99999/tcp",
            "x:80/tcp",
            "10.0.0.1:80/sctp",
            "[::1:80/tcp",
        ] {
            assert!(parse_vip(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "10.0.0.1:80/tcp",
            "10.0.0.1/udp",
            "[2001:db8::1]:443/tcp",
            "[2001:db8::1]/udp",
        ] {
            assert_eq!(parse_vip(s).unwrap().to_string(), s);
        }
    }
}
