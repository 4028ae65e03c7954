//! lb as the front door of a cluster, with real BIRD 2 and keepalived
//! (see `lb_lab::cluster` for the topology):
//!
//! 1. [`three_nodes_behind_ecmp`]: three nodes announce the VIPs (IPv4 and
//!    IPv6) over BGP
//!    (BIRD learning lbd's table, BFD to the router), the router spreads
//!    300 long-lived connections over them with ECMP; a flooding bridge
//!    gets no duplicates through; a site whose backends all fail
//!    withdraws its VIP and the other site serves it; a drained node's
//!    next hop leaves the router and comes back; a node that dies (lbd and
//!    BIRD killed, its link cut on its side) is dropped by BFD, and the
//!    connections it carried move to nodes that pick the same backends.
//! 2. [`keepalived_pair_moves_the_vip`]: two nodes with the same lbd
//!    config, keepalived moving the VIP; the primary dies (link cut,
//!    keepalived and lbd killed), the standby takes the VIP and the
//!    established connections carry on.
//!
//! Times are printed, and bounded only loosely (what BFD buys against the
//! BGP hold timer): speed is the bench's business.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use lb_lab::{clients::tcp_connect, cluster::*, netns::in_netns, servers::Service};

/// One cluster at a time: two would share the two CPUs with their BFD and
/// VRRP timers.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const FLEET: usize = 300;
const SOURCES: u8 = 100;
const EVERY: Duration = Duration::from_millis(100);

fn vip_toml(name: &str, addr: &str, port: u16, proto: &str, backends: &[&BackendAddr]) -> String {
    let mut t = format!(
        "\n[[vip]]\nname = \"{name}\"\naddress = \"{addr}\"\nport = {port}\nprotocol = \"{proto}\"\nbackends = ["
    );
    for b in backends {
        t += &format!("{{ address = \"{}\" }}, ", b.0);
    }
    t += "]\n";
    t
}

struct BackendAddr(String);

/// A check on port 8080 that notices a dead backend within a second.
const SITE_HEALTH: &str = "[vip.health]\nkind = \"tcp\"\nport = 8080\ninterval = \"200ms\"\n\
                           timeout = \"100ms\"\nrise = 1\nfall = 2\n";

