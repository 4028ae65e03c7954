//! Stage 4: the backend for a new flow, by the VIP's scheduler, from its
//! live array (`VipInfo::table_base`, `table_size`): the Maglev table, the
//! round-robin sequence or the least-connections candidates.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{
    rules::{self, Pick},
    ConnCount, Counter, VipInfo, LC_CHOICES, LC_EXACT_MAX, NO_BACKEND,
};

use crate::{
    maps::{self, BACKEND_CONNS, MAGLEV, RR_CURSOR},
    Out,
};

/// A new flow's backend: the scheduler's choice.
#[inline(always)]
pub fn new_flow(vip: &VipInfo, hash: u32) -> Result<u32, Out> {
    match rules::pick(vip.flags) {
        Pick::Hash => by_table(vip, hash),
        Pick::RoundRobin => round_robin(vip),
        Pick::LeastConn => least_conn(vip),
    }
}

/// The backend id in the slot `hash` selects. The VIP entry names the live
/// table (where it starts in `MAGLEV`) and its size together, so a concurrent
/// table switch is seen either wholly or not at all.
#[inline(always)]
pub fn by_table(vip: &VipInfo, hash: u32) -> Result<u32, Out> {
    let index = rules::table_index(vip, hash).ok_or(Out::Drop(Counter::DropNoBackend))?;
    slot(index)
}

/// The next backend of this CPU's walk through the VIP's sequence.
#[inline(always)]
fn round_robin(vip: &VipInfo) -> Result<u32, Out> {
    let cursor = RR_CURSOR
        .get_ptr_mut(vip.vip_id)
        .ok_or(Out::Drop(Counter::DropNoBackend))?;
    // SAFETY: this CPU's own slot; nothing else writes it while we run.
    let (index, next) =
        rules::rr_step(vip, unsafe { *cursor }).ok_or(Out::Drop(Counter::DropNoBackend))?;
    unsafe { *cursor = next };
    slot(index)
}

/// The candidate with the fewest active connections per weight: all of
/// them when the live array is the candidate list, else the best of
/// `LC_CHOICES` slots of the Maglev table sampled at random (a backend is
/// sampled in proportion to its weight). The scan starts at a random
/// candidate, so ties (idle backends) spread instead of all going to the
/// first one.
#[inline(always)]
fn least_conn(vip: &VipInfo) -> Result<u32, Out> {
    let size = vip.table_size;
    if size == 0 {
        return Err(Out::Drop(Counter::DropNoBackend));
    }
    let exact = rules::lc_exact(vip);
    let (tries, start) = if exact {
        (size, random() % size)
    } else {
        (LC_CHOICES, 0)
    };
    let mut best = NO_BACKEND;
    let (mut best_active, mut best_weight) = (0u64, 0u32);
    for i in 0..LC_EXACT_MAX {
        if i >= tries {
            break;
        }
        let pos = if exact {
            let p = start + i;
            if p >= size {
                p - size
            } else {
                p
            }
        } else {
            lb_common::maglev_slot(random(), size)
        };
        let id = slot(vip.table_base.wrapping_add(pos))?;
        let Some(b) = maps::backend(id) else { continue };
        let active = active(id);
        if best == NO_BACKEND || rules::fewer_conns(active, b.weight, best_active, best_weight) {
            (best, best_active, best_weight) = (id, active, b.weight);
        }
    }
    if best == NO_BACKEND {
        return Err(Out::Drop(Counter::DropNoBackend));
    }
    Ok(best)
}

/// A backend's active connections as the counters say now.
#[inline(always)]
fn active(id: u32) -> u64 {
    match BACKEND_CONNS.get(id) {
        Some(c) => rules::active_conns(&ConnCount {
            // Plain loads: each word is written whole.
            opened: unsafe { core::ptr::read_volatile(&c.opened) },
            closed: unsafe { core::ptr::read_volatile(&c.closed) },
        }),
        None => 0,
    }
}

#[inline(always)]
fn random() -> u32 {
    unsafe { bpf_get_prandom_u32() }
}

#[inline(always)]
fn slot(index: u32) -> Result<u32, Out> {
    let id = MAGLEV.get(index).copied().unwrap_or(NO_BACKEND);
    if id == NO_BACKEND {
        return Err(Out::Drop(Counter::DropNoBackend));
    }
    Ok(id)
}
