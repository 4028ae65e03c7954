//! Reads: the mirror, predictions by the data path's own rules, the
//! connection table and the counters.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    net::IpAddr,
};

use lb_common::{
    Backend, ConnEntry, Counter, FlowKey, HashMode, TrafficStats, VipInfo, VipKey, NO_BACKEND,
    VIP_F_L2DSR, VIP_F_LEAST_CONN, VIP_F_ROUND_ROBIN, VIP_F_SRC_HASH, VIP_F_STATELESS,
};

use super::{
    error::{map_err, Result},
    Balancer, VipState,
};
use crate::model::{BackendSpec, Forwarding, NextHop, Scheduler, VipId, VipSettings};

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

/// What a VIP's scheduler does with a new flow now (`lbctl explain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextChoice {
    /// Maglev or source hash: the flow hash's slot ([`Route::table`]).
    Hash,
    /// The next backend of each CPU's walk through a sequence of `len`.
    RoundRobin {
        len: u32,
        per_cpu: Vec<Option<IpAddr>>,
    },
    /// The fewest active connections per weight: over all `candidates`
    /// (`exact`), or the best of `LC_CHOICES` sampled from a Maglev table of
    /// `candidates` slots. `best`: the exact minimum (address, active,
    /// weight) and how many backends tie with it.
    LeastConn {
        exact: bool,
        candidates: u32,
        best: Option<(IpAddr, u64, u32)>,
        ties: usize,
    },
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

impl Balancer {
    pub fn vips(&self) -> impl Iterator<Item = (&VipId, &VipSettings)> {
        self.vips.iter().map(|(k, s)| (k, &s.settings))
    }

    /// A VIP's backends, in the order last given.
    pub fn backends(&self, vip: &VipId) -> Option<Vec<BackendSpec>> {
        self.vips
            .get(vip)
            .map(|s| s.backends.iter().map(|(b, _)| *b).collect())
    }

    /// The live array of a VIP as user space wrote it: its Maglev table,
    /// round-robin sequence or least-connections candidates.
    pub fn live_table(&self, vip: &VipId) -> Option<&[u32]> {
        self.vips.get(vip)?.live()
    }

