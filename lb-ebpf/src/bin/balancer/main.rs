//! The balancer: an XDP program that finds the VIP a packet is for, keeps the
//! flow on its backend, picks a backend for new flows with Maglev, and
//! forwards the packet at the driver (IPIP/IP6IP6 or L2 DSR).
//!
//! Stages, each in its own module: `parse` → VIP lookup (here) → `conntrack`
//! / `select` → `forward`, except that a packet of an established flow finds
//! its connection-table entry before its VIP (`place`); `icmp` is the path
//! for ICMP errors about VIP flows.
//! Every packet ends in exactly one [`Out`], which `stats` counts, and which
//! `debug` writes to the decision trace while one is on.
#![no_std]
#![no_main]
// The atomic intrinsics (`atomic.rs`): the target's core has no fetch ops.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod atomic;
mod conntrack;
mod debug;
mod forward;
mod icmp;
mod maps;
mod parse;
mod select;
mod stats;
mod toobig;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    debug::{DEBUG_SOURCE_CONNTRACK, DEBUG_SOURCE_TABLE},
    rules, Counter, FlowKey, HashMode, VipInfo,
};

use crate::{conntrack::Seen, debug::Trace, maps::Chosen, parse::Packet};

/// How a packet leaves the program.
#[derive(Clone, Copy)]
pub enum Out {
    /// To the kernel stack, with the reason counted.
    Pass(Counter),
    /// Dropped, with the reason counted.
    Drop(Counter),
    Tx,
    Redirect,
    /// Too big for the egress MTU once encapsulated: answered by the
    /// `toobig` program, with the largest datagram that fits.
    TooBig(u32),
}

// Inlined into the entry point the macro makes: the tail call must not end
// up in a subprogram (the kernel refuses those without BTF).
#[xdp]
#[inline(always)]
pub fn lb_balancer(ctx: XdpContext) -> u32 {
    let mut trace = Trace::new();
    let out = match balance(&ctx, &mut trace) {
        Ok(out) | Err(out) => out,
    };
    if let Out::TooBig(fits) = out {
        // Returns only if the answering program is missing.
        toobig::hand_over(&ctx, fits);
    }
    let action = stats::finish(out);
    if trace.pending {
        debug::hand_over(&ctx);
    }
    action
}

#[inline(always)]
fn balance(ctx: &XdpContext, trace: &mut Trace) -> Result<Out, Out> {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let pkt = parse::parse(ctx)?;
    let out = match decide(ctx, &pkt, frame_len, trace) {
        Ok(out) | Err(out) => out,
    };
    trace.record(&pkt.flow, out);
    Ok(out)
}

/// Everything after parsing: the VIP, the backend, the way out.
#[inline(always)]
fn decide(ctx: &XdpContext, pkt: &Packet, frame_len: u64, trace: &mut Trace) -> Result<Out, Out> {
    // Fragments first: a fragment of an ICMP message is a fragment.
    if pkt.fragment {
        return serve_fragment(ctx, pkt, frame_len);
    }
    if rules::is_icmp(pkt.flow.family, pkt.flow.proto, pkt.fragment) {
        return icmp::handle(ctx, pkt, frame_len);
    }
    let (vip, backend, hash, hit) = place(pkt)?;
    trace.vip_id = vip.vip_id;
    trace.backend_id = backend.id;
    trace.source = if hit {
        DEBUG_SOURCE_CONNTRACK
    } else {
        DEBUG_SOURCE_TABLE
    };
    forward::to_backend(ctx, pkt, &vip, backend, hash, frame_len)
}

/// A whole TCP or UDP packet's VIP and backend, the flow hash, and whether
/// the connection table decided. A packet of an established flow finds its
/// entry first, and through it its VIP (`conntrack::established`); the
/// others, and entries that cannot vouch for their VIP, look the VIP up.
#[inline(always)]
fn place(pkt: &Packet) -> Result<(VipInfo, Chosen, u32, bool), Out> {
    let life = conntrack::Life {
        starts: pkt.tcp_syn,
        ends: pkt.tcp_fin || pkt.tcp_rst,
        records: !pkt.tcp_rst,
    };
    let mut seen = Seen::NotYet;
    if rules::entry_first(pkt.tcp_syn, || maps::entry_filtered(&pkt.flow)) {
        match conntrack::established(&pkt.flow, life) {
            Ok((vip, backend, hash)) => return Ok((vip, backend, hash, true)),
            Err(s) => seen = s,
        }
    }
    let vip = find_vip(&pkt.flow).ok_or(Out::Pass(Counter::PassNotVip))?;
    let mode = rules::hash_mode(vip.flags, HashMode::FiveTuple);
    let (id, hash, hit) = if rules::uses_conntrack(vip.flags) {
        conntrack::lookup_or_select(&pkt.flow, &vip, mode, life, seen)?
    } else {
        let hash = lb_common::flow_hash(&pkt.flow, mode);
        (Chosen::read(select::new_flow(&vip, hash)?), hash, false)
    };
    Ok((vip, id, hash, hit))
}

/// An IPv4 fragment: later fragments carry no ports, so every fragment of a
/// datagram is steered by addresses and protocol alone, through the VIP that
/// user space designated for fragments of that address and protocol, and
/// without the connection table (which is keyed by ports).
#[inline(always)]
fn serve_fragment(ctx: &XdpContext, pkt: &Packet, frame_len: u64) -> Result<Out, Out> {
    stats::count(Counter::Ipv4Fragment);
    let vip_key = maps::fragment_vip(&pkt.flow).ok_or(Out::Pass(Counter::PassNotVip))?;
    let vip = maps::vip(&vip_key).ok_or(Out::Pass(Counter::PassNotVip))?;
    let hash = lb_common::flow_hash(&pkt.flow, rules::fragment_hash_mode(vip.flags));
    let backend = Chosen::read(select::by_table(&vip, hash)?);
    forward::to_backend(ctx, pkt, &vip, backend, hash, frame_len)
}

/// The VIP for a flow, in the order `lb_common::rules` sets.
#[inline(always)]
pub fn find_vip(flow: &FlowKey) -> Option<VipInfo> {
    rules::find_vip(flow, maps::vip)
}

#[inline(always)]
pub fn action(out: Out) -> u32 {
    match out {
        Out::Pass(_) => xdp_action::XDP_PASS,
        Out::Drop(_) | Out::TooBig(_) => xdp_action::XDP_DROP,
        Out::Tx => xdp_action::XDP_TX,
        Out::Redirect => xdp_action::XDP_REDIRECT,
    }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
