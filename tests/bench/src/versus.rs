//! `versus`: lb against what users would pick instead, HTTP through network
//! namespaces on one machine. One topology (client, balancer host, three
//! nginx backends; see `versus/rig.rs`), and one after another on the
//! balancer host: lb (IPIP, decap and direct server return on the
//! backends), HAProxy in TCP mode, nftables DNAT (`numgen`, `jhash`); plus
//! the client talking to one backend directly, the reference. Each is
//! loaded by wrk in the client namespace, in two shapes: keep-alive
//! requests, and one new connection per request. Same client, backends,
//! duration and warm-up for all.
//!
//! Cleanup: processes die with the bench (`PR_SET_PDEATHSIG`), XDP programs
//! are unpinned (they go with the bench), namespaces and the scratch
//! directory are removed on drop, or by the next run if the bench was killed.
//!
//! Checked, never timed: every response a 2xx, (almost) no socket errors,
//! all three backends served, and the balancer's own counter shows the
//! traffic went through it.

mod rig;
pub mod tools;

use std::{collections::BTreeMap, time::Duration};

use anyhow::{bail, ensure, Context, Result};

use crate::{
    report::{Cell, Table},
    Opts,
};
use rig::{stub_requests, Rig, BACKENDS, VIP};
use tools::{exec_ok, machine_busy, others_cpu, others_delta, parse_wrk, WrkResult};

/// wrk's connections (one thread).
const CONNECTIONS: u32 = 32;
/// Socket errors tolerated, as a share of requests (a connection reset at
/// the very end of a run); more fails the section.
const MAX_SOCKET_ERROR_SHARE: f64 = 0.001;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Alt {
    Direct,
    Lb,
    Haproxy,
    NftNumgen,
    NftJhash,
}

impl Alt {
    const ALL: [Alt; 5] = [
        Alt::Direct,
        Alt::Lb,
        Alt::Haproxy,
        Alt::NftNumgen,
        Alt::NftJhash,
    ];

    fn name(self) -> &'static str {
        match self {
            Alt::Direct => "direct (client → b1, no balancer)",
            Alt::Lb => "lb (XDP, IPIP + decap, DSR)",
            Alt::Haproxy => "HAProxy 2.6, mode tcp, roundrobin",
            Alt::NftNumgen => "nftables DNAT, numgen inc mod 3",
            Alt::NftJhash => "nftables DNAT, jhash saddr.sport mod 3",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Shape {
    KeepAlive,
    Close,
}

/// One measured wrk run and what the machine did meanwhile.
#[derive(Clone, Debug, Default)]
struct Run {
    wrk: WrkResult,
    /// Busy CPU seconds of the whole machine.
    busy: f64,
    /// Of which other processes' (not the bench's, not kernel threads).
    others: f64,
    /// The balancer's own CPU seconds (HAProxy's process; lb's XDP program).
    own: Option<f64>,
    /// lb's decap programs on the backends, CPU seconds.
    decap: Option<f64>,
    /// Requests each backend served.
    served: Vec<u64>,
    /// TCP retransmissions in every namespace with a TCP endpoint.
    retrans: u64,
}

pub fn run(opts: &Opts) -> Result<Vec<Table>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (namespaces, XDP)");
    }
    let (installed, install_time) = tools::ensure_installed()?;
    let (warm, measure, rounds) = if opts.quick {
        (Duration::from_secs(1), Duration::from_secs(2), 1)
    } else {
        (Duration::from_secs(1), Duration::from_secs(5), 2)
    };

    let mut rig = Rig::build().context("building the topology")?;
    // BPF run-time statistics while this fd is open (the kernel counts
    // `run_time_ns` only then); closed when the section ends.
    let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();

    let mut runs: BTreeMap<(Alt, Shape), Vec<Run>> = BTreeMap::new();
    let mut attach_info = String::new();
    let mut source = 0u8;
    for round in 0..rounds {
        // Alternate the order between rounds, so drift over the run favours
        // none.
        let mut order = Alt::ALL.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        for alt in order {
            crate::interrupted()?;
            source += 1;
            rig.use_client_source(source)?;
            let info = setup(&mut rig, alt)?;
            if !info.is_empty() {
                attach_info = info;
            }
            for shape in [Shape::KeepAlive, Shape::Close] {
                let r = measure_one(&mut rig, alt, shape, warm, measure, stats_fd.is_some())
                    .with_context(|| format!("{} ({shape:?})", alt.name()))?;
                runs.entry((alt, shape)).or_default().push(r);
            }
            teardown(&mut rig, alt)?;
        }
    }
    drop(stats_fd);
    drop(rig);

