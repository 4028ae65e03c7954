//! ICMP errors that are not what they seem, and a property test of the
//! whole program over randomly mutated frames, through BPF_PROG_TEST_RUN.
//!
//! The four cases (each was forwarded to a backend before):
//! 1. an error whose outer destination is not the VIP address the quoted
//!    flow belongs to (an address that passes the VIP prefilter, and another
//!    VIP's address) is passed unchanged;
//! 2. a non-first IPv4 fragment with protocol 1 follows the fragment rules
//!    (no VIP serves protocol 1: passed);
//! 3. IPv4 with protocol 58 and IPv6 with next header 1 are not ICMP;
//! 4. a quoted header of the wrong IP version is malformed: dropped and
//!    counted at a VIP address.
//!
//! The property test mutates valid frames (truncations, flipped bytes, bogus
//! lengths and versions, VLAN tags, fragments, protocol numbers, addresses)
//! and checks invariants on every outcome: a passed frame comes back
//! byte-identical; a forwarded one carries the input's IP packet
//! byte-identical inside a correct outer header (checksum, length) to a
//! backend of a VIP on the input's destination address, and the input was
//! well-formed; a frame for no VIP address is never dropped.

use std::{collections::BTreeMap, net::IpAddr};

use lb::model::{BackendSpec, Forwarding, Proto, VipSettings};
use lb_common::{user::addr_words, Counter};
use lb_lab::{
    frame::{self, Frame, TCP_ACK},
    harness::*,
    rng::Rng,
};

const CLIENT: &str = "198.51.100.7";
const CLIENT6: &str = "2001:db8:c::7";
const ROUTER: &str = "203.0.113.1";
const ROUTER6: &str = "2001:db8:ee::1";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// VIPs: TCP:80 and UDP:53 on v4, an L2-DSR v4 VIP, TCP:80 on v6.
struct Setup {
    t: TestLb,
    /// Every backend of every VIP on each VIP address.
    backends_of: BTreeMap<IpAddr, Vec<IpAddr>>,
}

fn setup() -> Setup {
    let mut t = TestLb::new();
    let v4: Vec<BackendSpec> = backends(&["10.0.0.2", "10.0.0.3", "10.0.0.4"]);
    let v4b: Vec<BackendSpec> = backends(&["10.0.1.2", "10.0.1.3"]);
    let v6: Vec<BackendSpec> = backends(&["2001:db8:b::2", "2001:db8:b::3"]);
    let dsr = VipSettings {
        forwarding: Forwarding::L2dsr,
        ..Default::default()
    };
    t.add_vip(
        vip("10.100.0.1", 80, Proto::Tcp),
        VipSettings::default(),
        &v4,
    );
    t.add_vip(
        vip("10.200.1.1", 53, Proto::Udp),
        VipSettings::default(),
        &v4b,
    );
    t.add_vip(vip(DSR_VIP, 80, Proto::Tcp), dsr, &v4b);
    t.add_vip(
        vip("2001:db8:100::1", 80, Proto::Tcp),
        VipSettings::default(),
        &v6,
    );
    let mut backends_of: BTreeMap<IpAddr, Vec<IpAddr>> = BTreeMap::new();
    for (a, set) in [
        ("10.100.0.1", &v4),
        ("10.200.1.1", &v4b),
        ("10.100.0.9", &v4b),
        ("2001:db8:100::1", &v6),
    ] {
        backends_of
            .entry(ip(a))
            .or_default()
            .extend(set.iter().map(|b| b.addr));
    }
    Setup { t, backends_of }
}

/// An IPv4 address other than any VIP's whose prefilter bit is `vip`'s.
fn prefilter_twin(vip: &str) -> String {
    let want = lb_common::vip_filter_bit(&addr_words(ip(vip)).0);
    (0..=u32::MAX)
        .map(|n| std::net::Ipv4Addr::from(0x6442_0000u32.wrapping_add(n)))
        .find(|a| lb_common::vip_filter_bit(&addr_words(IpAddr::V4(*a)).0) == want)
        .unwrap()
        .to_string()
}

