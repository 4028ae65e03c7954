//! What lbctl prints: pure functions from the control API's types to text,
//! in the manner of `ipvsadm -Ln`: aligned columns and human units.

use std::{collections::HashMap, fmt::Write as _, net::IpAddr, time::Duration};

use lb_common::counters::{Counter, CounterKind};

use crate::api::types::{
    BackendStatus, ChangeResult, DiscoveryStatus, Explain, NodeStatus, ReloadResult, Stats, Status,
    StoreImportResult, StoreStatus, TrafficRow, VipStatus,
};
use crate::model::{Forwarding, Scheduler, TierMode, VipId};
use crate::model::{HealthKind, HealthSpec};
use crate::store::report::ClusterView;

/// The loud line of a VIP whose backends are all down.
pub const FAIL_OPEN_LINE: &str = "ALL BACKENDS DOWN: failing open, sending to all";

// ---------------------------------------------------------------- units

/// `v` in the largest unit that keeps it below `base`, one decimal.
fn scaled(v: f64, base: f64, units: &[&str]) -> String {
    let mut v = v;
    for (i, unit) in units.iter().enumerate() {
        let next = v / base;
        // Round first so 999.96K becomes 1.0M, not 1000.0K.
        if (v * 10.0).round() / 10.0 < base || i + 1 == units.len() {
            return format!("{v:.1}{unit}");
        }
        v = next;
    }
    unreachable!("units is not empty")
}

/// A count: `999`, `1.2K`, `3.4M` (powers of 1000).
pub fn human_count(n: u64) -> String {
    if n < 1000 {
        return n.to_string();
    }
    scaled(n as f64 / 1000.0, 1000.0, &["K", "M", "G", "T", "P", "E"])
}

/// A size: `512B`, `1.2KiB`, `3.4MiB` (powers of 1024).
pub fn human_bytes(n: u64) -> String {
    if n < 1024 {
        return format!("{n}B");
    }
    scaled(
        n as f64 / 1024.0,
        1024.0,
        &["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"],
    )
}

/// A per-second count: `0`, `0.5`, `12`, `1.2K`.
pub fn human_count_rate(r: f64) -> String {
    if r == 0.0 {
        "0".into()
    } else if r < 10.0 {
        format!("{r:.1}")
    } else if r < 999.5 {
        format!("{r:.0}")
    } else {
        scaled(r / 1000.0, 1000.0, &["K", "M", "G", "T", "P", "E"])
    }
}

/// A per-second size: `512B`, `1.2KiB`, `3.4MiB`.
pub fn human_bytes_rate(r: f64) -> String {
    if r < 1023.5 {
        format!("{r:.0}B")
    } else {
        scaled(
            r / 1024.0,
            1024.0,
            &["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"],
        )
    }
}

/// `45s`, `12m5s`, `3h12m`, `2d3h`.
pub fn human_uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

pub fn scheduler_name(s: Scheduler) -> &'static str {
    s.name()
}

pub fn forwarding_name(f: Forwarding) -> &'static str {
    match f {
        Forwarding::Ipip => "ipip",
        Forwarding::L2dsr => "l2dsr",
    }
}

// ---------------------------------------------------------------- tables

#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// Columns separated by two spaces, each as wide as its widest cell; no
/// trailing blanks.
struct Table {
    header: Vec<&'static str>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            header: columns.iter().map(|c| c.0).collect(),
            align: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    fn render(&self, indent: &str) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        let header = self
            .header
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::from(indent);
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[i] - width(cell));
                match self.align[i] {
                    Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

use Align::{Left, Right};

// ---------------------------------------------------------------- status

/// A backend's state word: drained wins over health; `*` marks a backend
/// with its own health check.
pub fn backend_state(b: &BackendStatus) -> String {
    let mut s = if b.drained {
        if b.health == "down" {
            "drained,down".into()
        } else {
            "drained".into()
        }
    } else {
        b.health.clone()
    };
    if b.check.is_some() {
        s.push('*');
    }
    s
}

/// A health check in one line: `http :80 /healthz status 200, every 1s,
/// timeout 500ms, rise 2, fall 3`.
pub fn describe_check(h: &HealthSpec) -> String {
    if h.kind == HealthKind::None {
        return "none (not checked)".into();
    }
    let mut out = format!("{} :{}", h.kind, h.port);
    if h.kind == HealthKind::Http {
        let _ = write!(out, " {}", h.path);
        match h.expect_status {
            Some(s) => {
                let _ = write!(out, " status {s}");
            }
            None => out.push_str(" status 2xx"),
        }
    }
    let _ = write!(
        out,
        ", every {}, timeout {}, rise {}, fall {}",
        humantime::format_duration(h.interval),
        humantime::format_duration(h.timeout),
        h.rise,
        h.fall
    );
    out
}

/// `lbctl status`.
pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    for (k, v) in [
        ("Interface:", s.interface.clone()),
        ("XDP mode:", s.xdp_mode.clone()),
        ("Program id:", s.program_id.to_string()),
        ("Uptime:", human_uptime(s.uptime_secs)),
        ("Pin dir:", s.pin_dir.clone()),
    ] {
        let _ = writeln!(out, "{k:<12}{v}");
    }
    if let Some(st) = &s.store {
        let _ = writeln!(out, "{:<12}{}", "Store:", store_line(st));
        if !st.health_decision.is_empty() {
            let _ = writeln!(out, "{:<12}{}", "Health:", st.health_decision);
        }
        if let Some(r) = &st.refused {
            let _ = writeln!(out, "{:<12}REFUSED {r}", "");
        }
    }
    out.push('\n');
    if s.vips.is_empty() {
        out.push_str("No VIPs.\n");
    }
    for (i, v) in s.vips.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&render_vip(v));
    }
    out
}

