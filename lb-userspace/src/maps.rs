//! The only module that touches the balancer's maps. It loads the program,
//! keeps a mirror of what the maps hold (VIP and backend ids, both Maglev
//! tables of every VIP) and applies changes so the data path never sees a
//! half-made one:
//!
//! - a backend set is switched by writing the new table into the idle half
//!   of the VIP's region of the Maglev array, then replacing the VIP's map
//!   entry (one atomic hash-map update) to name that half; a new table size
//!   gets a new region the same way (see `pool`);
//! - new backend entries are written before any table refers to them, and
//!   removed ones are cleared only after no table does;
//! - a freed backend id goes to the back of the free queue, so a connection
//!   entry still naming it is far more likely to find it inactive (a miss)
//!   than reused, and reuse by another VIP is caught by `Backend::vip_id`.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap, VecDeque},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray},
    programs::{xdp::XdpLinkId, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    user::addr_words, AddrKey, Backend, ConnEntry, Counter, FlowKey, HashMode, LbConfig,
    TrafficStats, VipInfo, VipKey, BACKEND_F_ACTIVE, BACKEND_F_DOWN, BACKEND_F_NEXTHOP,
    DEFAULT_MAX_VIPS, DEFAULT_TABLE_POOL, MAX_BACKENDS, MAX_VIPS, NO_BACKEND, VIP_F_L2DSR,
    VIP_F_SRC_HASH, VIP_F_STATELESS,
};

use lb_common::debug::{DebugBucket, DebugConfig};

use crate::{
    maglev::{self, MaglevBackend},
    objects,
    pool::TablePool,
    service::{self, BackendSpec, Forwarding, Scheduler, SpecError, VipId, VipSettings},
    table_mem::TableMem,
    trace::Pending,
};

pub const PROGRAM_NAME: &str = "lb_balancer";
/// The program the balancer tail-calls for the decision trace.
pub const TRACE_PROGRAM_NAME: &str = "lb_trace";
/// The program the balancer tail-calls to answer a packet too big for the
/// egress MTU.
pub const TOO_BIG_PROGRAM_NAME: &str = "lb_too_big";

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
            conntrack_size: lb_common::CONNTRACK_MAX,
        }
    }
}

/// ICMP "too big" answers per second and CPU unless configured otherwise.
pub const DEFAULT_TOO_BIG_PER_SEC: u32 = 100;
/// The most answers one CPU sends at once after a quiet spell.
pub const TOO_BIG_MAX_BURST: u32 = 100;

/// Bounds lbd accepts for each limit.
pub const MAX_VIPS_RANGE: std::ops::RangeInclusive<u32> = 1..=MAX_VIPS;
pub const TABLE_POOL_RANGE: std::ops::RangeInclusive<u32> = 2..=(1 << 28);
pub const CONNTRACK_SIZE_RANGE: std::ops::RangeInclusive<u32> = 1024..=(1 << 26);

/// Settings fixed when the program is loaded.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub tcp_idle_timeout: Duration,
    pub udp_idle_timeout: Duration,
    /// The maps' sizes (`max_vips` at most `lb_common::MAX_VIPS`).
    pub limits: Limits,
    /// Pin maps, program and link here (see `pin`), adopting maps already
    /// pinned there. `None`: nothing outlives this process.
    pub pin_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            tcp_idle_timeout: Duration::from_secs(900),
            udp_idle_timeout: Duration::from_secs(300),
            limits: Limits::default(),
            pin_dir: None,
        }
    }
}

/// Every map of the balancer with its (key size, value size, capacity), to
/// pin them and to check that pinned ones have the layout this build expects.
fn map_layout(opts: &LoadOptions) -> [(&'static str, usize, usize, u32); 11] {
    use std::mem::size_of;
    [
        (
            "VIPS",
            size_of::<VipKey>(),
            size_of::<VipInfo>(),
            opts.limits.max_vips,
        ),
        (
            "VIP_ADDRS",
            size_of::<AddrKey>(),
            size_of::<VipKey>(),
            opts.limits.max_vips,
        ),
        ("MAGLEV", 4, 4, opts.limits.table_pool),
        ("BACKENDS", 4, size_of::<Backend>(), MAX_BACKENDS),
        (
            "CONNTRACK",
            size_of::<FlowKey>(),
            size_of::<ConnEntry>(),
            opts.limits.conntrack_size,
        ),
        ("LB_CONFIG", 4, size_of::<LbConfig>(), 1),
        ("TX_PORTS", 4, 8, lb_common::MAX_TX_PORTS),
        ("VIP_FILTER", 4, 8, lb_common::VIP_FILTER_WORDS),
        ("STATS", 4, 8, lb_common::counters::COUNTER_SLOTS),
        (
            "VIP_STATS",
            4,
            size_of::<TrafficStats>(),
            opts.limits.max_vips,
        ),
        ("BACKEND_STATS", 4, size_of::<TrafficStats>(), MAX_BACKENDS),
    ]
}

/// Refuses pinned maps whose shape differs from what this build would create.
fn check_pinned_maps(dir: &Path, opts: &LoadOptions) -> Result<bool> {
    let mut found = false;
    for (name, key, value, max) in map_layout(opts) {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        found = true;
        let info = aya::maps::MapInfo::from_pin(&path).map_err(map_err(name))?;
        let have = (
            info.key_size() as usize,
            info.value_size() as usize,
            info.max_entries(),
        );
        if have != (key, value, max) {
            return Err(MapsError::Layout(format!(
                "pinned map {} has key/value/entries {have:?}, this build expects {:?}; \
                 it was made by another lbd version or with other [limits]: `lbd detach` first (this drops the connection table)",
                path.display(),
                (key, value, max)
            )));
        }
    }
    Ok(found)
}

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("unknown VIP {0}")]
    UnknownVip(VipId),
    #[error("VIP {0} already exists")]
    DuplicateVip(VipId),
    #[error("no room for another VIP (limit {0})")]
    TooManyVips(u32),
    #[error(
        "no room for a {size}-slot Maglev table: needs {need} entries of the table pool, \
         {free} of {capacity} are free (use smaller table_size or a larger pool)"
    )]
    TablePoolFull {
        size: u32,
        need: u32,
        free: u64,
        capacity: u32,
    },
    #[error("no room for {0} more backends (limit {limit} across all VIPs)", limit = MAX_BACKENDS)]
    TooManyBackends(usize),
    #[error("load_options: {0}")]
    Options(String),
    #[error("{0}")]
    Layout(String),
    #[error("pinning {path}: {error}")]
    Pin { path: String, error: String },
    #[error("eBPF: {0}")]
    Ebpf(#[from] aya::EbpfError),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("program: {0}")]
    Program(#[from] aya::programs::ProgramError),
}

type Result<T> = std::result::Result<T, MapsError>;

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> MapsError {
    move |source| MapsError::Map { map, source }
}

/// How to attach: `Auto` tries native (driver) mode, then generic.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Auto,
    Native,
    Generic,
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

/// The outer source of `ipip` packets, per family: an address, or a prefix
/// (the host bits then come from the flow hash).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncapSources {
    pub v4: Option<(std::net::Ipv4Addr, u8)>,
    pub v6: Option<(std::net::Ipv6Addr, u8)>,
}

