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
//!
//! One file per concern: loading here, `layout` (the maps' shapes and the
//! pinned-layout check), `adopt`, `attach`, `settings` (the one-entry maps),
//! `vips` (VIP entries and table switching, over `pool`, `table_mem` and
//! `maglev`), `backends` (backend entries, down marks, next hops), `query`
//! (reads), `schedule` (what a VIP's live array holds, by scheduler),
//! `conns` (least-connections counters and their reconcile), `filter` (the
//! VIP and entry filters' bitmaps), `mapping`
//! (mmap'ed arrays), `error`.

mod adopt;
mod attach;
mod backends;
mod clock;
mod conns;
mod error;
mod filter;
mod layout;
pub mod maglev;
mod mapping;
mod pool;
mod query;
pub mod schedule;
mod settings;
mod table_mem;
mod vips;

pub use conns::{ConnReconcile, Reconciled};
pub use error::MapsError;
pub use layout::{LoadOptions, PROGRAM_NAME, TOO_BIG_PROGRAM_NAME, TRACE_PROGRAM_NAME};
pub use query::{vip_key, Counters, EntryCheck, NextChoice, Prediction, Route};

use std::{
    collections::{BTreeMap, HashMap as StdHashMap, VecDeque},
    net::IpAddr,
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
};

use aya::{
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use lb_common::{
    debug::{DebugBucket, DebugConfig},
    AddrKey, Backend, ConnEntry, FlowKey, LbConfig, TrafficStats, VipById, VipInfo, VipKey,
    MAX_BACKENDS,
};

use crate::model::{
    defaults::{DEFAULT_TOO_BIG_PER_SEC, MAX_VIPS_RANGE, TABLE_POOL_RANGE},
    BackendSpec, NextHop, VipId, VipSettings,
};
use crate::trace::Pending;
use error::{map_err, Result};
use layout::{check_pinned_maps, map_layout};
use pool::TablePool;
use table_mem::TableMem;

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
    /// Each tier's backends and share of new flows, as the live table has
    /// them.
    tiers: Vec<crate::model::TierShare>,
    /// The live table's checksum by backend address (`query::table_checksum`),
    /// kept current by every table switch.
    checksum: Option<u64>,
}

impl VipState {
    /// The live array (Maglev table, round-robin sequence or
    /// least-connections candidates), as user space wrote it.
    fn live(&self) -> Option<&[u32]> {
        if self.live_size == 0 {
            return None;
        }
        self.tables[self.live_slot as usize].as_deref()
    }
}

