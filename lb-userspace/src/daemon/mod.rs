//! lbd's core: owns the data path and the desired state, and is the only
//! place changes are applied (validate whole → plan → apply per VIP, undone
//! on failure → persist). The API, the reload signal, the next-hop resolver
//! and the health checker all call in here.
//!
//! The core asks the data path for what [`DataPath`] names, so its rules
//! (rollback, restart-only settings, health marks) are unit-tested over an
//! in-memory fake; its views (status, stats, explain, the trace) need the
//! real [`Balancer`]. lbd's start-up, which loads and attaches that, is in
//! [`crate::lbd`].

mod announce;
mod data_path;
mod discovered;
#[cfg(test)]
mod fake;
pub mod lock;
mod quorum;
mod store;
#[cfg(test)]
mod tests;
mod views;

pub use data_path::DataPath;
pub use discovered::{ago, Round, SourceStatus, SourceView};
pub use quorum::{vote_key, Deciding};
pub use store::PlannedChange;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use aya::programs::XdpMode;

use crate::{
    api::types::ReloadResult,
    balancer::Balancer,
    config::{self, Config},
    model::{Change, NextHop, VipId},
    state::{plan, BackendDesired, DesiredState, StateError, VipDesired},
    trace::{TraceLog, Window},
};
use views::Rates;

/// The daemon as the API, the metrics and the health checker share it.
pub type Shared = Arc<Mutex<Daemon>>;

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
    /// Accepted and saved, but not in effect yet: lbd keeps trying (503).
    #[error("{0}")]
    Pending(String),
    /// Not done because something it needs (the store) cannot be reached;
    /// nothing was changed (503).
    #[error("{0}")]
    Unavailable(String),
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

/// lbd's state: the config it runs with, the desired state, and the data
/// path that holds it.
pub struct Daemon<D = Balancer> {
    rates: Rates,
    config_path: PathBuf,
    config: Config,
    data_path: D,
    /// What the maps hold: `declared` and what the VIPs' sources found.
    desired: DesiredState,
    /// What the config file, the store or lbctl declared: what changes
    /// are planned on and what the store holds.
    declared: DesiredState,
    /// Per VIP with `backends_from`: what its source found.
    discovered: std::collections::BTreeMap<VipId, SourceView>,
    started: Instant,
    xdp_mode: XdpMode,
    program_id: u32,
    pin_dir: PathBuf,
    trace: TraceLog,
    announcing: announce::Announcing,
    /// `[store]`: the revision the maps hold and the link's state.
    store: Option<store::StoreLink>,
    /// This node's health observations and the other nodes' (quorum).
    votes: quorum::Votes,
}

impl<D: DataPath> Daemon<D> {
    /// Takes over `data_path` (fresh or adopted) and makes it hold
    /// `desired`; the config's encap sources and ICMP settings are written
    /// first. Nothing is attached or persisted here.
    pub fn new(
        config_path: &Path,
        config: Config,
        data_path: D,
        desired: DesiredState,
    ) -> Result<Self, ApplyError> {
        Self::new_with_discovered(config_path, config, data_path, desired, Default::default())
    }

