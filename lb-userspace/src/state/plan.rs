//! The difference between two desired states: what a reload or a change
//! would do, as lines an operator reads (`lbctl reload --dry-run`), and the
//! set of VIPs the applier has to touch.

use std::collections::BTreeSet;

use super::{BackendDesired, DesiredState, VipDesired};
use crate::model::VipId;

/// What to do to the maps to get from one state to another.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// VIPs to remove.
    pub removed: Vec<VipId>,
    /// VIPs to create or update (settings and backend set), in order.
    pub upserted: Vec<VipId>,
    /// One line per difference, for people.
    pub lines: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.upserted.is_empty()
    }
}

/// Plans the change from `from` to `to`.
pub fn diff(from: &DesiredState, to: &DesiredState) -> Plan {
    let mut plan = Plan::default();
    let ids: BTreeSet<&VipId> = from.vips.keys().chain(to.vips.keys()).collect();
    for id in ids {
        match (from.vips.get(id), to.vips.get(id)) {
            (Some(old), None) => {
                plan.lines.push(format!("- vip {id} ({})", old.name));
                plan.removed.push(*id);
            }
            (None, Some(new)) => {
                plan.lines
                    .push(format!("+ vip {id} ({}) {}", new.name, describe(new)));
                for b in &new.backends {
                    plan.lines.push(format!(
                        "+ backend {id} {} weight {}{}{}",
                        b.addr,
                        b.weight,
                        drained(b.drained),
                        own_check(b)
                    ));
                }
                plan.upserted.push(*id);
            }
            (Some(old), Some(new)) if old != new => {
                diff_vip(id, old, new, &mut plan.lines);
                plan.upserted.push(*id);
            }
            _ => {}
        }
    }
    plan
}

fn diff_vip(id: &VipId, old: &VipDesired, new: &VipDesired, lines: &mut Vec<String>) {
    if old.name != new.name {
        lines.push(format!("~ vip {id} name {} -> {}", old.name, new.name));
    }
    if old.settings != new.settings {
        lines.push(format!("~ vip {id} {} -> {}", describe(old), describe(new)));
    }
    if old.health != new.health {
        lines.push(format!("~ vip {id} health check changed"));
    }
    for b in &old.backends {
        if !new.backends.iter().any(|n| n.addr == b.addr) {
            lines.push(format!("- backend {id} {}", b.addr));
        }
    }
    for b in &new.backends {
        match old.backends.iter().find(|o| o.addr == b.addr) {
            None => lines.push(format!(
                "+ backend {id} {} weight {}{}{}",
                b.addr,
                b.weight,
                drained(b.drained),
                own_check(b)
            )),
            Some(o) => {
                if o.weight != b.weight {
                    lines.push(format!(
                        "~ backend {id} {} weight {} -> {}",
                        b.addr, o.weight, b.weight
                    ));
                }
                if o.drained != b.drained {
                    let what = if b.drained { "drained" } else { "undrained" };
                    lines.push(format!("~ backend {id} {} {what}", b.addr));
                }
                if o.health != b.health {
                    lines.push(format!("~ backend {id} {} health check changed", b.addr));
                }
            }
        }
    }
}

fn describe(v: &VipDesired) -> String {
    let s = &v.settings;
    format!(
        "scheduler={:?} forwarding={:?} conntrack={} table={}",
        s.scheduler,
        s.forwarding,
        if s.stateless { "off" } else { "on" },
        s.table_size
    )
    .to_lowercase()
}

/// Marks a backend with its own health check.
fn own_check(b: &BackendDesired) -> &'static str {
    if b.health.is_some() {
        " (own health check)"
    } else {
        ""
    }
}

