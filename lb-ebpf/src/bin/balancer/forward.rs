//! Stage 5: rewrite the frame for its backend and send it.
//!
//! `ipip` puts a fresh outer IPv4 (IPv6) header in front of the untouched
//! IPv4 (IPv6) datagram; `l2dsr` leaves the datagram alone and only changes
//! the MAC addresses. The next hop comes from the backend's map entry when
//! user space has resolved it, else from `bpf_fib_lookup`.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT,
    },
    helpers::generated::{bpf_fib_lookup, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    outer_source_v4, outer_source_v6, rules, Addr, Backend, Counter, LbConfig, VipInfo,
    BACKEND_F_ACTIVE, BACKEND_F_NEXTHOP, FAMILY_V4, PROTO_IPIP, PROTO_IPV6, VIP_F_L2DSR,
};
use lb_ebpf::{
    field32, ipv4_checksum_words, ptr_at, unaligned, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPV4_HLEN,
    IPV6_HLEN, VLAN_HLEN,
};

use crate::{maps, maps::Chosen, parse::Packet, stats, Out};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const OUTER_TTL: u8 = 64;

/// Where a frame leaves and with which MAC addresses.
pub struct NextHop {
    pub ifindex: u32,
    /// The destination and source MAC addresses as the first twelve bytes
    /// of the Ethernet header, in three words ([`NextHop::macs`]), so they
    /// are written with three stores.
    pub macs: [u32; 3],
    /// The egress MTU; 0: not known (no check).
    pub mtu: u32,
}

impl NextHop {
    /// The MAC words of a next hop held as byte arrays (on the stack).
    #[inline(always)]
    pub fn macs(dst: &[u8; 6], src: &[u8; 6]) -> [u32; 3] {
        [
            u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]),
            u32::from_ne_bytes([dst[4], dst[5], src[0], src[1]]),
            u32::from_ne_bytes([src[2], src[3], src[4], src[5]]),
        ]
    }

    /// The MAC words of a backend's resolved next hop, read from its map
    /// entry a word at a time.
    #[inline(always)]
    fn backend_macs(b: &Backend) -> [u32; 3] {
        let dst = b.dst_mac.as_ptr();
        let src = b.src_mac.as_ptr();
        // SAFETY: both are six bytes of the backend's map value.
        unsafe {
            [
                unaligned::load32(dst),
                unaligned::load16(dst.add(4)) as u32 | (unaligned::load16(src) as u32) << 16,
                unaligned::load32(src.add(2)),
            ]
        }
    }
}

/// Sends the packet to `chosen`, a backend of `vip`, counting it against
/// both. `hash` is the flow hash (it picks the outer source in a prefix).
#[inline(always)]
pub fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    vip: &VipInfo,
    chosen: Chosen,
    hash: u32,
    frame_len: u64,
) -> Result<Out, Out> {
    let backend = match chosen.entry {
        Some(b) if b.flags & BACKEND_F_ACTIVE != 0 => b,
        _ => return Err(Out::Drop(Counter::DropBadBackend)),
    };
    let l2dsr = vip.flags & VIP_F_L2DSR != 0;
    // IPIP carries IPv4 in IPv4 and IPv6 in IPv6 only; user space refuses
    // other pairings, this guards against a racing update.
    if !l2dsr && backend.family != pkt.flow.family {
        return Err(Out::Drop(Counter::DropBadBackend));
    }
    let cfg = maps::config();
    let overhead = rules::encap_overhead(l2dsr, pkt.flow.family);
    let nh = next_hop(ctx, pkt, backend, cfg, l2dsr, overhead, hash)?;
    if nh.mtu != 0 && pkt.ip_len + overhead > nh.mtu as usize {
        return Err(Out::TooBig(nh.mtu.saturating_sub(overhead as u32)));
    }
    stats::add_traffic(&maps::VIP_STATS, vip.vip_id, frame_len);
    stats::add_traffic(&maps::BACKEND_STATS, chosen.id, frame_len);
    if l2dsr {
        set_macs(ctx, &nh)?;
    } else if pkt.flow.family == FAMILY_V4 {
        trim_padding(ctx, pkt)?;
        encap_v4(ctx, pkt, &outer_source_v4(cfg, hash), &backend.addr, &nh)?;
    } else {
        trim_padding(ctx, pkt)?;
        encap_v6(
            ctx,
            pkt,
            &outer_source_v6(cfg, hash),
            &backend.addr,
            hash,
            &nh,
        )?;
    }
    Ok(emit(ctx, nh.ifindex))
}

