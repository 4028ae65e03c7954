//! User-space side: `aya::Pod` for every map type and conversions from std.

use core::net::IpAddr;

use crate::maps::*;

/// `aya::Pod` for map keys and values.
macro_rules! pod {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers
        // and byte arrays, with every padding byte an explicit field, so any
        // bit pattern is a valid value and no byte is uninitialised.
        unsafe impl aya::Pod for $t {}
    )*};
}

pod!(
    VipKey,
    VipInfo,
    VipById,
    AddrKey,
    Backend,
    FlowKey,
    ConnEntry,
    ConnCount,
    LbConfig,
    TrafficStats,
    MssClamp,
    crate::debug::DebugConfig,
    crate::bucket::TokenBucket,
    crate::debug::DebugDecision,
);

/// Packet-order words of an address, and its family.
pub fn addr_words(ip: IpAddr) -> (Addr, u8) {
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], FAMILY_V6)
        }
    }
}

/// The address that packet-order words of `family` hold.
pub fn words_addr(addr: &Addr, family: u8) -> IpAddr {
    let b = |w: u32| w.to_ne_bytes();
    if family == FAMILY_V4 {
        IpAddr::from(b(addr[0]))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in addr.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&b(*w));
        }
        IpAddr::from(o)
    }
}

impl AddrKey {
    pub fn new(ip: IpAddr, proto: u8) -> Self {
        let (addr, family) = addr_words(ip);
        AddrKey {
            addr,
            family,
            proto,
            _pad: [0; 2],
        }
    }
}

impl VipKey {
    /// `port` in host order; 0 = every port.
    pub fn new(ip: IpAddr, port: u16, proto: u8) -> Self {
        let (addr, family) = addr_words(ip);
        VipKey {
            addr,
            port: port.to_be(),
            proto,
            family,
        }
    }
    pub fn ip(&self) -> IpAddr {
        words_addr(&self.addr, self.family)
    }
}

impl FlowKey {
    /// Ports in host order.
    pub fn new(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> Self {
        let (s, family) = addr_words(src);
        let (d, _) = addr_words(dst);
        FlowKey {
            src: s,
            dst: d,
            sport: sport.to_be(),
            dport: dport.to_be(),
            proto,
            family,
            _pad: [0; 2],
        }
    }
    pub fn src_ip(&self) -> IpAddr {
        words_addr(&self.src, self.family)
    }
    pub fn dst_ip(&self) -> IpAddr {
        words_addr(&self.dst, self.family)
    }
}

impl Backend {
    pub fn ip(&self) -> IpAddr {
        words_addr(&self.addr, self.family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for s in ["10.1.2.3", "2001:db8::1:2", "::ffff:1.2.3.4"] {
            let ip: IpAddr = s.parse().unwrap();
            let (w, f) = addr_words(ip);
            assert_eq!(words_addr(&w, f), ip);
        }
    }
}
