//! `packet`: the balancer's per-packet cost on each of its paths, measured by
//! the kernel through `BPF_PROG_TEST_RUN`, against the `XDP_PASS` floor.
//!
//! Why a wrapper: with `repeat > 1` the kernel reruns the program on the same
//! buffer without resetting it, so from the second run on an encapsulating
//! program sees its own output (no longer a VIP packet). `bench_wrapper`
//! (`tests/bench-ebpf`) puts the frame back before every run (head
//! adjusted back, template bytes copied in, and for new-flow cases a fresh
//! source address per run) and tail-calls the program under test. So:
//!
//! - cost(X) = T(wrapper → X) − W, with W = T(wrapper → `bench_pass`) −
//!   T(`bench_pass` run directly): the wrapper's own cost, measured in the
//!   same round with the same repeat (≥ 1,000,000 in a full run).
//! - the ratio is median(cost(X)) / median(T(`bench_pass`)).
//! - cross-check: the same scenarios run directly with `repeat=1` (one run
//!   per syscall, the kernel's figure averaged over many calls, new flows as
//!   frames built here), against `bench_pass` run the same way.
//!
//! Rounds are interleaved (each round measures every scenario once), so a
//! burst of other load lands on all scenarios, not on one; figures are the
//! min and median over rounds. Everything runs pinned to CPU 0; loading maps
//! and walking the connection table happen on CPU 1. A round during which
//! another process had BPF run-time statistics on (every program run then
//! also reads the clock twice) is measured again and left out.
//!
//! Nothing is timed against a limit. What is checked, as a hard error, is
//! that each scenario took the path it claims: the XDP action of every call,
//! the balancer's counters (each packet bumps exactly the scenario's
//! counters, every other counter stays put), and for new flows the table:
//! nothing evicted from an empty one, a full one still full.
//!
//! The connection table is an LRU hash with `BPF_F_NO_COMMON_LRU`: each CPU
//! owns `conntrack_size / possible CPUs` entries and evicts only its own. A
//! new flow "into an empty table" runs on a balancer loaded fresh for each
//! round, with room on CPU 0 for every flow of the round; "into a full table"
//! runs on one filled first, so every insert evicts.

mod concurrency;
mod frames;
mod previous;
mod results;
mod sizes;
pub mod timing;

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{ensure, Context, Result};
use aya::programs::Xdp;
use lb::{
    balancer::{Counters, LoadOptions},
    decap::Decap,
    model::{BackendSpec, Forwarding, Limits, Proto, Scheduler, VipSettings},
};
use lb_common::Counter;
use lb_lab::{
    frame::{self, Frame, LB_MAC, TCP_ACK, TCP_SYN},
    harness::{backend_mac, try_run_xdp, vip, TestLb, LB_SRC_V4, XDP_DROP, XDP_PASS, XDP_TX},
};

use crate::{
    progs::{BenchProgs, PASS, TX, WRAPPER},
    report::{possible_cpus, Table},
};
pub use frames::tcp_v4;
use frames::{flow_key, tcp_frame, truncated_l4, varied};
use results::{cost_table, pinbench_table, Results, Round, MIN_ROUNDS};
use timing::{on_measure_cpu, per_call, pin, run_expect, Affinity};

pub const CLIENT_V4: &str = "198.51.100.7";
const CLIENT_V6: &str = "2001:db8:c::7";
pub const VIP_IPIP: &str = "10.100.0.1";
const VIP_STATELESS: &str = "10.100.0.2";
const VIP_SRC_HASH: &str = "10.100.0.3";
pub const VIP_L2DSR: &str = "10.100.0.4";
const VIP6_IPIP: &str = "2001:db8:100::1";
const VIP6_STATELESS: &str = "2001:db8:100::2";
const VIP6_SRC_HASH: &str = "2001:db8:100::3";
const VIP6_L2DSR: &str = "2001:db8:100::4";
/// Round-robin and least-connections VIPs (10 backends each), and a
/// least-connections VIP above the exact-scan bound (sampled choice).
const VIP_RR: &str = "10.100.0.5";
const VIP_LC: &str = "10.100.0.6";
const VIP_LC_WIDE: &str = "10.100.0.7";
/// Backends of the wide least-connections VIP: past `LC_EXACT_MAX`.
const LC_WIDE_BACKENDS: u8 = 40;
pub const NOT_A_VIP: &str = "10.200.0.1";
const NOT_A_VIP6: &str = "2001:db8:200::1";
/// The tunnel address lb-decap accepts (a backend's).
const DECAP_ADDR: &str = "10.0.0.2";

