//! The data path's decision trace (`lbctl debug`).
//!
//! 1. `records_name_the_decision_and_are_rate_limited`: through
//!    BPF_PROG_TEST_RUN, off writes nothing; on, each packet's record names
//!    its VIP, flow, verdict, backend and how it was chosen; a burst is cut
//!    to the bucket's size and the rest counted; a VIP filter keeps other
//!    VIPs' packets out.
//! 2. `lbctl_debug_follows_the_trace`: the real daemon, through lbctl: on
//!    for one VIP, the lines name the backend by table and then by
//!    connection-table entry, the trace ends on its own, lbd's log has them.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb::model::{Proto, VipSettings};
use lb_common::debug::{
    DebugConfig, DebugEvent, DEBUG_ALL_VIPS, DEBUG_BURST, DEBUG_EVENTS_PER_SEC,
    DEBUG_SOURCE_CONNTRACK, DEBUG_SOURCE_TABLE,
};
use lb_lab::{
    cpu::{self, Affinity},
    frame::{Frame, TCP_ACK},
    harness::{self, TestLb, XDP_TX},
    lab::*,
    process::*,
};

#[test]
fn records_name_the_decision_and_are_rate_limited() {
    let mut t = TestLb::new();
    let web = harness::vip("10.100.0.1", 80, Proto::Tcp);
    let other = harness::vip("10.100.0.2", 80, Proto::Tcp);
    let set = harness::backends(&["10.0.0.2", "10.0.0.3"]);
    t.add_vip(web, VipSettings::default(), &set);
    t.add_vip(other, VipSettings::default(), &set);
    let mut reader = t.lb.take_trace_reader().expect("the trace reader");
    let pending = t.lb.trace_pending();
    let frame = Frame::tcp("198.51.100.7", 40000, "10.100.0.1", 80)
        .with_flags(TCP_ACK)
        .build();
    let mut read = |t: &mut TestLb, n: usize| -> Vec<DebugEvent> {
        for _ in 0..n {
            assert_eq!(t.run(&frame).0, XDP_TX);
        }
        reader.flush();
        pending.take()
    };

    // Off (the default): nothing.
    assert!(read(&mut t, 50).is_empty(), "records while off");

    // On for every VIP: the flow has its entry (made while off).
    let on = |vip_id| DebugConfig {
        enabled: 1,
        vip_id,
        until_ns: lb::daemon::monotonic_ns() + 600_000_000_000,
    };
    t.lb.set_trace(on(DEBUG_ALL_VIPS)).unwrap();
    let got = read(&mut t, 2);
    assert_eq!(got.len(), 2, "{got:?}");
    let web_id = t.lb.vip_index(&web).unwrap();
    for e in &got {
        assert_eq!(
            (e.family, e.sport, e.dport, e.proto, e.action, e.vip_id),
            (4, 40000, 80, 6, XDP_TX, web_id),
            "{e:?}"
        );
        let (_, backend) = t.lb.backend_addr(e.backend_id).expect("a backend id");
        assert!(set.iter().any(|b| b.addr == backend));
    }
    assert_eq!(got[0].source, DEBUG_SOURCE_CONNTRACK, "{got:?}");
    assert_eq!(got[1].source, DEBUG_SOURCE_CONNTRACK);

    // A burst: at most the bucket's size gets through, plus what the bucket
    // refills while the burst runs; the rest is counted. On one CPU: each
    // CPU has a bucket of its own.
    let affinity = Affinity::save().unwrap();
    cpu::pin(0).unwrap();
    let before = t.lb.trace_suppressed();
    let started = Instant::now();
    let burst = read(&mut t, 1000);
    let refilled = (started.elapsed().as_secs_f64() * DEBUG_EVENTS_PER_SEC as f64).ceil() as u64;
    let suppressed = t.lb.trace_suppressed() - before;
    drop(affinity);
    println!(
        "1000 packets at once: {} records, {suppressed} left out",
        burst.len()
    );
    assert!(
        burst.len() as u64 <= DEBUG_BURST + refilled + 1,
        "{} records ({refilled} tokens refilled during the burst)",
        burst.len()
    );
    assert!(!burst.is_empty());
    assert_eq!(burst.len() as u64 + suppressed, 1000);

    // Filtered to the other VIP: this one's packets leave no record.
    t.lb.set_trace(on(t.lb.vip_index(&other).unwrap())).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(read(&mut t, 20).is_empty(), "records of a filtered-out VIP");
    // And a SYN of a new flow is placed by the table.
    t.lb.set_trace(on(DEBUG_ALL_VIPS)).unwrap();
    let syn = Frame::tcp("198.51.100.8", 40001, "10.100.0.1", 80).build();
    let got = read(&mut t, 0);
    assert!(got.is_empty());
    assert_eq!(t.run(&syn).0, XDP_TX);
    let got = read(&mut t, 0);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].source, DEBUG_SOURCE_TABLE);
    // Off again: nothing.
    t.lb.set_trace(DebugConfig::default()).unwrap();
    assert!(read(&mut t, 20).is_empty());
}

#[test]
fn lbctl_debug_follows_the_trace() {
    let mut lab = Lab::new(2).expect("building the lab");
    let vips = lab.standard_vips(&["b1", "b2"]);
    lab.write_config(&lab.config_text(&vips));
    lab.start_lbd().expect("starting lbd");
    lab.wait_next_hops(Duration::from_secs(10)).unwrap();
    let web = SocketAddr::from((VIP_WEB, 80));

    let out = lab.lbctl(&["debug", "on", "--vip", "nosuch"]);
    assert!(!out.ok(), "{out}");
    let out = lab.lbctl_ok(&["debug", "on", "--vip", "web", "--seconds", "3"]);
    assert!(
        out.contains("tracing VIP 10.100.0.1:80/tcp for 3s"),
        "{out}"
    );
    let t = Instant::now();
    for _ in 0..4 {
        lab.greet(web).expect("served");
    }
    // Another VIP's traffic is not traced.
    lab.greet(SocketAddr::from((VIP_ANY, 80))).expect("served");
    let out = run_bounded(
        std::process::Command::new(lbctl_bin())
            .arg("--socket")
            .arg(&lab.socket)
            .arg("debug"),
        Duration::from_secs(20),
    )
    .unwrap();
    println!("lbctl debug after {:?}:\n{}", t.elapsed(), out.stdout);
    assert!(out.ok(), "{out}");
    assert!(out.stdout.contains("trace off"), "{out}");
    let lines: Vec<&str> = out.stdout.lines().filter(|l| l.contains(" -> ")).collect();
    assert!(!lines.is_empty(), "no trace lines: {out}");
    for l in &lines {
        assert!(
            l.contains("10.100.0.1:80 tcp: VIP 10.100.0.1:80/tcp (web): tx to backend 10.10.0.1"),
            "{l}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("by Maglev table")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("by connection table")),
        "{lines:?}"
    );
    assert!(
        !out.stdout.contains("10.100.0.2"),
        "another VIP traced: {out}"
    );
    // The trace ended by itself, and lbd logged each line.
    let out = lab.lbctl_ok(&["debug", "off"]);
    assert!(out.contains("no trace was on"), "{out}");
    let log = std::fs::read_to_string(&lab.log_path).unwrap();
    let logged = log.lines().filter(|l| l.contains("lb::trace")).count();
    assert_eq!(logged, lines.len(), "{}", lab.log_tail(20));
    let audit = std::fs::read_to_string(lab.state_dir.join("audit.log")).unwrap();
    assert!(audit.contains("debug-on"), "{audit}");
}
