//! Every decision the balancer makes that user space must reproduce
//! (`lbctl explain`, the agreement tests): one pure function each, called by
//! the XDP program and by user space alike, so the two cannot drift apart.
//! The flow hash and the Maglev slot are in `hash`.

use crate::{
    counters::Counter,
    hash::{maglev_slot, HashMode},
    maps::{
        Addr, AddrKey, Backend, ConnCount, FlowKey, VipById, VipInfo, VipKey, BACKEND_F_ACTIVE,
        BACKEND_F_DOWN, CONN_F_CLOSED, CONN_F_COUNTED, CONN_F_OPENING, FAMILY_V4, FAMILY_V6,
        LC_EXACT_MAX, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, VIP_F_LEAST_CONN,
        VIP_F_ROUND_ROBIN, VIP_F_SRC_HASH, VIP_F_STATELESS,
    },
};

/// A packet's VIP: the exact (address, port, protocol) entry that `lookup`
/// finds, else the address's port-less entry for the protocol. One key,
/// its port cleared for the second lookup: most packets need only the first.
#[inline(always)]
pub fn find_vip<T>(flow: &FlowKey, mut lookup: impl FnMut(&VipKey) -> Option<T>) -> Option<T> {
    let mut key = VipKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        family: flow.family,
    };
    if let Some(v) = lookup(&key) {
        return Some(v);
    }
    key.port = 0;
    lookup(&key)
}

/// The fields a VIP's flows are hashed over: source-hash VIPs hash the
/// client address whatever the caller's default (five-tuple for whole
/// packets, three-tuple for fragments and the ICMP errors about them).
#[inline(always)]
pub fn hash_mode(vip_flags: u32, default: HashMode) -> HashMode {
    if vip_flags & VIP_F_SRC_HASH != 0 {
        HashMode::SourceAddr
    } else {
        default
    }
}

/// Whether the VIP keeps flows in the connection table.
#[inline(always)]
pub fn uses_conntrack(vip_flags: u32) -> bool {
    vip_flags & VIP_F_STATELESS == 0
}

/// Whether a packet consults the connection table at all: a TCP SYN starts
/// a new connection and follows the Maglev table, so an entry left by an
/// earlier connection on the same 5-tuple cannot send it to a backend that
/// is drained or no longer the table's choice (a retransmitted SYN lands
/// where the first did anyway). Under round-robin and least-connections a
/// SYN looks: a retransmitted one must keep the first one's backend
/// ([`syn_keeps_entry`]).
#[inline(always)]
pub fn consults_conntrack(vip_flags: u32, tcp_syn: bool) -> bool {
    uses_conntrack(vip_flags) && (!tcp_syn || pick(vip_flags) != Pick::Hash)
}

/// Whether a packet looks up its connection-table entry before its VIP:
/// every packet but a TCP SYN (which some schedulers place without the
/// table, [`consults_conntrack`]) whose destination and protocol have
/// their bit set in the entry filter (`filtered`, asked only then; see
/// [`in_entry_filter`]). A packet of an established flow then finds its
/// VIP through the entry ([`owner_serves`]) and needs no `VIPS` lookup; a
/// miss is not looked up again once the VIP is known. The filter only
/// saves work: a packet that skips this lookup takes the `VIPS` path,
/// which consults the table itself, so a bit set or cleared late changes
/// no decision.
#[inline(always)]
pub fn entry_first(tcp_syn: bool, filtered: impl FnOnce() -> bool) -> bool {
    !tcp_syn && filtered()
}

/// Whether a VIP sets its address and protocol's bit in the entry filter
/// (`lb_common::entry_filter_bit`): when it keeps flows in the connection
/// table. A stateless VIP's packets would look up an entry only to miss.
#[inline(always)]
pub fn in_entry_filter(vip_flags: u32) -> bool {
    uses_conntrack(vip_flags)
}

