//! `cargo xtask bench`: the balancer's per-packet cost on its main paths,
//! measured by the kernel through `BPF_PROG_TEST_RUN`.
//!
//! Speed is measured, never asserted: every figure is reported next to a
//! baseline (a packet that is not for any VIP, so the program parses it, looks
//! it up and passes it) measured in the same run with the same method. What
//! *is* checked is that each scenario takes the path it claims: every call's
//! XDP action, the output of a priming run, and the counters' deltas (hits,
//! misses, passes) afterwards.
//!
//! Two ways to time a packet:
//!
//! - `repeat=1` calls: one run per syscall, the kernel's `duration` averaged
//!   over many calls. Needed for IPIP, which rewrites the packet in place: with
//!   `repeat > 1` the kernel reruns the program on the already encapsulated
//!   buffer, which is no longer for a VIP.
//! - `repeat=N`: the kernel loops N times over the same buffer and reports the
//!   average (rounded down to whole ns). Valid only where a rerun sees the
//!   same packet: the pass path and L2 DSR (which only rewrites MACs).
//!
//! The kernel's figure covers the program and the test loop around it (bottom
//! halves off and on, the clock reads); an empty XDP program, loaded by hand,
//! shows that floor, and the baseline carries it too. No program is attached
//! to any interface.
//!
//! Every figure is the median of several rounds, and the rounds of all
//! scenarios are interleaved, so a burst of other load on the machine spreads
//! over all of them instead of skewing one.
//!
//! The bench runs in a network namespace of its own, so nothing it does can
//! reach the host's network (test runs without live frames send nothing).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    sync::Barrier,
    thread,
    time::Instant,
};

use anyhow::{bail, ensure, Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use integration_test::{
    frame::{self, Frame, LB_MAC, TCP_ACK, TCP_SYN},
    harness::{backend_mac, try_run_xdp, vip, TestLb, LB_SRC_V4, XDP_PASS, XDP_TX},
};
use lb::{
    decap::Decap,
    maps::{Counters, LoadOptions},
    service::{BackendSpec, Forwarding, Proto, VipSettings},
};
use lb_common::Counter;

/// Timed rounds per measurement; a figure is the median of its rounds.
const ROUNDS: usize = 10;
/// `repeat=1` calls per round.
const CALLS: usize = 10_000;
/// Untimed calls before each round (caches, branch predictors).
const WARM: usize = 500;
/// Repetitions per call with the `repeat=N` method, and calls per round.
const REPEAT: u32 = 10_000;
const REPEAT_CALLS: usize = 10;

const CONNTRACK_SIZE: u32 = 1 << 20;

const CLIENT_V4: &str = "198.51.100.7";
const CLIENT_V6: &str = "2001:db8:c::7";
const VIP_IPIP: &str = "10.100.0.1";
const VIP_STATELESS: &str = "10.100.0.2";
const VIP_L2DSR: &str = "10.100.0.3";
const VIP_L2DSR_STATELESS: &str = "10.100.0.4";
const VIP_V6: &str = "2001:db8:100::1";
const NOT_A_VIP: &str = "10.200.0.1";
/// The tunnel address lb-decap accepts (a backend's).
const DECAP_ADDR: &str = "10.0.0.2";

pub fn run(_opts: &crate::Opts) -> Result<Vec<crate::report::Table>> {
    let started = Instant::now();
    let mut bench = Bench::new()?;
    let rows = bench.single()?;
    let conc = bench.concurrency()?;
    let table = (bench.t.lb.conntrack_len(), bench.flows);
    print_report(&bench, &rows, &conc, table, started);
    Ok(Vec::new())
}

// ---------------------------------------------------------------------------
// Running and timing.

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
    /// Frames one round of one thread uses when every call gets its own.
    fn frames_per_round(&self) -> usize {
        self.warm + self.calls
    }

    /// Packets one round of one thread runs (warm-up calls run once).
    fn packets_per_round(&self) -> u64 {
        (self.warm + self.calls * self.repeat as usize) as u64
    }

    fn label(&self) -> String {
        format!("repeat={} x{}", self.repeat, self.calls * ROUNDS)
    }
}

