//! Stage 6: ICMP errors about VIP flows. A router that cannot pass a
//! backend's reply (source = VIP) sends "fragmentation needed" / "packet too
//! big" to the VIP; the backend that owns the flow must get it, or path-MTU
//! discovery breaks. The error quotes the reply's header, so the flow is that
//! header reversed.

use aya_ebpf::programs::XdpContext;
use lb_common::{rules, Addr, Counter, FlowKey, HashMode, FAMILY_V4, PROTO_TCP, PROTO_UDP};
use lb_ebpf::ptr_at;
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    conntrack, find_vip, forward, maps, maps::Chosen, parse::words, parse::Packet, select, Out,
};

const ICMP_HLEN: usize = 8;

#[inline(always)]
pub fn handle(ctx: &XdpContext, pkt: &Packet, frame_len: u64) -> Result<Out, Out> {
    let kind = classify(ctx, pkt)?;
    let flow = quoted_flow(ctx, pkt)?;
    let vip = find_vip(&flow).ok_or(Out::Pass(Counter::IcmpUnknownFlow))?;
    crate::stats::count(kind);
    let hash = lb_common::flow_hash(&flow, rules::hash_mode(vip.flags, HashMode::FiveTuple));
    let known = if rules::uses_conntrack(vip.flags) {
        let about = conntrack::Life {
            starts: false,
            ends: false,
            records: false,
        };
        conntrack::lookup(&flow, &vip, conntrack::now_ns(), about)
    } else {
        None
    };
    let backend = match known {
        Some(backend) => backend,
        None => Chosen::read(select::by_table(&vip, hash)?),
    };
    forward::to_backend(ctx, pkt, &vip, backend, hash, frame_len)
}

/// Which ICMP error this is; anything else (echo, ...) is the kernel's.
#[inline(always)]
fn classify(ctx: &XdpContext, pkt: &Packet) -> Result<Counter, Out> {
    let th: *const [u8; 2] = ptr_at(ctx, pkt.l4_off).ok_or_else(|| malformed(pkt))?;
    let [ty, code] = unsafe { *th };
    rules::icmp_error_kind(pkt.flow.family, ty, code).ok_or(Out::Pass(Counter::PassIcmp))
}

/// The client's flow (see `rules::icmp_quoted_flow`): the quoted header,
/// VIP → client, reversed.
#[inline(always)]
fn quoted_flow(ctx: &XdpContext, pkt: &Packet) -> Result<FlowKey, Out> {
    let off = pkt.l4_off + ICMP_HLEN;
    let end = pkt.l2.l3_off + pkt.ip_len;
    let (version, src, dst, proto, ports_off) = if pkt.flow.family == FAMILY_V4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, off).ok_or_else(|| malformed(pkt))?;
        let ip = unsafe { &*ip };
        let hlen = ((ip.vihl & 0x0f) as usize) * 4;
        if hlen < 20 {
            return Err(malformed(pkt));
        }
        let src: Addr = [u32::from_ne_bytes(ip.src_addr), 0, 0, 0];
        let dst: Addr = [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0];
        (ip.vihl >> 4, src, dst, ip.proto, off + hlen)
    } else {
        let ip: *const Ipv6Hdr = ptr_at(ctx, off).ok_or_else(|| malformed(pkt))?;
        let ip = unsafe { &*ip };
        (
            ip.vcf[0] >> 4,
            words(&ip.src_addr),
            words(&ip.dst_addr),
            ip.next_hdr,
            off + 40,
        )
    };
    if ports_off + 4 > end {
        return Err(malformed(pkt));
    }
    let ports: *const [u8; 4] = ptr_at(ctx, ports_off).ok_or_else(|| malformed(pkt))?;
    let p = unsafe { *ports };
    let quoted = rules::Quoted {
        version,
        proto,
        src,
        dst,
        sport: u16::from_ne_bytes([p[0], p[1]]),
        dport: u16::from_ne_bytes([p[2], p[3]]),
    };
    rules::icmp_quoted_flow(pkt.flow.family, &pkt.flow.dst, &quoted).map_err(|e| match e {
        rules::NotSteered::NotOurs => Out::Pass(Counter::PassIcmp),
        rules::NotSteered::Malformed => malformed(pkt),
    })
}

/// A short or garbled ICMP message to a VIP address is dropped; to any other
/// address it is the kernel's business.
#[inline(always)]
fn malformed(pkt: &Packet) -> Out {
    let f = &pkt.flow;
    if maps::is_vip_addr(&f.dst, f.family, PROTO_TCP)
        || maps::is_vip_addr(&f.dst, f.family, PROTO_UDP)
    {
        Out::Drop(Counter::DropIcmpMalformed)
    } else {
        Out::Pass(Counter::PassMalformed)
    }
}
