//! Round-robin and least-connections in the real program, through
//! `BPF_PROG_TEST_RUN`: exact round-robin shares per CPU and a smooth
//! order; new flows to the least loaded backend, by weight, never to a
//! drained one; flows counted once and un-counted once; and counts that
//! come back to the truth of the connection table after evictions, lost
//! FINs, expiry and a restart.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, time::Duration};

use lb::{
    balancer::LoadOptions,
    model::{BackendSpec, Limits, Proto, Scheduler, VipId, VipSettings},
};
use lb_common::{rules, ConnEntry, Counter, FlowKey, LC_EXACT_MAX, PROTO_TCP};
use lb_lab::{
    cpu,
    frame::{self, Frame, TCP_ACK, TCP_FIN, TCP_RST},
    harness::*,
};

const VIP: &str = "10.100.0.1";
const B: [&str; 3] = ["10.0.0.2", "10.0.0.3", "10.0.0.4"];

fn weighted(weights: &[u32]) -> Vec<BackendSpec> {
    weights
        .iter()
        .zip(B)
        .map(|(w, a)| BackendSpec {
            addr: a.parse().unwrap(),
            weight: *w,
            tier: 0,
        })
        .collect()
}

fn addr(i: usize) -> IpAddr {
    B[i].parse().unwrap()
}

fn with(scheduler: Scheduler) -> VipSettings {
    VipSettings {
        scheduler,
        ..Default::default()
    }
}

/// Flow `i`: its own client address, one port.
fn flow(i: u32) -> Frame {
    let client = format!("1.{}.{}.{}", (i >> 16) as u8, (i >> 8) as u8, i as u8);
    Frame::tcp(&client, 40000, VIP, 80)
}

/// Sends flow `i`'s packet with TCP `flags` (a SYN by default); returns the
/// backend it went to.
fn send(t: &mut TestLb, f: Frame) -> IpAddr {
    let (action, out) = t.run(&f.build());
    assert_eq!(action, XDP_TX);
    frame::outer_dst(&out)
}

fn open(t: &mut TestLb, i: u32) -> IpAddr {
    send(t, flow(i))
}

fn counts(picks: &[IpAddr]) -> BTreeMap<IpAddr, usize> {
    let mut m = BTreeMap::new();
    for p in picks {
        *m.entry(*p).or_default() += 1;
    }
    m
}

fn active(t: &TestLb, v: &VipId) -> Vec<u64> {
    let a = t.lb.active_conns(v).expect("a least-connections VIP");
    B.iter()
        .map(|b| {
            a.iter()
                .find(|(x, _)| x.to_string() == *b)
                .map_or(0, |(_, n)| *n)
        })
        .collect()
}

/// CPUs online (not the calling thread's affinity, which a pinned test
/// narrows to one).
/// Keeps the test on CPU 0 until dropped: each CPU has its own round-robin
/// cursor, so only one CPU's walk is predictable.
fn on_cpu0() -> cpu::Affinity {
    let restore = cpu::Affinity::save().unwrap();
    cpu::pin(0).unwrap();
    restore
}

/// A balancer with the test VIP under `scheduler`, backends `B` weighted.
fn lb_with(scheduler: Scheduler, weights: &[u32]) -> (TestLb, VipId) {
    let mut t = TestLb::new();
    let v = vip(VIP, 80, Proto::Tcp);
    t.add_vip(v, with(scheduler), &weighted(weights));
    (t, v)
}