/// Summed counters.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub global: Vec<(Counter, u64)>,
    pub vips: BTreeMap<VipId, TrafficStats>,
    pub backends: BTreeMap<(VipId, IpAddr), TrafficStats>,
}

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.global
            .iter()
            .find(|(k, _)| *k == c)
            .map_or(0, |(_, v)| *v)
    }
}

/// Where user space predicts a flow goes, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prediction {
    pub vip: VipId,
    pub backend: Option<IpAddr>,
    pub backend_id: u32,
    pub hash: u32,
    pub slot: u32,
}

/// What the data path makes of a flow's connection-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryCheck {
    /// Taken: the flow stays on the entry's backend.
    Live,
    /// Idle past the timeout: replaced by the table's choice.
    Expired,
    /// Its backend is gone, down or now another VIP's: replaced.
    Stale,
}

/// Where a packet of a flow goes, and why (see [`Balancer::route`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub vip: VipId,
    /// The flow's connection-table entry, its idle time (ns) and verdict.
    pub entry: Option<(ConnEntry, u64, EntryCheck)>,
    /// The Maglev table's choice (taken unless the entry is live).
    pub table: Prediction,
    /// The backend the packet is sent to; `None`: dropped (no backend).
    pub backend: Option<IpAddr>,
}

/// Where a VIP's two tables are in the Maglev array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    base: u32,
    /// Slots per table (the table size the region was made for).
    half: u32,
}

impl Region {
    fn table(&self, slot: u32) -> u32 {
        self.base + (slot & 1) * self.half
    }
    fn len(&self) -> u32 {
        2 * self.half
    }
}

struct VipState {
    vip_id: u32,
    settings: VipSettings,
    /// Current backends and their ids, in the order given.
    backends: Vec<(BackendSpec, u32)>,
    /// Health: backends marked down (not in the table, entries ignored).
    down: Vec<IpAddr>,
    /// The VIP's part of the Maglev array: two tables of `region.half` slots.
    region: Region,
    /// What each of the two halves holds (`None`: unknown, rewrite all).
    tables: [Option<Vec<u32>>; 2],
    /// The half the VIP entry names (0 or 1).
    live_slot: u32,
    /// Size of the live table, 0 when it has no backend.
    live_size: u32,
    /// Every backend is down and the table holds all of them anyway.
    fail_open: bool,
}

/// A loaded balancer program and its maps.
pub struct Balancer {
    ebpf: Ebpf,
    vip_map: HashMap<MapData, VipKey, VipInfo>,
    vip_addrs: HashMap<MapData, AddrKey, VipKey>,
    /// Kept for its fd; tables are read and written through `tables`.
    _maglev: Array<MapData, u32>,
    tables: TableMem,
    backend_map: Array<MapData, Backend>,
    conntrack: HashMap<MapData, FlowKey, ConnEntry>,
    config: Array<MapData, LbConfig>,
    /// What `config` holds.
    lb_config: LbConfig,
    tx_ports: DevMapHash<MapData>,
    vip_filter: Array<MapData, u64>,
    /// What `vip_filter` holds.
    filter_words: Vec<u64>,
    stats: PerCpuArray<MapData, u64>,
    vip_stats: PerCpuArray<MapData, TrafficStats>,
    backend_stats: PerCpuArray<MapData, TrafficStats>,
    /// The decision trace: its switch, its rate limit, its records' reader
    /// (taken by whoever polls it) and what that reader parsed.
    debug: Array<MapData, DebugConfig>,
    debug_bucket: PerCpuArray<MapData, DebugBucket>,
    trace_reader: Option<aya_log::EbpfLogger<Pending>>,
    trace_pending: Pending,
    /// Kept for their fds: a slot empties when its map's last fd closes.
    _tail_calls: [aya::maps::ProgramArray<MapData>; 2],

    vips: BTreeMap<VipId, VipState>,
    free_vip_ids: VecDeque<u32>,
    free_backend_ids: VecDeque<u32>,
    pool: TablePool,
    /// Maglev slots the last table switch wrote (for the bench).
    last_table_writes: usize,
    next_hops: StdHashMap<IpAddr, NextHop>,
    max_vips: u32,
    pin_dir: Option<PathBuf>,
    adopted: bool,
}

macro_rules! take {
    ($ebpf:expr, $name:literal) => {{
        let map = $ebpf
            .take_map($name)
            .ok_or(MapsError::Options(format!("object has no map {}", $name)))?;
        map.try_into().map_err(map_err($name))?
    }};
}

