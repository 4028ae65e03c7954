//! Stage 1: parse Ethernet (one optional VLAN tag), IPv4 (options allowed) or
//! IPv6 (fixed header), then the TCP/UDP ports.
//!
//! A packet we cannot read far enough to know its destination passes
//! unchanged. Once the destination is known, a malformed or truncated packet
//! is dropped when its (address, protocol) belongs to a VIP and passed
//! otherwise: the kernel, not the balancer, owns traffic that is not ours.

use core::mem::MaybeUninit;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Addr, Counter, FlowKey, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};
use lb_ebpf::{
    field16_be, field32, parse_l2, ptr_at, unaligned, ETH_P_IP, ETH_P_IPV6, IPV4_HLEN, IPV6_HLEN,
    L2,
};
use network_types::{ip::Ipv4Hdr, ip::Ipv6Hdr};

use crate::{maps, Out};

const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;
const IPV4_MF: u16 = 0x2000;
const IPV4_DF: u16 = 0x4000;
const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// What the later stages need to know about a packet.
pub struct Packet {
    pub l2: L2,
    /// Offset of the transport (or ICMP) header.
    pub l4_off: usize,
    /// Length of the IP datagram according to its header (frames may carry
    /// Ethernet padding after it).
    pub ip_len: usize,
    /// The 5-tuple as sent; ports are zero for ICMP and non-first fragments.
    pub flow: FlowKey,
    pub tcp_rst: bool,
    /// TCP FIN: the client is done (least-connections stops counting it).
    pub tcp_fin: bool,
    /// A TCP SYN without ACK: the first packet of a new connection.
    pub tcp_syn: bool,
    /// An IPv4 fragment (first or later).
    pub fragment: bool,
    /// IPv4 TOS / IPv6 traffic class, copied to the outer header.
    pub tos: u8,
    /// IPv4 "don't fragment", copied to the outer header.
    pub df: bool,
    /// IPv4 identification, reused for the outer header.
    pub ip_id: u16,
}

/// Each family's parser writes the packet in place: returned by value, the
/// two results met at the match, every field spilled, reloaded and stored
/// again.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Out> {
    let l2 = parse_l2(ctx).ok_or(Out::Pass(Counter::PassMalformed))?;
    let mut pkt = MaybeUninit::<Packet>::uninit();
    match l2.proto {
        ETH_P_IP => parse_ipv4(ctx, l2, &mut pkt)?,
        ETH_P_IPV6 => parse_ipv6(ctx, l2, &mut pkt)?,
        _ => return Err(Out::Pass(Counter::PassNotIp)),
    }
    // SAFETY: both parsers wrote the whole packet before returning Ok.
    Ok(unsafe { pkt.assume_init() })
}

/// Whether the frame is addressed to the interface's MAC (or no MAC was
/// set). Checked only once the destination may be a VIP: other traffic
/// passes anyway, and pays nothing for it.
#[inline(always)]
fn for_this_host(ctx: &XdpContext) -> bool {
    let mac = maps::config().if_mac.as_ptr();
    // Two loads and compares, not a byte loop (or a `bcmp` call BPF lacks).
    // SAFETY: `if_mac` is six bytes of the settings' map value.
    let (want_hi, want_lo) = unsafe { (unaligned::load32(mac), unaligned::load16(mac.add(4))) };
    if want_hi == 0 && want_lo == 0 {
        return true;
    }
    let Some(frame) = ptr_at::<[u8; 6]>(ctx, 0) else {
        return false;
    };
    let frame: *const u8 = frame.cast();
    // SAFETY: `ptr_at` checked the six bytes are inside the frame.
    unsafe { unaligned::load32(frame) == want_hi && unaligned::load16(frame.add(4)) == want_lo }
}

