//! The figures over rounds, and the section's main table.

use super::{previous, timing::min, Bench, Config, Scenario};
use crate::report::{median, possible_cpus, Cell, Table};

/// One series over rounds: the main figure, and the `repeat=1` one.
#[derive(Default)]
pub struct Series {
    ns: Vec<f64>,
    one: Vec<f64>,
}

impl Series {
    fn push(&mut self, ns: f64, one: Option<f64>) {
        self.ns.push(ns);
        self.one.extend(one);
    }
}

/// One round's raw figures: the floors (at `repeat`, and `repeat=1`), and
/// per scenario T(wrapper → X) and the `repeat=1` figure.
pub struct Round {
    pub pass: (f64, f64),
    pub tx: (f64, f64),
    pub scenarios: Vec<(f64, Option<f64>)>,
}

/// Fewest rounds a figure may come from.
pub const MIN_ROUNDS: usize = 5;

pub struct Results {
    pub pass: Series,
    pub tx: Series,
    /// The wrapper's own cost.
    pub w: Series,
    /// Per scenario, T(wrapper → X) − W.
    pub scenarios: Vec<Series>,
    /// Shares of the measured CPU's time in interrupts + softirqs, and
    /// stolen, over all rounds.
    pub disturbance: Option<(f64, f64)>,
    /// Rounds during which BPF run-time statistics were on.
    pub stats_rounds: usize,
    /// Rounds the figures come from.
    pub used_rounds: usize,
    /// Some of them ran with the statistics on.
    pub disturbed: bool,
}

impl Results {
    pub fn new(n: usize) -> Results {
        Results {
            pass: Series::default(),
            tx: Series::default(),
            w: Series::default(),
            scenarios: (0..n).map(|_| Series::default()).collect(),
            disturbance: None,
            stats_rounds: 0,
            used_rounds: 0,
            disturbed: false,
        }
    }

    /// Adds a round: W from its first scenario (the wrapper → XDP_PASS),
    /// subtracted from every scenario.
    pub fn add(&mut self, r: Round) {
        self.pass.push(r.pass.0, Some(r.pass.1));
        self.tx.push(r.tx.0, Some(r.tx.1));
        let w = r.scenarios[0].0 - r.pass.0;
        self.w.push(w, None);
        for (m, (t, one)) in self.scenarios.iter_mut().zip(r.scenarios) {
            m.push(t - w, one);
        }
    }
}

pub fn cost_table(cfg: &Config, scenarios: &[Scenario], res: &Results, bench: &Bench) -> Table {
    let mut t = Table::new(
        format!(
            "packet: ns per packet (BPF_PROG_TEST_RUN, repeat={} through the frame-restoring \
             wrapper, minus its cost W; {} rounds)",
            cfg.repeat, res.used_rounds
        ),
        &[
            "scenario",
            "IP",
            "path checked (action; counters per packet)",
            "ns min",
            "ns median",
            "ns over the floor",
            "× XDP_PASS",
            "× XDP_PASS, min / min",
            "target",
            "repeat=1 ns",
            "repeat=1 × XDP_PASS",
        ],
    );
    let floor = median(&res.pass.ns);
    let floor_min = min(&res.pass.ns);
    let floor1 = median(&res.pass.one);
    let mut row = |name: &str, family: &str, path: String, s: &Series, goal: Option<f64>| {
        let ratio = median(&s.ns) / floor;
        let ratio_min = min(&s.ns) / floor_min;
        let over = over_floor(s, res);
        let one = |v: f64| {
            if s.one.is_empty() {
                Cell::None
            } else {
                Cell::num(v, 2)
            }
        };
        let verdict = |r: f64, g: f64| if r <= g { "met" } else { "MISSED" };
        t.row(vec![
            Cell::text(name),
            Cell::text(family),
            Cell::text(path),
            Cell::num(min(&s.ns), 1),
            Cell::num(median(&s.ns), 1),
            // W is a difference already.
            if std::ptr::eq(s, &res.w) {
                Cell::None
            } else {
                Cell::num(median(&over), 1)
            },
            Cell::num(ratio, 2),
            Cell::num(ratio_min, 2),
            goal.map_or(Cell::None, |g| {
                Cell::text(format!(
                    "≤ {g}: {} (min / min: {})",
                    verdict(ratio, g),
                    verdict(ratio_min, g)
                ))
            }),
            one(median(&s.one)),
            one(median(&s.one) / floor1),
        ]);
    };
    row(
        "XDP_PASS program, run directly (floor)",
        "–",
        "PASS".into(),
        &res.pass,
        None,
    );
    row(
        "MAC swap + XDP_TX, run directly (floor)",
        "–",
        "TX".into(),
        &res.tx,
        None,
    );
    row(
        "W: the wrapper's own cost (subtracted below)",
        "–",
        "–".into(),
        &res.w,
        None,
    );
    for (s, series) in scenarios.iter().zip(&res.scenarios).skip(1) {
        row(s.name, s.family, s.path(), series, s.goal);
    }
    t.note(format!(
        "ns: kernel-measured ns per packet (its per-run average, whole ns), min and median over \
         rounds; for wrapped rows T(wrapper → X) − W, W = T(wrapper → XDP_PASS) − T(XDP_PASS) \
         from the same round. × XDP_PASS = median / median of the XDP_PASS floor. repeat=1: the \
         program run directly, one run per call, {} calls per round averaged, against XDP_PASS \
         run the same way (the per-call timer overhead is in both).",
        cfg.calls
    ));
    t.note(format!(
        "New flows vary the source address per packet. Empty table: a balancer loaded afresh \
         each round, {} entries per CPU ({} possible CPUs, BPF_F_NO_COMMON_LRU), none evicted; \
         full table: the same size, filled first, each insert evicts. A TCP SYN skips the \
         lookup by design (it always follows the Maglev table). Frames: IPv4 64 bytes, IPv6 74.",
        bench.room,
        possible_cpus()
    ));
    if res.stats_rounds > 0 {
        let verdict = if res.disturbed {
            "too few rounds without them, so the figures come from all rounds and are DISTURBED: \
             the ratios come out too small; \"ns over the floor\" is unaffected"
        } else {
            "those rounds were measured again and left out"
        };
        t.note(format!(
            "BPF run-time statistics (BPF_ENABLE_STATS or kernel.bpf_stats_enabled, turned on by \
             another process; each program run then also pays for two clock reads, the same ns \
             on every row) were on during {} rounds: {verdict}.",
            res.stats_rounds
        ));
    }
    if let Some((irq, steal)) = res.disturbance.filter(|(i, s)| i + s >= 0.02) {
        t.note(format!(
            "During the rounds the measured CPU spent {:.0}% of its time in interrupts and \
             softirqs (other work on the machine; the kernel's timer counts what lands inside \
             its loop, adding about the same ns to every packet, which shrinks the ratios) and \
             {:.0}% stolen by the hypervisor. \"ns over the floor\" (median over rounds of X \
             minus the floor of the same round) and min / min are the least disturbed figures.",
            irq * 100.0,
            steal * 100.0
        ));
    }
    t
}