    let mut tables = Vec::new();
    for shape in [Shape::KeepAlive, Shape::Close] {
        tables.push(table(shape, &runs, measure, rounds, &attach_info, opts));
    }
    let last = tables.last_mut().expect("two tables");
    if !installed.is_empty() {
        last.note(format!(
            "Installed by this run with apt-get: {} ({:.0} s).",
            installed.join(", "),
            install_time.as_secs_f64()
        ));
    }
    Ok(tables)
}

fn setup(rig: &mut Rig, alt: Alt) -> Result<String> {
    match alt {
        Alt::Direct => Ok(String::new()),
        Alt::Lb => rig.start_lb(),
        Alt::Haproxy => rig.start_haproxy().map(|_| String::new()),
        Alt::NftNumgen | Alt::NftJhash => {
            rig.reply_via_balancer(true)?;
            rig.set_forwarding(true)?;
            rig.start_nft(if alt == Alt::NftNumgen {
                "numgen inc mod 3"
            } else {
                "jhash ip saddr . tcp sport mod 3"
            })?;
            Ok(String::new())
        }
    }
}

fn teardown(rig: &mut Rig, alt: Alt) -> Result<()> {
    match alt {
        Alt::Direct => {}
        Alt::Lb => rig.stop_lb(),
        Alt::Haproxy => rig.stop_haproxy()?,
        Alt::NftNumgen | Alt::NftJhash => {
            rig.stop_nft()?;
            rig.set_forwarding(false)?;
            rig.reply_via_balancer(false)?;
        }
    }
    Ok(())
}

/// What the balancer has counted so far: (connections or packets it
/// handled, its own CPU seconds, lb's decap CPU seconds).
fn balancer_snapshot(
    rig: &mut Rig,
    alt: Alt,
    haproxy_pid: Option<u32>,
) -> Result<(u64, Option<f64>, Option<f64>)> {
    Ok(match alt {
        Alt::Direct => (0, None, None),
        Alt::Lb => {
            let lb = rig.lb.as_mut().context("lb not loaded")?;
            let (tx, _cnt, run, decap_ns) = lb.snapshot()?;
            (tx, Some(run.as_secs_f64()), Some(decap_ns as f64 / 1e9))
        }
        Alt::Haproxy => {
            let sessions = rig::haproxy_sessions(&rig.haproxy_socket())?;
            let cpu = rig::pid_cpu(haproxy_pid.context("no haproxy pid")?)?;
            (sessions, Some(cpu), None)
        }
        Alt::NftNumgen | Alt::NftJhash => (rig.nft_counter()?, None, None),
    })
}

fn wrk(rig: &Rig, alt: Alt, shape: Shape, d: Duration) -> Result<WrkResult> {
    let url = if alt == Alt::Direct {
        format!("http://{}/", rig::backend_addr(0))
    } else {
        format!("http://{VIP}/")
    };
    let secs = format!("{}s", d.as_secs());
    let conns = CONNECTIONS.to_string();
    let mut cmd = vec!["wrk", "-t", "1", "-c", &conns, "-d", &secs, "--latency"];
    if shape == Shape::Close {
        cmd.extend(["-H", "Connection: close"]);
    }
    cmd.push(&url);
    let out = exec_ok(&rig.client_ns, &cmd, d + Duration::from_secs(20))?;
    parse_wrk(&out)
}

