//! lbd's config file (TOML, by default `/etc/lb/lb.toml`).
//!
//! The file is read with serde; unknown keys are errors, and every error
//! names the file, the line and the key (`/etc/lb/lb.toml:12: vip[1] "api":
//! key `weigth` is not allowed (expected one of address, weight, drained)`).
//!
//! Reading happens in three steps, each refusing what it can see:
//! 1. TOML syntax ([`toml::de::DeTable`], which keeps every key's and
//!    value's byte span, so later errors can say where they are);
//! 2. shape: serde into the `Raw*` structs (unknown keys, wrong types,
//!    missing keys, unknown enum values);
//! 3. values: each key's own rules (ports, durations, prefixes, health
//!    timing), then the VIP set as a whole ([`Config::desired_state`]:
//!    duplicates, address families, encap sources, [`DesiredState::validate`]).
//!
//! [`load`] and [`parse`] run all three, so a [`Config`] they return always
//! gives a valid desired state.

//!
//! `raw` holds the file's shape for serde, `convert` the value rules,
//! `spans` the key index that lets a serde error name its VIP and key.

mod convert;
mod raw;
mod spans;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    fmt, fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::de::DeTable;

use crate::{
    model::{
        self, Announce, AttachMode, BackendSpec, EncapSources, HealthDecision, Limits, SpecError,
        VipId,
    },
    state::{DesiredState, StateError, VipDesired},
    store::StoreSettings,
};
use convert::Source;
use raw::RawConfig;
use spans::Index;

/// The daemon's configuration, as read from the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from (named in error messages).
    pub path: PathBuf,
    pub interface: String,
    pub xdp_mode: AttachMode,
    pub control_socket: PathBuf,
    pub metrics_listen: SocketAddr,
    pub state_dir: PathBuf,
    /// Members of this group may use the read-only API requests.
    pub read_group: Option<String>,
    pub tcp_idle_timeout: Duration,
    pub udp_idle_timeout: Duration,
    pub encap: EncapSources,
    /// `[limits]`: the balancer's capacity (a change needs a restart).
    pub limits: Limits,
    /// `[icmp] too_big` / `too_big_per_second`: answers per second and CPU
    /// to packets too big for the egress MTU once encapsulated; `None`: off
    /// (such packets are dropped, counted).
    pub too_big_per_second: Option<u32>,
    /// `[announce]`; `None`: lbd writes no routes.
    pub announce: Option<Announce>,
    /// `[store]`; `None`: the VIPs are this file's.
    pub store: Option<StoreSettings>,
    /// `health_decision`: `quorum` by default with a store, else `local`.
    pub health_decision: HealthDecision,
    /// `[discovery] nameservers`; empty: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// `api_listen` and its TLS settings; `None`: the Unix socket only.
    pub api_tls: Option<ApiTls>,
    /// In file order.
    pub vips: Vec<VipConfig>,
}

/// The API over TCP: TLS 1.3, client certificates required.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTls {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA client certificates must be signed by.
    pub client_ca: PathBuf,
    /// Identity (SAN or subject CN) → role; a client whose certificate
    /// names none of them is refused.
    pub roles: std::collections::BTreeMap<String, model::Role>,
}

/// One `[[vip]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipConfig {
    pub id: VipId,
    /// Name, settings, backends (in file order) and health check.
    pub desired: VipDesired,
    pub lines: VipLines,
}

/// Where a `[[vip]]` entry's keys are in the file (1-based lines), for
/// messages about it. A key that is absent has the entry's line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipLines {
    /// The `[[vip]]` header.
    pub entry: usize,
    pub name: usize,
    pub address: usize,
    pub forwarding: usize,
    pub scheduler: usize,
    pub table_size: usize,
    /// One per backend, in the order of `VipDesired::backends`.
    pub backends: Vec<usize>,
}

/// Why the config file is refused: `FILE:LINE[:COLUMN]: MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based; `None` when the error is about the whole file.
    pub line: Option<usize>,
    /// 1-based, in characters; syntax errors only.
    pub column: Option<usize>,
    /// What is wrong, naming the VIP and the key where there is one.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn new(path: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.to_path_buf(),
            line,
            column: None,
            message: message.into(),
        }
    }
}

/// Reads and checks the config file: everything `lbd` needs to know is
/// wrong with it, short of what only the system can tell (the interface,
/// the group).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes =
        fs::read(path).map_err(|e| ConfigError::new(path, None, format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + valid.iter().filter(|b| **b == b'\n').count();
        ConfigError::new(path, Some(line), "the file is not valid UTF-8")
    })?;
    parse(path, &text)
}

/// Parses and checks config text; `path` is only used in messages and kept
/// in [`Config::path`].
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let src = Source { path, text };
    let table = DeTable::parse(text).map_err(|e| src.syntax_error(&e))?;
    let index = Index::new(&table);
    let raw = RawConfig::deserialize(toml::de::Deserializer::from(table))
        .map_err(|e| src.shape_error(&index, &e))?;
    let config = src.convert(raw)?;
    config.desired_state()?;
    Ok(config)
}