/// The outcome for a packet to `dst` that is malformed for `reason`.
#[inline(always)]
pub fn malformed(dst: &Addr, family: u8, proto: u8, reason: Counter) -> Out {
    if maps::is_vip_addr(dst, family, proto) {
        Out::Drop(reason)
    } else {
        Out::Pass(Counter::PassMalformed)
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l2: L2, out: &mut MaybeUninit<Packet>) -> Result<(), Out> {
    let l3 = l2.l3_off;
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3).ok_or(Out::Pass(Counter::PassMalformed))?;
    let ip = unsafe { &*ip };
    let dst: Addr = [field32(&ip.dst_addr), 0, 0, 0];
    if !maps::maybe_vip(&dst) {
        return Err(Out::Pass(Counter::PassNotVip));
    }
    if !for_this_host(ctx) {
        return Err(Out::Pass(Counter::PassOtherHost));
    }
    let proto = ip.proto;
    let bad = |reason| malformed(&dst, FAMILY_V4, proto, reason);

    let hlen = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || hlen < IPV4_HLEN {
        return Err(bad(Counter::DropBadHeader));
    }
    let ip_len = field16_be(&ip.tot_len) as usize;
    if ip_len < hlen {
        return Err(bad(Counter::DropBadHeader));
    }
    if l3 + ip_len > ctx.data_end() - ctx.data() {
        return Err(bad(Counter::DropTruncated));
    }
    let frags = field16_be(&ip.frags);
    let pkt = out.write(Packet {
        l2,
        l4_off: l3 + hlen,
        ip_len,
        flow: FlowKey {
            src: [field32(&ip.src_addr), 0, 0, 0],
            dst,
            sport: 0,
            dport: 0,
            proto,
            family: FAMILY_V4,
            _pad: [0; 2],
        },
        tcp_rst: false,
        tcp_fin: false,
        tcp_syn: false,
        fragment: frags & (IPV4_MF | IPV4_OFFSET_MASK) != 0,
        tos: ip.tos,
        df: frags & IPV4_DF != 0,
        ip_id: field16_be(&ip.id),
    });
    // Fragments are steered without ports (a first fragment's are read, but
    // every fragment is placed by addresses alone); ICMP is parsed by `icmp`.
    if frags & IPV4_OFFSET_MASK != 0 || proto == PROTO_ICMP {
        return Ok(());
    }
    parse_ports(ctx, pkt, ip_len - hlen)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l2: L2, out: &mut MaybeUninit<Packet>) -> Result<(), Out> {
    let l3 = l2.l3_off;
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3).ok_or(Out::Pass(Counter::PassMalformed))?;
    let ip = unsafe { &*ip };
    let dst = words(&ip.dst_addr);
    if !maps::maybe_vip(&dst) {
        return Err(Out::Pass(Counter::PassNotVip));
    }
    if !for_this_host(ctx) {
        return Err(Out::Pass(Counter::PassOtherHost));
    }
    let proto = ip.next_hdr;
    let bad = |reason| malformed(&dst, FAMILY_V6, proto, reason);

    if ip.vcf[0] >> 4 != 6 {
        return Err(bad(Counter::DropBadHeader));
    }
    let ip_len = IPV6_HLEN + u16::from_be_bytes(ip.payload_len) as usize;
    if l3 + ip_len > ctx.data_end() - ctx.data() {
        return Err(bad(Counter::DropTruncated));
    }
    let pkt = out.write(Packet {
        l2,
        l4_off: l3 + IPV6_HLEN,
        ip_len,
        flow: FlowKey {
            src: words(&ip.src_addr),
            dst,
            sport: 0,
            dport: 0,
            proto,
            family: FAMILY_V6,
            _pad: [0; 2],
        },
        tcp_rst: false,
        tcp_fin: false,
        tcp_syn: false,
        fragment: false,
        tos: (ip.vcf[0] << 4) | (ip.vcf[1] >> 4),
        df: false,
        ip_id: 0,
    });
    if proto == PROTO_ICMPV6 {
        return Ok(());
    }
    parse_ports(ctx, pkt, ip_len - IPV6_HLEN)
}

/// Fills in the ports (and the RST, FIN and SYN flags) of a TCP or UDP packet whose
/// transport header must fit in the `l4_len` bytes the IP header announces.
/// Other protocols keep zero ports and find no VIP.
#[inline(always)]
fn parse_ports(ctx: &XdpContext, pkt: &mut Packet, l4_len: usize) -> Result<(), Out> {
    let f = pkt.flow;
    let hlen = match f.proto {
        PROTO_TCP => TCP_HLEN,
        PROTO_UDP => UDP_HLEN,
        _ => return Ok(()),
    };
    if l4_len < hlen {
        return Err(malformed(&f.dst, f.family, f.proto, Counter::DropTruncated));
    }
    // The IP length was checked against the frame, but the verifier needs
    // its own bounds check for this read.
    let ports: *const [u8; 4] = ptr_at(ctx, pkt.l4_off).ok_or(Out::Pass(Counter::PassMalformed))?;
    // Both ports in one load, each kept in network byte order.
    let ports = field32(unsafe { &*ports });
    pkt.flow.sport = ports as u16;
    pkt.flow.dport = (ports >> 16) as u16;
    if f.proto == PROTO_TCP {
        let flags: *const u8 =
            ptr_at(ctx, pkt.l4_off + 13).ok_or(Out::Pass(Counter::PassMalformed))?;
        let flags = unsafe { *flags };
        pkt.tcp_rst = flags & TCP_FLAG_RST != 0;
        pkt.tcp_fin = flags & TCP_FLAG_FIN != 0;
        pkt.tcp_syn = flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    }
    Ok(())
}

/// An IPv6 address of packet memory as four packet-order words.
#[inline(always)]
pub fn words(a: &[u8; 16]) -> Addr {
    let p = a.as_ptr();
    // SAFETY: a reference to sixteen readable bytes.
    unsafe {
        [
            unaligned::load32(p),
            unaligned::load32(p.add(4)),
            unaligned::load32(p.add(8)),
            unaligned::load32(p.add(12)),
        ]
    }
}
