//! Stage 3: the connection table keeps an established flow on its backend
//! while the VIP's backend set changes, and (least-connections) counts the
//! flow as active on its backend from its first packet until its FIN or
//! RST, or until its entry is found expired or stale.

use aya_ebpf::helpers::generated::bpf_jiffies64;
use lb_common::{
    rules, ConnEntry, Counter, FlowKey, HashMode, VipInfo, CONN_F_CLOSED, CONN_F_COUNTED,
    CONN_F_OPENING, CONN_TOUCH_NS, PROTO_TCP,
};

use crate::{atomic, maps, maps::Chosen, select, stats, Out};

/// What the packet says about its flow's life.
#[derive(Clone, Copy)]
pub struct Life {
    /// Starts a connection (TCP SYN): follows the scheduler, not an entry
    /// left by an earlier connection on the same 5-tuple (a reused client
    /// port), which must not send it to a backend that is drained or no
    /// longer the scheduler's choice; but a retransmitted SYN keeps the
    /// first one's backend ([`rules::syn_keeps_entry`]).
    pub starts: bool,
    /// Ends it (TCP FIN or RST): un-counted from its backend's active
    /// connections.
    pub ends: bool,
    /// May record an entry (a TCP RST ends a flow rather than starting one).
    pub records: bool,
}

/// What looking up a packet's entry before its VIP found
/// (`rules::entry_first`).
#[derive(Clone, Copy)]
pub enum Seen {
    /// Not looked up yet: a TCP SYN, which needs its VIP first.
    NotYet,
    /// No entry.
    Missing,
    /// An entry whose VIP it could not vouch for: checked once the VIP is
    /// known.
    Entry(*mut ConnEntry),
    /// An entry found dead, un-counted and counted as such: the flow is
    /// placed afresh.
    Dead,
}

/// An established flow's VIP, backend and hash, from its entry alone: the
/// entry's backend names the VIP id, and `VIP_BY_ID` says whether that VIP
/// is the flow's ([`rules::owner_serves`]). Else what the lookup found, for
/// the path through `VIPS`.
#[inline(always)]
pub fn established(flow: &FlowKey, life: Life) -> Result<(VipInfo, Chosen, u32), Seen> {
    let Some(entry) = maps::CONNTRACK.get_ptr_mut(flow) else {
        return Err(Seen::Missing);
    };
    // SAFETY: a pointer into the map's value (see `check`).
    let (id, kept) = unsafe { ((*entry).backend_id, (*entry).flow_hash) };
    let backend = Chosen::read(id);
    let owner = backend
        .entry
        .and_then(|b| Some((b.vip_id, maps::vip_by_id(b.vip_id)?)));
    let vip = match owner {
        // An entry without its hash (written by user space) takes the
        // `VIPS` path, which hashes the flow.
        Some((vip_id, o)) if kept != 0 && rules::owner_serves(o, flow) => VipInfo {
            vip_id,
            flags: o.flags,
            // No table: this VIP serves a hit, never a selection (an empty
            // table drops rather than picks from another VIP's slots).
            ..VipInfo::default()
        },
        _ => return Err(Seen::Entry(entry)),
    };
    match check(entry, backend, flow, &vip, now_ns(), life) {
        Some(hash) => Ok((vip, backend, hash)),
        None => Err(Seen::Dead),
    }
}

/// The flow's backend: its table entry when that is live and still valid,
/// else the scheduler's choice, recorded for the flow's next packets.
/// `seen` is what an earlier lookup of the entry found. Returns the
/// backend, the flow hash and whether the connection table decided.
#[inline(always)]
pub fn lookup_or_select(
    flow: &FlowKey,
    vip: &VipInfo,
    mode: HashMode,
    life: Life,
    seen: Seen,
) -> Result<(Chosen, u32, bool), Out> {
    let now = now_ns();
    let hit = if rules::consults_conntrack(vip.flags, life.starts) {
        // The lookup if none was done yet, then one `check` for both
        // (each inlined call of it is a copy in the program).
        let seen = match seen {
            Seen::NotYet => match maps::CONNTRACK.get_ptr_mut(flow) {
                Some(entry) => Seen::Entry(entry),
                None => Seen::Missing,
            },
            other => other,
        };
        match seen {
            Seen::Entry(entry) => check_found(entry, flow, vip, now, life),
            Seen::Missing => {
                stats::count(Counter::ConnMiss);
                None
            }
            Seen::NotYet | Seen::Dead => None,
        }
    } else {
        stats::count(Counter::ConnMiss);
        None
    };
    // A hit brings the hash its entry kept (0: not known), so only a miss
    // hashes the flow; one call site keeps the program small.
    let kept = hit.map_or(0, |(_, h)| h);
    let hash = if kept != 0 {
        kept
    } else {
        lb_common::flow_hash(flow, mode)
    };
    if let Some((backend, _)) = hit {
        return Ok((backend, hash, true));
    }
    let id = select::new_flow(vip, hash)?;
    if life.records {
        record(flow, vip, id, hash, now, life);
    }
    Ok((Chosen::read(id), hash, false))
}

