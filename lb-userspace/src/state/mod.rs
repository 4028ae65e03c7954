//! The one desired state every input changes (config file, lbctl, health
//! checks): VIPs with their settings, backends and checks, and the rules the
//! whole must follow. A change is made on a copy ([`DesiredState::with_change`]),
//! validated whole, planned against the running state ([`plan`]), applied
//! to the data path by the daemon, and only then persisted ([`persist`]); a
//! failure at any step leaves the previous state in place.

pub mod change;
pub mod persist;
pub mod plan;

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::model::{
    self, parse_vip, BackendSpec, BackendsFrom, HealthError, HealthSpec, Limits, SpecError, VipId,
    VipSettings,
};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub vips: BTreeMap<VipId, VipDesired>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipDesired {
    pub name: String,
    pub settings: VipSettings,
    pub backends: Vec<BackendDesired>,
    /// Health-check settings (`[vip.health]`); a backend may have its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    /// Where more backends come from (`backends_from`): what the source
    /// lists joins `backends` on each node (`discovery`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends_from: Option<BackendsFrom>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendDesired {
    pub addr: IpAddr,
    /// The operator's weight; kept while drained so undrain restores it.
    pub weight: u32,
    /// 0 = local; higher = farther away (`model::tier`).
    #[serde(default)]
    pub tier: u8,
    #[serde(default)]
    pub drained: bool,
    /// The backend's own health check (resolved: merged over the VIP's in
    /// the config file); `None` = the VIP's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
}

impl BackendDesired {
    /// The weight the Maglev table gets: 0 while drained.
    pub fn effective_weight(&self) -> u32 {
        if self.drained {
            0
        } else {
            self.weight
        }
    }
}

/// Why a change to the desired state is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("unknown VIP {0}")]
    UnknownVip(String),
    #[error("VIP {0} already exists")]
    DuplicateVip(VipId),
    #[error("VIP name {0:?} is used twice")]
    DuplicateName(String),
    #[error("VIP {vip} has no backend {backend}")]
    UnknownBackend { vip: VipId, backend: IpAddr },
    #[error("VIP {vip} already has backend {backend}")]
    DuplicateBackend { vip: VipId, backend: IpAddr },
    #[error("{count} VIPs configured; the balancer holds at most {max} ([limits] max_vips)")]
    TooManyVips { count: usize, max: u32 },
    #[error(
        "the VIPs' Maglev tables need {need} slots (twice each table_size); the table pool \
         holds {max} ([limits] table_pool): use smaller table_size values or a larger pool"
    )]
    TablePool { need: u64, max: u32 },
    #[error("{0}")]
    Discovery(String),
    #[error("VIP {vip}{}: health check: {error}", backend.map(|b| format!(" backend {b}")).unwrap_or_default())]
    Health {
        vip: VipId,
        /// `None`: the VIP's own check.
        backend: Option<IpAddr>,
        error: HealthError,
    },
}

impl DesiredState {
    /// Whether the state fits a balancer loaded with `limits`: checked before
    /// anything is applied, so a state over them is refused whole, not
    /// applied up to the limit. (Fragmentation of the table pool can still
    /// refuse one VIP's resize later; that VIP keeps its old table.)
    pub fn check_capacity(&self, limits: &Limits) -> Result<(), StateError> {
        if self.vips.len() > limits.max_vips as usize {
            return Err(StateError::TooManyVips {
                count: self.vips.len(),
                max: limits.max_vips,
            });
        }
        let need: u64 = self
            .vips
            .values()
            .map(|v| 2 * u64::from(v.settings.table_size))
            .sum();
        if need > u64::from(limits.table_pool) {
            return Err(StateError::TablePool {
                need,
                max: limits.table_pool,
            });
        }
        Ok(())
    }