/// Offset of the last word of the source address in an untagged frame.
const VARY_V4: u32 = 14 + 12;
const VARY_V6: u32 = 14 + 8 + 12;
/// `repeat=1` frames of new flows take their source words from here up,
/// above any the wrapper generates from the same base.
const USER_FLOWS: u32 = 0x0800_0000;

/// Untimed repetitions before each timed wrapper run, and untimed calls
/// before each round of `repeat=1` calls (caches, branch predictors).
const WARM_REPEAT: u32 = 10_000;
const WARM_CALLS: usize = 500;
/// The balancer for everything but new flows: established flows, the
/// 2-CPU measurement's new flows. 8M entries, the size the per-packet
/// comparisons with other balancers are made at (`previous.rs`).
const MAIN_CONNTRACK: u32 = 1 << 23;
/// The traced copy: only established flows.
const TRACED_CONNTRACK: u32 = 1 << 20;

pub struct Config {
    pub rounds: usize,
    /// Repetitions per wrapper run.
    pub repeat: u32,
    /// `repeat=1` calls per scenario and round.
    pub calls: usize,
}

impl Config {
    fn new(quick: bool) -> Config {
        if quick {
            Config {
                rounds: 5,
                repeat: 200_000,
                calls: 2_000,
            }
        } else {
            Config {
                rounds: 7,
                repeat: 1_000_000,
                calls: 10_000,
            }
        }
    }

    /// Connection-table entries CPU 0 needs for one round of a new-flow
    /// scenario into an empty table (both methods), with a margin.
    fn new_flow_room(&self) -> u32 {
        let per_round = WARM_CALLS as u32 + self.calls as u32 + WARM_REPEAT + self.repeat;
        per_round + per_round / 8
    }
}

pub fn run(opts: &crate::Opts) -> Result<Vec<Table>> {
    // Put the caller's affinity back whatever happens.
    let _affinity = Affinity::save()?;
    pin(timing::housekeeping_cpu())?;
    let cfg = Config::new(opts.quick);
    let mut bench = Bench::new(&cfg)?;
    let scenarios = bench.scenarios()?;
    let results = bench.rounds(&cfg, &scenarios)?;
    let mut tables = vec![
        pinbench_table(&cfg, &scenarios, &results),
        cost_table(&cfg, &scenarios, &results, &bench),
    ];
    tables.push(concurrency::measure(&mut bench, &cfg)?);
    tables.push(sizes::table(&bench.sizes));
    Ok(tables)
}

// ---------------------------------------------------------------------------
// Programs and scenarios.

/// The program a scenario runs (through the wrapper).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `bench_pass`: the wrapper's own cost.
    Pass,
    /// `bench_tx`: the wrapper's subtraction checked on a known program.
    Tx,
    /// The balancer with established flows and every VIP.
    Main,
    /// As `Main`, with the decision trace on for every VIP (records
    /// rate-limited; nobody reads them).
    Traced,
    /// A balancer loaded afresh before each round: an empty table.
    Fresh,
    /// A balancer whose table is full on CPU 0: every insert evicts.
    Full,
    Decap,
}

struct Scenario {
    name: &'static str,
    family: &'static str,
    target: Target,
    frame: Vec<u8>,
    /// New flows: the base of the source word the wrapper varies per run.
    vary: Option<u32>,
    action: u32,
    /// Balancer counters each packet bumps once (every other one stays put).
    each: &'static [Counter],
    /// The ratio to `XDP_PASS` this scenario aims for.
    goal: Option<f64>,
}

impl Scenario {
    fn vary_off(&self) -> u32 {
        if self.frame[12..14] == [0x86, 0xdd] {
            VARY_V6
        } else {
            VARY_V4
        }
    }

