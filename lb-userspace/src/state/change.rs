//! The step from an operator's [`Change`] to the next desired state: made
//! on a copy and validated whole, so a refused change leaves nothing behind.

use std::net::IpAddr;

use super::{BackendDesired, DesiredState, StateError, VipDesired};
use crate::model::{
    defaults::{DEFAULT_TABLE_SIZE, DEFAULT_WEIGHT},
    Change, HealthSpec, VipId, VipSettings,
};

impl DesiredState {
    /// The state `change` asks for, checked as a whole. The decision trace's
    /// switches (`debug-on`, `debug-off`) and the node's drain are not part
    /// of the desired state: for them this is the state as it is.
    pub fn with_change(&self, change: &Change) -> Result<DesiredState, StateError> {
        let mut next = self.clone();
        match change {
            Change::DebugOn { .. } | Change::DebugOff | Change::NodeDrain | Change::NodeUndrain => {
            }
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
                    table_size: table_size.unwrap_or(DEFAULT_TABLE_SIZE),
                    tiers: Default::default(),
                };
                let name = name.clone().unwrap_or_else(|| vip.to_string());
                next.add_vip(
                    *vip,
                    VipDesired {
                        name,
                        settings,
                        backends: Vec::new(),
                        health: None,
                        backends_from: None,
                    },
                )?;
            }
            Change::VipSet { vip, scheduler } => {
                let id = next.resolve(vip)?;
                next.vip_mut(&id)?.settings.scheduler = *scheduler;
                next.validate()?;
            }
            Change::VipDel { vip } => {
                let id = next.resolve(vip)?;
                next.vips.remove(&id);
            }
            Change::BackendAdd {
                vip,
                addr,
                weight,
                tier,
            } => {
                let id = next.resolve(vip)?;
                let b = BackendDesired {
                    addr: *addr,
                    weight: weight.unwrap_or(DEFAULT_WEIGHT),
                    tier: tier.unwrap_or(0),
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
        Ok(next)
    }
}

/// A requested health check as lbd keeps it (the VIP's port filled in),
/// checked with the config file's rules.
fn resolve_health(
    id: &VipId,
    backend: Option<IpAddr>,
    health: &Option<HealthSpec>,
) -> Result<Option<HealthSpec>, StateError> {
    let Some(h) = health else { return Ok(None) };
    h.clone()
        .resolve(id.port)
        .map(Some)
        .map_err(|error| StateError::Health {
            vip: *id,
            backend,
            error,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{parse_vip, Forwarding, HealthKind, Scheduler};

    const WEB: &str = "10.0.0.1:80/tcp";
    const B1: &str = "10.0.0.2";

    fn add_web() -> Change {
        Change::VipAdd {
            vip: parse_vip(WEB).unwrap(),
            name: Some("web".into()),
            scheduler: Scheduler::Maglev,
            forwarding: Forwarding::Ipip,
            stateless: false,
            table_size: None,
        }
    }

    fn web_with_backend() -> DesiredState {
        let s = DesiredState::default().with_change(&add_web()).unwrap();
        s.with_change(&Change::BackendAdd {
            vip: "web".into(),
            addr: B1.parse().unwrap(),
            weight: None,
            tier: None,
        })
        .unwrap()
    }

    #[test]
    fn a_new_vip_takes_the_defaults_and_a_backend_the_default_weight() {
        let s = web_with_backend();
        let v = &s.vips[&parse_vip(WEB).unwrap()];
        assert_eq!(v.name, "web");
        assert_eq!(v.settings.table_size, DEFAULT_TABLE_SIZE);
        assert_eq!(v.backends.len(), 1);
        assert_eq!(v.backends[0].weight, DEFAULT_WEIGHT);
        assert!(!v.backends[0].drained);

        // Without a name, a VIP is named by its identity.
        let Change::VipAdd { vip, .. } = add_web() else {
            unreachable!()
        };
        let nameless = Change::VipAdd {
            vip: VipId { port: 81, ..vip },
            name: None,
            scheduler: Scheduler::SourceHash,
            forwarding: Forwarding::L2dsr,
            stateless: true,
            table_size: Some(7),
        };
        let s = s.with_change(&nameless).unwrap();
        assert_eq!(s.vips[&VipId { port: 81, ..vip }].name, "10.0.0.1:81/tcp");
    }

    #[test]
    fn the_scheduler_changes_at_run_time_but_never_to_one_without_its_table() {
        let s = web_with_backend();
        let id = parse_vip(WEB).unwrap();
        let rr = s
            .with_change(&Change::VipSet {
                vip: "web".into(),
                scheduler: Scheduler::RoundRobin,
            })
            .unwrap();
        assert_eq!(rr.vips[&id].settings.scheduler, Scheduler::RoundRobin);
        assert_eq!(rr.vips[&id].backends, s.vips[&id].backends);
        let stateless = Change::VipAdd {
            vip: VipId { port: 81, ..id },
            name: Some("dns".into()),
            scheduler: Scheduler::Maglev,
            forwarding: Forwarding::Ipip,
            stateless: true,
            table_size: None,
        };
        let s = s.with_change(&stateless).unwrap();
        let e = s
            .with_change(&Change::VipSet {
                vip: "dns".into(),
                scheduler: Scheduler::LeastConnections,
            })
            .unwrap_err();
        assert!(e.to_string().contains("needs the connection table"), "{e}");
    }

    #[test]
    fn drain_keeps_the_weight_and_undrain_restores_it() {
        let s = web_with_backend();
        let addr: IpAddr = B1.parse().unwrap();
        let set = s
            .with_change(&Change::BackendSet {
                vip: WEB.into(),
                addr,
                weight: 7,
            })
            .unwrap();
        let drained = set
            .with_change(&Change::BackendDrain {
                vip: "web".into(),
                addr,
            })
            .unwrap();
        let b = &drained.vips[&parse_vip(WEB).unwrap()].backends[0];
        assert_eq!((b.weight, b.drained, b.effective_weight()), (7, true, 0));
        let back = drained
            .with_change(&Change::BackendUndrain {
                vip: "web".into(),
                addr,
            })
            .unwrap();
        assert_eq!(back, set);
    }

    #[test]
    fn a_health_check_gets_the_vips_port_and_is_checked() {
        let s = web_with_backend();
        let id = parse_vip(WEB).unwrap();
        let mut tcp = HealthSpec::new(HealthKind::Tcp);
        let with = s
            .with_change(&Change::VipHealth {
                vip: "web".into(),
                health: Some(tcp.clone()),
            })
            .unwrap();
        assert_eq!(with.vips[&id].health.as_ref().unwrap().port, 80);

        tcp.rise = 0;
        let e = s
            .with_change(&Change::BackendHealth {
                vip: "web".into(),
                addr: B1.parse().unwrap(),
                health: Some(tcp),
            })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "VIP 10.0.0.1:80/tcp backend 10.0.0.2: health check: key `rise`: 0 is out of \
             range 1..=100"
        );
    }

    #[test]
    fn refused_changes_name_what_is_wrong_and_leave_the_state() {
        let s = web_with_backend();
        let before = s.clone();
        let cases: Vec<(Change, &str)> = vec![
            (add_web(), "VIP 10.0.0.1:80/tcp already exists"),
            (Change::VipDel { vip: "api".into() }, "unknown VIP api"),
            (
                Change::BackendAdd {
                    vip: "web".into(),
                    addr: B1.parse().unwrap(),
                    weight: None,
                    tier: None,
                },
                "VIP 10.0.0.1:80/tcp already has backend 10.0.0.2",
            ),
            (
                Change::BackendDel {
                    vip: "web".into(),
                    addr: "10.0.0.9".parse().unwrap(),
                },
                "VIP 10.0.0.1:80/tcp has no backend 10.0.0.9",
            ),
            (
                Change::BackendSet {
                    vip: "web".into(),
                    addr: B1.parse().unwrap(),
                    weight: 70000,
                },
                "weight 70000 is out of range 0..=65535",
            ),
            (
                Change::BackendAdd {
                    vip: "web".into(),
                    addr: "2001:db8::2".parse().unwrap(),
                    weight: None,
                    tier: None,
                },
                "ipip forwarding keeps the family",
            ),
        ];
        for (change, want) in cases {
            let e = s.with_change(&change).unwrap_err().to_string();
            assert!(e.contains(want), "{change:?}: {e}");
        }
        assert_eq!(s, before);
    }

    #[test]
    fn trace_switches_leave_the_desired_state() {
        let s = web_with_backend();
        assert_eq!(s.with_change(&Change::DebugOff).unwrap(), s);
        let on = Change::DebugOn {
            vip: None,
            seconds: Some(5),
        };
        assert_eq!(s.with_change(&on).unwrap(), s);
    }
}
