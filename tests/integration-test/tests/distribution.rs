//! How the real program spreads flows, and that user space (lb-common's hash
//! over its copy of the Maglev table) predicts every choice it makes.

use std::{collections::BTreeMap, net::IpAddr};

use integration_test::{
    frame::{self, Frame},
    harness::*,
};
use lb::service::{BackendSpec, Proto, Scheduler, VipSettings};
use lb_common::FlowKey;

/// xorshift64*: a deterministic random source, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn client_v4(&mut self) -> (String, u16) {
        let r = self.next();
        (
            format!(
                "{}.{}.{}.{}",
                1 + (r >> 8) % 223,
                (r >> 16) as u8,
                (r >> 24) as u8,
                (r >> 32) as u8
            ),
            (r >> 40) as u16 | 1,
        )
    }

    fn client_v6(&mut self) -> (String, u16) {
        let r = self.next();
        (
            format!(
                "2001:db8:{:x}:{:x}::{:x}",
                (r >> 8) as u16,
                (r >> 24) as u16,
                (r >> 40) as u16
            ),
            (r >> 48) as u16 | 1,
        )
    }
}

fn spread(t: &mut TestLb, n: usize, rng: &mut Rng) -> BTreeMap<IpAddr, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let (client, sport) = rng.client_v4();
        let (action, out) = t.run(&Frame::tcp(&client, sport, "10.100.0.1", 80).build());
        assert_eq!(action, XDP_TX);
        *counts.entry(frame::outer_dst(&out)).or_insert(0) += 1;
    }
    counts
}

fn check_shares(
    counts: &BTreeMap<IpAddr, usize>,
    weights: &[(IpAddr, u32)],
    n: usize,
) -> Vec<String> {
    let total: u32 = weights.iter().map(|(_, w)| w).sum();
    let mut report = Vec::new();
    for (addr, w) in weights {
        let ideal = n as f64 * *w as f64 / total as f64;
        let got = *counts.get(addr).unwrap_or(&0) as f64;
        let dev = (got - ideal) / ideal * 100.0;
        report.push(format!(
            "{addr} w={w}: {got} flows ({dev:+.2}% of ideal {ideal:.0})"
        ));
        assert!(
            dev.abs() <= 5.0,
            "{addr}: {got} flows, ideal {ideal:.0} ({dev:+.2}%)"
        );
    }
    report
}

/// Spreads 100 000 new flows (from `seed`) over a stateless VIP sending to
/// `set` and checks each backend's share against its weight; prints the
/// shares under `label`. Stateless, so each flow is placed by the Maglev
/// table alone.
fn check_spread(label: &str, set: &[BackendSpec], seed: u64) {
    let mut t = TestLb::new();
    let settings = VipSettings {
        stateless: true,
        ..Default::default()
    };
    t.add_vip(vip("10.100.0.1", 80, Proto::Tcp), settings, set);
    let n = 100_000;
    let counts = spread(&mut t, n, &mut Rng(seed));
    let weights: Vec<(IpAddr, u32)> = set.iter().map(|b| (b.addr, b.weight)).collect();
    for line in check_shares(&counts, &weights, n) {
        println!("{label}: {line}");
    }
}

#[test]
fn ten_equal_backends_share_evenly() {
    let set: Vec<BackendSpec> = (2..12)
        .map(|i| BackendSpec {
            addr: format!("10.0.0.{i}").parse().unwrap(),
            weight: 100,
        })
        .collect();
    check_spread("equal", &set, 0x5eed_0001);
}

#[test]
fn weights_one_two_three_share_proportionally() {
    let set: Vec<BackendSpec> = (1..=3)
        .map(|i| BackendSpec {
            addr: format!("10.0.0.{}", i + 1).parse().unwrap(),
            weight: i,
        })
        .collect();
    check_spread("1:2:3", &set, 0x5eed_0002);
}

#[test]
fn user_space_predicts_every_choice() {
    let mut t = TestLb::new();
    let v4: Vec<BackendSpec> = (2..22)
        .map(|i| BackendSpec {
            addr: format!("10.0.0.{i}").parse().unwrap(),
            weight: i,
        })
        .collect();
    let v6: Vec<BackendSpec> = (2..9)
        .map(|i| BackendSpec {
            addr: format!("2001:db8:b::{i}").parse().unwrap(),
            weight: 10,
        })
        .collect();
    let stateless = VipSettings {
        stateless: true,
        ..Default::default()
    };
    let src_hash = VipSettings {
        scheduler: Scheduler::SourceHash,
        ..Default::default()
    };
    t.add_vip(
        vip("10.100.0.1", 80, Proto::Tcp),
        VipSettings::default(),
        &v4,
    );
    t.add_vip(vip("10.100.0.2", 0, Proto::Udp), stateless, &v4[..7]);
    t.add_vip(vip("2001:db8:100::1", 443, Proto::Tcp), src_hash, &v6);
    let mut rng = Rng(0x5eed_0003);
    let mut agreed = 0;
    for i in 0..10_000u32 {
        let (f, flow) = match i % 3 {
            0 => {
                let (c, p) = rng.client_v4();
                (
                    Frame::tcp(&c, p, "10.100.0.1", 80),
                    (c, p, "10.100.0.1", 80, 6),
                )
            }
            1 => {
                let (c, p) = rng.client_v4();
                let dport = (rng.next() as u16) | 1;
                (
                    Frame::udp(&c, p, "10.100.0.2", dport),
                    (c, p, "10.100.0.2", dport, 17),
                )
            }
            _ => {
                let (c, p) = rng.client_v6();
                (
                    Frame::tcp(&c, p, "2001:db8:100::1", 443),
                    (c, p, "2001:db8:100::1", 443, 6),
                )
            }
        };
        let key = FlowKey::new(
            flow.0.parse().unwrap(),
            flow.1,
            flow.2.parse().unwrap(),
            flow.3,
            flow.4,
        );
        let predicted =
            t.lb.predict(&key)
                .expect("a VIP flow")
                .backend
                .expect("a backend");
        let (action, out) = t.run(&f.build());
        assert_eq!(action, XDP_TX);
        assert_eq!(frame::outer_dst(&out), predicted, "flow {flow:?}");
        agreed += 1;
    }
    println!("agreement: {agreed}/10000 flows went where user space predicted");
}