/// Whether the VIP that `owner` (a `VIP_BY_ID` entry) describes is the one
/// [`find_vip`] would find for `flow`, and keeps flows in the connection
/// table: its key is the flow's destination, port and protocol exactly,
/// which is the key `find_vip` tries first. A port-less VIP serving other
/// ports does not qualify (a VIP on the flow's own port may have come
/// since); its packets take the `VIPS` lookup.
#[inline(always)]
pub fn owner_serves(owner: &VipById, flow: &FlowKey) -> bool {
    let k = &owner.key;
    k.port == flow.dport
        && k.proto == flow.proto
        && k.family == flow.family
        && k.addr == flow.dst
        && uses_conntrack(owner.flags)
}

/// Whether a TCP SYN that finds a live entry keeps it: only one made by a
/// SYN and followed by nothing since (a retransmission of the handshake).
/// An entry that saw more is an earlier connection on the same 5-tuple, and
/// the SYN is placed afresh.
#[inline(always)]
pub fn syn_keeps_entry(entry_flags: u64) -> bool {
    entry_flags & CONN_F_OPENING != 0
}

/// Whether a connection-table entry idle for `idle_ns` is still live.
#[inline(always)]
pub fn conn_entry_live(idle_ns: u64, timeout_ns: u64) -> bool {
    idle_ns <= timeout_ns
}

/// Whether a live entry's backend may still take the flow: the backend entry
/// is in use, not marked down by health checks, and still belongs to the
/// VIP (a freed id may have been given to another VIP's backend).
#[inline(always)]
pub fn conn_backend_valid(backend: &Backend, vip_id: u32) -> bool {
    backend.flags & (BACKEND_F_ACTIVE | BACKEND_F_DOWN) == BACKEND_F_ACTIVE
        && backend.vip_id == vip_id
}

/// Bytes forwarding adds in front of a packet of `family`: the outer IPv4 or
/// IPv6 header of `ipip` (which keeps the family), nothing for L2 DSR (only
/// the Ethernet header is rewritten). A packet over the egress MTU minus
/// this is answered with ICMP "too big", naming that difference.
#[inline(always)]
pub fn encap_overhead(l2dsr: bool, family: u8) -> usize {
    match (l2dsr, family == FAMILY_V4) {
        (true, _) => 0,
        (false, true) => 20,
        (false, false) => 40,
    }
}

/// The index in `MAGLEV` of the slot `hash` selects in the VIP's live table;
/// `None` when the VIP has no table (no backend: the packet is dropped).
#[inline(always)]
pub fn table_index(vip: &VipInfo, hash: u32) -> Option<u32> {
    if vip.table_size == 0 {
        return None;
    }
    Some(
        vip.table_base
            .wrapping_add(maglev_slot(hash, vip.table_size)),
    )
}

/// How a VIP picks the backend of a new flow. Whatever the scheduler, the
/// VIP's live array (`table_base`, `table_size`) holds backend ids, and
/// packets that cannot use the scheduler (IPv4 fragments, ICMP errors about
/// a flow with no entry) are placed by hashing into it with
/// [`table_index`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The flow hash into the Maglev table (5-tuple, or source address).
    Hash,
    /// The next slot of the smooth weighted sequence: [`rr_step`].
    RoundRobin,
    /// The fewest active connections per weight: [`lc_exact`],
    /// [`fewer_conns`].
    LeastConn,
}

#[inline(always)]
pub fn pick(vip_flags: u32) -> Pick {
    if vip_flags & VIP_F_ROUND_ROBIN != 0 {
        Pick::RoundRobin
    } else if vip_flags & VIP_F_LEAST_CONN != 0 {
        Pick::LeastConn
    } else {
        Pick::Hash
    }
}

/// One round-robin step from a CPU's `cursor`: the index in `MAGLEV` of the
/// slot it names in the VIP's live sequence, and the cursor to store. A
/// cursor past the end (the sequence was replaced by a shorter one) wraps;
/// `None` when the VIP has no sequence (no backend).
#[inline(always)]
pub fn rr_step(vip: &VipInfo, cursor: u32) -> Option<(u32, u32)> {
    if vip.table_size == 0 {
        return None;
    }
    let pos = if cursor < vip.table_size {
        cursor
    } else {
        cursor % vip.table_size
    };
    let next = if pos + 1 == vip.table_size {
        0
    } else {
        pos + 1
    };
    Some((vip.table_base.wrapping_add(pos), next))
}

