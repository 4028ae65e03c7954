//! Several lb instances on one host, as containers lay them out: every
//! namespace has an interface named `eth0`. Each instance keeps to its own
//! pins, locks and state, and every start that fails leaves the host as it
//! was.
//!
//! 1. `eth0_everywhere`: a client, a balancer and three backends, all on
//!    `eth0`, the backends running `lbd decap`: requests spread over all
//!    three; `kill -9` of lbd and a restart lose no request and keep the
//!    connection table.
//! 2. `two_balancers_on_eth0`: two balancers in two namespaces forward at
//!    once; detaching one leaves the other forwarding.
//! 3. `ip_netns_exec_is_refused`: under `ip netns exec` (a private mount
//!    namespace, no bpffs) lbd refuses, naming `nsenter`, and attaches nothing.
//! 4. `failed_first_starts_leave_nothing` / `failed_restarts_keep_the_old_state`:
//!    a bad config, a busy lock, a socket path in use, a metrics address that
//!    cannot be bound, a missing interface and pins of another layout each
//!    stop `lbd run` before it touches the data path (and `lbd decap`'s
//!    failures leave nothing pinned).
//! 5. `config_without_names_is_served`: VIPs named by their identity.
//! 6. `pins_at_the_old_path_*`: an upgrade from the layout without the
//!    namespace key adopts the pins its own interface's link holds
//!    (connection table and a live connection kept), and leaves those of
//!    another namespace's same-named interface alone.