    /// Runs directly with `repeat=1` too (the bench programs are the floors'
    /// rows already).
    fn cross_checked(&self) -> bool {
        !matches!(self.target, Target::Pass | Target::Tx)
    }

    fn path(&self) -> String {
        let action = match self.action {
            XDP_PASS => "PASS",
            XDP_TX => "TX",
            XDP_DROP => "DROP",
            _ => "?",
        };
        let counters: Vec<&str> = self.each.iter().map(|c| c.label()).collect();
        match self.target {
            Target::Decap => format!("{action}; decapsulated"),
            _ if counters.is_empty() => action.to_string(),
            _ => format!("{action}; {}", counters.join(", ")),
        }
    }
}

const HIT: &[Counter] = &[Counter::ActionTx, Counter::ConnHit];
const MISS: &[Counter] = &[Counter::ActionTx, Counter::ConnMiss];
const STATELESS: &[Counter] = &[Counter::ActionTx];
const NOT_VIP: &[Counter] = &[Counter::ActionPass, Counter::PassNotVip];
const TRUNCATED: &[Counter] = &[Counter::ActionDrop, Counter::DropTruncated];

pub struct Bench {
    progs: BenchProgs,
    main: TestLb,
    traced: TestLb,
    fresh: Option<TestLb>,
    full: TestLb,
    decap: Decap,
    /// Capacity of CPU 0's share of the fresh and full tables.
    room: u32,
    conntrack_size: u32,
    /// Wrapper runs with a varied source so far on CPU 0: the wrapper's
    /// per-CPU sequence number, mirrored.
    seq: u32,
    /// Source words handed out to `repeat=1` new-flow frames.
    user_seq: u32,
    next_flow_set: u32,
    round: usize,
    pass_frame: Vec<u8>,
    sizes: Vec<sizes::Size>,
}

/// Adds the IPIP VIPs (both families) and, for `all`, every other kind.
fn add_vips(t: &mut TestLb, all: bool) {
    let backends = |v6: bool| -> Vec<BackendSpec> {
        (2..12u16)
            .map(|i| BackendSpec {
                addr: if v6 {
                    format!("2001:db8:b::{i}").parse().unwrap()
                } else {
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8))
                },
                weight: 100,
                tier: 0,
            })
            .collect()
    };
    let stateless = VipSettings {
        stateless: true,
        ..Default::default()
    };
    let src_hash = VipSettings {
        scheduler: Scheduler::SourceHash,
        ..Default::default()
    };
    let l2dsr = VipSettings {
        forwarding: Forwarding::L2dsr,
        ..Default::default()
    };
    let with = |scheduler| VipSettings {
        scheduler,
        ..Default::default()
    };
    // The new-flow rows of every scheduler run on the fresh balancer.
    let mut vips = vec![
        (VIP_IPIP, VipSettings::default()),
        (VIP6_IPIP, VipSettings::default()),
        (VIP_RR, with(Scheduler::RoundRobin)),
        (VIP_LC, with(Scheduler::LeastConnections)),
    ];
    if all {
        vips.extend([
            (VIP_STATELESS, stateless),
            (VIP_SRC_HASH, src_hash),
            (VIP_L2DSR, l2dsr),
            (VIP6_STATELESS, stateless),
            (VIP6_SRC_HASH, src_hash),
            (VIP6_L2DSR, l2dsr),
        ]);
    }
    for (addr, settings) in vips {
        t.add_vip(
            vip(addr, 80, Proto::Tcp),
            settings,
            &backends(addr.contains(':')),
        );
    }
    let wide: Vec<BackendSpec> = (1..=LC_WIDE_BACKENDS)
        .map(|i| BackendSpec {
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 1, i)),
            weight: 100,
            tier: 0,
        })
        .collect();
    t.add_vip(
        vip(VIP_LC_WIDE, 80, Proto::Tcp),
        with(Scheduler::LeastConnections),
        &wide,
    );
}

fn load_lb(conntrack_size: u32, all: bool) -> TestLb {
    let mut t = TestLb::with_options(LoadOptions {
        limits: Limits {
            max_vips: 16,
            conntrack_size,
            ..Default::default()
        },
        ..Default::default()
    });
    // A known egress MTU, so every forwarded packet pays the MTU check (the
    // bench's frames are far below it).
    t.mtu = 1500;
    // The interface's MAC, as lbd writes it: every frame pays the check
    // that it is addressed to this node (the bench's frames are).
    t.lb.set_interface_mac(LB_MAC)
        .expect("writing the interface MAC");
    add_vips(&mut t, all);
    t
}