/// The store's state in one line: what an operator checks first when a
/// node is cut off.
fn store_line(st: &StoreStatus) -> String {
    let mut line = format!(
        "etcd {} {} as {}: revision {}",
        st.endpoints.join(","),
        st.prefix,
        st.node,
        st.applied_revision
    );
    if st.reachable {
        let _ = write!(line, ", reachable since {}", st.since);
    } else {
        let _ = write!(
            line,
            ", UNREACHABLE since {} ({}); forwarding revision {} as it is",
            st.since,
            st.error.as_deref().unwrap_or("connecting"),
            st.applied_revision
        );
    }
    if st.announcing_held {
        line.push_str("; not announcing until the store is read");
    }
    line
}

/// A VIP's source: what it found, and anything held back or failing, in
/// capitals where the operator must look.
fn describe_discovery(d: &DiscoveryStatus) -> String {
    let mut out = format!(
        "  backends from {} (every {}): {} found",
        d.source, d.refresh, d.found
    );
    if d.draining > 0 {
        let _ = write!(out, ", {} draining (no longer listed)", d.draining);
    }
    if let Some(t) = &d.last_answer {
        let _ = write!(out, ", last answer {t}");
    }
    out.push('\n');
    if let Some(since) = &d.stale_since {
        let _ = writeln!(
            out,
            "  STALE since {since}: {}; the last set is kept",
            d.error.as_deref().unwrap_or("lookups fail")
        );
    }
    if let Some(h) = &d.held {
        let _ = writeln!(out, "  HELD: {h}");
    }
    if let Some(r) = &d.refused {
        let _ = writeln!(out, "  REFUSED: {r}");
    }
    for l in &d.left_out {
        let _ = writeln!(out, "  left out: {l}");
    }
    out
}

/// `lbctl store import`.
pub fn render_import(r: &StoreImportResult, dry_run: bool) -> String {
    let mut out = String::new();
    if r.diff.is_empty() {
        let _ = writeln!(
            out,
            "No changes: the store holds these VIPs (revision {}).",
            r.revision
        );
        return out;
    }
    for line in &r.diff {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "{}",
        if dry_run {
            format!(
                "Dry run: nothing written (the store is at revision {}).",
                r.revision
            )
        } else {
            format!("Written to the store: revision {}.", r.revision)
        }
    );
    out
}

/// `lbctl cluster status`: one line per node, then what disagrees.
pub fn render_cluster(c: &ClusterView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Desired state: revision {}\n", c.revision);
    if c.nodes.is_empty() {
        out.push_str("No node reports (none reaches the store).\n");
    }
    let mut t = Table::new(&[
        ("NODE", Left),
        ("REVISION", Right),
        ("CURRENT", Left),
        ("VIPS", Right),
        ("DOWN", Right),
        ("ANNOUNCED", Right),
        ("VERSION", Left),
    ]);
    for n in &c.nodes {
        let r = &n.report;
        t.row(vec![
            r.node.clone(),
            r.applied_revision.to_string(),
            if n.current { "yes" } else { "NO" }.to_string(),
            r.tables.len().to_string(),
            r.down.len().to_string(),
            if r.drained {
                "drained".to_string()
            } else {
                r.announced.len().to_string()
            },
            r.version.clone(),
        ]);
    }
    out.push_str(&t.render(""));
    for n in &c.nodes {
        if let Some(r) = &n.report.refused {
            let _ = writeln!(out, "{}: refused {r}", n.report.node);
        }
        for d in &n.drift {
            let _ = writeln!(out, "{}: {d}", n.report.node);
        }
    }
    for m in &c.missing {
        let _ = writeln!(
            out,
            "MISSING {m}: a member with no live report (cut off from the store, stopped, or gone \
             for good: `lbctl cluster forget {m}`)"
        );
    }
    if c.bug {
        out.push_str(
            "\nDRIFT: nodes at the same revision with the same health view build different \
             tables. This is a bug in lb: please report it with `lbctl status --json` of each.\n",
        );
    }
    out
}

