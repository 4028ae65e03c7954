//! A small builder for test frames (Ethernet, optional VLAN tag, IPv4 with
//! options or IPv6, TCP/UDP/ICMP) with correct checksums, and the pieces of
//! the expected outputs (outer IPIP/IP6IP6 headers), written independently
//! of the data path so a test compares against its own idea of a frame.

use std::net::IpAddr;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// Raw bytes after the IP header, for ICMP and odd protocols.
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// IPv4 options (a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    pub ttl: u8,
    pub tos: u8,
    /// IPv4 fragment field (flags and offset in 8-byte units).
    pub frag: u16,
    pub ip_id: u16,
}

impl Frame {
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Frame {
        Frame::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags: TCP_SYN,
            },
        )
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Frame {
        Frame::new(src, dst, L4::Udp { sport, dport })
    }

    pub fn new(src: &str, dst: &str, l4: L4) -> Frame {
        Frame {
            dst_mac: LB_MAC,
            src_mac: CLIENT_MAC,
            vlan: None,
            src: src.parse().expect("source address"),
            dst: dst.parse().expect("destination address"),
            l4,
            payload: b"hello, lb".to_vec(),
            ip_options: Vec::new(),
            ttl: 61,
            tos: 0x28,
            frag: 0x4000,
            ip_id: 0x1234,
        }
    }

    pub fn with_flags(mut self, flags: u8) -> Frame {
        if let L4::Tcp { flags: f, .. } = &mut self.l4 {
            *f = flags;
        }
        self
    }

    pub fn with_vlan(mut self, tci: u16) -> Frame {
        self.vlan = Some(tci);
        self
    }

    pub fn with_payload(mut self, payload: &[u8]) -> Frame {
        self.payload = payload.to_vec();
        self
    }

    /// The Ethernet frame.
    pub fn build(&self) -> Vec<u8> {
        let ip = self.ip_packet();
        let ether_type: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86dd };
        ethernet(self.dst_mac, self.src_mac, self.vlan, ether_type, &ip)
    }

    /// The IP datagram (what an IPIP tunnel must carry byte for byte).
    pub fn ip_packet(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(
                s.octets(),
                d.octets(),
                self.proto(),
                self.ttl,
                self.tos,
                self.ip_id,
                self.frag,
                &self.ip_options,
                &l4,
            ),
            (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(
                s.octets(),
                d.octets(),
                self.proto(),
                self.ttl,
                self.tos,
                0,
                &l4,
            ),
            _ => panic!("mixed address families"),
        }
    }

    pub fn proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Raw { proto, .. } => *proto,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut out = match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut t = Vec::with_capacity(20);
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
                t.extend_from_slice(&0u32.to_be_bytes()); // ack
                t.push(5 << 4);
                t.push(*flags);
                t.extend_from_slice(&64240u16.to_be_bytes());
                t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                t
            }
            L4::Udp { sport, dport } => {
                let mut u = Vec::with_capacity(8);
                u.extend_from_slice(&sport.to_be_bytes());
                u.extend_from_slice(&dport.to_be_bytes());
                u.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                u.extend_from_slice(&[0, 0]);
                u
            }
            L4::Raw { bytes, .. } => return bytes.clone(),
        };
        out.extend_from_slice(&self.payload);
        let sum = transport_checksum(self.src, self.dst, self.proto(), &out);
        let at = if matches!(self.l4, L4::Tcp { .. }) {
            16
        } else {
            6
        };
        out[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        out
    }
}