/// The resolved next hop from the backend entry, or a FIB lookup from the
/// balancer's point of view (`BPF_FIB_LOOKUP_OUTPUT`: the outer packet is
/// ours, so the ingress device's forwarding setting does not apply).
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    pkt: &Packet,
    backend: &Backend,
    cfg: &LbConfig,
    l2dsr: bool,
    overhead: usize,
    hash: u32,
) -> Result<NextHop, Out> {
    if backend.flags & BACKEND_F_NEXTHOP != 0 {
        return Ok(NextHop {
            ifindex: backend.ifindex,
            macs: NextHop::backend_macs(backend),
            mtu: backend.mtu as u32,
        });
    }
    stats::count(Counter::NexthopFib);
    let v4 = backend.family == FAMILY_V4;
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = if v4 { AF_INET } else { AF_INET6 };
    p.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    p.__bindgen_anon_1.tot_len = (pkt.ip_len + overhead) as u16;
    if l2dsr {
        p.l4_protocol = pkt.flow.proto;
    } else {
        p.l4_protocol = if v4 { PROTO_IPIP } else { PROTO_IPV6 };
    }
    if v4 {
        p.__bindgen_anon_3.ipv4_src = outer_source_v4(cfg, hash);
        p.__bindgen_anon_4.ipv4_dst = backend.addr[0];
    } else {
        p.__bindgen_anon_3.ipv6_src = outer_source_v6(cfg, hash);
        p.__bindgen_anon_4.ipv6_dst = backend.addr;
    }
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut p,
            size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    match rc as u32 {
        // The lookup checked the MTU against `tot_len` already.
        BPF_FIB_LKUP_RET_SUCCESS => Ok(NextHop {
            ifindex: p.ifindex,
            macs: NextHop::macs(&p.dmac, &p.smac),
            mtu: 0,
        }),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            let mtu = unsafe { p.__bindgen_anon_1.mtu_result } as u32;
            Err(Out::TooBig(mtu.saturating_sub(overhead as u32)))
        }
        // No neighbour entry yet: hand the packet to the kernel (counted)
        // rather than guess a MAC. lbd's resolver solicits the backend's
        // neighbour (NTF_USE) as soon as the backend is configured and then
        // fills in the entry, after which this path is not taken.
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(Out::Pass(Counter::NexthopUnresolved)),
        _ => Err(Out::Drop(Counter::DropFibFailed)),
    }
}

/// L2 DSR: the frame goes to the backend's MAC, from ours.
#[inline(always)]
fn set_macs(ctx: &XdpContext, nh: &NextHop) -> Result<(), Out> {
    write_macs(ctx, nh, Out::Drop(Counter::DropTruncated))
}

/// The first twelve bytes of the frame: the next hop's MAC addresses.
#[inline(always)]
fn write_macs(ctx: &XdpContext, nh: &NextHop, short: Out) -> Result<(), Out> {
    let macs: *mut [u32; 3] = ptr_at(ctx, 0).ok_or(short)?;
    let p: *mut u8 = macs.cast();
    // SAFETY: `ptr_at` checked the twelve bytes are inside the frame.
    unsafe {
        unaligned::store32(p, nh.macs[0]);
        unaligned::store32(p.add(4), nh.macs[1]);
        unaligned::store32(p.add(8), nh.macs[2]);
    }
    Ok(())
}

/// Drops Ethernet padding after the datagram, so the tunnel carries exactly
/// the datagram and the outer length is right.
#[inline(always)]
fn trim_padding(ctx: &XdpContext, pkt: &Packet) -> Result<(), Out> {
    let frame = ctx.data_end() - ctx.data();
    let used = pkt.l2.l3_off + pkt.ip_len;
    if frame > used {
        let excess = (frame - used) as i32;
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -excess) } != 0 {
            return Err(Out::Drop(Counter::DropNoHeadroom));
        }
    }
    Ok(())
}

/// Makes room for an outer header of `len` bytes and writes the Ethernet
/// header (and the VLAN tag the frame came with) in front of it. Returns
/// the frame's start, checked to hold `W` (the Ethernet header, a tag and
/// as much of the outer header as the caller writes through it), and the
/// outer header's offset. One bounds check for everything written in front
/// of the datagram: each check is an exit the program must prepare for,
/// and five of them cost more than the stores.
#[inline(always)]
pub fn push_outer<W>(
    ctx: &XdpContext,
    pkt: &Packet,
    len: usize,
    ether_type: u16,
    nh: &NextHop,
) -> Result<(*mut u8, usize), Out> {
    const { assert!(size_of::<W>() >= ETH_HLEN + VLAN_HLEN) };
    let tagged = pkt.l2.l3_off > ETH_HLEN;
    let mut tag = 0u32;
    if tagged {
        let t: *const [u8; 4] =
            ptr_at(ctx, ETH_HLEN - 2).ok_or(Out::Drop(Counter::DropTruncated))?;
        tag = field32(unsafe { &*t });
    }
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(len as i32)) } != 0 {
        return Err(Out::Drop(Counter::DropNoHeadroom));
    }
    let front: *mut W = ptr_at(ctx, 0).ok_or(Out::Drop(Counter::DropNoHeadroom))?;
    let p: *mut u8 = front.cast();
    let et = ether_type.to_be();
    // SAFETY: `ptr_at` checked that `W`, at least the Ethernet header and
    // a tag, is inside the frame.
    unsafe {
        unaligned::store32(p, nh.macs[0]);
        unaligned::store32(p.add(4), nh.macs[1]);
        unaligned::store32(p.add(8), nh.macs[2]);
        if tagged {
            unaligned::store32(p.add(ETH_HLEN - 2), tag);
            unaligned::store16(p.add(ETH_HLEN + 2), et);
            Ok((p, ETH_HLEN + VLAN_HLEN))
        } else {
            unaligned::store16(p.add(ETH_HLEN - 2), et);
            Ok((p, ETH_HLEN))
        }
    }
}