#[test]
fn an_error_to_another_address_is_passed() {
    let mut s = setup();
    let dns = Frame::udp(CLIENT, 4000, "10.200.1.1", 53);
    // To an address that passes the VIP prefilter but is no VIP.
    let twin = prefilter_twin("10.200.1.1");
    let e = frame::icmp4_error(ROUTER, &twin, 3, 4, 1400, &frame::reply_of(&dns, 200)).build();
    assert_eq!(s.t.run(&e), (XDP_PASS, e.clone()), "to {twin}");
    // To another VIP's address (an L2-DSR one).
    let e = frame::icmp4_error(
        ROUTER,
        "10.100.0.9",
        3,
        4,
        1400,
        &frame::reply_of(&dns, 200),
    )
    .build();
    assert_eq!(s.t.run(&e), (XDP_PASS, e.clone()));
    // To the flow's own VIP address it is steered, as before.
    let e = frame::icmp4_error(
        ROUTER,
        "10.200.1.1",
        3,
        4,
        1400,
        &frame::reply_of(&dns, 200),
    )
    .build();
    assert_eq!(s.t.run(&e).0, XDP_TX);
}

#[test]
fn a_later_fragment_with_protocol_1_follows_the_fragment_rules() {
    let mut s = setup();
    let web = Frame::tcp(CLIENT, 4000, "10.100.0.1", 80);
    let mut e = frame::icmp4_error(
        ROUTER,
        "10.100.0.1",
        3,
        4,
        1400,
        &frame::reply_of(&web, 200),
    );
    // Offset 8 (64 bytes in): the middle of a message, no ICMP header.
    e.frag = 8;
    let f = e.build();
    assert_eq!(s.t.run(&f), (XDP_PASS, f.clone()));
    // A first fragment too: fragments are steered by addresses only, and no
    // VIP serves protocol 1.
    e.frag = 0x2000;
    let f = e.build();
    assert_eq!(s.t.run(&f), (XDP_PASS, f.clone()));
}

#[test]
fn icmp_of_the_other_family_is_not_icmp() {
    let mut s = setup();
    let web = Frame::tcp(CLIENT, 4000, "10.100.0.1", 80);
    let mut e = frame::icmp4_error(
        ROUTER,
        "10.100.0.1",
        3,
        4,
        1400,
        &frame::reply_of(&web, 200),
    );
    if let frame::L4::Raw { proto, .. } = &mut e.l4 {
        *proto = 58;
    }
    let f = e.build();
    assert_eq!(s.t.run(&f), (XDP_PASS, f.clone()), "IPv4 protocol 58");
    let web6 = Frame::tcp(CLIENT6, 4000, "2001:db8:100::1", 80);
    let mut e6 = frame::icmp6_packet_too_big(
        ROUTER6,
        "2001:db8:100::1",
        1280,
        &frame::reply_of(&web6, 200),
    );
    if let frame::L4::Raw { proto, .. } = &mut e6.l4 {
        *proto = 1;
    }
    let f = e6.build();
    assert_eq!(s.t.run(&f), (XDP_PASS, f.clone()), "IPv6 next header 1");
    assert_eq!(s.t.counter(Counter::DropIcmpMalformed), 0);
}

#[test]
fn a_quote_of_the_wrong_version_is_malformed() {
    let mut s = setup();
    let web = Frame::tcp(CLIENT, 4000, "10.100.0.1", 80);
    let mut quoted = frame::reply_of(&web, 200);
    quoted[0] = 0x65; // version 6, IHL 5
    let f = frame::icmp4_error(ROUTER, "10.100.0.1", 3, 4, 1400, &quoted).build();
    assert_eq!(s.t.run(&f).0, XDP_DROP, "ICMPv4 quoting version 6");
    let web6 = Frame::tcp(CLIENT6, 4000, "2001:db8:100::1", 80);
    let mut quoted6 = frame::reply_of(&web6, 200);
    quoted6[0] = 0xc0 | (quoted6[0] & 0x0f); // version 12
    let f = frame::icmp6_packet_too_big(ROUTER6, "2001:db8:100::1", 1280, &quoted6).build();
    assert_eq!(s.t.run(&f).0, XDP_DROP, "ICMPv6 quoting version 12");
    assert_eq!(s.t.counter(Counter::DropIcmpMalformed), 2);
}

// ---------------------------------------------------------------- property