/// Greetings of `n` new connections to `to`, from the client's addresses
/// (IPv4), or from its one IPv6 address.
fn new_connections(
    c: &Cluster,
    to: SocketAddr,
    n: usize,
) -> Result<BTreeMap<String, usize>, String> {
    let sources = if to.is_ipv4() {
        c.sources(n, SOURCES)
    } else {
        vec![IpAddr::V6(CLIENT6); n]
    };
    in_netns(&c.client_ns, || {
        let mut seen = BTreeMap::new();
        for src in sources {
            let (_, s) = tcp_connect(Some(SocketAddr::new(src, 0)), to, Duration::from_secs(3));
            let s = s.map_err(|e| format!("connect from {src}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line)
                .map_err(|e| format!("greeting to {src}: {e}"))?;
            *seen.entry(line.trim().to_string()).or_default() += 1;
        }
        Ok(seen)
    })
    .map_err(|e| e.to_string())?
}

fn wait_established(c: &Cluster, sessions: usize) -> Duration {
    let start = Instant::now();
    while c.router_sessions_up() < sessions {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "BGP sessions not established:\n{}",
            c.routing_diagnostics()
        );
        thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn three_nodes_behind_ecmp() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::build(3, 3, SOURCES).expect("cluster");
    let b: Vec<BackendAddr> = ["b1", "b2", "b3"]
        .iter()
        .map(|n| BackendAddr(c.backend(n).v4.to_string()))
        .collect();
    let b6: Vec<BackendAddr> = ["b1", "b2", "b3"]
        .iter()
        .map(|n| BackendAddr(c.backend(n).v6.to_string()))
        .collect();
    // The same VIPs everywhere, but the site VIP: site A (n1, n2) has b1
    // and b2, site B (n3) has b3.
    let common = vip_toml("web", "203.0.113.10", 80, "tcp", &[&b[0], &b[1], &b[2]])
        + &vip_toml(
            "web6",
            "2001:db8:100::10",
            80,
            "tcp",
            &[&b6[0], &b6[1], &b6[2]],
        )
        + &vip_toml("dns", "203.0.113.30", 53, "udp", &[&b[0], &b[1], &b[2]]);
    let site_a = vip_toml("site", "203.0.113.20", 80, "tcp", &[&b[0], &b[1]]) + SITE_HEALTH;
    let site_b = vip_toml("site", "203.0.113.20", 80, "tcp", &[&b[2]]) + SITE_HEALTH;

    // BIRD first: with sessions up and lbd not yet running, the router
    // must know no VIP (its routes come only from lbd's table).
    c.start_router_bird().expect("router BIRD");
    for n in ["n1", "n2", "n3"] {
        c.start_bird(n).expect("node BIRD");
    }
    let took = wait_established(&c, 6);
    println!("BGP sessions established {took:?} after BIRD started");
    thread::sleep(Duration::from_millis(500));
    assert!(
        c.router_next_hops(VIP_WEB).is_empty(),
        "no route before lbd runs"
    );
    assert!(
        c.router_next_hops(VIP_WEB6).is_empty(),
        "no route before lbd runs"
    );

    for (n, site) in [("n1", &site_a), ("n2", &site_a), ("n3", &site_b)] {
        let cfg = c.lbd_config(n, "healthy", &format!("{common}{site}"));
        c.start_lbd(n, &cfg).expect("lbd");
    }
    let started = Instant::now();
    for n in ["n1", "n2", "n3"] {
        c.wait_next_hops(n, Duration::from_secs(10)).unwrap();
    }
    let all = ["n1", "n2", "n3"];
    c.wait_router(VIP_WEB, &all, Duration::from_secs(10))
        .unwrap();
    let ecmp = started.elapsed();
    c.wait_router(VIP_SITE, &all, Duration::from_secs(10))
        .unwrap();
    c.wait_router(VIP_DNS, &all, Duration::from_secs(10))
        .unwrap();
    c.wait_router(VIP_WEB6, &all, Duration::from_secs(10))
        .unwrap();
    let seen = new_connections(&c, SocketAddr::from((VIP_WEB6, 80)), 20).unwrap();
    assert_eq!(
        seen.values().sum::<usize>(),
        20,
        "IPv6 through the cluster: {seen:?}"
    );
    println!("router holds a 3-way ECMP route to every VIP {ecmp:?} after the last lbd answered");
    let learned = c.node_birdc("n1", &["show", "route", "all", "203.0.113.10/32"]);
    assert!(
        learned.contains("lbd_routes"),
        "n1's BIRD learned it from lbd's table:\n{learned}"
    );

    // 300 long-lived connections, a line every 100 ms each.
    let fleet = Fleet::start(
        &c.client_ns,
        Cluster::web(),
        &c.sources(FLEET, SOURCES),
        EVERY,
    )
    .expect("fleet");
    assert!(
        fleet.wait_exchanges(3, FLEET, Duration::from_secs(10)),
        "exchanges flow"
    );
    let per_node: BTreeMap<&str, u64> = all.iter().map(|n| (*n, c.vip_packets(n, "web"))).collect();
    println!("web packets per node with {FLEET} connections: {per_node:?}");
    assert!(
        per_node.values().all(|p| *p > 0),
        "ECMP spreads over all nodes: {per_node:?}"
    );

    // A flooding bridge shows every node every frame: each node forwards
    // only the frames addressed to it, so each datagram is answered once.
    let other_before: u64 = all.iter().map(|n| c.counter(n, "pass_other_host")).sum();
    c.set_flooding(true).unwrap();
    let (answers, by) = udp_probe(
        &c.client_ns,
        SocketAddr::from((VIP_DNS, 53)),
        &c.sources(SOURCES as usize, SOURCES),
        Duration::from_secs(1),
    )
    .unwrap();
    c.set_flooding(false).unwrap();
    let other_after: u64 = all.iter().map(|n| c.counter(n, "pass_other_host")).sum();
    println!(
        "flooding: answers per datagram {answers:?} (by backend {by:?}); frames for other \
         nodes passed: {}",
        other_after - other_before
    );
    assert_eq!(
        answers,
        BTreeMap::from([(1, SOURCES as usize)]),
        "one answer per datagram"
    );
    assert!(
        other_after > other_before,
        "the nodes saw (and passed) each other's frames"
    );

    // Site failover: site A's backends of the site VIP fail their checks;
    // A withdraws it, the router sends it all to site B.
    c.stop_service("b1", Service::Greeter(8080));
    c.stop_service("b2", Service::Greeter(8080));
    let site_took = c
        .wait_router(VIP_SITE, &["n3"], Duration::from_secs(5))
        .unwrap();
    let seen = new_connections(&c, SocketAddr::from((VIP_SITE, 80)), 30).unwrap();
    println!("site A failed: site VIP withdrawn there {site_took:?} after its checks failed; new connections {seen:?}");
    assert_eq!(seen, BTreeMap::from([("b3".to_string(), 30)]));
    let s = c.lbctl_json("n1", &["node", "status"]);
    let site = s
        .get("addresses")
        .arr()
        .iter()
        .find(|a| a.get("address").str() == "203.0.113.20")
        .cloned()
        .unwrap();
    assert_eq!(site.get("reason").str(), "fail_open", "{site:?}");
    c.start_service("b1", Service::Greeter(8080)).unwrap();
    c.start_service("b2", Service::Greeter(8080)).unwrap();
    c.wait_router(VIP_SITE, &all, Duration::from_secs(5))
        .unwrap();

    // Drain n2: its next hop leaves, nothing breaks, new connections are
    // answered; undrain brings it back.
    let t = Instant::now();
    let out = c.lbctl_ok("n2", &["node", "drain"]);
    let drain_took = c
        .wait_router(VIP_WEB, &["n1", "n3"], Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{e:#}\n{out}"));
    let drain_total = t.elapsed();
    c.wait_router(VIP_WEB6, &["n1", "n3"], Duration::from_secs(2))
        .unwrap();
    let seen = new_connections(&c, Cluster::web(), 60).unwrap();
    assert_eq!(seen.values().sum::<usize>(), 60, "{seen:?}");
    assert!(fleet.wait_exchanges(3, FLEET - fleet.broken() as usize, Duration::from_secs(10)));
    assert_eq!(fleet.broken(), 0, "a drain breaks nothing");
    let t = Instant::now();
    c.lbctl_ok("n2", &["node", "undrain"]);
    let undrain_took = c
        .wait_router(VIP_WEB, &all, Duration::from_secs(2))
        .unwrap();
    c.wait_router(VIP_WEB6, &all, Duration::from_secs(2))
        .unwrap();
    assert!(fleet.wait_exchanges(3, FLEET, Duration::from_secs(10)));
    assert_eq!(fleet.broken(), 0, "an undrain breaks nothing");
    println!(
        "drain: next hop gone {drain_total:?} after lbctl started ({drain_took:?} after it \
         returned); undrain: back {:?}; 0 broken, 60/60 new connections answered",
        t.elapsed().max(undrain_took)
    );

    // Node death: lbd and BIRD killed, the link cut on the node's side (the
    // router sees no link event). BFD drops the next hop; the connections
    // n3 carried go to n1 and n2, which pick the same backends.
    let before = c.router_next_hops(VIP_WEB);
    assert_eq!(before.len(), 3);
    // The link first: killed with its link up, BIRD's kernel would close
    // the BGP session for it and the router would know at once.
    let t = Instant::now();
    c.cut_link("n3").unwrap();
    c.kill_lbd("n3");
    c.kill_bird("n3");
    // BFD's 600 ms against the BGP hold timer's 3 s: the bound tells them
    // apart on a loaded machine.
    let reroute = c
        .wait_router(VIP_WEB, &["n1", "n2"], Duration::from_secs(2))
        .unwrap();
    let reroute_total = t.elapsed();
    c.wait_router(VIP_WEB6, &["n1", "n2"], Duration::from_secs(2))
        .unwrap();
    thread::sleep(Duration::from_secs(3));
    let report = fleet.stop();
    let broken = report.broken();
    println!(
        "node death: router dropped n3 {reroute:?} after its link was cut ({reroute_total:?} \
         with the poll); {} of {FLEET} connections broken; longest pause of a connection {:?}; \
         connections by backend {:?}",
        broken.len(),
        report.max_gap(),
        report.by_backend()
    );
    for b in &broken {
        println!("  broken: {b:?}");
    }
    assert!(
        broken.len() * 100 <= FLEET,
        "at most 1% broken: {}",
        broken.len()
    );
    let alive: BTreeSet<IpAddr> = report
        .conns
        .iter()
        .filter(|c| c.error.is_none())
        .map(|c| c.local.ip())
        .collect();
    assert!(!alive.is_empty());
}

#[test]
fn keepalived_pair_moves_the_vip() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::build(2, 3, 20).expect("cluster");
    let b: Vec<BackendAddr> = ["b1", "b2", "b3"]
        .iter()
        .map(|n| BackendAddr(c.backend(n).v4.to_string()))
        .collect();
    let vips = vip_toml("web", "10.20.0.100", 80, "tcp", &[&b[0], &b[1], &b[2]]);
    // The same config on both; keepalived owns the address, so nothing is
    // announced through the table.
    for n in ["n1", "n2"] {
        let cfg = c.lbd_config(n, "never", &vips);
        c.start_lbd(n, &cfg).expect("lbd");
        c.wait_next_hops(n, Duration::from_secs(10)).unwrap();
    }
    c.start_keepalived("n1", 150).unwrap();
    c.start_keepalived("n2", 100).unwrap();
    // Both start as backups; the higher priority wins within a few adverts.
    let t = Instant::now();
    while !c.holds_vip("n1") || c.holds_vip("n2") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "n1 never became the only master\n{}\n{}",
            c.logs("n1", 20),
            c.logs("n2", 20)
        );
        thread::sleep(Duration::from_millis(20));
    }
    println!(
        "n1 alone holds the VIP {:?} after keepalived started",
        t.elapsed()
    );

    let to = SocketAddr::from((VIP_VRRP, 80));
    let fleet = Fleet::start(&c.client_ns, to, &c.sources(100, 20), EVERY).expect("fleet");
    assert!(fleet.wait_exchanges(3, 100, Duration::from_secs(10)));
    assert!(c.vip_packets("n1", "web") > 0);
    assert_eq!(
        c.vip_packets("n2", "web"),
        0,
        "the standby sees nothing yet"
    );
    for n in ["n1", "n2"] {
        let s = c.lbctl_json(n, &["node", "status"]);
        assert!(
            s.get("addresses")
                .arr()
                .iter()
                .all(|a| a.get("announced").as_bool() == Some(false)),
            "when = never announces nothing: {s:?}"
        );
    }

    // The primary dies: keepalived and lbd killed, its link cut.
    let n2_mac = c.node_mac("n2");
    let t = Instant::now();
    c.cut_link("n1").unwrap();
    c.kill_keepalived("n1");
    c.kill_lbd("n1");
    let mut took_vip = None;
    let mut took_mac = None;
    while took_vip.is_none() || took_mac.is_none() {
        if took_vip.is_none() && c.holds_vip("n2") {
            took_vip = Some(t.elapsed());
        }
        if took_mac.is_none() && c.router_mac_for_vip().as_deref() == Some(n2_mac.as_str()) {
            took_mac = Some(t.elapsed());
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the standby did not take over within 3 s (VIP {took_vip:?}, router {took_mac:?})\n{}",
            c.logs("n2", 20)
        );
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_secs(2));
    let report = fleet.stop();
    println!(
        "keepalived takeover: n2 holds the VIP {:?} and the router sends to it {:?} after the \
         primary died; {} of 100 connections broken, longest pause {:?}",
        took_vip.unwrap(),
        took_mac.unwrap(),
        report.broken().len(),
        report.max_gap()
    );
    for b in report.broken() {
        println!("  broken: {b:?}");
    }
    assert!(c.vip_packets("n2", "web") > 0, "the standby forwards now");
    assert!(
        report.broken().is_empty(),
        "same Maglev choice on the standby"
    );
}
