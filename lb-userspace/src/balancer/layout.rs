//! The balancer's maps as this build makes them: names, key and value
//! sizes, capacities, and the check that pinned maps have that shape.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{
    AddrKey, Backend, ConnCount, ConnEntry, FlowKey, LbConfig, TrafficStats, VipById, VipInfo,
    VipKey, MAX_BACKENDS,
};

use super::error::{map_err, MapsError, Result};
use crate::model::{
    defaults::{DEFAULT_TCP_IDLE_TIMEOUT, DEFAULT_UDP_IDLE_TIMEOUT},
    Limits,
};

pub const PROGRAM_NAME: &str = "lb_balancer";
/// The program the balancer tail-calls for the decision trace.
pub const TRACE_PROGRAM_NAME: &str = "lb_trace";
/// The program the balancer tail-calls to answer a packet too big for the
/// egress MTU.
pub const TOO_BIG_PROGRAM_NAME: &str = "lb_too_big";

/// Settings fixed when the program is loaded.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub tcp_idle_timeout: Duration,
    pub udp_idle_timeout: Duration,
    /// The maps' sizes (`max_vips` at most `lb_common::MAX_VIPS`).
    pub limits: Limits,
    /// Pin maps, program and link here (see `host::pin`), adopting maps already
    /// pinned there. `None`: nothing outlives this process.
    pub pin_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
            udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
            limits: Limits::default(),
            pin_dir: None,
        }
    }
}

/// Every map of the balancer with its (key size, value size, capacity), to
/// pin them and to check that pinned ones have the layout this build expects.
pub(super) fn map_layout(opts: &LoadOptions) -> [(&'static str, usize, usize, u32); 15] {
    use std::mem::size_of;
    [
        (
            "VIPS",
            size_of::<VipKey>(),
            size_of::<VipInfo>(),
            opts.limits.max_vips,
        ),
        ("VIP_BY_ID", 4, size_of::<VipById>(), opts.limits.max_vips),
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
            conntrack_capacity(opts.limits.conntrack_size),
        ),
        ("LB_CONFIG", 4, size_of::<LbConfig>(), 1),
        ("TX_PORTS", 4, 8, lb_common::MAX_TX_PORTS),
        ("VIP_FILTER", 4, 8, lb_common::VIP_FILTER_WORDS),
        ("ENTRY_FILTER", 4, 8, lb_common::VIP_FILTER_WORDS),
        ("STATS", 4, 8, lb_common::counters::COUNTER_SLOTS),
        (
            "VIP_STATS",
            4,
            size_of::<TrafficStats>(),
            opts.limits.max_vips,
        ),
        ("BACKEND_STATS", 4, size_of::<TrafficStats>(), MAX_BACKENDS),
        ("RR_CURSOR", 4, 4, opts.limits.max_vips),
        ("BACKEND_CONNS", 4, size_of::<ConnCount>(), MAX_BACKENDS),
    ]
}

/// The connection table's capacity as the kernel makes it: an LRU map with
/// a list per CPU (`BPF_F_NO_COMMON_LRU`) is rounded up to a multiple of the
/// possible CPUs, and a pinned one reports the rounded size.
pub fn conntrack_capacity(asked: u32) -> u32 {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u32;
    asked.div_ceil(cpus).saturating_mul(cpus)
}

/// Refuses pinned maps whose shape differs from what this build would create.
pub(super) fn check_pinned_maps(dir: &Path, opts: &LoadOptions) -> Result<bool> {
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
