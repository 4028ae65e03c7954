//! The backend-side decap program, through BPF_PROG_TEST_RUN.

use integration_test::{
    frame::{self, Frame, LB_MAC},
    harness::{run_xdp, XDP_DROP, XDP_PASS},
};
use lb::decap::{Decap, DecapCounters};

const BACKEND_MAC: [u8; 6] = [2, 0xbe, 0, 0, 0, 2];

fn decap() -> Decap {
    let mut d = Decap::load().expect("load decap (root, built objects)");
    d.add_address("10.0.0.2".parse().unwrap()).unwrap();
    d.add_address("2001:db8:b::2".parse().unwrap()).unwrap();
    d
}

/// An encapsulated frame as the balancer sends it, and the frame the backend's
/// stack must receive after decap.
fn tunnel(inner: &Frame, outer_src: &str, outer_dst: &str) -> (Vec<u8>, Vec<u8>) {
    let wire = frame::expected_ipip(
        inner,
        outer_src.parse().unwrap(),
        outer_dst.parse().unwrap(),
        BACKEND_MAC,
        LB_MAC,
    );
    let ether_type = if inner.src.is_ipv4() { 0x0800 } else { 0x86dd };
    let delivered = frame::ethernet(
        BACKEND_MAC,
        LB_MAC,
        inner.vlan,
        ether_type,
        &inner.ip_packet(),
    );
    (wire, delivered)
}

#[test]
fn strips_ipip_and_ip6ip6_for_our_addresses() {
    let mut d = decap();
    let cases = [
        (
            Frame::tcp("198.51.100.7", 4000, "10.100.0.1", 80),
            "192.0.2.10",
            "10.0.0.2",
        ),
        (
            Frame::udp("198.51.100.7", 4000, "10.100.0.1", 53).with_vlan(12),
            "192.0.2.10",
            "10.0.0.2",
        ),
        (
            Frame::tcp("2001:db8:c::7", 4000, "2001:db8:100::1", 80),
            "2001:db8:ffff::10",
            "2001:db8:b::2",
        ),
        (
            Frame::udp("2001:db8:c::7", 4000, "2001:db8:100::1", 53).with_vlan(12),
            "2001:db8:ffff::10",
            "2001:db8:b::2",
        ),
    ];
    for (inner, src, dst) in &cases {
        let (wire, delivered) = tunnel(inner, src, dst);
        assert_eq!(run_xdp(d.program(), &wire), (XDP_PASS, delivered), "{dst}");
    }
    assert_eq!(
        d.counters().unwrap(),
        DecapCounters {
            decapsulated: 4,
            passed: 0,
            malformed: 0
        }
    );
}

#[test]
fn leaves_everything_else_alone() {
    let mut d = decap();
    let inner = Frame::tcp("198.51.100.7", 4000, "10.100.0.1", 80);
    let others = [
        tunnel(&inner, "192.0.2.10", "10.0.0.3").0, // a tunnel for another host
        Frame::tcp("198.51.100.7", 4000, "10.0.0.2", 22).build(), // plain traffic to us
        Frame::udp("2001:db8:c::7", 1, "2001:db8:b::2", 53).build(),
        frame::ethernet([0xff; 6], LB_MAC, None, 0x0806, &[0; 28]),
    ];
    for f in &others {
        assert_eq!(run_xdp(d.program(), f), (XDP_PASS, f.clone()));
    }
    assert_eq!(
        d.counters().unwrap(),
        DecapCounters {
            decapsulated: 0,
            passed: 4,
            malformed: 0
        }
    );
}

#[test]
fn drops_malformed_tunnel_packets_for_us() {
    let mut d = decap();
    let inner = Frame::tcp("198.51.100.7", 4000, "10.100.0.1", 80);
    let (wire, _) = tunnel(&inner, "192.0.2.10", "10.0.0.2");
    // Outer header only: no inner packet.
    assert_eq!(run_xdp(d.program(), &wire[..34]).0, XDP_DROP);
    // IPv4 outer claiming an IPv6 inner.
    let mut wrong = wire.clone();
    wrong[34] = 0x60;
    assert_eq!(run_xdp(d.program(), &wrong).0, XDP_DROP);
    assert_eq!(d.counters().unwrap().malformed, 2);
}