use std::{
    collections::BTreeSet,
    fs,
    net::SocketAddr,
    os::unix::net::UnixListener,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use lb_lab::{clients::*, lab::*, netns, process::*};

fn web() -> SocketAddr {
    SocketAddr::from((VIP_WEB, 80))
}

/// An `eth0` lab with lbd serving the standard VIPs over all backends.
fn eth0_lab(n: usize) -> Lab {
    let mut lab = Lab::new_eth0(n).expect("building the eth0 lab");
    let names: Vec<String> = (1..=n).map(|i| format!("b{i}")).collect();
    let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let vips = lab.standard_vips(&names);
    lab.write_config(&lab.config_text(&vips));
    lab.start_lbd().expect("starting lbd");
    lab.wait_next_hops(Duration::from_secs(10))
        .expect("next hops resolve");
    lab
}

/// The id of the XDP program on `ifname` in `ns`, if any.
fn xdp_prog(ns: &str, ifname: &str) -> Option<u64> {
    let link = netns::ip(ns, &["-d", "link", "show", "dev", ifname]).expect("ip link show");
    let rest = link.split("prog/xdp id ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn eth0_everywhere() {
    let t0 = Instant::now();
    let mut lab = eth0_lab(3);
    for b in &lab.backends {
        assert_eq!(b.ifname, "eth0");
        assert!(
            xdp_prog(&b.ns, "eth0").is_some(),
            "decap is not attached in {}",
            b.ns
        );
        let place = pin_place(&b.ns, "eth0").unwrap();
        assert!(place.decap_dir().join("link-native").exists());
    }
    let spread = lab.spread(web(), 60).expect("requests through the VIP");
    println!("spread over the eth0 backends: {spread:?}");
    assert_eq!(spread.values().sum::<usize>(), 60);
    for b in ["b1", "b2", "b3"] {
        assert!(
            spread.get(b).copied().unwrap_or(0) > 0,
            "{b} got nothing: {spread:?}"
        );
    }

    let program = xdp_prog(&lab.lb_ns, "eth0").expect("balancer attached");
    let stream = lab.stream(&[web()]);
    thread::sleep(Duration::from_millis(500));
    let table_before = lab.conntrack().expect("the pinned connection table");
    lab.kill_lbd();
    assert_eq!(xdp_prog(&lab.lb_ns, "eth0"), Some(program), "left with lbd");
    thread::sleep(Duration::from_millis(500));
    lab.start_lbd().expect("restarting lbd");
    thread::sleep(Duration::from_millis(500));
    let report = lab_stream_stop(stream);
    let failed = report.failures();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across kill -9, first {:?}\n{}",
        failed.len(),
        report.attempts.len(),
        failed.first(),
        lab.log_tail(30)
    );
    assert!(report.ok() >= 20, "{} requests", report.ok());
    let table_after = lab.conntrack().expect("the pinned connection table");
    for (k, e) in &table_before {
        let after = table_after
            .get(k)
            .unwrap_or_else(|| panic!("{} lost across the restart", FlowKeyOrd(*k)));
        assert_eq!(after.backend_id, e.backend_id);
    }
    println!(
        "eth0_everywhere: {} requests across kill -9, 0 failed; {} table entries kept ({:?})",
        report.attempts.len(),
        table_before.len(),
        t0.elapsed()
    );
}

/// `ConnStream::stop`, named for what the test reads.
fn lab_stream_stop(s: ConnStream) -> StreamReport {
    s.stop()
}

#[test]
fn two_balancers_on_eth0() {
    let mut a = eth0_lab(1);
    let b = eth0_lab(1);
    let (pa, pb) = (a.pin_place(), b.pin_place());
    assert_ne!(pa.netns, pb.netns);
    assert_ne!(pa.balancer_dir(), pb.balancer_dir());
    let (ida, idb) = (
        xdp_prog(&a.lb_ns, "eth0").expect("a attached"),
        xdp_prog(&b.lb_ns, "eth0").expect("b attached"),
    );
    assert_ne!(ida, idb, "one program for both interfaces");
    // Both forward at once.
    for lab in [&a, &b] {
        let greet = lab.greet(web()).expect("a request through the VIP");
        assert!(greet.starts_with("b1"), "{greet}");
    }
    let stream_b = b.stream(&[web()]);

    // Stop and detach the first: the second keeps forwarding, its pins
    // and lock untouched.
    a.kill_lbd();
    let out = a.lbd_in_lb_ns(&["detach", "--interface", "eth0"]);
    assert!(out.ok(), "{out}");
    assert!(out.stdout.contains("detached from eth0"), "{out}");
    assert_eq!(xdp_prog(&a.lb_ns, "eth0"), None, "a still attached");
    assert!(!pa.interface_dir().exists());
    assert_eq!(xdp_prog(&b.lb_ns, "eth0"), Some(idb));
    assert!(pb.balancer_dir().join("link-native").exists());
    assert!(b.status().get("vips").arr().len() == 3);
    thread::sleep(Duration::from_millis(500));
    let report = stream_b.stop();
    assert!(
        report.failures().is_empty() && report.ok() >= 10,
        "b while a was detached: {} ok, failures {:?}",
        report.ok(),
        report.failures().first()
    );
    // A second detach in a's namespace finds nothing of its own.
    let out = a.lbd_in_lb_ns(&["detach", "--interface", "eth0"]);
    assert!(out.stdout.contains("nothing pinned"), "{out}");
    assert_eq!(xdp_prog(&b.lb_ns, "eth0"), Some(idb));
}

#[test]
fn ip_netns_exec_is_refused() {
    let lab = Lab::new_eth0(1).expect("building the lab");
    let vips = lab.standard_vips(&["b1"]);
    lab.write_config(&lab.config_text(&vips));
    let place = lab.pin_place();
    let exec = |args: &[&str]| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lab.lb_ns])
            .arg(lbd_bin())
            .args(args);
        run_bounded(&mut cmd, Duration::from_secs(20)).expect("ip netns exec")
    };
    let config = lab.config_path.display().to_string();
    for args in [
        vec!["run", "--config", &config],
        vec!["decap", "--interface", "eth0", "--address", "10.10.0.1"],
    ] {
        let out = exec(&args);
        println!("ip netns exec lbd {}: {out}", args[0]);
        assert!(!out.ok(), "{out}");
        assert!(
            out.stderr.contains("nsenter --net=/run/netns/NAME"),
            "the message names no fix: {out}"
        );
        assert!(!out.stdout.contains("attached"), "{out}");
        assert_eq!(xdp_prog(&lab.lb_ns, "eth0"), None);
        assert!(!place.interface_dir().exists() && !place.decap_dir().exists());
    }
    // The fix works, and what it pins outlives the process.
    let out = lab.lbd_in_lb_ns(&["decap", "--interface", "eth0", "--address", "10.10.0.1"]);
    assert!(out.ok(), "{out}");
    thread::sleep(Duration::from_millis(200));
    assert!(
        xdp_prog(&lab.lb_ns, "eth0").is_some(),
        "decap gone after exit"
    );
    assert!(place.decap_dir().join("link-native").exists());
}

