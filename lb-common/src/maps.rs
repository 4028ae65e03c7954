//! Map keys, values and limits shared by the balancer, the decap program and
//! the loader. Addresses are stored as four `u32` words holding the packet's
//! bytes in memory order (network byte order on the wire, untouched); an IPv4
//! address uses word 0 and leaves the rest zero. Ports are kept in network byte
//! order, exactly as they appear in the packet.

use core::mem::size_of;

/// Bumped whenever a map below changes layout or meaning. The loader pins maps
/// under a directory named after it, so a daemon never adopts maps it cannot
/// read. 2: Maglev tables live in regions of one shared array (`VipInfo`).
/// 4: `LbConfig` carries the interface's MAC address. 5: round-robin and
/// least-connections (`Backend::weight`, `ConnEntry::flags`, `BACKEND_CONNS`,
/// `RR_CURSOR`).
pub const MAP_LAYOUT_VERSION: u32 = 5;

/// Most VIPs a balancer can be loaded for (the default is lower).
pub const MAX_VIPS: u32 = 65536;
/// VIPs a balancer holds unless told otherwise.
pub const DEFAULT_MAX_VIPS: u32 = 1024;
/// (VIP, backend) pairs; a backend id names one such pair.
pub const MAX_BACKENDS: u32 = 16384;
/// Largest Maglev table a VIP can have; also the default size. Prime.
pub const MAGLEV_MAX_SIZE: u32 = 65537;
/// Default size of the `MAGLEV` array all tables share: 16.8M slots, 128 MiB
/// (the kernel keeps array values 8-byte aligned). Every VIP takes twice its
/// table size, so this holds 128 VIPs with the largest table, or 2048 with
/// 4093-slot tables.
pub const DEFAULT_TABLE_POOL: u32 = 128 * 2 * MAGLEV_MAX_SIZE;
/// Connection-table capacity (flows).
pub const CONNTRACK_MAX: u32 = 1 << 20;
/// Addresses the decap program accepts as tunnel endpoints.
pub const MAX_DECAP_ADDRS: u32 = 64;
/// Interfaces the balancer can redirect to.
pub const MAX_TX_PORTS: u32 = 64;
/// Bits of the VIP address filter (`VIP_FILTER`, a bitmap of `u64` words).
pub const VIP_FILTER_BITS: u32 = 1 << 16;
pub const VIP_FILTER_WORDS: u32 = VIP_FILTER_BITS / 64;

/// The bit of the VIP address filter that `addr` (any VIP's address) sets.
/// A packet whose destination's bit is clear is for no VIP, and passes
/// without the VIP hash lookups: most of what a balancer in front of a host
/// sees is the host's own traffic. Fibonacci hashing of the address words.
#[inline(always)]
pub fn vip_filter_bit(addr: &Addr) -> u32 {
    filter_bit(addr_fold(addr))
}

/// The bit of the entry filter (`ENTRY_FILTER`, as many bits as the VIP
/// filter) that a VIP on `addr` and protocol `proto` sets when its
/// established flows may be found through their connection-table entry
/// ([`crate::rules::in_entry_filter`]). A clear bit spares the packets of
/// stateless VIPs a connection-table lookup that could only miss.
#[inline(always)]
pub fn entry_filter_bit(addr: &Addr, proto: u8) -> u32 {
    filter_bit(addr_fold(addr) ^ (proto as u32).rotate_left(28))
}

#[inline(always)]
fn addr_fold(addr: &Addr) -> u32 {
    addr[0] ^ addr[1].rotate_left(8) ^ addr[2].rotate_left(16) ^ addr[3].rotate_left(24)
}

/// Fibonacci hashing down to a bit index of the filters.
#[inline(always)]
fn filter_bit(h: u32) -> u32 {
    h.wrapping_mul(0x9e37_79b1) >> (32 - VIP_FILTER_BITS.trailing_zeros())
}
/// A Maglev slot holding this value has no backend (empty VIP).
pub const NO_BACKEND: u32 = u32::MAX;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_ICMPV6: u8 = 58;

/// An IPv4 or IPv6 address in packet byte order.
pub type Addr = [u32; 4];

/// `VIPS` key: what a packet is addressed to. `port == 0` is the port-less
/// entry that matches every port of the address and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(size_of::<VipKey>() == 20);

/// `VIPS` value. Replaced as a whole by user space, which is what makes a
/// backend-set change atomic: the new table is written into the half of the
/// VIP's region that the data path is not reading, then this entry moves
/// `table_base` (and `table_size`) to it in one update.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Index into the per-VIP arrays (stats).
    pub vip_id: u32,
    /// `VIP_F_*`.
    pub flags: u32,
    /// Prime size of the live Maglev table; 0 = no backend (drop).
    pub table_size: u32,
    /// Index in `MAGLEV` of the live table's first slot.
    pub table_base: u32,
    /// The VIP's region of `MAGLEV`: two tables of `region_half` slots from
    /// `region_base`. Only user space reads these (to adopt pinned maps).
    pub region_base: u32,
    pub region_half: u32,
}
const _: () = assert!(size_of::<VipInfo>() == 24);