/// Per round, a series' ns over the `XDP_PASS` floor of the same round:
/// what a disturbance that adds the same ns to every packet of a round does
/// not change.
fn over_floor(s: &Series, res: &Results) -> Vec<f64> {
    s.ns.iter().zip(&res.pass.ns).map(|(x, p)| x - p).collect()
}

/// The headline rows by the method other XDP balancers are compared with:
/// the wrapper tail-calling the program against the wrapper tail-calling
/// `XDP_PASS` (the floor), both timed in the same round; net = target −
/// floor per round, median over rounds. Next to them, the previous
/// release's net figures by the same method (`previous.rs`).
pub fn pinbench_table(cfg: &Config, scenarios: &[Scenario], res: &Results) -> Table {
    let mut t = Table::new(
        format!(
            "packet, headline: ns per packet over the wrapper + XDP_PASS floor (repeat={}, \
             {} rounds, 8M-entry connection table)",
            cfg.repeat, res.used_rounds
        ),
        &[
            "scenario",
            "IP",
            "floor min / median",
            "target min / median",
            "net median",
            "previous release net",
            "now / previous",
        ],
    );
    // T(wrapper → XDP_PASS) per round: the directly run floor plus W.
    let floor: Vec<f64> = res
        .pass
        .ns
        .iter()
        .zip(&res.w.ns)
        .map(|(p, w)| p + w)
        .collect();
    for row in previous::ROWS {
        let Some((_, series)) = scenarios
            .iter()
            .zip(&res.scenarios)
            .find(|(s, _)| s.name == row.scenario && s.family == row.family)
        else {
            continue;
        };
        let target: Vec<f64> = series
            .ns
            .iter()
            .zip(&res.w.ns)
            .map(|(x, w)| x + w)
            .collect();
        // T(wrapper → X) − T(wrapper → XDP_PASS): W cancels out.
        let now = median(&over_floor(series, res));
        t.row(vec![
            Cell::text(row.label),
            Cell::text(row.family),
            Cell::text(format!("{:.0} / {:.0}", min(&floor), median(&floor))),
            Cell::text(format!("{:.0} / {:.0}", min(&target), median(&target))),
            Cell::num(now, 1),
            Cell::num(row.net_ns, 1),
            if row.net_ns > 0.0 {
                Cell::num(now / row.net_ns, 2)
            } else {
                Cell::None
            },
        ]);
    }
    t.note(previous::SOURCE.to_string());
    t
}