/// Checks that `n` packets each bumped every counter of `each` once and
/// left every other counter alone.
pub fn check(each: &[Counter], before: &Counters, after: &Counters, n: u64) -> Result<()> {
    for &c in Counter::ALL {
        let d = after.get(c).wrapping_sub(before.get(c));
        let want = if each.contains(&c) { n } else { 0 };
        ensure!(
            d == want,
            "counter {}: {d} for {n} packets, expected {want}: the scenario took another path",
            c.label()
        );
    }
    Ok(())
}

/// Counters of whichever program a scenario runs.
enum Snapshot {
    Lb(Counters),
    Decapsulated(u64),
    Nothing,
}

impl Bench {
    fn new(cfg: &Config) -> Result<Bench> {
        let room = cfg.new_flow_room();
        let conntrack_size = room * possible_cpus() as u32;
        let mut main = load_lb(MAIN_CONNTRACK, true);
        let mut traced = load_lb(TRACED_CONNTRACK, true);
        traced.lb.set_trace(lb_common::debug::DebugConfig {
            enabled: 1,
            vip_id: lb_common::debug::DEBUG_ALL_VIPS,
            until_ns: u64::MAX,
        })?;
        let mut decap = Decap::load()?;
        decap.add_address(DECAP_ADDR.parse()?)?;
        let mut progs = BenchProgs::load()?;
        let sizes = vec![
            sizes::of("lb_balancer", main.lb.program())?,
            sizes::of("lb_decap", decap.program())?,
            sizes::of("bench_wrapper", progs.prog(WRAPPER)?)?,
        ];
        let mut bench = Bench {
            progs,
            main,
            traced,
            fresh: None,
            full: load_lb(conntrack_size, false),
            decap,
            room,
            conntrack_size,
            seq: 0,
            user_seq: 0,
            next_flow_set: 0,
            round: 0,
            pass_frame: tcp_v4(CLIENT_V4, 40000, NOT_A_VIP),
            sizes,
        };
        bench.fill_full()?;
        Ok(bench)
    }

    /// Fills CPU 0's share of the full table: new flows through the wrapper
    /// until more were inserted than it holds.
    fn fill_full(&mut self) -> Result<()> {
        let frame = tcp_v4(CLIENT_V4, 40100, VIP_IPIP);
        let fd = self.full.lb.program().fd()?.try_clone()?;
        self.progs.set_target(&fd)?;
        self.progs.set_template(&frame, VARY_V4, FULL_BASE)?;
        let n = self.room + self.room / 4;
        let wrapper = self.progs.prog(WRAPPER)?;
        on_measure_cpu(|| run_expect(wrapper, &frame, n, XDP_TX))?;
        self.seq = self.seq.wrapping_add(n);
        self.check_full(self.full.lb.conntrack_len())
            .with_context(|| format!("filling the table with {n} flows"))
    }

    /// A full table holds CPU 0's share, less the few entries an eviction
    /// frees ahead of need (the kernel shrinks a per-CPU LRU list by up to
    /// `PERCPU_FREE_TARGET` entries at once).
    fn check_full(&self, len: usize) -> Result<()> {
        const PERCPU_FREE_TARGET: usize = 4;
        let room = self.room as usize;
        ensure!(
            (room - PERCPU_FREE_TARGET..=room).contains(&len),
            "full table: {len} entries, expected CPU 0's share {room} (less up to {PERCPU_FREE_TARGET})"
        );
        Ok(())
    }

    /// Runs `frame` once through the main balancer, output included, and
    /// checks the action and how much the frame grew; this also puts the
    /// flow of an established-flow scenario in the table.
    pub fn prime(&mut self, frame: &[u8], action: u32, growth: usize) -> Result<()> {
        let (a, out) = try_run_xdp(self.main.lb.program(), frame)?;
        ensure!(a == action, "priming run: action {a}, expected {action}");
        ensure!(
            out.len() == frame.len() + growth,
            "priming run: {} bytes out of {} in, expected +{growth}",
            out.len(),
            frame.len()
        );
        Ok(())
    }