fn measure_one(
    rig: &mut Rig,
    alt: Alt,
    shape: Shape,
    warm: Duration,
    measure: Duration,
    bpf_stats: bool,
) -> Result<Run> {
    let haproxy_pid = if alt == Alt::Haproxy {
        rig.procs.pid("haproxy")
    } else {
        None
    };
    let w = wrk(rig, alt, shape, warm).context("warm-up")?;
    ensure!(w.requests > 0, "warm-up: no request completed ({w:?})");

    let served0: Vec<u64> = rig
        .backend_ns
        .iter()
        .map(|ns| stub_requests(ns))
        .collect::<Result<_>>()?;
    let (through0, own0, decap0) = balancer_snapshot(rig, alt, haproxy_pid)?;
    let retrans0 = retransmits_all(rig)?;
    let others0 = others_cpu();
    let busy0 = machine_busy()?;
    let w = wrk(rig, alt, shape, measure)?;
    let busy1 = machine_busy()?;
    let others1 = others_cpu();
    let retrans = retransmits_all(rig)?.saturating_sub(retrans0);
    let (through1, own1, decap1) = balancer_snapshot(rig, alt, haproxy_pid)?;
    let served1: Vec<u64> = rig
        .backend_ns
        .iter()
        .map(|ns| stub_requests(ns))
        .collect::<Result<_>>()?;
    // Each stub fetch counts itself once.
    let served: Vec<u64> = served0
        .iter()
        .zip(&served1)
        .map(|(a, b)| b.saturating_sub(a + 1))
        .collect();

    // Correctness, never speed.
    ensure!(w.requests > 0, "no request completed: {w:?}");
    ensure!(
        w.non_2xx == 0,
        "{} responses were not 2xx/3xx ({w:?})",
        w.non_2xx
    );
    ensure!(
        (w.socket_errors as f64) <= MAX_SOCKET_ERROR_SHARE * w.requests as f64,
        "{} socket errors for {} requests",
        w.socket_errors,
        w.requests
    );
    let total: u64 = served.iter().sum();
    ensure!(
        total >= w.requests,
        "the backends served {total} requests, wrk counted {}: traffic went elsewhere",
        w.requests
    );
    if alt == Alt::Direct {
        ensure!(
            served[1] == 0 && served[2] == 0,
            "direct run reached b2/b3: {served:?}"
        );
    } else {
        ensure!(
            served.iter().all(|s| *s > 0),
            "not every backend served requests: {served:?}"
        );
    }
    let through = through1.saturating_sub(through0);
    let needed = match (alt, shape) {
        (Alt::Direct, _) => 0,
        // Every request is at least one packet from the client, sent on.
        (Alt::Lb, _) => w.requests,
        // A session per connection; a request per connection when closing.
        (_, Shape::Close) => w.requests,
        (_, Shape::KeepAlive) => CONNECTIONS as u64,
    };
    ensure!(
        through >= needed,
        "the balancer counted {through} (packets sent / sessions / DNAT connections), \
         fewer than the {needed} the run needs: traffic bypassed it"
    );
    let own = match (own0, own1) {
        (Some(a), Some(b)) if alt != Alt::Lb || bpf_stats => Some(b - a),
        _ => None,
    };
    let decap = match (decap0, decap1) {
        (Some(a), Some(b)) if bpf_stats => Some(b - a),
        _ => None,
    };
    Ok(Run {
        wrk: w,
        busy: busy1 - busy0,
        others: others_delta(&others0, &others1),
        own,
        decap,
        served,
        retrans,
    })
}

/// TCP retransmissions so far in the client, balancer and backend
/// namespaces together.
fn retransmits_all(rig: &Rig) -> Result<u64> {
    let mut n = rig::retransmits(&rig.client_ns)? + rig::retransmits(&rig.lb_ns)?;
    for ns in &rig.backend_ns {
        n += rig::retransmits(ns)?;
    }
    Ok(n)
}

/// One alternative's runs of one shape, pooled over rounds.
struct Pooled {
    rate: f64,
    each: String,
    p99_us: Option<f64>,
    /// Machine busy minus other processes, per request (µs).
    cpu: f64,
    machine: f64,
    /// Other processes' load, in CPUs.
    others_load: f64,
    own: Option<f64>,
    decap: Option<f64>,
    share: Vec<f64>,
    errors: u64,
    retrans: u64,
}

fn pool(rs: &[Run]) -> Pooled {
    let req: u64 = rs.iter().map(|r| r.wrk.requests).sum();
    let n = req.max(1) as f64;
    let secs: f64 = rs.iter().map(|r| r.wrk.seconds).sum();
    let busy: f64 = rs.iter().map(|r| r.busy).sum();
    let others: f64 = rs.iter().map(|r| r.others).sum();
    let mut served = [0u64; BACKENDS];
    for r in rs {
        for (s, v) in served.iter_mut().zip(&r.served) {
            *s += v;
        }
    }
    let total = served.iter().sum::<u64>().max(1) as f64;
    Pooled {
        rate: req as f64 / secs,
        each: rs
            .iter()
            .map(|r| format!("{:.0}", r.wrk.requests as f64 / r.wrk.seconds))
            .collect::<Vec<_>>()
            .join(", "),
        p99_us: rs.iter().filter_map(|r| r.wrk.p99_us).reduce(f64::max),
        cpu: (busy - others).max(0.0) * 1e6 / n,
        machine: busy * 1e6 / n,
        others_load: others / secs,
        own: rs
            .iter()
            .map(|r| r.own)
            .sum::<Option<f64>>()
            .map(|o| o * 1e6 / n),
        decap: rs
            .iter()
            .map(|r| r.decap)
            .sum::<Option<f64>>()
            .map(|d| d * 1e6 / n),
        share: served.iter().map(|s| 100.0 * *s as f64 / total).collect(),
        errors: rs.iter().map(|r| r.wrk.socket_errors).sum(),
        retrans: rs.iter().map(|r| r.retrans).sum(),
    }
}

