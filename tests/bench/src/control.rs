//! Control plane: building Maglev tables, applying a backend change to the
//! maps, applying whole configs through the real `lbd`, and the memory lbd
//! and its maps take as VIPs and backends grow.
//!
//! Maglev builds and single changes run in this process against a loaded
//! (unattached) balancer; config applies and memory are measured on a real
//! `lbd run` in the daemon lab of the acceptance tests (`lbctl reload` of a
//! config written each time), so they include parsing, validation, the plan,
//! the maps, persistence and the audit log: what an operator waits for.

use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use lb::{
    balancer::maglev::{self, MaglevBackend},
    balancer::{Balancer, LoadOptions},
    model::{BackendSpec, Limits, Proto, VipId, VipSettings},
};
use lb_common::{user::addr_words, MAGLEV_MAX_SIZE};
use lb_lab::lab::{Lab, VipSpec};

use crate::{
    report::{Cell, Table},
    Opts,
};

pub fn run(opts: &Opts) -> Result<Vec<Table>> {
    Ok(vec![
        maglev_builds(opts),
        one_change(opts)?,
        lbd_scale(opts)?,
    ])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Min and median of some durations, in ms.
fn min_median(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (ms(v[0]), ms(v[v.len() / 2]))
}

fn backend_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250 + 1) as u8))
}

fn maglev_backends(n: usize) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| MaglevBackend {
            id: i as u32,
            key: addr_words(backend_addr(i)).0,
            weight: 100,
        })
        .collect()
}

fn maglev_builds(opts: &Opts) -> Table {
    let reps = if opts.quick { 3 } else { 10 };
    let mut t = Table::new(
        format!("Maglev table build, size {MAGLEV_MAX_SIZE} (lb::balancer::maglev, release build)"),
        &[
            "backends",
            "min ms",
            "median ms",
            "ns per slot",
            "× paper's 1.8 ms",
        ],
    );
    for n in [10, 100, 1000] {
        let backends = maglev_backends(n);
        let times: Vec<Duration> = (0..reps)
            .map(|_| {
                let start = Instant::now();
                black_box(maglev::build_table(black_box(&backends), MAGLEV_MAX_SIZE));
                start.elapsed()
            })
            .collect();
        let (min, median) = min_median(times);
        t.row(vec![
            Cell::num(n as f64, 0),
            Cell::num(min, 2),
            Cell::num(median, 2),
            Cell::num(median * 1e6 / f64::from(MAGLEV_MAX_SIZE), 1),
            Cell::num(median / 1.8, 2),
        ]);
    }
    t.note(format!(
        "{reps} builds each, weights equal. The Maglev paper (NSDI '16) reports 1.8 ms for a \
         65537-slot table on its hardware; the last column compares against that figure, not \
         against a run here."
    ));
    t
}

