//! lbd's core: owns the balancer and the desired state, and is the only
//! place changes are applied (validate whole → plan → apply per VIP →
//! persist → audit). The API, the reload signal, the next-hop resolver and
//! the health checker all call in here.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context;
use aya::programs::XdpMode;
use lb_common::FlowKey;

use crate::{
    config::{self, Config},
    control::{BackendStatus, Change, Explain, ReloadResult, Stats, Status, TrafficRow, VipStatus},
    maps::{Balancer, LoadOptions, NextHop},
    pin, plan,
    service::{Forwarding, VipId, VipSettings},
    state::{self, BackendDesired, DesiredState, StateError, VipDesired, DEFAULT_WEIGHT},
    trace::{TraceLog, Window},
};

/// Why a request failed, with the HTTP status class the API maps it to.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The request is invalid (400).
    #[error("{0}")]
    Invalid(String),
    /// It names a VIP or backend that does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// It would create something that exists (409).
    #[error("{0}")]
    Conflict(String),
    /// The kernel refused; the previous state was restored (500).
    #[error("{0}")]
    Kernel(String),
}

impl From<StateError> for ApplyError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::UnknownVip(_) | StateError::UnknownBackend { .. } => {
                ApplyError::NotFound(e.to_string())
            }
            StateError::DuplicateVip(_)
            | StateError::DuplicateBackend { .. }
            | StateError::DuplicateName(_) => ApplyError::Conflict(e.to_string()),
            _ => ApplyError::Invalid(e.to_string()),
        }
    }
}

/// A VIP's backends as (address, up, effective weight), and whether it
/// fails open.
pub type VipHealth = (VipId, Vec<(IpAddr, bool, u32)>, bool);

/// Per-second rates from two counter samples a second apart.
#[derive(Default)]
struct Rates {
    last: Option<(Instant, crate::maps::Counters)>,
    vips: std::collections::BTreeMap<VipId, (f64, f64)>,
    backends: std::collections::BTreeMap<(VipId, IpAddr), (f64, f64)>,
}

pub struct Daemon {
    rates: Rates,
    config_path: PathBuf,
    config: Config,
    balancer: Balancer,
    desired: DesiredState,
    started: Instant,
    xdp_mode: XdpMode,
    program_id: u32,
    pin_dir: PathBuf,
    trace: TraceLog,
}

impl Daemon {
    /// Adopts or creates the pinned maps at `place`, reconciles them with
    /// the desired state (the persisted runtime state if any, else the
    /// config), then attaches (taking over a pinned link atomically).
    ///
    /// The caller has checked everything that can be checked without
    /// touching the data path (config, locks, listeners, interface, bpffs,
    /// layout). If a step here fails on a first start, the pins it made are
    /// removed again, so nothing stays attached or pinned.
    pub fn start(
        config_path: &Path,
        config: Config,
        place: &pin::PinPlace,
    ) -> anyhow::Result<Daemon> {
        let first_start = !place.interface_dir().exists();
        let result = Self::start_at(config_path, config, place);
        if result.is_err() && first_start {
            if let Err(e) = place.remove_balancer() {
                tracing::error!("removing the pins of the failed start: {e:#}");
            }
        }
        result
    }