    /// `n` frames of distinct new flows (TCP SYN) to the IPIP VIP, for the
    /// 2-CPU measurement. Flow set `set` (0..16) owns the sources 11.x.y.z
    /// whose x has `set` as its high nibble, so no two sets share a flow.
    pub fn user_flows(&mut self, n: usize) -> Vec<Vec<u8>> {
        let set = self.next_flow_set;
        self.next_flow_set += 1;
        assert!(set < 16 && n < 1 << 20);
        (0..n as u32)
            .map(|i| {
                let src = Ipv4Addr::from(0x0b00_0000 | set << 20 | i).to_string();
                tcp_frame(&src, 1024 + (i % 60_000) as u16, VIP_IPIP, TCP_SYN)
            })
            .collect()
    }

    /// Every scenario, one a line (hence no rustfmt), in measuring order.
    #[rustfmt::skip]
    fn scenarios(&mut self) -> Result<Vec<Scenario>> {
        use Target::*;
        let s = |name, family, target, frame, vary, action, each, goal| Scenario {
            name,
            family,
            target,
            frame,
            vary,
            action,
            each,
            goal,
        };
        let (c4, c6) = (CLIENT_V4, CLIENT_V6);
        // Established flows: in the table before the first round.
        let est = tcp_v4(c4, 40001, VIP_IPIP);
        let est6 = tcp_frame(c6, 40001, VIP6_IPIP, TCP_ACK);
        let hash = tcp_v4(c4, 40002, VIP_SRC_HASH);
        let hash6 = tcp_frame(c6, 40002, VIP6_SRC_HASH, TCP_ACK);
        let dsr = tcp_v4(c4, 40003, VIP_L2DSR);
        let dsr6 = tcp_frame(c6, 40003, VIP6_L2DSR, TCP_ACK);
        let lc = tcp_v4(c4, 40006, VIP_LC);
        for (f, growth) in [(&est, 20), (&est6, 40), (&hash, 20), (&hash6, 40), (&dsr, 0), (&dsr6, 0), (&lc, 20)] {
            self.prime(f, XDP_TX, growth)?;
        }
        let (a, _) = try_run_xdp(self.traced.lb.program(), &est)?;
        ensure!(a == XDP_TX, "priming the traced balancer: action {a}");
        let backend: IpAddr = DECAP_ADDR.parse()?;
        let inner = Frame::tcp(c4, 40005, VIP_IPIP, 80)
            .with_flags(TCP_ACK)
            .with_payload(&[0; 10]);
        let tunnel = frame::expected_ipip(&inner, LB_SRC_V4.parse()?, backend, backend_mac(backend), LB_MAC);
        let pass = self.pass_frame.clone();
        Ok(vec![
            // Must stay first: W, which the rows after it subtract.
            s("wrapper → XDP_PASS program", "–", Pass, pass.clone(), None, XDP_PASS, &[], None),
            s("wrapper → MAC swap + XDP_TX, minus W (check)", "–", Tx, pass.clone(), None, XDP_TX, &[], None),
            s("established flow (table hit), IPIP", "IPv4", Main, est.clone(), None, XDP_TX, HIT, Some(2.2)),
            s("established flow, IPIP, decision trace on (rate-limited)", "IPv4", Traced, est.clone(), None, XDP_TX, HIT, None),
            s("new flow, empty table (TCP ACK: miss, Maglev, insert)", "IPv4", Fresh, tcp_v4(c4, 40010, VIP_IPIP), Some(EMPTY_BASE), XDP_TX, MISS, Some(6.0)),
            s("new flow, empty table (TCP SYN: Maglev, insert, no lookup)", "IPv4", Fresh, tcp_frame(c4, 40011, VIP_IPIP, TCP_SYN), Some(SYN_BASE), XDP_TX, MISS, None),
            s("new flow, full table (TCP ACK: miss, Maglev, evict + insert)", "IPv4", Full, tcp_v4(c4, 40012, VIP_IPIP), Some(FULL_BASE), XDP_TX, MISS, None),
            s("new flow, empty table, round-robin (miss, next in the sequence, insert)", "IPv4", Fresh, tcp_v4(c4, 40013, VIP_RR), Some(RR_BASE), XDP_TX, MISS, None),
            s("new flow, empty table, least-connections, 10 backends (miss, exact scan, insert, count)", "IPv4", Fresh, tcp_v4(c4, 40014, VIP_LC), Some(LC_BASE), XDP_TX, MISS, None),
            s("new flow, empty table, least-connections, 40 backends (miss, best of 2 sampled, insert, count)", "IPv4", Fresh, tcp_v4(c4, 40015, VIP_LC_WIDE), Some(LC_WIDE_BASE), XDP_TX, MISS, None),
            s("least-connections VIP, established flow", "IPv4", Main, lc, None, XDP_TX, HIT, None),
            s("stateless VIP, IPIP", "IPv4", Main, tcp_v4(c4, 40004, VIP_STATELESS), None, XDP_TX, STATELESS, None),
            s("source-hash VIP, established flow", "IPv4", Main, hash, None, XDP_TX, HIT, None),
            s("l2dsr, established flow", "IPv4", Main, dsr, None, XDP_TX, HIT, None),
            s("not a VIP: pass-through", "IPv4", Main, pass, None, XDP_PASS, NOT_VIP, Some(1.4)),
            s("VIP packet dropped as malformed (L4 truncated)", "IPv4", Main, truncated_l4(c4, VIP_IPIP), None, XDP_DROP, TRUNCATED, None),
            s("established flow (table hit), IP6IP6", "IPv6", Main, est6, None, XDP_TX, HIT, None),
            s("new flow, empty table (TCP ACK: miss, Maglev, insert)", "IPv6", Fresh, tcp_frame(c6, 40010, VIP6_IPIP, TCP_ACK), Some(EMPTY6_BASE), XDP_TX, MISS, None),
            s("new flow, full table (TCP ACK: miss, Maglev, evict + insert)", "IPv6", Full, tcp_frame(c6, 40012, VIP6_IPIP, TCP_ACK), Some(FULL6_BASE), XDP_TX, MISS, None),
            s("stateless VIP, IP6IP6", "IPv6", Main, tcp_frame(c6, 40004, VIP6_STATELESS, TCP_ACK), None, XDP_TX, STATELESS, None),
            s("source-hash VIP, established flow", "IPv6", Main, hash6, None, XDP_TX, HIT, None),
            s("l2dsr, established flow", "IPv6", Main, dsr6, None, XDP_TX, HIT, None),
            s("not a VIP: pass-through", "IPv6", Main, tcp_frame(c6, 40000, NOT_A_VIP6, TCP_ACK), None, XDP_PASS, NOT_VIP, None),
            s("VIP packet dropped as malformed (L4 truncated)", "IPv6", Main, truncated_l4(c6, VIP6_IPIP), None, XDP_DROP, TRUNCATED, None),
            s("lb-decap (backend side): IPIP to this host", "IPv4", Decap, tunnel, None, XDP_PASS, &[], None),
        ])
    }