/// One backend removed from (then another added to) a VIP with a full-size
/// table, against writing the whole table, on a loaded balancer.
fn one_change(opts: &Opts) -> Result<Table> {
    let changes = if opts.quick { 3 } else { 9 };
    let mut t = Table::new(
        format!("Applying one backend change to the maps (table {MAGLEV_MAX_SIZE})"),
        &[
            "backends",
            "first table ms",
            "one change ms (median)",
            "of it building the table ms",
            "slots written (median)",
            "slots changed (median)",
        ],
    );
    for n in [10, 100, 1000] {
        let mut lb = Balancer::load(&LoadOptions {
            limits: Limits {
                max_vips: 2,
                table_pool: 2 * 2 * MAGLEV_MAX_SIZE,
                conntrack_size: 4096,
            },
            ..Default::default()
        })
        .context("loading the balancer")?;
        let vip = VipId {
            addr: "10.100.0.1".parse()?,
            port: 80,
            proto: Proto::Tcp,
        };
        lb.upsert_vip(vip, VipSettings::default())?;
        let mut set: Vec<BackendSpec> = (0..n)
            .map(|i| BackendSpec {
                addr: backend_addr(i),
                weight: 100,
                tier: 0,
            })
            .collect();
        let start = Instant::now();
        lb.set_backends(vip, &set)?;
        let whole = start.elapsed();
        ensure!(
            lb.last_table_writes() == MAGLEV_MAX_SIZE as usize,
            "first table: {} slots written",
            lb.last_table_writes()
        );
        let (mut times, mut builds, mut writes, mut changed) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for c in 0..changes {
            // Alternately remove one and add a new one, never undoing a
            // change: undoing would find the old table still in the idle
            // half and write nothing.
            if c % 2 == 0 {
                set.remove(c % set.len());
            } else {
                set.push(BackendSpec {
                    addr: backend_addr(n + c),
                    weight: 100,
                    tier: 0,
                });
            }
            // The same build the change does, timed on its own.
            let start = Instant::now();
            black_box(maglev::build_table(
                &maglev_backends(set.len()),
                MAGLEV_MAX_SIZE,
            ));
            builds.push(start.elapsed());
            let before = lb.live_table(&vip).context("live table")?.to_vec();
            let start = Instant::now();
            lb.set_backends(vip, &set)?;
            times.push(start.elapsed());
            writes.push(lb.last_table_writes());
            let after = lb.live_table(&vip).context("live table")?;
            changed.push(before.iter().zip(after).filter(|(a, b)| a != b).count());
        }
        let (_, median) = min_median(times);
        let (_, build) = min_median(builds);
        writes.sort();
        changed.sort();
        t.row(vec![
            Cell::num(n as f64, 0),
            Cell::num(ms(whole), 2),
            Cell::num(median, 2),
            Cell::num(build, 2),
            Cell::num(writes[writes.len() / 2] as f64, 0),
            Cell::num(changed[changed.len() / 2] as f64, 0),
        ]);
    }
    t.note(format!(
        "{changes} changes per row, alternately one backend removed and one added. A change \
         builds the whole table in memory, writes only the slots of the idle half that differ \
         (\"written\": against the table of two changes ago, so about twice \"changed\", the \
         difference from the live table) through the mmap'ed array, then switches the VIP \
         entry in one map update. Building dominates: the writes are plain stores."
    ));
    Ok(t)
}

/// One config size for lbd: VIPs × backends each, at a table size.
struct Scale {
    vips: usize,
    backends: usize,
    table_size: Option<u32>,
}