/// One way for a start to fail: what to do before it, the config to start
/// with, what the error must say, and what to undo after.
struct Failure {
    name: &'static str,
    config: String,
    expect: String,
    /// Holds what makes the start fail; dropped with the failure.
    _guard: Option<Box<dyn std::any::Any>>,
}

/// How many ways to fail [`failure`] knows.
const FAILURES: usize = 6;

/// Start-up failure `i` of those lbd can have, set up for `lab` (its guard
/// holds what makes it fail until dropped).
fn failure(lab: &Lab, good: &str, i: usize) -> Failure {
    let place = lab.pin_place();
    match i {
        0 => Failure {
            name: "bad config",
            config: format!("{good}\n[[vip]]\nname = \"bad\"\naddress = \"not an address\"\n"),
            expect: "failing.toml:".into(),
            _guard: None,
        },
        1 => {
            let lock =
                lb::daemon::lock::Lock::interface(Path::new(RUN_DIR), place.netns, &lab.lb_if)
                    .expect("taking the interface lock");
            Failure {
                name: "busy lock",
                config: good.into(),
                expect: "another lbd is already running for interface".into(),
                _guard: Some(Box::new(lock)),
            }
        }
        2 => {
            let busy_socket = lab.dir.join("busy.sock");
            let _ = fs::remove_file(&busy_socket);
            let listener = UnixListener::bind(&busy_socket).expect("binding a socket");
            Failure {
                name: "socket path in use",
                config: good.replace(
                    &format!("control_socket = \"{}\"", lab.socket.display()),
                    &format!("control_socket = \"{}\"", busy_socket.display()),
                ),
                expect: "is in use by a running lbd".into(),
                _guard: Some(Box::new(listener)),
            }
        }
        3 => Failure {
            name: "metrics address not bindable",
            config: good.replace("127.0.0.1:9469", "192.0.2.99:9469"),
            expect: "metrics_listen 192.0.2.99:9469".into(),
            _guard: None,
        },
        4 => Failure {
            name: "interface missing",
            config: good.replace(
                &format!("interface = \"{}\"", lab.lb_if),
                "interface = \"nosuch0\"",
            ),
            expect: "interface nosuch0 does not exist".into(),
            _guard: None,
        },
        _ => {
            let other = place.interface_dir().join("v0");
            fs::create_dir_all(&other).expect("a directory of another layout");
            Failure {
                name: "pins of another layout",
                config: good.into(),
                expect: "another layout (v0)".into(),
                _guard: Some(Box::new(RemoveDir(other))),
            }
        }
    }
}

/// Removes a directory tree when dropped.
struct RemoveTree(std::path::PathBuf);

impl Drop for RemoveTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Removes a directory when dropped.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// `lbd run` with `config`, which must fail at start.
fn failed_start(lab: &Lab, f: &Failure) -> Output {
    let path = lab.dir.join("failing.toml");
    fs::write(&path, &f.config).unwrap();
    let out = lab.lbd_in_lb_ns(&["run", "--config", &path.display().to_string()]);
    assert!(!out.ok(), "{}: lbd started: {out}", f.name);
    assert!(
        out.stderr.contains(&f.expect),
        "{}: expected {:?}: {out}",
        f.name,
        f.expect
    );
    out
}