/// `lbctl node status`: the node's drain and announce settings, then one
/// line per VIP address.
pub fn render_node(n: &NodeStatus) -> String {
    let mut out = String::new();
    let drained = match (n.drained, &n.since) {
        (true, Some(t)) => format!("yes (since {t})"),
        (true, None) => "yes".to_string(),
        (false, _) => "no".to_string(),
    };
    let announce = match (n.table, n.when) {
        (Some(t), Some(w)) => format!("table {t}, when {w}, proto {}", n.protocol),
        (None, Some(w)) => format!("when {w}, no table"),
        _ => "no [announce] section: lbd writes no routes".to_string(),
    };
    for (k, v) in [
        ("Drained:", drained),
        ("Announce:", announce),
        ("Changes:", n.changes.to_string()),
    ] {
        let _ = writeln!(out, "{k:<11}{v}");
    }
    if let Some(e) = &n.error {
        let _ = writeln!(out, "{:<11}{e}", "Error:");
    }
    out.push('\n');
    if n.addresses.is_empty() {
        out.push_str("No VIP addresses.\n");
        return out;
    }
    let rows: Vec<[String; 3]> = n
        .addresses
        .iter()
        .map(|a| {
            let state = match (a.announced, a.wanted) {
                (true, true) => "announced",
                (false, false) => "withdrawn",
                (false, true) => "announcing",
                (true, false) => "withdrawing",
            };
            [a.address.to_string(), state.to_string(), a.why.clone()]
        })
        .collect();
    let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0).max(7);
    let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0).max(5);
    let _ = writeln!(out, "{:<w0$}  {:<w1$}  WHY", "ADDRESS", "STATE");
    for r in rows {
        let _ = writeln!(out, "{:<w0$}  {:<w1$}  {}", r[0], r[1], r[2]);
    }
    out
}

/// One VIP: a header line, the fail-open alarm if raised, its backends.
pub fn render_vip(v: &VipStatus) -> String {
    let mut out = format!("VIP {}", v.vip);
    if !v.name.is_empty() {
        let _ = write!(out, " ({})", v.name);
    }
    let _ = writeln!(
        out,
        "  {}, {}, {}  {} packets, {}  {} pkt/s, {}/s",
        scheduler_name(v.scheduler),
        forwarding_name(v.forwarding),
        if v.stateless {
            "stateless"
        } else {
            "conntrack"
        },
        human_count(v.packets),
        human_bytes(v.bytes),
        human_count_rate(v.pps),
        human_bytes_rate(v.bps),
    );
    if v.fail_open {
        let _ = writeln!(out, "  !!! {FAIL_OPEN_LINE} !!!");
    }
    if let Some(h) = &v.check {
        let _ = writeln!(out, "  health check: {}", describe_check(h));
    }
    if let Some(line) = describe_tiers(v) {
        let _ = writeln!(out, "  {line}");
    }
    if let Some(d) = &v.discovery {
        out.push_str(&describe_discovery(d));
    }
    if v.backends.is_empty() {
        out.push_str("  (no backends)\n");
        return out;
    }
    let counts = v.backends.iter().any(|b| b.active_connections.is_some());
    let tiered = v.tier_policy.is_some();
    let mut columns = vec![("BACKEND", Left), ("WEIGHT", Right)];
    if tiered {
        columns.push(("TIER", Right));
    }
    columns.extend([("STATE", Left), ("NEXT HOP", Left)]);
    if counts {
        columns.push(("ACTIVE", Right));
    }
    columns.extend([
        ("PACKETS", Right),
        ("BYTES", Right),
        ("PKT/S", Right),
        ("BYTES/S", Right),
    ]);
    let mut t = Table::new(&columns);
    for b in &v.backends {
        let mut row = vec![b.addr.to_string(), b.weight.to_string()];
        if tiered {
            row.push(b.tier.to_string());
        }
        row.extend([
            backend_state(b),
            match (b.next_hop, b.mtu, b.inner_mtu) {
                (false, _, _) => "unresolved".into(),
                (true, Some(m), Some(i)) if m != i => format!("resolved MTU {m} ({i} inside)"),
                (true, Some(m), _) => format!("resolved MTU {m}"),
                (true, None, _) => "resolved".into(),
            },
        ]);
        if counts {
            row.push(b.active_connections.map_or("-".into(), |n| n.to_string()));
        }
        row.extend([
            human_count(b.packets),
            human_bytes(b.bytes),
            human_count_rate(b.pps),
            human_bytes_rate(b.bps),
        ]);
        t.row(row);
    }
    out.push_str(&t.render("  "));
    for b in &v.backends {
        if let Some(h) = &b.check {
            let _ = writeln!(
                out,
                "  * {} has its own health check: {}",
                b.addr,
                describe_check(h)
            );
        }
    }
    out
}

/// A tiered VIP's settings and each tier's share of new flows:
/// `tiers (spill, overprovisioning 1.4): 0: 2/4 up 70%, 1: 4/4 up 30%`.
fn describe_tiers(v: &VipStatus) -> Option<String> {
    let p = v.tier_policy?;
    let mut line = match p.mode {
        TierMode::Spill => format!(
            "tiers (spill, overprovisioning {}):",
            p.overprovisioning as f64 / 100.0
        ),
        TierMode::Strict => format!("tiers (strict, min_healthy {}):", p.min_healthy),
    };
    for (i, t) in v.tiers.iter().enumerate() {
        let sep = if i == 0 { " " } else { ", " };
        let _ = write!(
            line,
            "{sep}{}: {}/{} up {}%",
            t.tier, t.healthy, t.total, t.share
        );
    }
    Some(line)
}

