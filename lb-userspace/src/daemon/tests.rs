//! The core's rules over the in-memory data path: no root, no kernel.

use std::{fs, net::IpAddr, path::PathBuf};

use super::{fake::FakeDataPath, ApplyError, Daemon, DataPath};
use crate::{
    config,
    model::{Change, HealthKind, HealthSpec, VipId},
    state::DesiredState,
};

/// A directory of its own for one test's config and state, removed after.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("lb-daemon-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn config_path(&self) -> PathBuf {
        self.0.join("lb.toml")
    }

    /// Writes a config with `body` after the keys every test shares.
    fn write_config(&self, head: &str, body: &str) {
        self.write_config_with_source(head, "192.0.2.10", body)
    }

    /// The same, with `source_v4` as the outer source of `ipip`.
    fn write_config_with_source(&self, head: &str, source_v4: &str, body: &str) {
        let text = format!(
            "{head}\nstate_dir = {:?}\ncontrol_socket = {:?}\n\n[encap]\nsource_v4 = {source_v4:?}\n\n{body}",
            self.0.join("state").display().to_string(),
            self.0.join("lbd.sock").display().to_string(),
        );
        fs::write(self.config_path(), text).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const HEAD: &str = "interface = \"eth0\"";

const TWO_VIPS: &str = r#"
[[vip]]
name = "web"
address = "10.100.0.1"
port = 80
protocol = "tcp"
table_size = 7
backends = [ { address = "10.0.0.2" }, { address = "10.0.0.3", weight = 5 } ]

[[vip]]
name = "dns"
address = "10.100.0.2"
port = 53
protocol = "udp"
table_size = 7
backends = [ { address = "10.0.0.4" } ]
"#;

fn start(scratch: &Scratch, head: &str, body: &str) -> Daemon<FakeDataPath> {
    scratch.write_config(head, body);
    let path = scratch.config_path();
    let cfg = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let desired = cfg.desired_state().unwrap();
    Daemon::new(&path, cfg, FakeDataPath::default(), desired).unwrap_or_else(|e| panic!("{e}"))
}

fn id(s: &str) -> VipId {
    s.parse().unwrap()
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// What the data path should hold for `desired`.
fn expected(desired: &DesiredState) -> Vec<(VipId, Vec<(IpAddr, u32)>)> {
    desired
        .vips
        .iter()
        .map(|(id, v)| {
            let b = v
                .backend_specs()
                .iter()
                .map(|b| (b.addr, b.weight))
                .collect();
            (*id, b)
        })
        .collect()
}

fn held(fake: &FakeDataPath) -> Vec<(VipId, Vec<(IpAddr, u32)>)> {
    fake.vips
        .iter()
        .map(|(id, (_, b))| (*id, b.iter().map(|b| (b.addr, b.weight)).collect()))
        .collect()
}

/// The next state of the rollback test: one VIP removed, one changed, one
/// added.
fn next_state(d: &Daemon<FakeDataPath>) -> DesiredState {
    let mut next = d.desired().clone();
    for change in [
        Change::VipDel { vip: "dns".into() },
        Change::BackendSet {
            vip: "web".into(),
            addr: addr("10.0.0.2"),
            weight: 9,
        },
        Change::BackendAdd {
            vip: "web".into(),
            addr: addr("10.0.0.9"),
            weight: None,
            tier: None,
        },
        Change::VipAdd {
            vip: id("10.100.0.3:443/tcp"),
            name: Some("tls".into()),
            scheduler: Default::default(),
            forwarding: Default::default(),
            stateless: false,
            table_size: Some(7),
        },
        Change::BackendAdd {
            vip: "tls".into(),
            addr: addr("10.0.0.5"),
            weight: Some(2),
            tier: None,
        },
    ] {
        next = next.with_change(&change).unwrap();
    }
    next
}

#[test]
fn a_start_writes_the_whole_desired_state() {
    let s = Scratch::new("start");
    let d = start(&s, HEAD, TWO_VIPS);
    assert_eq!(held(d.data_path()), expected(d.desired()));
    assert!(d.data_path().encap.v4.is_some());
    assert_eq!(d.data_path().too_big, Some(100));
}

#[test]
fn a_change_refused_at_any_write_leaves_data_path_and_state_as_they_were() {
    let s = Scratch::new("rollback");
    // How many writes the change takes when nothing fails.
    let probe_dir = Scratch::new("rollback-probe");
    let mut probe = start(&probe_dir, HEAD, TWO_VIPS);
    let before = probe.data_path().writes;
    probe.apply(next_state(&probe)).unwrap();
    let writes = probe.data_path().writes - before;
    assert!(writes >= 5, "{writes} writes");
    assert_eq!(held(probe.data_path()), expected(probe.desired()));

    for n in 1..=writes {
        let mut d = start(&s, HEAD, TWO_VIPS);
        let (state, contents) = (d.desired().clone(), d.data_path().contents());
        let dir = d.config().state_dir.clone();
        crate::state::persist::save(&dir, "eth0", &state).unwrap();
        let next = next_state(&d);
        d.data_path.fail_in(n);
        match d.apply(next) {
            Err(ApplyError::Kernel(e)) => assert!(e.contains("refused"), "write {n}: {e}"),
            other => panic!("write {n} of {writes} refused, yet {other:?}"),
        }
        assert_eq!(d.desired(), &state, "write {n}: desired state changed");
        assert_eq!(
            d.data_path().contents(),
            contents,
            "write {n}: the data path was not restored"
        );
        // The state on disk is still the one before the change.
        let saved = crate::state::persist::load(&dir, "eth0").unwrap();
        assert_eq!(
            saved.as_ref(),
            Some(&state),
            "write {n}: the state file changed"
        );
    }
}

#[test]
fn an_applied_change_is_persisted() {
    let s = Scratch::new("persist");
    let mut d = start(&s, HEAD, TWO_VIPS);
    let said = d
        .change(&Change::BackendDrain {
            vip: "web".into(),
            addr: addr("10.0.0.3"),
        })
        .unwrap();
    assert!(said.contains("10.0.0.3"), "{said}");
    let saved = crate::state::persist::load(&d.config().state_dir, "eth0").unwrap();
    assert_eq!(saved.as_ref(), Some(d.desired()));
    let web = &d.data_path().vips[&id("10.100.0.1:80/tcp")].1;
    assert_eq!(
        web.iter()
            .find(|b| b.addr == addr("10.0.0.3"))
            .unwrap()
            .weight,
        0
    );
    assert_eq!(
        d.change(&Change::BackendDrain {
            vip: "web".into(),
            addr: addr("10.0.0.3")
        })
        .unwrap(),
        "no change"
    );
}

#[test]
fn refused_changes_map_to_the_apis_classes() {
    let s = Scratch::new("classes");
    let mut d = start(&s, HEAD, TWO_VIPS);
    let before = d.data_path().clone();
    let not_found = d.change(&Change::VipDel { vip: "nope".into() });
    assert!(
        matches!(not_found, Err(ApplyError::NotFound(_))),
        "{not_found:?}"
    );
    let conflict = d.change(&Change::BackendAdd {
        vip: "web".into(),
        addr: addr("10.0.0.2"),
        weight: None,
        tier: None,
    });
    assert!(
        matches!(conflict, Err(ApplyError::Conflict(_))),
        "{conflict:?}"
    );
    let invalid = d.change(&Change::BackendSet {
        vip: "web".into(),
        addr: addr("10.0.0.2"),
        weight: 1 << 20,
    });
    assert!(
        matches!(invalid, Err(ApplyError::Invalid(_))),
        "{invalid:?}"
    );
    assert_eq!(d.data_path(), &before);
}

#[test]
fn a_reload_that_changes_a_restart_only_setting_changes_nothing() {
    let s = Scratch::new("restart-only");
    let cases = [
        ("interface = \"eth1\"", "interface"),
        ("interface = \"eth0\"\nxdp_mode = \"generic\"", "xdp_mode"),
        (
            "interface = \"eth0\"\nmetrics_listen = \"127.0.0.1:9999\"",
            "metrics_listen",
        ),
        (
            "interface = \"eth0\"\ntcp_idle_timeout = \"1m\"",
            "idle timeouts",
        ),
        ("interface = \"eth0\"\nread_group = \"adm\"", "read_group"),
    ];
    for (head, what) in cases {
        let mut d = start(&s, HEAD, TWO_VIPS);
        let (state, contents) = (d.desired().clone(), d.data_path().clone());
        // Restart-only key changed, and a backend too: neither is applied.
        s.write_config(head, &TWO_VIPS.replace("weight = 5", "weight = 6"));
        let e = d.reload(false).unwrap_err().to_string();
        assert!(
            e.contains(what) && e.contains("restart lbd to apply (nothing was changed)"),
            "{what}: {e}"
        );
        assert_eq!(d.desired(), &state, "{what}");
        assert_eq!(d.data_path(), &contents, "{what}");
    }
    let mut d = start(&s, HEAD, TWO_VIPS);
    s.write_config(HEAD, &format!("{TWO_VIPS}\n[limits]\nmax_vips = 8\n"));
    let e = d.reload(false).unwrap_err().to_string();
    assert!(e.contains("[limits]"), "{e}");
}

#[test]
fn a_reload_shows_its_diff_dry_and_applies_it_for_real() {
    let s = Scratch::new("reload");
    let mut d = start(&s, HEAD, TWO_VIPS);
    let before = d.data_path().clone();
    s.write_config(HEAD, &TWO_VIPS.replace("weight = 5", "weight = 6"));
    let dry = d.reload(true).unwrap();
    assert!(!dry.applied);
    assert_eq!(dry.diff.len(), 1, "{:?}", dry.diff);
    assert!(
        dry.diff[0].contains("10.0.0.3") && dry.diff[0].contains('6'),
        "{:?}",
        dry.diff
    );
    assert_eq!(d.data_path(), &before);
    let real = d.reload(false).unwrap();
    assert!(real.applied);
    assert_eq!(real.diff, dry.diff);
    assert_eq!(held(d.data_path()), expected(d.desired()));

    // A reload whose data-path write fails puts the old settings back: the
    // new encap source written first, then the VIPs'.
    s.write_config_with_source(
        HEAD,
        "192.0.2.99",
        &TWO_VIPS.replace("weight = 5", "weight = 7"),
    );
    let (state, contents) = (d.desired().clone(), d.data_path().contents());
    let encap = d.data_path().encap;
    d.data_path.fail_in(3);
    assert!(matches!(d.reload(false), Err(ApplyError::Kernel(_))));
    assert_eq!(d.desired(), &state);
    assert_eq!(d.data_path().contents(), contents);
    assert_eq!(d.data_path().encap, encap);
}

#[test]
fn new_backends_under_checks_start_down_and_unchecked_ones_are_up() {
    let s = Scratch::new("health");
    let mut d = start(&s, HEAD, TWO_VIPS);
    let web = id("10.100.0.1:80/tcp");
    // Backends there before the check came are not marked down by it.
    d.change(&Change::VipHealth {
        vip: "web".into(),
        health: Some(HealthSpec::new(HealthKind::Tcp)),
    })
    .unwrap();
    assert!(!d.data_path().is_down(&web, &addr("10.0.0.2")));
    // A backend added under checks starts down until it passes them.
    d.change(&Change::BackendAdd {
        vip: "web".into(),
        addr: addr("10.0.0.9"),
        weight: None,
        tier: None,
    })
    .unwrap();
    assert!(d.data_path().is_down(&web, &addr("10.0.0.9")));
    let health = d.status_health();
    let (_, backends, fail_open) = health.iter().find(|(v, _, _)| *v == web).unwrap();
    assert!(
        backends.contains(&(addr("10.0.0.9"), false, 100)),
        "{backends:?}"
    );
    assert!(!fail_open);
    d.set_backend_health(&web, addr("10.0.0.9"), true).unwrap();
    assert!(!d.data_path().is_down(&web, &addr("10.0.0.9")));
    d.set_backend_health(&web, addr("10.0.0.9"), false).unwrap();
    assert!(d.data_path().is_down(&web, &addr("10.0.0.9")));

    // Its own check of kind `none` takes it out of the checks: up at once.
    d.change(&Change::BackendHealth {
        vip: "web".into(),
        addr: addr("10.0.0.9"),
        health: Some(HealthSpec::new(HealthKind::None)),
    })
    .unwrap();
    assert!(!d.data_path().is_down(&web, &addr("10.0.0.9")));
    // A down verdict for a backend no longer checked is ignored.
    d.set_backend_health(&web, addr("10.0.0.9"), false).unwrap();
    assert!(!d.data_path().is_down(&web, &addr("10.0.0.9")));

    // Checks removed from the VIP: its backends are up again.
    d.set_backend_health(&web, addr("10.0.0.2"), false).unwrap();
    assert!(d.data_path().is_down(&web, &addr("10.0.0.2")));
    d.change(&Change::VipHealth {
        vip: "web".into(),
        health: None,
    })
    .unwrap();
    assert!(!d.data_path().is_down(&web, &addr("10.0.0.2")));

    // A backend added to a VIP without checks is up.
    let dns = id("10.100.0.2:53/udp");
    d.change(&Change::BackendAdd {
        vip: "dns".into(),
        addr: addr("10.0.0.8"),
        weight: None,
        tier: None,
    })
    .unwrap();
    assert!(!d.data_path().is_down(&dns, &addr("10.0.0.8")));
}

#[test]
fn the_trace_switch_needs_a_known_vip_and_a_sane_window() {
    let s = Scratch::new("trace");
    let mut d = start(&s, HEAD, TWO_VIPS);
    let e = d
        .change(&Change::DebugOn {
            vip: None,
            seconds: Some(0),
        })
        .unwrap_err();
    assert!(matches!(e, ApplyError::Invalid(_)), "{e:?}");
    let e = d
        .change(&Change::DebugOn {
            vip: Some("nope".into()),
            seconds: None,
        })
        .unwrap_err();
    assert!(matches!(e, ApplyError::NotFound(_)), "{e:?}");
    let said = d
        .change(&Change::DebugOn {
            vip: Some("dns".into()),
            seconds: Some(5),
        })
        .unwrap();
    assert!(said.contains("VIP 10.100.0.2:53/udp for 5s"), "{said}");
    let cfg = d.data_path().trace.unwrap();
    // The fake numbers VIPs in order: web 0, dns 1.
    assert_eq!((cfg.enabled, cfg.vip_id), (1, 1));
    assert_eq!(d.change(&Change::DebugOff).unwrap(), "trace off");
    assert_eq!(d.data_path().trace.unwrap().enabled, 0);
    assert_eq!(d.change(&Change::DebugOff).unwrap(), "no trace was on");
}

#[test]
fn next_hops_open_their_egress_port() {
    let s = Scratch::new("nexthop");
    let mut d = start(&s, HEAD, TWO_VIPS);
    let nh = crate::model::NextHop {
        ifindex: 7,
        dst_mac: [2, 0, 0, 0, 0, 1],
        src_mac: [2, 0, 0, 0, 0, 2],
        mtu: 1500,
    };
    d.set_next_hop(addr("10.0.0.2"), Some(nh)).unwrap();
    assert!(d.data_path().tx_ports.contains(&7));
    assert_eq!(d.data_path().next_hops[&addr("10.0.0.2")], nh);
    d.set_next_hop(addr("10.0.0.2"), None).unwrap();
    assert!(d.data_path().next_hops.is_empty());
    assert_eq!(
        d.backend_addrs(),
        ["10.0.0.2", "10.0.0.3", "10.0.0.4"].map(addr).to_vec()
    );
}

#[test]
fn tiers_reach_the_data_path_and_follow_health() {
    let s = Scratch::new("tiers");
    let tiered = TWO_VIPS.replace(
        "{ address = \"10.0.0.3\", weight = 5 }",
        "{ address = \"10.0.0.3\", weight = 5, tier = 1 }",
    );
    let mut d = start(&s, HEAD, &tiered);
    let web = id("10.100.0.1:80/tcp");
    let tier_of = |d: &Daemon<FakeDataPath>, a: &str| {
        let (_, backends) = &d.data_path().vips[&web];
        backends.iter().find(|b| b.addr == addr(a)).unwrap().tier
    };
    assert_eq!(tier_of(&d, "10.0.0.3"), 1);
    d.change(&Change::BackendAdd {
        vip: "web".into(),
        addr: addr("10.0.0.9"),
        weight: None,
        tier: Some(2),
    })
    .unwrap();
    assert_eq!(tier_of(&d, "10.0.0.9"), 2);
    let shares = |d: &Daemon<FakeDataPath>| -> Vec<(u8, u32)> {
        let t = d.data_path().tier_shares(&web);
        t.iter().map(|t| (t.tier, t.share)).collect()
    };
    assert_eq!(shares(&d), [(0, 100), (1, 0), (2, 0)]);
    // Tier 0's only backend fails its check: tier 1 takes everything.
    d.change(&Change::VipHealth {
        vip: "web".into(),
        health: Some(HealthSpec::new(HealthKind::Tcp)),
    })
    .unwrap();
    d.set_backend_health(&web, addr("10.0.0.2"), false).unwrap();
    assert_eq!(shares(&d), [(0, 0), (1, 100), (2, 0)]);
    // Out of range: refused, nothing changed.
    let before = d.data_path().clone();
    assert!(d
        .change(&Change::BackendAdd {
            vip: "web".into(),
            addr: addr("10.0.0.10"),
            weight: None,
            tier: Some(16),
        })
        .is_err());
    assert_eq!(d.data_path(), &before);
}

/// A daemon with `[store]`, holding `TWO_VIPS` as revision 3 (as after a
/// start from its persisted state).
fn with_store(scratch: &Scratch) -> Daemon<FakeDataPath> {
    with_store_holding(scratch, TWO_VIPS)
}

fn with_store_holding(scratch: &Scratch, vips: &str) -> Daemon<FakeDataPath> {
    scratch.write_config(HEAD, "");
    let path = scratch.config_path();
    let mut text = fs::read_to_string(&path).unwrap();
    text.push_str(
        "\n[store]\nkind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nnode_name = \"a\"\n",
    );
    scratch.write_config(HEAD, vips);
    let state = config::load(&path).unwrap().desired_state().unwrap();
    fs::write(&path, text).unwrap();
    let cfg = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let settings = cfg.store.clone().unwrap();
    let mut d = Daemon::new(&path, cfg, FakeDataPath::default(), state).unwrap();
    d.use_store(settings, 3, false);
    d
}

fn snapshot(revision: i64, state: DesiredState) -> crate::store::layout::Snapshot {
    crate::store::layout::Snapshot {
        revision,
        store_revision: revision + 1,
        state,
        last_change: None,
    }
}

#[test]
fn a_node_that_has_not_read_its_store_plans_no_change_and_announces_nothing() {
    let s = Scratch::new("store-unread");
    let mut d = with_store(&s);
    let change = Change::BackendSet {
        vip: "web".into(),
        addr: "10.0.0.2".parse().unwrap(),
        weight: 9,
    };
    let e = d.plan_store_change(&change).err().expect("refused");
    assert!(matches!(e, ApplyError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("nothing was changed"), "{e}");
    assert!(d.store_unread());
    // Read (the same revision): planning works, against revision 3.
    let same = d.desired().clone();
    assert_eq!(d.apply_snapshot(&snapshot(3, same)).unwrap(), Some(vec![]));
    assert!(!d.store_unread());
    let p = d.plan_store_change(&change).unwrap();
    assert_eq!(p.planned, 3);
    assert_eq!(p.lines.len(), 1, "{:?}", p.lines);
    // Planning changes nothing here: the store's revision does.
    assert_eq!(d.desired(), &p.from);
}

#[test]
fn a_revision_this_node_cannot_apply_is_refused_whole() {
    let s = Scratch::new("store-refused");
    let mut d = with_store(&s);
    let before = d.desired().clone();
    // An ipip VIP of a family this node has no outer source for.
    let mut next = before.clone();
    let mut v6 = next.vips.values().next().unwrap().clone();
    v6.name = "web6".into();
    v6.backends = vec![];
    next.vips.insert(id("[2001:db8::1]:80/tcp"), v6);
    let e = d.apply_snapshot(&snapshot(7, next)).unwrap_err();
    assert!(e.to_string().contains("[encap] has no source_v6"), "{e}");
    assert_eq!(d.desired(), &before, "nothing of revision 7 applied");
    let st = d.store_status().unwrap();
    assert_eq!(st.applied_revision, 3);
    assert!(st.refused.unwrap().starts_with("revision 7:"));
    // A later, good revision is applied and clears the refusal.
    let mut good = before.clone();
    good.vips.remove(&id("10.100.0.2:53/udp"));
    assert!(d
        .apply_snapshot(&snapshot(8, good.clone()))
        .unwrap()
        .is_some());
    assert_eq!(d.desired(), &good);
    let st = d.store_status().unwrap();
    assert_eq!((st.applied_revision, st.refused), (8, None));
    // The same revision again changes nothing.
    assert_eq!(d.apply_snapshot(&snapshot(8, good)).unwrap(), None);
}

#[test]
fn losing_the_store_keeps_the_state_and_says_since_when() {
    let s = Scratch::new("store-lost");
    let mut d = with_store(&s);
    let state = d.desired().clone();
    d.apply_snapshot(&snapshot(3, state.clone())).unwrap();
    d.store_lost("no answer within 2s".into());
    let st = d.store_status().unwrap();
    assert!(!st.reachable && st.read && !st.announcing_held);
    assert_eq!(st.error.as_deref(), Some("no answer within 2s"));
    let change = Change::BackendSet {
        vip: "web".into(),
        addr: "10.0.0.2".parse().unwrap(),
        weight: 9,
    };
    let e = d.plan_store_change(&change).err().expect("refused");
    assert!(e.to_string().contains("unreachable since"), "{e}");
    assert_eq!(d.desired(), &state);
    // A reload keeps the store's VIPs (the file has none).
    d.reload(false).unwrap();
    assert_eq!(d.desired(), &state);
}

#[test]
fn under_quorum_a_backend_is_down_when_most_live_nodes_see_it_down() {
    let s = Scratch::new("quorum");
    let checked = format!("{TWO_VIPS}[vip.health]\nkind = \"tcp\"\nport = 53\n");
    let mut d = with_store_holding(&s, &checked);
    let dns = id("10.100.0.2:53/udp");
    let b: IpAddr = "10.0.0.4".parse().unwrap();
    // Starts down (new under checks) until it passes; read the store.
    let state = d.desired().clone();
    d.apply_snapshot(&snapshot(3, state)).unwrap();
    d.set_backend_health(&dns, b, true).unwrap();
    assert!(
        !d.data_path().is_down(&dns, &b),
        "alone, its own view decides"
    );
    let peer = |node: &str, down: &[&str]| crate::store::report::NodeReport {
        node: node.into(),
        observed_down: down.iter().map(|k| k.to_string()).collect(),
        ..Default::default()
    };
    let key = super::vote_key(&dns, &b);
    d.set_peer_reports(&[peer("a", &[]), peer("b", &[]), peer("c", &[])])
        .unwrap();
    assert_eq!(
        d.deciding(),
        super::Deciding::Quorum(3),
        "its own report is not a peer"
    );
    // This node alone sees it down: it stays in the table.
    d.set_backend_health(&dns, b, false).unwrap();
    assert!(!d.data_path().is_down(&dns, &b), "one vote of three");
    assert!(d.observed_down().contains(&key), "but it says what it sees");
    // A second node sees it down: out of the table.
    d.set_peer_reports(&[peer("b", &[&key]), peer("c", &[])])
        .unwrap();
    assert!(d.data_path().is_down(&dns, &b), "two of three");
    // This node's check passes again: one of three, back in.
    d.set_backend_health(&dns, b, true).unwrap();
    assert!(!d.data_path().is_down(&dns, &b));
    // Cut off from the store: the others' last votes stand while their
    // leases would (a hiccup flips nothing)...
    d.set_peer_reports(&[peer("b", &[]), peer("c", &[])])
        .unwrap();
    d.set_backend_health(&dns, b, false).unwrap();
    assert!(!d.data_path().is_down(&dns, &b));
    d.store_lost("no answer".into());
    assert_eq!(d.deciding(), super::Deciding::Quorum(3));
    assert!(
        !d.data_path().is_down(&dns, &b),
        "a short loss changes nothing"
    );
    // ...then its own view decides, and it says so.
    let link = d.store.as_mut().unwrap();
    link.since -= crate::model::defaults::STORE_NODE_TTL;
    d.store_lost("no answer".into());
    assert_eq!(d.deciding(), super::Deciding::LocalFallback);
    assert!(d.data_path().is_down(&dns, &b), "its own checks decide");
    assert!(d
        .store_status()
        .unwrap()
        .health_decision
        .contains("fallback"));
}

#[test]
fn discovered_backends_join_the_maps_drain_when_gone_and_never_reach_the_declared_state() {
    let s = Scratch::new("discovered");
    let body = "[[vip]]\nname = \"web\"\naddress = \"10.100.0.1\"\nport = 80\nprotocol = \"tcp\"\n\
                table_size = 7\nbackends = [ { address = \"10.0.0.2\" } ]\n\
                backends_from = { dns_srv = \"_web._tcp.svc.test\", drain = \"1s\" }\n\
                [vip.health]\nkind = \"tcp\"\n";
    let mut d = start(&s, HEAD, body);
    let web = id("10.100.0.1:80/tcp");
    let found = |addrs: &[(&str, u32, u8)]| -> crate::model::discovery::Set {
        addrs
            .iter()
            .map(|(a, w, t)| {
                let f = crate::model::discovery::Found {
                    weight: *w,
                    tier: *t,
                };
                (a.parse().unwrap(), f)
            })
            .collect()
    };
    let round = |set| super::Round {
        apply: Some(set),
        status: Default::default(),
    };
    // The listed backend is not doubled; the new ones join, down (checked).
    let set = found(&[("10.0.0.2", 5, 0), ("10.0.0.7", 20, 0), ("10.0.0.8", 10, 1)]);
    assert!(d.set_discovered(&web, round(set)).unwrap());
    let addrs: Vec<String> = d.desired().vips[&web]
        .backends
        .iter()
        .map(|b| format!("{} {} {}", b.addr, b.weight, b.tier))
        .collect();
    assert_eq!(addrs, ["10.0.0.2 100 0", "10.0.0.7 20 0", "10.0.0.8 10 1"]);
    let seven: IpAddr = "10.0.0.7".parse().unwrap();
    assert!(d.data_path().is_down(&web, &seven), "new ones start down");
    assert_eq!(
        d.declared().vips[&web].backends.len(),
        1,
        "declared unchanged"
    );
    // A change plans on the declared state only.
    let e = d
        .change(&Change::BackendSet {
            vip: "web".into(),
            addr: seven,
            weight: 1,
        })
        .unwrap_err();
    assert!(matches!(e, ApplyError::NotFound(_)), "{e}");
    // Persisted beside the declared state, for a restart.
    let saved = crate::state::persist::load_saved(&d.config().state_dir, "eth0")
        .unwrap()
        .unwrap();
    assert_eq!(saved.state, *d.declared());
    assert_eq!(saved.discovered[&web].len(), 3);
    // 10.0.0.7 is no longer listed: it drains, then leaves.
    let set = found(&[("10.0.0.2", 5, 0), ("10.0.0.8", 10, 1)]);
    assert!(d.set_discovered(&web, round(set)).unwrap());
    let b7 = d.desired().vips[&web]
        .backends
        .iter()
        .find(|b| b.addr == seven)
        .cloned()
        .expect("still there");
    assert!(b7.drained, "draining, not gone");
    assert!(!d.expire_discovered(std::time::SystemTime::now()).unwrap());
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
    assert!(d.expire_discovered(later).unwrap());
    assert!(!d.desired().vips[&web]
        .backends
        .iter()
        .any(|b| b.addr == seven));
    // No set to apply: nothing changes.
    let unchanged = super::Round {
        apply: None,
        status: Default::default(),
    };
    assert!(!d.set_discovered(&web, unchanged).unwrap());
}

#[test]
fn a_store_never_written_does_not_wipe_the_vips_a_node_has() {
    let s = Scratch::new("store-empty");
    let mut d = with_store(&s);
    let before = d.desired().clone();
    let e = d
        .apply_snapshot(&snapshot(0, DesiredState::default()))
        .unwrap_err();
    assert!(e.to_string().contains("lbctl store import"), "{e}");
    assert_eq!(d.desired(), &before, "nothing removed");
    assert!(!d.store_unread(), "the store was read: announcing goes on");
    // Written since (even with no VIPs, deliberately): followed.
    assert!(d
        .apply_snapshot(&snapshot(4, DesiredState::default()))
        .unwrap()
        .is_some());
    assert!(d.desired().vips.is_empty());
}
