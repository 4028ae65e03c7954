//! The connection table on one CPU, then on both at once: does a second CPU
//! slow the first down? `repeat=1` calls with frames built in user space,
//! because the wrapper's per-run source address counts per CPU from the same
//! base, so two CPUs would insert the same new flows.

use std::{sync::Barrier, thread, time::Instant};

use anyhow::{ensure, Context, Result};
use aya::programs::Xdp;
use lb_common::Counter;
use lb_lab::harness::{XDP_PASS, XDP_TX};

use super::{
    check, tcp_v4,
    timing::{max, min, pin, run_expect},
    Bench, Config, CLIENT_V4, NOT_A_VIP, VIP_IPIP, VIP_L2DSR,
};
use crate::report::{median, Cell, Table};

/// Untimed calls before each thread's timed ones.
const WARM: usize = 500;

/// A case: `one` runs alone on CPU 0, `two` on CPUs 0 and 1 at once; every
/// packet must end in `action` and bump each counter of `each` (balancer
/// runs only).
struct Case<'a> {
    name: &'static str,
    balancer: bool,
    one: &'a [Vec<u8>],
    two: [&'a [Vec<u8>]; 2],
    action: u32,
    each: &'static [Counter],
}

pub fn measure(bench: &mut Bench, cfg: &Config) -> Result<Table> {
    let pass = vec![tcp_v4(CLIENT_V4, 41000, NOT_A_VIP)];
    let shared = vec![tcp_v4(CLIENT_V4, 41001, VIP_IPIP)];
    let own = [
        vec![tcp_v4(CLIENT_V4, 41002, VIP_IPIP)],
        vec![tcp_v4(CLIENT_V4, 41003, VIP_IPIP)],
    ];
    let shared_dsr = vec![tcp_v4(CLIENT_V4, 41004, VIP_L2DSR)];
    for f in [&shared[0], &own[0][0], &own[1][0]] {
        bench.prime(f, XDP_TX, 20)?;
    }
    bench.prime(&shared_dsr[0], XDP_TX, 0)?;
    // Disjoint new flows: one set for the lone thread, one per CPU for two.
    let per = cfg.rounds * (WARM + cfg.calls);
    let alone = bench.user_flows(per);
    let both = [bench.user_flows(per), bench.user_flows(per)];

    const HIT: &[Counter] = &[Counter::ActionTx, Counter::ConnHit];
    let cases = [
        Case {
            name: "control: XDP_PASS program",
            balancer: false,
            one: &pass,
            two: [&pass, &pass],
            action: XDP_PASS,
            each: &[],
        },
        Case {
            name: "control: pass (not a VIP), no table",
            balancer: true,
            one: &pass,
            two: [&pass, &pass],
            action: XDP_PASS,
            each: &[Counter::ActionPass, Counter::PassNotVip],
        },
        Case {
            name: "hit, one flow shared by both CPUs",
            balancer: true,
            one: &shared,
            two: [&shared, &shared],
            action: XDP_TX,
            each: HIT,
        },
        Case {
            name: "hit, a flow per CPU",
            balancer: true,
            one: &own[0],
            two: [&own[0], &own[1]],
            action: XDP_TX,
            each: HIT,
        },
        Case {
            name: "hit, one shared flow (l2dsr)",
            balancer: true,
            one: &shared_dsr,
            two: [&shared_dsr, &shared_dsr],
            action: XDP_TX,
            each: HIT,
        },
        Case {
            name: "miss + insert, new flows per CPU (TCP SYN)",
            balancer: true,
            one: &alone,
            two: [&both[0], &both[1]],
            action: XDP_TX,
            each: &[Counter::ActionTx, Counter::ConnMiss],
        },
    ];
    let mut t = Table::new(
        "packet: connection table on 1 CPU, then 2 at once (repeat=1 calls)",
        &[
            "path",
            "1 CPU ns",
            "2 CPUs: CPU 0 ns",
            "2 CPUs: CPU 1 ns",
            "2-CPU / 1-CPU",
            "range",
        ],
    );
    for c in &cases {
        let before = bench.main.lb.counters()?;
        let prog: &Xdp = if c.balancer {
            bench.main.lb.program()
        } else {
            bench.progs.prog(crate::progs::PASS)?
        };
        let p = pair(prog, c, cfg)?;
        if c.balancer {
            // Each round runs one thread alone, then two.
            let n = 3 * cfg.rounds as u64 * (WARM + cfg.calls) as u64;
            check(c.each, &before, &bench.main.lb.counters()?, n).context(c.name)?;
        }
        t.row(vec![
            Cell::text(c.name),
            Cell::num(p.one, 1),
            Cell::num(p.two[0], 1),
            Cell::num(p.two[1], 1),
            Cell::num(p.ratio, 2),
            Cell::text(format!("{:.2}..{:.2}", p.ratio_min, p.ratio_max)),
        ]);
    }
    t.note(format!(
        "Medians of {} rounds of {} calls per thread; 1-CPU and 2-CPU rounds alternate, and the \
         ratio is the median over rounds of the mean of both threads divided by the 1-CPU round \
         just before (1.00 = no slowdown from the other CPU). The table is one LRU hash with \
         BPF_F_NO_COMMON_LRU (a list per CPU).",
        cfg.rounds, cfg.calls
    ));
    Ok(t)
}