/// A loaded balancer program and its maps.
pub struct Balancer {
    ebpf: Ebpf,
    vip_map: HashMap<MapData, VipKey, VipInfo>,
    /// Each VIP id's key and flags, for packets that find their VIP through
    /// their connection-table entry (`VipById`).
    vip_by_id: Array<MapData, VipById>,
    vip_addrs: HashMap<MapData, AddrKey, VipKey>,
    /// Kept for its fd; tables are read and written through `tables`.
    _maglev: Array<MapData, u32>,
    tables: TableMem,
    backend_map: Array<MapData, Backend>,
    conntrack: HashMap<MapData, FlowKey, ConnEntry>,
    /// The same map, for batch reads (`conns::scan`).
    conntrack_fd: OwnedFd,
    config: Array<MapData, LbConfig>,
    /// What `config` holds.
    lb_config: LbConfig,
    tx_ports: DevMapHash<MapData>,
    vip_filter: filter::Filter,
    entry_filter: filter::Filter,
    stats: PerCpuArray<MapData, u64>,
    vip_stats: PerCpuArray<MapData, TrafficStats>,
    backend_stats: PerCpuArray<MapData, TrafficStats>,
    /// Round-robin: each CPU's cursor per VIP id.
    rr_cursor: PerCpuArray<MapData, u32>,
    /// Least-connections counters: kept for its fd, used through `conns`.
    _backend_conns: Array<MapData, lb_common::ConnCount>,
    conns: std::sync::Arc<conns::ConnMem>,
    /// Backend ids whose counts were reset (given out again).
    conn_resets: u64,
    timeouts: conns::Timeouts,
    /// Possible CPUs (per-CPU values, round-robin starts).
    ncpu: u32,
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
        for (key, value, range) in [
            ("max_vips", opts.limits.max_vips, MAX_VIPS_RANGE),
            ("table_pool", opts.limits.table_pool, TABLE_POOL_RANGE),
        ] {
            if !range.contains(&value) {
                return Err(MapsError::Options(format!(
                    "{key} {value} is out of range {}..={}",
                    range.start(),
                    range.end()
                )));
            }
        }
        let tcp = opts.tcp_idle_timeout.as_nanos() as u64;
        let udp = opts.udp_idle_timeout.as_nanos() as u64;
        let (tick_ns, tick_offset_ns) = clock::measure()?;
        let mut loader = EbpfLoader::new();
        loader
            .override_global("TCP_IDLE_TIMEOUT_NS", &tcp, true)
            .override_global("UDP_IDLE_TIMEOUT_NS", &udp, true)
            .override_global("TICK_NS", &tick_ns, true)
            .override_global("TICK_OFFSET_NS", &tick_offset_ns, true);
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
        let mut ebpf = loader.load(crate::objects::BALANCER)?;
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
        let (backend_conns, conns_fd) = take_with_fd(&mut ebpf, "BACKEND_CONNS")?;
        let conns = conns::ConnMem::map(conns_fd.as_fd(), MAX_BACKENDS)
            .map_err(|e| MapsError::Layout(format!("mapping the BACKEND_CONNS array: {e}")))?;
        let (conntrack, conntrack_fd) = take_with_fd(&mut ebpf, "CONNTRACK")?;
        let mut balancer = Balancer {
            vip_map: take!(ebpf, "VIPS"),
            vip_by_id: take!(ebpf, "VIP_BY_ID"),
            vip_addrs: take!(ebpf, "VIP_ADDRS"),
            _maglev: maglev,
            tables,
            backend_map: take!(ebpf, "BACKENDS"),
            conntrack,
            conntrack_fd,
            config: take!(ebpf, "LB_CONFIG"),
            lb_config: LbConfig::default(),
            tx_ports: take!(ebpf, "TX_PORTS"),
            vip_filter: filter::Filter::read(take!(ebpf, "VIP_FILTER"), "VIP_FILTER")?,
            entry_filter: filter::Filter::read(take!(ebpf, "ENTRY_FILTER"), "ENTRY_FILTER")?,
            stats: take!(ebpf, "STATS"),
            vip_stats: take!(ebpf, "VIP_STATS"),
            backend_stats: take!(ebpf, "BACKEND_STATS"),
            rr_cursor: take!(ebpf, "RR_CURSOR"),
            _backend_conns: backend_conns,
            conns: std::sync::Arc::new(conns),
            conn_resets: 0,
            timeouts: conns::Timeouts {
                tcp_ns: tcp,
                udp_ns: udp,
            },
            ncpu: aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u32,
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
        if adopting {
            balancer.adopt()?;
            // The settings the running program uses (encap sources, the
            // interface's MAC, ICMP): every later write starts from them,
            // so no field is cleared in passing, and a start that fails
            // leaves them as they were.
            balancer.lb_config = balancer.config.get(&0, 0).map_err(map_err("LB_CONFIG"))?;
        }
        // Fresh maps: all clear. Adopted ones: drop bits no VIP needs.
        balancer.write_filter(None)?;
        if !adopting {
            balancer.set_too_big(Some(DEFAULT_TOO_BIG_PER_SEC))?;
        }
        Ok(balancer)
    }

    /// Whether the maps were adopted from a previous daemon (pinned).
    pub fn adopted(&self) -> bool {
        self.adopted
    }
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

/// Takes map `name` as a `T`, with a descriptor of its own for what aya's
/// typed maps do not offer (mapping it, batch reads).
fn take_with_fd<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<(T, OwnedFd)>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(MapsError::Options(format!("object has no map {name}")))?;
    let fd = match &map {
        aya::maps::Map::Array(d) | aya::maps::Map::LruHashMap(d) | aya::maps::Map::HashMap(d) => {
            d.fd().as_fd().try_clone_to_owned()
        }
        _ => {
            return Err(MapsError::Layout(format!(
                "{name} is not an array or hash map"
            )))
        }
    }
    .map_err(|e| MapsError::Options(format!("{name}: duplicating its descriptor: {e}")))?;
    Ok((map.try_into().map_err(map_err(name))?, fd))
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or(MapsError::Options(format!(
            "object has no program {PROGRAM_NAME}"
        )))?;
    Ok(prog.try_into()?)
}