    /// A fingerprint of the VIP's live table in terms of backend addresses,
    /// never of ids: two balancers (or one before and after a restart) that
    /// send every slot to the same backend report the same checksum, however
    /// they allocated ids. `None`: no backend in the table. Computed when the
    /// table is written ([`table_checksum`]).
    pub fn table_checksum(&self, vip: &VipId) -> Option<u64> {
        self.vips.get(vip)?.checksum
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

    /// What the VIP's scheduler would do with a new flow now, by the data
    /// path's rules over the maps (cursors, counts).
    pub fn next_choice(&self, vip: &VipId) -> Option<NextChoice> {
        use lb_common::rules;
        let state = self.vips.get(vip)?;
        let info = vip_info(state);
        let table = state.live().unwrap_or(&[]);
        let addr_of = |id: u32| self.backend_addr(id).map(|(_, a)| a);
        match rules::pick(info.flags) {
            rules::Pick::Hash => Some(NextChoice::Hash),
            rules::Pick::RoundRobin => {
                let cursors = self.rr_cursor.get(&info.vip_id, 0).ok()?;
                let per_cpu = cursors
                    .iter()
                    .map(|c| {
                        let (index, _) = rules::rr_step(&info, *c)?;
                        table
                            .get((index - info.table_base) as usize)
                            .and_then(|id| addr_of(*id))
                    })
                    .collect();
                Some(NextChoice::RoundRobin {
                    len: info.table_size,
                    per_cpu,
                })
            }
            rules::Pick::LeastConn => {
                let weight = |id: u32| {
                    state
                        .backends
                        .iter()
                        .find(|(_, i)| *i == id)
                        .map_or(0, |(b, _)| b.weight)
                };
                let mut ids: Vec<u32> = table.to_vec();
                ids.sort_unstable();
                ids.dedup();
                let scored: Vec<(u32, u64, u32)> = ids
                    .iter()
                    .map(|id| {
                        let c = self.conns.get(*id);
                        (*id, rules::active_conns(&c), weight(*id))
                    })
                    .collect();
                let best = scored.iter().copied().reduce(|a, b| {
                    if rules::fewer_conns(b.1, b.2, a.1, a.2) {
                        b
                    } else {
                        a
                    }
                });
                let ties = best.map_or(0, |(_, n, w)| {
                    scored
                        .iter()
                        .filter(|(_, m, v)| {
                            !rules::fewer_conns(*m, *v, n, w) && !rules::fewer_conns(n, w, *m, *v)
                        })
                        .count()
                });
                Some(NextChoice::LeastConn {
                    exact: rules::lc_exact(&info),
                    candidates: if rules::lc_exact(&info) {
                        info.table_size
                    } else {
                        ids.len() as u32
                    },
                    best: best.and_then(|(id, n, w)| Some((addr_of(id)?, n, w))),
                    ties,
                })
            }
        }
    }

    pub(super) fn find_vip(&self, flow: &FlowKey) -> Option<(VipId, &VipState)> {
        let proto = match flow.proto {
            lb_common::PROTO_TCP => crate::model::Proto::Tcp,
            lb_common::PROTO_UDP => crate::model::Proto::Udp,
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

    /// Whether the data path looks up the entry of an established flow to
    /// `addr` and `proto` before its VIP: the entry-filter bit as the map
    /// holds it (`rules::entry_first`).
    pub fn entry_filtered(&self, addr: IpAddr, proto: crate::model::Proto) -> Result<bool> {
        let addr = lb_common::user::addr_words(addr).0;
        self.entry_filter
            .has(lb_common::entry_filter_bit(&addr, proto.number()))
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

    /// Every entry of the connection table, walked key by key (tests: an
    /// account independent of the batch scan the reconcile uses).
    pub fn conntrack_entries(&self) -> Vec<(FlowKey, ConnEntry)> {
        self.conntrack.iter().filter_map(|kv| kv.ok()).collect()
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

pub fn vip_key(vip: &VipId) -> VipKey {
    VipKey::new(vip.addr, vip.port, vip.proto.number())
}

pub(super) fn vip_info(s: &VipState) -> VipInfo {
    let mut flags = 0;
    if s.settings.stateless {
        flags |= VIP_F_STATELESS;
    }
    flags |= match s.settings.scheduler {
        Scheduler::Maglev => 0,
        Scheduler::SourceHash => VIP_F_SRC_HASH,
        Scheduler::RoundRobin => VIP_F_ROUND_ROBIN,
        Scheduler::LeastConnections => VIP_F_LEAST_CONN,
    };
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

/// The checksum of `state`'s live table: its size, the addresses of the
/// backends it holds (in address order) and, per slot, the rank of the
/// slot's backend among them. Backends outside the table (weight 0, down)
/// do not count: only the choices do.
pub(super) fn table_checksum(state: &VipState) -> Option<u64> {
    if state.live_size == 0 {
        return None;
    }
    let table = state.live()?;
    let in_table: std::collections::BTreeSet<u32> = table.iter().copied().collect();
    let mut addrs: Vec<(IpAddr, u32)> = state
        .backends
        .iter()
        .filter(|(_, id)| in_table.contains(id))
        .map(|(b, id)| (b.addr, *id))
        .collect();
    addrs.sort();
    let rank: StdHashMap<u32, u32> = addrs
        .iter()
        .enumerate()
        .map(|(i, (_, id))| (*id, i as u32))
        .collect();
    let mut h = Fnv1a::default();
    h.write(&(table.len() as u32).to_le_bytes());
    for (addr, _) in &addrs {
        match addr {
            IpAddr::V4(a) => h.write(&a.octets()),
            IpAddr::V6(a) => h.write(&a.octets()),
        }
    }
    for id in table {
        h.write(&rank.get(id).copied().unwrap_or(u32::MAX).to_le_bytes());
    }
    Some(h.0)
}

/// 64-bit FNV-1a: simple, stable across versions and machines (unlike std's
/// hasher), which is what a checksum compared between nodes needs.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}
