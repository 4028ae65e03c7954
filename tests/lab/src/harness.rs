//! A balancer loaded for packet tests: small maps, resolved next hops, and a
//! `run` that pushes one frame through `BPF_PROG_TEST_RUN`.

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions};
use lb::model::{BackendSpec, Proto, VipId, VipSettings};
use lb::{
    balancer::{Balancer, LoadOptions},
    model::{EncapSources, Limits, NextHop},
};

use crate::frame::LB_MAC;

/// The ifindex `BPF_PROG_TEST_RUN` reports as ingress (loopback), so a next
/// hop on it means `XDP_TX`.
pub const TEST_IFINDEX: u32 = 1;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const LB_SRC_V4: &str = "192.0.2.10";
pub const LB_SRC_V6: &str = "2001:db8:ffff::10";

pub struct TestLb {
    pub lb: Balancer,
    /// The egress MTU `add_vip` gives its backends' next hops (0: none,
    /// no MTU check).
    pub mtu: u32,
}

/// A MAC derived from a backend address, so each backend's is distinct.
pub fn backend_mac(addr: IpAddr) -> [u8; 6] {
    let o = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let n = o.len();
    [0x02, 0xbe, o[n - 4], o[n - 3], o[n - 2], o[n - 1]]
}

pub fn vip(s: &str, port: u16, proto: Proto) -> VipId {
    VipId {
        addr: s.parse().expect("VIP address"),
        port,
        proto,
    }
}

pub fn backends(addrs: &[&str]) -> Vec<BackendSpec> {
    addrs
        .iter()
        .map(|a| BackendSpec {
            addr: a.parse().expect("backend address"),
            weight: 100,
            tier: 0,
        })
        .collect()
}

impl TestLb {
    pub fn new() -> TestLb {
        Self::with_options(LoadOptions {
            limits: Limits {
                max_vips: 8,
                table_pool: 8 * 2 * lb_common::MAGLEV_MAX_SIZE,
                conntrack_size: 1 << 18,
            },
            ..Default::default()
        })
    }

    pub fn with_options(opts: LoadOptions) -> TestLb {
        let mut lb = Balancer::load(&opts).expect("load the balancer (root, built objects)");
        lb.set_encap_sources(&EncapSources {
            v4: Some((LB_SRC_V4.parse().unwrap(), 32)),
            v6: Some((LB_SRC_V6.parse().unwrap(), 128)),
        })
        .unwrap();
        TestLb { lb, mtu: 0 }
    }

    /// Adds a VIP with `backends`, each with a resolved next hop out of the
    /// test interface.
    pub fn add_vip(&mut self, vip: VipId, settings: VipSettings, backends: &[BackendSpec]) {
        for b in backends {
            self.lb
                .set_next_hop(
                    b.addr,
                    Some(NextHop {
                        ifindex: TEST_IFINDEX,
                        dst_mac: backend_mac(b.addr),
                        src_mac: LB_MAC,
                        mtu: self.mtu,
                    }),
                )
                .unwrap();
        }
        self.lb.upsert_vip(vip, settings).unwrap();
        self.lb.set_backends(vip, backends).unwrap();
    }

    /// Runs one frame; returns the action and the output frame.
    pub fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        run_xdp(self.lb.program(), frame)
    }

    pub fn counter(&self, c: lb_common::Counter) -> u64 {
        self.lb.counters().unwrap().get(c)
    }
}

impl Default for TestLb {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `frame` through an XDP program once.
pub fn run_xdp(prog: &aya::programs::Xdp, frame: &[u8]) -> (u32, Vec<u8>) {
    try_run_xdp(prog, frame).expect("BPF_PROG_TEST_RUN")
}

/// Runs `frame` through an XDP program once; the kernel refuses frames it
/// would never deliver (shorter than an Ethernet header).
pub fn try_run_xdp(
    prog: &aya::programs::Xdp,
    frame: &[u8],
) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
    let mut out = vec![0u8; frame.len() + 128];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    };
    let r = prog.test_run(opts)?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}
