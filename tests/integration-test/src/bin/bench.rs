//! `cargo xtask bench`: the balancer's per-packet cost on its main paths,
//! measured by the kernel through `BPF_PROG_TEST_RUN`.
//!
//! Speed is measured, never asserted: every figure is reported next to a
//! baseline (a packet that is not for any VIP, so the program parses it, looks
//! it up and passes it) measured in the same run with the same method. What
//! *is* checked is that each scenario takes the path it claims: every call's
//! XDP action, and the counters' deltas (hits, misses, passes) afterwards.
//!
//! Two ways to time a packet:
//!
//! - `repeat=1` calls: one run per syscall, the kernel's `duration` averaged
//!   over many calls. Needed for IPIP, which rewrites the packet in place: with
//!   `repeat > 1` the kernel reruns the program on the already encapsulated
//!   buffer, which is no longer for a VIP.
//! - `repeat=N`: the kernel loops N times over the same buffer and reports the
//!   average. Valid only where a rerun sees the same packet: the pass path and
//!   L2 DSR (which only rewrites MAC addresses).
//!
//! The kernel's figure covers the program and the test loop around it (bottom
//! halves off/on, the clock reads); the baseline carries that overhead too.
//!
//! The bench runs in a network namespace of its own, so nothing it does can
//! reach the host's network (test runs without live frames send nothing).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Barrier,
    thread,
    time::Instant,
};

use anyhow::{bail, ensure, Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use integration_test::{
    frame::{self, Frame, LB_MAC, TCP_ACK},
    harness::{backend_mac, try_run_xdp, vip, TestLb, LB_SRC_V4, XDP_PASS, XDP_TX},
};
use lb::{
    decap::Decap,
    maps::{Counters, LoadOptions},
    service::{BackendSpec, Forwarding, Proto, VipSettings},
};
use lb_common::Counter;

/// Timed rounds per measurement; a figure is the median of its rounds.
const ROUNDS: usize = 5;
/// `repeat=1` calls per round.
const CALLS: usize = 10_000;
/// Untimed calls before each round (caches, branch predictors).
const WARM: usize = 500;
/// Repetitions per call with the `repeat=N` method, and calls per round.
const REPEAT: u32 = 10_000;
const REPEAT_CALLS: usize = 20;

const CONNTRACK_SIZE: u32 = 1 << 20;

const CLIENT_V4: &str = "198.51.100.7";
const CLIENT_V6: &str = "2001:db8:c::7";
const VIP_IPIP: &str = "10.100.0.1";
const VIP_STATELESS: &str = "10.100.0.2";
const VIP_L2DSR: &str = "10.100.0.3";
const VIP_V6: &str = "2001:db8:100::1";
const NOT_A_VIP: &str = "10.200.0.1";

fn main() -> Result<()> {
    // SAFETY: plain syscalls on the calling thread, before any other thread
    // exists, so every thread the bench starts inherits the namespace.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            bail!(
                "unshare(CLONE_NEWNET): {} (run as root)",
                std::io::Error::last_os_error()
            );
        }
    }
    pin(0)?;
    let started = Instant::now();
    let mut bench = Bench::new()?;

    let mut rows = Vec::new();
    bench.single(&mut rows)?;
    bench.decap(&mut rows)?;
    let conc = bench.concurrency()?;
    let entries = (bench.t.lb.conntrack_len(), bench.flows);

    print_report(&bench, &rows, &conc, entries, started)?;
    Ok(())
}

/// How a measurement drives the kernel.
#[derive(Clone, Copy)]
struct Method {
    repeat: u32,
    calls: usize,
    warm: usize,
}

const ONE: Method = Method {
    repeat: 1,
    calls: CALLS,
    warm: WARM,
};
const LOOP: Method = Method {
    repeat: REPEAT,
    calls: REPEAT_CALLS,
    warm: 1,
};

impl Method {
    /// Frames one round of one thread uses (when every call gets its own).
    fn frames_per_round(&self) -> usize {
        self.warm + self.calls
    }

    fn label(&self) -> String {
        if self.repeat == 1 {
            format!("repeat=1 x{}", self.calls * ROUNDS)
        } else {
            format!("repeat={} x{}", self.repeat, self.calls * ROUNDS)
        }
    }
}