fn drained(d: bool) -> &'static str {
    if d {
        " (drained)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VipSettings;

    fn vip(name: &str, backends: &[(&str, u32)]) -> VipDesired {
        VipDesired {
            name: name.into(),
            settings: VipSettings::default(),
            backends: backends
                .iter()
                .map(|(a, w)| BackendDesired {
                    addr: a.parse().unwrap(),
                    weight: *w,
                    tier: 0,
                    drained: false,
                    health: None,
                })
                .collect(),
            health: None,
            backends_from: None,
        }
    }

    #[test]
    fn diffs_vips_and_backends() {
        let a: VipId = "10.0.0.1:80/tcp".parse().unwrap();
        let b: VipId = "10.0.0.2:80/tcp".parse().unwrap();
        let c: VipId = "10.0.0.3/udp".parse().unwrap();
        let mut from = DesiredState::default();
        from.vips
            .insert(a, vip("a", &[("10.1.0.1", 100), ("10.1.0.2", 100)]));
        from.vips.insert(b, vip("b", &[("10.1.0.1", 100)]));
        let mut to = from.clone();
        to.vips.remove(&b);
        to.vips.insert(c, vip("c", &[("10.1.0.9", 5)]));
        let av = to.vips.get_mut(&a).unwrap();
        av.backends[0].weight = 50;
        av.backends[1].drained = true;
        av.backends.push(BackendDesired {
            addr: "10.1.0.3".parse().unwrap(),
            weight: 1,
            tier: 0,
            drained: false,
            health: None,
        });
        let p = diff(&from, &to);
        assert_eq!(p.removed, vec![b]);
        assert_eq!(p.upserted, vec![a, c]);
        assert_eq!(
            p.lines,
            vec![
                "~ backend 10.0.0.1:80/tcp 10.1.0.1 weight 100 -> 50",
                "~ backend 10.0.0.1:80/tcp 10.1.0.2 drained",
                "+ backend 10.0.0.1:80/tcp 10.1.0.3 weight 1",
                "- vip 10.0.0.2:80/tcp (b)",
                "+ vip 10.0.0.3/udp (c) scheduler=maglev forwarding=ipip conntrack=on table=65537",
                "+ backend 10.0.0.3/udp 10.1.0.9 weight 5",
            ]
        );
        assert!(diff(&to, &to).is_empty());
    }

    #[test]
    fn diffs_health_checks() {
        use crate::model::{HealthKind, HealthSpec};
        let a: VipId = "10.0.0.1:80/tcp".parse().unwrap();
        let mut from = DesiredState::default();
        from.vips
            .insert(a, vip("a", &[("10.1.0.1", 100), ("10.1.0.2", 100)]));
        let tcp = HealthSpec {
            port: 80,
            ..HealthSpec::new(HealthKind::Tcp)
        };

        // A backend's own check, set, changed and dropped.
        let mut to = from.clone();
        to.vips.get_mut(&a).unwrap().backends[1].health = Some(tcp.clone());
        let p = diff(&from, &to);
        assert_eq!(p.upserted, vec![a]);
        assert_eq!(
            p.lines,
            vec!["~ backend 10.0.0.1:80/tcp 10.1.0.2 health check changed"]
        );
        let mut again = to.clone();
        again.vips.get_mut(&a).unwrap().backends[1]
            .health
            .as_mut()
            .unwrap()
            .port = 8080;
        assert_eq!(
            diff(&to, &again).lines,
            vec!["~ backend 10.0.0.1:80/tcp 10.1.0.2 health check changed"]
        );
        assert_eq!(
            diff(&to, &from).lines,
            vec!["~ backend 10.0.0.1:80/tcp 10.1.0.2 health check changed"]
        );

        // The VIP's check; a new backend with its own says so.
        let mut vip_check = from.clone();
        let v = vip_check.vips.get_mut(&a).unwrap();
        v.health = Some(tcp.clone());
        v.backends.push(BackendDesired {
            addr: "10.1.0.3".parse().unwrap(),
            weight: 1,
            tier: 0,
            drained: false,
            health: Some(HealthSpec::new(HealthKind::None)),
        });
        assert_eq!(
            diff(&from, &vip_check).lines,
            vec![
                "~ vip 10.0.0.1:80/tcp health check changed",
                "+ backend 10.0.0.1:80/tcp 10.1.0.3 weight 1 (own health check)",
            ]
        );
    }
}
