//! Stage 3: the connection table keeps an established flow on its backend
//! while the VIP's backend set changes.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use lb_common::{rules, ConnEntry, Counter, FlowKey, HashMode, VipInfo, CONN_TOUCH_NS, PROTO_TCP};

use crate::{maps, select, stats, Out};

/// The flow's backend: its table entry when that is live and still valid,
/// else the Maglev choice, recorded for the flow's next packets when `create`
/// (a TCP RST ends a flow rather than starting one, so it records nothing).
/// A `new_flow` (TCP SYN) always follows the table: an entry left by an
/// earlier connection on the same 5-tuple (a reused client port) must not
/// send a new connection to a backend that is drained or no longer its
/// table's choice. Returns the backend, the flow hash and whether the
/// connection table decided.
#[inline(always)]
pub fn lookup_or_select(
    flow: &FlowKey,
    vip: &VipInfo,
    mode: HashMode,
    create: bool,
    new_flow: bool,
) -> Result<(u32, u32, bool), Out> {
    let now = now_ns();
    let hit = if rules::consults_conntrack(vip.flags, new_flow) {
        lookup(flow, vip, now)
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
    if let Some((id, _)) = hit {
        return Ok((id, hash, true));
    }
    let id = select::by_table(vip, hash)?;
    if create {
        let entry = ConnEntry {
            backend_id: id,
            flow_hash: hash,
            last_seen_ns: now,
        };
        if maps::CONNTRACK.insert(flow, entry, 0).is_err() {
            stats::count(Counter::ConnInsertFailed);
        }
    }
    Ok((id, hash, false))
}

/// CLOCK_MONOTONIC at tick resolution: idle timeouts are seconds, and the
/// coarse clock is one memory read where the precise one reads the clock
/// source on every packet.
#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The flow's live entry: its backend and the hash it recorded.
#[inline(always)]
pub fn lookup(flow: &FlowKey, vip: &VipInfo, now: u64) -> Option<(u32, u32)> {
    let Some(entry) = maps::CONNTRACK.get_ptr_mut(flow) else {
        stats::count(Counter::ConnMiss);
        return None;
    };
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
        return None;
    }
    let id = entry.backend_id;
    let valid = maps::backend(id).is_some_and(|b| rules::conn_backend_valid(b, vip.vip_id));
    if !valid {
        stats::count(Counter::ConnStale);
        return None;
    }
    // Refresh at most once a second: a write per packet would bounce the
    // entry's cache line between CPUs for no gain in precision.
    if idle > CONN_TOUCH_NS {
        entry.last_seen_ns = now;
    }
    stats::count(Counter::ConnHit);
    Some((id, entry.flow_hash))
}