    /// [`Daemon::new`], with what the VIPs' sources last found (persisted
    /// by an earlier lbd): forwarded to until the sources answer.
    pub fn new_with_discovered(
        config_path: &Path,
        config: Config,
        mut data_path: D,
        desired: DesiredState,
        discovered: std::collections::BTreeMap<VipId, crate::model::discovery::Set>,
    ) -> Result<Self, ApplyError> {
        check_sources(&config, &desired).map_err(ApplyError::Invalid)?;
        let kernel = |e: D::Error| ApplyError::Kernel(chain(e));
        data_path.set_encap_sources(&config.encap).map_err(kernel)?;
        data_path
            .set_too_big(config.too_big_per_second)
            .map_err(kernel)?;
        let mut daemon = Daemon {
            rates: Rates::default(),
            config_path: config_path.to_path_buf(),
            config,
            data_path,
            desired: DesiredState::default(),
            declared: DesiredState::default(),
            discovered: discovered
                .into_iter()
                .map(|(id, set)| {
                    let view = SourceView {
                        set,
                        ..Default::default()
                    };
                    (id, view)
                })
                .collect(),
            started: Instant::now(),
            xdp_mode: XdpMode::Driver,
            program_id: 0,
            pin_dir: PathBuf::new(),
            trace: TraceLog::default(),
            announcing: announce::Announcing::default(),
            store: None,
            votes: quorum::Votes::default(),
        };
        let effective = daemon.effective_of(&desired);
        daemon.reconcile(&effective)?;
        daemon.desired = effective;
        daemon.declared = desired;
        Ok(daemon)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What the maps hold (the declared state and what sources found).
    pub fn desired(&self) -> &DesiredState {
        &self.desired
    }

    /// What the config file, the store or lbctl declared.
    pub fn declared(&self) -> &DesiredState {
        &self.declared
    }

    /// Records where the data path was attached (for status).
    pub(crate) fn attached(&mut self, mode: XdpMode, program_id: u32, pin_dir: PathBuf) {
        self.xdp_mode = mode;
        self.program_id = program_id;
        self.pin_dir = pin_dir;
        self.announce_changed();
    }

    /// What the daemon drives (the balancer, or a fake in tests).
    pub fn data_path(&self) -> &D {
        &self.data_path
    }

    /// Makes the maps hold exactly `desired`: VIPs the maps have and it does
    /// not are removed, every other VIP is (re)written. Each VIP switches to
    /// its new table in one step.
    fn reconcile(&mut self, desired: &DesiredState) -> Result<(), ApplyError> {
        let in_maps = self.data_path.vips();
        for id in in_maps.iter().filter(|id| !desired.vips.contains_key(id)) {
            self.sync_vip(id, None)?;
        }
        for (id, v) in &desired.vips {
            self.sync_vip(id, Some(v))?;
        }
        Ok(())
    }

    fn sync_vip(&mut self, id: &VipId, want: Option<&VipDesired>) -> Result<(), ApplyError> {
        let kernel = |e: D::Error| ApplyError::Kernel(format!("VIP {id}: {}", chain(e)));
        match want {
            None => {
                if self.data_path.backends(id).is_some() {
                    self.data_path.remove_vip(id).map_err(kernel)?;
                }
            }
            Some(v) => {
                self.data_path.upsert_vip(*id, v.settings).map_err(kernel)?;
                // Per backend, by the check it gets (its own or the VIP's):
                // a new backend under health checks starts down until it
                // passes `rise` checks; one no longer checked is up.
                let known = self.data_path.backends(id).unwrap_or_default();
                let mut new_checked = Vec::new();
                for b in &v.backends {
                    if checked(v, b) {
                        if !known.iter().any(|k| k.addr == b.addr) {
                            new_checked.push(b.addr);
                        }
                    } else if self.data_path.is_down(id, &b.addr) {
                        self.data_path.preset_up(id, b.addr);
                    }
                }
                self.data_path
                    .preset_down(id, &new_checked)
                    .map_err(kernel)?;
                self.data_path
                    .set_backends(*id, &v.backend_specs())
                    .map_err(kernel)?;
            }
        }
        Ok(())
    }

    /// Applies a whole new desired state: validated first; on a kernel
    /// failure midway the VIPs already changed are put back.
    pub fn apply(&mut self, declared: DesiredState) -> Result<plan::Plan, ApplyError> {
        // The maps' state holds every declared VIP and backend as it is:
        // checking it checks the declared state too.
        let next = self.effective_of(&declared);
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
        self.declared = declared;
        self.announce_changed();
        if let Err(e) = self.persist() {
            tracing::error!("persisting state: {e:#}");
        }
        Ok(plan)
    }

    /// Saves the declared state, its store revision and what the sources
    /// found.
    pub(crate) fn persist(&self) -> anyhow::Result<()> {
        let discovered = self
            .discovered_to_save()
            .iter()
            .map(|(id, v)| (*id, v.set.clone()))
            .collect();
        crate::state::persist::save_all(
            &self.config.state_dir,
            &self.config.interface,
            &self.declared,
            self.store_revision(),
            &discovered,
        )
    }

    /// Applies one operator change; returns what changed.
    pub fn change(&mut self, change: &Change) -> Result<String, ApplyError> {
        match change {
            Change::DebugOn { vip, seconds } => return self.trace_on(vip.as_deref(), *seconds),
            Change::DebugOff => return self.trace_off(),
            Change::NodeDrain => return self.set_drained(true).map(|(s, _)| s),
            Change::NodeUndrain => return self.set_drained(false).map(|(s, _)| s),
            _ => {}
        }
        let next = self.declared.with_change(change)?;
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
                    .data_path
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
        self.data_path
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
        self.data_path
            .set_trace(lb_common::debug::DebugConfig::default())
            .map_err(|e| ApplyError::Kernel(e.to_string()))?;
        self.trace.window = None;
        Ok(if was { "trace off" } else { "no trace was on" }.into())
    }

    /// Re-reads the config file; it replaces the running state (runtime
    /// changes included). With `dry_run`, only says what would change.
    pub fn reload(&mut self, dry_run: bool) -> Result<ReloadResult, ApplyError> {
        let config =
            config::load(&self.config_path).map_err(|e| ApplyError::Invalid(e.to_string()))?;
        // With a store, the file holds no VIPs: the running ones stay.
        let next = if self.store.is_some() {
            self.declared.clone()
        } else {
            config
                .desired_state()
                .map_err(|e| ApplyError::Invalid(e.to_string()))?
        };
        let restart_only = restart_only_changes(&self.config, &config);
        if !restart_only.is_empty() {
            return Err(ApplyError::Invalid(format!(
                "{} changed in {}: restart lbd to apply (nothing was changed)",
                restart_only.join(", "),
                self.config_path.display()
            )));
        }
        let mut diff = plan::diff(&self.declared, &next).lines;
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
        let set = |b: &mut D, c: &Config| -> Result<(), D::Error> {
            b.set_encap_sources(&c.encap)?;
            b.set_too_big(c.too_big_per_second)
        };
        if let Err(e) = set(&mut self.data_path, &self.config) {
            let _ = set(&mut self.data_path, &old_config);
            self.config = old_config;
            return Err(ApplyError::Kernel(e.to_string()));
        }
        if let Err(e) = self.apply(next) {
            let _ = set(&mut self.data_path, &old_config);
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
        self.observe(vip, addr, up)
    }

    /// Marks a backend down or up in the maps.
    fn mark(&mut self, vip: &VipId, addr: IpAddr, down: bool) -> Result<(), ApplyError> {
        self.data_path
            .set_backend_down(vip, addr, down)
            .map_err(|e| ApplyError::Kernel(format!("VIP {vip} backend {addr}: {e}")))?;
        self.announce_changed();
        Ok(())
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
                            !self.data_path.is_down(id, &b.addr),
                            b.effective_weight(),
                        )
                    })
                    .collect();
                (*id, backends, self.data_path.fail_open(id))
            })
            .collect()
    }

    /// Records a backend's resolved next hop in the maps.
    pub fn set_next_hop(&mut self, addr: IpAddr, nh: Option<NextHop>) -> anyhow::Result<()> {
        let e = |e: D::Error| anyhow::Error::new(e);
        if let Some(nh) = nh {
            if nh.ifindex != 0 {
                self.data_path.add_tx_port(nh.ifindex).map_err(e)?;
            }
        }
        self.data_path.set_next_hop(addr, nh).map_err(e)
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
}

/// Whether a backend is under active health checks: by its own check if
/// it has one, else by its VIP's.
fn checked(v: &VipDesired, b: &BackendDesired) -> bool {
    v.active_check(b).is_some()
}

/// An error with its causes (`bpf_map_update_elem failed: Operation not
/// permitted`), as the operator reads it.
fn chain(e: impl std::error::Error + Send + Sync + 'static) -> String {
    format!("{:#}", anyhow::Error::new(e))
}

/// Every `ipip` VIP needs an outer source of its family.
pub(crate) fn check_sources(config: &Config, desired: &DesiredState) -> Result<(), String> {
    for (id, v) in &desired.vips {
        if let Some(v46) = config.encap.missing_for(id, &v.settings) {
            let key = format!("source_{v46}");
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
    if old.announce != new.announce {
        v.push("[announce]");
    }
    if old.store != new.store {
        v.push("[store]");
    }
    if old.health_decision != new.health_decision {
        v.push("health_decision");
    }
    if old.api_tls != new.api_tls {
        v.push("api_listen and its TLS settings");
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
