//! The balancer's maps and the load-time settings, grouped by who writes
//! them: user space writes the configuration maps (the program only reads
//! them); the program writes the connection table and the counters (user
//! space reads them, and writes connection entries only in tests). The
//! maps of the trace and of ICMP "too big" answers live beside their code
//! (`debug.rs`, `toobig.rs`). The capacities of VIPS, VIP_BY_ID, VIP_ADDRS,
//! MAGLEV, CONNTRACK, VIP_STATS and RR_CURSOR are defaults: lbd sets them at load time from
//! `[limits]`; the others are fixed here.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU},
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    counters::COUNTER_SLOTS, AddrKey, Backend, ConnCount, ConnEntry, FlowKey, LbConfig,
    TrafficStats, VipById, VipInfo, VipKey, CONNTRACK_MAX, DEFAULT_MAX_VIPS, DEFAULT_TABLE_POOL,
    MAX_BACKENDS, MAX_TX_PORTS, VIP_FILTER_WORDS,
};

// --- Written by user space, read by the program ---------------------------

/// Every VIP by (address, port, protocol): its id, flags and where its live
/// Maglev table is. A port-less VIP has port 0 and is looked up second.
#[map]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// VIP id → the key it is under and its flags (`lb_common::VipById`): how a
/// packet that finds its connection-table entry knows its VIP without a
/// `VIPS` lookup.
#[map]
pub static VIP_BY_ID: Array<VipById> = Array::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// (address, protocol) of every VIP → the VIP that serves that address's IPv4
/// fragments. Also answers "is this malformed packet for a VIP?".
#[map]
pub static VIP_ADDRS: HashMap<AddrKey, VipKey> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// Every VIP's Maglev tables, each VIP in a region user space allocated
/// (`VipInfo::table_base`). Mappable, so user space writes tables with
/// plain stores (`lb::balancer::table_mem`).
#[map]
pub static MAGLEV: Array<u32> = Array::with_max_entries(DEFAULT_TABLE_POOL, BPF_F_MMAPABLE);

/// Backends by id (what Maglev slots and connection entries hold): address,
/// owning VIP, flags (active, down, next hop known), next hop and MTU.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// One entry: outer source addresses of encapsulated packets and the ICMP
/// "too big" settings.
#[map]
pub static LB_CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);

/// One bit per hash of every VIP address (`lb_common::vip_filter_bit`): the
/// prefilter that lets most packets that are not for a VIP pass without a
/// hash lookup.
#[map]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// One bit per hash of the address and protocol of every VIP that keeps
/// connection-table entries (`lb_common::entry_filter_bit`): whether a
/// packet's entry is looked up before its VIP (`rules::entry_first`).
#[map]
pub static ENTRY_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// Interfaces the balancer may redirect to, keyed by ifindex.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

// --- Written by the program, read by user space ----------------------------

/// Flows → their backend and last-seen time.
///
/// One table shared by all CPUs rather than one per CPU, for two reasons:
/// - correctness: an ICMP error about a flow comes from a router, hashes to
///   another RX queue and CPU than the flow's own packets, and must still
///   find the flow's entry; user space reads it too (`lbctl explain`, the
///   entry count after a restart);
/// - measurement (`cargo xtask bench`, concurrency table, 2 CPUs at once
///   against one): hits cost the same (1.00-1.01x), also with both CPUs
///   hitting one entry, since a hit takes no lock and writes the entry at
///   most once a second; miss+insert measured 1.00-1.23x over runs, which
///   `BPF_F_NO_COMMON_LRU` (a free list per CPU) keeps from becoming a
///   global-lock convoy. Per-CPU tables would only save part of the insert
///   cost of a new flow, and would break the first point.
/// The price: each CPU's LRU list holds `CONNTRACK_MAX / possible CPUs`.
#[map]
pub static CONNTRACK: LruHashMap<FlowKey, ConnEntry> =
    LruHashMap::with_max_entries(CONNTRACK_MAX, BPF_F_NO_COMMON_LRU);

/// Round-robin VIPs: each CPU's position in the VIP's sequence, by VIP id.
/// Per CPU, so walking it takes no atomic and shares no cache line; user
/// space sets every CPU's start when it switches the VIP to a new sequence
/// (`lb_common::rules::rr_start`).
#[map]
pub static RR_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// Least-connections: flows opened and closed per backend id, added to
/// atomically by every CPU (and corrected by user space's reconcile, through
/// the mapping, also atomically).
#[map]
pub static BACKEND_CONNS: Array<ConnCount> = Array::with_max_entries(MAX_BACKENDS, BPF_F_MMAPABLE);

