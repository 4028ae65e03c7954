//! Helpers shared by the balancer and the decap program: bounds-checked
//! packet access, Ethernet/VLAN parsing and the IPv4 header checksum.
#![no_std]
// `unaligned`: BPF inline assembly.
#![feature(asm_experimental_arch)]

pub mod unaligned;

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
/// No header we read lies further into a frame than this.
pub const MAX_OFFSET: usize = 0x3fff;

/// A pointer to a `T` at byte `off` of the packet, or `None` when the packet
/// is too short. Every read of packet memory goes through here (or
/// [`byte_at`]), which is what the verifier needs to see.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    // An explicit upper bound: offsets computed from header fields (or
    // spilled to the stack) can reach the verifier with no known maximum,
    // and it refuses pointer arithmetic with an unbounded scalar.
    if off > MAX_OFFSET {
        return None;
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Reads a big-endian `u16` at `off`.
#[inline(always)]
pub fn be16_at(ctx: &XdpContext, off: usize) -> Option<u16> {
    let p: *const [u8; 2] = ptr_at(ctx, off)?;
    // SAFETY: `ptr_at` checked the two bytes are inside the frame.
    Some(u16::from_be(unsafe { unaligned::load16(p.cast()) }))
}

/// A 32-bit header field of packet (or map) memory as it lies there: one
/// load (`unaligned`). Addresses are kept in this order throughout.
#[inline(always)]
pub fn field32(f: &[u8; 4]) -> u32 {
    // SAFETY: a reference to four readable bytes.
    unsafe { unaligned::load32(f.as_ptr()) }
}

/// A 16-bit field of packet memory sent in network byte order, as a number.
#[inline(always)]
pub fn field16_be(f: &[u8; 2]) -> u16 {
    // SAFETY: a reference to two readable bytes.
    u16::from_be(unsafe { unaligned::load16(f.as_ptr()) })
}

/// Layer 2 of a frame: where the IP header starts and what it is.
#[derive(Clone, Copy)]
pub struct L2 {
    /// Offset of the network header (14, or 18 with one VLAN tag).
    pub l3_off: usize,
    /// EtherType of the network header.
    pub proto: u16,
}

/// Parses Ethernet and at most one 802.1Q/802.1ad tag. `None` when the frame
/// is too short for its Ethernet (and tag) header.
#[inline(always)]
pub fn parse_l2(ctx: &XdpContext) -> Option<L2> {
    let proto = be16_at(ctx, 12)?;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let inner = be16_at(ctx, ETH_HLEN + 2)?;
        return Some(L2 {
            l3_off: ETH_HLEN + VLAN_HLEN,
            proto: inner,
        });
    }
    Some(L2 {
        l3_off: ETH_HLEN,
        proto,
    })
}

/// Internet checksum of a 20-byte IPv4 header as five words in memory order
/// (the words are summed whole and folded: the one's-complement sum does not
/// depend on which 16-bit halves are added first). Returned in memory
/// order, ready to store.
#[inline(always)]
pub fn ipv4_checksum_words(words: &[u32; 5]) -> u16 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < 5 {
        sum += words[i] as u64;
        i += 1;
    }
    checksum_fold(sum)
}

/// Folds a ones' complement sum of memory-order words (16- or 32-bit) to
/// the 16-bit Internet checksum, in memory order.
#[inline(always)]
pub fn checksum_fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Internet checksum of a 20-byte IPv4 header held in memory we own (the
/// stack), so no packet bounds are involved.
#[inline(always)]
pub fn ipv4_header_checksum(hdr: &[u8; 20]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u16::from_be_bytes([hdr[i], hdr[i + 1]]) as u32;
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // Unreachable: a program that could get here would loop forever, which
    // the verifier rejects; both programs load, so no panic path is reachable.
    loop {}
}