/// Valid frames of every kind the balancer handles, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for sport in [4000u16, 4001] {
        let web = Frame::tcp(CLIENT, sport, "10.100.0.1", 80).with_flags(TCP_ACK);
        let dns = Frame::udp(CLIENT, sport, "10.200.1.1", 53);
        let dsr = Frame::tcp(CLIENT, sport, "10.100.0.9", 80);
        let web6 = Frame::tcp(CLIENT6, sport, "2001:db8:100::1", 80).with_flags(TCP_ACK);
        for f in [&web, &dns, &dsr, &web6] {
            v.push(f.build());
            let mut tagged = f.clone();
            tagged.vlan = Some(100);
            v.push(tagged.build());
        }
        let mut frag = dns.clone();
        frag.payload = vec![7; 64];
        frag.frag = 0x2000;
        v.push(frag.build());
        frag.frag = 3;
        v.push(frag.build());
        v.push(
            frame::icmp4_error(
                ROUTER,
                "10.100.0.1",
                3,
                4,
                1400,
                &frame::reply_of(&web, 200),
            )
            .build(),
        );
        v.push(
            frame::icmp4_error(ROUTER, "10.200.1.1", 3, 3, 0, &frame::reply_of(&dns, 200)).build(),
        );
        v.push(
            frame::icmp6_packet_too_big(
                ROUTER6,
                "2001:db8:100::1",
                1280,
                &frame::reply_of(&web6, 200),
            )
            .build(),
        );
    }
    v
}

/// Offset of the IP header, or `None` for a frame that is not IP.
fn l3_of(f: &[u8]) -> Option<(usize, u16)> {
    let mut off = 12;
    let mut et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    if et == 0x8100 {
        off += 4;
        et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    }
    Some((off + 2, et))
}