fn table(
    shape: Shape,
    runs: &BTreeMap<(Alt, Shape), Vec<Run>>,
    measure: Duration,
    rounds: usize,
    attach_info: &str,
    opts: &Opts,
) -> Table {
    let (title, rate) = match shape {
        Shape::KeepAlive => (
            format!("versus: HTTP keep-alive, wrk {CONNECTIONS} connections"),
            "requests/s",
        ),
        Shape::Close => (
            format!("versus: new connection per request (Connection: close), wrk {CONNECTIONS} connections"),
            "new connections/s",
        ),
    };
    let mut t = Table::new(
        title,
        &[
            "balancer",
            rate,
            "per round",
            "vs direct",
            "p99 latency ms",
            "CPU µs/request",
            "added vs direct µs/request",
            "balancer's own CPU µs/request",
            "machine µs/request",
            "other load (CPUs)",
            "b1/b2/b3 share %",
            "socket errors",
            "TCP retransmits",
        ],
    );
    let direct = runs.get(&(Alt::Direct, shape)).map(|r| pool(r));
    let mut lb_decap = None;
    for alt in Alt::ALL {
        let Some(rs) = runs.get(&(alt, shape)) else {
            continue;
        };
        let p = pool(rs);
        if alt == Alt::Lb {
            lb_decap = p.decap;
        }
        let (ratio, added) = match &direct {
            Some(d) if alt != Alt::Direct => {
                (Cell::num(p.rate / d.rate, 2), Cell::num(p.cpu - d.cpu, 1))
            }
            _ => (Cell::None, Cell::None),
        };
        t.row(vec![
            Cell::text(alt.name()),
            Cell::num(p.rate, 0),
            Cell::text(p.each),
            ratio,
            p.p99_us.map_or(Cell::None, |v| Cell::num(v / 1e3, 2)),
            Cell::num(p.cpu, 1),
            added,
            p.own.map_or(Cell::None, |o| Cell::num(o, 2)),
            Cell::num(p.machine, 1),
            Cell::num(p.others_load, 2),
            Cell::text(
                p.share
                    .iter()
                    .map(|s| format!("{s:.0}"))
                    .collect::<Vec<_>>()
                    .join("/"),
            ),
            Cell::num(p.errors as f64, 0),
            Cell::num(p.retrans as f64, 0),
        ]);
    }
    let secs = measure.as_secs();
    t.note(format!(
        "Method: wrk -t1 -c{CONNECTIONS} --latency{} from a client namespace, 1 s warm-up then {secs} s measured, \
         {rounds} round(s) (order reversed in the second), pooled (total requests / total time; per round in \
         \"per round\"). Same client, backends (three nginx 1.22, one process each, fixed 18-byte body, no logs), \
         topology and durations for all; only the balancer host's role changes in between. \
         Everything shares this machine's CPUs: wrk, nginx and the balancer compete for them{}.",
        if shape == Shape::Close { " -H 'Connection: close'" } else { "" },
        if opts.quick { " (--quick: one short round, noisy)" } else { "" },
    ));
    t.note(
        "CPU: \"machine\" = busy time of all CPUs (user+nice+system+irq+softirq of /proc/stat) over the \
         measured window per request: everything, also what else runs on the machine. \"CPU\" = machine \
         minus the user+system time of every other process (not this bench, not its children wrk, nginx, \
         HAProxy; processes that ended during the window are missed), i.e. the client, backends, balancer and \
         the kernel's network processing (softirq) for them, plus softirq of other traffic, which cannot be \
         told apart. \"other load\" = those other processes' CPU, in CPUs, over the window: when it is high \
         the figures are noisy. \"added vs direct\" = CPU minus the direct row's: what the balancer path \
         costs per request. \"own\": HAProxy = its process's utime+stime; lb = its XDP program's run time \
         (BPF run-time stats, on only during this section); nftables = – (its work is softirq, seen only in \
         the totals)."
            .to_string(),
    );
    if let Some(d) = lb_decap {
        t.note(format!(
            "lb's decap XDP program on the backends ran {d:.2} µs per request (part of lb's cost, in \"machine\")."
        ));
    }
    t.note(format!(
        "Setup: lb = {attach_info}, backends reply straight to the client, a pass-through XDP program on the \
         balancer's bridge port (veth XDP_TX needs one on the peer); all of lb's programs are attached only \
         during its own runs. On veths every frame lb forwards crosses the bridge twice: its \"added\" CPU is \
         mostly those hops, not the program (\"own\"); HAProxy = nbthread not set \
         (2.6 defaults to one thread per CPU), VIP on the balancer host's lo; nftables = prerouting DNAT with a \
         counter, forwarding on, backends route the client via the balancer host. The client uses a fresh source address \
         for each balancer (TIME_WAIT sockets an earlier one left on the backends would refuse reused ports). Checked in every run: \
         no non-2xx response, socket errors ≤ {:.1}% of requests, every backend served (nginx stub_status), \
         backends served ≥ wrk's count, and the balancer's own counter saw the traffic (lb XDP_TX packets, \
         HAProxy sessions, nft rule counter).",
        MAX_SOCKET_ERROR_SHARE * 100.0
    ));
    t
}