/// One timed round of one thread.
#[derive(Clone, Copy)]
struct Round {
    /// Kernel-measured ns per packet.
    kernel: f64,
    /// Wall-clock ns per packet, syscall included.
    wall: f64,
}

/// A figure: the median over rounds, and the rounds' range.
#[derive(Clone, Copy)]
struct Figure {
    median: f64,
    min: f64,
    max: f64,
    wall: f64,
}

impl Figure {
    fn of(rounds: &[Round]) -> Figure {
        let k: Vec<f64> = rounds.iter().map(|r| r.kernel).collect();
        let w: Vec<f64> = rounds.iter().map(|r| r.wall).collect();
        Figure {
            median: median(&k),
            min: k.iter().copied().fold(f64::INFINITY, f64::min),
            max: k.iter().copied().fold(0.0, f64::max),
            wall: median(&w),
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// What one thread runs: pinned to `cpu`, frames taken in order (a single
/// frame is reused for every call).
struct Load<'a> {
    cpu: usize,
    frames: &'a [Vec<u8>],
}

/// Runs one round per entry of `loads`, all threads at once (each pinned to
/// its CPU, started together after their warm-up); returns each thread's
/// round. `BPF_PROG_TEST_RUN` runs the program on the calling CPU.
fn run_round(prog: &Xdp, loads: &[Load<'_>], m: Method, expect: u32) -> Result<Vec<Round>> {
    for l in loads {
        ensure!(
            l.frames.len() == 1 || l.frames.len() >= m.frames_per_round(),
            "{} frames for a round of {}",
            l.frames.len(),
            m.frames_per_round()
        );
    }
    let barrier = Barrier::new(loads.len());
    thread::scope(|s| {
        let handles: Vec<_> = loads
            .iter()
            .map(|l| {
                let barrier = &barrier;
                s.spawn(move || -> Result<Round> {
                    pin(l.cpu)?;
                    let frame = |i: usize| &l.frames[i % l.frames.len()][..];
                    for i in 0..m.warm {
                        test_run(prog, frame(i), 1, expect)?;
                    }
                    barrier.wait();
                    let start = Instant::now();
                    let mut kernel_ns = 0u128;
                    for i in m.warm..m.warm + m.calls {
                        // The kernel reports the average over the repetitions.
                        kernel_ns += test_run(prog, frame(i), m.repeat, expect)?;
                    }
                    let wall = start.elapsed().as_nanos() as f64;
                    let packets = (m.calls as u64 * m.repeat as u64) as f64;
                    Ok(Round {
                        kernel: kernel_ns as f64 / m.calls as f64,
                        wall: wall / packets,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread panicked"))
            .collect()
    })
}

/// One `BPF_PROG_TEST_RUN` without copying the output back; returns the
/// kernel's average ns per repetition.
fn test_run(prog: &Xdp, frame: &[u8], repeat: u32, expect: u32) -> Result<u128> {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    ensure!(
        r.return_value == expect,
        "XDP action {} where the scenario expects {expect}",
        r.return_value
    );
    Ok(r.duration.as_nanos())
}

/// Pins the calling thread to `cpu` and checks it is running there.
fn pin(cpu: usize) -> Result<()> {
    // SAFETY: `set` is a valid, initialised cpu_set_t of the size passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "sched_setaffinity(CPU {cpu}): {}",
                std::io::Error::last_os_error()
            );
        }
        let now = libc::sched_getcpu();
        ensure!(now == cpu as i32, "pinned to CPU {cpu}, running on {now}");
    }
    Ok(())
}

fn tcp(src: IpAddr, sport: u16, dst: &str, flags: u8) -> Vec<u8> {
    let placeholder = if src.is_ipv4() { CLIENT_V4 } else { CLIENT_V6 };
    let mut f = Frame::tcp(placeholder, sport, dst, 80).with_flags(flags);
    f.src = src;
    f.build()
}

/// `n` frames of distinct new flows (SYNs) to the IPIP VIP: flow set `set`
/// (0..16) owns source addresses 11.x.y.z with x's high nibble `set`, so
/// sets never share a flow; the source port varies too.
fn new_flows(set: u32, n: usize) -> Vec<Vec<u8>> {
    assert!(set < 16 && n < 1 << 20);
    (0..n as u32)
        .map(|i| {
            let src = Ipv4Addr::from(0x0b00_0000 | set << 20 | i);
            tcp(
                IpAddr::V4(src),
                1024 + (i % 60_000) as u16,
                VIP_IPIP,
                frame::TCP_SYN,
            )
        })
        .collect()
}

struct Row {
    name: String,
    method: Method,
    fig: Figure,
    /// Index of the baseline row this one is compared with.
    baseline: Option<usize>,
}

struct ConcRow {
    name: String,
    method: Method,
    one: Figure,
    /// Per thread (CPU 0, CPU 1).
    two: [Figure; 2],
}

struct ProgSize {
    name: &'static str,
    insns: Option<u32>,
    jited: u32,
    verified: Option<u32>,
}

fn prog_size(name: &'static str, prog: &Xdp) -> Result<ProgSize> {
    let info = prog.info()?;
    Ok(ProgSize {
        name,
        insns: info.size_translated().map(|b| b / 8),
        jited: info.size_jitted(),
        verified: info.verified_instruction_count(),
    })
}

struct Bench {
    t: TestLb,
    sizes: Vec<ProgSize>,
    next_flow_set: u32,
    /// Distinct flows the run puts in the connection table.
    flows: usize,
}

impl Bench {
    fn new() -> Result<Bench> {
        let mut t = TestLb::with_options(LoadOptions {
            max_vips: 8,
            conntrack_size: CONNTRACK_SIZE,
            ..Default::default()
        });
        let v4: Vec<BackendSpec> = (2..12)
            .map(|i| BackendSpec {
                addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)),
                weight: 100,
            })
            .collect();
        let v6: Vec<BackendSpec> = (2..12)
            .map(|i| BackendSpec {
                addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, i)),
                weight: 100,
            })
            .collect();
        t.add_vip(vip(VIP_IPIP, 80, Proto::Tcp), VipSettings::default(), &v4);
        t.add_vip(
            vip(VIP_STATELESS, 80, Proto::Tcp),
            VipSettings {
                stateless: true,
                ..Default::default()
            },
            &v4,
        );
        t.add_vip(
            vip(VIP_L2DSR, 80, Proto::Tcp),
            VipSettings {
                forwarding: Forwarding::L2dsr,
                ..Default::default()
            },
            &v4,
        );
        t.add_vip(vip(VIP_V6, 80, Proto::Tcp), VipSettings::default(), &v6);
        let sizes = vec![prog_size("lb_balancer", t.lb.program())?];
        Ok(Bench {
            t,
            sizes,
            next_flow_set: 0,
            flows: 0,
        })
    }

    fn flow_set(&mut self, n: usize) -> Vec<Vec<u8>> {
        let set = self.next_flow_set;
        self.next_flow_set += 1;
        self.flows += n;
        new_flows(set, n)
    }

    fn counters(&self) -> Result<Counters> {
        Ok(self.t.lb.counters()?)
    }

    /// Measures one scenario on CPU 0 (`ROUNDS` rounds) and checks the
    /// counters moved as `expect` says (counter, packets per call).
    fn measure(
        &mut self,
        frames: &[Vec<u8>],
        m: Method,
        action: u32,
        expect: &[Counter],
    ) -> Result<Figure> {
        let before = self.counters()?;
        let prog: &Xdp = self.t.lb.program();
        let mut rounds = Vec::new();
        for r in 0..ROUNDS {
            let frames = if frames.len() == 1 {
                frames
            } else {
                let per = m.frames_per_round();
                &frames[r * per..(r + 1) * per]
            };
            rounds.extend(run_round(prog, &[Load { cpu: 0, frames }], m, action)?);
        }
        let after = self.counters()?;
        // Warm-up calls run once each; timed calls `repeat` times.
        let packets = (ROUNDS * (m.warm + m.calls * m.repeat as usize)) as u64;
        check_counters(&before, &after, expect, packets)?;
        Ok(Figure::of(&rounds))
    }

    /// Runs `frame` once with its output and checks the action and how much
    /// the frame grew; also establishes the flow for hit scenarios.
    fn prime(&mut self, frame: &[u8], action: u32, growth: usize, stateful: bool) -> Result<()> {
        self.flows += usize::from(stateful);
        let (a, out) = try_run_xdp(self.t.lb.program(), frame)?;
        ensure!(a == action, "priming run: action {a}, expected {action}");
        ensure!(
            out.len() == frame.len() + growth,
            "priming run: {} bytes out of {} in, expected +{growth}",
            out.len(),
            frame.len()
        );
        Ok(())
    }

    fn single(&mut self, rows: &mut Vec<Row>) -> Result<()> {
        let client: IpAddr = CLIENT_V4.parse()?;
        let client6: IpAddr = CLIENT_V6.parse()?;
        let pass = vec![tcp(client, 40000, NOT_A_VIP, TCP_ACK)];
        let push = |rows: &mut Vec<Row>, name: &str, m: Method, fig: Figure, base| {
            rows.push(Row {
                name: name.to_string(),
                method: m,
                fig,
                baseline: base,
            });
            rows.len() - 1
        };

        let fig = self.measure(&pass, ONE, XDP_PASS, &[Counter::PassNotVip])?;
        let base1 = push(rows, "pass (not a VIP)", ONE, fig, None);
        let fig = self.measure(&pass, LOOP, XDP_PASS, &[Counter::PassNotVip])?;
        let base_n = push(rows, "pass (not a VIP)", LOOP, fig, None);

        let est = vec![tcp(client, 40001, VIP_IPIP, TCP_ACK)];
        self.prime(&est[0], XDP_TX, 20, true)?;
        let fig = self.measure(&est, ONE, XDP_TX, &[Counter::ConnHit])?;
        push(rows, "ipip, established flow (hit)", ONE, fig, Some(base1));

        let flows = self.flow_set(ROUNDS * ONE.frames_per_round());
        let fig = self.measure(&flows, ONE, XDP_TX, &[Counter::ConnMiss])?;
        push(
            rows,
            "ipip, new flow (miss + insert)",
            ONE,
            fig,
            Some(base1),
        );

        let stateless = vec![tcp(client, 40002, VIP_STATELESS, TCP_ACK)];
        self.prime(&stateless[0], XDP_TX, 20, false)?;
        let fig = self.measure(&stateless, ONE, XDP_TX, &[])?;
        push(rows, "ipip, stateless VIP", ONE, fig, Some(base1));

        let dsr = vec![tcp(client, 40003, VIP_L2DSR, TCP_ACK)];
        self.prime(&dsr[0], XDP_TX, 0, true)?;
        let fig = self.measure(&dsr, ONE, XDP_TX, &[Counter::ConnHit])?;
        push(rows, "l2dsr, established flow", ONE, fig, Some(base1));
        let fig = self.measure(&dsr, LOOP, XDP_TX, &[Counter::ConnHit])?;
        push(rows, "l2dsr, established flow", LOOP, fig, Some(base_n));

        let est6 = vec![tcp(client6, 40004, VIP_V6, TCP_ACK)];
        self.prime(&est6[0], XDP_TX, 40, true)?;
        let fig = self.measure(&est6, ONE, XDP_TX, &[Counter::ConnHit])?;
        push(rows, "ipv6 ip6ip6, established flow", ONE, fig, Some(base1));

        // The baseline again: how much the machine drifted during the run.
        let fig = self.measure(&pass, ONE, XDP_PASS, &[Counter::PassNotVip])?;
        push(rows, "pass (not a VIP), again", ONE, fig, Some(base1));
        Ok(())
    }

    /// The backend side: `lb-decap` stripping an IPIP header (its own
    /// program, compared with the balancer's pass baseline).
    fn decap(&mut self, rows: &mut Vec<Row>) -> Result<()> {
        let mut d = Decap::load()?;
        let backend: IpAddr = "10.0.0.2".parse()?;
        d.add_address(backend)?;
        self.sizes.push(prog_size("lb_decap", d.program())?);
        let inner = Frame::tcp(CLIENT_V4, 40005, VIP_IPIP, 80).with_flags(TCP_ACK);
        let tunnel = vec![frame::expected_ipip(
            &inner,
            LB_SRC_V4.parse()?,
            backend,
            backend_mac(backend),
            LB_MAC,
        )];
        let before = d.counters()?.decapsulated;
        let prog: &Xdp = d.program();
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            rounds.extend(run_round(
                prog,
                &[Load {
                    cpu: 0,
                    frames: &tunnel,
                }],
                ONE,
                XDP_PASS,
            )?);
        }
        let done = d.counters()?.decapsulated - before;
        let want = (ROUNDS * ONE.frames_per_round()) as u64;
        ensure!(done == want, "decap: {done} decapsulated, expected {want}");
        let fig = Figure::of(&rounds);
        rows.push(Row {
            name: "decap (lb-decap), ipip to this host".into(),
            method: ONE,
            fig,
            baseline: Some(0),
        });
        Ok(())
    }

    /// The connection table on one CPU, then on both at once: the hit path
    /// (one shared flow; a flow per thread) and the miss + insert path (new
    /// flows, disjoint per thread). 1-CPU and 2-CPU rounds alternate so a
    /// drift of the machine hits both alike.
    fn concurrency(&mut self) -> Result<Vec<ConcRow>> {
        let client: IpAddr = CLIENT_V4.parse()?;
        let shared = vec![tcp(client, 41000, VIP_IPIP, TCP_ACK)];
        let own = [
            vec![tcp(client, 41001, VIP_IPIP, TCP_ACK)],
            vec![tcp(client, 41002, VIP_IPIP, TCP_ACK)],
        ];
        let shared_dsr = vec![tcp(client, 41003, VIP_L2DSR, TCP_ACK)];
        for f in [&shared[0], &own[0][0], &own[1][0]] {
            self.prime(f, XDP_TX, 20, true)?;
        }
        self.prime(&shared_dsr[0], XDP_TX, 0, true)?;

        let mut out = Vec::new();
        out.push(self.conc_case(
            "hit, one flow shared by both CPUs",
            ONE,
            [&shared, &shared],
            &shared,
            Counter::ConnHit,
        )?);
        out.push(self.conc_case(
            "hit, a flow per CPU",
            ONE,
            [&own[0], &own[1]],
            &own[0],
            Counter::ConnHit,
        )?);
        out.push(self.conc_case(
            "hit, one shared flow (l2dsr, tight loop)",
            LOOP,
            [&shared_dsr, &shared_dsr],
            &shared_dsr,
            Counter::ConnHit,
        )?);
        let per = ROUNDS * ONE.frames_per_round();
        let alone = self.flow_set(per);
        let both = [self.flow_set(per), self.flow_set(per)];
        out.push(self.conc_case(
            "miss + insert, new flows per CPU",
            ONE,
            [&both[0], &both[1]],
            &alone,
            Counter::ConnMiss,
        )?);
        Ok(out)
    }

    fn conc_case(
        &mut self,
        name: &str,
        m: Method,
        two: [&[Vec<u8>]; 2],
        one: &[Vec<u8>],
        expect: Counter,
    ) -> Result<ConcRow> {
        let before = self.counters()?;
        let prog: &Xdp = self.t.lb.program();
        let slice = |f: &'static str, frames: &[Vec<u8>], r: usize| -> Result<(usize, usize)> {
            if frames.len() == 1 {
                return Ok((0, 1));
            }
            let per = m.frames_per_round();
            ensure!(frames.len() >= (r + 1) * per, "{f}: too few frames");
            Ok((r * per, (r + 1) * per))
        };
        let (mut ones, mut twos) = (Vec::new(), [Vec::new(), Vec::new()]);
        for r in 0..ROUNDS {
            let (a, b) = slice("1 CPU", one, r)?;
            ones.extend(run_round(
                prog,
                &[Load {
                    cpu: 0,
                    frames: &one[a..b],
                }],
                m,
                XDP_TX,
            )?);
            let (a0, b0) = slice("CPU 0", two[0], r)?;
            let (a1, b1) = slice("CPU 1", two[1], r)?;
            let rs = run_round(
                prog,
                &[
                    Load {
                        cpu: 0,
                        frames: &two[0][a0..b0],
                    },
                    Load {
                        cpu: 1,
                        frames: &two[1][a1..b1],
                    },
                ],
                m,
                XDP_TX,
            )?;
            twos[0].push(rs[0]);
            twos[1].push(rs[1]);
        }
        let after = self.counters()?;
        let packets = (3 * ROUNDS * (m.warm + m.calls * m.repeat as usize)) as u64;
        check_counters(&before, &after, &[expect], packets).context(name.to_string())?;
        Ok(ConcRow {
            name: name.to_string(),
            method: m,
            one: Figure::of(&ones),
            two: [Figure::of(&twos[0]), Figure::of(&twos[1])],
        })
    }
}