fn online_cpus() -> usize {
    // SAFETY: a plain query.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}

// ------------------------------------------------------------ round-robin

#[test]
fn round_robin_gives_exact_shares_on_one_cpu() {
    let _cpu = on_cpu0();
    let (mut t, v) = lb_with(Scheduler::RoundRobin, &[500, 100, 100]);
    let seq: Vec<IpAddr> =
        t.lb.live_table(&v)
            .unwrap()
            .iter()
            .map(|id| t.lb.backend_addr(*id).unwrap().1)
            .collect();
    assert_eq!(seq.len(), 7, "5:1:1 after the gcd");
    let picks: Vec<IpAddr> = (0..3000).map(|i| open(&mut t, i)).collect();
    // CPU 0 starts at the first slot and walks the sequence exactly.
    for (i, p) in picks.iter().enumerate() {
        assert_eq!(*p, seq[i % 7], "flow {i}");
    }
    let got = counts(&picks);
    for (i, w) in [5, 1, 1].iter().enumerate() {
        let share = 3000.0 * *w as f64 / 7.0;
        let n = got[&addr(i)];
        println!(
            "one CPU, 5:1:1: {} got {n} of 3000 (share {share:.1})",
            B[i]
        );
        assert!(
            (n as f64 - share).abs() < 1.0,
            "{}: {n}, share {share:.1}",
            B[i]
        );
    }
}

#[test]
fn round_robin_on_two_cpus_stays_within_one_flow_per_cpu() {
    assert!(online_cpus() >= 2, "this test needs two CPUs online");
    let _restore = cpu::Affinity::save().unwrap();
    let (mut t, _) = lb_with(Scheduler::RoundRobin, &[500, 100, 100]);
    let picks: Vec<IpAddr> = (0..3000)
        .map(|i| {
            // Uneven: two flows on CPU 0 for every one on CPU 1.
            cpu::pin(usize::from(i % 3 == 2)).unwrap();
            open(&mut t, i)
        })
        .collect();
    let got = counts(&picks);
    for (i, w) in [5, 1, 1].iter().enumerate() {
        let share = 3000.0 * *w as f64 / 7.0;
        let n = got[&addr(i)];
        println!(
            "two CPUs, 5:1:1: {} got {n} of 3000 (share {share:.1})",
            B[i]
        );
        assert!(
            (n as f64 - share).abs() <= 2.0,
            "{}: {n}, share {share:.1}",
            B[i]
        );
    }
}

#[test]
fn round_robin_is_smooth() {
    let _cpu = on_cpu0();
    for weights in [[100, 100, 100], [200, 100, 100], [300, 200, 200]] {
        let (mut t, _) = lb_with(Scheduler::RoundRobin, &weights);
        let picks: Vec<IpAddr> = (0..60).map(|i| open(&mut t, i)).collect();
        // No backend twice in a row, also where the cursor wraps: every
        // weight here is at most half the total.
        for (i, w) in picks.windows(2).enumerate() {
            assert_ne!(w[0], w[1], "{weights:?}: flows {i} and {}", i + 1);
        }
    }
    // 5:1:1 cannot avoid repeats, but interleaves: never three in a row
    // within a period.
    let (mut t, _) = lb_with(Scheduler::RoundRobin, &[5, 1, 1]);
    let period: Vec<IpAddr> = (0..7).map(|i| open(&mut t, i)).collect();
    assert!(
        period.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])),
        "{period:?}"
    );
}

#[test]
fn round_robin_follows_backend_changes_and_keeps_established_flows() {
    let _cpu = on_cpu0();
    let (mut t, v) = lb_with(Scheduler::RoundRobin, &[100, 100, 100]);
    let first: Vec<IpAddr> = (0..3).map(|i| open(&mut t, i)).collect();
    assert_eq!(counts(&first).len(), 3);
    // Drain the third: new flows alternate over the other two, and the
    // established flow on it stays.
    t.lb.set_backends(v, &weighted(&[100, 100, 0])).unwrap();
    let next: Vec<IpAddr> = (3..13).map(|i| open(&mut t, i)).collect();
    assert!(!next.contains(&addr(2)), "{next:?}");
    assert_eq!(counts(&next).values().copied().collect::<Vec<_>>(), [5, 5]);
    let on_third = first.iter().position(|a| *a == addr(2)).unwrap() as u32;
    assert_eq!(send(&mut t, flow(on_third).with_flags(TCP_ACK)), addr(2));
    // Down by health: out of the sequence, its flows move.
    t.lb.set_backend_down(&v, addr(0), true).unwrap();
    let only: Vec<IpAddr> = (13..17).map(|i| open(&mut t, i)).collect();
    assert!(only.iter().all(|a| *a == addr(1)), "{only:?}");
}