#[test]
fn failed_first_starts_leave_nothing() {
    let lab = Lab::new(1).expect("building the lab");
    let good = lab.config_text(&lab.standard_vips(&["b1"]));
    lab.write_config(&good);
    let place = lab.pin_place();
    for f in (0..FAILURES).map(|i| failure(&lab, &good, i)) {
        failed_start(&lab, &f);
        assert_eq!(
            xdp_prog(&lab.lb_ns, &lab.lb_if),
            None,
            "{}: attached",
            f.name
        );
        let left: BTreeSet<String> = fs::read_dir(place.interface_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let expected: BTreeSet<String> = if f.name == "pins of another layout" {
            ["v0".to_string()].into()
        } else {
            BTreeSet::new()
        };
        assert_eq!(left, expected, "{}: pinned", f.name);
        assert!(!lab.socket.exists(), "{}: socket left", f.name);
        assert!(
            !lab.state_dir.join("state.json").exists(),
            "{}: state written",
            f.name
        );
        if f.name != "busy lock" {
            let lock = lb::daemon::lock::lock_path(Path::new(RUN_DIR), place.netns, &lab.lb_if);
            assert!(!lock.exists(), "{}: lock file left", f.name);
        }
        if f.name == "socket path in use" {
            assert!(
                lab.dir.join("busy.sock").exists(),
                "another's socket removed"
            );
        }
        println!(
            "first start, {}: refused, nothing attached or pinned",
            f.name
        );
    }
}

#[test]
fn failed_restarts_keep_the_old_state() {
    let mut lab = Lab::new(1).expect("building the lab");
    let good = lab.config_text(&lab.standard_vips(&["b1"]));
    lab.write_config(&good);
    lab.start_lbd().expect("starting lbd");
    lab.wait_next_hops(Duration::from_secs(10)).unwrap();
    let program = xdp_prog(&lab.lb_ns, &lab.lb_if).expect("attached");
    lab.greet(web()).expect("serving");
    let before = lab.conntrack().unwrap();
    lab.kill_lbd();
    let maps: BTreeSet<String> = fs::read_dir(lab.pin_dir().join("maps"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for f in (0..FAILURES).map(|i| failure(&lab, &good, i)) {
        failed_start(&lab, &f);
        assert_eq!(
            xdp_prog(&lab.lb_ns, &lab.lb_if),
            Some(program),
            "{}: the old program was replaced",
            f.name
        );
        let greet = lab.greet(web());
        assert!(
            greet.is_ok(),
            "{}: the VIP stopped answering: {greet:?}",
            f.name
        );
        let now: BTreeSet<String> = fs::read_dir(lab.pin_dir().join("maps"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(now, maps, "{}: pins changed", f.name);
        let table = lab.conntrack().unwrap();
        for (k, e) in &before {
            assert_eq!(table.get(k).map(|x| x.backend_id), Some(e.backend_id));
        }
        println!(
            "restart, {}: refused, old program {program} still forwarding",
            f.name
        );
    }
    lab.start_lbd().expect("a good restart after all that");
    lab.greet(web()).expect("serving after the good restart");
}

#[test]
fn config_without_names_is_served() {
    let mut lab = Lab::new(2).expect("building the lab");
    let text: String = lab
        .config_text(&lab.standard_vips(&["b1", "b2"]))
        .lines()
        .filter(|l| !l.starts_with("name = "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!text.contains("name ="));
    lab.write_config(&text);
    lab.start_lbd().expect("lbd with a nameless config");
    lab.wait_next_hops(Duration::from_secs(10)).unwrap();
    let spread = lab.spread(web(), 20).expect("served");
    assert_eq!(spread.values().sum::<usize>(), 20);
    let status = lab.status();
    let names: Vec<String> = status
        .get("vips")
        .arr()
        .iter()
        .map(|v| v.get("name").str().to_string())
        .collect();
    assert!(
        names.contains(&"10.100.0.1:80/tcp".to_string()),
        "{names:?}"
    );
    // The identity works wherever a name does.
    let b1 = lab.backend("b1").v4.to_string();
    lab.lbctl_ok(&["backend", "drain", "10.100.0.1:80/tcp", &b1]);
    let text = lab.lbctl_ok(&["status"]);
    assert!(text.contains("10.100.0.1:80/tcp"), "{text}");
}

/// Moves a lab's balancer pins to where versions before the namespace key
/// kept them (`/sys/fs/bpf/lb/<interface>`), as an upgrade finds them.
fn move_to_legacy(lab: &Lab) -> std::path::PathBuf {
    let place = lab.pin_place();
    let legacy = place.legacy_balancer_dir();
    assert!(!legacy.exists(), "{} exists already", legacy.display());
    fs::rename(place.interface_dir(), &legacy).expect("moving the pins");
    legacy
}

#[test]
fn pins_at_the_old_path_are_adopted_when_they_are_ours() {
    let mut lab = Lab::new(1).expect("building the lab");
    let good = lab.config_text(&lab.standard_vips(&["b1"]));
    lab.write_config(&good);
    lab.start_lbd().expect("starting lbd");
    lab.wait_next_hops(Duration::from_secs(10)).unwrap();
    let long = lab.long_lived(web(), Duration::from_millis(50)).unwrap();
    thread::sleep(Duration::from_millis(300));
    let before = lab.conntrack().unwrap();
    assert!(!before.is_empty());
    lab.kill_lbd();
    let legacy = move_to_legacy(&lab);
    lab.start_lbd().expect("lbd over pins at the old path");
    let log = fs::read_to_string(&lab.log_path).unwrap();
    assert!(
        log.contains("took over the balancer pins"),
        "{}",
        lab.log_tail(20)
    );
    assert!(log.contains("adopted pinned maps"), "{}", lab.log_tail(20));
    assert!(!legacy.exists(), "the old path is still there");
    let after = lab.conntrack().unwrap();
    for (k, e) in &before {
        assert_eq!(
            after.get(k).map(|x| x.backend_id),
            Some(e.backend_id),
            "entry lost"
        );
    }
    thread::sleep(Duration::from_millis(300));
    let r = long.stop();
    assert!(
        r.error.is_none(),
        "the connection broke across the upgrade: {r:?}"
    );
}

#[test]
fn pins_at_the_old_path_of_another_namespace_are_left_alone() {
    let mut a = eth0_lab(1);
    let mut b = eth0_lab(1);
    let a_prog = xdp_prog(&a.lb_ns, "eth0").unwrap();
    a.kill_lbd();
    let legacy = move_to_legacy(&a);
    // Shared by every namespace: removed even if the test fails midway.
    let _cleanup = RemoveTree(legacy.clone());
    // b's restart finds pins for an `eth0` at the old path, but their link
    // drives a's interface: it leaves them, and a keeps forwarding.
    b.kill_lbd();
    b.start_lbd().expect("restarting b");
    let log = fs::read_to_string(&b.log_path).unwrap();
    assert!(
        log.contains("left the balancer pins at the pre-namespace path alone"),
        "{}",
        b.log_tail(20)
    );
    assert!(legacy.exists());
    assert_eq!(xdp_prog(&a.lb_ns, "eth0"), Some(a_prog));
    a.greet(web()).expect("a forwards on its old pins");
    b.greet(web()).expect("b forwards");
    // a's own lbd takes them back.
    a.start_lbd().expect("restarting a");
    assert!(!legacy.exists());
    a.greet(web()).expect("a after taking its pins over");
}