impl Balancer {
    /// Loads the embedded balancer object and verifies the program.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        if opts.limits.max_vips == 0 || opts.limits.max_vips > MAX_VIPS {
            return Err(MapsError::Options(format!(
                "max_vips must be 1..={MAX_VIPS}"
            )));
        }
        if opts.limits.table_pool < 2 {
            return Err(MapsError::Options(
                "table_pool must hold at least one table of 2 slots".into(),
            ));
        }
        let tcp = opts.tcp_idle_timeout.as_nanos() as u64;
        let udp = opts.udp_idle_timeout.as_nanos() as u64;
        let mut loader = EbpfLoader::new();
        loader
            .override_global("TCP_IDLE_TIMEOUT_NS", &tcp, true)
            .override_global("UDP_IDLE_TIMEOUT_NS", &udp, true);
        for (name, _, _, max) in map_layout(opts) {
            loader.map_max_entries(name, max);
        }
        let maps_dir = opts.pin_dir.as_ref().map(|d| d.join("maps"));
        let mut adopting = false;
        if let Some(dir) = &maps_dir {
            std::fs::create_dir_all(dir).map_err(|e| MapsError::Pin {
                path: dir.display().to_string(),
                error: e.to_string(),
            })?;
            adopting = check_pinned_maps(dir, opts)?;
            for (name, _, _, _) in map_layout(opts) {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(objects::BALANCER)?;
        let prog: &mut Xdp = program(&mut ebpf)?;
        prog.load()?;
        // The programs the balancer tail-calls, each in its slot.
        let trace_slot = install_tail_call(&mut ebpf, TRACE_PROGRAM_NAME, "DEBUG_PROG")?;
        let too_big_slot = install_tail_call(&mut ebpf, TOO_BIG_PROGRAM_NAME, "TOO_BIG_PROG")?;
        let trace_pending = Pending::default();
        let trace_reader = aya_log::EbpfLogger::init_with_logger(&mut ebpf, trace_pending.clone())
            .map_err(|e| MapsError::Options(format!("the trace's log buffer: {e}")))?;
        let maglev = ebpf
            .take_map("MAGLEV")
            .ok_or(MapsError::Options("object has no map MAGLEV".into()))?;
        let tables = match &maglev {
            aya::maps::Map::Array(data) => {
                use std::os::fd::AsFd;
                TableMem::map(data.fd().as_fd(), opts.limits.table_pool).map_err(|e| {
                    MapsError::Layout(format!(
                        "mapping the MAGLEV array: {e} (a pinned one made by an older build \
                         is not mappable: `lbd detach` and start again)"
                    ))
                })?
            }
            _ => return Err(MapsError::Layout("MAGLEV is not an array".into())),
        };
        let maglev: Array<MapData, u32> = maglev.try_into().map_err(map_err("MAGLEV"))?;
        let mut balancer = Balancer {
            vip_map: take!(ebpf, "VIPS"),
            vip_addrs: take!(ebpf, "VIP_ADDRS"),
            _maglev: maglev,
            tables,
            backend_map: take!(ebpf, "BACKENDS"),
            conntrack: take!(ebpf, "CONNTRACK"),
            config: take!(ebpf, "LB_CONFIG"),
            lb_config: LbConfig::default(),
            tx_ports: take!(ebpf, "TX_PORTS"),
            vip_filter: take!(ebpf, "VIP_FILTER"),
            filter_words: Vec::new(),
            stats: take!(ebpf, "STATS"),
            vip_stats: take!(ebpf, "VIP_STATS"),
            backend_stats: take!(ebpf, "BACKEND_STATS"),
            debug: take!(ebpf, "DEBUG"),
            debug_bucket: take!(ebpf, "DEBUG_BUCKET"),
            _tail_calls: [trace_slot, too_big_slot],
            trace_reader: Some(trace_reader),
            trace_pending,
            ebpf,
            vips: BTreeMap::new(),
            free_vip_ids: (0..opts.limits.max_vips).collect(),
            free_backend_ids: (0..MAX_BACKENDS).collect(),
            pool: TablePool::new(opts.limits.table_pool),
            last_table_writes: 0,
            next_hops: StdHashMap::new(),
            max_vips: opts.limits.max_vips,
            pin_dir: opts.pin_dir.clone(),
            adopted: adopting,
        };
        balancer.filter_words = (0..lb_common::VIP_FILTER_WORDS)
            .map(|i| balancer.vip_filter.get(&i, 0))
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err("VIP_FILTER"))?;
        if adopting {
            balancer.adopt()?;
        }
        // Fresh maps: all clear. Adopted ones: drop bits no VIP needs.
        balancer.write_filter(None)?;
        balancer.set_too_big(Some(DEFAULT_TOO_BIG_PER_SEC))?;
        Ok(balancer)
    }

    /// Whether the maps were adopted from a previous daemon (pinned).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Rebuilds the mirror from adopted maps: VIP and backend ids, which
    /// table slot is live and what it holds, next hops. Weights are not in the
    /// maps; the caller reconciles with its desired state right after, which
    /// writes the idle slot and flips, so no VIP is ever without a table.
    fn adopt(&mut self) -> Result<()> {
        let mut vips = Vec::new();
        for key in self.vip_map.keys() {
            let key = key.map_err(map_err("VIPS"))?;
            let info = self.vip_map.get(&key, 0).map_err(map_err("VIPS"))?;
            vips.push((key, info));
        }
        let mut backends_of: BTreeMap<u32, Vec<(u32, Backend)>> = BTreeMap::new();
        for id in 0..MAX_BACKENDS {
            let b = self.backend_map.get(&id, 0).map_err(map_err("BACKENDS"))?;
            if b.flags & BACKEND_F_ACTIVE != 0 {
                backends_of.entry(b.vip_id).or_default().push((id, b));
            }
        }
        for (key, info) in vips {
            let proto = match key.proto {
                lb_common::PROTO_TCP => service::Proto::Tcp,
                lb_common::PROTO_UDP => service::Proto::Udp,
                p => return Err(MapsError::Layout(format!("adopted VIP with protocol {p}"))),
            };
            let id = VipId {
                addr: key.ip(),
                port: u16::from_be(key.port),
                proto,
            };
            let settings = VipSettings {
                scheduler: if info.flags & VIP_F_SRC_HASH != 0 {
                    Scheduler::SourceHash
                } else {
                    Scheduler::Maglev
                },
                forwarding: if info.flags & VIP_F_L2DSR != 0 {
                    Forwarding::L2dsr
                } else {
                    Forwarding::Ipip
                },
                stateless: info.flags & VIP_F_STATELESS != 0,
                table_size: if info.table_size == 0 {
                    maglev::DEFAULT_TABLE_SIZE
                } else {
                    info.table_size
                },
            };
            let region = Region {
                base: info.region_base,
                half: info.region_half,
            };
            if !self.pool.reserve(region.base, region.len()) {
                return Err(MapsError::Layout(format!(
                    "adopted VIP {id}: its Maglev region {region:?} overlaps another or lies \
                     outside the table pool"
                )));
            }
            let live_slot = u32::from(info.table_size > 0 && info.table_base != region.base);
            let mut table = Vec::with_capacity(info.table_size as usize);
            for slot in 0..info.table_size {
                let index = region.table(live_slot) + slot;
                table.push(self.tables.get(index).ok_or_else(|| {
                    MapsError::Layout(format!("adopted VIP {id}: table outside the pool"))
                })?);
            }
            let mut state = VipState {
                vip_id: info.vip_id,
                settings,
                backends: Vec::new(),
                down: Vec::new(),
                region,
                tables: [None, None],
                live_slot,
                live_size: info.table_size,
                fail_open: false,
            };
            state.tables[state.live_slot as usize] = (info.table_size > 0).then_some(table);
            for (bid, b) in backends_of.remove(&info.vip_id).unwrap_or_default() {
                let addr = b.ip();
                // Weight unknown until the caller's reconcile; only ids matter here.
                state.backends.push((BackendSpec { addr, weight: 0 }, bid));
                if b.flags & BACKEND_F_DOWN != 0 {
                    state.down.push(addr);
                }
                if b.flags & BACKEND_F_NEXTHOP != 0 {
                    self.next_hops.insert(
                        addr,
                        NextHop {
                            ifindex: b.ifindex,
                            dst_mac: b.dst_mac,
                            src_mac: b.src_mac,
                            mtu: b.mtu as u32,
                        },
                    );
                }
                self.free_backend_ids.retain(|i| *i != bid);
            }
            self.free_vip_ids.retain(|i| *i != info.vip_id);
            self.vips.insert(id, state);
        }
        // Active entries of no adopted VIP are leftovers: clear them.
        for (_, orphans) in backends_of {
            for (bid, _) in orphans {
                self.clear_backend(bid)?;
            }
        }
        Ok(())
    }

    /// Maglev slots the last backend-set switch wrote into the maps (the rest
    /// of the table already held the right values).
    pub fn last_table_writes(&self) -> usize {
        self.last_table_writes
    }

    /// The loaded program (for attaching, pinning or `TestRun`).
    pub fn program(&mut self) -> &mut Xdp {
        program(&mut self.ebpf).expect("loaded at construction")
    }

    /// Attaches to `interface`; returns the mode that took. With a pin
    /// directory, an XDP link pinned there by an earlier daemon is taken over
    /// and its program replaced atomically (`bpf_link_update`): the interface
    /// never runs without a balancer. A new link is pinned so the program
    /// stays attached after this process exits.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<XdpMode> {
        let Some(dir) = self.pin_dir.clone() else {
            return self.attach_unpinned(interface, mode).map(|(m, _)| m);
        };
        let pin_err = |path: &Path, e: &dyn std::fmt::Display| MapsError::Pin {
            path: path.display().to_string(),
            error: e.to_string(),
        };
        for (name, m) in [
            ("link-native", XdpMode::Driver),
            ("link-generic", XdpMode::Skb),
        ] {
            let path = dir.join(name);
            if !path.exists() {
                continue;
            }
            let pinned = aya::programs::links::PinnedLink::from_pin(&path)
                .map_err(|e| pin_err(&path, &e))?;
            let link =
                aya::programs::xdp::XdpLink::try_from(aya::programs::links::FdLink::from(pinned))
                    .map_err(|e| pin_err(&path, &e))?;
            match self.program().attach_to_link(link) {
                Ok(_) => {
                    self.pin_program(&dir)?;
                    return Ok(m);
                }
                // The interface the link was made for is gone (deleted and
                // perhaps re-created): the link is severed. Drop only its
                // pin; the maps stay adopted.
                Err(e) => {
                    tracing::warn!(link = %path.display(), "pinned XDP link is stale ({e}); attaching anew");
                    std::fs::remove_file(&path).map_err(|e| pin_err(&path, &e))?;
                }
            }
        }
        let (m, id) = self.attach_unpinned(interface, mode)?;
        let link = self.program().take_link(id)?;
        let fd_link =
            aya::programs::links::FdLink::try_from(link).map_err(|e| pin_err(&dir, &e))?;
        let path = dir.join(if m == XdpMode::Skb {
            "link-generic"
        } else {
            "link-native"
        });
        fd_link.pin(&path).map_err(|e| pin_err(&path, &e))?;
        self.pin_program(&dir)?;
        Ok(m)
    }

    fn pin_program(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("prog");
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| MapsError::Pin {
                path: path.display().to_string(),
                error: e.to_string(),
            })?;
        }
        self.program().pin(&path).map_err(|e| MapsError::Pin {
            path: path.display().to_string(),
            error: e.to_string(),
        })
    }

    /// Attaches without pinning; returns the mode and the link.
    fn attach_unpinned(
        &mut self,
        interface: &str,
        mode: AttachMode,
    ) -> Result<(XdpMode, XdpLinkId)> {
        let prog = self.program();
        let try_mode = |prog: &mut Xdp, m: XdpMode| prog.attach(interface, m).map(|id| (m, id));
        Ok(match mode {
            AttachMode::Native => try_mode(prog, XdpMode::Driver)?,
            AttachMode::Generic => try_mode(prog, XdpMode::Skb)?,
            AttachMode::Auto => match try_mode(prog, XdpMode::Driver) {
                Ok(r) => r,
                Err(_) => try_mode(prog, XdpMode::Skb)?,
            },
        })
    }

    /// Sets the outer source addresses for `ipip`.
    pub fn set_encap_sources(&mut self, src: &EncapSources) -> Result<()> {
        let mut cfg = LbConfig {
            src_v4: 0,
            src_v4_hostmask: 0,
            src_v6: [0; 4],
            src_v6_hostmask: 0,
            ..self.lb_config
        };
        if let Some((a, len)) = src.v4 {
            cfg.src_v4 = u32::from_ne_bytes(a.octets());
            cfg.src_v4_hostmask = host_mask(len.min(32), 32);
        }
        if let Some((a, len)) = src.v6 {
            cfg.src_v6 = addr_words(IpAddr::V6(a)).0;
            // Only the last 32 bits vary; a shorter prefix still uses them.
            cfg.src_v6_hostmask = host_mask(len.clamp(96, 128) - 96, 32);
        }
        self.config.set(0, cfg, 0).map_err(map_err("LB_CONFIG"))?;
        self.lb_config = cfg;
        Ok(())
    }

    /// Whether (and how often per second and CPU) a packet too big for the
    /// egress MTU is answered with ICMP; `None`: dropped, counted.
    pub fn set_too_big(&mut self, per_sec: Option<u32>) -> Result<()> {
        let cfg = LbConfig {
            too_big_icmp: u32::from(per_sec.is_some()),
            too_big_per_sec: per_sec.unwrap_or(0),
            too_big_burst: per_sec.unwrap_or(0).clamp(1, TOO_BIG_MAX_BURST),
            ..self.lb_config
        };
        self.config.set(0, cfg, 0).map_err(map_err("LB_CONFIG"))?;
        self.lb_config = cfg;
        Ok(())
    }

    /// Lets the program redirect to `ifindex` (an egress other than the
    /// interface a packet came in on). The kernel resolves `ifindex` in the
    /// calling thread's network namespace: call this from the namespace of
    /// the interfaces (lbd runs there).
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| MapsError::Options(format!("TX_PORTS: {e}")))
    }

    /// Creates a VIP (with no backends) or changes its settings.
    pub fn upsert_vip(&mut self, vip: VipId, settings: VipSettings) -> Result<()> {
        service::validate_vip(&vip, &settings)?;
        if let Some(state) = self.vips.get(&vip) {
            if state.settings == settings {
                return Ok(());
            }
            let specs: Vec<BackendSpec> = state.backends.iter().map(|(b, _)| *b).collect();
            service::validate_backends(&vip, &settings, &specs)?;
            let old = std::mem::replace(
                &mut self.vips.get_mut(&vip).expect("present").settings,
                settings,
            );
            // A new table size or scheduler needs a new table; flags alone do
            // not. If it cannot be made, the VIP keeps its old settings (the
            // live table still matches them).
            let result = self.set_backends(vip, &specs);
            if result.is_err() {
                self.vips.get_mut(&vip).expect("present").settings = old;
            }
            return result;
        }
        if self.free_vip_ids.is_empty() {
            return Err(MapsError::TooManyVips(self.max_vips));
        }
        let region = self.alloc_region(settings.table_size)?;
        let vip_id = self.free_vip_ids.pop_front().expect("checked");
        let state = VipState {
            vip_id,
            settings,
            backends: Vec::new(),
            down: Vec::new(),
            region,
            tables: [None, None],
            live_slot: 0,
            live_size: 0,
            fail_open: false,
        };
        let info = vip_info(&state);
        // The filter first: the data path must not pass the VIP's first
        // packets as "not a VIP" once its entry exists.
        if let Err(e) = self.write_filter(Some(vip.addr)) {
            self.free_vip_ids.push_front(vip_id);
            self.pool.release(region.base, region.len());
            return Err(e);
        }
        if let Err(e) = self.vip_map.insert(vip_key(&vip), info, 0) {
            self.free_vip_ids.push_front(vip_id);
            self.pool.release(region.base, region.len());
            return Err(map_err("VIPS")(e));
        }
        self.vips.insert(vip, state);
        self.sync_vip_addrs(&vip)
    }

    /// Removes a VIP: its packets pass to the kernel from now on.
    pub fn remove_vip(&mut self, vip: &VipId) -> Result<()> {
        let state = self.vips.get(vip).ok_or(MapsError::UnknownVip(*vip))?;
        let ids: Vec<u32> = state.backends.iter().map(|(_, id)| *id).collect();
        let (vip_id, region) = (state.vip_id, state.region);
        self.vip_map
            .remove(&vip_key(vip))
            .map_err(map_err("VIPS"))?;
        self.vips.remove(vip);
        self.pool.release(region.base, region.len());
        for id in ids {
            self.clear_backend(id)?;
        }
        self.free_vip_ids.push_back(vip_id);
        self.sync_vip_addrs(vip)?;
        self.write_filter(None)
    }

    /// Replaces a VIP's backend set: validated whole, then switched in one
    /// step (see the module comment). Weight 0 keeps a backend's established
    /// flows but gives it no new ones.
    pub fn set_backends(&mut self, vip: VipId, backends: &[BackendSpec]) -> Result<()> {
        let state = self.vips.get(&vip).ok_or(MapsError::UnknownVip(vip))?;
        service::validate_backends(&vip, &state.settings, backends)?;
        let vip_id = state.vip_id;

        // Ids: a backend that stays keeps its id (its flows' entries stay valid).
        let mut assigned = Vec::with_capacity(backends.len());
        let mut fresh = Vec::new();
        for b in backends {
            match state.backends.iter().find(|(old, _)| old.addr == b.addr) {
                Some((_, id)) => assigned.push((*b, *id)),
                None => {
                    let id = self
                        .free_backend_ids
                        .get(fresh.len())
                        .copied()
                        .ok_or(MapsError::TooManyBackends(backends.len() - assigned.len()))?;
                    fresh.push(id);
                    assigned.push((*b, id));
                }
            }
        }
        self.free_backend_ids.drain(..fresh.len());
        let removed: Vec<u32> = state
            .backends
            .iter()
            .filter(|(old, _)| !backends.iter().any(|b| b.addr == old.addr))
            .map(|(_, id)| *id)
            .collect();

        let result = self.switch_table(vip, vip_id, &assigned, &fresh);
        if let Err(e) = result {
            // Nothing refers to the fresh ids: give them back.
            for id in fresh.iter().rev() {
                let _ = self.clear_backend(*id);
                self.free_backend_ids.push_front(*id);
            }
            return Err(e);
        }
        for id in removed {
            self.clear_backend(id)?;
        }
        Ok(())
    }

    fn switch_table(
        &mut self,
        vip: VipId,
        vip_id: u32,
        assigned: &[(BackendSpec, u32)],
        fresh: &[u32],
    ) -> Result<()> {
        let state = self.vips.get(&vip).expect("checked by caller");
        // Fail open: when every backend that could take traffic is down,
        // send to all of them rather than drop everything (Envoy's panic
        // mode). Health checks may be wrong; a black hole is always wrong.
        let weighted = || assigned.iter().filter(|(b, _)| b.weight > 0);
        let fail_open =
            weighted().count() > 0 && weighted().all(|(b, _)| state.down.contains(&b.addr));
        let in_table = |b: &BackendSpec| fail_open || !state.down.contains(&b.addr);
        let candidates: Vec<MaglevBackend> = assigned
            .iter()
            .filter(|(b, _)| in_table(b))
            .map(|(b, id)| MaglevBackend {
                id: *id,
                key: addr_words(b.addr).0,
                weight: b.weight,
            })
            .collect();
        let down_flags: Vec<(u32, IpAddr, bool)> = assigned
            .iter()
            .map(|(b, id)| (*id, b.addr, !in_table(b)))
            .collect();
        let size = state.settings.table_size;
        let old_region = state.region;
        // New entries first: the table about to go live refers to them (on
        // error the caller clears them).
        for (id, addr, down) in down_flags.iter().filter(|(id, _, _)| fresh.contains(id)) {
            self.write_backend(*id, vip_id, *addr, *down)?;
        }
        // A new table size needs a region of that size; the old one stays
        // live until the switch below.
        let resized = old_region.half != size;
        let region = if resized {
            self.alloc_region(size)?
        } else {
            old_region
        };
        let release = |pool: &mut TablePool, r: Region| pool.release(r.base, r.len());
        let state = self.vips.get(&vip).expect("checked by caller");
        let slot = if resized { 0 } else { state.live_slot ^ 1 };
        let known = if resized {
            None
        } else {
            state.tables[slot as usize].as_deref()
        };
        let table = maglev::build_table(&candidates, size);
        let has_backend = table.first().is_some_and(|id| *id != NO_BACKEND);
        let written = if has_backend {
            write_table(&self.tables, region.table(slot), &table, known)
        } else {
            Ok(0)
        };
        self.last_table_writes = *written.as_ref().unwrap_or(&0);
        if let Err(e) = written {
            if resized {
                release(&mut self.pool, region);
            } else {
                // The half now holds a mix: forget what it held so the next
                // write rewrites all of it.
                self.vips.get_mut(&vip).expect("present").tables[slot as usize] = None;
            }
            return Err(e);
        }
        let state = self.vips.get_mut(&vip).expect("checked by caller");
        let before = (
            state.region,
            state.tables.clone(),
            state.live_slot,
            state.live_size,
        );
        if resized {
            state.region = region;
            state.tables = [None, None];
        }
        let previous = state.tables[slot as usize].take();
        state.tables[slot as usize] = if has_backend { Some(table) } else { previous };
        state.live_slot = slot;
        state.live_size = if has_backend { size } else { 0 };
        let info = vip_info(state);
        if let Err(e) = self.vip_map.insert(vip_key(&vip), info, 0) {
            let state = self.vips.get_mut(&vip).expect("present");
            (state.region, state.tables, state.live_slot, state.live_size) = before;
            if resized {
                release(&mut self.pool, region);
            }
            return Err(map_err("VIPS")(e));
        }
        if resized {
            release(&mut self.pool, old_region);
        }
        let state = self.vips.get_mut(&vip).expect("present");
        state.backends = assigned.to_vec();
        state.fail_open = fail_open;
        // Then the down flags of entries that stay (after the switch, so a
        // backend leaving is out of the table before its flows move).
        for (id, addr, down) in down_flags.iter().filter(|(id, _, _)| !fresh.contains(id)) {
            self.write_backend(*id, vip_id, *addr, *down)?;
        }
        Ok(())
    }

    /// A region for two tables of `size` slots, or why there is none.
    fn alloc_region(&mut self, size: u32) -> Result<Region> {
        let base = self
            .pool
            .alloc(2 * size)
            .ok_or_else(|| MapsError::TablePoolFull {
                size,
                need: 2 * size,
                free: self.pool.free_entries(),
                capacity: self.pool.capacity(),
            })?;
        Ok(Region { base, half: size })
    }

    fn write_backend(&mut self, id: u32, vip_id: u32, addr: IpAddr, down: bool) -> Result<()> {
        let (words, family) = addr_words(addr);
        let mut b = Backend {
            addr: words,
            vip_id,
            family,
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

    fn clear_backend(&mut self, id: u32) -> Result<()> {
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
        let users: Vec<(u32, u32, bool)> = self
            .vips
            .values()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .filter(|(b, _)| b.addr == addr)
                    .map(|(_, id)| (*id, s.vip_id, !s.fail_open && s.down.contains(&addr)))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (id, vip_id, down) in users {
            self.write_backend(id, vip_id, addr, down)?;
        }
        Ok(())
    }

    /// Points `VIP_ADDRS` for the VIP's (address, protocol) at the VIP that
    /// takes its IPv4 fragments: the port-less one if any, else the lowest
    /// port. Fragments after the first carry no port, so one VIP must serve
    /// them all for a datagram to stay on one backend.
    fn sync_vip_addrs(&mut self, vip: &VipId) -> Result<()> {
        let key = AddrKey::new(vip.addr, vip.proto.number());
        let designated = lb_common::rules::fragment_vip_port(
            self.vips
                .keys()
                .filter(|v| v.addr == vip.addr && v.proto == vip.proto)
                .map(|v| v.port),
        )
        .map(|port| VipId { port, ..*vip });
        let designated = designated.as_ref();
        match designated {
            Some(v) => self
                .vip_addrs
                .insert(key, vip_key(v), 0)
                .map_err(map_err("VIP_ADDRS")),
            None => match self.vip_addrs.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(map_err("VIP_ADDRS")(e)),
            },
        }
    }

    /// Sets the filter bits of every VIP's address (and `extra`'s), clears
    /// the rest; writes only the words that change.
    fn write_filter(&mut self, extra: Option<IpAddr>) -> Result<()> {
        let mut want = vec![0u64; lb_common::VIP_FILTER_WORDS as usize];
        for addr in self.vips.keys().map(|v| v.addr).chain(extra) {
            let bit = lb_common::vip_filter_bit(&addr_words(addr).0);
            want[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        for (i, (w, have)) in want.iter().zip(self.filter_words.iter_mut()).enumerate() {
            if w != have {
                self.vip_filter
                    .set(i as u32, *w, 0)
                    .map_err(map_err("VIP_FILTER"))?;
                *have = *w;
            }
        }
        Ok(())
    }

    pub fn vips(&self) -> impl Iterator<Item = (&VipId, &VipSettings)> {
        self.vips.iter().map(|(k, s)| (k, &s.settings))
    }

    /// A VIP's backends, in the order last given.
    pub fn backends(&self, vip: &VipId) -> Option<Vec<BackendSpec>> {
        self.vips
            .get(vip)
            .map(|s| s.backends.iter().map(|(b, _)| *b).collect())
    }

    /// The live Maglev table of a VIP as user space wrote it.
    pub fn live_table(&self, vip: &VipId) -> Option<&[u32]> {
        let s = self.vips.get(vip)?;
        if s.live_size == 0 {
            return None;
        }
        s.tables[s.live_slot as usize].as_deref()
    }

    /// Switches the decision trace (see `lb_common::debug`).
    pub fn set_trace(&mut self, cfg: DebugConfig) -> Result<()> {
        self.debug.set(0, cfg, 0).map_err(map_err("DEBUG"))
    }

    /// Trace records the rate limit refused, summed over CPUs.
    pub fn trace_suppressed(&self) -> u64 {
        self.debug_bucket
            .get(&0, 0)
            .map(|v| v.iter().map(|b| b.refused).sum())
            .unwrap_or(0)
    }

    /// The reader of the trace's records, for the task that polls it
    /// (`None` once taken).
    pub fn take_trace_reader(&mut self) -> Option<aya_log::EbpfLogger<Pending>> {
        self.trace_reader.take()
    }

    /// What the trace reader parsed and nobody has named yet.
    pub fn trace_pending(&self) -> Pending {
        self.trace_pending.clone()
    }

    /// The data path's id of a VIP.
    pub fn vip_index(&self, vip: &VipId) -> Option<u32> {
        self.vips.get(vip).map(|s| s.vip_id)
    }

    /// The VIP a data-path id stands for.
    pub fn vip_by_index(&self, vip_id: u32) -> Option<VipId> {
        self.vips
            .iter()
            .find(|(_, s)| s.vip_id == vip_id)
            .map(|(v, _)| *v)
    }

    /// The id of the loaded balancer program.
    pub fn program_id(&mut self) -> Option<u32> {
        self.program().info().ok().map(|i| i.id())
    }

    /// The resolved next hop of a backend address, if known.
    pub fn next_hop(&self, addr: &IpAddr) -> Option<NextHop> {
        self.next_hops.get(addr).copied()
    }

    /// A backend entry as the data path sees it.
    pub fn backend_entry(&self, id: u32) -> Option<Backend> {
        self.backend_map.get(&id, 0).ok()
    }

    /// The backend address a backend id stands for.
    pub fn backend_addr(&self, id: u32) -> Option<(VipId, IpAddr)> {
        self.vips.iter().find_map(|(v, s)| {
            s.backends
                .iter()
                .find(|(_, i)| *i == id)
                .map(|(b, _)| (*v, b.addr))
        })
    }

    /// Where the Maglev table sends a new flow, computed with the data path's
    /// own rules (`lb_common::rules`) over user space's copy of the table.
    pub fn predict(&self, flow: &FlowKey) -> Option<Prediction> {
        let (vip, state) = self.find_vip(flow)?;
        let info = vip_info(state);
        let mode = lb_common::rules::hash_mode(info.flags, HashMode::FiveTuple);
        let hash = lb_common::flow_hash(flow, mode);
        let size = state.live_size.max(1);
        let slot = lb_common::maglev_slot(hash, size);
        let backend_id = lb_common::rules::table_index(&info, hash)
            .and_then(|_| self.live_table(&vip))
            .map_or(NO_BACKEND, |t| t[slot as usize]);
        let backend = self.backend_addr(backend_id).map(|(_, a)| a);
        Some(Prediction {
            vip,
            backend,
            backend_id,
            hash,
            slot,
        })
    }

    /// Where the data path sends a packet of `flow` (not a TCP SYN) now: its
    /// connection-table entry when the program would accept it, else the
    /// Maglev table. `now_ns` is CLOCK_MONOTONIC; `timeout_ns` the idle
    /// timeout of the flow's protocol.
    pub fn route(&self, flow: &FlowKey, now_ns: u64, timeout_ns: u64) -> Option<Route> {
        use lb_common::rules;
        let (vip, state) = self.find_vip(flow)?;
        let info = vip_info(state);
        let mut entry = None;
        let mut live_backend = None;
        if rules::consults_conntrack(info.flags, false) {
            if let Some(e) = self.conntrack_entry(flow) {
                let idle = now_ns.saturating_sub(e.last_seen_ns);
                let backend = self
                    .backend_entry(e.backend_id)
                    .filter(|b| rules::conn_backend_valid(b, info.vip_id));
                let check = if !rules::conn_entry_live(idle, timeout_ns) {
                    EntryCheck::Expired
                } else if let Some(b) = backend {
                    live_backend = Some(b.ip());
                    EntryCheck::Live
                } else {
                    EntryCheck::Stale
                };
                entry = Some((e, idle, check));
            }
        }
        let table = self.predict(flow)?;
        Some(Route {
            vip,
            entry,
            table,
            backend: live_backend.or(table.backend),
        })
    }

    fn find_vip(&self, flow: &FlowKey) -> Option<(VipId, &VipState)> {
        let proto = match flow.proto {
            lb_common::PROTO_TCP => service::Proto::Tcp,
            lb_common::PROTO_UDP => service::Proto::Udp,
            _ => return None,
        };
        lb_common::rules::find_vip(flow, |key| {
            let id = VipId {
                addr: key.ip(),
                port: u16::from_be(key.port),
                proto,
            };
            self.vips.get(&id).map(|s| (id, s))
        })
    }

    /// The connection-table entry of a flow, if any.
    pub fn conntrack_entry(&self, flow: &FlowKey) -> Option<ConnEntry> {
        self.conntrack.get(flow, 0).ok()
    }

    /// Writes a connection-table entry (tests, and adoption of old state).
    pub fn set_conntrack_entry(&mut self, flow: &FlowKey, entry: ConnEntry) -> Result<()> {
        self.conntrack
            .insert(flow, entry, 0)
            .map_err(map_err("CONNTRACK"))
    }

    /// Number of entries in the connection table (walks it).
    pub fn conntrack_len(&self) -> usize {
        self.conntrack.keys().filter(|k| k.is_ok()).count()
    }

    /// The backend id user space assigned to `addr` in `vip`.
    pub fn backend_id(&self, vip: &VipId, addr: IpAddr) -> Option<u32> {
        self.vips
            .get(vip)?
            .backends
            .iter()
            .find(|(b, _)| b.addr == addr)
            .map(|(_, id)| *id)
    }

    /// All counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let mut out = Counters::default();
        for c in Counter::ALL {
            let v = self.stats.get(&(*c as u32), 0).map_err(map_err("STATS"))?;
            out.global.push((*c, v.iter().sum()));
        }
        let sum = |values: aya::maps::PerCpuValues<TrafficStats>| {
            values
                .iter()
                .fold(TrafficStats::default(), |a, v| TrafficStats {
                    packets: a.packets + v.packets,
                    bytes: a.bytes + v.bytes,
                })
        };
        for (vip, s) in &self.vips {
            let v = self
                .vip_stats
                .get(&s.vip_id, 0)
                .map_err(map_err("VIP_STATS"))?;
            out.vips.insert(*vip, sum(v));
            for (b, id) in &s.backends {
                let v = self
                    .backend_stats
                    .get(id, 0)
                    .map_err(map_err("BACKEND_STATS"))?;
                out.backends.insert((*vip, b.addr), sum(v));
            }
        }
        Ok(out)
    }
}

/// Writes `table` from `base`, skipping entries that already hold the right
/// value (a small change to a large table is a few writes); returns how many
/// it wrote.
fn write_table(mem: &TableMem, base: u32, table: &[u32], old: Option<&[u32]>) -> Result<usize> {
    let mut writes = 0;
    for (i, id) in table.iter().enumerate() {
        if old.is_some_and(|o| o.get(i) == Some(id)) {
            continue;
        }
        if !mem.set(base + i as u32, *id) {
            return Err(MapsError::Layout(format!(
                "Maglev slot {} is outside the table pool",
                base + i as u32
            )));
        }
        writes += 1;
    }
    mem.publish();
    Ok(writes)
}

/// Loads program `name` and puts it in slot 0 of the program array `map`.
fn install_tail_call(
    ebpf: &mut Ebpf,
    name: &str,
    map: &'static str,
) -> Result<aya::maps::ProgramArray<MapData>> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(MapsError::Options(format!("object has no program {name}")))?
        .try_into()?;
    prog.load()?;
    let mut slot: aya::maps::ProgramArray<MapData> = ebpf
        .take_map(map)
        .ok_or(MapsError::Options(format!("object has no map {map}")))?
        .try_into()
        .map_err(map_err(map))?;
    let prog: &Xdp = ebpf.program(name).expect("loaded above").try_into()?;
    slot.set(0, prog.fd()?, 0).map_err(map_err(map))?;
    Ok(slot)
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or(MapsError::Options(format!(
            "object has no program {PROGRAM_NAME}"
        )))?;
    Ok(prog.try_into()?)
}