/// `lbctl vip list`.
pub fn render_vip_list(vips: &[VipStatus]) -> String {
    if vips.is_empty() {
        return "No VIPs.\n".into();
    }
    let mut t = Table::new(&[
        ("VIP", Left),
        ("NAME", Left),
        ("SCHEDULER", Left),
        ("FORWARDING", Left),
        ("CONNTRACK", Left),
        ("BACKENDS", Right),
    ]);
    for v in vips {
        t.row(vec![
            v.vip.to_string(),
            if v.name.is_empty() { "-" } else { &v.name }.to_string(),
            scheduler_name(v.scheduler).into(),
            forwarding_name(v.forwarding).into(),
            if v.stateless { "off" } else { "on" }.into(),
            v.backends.len().to_string(),
        ]);
    }
    t.render("")
}

/// Finds a VIP as lbd does: by `ADDR[:PORT]/PROTO`, else by name.
pub fn find_vip<'a>(vips: &'a [VipStatus], vip: &str) -> Option<&'a VipStatus> {
    if let Ok(id) = vip.parse::<VipId>() {
        if let Some(v) = vips.iter().find(|v| v.vip == id) {
            return Some(v);
        }
    }
    vips.iter().find(|v| v.name == vip)
}

// ---------------------------------------------------------------- stats

/// The group a global counter is shown in, from `lb_common`'s counter kinds;
/// `other` for a label this lbctl does not know (a newer lbd).
pub fn counter_group(label: &str) -> &'static str {
    match Counter::ALL
        .iter()
        .find(|c| c.label() == label)
        .map(|c| c.kind())
    {
        Some(CounterKind::Action) => "actions",
        Some(CounterKind::Drop) => "drops",
        Some(CounterKind::Conntrack) => "conntrack",
        Some(CounterKind::Event) => "events",
        None => "other",
    }
}

const GROUPS: [&str; 5] = ["actions", "drops", "conntrack", "events", "other"];

type TrafficKey = (VipId, Option<IpAddr>);

/// Per-second rates between two samples; a counter that went backwards (lbd
/// restarted) or is new has no rate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    pub counters: HashMap<String, f64>,
    /// (packets/s, bytes/s)
    pub traffic: HashMap<TrafficKey, (f64, f64)>,
}

pub fn rates(prev: &Stats, cur: &Stats, elapsed: Duration) -> Rates {
    let secs = elapsed.as_secs_f64();
    let mut r = Rates::default();
    if secs <= 0.0 {
        return r;
    }
    let per_sec = |old: u64, new: u64| new.checked_sub(old).map(|d| d as f64 / secs);
    let old: HashMap<&str, u64> = prev
        .counters
        .iter()
        .map(|(l, v)| (l.as_str(), *v))
        .collect();
    for (label, v) in &cur.counters {
        if let Some(rate) = old.get(label.as_str()).and_then(|o| per_sec(*o, *v)) {
            r.counters.insert(label.clone(), rate);
        }
    }
    let old: HashMap<TrafficKey, &TrafficRow> = prev
        .vips
        .iter()
        .chain(&prev.backends)
        .map(|t| ((t.vip, t.backend), t))
        .collect();
    for t in cur.vips.iter().chain(&cur.backends) {
        let Some(o) = old.get(&(t.vip, t.backend)) else {
            continue;
        };
        if let (Some(p), Some(b)) = (per_sec(o.packets, t.packets), per_sec(o.bytes, t.bytes)) {
            r.traffic.insert((t.vip, t.backend), (p, b));
        }
    }
    r
}

/// `lbctl stats`; with `rates` (from `--watch`) also per-second columns,
/// `-` where there is no rate yet.
pub fn render_stats(s: &Stats, rates: Option<&Rates>) -> String {
    let mut out = String::new();
    let mut cols = vec![("GROUP", Left), ("COUNTER", Left), ("TOTAL", Right)];
    if rates.is_some() {
        cols.push(("PER SEC", Right));
    }
    let mut t = Table::new(&cols);
    for group in GROUPS {
        let mut first = true;
        for (label, v) in s.counters.iter().filter(|(l, _)| counter_group(l) == group) {
            let mut row = vec![
                if first { group } else { "" }.to_string(),
                label.clone(),
                human_count(*v),
            ];
            if let Some(r) = rates {
                row.push(
                    r.counters
                        .get(label)
                        .map_or("-".into(), |r| human_count_rate(*r)),
                );
            }
            t.row(row);
            first = false;
        }
    }
    out.push_str(&t.render(""));

    let traffic = |rows: &[TrafficRow], with_backend: bool| {
        let mut cols = vec![("VIP", Left)];
        if with_backend {
            cols.push(("BACKEND", Left));
        }
        cols.extend([("PACKETS", Right), ("BYTES", Right)]);
        if rates.is_some() {
            cols.extend([("PKT/S", Right), ("BYTES/S", Right)]);
        }
        let mut t = Table::new(&cols);
        for row in rows {
            let mut cells = vec![row.vip.to_string()];
            if with_backend {
                cells.push(row.backend.map_or("-".into(), |b| b.to_string()));
            }
            cells.push(human_count(row.packets));
            cells.push(human_bytes(row.bytes));
            if let Some(r) = rates {
                match r.traffic.get(&(row.vip, row.backend)) {
                    Some((p, b)) => {
                        cells.push(human_count_rate(*p));
                        cells.push(human_bytes_rate(*b));
                    }
                    None => cells.extend(["-".to_string(), "-".to_string()]),
                }
            }
            t.row(cells);
        }
        t.render("")
    };
    if !s.vips.is_empty() {
        out.push('\n');
        out.push_str(&traffic(&s.vips, false));
    }
    if !s.backends.is_empty() {
        out.push('\n');
        out.push_str(&traffic(&s.backends, true));
    }
    out
}