    // -- Rounds ------------------------------------------------------------

    /// `cfg.rounds` rounds, each measuring every scenario once. A round
    /// during which BPF run-time statistics were on is run again (up to
    /// `cfg.rounds` times in all), and dropped if enough others were not.
    fn rounds(&mut self, cfg: &Config, scenarios: &[Scenario]) -> Result<Results> {
        let cpu_before = timing::cpu_times(timing::MEASURE_CPU);
        let (mut clean, mut disturbed) = (Vec::new(), Vec::new());
        while clean.len() < cfg.rounds && disturbed.len() < cfg.rounds {
            crate::interrupted()?;
            self.round = clean.len() + disturbed.len();
            let runs = self.bench_runs()?;
            let round = self.round_once(cfg, scenarios)?;
            // The kernel counts runs only while the statistics are on
            // (BPF_ENABLE_STATS or kernel.bpf_stats_enabled, for every
            // program at once), and then each run also reads the clock
            // twice: the same ns added to every row.
            if self.bench_runs()? == runs {
                clean.push(round);
            } else {
                disturbed.push(round);
            }
        }
        let stats_rounds = disturbed.len();
        let mut res = Results::new(scenarios.len());
        if clean.len() < MIN_ROUNDS {
            clean.extend(disturbed);
            res.disturbed = true;
        }
        res.stats_rounds = stats_rounds;
        res.used_rounds = clean.len();
        for round in clean {
            res.add(round);
        }
        if let (Some(b), Some(a)) = (cpu_before, timing::cpu_times(timing::MEASURE_CPU)) {
            res.disturbance = Some(timing::disturbance(&b, &a));
        }
        Ok(res)
    }