    /// Checks the whole state: each VIP, each backend set, names unique.
    pub fn validate(&self) -> Result<(), StateError> {
        let mut names = std::collections::BTreeSet::new();
        for (id, v) in &self.vips {
            if !names.insert(v.name.as_str()) {
                return Err(StateError::DuplicateName(v.name.clone()));
            }
            model::validate_vip(id, &v.settings)?;
            model::validate_backends(id, &v.settings, &v.backend_specs())?;
            if let Some(from) = &v.backends_from {
                from.validate(id).map_err(StateError::Discovery)?;
            }
            let checks = std::iter::once((None, &v.health))
                .chain(v.backends.iter().map(|b| (Some(b.addr), &b.health)));
            for (backend, spec) in checks {
                if let Some(spec) = spec {
                    spec.validate(id.port).map_err(|error| StateError::Health {
                        vip: *id,
                        backend,
                        error,
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Finds a VIP by its identity (`ADDR[:PORT]/PROTO`) or its name.
    pub fn resolve(&self, vip: &str) -> Result<VipId, StateError> {
        if let Ok(id) = parse_vip(vip) {
            if self.vips.contains_key(&id) {
                return Ok(id);
            }
        }
        self.vips
            .iter()
            .find(|(_, v)| v.name == vip)
            .map(|(id, _)| *id)
            .ok_or_else(|| StateError::UnknownVip(vip.to_string()))
    }

    pub fn add_vip(&mut self, id: VipId, desired: VipDesired) -> Result<(), StateError> {
        if self.vips.contains_key(&id) {
            return Err(StateError::DuplicateVip(id));
        }
        self.vips.insert(id, desired);
        self.validate()
    }

    pub fn vip_mut(&mut self, id: &VipId) -> Result<&mut VipDesired, StateError> {
        self.vips
            .get_mut(id)
            .ok_or_else(|| StateError::UnknownVip(id.to_string()))
    }

    pub fn add_backend(&mut self, id: &VipId, backend: BackendDesired) -> Result<(), StateError> {
        let v = self.vip_mut(id)?;
        if v.backends.iter().any(|b| b.addr == backend.addr) {
            return Err(StateError::DuplicateBackend {
                vip: *id,
                backend: backend.addr,
            });
        }
        v.backends.push(backend);
        self.validate()
    }

    pub fn remove_backend(&mut self, id: &VipId, addr: IpAddr) -> Result<(), StateError> {
        let v = self.vip_mut(id)?;
        let before = v.backends.len();
        v.backends.retain(|b| b.addr != addr);
        if v.backends.len() == before {
            return Err(StateError::UnknownBackend {
                vip: *id,
                backend: addr,
            });
        }
        Ok(())
    }

    /// Changes one backend in place (weight, drain, health check).
    pub fn update_backend(
        &mut self,
        id: &VipId,
        addr: IpAddr,
        f: impl FnOnce(&mut BackendDesired),
    ) -> Result<(), StateError> {
        let v = self.vip_mut(id)?;
        let b =
            v.backends
                .iter_mut()
                .find(|b| b.addr == addr)
                .ok_or(StateError::UnknownBackend {
                    vip: *id,
                    backend: addr,
                })?;
        f(b);
        self.validate()
    }
}

impl VipDesired {
    /// The health check a backend gets: its own, else the VIP's.
    pub fn health_of<'a>(&'a self, b: &'a BackendDesired) -> Option<&'a HealthSpec> {
        b.health.as_ref().or(self.health.as_ref())
    }

    /// The check a backend is probed with, if it is probed at all (its
    /// check is not of kind `none`).
    pub fn active_check<'a>(&'a self, b: &'a BackendDesired) -> Option<&'a HealthSpec> {
        self.health_of(b).filter(|h| h.is_active())
    }

    /// The backend set the maps get (drained backends at weight 0).
    pub fn backend_specs(&self) -> Vec<BackendSpec> {
        self.backends
            .iter()
            .map(|b| BackendSpec {
                addr: b.addr,
                weight: b.effective_weight(),
                tier: b.tier,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HealthKind;

    #[test]
    fn backends_use_their_own_check_or_the_vips() {
        let b = |addr: &str, health: Option<HealthSpec>| BackendDesired {
            addr: addr.parse().unwrap(),
            weight: 1,
            tier: 0,
            drained: false,
            health,
        };
        let mut v = VipDesired {
            name: "web".into(),
            settings: VipSettings::default(),
            backends: vec![
                b("10.0.0.2", None),
                b("10.0.0.3", Some(HealthSpec::new(HealthKind::Http))),
                b("10.0.0.4", Some(HealthSpec::new(HealthKind::None))),
            ],
            health: None,
            backends_from: None,
        };
        let kinds = |v: &VipDesired| {
            v.backends
                .iter()
                .map(|b| v.active_check(b).map(|h| h.kind))
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds(&v), [None, Some(HealthKind::Http), None]);
        v.health = Some(HealthSpec::new(HealthKind::Tcp));
        assert_eq!(
            kinds(&v),
            [Some(HealthKind::Tcp), Some(HealthKind::Http), None]
        );
        assert_eq!(
            v.health_of(&v.backends[2]).map(|h| h.kind),
            Some(HealthKind::None)
        );
    }
}