/// Something `BPF_PROG_TEST_RUN` can run from any thread.
trait Runner: Sync {
    /// One run without copying the output back: the XDP action and the
    /// kernel's average ns per repetition.
    fn run(&self, frame: &[u8], repeat: u32) -> Result<(u32, u128)>;
}

impl Runner for Xdp {
    fn run(&self, frame: &[u8], repeat: u32) -> Result<(u32, u128)> {
        let r = self
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        Ok((r.return_value, r.duration.as_nanos()))
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

/// What one thread runs: pinned to `cpu`, frames taken in order (a single
/// frame serves every call).
struct Load<'a> {
    cpu: usize,
    frames: &'a [Vec<u8>],
}

/// One round: a thread per entry of `loads`, pinned to its CPU, all starting
/// their timed calls together after their warm-up. `BPF_PROG_TEST_RUN` runs
/// an XDP program on the calling CPU.
fn run_round(prog: &dyn Runner, loads: &[Load<'_>], m: Method, expect: u32) -> Result<Vec<Round>> {
    for l in loads {
        ensure!(
            l.frames.len() == 1 || l.frames.len() >= m.frames_per_round(),
            "{} frames for a round of {} calls",
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
                    let call = |i: usize, repeat: u32| -> Result<u128> {
                        let (action, ns) = prog.run(frame(i), repeat)?;
                        ensure!(
                            action == expect,
                            "XDP action {action} where the scenario expects {expect}"
                        );
                        Ok(ns)
                    };
                    let warm = (0..m.warm).try_for_each(|i| call(i, 1).map(drop));
                    // Wait for the others even after an error, or they hang.
                    barrier.wait();
                    warm?;
                    let start = Instant::now();
                    let mut kernel_ns = 0u128;
                    for i in m.warm..m.warm + m.calls {
                        kernel_ns += call(i, m.repeat)?;
                    }
                    let wall = start.elapsed().as_nanos() as f64;
                    let packets = m.calls as f64 * m.repeat as f64;
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

/// The frames of round `r`: all of them when one frame serves every call,
/// else the round's own (a flow set is sized for all rounds).
fn round_frames(frames: &[Vec<u8>], m: Method, r: usize) -> &[Vec<u8>] {
    if frames.len() == 1 {
        return frames;
    }
    let per = m.frames_per_round();
    &frames[r * per..(r + 1) * per]
}

/// `ROUNDS` rounds of one thread on CPU 0 (`one`) alternating with rounds of
/// two threads at once on CPUs 0 and 1 (`two`), so a drift of the machine
/// hits both alike.
fn measure_pair(
    prog: &dyn Runner,
    one: &[Vec<u8>],
    two: [&[Vec<u8>]; 2],
    m: Method,
    expect: u32,
) -> Result<Pair> {
    let (mut ones, mut twos) = (Vec::new(), [Vec::new(), Vec::new()]);
    for r in 0..ROUNDS {
        let load = |cpu, frames| Load {
            cpu,
            frames: round_frames(frames, m, r),
        };
        ones.extend(run_round(prog, &[load(0, one)], m, expect)?);
        let both = run_round(prog, &[load(0, two[0]), load(1, two[1])], m, expect)?;
        twos[0].push(both[0]);
        twos[1].push(both[1]);
    }
    // Each 2-CPU round against the 1-CPU round just before it.
    let ratios: Vec<f64> = (0..ROUNDS)
        .map(|r| (twos[0][r].kernel + twos[1][r].kernel) / 2.0 / ones[r].kernel)
        .collect();
    Ok(Pair {
        one: Figure::of(&ones),
        two: [Figure::of(&twos[0]), Figure::of(&twos[1])],
        ratio: median(&ratios),
        ratio_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratio_max: ratios.iter().copied().fold(0.0, f64::max),
    })
}

/// A scenario on 1 CPU and on 2 at once.
struct Pair {
    one: Figure,
    /// Per thread: CPU 0, CPU 1.
    two: [Figure; 2],
    /// Median over rounds of (mean of the two threads) / (1-CPU), each 2-CPU
    /// round paired with the 1-CPU round run just before it; and the range.
    ratio: f64,
    ratio_min: f64,
    ratio_max: f64,
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

// ---------------------------------------------------------------------------
// The floor: an empty XDP program, loaded and run with raw bpf(2) calls.

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// The head of `union bpf_attr` for `BPF_PROG_LOAD`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `r0 = XDP_PASS; exit`: what running any XDP program costs at least.
struct EmptyProg(OwnedFd);

impl EmptyProg {
    fn load() -> Result<EmptyProg> {
        // mov64 r0, 2 (XDP_PASS); exit
        let insns: [u64; 2] = [0xb7 | (XDP_PASS as u64) << 32, 0x95];
        let license = b"GPL\0";
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..Default::default()
        };
        attr.prog_name[..9].copy_from_slice(b"lb_bench0");
        // SAFETY: `attr` points at live memory of the size passed, and the
        // pointers in it at the arrays above, which outlive the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &mut attr as *mut ProgLoadAttr,
                std::mem::size_of::<ProgLoadAttr>() as u32,
            )
        };
        if fd < 0 {
            bail!(
                "BPF_PROG_LOAD (empty XDP program): {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: a fresh descriptor the kernel just gave us.
        Ok(EmptyProg(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }
}

impl Runner for EmptyProg {
    fn run(&self, frame: &[u8], repeat: u32) -> Result<(u32, u128)> {
        let mut attr = TestRunAttr {
            prog_fd: self.0.as_fd().as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat,
            ..Default::default()
        };
        // SAFETY: as in `load`; the kernel only reads `frame`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>() as u32,
            )
        };
        if rc != 0 {
            bail!("BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
        }
        Ok((attr.retval, attr.duration as u128))
    }
}

// ---------------------------------------------------------------------------
// Frames.

fn tcp(src: IpAddr, sport: u16, dst: &str, flags: u8) -> Vec<u8> {
    let placeholder = if src.is_ipv4() { CLIENT_V4 } else { CLIENT_V6 };
    let mut f = Frame::tcp(placeholder, sport, dst, 80).with_flags(flags);
    f.src = src;
    f.build()
}

/// `n` frames of distinct new flows (SYNs) to the IPIP VIP. Flow set `set`
/// (0..16) owns the sources 11.x.y.z whose x has `set` as its high nibble,
/// so no two sets share a flow; the source port varies too.
fn new_flows(set: u32, n: usize) -> Vec<Vec<u8>> {
    assert!(set < 16 && n < 1 << 20);
    (0..n as u32)
        .map(|i| {
            let src = Ipv4Addr::from(0x0b00_0000 | set << 20 | i);
            tcp(
                IpAddr::V4(src),
                1024 + (i % 60_000) as u16,
                VIP_IPIP,
                TCP_SYN,
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Scenarios.

/// What a row is to the others.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The pass path: what rows of the same method are compared with.
    Baseline,
    /// The empty program: what the "-floor" column subtracts.
    Floor,
    Scenario,
}

struct Row {
    name: &'static str,
    kind: Kind,
    method: Method,
    fig: Figure,
}

impl Row {
    /// The first row of `kind` measured with this row's method.
    fn reference<'a>(&self, rows: &'a [Row], kind: Kind) -> &'a Row {
        rows.iter()
            .find(|r| r.kind == kind && r.method.repeat == self.method.repeat)
            .expect("baseline and floor rows come first")
    }
}

/// Which program a scenario runs.
#[derive(Clone, Copy)]
enum Prog {
    Balancer,
    Empty,
    Decap,
}

/// What a scenario's packets must do to the counters.
#[derive(Clone, Copy)]
enum Expect {
    /// Each packet bumps each of these balancer counters.
    Counters(&'static [Counter]),
    /// Sent without a single connection-table lookup.
    Stateless,
    /// The empty program counts nothing.
    Nothing,
    /// lb-decap decapsulated each packet.
    Decapsulated,
}

/// A single-CPU scenario.
struct Spec {
    name: &'static str,
    kind: Kind,
    method: Method,
    prog: Prog,
    frames: Vec<Vec<u8>>,
    action: u32,
    expect: Expect,
}

/// Counters of both programs at one moment.
struct Snapshot {
    lb: Counters,
    decapsulated: u64,
}

/// A concurrency scenario: `one` runs alone on CPU 0, `two` on CPUs 0 and 1
/// at once; every packet must end in `action` and do what `expect` says.
struct ConcCase<'a> {
    name: &'static str,
    m: Method,
    one: &'a [Vec<u8>],
    two: [&'a [Vec<u8>]; 2],
    action: u32,
    expect: Expect,
}

struct ConcRow {
    name: &'static str,
    method: Method,
    pair: Pair,
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
        insns: info.size_translated().map(|bytes| bytes / 8),
        jited: info.size_jitted(),
        verified: info.verified_instruction_count(),
    })
}

struct Bench {
    t: TestLb,
    decap: Decap,
    empty: EmptyProg,
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
        let stateless = VipSettings {
            stateless: true,
            ..Default::default()
        };
        t.add_vip(vip(VIP_STATELESS, 80, Proto::Tcp), stateless, &v4);
        let l2dsr = VipSettings {
            forwarding: Forwarding::L2dsr,
            ..Default::default()
        };
        t.add_vip(vip(VIP_L2DSR, 80, Proto::Tcp), l2dsr, &v4);
        let l2dsr_stateless = VipSettings {
            forwarding: Forwarding::L2dsr,
            stateless: true,
            ..Default::default()
        };
        let key = vip(VIP_L2DSR_STATELESS, 80, Proto::Tcp);
        t.add_vip(key, l2dsr_stateless, &v4);
        t.add_vip(vip(VIP_V6, 80, Proto::Tcp), VipSettings::default(), &v6);
        let mut decap = Decap::load()?;
        decap.add_address(DECAP_ADDR.parse()?)?;
        let sizes = vec![
            prog_size("lb_balancer", t.lb.program())?,
            prog_size("lb_decap", decap.program())?,
        ];
        Ok(Bench {
            t,
            decap,
            empty: EmptyProg::load()?,
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

    /// Runs `frame` once, output included, and checks the action and how
    /// much the frame grew; this also establishes the flow of a hit scenario.
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

    /// The single-CPU scenarios. Rounds are interleaved (round 1 of every
    /// scenario, then round 2, ...), so a burst of load on the machine
    /// lands on all of them rather than on one.
    fn single(&mut self) -> Result<Vec<Row>> {
        let specs = self.specs()?;
        let mut rounds = vec![Vec::new(); specs.len()];
        for r in 0..ROUNDS {
            for (spec, out) in specs.iter().zip(&mut rounds) {
                out.push(self.spec_round(spec, r).context(spec.name)?);
            }
        }
        Ok(specs
            .iter()
            .zip(rounds)
            .map(|(s, rounds)| Row {
                name: s.name,
                kind: s.kind,
                method: s.method,
                fig: Figure::of(&rounds),
            })
            .collect())
    }

    fn specs(&mut self) -> Result<Vec<Spec>> {
        use Kind::*;
        let client: IpAddr = CLIENT_V4.parse()?;
        let client6: IpAddr = CLIENT_V6.parse()?;
        let spec = |name, kind, method, prog, frames, action, expect| Spec {
            name,
            kind,
            method,
            prog,
            frames,
            action,
            expect,
        };
        let hit = Expect::Counters(&[Counter::ConnHit]);
        let not_vip = Expect::Counters(&[Counter::PassNotVip]);

        let pass = vec![tcp(client, 40000, NOT_A_VIP, TCP_ACK)];
        self.prime(&pass[0], XDP_PASS, 0, false)?;
        let est = vec![tcp(client, 40001, VIP_IPIP, TCP_ACK)];
        self.prime(&est[0], XDP_TX, 20, true)?;
        let new = self.flow_set(ROUNDS * ONE.frames_per_round());
        let stateless = vec![tcp(client, 40002, VIP_STATELESS, TCP_ACK)];
        self.prime(&stateless[0], XDP_TX, 20, false)?;
        let dsr = vec![tcp(client, 40003, VIP_L2DSR, TCP_ACK)];
        self.prime(&dsr[0], XDP_TX, 0, true)?;
        let dsr_stateless = vec![tcp(client, 40006, VIP_L2DSR_STATELESS, TCP_ACK)];
        self.prime(&dsr_stateless[0], XDP_TX, 0, false)?;
        let est6 = vec![tcp(client6, 40004, VIP_V6, TCP_ACK)];
        self.prime(&est6[0], XDP_TX, 40, true)?;
        let backend: IpAddr = DECAP_ADDR.parse()?;
        let inner = Frame::tcp(CLIENT_V4, 40005, VIP_IPIP, 80).with_flags(TCP_ACK);
        let tunnel = vec![frame::expected_ipip(
            &inner,
            LB_SRC_V4.parse()?,
            backend,
            backend_mac(backend),
            LB_MAC,
        )];
        let (action, out) = try_run_xdp(self.decap.program(), &tunnel[0])?;
        ensure!(
            (action, out.len()) == (XDP_PASS, tunnel[0].len() - 20),
            "decap priming run: action {action}, {} bytes",
            out.len()
        );

        use Prog::*;
        Ok(vec![
            spec(
                "pass (not a VIP)",
                Baseline,
                ONE,
                Balancer,
                pass.clone(),
                XDP_PASS,
                not_vip,
            ),
            spec(
                "pass (not a VIP)",
                Baseline,
                LOOP,
                Balancer,
                pass.clone(),
                XDP_PASS,
                not_vip,
            ),
            spec(
                "empty XDP program (floor)",
                Floor,
                ONE,
                Empty,
                pass.clone(),
                XDP_PASS,
                Expect::Nothing,
            ),
            spec(
                "empty XDP program (floor)",
                Floor,
                LOOP,
                Empty,
                pass,
                XDP_PASS,
                Expect::Nothing,
            ),
            spec(
                "ipip, established flow (hit)",
                Scenario,
                ONE,
                Balancer,
                est,
                XDP_TX,
                hit,
            ),
            spec(
                "ipip, new flow (miss + insert)",
                Scenario,
                ONE,
                Balancer,
                new,
                XDP_TX,
                Expect::Counters(&[Counter::ConnMiss]),
            ),
            spec(
                "ipip, stateless VIP",
                Scenario,
                ONE,
                Balancer,
                stateless,
                XDP_TX,
                Expect::Stateless,
            ),
            spec(
                "l2dsr, established flow",
                Scenario,
                ONE,
                Balancer,
                dsr.clone(),
                XDP_TX,
                hit,
            ),
            spec(
                "l2dsr, established flow",
                Scenario,
                LOOP,
                Balancer,
                dsr,
                XDP_TX,
                hit,
            ),
            // Without the connection table: the difference to the row above
            // is the table's cost with hot caches.
            spec(
                "l2dsr, stateless VIP",
                Scenario,
                LOOP,
                Balancer,
                dsr_stateless,
                XDP_TX,
                Expect::Stateless,
            ),
            spec(
                "ipv6 ip6ip6, established flow",
                Scenario,
                ONE,
                Balancer,
                est6,
                XDP_TX,
                hit,
            ),
            // The backend side: a program of its own, compared with the
            // balancer's baseline.
            spec(
                "lb-decap, ipip to this host",
                Scenario,
                ONE,
                Decap,
                tunnel,
                XDP_PASS,
                Expect::Decapsulated,
            ),
        ])
    }

    /// Round `r` of a scenario, on CPU 0, with its counter check.
    fn spec_round(&mut self, spec: &Spec, r: usize) -> Result<Round> {
        let load = [Load {
            cpu: 0,
            frames: round_frames(&spec.frames, spec.method, r),
        }];
        let (m, action) = (spec.method, spec.action);
        let before = self.snapshot()?;
        let rounds = match spec.prog {
            Prog::Balancer => run_round(self.t.lb.program(), &load, m, action)?,
            Prog::Empty => run_round(&self.empty, &load, m, action)?,
            Prog::Decap => run_round(self.decap.program(), &load, m, action)?,
        };
        let after = self.snapshot()?;
        check(spec.expect, &before, &after, m.packets_per_round())?;
        Ok(rounds[0])
    }

    fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            lb: self.t.lb.counters()?,
            decapsulated: self.decap.counters()?.decapsulated,
        })
    }

    /// The connection table on one CPU, then on both at once: the hit path
    /// (one shared flow; a flow per CPU) and the miss + insert path (new
    /// flows, disjoint per CPU); with two controls that touch no table, to
    /// tell the table's share of any slowdown from the machine's.
    fn concurrency(&mut self) -> Result<Vec<ConcRow>> {
        let client: IpAddr = CLIENT_V4.parse()?;
        let pass = vec![tcp(client, 41000, NOT_A_VIP, TCP_ACK)];
        let shared = vec![tcp(client, 41001, VIP_IPIP, TCP_ACK)];
        let own = [
            vec![tcp(client, 41002, VIP_IPIP, TCP_ACK)],
            vec![tcp(client, 41003, VIP_IPIP, TCP_ACK)],
        ];
        let shared_dsr = vec![tcp(client, 41004, VIP_L2DSR, TCP_ACK)];
        for f in [&shared[0], &own[0][0], &own[1][0]] {
            self.prime(f, XDP_TX, 20, true)?;
        }
        self.prime(&shared_dsr[0], XDP_TX, 0, true)?;

        let mut out = Vec::new();
        let pair = measure_pair(&self.empty, &pass, [&pass, &pass], ONE, XDP_PASS)?;
        out.push(ConcRow {
            name: "control: empty XDP program",
            method: ONE,
            pair,
        });
        let hit = |name, m, one, two| ConcCase {
            name,
            m,
            one,
            two,
            action: XDP_TX,
            expect: Expect::Counters(&[Counter::ConnHit]),
        };
        let cases = [
            ConcCase {
                name: "control: pass (not a VIP), no table",
                m: ONE,
                one: &pass,
                two: [&pass, &pass],
                action: XDP_PASS,
                expect: Expect::Counters(&[Counter::PassNotVip]),
            },
            hit(
                "hit, one flow shared by both CPUs",
                ONE,
                &shared,
                [&shared, &shared],
            ),
            hit("hit, a flow per CPU", ONE, &own[0], [&own[0], &own[1]]),
            hit(
                "hit, one shared flow (l2dsr, tight loop)",
                LOOP,
                &shared_dsr,
                [&shared_dsr, &shared_dsr],
            ),
        ];
        for c in cases {
            out.push(self.conc_case(c)?);
        }
        let per = ROUNDS * ONE.frames_per_round();
        let alone = self.flow_set(per);
        let both = [self.flow_set(per), self.flow_set(per)];
        out.push(self.conc_case(ConcCase {
            name: "miss + insert, new flows per CPU",
            m: ONE,
            one: &alone,
            two: [&both[0], &both[1]],
            action: XDP_TX,
            expect: Expect::Counters(&[Counter::ConnMiss]),
        })?);
        Ok(out)
    }

    fn conc_case(&mut self, c: ConcCase<'_>) -> Result<ConcRow> {
        let ConcCase {
            name,
            m,
            one,
            two,
            action,
            expect,
        } = c;
        let before = self.snapshot()?;
        let pair = measure_pair(self.t.lb.program(), one, two, m, action)?;
        // Each round runs one thread alone, then two.
        let packets = 3 * ROUNDS as u64 * m.packets_per_round();
        let after = self.snapshot()?;
        check(expect, &before, &after, packets).context(name)?;
        Ok(ConcRow {
            name,
            method: m,
            pair,
        })
    }
}

/// Checks that `n` packets did what `expect` says, and (on the balancer)
/// that none was dropped or failed a connection-table insert.
fn check(expect: Expect, before: &Snapshot, after: &Snapshot, n: u64) -> Result<()> {
    let d = |c: Counter| after.lb.get(c) - before.lb.get(c);
    match expect {
        Expect::Counters(counters) => {
            for c in counters {
                ensure!(
                    d(*c) == n,
                    "counter {}: {} for {n} packets: the scenario took another path",
                    c.label(),
                    d(*c)
                );
            }
        }
        Expect::Stateless => {
            let looked = d(Counter::ConnHit) + d(Counter::ConnMiss);
            ensure!(
                looked == 0,
                "stateless VIP: {looked} connection-table lookups"
            );
            ensure!(
                d(Counter::ActionTx) == n,
                "stateless VIP: not every packet sent"
            );
        }
        Expect::Nothing => {}
        Expect::Decapsulated => {
            let done = after.decapsulated - before.decapsulated;
            ensure!(done == n, "lb-decap: {done} of {n} packets decapsulated");
        }
    }
    for c in [Counter::ConnInsertFailed, Counter::ActionDrop] {
        ensure!(d(c) == 0, "counter {}: {}", c.label(), d(c));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Report.

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or("?".into(), |s| {
        s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    })
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

/// The kernel's count of possible CPUs, which is what a per-CPU LRU divides
/// the table by (the process's own affinity is pinned to one).
fn possible_cpus() -> usize {
    let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/possible") else {
        return 1;
    };
    s.trim()
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0),
            None => 1,
        })
        .sum::<usize>()
        .max(1)
}

fn print_report(
    bench: &Bench,
    rows: &[Row],
    conc: &[ConcRow],
    (entries, flows): (usize, usize),
    started: Instant,
) {
    let cpus = possible_cpus();
    println!(
        "lb bench (kernel {}, {cpus} CPUs, BPF_PROG_TEST_RUN): ns per packet as measured by the kernel",
        kernel_release()
    );
    println!(
        "median of {ROUNDS} rounds, range = fastest..slowest round; \"-floor\" = minus the empty \
         program of the same method;"
    );
    println!(
        "wall = ns per packet measured in user space, syscall included (repeat=1 calls only); \
         load average {}",
        load_average()
    );
    println!();
    for s in &bench.sizes {
        println!(
            "{:<12} {:>5} instructions ({} bytes JITed); the verifier processed {} instructions",
            s.name,
            s.insns.map_or("?".into(), |n| n.to_string()),
            s.jited,
            s.verified.map_or("?".into(), |n| n.to_string()),
        );
    }
    println!();
    println!(
        "{:<34} {:<19} {:>7} {:>13} {:>8} {:>12} {:>7}",
        "scenario", "method", "ns/pkt", "range", "-floor", "vs baseline", "wall"
    );
    for r in rows {
        let ratio = r.fig.median / r.reference(rows, Kind::Baseline).fig.median;
        println!(
            "{:<34} {:<19} {:>7.1} {:>13} {:>8.1} {:>11.2}x {:>7}",
            r.name,
            r.method.label(),
            r.fig.median,
            format!("{:.1}..{:.1}", r.fig.min, r.fig.max),
            r.fig.median - r.reference(rows, Kind::Floor).fig.median,
            ratio,
            if r.method.repeat == 1 {
                format!("{:.0}", r.fig.wall)
            } else {
                "-".into()
            },
        );
    }
    println!(
        "(baseline: the `pass` row of the same method; lb-decap is a separate program, \
         compared with the balancer's baseline)"
    );
    // What a repeat=N call costs outside the kernel's timed loop.
    let loop_call_ms = rows
        .iter()
        .filter(|r| r.method.repeat > 1)
        .map(|r| (r.fig.wall - r.fig.median) * r.method.repeat as f64 / 1e6)
        .fold(0.0, f64::max);
    println!(
        "(a repeat={REPEAT} call spends up to {loop_call_ms:.1} ms outside the kernel's timed \
         loop: its wall time says nothing per packet)"
    );
    println!();
    println!(
        "connection table (one LRU shared by all CPUs, BPF_F_NO_COMMON_LRU): \
         1 CPU, then 2 CPUs at once"
    );
    println!(
        "{:<42} {:<19} {:>7} {:>16} {:>12} {:>12}",
        "path", "method", "1 CPU", "2 CPUs (0 / 1)", "2-CPU/1-CPU", "range"
    );
    for c in conc {
        let p = &c.pair;
        println!(
            "{:<42} {:<19} {:>7.1} {:>16} {:>11.2}x {:>12}",
            c.name,
            c.method.label(),
            p.one.median,
            format!("{:.1} / {:.1}", p.two[0].median, p.two[1].median),
            p.ratio,
            format!("{:.2}..{:.2}", p.ratio_min, p.ratio_max),
        );
    }
    println!(
        "(ns/pkt: medians of {ROUNDS} rounds; 1-CPU and 2-CPU rounds alternate, and the ratio is \
         the median of each 2-CPU round's"
    );
    println!(
        " mean over both threads divided by the 1-CPU round before it; 1.00x = no slowdown \
         from running on both CPUs)"
    );
    println!();
    println!(
        "connection table after the run: {entries} entries for {flows} distinct flows inserted{} \
         (size {CONNTRACK_SIZE}; per-CPU LRU lists of {} each)",
        if entries < flows {
            ": the LRU evicted some"
        } else {
            ", none evicted"
        },
        CONNTRACK_SIZE as usize / cpus,
    );
    println!(
        "total time {:.1} s; load average now {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
}