/// A case on 1 CPU and on 2 at once (medians of kernel ns per packet).
struct Pair {
    one: f64,
    two: [f64; 2],
    ratio: f64,
    ratio_min: f64,
    ratio_max: f64,
}

/// Rounds of one thread on CPU 0 alternating with rounds of two threads at
/// once on CPUs 0 and 1, so a drift of the machine hits both alike.
fn pair(prog: &Xdp, c: &Case<'_>, cfg: &Config) -> Result<Pair> {
    let per = WARM + cfg.calls;
    let frames = |set: &'_ [Vec<u8>], r: usize| -> Vec<Vec<u8>> {
        if set.len() == 1 {
            set.to_vec()
        } else {
            set[r * per..(r + 1) * per].to_vec()
        }
    };
    let (mut ones, mut twos) = (Vec::new(), [Vec::new(), Vec::new()]);
    for r in 0..cfg.rounds {
        crate::interrupted()?;
        let one = frames(c.one, r);
        ones.push(round(prog, &[(0, &one)], cfg.calls, c.action)?[0]);
        let (a, b) = (frames(c.two[0], r), frames(c.two[1], r));
        let both = round(prog, &[(0, &a), (1, &b)], cfg.calls, c.action)?;
        twos[0].push(both[0]);
        twos[1].push(both[1]);
    }
    let ratios: Vec<f64> = (0..cfg.rounds)
        .map(|r| (twos[0][r] + twos[1][r]) / 2.0 / ones[r])
        .collect();
    Ok(Pair {
        one: median(&ones),
        two: [median(&twos[0]), median(&twos[1])],
        ratio: median(&ratios),
        ratio_min: min(&ratios),
        ratio_max: max(&ratios),
    })
}

/// One round: a thread per `(cpu, frames)`, pinned, all starting their timed
/// calls together after their warm-up; each thread's mean kernel ns.
fn round(
    prog: &Xdp,
    loads: &[(usize, &Vec<Vec<u8>>)],
    calls: usize,
    expect: u32,
) -> Result<Vec<f64>> {
    let barrier = Barrier::new(loads.len());
    thread::scope(|s| {
        let handles: Vec<_> = loads
            .iter()
            .map(|&(cpu, frames)| {
                let barrier = &barrier;
                s.spawn(move || -> Result<f64> {
                    pin(cpu)?;
                    let frame = |i: usize| &frames[i % frames.len()][..];
                    let warm =
                        (0..WARM).try_for_each(|i| run_expect(prog, frame(i), 1, expect).map(drop));
                    // Wait for the others even after an error, or they hang.
                    barrier.wait();
                    warm?;
                    let start = Instant::now();
                    let mut ns = 0u64;
                    for i in WARM..WARM + calls {
                        ns += run_expect(prog, frame(i), 1, expect)?;
                    }
                    ensure!(start.elapsed().as_secs() < 60, "a round took over a minute");
                    Ok(ns as f64 / calls as f64)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread panicked"))
            .collect()
    })
}