fn lbd_scale(opts: &Opts) -> Result<Table> {
    let big = if opts.quick { 300 } else { 1000 };
    let steps = [
        Scale {
            vips: 0,
            backends: 0,
            table_size: None,
        },
        Scale {
            vips: 100,
            backends: 10,
            table_size: Some(4093),
        },
        Scale {
            vips: big,
            backends: 10,
            table_size: Some(4093),
        },
        Scale {
            vips: 100,
            backends: 100,
            table_size: Some(4093),
        },
        Scale {
            vips: 100,
            backends: 10,
            table_size: None,
        },
    ];
    let mut lab = Lab::new(0).context("building the daemon lab")?;
    // In the lab's subnet but on no host: lbd resolves them (and finds no
    // neighbour) as it would real ones.
    let backends: Vec<IpAddr> = (0..100)
        .map(|i| IpAddr::V4(Ipv4Addr::new(10, 10, 0, 101 + i)))
        .collect();
    lab.write_config(&lab.config_text(&[]));
    lab.start_lbd()?;
    let mut t = Table::new(
        "lbd: applying configs (lbctl reload from an empty config) and memory",
        &[
            "VIPs",
            "backends each",
            "table size",
            "apply s",
            "per VIP ms",
            "lbd RSS MiB",
            "of it lbd's own (anon) MiB",
            "BPF maps MiB",
        ],
    );
    for step in &steps {
        crate::interrupted()?;
        let apply = if step.vips == 0 {
            None
        } else {
            // A fresh lbd (adopting the emptied maps) for every row, so its
            // memory is this config's, not what earlier ones left in its
            // heap; from an empty config, so the row is a whole config
            // applied.
            reload(&lab, &[], 0)?;
            lab.kill_lbd();
            lab.start_lbd()?;
            let vips: Vec<VipSpec> = (0..step.vips)
                .map(|i| {
                    let addr = Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250 + 1) as u8);
                    let mut v =
                        VipSpec::new(&format!("v{i}"), addr, Some(80), &backends[..step.backends]);
                    v.table_size = step.table_size;
                    v
                })
                .collect();
            Some(reload(&lab, &vips, step.vips)?)
        };
        // Let the daemon's follow-up work (next hops, state file) settle.
        std::thread::sleep(Duration::from_millis(300));
        let pid = lab.lbd_pid().context("lbd pid")?;
        let (rss, anon, maps) = memory(pid)?;
        t.row(vec![
            Cell::num(step.vips as f64, 0),
            Cell::num(step.backends as f64, 0),
            step.table_size.map_or(Cell::text("65537 (default)"), |s| {
                Cell::num(f64::from(s), 0)
            }),
            apply.map_or(Cell::None, |d| Cell::num(d.as_secs_f64(), 2)),
            apply.map_or(Cell::None, |d| Cell::num(ms(d) / step.vips as f64, 2)),
            Cell::num(rss as f64 / 1048576.0, 1),
            Cell::num(anon as f64 / 1048576.0, 1),
            Cell::num(maps as f64 / 1048576.0, 1),
        ]);
    }
    t.note(
        "Real lbd (release build) in the acceptance tests' \
         namespace lab, default load sizes; no health checks; each row on a freshly started \
         lbd (adopting the emptied pinned maps). \"apply\" is the wall time of \
         `lbctl reload` after writing the config: parse, validate, plan, every VIP's maps, \
         state file and audit log. RSS from /proc/<pid>/status; it includes the Maglev \
         array lbd maps to write tables (kernel memory, also in the last column), so lbd's \
         own memory is the anon column. BPF map memory is the \
         kernel's memlock accounting of lbd's map fds (fdinfo), fixed at load by the \
         defaults (1024 VIPs, 16384 backends, a 16.8M-slot Maglev pool, 1M-flow connection \
         table): it does not grow with VIPs. lbd keeps a copy of both tables of every VIP.",
    );
    Ok(t)
}

/// Writes a config with `vips`, runs `lbctl reload`, checks lbd reports
/// `expect` VIPs; returns the reload's wall time.
fn reload(lab: &Lab, vips: &[VipSpec], expect: usize) -> Result<Duration> {
    lab.write_config(&lab.config_text(vips));
    let start = Instant::now();
    let out = lab.lbctl(&["reload"]);
    let took = start.elapsed();
    ensure!(
        out.ok(),
        "lbctl reload failed: {}\n{}",
        out.stderr,
        lab.log_tail(30)
    );
    let status: serde_json::Value = serde_json::from_str(&lab.lbctl_ok(&["--json", "status"]))
        .context("lbctl --json status")?;
    let have = status["vips"].as_array().map_or(0, Vec::len);
    ensure!(
        have == expect,
        "lbd has {have} VIPs after reload, expected {expect}"
    );
    Ok(took)
}

/// lbd's resident memory (all, and anonymous) and the memlock of the BPF
/// maps it holds, in bytes.
fn memory(pid: u32) -> Result<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("{key} in /proc/{pid}/status"))
    };
    let (rss_kib, anon_kib) = (kib("VmRSS:")?, kib("RssAnon:")?);
    let mut maps = 0;
    let mut seen = std::collections::BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(info) = std::fs::read_to_string(fd?.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        // The same map may be open through several fds: count it once.
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
            if seen.insert(id) {
                maps += memlock;
            }
        }
    }
    Ok((rss_kib * 1024, anon_kib * 1024, maps))
}