/// Every packet bumped each of `expect`, and (for VIP scenarios) nothing
/// failed an insert or was dropped.
fn check_counters(before: &Counters, after: &Counters, expect: &[Counter], n: u64) -> Result<()> {
    let d = |c: Counter| after.get(c) - before.get(c);
    for c in expect {
        ensure!(
            d(*c) == n,
            "counter {}: {} for {n} packets: the scenario took another path",
            c.label(),
            d(*c)
        );
    }
    for c in [Counter::ConnInsertFailed, Counter::ActionDrop] {
        ensure!(d(c) == 0, "counter {}: {}", c.label(), d(c));
    }
    if expect.is_empty() {
        // Stateless: the connection table is not consulted.
        let looked = d(Counter::ConnHit) + d(Counter::ConnMiss);
        ensure!(
            looked == 0,
            "stateless VIP: {looked} connection-table lookups"
        );
    }
    Ok(())
}

fn kernel_release() -> String {
    // SAFETY: `u` is a valid utsname for uname to fill.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return "?".into();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

fn print_report(
    bench: &Bench,
    rows: &[Row],
    conc: &[ConcRow],
    (entries, flows): (usize, usize),
    started: Instant,
) -> Result<()> {
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "lb bench (kernel {}, {cpus} CPUs, BPF_PROG_TEST_RUN; ns per packet as measured by the kernel,",
        kernel_release()
    );
    println!(
        "median of {ROUNDS} rounds; range = fastest..slowest round; wall = per packet incl. the syscall)"
    );
    println!();
    for s in &bench.sizes {
        println!(
            "{:<12} {:>5} instructions (xlated), {:>6} bytes JITed, {:>6} instructions processed by the verifier",
            s.name,
            s.insns.map_or("?".into(), |n| n.to_string()),
            s.jited,
            s.verified.map_or("?".into(), |n| n.to_string()),
        );
    }
    println!();
    println!(
        "{:<38} {:<20} {:>7} {:>13} {:>11} {:>8}",
        "scenario", "method", "ns/pkt", "range", "vs baseline", "wall"
    );
    for r in rows {
        let ratio = match r.baseline {
            None => 1.0,
            Some(b) => r.fig.median / rows[b].fig.median,
        };
        println!(
            "{:<38} {:<20} {:>7.1} {:>13} {:>10.2}x {:>8.1}",
            r.name,
            r.method.label(),
            r.fig.median,
            format!("{:.1}..{:.1}", r.fig.min, r.fig.max),
            ratio,
            r.fig.wall,
        );
    }
    println!("(baseline: the first `pass` row of the same method; lb-decap is compared with the balancer's)");
    println!();
    println!("connection table, one shared LRU (BPF_F_NO_COMMON_LRU), 1 CPU vs 2 CPUs at once");
    println!(
        "{:<42} {:<20} {:>9} {:>18} {:>13}",
        "path", "method", "1 CPU", "2 CPUs (0 / 1)", "2-CPU/1-CPU"
    );
    for c in conc {
        let two = (c.two[0].median + c.two[1].median) / 2.0;
        println!(
            "{:<42} {:<20} {:>9.1} {:>18} {:>12.2}x",
            c.name,
            c.method.label(),
            c.one.median,
            format!("{:.1} / {:.1}", c.two[0].median, c.two[1].median),
            two / c.one.median,
        );
    }
    println!(
        "(2-CPU figure: mean of the two threads' medians; ratio 1.00x = no slowdown from sharing)"
    );
    println!();
    println!(
        "connection table after the run: {entries} entries for {flows} distinct flows inserted{} \
         (size {CONNTRACK_SIZE}; each CPU's LRU list holds {})",
        if entries < flows {
            ": the LRU evicted some"
        } else {
            ", none evicted"
        },
        CONNTRACK_SIZE as usize / cpus.max(1)
    );
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