/// `VIP_BY_ID` value: the key a VIP id is under and the VIP's flags, or all
/// zero (family 0 matches no flow) for an id no VIP has. It lets a packet
/// whose connection-table entry is found skip the `VIPS` hash lookup: the
/// entry names a backend, the backend its VIP id, and this entry says
/// whether that VIP is the one the packet is for
/// ([`crate::rules::owner_serves`]). User space writes it before the `VIPS`
/// entry when a VIP appears or changes flags, and clears it before removing
/// the `VIPS` entry, so it never names a VIP `VIPS` does not hold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipById {
    pub key: VipKey,
    /// `VIP_F_*`, as in the VIP's `VipInfo`.
    pub flags: u32,
}
const _: () = assert!(size_of::<VipById>() == 24);

/// Do not use the connection table for this VIP.
pub const VIP_F_STATELESS: u32 = 1 << 0;
/// Hash the source address only ("IP hash").
pub const VIP_F_SRC_HASH: u32 = 1 << 1;
/// Forward by rewriting the destination MAC (L2 DSR) instead of IPIP.
pub const VIP_F_L2DSR: u32 = 1 << 2;
/// New flows take the next backend of the VIP's smooth weighted sequence
/// (the live array holds the sequence, walked by a per-CPU cursor).
pub const VIP_F_ROUND_ROBIN: u32 = 1 << 3;
/// New flows go to the backend with the fewest active connections per unit
/// of weight (the live array holds the candidates, or the Maglev table to
/// sample from when there are more than `LC_EXACT_MAX`).
pub const VIP_F_LEAST_CONN: u32 = 1 << 4;

/// A least-connections VIP with at most this many backends in its live
/// array is scanned whole for the exact minimum; above it, new flows take
/// the best of `LC_CHOICES` backends sampled from its Maglev table. The
/// scan is a bounded loop the verifier walks once per iteration, and each
/// iteration costs two array reads (`cargo xtask bench` measures the row).
pub const LC_EXACT_MAX: u32 = 32;
/// How many backends the sampled least-connections choice compares (the
/// power of d choices).
pub const LC_CHOICES: u32 = 2;

/// `VIP_ADDRS` key: an (address, protocol) some VIP uses, so a malformed
/// packet to it is dropped (and counted) instead of passed, and its IPv4
/// fragments find their VIP without ports. Also the `DECAP_ADDRS` key, with
/// `proto == 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: Addr,
    pub family: u8,
    pub proto: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<AddrKey>() == 20);

/// `BACKENDS` value, indexed by backend id. One entry per (VIP, backend).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: Addr,
    /// The VIP this entry belongs to; a connection-table hit whose backend now
    /// belongs to another VIP (id reused) is treated as a miss.
    pub vip_id: u32,
    /// Egress interface; valid with `BACKEND_F_NEXTHOP`.
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// `BACKEND_F_*`.
    pub flags: u8,
    pub family: u8,
    /// The MTU of the egress interface (`ifindex`); 0: not known, no check.
    pub mtu: u16,
    /// The backend's weight (least-connections divides its active
    /// connections by it); 0: takes no new flows.
    pub weight: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Backend>() == 48);

/// The entry is in use.
pub const BACKEND_F_ACTIVE: u8 = 1 << 0;
/// `ifindex`, `dst_mac` and `src_mac` are resolved; no FIB lookup needed.
pub const BACKEND_F_NEXTHOP: u8 = 1 << 1;
/// Failed health checks: established flows are no longer sent to it.
pub const BACKEND_F_DOWN: u8 = 1 << 2;

/// `CONNTRACK` key and the input of the flow hash: the exact 5-tuple as the
/// client sent it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// `CONNTRACK` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEntry {
    pub backend_id: u32,
    /// The flow's hash (`flow_hash` in the VIP's mode), kept so a hit need
    /// not compute it again; 0 = not known (an entry user space wrote), the
    /// data path then computes it.
    pub flow_hash: u32,
    /// CLOCK_MONOTONIC at tick resolution (`clock`) of the last packet,
    /// refreshed at most once per `CONN_TOUCH_NS` to keep the entry's cache
    /// line quiet.
    pub last_seen_ns: u64,
    /// `CONN_F_*`: whether the flow was counted as active on its backend
    /// (least-connections) and whether it has been un-counted since. Set
    /// with atomic or, so a flow is un-counted once however many CPUs see
    /// its FIN or RST.
    /// 64 bits: the only atomic width Rust's BPF target offers.
    pub flags: u64,
}
const _: () = assert!(size_of::<ConnEntry>() == 24);