/// Reads the VIPs of a file for `lbctl store import`: an lbd config (its
/// node keys are read, not used) or a file of `[[vip]]` tables only. The
/// VIPs are checked as a set, but not against this file's `[encap]`: each
/// node checks its own when it applies them.
pub fn load_vips(path: &Path) -> Result<DesiredState, ConfigError> {
    let text = fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, None, format!("cannot read: {e}")))?;
    let src = Source { path, text: &text };
    let table = DeTable::parse(&text).map_err(|e| src.syntax_error(&e))?;
    let index = Index::new(&table);
    let raw = RawConfig::deserialize(toml::de::Deserializer::from(table))
        .map_err(|e| src.shape_error(&index, &e))?;
    let mut config = src.convert_vips(raw)?;
    // Every family has a source here, so only the VIPs' own rules apply.
    config.encap = EncapSources {
        v4: Some((std::net::Ipv4Addr::UNSPECIFIED, 32)),
        v6: Some((std::net::Ipv6Addr::UNSPECIFIED, 128)),
    };
    config.desired_state()
}

impl Config {
    /// The desired state the file asks for, checked as a whole: VIPs unique
    /// by address, port and protocol and by name, backends of the VIP's
    /// family for `ipip`, an `[encap]` source for each `ipip` family, and
    /// [`DesiredState::validate`].
    pub fn desired_state(&self) -> Result<DesiredState, ConfigError> {
        let mut state = DesiredState::default();
        let mut ids: HashMap<VipId, &VipConfig> = HashMap::new();
        let mut names: HashMap<&str, &VipConfig> = HashMap::new();
        for v in &self.vips {
            let name = &v.desired.name;
            if let Some(first) = ids.get(&v.id) {
                return Err(self.error(
                    v.lines.address,
                    format!(
                        "vip {name:?}: VIP {} is already defined by vip {:?} (line {})",
                        v.id, first.desired.name, first.lines.entry
                    ),
                ));
            }
            if let Some(first) = names.get(name.as_str()) {
                return Err(self.error(
                    v.lines.name,
                    format!(
                        "vip {name:?}: key `name`: {name:?} is already the name of VIP {} (line {})",
                        first.id, first.lines.entry
                    ),
                ));
            }
            ids.insert(v.id, v);
            names.insert(name, v);

            model::validate_vip(&v.id, &v.desired.settings).map_err(|e| self.spec_error(v, e))?;
            // The operator's weights, drained or not, must be in range.
            let specs: Vec<BackendSpec> = v
                .desired
                .backends
                .iter()
                .map(|b| BackendSpec {
                    addr: b.addr,
                    weight: b.weight,
                    tier: b.tier,
                })
                .collect();
            model::validate_backends(&v.id, &v.desired.settings, &specs)
                .map_err(|e| self.spec_error(v, e))?;

            if let Some(v46) = self.encap.missing_for(&v.id, &v.desired.settings) {
                let family = if v46 == "v4" { "IPv4" } else { "IPv6" };
                return Err(self.error(
                    v.lines.forwarding,
                    format!(
                        "vip {name:?}: ipip forwarding of {family} VIP {} needs an outer \
                         source address: set source_{v46} or source_{v46}_prefix in [encap]",
                        v.id
                    ),
                ));
            }
            state.vips.insert(v.id, v.desired.clone());
        }
        state.validate().map_err(|e| self.state_error(e))?;
        state
            .check_capacity(&self.limits)
            .map_err(|e| self.state_error(e))?;
        Ok(state)
    }

    /// The VIP a name or `ADDR[:PORT]/PROTO` names.
    pub fn vip(&self, vip: &str) -> Option<&VipConfig> {
        let id = model::parse_vip(vip).ok();
        self.vips
            .iter()
            .find(|v| Some(v.id) == id)
            .or_else(|| self.vips.iter().find(|v| v.desired.name == vip))
    }

    fn error(&self, line: usize, message: String) -> ConfigError {
        ConfigError::new(&self.path, Some(line), message)
    }

    fn spec_error(&self, v: &VipConfig, e: SpecError) -> ConfigError {
        let backend_line = |addr: IpAddr, last: bool| {
            let mut lines = v
                .desired
                .backends
                .iter()
                .zip(&v.lines.backends)
                .filter(|(b, _)| b.addr == addr)
                .map(|(_, l)| *l);
            let line = if last {
                lines.next_back()
            } else {
                lines.next()
            };
            line.unwrap_or(v.lines.entry)
        };
        let line = match &e {
            SpecError::TableSize(_) => v.lines.table_size,
            SpecError::StatelessScheduler { .. } => v.lines.scheduler,
            SpecError::SequenceTooShort { .. } => v.lines.table_size,
            SpecError::DuplicateBackend { backend, .. } => backend_line(*backend, true),
            SpecError::BadBackendAddr(backend)
            | SpecError::FamilyMismatch { backend, .. }
            | SpecError::Weight { backend, .. } => backend_line(*backend, false),
            // BadVipAddr, and whatever else is about the VIP itself.
            _ => v.lines.address,
        };
        self.error(line, format!("vip {:?}: {e}", v.desired.name))
    }

    fn state_error(&self, e: StateError) -> ConfigError {
        let line = match &e {
            StateError::TooManyVips { max, .. } => {
                self.vips.get(*max as usize).map(|v| v.lines.entry)
            }
            // The first VIP (in file order) whose table no longer fits.
            StateError::TablePool { max, .. } => {
                let mut need = 0u64;
                self.vips
                    .iter()
                    .find(|v| {
                        need += 2 * u64::from(v.desired.settings.table_size);
                        need > u64::from(*max)
                    })
                    .map(|v| v.lines.table_size)
            }
            StateError::DuplicateName(name) => self
                .vips
                .iter()
                .filter(|v| &v.desired.name == name)
                .nth(1)
                .map(|v| v.lines.name),
            _ => None,
        };
        ConfigError::new(&self.path, line, e.to_string())
    }
}