pub fn ethernet(
    dst: [u8; 6],
    src: [u8; 6],
    vlan: Option<u16>,
    ether_type: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(tci) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[allow(clippy::too_many_arguments)]
pub fn ipv4(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    ttl: u8,
    tos: u8,
    id: u16,
    frag: u16,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4) && options.len() <= 40);
    let hlen = 20 + options.len();
    let mut p = Vec::with_capacity(hlen + payload.len());
    p.push(0x40 | (hlen / 4) as u8);
    p.push(tos);
    p.extend_from_slice(&((hlen + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&frag.to_be_bytes());
    p.push(ttl);
    p.push(proto);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(options);
    let sum = checksum(&p[..hlen], 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

pub fn ipv6(
    src: [u8; 16],
    dst: [u8; 16],
    next: u8,
    hop: u8,
    tclass: u8,
    flow_label: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + payload.len());
    let vcf = 6u32 << 28 | (tclass as u32) << 20 | (flow_label & 0xfffff);
    p.extend_from_slice(&vcf.to_be_bytes());
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.push(next);
    p.push(hop);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

/// RFC 1071 checksum of `data`, starting from a partial sum.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP/UDP/ICMPv6 checksum with the pseudo-header.
pub fn transport_checksum(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed address families"),
    }
    pseudo.extend_from_slice(segment);
    checksum(&pseudo, 0)
}

/// The IP packet a backend sends back for the TCP or UDP flow of `f` (VIP
/// to client) with `payload` bytes of data: what routers quote in their ICMP
/// errors about the flow.
pub fn reply_of(f: &Frame, payload: usize) -> Vec<u8> {
    let mut r = f.clone();
    std::mem::swap(&mut r.src, &mut r.dst);
    r.l4 = match f.l4 {
        L4::Tcp { sport, dport, .. } => L4::Tcp {
            sport: dport,
            dport: sport,
            flags: TCP_ACK,
        },
        L4::Udp { sport, dport } => L4::Udp {
            sport: dport,
            dport: sport,
        },
        _ => panic!("a reply to a TCP or UDP flow only"),
    };
    r.payload = vec![0xab; payload];
    r.ip_packet()
}

/// An ICMP (v4) error from `router` to `to`, quoting `quoted` (an IP packet,
/// cut to its header plus 8 bytes as routers do).
pub fn icmp4_error(router: &str, to: &str, ty: u8, code: u8, mtu: u16, quoted: &[u8]) -> Frame {
    let ihl = ((quoted[0] & 0x0f) as usize) * 4;
    let quote = &quoted[..(ihl + 8).min(quoted.len())];
    let mut m = vec![ty, code, 0, 0, 0, 0];
    m.extend_from_slice(&mtu.to_be_bytes());
    m.extend_from_slice(quote);
    let sum = checksum(&m, 0);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = Frame::new(router, to, L4::Raw { proto: 1, bytes: m });
    f.frag = 0;
    f
}

/// An ICMPv6 "packet too big" from `router` to `to`, quoting `quoted`.
pub fn icmp6_packet_too_big(router: &str, to: &str, mtu: u32, quoted: &[u8]) -> Frame {
    let quote = &quoted[..(40 + 8).min(quoted.len())];
    let mut m = vec![2, 0, 0, 0];
    m.extend_from_slice(&mtu.to_be_bytes());
    m.extend_from_slice(quote);
    let (s, d): (IpAddr, IpAddr) = (router.parse().unwrap(), to.parse().unwrap());
    let sum = transport_checksum(s, d, 58, &m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    Frame::new(
        router,
        to,
        L4::Raw {
            proto: 58,
            bytes: m,
        },
    )
}

/// The frame an IPIP/IP6IP6 balancer must emit for `inner` (an Ethernet
/// frame built by [`Frame::build`]): Ethernet from `src_mac` to `dst_mac`
/// (keeping `inner`'s VLAN tag), a fresh outer header from `outer_src` to
/// `outer_dst` with TTL 64, then `inner`'s IP datagram untouched.
pub fn expected_ipip(
    inner: &Frame,
    outer_src: IpAddr,
    outer_dst: IpAddr,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
) -> Vec<u8> {
    let datagram = inner.ip_packet();
    match (outer_src, outer_dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let df = inner.frag & 0x4000;
            let outer = ipv4(
                s.octets(),
                d.octets(),
                4,
                64,
                inner.tos,
                inner.ip_id,
                df,
                &[],
                &datagram,
            );
            ethernet(dst_mac, src_mac, inner.vlan, 0x0800, &outer)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            // The flow label is the data path's flow hash: not predictable
            // here, so the caller copies it from the output (see `flow_label`).
            let outer = ipv6(s.octets(), d.octets(), 41, 64, inner.tos, 0, &datagram);
            ethernet(dst_mac, src_mac, inner.vlan, 0x86dd, &outer)
        }
        _ => panic!("mixed address families"),
    }
}

/// Offset of the network header in a frame (after an optional VLAN tag).
pub fn l3_offset(frame: &[u8]) -> usize {
    if frame.len() >= 14 && u16::from_be_bytes([frame[12], frame[13]]) == 0x8100 {
        18
    } else {
        14
    }
}

/// The outer destination of an encapsulated frame.
pub fn outer_dst(frame: &[u8]) -> IpAddr {
    let l3 = l3_offset(frame);
    if frame[l3] >> 4 == 4 {
        IpAddr::from(<[u8; 4]>::try_from(&frame[l3 + 16..l3 + 20]).unwrap())
    } else {
        IpAddr::from(<[u8; 16]>::try_from(&frame[l3 + 24..l3 + 40]).unwrap())
    }
}

/// The outer source of an encapsulated frame.
pub fn outer_src(frame: &[u8]) -> IpAddr {
    let l3 = l3_offset(frame);
    if frame[l3] >> 4 == 4 {
        IpAddr::from(<[u8; 4]>::try_from(&frame[l3 + 12..l3 + 16]).unwrap())
    } else {
        IpAddr::from(<[u8; 16]>::try_from(&frame[l3 + 8..l3 + 24]).unwrap())
    }
}

/// The IPv6 flow label of a frame's (outer) header.
pub fn flow_label(frame: &[u8]) -> u32 {
    let l3 = l3_offset(frame);
    u32::from_be_bytes([0, frame[l3 + 1] & 0x0f, frame[l3 + 2], frame[l3 + 3]])
}

/// Sets the IPv6 flow label of a frame's (outer) header.
pub fn set_flow_label(frame: &mut [u8], label: u32) {
    let l3 = l3_offset(frame);
    frame[l3 + 1] = (frame[l3 + 1] & 0xf0) | ((label >> 16) as u8 & 0x0f);
    frame[l3 + 2] = (label >> 8) as u8;
    frame[l3 + 3] = label as u8;
}

/// Whether the (outer) IPv4 header checksum of a frame verifies.
pub fn ipv4_checksum_ok(frame: &[u8]) -> bool {
    let l3 = l3_offset(frame);
    let hlen = ((frame[l3] & 0x0f) as usize) * 4;
    checksum(&frame[l3..l3 + hlen], 0) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let f = Frame::tcp("10.0.0.1", 1000, "10.0.0.2", 80).build();
        assert!(ipv4_checksum_ok(&f));
        let ip = &f[14..];
        let (s, d): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        // A segment including its own checksum sums to zero.
        assert_eq!(transport_checksum(s, d, 6, &ip[20..]), 0);
        let f6 = Frame::udp("2001:db8::1", 5, "2001:db8::2", 53).build();
        let (s, d): (IpAddr, IpAddr) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        );
        assert_eq!(transport_checksum(s, d, 17, &f6[54..]), 0);
    }
}