/// Only the Ethernet header and a tag: `push_outer`'s window for callers
/// that write the rest themselves.
pub type FrontL2 = [u8; ETH_HLEN + VLAN_HLEN];
/// The frame's front as far as an outer IPv4 (IPv6) header reaches with a
/// VLAN tag: the window for the encapsulations. Every frame that gets one
/// is longer (the outer header precedes at least the inner one).
type Front4 = [u8; ETH_HLEN + VLAN_HLEN + IPV4_HLEN];
type Front6 = [u8; ETH_HLEN + VLAN_HLEN + IPV6_HLEN];

/// Stores header words at `p + off`.
///
/// # Safety
/// `off + 4 * N` bytes from `p` must be inside the frame (`push_outer`'s
/// window).
#[inline(always)]
unsafe fn store_words<const N: usize>(p: *mut u8, off: usize, words: &[u32; N]) {
    let mut i = 0;
    while i < N {
        unsafe { unaligned::store32(p.add(off + 4 * i), words[i]) };
        i += 1;
    }
}

/// IPv4-in-IPv4 (RFC 2003): fresh TTL, the inner TOS and DF copied. Built
/// as five words in memory order and written with five stores.
#[inline(always)]
fn encap_v4(
    ctx: &XdpContext,
    pkt: &Packet,
    src: &u32,
    dst: &Addr,
    nh: &NextHop,
) -> Result<(), Out> {
    let total = ((pkt.ip_len + IPV4_HLEN) as u16).to_be() as u32;
    let frag = if pkt.df { 0x40u32 } else { 0 };
    let mut h = [
        0x45 | (pkt.tos as u32) << 8 | total << 16,
        pkt.ip_id.to_be() as u32 | frag << 16,
        OUTER_TTL as u32 | (PROTO_IPIP as u32) << 8,
        *src,
        dst[0],
    ];
    h[2] |= (ipv4_checksum_words(&h) as u32) << 16;
    let (p, l3) = push_outer::<Front4>(ctx, pkt, IPV4_HLEN, ETH_P_IP, nh)?;
    // SAFETY: the header ends at most at `Front4`'s end.
    unsafe { store_words(p, l3, &h) };
    Ok(())
}

/// IPv6-in-IPv6 (RFC 2473): fresh hop limit, the inner traffic class copied,
/// the flow label from the flow hash so the path can spread flows.
#[inline(always)]
fn encap_v6(
    ctx: &XdpContext,
    pkt: &Packet,
    src: &Addr,
    dst: &Addr,
    hash: u32,
    nh: &NextHop,
) -> Result<(), Out> {
    let label = hash & 0x000f_ffff;
    let mut h = [0u32; IPV6_HLEN / 4];
    h[0] = (6u32 << 28 | (pkt.tos as u32) << 20 | label).to_be();
    h[1] = ((pkt.ip_len as u32) << 16 | (PROTO_IPV6 as u32) << 8 | OUTER_TTL as u32).to_be();
    h[2] = src[0];
    h[3] = src[1];
    h[4] = src[2];
    h[5] = src[3];
    h[6] = dst[0];
    h[7] = dst[1];
    h[8] = dst[2];
    h[9] = dst[3];
    let (p, l3) = push_outer::<Front6>(ctx, pkt, IPV6_HLEN, ETH_P_IPV6, nh)?;
    // SAFETY: the header ends at most at `Front6`'s end.
    unsafe { store_words(p, l3, &h) };
    Ok(())
}

/// Out of the interface it came in on, or redirected to another.
#[inline(always)]
fn emit(ctx: &XdpContext, ifindex: u32) -> Out {
    if ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
        return Out::Tx;
    }
    match maps::TX_PORTS.redirect(ifindex, 0) {
        Ok(_) => Out::Redirect,
        Err(_) => Out::Drop(Counter::DropRedirectFailed),
    }
}
