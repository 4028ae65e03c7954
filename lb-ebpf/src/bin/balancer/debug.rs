//! Stage 9: the decision trace (`lbctl debug on`; the rules are in
//! `lb_common::debug`). While no trace is on, a packet pays one array lookup
//! ([`enabled`]). While one is on, the balancer leaves the packet's decision
//! in a per-CPU scratch entry and tail-calls [`lb_trace`], which filters,
//! rate-limits and writes the aya-log record, then returns the balancer's
//! action. As a program of its own, the trace is verified once and uses a
//! stack of its own, so the packet path neither grows nor slows with it.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::{
    debug::{debug_take, debug_wanted, DebugBucket, DebugConfig, DebugDecision, DEBUG_ALL_VIPS},
    Counter, FlowKey,
};

use crate::{conntrack, Out};

/// Written by user space: whether to trace, which VIP, until when.
#[map]
pub static DEBUG: Array<DebugConfig> = Array::with_max_entries(1, 0);

/// Per CPU: the rate limit's token bucket.
#[map]
pub static DEBUG_BUCKET: PerCpuArray<DebugBucket> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the decision of the packet being traced.
#[map]
pub static DEBUG_SCRATCH: PerCpuArray<DebugDecision> = PerCpuArray::with_max_entries(1, 0);

/// Slot 0: [`lb_trace`], put there by user space.
#[map]
pub static DEBUG_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// What a packet's decision was, filled in by the stages that make it.
pub struct Trace {
    pub vip_id: u32,
    pub backend_id: u32,
    pub source: u32,
    /// A decision waits in the scratch entry for [`hand_over`].
    pub pending: bool,
}

impl Trace {
    #[inline(always)]
    pub fn new() -> Trace {
        Trace {
            vip_id: DEBUG_ALL_VIPS,
            backend_id: lb_common::NO_BACKEND,
            source: lb_common::debug::DEBUG_SOURCE_NONE,
            pending: false,
        }
    }

    /// Keeps the decision about `flow` for the trace, if one is on.
    /// Traffic for no VIP is not traced: it is not a decision of the
    /// balancer.
    #[inline(always)]
    pub fn record(&mut self, flow: &FlowKey, out: Out) {
        if !enabled() {
            return;
        }
        let counter = counter_of(out);
        if counter == Counter::PassNotVip as u32 {
            return;
        }
        if let Some(d) = DEBUG_SCRATCH.get_ptr_mut(0) {
            // SAFETY: this CPU's scratch entry.
            unsafe {
                *d = DebugDecision {
                    flow: *flow,
                    action: crate::action(out),
                    counter,
                    vip_id: self.vip_id,
                    backend_id: self.backend_id,
                    source: self.source,
                    _pad: 0,
                }
            };
            self.pending = true;
        }
    }
}

/// Whether any trace is on: the one lookup every packet pays.
#[inline(always)]
pub fn enabled() -> bool {
    DEBUG.get(0).is_some_and(|c| c.enabled != 0)
}

/// Tail-calls the trace program for a recorded decision; returns only if
/// that fails (no program in the slot), and the caller returns its action.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext) {
    // SAFETY: slot 0 holds an XDP program or nothing.
    let _ = unsafe { DEBUG_PROG.tail_call(ctx, 0) };
}

/// The trace program: writes the record of the decision in the scratch
/// entry (if the trace wants it and the bucket allows) and returns the
/// balancer's action for the packet.
#[xdp]
pub fn lb_trace(ctx: XdpContext) -> u32 {
    let Some(d) = DEBUG_SCRATCH.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let d = *d;
    if let Some(cfg) = DEBUG.get(0) {
        let now = conntrack::now_ns();
        if debug_wanted(cfg, d.vip_id, now) {
            if let Some(bucket) = DEBUG_BUCKET.get_ptr_mut(0) {
                // SAFETY: this CPU's copy of the bucket; only this program
                // writes it.
                if debug_take(unsafe { &mut *bucket }, now) {
                    write(&ctx, &d);
                }
            }
        }
    }
    d.action
}

#[inline(always)]
fn write(ctx: &XdpContext, d: &DebugDecision) {
    let f = &d.flow;
    aya_log_ebpf::info!(
        ctx,
        "lbtrace {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}",
        f.family as u32,
        f.src[0],
        f.src[1],
        f.src[2],
        f.src[3],
        f.dst[0],
        f.dst[1],
        f.dst[2],
        f.dst[3],
        u16::from_be(f.sport) as u32,
        u16::from_be(f.dport) as u32,
        f.proto as u32,
        d.action,
        d.counter,
        d.vip_id,
        d.backend_id,
        d.source
    );
}

/// The counter an outcome is reported with.
#[inline(always)]
pub fn counter_of(out: Out) -> u32 {
    match out {
        Out::Pass(c) | Out::Drop(c) => c as u32,
        Out::TooBig(_) => Counter::DropTooBig as u32,
        Out::Tx => Counter::ActionTx as u32,
        Out::Redirect => Counter::ActionRedirect as u32,
    }
}
