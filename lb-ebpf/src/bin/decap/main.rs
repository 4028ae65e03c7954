//! The decap program, for backend hosts: strips an IPIP (IPv4-in-IPv4) or
//! IP6IP6 outer header addressed to one of this host's configured tunnel
//! addresses and hands the inner packet to the stack, so a backend needs no
//! ipip/ip6_tunnel kernel module to serve a VIP.
//!
//! `mss` is the optional MSS clamp for the same host (TC egress).
#![no_std]
#![no_main]

mod mss;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    counters::{DecapCounter, DECAP_COUNTER_COUNT},
    AddrKey, FAMILY_V4, FAMILY_V6, MAX_DECAP_ADDRS, PROTO_IPIP, PROTO_IPV6,
};
use lb_ebpf::{parse_l2, ptr_at, ETH_P_IP, ETH_P_IPV6};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

/// Tunnel endpoint addresses of this host (`proto` 0); the value is unused.
#[map]
pub static DECAP_ADDRS: HashMap<AddrKey, u32> = HashMap::with_max_entries(MAX_DECAP_ADDRS, 0);

/// Decap's outcome counters, one slot per `lb_common::counters::DecapCounter`,
/// per CPU.
#[map]
static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DECAP_COUNTER_COUNT, 0);

#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    let (counter, action) = match decap(&ctx) {
        Ok(()) => (DecapCounter::Decapsulated, xdp_action::XDP_PASS),
        Err(c) => (
            c,
            if c == DecapCounter::Malformed {
                xdp_action::XDP_DROP
            } else {
                xdp_action::XDP_PASS
            },
        ),
    };
    if let Some(v) = DECAP_STATS.get_ptr_mut(counter as u32) {
        unsafe { *v += 1 };
    }
    action
}

#[inline(always)]
fn decap(ctx: &XdpContext) -> Result<(), DecapCounter> {
    let l2 = parse_l2(ctx).ok_or(DecapCounter::Passed)?;
    let l3 = l2.l3_off;
    let outer_len = match l2.proto {
        ETH_P_IP => {
            let ip: *const Ipv4Hdr = ptr_at(ctx, l3).ok_or(DecapCounter::Passed)?;
            let ip = unsafe { &*ip };
            if ip.proto != PROTO_IPIP
                || !ours([u32::from_ne_bytes(ip.dst_addr), 0, 0, 0], FAMILY_V4)
            {
                return Err(DecapCounter::Passed);
            }
            let hlen = ((ip.vihl & 0x0f) as usize) * 4;
            let frags = u16::from_be_bytes(ip.frags);
            // A fragmented tunnel packet would need reassembly first.
            if hlen < 20 || frags & 0x3fff != 0 {
                return Err(DecapCounter::Malformed);
            }
            hlen
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(ctx, l3).ok_or(DecapCounter::Passed)?;
            let ip = unsafe { &*ip };
            let dst = ip.dst_addr;
            let w = |i: usize| u32::from_ne_bytes([dst[i], dst[i + 1], dst[i + 2], dst[i + 3]]);
            if ip.next_hdr != PROTO_IPV6 || !ours([w(0), w(4), w(8), w(12)], FAMILY_V6) {
                return Err(DecapCounter::Passed);
            }
            40
        }
        _ => return Err(DecapCounter::Passed),
    };
    // The inner header must be there, of the same family as the outer.
    let inner: *const u8 = ptr_at(ctx, l3 + outer_len).ok_or(DecapCounter::Malformed)?;
    let version = unsafe { *inner } >> 4;
    if (l2.proto == ETH_P_IP && version != 4) || (l2.proto == ETH_P_IPV6 && version != 6) {
        return Err(DecapCounter::Malformed);
    }
    strip(ctx, l3, outer_len)
}

#[inline(always)]
fn ours(addr: lb_common::Addr, family: u8) -> bool {
    let key = AddrKey {
        addr,
        family,
        proto: 0,
        _pad: [0; 2],
    };
    unsafe { DECAP_ADDRS.get(key).is_some() }
}

/// Moves the link-layer header (with its VLAN tag, if any) forward over the
/// outer IP header, then drops the bytes in front of it. The EtherType stays:
/// the inner packet has the outer one's family.
#[inline(always)]
fn strip(ctx: &XdpContext, l3: usize, outer_len: usize) -> Result<(), DecapCounter> {
    let l2: *const [u8; 18] = ptr_at(ctx, 0).ok_or(DecapCounter::Malformed)?;
    let saved = unsafe { *l2 };
    if l3 == 14 {
        let dst: *mut [u8; 14] = ptr_at(ctx, outer_len).ok_or(DecapCounter::Malformed)?;
        let mut h = [0u8; 14];
        h.copy_from_slice(&saved[..14]);
        unsafe { *dst = h };
    } else {
        let dst: *mut [u8; 18] = ptr_at(ctx, outer_len).ok_or(DecapCounter::Malformed)?;
        unsafe { *dst = saved };
    }
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(DecapCounter::Malformed);
    }
    Ok(())
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