    /// Runs of the programs `BPF_PROG_TEST_RUN` enters directly, as the
    /// kernel's run-time statistics count them.
    fn bench_runs(&mut self) -> Result<u64> {
        let mut n = 0;
        for name in [WRAPPER, PASS, TX] {
            n += self.progs.prog(name)?.info()?.run_count();
        }
        Ok(n)
    }

    fn round_once(&mut self, cfg: &Config, scenarios: &[Scenario]) -> Result<Round> {
        let pass = self
            .direct_round(cfg, PASS, XDP_PASS)
            .context("XDP_PASS floor")?;
        let tx = self.direct_round(cfg, TX, XDP_TX).context("XDP_TX floor")?;
        let scenarios = scenarios
            .iter()
            .map(|s| {
                self.scenario_round(cfg, s)
                    .with_context(|| format!("{} ({})", s.name, s.family))
            })
            .collect::<Result<_>>()?;
        Ok(Round {
            pass,
            tx,
            scenarios,
        })
    }

    /// A bench program run directly: ns per packet at `repeat` and with
    /// `repeat=1` calls.
    fn direct_round(&mut self, cfg: &Config, name: &str, action: u32) -> Result<(f64, f64)> {
        let frame = self.pass_frame.clone();
        let prog = self.progs.prog(name)?;
        on_measure_cpu(|| {
            run_expect(prog, &frame, WARM_REPEAT, action)?;
            let ns = run_expect(prog, &frame, cfg.repeat, action)?;
            let one = per_call(
                prog,
                std::slice::from_ref(&frame),
                cfg.calls,
                WARM_CALLS,
                action,
            )?;
            Ok((ns as f64, one))
        })
    }

    /// One round of a scenario: T(wrapper → target), and the `repeat=1`
    /// figure of the target run directly.
    fn scenario_round(&mut self, cfg: &Config, s: &Scenario) -> Result<(f64, Option<f64>)> {
        if s.target == Target::Fresh {
            // Drop the last one first: one big table at a time.
            self.fresh = None;
            self.fresh = Some(load_lb(self.conntrack_size, false));
        }
        // The cross-check first, so that its few flows join an empty table
        // rather than the wrapper's million.
        let one = if s.cross_checked() {
            Some(self.per_call_round(cfg, s)?)
        } else {
            None
        };
        let ns = self.wrapper_round(cfg, s)?;
        Ok((ns, one))
    }

    fn target(&mut self, t: Target) -> Result<&mut Xdp> {
        Ok(match t {
            Target::Pass => self.progs.prog(PASS)?,
            Target::Tx => self.progs.prog(TX)?,
            Target::Main => self.main.lb.program(),
            Target::Traced => self.traced.lb.program(),
            Target::Fresh => self
                .fresh
                .as_mut()
                .context("no fresh balancer")?
                .lb
                .program(),
            Target::Full => self.full.lb.program(),
            Target::Decap => self.decap.program(),
        })
    }

    fn lb(&self, t: Target) -> Option<&TestLb> {
        match t {
            Target::Main => Some(&self.main),
            Target::Traced => Some(&self.traced),
            Target::Fresh => self.fresh.as_ref(),
            Target::Full => Some(&self.full),
            _ => None,
        }
    }

    fn snapshot(&self, t: Target) -> Result<Snapshot> {
        Ok(match (t, self.lb(t)) {
            (_, Some(lb)) => Snapshot::Lb(lb.lb.counters()?),
            (Target::Decap, _) => Snapshot::Decapsulated(self.decap.counters()?.decapsulated),
            _ => Snapshot::Nothing,
        })
    }