// ---------------------------------------------------------------- the rest

/// `lbctl explain`.
pub fn render_explain(e: &Explain) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<9}{}", "Flow:", e.flow);
    let _ = writeln!(out, "{:<9}{}", "VIP:", e.vip);
    match e.backend {
        Some(b) => {
            let _ = writeln!(out, "{:<9}{b} (from the {})", "Backend:", e.source);
        }
        None => {
            let _ = writeln!(out, "{:<9}none", "Backend:");
        }
    }
    if !e.reasons.is_empty() {
        out.push_str("Why:\n");
        for r in &e.reasons {
            let _ = writeln!(out, "  - {r}");
        }
    }
    out
}

/// `lbctl reload [--dry-run]`.
pub fn render_reload(r: &ReloadResult, dry_run: bool) -> String {
    let mut out = String::new();
    if r.diff.is_empty() {
        out.push_str("No changes: the running state matches the config file.\n");
        return out;
    }
    for line in &r.diff {
        let _ = writeln!(out, "{line}");
    }
    out.push_str(if dry_run {
        "Dry run: nothing applied.\n"
    } else if r.applied {
        "Applied.\n"
    } else {
        "Not applied.\n"
    });
    out
}

/// A change's summary, one line per effect.
pub fn render_change(c: &ChangeResult) -> String {
    let s = c.summary.trim_end();
    if s.is_empty() {
        "OK\n".into()
    } else {
        format!("{s}\n")
    }
}