/// Where each CPU's round-robin cursor starts in a sequence of `len`
/// slots: evenly apart, so CPUs taking new flows at once interleave rather
/// than all sending their first flows to the same backends.
pub fn rr_start(cpu: u32, ncpu: u32, len: u32) -> u32 {
    if len == 0 || ncpu == 0 {
        return 0;
    }
    ((u64::from(cpu) * u64::from(len)) / u64::from(ncpu)) as u32
}

/// Whether a least-connections VIP's live array is its candidate list
/// (scanned whole) rather than its Maglev table (sampled). User space
/// writes the list when it has at most `LC_EXACT_MAX` backends, and a table
/// only for more: user space refuses more weighted backends than the table
/// size, so such a table is longer than `LC_EXACT_MAX`.
#[inline(always)]
pub fn lc_exact(vip: &VipInfo) -> bool {
    vip.table_size <= LC_EXACT_MAX
}

/// Active connections of a backend: opened minus closed, never below zero
/// (a correction may race a close; the next reconcile settles it).
#[inline(always)]
pub fn active_conns(c: &ConnCount) -> u64 {
    let n = c.opened.wrapping_sub(c.closed) as i64;
    if n < 0 {
        0
    } else {
        n as u64
    }
}

/// Whether backend a (`a_active` connections, weight `a_weight`) is a better
/// least-connections choice than b: a smaller `(active + 1) / weight`
/// (IPVS's `sed`; the +1 counts the flow being placed, so an idle heavy
/// backend beats an idle light one), compared by cross-multiplication.
/// Weight 0 never wins. Counts are capped so the products stay in 64 bits.
#[inline(always)]
pub fn fewer_conns(a_active: u64, a_weight: u32, b_active: u64, b_weight: u32) -> bool {
    if a_weight == 0 {
        return false;
    }
    if b_weight == 0 {
        return true;
    }
    let cap = |n: u64| {
        if n > u32::MAX as u64 {
            u32::MAX as u64
        } else {
            n
        }
    };
    (cap(a_active) + 1) * u64::from(b_weight) < (cap(b_active) + 1) * u64::from(a_weight)
}

/// Whether the program counts a flow of the VIP as active on its backend
/// (only least-connections VIPs pay for the shared counters): from its
/// first packet, or, for a flow that was there before the VIP switched to
/// least-connections, from its next one.
#[inline(always)]
pub fn counts_conns(vip_flags: u32) -> bool {
    vip_flags & VIP_F_LEAST_CONN != 0
}

/// Whether an entry with `flags` is counted as active and not yet
/// un-counted: the one state in which a FIN, an RST, or finding the entry
/// expired or stale un-counts it.
#[inline(always)]
pub fn conn_open(flags: u64) -> bool {
    flags & (CONN_F_COUNTED | CONN_F_CLOSED) == CONN_F_COUNTED
}

/// A backend's counts read twice around a scan of the connection table,
/// and what the scan found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnScan {
    pub before: ConnCount,
    pub after: ConnCount,
    /// Entries naming the backend that are counted, not closed and live.
    pub live: u64,
}

/// What to add to a backend's counts so that active = the truth, by what
/// is certain despite the program counting during the scan: flows opened
/// while the scan ran may have been missed by it, flows closed while it
/// ran may have been seen open. So the truth at the end lies in
/// `[live - closes, live + opens]`, and only a count outside that range is
/// corrected, to its nearest end. Returns (add to `opened`, add to
/// `closed`); on a quiet backend, exact.
pub fn conn_correction(scan: &ConnScan) -> (u64, u64) {
    let opens = scan.after.opened.wrapping_sub(scan.before.opened);
    let closes = scan.after.closed.wrapping_sub(scan.before.closed);
    let counted = scan.after.opened.wrapping_sub(scan.after.closed) as i64;
    let high = scan.live.saturating_add(opens) as i64;
    let low = scan.live.saturating_sub(closes) as i64;
    if counted > high {
        (0, (counted - high) as u64)
    } else if counted < low {
        ((low - counted) as u64, 0)
    } else {
        (0, 0)
    }
}