// -------------------------------------------------------- least-connections

#[test]
fn new_flows_go_to_the_least_loaded_until_they_even_out() {
    let _cpu = on_cpu0();
    let (mut t, v) = lb_with(Scheduler::LeastConnections, &[100, 0, 0]);
    // 30 long-lived connections, pinned unevenly: 20, 7, 3.
    let mut next = 0;
    for (i, n) in [20, 7, 3].iter().enumerate() {
        let mut w = [0, 0, 0];
        w[i] = 100;
        t.lb.set_backends(v, &weighted(&w)).unwrap();
        for _ in 0..*n {
            assert_eq!(open(&mut t, next), addr(i));
            next += 1;
        }
    }
    t.lb.set_backends(v, &weighted(&[100, 100, 100])).unwrap();
    assert_eq!(active(&t, &v), [20, 7, 3]);
    let picks: Vec<IpAddr> = (next..next + 4).map(|i| open(&mut t, i)).collect();
    assert!(picks.iter().all(|a| *a == addr(2)), "{picks:?}");
    next += 4;
    let picks: Vec<IpAddr> = (next..next + 26).map(|i| open(&mut t, i)).collect();
    next += 26;
    assert_eq!(active(&t, &v), [20, 20, 20], "{:?}", counts(&picks));
    let picks: Vec<IpAddr> = (next..next + 30).map(|i| open(&mut t, i)).collect();
    next += 30;
    assert_eq!(active(&t, &v), [30, 30, 30], "{:?}", counts(&picks));
    println!("least-connections from 20/7/3: 4 to the idlest, then even: 30/30/30");

    // A drained backend gets no new flow; its established ones stay.
    t.lb.set_backends(v, &weighted(&[100, 0, 100])).unwrap();
    let picks: Vec<IpAddr> = (next..next + 20).map(|i| open(&mut t, i)).collect();
    assert!(!picks.contains(&addr(1)), "{picks:?}");
    assert_eq!(active(&t, &v), [40, 30, 40]);
    assert_eq!(
        send(&mut t, flow(20).with_flags(TCP_ACK)),
        addr(1),
        "flow 20 is on b"
    );
}

#[test]
fn least_connections_respects_weights() {
    let _cpu = on_cpu0();
    let (mut t, v) = lb_with(Scheduler::LeastConnections, &[200, 100, 100]);
    for i in 0..40 {
        open(&mut t, i);
    }
    let a = active(&t, &v);
    println!("least-connections 2:1:1, 40 held connections: {a:?}");
    for (n, want) in a.iter().zip([20u64, 10, 10]) {
        assert!(n.abs_diff(want) <= 1, "{a:?}");
    }
}

#[test]
fn above_the_bound_the_best_of_two_samples_still_evens_out() {
    let _cpu = on_cpu0();
    let mut t = TestLb::new();
    let v = vip(VIP, 80, Proto::Tcp);
    let n = LC_EXACT_MAX as usize + 8;
    let set: Vec<BackendSpec> = (0..n)
        .map(|i| BackendSpec {
            addr: format!("10.0.1.{}", i + 1).parse().unwrap(),
            weight: 100,
            tier: 0,
        })
        .collect();
    t.add_vip(v, with(Scheduler::LeastConnections), &set);
    assert_eq!(
        t.lb.live_table(&v).unwrap().len(),
        VipSettings::default().table_size as usize,
        "sampled from the Maglev table"
    );
    for i in 0..(n as u32 * 20) {
        open(&mut t, i);
    }
    let a: Vec<u64> =
        t.lb.active_conns(&v)
            .unwrap()
            .iter()
            .map(|(_, c)| *c)
            .collect();
    let (min, max) = (*a.iter().min().unwrap(), *a.iter().max().unwrap());
    println!("{n} backends, 20 connections each on average: min {min}, max {max}");
    // Random placement would spread far wider (a binomial's max of 40 draws
    // around 20 is ~30); two choices keep it tight.
    assert!(max - min <= 8, "{a:?}");
}