/// Re-lays out a JSON document exactly as sent (field order, numbers and
/// unknown fields kept): indented by two spaces when `pretty`, else on one
/// line. Fails if `raw` is not JSON.
pub fn reformat_json(raw: &[u8], pretty: bool) -> Result<String, String> {
    serde_json::from_slice::<serde::de::IgnoredAny>(raw).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(raw.len() * 2);
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let newline = |out: &mut Vec<u8>, depth: usize| {
        if pretty {
            out.push(b'\n');
            out.extend(std::iter::repeat_n(b' ', depth * 2));
        }
    };
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        i += 1;
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
            continue;
        }
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'"' => {
                in_string = true;
                out.push(c);
            }
            b'{' | b'[' => {
                out.push(c);
                let next = raw[i..].iter().find(|b| !b.is_ascii_whitespace());
                if matches!(next, Some(b'}' | b']')) {
                    // Empty: `{}` / `[]` on one line.
                    let close = raw[i..].iter().position(|b| !b.is_ascii_whitespace());
                    i += close.unwrap_or(0);
                    out.push(raw[i]);
                    i += 1;
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            b',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            b':' => {
                out.push(c);
                if pretty {
                    out.push(b' ');
                }
            }
            _ => out.push(c),
        }
    }
    String::from_utf8(out).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(s: &str) -> VipId {
        s.parse().unwrap()
    }

    fn backend(addr: &str, weight: u32, health: &str, drained: bool) -> BackendStatus {
        BackendStatus {
            addr: addr.parse().unwrap(),
            discovered: false,
            weight,
            tier: 0,
            health: health.into(),
            check: None,
            drained,
            next_hop: true,
            mtu: None,
            inner_mtu: None,
            active_connections: None,
            packets: 0,
            bytes: 0,
            pps: 0.0,
            bps: 0.0,
        }
    }

    fn web() -> VipStatus {
        VipStatus {
            vip: vip("10.100.0.1:80/tcp"),
            name: "web".into(),
            scheduler: Scheduler::Maglev,
            forwarding: Forwarding::Ipip,
            stateless: false,
            packets: 1_234_567,
            bytes: 3_565_158,
            pps: 1500.0,
            bps: 2048.0,
            fail_open: false,
            check: None,
            table_checksum: None,
            tier_policy: None,
            tiers: Vec::new(),
            discovery: None,
            backends: vec![
                BackendStatus {
                    packets: 1_200,
                    bytes: 3_565_158,
                    pps: 1500.0,
                    bps: 2048.0,
                    ..backend("10.0.0.2", 100, "up", false)
                },
                BackendStatus {
                    next_hop: false,
                    ..backend("10.0.0.3", 5, "up", true)
                },
                backend("10.0.0.14", 65535, "down", false),
                backend("10.0.0.5", 1, "unchecked", false),
            ],
        }
    }

    #[test]
    fn human_units() {
        assert_eq!(human_count(0), "0");
        assert_eq!(human_count(999), "999");
        assert_eq!(human_count(1000), "1.0K");
        assert_eq!(human_count(1234), "1.2K");
        assert_eq!(human_count(3_400_000), "3.4M");
        assert_eq!(human_count(999_999), "1.0M");
        assert_eq!(human_count(u64::MAX), "18.4E");
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1024), "1.0KiB");
        assert_eq!(human_bytes(1229), "1.2KiB");
        assert_eq!(human_bytes(3_565_158), "3.4MiB");
        assert_eq!(human_bytes(1024 * 1024 - 1), "1.0MiB");
        assert_eq!(human_bytes(5 << 30), "5.0GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0EiB");
        assert_eq!(human_count_rate(0.0), "0");
        assert_eq!(human_count_rate(0.5), "0.5");
        assert_eq!(human_count_rate(42.4), "42");
        assert_eq!(human_count_rate(999.7), "1.0K");
        assert_eq!(human_count_rate(12_345.0), "12.3K");
        assert_eq!(human_bytes_rate(100.0), "100B");
        assert_eq!(human_bytes_rate(2048.0), "2.0KiB");
    }

    #[test]
    fn uptimes() {
        assert_eq!(human_uptime(0), "0s");
        assert_eq!(human_uptime(45), "45s");
        assert_eq!(human_uptime(725), "12m5s");
        assert_eq!(human_uptime(3 * 3600 + 12 * 60 + 59), "3h12m");
        assert_eq!(human_uptime(2 * 86400 + 3 * 3600 + 5), "2d3h");
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&[("NAME", Left), ("N", Right), ("LAST", Left)]);
        t.row(vec!["a".into(), "1".into(), "x".into()]);
        t.row(vec!["longer".into(), "12345".into(), "".into()]);
        t.row(vec!["é".into(), "7".into(), "yy".into()]);
        assert_eq!(
            t.render("  "),
            "  NAME        N  LAST\n\
            \x20 a           1  x\n\
            \x20 longer  12345\n\
            \x20 é           7  yy\n"
        );
    }

    #[test]
    fn status() {
        let s = Status {
            interface: "eth0".into(),
            xdp_mode: "native".into(),
            program_id: 42,
            uptime_secs: 3 * 3600 + 12 * 60,
            pin_dir: "/sys/fs/bpf/lb".into(),
            store: None,
            vips: vec![web()],
        };
        let expected = "\
Interface:  eth0
XDP mode:   native
Program id: 42
Uptime:     3h12m
Pin dir:    /sys/fs/bpf/lb

VIP 10.100.0.1:80/tcp (web)  maglev, ipip, conntrack  1.2M packets, 3.4MiB  1.5K pkt/s, 2.0KiB/s
  BACKEND    WEIGHT  STATE      NEXT HOP    PACKETS   BYTES  PKT/S  BYTES/S
  10.0.0.2      100  up         resolved       1.2K  3.4MiB   1.5K   2.0KiB
  10.0.0.3        5  drained    unresolved        0      0B      0       0B
  10.0.0.14   65535  down       resolved          0      0B      0       0B
  10.0.0.5        1  unchecked  resolved          0      0B      0       0B
";
        assert_eq!(render_status(&s), expected);
        assert!(!render_status(&s).contains(FAIL_OPEN_LINE));
    }

    #[test]
    fn tiers_show_their_shares() {
        let mut v = web();
        v.backends.truncate(2);
        v.backends[1].tier = 1;
        v.tier_policy = Some(crate::model::TierPolicy::default());
        v.tiers = vec![
            crate::model::TierShare {
                tier: 0,
                total: 2,
                healthy: 1,
                share: 70,
            },
            crate::model::TierShare {
                tier: 1,
                total: 1,
                healthy: 1,
                share: 30,
            },
        ];
        let out = render_vip(&v);
        assert!(
            out.contains("  tiers (spill, overprovisioning 1.4): 0: 1/2 up 70%, 1: 1/1 up 30%\n"),
            "{out}"
        );
        assert!(out.contains("  BACKEND   WEIGHT  TIER  STATE"), "{out}");
        assert!(out.contains("  10.0.0.3       5     1  drained"), "{out}");
    }

    #[test]
    fn fail_open_is_loud() {
        let mut v = web();
        v.fail_open = true;
        v.stateless = true;
        v.name.clear();
        v.forwarding = Forwarding::L2dsr;
        v.scheduler = Scheduler::SourceHash;
        for b in &mut v.backends {
            b.health = "down".into();
        }
        let out = render_vip(&v);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "VIP 10.100.0.1:80/tcp  source-hash, l2dsr, stateless  1.2M packets, 3.4MiB  1.5K pkt/s, 2.0KiB/s"
        );
        assert_eq!(
            lines[1],
            "  !!! ALL BACKENDS DOWN: failing open, sending to all !!!"
        );
        // Drained keeps its weight, and says it is down too.
        assert!(
            lines[4].starts_with("  10.0.0.3        5  drained,down"),
            "{out}"
        );
    }

    #[test]
    fn health_checks_are_shown() {
        let http = HealthSpec {
            port: 80,
            path: "/healthz".into(),
            ..HealthSpec::new(HealthKind::Http)
        };
        let mut v = web();
        v.check = Some(http.clone());
        v.backends[0].check = Some(HealthSpec {
            port: 8080,
            interval: Duration::from_millis(1500),
            ..HealthSpec::new(HealthKind::Tcp)
        });
        v.backends[1].check = Some(HealthSpec::new(HealthKind::None));
        let out = render_vip(&v);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[1],
            "  health check: http :80 /healthz status 2xx, every 1s, timeout 500ms, rise 2, fall 3"
        );
        assert!(lines[3].starts_with("  10.0.0.2      100  up*  "), "{out}");
        assert!(
            lines[4].starts_with("  10.0.0.3        5  drained*  "),
            "{out}"
        );
        assert!(lines[5].starts_with("  10.0.0.14   65535  down  "), "{out}");
        assert_eq!(
            &lines[7..],
            [
                "  * 10.0.0.2 has its own health check: tcp :8080, every 1s 500ms, timeout \
                 500ms, rise 2, fall 3",
                "  * 10.0.0.3 has its own health check: none (not checked)",
            ]
        );
        let mut v = web();
        v.check = Some(HealthSpec {
            expect_status: Some(204),
            ..http
        });
        assert!(render_vip(&v).contains("http :80 /healthz status 204, every"));
    }

    #[test]
    fn least_connections_vips_show_active_connections() {
        let mut v = web();
        assert!(
            !render_vip(&v).contains("ACTIVE"),
            "other schedulers: no column"
        );
        v.scheduler = Scheduler::LeastConnections;
        for (i, b) in v.backends.iter_mut().enumerate() {
            b.active_connections = Some(10 * i as u64 + 7);
        }
        let out = render_vip(&v);
        let lines: Vec<&str> = out.lines().collect();
        assert!(out.contains("least-connections"), "{out}");
        assert!(lines[1].contains("NEXT HOP    ACTIVE  PACKETS"), "{out}");
        assert!(lines[2].contains("resolved         7     1.2K"), "{out}");
        assert!(lines[3].contains("unresolved      17        0"), "{out}");
    }

    #[test]
    fn empty_vip_and_list() {
        let mut v = web();
        v.backends.clear();
        assert!(render_vip(&v).ends_with("\n  (no backends)\n"));
        let mut v6 = web();
        v6.vip = vip("[2001:db8::1]:443/tcp");
        v6.name = String::new();
        v6.stateless = true;
        v6.backends.truncate(1);
        assert_eq!(
            render_vip_list(&[web(), v6]),
            "\
VIP                    NAME  SCHEDULER  FORWARDING  CONNTRACK  BACKENDS
10.100.0.1:80/tcp      web   maglev     ipip        on                4
[2001:db8::1]:443/tcp  -     maglev     ipip        off               1
"
        );
        assert_eq!(render_vip_list(&[]), "No VIPs.\n");
    }

    #[test]
    fn finds_vips_by_id_or_name() {
        let vips = [web()];
        assert!(find_vip(&vips, "10.100.0.1:80/tcp").is_some());
        assert!(find_vip(&vips, "10.100.0.1:80/TCP").is_some());
        assert!(find_vip(&vips, "web").is_some());
        assert!(find_vip(&vips, "10.100.0.1:81/tcp").is_none());
        assert!(find_vip(&vips, "db").is_none());
    }

    fn stats(scale: u64) -> Stats {
        Stats {
            counters: vec![
                ("pass".into(), 10 * scale),
                ("tx".into(), 2000 * scale),
                ("no_backend".into(), scale),
                ("hit".into(), 1500 * scale),
                ("nexthop_fib".into(), 0),
                ("from_the_future".into(), 1),
            ],
            vips: vec![TrafficRow {
                vip: vip("10.100.0.1:80/tcp"),
                backend: None,
                packets: 2000 * scale,
                bytes: 1_000_000 * scale,
            }],
            backends: vec![TrafficRow {
                vip: vip("10.100.0.1:80/tcp"),
                backend: Some("10.0.0.2".parse().unwrap()),
                packets: 2000 * scale,
                bytes: 1_000_000 * scale,
            }],
        }
    }

    #[test]
    fn groups_counters() {
        assert_eq!(counter_group("pass"), "actions");
        assert_eq!(counter_group("drop"), "actions");
        assert_eq!(counter_group("no_backend"), "drops");
        assert_eq!(counter_group("hit"), "conntrack");
        assert_eq!(counter_group("icmp_frag_needed"), "events");
        assert_eq!(counter_group("nope"), "other");
    }

    #[test]
    fn stats_without_rates() {
        assert_eq!(
            render_stats(&stats(1), None),
            "\
GROUP      COUNTER          TOTAL
actions    pass                10
           tx                2.0K
drops      no_backend           1
conntrack  hit               1.5K
events     nexthop_fib          0
other      from_the_future      1

VIP                PACKETS     BYTES
10.100.0.1:80/tcp     2.0K  976.6KiB

VIP                BACKEND   PACKETS     BYTES
10.100.0.1:80/tcp  10.0.0.2     2.0K  976.6KiB
"
        );
    }

    #[test]
    fn stats_with_rates() {
        let (a, mut b) = (stats(1), stats(3));
        // A counter that went backwards (lbd restarted) has no rate.
        b.counters[0].1 = 0;
        let r = rates(&a, &b, Duration::from_secs(2));
        assert_eq!(r.counters["tx"], 2000.0);
        assert!(!r.counters.contains_key("pass"));
        assert_eq!(
            r.traffic[&(vip("10.100.0.1:80/tcp"), None)],
            (2000.0, 1_000_000.0)
        );
        let out = render_stats(&b, Some(&r));
        assert!(
            out.starts_with("GROUP      COUNTER          TOTAL  PER SEC\n"),
            "{out}"
        );
        assert!(
            out.contains("\nactions    pass                 0        -\n"),
            "{out}"
        );
        assert!(
            out.contains("\n           tx                6.0K     2.0K\n"),
            "{out}"
        );
        assert!(
            out.contains("10.100.0.1:80/tcp  10.0.0.2     6.0K  2.9MiB   2.0K  976.6KiB\n"),
            "{out}"
        );
        // The first sample of --watch: columns, no numbers.
        let out = render_stats(&a, Some(&Rates::default()));
        assert!(
            out.contains("\nactions    pass                10        -\n"),
            "{out}"
        );
        assert!(rates(&a, &b, Duration::ZERO).counters.is_empty());
    }

    #[test]
    fn explain() {
        let e = Explain {
            vip: vip("10.100.0.1:80/tcp"),
            flow: "198.51.100.7:40000 -> 10.100.0.1:80/tcp".into(),
            source: "maglev table".into(),
            backend: Some("10.0.0.2".parse().unwrap()),
            reasons: vec!["no connection entry".into(), "maglev slot 1234".into()],
        };
        assert_eq!(
            render_explain(&e),
            "\
Flow:    198.51.100.7:40000 -> 10.100.0.1:80/tcp
VIP:     10.100.0.1:80/tcp
Backend: 10.0.0.2 (from the maglev table)
Why:
  - no connection entry
  - maglev slot 1234
"
        );
        let none = Explain {
            backend: None,
            reasons: vec![],
            ..e
        };
        assert!(render_explain(&none).ends_with("Backend: none\n"));
    }

    #[test]
    fn reload_and_change() {
        let r = ReloadResult {
            diff: vec![
                "+ vip 10.0.0.1:80/tcp".into(),
                "~ weight 10.0.0.2 5 -> 7".into(),
            ],
            applied: true,
        };
        assert_eq!(
            render_reload(&r, false),
            "+ vip 10.0.0.1:80/tcp\n~ weight 10.0.0.2 5 -> 7\nApplied.\n"
        );
        let dry = ReloadResult {
            applied: false,
            ..r.clone()
        };
        assert!(render_reload(&dry, true).ends_with("Dry run: nothing applied.\n"));
        let none = ReloadResult {
            diff: vec![],
            applied: false,
        };
        assert!(render_reload(&none, false).starts_with("No changes"));
        assert_eq!(
            render_change(&ChangeResult {
                summary: "added backend 10.0.0.2\n".into()
            }),
            "added backend 10.0.0.2\n"
        );
        assert_eq!(render_change(&ChangeResult { summary: "".into() }), "OK\n");
    }

    #[test]
    fn json_keeps_order_and_reindents() {
        let raw = br#"{"zeta":1, "alpha":{"s":"a, \"b\": {c}","e":[],"o":{ }},"n":[1,2.5e3,null]}"#;
        assert_eq!(
            reformat_json(raw, true).unwrap(),
            "{\n  \"zeta\": 1,\n  \"alpha\": {\n    \"s\": \"a, \\\"b\\\": {c}\",\n    \"e\": [],\n    \
             \"o\": {}\n  },\n  \"n\": [\n    1,\n    2.5e3,\n    null\n  ]\n}"
        );
        assert_eq!(
            reformat_json(b"{\n \"a\" : [ 1 , 2 ] }\n", false).unwrap(),
            r#"{"a":[1,2]}"#
        );
        // Matches serde_json's own pretty printer on typed values.
        let v = serde_json::json!({"a": [1, {"b": "x y"}], "c": {}});
        let compact = serde_json::to_vec(&v).unwrap();
        assert_eq!(
            reformat_json(&compact, true).unwrap(),
            serde_json::to_string_pretty(&v).unwrap()
        );
        assert!(reformat_json(b"{\"a\":", true).is_err());
    }
}
