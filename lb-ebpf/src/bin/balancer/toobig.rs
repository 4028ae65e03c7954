//! Stage 5a: a VIP packet that would leave larger than the egress MTU once
//! encapsulated is not sent. The client gets, from the VIP, ICMP
//! "fragmentation needed" (IPv4 with DF; RFC 792, 1191) or "packet too big"
//! (IPv6; RFC 4443, 8201) carrying the MTU that fits, built here over the
//! packet itself and sent back out of the interface it came in on, at most
//! `too_big_per_sec` a second per CPU. Without the answer the frame would
//! be dropped after `XDP_TX` by the egress device, and the client would
//! retransmit the same segment until it gives up.
//!
//! The balancer hands such a packet over by tail call to [`lb_too_big`], a
//! program of its own, with the size that fits in a per-CPU scratch entry:
//! the answer's checksum loop over up to 1232 quoted bytes is then verified
//! once, with a stack of its own, and costs the packet path nothing.
//!
//! IPv4 without DF is dropped, counted: the sender allows fragmentation,
//! but XDP cannot fragment, and handing the packet to the kernel would not
//! help, since the kernel has no tunnel to encapsulate it with. ICMP
//! messages are never answered with ICMP.

use aya_ebpf::{
    helpers::generated::bpf_xdp_adjust_tail,
    macros::{map, xdp},
    maps::{PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::{
    bucket::{self, TokenBucket},
    rules, Counter, LbConfig, FAMILY_V4, PROTO_ICMP, PROTO_ICMPV6,
};
use lb_ebpf::{ptr_at, ETH_P_IP, ETH_P_IPV6, IPV4_HLEN, IPV6_HLEN, MAX_OFFSET};

use crate::{
    conntrack, forward, maps,
    parse::{self, Packet},
    Out,
};

/// ICMP (and ICMPv6) header: type, code, checksum, 4 bytes of MTU.
const ICMP_HLEN: usize = 8;
/// How much of the packet the answer quotes: as much as fits in 576 bytes
/// (IPv4, RFC 1812) or 1280 (IPv6, RFC 4443), in whole 4-byte words.
const QUOTE_V4: usize = 576 - IPV4_HLEN - ICMP_HLEN;
const QUOTE_V6: usize = 1280 - IPV6_HLEN - ICMP_HLEN;
const TTL: u8 = 64;
const ICMP_FRAG_NEEDED: [u8; 2] = [3, 4];
const ICMPV6_PACKET_TOO_BIG: [u8; 2] = [2, 0];

/// Per CPU: the answers' rate limit.
#[map]
static TOO_BIG_BUCKET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the largest datagram that fits, for the packet handed over.
#[map]
static TOO_BIG_FITS: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Slot 0: [`lb_too_big`], put there by user space.
#[map]
pub static TOO_BIG_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Tail-calls the answering program; returns only if that fails.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, fits: u32) {
    if let Some(f) = TOO_BIG_FITS.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch entry.
        unsafe { *f = fits };
        let _ = unsafe { TOO_BIG_PROG.tail_call(ctx, 0) };
    }
}

/// The answering program: parses the packet again (the balancer left it
/// untouched), answers or drops it, and counts the outcome.
#[xdp]
pub fn lb_too_big(ctx: XdpContext) -> u32 {
    let fits = TOO_BIG_FITS.get(0).copied().unwrap_or(0) as usize;
    let out = match parse::parse(&ctx) {
        Ok(pkt) => answer(&ctx, &pkt, fits, maps::config()),
        Err(_) => Out::Drop(Counter::DropTooBigMalformed),
    };
    crate::stats::finish(out)
}

