//! The scenarios' frames, and the connection-table key of one.

use lb_common::{FlowKey, FAMILY_V4, FAMILY_V6};
use lb_lab::frame::{Frame, TCP_ACK};

/// A TCP frame from `src` to port 80 of `dst`: 64 bytes for IPv4 (payload
/// padded), 74 for IPv6 (no payload).
pub fn tcp_frame(src: &str, sport: u16, dst: &str, flags: u8) -> Vec<u8> {
    let payload: &[u8] = if src.contains(':') { &[] } else { &[0; 10] };
    Frame::tcp(src, sport, dst, 80)
        .with_flags(flags)
        .with_payload(payload)
        .build()
}

/// A TCP ACK (the established-flow packet) over IPv4.
pub fn tcp_v4(src: &str, sport: u16, dst: &str) -> Vec<u8> {
    tcp_frame(src, sport, dst, TCP_ACK)
}

/// A TCP packet to a VIP whose IP header announces fewer bytes than a TCP
/// header: dropped as truncated once the balancer knows it is for a VIP.
pub fn truncated_l4(src: &str, dst: &str) -> Vec<u8> {
    let mut f = tcp_frame(src, 40009, dst, TCP_ACK);
    if src.contains(':') {
        f[18..20].copy_from_slice(&8u16.to_be_bytes()); // payload length
    } else {
        f[16..18].copy_from_slice(&28u16.to_be_bytes()); // total length
    }
    f
}

/// `n` copies of `frame` with the word at `off` set to `first`, `first + 1`...
pub fn varied(frame: &[u8], off: u32, first: u32, n: usize) -> Vec<Vec<u8>> {
    (0..n as u32)
        .map(|i| {
            let mut f = frame.to_vec();
            let off = off as usize;
            f[off..off + 4].copy_from_slice(&first.wrapping_add(i).to_be_bytes());
            f
        })
        .collect()
}

/// The connection-table key of a frame built by `tcp_frame`, with the
/// source's last word replaced by `word` if given.
pub fn flow_key(frame: &[u8], word: Option<u32>) -> FlowKey {
    let v6 = frame[12..14] == [0x86, 0xdd];
    let w = |o: usize| u32::from_ne_bytes(frame[o..o + 4].try_into().unwrap());
    let (mut src, dst, l4, family) = if v6 {
        let a = |o: usize| [w(o), w(o + 4), w(o + 8), w(o + 12)];
        (a(22), a(38), 54, FAMILY_V6)
    } else {
        ([w(26), 0, 0, 0], [w(30), 0, 0, 0], 34, FAMILY_V4)
    };
    if let Some(word) = word {
        src[if v6 { 3 } else { 0 }] = u32::from_ne_bytes(word.to_be_bytes());
    }
    FlowKey {
        src,
        dst,
        sport: u16::from_ne_bytes([frame[l4], frame[l4 + 1]]),
        dport: u16::from_ne_bytes([frame[l4 + 2], frame[l4 + 3]]),
        proto: lb_common::PROTO_TCP,
        family,
        _pad: [0; 2],
    }
}