#[test]
fn a_retransmitted_syn_keeps_its_backend_an_earlier_connection_does_not() {
    let _cpu = on_cpu0();
    for scheduler in [Scheduler::RoundRobin, Scheduler::LeastConnections] {
        let (mut t, v) = lb_with(scheduler, &[100, 100, 100]);
        let first = open(&mut t, 1);
        // Its SYN again (the SYN-ACK was late): the same backend, once.
        for _ in 0..3 {
            assert_eq!(open(&mut t, 1), first, "{scheduler:?}");
        }
        if scheduler == Scheduler::LeastConnections {
            assert_eq!(active(&t, &v).iter().sum::<u64>(), 1, "counted once");
        }
        assert_eq!(send(&mut t, flow(1).with_flags(TCP_ACK)), first);
        // The connection went on; a SYN on its 5-tuple now is a new one,
        // placed afresh (and the old one un-counted).
        let stale = t.counter(Counter::ConnStale);
        let next = open(&mut t, 1);
        assert_eq!(t.counter(Counter::ConnStale), stale + 1, "{scheduler:?}");
        if scheduler == Scheduler::RoundRobin {
            assert_ne!(next, first, "the next in the sequence");
        } else {
            assert_eq!(active(&t, &v).iter().sum::<u64>(), 1);
        }
    }
}

#[test]
fn a_fin_or_rst_that_finds_no_entry_counts_nothing() {
    let _cpu = on_cpu0();
    let (mut t, v) = lb_with(Scheduler::LeastConnections, &[100, 100]);
    send(&mut t, flow(1).with_flags(TCP_FIN | TCP_ACK));
    let (action, _) = t.run(&flow(2).with_flags(TCP_RST).build());
    assert_eq!(action, XDP_TX);
    assert_eq!(active(&t, &v), [0, 0, 0]);
}

#[test]
fn switching_to_least_connections_counts_the_flows_already_there() {
    let _cpu = on_cpu0();
    let mut t = TestLb::new();
    let v = vip(VIP, 80, Proto::Tcp);
    let set = weighted(&[100, 100, 100]);
    t.add_vip(v, with(Scheduler::Maglev), &set);
    let placed: Vec<IpAddr> = (0..30).map(|i| open(&mut t, i)).collect();
    t.lb.upsert_vip(v, with(Scheduler::LeastConnections))
        .unwrap();
    assert_eq!(
        active(&t, &v),
        [0, 0, 0],
        "not counted before their next packet"
    );
    for i in 0..30 {
        assert_eq!(
            send(&mut t, flow(i).with_flags(TCP_ACK)),
            placed[i as usize]
        );
        send(&mut t, flow(i).with_flags(TCP_ACK));
    }
    let by = counts(&placed);
    let want: Vec<u64> = (0..3)
        .map(|i| *by.get(&addr(i)).unwrap_or(&0) as u64)
        .collect();
    assert_eq!(active(&t, &v), want, "each counted once, on its backend");
    // And new flows go to the least loaded of them.
    let least = (0..3).min_by_key(|i| want[*i]).unwrap();
    assert_eq!(open(&mut t, 100), addr(least));
}

// ------------------------------------------------------------------- counts