/// Records a new flow's entry; for least-connections, counts it as opened
/// on its backend once the entry exists (a flow whose first packet seen
/// ends it is recorded, not counted).
#[inline(always)]
fn record(flow: &FlowKey, vip: &VipInfo, id: u32, hash: u32, now: u64, life: Life) {
    let counts = rules::counts_conns(vip.flags) && !life.ends;
    let mut flags = if counts { CONN_F_COUNTED } else { 0 };
    if life.starts {
        flags |= CONN_F_OPENING;
    }
    let entry = ConnEntry {
        backend_id: id,
        flow_hash: hash,
        last_seen_ns: now,
        flags,
    };
    if maps::CONNTRACK.insert(flow, entry, 0).is_err() {
        stats::count(Counter::ConnInsertFailed);
        return;
    }
    if counts {
        add_count(id, false);
    }
}

/// One more flow opened (`closed` false) or closed on backend `id`.
#[inline(always)]
fn add_count(id: u32, closed: bool) {
    if let Some(c) = maps::BACKEND_CONNS.get_ptr_mut(id) {
        let word = if closed {
            unsafe { &raw mut (*c).closed }
        } else {
            unsafe { &raw mut (*c).opened }
        };
        atomic::add(word, 1);
    }
}

/// CLOCK_MONOTONIC at tick resolution, from the tick counter the verifier
/// reads in place (`lb_common::clock`): no call on the packet path.
#[inline(always)]
pub fn now_ns() -> u64 {
    let (tick_ns, offset_ns) = maps::tick_clock();
    lb_common::clock::tick_clock_ns(unsafe { bpf_jiffies64() }, tick_ns, offset_ns)
}

/// The flow's backend from its live entry, looked up (see [`check`]).
#[inline(always)]
pub fn lookup(flow: &FlowKey, vip: &VipInfo, now: u64, life: Life) -> Option<Chosen> {
    let Some(entry) = maps::CONNTRACK.get_ptr_mut(flow) else {
        stats::count(Counter::ConnMiss);
        return None;
    };
    check_found(entry, flow, vip, now, life).map(|(backend, _)| backend)
}

/// A found entry's backend, read once, and the hash it recorded, if the
/// entry is live and still valid ([`check`]).
#[inline(always)]
fn check_found(
    entry: *mut ConnEntry,
    flow: &FlowKey,
    vip: &VipInfo,
    now: u64,
    life: Life,
) -> Option<(Chosen, u32)> {
    // SAFETY: a pointer into the map's value (see `check`).
    let backend = Chosen::read(unsafe { (*entry).backend_id });
    check(entry, backend, flow, vip, now, life).map(|hash| (backend, hash))
}

/// A found entry, if live and still valid (`backend`: the one it names, as
/// read by the caller): the hash it recorded. An entry found dead (expired,
/// stale, or an earlier connection a SYN replaces) is un-counted before the
/// caller replaces it, and so is a live one when the packet ends the flow.
#[inline(always)]
fn check(
    entry: *mut ConnEntry,
    backend: Chosen,
    flow: &FlowKey,
    vip: &VipInfo,
    now: u64,
    life: Life,
) -> Option<u32> {
    // SAFETY: a pointer into the map's value; racing writers only ever store
    // whole u32/u64 fields, so a torn read cannot produce an invalid value.
    let entry = unsafe { &mut *entry };
    let idle = now.saturating_sub(entry.last_seen_ns);
    let timeout = if flow.proto == PROTO_TCP {
        maps::tcp_idle_timeout_ns()
    } else {
        maps::udp_idle_timeout_ns()
    };
    if !rules::conn_entry_live(idle, timeout) {
        stats::count(Counter::ConnExpired);
        uncount(entry);
        return None;
    }
    let valid = backend
        .entry
        .is_some_and(|b| rules::conn_backend_valid(b, vip.vip_id));
    if !valid {
        stats::count(Counter::ConnStale);
        uncount(entry);
        return None;
    }
    if life.starts && !rules::syn_keeps_entry(entry.flags) {
        // An earlier connection on this 5-tuple: the SYN is placed afresh.
        stats::count(Counter::ConnStale);
        uncount(entry);
        return None;
    }
    // Refresh at most once a second: a write per packet would bounce the
    // entry's cache line between CPUs for no gain in precision.
    if idle > CONN_TOUCH_NS {
        entry.last_seen_ns = now;
    }
    // Plain reads first: the atomics below run once per flow at most.
    if !life.starts && entry.flags & CONN_F_OPENING != 0 {
        atomic::and(&raw mut entry.flags, !CONN_F_OPENING);
    }
    if life.ends {
        uncount(entry);
    } else if entry.flags & CONN_F_COUNTED == 0 && rules::counts_conns(vip.flags) {
        count_late(entry);
    }
    stats::count(Counter::ConnHit);
    Some(entry.flow_hash)
}

/// Counts a flow that was placed before its VIP switched to
/// least-connections, at its first packet since, once.
#[inline(always)]
fn count_late(entry: &mut ConnEntry) {
    let before = atomic::fetch_or(&raw mut entry.flags, CONN_F_COUNTED);
    if before & (CONN_F_COUNTED | CONN_F_CLOSED) == 0 {
        add_count(entry.backend_id, false);
    }
}

/// Counts a counted flow as closed on its backend, once: the flag is set
/// with an atomic or, and only the CPU that set it counts (a FIN seen
/// twice, a FIN then an RST, two CPUs at once).
#[inline(always)]
fn uncount(entry: &mut ConnEntry) {
    // A plain read first: most entries are not counted, or already closed,
    // and need no atomic.
    if !rules::conn_open(entry.flags) {
        return;
    }
    let before = atomic::fetch_or(&raw mut entry.flags, CONN_F_CLOSED);
    if !rules::conn_open(before) {
        return;
    }
    add_count(entry.backend_id, true);
    stats::count(Counter::ConnUncounted);
}
