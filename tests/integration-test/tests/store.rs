//! One desired state for the cluster, in a real three-member etcd (see
//! `lb_lab::cluster::etcd`): three nodes behind ECMP (BIRD, as in
//! `cluster.rs`) take their VIPs from the store.
//!
//! [`three_nodes_share_one_store`]: an import through one node reaches all
//! three, with the same table checksums; a change through lbctl on any node
//! is applied by all; two racing changes: one applied, the other refused
//! with a retry message, never merged; a node cut off from the store while
//! 300 long-lived connections run keeps forwarding and announcing, breaks
//! nothing, says "unreachable" in status and metrics, and catches up when
//! its link returns; restarted on its pinned maps while cut off, it goes on
//! announcing; started cold, it forwards its persisted revision and
//! announces nothing until it has read the store. [`a_node_reaches_a_tls_store_with_its_client_certificate`]:
//! `[store] tls_*` against an etcd that requires client certificates.
//!
//! Times are printed and bounded only loosely: speed is the bench's
//! business.

use std::{
    collections::BTreeSet,
    fs, thread,
    time::{Duration, Instant},
};

use lb_lab::{
    cluster::{etcd, *},
    status::{backends_of, vip_of, Json},
};

/// One cluster at a time: two would share the two CPUs with their etcd
/// and BFD timers.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const FLEET: usize = 300;
const SOURCES: u8 = 100;
const EVERY: Duration = Duration::from_millis(100);
const NODES: [&str; 3] = ["n1", "n2", "n3"];

fn store_of(c: &Cluster, node: &str) -> Json {
    c.lbctl_json(node, &["status"]).get("store").clone()
}

fn revision_of(c: &Cluster, node: &str) -> i64 {
    store_of(c, node)
        .get("applied_revision")
        .as_f64()
        .unwrap_or(-1.0) as i64
}