/// The packet does not fit: `fits` is the largest datagram that does.
#[inline(always)]
pub fn answer(ctx: &XdpContext, pkt: &Packet, fits: usize, cfg: &LbConfig) -> Out {
    let v4 = pkt.flow.family == FAMILY_V4;
    if rules::is_icmp(pkt.flow.family, pkt.flow.proto, pkt.fragment) {
        return Out::Drop(Counter::DropTooBig);
    }
    if v4 && !pkt.df {
        return Out::Drop(Counter::DropTooBigNoDf);
    }
    if cfg.too_big_icmp == 0 {
        return Out::Drop(Counter::DropTooBig);
    }
    let Some(b) = TOO_BIG_BUCKET.get_ptr_mut(0) else {
        return Out::Drop(Counter::DropTooBig);
    };
    // SAFETY: this CPU's bucket.
    let allowed = bucket::take(
        unsafe { &mut *b },
        conntrack::now_ns(),
        cfg.too_big_per_sec as u64,
        cfg.too_big_burst as u64,
    );
    if !allowed {
        return Out::Drop(Counter::DropTooBigRateLimited);
    }
    let sent = if v4 {
        frag_needed(ctx, pkt, fits)
    } else {
        packet_too_big(ctx, pkt, fits)
    };
    match sent {
        Ok(()) => {
            crate::stats::count(Counter::IcmpTooBigSent);
            Out::Tx
        }
        Err(out) => out,
    }
}

/// Back to where the packet came from: its source MAC becomes the
/// destination.
#[inline(always)]
fn reverse_l2(ctx: &XdpContext) -> Result<forward::NextHop, Out> {
    let macs: *const [[u8; 6]; 2] =
        ptr_at(ctx, 0).ok_or(Out::Drop(Counter::DropTooBigMalformed))?;
    let [dst, src] = unsafe { *macs };
    Ok(forward::NextHop {
        ifindex: 0,
        macs: forward::NextHop::macs(&src, &dst),
        mtu: 0,
    })
}

/// Cuts the frame to `len` bytes.
#[inline(always)]
fn cut(ctx: &XdpContext, len: usize) -> Result<(), Out> {
    let frame = ctx.data_end() - ctx.data();
    if frame > len {
        let excess = (frame - len) as i32;
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -excess) } != 0 {
            return Err(Out::Drop(Counter::DropNoHeadroom));
        }
    }
    Ok(())
}

/// The ones' complement sum, in memory byte order, of the `words` 4-byte
/// words from `off` (at most `max` of them).
#[inline(always)]
fn sum_words(ctx: &XdpContext, off: usize, words: usize, max: usize) -> Result<u64, Out> {
    let mut sum: u64 = 0;
    for i in 0..max {
        if i >= words {
            break;
        }
        // Masked (a no-op for any real offset) so the verifier knows the
        // offset is not negative whatever it tracked of `off`.
        let at = (off + i * 4) & MAX_OFFSET;
        let w: *const [u8; 4] = ptr_at(ctx, at).ok_or(Out::Drop(Counter::DropNoHeadroom))?;
        let [a, b, c, d] = unsafe { *w };
        sum += u16::from_ne_bytes([a, b]) as u64 + u16::from_ne_bytes([c, d]) as u64;
    }
    Ok(sum)
}

#[inline(always)]
fn sum_bytes(bytes: &[u8]) -> u64 {
    let mut sum: u64 = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u16::from_ne_bytes([bytes[i], bytes[i + 1]]) as u64;
        i += 2;
    }
    sum
}

/// Folds a sum to the 16-bit checksum, in memory byte order.
#[inline(always)]
fn fold(sum: u64) -> [u8; 2] {
    lb_ebpf::checksum_fold(sum).to_ne_bytes()
}