    /// Checks the counters against what `n` packets of `s` must have done.
    fn check_since(&self, s: &Scenario, before: &Snapshot, n: u64) -> Result<()> {
        match (before, self.snapshot(s.target)?) {
            (Snapshot::Lb(b), Snapshot::Lb(a)) => check(s.each, b, &a, n),
            (Snapshot::Decapsulated(b), Snapshot::Decapsulated(a)) => {
                ensure!(
                    a - b == n,
                    "lb-decap: {} of {n} packets decapsulated",
                    a - b
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The target run directly, one `repeat=1` call per frame; new flows get
    /// a frame each.
    fn per_call_round(&mut self, cfg: &Config, s: &Scenario) -> Result<f64> {
        let frames = match s.vary {
            Some(base) => {
                let first = base + USER_FLOWS + self.user_seq;
                self.user_seq += (WARM_CALLS + cfg.calls) as u32;
                varied(&s.frame, s.vary_off(), first, WARM_CALLS + cfg.calls)
            }
            None => vec![s.frame.clone()],
        };
        let before = self.snapshot(s.target)?;
        let prog = self.target(s.target)?;
        let ns = on_measure_cpu(|| per_call(prog, &frames, cfg.calls, WARM_CALLS, s.action))?;
        self.check_since(s, &before, (WARM_CALLS + cfg.calls) as u64)
            .context("repeat=1 calls")?;
        Ok(ns)
    }

    /// T(wrapper → target) at `cfg.repeat`, after an untimed warm-up run.
    fn wrapper_round(&mut self, cfg: &Config, s: &Scenario) -> Result<f64> {
        let fd = self.target(s.target)?.fd()?.try_clone()?;
        self.progs.set_target(&fd)?;
        let (off, base) = s.vary.map_or((0, 0), |b| (s.vary_off(), b));
        self.progs.set_template(&s.frame, off, base)?;
        let before = self.snapshot(s.target)?;
        let wrapper = self.progs.prog(WRAPPER)?;
        let ns = on_measure_cpu(|| {
            run_expect(wrapper, &s.frame, WARM_REPEAT, s.action)?;
            run_expect(wrapper, &s.frame, cfg.repeat, s.action)
        })?;
        let n = WARM_REPEAT + cfg.repeat;
        self.check_since(s, &before, n as u64)?;
        if let Some(base) = s.vary {
            // The flows of this run: source words base + seq + 1 ..= + n.
            let first = base.wrapping_add(self.seq).wrapping_add(1);
            self.seq = self.seq.wrapping_add(n);
            self.check_table(cfg, s, first, n)?;
        }
        Ok(ns as f64)
    }

    /// A new-flow run of `n` flows from source word `first` left the table
    /// as claimed: an empty table kept every flow, a full one stayed full.
    /// (The LRU evicts its oldest entries first, so the first flow still
    /// being there means nothing was evicted.) Walking the table costs a
    /// syscall per entry, so only the first round counts entries.
    fn check_table(&self, cfg: &Config, s: &Scenario, first: u32, n: u32) -> Result<()> {
        let t = self.lb(s.target).context("new flows on a balancer")?;
        for word in [first, first.wrapping_add(n - 1)] {
            ensure!(
                t.lb.conntrack_entry(&flow_key(&s.frame, Some(word)))
                    .is_some(),
                "flow {word:#x} of this round is not in the table: evicted"
            );
        }
        if self.round == 0 {
            let len = t.lb.conntrack_len();
            if s.target == Target::Full {
                return self.check_full(len);
            }
            // This round's flows of both methods, nothing else.
            let want = n as usize + WARM_CALLS + cfg.calls;
            ensure!(len == want, "table has {len} entries, expected {want}");
        }
        Ok(())
    }
}

// New-flow source words: each scenario its own range, so no flow repeats.
const EMPTY_BASE: u32 = 0x1000_0000;
const SYN_BASE: u32 = 0x2000_0000;
const FULL_BASE: u32 = 0x3000_0000;
const EMPTY6_BASE: u32 = 0x4000_0000;
const FULL6_BASE: u32 = 0x5000_0000;
const RR_BASE: u32 = 0x6000_0000;
const LC_BASE: u32 = 0x7000_0000;
const LC_WIDE_BASE: u32 = 0x8000_0000;