/// Waits until every node in `nodes` has applied `revision` (or later);
/// how long that took.
fn wait_applied(c: &Cluster, nodes: &[&str], revision: i64, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let revs: Vec<i64> = nodes.iter().map(|n| revision_of(c, n)).collect();
        if revs.iter().all(|r| *r >= revision) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "nodes {nodes:?} at revisions {revs:?}, want {revision}, after {timeout:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// The desired state's revision, as the store says (`lbctl store export`).
fn store_revision(c: &Cluster, node: &str) -> i64 {
    let out = c.lbctl_ok(node, &["store", "export"]);
    Json::parse(&out).unwrap().get("revision").as_f64().unwrap() as i64
}

fn checksums(c: &Cluster, node: &str) -> Vec<String> {
    let s = c.lbctl_json(node, &["status"]);
    s.get("vips")
        .arr()
        .iter()
        .map(|v| format!("{} {}", v.get("name").str(), v.get("table_checksum").str()))
        .collect()
}

fn weight_of(c: &Cluster, node: &str, vip: &str, backend: &str) -> u64 {
    let s = c.lbctl_json(node, &["status"]);
    backends_of(&s, vip).get(backend).map_or(0, |b| b.0)
}

fn vips_file(c: &Cluster) -> String {
    let b: Vec<String> = ["b1", "b2", "b3"]
        .iter()
        .map(|n| c.backend(n).v4.to_string())
        .collect();
    format!(
        "[[vip]]\nname = \"web\"\naddress = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\n\
         backends = [{{ address = \"{0}\" }}, {{ address = \"{1}\" }}, {{ address = \"{2}\" }}]\n\
         \n[[vip]]\nname = \"api\"\naddress = \"203.0.113.20\"\nport = 80\nprotocol = \"tcp\"\n\
         backends = [{{ address = \"{0}\" }}, {{ address = \"{1}\" }}]\n\
         [vip.health]\nkind = \"tcp\"\nport = 8080\ninterval = \"200ms\"\ntimeout = \"100ms\"\n\
         rise = 1\nfall = 2\n\
         \n[[vip]]\nname = \"reg\"\naddress = \"203.0.113.40\"\nport = 80\nprotocol = \"tcp\"\n\
         backends_from = {{ registered = true }}\n",
        b[0], b[1], b[2]
    )
}

#[test]
fn three_nodes_share_one_store() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        etcd::installed(),
        "etcd is not installed: run `cargo xtask setup`"
    );
    let mut c = Cluster::build(3, 3, SOURCES).expect("cluster");
    c.start_etcd(3).expect("etcd");
    c.start_router_bird().expect("router BIRD");
    for n in NODES {
        c.start_bird(n).expect("node BIRD");
    }
    for n in NODES {
        let cfg = c.lbd_config(n, "healthy", "") + &c.store_toml(n);
        c.start_lbd(n, &cfg).expect("lbd");
    }
    // An empty store: every node reads it (revision 0) and holds no VIP.
    for n in NODES {
        let start = Instant::now();
        while !store_of(&c, n).get("read").as_bool().unwrap_or(false) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{n} never read the store"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    // A config file with VIPs beside [store] is refused, and says where
    // they go instead.
    let bad = c.lbd_config("n1", "healthy", &vips_file(&c)) + &c.store_toml("n1");
    let path = c.dir.join("bad.toml");
    fs::write(&path, bad).unwrap();
    let out = lb_lab::process::run_bounded(
        std::process::Command::new(lb_lab::process::lbd_bin())
            .arg("check-config")
            .arg("--config")
            .arg(&path),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(
        !out.ok() && out.stderr.contains("lbctl store import"),
        "VIPs beside [store] are refused: {out}"
    );

    // Import through n1: a dry run writes nothing, the import reaches all.
    let file = c.dir.join("vips.toml");
    fs::write(&file, vips_file(&c)).unwrap();
    let file = file.to_str().unwrap();
    let dry = c.lbctl_ok("n1", &["store", "import", file, "--dry-run"]);
    assert!(
        dry.contains("+ vip 203.0.113.10:80/tcp (web)") && dry.contains("Dry run"),
        "{dry}"
    );
    assert_eq!(store_revision(&c, "n2"), 0, "a dry run writes nothing");
    let t = Instant::now();
    let out = c.lbctl_ok("n1", &["store", "import", file]);
    let rev = store_revision(&c, "n3");
    assert!(out.contains(&format!("revision {rev}")), "{out}");
    let took = wait_applied(&c, &NODES, rev, Duration::from_secs(5));
    println!("import: revision {rev} applied on all three nodes {:?} after lbctl started ({took:?} after it answered)", t.elapsed());
    let again = c.lbctl_ok("n2", &["store", "import", file]);
    assert!(again.contains("No changes"), "{again}");

    for n in NODES {
        c.wait_next_hops(n, Duration::from_secs(10)).unwrap();
    }
    c.wait_router(VIP_WEB, &NODES, Duration::from_secs(10))
        .unwrap();
    // The api VIP's backends start down, checked, until they pass.
    for b in ["b1", "b2"] {
        wait_api_health(
            &c,
            &c.backend(b).v4.to_string(),
            "up",
            Duration::from_secs(10),
        );
    }
    let sums: Vec<Vec<String>> = NODES.iter().map(|n| checksums(&c, n)).collect();
    assert!(
        sums.iter().all(|s| *s == sums[0]),
        "same tables everywhere: {sums:?}"
    );

    // A change through lbctl on n2 is applied by all three.
    let b3 = c.backend("b3").v4.to_string();
    let t = Instant::now();
    let out = c.lbctl_ok("n2", &["backend", "set", "web", &b3, "--weight", "50"]);
    assert!(out.contains("applied on this node"), "{out}");
    let answered = t.elapsed();
    let rev = store_revision(&c, "n1");
    let all_took = wait_applied(&c, &NODES, rev, Duration::from_secs(5));
    println!(
        "change on n2: lbctl answered {answered:?} after it started (applied on n2); all three \
         at revision {rev} {:?} after it started",
        t.elapsed()
    );
    let _ = all_took;
    for n in NODES {
        assert_eq!(weight_of(&c, n, "web", &b3), 50, "on {n}");
    }
    let sums: Vec<Vec<String>> = NODES.iter().map(|n| checksums(&c, n)).collect();
    assert!(
        sums.iter().all(|s| *s == sums[0]),
        "same tables everywhere: {sums:?}"
    );

    // The cluster's view: three current nodes, no drift.
    let cluster = c.lbctl_ok("n3", &["cluster", "status"]);
    println!("{cluster}");
    let view = c.lbctl_json("n3", &["cluster", "status"]);
    let current: Vec<(String, bool)> = view
        .get("nodes")
        .arr()
        .iter()
        .map(|n| {
            (
                n.get("report").get("node").str().to_string(),
                n.get("current").as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        current,
        NODES
            .iter()
            .map(|n| (n.to_string(), true))
            .collect::<Vec<_>>(),
        "{cluster}"
    );
    assert_eq!(view.get("bug").as_bool(), Some(false), "{cluster}");

    quorum_health(&c);
    registration(&c);
    racing_changes(&c, &b3);
    partition(&mut c, &b3);
    cold_start_without_the_store(&mut c);
    a_node_gone_for_good(&mut c);
}

/// n3 stops for good: once its lease expires `cluster status` lists it as
/// missing, until it is forgotten; a live node cannot be forgotten.
fn a_node_gone_for_good(c: &mut Cluster) {
    c.kill_lbd("n3");
    let start = Instant::now();
    let missing = |c: &Cluster| -> Vec<String> {
        c.lbctl_json("n1", &["cluster", "status"])
            .get("missing")
            .arr()
            .iter()
            .map(|m| m.str().to_string())
            .collect()
    };
    while missing(c) != ["n3"] {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "n3 never missing"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let took = start.elapsed();
    let text = c.lbctl_ok("n1", &["cluster", "status"]);
    assert!(text.contains("MISSING n3"), "{text}");
    let alive = c.lbctl("n1", &["cluster", "forget", "n2"]);
    assert!(
        !alive.ok() && alive.stderr.contains("still reports"),
        "{alive}"
    );
    c.lbctl_ok("n1", &["cluster", "forget", "n3"]);
    assert!(missing(c).is_empty());
    println!(
        "a node gone: listed as missing {took:?} after it stopped (lease 10s), then forgotten"
    );
}

/// Each node's view of `backend` of the api VIP ("up" or "down").
fn api_health(c: &Cluster, backend: &str) -> Vec<String> {
    NODES
        .iter()
        .map(|n| {
            let s = c.lbctl_json(n, &["status"]);
            vip_of(&s, "api")
                .get("backends")
                .arr()
                .iter()
                .find(|b| b.get("addr").str() == backend)
                .map(|b| b.get("health").str().to_string())
                .unwrap_or_default()
        })
        .collect()
}

fn wait_api_health(c: &Cluster, backend: &str, want: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let h = api_health(c, backend);
        if h.iter().all(|s| s == want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{backend} on the nodes: {h:?}, want {want}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Drops the node's health probes to `backend`'s port 8080 (its traffic,
/// forwarded by XDP, never meets the node's netfilter).
fn block_checks(c: &Cluster, node: &str, backend: &str, on: bool) {
    let ns = &c.node(node).ns;
    let nft = |args: &[&str]| {
        let mut cmd = vec!["nft"];
        cmd.extend_from_slice(args);
        lb_lab::netns::exec(ns, &cmd).expect("nft in the node's namespace");
    };
    if on {
        nft(&["add", "table", "inet", "lbtest"]);
        nft(&[
            "add",
            "chain",
            "inet",
            "lbtest",
            "out",
            "{ type filter hook output priority 0 ; }",
        ]);
        nft(&[
            "add", "rule", "inet", "lbtest", "out", "ip", "daddr", backend, "tcp", "dport", "8080",
            "drop",
        ]);
    } else {
        nft(&["delete", "table", "inet", "lbtest"]);
    }
}

/// health_decision = "quorum" (the default with a store): one node whose
/// path to a backend fails does not take it out of anyone's table; a
/// majority does, of every table.
fn quorum_health(c: &Cluster) {
    let b2 = c.backend("b2").v4.to_string();
    wait_api_health(c, &b2, "up", Duration::from_secs(10));
    block_checks(c, "n1", &b2, true);
    let key = format!("203.0.113.20:80/tcp {b2}");
    let start = Instant::now();
    loop {
        let view = c.lbctl_json("n2", &["cluster", "status"]);
        let n1_sees = view.get("nodes").arr().iter().any(|n| {
            n.get("report").get("node").str() == "n1"
                && n.get("report")
                    .get("observed_down")
                    .arr()
                    .iter()
                    .any(|k| k.str() == key)
        });
        if n1_sees {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "n1 never saw {b2} down"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let one_view = start.elapsed();
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        api_health(c, &b2),
        ["up", "up", "up"],
        "one node of three: it stays"
    );
    let sums: Vec<Vec<String>> = NODES.iter().map(|n| checksums(c, n)).collect();
    assert!(sums.iter().all(|s| *s == sums[0]), "same tables: {sums:?}");
    let cluster = c.lbctl_ok("n3", &["cluster", "status"]);
    assert!(!cluster.contains("BUG"), "{cluster}");

    block_checks(c, "n2", &b2, true);
    let majority = wait_api_health(c, &b2, "down", Duration::from_secs(10));
    let sums: Vec<Vec<String>> = NODES.iter().map(|n| checksums(c, n)).collect();
    assert!(sums.iter().all(|s| *s == sums[0]), "same tables: {sums:?}");
    block_checks(c, "n1", &b2, false);
    block_checks(c, "n2", &b2, false);
    let back = wait_api_health(c, &b2, "up", Duration::from_secs(10));
    println!(
        "quorum health: n1 alone saw {b2} down {one_view:?} after its checks were blocked, and \
         it stayed in all three tables; with n2 too it left all three {majority:?} later (same \
         checksums); back in {back:?} after the paths returned"
    );
}

/// The `reg` VIP's backends on a node: address → (weight, drained).
fn registered_on(c: &Cluster, node: &str) -> std::collections::BTreeMap<String, (u64, bool)> {
    backends_of(&c.lbctl_json(node, &["status"]), "reg")
}

fn wait_registered(
    c: &Cluster,
    want: impl Fn(Option<&(u64, bool)>) -> bool,
    b: &str,
    what: &str,
) -> Duration {
    let start = Instant::now();
    loop {
        let seen: Vec<_> = NODES.iter().map(|n| registered_on(c, n)).collect();
        if seen.iter().all(|m| want(m.get(b))) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: {seen:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A backend registered by `lbctl backend register` (its lease kept alive
/// while it runs) joins the VIP on every node; stopped, its lease expires
/// and it drains everywhere.
fn registration(c: &Cluster) {
    let b3 = c.backend("b3").v4.to_string();
    let mut heartbeat = std::process::Command::new(lb_lab::process::lbctl_bin())
        .arg("--socket")
        .arg(c.node("n1").socket())
        .args([
            "backend", "register", "reg", &b3, "--weight", "30", "--ttl", "2s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("lbctl backend register");
    let joined = wait_registered(c, |b| b == Some(&(30, false)), &b3, "registered");
    // Renewed while it runs: still there after several TTLs.
    thread::sleep(Duration::from_secs(5));
    assert!(
        NODES
            .iter()
            .all(|n| registered_on(c, n).get(&b3) == Some(&(30, false))),
        "the heartbeat keeps it"
    );
    let _ = heartbeat.kill();
    let _ = heartbeat.wait();
    let expired = wait_registered(
        c,
        |b| b.is_some_and(|(_, drained)| *drained),
        &b3,
        "lease expiry",
    );
    println!(
        "registration: a registered backend joined all three nodes {joined:?} after lbctl \
         started; its heartbeat stopped, it drained everywhere {expired:?} later (TTL 2s)"
    );
}

/// Two operators at once, on two nodes, changing one backend's weight:
/// each round, either one wins and the other is told to retry, or they did
/// not overlap and both went through in turn; never a silent merge.
fn racing_changes(c: &Cluster, b3: &str) {
    let mut conflicts = 0;
    let mut rounds = 0;
    while conflicts == 0 && rounds < 30 {
        rounds += 1;
        let barrier = std::sync::Barrier::new(2);
        let (w1, w2) = (format!("{}", 10 + rounds), format!("{}", 60 + rounds));
        let (a, b) = thread::scope(|s| {
            let a = s.spawn(|| {
                barrier.wait();
                c.lbctl("n1", &["backend", "set", "web", b3, "--weight", &w1])
            });
            let b = s.spawn(|| {
                barrier.wait();
                c.lbctl("n2", &["backend", "set", "web", b3, "--weight", &w2])
            });
            (a.join().unwrap(), b.join().unwrap())
        });
        let rev = store_revision(c, "n1");
        wait_applied(c, &NODES, rev, Duration::from_secs(5));
        let weights: BTreeSet<u64> = NODES.iter().map(|n| weight_of(c, n, "web", b3)).collect();
        assert_eq!(weights.len(), 1, "one weight everywhere: {weights:?}");
        let w = *weights.iter().next().unwrap();
        match (a.ok(), b.ok()) {
            (true, false) | (false, true) => {
                let (won, lost, want) = if a.ok() { (&a, &b, &w1) } else { (&b, &a, &w2) };
                assert!(
                    lost.stderr.contains("retry") && lost.stderr.contains("nothing was changed"),
                    "the loser is told to retry: {lost}"
                );
                assert_eq!(w.to_string(), *want, "the winner's weight: {won}");
                conflicts += 1;
                println!(
                    "racing changes (round {rounds}): one applied, the other: {}",
                    lost.stderr.trim()
                );
            }
            (true, true) => {
                assert!(
                    w.to_string() == w1 || w.to_string() == w2,
                    "one of the two, {w}"
                );
            }
            _ => panic!("both refused:\n{a}\n{b}"),
        }
    }
    assert!(conflicts > 0, "no round of {rounds} overlapped");
}

/// n3 loses its link to the store while 300 connections run through all
/// three nodes.
fn partition(c: &mut Cluster, b3: &str) {
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
    let before = revision_of(c, "n3");
    let cut = Instant::now();
    c.cut_store("n3").unwrap();
    let start = Instant::now();
    while store_of(c, "n3").get("reachable").as_bool() != Some(false) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "n3 never noticed"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let noticed = cut.elapsed();
    let status = c.lbctl_ok("n3", &["status"]);
    assert!(status.contains("UNREACHABLE since"), "{status}");
    let metrics = lb_lab::process::run_bounded(
        lb_lab::process::nsenter(&c.node("n3").ns, std::path::Path::new("curl"))
            .args(["-s", "http://127.0.0.1:9469/metrics"]),
        Duration::from_secs(5),
    )
    .map(|o| o.stdout)
    .unwrap_or_default();
    if !metrics.is_empty() {
        assert!(metrics.contains("lb_store_reachable 0"), "{metrics}");
    }

    // A change meanwhile (the api VIP: the fleet's VIP keeps its weights)
    // reaches n1 and n2; n3 keeps its revision, and says its store is gone.
    let b1 = c.backend("b1").v4.to_string();
    c.lbctl_ok("n1", &["backend", "set", "api", &b1, "--weight", "7"]);
    let rev = store_revision(c, "n1");
    wait_applied(c, &["n1", "n2"], rev, Duration::from_secs(5));
    assert_eq!(revision_of(c, "n3"), before, "n3 keeps what it has");
    let refused = c.lbctl("n3", &["backend", "set", "api", &b1, "--weight", "8"]);
    assert!(
        !refused.ok() && refused.stderr.contains("unreachable since"),
        "a change through a node cut off is refused: {refused}"
    );
    println!("through n3 while cut off: {}", refused.stderr.trim());
    // Still forwarding and announcing.
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.router_next_hops(VIP_WEB).len(),
        3,
        "n3 still announces\n{}",
        c.routing_diagnostics()
    );
    let forwarded = c.vip_packets("n3", "web");
    thread::sleep(Duration::from_millis(500));
    assert!(c.vip_packets("n3", "web") > forwarded, "n3 still forwards");

    let t = Instant::now();
    c.restore_store("n3").unwrap();
    let caught_up = wait_applied(c, &["n3"], rev, Duration::from_secs(20));
    assert_eq!(weight_of(c, "n3", "api", &b1), 7);
    let sums: Vec<Vec<String>> = NODES.iter().map(|n| checksums(c, n)).collect();
    assert!(
        sums.iter().all(|s| *s == sums[0]),
        "same tables again: {sums:?}"
    );
    assert!(fleet.wait_exchanges(3, FLEET, Duration::from_secs(10)));
    let report = fleet.stop();
    println!(
        "partition: n3 noticed {noticed:?} after its link went down; caught up {caught_up:?} \
         after it came back ({:?}); {} of {FLEET} connections broken, longest gap {:?}",
        t.elapsed(),
        report.broken().len(),
        report.max_gap()
    );
    assert!(report.broken().is_empty(), "broken: {:?}", report.broken());
    let _ = b3;
}

/// n3 restarted while its store is gone: it forwards the revision it
/// persisted, announces nothing until it has read the store, then does.
fn cold_start_without_the_store(c: &mut Cluster) {
    let rev = revision_of(c, "n3");
    let cfg = c.lbd_config("n3", "healthy", "") + &c.store_toml("n3");
    // A restart on the maps the last lbd left (kill -9, an upgrade) is
    // warm: the node was announcing a moment ago and goes on.
    c.kill_lbd("n3");
    c.cut_store("n3").unwrap();
    c.start_lbd("n3", &cfg).expect("lbd");
    let st = store_of(c, "n3");
    assert_eq!(st.get("announcing_held").as_bool(), Some(false), "{st:?}");
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.router_next_hops(VIP_WEB).len(),
        3,
        "a warm restart keeps announcing"
    );
    // A cold start (nothing pinned: a reboot) forwards the persisted
    // revision and announces nothing until it has read the store.
    c.kill_lbd("n3");
    let detach = lb_lab::process::run_bounded(
        lb_lab::process::nsenter(&c.node("n3").ns, &lb_lab::process::lbd_bin()).args([
            "detach",
            "--interface",
            "eth0",
        ]),
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(detach.ok(), "{detach}");
    c.start_lbd("n3", &cfg).expect("lbd");
    let st = store_of(c, "n3");
    assert_eq!(
        st.get("applied_revision").as_f64(),
        Some(rev as f64),
        "{st:?}"
    );
    assert_eq!(st.get("announcing_held").as_bool(), Some(true), "{st:?}");
    c.wait_router(VIP_WEB, &["n1", "n2"], Duration::from_secs(10))
        .unwrap();
    let node = c.lbctl_ok("n3", &["node", "status"]);
    assert!(node.contains("has not read the store"), "{node}");
    c.restore_store("n3").unwrap();
    let took = c
        .wait_router(VIP_WEB, &NODES, Duration::from_secs(20))
        .unwrap();
    println!("cold start without the store: announced again {took:?} after the store returned");
}

/// `[store] tls_*`: a node with a client certificate of the store's CA
/// reads and writes it over TLS; one with a certificate of another CA
/// does not get in (and says why), forwarding what it has.
#[test]
fn a_node_reaches_a_tls_store_with_its_client_certificate() {
    use lb_lab::certs;
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::build(2, 1, 1).expect("cluster");
    let pki = c.dir.join("pki");
    let ca = certs::ca(&pki, "store-ca").unwrap();
    let other = certs::ca(&pki, "other-ca").unwrap();
    let sans = etcd::member_sans(1);
    let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
    let server = certs::issue(&pki, &ca, "etcd", "etcd", &sans, "serverAuth").unwrap();
    let etcdctl = certs::issue(&pki, &ca, "etcdctl", "etcdctl", &[], "clientAuth").unwrap();
    let n1 = certs::issue(&pki, &ca, "n1", "lb-n1", &[], "clientAuth").unwrap();
    let n2 = certs::issue(&pki, &other, "n2", "lb-n2", &[], "clientAuth").unwrap();
    c.start_etcd_with(
        1,
        Some(etcd::EtcdTls {
            ca: ca.cert.clone(),
            server,
            client: etcdctl,
        }),
    )
    .expect("etcd over TLS");
    for (n, pair) in [("n1", &n1), ("n2", &n2)] {
        let cfg = c.lbd_config(n, "never", "")
            + &c.store_toml(n)
            + &format!(
                "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                ca.cert.display(),
                pair.cert.display(),
                pair.key.display()
            );
        assert!(cfg.contains("https://"), "{cfg}");
        c.start_lbd(n, &cfg).expect("lbd");
    }
    let start = Instant::now();
    while !store_of(&c, "n1").get("read").as_bool().unwrap_or(false) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "n1 never read its TLS store: {:?}",
            store_of(&c, "n1")
        );
        thread::sleep(Duration::from_millis(20));
    }
    let file = c.dir.join("vips.toml");
    let b1 = c.backend("b1").v4.to_string();
    fs::write(
        &file,
        format!(
            "[[vip]]\nname = \"web\"\naddress = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\n\
             backends = [{{ address = \"{b1}\" }}]\n"
        ),
    )
    .unwrap();
    c.lbctl_ok("n1", &["store", "import", file.to_str().unwrap()]);
    let rev = store_revision(&c, "n1");
    wait_applied(&c, &["n1"], rev, Duration::from_secs(5));
    let keys = c
        .etcdctl(&["get", "--prefix", "--keys-only", "/lb/v1/desired/"])
        .unwrap();
    assert!(
        keys.contains("/lb/v1/desired/vips/tcp/203.0.113.10/80"),
        "{keys}"
    );
    // n2's certificate is of another CA: no way in, and it says so.
    thread::sleep(Duration::from_secs(3));
    let st = store_of(&c, "n2");
    assert_eq!(st.get("read").as_bool(), Some(false), "{st:?}");
    assert_eq!(st.get("reachable").as_bool(), Some(false), "{st:?}");
    println!(
        "TLS store: n1 read and wrote it (revision {rev}); n2, with another CA's certificate: {}",
        st.get("error").str()
    );
}
