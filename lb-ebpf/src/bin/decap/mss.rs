//! MSS clamping for networks that drop ICMP (`lbd decap --clamp-mss`): a TC
//! egress program that lowers the MSS option of every SYN-ACK this backend
//! sends from an address other than its tunnel addresses (that is, from a
//! VIP), so clients never send segments that would not fit once the
//! balancer encapsulates them. The checksum is updated incrementally;
//! nothing else in the packet changes, and every packet goes on.

use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::{classifier, map},
    maps::Array,
    programs::TcContext,
};
use lb_common::{AddrKey, MssClamp, FAMILY_V4, FAMILY_V6, PROTO_TCP};
use lb_ebpf::{ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6};

use crate::DECAP_ADDRS;

/// The largest MSS per family, written by user space.
#[map]
static MSS_CLAMP: Array<MssClamp> = Array::with_max_entries(1, 0);

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
/// The options of a TCP header are at most 40 bytes.
const MAX_OPTIONS: usize = 40;
/// `bpf_l4_csum_replace` flag: the field replaced is 2 bytes wide.
const CSUM_FIELD_2: u64 = 2;

#[classifier]
pub fn lb_mss_clamp(ctx: TcContext) -> i32 {
    let _ = clamp(&ctx);
    TC_ACT_OK
}

#[inline(always)]
fn clamp(ctx: &TcContext) -> Option<()> {
    let cfg = MSS_CLAMP.get(0)?;
    let mut l3 = ETH_HLEN;
    let mut proto = u16::from_be(ctx.load::<u16>(12).ok()?);
    if proto == ETH_P_8021Q {
        proto = u16::from_be(ctx.load::<u16>(16).ok()?);
        l3 += 4;
    }
    let (l4, max, src, family) = match proto {
        ETH_P_IP => {
            let vihl: u8 = ctx.load(l3).ok()?;
            let frag = u16::from_be(ctx.load::<u16>(l3 + 6).ok()?);
            if ctx.load::<u8>(l3 + 9).ok()? != PROTO_TCP || frag & 0x1fff != 0 {
                return None;
            }
            let src: u32 = ctx.load(l3 + 12).ok()?;
            (
                l3 + ((vihl & 0x0f) as usize) * 4,
                cfg.v4,
                [src, 0, 0, 0],
                FAMILY_V4,
            )
        }
        ETH_P_IPV6 => {
            if ctx.load::<u8>(l3 + 6).ok()? != PROTO_TCP {
                return None;
            }
            let src: [u32; 4] = ctx.load(l3 + 8).ok()?;
            (l3 + 40, cfg.v6, src, FAMILY_V6)
        }
        _ => return None,
    };
    if max == 0 {
        return None;
    }
    let flags: u8 = ctx.load(l4 + 13).ok()?;
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK {
        return None;
    }
    let key = AddrKey {
        addr: src,
        family,
        proto: 0,
        _pad: [0; 2],
    };
    // From one of our tunnel addresses: the host's own connection.
    if unsafe { DECAP_ADDRS.get(&key) }.is_some() {
        return None;
    }
    let doff: u8 = ctx.load(l4 + 12).ok()?;
    let end = l4 + ((doff >> 4) as usize) * 4;
    let mut off = l4 + 20;
    for _ in 0..MAX_OPTIONS {
        if off + 4 > end {
            return None;
        }
        let kind: u8 = ctx.load(off).ok()?;
        match kind {
            TCPOPT_EOL => return None,
            TCPOPT_NOP => off += 1,
            TCPOPT_MSS => {
                let mss = u16::from_be(ctx.load::<u16>(off + 2).ok()?);
                if mss <= max {
                    return None;
                }
                let (old, new) = (mss.to_be(), max.to_be());
                ctx.l4_csum_replace(l4 + 16, old as u64, new as u64, CSUM_FIELD_2)
                    .ok()?;
                ctx.store(off + 2, &new, 0).ok()?;
                return Some(());
            }
            _ => {
                let len: u8 = ctx.load(off + 1).ok()?;
                if len < 2 {
                    return None;
                }
                off += len as usize;
            }
        }
    }
    None
}