/// IPv4 fragments after the first carry no ports, so every fragment of a
/// datagram is steered by addresses and protocol alone: the `VIP_ADDRS` key
/// that names the VIP serving the datagram's fragments.
#[inline(always)]
pub fn fragment_addr_key(flow: &FlowKey) -> AddrKey {
    AddrKey {
        addr: flow.dst,
        family: flow.family,
        proto: flow.proto,
        _pad: [0; 2],
    }
}

/// How a fragment of a VIP's datagram is hashed.
#[inline(always)]
pub fn fragment_hash_mode(vip_flags: u32) -> HashMode {
    hash_mode(vip_flags, HashMode::ThreeTuple)
}

/// Which of the VIPs on one (address, protocol) serves its fragments, by
/// port: the port-less VIP if there is one, else the lowest port. One VIP
/// must serve them all for a datagram to stay on one backend.
pub fn fragment_vip_port(ports: impl IntoIterator<Item = u16>) -> Option<u16> {
    ports.into_iter().min()
}

/// ICMP types and codes the balancer steers (RFC 792, RFC 4443).
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;

/// Whether an (unfragmented) packet is ICMP of its own family: ICMP in
/// IPv4, ICMPv6 in IPv6. Protocol 58 in IPv4 or 1 in IPv6 is just another
/// protocol, and an IPv4 fragment follows the fragment rules whatever it
/// carries (a fragment after the first does not begin with an ICMP header).
#[inline(always)]
pub fn is_icmp(family: u8, proto: u8, fragment: bool) -> bool {
    !fragment
        && ((family == FAMILY_V4 && proto == PROTO_ICMP)
            || (family == FAMILY_V6 && proto == PROTO_ICMPV6))
}

/// The counter of an ICMP error the balancer steers to the backend of the
/// flow it is about; `None`: not such an error (echo, ...: the kernel's).
#[inline(always)]
pub fn icmp_error_kind(family: u8, ty: u8, code: u8) -> Option<Counter> {
    match (family, ty) {
        (FAMILY_V4, ICMP_DEST_UNREACH) if code == ICMP_FRAG_NEEDED => Some(Counter::IcmpFragNeeded),
        (FAMILY_V4, ICMP_DEST_UNREACH) => Some(Counter::IcmpDestUnreach),
        (FAMILY_V6, ICMPV6_PACKET_TOO_BIG) => Some(Counter::IcmpPacketTooBig),
        (FAMILY_V6, ICMPV6_DEST_UNREACH) => Some(Counter::Icmpv6DestUnreach),
        _ => None,
    }
}

/// The header an ICMP error quotes: the packet it is about, which a backend
/// sent from the VIP to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    /// The IP version field.
    pub version: u8,
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    /// Source and destination port, as quoted (network byte order).
    pub sport: u16,
    pub dport: u16,
}

/// Why an ICMP error is not steered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotSteered {
    /// Not about a flow of a VIP on the address it was sent to: the
    /// kernel's (passed unchanged).
    NotOurs,
    /// Garbled: dropped and counted when sent to a VIP address.
    Malformed,
}