pub fn vip_key(vip: &VipId) -> VipKey {
    VipKey::new(vip.addr, vip.port, vip.proto.number())
}

fn vip_info(s: &VipState) -> VipInfo {
    let mut flags = 0;
    if s.settings.stateless {
        flags |= VIP_F_STATELESS;
    }
    if s.settings.scheduler == Scheduler::SourceHash {
        flags |= VIP_F_SRC_HASH;
    }
    if s.settings.forwarding == Forwarding::L2dsr {
        flags |= VIP_F_L2DSR;
    }
    VipInfo {
        vip_id: s.vip_id,
        flags,
        table_size: s.live_size,
        table_base: s.region.table(s.live_slot),
        region_base: s.region.base,
        region_half: s.region.half,
    }
}

/// The host bits of a `prefix_len` prefix of a `bits`-bit word, in packet
/// byte order.
fn host_mask(prefix_len: u8, bits: u8) -> u32 {
    let host = bits - prefix_len.min(bits);
    let mask = if host >= 32 {
        u32::MAX
    } else {
        (1u32 << host) - 1
    };
    mask.to_be()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_masks() {
        assert_eq!(host_mask(32, 32), 0);
        assert_eq!(host_mask(24, 32), u32::from_ne_bytes([0, 0, 0, 255]));
        assert_eq!(host_mask(0, 32), u32::MAX);
        assert_eq!(u32::from_ne_bytes([0, 0, 0xff, 0xff]), host_mask(16, 32));
    }
}