#[test]
fn a_flow_is_counted_once_and_uncounted_once() {
    let _cpu = on_cpu0();
    let (mut t, v) = lb_with(Scheduler::LeastConnections, &[100]);
    let total = |t: &TestLb| active(t, &v)[0];
    open(&mut t, 1);
    assert_eq!(total(&t), 1);
    send(&mut t, flow(1).with_flags(TCP_ACK));
    assert_eq!(total(&t), 1, "data does not count");
    send(&mut t, flow(1).with_flags(TCP_FIN | TCP_ACK));
    assert_eq!(total(&t), 0);
    // A retransmitted FIN, then an RST: not again.
    send(&mut t, flow(1).with_flags(TCP_FIN | TCP_ACK));
    send(&mut t, flow(1).with_flags(TCP_RST));
    assert_eq!(total(&t), 0);
    assert_eq!(t.counter(Counter::ConnUncounted), 1);
    // The entry stays for the last ACKs, marked closed.
    assert_eq!(send(&mut t, flow(1).with_flags(TCP_ACK)), addr(0));
    let key = flow_key(1);
    let e = t.lb.conntrack_entry(&key).unwrap();
    assert!(!rules::conn_open(e.flags), "closed: {:#x}", e.flags);
    // The FIN on another CPU than the SYN, then again on the first.
    assert!(online_cpus() >= 2, "this test needs two CPUs online");
    open(&mut t, 2);
    cpu::pin(1).unwrap();
    send(&mut t, flow(2).with_flags(TCP_FIN | TCP_ACK));
    cpu::pin(0).unwrap();
    send(&mut t, flow(2).with_flags(TCP_FIN | TCP_ACK));
    assert_eq!(total(&t), 0);
    assert_eq!(t.counter(Counter::ConnUncounted), 2);
    // A new connection on the same port counts again.
    open(&mut t, 1);
    assert_eq!(total(&t), 1);
    let id = t.lb.backend_id(&v, addr(0)).unwrap();
    let c = t.lb.conn_counts(id);
    assert_eq!(c.opened - c.closed, 1, "{c:?}");
}

fn flow_key(i: u32) -> FlowKey {
    let client = IpAddr::from([1, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    FlowKey::new(client, 40000, VIP.parse().unwrap(), 80, PROTO_TCP)
}

/// The connection table's own account: counted, open, live entries per
/// backend, by a key-by-key walk (not the batch scan the reconcile uses).
fn truth(t: &TestLb, v: &VipId, timeout: Duration) -> Vec<u64> {
    let now = lb::daemon::monotonic_ns();
    let entries: Vec<(FlowKey, ConnEntry)> = t.lb.conntrack_entries();
    B.iter()
        .map(|b| {
            let id = t.lb.backend_id(v, b.parse().unwrap());
            entries
                .iter()
                .filter(|(_, e)| Some(e.backend_id) == id)
                .filter(|(_, e)| rules::conn_open(e.flags))
                .filter(|(_, e)| {
                    rules::conn_entry_live(
                        now.saturating_sub(e.last_seen_ns),
                        timeout.as_nanos() as u64,
                    )
                })
                .count() as u64
        })
        .collect()
}

struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn counts_converge_to_the_table_after_evictions_lost_fins_expiry_and_a_restart() {
    let _cpu = on_cpu0();
    let dir = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/lb-test-schedulers-{}",
        std::process::id()
    )));
    let timeout = Duration::from_secs(3);
    let load = || {
        TestLb::with_options(LoadOptions {
            tcp_idle_timeout: timeout,
            limits: Limits {
                max_vips: 8,
                table_pool: 8 * 2 * lb_common::MAGLEV_MAX_SIZE,
                conntrack_size: 1024,
            },
            pin_dir: Some(dir.0.clone()),
            ..Default::default()
        })
    };
    let v = vip(VIP, 80, Proto::Tcp);
    let set = weighted(&[100, 100, 100]);
    let mut t = load();
    t.add_vip(v, with(Scheduler::LeastConnections), &set);
    // 3000 connections whose FINs never come, in a table of 1024: most are
    // evicted, and the kernel says nothing about it.
    for i in 0..3000 {
        open(&mut t, i);
    }
    let before: u64 = active(&t, &v).iter().sum();
    assert_eq!(before, 3000);
    let r = t.lb.reconcile_conns(lb::daemon::monotonic_ns()).unwrap();
    let after = active(&t, &v);
    let table = truth(&t, &v, timeout);
    println!(
        "drift: 3000 counted, {} entries in the table; after one reconcile {after:?}, \
         the table says {table:?}; corrections {:?}",
        r.entries, r.corrections
    );
    assert_eq!(after, table);
    assert!(table.iter().sum::<u64>() <= 1024);

    // lbd killed and started again: the adopted maps keep counts and table.
    drop(t);
    let mut t = load();
    assert!(t.lb.adopted());
    t.lb.set_backends(v, &set).unwrap();
    t.lb.reconcile_conns(lb::daemon::monotonic_ns()).unwrap();
    assert_eq!(active(&t, &v), truth(&t, &v, timeout));

    // Every entry idles out: nothing is active. Packets of expired flows
    // then un-count them once more (the reconcile already took them out:
    // a known transient, as a write back to the entry could race the
    // program's new one) and are placed again: the counts dip, shown never
    // below zero, and the next reconcile puts them right.
    std::thread::sleep(timeout + Duration::from_millis(500));
    t.lb.reconcile_conns(lb::daemon::monotonic_ns()).unwrap();
    assert_eq!(active(&t, &v), [0, 0, 0]);
    let survivors: Vec<u32> = (0..3000)
        .filter(|i| t.lb.conntrack_entry(&flow_key(*i)).is_some())
        .take(50)
        .collect();
    assert_eq!(survivors.len(), 50);
    for i in &survivors {
        send(&mut t, flow(*i).with_flags(TCP_ACK));
    }
    let between = active(&t, &v);
    println!(
        "50 expired flows placed again: counts {between:?} (each un-counted twice, shown \
         clamped at zero) before the next reconcile"
    );
    t.lb.reconcile_conns(lb::daemon::monotonic_ns()).unwrap();
    assert_eq!(active(&t, &v), truth(&t, &v, timeout));
    for b in &set {
        let c = t.lb.conn_counts(t.lb.backend_id(&v, b.addr).unwrap());
        assert!(c.opened >= c.closed, "{}: {c:?}", b.addr);
    }
    println!(
        "after expiry and {} re-placed flows: {:?} = the table",
        survivors.len(),
        active(&t, &v)
    );
}