/// The flow was counted in its backend's `ConnCount::opened`.
pub const CONN_F_COUNTED: u64 = 1 << 0;
/// ... and then in its `closed` (FIN, RST, or its entry found expired or
/// stale).
pub const CONN_F_CLOSED: u64 = 1 << 1;
/// Made by a TCP SYN and not yet followed by another packet of the flow: a
/// SYN that finds it is a retransmission of the handshake, and keeps the
/// backend round-robin or least-connections gave the first one.
pub const CONN_F_OPENING: u64 = 1 << 2;

/// `BACKEND_CONNS` value, indexed by backend id: flows counted as opened
/// and as closed on the backend. The program adds to both atomically (one
/// shared entry, not per CPU: least-connections must see every CPU's flows);
/// user space adds corrections for flows the kernel dropped without a word
/// (LRU evictions, entries that expired untouched), see
/// `rules::conn_correction`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnCount {
    pub opened: u64,
    pub closed: u64,
}
const _: () = assert!(size_of::<ConnCount>() == 16);

/// How stale `last_seen_ns` may get before a hit rewrites it.
pub const CONN_TOUCH_NS: u64 = 1_000_000_000;

/// `LB_CONFIG[0]`: balancer-wide settings that can change at run time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConfig {
    /// Outer IPv4 source for `ipip`; with `src_v4_hostmask != 0`, the masked
    /// bits are taken from the flow hash (a source prefix).
    pub src_v4: u32,
    /// Host bits of the IPv4 source prefix, in packet byte order.
    pub src_v4_hostmask: u32,
    /// Outer IPv6 source; the last word's `src_v6_hostmask` bits come from the
    /// flow hash.
    pub src_v6: Addr,
    pub src_v6_hostmask: u32,
    /// Non-zero: answer a packet too big for the egress MTU (after
    /// encapsulation) with ICMP "fragmentation needed" / "packet too big";
    /// zero: drop it, counted.
    pub too_big_icmp: u32,
    /// The rate limit of those answers, per CPU.
    pub too_big_per_sec: u32,
    pub too_big_burst: u32,
    /// The MAC address of the interface the balancer serves: a frame for
    /// another destination MAC (flooded by a bridge that has not learned
    /// where it goes, or seen in promiscuous mode) is another host's, and
    /// passes. All zero: no check (no lbd has written it).
    pub if_mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<LbConfig>() == 48);

/// `MSS_CLAMP[0]` of the decap object: the largest MSS a SYN-ACK sent from a
/// VIP may announce, per family (0: not clamped).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MssClamp {
    pub v4: u16,
    pub v6: u16,
}
const _: () = assert!(size_of::<MssClamp>() == 4);

/// Per-VIP and per-backend traffic (per CPU; user space sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficStats {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<TrafficStats>() == 16);

/// The outer source address for a flow: the configured address with its host
/// bits (if a prefix is configured) replaced by bits of the flow hash (any
/// bits of a good hash will do), so one
/// flow always uses one source and different flows spread over the prefix.
#[inline(always)]
pub fn outer_source_v4(cfg: &LbConfig, flow_hash: u32) -> u32 {
    (cfg.src_v4 & !cfg.src_v4_hostmask) | (flow_hash & cfg.src_v4_hostmask)
}

/// IPv6 counterpart of [`outer_source_v4`]; only the last word varies.
#[inline(always)]
pub fn outer_source_v6(cfg: &LbConfig, flow_hash: u32) -> Addr {
    let mut a = cfg.src_v6;
    a[3] = (a[3] & !cfg.src_v6_hostmask) | (flow_hash & cfg.src_v6_hostmask);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_filter_bits_are_in_range_and_spread() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..1024u32 {
            // 10.0.x.y in packet byte order.
            let v4 = [
                u32::from_ne_bytes([10, 0, (i >> 8) as u8, i as u8]),
                0,
                0,
                0,
            ];
            let bit = vip_filter_bit(&v4);
            assert!(bit < VIP_FILTER_BITS);
            seen.insert(bit);
        }
        // 1024 addresses in 65536 bits: a few collisions at most.
        assert!(seen.len() > 1000, "{} distinct bits", seen.len());
        // Every word of an IPv6 address counts.
        let v6 = [0x2001_0db8, 0, 0, 1];
        for w in 0..4 {
            let mut other = v6;
            other[w] ^= 0x0100;
            assert_ne!(vip_filter_bit(&v6), vip_filter_bit(&other), "word {w}");
        }
    }

    #[test]
    fn entry_filter_bits_tell_protocols_apart() {
        let mut differ = 0;
        for i in 0..256u32 {
            let addr = [u32::from_ne_bytes([10, 0, 0, i as u8]), 0, 0, 0];
            let tcp = entry_filter_bit(&addr, 6);
            let udp = entry_filter_bit(&addr, 17);
            assert!(tcp < VIP_FILTER_BITS && udp < VIP_FILTER_BITS);
            differ += usize::from(tcp != udp);
        }
        assert!(
            differ > 250,
            "TCP and UDP share the bit of {} addresses",
            256 - differ
        );
    }
}
