//! The backend-side decap program, through BPF_PROG_TEST_RUN.

use lb::decap::{Decap, DecapCounters};
use lb_lab::{
    frame::{self, Frame, LB_MAC},
    harness::{run_xdp, XDP_DROP, XDP_PASS},
};

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

/// A SYN-ACK with one MSS option, from `src` (a VIP or the host's own
/// address), as a backend sends it.
fn syn_ack(src: &str, dst: &str, mss: u16, flags: u8) -> Frame {
    let (s, d): (std::net::IpAddr, std::net::IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let mut t = Vec::new();
    t.extend_from_slice(&80u16.to_be_bytes());
    t.extend_from_slice(&40000u16.to_be_bytes());
    t.extend_from_slice(&7u32.to_be_bytes());
    t.extend_from_slice(&8u32.to_be_bytes());
    t.push(7 << 4); // 28 bytes: the header and 8 bytes of options
    t.push(flags);
    t.extend_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(&[1, 1]); // NOPs first, as stacks do
    t.extend_from_slice(&[2, 4]);
    t.extend_from_slice(&mss.to_be_bytes());
    t.extend_from_slice(&[1, 1]);
    let sum = frame::transport_checksum(s, d, 6, &t);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    Frame::new(src, dst, frame::L4::Raw { proto: 6, bytes: t })
}

fn run_tc(prog: &aya::programs::SchedClassifier, frame: &[u8]) -> Vec<u8> {
    use aya::programs::{TestRun, TestRunOptions};
    let mut out = vec![0u8; frame.len() + 64];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(r.return_value, 0, "TC_ACT_OK");
    out.truncate(r.data_size_out as usize);
    out
}

/// The MSS clamp lowers the MSS of SYN-ACKs from a VIP, fixes the checksum
/// and changes nothing else; the host's own SYN-ACKs, other segments and
/// MSS values already low enough pass untouched.
#[test]
fn the_mss_clamp_lowers_only_a_vips_syn_acks() {
    let mut d = decap();
    let prog = d
        .mss_clamp_program(lb_common::MssClamp { v4: 1440, v6: 1400 })
        .expect("the clamp program");
    for (vip, client, own, want) in [
        ("10.100.0.1", "198.51.100.7", "10.0.0.2", 1440u16),
        ("2001:db8:100::1", "2001:db8:c::7", "2001:db8:b::2", 1400),
    ] {
        let f = syn_ack(vip, client, 1460, 0x12).build();
        let out = run_tc(prog, &f);
        let l4 = frame::l3_offset(&f) + if vip.contains(':') { 40 } else { 20 };
        let mss = u16::from_be_bytes([out[l4 + 24], out[l4 + 25]]);
        assert_eq!(mss, want, "{vip}");
        let mut expected = f.clone();
        expected[l4 + 24..l4 + 26].copy_from_slice(&want.to_be_bytes());
        // The checksum of the changed segment, computed here.
        expected[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
        let sum = frame::transport_checksum(
            vip.parse().unwrap(),
            client.parse().unwrap(),
            6,
            &expected[l4..],
        );
        expected[l4 + 16..l4 + 18].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(out, expected, "only the MSS and the checksum change");
        for untouched in [
            syn_ack(own, client, 1460, 0x12).build(),
            syn_ack(vip, client, 1460, 0x02).build(),
            syn_ack(vip, client, 1460, 0x10).build(),
            syn_ack(vip, client, 1300, 0x12).build(),
        ] {
            assert_eq!(run_tc(prog, &untouched), untouched);
        }
    }
}