/// An atomic fetch whose result is used must be emitted as a fetching
/// instruction: LLVM lowers a relaxed one to the plain `lock |=`, and the
/// "old value" the program then tests is its own operand.
#[test]
fn atomics_are_emitted_as_intended() {
    let obj = std::env::temp_dir().join(format!("lb-balancer-{}.o", std::process::id()));
    std::fs::write(&obj, lb::objects::BALANCER).unwrap();
    let out = std::process::Command::new("/usr/lib/llvm-22/bin/llvm-objdump")
        .arg("-d")
        .arg(&obj)
        .output()
        .expect("llvm-objdump (cargo xtask setup installs LLVM 22)");
    let _ = std::fs::remove_file(&obj);
    let text = String::from_utf8_lossy(&out.stdout);
    let atomics: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("lock ") || l.contains("atomic"))
        .collect();
    let fetch_or = atomics
        .iter()
        .filter(|l| l.contains("= atomic_fetch_or("))
        .count();
    let plain = |op: &str| {
        atomics
            .iter()
            .filter(|l| l.contains("lock *(u64 *)") && l.contains(op))
            .count()
    };
    let (add, and) = (plain(" += "), plain(" &= "));
    println!(
        "{fetch_or} fetch-or, {add} add, {and} and, {} atomics in all",
        atomics.len()
    );
    // Only the fetch-or's result is used; a non-fetching `lock |=` would
    // mean the program tests its own operand as the old value.
    assert!(fetch_or > 0 && add > 0 && and > 0, "{atomics:#?}");
    assert_eq!(
        fetch_or + add + and,
        atomics.len(),
        "unexpected atomics: {atomics:#?}"
    );
}

// ---------------------------------------------------------- through lbd

mod through_lbd {
    use std::{collections::BTreeMap, net::SocketAddr, thread, time::Duration};

    use lb_lab::{clients::*, lab::*, netns, servers::*, status::*};

