//! How the real program spreads flows, and that user space (lb-common's hash
//! over its copy of the Maglev table) predicts every choice it makes.

use std::{collections::BTreeMap, net::IpAddr};

use lb::model::{BackendSpec, Proto, Scheduler, TierMode, TierPolicy, VipSettings};
use lb_common::FlowKey;
use lb_lab::{
    frame::{self, Frame},
    harness::*,
    rng::Rng,
};

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
            tier: 0,
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
            tier: 0,
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
            tier: 0,
        })
        .collect();
    let v6: Vec<BackendSpec> = (2..9)
        .map(|i| BackendSpec {
            addr: format!("2001:db8:b::{i}").parse().unwrap(),
            weight: 10,
            tier: 0,
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
                let dport = (rng.next_u64() as u16) | 1;
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

/// A pin directory for one test's maps, removed on drop.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `lbctl explain` (whose account `Balancer::route` computes, with the rules
/// of `lb_common::rules`) names exactly the backend the program sends each
/// packet to, while backends go down, drain, leave and come back, and while
/// freed backend ids are reused, by the same VIP and by another one: the
/// reuse happens because a restart (maps adopted from pins) hands out the
/// lowest free ids first.
#[test]
fn explain_agrees_with_the_data_path_as_backends_change() {
    use lb::{balancer::LoadOptions, model::NextHop};
    let dir = PinDir(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/lb-test-agree-{}",
        std::process::id()
    )));
    let opts = LoadOptions {
        limits: lb::model::Limits {
            max_vips: 8,
            table_pool: 8 * 2 * lb_common::MAGLEV_MAX_SIZE,
            conntrack_size: 1 << 16,
        },
        pin_dir: Some(dir.0.clone()),
        ..Default::default()
    };
    let spec = |a: &str, weight: u32| BackendSpec {
        addr: a.parse().unwrap(),
        weight,
        tier: 0,
    };
    let a = vip("10.100.0.1", 80, Proto::Tcp);
    let b = vip("10.100.0.2", 80, Proto::Tcp);
    let a_set: Vec<BackendSpec> = (2..10).map(|i| spec(&format!("10.0.1.{i}"), 100)).collect();
    let b_set: Vec<BackendSpec> = (2..6).map(|i| spec(&format!("10.0.2.{i}"), 100)).collect();
    let mut t = TestLb::with_options(opts.clone());
    t.add_vip(a, VipSettings::default(), &a_set);
    t.add_vip(b, VipSettings::default(), &b_set);

    let mut rng = Rng(0x5eed_0009);
    let mut flows = Vec::new();
    let mut agreed = 0;
    let mut by_source: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut check = |t: &mut TestLb, flow: &(String, u16, &'static str)| {
        let key = FlowKey::new(
            flow.0.parse().unwrap(),
            flow.1,
            flow.2.parse().unwrap(),
            80,
            6,
        );
        let timeout = LoadOptions::default().tcp_idle_timeout.as_nanos() as u64;
        let route =
            t.lb.route(&key, lb::daemon::monotonic_ns(), timeout)
                .expect("a VIP flow");
        let frame = Frame::tcp(&flow.0, flow.1, flow.2, 80).with_flags(frame::TCP_ACK);
        let (action, out) = t.run(&frame.build());
        let sent = (action == XDP_TX).then(|| frame::outer_dst(&out));
        assert_eq!(sent, route.backend, "flow {flow:?}: explain says {route:?}");
        let source = match route.entry {
            Some((_, _, lb::balancer::EntryCheck::Live)) => "connection table",
            Some((_, _, lb::balancer::EntryCheck::Stale)) => "stale entry, table",
            Some((_, _, lb::balancer::EntryCheck::Expired)) => "expired entry, table",
            None => "table",
        };
        *by_source.entry(source).or_default() += 1;
    };
    // Phase 1: 2,000 flows make their connection-table entries.
    for i in 0..2000 {
        let (c, p) = rng.client_v4();
        let to = if i % 2 == 0 {
            "10.100.0.1"
        } else {
            "10.100.0.2"
        };
        flows.push((c, p, to));
        check(&mut t, flows.last().unwrap());
        agreed += 1;
    }
    // Down, drained, removed.
    t.lb.set_backend_down(&a, a_set[1].addr, true).unwrap();
    let mut a_now = a_set.clone();
    a_now[2].weight = 0;
    a_now.remove(3);
    t.lb.set_backends(a, &a_now).unwrap();
    let b_now: Vec<BackendSpec> = b_set[1..].to_vec();
    t.lb.set_backends(b, &b_now).unwrap();
    let removed_ids = [
        t.lb.backend_id(&a, a_set[3].addr),
        t.lb.backend_id(&b, b_set[0].addr),
    ];
    assert_eq!(removed_ids, [None, None]);
    // Restart: the maps are adopted, the lowest free ids are handed out
    // first, so the re-added backend and a new one of A take the ids of the
    // removed ones (one of them B's before).
    drop(t);
    let mut t = TestLb::with_options(opts);
    assert!(t.lb.adopted());
    let mut a_next = a_now.clone();
    a_next.push(a_set[3]);
    a_next.push(spec("10.0.1.50", 100));
    for s in a_next.iter().chain(&b_now) {
        t.lb.set_next_hop(
            s.addr,
            Some(NextHop {
                ifindex: TEST_IFINDEX,
                dst_mac: backend_mac(s.addr),
                src_mac: frame::LB_MAC,
                mtu: 0,
            }),
        )
        .unwrap();
    }
    for (id, set) in [(a, &a_next), (b, &b_now)] {
        t.lb.upsert_vip(id, VipSettings::default()).unwrap();
        t.lb.set_backends(id, set).unwrap();
    }
    let reused = [
        t.lb.backend_id(&a, a_set[3].addr).unwrap(),
        t.lb.backend_id(&a, "10.0.1.50".parse().unwrap()).unwrap(),
    ];
    println!("re-added backends of A took ids {reused:?}");
    assert!(
        reused.contains(&3),
        "ids {reused:?}: A's old id 3 not reused"
    );
    assert!(
        reused.contains(&8),
        "ids {reused:?}: B's old id 8 not reused"
    );
    t.lb.set_backend_down(&b, b_now[0].addr, true).unwrap();

    // Phase 2: old flows (entries live, stale or gone) and new ones.
    for i in 0..8000 {
        let flow = if i % 2 == 0 {
            flows[(rng.next_u64() % flows.len() as u64) as usize].clone()
        } else {
            let (c, p) = rng.client_v4();
            (
                c,
                p,
                if i % 4 == 1 {
                    "10.100.0.1"
                } else {
                    "10.100.0.2"
                },
            )
        };
        check(&mut t, &flow);
        agreed += 1;
    }
    println!("explain agreement: {agreed}/10000 flows, 0 disagreements; by source {by_source:?}");
    for s in ["connection table", "stale entry, table", "table"] {
        assert!(
            by_source.get(s).copied().unwrap_or(0) > 0,
            "no flow took {s:?}"
        );
    }
}

