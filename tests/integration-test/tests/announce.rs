//! Announcing through lbd's routing table, with the real lbd in the lab
//! (no BGP speaker here: the cluster tests add BIRD on top):
//!
//! 1. [`routes_follow_health_drain_and_restarts`]: a host route per VIP
//!    address in table 100, protocol 108, out of lbd's interface; an
//!    address whose VIPs all fail open is withdrawn and comes back; drain
//!    withdraws everything before `lbctl` returns and survives kill -9 and
//!    a restart; kill -9 and SIGTERM leave the routes, a restarted lbd
//!    adopts them without a change; a route removed by hand is put back;
//!    metrics and the audit log see it; `lbd detach` removes lbd's routes
//!    and no other.
//!    A link that goes down takes the routes with it (the kernel's doing);
//!    they are back once it is up.
//! 2. [`a_table_in_use_is_refused_at_start`]: a table with a route lbd did
//!    not write stops lbd before it touches anything.
//! 3. [`a_new_interface_mac_is_followed`]: the balancer forwards only frames
//!    to its interface's MAC; when the MAC changes under a running lbd,
//!    frames to the new one are forwarded.

use std::{
    collections::BTreeSet,
    fs,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_lab::{lab::*, netns, servers::Service, status::*};

const TABLE: u32 = 100;

/// The three standard VIPs; `web` (10.100.0.1:80) checked on port 8080 of
/// b1 and b2, quickly.
fn config(lab: &Lab) -> String {
    let mut vips = lab.standard_vips(&["b1", "b2"]);
    let check = HealthCheck::new(
        "tcp",
        Duration::from_millis(200),
        Duration::from_millis(100),
        1,
        2,
    )
    .port(8080);
    vips[0] = vips[0].clone().with_health(check);
    format!("{}\n[announce]\ntable = {TABLE}\n", lab.config_text(&vips))
}

/// lbd's routes in the table (destinations), read with iproute2, and
/// every line as printed.
fn routes(lab: &Lab) -> (BTreeSet<String>, String) {
    routes_in(lab, TABLE)
}

fn routes_in(lab: &Lab, table: u32) -> (BTreeSet<String>, String) {
    let mut dsts = BTreeSet::new();
    let mut text = String::new();
    for family in ["-4", "-6"] {
        let out = match netns::ip(
            &lab.lb_ns,
            &[family, "-o", "route", "show", "table", &table.to_string()],
        ) {
            Ok(out) => out,
            // A family's table exists only once a route was in it.
            Err(e) if e.to_string().contains("table does not exist") => String::new(),
            Err(e) => panic!("ip route show: {e:#}"),
        };
        for line in out.lines() {
            text += line;
            text += "\n";
            if line.contains("proto 108") {
                let dst = line.split_whitespace().next().unwrap_or_default();
                dsts.insert(dst.to_string());
            }
        }
    }
    (dsts, text)
}

/// Adds (`add`) or removes (`del`) a route in lbd's table that is not
/// lbd's (protocol `static`), out of lbd's interface.
fn other_route(lab: &Lab, op: &str, dst: &str) {
    netns::ip(
        &lab.lb_ns,
        &[
            "route", op, dst, "dev", &lab.lb_if, "table", "100", "proto", "static",
        ],
    )
    .unwrap_or_else(|e| panic!("ip route {op} {dst}: {e:#}"));
}

fn set(addrs: &[&str]) -> BTreeSet<String> {
    addrs.iter().map(|s| s.to_string()).collect()
}

const ALL: [&str; 3] = ["10.100.0.1", "10.100.0.2", "fd10:100::1"];

/// Waits (bounded) until lbd's routes are exactly `want`.
fn wait_routes(lab: &Lab, want: &[&str], timeout: Duration, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (have, text) = routes(lab);
        if have == set(want) {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!(
                "{what}: table {TABLE} holds {have:?}, want {want:?} within {timeout:?}\n{text}\n{}",
                lab.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn node_status(lab: &Lab) -> Json {
    Json::parse(&lab.lbctl_ok(&["--json", "node", "status"])).expect("node status is JSON")
}

fn address<'a>(status: &'a Json, addr: &str) -> &'a Json {
    status
        .get("addresses")
        .arr()
        .iter()
        .find(|a| a.get("address").str() == addr)
        .unwrap_or_else(|| panic!("no {addr} in {status:?}"))
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn routes_follow_health_drain_and_restarts() {
    let mut lab = Lab::new(2).expect("lab");
    lab.write_config(&config(&lab));
    lab.start_lbd().expect("lbd starts");
    lab.wait_next_hops(Duration::from_secs(10))
        .expect("next hops");

    // Every VIP address, as a host route of lbd's own, out of its interface.
    let took = wait_routes(&lab, &ALL, Duration::from_secs(5), "start");
    println!("announced {ALL:?} {took:?} after lbd answered");
    let (_, text) = routes(&lab);
    for line in text.lines() {
        assert!(line.contains("proto 108"), "{line}");
        assert!(line.contains(&format!("dev {}", lab.lb_if)), "{line}");
    }
    assert!(text.contains("10.100.0.1 dev"), "a /32:\n{text}");
    assert!(text.contains("fd10:100::1 dev"), "a /128:\n{text}");
    let s = node_status(&lab);
    assert_eq!(s.get("table").as_f64(), Some(100.0));
    assert_eq!(s.get("drained").as_bool(), Some(false));
    for a in ALL {
        assert_eq!(
            address(&s, a).get("announced").as_bool(),
            Some(true),
            "{s:?}"
        );
        assert_eq!(address(&s, a).get("reason").str(), "healthy", "{s:?}");
    }
    let m = lab.scrape();
    assert_eq!(
        metric(&m, "lb_announced{address=\"10.100.0.1\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "lb_drained"), Some(0.0));

    // web's backends fail their checks: 10.100.0.1 fails open, withdrawn;
    // the others stay. They recover: announced again.
    lab.stop_service("b1", Service::Greeter(8080));
    lab.stop_service("b2", Service::Greeter(8080));
    let took = wait_routes(
        &lab,
        &["10.100.0.2", "fd10:100::1"],
        Duration::from_secs(5),
        "web fails open",
    );
    println!("withdrawn {took:?} after the checks started failing");
    assert_eq!(
        address(&node_status(&lab), "10.100.0.1")
            .get("reason")
            .str(),
        "fail_open"
    );
    lab.start_service("b1", Service::Greeter(8080)).unwrap();
    wait_routes(&lab, &ALL, Duration::from_secs(5), "b1 back");

    // Drain: withdrawn before lbctl returns; the balancer still forwards.
    let out = lab.lbctl_ok(&["node", "drain"]);
    assert!(
        out.contains("drained") && out.contains("announced none"),
        "{out}"
    );
    assert_eq!(routes(&lab).0, set(&[]), "withdrawn when lbctl returned");
    assert!(lab.greet(SocketAddr::from((VIP_WEB, 80))).is_ok());
    let s = node_status(&lab);
    assert_eq!(s.get("drained").as_bool(), Some(true));
    assert_eq!(address(&s, "10.100.0.2").get("reason").str(), "drained");
    let text = lab.lbctl_ok(&["node", "status"]);
    assert!(
        text.contains("withdrawn") && text.contains("drained"),
        "{text}"
    );
    let m = lab.scrape();
    assert_eq!(
        metric(&m, "lb_announced{address=\"10.100.0.2\"}"),
        Some(0.0)
    );
    assert_eq!(metric(&m, "lb_drained"), Some(1.0));
    let audit = fs::read_to_string(lab.state_dir.join("audit.log")).unwrap();
    assert!(audit.contains("\"op\":\"node-drain\""), "{audit}");
    assert!(audit.contains("\"action\":\"withdrawn\""), "{audit}");
    assert!(lab.lbctl_ok(&["node", "drain"]).contains("already drained"));

    // The drain survives kill -9 and a restart.
    lab.kill_lbd();
    lab.start_lbd().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(routes(&lab).0, set(&[]), "still drained after a restart");
    assert_eq!(node_status(&lab).get("drained").as_bool(), Some(true));
    let out = lab.lbctl_ok(&["node", "undrain"]);
    assert!(out.contains("undrained"), "{out}");
    assert_eq!(routes(&lab).0, set(&ALL), "announced when lbctl returned");

    // kill -9 and SIGTERM leave the routes; the next lbd adopts them.
    lab.kill_lbd();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(routes(&lab).0, set(&ALL), "routes stay after kill -9");
    lab.start_lbd().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(routes(&lab).0, set(&ALL));
    assert_eq!(
        node_status(&lab).get("changes").as_f64(),
        Some(0.0),
        "adopted, not rewritten"
    );
    lab.stop_lbd().unwrap();
    assert_eq!(routes(&lab).0, set(&ALL), "routes stay after SIGTERM");
    lab.start_lbd().unwrap();

    // A route removed by hand is put back.
    netns::ip(
        &lab.lb_ns,
        &[
            "route",
            "del",
            "10.100.0.2/32",
            "table",
            "100",
            "proto",
            "108",
        ],
    )
    .unwrap();
    let took = wait_routes(&lab, &ALL, Duration::from_secs(3), "put back");
    println!("a route removed by hand was back after {took:?}");

    // A route to a VIP address that is not lbd's is never replaced: that
    // address stays unannounced, with the reason in status, while the
    // others are announced; once the other route is gone, lbd's returns.
    lab.lbctl_ok(&["node", "drain"]);
    other_route(&lab, "add", "10.100.0.2/32");
    let out = lab.lbctl(&["node", "undrain"]);
    assert!(!out.ok(), "undrain cannot complete: {out}");
    assert!(
        out.stderr.contains("undrained (saved)")
            && out.stderr.contains("10.100.0.2/32 proto 4")
            && out.stderr.contains("not replaced"),
        "{out}"
    );
    assert_eq!(routes(&lab).0, set(&["10.100.0.1", "fd10:100::1"]));
    let s = node_status(&lab);
    assert!(s.get("error").str().contains("10.100.0.2"), "{s:?}");
    assert_eq!(
        s.get("drained").as_bool(),
        Some(false),
        "the undrain was saved"
    );
    let audit = fs::read_to_string(lab.state_dir.join("audit.log")).unwrap();
    assert!(audit.contains("accepted, not yet in effect"), "{audit}");
    other_route(&lab, "del", "10.100.0.2/32");
    wait_routes(
        &lab,
        &ALL,
        Duration::from_secs(3),
        "the other route is gone",
    );
    // The status follows once that reconcile has recorded it.
    let start = Instant::now();
    while node_status(&lab).get("error") != &Json::Null {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            node_status(&lab)
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Another table in the config: lbd's routes move there, none stay in
    // the old one (its importer would go on announcing them).
    lab.kill_lbd();
    let moved = config(&lab).replace("table = 100", "table = 101");
    lab.write_config(&moved);
    lab.start_lbd().unwrap();
    let start = Instant::now();
    while routes_in(&lab, 101).0 != set(&ALL) || !routes(&lab).0.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "table 100: {:?}, 101: {:?}",
            routes(&lab).0,
            routes_in(&lab, 101).0
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.kill_lbd();
    lab.write_config(&config(&lab));
    lab.start_lbd().unwrap();
    wait_routes(&lab, &ALL, Duration::from_secs(3), "back in table 100");
    assert!(routes_in(&lab, 101).0.is_empty());

    // A link that goes down loses its routes (the kernel removes them);
    // they are back once it is up again.
    netns::ip(&lab.lb_ns, &["link", "set", &lab.lb_if, "down"]).unwrap();
    wait_routes(&lab, &[], Duration::from_secs(3), "link down");
    netns::ip(&lab.lb_ns, &["link", "set", &lab.lb_if, "up"]).unwrap();
    let took = wait_routes(&lab, &ALL, Duration::from_secs(5), "link up again");
    println!("routes back {took:?} after the link came up");

    // detach removes lbd's routes, and only those.
    other_route(&lab, "add", "192.0.2.0/24");
    lab.kill_lbd();
    let out = lab.lbd_in_lb_ns(&["detach", "--interface", &lab.lb_if]);
    assert!(out.ok(), "{out}");
    let said = &out.stdout;
    assert!(said.contains("withdrew 10.100.0.1"), "{said}");
    let (ours, text) = routes(&lab);
    assert_eq!(ours, set(&[]), "{text}");
    assert!(
        text.contains("192.0.2.0/24"),
        "another route stays:\n{text}"
    );
}

#[test]
fn a_table_in_use_is_refused_at_start() {
    let mut lab = Lab::new(2).expect("lab");
    lab.write_config(&config(&lab));
    other_route(&lab, "add", "192.0.2.0/24");
    let out = lab.lbd_in_lb_ns(&["run", "--config", &lab.config_path.to_string_lossy()]);
    assert!(!out.ok(), "{out}");
    let err = &out.stderr;
    assert!(
        err.contains("table = 100")
            && err.contains("192.0.2.0/24")
            && err.contains("another program"),
        "{err}"
    );
    // Refused before anything was touched: nothing pinned or attached,
    // the other route still there, none of lbd's.
    assert!(
        !lab.pin_dir().exists(),
        "pins left at {}",
        lab.pin_dir().display()
    );
    let (ours, text) = routes(&lab);
    assert!(ours.is_empty() && text.contains("192.0.2.0/24"), "{text}");

    // Emptied, the table is lbd's. A second lbd in the namespace (on another
    // interface, with its own socket and state) may not share it.
    other_route(&lab, "del", "192.0.2.0/24");
    lab.start_lbd().expect("lbd starts on an empty table");
    netns::ip(
        &lab.lb_ns,
        &[
            "link",
            "add",
            "second",
            "type",
            "veth",
            "peer",
            "name",
            "second-peer",
        ],
    )
    .unwrap();
    let dir = lab.dir.join("second");
    fs::create_dir_all(&dir).unwrap();
    let second = config(&lab)
        .replace(
            &format!("interface = \"{}\"", lab.lb_if),
            "interface = \"second\"",
        )
        .replace(
            &lab.socket.display().to_string(),
            &dir.join("lbd.sock").display().to_string(),
        )
        .replace(
            &lab.state_dir.display().to_string(),
            &dir.join("state").display().to_string(),
        );
    let path = dir.join("lb.toml");
    fs::write(&path, &second).unwrap();
    let out = lab.lbd_in_lb_ns(&["run", "--config", &path.to_string_lossy()]);
    assert!(!out.ok(), "{out}");
    assert!(
        out.stderr.contains("table = 100 is used by another lbd"),
        "{}",
        out.stderr
    );
    assert!(lab.lbctl(&["status"]).ok(), "the first lbd runs on");
}

#[test]
fn a_new_interface_mac_is_followed() {
    let lab = Lab::with_lbd(1, |_| {}, |lab| lab.standard_vips(&["b1"]));
    let web = SocketAddr::from((VIP_WEB, 80));
    assert_eq!(lab.greet(web).as_deref(), Ok("b1"));
    let passed = |lab: &Lab| -> f64 {
        let m = lab.scrape();
        metric(&m, "lb_events_total{event=\"pass_other_host\"}").unwrap_or(0.0)
    };
    let before = passed(&lab);
    netns::ip(
        &lab.lb_ns,
        &[
            "link",
            "set",
            "dev",
            &lab.lb_if,
            "address",
            "02:00:00:00:77:01",
        ],
    )
    .unwrap();
    // The client learns the new MAC at once, as from a gratuitous ARP.
    netns::ip(&lab.client_ns, &["neigh", "flush", "all"]).unwrap();
    let start = Instant::now();
    loop {
        match lab.greet(web) {
            Ok(b) if b == "b1" => break,
            other => assert!(
                start.elapsed() < Duration::from_secs(5),
                "after the MAC change: {other:?}\n{}",
                lab.log_tail(20)
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "forwarding to the new MAC {:?} after the change",
        start.elapsed()
    );
    assert!(
        lab.log_tail(20).contains("MAC changed"),
        "{}",
        lab.log_tail(20)
    );
    // Frames to the new MAC sent before lbd noticed are the only ones passed.
    let after = passed(&lab);
    assert!(after - before < 20.0, "{before} -> {after}");
}