    fn web() -> SocketAddr {
        SocketAddr::from((VIP_WEB, 80))
    }

    fn v4(lab: &Lab, name: &str) -> String {
        lab.backend(name).v4.to_string()
    }

    fn vip(lab: &Lab, scheduler: &'static str, check: Option<HealthCheck>) -> Vec<VipSpec> {
        let backends: Vec<_> = ["b1", "b2", "b3"]
            .iter()
            .map(|n| lab.backend(n).v4.into())
            .collect();
        let mut v = VipSpec::new("web", VIP_WEB, Some(80), &backends).with_scheduler(scheduler);
        if let Some(c) = check {
            v = v.with_health(c);
        }
        vec![v]
    }

    fn fast_tcp() -> HealthCheck {
        HealthCheck::new(
            "tcp",
            Duration::from_millis(300),
            Duration::from_millis(200),
            2,
            2,
        )
    }

    /// Long-lived connections, one at a time (each a new flow placed after
    /// the one before is counted).
    fn hold(lab: &Lab, n: usize) -> Vec<LongLived> {
        (0..n)
            .map(|_| {
                lab.long_lived(web(), Duration::from_millis(300))
                    .expect("a long-lived connection")
            })
            .collect()
    }

    fn by_backend(conns: &[LongLived]) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for c in conns {
            *m.entry(c.backend.clone()).or_default() += 1;
        }
        m
    }

    #[test]
    fn round_robin_spreads_fails_over_and_drains() {
        let lab = Lab::with_lbd(3, |_| {}, |lab| vip(lab, "round-robin", Some(fast_tcp())));
        lab.wait_all_up("web", Duration::from_secs(10)).unwrap();
        let spread = lab.spread(web(), 30).unwrap();
        println!("round-robin through lbd, 30 connections: {spread:?}");
        // Each CPU walks the sequence b1 b2 b3 from its own start.
        for b in ["b1", "b2", "b3"] {
            let n = spread.get(b).copied().unwrap_or(0);
            assert!((8..=12).contains(&n), "{b}: {n} of 30 ({spread:?})");
        }
        let held = hold(&lab, 6);
        // Health takes b2 out: new flows go to b1 and b3 only.
        lab.stop_service("b2", Service::Greeter(80));
        lab.wait_health("web", &v4(&lab, "b2"), "down", Duration::from_secs(5))
            .unwrap();
        let spread = lab.spread(web(), 20).unwrap();
        assert_eq!(spread.get("b2"), None, "{spread:?}");
        assert_eq!(spread.values().sum::<usize>(), 20);
        // Drain b3: new flows go to b1 only; established ones stay.
        lab.lbctl_ok(&["backend", "drain", "web", &v4(&lab, "b3")]);
        let spread = lab.spread(web(), 10).unwrap();
        assert_eq!(spread, BTreeMap::from([("b1".to_string(), 10)]));
        thread::sleep(Duration::from_millis(700));
        for c in held {
            let backend = c.backend.clone();
            let r = c.stop();
            if backend != "b2" {
                assert!(r.error.is_none(), "{backend}: {r:?}");
                assert!(r.exchanges >= 2, "{backend}: {r:?}");
            }
        }
    }

    #[test]
    fn least_connections_counts_follow_connections() {
        let lab = Lab::with_lbd(3, |_| {}, |lab| vip(lab, "least-connections", None));
        let held = hold(&lab, 9);
        assert_eq!(
            by_backend(&held).values().copied().collect::<Vec<_>>(),
            [3, 3, 3],
            "even from zero"
        );
        let (_, s) = lab
            .wait_status("3 active each", Duration::from_secs(3), |s| {
                active_of(s, "web").values().all(|n| *n == 3)
            })
            .unwrap();
        println!("least-connections through lbd: {:?}", active_of(&s, "web"));
        let out = lab.lbctl_ok(&["status"]);
        assert!(out.contains("ACTIVE"), "{out}");
        let m = lab.scrape();
        let line = format!(
            "lb_backend_active_connections{{vip=\"10.100.0.1:80/tcp\",backend=\"{}\"}} 3",
            v4(&lab, "b1")
        );
        assert!(m.contains(&line), "{line} in\n{m}");
        // b1's three close (their FINs pass): it is the least loaded, and
        // takes the next three.
        let (b1, rest): (Vec<_>, Vec<_>) = held.into_iter().partition(|c| c.backend == "b1");
        for c in b1 {
            c.stop();
        }
        lab.wait_status("b1 at 0", Duration::from_secs(3), |s| {
            active_of(s, "web").get(&v4(&lab, "b1")) == Some(&0)
        })
        .unwrap();
        let more = hold(&lab, 3);
        assert_eq!(by_backend(&more), BTreeMap::from([("b1".to_string(), 3)]));
        // Drained: no new flow, established ones stay.
        lab.lbctl_ok(&["backend", "drain", "web", &v4(&lab, "b2")]);
        let next = hold(&lab, 4);
        assert!(
            !by_backend(&next).contains_key("b2"),
            "{:?}",
            by_backend(&next)
        );
        let explain = lab.lbctl_ok(&["explain", "10.10.0.2:1234", "web"]);
        assert!(explain.contains("least-connections"), "{explain}");
        for c in rest.into_iter().chain(more).chain(next) {
            let r = c.stop();
            assert!(r.error.is_none(), "{r:?}");
        }
    }

    #[test]
    fn counts_converge_after_lost_fins_and_a_kill() {
        let mut lab = Lab::new(3).unwrap();
        let text = lab
            .config_text(&vip(&lab, "least-connections", None))
            .replacen("[encap]", "tcp_idle_timeout = \"3s\"\n\n[encap]", 1);
        lab.write_config(&text);
        lab.start_lbd().unwrap();
        lab.wait_next_hops(Duration::from_secs(10)).unwrap();
        let held = hold(&lab, 6);
        // Twelve connections whose FINs the client's firewall drops: the
        // balancer never learns they ended.
        let nft = |args: &[&str]| {
            let mut cmd = vec!["nft"];
            cmd.extend(args);
            netns::exec(&lab.client_ns, &cmd).expect("nft in the client namespace");
        };
        nft(&["add", "table", "inet", "lbtest"]);
        nft(&[
            "add", "chain", "inet", "lbtest", "out", "{", "type", "filter", "hook", "output",
            "priority", "0", ";", "}",
        ]);
        nft(&[
            "add", "rule", "inet", "lbtest", "out", "tcp", "flags", "&", "fin", "==", "fin", "drop",
        ]);
        lab.spread(web(), 12).unwrap();
        lab.wait_status("18 counted", Duration::from_secs(3), |s| {
            active_of(s, "web").values().sum::<u64>() == 18
        })
        .unwrap();
        // lbd dies and comes back while the lost ones idle out.
        lab.kill_lbd();
        lab.start_lbd().unwrap();
        let since = std::time::Instant::now();
        let (at, s) = lab
            .wait_status("back to the 6 held", Duration::from_secs(8), |s| {
                active_of(s, "web").values().sum::<u64>() == 6
            })
            .unwrap();
        // The truth, from the pinned table: counted, open and live.
        let table = lab.conntrack().unwrap();
        let now = lb::daemon::monotonic_ns();
        let live = |e: &&lb_common::ConnEntry| {
            lb_common::rules::conn_open(e.flags)
                && lb_common::rules::conn_entry_live(
                    now.saturating_sub(e.last_seen_ns),
                    3_000_000_000,
                )
        };
        let truth = table.values().filter(live).count();
        println!(
            "after a kill and 12 lost FINs: {:?} active ({:.1}s after the restart); the \
             table: {} entries, {truth} open and live",
            active_of(&s, "web"),
            (at - since).as_secs_f64(),
            table.len()
        );
        assert_eq!(truth, 6);
        for c in held {
            let r = c.stop();
            assert!(r.error.is_none(), "{r:?}");
        }
    }
}
