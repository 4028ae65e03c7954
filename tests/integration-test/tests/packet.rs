//! Packet tests: each builds a frame, runs the real balancer program through
//! BPF_PROG_TEST_RUN, and checks the action and the whole output frame (or
//! every rewritten field and checksum).

use std::net::IpAddr;

use lb::model::EncapSources;
use lb::model::{BackendSpec, Forwarding, Proto, Scheduler, VipId, VipSettings};
use lb_common::{ConnEntry, Counter, FlowKey};
use lb_lab::{
    frame::{self, expected_ipip, Frame, LB_MAC, TCP_ACK, TCP_RST},
    harness::*,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn l2dsr() -> VipSettings {
    VipSettings {
        forwarding: Forwarding::L2dsr,
        ..Default::default()
    }
}

fn flow_of(f: &Frame) -> FlowKey {
    let (sport, dport) = match f.l4 {
        frame::L4::Tcp { sport, dport, .. } | frame::L4::Udp { sport, dport } => (sport, dport),
        _ => (0, 0),
    };
    FlowKey::new(f.src, sport, f.dst, dport, f.proto())
}

/// Checks an IPIP/IP6IP6 output against the frame the test expects.
fn assert_ipip(out: &[u8], input: &Frame, outer_src: &str, backend: &str) {
    assert_ipip_of(out, input, outer_src, backend, "encapsulated frame");
}

/// [`assert_ipip`], a failure naming `what`.
fn assert_ipip_of(out: &[u8], input: &Frame, outer_src: &str, backend: &str, what: &str) {
    let b = ip(backend);
    let mut want = expected_ipip(input, ip(outer_src), b, backend_mac(b), LB_MAC);
    if b.is_ipv6() {
        // The outer flow label is the data path's flow hash; the rest of the
        // frame must match exactly.
        frame::set_flow_label(&mut want, frame::flow_label(out));
    } else {
        assert!(frame::ipv4_checksum_ok(out), "{what}: outer IPv4 checksum");
    }
    assert_eq!(out, &want[..], "{what}");
}

const V4_CLIENT: &str = "198.51.100.7";
const V6_CLIENT: &str = "2001:db8:c::7";

/// A balancer with the VIP most tests use: 10.100.0.1:80/`proto` sending
/// to 10.0.0.2.
fn lb_with_web_vip(proto: Proto) -> TestLb {
    let mut t = TestLb::new();
    t.add_vip(
        vip("10.100.0.1", 80, proto),
        VipSettings::default(),
        &backends(&["10.0.0.2"]),
    );
    t
}

/// A balancer whose one VIP, 10.100.0.1:80/tcp with default settings,
/// sends to `set`.
fn web_vip_over(set: &[BackendSpec]) -> (TestLb, VipId) {
    let mut t = TestLb::new();
    let v = vip("10.100.0.1", 80, Proto::Tcp);
    t.add_vip(v, VipSettings::default(), set);
    (t, v)
}

/// [`lb_with_web_vip`] and its IPv6 twin, 2001:db8:100::1:80/tcp sending to
/// 2001:db8:b::2.
fn lb_with_web_vips(v4_proto: Proto) -> TestLb {
    let mut t = lb_with_web_vip(v4_proto);
    t.add_vip(
        vip("2001:db8:100::1", 80, Proto::Tcp),
        VipSettings::default(),
        &backends(&["2001:db8:b::2"]),
    );
    t
}

// ---------------------------------------------------------------- frame tables

/// What a frame must come out of the balancer as.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// `XDP_TX`, encapsulated from (outer source) to (backend): the whole
    /// frame as [`expected_ipip`] builds it.
    Ipip(&'static str, &'static str),
    /// `XDP_TX` with only the MACs changed, toward the backend's.
    MacsTo(&'static str),
    /// `XDP_PASS`, byte-identical.
    Untouched,
    /// This action; the frame is not looked at.
    Action(u32),
}

/// A row's input: the bytes sent, and the frame they were built from when
/// there is one (encapsulation and MAC checks need it).
struct Input {
    bytes: Vec<u8>,
    frame: Option<Frame>,
}

impl From<Frame> for Input {
    fn from(f: Frame) -> Input {
        Input {
            bytes: f.build(),
            frame: Some(f),
        }
    }
}

impl From<Vec<u8>> for Input {
    fn from(bytes: Vec<u8>) -> Input {
        Input { bytes, frame: None }
    }
}

/// Runs one row through `t` and checks it; `row` names it in failures.
fn check_row(t: &mut TestLb, row: &str, input: &Input, want: Want) {
    let (action, out) = t.run(&input.bytes);
    let frame = || {
        input
            .frame
            .as_ref()
            .unwrap_or_else(|| panic!("{row}: {want:?} needs a Frame, not bytes"))
    };
    match want {
        Want::Ipip(outer_src, backend) => {
            assert_eq!(action, XDP_TX, "{row}");
            assert_ipip_of(&out, frame(), outer_src, backend, row);
        }
        Want::MacsTo(backend) => {
            let mut want = frame().clone();
            want.dst_mac = backend_mac(ip(backend));
            want.src_mac = LB_MAC;
            assert_eq!(action, XDP_TX, "{row}");
            assert_eq!(out, want.build(), "{row}: only the MACs change");
        }
        Want::Untouched => assert_eq!(
            (action, &out[..]),
            (XDP_PASS, &input.bytes[..]),
            "{row}: byte-identical pass"
        ),
        Want::Action(a) => assert_eq!(action, a, "{row}"),
    }
}

/// One `#[test]` per entry: a balancer from the expression in parentheses,
/// then each row (`input => want`) through it in order, a failure naming the
/// test, the row and its input; `then |t| { ... }` checks afterwards what
/// a row cannot say (counters).
macro_rules! frame_table {
    ($(
        $(#[$doc:meta])*
        fn $name:ident($setup:expr) {
            $($input:expr => $want:expr),+ $(,)?
        }
        $(then |$t:ident| $then:block)?
    )+) => {$(
        $(#[$doc])*
        #[test]
        fn $name() {
            #[allow(unused_mut)]
            let mut t: TestLb = $setup;
            let rows: Vec<(&str, Input, Want)> =
                vec![$((stringify!($input), $input.into(), $want)),+];
            for (i, (text, input, want)) in rows.into_iter().enumerate() {
                let row = format!("{} row {} ({text})", stringify!($name), i + 1);
                check_row(&mut t, &row, &input, want);
            }
            $(let $t = &mut t; $then)?
        }
    )+};
}

/// A balancer with one backend for each of `vips`.
fn lb_with(vips: &[(VipId, VipSettings, &str)]) -> TestLb {
    let mut t = TestLb::new();
    for (v, settings, backend) in vips {
        t.add_vip(*v, *settings, &backends(&[backend]));
    }
    t
}

/// A SYN from the v4 client to 10.100.0.1:`dport` carrying IPv4 options:
/// router alert + NOP padding, then a record-route option (12 bytes).
fn with_ip_options(dport: u16) -> Frame {
    let mut f = Frame::tcp(V4_CLIENT, 5000, "10.100.0.1", dport);
    f.ip_options = vec![0x94, 0x04, 0, 0, 0x07, 0x07, 0x04, 0, 0, 0, 0, 0x01];
    f
}

/// `frame` with the bytes at `at` replaced by `bytes`.
fn damaged(frame: Frame, at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut b = frame.build();
    b[at..at + bytes.len()].copy_from_slice(bytes);
    b
}

/// An ARP frame (broadcast, 28 zero bytes of ARP).
fn arp() -> Vec<u8> {
    let mut arp = frame::ethernet([0xff; 6], frame::CLIENT_MAC, None, 0x0806, &[0u8; 28]);
    arp.truncate(42);
    arp
}

/// A GRE packet to the web VIP's address.
fn gre_to_the_vip() -> Frame {
    Frame::new(
        V4_CLIENT,
        "10.100.0.1",
        frame::L4::Raw {
            proto: 47,
            bytes: vec![0; 24],
        },
    )
}

frame_table! {
    fn ipip_tcp_and_udp_ipv4_and_ipv6(lb_with(&[
        (vip("10.100.0.1", 80, Proto::Tcp), VipSettings::default(), "10.0.0.2"),
        (vip("10.100.0.1", 80, Proto::Udp), VipSettings::default(), "10.0.0.3"),
        (vip("2001:db8:100::1", 80, Proto::Tcp), VipSettings::default(), "2001:db8:b::2"),
        (vip("2001:db8:100::1", 80, Proto::Udp), VipSettings::default(), "2001:db8:b::3"),
    ])) {
        Frame::tcp(V4_CLIENT, 40000, "10.100.0.1", 80) => Want::Ipip(LB_SRC_V4, "10.0.0.2"),
        Frame::udp(V4_CLIENT, 40000, "10.100.0.1", 80) => Want::Ipip(LB_SRC_V4, "10.0.0.3"),
        Frame::tcp(V6_CLIENT, 40000, "2001:db8:100::1", 80) => Want::Ipip(LB_SRC_V6, "2001:db8:b::2"),
        Frame::udp(V6_CLIENT, 40000, "2001:db8:100::1", 80) => Want::Ipip(LB_SRC_V6, "2001:db8:b::3"),
    }
    then |t| {
        let c = t.lb.counters().unwrap();
        assert_eq!(c.get(Counter::ActionTx), 4);
        for (v, s) in &c.vips {
            assert_eq!((s.packets, v.port), (1, 80));
        }
    }

    fn l2dsr_rewrites_only_the_destination_mac(lb_with(&[
        (vip("10.100.0.1", 443, Proto::Tcp), l2dsr(), "10.0.0.2"),
        (vip("10.100.0.1", 443, Proto::Udp), l2dsr(), "10.0.0.2"),
        (vip("2001:db8:100::1", 443, Proto::Tcp), l2dsr(), "2001:db8:b::2"),
        (vip("2001:db8:100::1", 443, Proto::Udp), l2dsr(), "2001:db8:b::2"),
    ])) {
        Frame::tcp(V4_CLIENT, 1234, "10.100.0.1", 443) => Want::MacsTo("10.0.0.2"),
        Frame::udp(V4_CLIENT, 1234, "10.100.0.1", 443) => Want::MacsTo("10.0.0.2"),
        Frame::tcp(V6_CLIENT, 1234, "2001:db8:100::1", 443) => Want::MacsTo("2001:db8:b::2"),
        Frame::udp(V6_CLIENT, 1234, "2001:db8:100::1", 443) => Want::MacsTo("2001:db8:b::2"),
    }

    fn vlan_tagged_frames_keep_their_tag(lb_with_web_vips(Proto::Tcp)) {
        Frame::tcp(V4_CLIENT, 5000, "10.100.0.1", 80).with_vlan(0x2064)
            => Want::Ipip(LB_SRC_V4, "10.0.0.2"),
        Frame::tcp(V6_CLIENT, 5000, "2001:db8:100::1", 80).with_vlan(7)
            => Want::Ipip(LB_SRC_V6, "2001:db8:b::2"),
    }

    /// The same ports behind the options: a port mismatch would pass.
    fn ipv4_options_are_honoured_and_carried(lb_with_web_vip(Proto::Tcp)) {
        with_ip_options(80) => Want::Ipip(LB_SRC_V4, "10.0.0.2"),
        with_ip_options(81) => Want::Action(XDP_PASS),
    }

    /// Another protocol to the same address is not this VIP.
    fn portless_vip_takes_every_port(lb_with(&[
        (vip("10.100.0.9", 0, Proto::Udp), VipSettings::default(), "10.0.0.2"),
    ])) {
        Frame::udp(V4_CLIENT, 999, "10.100.0.9", 1) => Want::Ipip(LB_SRC_V4, "10.0.0.2"),
        Frame::udp(V4_CLIENT, 999, "10.100.0.9", 53) => Want::Ipip(LB_SRC_V4, "10.0.0.2"),
        Frame::udp(V4_CLIENT, 999, "10.100.0.9", 8080) => Want::Ipip(LB_SRC_V4, "10.0.0.2"),
        Frame::udp(V4_CLIENT, 999, "10.100.0.9", 65535) => Want::Ipip(LB_SRC_V4, "10.0.0.2"),
        Frame::tcp(V4_CLIENT, 999, "10.100.0.9", 53) => Want::Untouched,
    }

    /// Another address, port or protocol than a VIP's, or not IP at all.
    fn traffic_not_for_a_vip_passes_untouched(lb_with_web_vips(Proto::Tcp)) {
        Frame::tcp(V4_CLIENT, 1000, "10.100.0.2", 80) => Want::Untouched,
        Frame::tcp(V4_CLIENT, 1000, "10.100.0.1", 81) => Want::Untouched,
        Frame::udp(V4_CLIENT, 1000, "10.100.0.1", 80) => Want::Untouched,
        Frame::tcp(V6_CLIENT, 1000, "2001:db8:100::2", 80) => Want::Untouched,
        Frame::udp(V6_CLIENT, 1000, "2001:db8:100::1", 80) => Want::Untouched,
        gre_to_the_vip() => Want::Untouched,
        arp() => Want::Untouched,
    }
    then |t| {
        let c = t.lb.counters().unwrap();
        assert_eq!(c.get(Counter::ActionPass), 7);
        assert_eq!(c.get(Counter::PassNotVip), 6);
        assert_eq!(c.get(Counter::PassNotIp), 1);
    }

    /// IHL below 5, a total length shorter than the header; the same damage
    /// to a non-VIP packet is the kernel's business.
    fn bad_headers_to_a_vip_are_dropped_and_counted(lb_with_web_vip(Proto::Tcp)) {
        damaged(Frame::tcp(V4_CLIENT, 1000, "10.100.0.1", 80), 14, &[0x44])
            => Want::Action(XDP_DROP),
        damaged(Frame::tcp(V4_CLIENT, 1000, "10.100.0.1", 80), 16, &10u16.to_be_bytes())
            => Want::Action(XDP_DROP),
        damaged(Frame::tcp(V4_CLIENT, 1000, "10.100.0.2", 80), 14, &[0x44]) => Want::Untouched,
    }
    then |t| {
        assert_eq!(t.counter(Counter::DropBadHeader), 2);
    }
}

#[test]
fn a_port_vip_wins_over_the_portless_one() {
    let mut t = TestLb::new();
    t.add_vip(
        vip("10.100.0.9", 0, Proto::Tcp),
        VipSettings::default(),
        &backends(&["10.0.0.2"]),
    );
    t.add_vip(
        vip("10.100.0.9", 443, Proto::Tcp),
        VipSettings::default(),
        &backends(&["10.0.0.3"]),
    );
    let (_, out) = t.run(&Frame::tcp(V4_CLIENT, 1, "10.100.0.9", 443).build());
    assert_eq!(frame::outer_dst(&out), ip("10.0.0.3"));
    let (_, out) = t.run(&Frame::tcp(V4_CLIENT, 1, "10.100.0.9", 444).build());
    assert_eq!(frame::outer_dst(&out), ip("10.0.0.2"));
}

/// `n` TCP flows from the client to the web VIP, from source port `first` on.
fn web_flows(first: u16, n: u16) -> Vec<Frame> {
    (0..n)
        .map(|i| Frame::tcp(V4_CLIENT, first + i, "10.100.0.1", 80))
        .collect()
}

fn ten_backends_v4() -> Vec<BackendSpec> {
    (2..12)
        .map(|i| BackendSpec {
            addr: ip(&format!("10.0.0.{i}")),
            weight: 100,
            tier: 0,
        })
        .collect()
}

#[test]
fn source_hash_keeps_a_client_on_one_backend() {
    let mut t = TestLb::new();
    let settings = VipSettings {
        scheduler: Scheduler::SourceHash,
        ..Default::default()
    };
    t.add_vip(
        vip("10.100.0.1", 80, Proto::Tcp),
        settings,
        &ten_backends_v4(),
    );
    let mut used = std::collections::BTreeSet::new();
    for client in 1..=50u8 {
        let src = format!("198.51.100.{client}");
        let (a1, o1) = t.run(&Frame::tcp(&src, 10000, "10.100.0.1", 80).build());
        let (a2, o2) = t.run(&Frame::tcp(&src, 20000 + client as u16, "10.100.0.1", 80).build());
        assert_eq!((a1, a2), (XDP_TX, XDP_TX));
        assert_eq!(
            frame::outer_dst(&o1),
            frame::outer_dst(&o2),
            "client {src}: two ports, one backend"
        );
        used.insert(frame::outer_dst(&o1));
    }
    // ...while different clients still spread.
    assert!(
        used.len() >= 5,
        "50 clients landed on only {} backends",
        used.len()
    );
}

#[test]
fn stateless_vip_keeps_no_state() {
    let mut t = TestLb::new();
    let settings = VipSettings {
        stateless: true,
        ..Default::default()
    };
    t.add_vip(
        vip("10.100.0.1", 80, Proto::Tcp),
        settings,
        &backends(&["10.0.0.2"]),
    );
    let input = Frame::tcp(V4_CLIENT, 5000, "10.100.0.1", 80);
    let (action, out) = t.run(&input.build());
    assert_eq!(action, XDP_TX);
    assert_ipip(&out, &input, LB_SRC_V4, "10.0.0.2");
    assert_eq!(t.lb.conntrack_entry(&flow_of(&input)), None);
    assert_eq!(t.lb.conntrack_len(), 0);
    let c = t.lb.counters().unwrap();
    assert_eq!(c.get(Counter::ConnHit) + c.get(Counter::ConnMiss), 0);
}

#[test]
fn outer_source_comes_from_the_prefix_and_the_flow() {
    let mut t = TestLb::new();
    t.lb.set_encap_sources(&EncapSources {
        v4: Some(("192.0.2.0".parse().unwrap(), 24)),
        v6: Some(("2001:db8:ffff::".parse().unwrap(), 112)),
    })
    .unwrap();
    t.add_vip(
        vip("10.100.0.1", 80, Proto::Tcp),
        VipSettings::default(),
        &backends(&["10.0.0.2"]),
    );
    t.add_vip(
        vip("2001:db8:100::1", 80, Proto::Tcp),
        VipSettings::default(),
        &backends(&["2001:db8:b::2"]),
    );
    for (client, vip_addr) in [(V4_CLIENT, "10.100.0.1"), (V6_CLIENT, "2001:db8:100::1")] {
        let mut sources = std::collections::BTreeSet::new();
        for sport in 1000..1064 {
            let input = Frame::tcp(client, sport, vip_addr, 80);
            let (_, first) = t.run(&input.build());
            let (_, again) = t.run(&input.clone().with_flags(TCP_ACK).build());
            let src = frame::outer_src(&first);
            assert_eq!(src, frame::outer_src(&again), "one flow, one outer source");
            // The host bits are the flow hash's, as lb-common computes them.
            let hash = t.lb.predict(&flow_of(&input)).unwrap().hash;
            let want = match src {
                IpAddr::V4(_) => {
                    let host = hash & u32::from_ne_bytes([0, 0, 0, 0xff]);
                    let base = u32::from_ne_bytes([192, 0, 2, 0]);
                    IpAddr::from((base | host).to_ne_bytes())
                }
                IpAddr::V6(_) => {
                    let mut o: [u8; 16] = "2001:db8:ffff::"
                        .parse::<std::net::Ipv6Addr>()
                        .unwrap()
                        .octets();
                    let host = (hash & u32::from_ne_bytes([0, 0, 0xff, 0xff])).to_ne_bytes();
                    o[14] = host[2];
                    o[15] = host[3];
                    IpAddr::from(o)
                }
            };
            assert_eq!(src, want);
            let mut expect_in = input.clone();
            expect_in.l4 = input.l4.clone();
            assert_ipip(
                &first,
                &input,
                &src.to_string(),
                if src.is_ipv4() {
                    "10.0.0.2"
                } else {
                    "2001:db8:b::2"
                },
            );
            sources.insert(src);
        }
        assert!(
            sources.len() > 16,
            "64 flows used only {} outer sources",
            sources.len()
        );
    }
}

#[test]
fn truncated_vip_packets_are_never_forwarded() {
    for input in [
        Frame::tcp(V4_CLIENT, 1000, "10.100.0.1", 80),
        Frame::udp(V4_CLIENT, 1000, "10.100.0.1", 80),
        Frame::tcp(V6_CLIENT, 1000, "2001:db8:100::1", 80),
        Frame::tcp(V4_CLIENT, 1000, "10.100.0.1", 80).with_vlan(5),
    ] {
        let mut t = lb_with_web_vips(input_proto(&input));
        let full = input.build();
        let l3 = frame::l3_offset(&full);
        let dst_end = l3 + if input.src.is_ipv4() { 20 } else { 40 };
        let mut refused = 0;
        for len in 0..full.len() {
            let cut = &full[..len];
            let before = t.lb.counters().unwrap();
            let Ok((action, out)) = try_run_xdp(t.lb.program(), cut) else {
                // The kernel itself refuses frames shorter than an Ethernet
                // header; no driver delivers them either.
                assert!(len < 14, "test run refused a {len}-byte frame");
                refused += 1;
                continue;
            };
            let after = t.lb.counters().unwrap();
            let delta = |c| after.get(c) - before.get(c);
            assert_eq!(
                delta(Counter::ActionPass) + delta(Counter::ActionDrop),
                1,
                "len {len}: counted once"
            );
            if len < dst_end {
                // Too short to know it is for a VIP: the kernel's, unchanged.
                assert_eq!((action, &out[..]), (XDP_PASS, cut), "len {len}");
                assert_eq!(delta(Counter::PassMalformed), 1, "len {len}");
            } else {
                assert_eq!(action, XDP_DROP, "len {len}");
                assert_eq!(delta(Counter::DropTruncated), 1, "len {len}");
            }
        }
        assert_eq!(refused, 14);
        // The full frame is still forwarded: the drops were about length.
        assert_eq!(t.run(&full).0, XDP_TX);
    }
}

fn input_proto(f: &Frame) -> Proto {
    if f.proto() == 6 {
        Proto::Tcp
    } else {
        Proto::Udp
    }
}

#[test]
fn icmp_errors_reach_the_flows_backend() {
    let mut t = TestLb::new();
    t.add_vip(
        vip("10.100.0.1", 80, Proto::Tcp),
        VipSettings::default(),
        &ten_backends_v4(),
    );
    let v6_backends: Vec<BackendSpec> = (2..12)
        .map(|i| BackendSpec {
            addr: ip(&format!("2001:db8:b::{i}")),
            weight: 100,
            tier: 0,
        })
        .collect();
    t.add_vip(
        vip("2001:db8:100::1", 80, Proto::Tcp),
        VipSettings::default(),
        &v6_backends,
    );
    let mut checked = 0;
    for sport in 3000..3020 {
        for (client, vip_addr, router) in [
            (V4_CLIENT, "10.100.0.1", "203.0.113.1"),
            (V6_CLIENT, "2001:db8:100::1", "2001:db8:ee::1"),
        ] {
            let flow = Frame::tcp(client, sport, vip_addr, 80);
            let (_, first) = t.run(&flow.build());
            let owner = frame::outer_dst(&first);
            let icmp = if client.contains(':') {
                frame::icmp6_packet_too_big(router, vip_addr, 1280, &frame::reply_of(&flow, 1400))
            } else {
                frame::icmp4_error(router, vip_addr, 3, 4, 1400, &frame::reply_of(&flow, 1400))
            };
            let (action, out) = t.run(&icmp.build());
            assert_eq!(action, XDP_TX);
            assert_eq!(
                frame::outer_dst(&out),
                owner,
                "ICMP error follows flow {client}:{sport}"
            );
            // The ICMP message itself travels untouched inside the tunnel.
            let l3 = frame::l3_offset(&out);
            let outer = if owner.is_ipv4() { 20 } else { 40 };
            assert_eq!(&out[l3 + outer..], &icmp.ip_packet()[..]);
            checked += 1;
        }
    }
    assert_eq!(checked, 40);
    assert_eq!(t.counter(Counter::IcmpFragNeeded), 20);
    assert_eq!(t.counter(Counter::IcmpPacketTooBig), 20);
}

#[test]
fn icmp_errors_follow_the_table_when_the_flow_has_no_entry() {
    // A stateless VIP: the error must land where the table puts the flow.
    let mut t = TestLb::new();
    let settings = VipSettings {
        stateless: true,
        ..Default::default()
    };
    t.add_vip(
        vip("10.100.0.1", 80, Proto::Tcp),
        settings,
        &ten_backends_v4(),
    );
    for sport in 100..120 {
        let flow = Frame::tcp(V4_CLIENT, sport, "10.100.0.1", 80);
        let want = t.lb.predict(&flow_of(&flow)).unwrap().backend.unwrap();
        let icmp = frame::icmp4_error(
            "203.0.113.1",
            "10.100.0.1",
            3,
            4,
            1400,
            &frame::reply_of(&flow, 1400),
        );
        let (action, out) = t.run(&icmp.build());
        assert_eq!((action, frame::outer_dst(&out)), (XDP_TX, want));
    }
    // Echo requests to a VIP address are the kernel's.
    let echo = frame::icmp4_error("203.0.113.1", "10.100.0.1", 8, 0, 0, &[0x45; 28]).build();
    assert_eq!(t.run(&echo), (XDP_PASS, echo.clone()));
}

#[test]
fn flows_stick_to_their_backend_across_table_changes() {
    let (mut t, v) = web_vip_over(&backends(&["10.0.0.2", "10.0.0.3"]));
    let flows = web_flows(20000, 200);
    let first: Vec<IpAddr> = flows
        .iter()
        .map(|f| frame::outer_dst(&t.run(&f.build()).1))
        .collect();

    // Eight more backends: most flows' slots now name another backend.
    let mut more = backends(&["10.0.0.2", "10.0.0.3"]);
    more.extend(ten_backends_v4().into_iter().skip(2));
    t.add_vip(v, VipSettings::default(), &more);
    let mut moved_in_table = 0;
    for (f, was) in flows.iter().zip(&first) {
        let (action, out) = t.run(&f.clone().with_flags(TCP_ACK).build());
        assert_eq!(
            (action, frame::outer_dst(&out)),
            (XDP_TX, *was),
            "established flow keeps its backend"
        );
        if t.lb.predict(&flow_of(f)).unwrap().backend != Some(*was) {
            moved_in_table += 1;
        }
    }
    assert!(
        moved_in_table > 100,
        "the new table must move most flows ({moved_in_table})"
    );

    // New flows follow the new table.
    for i in 0..200 {
        let f = Frame::tcp(V4_CLIENT, 40000 + i, "10.100.0.1", 80);
        let want = t.lb.predict(&flow_of(&f)).unwrap().backend.unwrap();
        assert_eq!(frame::outer_dst(&t.run(&f.build()).1), want);
    }
}

#[test]
fn idle_expired_entries_are_rehashed() {
    let mut t = TestLb::new();
    let v = vip("10.100.0.1", 80, Proto::Udp);
    t.add_vip(v, VipSettings::default(), &ten_backends_v4());
    let f = Frame::udp(V4_CLIENT, 777, "10.100.0.1", 80);
    let flow = flow_of(&f);
    let (predicted, other, other_id) = table_choice_and_another(&t, &v, &flow);

    // A live entry naming another backend wins over the table...
    let now = lb::daemon::monotonic_ns();
    t.lb.set_conntrack_entry(
        &flow,
        ConnEntry {
            backend_id: other_id,
            flow_hash: 0,
            last_seen_ns: now,
            flags: 0,
        },
    )
    .unwrap();
    assert_eq!(frame::outer_dst(&t.run(&f.build()).1), other);
    // ...but one idle for longer than the UDP timeout (300 s) is a miss.
    let stale = now - 301 * 1_000_000_000;
    t.lb.set_conntrack_entry(
        &flow,
        ConnEntry {
            backend_id: other_id,
            flow_hash: 0,
            last_seen_ns: stale,
            flags: 0,
        },
    )
    .unwrap();
    assert_eq!(frame::outer_dst(&t.run(&f.build()).1), predicted);
    assert_eq!(t.counter(Counter::ConnExpired), 1);
    let e = t.lb.conntrack_entry(&flow).unwrap();
    assert_eq!(e.backend_id, t.lb.backend_id(&v, predicted).unwrap());
    assert!(e.last_seen_ns > stale);
}

/// The data path's clock (the kernel's tick counter, calibrated by the
/// loader) is CLOCK_MONOTONIC, the time user space writes entries with and
/// measures idleness against: a new flow's entry is stamped between the
/// readings taken around its packet, less the tick the clock lags by.
#[test]
fn a_new_entry_is_stamped_with_clock_monotonic() {
    let mut t = TestLb::new();
    let v = vip("10.100.0.1", 80, Proto::Udp);
    t.add_vip(v, VipSettings::default(), &ten_backends_v4());
    let f = Frame::udp(V4_CLIENT, 778, "10.100.0.1", 80);
    let before = lb::daemon::monotonic_ns();
    t.run(&f.build());
    let after = lb::daemon::monotonic_ns();
    let stamped = t.lb.conntrack_entry(&flow_of(&f)).unwrap().last_seen_ns;
    // Slack: a tick is at most 1/24 s; the calibration may put the clock
    // a reading's delay (µs) ahead.
    const TICK_MAX_NS: u64 = 41_666_667;
    const READING_NS: u64 = 1_000_000;
    assert!(
        stamped <= after + READING_NS,
        "stamped {stamped} ns, after the packet {after} ns"
    );
    assert!(
        stamped + TICK_MAX_NS >= before,
        "stamped {stamped} ns, before the packet {before} ns"
    );
}

/// The backend the table picks for `flow`, and another backend of `v`
/// with its id (to plant a connection-table entry that disagrees).
fn table_choice_and_another(t: &TestLb, v: &VipId, flow: &FlowKey) -> (IpAddr, IpAddr, u32) {
    let predicted = t.lb.predict(flow).unwrap().backend.unwrap();
    let other = ten_backends_v4()
        .into_iter()
        .map(|b| b.addr)
        .find(|a| *a != predicted)
        .unwrap();
    (predicted, other, t.lb.backend_id(v, other).unwrap())
}

#[test]
fn tcp_rst_creates_no_entry() {
    let mut t = lb_with_web_vip(Proto::Tcp);
    let rst = Frame::tcp(V4_CLIENT, 5555, "10.100.0.1", 80).with_flags(TCP_RST | TCP_ACK);
    let (action, out) = t.run(&rst.build());
    assert_eq!(action, XDP_TX);
    assert_ipip(&out, &rst, LB_SRC_V4, "10.0.0.2");
    assert_eq!(t.lb.conntrack_entry(&flow_of(&rst)), None);
    let syn = Frame::tcp(V4_CLIENT, 5556, "10.100.0.1", 80);
    t.run(&syn.build());
    assert!(t.lb.conntrack_entry(&flow_of(&syn)).is_some());
}

#[test]
fn removed_or_down_backends_lose_their_flows() {
    let (mut t, v) = web_vip_over(&ten_backends_v4());
    let flows = web_flows(30000, 100);
    for f in &flows {
        t.run(&f.build());
    }
    let gone = ip("10.0.0.5");
    let rest: Vec<BackendSpec> = ten_backends_v4()
        .into_iter()
        .filter(|b| b.addr != gone)
        .collect();
    t.lb.set_backends(v, &rest).unwrap();
    for f in &flows {
        let (_, out) = t.run(&f.clone().with_flags(TCP_ACK).build());
        assert_ne!(
            frame::outer_dst(&out),
            gone,
            "no packet to a removed backend"
        );
    }
    // Health: a down backend's established flows move too.
    let down = ip("10.0.0.6");
    t.lb.set_backend_down(&v, down, true).unwrap();
    for f in &flows {
        let (_, out) = t.run(&f.clone().with_flags(TCP_ACK).build());
        assert_ne!(frame::outer_dst(&out), down);
    }
}

#[test]
fn drained_backends_keep_established_flows() {
    let (mut t, v) = web_vip_over(&ten_backends_v4());
    let flows = web_flows(30000, 200);
    let owners: Vec<IpAddr> = flows
        .iter()
        .map(|f| frame::outer_dst(&t.run(&f.build()).1))
        .collect();
    let drained = owners[0];
    let set: Vec<BackendSpec> = ten_backends_v4()
        .into_iter()
        .map(|b| {
            if b.addr == drained {
                BackendSpec { weight: 0, ..b }
            } else {
                b
            }
        })
        .collect();
    t.lb.set_backends(v, &set).unwrap();
    for (f, owner) in flows.iter().zip(&owners) {
        assert_eq!(
            frame::outer_dst(&t.run(&f.clone().with_flags(TCP_ACK).build()).1),
            *owner
        );
    }
    for i in 0..300 {
        let f = Frame::tcp(V4_CLIENT, 50000 + i, "10.100.0.1", 80);
        assert_ne!(
            frame::outer_dst(&t.run(&f.build()).1),
            drained,
            "no new flow to a drained backend"
        );
    }
}

// Packets of established flows find their VIP through their entry
// (`VIP_BY_ID`) instead of `VIPS`: the next four tests hold that path to the
// same answers as the `VIPS` one.

#[test]
fn established_flows_are_served_through_their_entry() {
    let (mut t, _) = web_vip_over(&ten_backends_v4());
    let flows = web_flows(31000, 50);
    for f in &flows {
        t.run(&f.build());
    }
    let (hits, misses) = (t.counter(Counter::ConnHit), t.counter(Counter::ConnMiss));
    for f in &flows {
        let ack = f.clone().with_flags(TCP_ACK);
        let want =
            t.lb.route(&flow_of(f), lb::daemon::monotonic_ns(), u64::MAX);
        let want = want.unwrap().backend;
        let (action, out) = t.run(&ack.build());
        assert_eq!((action, Some(frame::outer_dst(&out))), (XDP_TX, want));
        assert_ipip(&out, &ack, LB_SRC_V4, &want.unwrap().to_string());
    }
    assert_eq!(t.counter(Counter::ConnHit), hits + 50);
    assert_eq!(t.counter(Counter::ConnMiss), misses);
}

#[test]
fn an_entry_never_serves_a_vip_that_is_gone() {
    let mut t = TestLb::new();
    let old = vip("10.100.0.1", 80, Proto::Tcp);
    t.add_vip(old, VipSettings::default(), &backends(&["10.0.0.2"]));
    // The address stays a VIP's (another port), so the address filter does
    // not decide for the tests below.
    let other_port = vip("10.100.0.1", 443, Proto::Tcp);
    t.add_vip(other_port, VipSettings::default(), &backends(&["10.0.0.4"]));
    let f = Frame::tcp(V4_CLIENT, 4242, "10.100.0.1", 80).with_flags(TCP_ACK);
    assert_eq!(t.run(&f.build()).0, XDP_TX);
    let kept = t.lb.conntrack_entry(&flow_of(&f)).unwrap();
    assert_ne!(kept.flow_hash, 0, "made by the program, hash kept");
    t.lb.remove_vip(&old).unwrap();
    let input = f.build();
    assert_eq!(
        t.run(&input),
        (XDP_PASS, input.clone()),
        "not a VIP any more"
    );

    // Another VIP takes the same backend address: the old flow's entry,
    // pointed at the new VIP's backend, still does not make it a VIP flow.
    let new = vip("10.100.0.7", 80, Proto::Tcp);
    t.add_vip(new, VipSettings::default(), &backends(&["10.0.0.2"]));
    let id = t.lb.backend_id(&new, ip("10.0.0.2")).unwrap();
    let planted = ConnEntry {
        backend_id: id,
        last_seen_ns: lb::daemon::monotonic_ns(),
        ..kept
    };
    t.lb.set_conntrack_entry(&flow_of(&f), planted).unwrap();
    assert_eq!(t.run(&input), (XDP_PASS, input.clone()));
    let g = Frame::tcp(V4_CLIENT, 4242, "10.100.0.7", 80).with_flags(TCP_ACK);
    assert_eq!(frame::outer_dst(&t.run(&g.build()).1), ip("10.0.0.2"));
}

#[test]
fn a_new_port_vip_takes_established_flows_of_the_portless_one() {
    let mut t = TestLb::new();
    t.add_vip(
        vip("10.100.0.9", 0, Proto::Tcp),
        VipSettings::default(),
        &backends(&["10.0.0.2"]),
    );
    let f = Frame::tcp(V4_CLIENT, 7, "10.100.0.9", 443).with_flags(TCP_ACK);
    assert_eq!(frame::outer_dst(&t.run(&f.build()).1), ip("10.0.0.2"));
    assert_eq!(frame::outer_dst(&t.run(&f.build()).1), ip("10.0.0.2"));
    t.add_vip(
        vip("10.100.0.9", 443, Proto::Tcp),
        VipSettings::default(),
        &backends(&["10.0.0.3"]),
    );
    // As `VIPS` decides: the port's own VIP first, whose backend the entry
    // does not name (stale), so the flow is placed on the new VIP.
    let stale = t.counter(Counter::ConnStale);
    assert_eq!(frame::outer_dst(&t.run(&f.build()).1), ip("10.0.0.3"));
    assert_eq!(t.counter(Counter::ConnStale), stale + 1);
    assert_eq!(frame::outer_dst(&t.run(&f.build()).1), ip("10.0.0.3"));
}

#[test]
fn established_flows_follow_a_change_of_forwarding_and_of_state() {
    let mut t = TestLb::new();
    let v = vip("10.100.0.1", 80, Proto::Tcp);
    t.add_vip(v, VipSettings::default(), &backends(&["10.0.0.2"]));
    let f = Frame::tcp(V4_CLIENT, 999, "10.100.0.1", 80).with_flags(TCP_ACK);
    let input = f.build();
    let (_, out) = t.run(&input);
    assert_ipip(&out, &f, LB_SRC_V4, "10.0.0.2");
    // L2 DSR from the next packet on: same length, the backend's MAC.
    t.lb.upsert_vip(v, l2dsr()).unwrap();
    let (action, out) = t.run(&input);
    assert_eq!((action, out.len()), (XDP_TX, input.len()));
    assert_eq!(out[..6], backend_mac(ip("10.0.0.2")));
    // Stateless: the entry is no longer consulted (nor counted).
    let stateless = VipSettings {
        stateless: true,
        ..l2dsr()
    };
    t.lb.upsert_vip(v, stateless).unwrap();
    let hits = t.counter(Counter::ConnHit);
    assert_eq!(t.run(&input).0, XDP_TX);
    assert_eq!(t.counter(Counter::ConnHit), hits);
}

#[test]
fn the_entry_filter_names_the_addresses_of_stateful_vips() {
    let mut t = TestLb::new();
    let addr = ip("10.100.0.1");
    let filtered = |t: &TestLb, proto| t.lb.entry_filtered(addr, proto).unwrap();
    let (tcp, udp) = (
        vip("10.100.0.1", 80, Proto::Tcp),
        vip("10.100.0.1", 53, Proto::Udp),
    );
    assert!(!filtered(&t, Proto::Tcp) && !filtered(&t, Proto::Udp));
    t.add_vip(tcp, VipSettings::default(), &backends(&["10.0.0.2"]));
    let stateless = VipSettings {
        stateless: true,
        ..VipSettings::default()
    };
    t.add_vip(udp, stateless, &backends(&["10.0.0.3"]));
    // The protocol counts: a stateless UDP VIP beside a stateful TCP one
    // keeps its packets off the connection table.
    assert!(filtered(&t, Proto::Tcp) && !filtered(&t, Proto::Udp));
    t.lb.upsert_vip(tcp, stateless).unwrap();
    assert!(!filtered(&t, Proto::Tcp));
    t.lb.upsert_vip(tcp, VipSettings::default()).unwrap();
    assert!(filtered(&t, Proto::Tcp));
    // Established flows of the VIP made stateful again are served (through
    // their entries) as before.
    let f = Frame::tcp(V4_CLIENT, 4242, "10.100.0.1", 80).with_flags(TCP_ACK);
    assert_eq!(frame::outer_dst(&t.run(&f.build()).1), ip("10.0.0.2"));
    let hits = t.counter(Counter::ConnHit);
    assert_eq!(frame::outer_dst(&t.run(&f.build()).1), ip("10.0.0.2"));
    assert_eq!(t.counter(Counter::ConnHit), hits + 1);
    t.lb.remove_vip(&tcp).unwrap();
    assert!(!filtered(&t, Proto::Tcp));
}

#[test]
fn ipv4_fragments_of_a_datagram_share_a_backend() {
    let mut t = TestLb::new();
    t.add_vip(
        vip("10.100.0.1", 53, Proto::Udp),
        VipSettings::default(),
        &ten_backends_v4(),
    );
    let mut used = std::collections::BTreeSet::new();
    for id in 0..64u16 {
        let client = format!("198.51.100.{}", id + 1);
        let mut first = Frame::udp(&client, 5353, "10.100.0.1", 53).with_payload(&[7; 64]);
        first.ip_id = id;
        first.frag = 0x2000; // MF, offset 0
        let mut later = Frame::new(
            &client,
            "10.100.0.1",
            frame::L4::Raw {
                proto: 17,
                bytes: vec![9; 40],
            },
        );
        later.ip_id = id;
        later.frag = 9; // offset 72 bytes, last fragment
        let (a1, o1) = t.run(&first.build());
        let (a2, o2) = t.run(&later.build());
        assert_eq!((a1, a2), (XDP_TX, XDP_TX));
        assert_eq!(
            frame::outer_dst(&o1),
            frame::outer_dst(&o2),
            "datagram {id}"
        );
        assert_eq!(
            &o2[34..],
            &later.ip_packet()[..],
            "fragment carried untouched"
        );
        used.insert(frame::outer_dst(&o1));
    }
    assert!(used.len() >= 5);
    assert_eq!(t.counter(Counter::Ipv4Fragment), 128);
    assert_eq!(t.lb.conntrack_len(), 0, "fragments keep no state");
}

#[test]
fn unresolved_next_hop_uses_the_fib_and_passes_without_neighbour() {
    let (mut t, _) = web_vip_over(&backends(&["10.0.0.2"]));
    t.lb.set_next_hop(ip("10.0.0.2"), None).unwrap();
    let f = Frame::tcp(V4_CLIENT, 1, "10.100.0.1", 80).build();
    let (action, out) = t.run(&f);
    // This test's network namespace has no route to the backend: the FIB
    // says so and the packet is dropped, counted, never sent.
    assert!(action == XDP_PASS || action == XDP_DROP, "action {action}");
    if action == XDP_PASS {
        assert_eq!(out, f);
    }
    let c = t.lb.counters().unwrap();
    assert_eq!(c.get(Counter::NexthopFib), 1);
    assert_eq!(
        c.get(Counter::NexthopUnresolved) + c.get(Counter::DropFibFailed),
        1
    );
}

#[test]
fn empty_vip_drops_and_counts() {
    let (mut t, v) = web_vip_over(&[]);
    assert_eq!(
        t.run(&Frame::tcp(V4_CLIENT, 1, "10.100.0.1", 80).build()).0,
        XDP_DROP
    );
    let zero = [BackendSpec {
        addr: ip("10.0.0.2"),
        weight: 0,
        tier: 0,
    }];
    t.lb.set_backends(v, &zero).unwrap();
    assert_eq!(
        t.run(&Frame::tcp(V4_CLIENT, 2, "10.100.0.1", 80).build()).0,
        XDP_DROP
    );
    assert_eq!(t.counter(Counter::DropNoBackend), 2);
    // Removing the VIP hands its traffic back to the kernel.
    t.lb.remove_vip(&v).unwrap();
    let f = Frame::tcp(V4_CLIENT, 3, "10.100.0.1", 80).build();
    assert_eq!(t.run(&f), (XDP_PASS, f.clone()));
}

#[test]
fn per_vip_and_per_backend_counters_add_up() {
    let (mut t, v) = web_vip_over(&backends(&["10.0.0.2", "10.0.0.3"]));
    let mut bytes = 0;
    for i in 0..50 {
        let f = Frame::tcp(V4_CLIENT, 9000 + i, "10.100.0.1", 80).build();
        bytes += f.len() as u64;
        t.run(&f);
    }
    let c = t.lb.counters().unwrap();
    assert_eq!((c.vips[&v].packets, c.vips[&v].bytes), (50, bytes));
    let per_backend: u64 = c.backends.values().map(|s| s.packets).sum();
    assert_eq!(per_backend, 50);
    assert_eq!(c.get(Counter::ConnMiss), 50);
    assert_eq!(c.get(Counter::ActionTx), 50);
}

#[test]
fn all_backends_down_fails_open() {
    let (mut t, v) = web_vip_over(&backends(&["10.0.0.2", "10.0.0.3", "10.0.0.4"]));
    t.lb.set_backend_down(&v, ip("10.0.0.2"), true).unwrap();
    t.lb.set_backend_down(&v, ip("10.0.0.3"), true).unwrap();
    assert!(!t.lb.fail_open(&v));
    for i in 0..50 {
        let (_, out) = t.run(&Frame::tcp(V4_CLIENT, 100 + i, "10.100.0.1", 80).build());
        assert_eq!(
            frame::outer_dst(&out),
            ip("10.0.0.4"),
            "only the healthy backend"
        );
    }
    // The last one goes down too: rather than drop everything, send to all.
    t.lb.set_backend_down(&v, ip("10.0.0.4"), true).unwrap();
    assert!(t.lb.fail_open(&v));
    let mut used = std::collections::BTreeSet::new();
    for i in 0..100 {
        let (action, out) = t.run(&Frame::tcp(V4_CLIENT, 1000 + i, "10.100.0.1", 80).build());
        assert_eq!(action, XDP_TX);
        used.insert(frame::outer_dst(&out));
    }
    assert_eq!(used.len(), 3, "fail open spreads over every backend");
    // One comes back: fail open ends and only it takes new flows.
    t.lb.set_backend_down(&v, ip("10.0.0.3"), false).unwrap();
    assert!(!t.lb.fail_open(&v));
    for i in 0..50 {
        let (_, out) = t.run(&Frame::tcp(V4_CLIENT, 5000 + i, "10.100.0.1", 80).build());
        assert_eq!(frame::outer_dst(&out), ip("10.0.0.3"));
    }
}

#[test]
fn a_syn_on_a_reused_port_follows_the_table() {
    let (mut t, v) = web_vip_over(&ten_backends_v4());
    let syn = Frame::tcp(V4_CLIENT, 4242, "10.100.0.1", 80);
    let flow = flow_of(&syn);
    let (predicted, other, other_id) = table_choice_and_another(&t, &v, &flow);
    // An earlier connection from the same client port left a live entry on
    // another backend (say, one drained since)...
    let entry = ConnEntry {
        backend_id: other_id,
        flow_hash: 0,
        last_seen_ns: lb::daemon::monotonic_ns(),
        flags: 0,
    };
    t.lb.set_conntrack_entry(&flow, entry).unwrap();
    // ...its packets still go there,
    assert_eq!(
        frame::outer_dst(&t.run(&syn.clone().with_flags(TCP_ACK).build()).1),
        other
    );
    // but a new connection's SYN follows the table, and takes the entry.
    assert_eq!(frame::outer_dst(&t.run(&syn.build()).1), predicted);
    assert_eq!(
        t.lb.conntrack_entry(&flow).unwrap().backend_id,
        t.lb.backend_id(&v, predicted).unwrap()
    );
    assert_eq!(
        frame::outer_dst(&t.run(&syn.clone().with_flags(TCP_ACK).build()).1),
        predicted
    );
}

/// The filter bit of an IPv4 address.
fn filter_bit(addr: &str) -> u32 {
    let ip: IpAddr = addr.parse().unwrap();
    lb_common::vip_filter_bit(&lb_common::user::addr_words(ip).0)
}

/// An address in 10.200/16 whose filter bit is (or is not) `bit`.
fn address_with_bit(bit: u32, same: bool) -> String {
    (0..65536u32)
        .map(|i| format!("10.200.{}.{}", i / 256, i % 256))
        .find(|a| (filter_bit(a) == bit) == same)
        .expect("65536 addresses cover every case")
}

#[test]
fn the_vip_address_filter_passes_other_traffic_and_tolerates_collisions() {
    let mut t = lb_with_web_vip(Proto::Tcp);
    let vip_bit = filter_bit("10.100.0.1");
    let clear = address_with_bit(vip_bit, false);
    let collides = address_with_bit(vip_bit, true);

    // Not a VIP, bit clear: passed before any VIP lookup, unchanged.
    let f = Frame::tcp("198.51.100.7", 40000, &clear, 80).build();
    assert_eq!(t.run(&f), (XDP_PASS, f.clone()));
    // Not a VIP, but its bit is the VIP's: the lookups decide, same result.
    let g = Frame::tcp("198.51.100.7", 40000, &collides, 80).build();
    assert_eq!(t.run(&g), (XDP_PASS, g.clone()));
    assert_eq!(t.counter(Counter::PassNotVip), 2);
    // The VIP itself is served.
    let (action, out) = t.run(&Frame::tcp("198.51.100.7", 40000, "10.100.0.1", 80).build());
    assert_eq!((action, frame::outer_dst(&out)), (XDP_TX, ip("10.0.0.2")));

    // A second VIP on the colliding address, then the first one removed: the
    // shared bit stays for the second, which is still served.
    t.add_vip(
        vip(&collides, 80, Proto::Tcp),
        VipSettings::default(),
        &backends(&["10.0.0.3"]),
    );
    t.lb.remove_vip(&vip("10.100.0.1", 80, Proto::Tcp)).unwrap();
    let (action, out) = t.run(&g);
    assert_eq!((action, frame::outer_dst(&out)), (XDP_TX, ip("10.0.0.3")));
    let f = Frame::tcp("198.51.100.7", 40000, "10.100.0.1", 80).build();
    assert_eq!(t.run(&f), (XDP_PASS, f.clone()));

    // Last VIP gone: every packet is "not a VIP" again, and the bit is clear
    // (a malformed packet to the old address is passed, not dropped).
    t.lb.remove_vip(&vip(&collides, 80, Proto::Tcp)).unwrap();
    let before = t.counter(Counter::PassNotVip);
    assert_eq!(t.run(&g), (XDP_PASS, g.clone()));
    let mut bad = g.clone();
    bad[14] = 0x44; // IPv4 with a 16-byte header: malformed
    assert_eq!(t.run(&bad), (XDP_PASS, bad.clone()));
    assert_eq!(t.counter(Counter::PassNotVip), before + 2);
}

#[test]
fn only_frames_to_the_interfaces_mac_are_forwarded() {
    let mut t = lb_with_web_vips(Proto::Tcp);
    t.lb.set_interface_mac(LB_MAC).unwrap();
    let to = |mac: [u8; 6], src: &str, sport: u16, dst: &str| {
        let mut f = Frame::tcp(src, sport, dst, 80);
        f.dst_mac = mac;
        f.build()
    };
    // Addressed to this interface: forwarded, both families.
    assert_eq!(t.run(&to(LB_MAC, V4_CLIENT, 1, "10.100.0.1")).0, XDP_TX);
    assert_eq!(
        t.run(&to(LB_MAC, V6_CLIENT, 1, "2001:db8:100::1")).0,
        XDP_TX
    );
    // Flooded frames for another balancer (one MAC byte off, each end),
    // broadcast and multicast: passed untouched, counted, no flow made.
    let others = [
        [0x02, 0, 0, 0, 0, 0x0c],
        [0x03, 0, 0, 0, 0, 0x0b],
        [0xff; 6],
        [0x33, 0x33, 0, 0, 0, 1],
    ];
    let entries = t.lb.conntrack_len();
    let mut passed = 0;
    for (i, mac) in others.iter().enumerate() {
        let sport = 100 + i as u16;
        for f in [
            to(*mac, V4_CLIENT, sport, "10.100.0.1"),
            to(*mac, V6_CLIENT, sport, "2001:db8:100::1"),
        ] {
            assert_eq!(t.run(&f), (XDP_PASS, f.clone()), "dst MAC {mac:02x?}");
            passed += 1;
        }
    }
    assert_eq!(t.counter(Counter::PassOtherHost), passed);
    assert_eq!(
        t.lb.conntrack_len(),
        entries,
        "no entry for another host's flow"
    );
    // Traffic for no VIP is the kernel's whatever its MAC: not-VIP, as before.
    let not_vip = to([0x02, 0, 0, 0, 0, 0x0c], V4_CLIENT, 1, "10.0.0.99");
    assert_eq!(t.run(&not_vip).0, XDP_PASS);
    assert_eq!(t.counter(Counter::PassOtherHost), passed);
    // No MAC written (all zero): no check.
    t.lb.set_interface_mac([0; 6]).unwrap();
    assert_eq!(t.run(&to(others[0], V4_CLIENT, 1, "10.100.0.1")).0, XDP_TX);
}