/// The client's flow an ICMP error sent to `outer_dst` (of `family`) is
/// about: the quoted header reversed. The quote must be of the error's own
/// IP version, of TCP or UDP, and sent from `outer_dst` itself: an error to
/// one address about a flow of another is none of the balancer's business,
/// however close the two addresses hash. The caller then looks the flow's
/// VIP up exactly (`find_vip`), which makes `outer_dst` a VIP address.
#[inline(always)]
pub fn icmp_quoted_flow(family: u8, outer_dst: &Addr, q: &Quoted) -> Result<FlowKey, NotSteered> {
    if q.version != family {
        return Err(NotSteered::Malformed);
    }
    if q.proto != PROTO_TCP && q.proto != PROTO_UDP {
        return Err(NotSteered::NotOurs);
    }
    if q.src != *outer_dst {
        return Err(NotSteered::NotOurs);
    }
    Ok(FlowKey {
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
        family,
        _pad: [0; 2],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{FAMILY_V4, PROTO_TCP};

    #[test]
    fn encapsulation_adds_the_outer_header_of_the_family() {
        assert_eq!(encap_overhead(false, FAMILY_V4), 20);
        assert_eq!(encap_overhead(false, FAMILY_V6), 40);
        assert_eq!(encap_overhead(true, FAMILY_V4), 0);
        assert_eq!(encap_overhead(true, FAMILY_V6), 0);
    }

    fn flow(dport: u16) -> FlowKey {
        FlowKey {
            src: [1, 0, 0, 0],
            dst: [2, 0, 0, 0],
            sport: 1234u16.to_be(),
            dport: dport.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn exact_vip_before_the_portless_one() {
        let f = flow(80);
        // Every key asked for, in order: the exact one, then the port-less
        // one with the same address and protocol.
        let mut asked = [None; 2];
        let mut n = 0;
        let none = |k: &VipKey| {
            asked[n] = Some(*k);
            n += 1;
            None::<()>
        };
        assert_eq!(find_vip(&f, none), None);
        let (exact, portless) = (asked[0].unwrap(), asked[1].unwrap());
        assert_eq!(exact.port, 80u16.to_be());
        assert_eq!(portless.port, 0);
        assert_eq!(
            (exact.addr, exact.proto, exact.family),
            (portless.addr, portless.proto, portless.family)
        );
        let both = |k: &VipKey| Some(k.port);
        assert_eq!(find_vip(&f, both), Some(80u16.to_be()));
        let only_portless = |k: &VipKey| (k.port == 0).then_some("any");
        assert_eq!(find_vip(&f, only_portless), Some("any"));
        assert_eq!(find_vip(&f, |_| None::<()>), None);
    }

    #[test]
    fn an_owner_serves_only_the_flows_its_exact_key_names() {
        let f = flow(80);
        let key = VipKey {
            addr: f.dst,
            port: f.dport,
            proto: f.proto,
            family: f.family,
        };
        let owner = |key, flags| VipById { key, flags };
        assert!(owner_serves(&owner(key, 0), &f));
        // Where it says yes, the VIPS lookup finds that very key first.
        assert_eq!(
            find_vip(&f, |k: &VipKey| (*k == key).then_some(*k)),
            Some(key)
        );
        // Stateless VIPs keep no entries to trust.
        assert!(!owner_serves(&owner(key, VIP_F_STATELESS), &f));
        // A port-less VIP may be shadowed by a VIP on the flow's port.
        assert!(!owner_serves(&owner(VipKey { port: 0, ..key }, 0), &f));
        // Any other field differing: another VIP.
        for other in [
            VipKey {
                port: 81u16.to_be(),
                ..key
            },
            VipKey {
                proto: PROTO_UDP,
                ..key
            },
            VipKey {
                family: FAMILY_V6,
                ..key
            },
            VipKey {
                addr: [3, 0, 0, 0],
                ..key
            },
        ] {
            assert!(!owner_serves(&owner(other, 0), &f), "{other:?}");
        }
        // An id no VIP has (all zero) serves nothing.
        assert!(!owner_serves(&VipById::default(), &f));
        // SYNs find their VIP first; everything else its entry, where the
        // entry filter says a VIP there keeps entries (stateless ones not).
        let asked = &core::cell::Cell::new(0);
        let filter = |set| {
            move || {
                asked.set(asked.get() + 1);
                set
            }
        };
        assert!(!entry_first(true, filter(true)) && entry_first(false, filter(true)));
        assert!(!entry_first(false, filter(false)) && !entry_first(true, filter(false)));
        // SYNs do not read the filter.
        assert_eq!(asked.get(), 2);
        assert!(in_entry_filter(0) && in_entry_filter(VIP_F_SRC_HASH | crate::VIP_F_L2DSR));
        assert!(!in_entry_filter(VIP_F_STATELESS));
    }

    #[test]
    fn source_hash_overrides_every_default() {
        for d in [HashMode::FiveTuple, HashMode::ThreeTuple] {
            assert_eq!(hash_mode(VIP_F_SRC_HASH, d), HashMode::SourceAddr);
            assert_eq!(hash_mode(0, d), d);
        }
        assert_eq!(fragment_hash_mode(0), HashMode::ThreeTuple);
        assert_eq!(fragment_hash_mode(VIP_F_SRC_HASH), HashMode::SourceAddr);
    }

    #[test]
    fn entry_validity() {
        let b = |flags, vip_id| Backend {
            flags,
            vip_id,
            ..Default::default()
        };
        assert!(conn_backend_valid(&b(BACKEND_F_ACTIVE, 3), 3));
        assert!(!conn_backend_valid(&b(BACKEND_F_ACTIVE, 4), 3), "id reused");
        assert!(!conn_backend_valid(
            &b(BACKEND_F_ACTIVE | BACKEND_F_DOWN, 3),
            3
        ));
        assert!(!conn_backend_valid(&b(0, 3), 3), "cleared");
        assert!(conn_entry_live(5, 5) && !conn_entry_live(6, 5));
        assert!(consults_conntrack(0, false));
        assert!(!consults_conntrack(0, true), "a SYN follows the table");
        assert!(
            consults_conntrack(VIP_F_ROUND_ROBIN, true),
            "a retransmitted SYN"
        );
        assert!(consults_conntrack(VIP_F_LEAST_CONN, true));
        assert!(syn_keeps_entry(CONN_F_OPENING | CONN_F_COUNTED));
        assert!(!syn_keeps_entry(CONN_F_COUNTED), "an earlier connection");
        assert!(!consults_conntrack(VIP_F_STATELESS, false));
    }

    #[test]
    fn round_robin_walks_and_wraps() {
        let vip = VipInfo {
            table_size: 3,
            table_base: 10,
            ..Default::default()
        };
        assert_eq!(rr_step(&vip, 0), Some((10, 1)));
        assert_eq!(rr_step(&vip, 2), Some((12, 0)));
        assert_eq!(
            rr_step(&vip, 7),
            Some((11, 2)),
            "a cursor of a longer sequence"
        );
        let empty = VipInfo {
            table_size: 0,
            ..vip
        };
        assert_eq!(rr_step(&empty, 0), None);
        assert_eq!(
            (0..4).map(|c| rr_start(c, 4, 7)).collect::<Vec<_>>(),
            [0, 1, 3, 5]
        );
        assert_eq!(rr_start(1, 2, 0), 0);
    }

    #[test]
    fn least_connections_compares_per_weight() {
        assert!(fewer_conns(0, 1, 1, 1));
        assert!(!fewer_conns(1, 1, 1, 1), "a tie is not better");
        // (5+1)/3 = 2 < (2+1)/1 = 3.
        assert!(fewer_conns(5, 3, 2, 1));
        assert!(!fewer_conns(0, 0, 100, 1), "weight 0 never wins");
        assert!(fewer_conns(100, 1, 0, 0));
        assert!(fewer_conns(u64::MAX, 65535, u64::MAX, 1), "no overflow");
        let c = |opened, closed| ConnCount { opened, closed };
        assert_eq!(active_conns(&c(5, 2)), 3);
        assert_eq!(active_conns(&c(2, 5)), 0, "never below zero");
        assert!(lc_exact(&VipInfo {
            table_size: LC_EXACT_MAX,
            ..Default::default()
        }));
        assert!(conn_open(CONN_F_COUNTED));
        assert!(!conn_open(CONN_F_COUNTED | CONN_F_CLOSED));
        assert!(!conn_open(0));
        assert_eq!(pick(VIP_F_ROUND_ROBIN), Pick::RoundRobin);
        assert_eq!(pick(VIP_F_LEAST_CONN), Pick::LeastConn);
        assert_eq!(pick(VIP_F_SRC_HASH), Pick::Hash);
    }

    #[test]
    fn corrections_are_exact_when_quiet_and_never_overshoot() {
        let c = |opened, closed| ConnCount { opened, closed };
        let quiet = |opened, closed, live| ConnScan {
            before: c(opened, closed),
            after: c(opened, closed),
            live,
        };
        // 10 counted, 7 in the table: three were evicted.
        assert_eq!(conn_correction(&quiet(10, 0, 7)), (0, 3));
        assert_eq!(conn_correction(&quiet(10, 5, 5)), (0, 0));
        // Counted below the truth (a reset raced a close).
        assert_eq!(conn_correction(&quiet(3, 3, 2)), (2, 0));
        // Two opened during the scan: perhaps missed by it, so 12 - 7 = 5
        // active may be true up to 9; only the excess over 9 goes.
        let busy = ConnScan {
            before: c(10, 0),
            after: c(12, 0),
            live: 7,
        };
        assert_eq!(conn_correction(&busy), (0, 3));
        // Closed during the scan: the scan may have seen them open.
        let closing = ConnScan {
            before: c(10, 0),
            after: c(10, 4),
            live: 9,
        };
        assert_eq!(conn_correction(&closing), (0, 0));
    }

    #[test]
    fn table_index_and_empty_tables() {
        let vip = VipInfo {
            table_size: 7,
            table_base: 100,
            ..Default::default()
        };
        assert_eq!(table_index(&vip, 15), Some(101));
        let empty = VipInfo {
            table_size: 0,
            ..vip
        };
        assert_eq!(table_index(&empty, 15), None);
    }

    #[test]
    fn icmp_is_icmp_only_in_its_own_family_and_unfragmented() {
        assert!(is_icmp(FAMILY_V4, PROTO_ICMP, false));
        assert!(is_icmp(FAMILY_V6, PROTO_ICMPV6, false));
        assert!(!is_icmp(FAMILY_V4, PROTO_ICMPV6, false));
        assert!(!is_icmp(FAMILY_V6, PROTO_ICMP, false));
        assert!(
            !is_icmp(FAMILY_V4, PROTO_ICMP, true),
            "fragments follow the fragment rules"
        );
        assert_eq!(
            icmp_error_kind(FAMILY_V4, 3, 4),
            Some(Counter::IcmpFragNeeded)
        );
        assert_eq!(
            icmp_error_kind(FAMILY_V6, 2, 0),
            Some(Counter::IcmpPacketTooBig)
        );
        assert_eq!(
            icmp_error_kind(FAMILY_V6, 3, 4),
            None,
            "a v4 type number in v6"
        );
        assert_eq!(icmp_error_kind(FAMILY_V4, 8, 0), None, "echo");
    }

    #[test]
    fn quoted_flows_must_be_of_the_address_and_version() {
        let vip = [10, 0, 0, 0];
        let q = Quoted {
            version: FAMILY_V4,
            proto: PROTO_UDP,
            src: vip,
            dst: [99, 0, 0, 0],
            sport: 53u16.to_be(),
            dport: 4000u16.to_be(),
        };
        let f = icmp_quoted_flow(FAMILY_V4, &vip, &q).unwrap();
        assert_eq!(
            (f.src, f.dst, f.sport, f.dport),
            (q.dst, vip, q.dport, q.sport)
        );
        let other = [11, 0, 0, 0];
        assert_eq!(
            icmp_quoted_flow(FAMILY_V4, &other, &q),
            Err(NotSteered::NotOurs)
        );
        let v6 = Quoted {
            version: FAMILY_V6,
            ..q
        };
        assert_eq!(
            icmp_quoted_flow(FAMILY_V4, &vip, &v6),
            Err(NotSteered::Malformed)
        );
        let bogus = Quoted { version: 12, ..q };
        assert_eq!(
            icmp_quoted_flow(FAMILY_V6, &vip, &bogus),
            Err(NotSteered::Malformed)
        );
        let icmp = Quoted {
            proto: PROTO_ICMP,
            ..q
        };
        assert_eq!(
            icmp_quoted_flow(FAMILY_V4, &vip, &icmp),
            Err(NotSteered::NotOurs)
        );
    }

    #[test]
    fn fragments_go_to_the_portless_or_lowest_port_vip() {
        assert_eq!(fragment_vip_port([443, 80, 8080]), Some(80));
        assert_eq!(fragment_vip_port([443, 0]), Some(0));
        assert_eq!(fragment_vip_port([]), None);
        let k = fragment_addr_key(&flow(80));
        assert_eq!((k.addr, k.proto), ([2, 0, 0, 0], PROTO_TCP));
    }
}