/// The destination address of an IP frame.
fn dst_of(f: &[u8]) -> Option<IpAddr> {
    let (l3, et) = l3_of(f)?;
    match et {
        0x0800 => {
            let b: [u8; 4] = f.get(l3 + 16..l3 + 20)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        0x86dd => {
            let b: [u8; 16] = f.get(l3 + 24..l3 + 40)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// The IP packet of a frame as its header announces it, if the header is
/// sane and the packet fits.
fn ip_packet(f: &[u8]) -> Option<&[u8]> {
    let (l3, et) = l3_of(f)?;
    let len = match et {
        0x0800 => {
            let vihl = *f.get(l3)?;
            if vihl >> 4 != 4 || (vihl & 15) < 5 {
                return None;
            }
            let tot = u16::from_be_bytes([*f.get(l3 + 2)?, *f.get(l3 + 3)?]) as usize;
            if tot < (vihl as usize & 15) * 4 {
                return None;
            }
            tot
        }
        0x86dd => {
            if f.get(l3)? >> 4 != 6 {
                return None;
            }
            40 + u16::from_be_bytes([*f.get(l3 + 4)?, *f.get(l3 + 5)?]) as usize
        }
        _ => return None,
    };
    f.get(l3..l3 + len)
}

/// The L2-DSR VIP's address.
const DSR_VIP: &str = "10.100.0.9";

/// Whether an unfragmented TCP or UDP packet is too short for its header.
fn l4_short(p: &[u8]) -> bool {
    let (proto, l4_len, later_fragment) = if p[0] >> 4 == 4 {
        let ihl = (p[0] as usize & 15) * 4;
        let off = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
        (p[9], p.len().saturating_sub(ihl), off != 0)
    } else {
        (p[6], p.len() - 40, false)
    };
    let need = match proto {
        6 => 20,
        17 => 8,
        _ => 0,
    };
    !later_fragment && l4_len < need
}

/// One random change.
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    let l3 = l3_of(f).map_or(14, |(o, _)| o);
    match rng.below(10) {
        0 => {
            let n = rng.below(f.len() + 1);
            f.truncate(n);
        }
        1 | 2 => {
            if !f.is_empty() {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
        }
        3 => {
            // A field near the IP header set to a random byte: version and
            // IHL, lengths, flags and offset, protocol, next header.
            let i = l3 + [0, 2, 3, 4, 5, 6, 7, 9][rng.below(8)];
            if i < f.len() {
                f[i] = rng.next_u64() as u8;
            }
        }
        4 => {
            let proto = [1u8, 58, 4, 41, 6, 17, 0, 255][rng.below(8)];
            let i = if f.get(l3).is_some_and(|b| b >> 4 == 6) {
                l3 + 6
            } else {
                l3 + 9
            };
            if i < f.len() {
                f[i] = proto;
            }
        }
        5 => {
            // A VLAN tag (or a second one).
            if f.len() >= 14 {
                f.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
            }
        }
        6 => {
            // A fragment: MF and/or an offset.
            if f.get(l3).is_some_and(|b| b >> 4 == 4) && l3 + 8 <= f.len() {
                let v = [0x20u8, 0x00, 0x01, 0x21][rng.below(4)];
                f[l3 + 6] = v;
                f[l3 + 7] = rng.next_u64() as u8;
            }
        }
        7 => {
            // Bytes appended (Ethernet padding, or garbage).
            let n = rng.below(64);
            f.extend((0..n).map(|_| rng.next_u64() as u8));
        }
        8 => {
            // A byte inside the quoted header of an ICMP error.
            let i = l3 + 28 + rng.below(40);
            if i < f.len() {
                f[i] = rng.next_u64() as u8;
            }
        }
        _ => {
            // The destination: another VIP, or no VIP at all.
            let v4 = f.get(l3).is_some_and(|b| b >> 4 == 4);
            if v4 && l3 + 20 <= f.len() {
                let a = [
                    [10, 100, 0, 1],
                    [10, 200, 1, 1],
                    [10, 100, 0, 9],
                    [192, 0, 2, 77],
                ][rng.below(4)];
                f[l3 + 16..l3 + 20].copy_from_slice(&a);
            }
        }
    }
}

#[test]
fn mutated_frames_keep_the_invariants() {
    let mut s = setup();
    let seeds = seeds();
    let vip_addrs: Vec<IpAddr> = s.backends_of.keys().copied().collect();
    let mut rng = Rng(0x5eed_1c3f);
    let n: usize = std::env::var("LB_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut violations = Vec::new();
    let t0 = std::time::Instant::now();
    for i in 0..n {
        let mut f = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut f);
        }
        let Ok((action, out)) = try_run_xdp(s.t.lb.program(), &f) else {
            // The kernel refuses frames shorter than an Ethernet header.
            *outcomes.entry("refused by the kernel").or_default() += 1;
            continue;
        };
        let dst = dst_of(&f);
        let for_vip = dst.is_some_and(|d| vip_addrs.contains(&d));
        let mut bad = |what: String| {
            if violations.len() < 10 {
                violations.push(format!("frame {i}: {what}: {f:02x?}"));
            }
        };
        match action {
            XDP_PASS => {
                *outcomes.entry("passed").or_default() += 1;
                if out != f {
                    bad("passed but changed".into());
                }
            }
            XDP_DROP => {
                *outcomes.entry("dropped").or_default() += 1;
                if !for_vip {
                    bad(format!("dropped, but {dst:?} is no VIP address"));
                }
            }
            XDP_TX | XDP_REDIRECT => {
                *outcomes.entry("forwarded").or_default() += 1;
                let Some(inner) = ip_packet(&f) else {
                    bad("forwarded a frame whose IP header is not sane".into());
                    continue;
                };
                let d = dst.expect("an IP packet has a destination");
                let Some(set) = s.backends_of.get(&d) else {
                    bad(format!("forwarded a frame for {d}, no VIP address"));
                    continue;
                };
                if l4_short(inner) {
                    bad("forwarded a packet whose transport header does not fit".into());
                }
                if d == ip(DSR_VIP) {
                    // L2 DSR: only the MAC addresses change, to a backend's.
                    if out.len() != f.len() || out[12..] != f[12..] {
                        bad("L2 DSR changed more than the MAC addresses".into());
                    }
                    if !set.iter().any(|b| out[..6] == backend_mac(*b)) {
                        bad("L2 DSR to no backend's MAC".into());
                    }
                    continue;
                }
                let outer_dst = frame::outer_dst(&out);
                if !set.contains(&outer_dst) {
                    bad(format!("sent to {outer_dst}, no backend of a VIP on {d}"));
                }
                let l3 = frame::l3_offset(&out);
                let outer = if outer_dst.is_ipv4() { 20 } else { 40 };
                if outer_dst.is_ipv4() && !frame::ipv4_checksum_ok(&out) {
                    bad("the outer IPv4 header's checksum is wrong".into());
                }
                let announced = if outer_dst.is_ipv4() {
                    u16::from_be_bytes([out[l3 + 2], out[l3 + 3]]) as usize
                } else {
                    40 + u16::from_be_bytes([out[l3 + 4], out[l3 + 5]]) as usize
                };
                if announced != outer + inner.len() {
                    bad(format!("the outer header announces {announced} bytes"));
                }
                if out.get(l3 + outer..) != Some(inner) {
                    bad("the tunnel does not carry the input's IP packet byte for byte".into());
                }
            }
            a => bad(format!("action {a}")),
        }
    }
    println!(
        "{n} mutated frames in {:?}: {outcomes:?}; {} invariant violations",
        t0.elapsed(),
        violations.len()
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    for o in ["passed", "dropped", "forwarded"] {
        assert!(
            outcomes.get(o).copied().unwrap_or(0) > 0,
            "no frame was {o}"
        );
    }
}