/// `n` backends of `tier`, weight 100, at 10.0.<tier>.2 and up.
fn tier_set(tier: u8, n: u8) -> Vec<BackendSpec> {
    (0..n)
        .map(|i| BackendSpec {
            addr: format!("10.0.{tier}.{}", i + 2).parse().unwrap(),
            weight: 100,
            tier,
        })
        .collect()
}

/// Takes tier 0's four backends down one by one and measures, over random
/// new flows through the program, the share that reaches tier 1 (four
/// healthy backends); returns (tier-0 backends healthy, tier-1 percent).
fn spill_to_tier_one(settings: VipSettings, seed: u64) -> Vec<(usize, f64)> {
    let mut t = TestLb::new();
    let v = vip("10.100.0.1", 80, Proto::Tcp);
    let mut set = tier_set(0, 4);
    set.extend(tier_set(1, 4));
    t.add_vip(v, settings, &set);
    let mut rng = Rng(seed);
    let n = 20_000;
    let mut seen = Vec::new();
    for down in 0..=4 {
        if down > 0 {
            t.lb.set_backend_down(&v, set[down - 1].addr, true).unwrap();
        }
        let counts = spread(&mut t, n, &mut rng);
        for b in &set[..down] {
            assert!(!counts.contains_key(&b.addr), "{} is down", b.addr);
        }
        let far: usize = set[4..]
            .iter()
            .map(|b| counts.get(&b.addr).unwrap_or(&0))
            .sum();
        let percent = far as f64 * 100.0 / n as f64;
        let shares = t.lb.tier_shares(&v);
        println!(
            "{} mode, tier 0 {}/4 healthy: tier 1 takes {percent:.2}% of {n} new flows (status: {}%)",
            settings.tiers.mode.name(),
            4 - down,
            shares[1].share
        );
        // What status reports is what the table does.
        assert!((percent - f64::from(shares[1].share)).abs() <= 1.5);
        seen.push((4 - down, percent));
    }
    seen
}

#[test]
fn new_flows_spill_to_the_next_tier_as_envoy_computes() {
    let stateless = VipSettings {
        stateless: true,
        ..Default::default()
    };
    for (healthy, percent) in spill_to_tier_one(stateless, 0x5eed_0004) {
        // Envoy: tier 0 takes min(100, 1.4 × 100 × healthy / total); tier
        // 1 (all healthy) the rest.
        let local = (140 * healthy as u32 / 4).min(100);
        let expected = f64::from(100 - local);
        assert!(
            (percent - expected).abs() <= 1.5,
            "tier 0 {healthy}/4 healthy: tier 1 took {percent:.2}%, expected {expected}%"
        );
    }
}

#[test]
fn strict_tiers_spill_only_below_min_healthy() {
    let strict = VipSettings {
        stateless: true,
        tiers: TierPolicy {
            mode: TierMode::Strict,
            min_healthy: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    for (healthy, percent) in spill_to_tier_one(strict, 0x5eed_0005) {
        // Two or more local backends keep everything; below that the
        // healthy ones of both tiers share by weight (1 + 4: 80% far).
        let expected = match healthy {
            2.. => 0.0,
            1 => 80.0,
            _ => 100.0,
        };
        assert!(
            (percent - expected).abs() <= 1.5,
            "tier 0 {healthy}/4 healthy: tier 1 took {percent:.2}%, expected {expected}%"
        );
    }
}