#[inline(always)]
fn frag_needed(ctx: &XdpContext, pkt: &Packet, fits: usize) -> Result<(), Out> {
    let l3 = pkt.l2.l3_off;
    let quote = if pkt.ip_len < QUOTE_V4 {
        pkt.ip_len
    } else {
        QUOTE_V4
    } & !3;
    let nh = reverse_l2(ctx)?;
    let (vip, client) = (pkt.flow.dst[0].to_ne_bytes(), pkt.flow.src[0].to_ne_bytes());
    forward::push_outer::<forward::FrontL2>(ctx, pkt, IPV4_HLEN + ICMP_HLEN, ETH_P_IP, &nh)?;
    cut(ctx, l3 + IPV4_HLEN + ICMP_HLEN + quote)?;

    let mut ip = [0u8; IPV4_HLEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((IPV4_HLEN + ICMP_HLEN + quote) as u16).to_be_bytes());
    ip[8] = TTL;
    ip[9] = PROTO_ICMP;
    ip[12..16].copy_from_slice(&vip);
    ip[16..20].copy_from_slice(&client);
    let c = lb_ebpf::ipv4_header_checksum(&ip).to_be_bytes();
    ip[10] = c[0];
    ip[11] = c[1];
    let mtu = if fits > 0xffff { 0xffff } else { fits as u16 };
    let mut icmp = [0u8; ICMP_HLEN];
    icmp[0] = ICMP_FRAG_NEEDED[0];
    icmp[1] = ICMP_FRAG_NEEDED[1];
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    let sum =
        sum_bytes(&icmp) + sum_words(ctx, l3 + IPV4_HLEN + ICMP_HLEN, quote / 4, QUOTE_V4 / 4)?;
    let c = fold(sum);
    icmp[2] = c[0];
    icmp[3] = c[1];
    let hdr: *mut [u8; IPV4_HLEN + ICMP_HLEN] =
        ptr_at(ctx, l3).ok_or(Out::Drop(Counter::DropNoHeadroom))?;
    let mut h = [0u8; IPV4_HLEN + ICMP_HLEN];
    h[..IPV4_HLEN].copy_from_slice(&ip);
    h[IPV4_HLEN..].copy_from_slice(&icmp);
    unsafe { *hdr = h };
    Ok(())
}

#[inline(always)]
fn packet_too_big(ctx: &XdpContext, pkt: &Packet, fits: usize) -> Result<(), Out> {
    let l3 = pkt.l2.l3_off;
    let quote = if pkt.ip_len < QUOTE_V6 {
        pkt.ip_len
    } else {
        QUOTE_V6
    } & !3;
    let nh = reverse_l2(ctx)?;
    let (vip, client) = (pkt.flow.dst, pkt.flow.src);
    forward::push_outer::<forward::FrontL2>(ctx, pkt, IPV6_HLEN + ICMP_HLEN, ETH_P_IPV6, &nh)?;
    cut(ctx, l3 + IPV6_HLEN + ICMP_HLEN + quote)?;

    let len = (ICMP_HLEN + quote) as u32;
    let mut ip = [0u8; IPV6_HLEN];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    ip[6] = PROTO_ICMPV6;
    ip[7] = TTL;
    for i in 0..4 {
        ip[8 + 4 * i..12 + 4 * i].copy_from_slice(&vip[i].to_ne_bytes());
        ip[24 + 4 * i..28 + 4 * i].copy_from_slice(&client[i].to_ne_bytes());
    }
    let mut icmp = [0u8; ICMP_HLEN];
    icmp[0] = ICMPV6_PACKET_TOO_BIG[0];
    icmp[1] = ICMPV6_PACKET_TOO_BIG[1];
    icmp[4..8].copy_from_slice(&(fits as u32).to_be_bytes());
    // The pseudo-header: addresses, upper-layer length, next header.
    let mut pseudo = [0u8; 8];
    pseudo[0..4].copy_from_slice(&len.to_be_bytes());
    pseudo[7] = PROTO_ICMPV6;
    let sum = sum_bytes(&ip[8..40])
        + sum_bytes(&pseudo)
        + sum_bytes(&icmp)
        + sum_words(ctx, l3 + IPV6_HLEN + ICMP_HLEN, quote / 4, QUOTE_V6 / 4)?;
    let c = fold(sum);
    icmp[2] = c[0];
    icmp[3] = c[1];
    let hdr: *mut [u8; IPV6_HLEN + ICMP_HLEN] =
        ptr_at(ctx, l3).ok_or(Out::Drop(Counter::DropNoHeadroom))?;
    let mut h = [0u8; IPV6_HLEN + ICMP_HLEN];
    h[..IPV6_HLEN].copy_from_slice(&ip);
    h[IPV6_HLEN..].copy_from_slice(&icmp);
    // After a 14-byte Ethernet header the IP header is 2-byte aligned only.
    unsafe { core::ptr::write_unaligned(hdr, h) };
    Ok(())
}