    fn start_at(
        config_path: &Path,
        config: Config,
        place: &pin::PinPlace,
    ) -> anyhow::Result<Daemon> {
        let from_config = config.desired_state()?;
        let pin_dir = place.balancer_dir();
        let opts = LoadOptions {
            pin_dir: Some(pin_dir.clone()),
            ..config.load_options()
        };
        let desired = match state::load(&config.state_dir, &config.interface)? {
            Some(saved) => {
                tracing::info!(
                    "using runtime state from {} (config file changes apply on reload)",
                    state::state_file(&config.state_dir).display()
                );
                saved
            }
            None => from_config,
        };
        check_sources(&config, &desired).map_err(anyhow::Error::msg)?;
        let mut balancer = Balancer::load(&opts).context("loading the balancer")?;
        if balancer.adopted() {
            tracing::info!(pin_dir = %pin_dir.display(), "adopted pinned maps (connection table kept)");
        }
        balancer.set_encap_sources(&config.encap)?;
        balancer.set_too_big(config.too_big_per_second)?;
        let mut daemon = Daemon {
            rates: Rates::default(),
            config_path: config_path.to_path_buf(),
            config,
            balancer,
            desired: DesiredState::default(),
            started: Instant::now(),
            xdp_mode: XdpMode::Driver,
            program_id: 0,
            pin_dir,
            trace: TraceLog::default(),
        };
        daemon
            .reconcile(&desired)
            .context("writing the desired state to the maps")?;
        daemon.desired = desired;
        let iface = daemon.config.interface.clone();
        daemon.xdp_mode = daemon
            .balancer
            .attach(&iface, daemon.config.xdp_mode)
            .with_context(|| format!("attaching to {iface}"))?;
        daemon.program_id = daemon.balancer.program_id().unwrap_or(0);
        state::save(
            &daemon.config.state_dir,
            &daemon.config.interface,
            &daemon.desired,
        )?;
        tracing::info!(
            interface = %iface,
            mode = mode_name(daemon.xdp_mode),
            program_id = daemon.program_id,
            "balancer attached"
        );
        Ok(daemon)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn desired(&self) -> &DesiredState {
        &self.desired
    }

    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    pub fn balancer_mut(&mut self) -> &mut Balancer {
        &mut self.balancer
    }

    /// Makes the maps hold exactly `desired`: VIPs the maps have and it does
    /// not are removed, every other VIP is (re)written. Each VIP switches to
    /// its new table in one step.
    fn reconcile(&mut self, desired: &DesiredState) -> Result<(), ApplyError> {
        let in_maps: Vec<VipId> = self.balancer.vips().map(|(id, _)| *id).collect();
        for id in in_maps.iter().filter(|id| !desired.vips.contains_key(id)) {
            self.sync_vip(id, None)?;
        }
        for (id, v) in &desired.vips {
            self.sync_vip(id, Some(v))?;
        }
        Ok(())
    }

    fn sync_vip(&mut self, id: &VipId, want: Option<&VipDesired>) -> Result<(), ApplyError> {
        let kernel = |e: crate::maps::MapsError| ApplyError::Kernel(format!("VIP {id}: {e}"));
        match want {
            None => {
                if self.balancer.backends(id).is_some() {
                    self.balancer.remove_vip(id).map_err(kernel)?;
                }
            }
            Some(v) => {
                self.balancer.upsert_vip(*id, v.settings).map_err(kernel)?;
                // Per backend, by the check it gets (its own or the VIP's):
                // a new backend under health checks starts down until it
                // passes `rise` checks; one no longer checked is up.
                let known = self.balancer.backends(id).unwrap_or_default();
                let mut new_checked = Vec::new();
                for b in &v.backends {
                    if checked(v, b) {
                        if !known.iter().any(|k| k.addr == b.addr) {
                            new_checked.push(b.addr);
                        }
                    } else if self.balancer.is_down(id, &b.addr) {
                        self.balancer.preset_up(id, b.addr);
                    }
                }
                self.balancer
                    .preset_down(id, &new_checked)
                    .map_err(kernel)?;
                self.balancer
                    .set_backends(*id, &v.backend_specs())
                    .map_err(kernel)?;
            }
        }
        Ok(())
    }

    /// Applies a whole new desired state: validated first; on a kernel
    /// failure midway the VIPs already changed are put back.
    pub fn apply(&mut self, next: DesiredState) -> Result<plan::Plan, ApplyError> {
        next.validate()?;
        next.check_capacity(&self.config.limits)?;
        check_sources(&self.config, &next).map_err(ApplyError::Invalid)?;
        let plan = plan::diff(&self.desired, &next);
        let mut done = Vec::new();
        let result = plan
            .removed
            .iter()
            .map(|id| (id, None))
            .chain(plan.upserted.iter().map(|id| (id, next.vips.get(id))))
            .try_for_each(|(id, want)| {
                done.push(*id);
                self.sync_vip(id, want)
            });
        if let Err(e) = result {
            let old = self.desired.clone();
            for id in done.iter().rev() {
                if let Err(undo) = self.sync_vip(id, old.vips.get(id)) {
                    tracing::error!(vip = %id, "could not restore after a failed change: {undo}");
                }
            }
            return Err(e);
        }
        self.desired = next;
        if let Err(e) = state::save(
            &self.config.state_dir,
            &self.config.interface,
            &self.desired,
        ) {
            tracing::error!("persisting state: {e:#}");
        }
        Ok(plan)
    }

    /// Applies one operator change; returns what changed.
    pub fn change(&mut self, change: &Change) -> Result<String, ApplyError> {
        let mut next = self.desired.clone();
        match change {
            Change::DebugOn { vip, seconds } => return self.trace_on(vip.as_deref(), *seconds),
            Change::DebugOff => return self.trace_off(),
            Change::VipAdd {
                vip,
                name,
                scheduler,
                forwarding,
                stateless,
                table_size,
            } => {
                let settings = VipSettings {
                    scheduler: *scheduler,
                    forwarding: *forwarding,
                    stateless: *stateless,
                    table_size: table_size.unwrap_or(crate::maglev::DEFAULT_TABLE_SIZE),
                };
                let name = name.clone().unwrap_or_else(|| vip.to_string());
                next.add_vip(
                    *vip,
                    VipDesired {
                        name,
                        settings,
                        backends: Vec::new(),
                        health: None,
                    },
                )?;
            }
            Change::VipDel { vip } => {
                let id = next.resolve(vip)?;
                next.vips.remove(&id);
            }
            Change::BackendAdd { vip, addr, weight } => {
                let id = next.resolve(vip)?;
                let b = BackendDesired {
                    addr: *addr,
                    weight: weight.unwrap_or(DEFAULT_WEIGHT),
                    drained: false,
                    health: None,
                };
                next.add_backend(&id, b)?;
            }
            Change::BackendDel { vip, addr } => {
                let id = next.resolve(vip)?;
                next.remove_backend(&id, *addr)?;
            }
            Change::BackendSet { vip, addr, weight } => {
                let id = next.resolve(vip)?;
                next.update_backend(&id, *addr, |b| b.weight = *weight)?;
            }
            Change::BackendDrain { vip, addr } | Change::BackendUndrain { vip, addr } => {
                let drain = matches!(change, Change::BackendDrain { .. });
                let id = next.resolve(vip)?;
                next.update_backend(&id, *addr, |b| b.drained = drain)?;
            }
            Change::VipHealth { vip, health } => {
                let id = next.resolve(vip)?;
                let spec = resolve_health(&id, None, health)?;
                next.vip_mut(&id)?.health = spec;
            }
            Change::BackendHealth { vip, addr, health } => {
                let id = next.resolve(vip)?;
                let spec = resolve_health(&id, Some(*addr), health)?;
                next.update_backend(&id, *addr, |b| b.health = spec)?;
            }
        }
        let plan = self.apply(next)?;
        Ok(if plan.lines.is_empty() {
            "no change".into()
        } else {
            plan.lines.join("\n")
        })
    }

    /// Switches the decision trace on (see `lb_common::debug`).
    fn trace_on(&mut self, vip: Option<&str>, seconds: Option<u64>) -> Result<String, ApplyError> {
        use lb_common::debug::{DEBUG_ALL_VIPS, DEBUG_DEFAULT_SECONDS, DEBUG_MAX_SECONDS};
        let secs = seconds.unwrap_or(DEBUG_DEFAULT_SECONDS);
        if !(1..=DEBUG_MAX_SECONDS).contains(&secs) {
            return Err(ApplyError::Invalid(format!(
                "seconds: {secs} is out of range 1..={DEBUG_MAX_SECONDS}"
            )));
        }
        let (vip_id, vip) = match vip {
            Some(v) => {
                let id = self.desired.resolve(v)?;
                let index = self
                    .balancer
                    .vip_index(&id)
                    .ok_or_else(|| ApplyError::NotFound(format!("VIP {id} is not in the maps")))?;
                (index, Some(id))
            }
            None => (DEBUG_ALL_VIPS, None),
        };
        let cfg = lb_common::debug::DebugConfig {
            enabled: 1,
            vip_id,
            until_ns: monotonic_ns() + secs * 1_000_000_000,
        };
        self.balancer
            .set_trace(cfg)
            .map_err(|e| ApplyError::Kernel(e.to_string()))?;
        self.trace.window = Some(Window {
            vip,
            until: Instant::now() + std::time::Duration::from_secs(secs),
        });
        let what = vip.map_or("every VIP".to_string(), |v| format!("VIP {v}"));
        Ok(format!(
            "tracing {what} for {secs}s (at most {} records per second and CPU); follow with \
             `lbctl debug`",
            lb_common::debug::DEBUG_EVENTS_PER_SEC
        ))
    }

    fn trace_off(&mut self) -> Result<String, ApplyError> {
        let was = self.trace.open(Instant::now()).is_some();
        self.balancer
            .set_trace(lb_common::debug::DebugConfig::default())
            .map_err(|e| ApplyError::Kernel(e.to_string()))?;
        self.trace.window = None;
        Ok(if was { "trace off" } else { "no trace was on" }.into())
    }

    /// Names the trace records read since the last call (logging each
    /// line), and ends a trace whose window has passed.
    pub fn follow_trace(&mut self) {
        for e in self.balancer.trace_pending().take() {
            let line = self.trace_line(&e);
            tracing::info!(target: "lb::trace", "{line}");
            self.trace.push(line);
        }
        if self.trace.window.is_some() && self.trace.open(Instant::now()).is_none() {
            if let Err(e) = self.trace_off() {
                tracing::warn!("ending the trace: {e}");
            } else {
                tracing::info!("decision trace ended (its time is up)");
            }
        }
    }

    /// One record as the operator reads it.
    fn trace_line(&self, e: &lb_common::debug::DebugEvent) -> String {
        use lb_common::{debug::*, user::words_addr, Counter};
        let family = e.family as u8;
        let (src, dst) = (words_addr(&e.src, family), words_addr(&e.dst, family));
        let proto = match e.proto as u8 {
            lb_common::PROTO_TCP => "tcp".to_string(),
            lb_common::PROTO_UDP => "udp".to_string(),
            p => format!("proto {p}"),
        };
        let ep = |a: IpAddr, p: u32| match a {
            IpAddr::V4(a) => format!("{a}:{p}"),
            IpAddr::V6(a) => format!("[{a}]:{p}"),
        };
        let vip = self
            .balancer
            .vip_by_index(e.vip_id)
            .map(|id| {
                let name = self.desired.vips.get(&id).map(|v| v.name.as_str());
                match name {
                    Some(n) if n != id.to_string() => format!("VIP {id} ({n})"),
                    _ => format!("VIP {id}"),
                }
            })
            .unwrap_or_else(|| "no VIP".into());
        let reason = Counter::ALL
            .get(e.counter as usize)
            .map_or("?", |c| c.label());
        let verdict = match e.action {
            1 => format!("dropped ({reason})"),
            2 => format!("passed ({reason})"),
            3 | 4 => {
                let backend = self
                    .balancer
                    .backend_addr(e.backend_id)
                    .map_or_else(|| format!("id {}", e.backend_id), |(_, a)| a.to_string());
                let how = match e.source {
                    DEBUG_SOURCE_CONNTRACK => "connection table",
                    DEBUG_SOURCE_TABLE => "Maglev table",
                    _ => "?",
                };
                let out = if e.action == 3 { "tx" } else { "redirect" };
                format!("{out} to backend {backend} (id {}, by {how})", e.backend_id)
            }
            a => format!("action {a} ({reason})"),
        };
        format!(
            "{} -> {} {proto}: {vip}: {verdict}",
            ep(src, e.sport),
            ep(dst, e.dport)
        )
    }

    /// The trace's state and its lines from `after` on.
    pub fn trace_view(&self, after: u64) -> crate::control::TraceView {
        let now = Instant::now();
        let window = self.trace.open(now);
        let (lines, next) = self.trace.since(after);
        crate::control::TraceView {
            on: window.is_some(),
            vip: window.and_then(|w| w.vip).map(|v| v.to_string()),
            seconds_left: self.trace.left(now).as_secs(),
            rate_limit: lb_common::debug::DEBUG_EVENTS_PER_SEC,
            suppressed: self.balancer.trace_suppressed(),
            lines: lines
                .into_iter()
                .map(|(seq, line)| crate::control::TraceLine { seq, line })
                .collect(),
            next,
        }
    }

    /// Re-reads the config file; it replaces the running state (runtime
    /// changes included). With `dry_run`, only says what would change.
    pub fn reload(&mut self, dry_run: bool) -> Result<ReloadResult, ApplyError> {
        let config =
            config::load(&self.config_path).map_err(|e| ApplyError::Invalid(e.to_string()))?;
        let next = config
            .desired_state()
            .map_err(|e| ApplyError::Invalid(e.to_string()))?;
        let restart_only = restart_only_changes(&self.config, &config);
        if !restart_only.is_empty() {
            return Err(ApplyError::Invalid(format!(
                "{} changed in {}: restart lbd to apply (nothing was changed)",
                restart_only.join(", "),
                self.config_path.display()
            )));
        }
        let mut diff = plan::diff(&self.desired, &next).lines;
        if config.encap != self.config.encap {
            diff.insert(
                0,
                format!("~ encap {:?} -> {:?}", self.config.encap, config.encap),
            );
        }
        if config.too_big_per_second != self.config.too_big_per_second {
            let show = |r: Option<u32>| r.map_or("off".to_string(), |n| format!("{n}/s per CPU"));
            diff.insert(
                0,
                format!(
                    "~ icmp too_big {} -> {}",
                    show(self.config.too_big_per_second),
                    show(config.too_big_per_second)
                ),
            );
        }
        if dry_run {
            return Ok(ReloadResult {
                diff,
                applied: false,
            });
        }
        check_sources(&config, &next).map_err(ApplyError::Invalid)?;
        let old_config = std::mem::replace(&mut self.config, config);
        let set = |b: &mut Balancer, c: &Config| {
            b.set_encap_sources(&c.encap)?;
            b.set_too_big(c.too_big_per_second)
        };
        if let Err(e) = set(&mut self.balancer, &self.config) {
            let _ = set(&mut self.balancer, &old_config);
            self.config = old_config;
            return Err(ApplyError::Kernel(e.to_string()));
        }
        if let Err(e) = self.apply(next) {
            let _ = set(&mut self.balancer, &old_config);
            self.config = old_config;
            return Err(e);
        }
        Ok(ReloadResult {
            diff,
            applied: true,
        })
    }

    /// Applies a health verdict: a down backend leaves its VIP's table and
    /// its established flows move; an up one returns. A down verdict for a
    /// backend no longer under checks (one that raced a change removing
    /// them, before the checker stopped its probe) is ignored.
    pub fn set_backend_health(
        &mut self,
        vip: &VipId,
        addr: IpAddr,
        up: bool,
    ) -> Result<(), ApplyError> {
        let still_checked = self
            .desired
            .vips
            .get(vip)
            .and_then(|v| Some((v, v.backends.iter().find(|b| b.addr == addr)?)))
            .is_some_and(|(v, b)| checked(v, b));
        if !up && !still_checked {
            return Ok(());
        }
        self.balancer
            .set_backend_down(vip, addr, !up)
            .map_err(|e| ApplyError::Kernel(format!("VIP {vip} backend {addr}: {e}")))
    }

    /// Per VIP: each backend's (address, up, effective weight), and whether
    /// the VIP fails open.
    pub fn status_health(&self) -> Vec<VipHealth> {
        self.desired
            .vips
            .iter()
            .map(|(id, v)| {
                let backends = v
                    .backends
                    .iter()
                    .map(|b| {
                        (
                            b.addr,
                            !self.balancer.is_down(id, &b.addr),
                            b.effective_weight(),
                        )
                    })
                    .collect();
                (*id, backends, self.balancer.fail_open(id))
            })
            .collect()
    }

    /// Records a backend's resolved next hop in the maps.
    pub fn set_next_hop(&mut self, addr: IpAddr, nh: Option<NextHop>) -> anyhow::Result<()> {
        if let Some(nh) = nh {
            if nh.ifindex != 0 {
                self.balancer.add_tx_port(nh.ifindex)?;
            }
        }
        self.balancer.set_next_hop(addr, nh)?;
        Ok(())
    }

    /// Every backend address of every VIP (what the resolver tracks).
    pub fn backend_addrs(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .desired
            .vips
            .values()
            .flat_map(|v| v.backends.iter().map(|b| b.addr))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Takes a counter sample and updates the per-second rates shown by
    /// `status` (called once a second).
    pub fn sample_rates(&mut self) {
        let Ok(now) = self.balancer.counters() else {
            return;
        };
        let at = Instant::now();
        if let Some((then, prev)) = &self.rates.last {
            let secs = at.duration_since(*then).as_secs_f64().max(1e-3);
            let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
            self.rates.vips = now
                .vips
                .iter()
                .map(|(k, t)| {
                    let p = prev.vips.get(k).copied().unwrap_or(*t);
                    (*k, (rate(p.packets, t.packets), rate(p.bytes, t.bytes)))
                })
                .collect();
            self.rates.backends = now
                .backends
                .iter()
                .map(|(k, t)| {
                    let p = prev.backends.get(k).copied().unwrap_or(*t);
                    (*k, (rate(p.packets, t.packets), rate(p.bytes, t.bytes)))
                })
                .collect();
        }
        self.rates.last = Some((at, now));
    }

    pub fn status(&self) -> Status {
        let counters = self.balancer.counters().unwrap_or_default();
        let vips = self
            .desired
            .vips
            .iter()
            .map(|(id, v)| {
                let traffic = counters.vips.get(id).copied().unwrap_or_default();
                let backends = v
                    .backends
                    .iter()
                    .map(|b| {
                        let t = counters
                            .backends
                            .get(&(*id, b.addr))
                            .copied()
                            .unwrap_or_default();
                        let nh = self.balancer.next_hop(&b.addr);
                        let mtu = nh.map(|n| n.mtu).filter(|m| *m != 0);
                        BackendStatus {
                            addr: b.addr,
                            weight: b.weight,
                            health: match (checked(v, b), self.balancer.is_down(id, &b.addr)) {
                                (false, _) => "unchecked".into(),
                                (true, true) => "down".into(),
                                (true, false) => "up".into(),
                            },
                            check: b.health.clone(),
                            drained: b.drained,
                            next_hop: nh.is_some(),
                            mtu,
                            inner_mtu: mtu.map(|m| {
                                m.saturating_sub(encap_overhead(v.settings.forwarding, b.addr))
                            }),
                            packets: t.packets,
                            bytes: t.bytes,
                            pps: self.rates.backends.get(&(*id, b.addr)).map_or(0.0, |r| r.0),
                            bps: self.rates.backends.get(&(*id, b.addr)).map_or(0.0, |r| r.1),
                        }
                    })
                    .collect();
                VipStatus {
                    vip: *id,
                    name: v.name.clone(),
                    scheduler: v.settings.scheduler,
                    forwarding: v.settings.forwarding,
                    stateless: v.settings.stateless,
                    packets: traffic.packets,
                    bytes: traffic.bytes,
                    pps: self.rates.vips.get(id).map_or(0.0, |r| r.0),
                    bps: self.rates.vips.get(id).map_or(0.0, |r| r.1),
                    fail_open: self.balancer.fail_open(id),
                    check: v.health.clone(),
                    backends,
                }
            })
            .collect();
        Status {
            interface: self.config.interface.clone(),
            xdp_mode: mode_name(self.xdp_mode).into(),
            program_id: self.program_id,
            uptime_secs: self.started.elapsed().as_secs(),
            pin_dir: self.pin_dir.display().to_string(),
            vips,
        }
    }

    pub fn stats(&self) -> Result<Stats, ApplyError> {
        let c = self
            .balancer
            .counters()
            .map_err(|e| ApplyError::Kernel(e.to_string()))?;
        Ok(Stats {
            counters: c
                .global
                .iter()
                .map(|(k, v)| (k.label().to_string(), *v))
                .collect(),
            vips: c
                .vips
                .iter()
                .map(|(v, t)| TrafficRow {
                    vip: *v,
                    backend: None,
                    packets: t.packets,
                    bytes: t.bytes,
                })
                .collect(),
            backends: c
                .backends
                .iter()
                .map(|((v, b), t)| TrafficRow {
                    vip: *v,
                    backend: Some(*b),
                    packets: t.packets,
                    bytes: t.bytes,
                })
                .collect(),
        })
    }

    /// Where a flow goes and why, from the maps: its connection-table entry
    /// if it has a live one, else its Maglev slot.
    pub fn explain(
        &self,
        src: IpAddr,
        sport: u16,
        vip: &str,
        dport: Option<u16>,
    ) -> Result<Explain, ApplyError> {
        let id = self.desired.resolve(vip)?;
        let dport = match (id.port, dport) {
            (0, Some(p)) | (_, Some(p)) => p,
            (0, None) => {
                return Err(ApplyError::Invalid(format!(
                    "VIP {id} takes every port: give the destination port"
                )))
            }
            (p, None) => p,
        };
        if src.is_ipv4() != id.addr.is_ipv4() {
            return Err(ApplyError::Invalid(format!(
                "{src} and VIP {id} are of different address families"
            )));
        }
        let flow = FlowKey::new(src, sport, id.addr, dport, id.proto.number());
        let flow_text = flow_text(src, sport, &id, dport);
        let timeout = if id.proto == crate::service::Proto::Tcp {
            self.config.tcp_idle_timeout
        } else {
            self.config.udp_idle_timeout
        };
        let now = monotonic_ns();
        let route = self
            .balancer
            .route(&flow, now, timeout.as_nanos() as u64)
            .ok_or_else(|| ApplyError::NotFound(format!("VIP {id} is not in the maps")))?;
        let mut e = explain_route(&route, flow_text, &self.desired.vips[&id], timeout);
        // Where an ICMP error about the flow goes: a router quotes the reply
        // (VIP -> client) and sends the error to the VIP; the data path's
        // own rule turns the quote back into the flow.
        let quoted = lb_common::rules::Quoted {
            version: flow.family,
            proto: flow.proto,
            src: flow.dst,
            dst: flow.src,
            sport: flow.dport,
            dport: flow.sport,
        };
        if let Ok(f) = lb_common::rules::icmp_quoted_flow(flow.family, &flow.dst, &quoted) {
            if let Some(r) = self.balancer.route(&f, now, timeout.as_nanos() as u64) {
                e.reasons.push(format!(
                    "an ICMP error about this flow (\"too big\", \"unreachable\") goes to {}",
                    r.backend
                        .map_or("no backend (dropped)".to_string(), |a| a.to_string())
                ));
            }
        }
        Ok(e)
    }
}

/// The operator's account of a [`Route`]: what decided, in the order the
/// data path decides (for a packet that is not a TCP SYN: a SYN always
/// takes the table's choice).
fn explain_route(
    route: &crate::maps::Route,
    flow: String,
    vip: &VipDesired,
    timeout: std::time::Duration,
) -> Explain {
    use crate::maps::EntryCheck;
    let mut reasons = Vec::new();
    match route.entry {
        Some((entry, idle, EntryCheck::Live)) => {
            reasons.push(format!(
                "connection-table entry: backend id {} ({}), idle {:.1}s of {}s timeout",
                entry.backend_id,
                route.backend.map(|a| a.to_string()).unwrap_or_default(),
                idle as f64 / 1e9,
                timeout.as_secs()
            ));
            if route.vip.proto == crate::service::Proto::Tcp && route.table.backend != route.backend
            {
                reasons.push(format!(
                    "a TCP SYN on this 5-tuple starts a new connection and takes the Maglev \
                     table's choice instead: {}",
                    route
                        .table
                        .backend
                        .map_or("no backend (dropped)".to_string(), |a| a.to_string())
                ));
            }
            return Explain {
                vip: route.vip,
                flow,
                source: "connection table".into(),
                backend: route.backend,
                reasons,
            };
        }
        Some((entry, _, check)) => reasons.push(format!(
            "connection-table entry for backend id {} is {} and will be replaced",
            entry.backend_id,
            if check == EntryCheck::Expired {
                "expired"
            } else {
                "stale (backend gone, down or now another VIP's)"
            }
        )),
        None if vip.settings.stateless => reasons.push("stateless VIP: no connection table".into()),
        None => reasons.push("no connection-table entry: a new flow".into()),
    }
    let p = route.table;
    reasons.push(format!(
        "flow hash {:#010x} ({:?}) selects slot {} of {} in the Maglev table",
        p.hash, vip.settings.scheduler, p.slot, vip.settings.table_size
    ));
    match p.backend {
        Some(b) => reasons.push(format!(
            "slot {} holds backend id {} ({b})",
            p.slot, p.backend_id
        )),
        None => reasons.push("the VIP has no backend with weight > 0: packets are dropped".into()),
    }
    Explain {
        vip: route.vip,
        flow,
        source: "maglev table".into(),
        backend: route.backend,
        reasons,
    }
}

fn flow_text(src: IpAddr, sport: u16, vip: &VipId, dport: u16) -> String {
    let dst = VipId {
        port: dport,
        ..*vip
    };
    match src {
        IpAddr::V4(a) => format!("{a}:{sport} -> {dst}"),
        IpAddr::V6(a) => format!("[{a}]:{sport} -> {dst}"),
    }
}

/// Bytes encapsulation adds toward `backend` (none for L2 DSR).
fn encap_overhead(forwarding: Forwarding, backend: IpAddr) -> u32 {
    match (forwarding, backend) {
        (Forwarding::L2dsr, _) => 0,
        (Forwarding::Ipip, IpAddr::V4(_)) => 20,
        (Forwarding::Ipip, IpAddr::V6(_)) => 40,
    }
}

/// Whether a backend is under active health checks: by its own check if
/// it has one, else by its VIP's.
fn checked(v: &VipDesired, b: &BackendDesired) -> bool {
    v.active_check(b).is_some()
}

/// A requested health check as lbd keeps it (the VIP's port filled in),
/// checked with the config file's rules.
fn resolve_health(
    id: &VipId,
    backend: Option<IpAddr>,
    health: &Option<config::HealthSpec>,
) -> Result<Option<config::HealthSpec>, ApplyError> {
    let Some(h) = health else { return Ok(None) };
    h.clone().resolve(id.port).map(Some).map_err(|error| {
        StateError::Health {
            vip: *id,
            backend,
            error,
        }
        .into()
    })
}

/// Every `ipip` VIP needs an outer source of its family.
fn check_sources(config: &Config, desired: &DesiredState) -> Result<(), String> {
    for (id, v) in &desired.vips {
        if v.settings.forwarding != Forwarding::Ipip {
            continue;
        }
        let missing = if id.addr.is_ipv4() {
            config.encap.v4.is_none()
        } else {
            config.encap.v6.is_none()
        };
        if missing {
            let key = if id.addr.is_ipv4() {
                "source_v4"
            } else {
                "source_v6"
            };
            return Err(format!(
                "VIP {id} ({}) forwards with ipip but [encap] has no {key} (or {key}_prefix)",
                v.name
            ));
        }
    }
    Ok(())
}

/// Settings a reload cannot change under a running daemon.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.interface != new.interface {
        v.push("interface");
    }
    if old.xdp_mode != new.xdp_mode {
        v.push("xdp_mode");
    }
    if old.control_socket != new.control_socket {
        v.push("control_socket");
    }
    if old.metrics_listen != new.metrics_listen {
        v.push("metrics_listen");
    }
    if old.state_dir != new.state_dir {
        v.push("state_dir");
    }
    if old.tcp_idle_timeout != new.tcp_idle_timeout || old.udp_idle_timeout != new.udp_idle_timeout
    {
        v.push("idle timeouts");
    }
    if old.read_group != new.read_group {
        v.push("read_group");
    }
    if old.limits != new.limits {
        v.push("[limits]");
    }
    v
}

pub fn mode_name(m: XdpMode) -> &'static str {
    match m {
        XdpMode::Skb => "generic",
        XdpMode::Hardware => "offload",
        _ => "native",
    }
}

/// CLOCK_MONOTONIC in ns, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
