//! Packets too big for the egress MTU once encapsulated, through
//! BPF_PROG_TEST_RUN: the balancer answers the client from the VIP with an
//! exact ICMP "fragmentation needed" (IPv4 with DF) or "packet too big"
//! (IPv6) quoting as much of the packet as 576 / 1280 bytes allow, with the
//! MTU that fits; IPv4 without DF, ICMP off and the rate limit drop the
//! packet, counted; anything under the MTU is forwarded as before.

use lb::model::{Proto, VipSettings};
use lb_common::Counter;
use lb_lab::{
    frame::{self, Frame, CLIENT_MAC, LB_MAC, TCP_ACK},
    harness::*,
};

const CLIENT: &str = "198.51.100.7";
const CLIENT6: &str = "2001:db8:c::7";
const VIP: &str = "10.100.0.1";
const VIP6: &str = "2001:db8:100::1";

/// A balancer whose backends' next hop has MTU 1500.
fn lb() -> TestLb {
    let mut t = TestLb::new();
    t.mtu = 1500;
    t.add_vip(
        vip(VIP, 80, Proto::Tcp),
        VipSettings::default(),
        &backends(&["10.0.0.2", "10.0.0.3"]),
    );
    t.add_vip(
        vip(VIP6, 80, Proto::Tcp),
        VipSettings::default(),
        &backends(&["2001:db8:b::2", "2001:db8:b::3"]),
    );
    t
}

/// A TCP segment of `ip_len` bytes in all from the client to `to`.
fn segment(from: &str, to: &str, ip_len: usize) -> Frame {
    let header = if to.contains(':') { 40 + 20 } else { 20 + 20 };
    Frame::tcp(from, 40000, to, 80)
        .with_flags(TCP_ACK)
        .with_payload(&vec![0x5a; ip_len - header])
}

/// The answer a conforming balancer sends for `input`, built here from the
/// RFCs, independently of the data path.
fn expected_answer(input: &Frame, mtu: u32) -> Vec<u8> {
    let ip = input.ip_packet();
    let v6 = input.dst.is_ipv6();
    let limit = if v6 { 1280 - 40 - 8 } else { 576 - 20 - 8 };
    let quote = &ip[..ip.len().min(limit) & !3];
    let mut icmp = if v6 {
        let mut m = vec![2, 0, 0, 0];
        m.extend_from_slice(&mtu.to_be_bytes());
        m
    } else {
        let mut m = vec![3, 4, 0, 0, 0, 0];
        m.extend_from_slice(&(mtu as u16).to_be_bytes());
        m
    };
    icmp.extend_from_slice(quote);
    let sum = if v6 {
        frame::transport_checksum(input.dst, input.src, 58, &icmp)
    } else {
        frame::checksum(&icmp, 0)
    };
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut answer = Frame::new(
        &input.dst.to_string(),
        &input.src.to_string(),
        frame::L4::Raw {
            proto: if v6 { 58 } else { 1 },
            bytes: icmp,
        },
    );
    answer.dst_mac = CLIENT_MAC;
    answer.src_mac = LB_MAC;
    answer.vlan = input.vlan;
    answer.ttl = 64;
    answer.tos = 0;
    answer.frag = 0;
    answer.ip_id = 0;
    answer.build()
}

#[test]
fn an_oversize_df_ipv4_packet_gets_an_exact_frag_needed() {
    let mut t = lb();
    for vlan in [None, Some(7)] {
        let mut input = segment(CLIENT, VIP, 1500);
        input.vlan = vlan;
        assert_eq!(input.frag & 0x4000, 0x4000, "DF set");
        let (action, out) = t.run(&input.build());
        assert_eq!(action, XDP_TX);
        let want = expected_answer(&input, 1480);
        assert_eq!(out.len(), want.len());
        assert_eq!(out, want, "the answer, byte for byte (VLAN {vlan:?})");
        assert!(frame::ipv4_checksum_ok(&out));
    }
    assert_eq!(t.counter(Counter::IcmpTooBigSent), 2);
    // One byte less than the MTU allows once encapsulated: forwarded.
    let fits = segment(CLIENT, VIP, 1480);
    let (action, out) = t.run(&fits.build());
    assert_eq!(action, XDP_TX);
    assert_eq!(
        out.len(),
        fits.build().len() + 20,
        "encapsulated, not answered"
    );
    assert_eq!(t.counter(Counter::IcmpTooBigSent), 2);
}

#[test]
fn an_oversize_ipv6_packet_gets_an_exact_packet_too_big() {
    let mut t = lb();
    let input = segment(CLIENT6, VIP6, 1500);
    let (action, out) = t.run(&input.build());
    assert_eq!(action, XDP_TX);
    assert_eq!(out, expected_answer(&input, 1460));
    assert_eq!(out.len(), 14 + 1280, "as much as fits in 1280 bytes");
    let fits = segment(CLIENT6, VIP6, 1460);
    let (action, out) = t.run(&fits.build());
    assert_eq!((action, out.len()), (XDP_TX, fits.build().len() + 40));
}

#[test]
fn without_df_or_with_icmp_off_the_packet_is_dropped_and_counted() {
    let mut t = lb();
    let mut no_df = segment(CLIENT, VIP, 1500);
    no_df.frag = 0;
    assert_eq!(t.run(&no_df.build()).0, XDP_DROP);
    assert_eq!(t.counter(Counter::DropTooBigNoDf), 1);
    t.lb.set_too_big(None).unwrap();
    assert_eq!(t.run(&segment(CLIENT, VIP, 1500).build()).0, XDP_DROP);
    assert_eq!(t.counter(Counter::DropTooBig), 1);
    assert_eq!(t.counter(Counter::IcmpTooBigSent), 0);
    // Malformed and oversize: dropped as malformed, never answered.
    t.lb.set_too_big(Some(100)).unwrap();
    let mut f = segment(CLIENT, VIP, 1500).build();
    f.truncate(f.len() - 100);
    assert_eq!(t.run(&f).0, XDP_DROP);
    assert_eq!(t.counter(Counter::DropTruncated), 1);
    assert_eq!(t.counter(Counter::IcmpTooBigSent), 0);
}

#[test]
fn answers_are_rate_limited_per_cpu() {
    let mut t = lb();
    t.lb.set_too_big(Some(20)).unwrap();
    let f = segment(CLIENT, VIP, 1500).build();
    let answered = (0..500).filter(|_| t.run(&f).0 == XDP_TX).count();
    println!("500 oversize packets at once: {answered} answered");
    // A burst of the rate (20), and what the clock adds while the loop runs.
    assert!((20..=25).contains(&answered), "{answered} answered");
    assert_eq!(t.counter(Counter::IcmpTooBigSent) as usize, answered);
    assert_eq!(
        t.counter(Counter::DropTooBigRateLimited) as usize,
        500 - answered
    );
}