/// Global outcome counters, one slot per `lb_common::Counter`, per CPU.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Packets and bytes per VIP id, per CPU.
#[map]
pub static VIP_STATS: PerCpuArray<TrafficStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// Packets and bytes per backend id, per CPU.
#[map]
pub static BACKEND_STATS: PerCpuArray<TrafficStats> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

// --- Read helpers -----------------------------------------------------------

/// Whether `dst` may be a VIP's address; `false` means certainly not.
#[inline(always)]
pub fn maybe_vip(dst: &lb_common::Addr) -> bool {
    has_bit(&VIP_FILTER, lb_common::vip_filter_bit(dst))
}

/// Whether the entry filter has the bit of `flow`'s destination and
/// protocol.
#[inline(always)]
pub fn entry_filtered(flow: &FlowKey) -> bool {
    has_bit(
        &ENTRY_FILTER,
        lb_common::entry_filter_bit(&flow.dst, flow.proto),
    )
}

/// Whether a filter bitmap has `bit` set; a word out of range counts as
/// set (the filters only ever let the lookups after them decide).
#[inline(always)]
fn has_bit(filter: &Array<u64>, bit: u32) -> bool {
    match filter.get(bit / 64) {
        Some(word) => word & (1u64 << (bit % 64)) != 0,
        None => true,
    }
}

/// Idle timeouts of connection-table entries, set by the loader at load time
/// (read-only globals, so the verifier folds them into the code).
#[unsafe(no_mangle)]
static TCP_IDLE_TIMEOUT_NS: u64 = 900 * 1_000_000_000;
#[unsafe(no_mangle)]
static UDP_IDLE_TIMEOUT_NS: u64 = 300 * 1_000_000_000;

/// The tick length and offset of the balancer's clock
/// (`lb_common::clock`), measured by the loader at load time. The defaults
/// are never used: the loader always sets both.
#[unsafe(no_mangle)]
static TICK_NS: u64 = 4_000_000;
#[unsafe(no_mangle)]
static TICK_OFFSET_NS: u64 = 0;

#[inline(always)]
pub fn tick_clock() -> (u64, u64) {
    unsafe {
        (
            core::ptr::read_volatile(&TICK_NS),
            core::ptr::read_volatile(&TICK_OFFSET_NS),
        )
    }
}

#[inline(always)]
pub fn tcp_idle_timeout_ns() -> u64 {
    unsafe { core::ptr::read_volatile(&TCP_IDLE_TIMEOUT_NS) }
}

#[inline(always)]
pub fn udp_idle_timeout_ns() -> u64 {
    unsafe { core::ptr::read_volatile(&UDP_IDLE_TIMEOUT_NS) }
}

#[inline(always)]
pub fn vip(key: &VipKey) -> Option<VipInfo> {
    unsafe { VIPS.get(key).copied() }
}

/// What `VIP_BY_ID` says about VIP id `id` (in place, no copy).
#[inline(always)]
pub fn vip_by_id(id: u32) -> Option<&'static VipById> {
    VIP_BY_ID.get(id)
}

#[inline(always)]
pub fn is_vip_addr(addr: &lb_common::Addr, family: u8, proto: u8) -> bool {
    let key = AddrKey {
        addr: *addr,
        family,
        proto,
        _pad: [0; 2],
    };
    unsafe { VIP_ADDRS.get(key).is_some() }
}

#[inline(always)]
pub fn fragment_vip(flow: &FlowKey) -> Option<VipKey> {
    unsafe {
        VIP_ADDRS
            .get(lb_common::rules::fragment_addr_key(flow))
            .copied()
    }
}

#[inline(always)]
pub fn backend(id: u32) -> Option<&'static Backend> {
    BACKENDS.get(id)
}

/// A packet's backend: its id (its counters' index) and its entry, read
/// once and handed from stage to stage (each read is a lookup whose key
/// makes a round trip through the stack).
#[derive(Clone, Copy)]
pub struct Chosen {
    pub id: u32,
    pub entry: Option<&'static Backend>,
}

impl Chosen {
    #[inline(always)]
    pub fn read(id: u32) -> Chosen {
        Chosen {
            id,
            entry: backend(id),
        }
    }
}

/// The settings, read in place (an array lookup the kernel inlines; no copy).
#[inline(always)]
pub fn config() -> &'static LbConfig {
    static ZERO: LbConfig = LbConfig {
        src_v4: 0,
        src_v4_hostmask: 0,
        src_v6: [0; 4],
        src_v6_hostmask: 0,
        too_big_icmp: 0,
        too_big_per_sec: 0,
        too_big_burst: 0,
        if_mac: [0; 6],
        _pad: [0; 2],
    };
    LB_CONFIG.get(0).unwrap_or(&ZERO)
}
