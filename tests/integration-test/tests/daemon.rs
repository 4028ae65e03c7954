//! Acceptance tests of the real `lbd` and `lbctl` binaries: a one-armed
//! balancer on a switched segment in network namespaces, with real TCP
//! connections from a client to backends (see `lb_lab::lab` for the
//! lab).
//!
//! 1. [`bring_up`]: a config with three VIPs comes up natively; `lbctl
//!    status` (table and JSON) says so; connections to every VIP are
//!    answered and spread; a second `lbd run` and an `lbd detach` for the
//!    running interface are refused.
//! 2. [`changes_through_lbctl`]: drain, undrain, weight, delete and add
//!    (and a VIP added and removed) steer new connections as asked while
//!    established ones stay put.
//! 3. [`kill_and_restart`]: `kill -9` of lbd under a stream of new
//!    connections loses none; the restarted lbd adopts the connection table
//!    (compared entry by entry) and the runtime state.
//! 4. [`bad_inputs_change_nothing`]: refused configs, refused lbctl
//!    requests, garbled socket requests and non-root clients leave the
//!    running state and state.json alone; `reload --dry-run` only shows.
//! 5. [`pinned_state_and_locks`]: pinned maps of an older layout are
//!    refused with advice; `lbd detach` clears them.
//!
//! Two more pin down lbd bugs found while writing these (now fixed):
//! [`new_backend_is_reachable_at_once`] and
//! [`a_running_daemons_socket_is_not_taken_over`].
//!
//! Needs root and the binaries (`cargo xtask build`). Run:
//! `cargo test -p integration-test --test daemon`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use lb_lab::{clients::*, lab::*, netns, process::*, status::*};

fn web() -> SocketAddr {
    SocketAddr::from((VIP_WEB, 80))
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::from((VIP_ANY, port))
}

fn web6() -> SocketAddr {
    SocketAddr::from((VIP_WEB6, 80))
}

const WEB: &str = "10.100.0.1:80/tcp";
const ANY: &str = "10.100.0.2/tcp";
const WEB6: &str = "[fd10:100::1]:80/tcp";
/// Connections per check of where new connections go.
const TRIES: usize = 60;

/// A lab with backends b1..bn running lbd with the three standard VIPs
/// over `members`, next hops resolved.
fn lab_with_lbd(n_backends: usize, members: &[&str]) -> Lab {
    Lab::with_lbd(n_backends, |_| {}, |lab| lab.standard_vips(members))
}

fn v4(lab: &Lab, name: &str) -> String {
    lab.backend(name).v4.to_string()
}

fn v6(lab: &Lab, name: &str) -> String {
    lab.backend(name).v6.to_string()
}

/// `TRIES` new connections to `to`, all of which must be answered.
fn spread(lab: &Lab, to: SocketAddr, what: &str) -> BTreeMap<String, usize> {
    lab.spread(to, TRIES)
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}\n{}", lab.diagnostics(), lab.log_tail(30)))
}

// ---------------------------------------------------------------- 1

#[test]
fn bring_up() {
    let t0 = Instant::now();
    let mut lab = Lab::new(3).expect("building the lab");
    let vips = lab.standard_vips(&["b1", "b2", "b3"]);
    lab.write_config(&lab.config_text(&vips));

    let out = run_bounded(
        Command::new(lbd_bin())
            .args(["check-config", "--config"])
            .arg(&lab.config_path),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(out.ok(), "check-config of a good file: {out}");
    assert!(
        out.stdout.contains("ok (3 VIPs, 9 backends)"),
        "check-config: {out}"
    );

    lab.start_lbd().expect("starting lbd");
    let status = lab
        .wait_next_hops(Duration::from_secs(10))
        .expect("next hops resolve");
    println!("lbd up and next hops resolved at {:?}", t0.elapsed());

    // `lbctl --json status`.
    assert_eq!(status.get("interface").str(), lab.lb_if);
    assert_eq!(status.get("xdp_mode").str(), "native");
    assert_eq!(
        status.get("pin_dir").str(),
        lab.pin_dir().display().to_string()
    );
    let program_id = status.get("program_id").as_f64().unwrap_or(0.0) as u64;
    assert!(program_id > 0, "program id: {status:?}");
    let listed: BTreeSet<&str> = status
        .get("vips")
        .arr()
        .iter()
        .map(|v| v.get("vip").str())
        .collect();
    assert_eq!(listed, BTreeSet::from([WEB, ANY, WEB6]));
    for (vip, family_v6) in [(WEB, false), (ANY, false), (WEB6, true)] {
        let want: BTreeMap<String, (u64, bool)> = ["b1", "b2", "b3"]
            .iter()
            .map(|b| {
                let addr = if family_v6 { v6(&lab, b) } else { v4(&lab, b) };
                (addr, (100, false))
            })
            .collect();
        assert_eq!(backends_of(&status, vip), want, "{vip}");
    }
    for v in status.get("vips").arr() {
        assert_eq!(v.get("forwarding").str(), "ipip");
        assert_eq!(v.get("stateless").as_bool(), Some(false));
        for b in v.get("backends").arr() {
            assert_eq!(b.get("next_hop").as_bool(), Some(true), "{v:?}");
        }
    }

    // The table, as an operator reads it.
    let text = lab.lbctl_ok(&["status"]);
    println!("{text}");
    let has_line = |words: &[&str]| {
        text.lines()
            .any(|l| words.iter().all(|w| l.split_whitespace().any(|x| x == *w)))
    };
    assert!(has_line(&["Interface:", &lab.lb_if]), "{text}");
    assert!(has_line(&["XDP", "mode:", "native"]), "{text}");
    assert!(
        has_line(&["Program", "id:", &program_id.to_string()]),
        "{text}"
    );
    for header in [
        "VIP 10.100.0.1:80/tcp (web)",
        "VIP 10.100.0.2/tcp (any)",
        "VIP [fd10:100::1]:80/tcp (web6)",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(header)),
            "{header}:\n{text}"
        );
    }
    for b in ["b1", "b2", "b3"] {
        for addr in [v4(&lab, b), v6(&lab, b)] {
            assert!(has_line(&[&addr, "100", "resolved"]), "{addr}:\n{text}");
        }
    }

    // The kernel agrees: lbd's program, natively, and pinned.
    let link = netns::ip(&lab.lb_ns, &["-d", "link", "show", "dev", &lab.lb_if]).unwrap();
    assert!(
        link.contains(&format!("prog/xdp id {program_id} ")) && !link.contains("xdpgeneric"),
        "{link}"
    );
    for pinned in ["link-native", "prog", "maps/CONNTRACK", "maps/MAGLEV"] {
        assert!(lab.pin_dir().join(pinned).exists(), "{pinned} not pinned");
    }

    // Real connections to every VIP are answered, by more than one backend.
    for (to, what) in [
        (web(), "web"),
        (any(80), "any, port 80"),
        (any(8080), "any, port 8080"),
        (web6(), "web6"),
    ] {
        let by = spread(&lab, to, what);
        println!("{what} ({to}): {by:?}");
        assert!(
            by.len() >= 2,
            "{what}: {TRIES} connections all went to {by:?}"
        );
        assert!(
            by.keys().all(|b| ["b1", "b2", "b3"].contains(&b.as_str())),
            "{by:?}"
        );
    }
    let status = lab.status();
    for v in status.get("vips").arr() {
        let packets = v.get("packets").as_f64().unwrap_or(0.0);
        assert!(
            packets >= (TRIES * 2) as f64,
            "{}: {packets} packets",
            v.get("vip").str()
        );
    }

    // A second lbd for the same interface is refused at once, naming the
    // running one; the first goes on.
    let pid = lab.lbd_pid().expect("running");
    let t = Instant::now();
    let out = run_bounded(
        nsenter(&lab.lb_ns, &lbd_bin())
            .args(["run", "--config"])
            .arg(&lab.config_path),
        Duration::from_secs(15),
    )
    .unwrap();
    println!("second lbd: {out} after {:?}", t.elapsed());
    assert!(!out.ok(), "a second lbd ran: {out}");
    assert!(
        out.stderr.contains(&format!(
            "another lbd is already running for interface {} in this network namespace (pid {pid}",
            lab.lb_if
        )),
        "{out}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));

    // So is `lbd detach` of the running interface.
    let out = lab.lbd_in_lb_ns(&["detach", "--interface", &lab.lb_if]);
    assert!(!out.ok(), "detach under a running lbd: {out}");
    assert!(out.stderr.contains("stop it first"), "{out}");
    assert!(lab.pin_dir().join("link-native").exists());

    assert!(lab.lbd_running(), "{}", lab.log_tail(30));
    assert_eq!(
        lab.status().get("program_id").as_f64(),
        Some(program_id as f64)
    );
    let by = spread(&lab, web(), "web after the refusals");
    assert!(by.len() >= 2, "{by:?}");
    println!("bring_up passed in {:?}", t0.elapsed());
}

// ---------------------------------------------------------------- 2

/// Opens long-lived connections to `to` until one lands on `backend`.
fn long_lived_on(lab: &Lab, to: SocketAddr, backend: &str) -> LongLived {
    for _ in 0..50 {
        let c = lab.long_lived(to, Duration::from_millis(50)).unwrap();
        if c.backend == backend {
            return c;
        }
    }
    panic!("no connection to {to} landed on {backend} in 50 tries");
}

/// Every long-lived connection is alive and has exchanged lines since
/// `before` (waiting up to 3 s for that).
fn assert_alive(step: &str, conns: &[(&str, &LongLived)], before: &[u64]) {
    let t = Instant::now();
    for ((what, c), b) in conns.iter().zip(before) {
        while c.exchanges() <= *b + 1 && !c.broken() && t.elapsed() < Duration::from_secs(3) {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !c.broken(),
            "{step}: the long-lived connection {what} broke"
        );
        assert!(
            c.exchanges() > *b + 1,
            "{step}: the long-lived connection {what} stalled ({b} exchanges before, {} now)",
            c.exchanges()
        );
    }
}

/// Waits (bounded) until `addr` of `vip` has a resolved next hop in
/// `lbctl --json status`; how long that took.
fn wait_resolved(lab: &Lab, vip: &str, addr: &str, timeout: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let s = lab.status();
        let v = s
            .get("vips")
            .arr()
            .iter()
            .find(|v| v.get("vip").str() == vip)
            .cloned();
        let resolved = v.is_some_and(|v| {
            v.get("backends")
                .arr()
                .iter()
                .any(|b| b.get("addr").str() == addr && b.get("next_hop").as_bool() == Some(true))
        });
        if resolved {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < timeout,
            "{addr} of {vip}: next hop unresolved after {timeout:?}\n{}",
            lab.log_tail(30)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn changes_through_lbctl() {
    let t0 = Instant::now();
    // b4 exists but is in no VIP: it is added at run time.
    let lab = lab_with_lbd(4, &["b1", "b2", "b3"]);

    // The long-lived connection, and the roles of the others.
    let main = lab.long_lived(web(), Duration::from_millis(50)).unwrap();
    let x = main.backend.clone();
    let others: Vec<String> = ["b1", "b2", "b3"]
        .iter()
        .filter(|b| **b != x)
        .map(|b| b.to_string())
        .collect();
    let (y, z) = (others[0].clone(), others[1].clone());
    println!("long-lived connection on {x}; changes on {y} and {z}");
    // Established connections on the backends about to be drained or set to
    // weight 0: they must stay.
    let on_y = long_lived_on(&lab, web(), &y);
    let on_z = long_lived_on(&lab, web(), &z);
    let (yv, zv, xv, b4) = (v4(&lab, &y), v4(&lab, &z), v4(&lab, &x), v4(&lab, "b4"));

    let counts = |c: &[&LongLived]| c.iter().map(|c| c.exchanges()).collect::<Vec<_>>();
    let expect_backends = |step: &str, want: &[(&str, u64, bool)]| {
        let got = backends_of(&lab.status(), WEB);
        let want: BTreeMap<String, (u64, bool)> = want
            .iter()
            .map(|(b, w, d)| (v4(&lab, b), (*w, *d)))
            .collect();
        assert_eq!(got, want, "{step}: lbctl --json status");
    };
    let before_all = main.exchanges();

    // 1. Drain y: no new connection reaches it; its established one stays.
    let before = counts(&[&main, &on_y]);
    let out = lab.lbctl_ok(&["backend", "drain", WEB, &yv]);
    println!("drain: {out}");
    expect_backends(
        "drain",
        &[(&x, 100, false), (&y, 100, true), (&z, 100, false)],
    );
    let by = spread(&lab, web(), "after drain");
    assert!(!by.contains_key(&y), "after drain of {y}: {by:?}");
    assert_alive("drain", &[("main", &main), ("on drained", &on_y)], &before);

    // 2. Undrain y: it gets new connections again.
    let before = counts(&[&main, &on_y]);
    lab.lbctl_ok(&["backend", "undrain", "web", &yv]);
    expect_backends(
        "undrain",
        &[(&x, 100, false), (&y, 100, false), (&z, 100, false)],
    );
    let by = spread(&lab, web(), "after undrain");
    assert!(by.contains_key(&y), "after undrain of {y}: {by:?}");
    assert_alive(
        "undrain",
        &[("main", &main), ("on undrained", &on_y)],
        &before,
    );

    // 3. Weight 0 for z behaves like a drain.
    let before = counts(&[&main, &on_z]);
    lab.lbctl_ok(&["backend", "set", WEB, &zv, "--weight", "0"]);
    expect_backends(
        "weight 0",
        &[(&x, 100, false), (&y, 100, false), (&z, 0, false)],
    );
    let by = spread(&lab, web(), "after weight 0");
    assert!(!by.contains_key(&z), "after weight 0 for {z}: {by:?}");
    assert_alive(
        "weight 0",
        &[("main", &main), ("on weight 0", &on_z)],
        &before,
    );

    // ... and a weight again undoes it.
    let before = counts(&[&main, &on_z]);
    lab.lbctl_ok(&["backend", "set", WEB, &zv, "--weight", "200"]);
    expect_backends(
        "weight 200",
        &[(&x, 100, false), (&y, 100, false), (&z, 200, false)],
    );
    let by = spread(&lab, web(), "after weight 200");
    assert!(by.contains_key(&z), "after weight 200 for {z}: {by:?}");
    assert_alive(
        "weight 200",
        &[("main", &main), ("on reweighted", &on_z)],
        &before,
    );

    // 4. Delete y: nothing new reaches it. (Its established connection
    // would move to another backend and break: close it first.)
    let r = on_y.stop();
    assert!(r.error.is_none(), "{r:?}");
    let before = counts(&[&main, &on_z]);
    lab.lbctl_ok(&["backend", "del", WEB, &yv]);
    expect_backends("del", &[(&x, 100, false), (&z, 200, false)]);
    let by = spread(&lab, web(), "after del");
    assert!(!by.contains_key(&y), "after del of {y}: {by:?}");
    assert_alive("del", &[("main", &main), ("on z", &on_z)], &before);

    // 5. Add b4, an address lbd has never seen: it gets new connections,
    // and every one is answered.
    //
    let before = counts(&[&main, &on_z]);
    lab.lbctl_ok(&["backend", "add", WEB, &b4]);
    expect_backends(
        "add b4",
        &[(&x, 100, false), (&z, 200, false), ("b4", 100, false)],
    );
    // lbd resolves a new backend's next hop as soon as it is added.
    let waited = wait_resolved(&lab, WEB, &b4, Duration::from_secs(15));
    println!("b4's next hop resolved {waited:?} after it was added");
    assert!(
        waited < Duration::from_secs(3),
        "b4's next hop took {waited:?}"
    );
    let by = spread(&lab, web(), "after adding b4");
    println!("after adding b4: {by:?}");
    assert!(by.contains_key("b4"), "after adding b4: {by:?}");
    assert_alive("add b4", &[("main", &main), ("on z", &on_z)], &before);

    // 6. Add y back.
    let before = counts(&[&main, &on_z]);
    lab.lbctl_ok(&["backend", "add", WEB, &yv, "--weight", "100"]);
    let by = spread(&lab, web(), "after adding back");
    assert!(by.contains_key(&y), "after adding {y} back: {by:?}");
    assert_alive("add back", &[("main", &main), ("on z", &on_z)], &before);

    // 7. Drain x, the long-lived connection's own backend: it stays.
    let before = counts(&[&main]);
    lab.lbctl_ok(&["backend", "drain", WEB, &xv]);
    let by = spread(&lab, web(), "after draining x");
    assert!(!by.contains_key(&x), "after drain of {x}: {by:?}");
    assert_alive("drain x", &[("main", &main)], &before);
    lab.lbctl_ok(&["backend", "undrain", WEB, &xv]);
    expect_backends(
        "end",
        &[
            (&x, 100, false),
            (&z, 200, false),
            ("b4", 100, false),
            (&y, 100, false),
        ],
    );

    // A backend of a farther tier: status shows the tiers and their shares
    // (tier 0 healthy: tier 1 takes nothing); it goes again.
    assert!(tiers_of(&lab.status(), WEB).is_empty());
    lab.lbctl_ok(&["backend", "add", WEB, "10.99.0.1", "--tier", "1"]);
    let status = lab.status();
    assert_eq!(
        vip_of(&status, WEB).get("tier_policy").get("mode").str(),
        "spill"
    );
    assert_eq!(tiers_of(&status, WEB), [(0, 100), (1, 0)]);
    let text = lab.lbctl_ok(&["backend", "list", WEB]);
    assert!(
        text.contains("tiers (spill, overprovisioning 1.4): 0: 4/4 up 100%, 1: 1/1 up 0%"),
        "{text}"
    );
    lab.lbctl_ok(&["backend", "del", WEB, "10.99.0.1"]);

    // 8. A VIP made at run time carries traffic, and goes away again.
    let before = counts(&[&main, &on_z]);
    let extra = SocketAddr::from((VIP_EXTRA, 80));
    // A table size that is not prime is refused (and audited as refused).
    let bad = lab.lbctl(&["vip", "add", "10.100.0.3:80/tcp", "--table-size", "1000"]);
    assert_eq!(bad.code, Some(1), "{bad}");
    assert!(bad.stderr.contains("not a prime"), "{bad}");
    lab.lbctl_ok(&[
        "vip",
        "add",
        "10.100.0.3:80/tcp",
        "--name",
        "extra",
        "--table-size",
        "4093",
    ]);
    lab.lbctl_ok(&["backend", "add", "extra", &v4(&lab, "b1")]);
    lab.lbctl_ok(&["backend", "add", "extra", &v4(&lab, "b2")]);
    let by = lab
        .spread(extra, 20)
        .unwrap_or_else(|e| panic!("VIP added at run time: {e}\n{}", lab.log_tail(30)));
    assert!(by.keys().all(|b| b == "b1" || b == "b2"), "{by:?}");
    lab.lbctl_ok(&["vip", "del", "extra"]);
    let status = lab.status();
    assert!(!status
        .get("vips")
        .arr()
        .iter()
        .any(|v| v.get("name").str() == "extra"));
    assert!(!lab.state_json().contains("10.100.0.3"));
    assert_alive("vip add/del", &[("main", &main), ("on z", &on_z)], &before);

    // At least 20 more exchanges over the whole run: the changes themselves
    // may take less time than that (tables are plain stores now).
    let waited = Instant::now();
    while main.exchanges() <= before_all + 20
        && !main.broken()
        && waited.elapsed() < Duration::from_secs(5)
    {
        thread::sleep(Duration::from_millis(20));
    }
    let elapsed = t0.elapsed();
    let r = main.stop();
    println!("long-lived connection: {r:?}");
    assert!(r.error.is_none(), "the long-lived connection broke: {r:?}");
    assert_eq!(r.backend, x);
    assert!(r.exchanges > before_all + 20, "{r:?}");
    assert!(r.max_gap < Duration::from_secs(1), "{r:?}");
    let r = on_z.stop();
    assert!(r.error.is_none(), "{r:?}");

    // Every change was persisted and audited.
    let state = lab.state_json();
    assert!(state.contains(&b4), "{state}");
    let audit = fs::read_to_string(lab.state_dir.join("audit.log")).unwrap_or_default();
    let ok = audit
        .lines()
        .filter(|l| l.contains("\"result\":\"ok\""))
        .count();
    assert_eq!(ok, 15, "audit log:\n{audit}");
    println!("changes_through_lbctl passed in {elapsed:?}");
}

/// A backend added at run time with an address lbd has not resolved
/// before is reachable at once.
///
/// Guards the wake-up of the next-hop resolver on every change: if it
/// learned of new backend addresses only on its periodic refresh (every
/// 10 s), the data path's fallback until then (`bpf_fib_lookup` →
/// `NO_NEIGH` → `XDP_PASS`) would hand the client's packets to the
/// balancer's stack, which drops them, and new connections to the added
/// backend would time out for up to ~10 s.
#[test]
fn new_backend_is_reachable_at_once() {
    let lab = lab_with_lbd(4, &["b1", "b2", "b3"]);
    lab.lbctl_ok(&["backend", "add", WEB, &v4(&lab, "b4")]);
    let by = spread(&lab, web(), "right after adding b4");
    assert!(by.contains_key("b4"), "{by:?}");
}

// ---------------------------------------------------------------- 3

#[test]
fn kill_and_restart() {
    let t0 = Instant::now();
    let mut lab = lab_with_lbd(3, &["b1", "b2", "b3"]);
    let targets = [web(), any(80), any(8080), web6()];

    // Runtime changes, which the restarted lbd must keep.
    lab.lbctl_ok(&["backend", "set", WEB, &v4(&lab, "b3"), "--weight", "50"]);
    lab.lbctl_ok(&["backend", "drain", WEB6, &v6(&lab, "b2")]);
    lab.lbctl_ok(&["backend", "del", ANY, &v4(&lab, "b1")]);
    let view = lab.config_view();
    let state = lab.state_json();
    let first = lab.status();
    let old_program = first.get("program_id").as_f64();

    let long = lab.long_lived(web(), Duration::from_millis(50)).unwrap();

    // Phase 1: a stream with lbd alive, then the table as it stands.
    let stream = lab.stream(&targets);
    thread::sleep(Duration::from_millis(1000));
    let before_kill = stream.stop();
    let table_before = lab
        .conntrack()
        .expect("reading the pinned connection table");

    // Phase 2: a stream across kill -9, ~1 s without lbd, restart.
    let stream = lab.stream(&targets);
    thread::sleep(Duration::from_millis(500));
    let t_kill = Instant::now();
    let made_at_kill = stream.made();
    lab.kill_lbd();
    let link = netns::ip(&lab.lb_ns, &["-d", "link", "show", "dev", &lab.lb_if]).unwrap();
    assert!(
        link.contains(&format!(
            "prog/xdp id {} ",
            old_program.unwrap_or(0.0) as u64
        )),
        "the program left with lbd:\n{link}"
    );
    // Without lbd lbctl says so.
    let out = lab.lbctl(&["status"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("cannot connect to lbd"), "{out}");
    thread::sleep(Duration::from_millis(1000).saturating_sub(t_kill.elapsed()));
    let made_while_dead = stream.made() - made_at_kill;
    let t_restart = Instant::now();
    lab.start_lbd().expect("restarting lbd");
    let restart_took = t_restart.elapsed();
    let dead_for = t_kill.elapsed();
    thread::sleep(Duration::from_millis(1000));
    let across = stream.stop();
    let table_after = lab
        .conntrack()
        .expect("reading the pinned connection table");
    println!(
        "phase 1: {} connections; phase 2: {} connections, {made_while_dead} while lbd was dead \
         ({dead_for:?}, restart took {restart_took:?})",
        before_kill.attempts.len(),
        across.attempts.len()
    );

    // Not one connection failed, before, during or after.
    for (phase, r) in [
        ("before the kill", &before_kill),
        ("across the kill", &across),
    ] {
        let failed = r.failures();
        assert!(
            failed.is_empty(),
            "{phase}: {} of {} connections failed, first: {:?}\n{}\n{}",
            failed.len(),
            r.attempts.len(),
            failed.first(),
            lab.diagnostics(),
            lab.log_tail(40)
        );
    }
    assert!(before_kill.ok() >= 20, "{} connections", before_kill.ok());
    assert!(
        made_while_dead >= 10,
        "only {made_while_dead} connections while lbd was dead"
    );
    assert!(across.ok() >= 40);
    // Drained and deleted backends got nothing new.
    for a in before_kill.attempts.iter().chain(&across.attempts) {
        let b = a.result.as_ref().unwrap();
        let drained = a.to == web6() && b == "b2";
        let deleted = a.to.ip() == IpAddr::V4(VIP_ANY) && b == "b1";
        assert!(!drained && !deleted, "{a:?}");
    }

    // The connection table survived: every entry from before the kill is
    // still there with its backend, and the only new ones are the
    // connections made since (all of them).
    let keys = |t: &std::collections::HashMap<lb_common::FlowKey, lb_common::ConnEntry>| {
        t.keys().map(|k| FlowKeyOrd(*k)).collect::<BTreeSet<_>>()
    };
    let (k1, k2) = (keys(&table_before), keys(&table_after));
    let phase1 = before_kill.flows();
    let phase2 = across.flows();
    assert!(
        phase1.is_subset(&k1),
        "phase-1 connections missing from the table"
    );
    assert!(k1.contains(&FlowKeyOrd(flow_key(long.local, long.to))));
    let lost: Vec<String> = k1.difference(&k2).map(|k| k.to_string()).collect();
    assert!(
        lost.is_empty(),
        "{} entries lost across the restart: {lost:?}",
        lost.len()
    );
    for (k, e) in &table_before {
        assert_eq!(
            table_after[k].backend_id,
            e.backend_id,
            "{}: backend changed across the restart",
            FlowKeyOrd(*k)
        );
    }
    let expected: BTreeSet<FlowKeyOrd> = k1.union(&phase2).copied().collect();
    let extra: Vec<String> = k2.difference(&expected).map(|k| k.to_string()).collect();
    let missing: Vec<String> = expected.difference(&k2).map(|k| k.to_string()).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "table after restart: {} unexplained entries {extra:?}, {} missing {missing:?}",
        extra.len(),
        missing.len()
    );
    // The same in numbers: the entries after the restart, less those of
    // the connections made since the "before" count, are as many as
    // before the kill.
    let new_flows = phase2.difference(&k1).count();
    assert_eq!(phase2.len(), across.ok(), "one flow per connection");
    assert_eq!(new_flows, phase2.len(), "phase-2 flows are all new");
    assert_eq!(k2.len() - new_flows, k1.len());
    println!(
        "connection table: {} entries before the kill, {} after the restart = {} + {new_flows} \
         connections made since",
        k1.len(),
        k2.len(),
        k1.len(),
    );

    // The long-lived connection never noticed.
    let r = long.stop();
    println!("long-lived connection: {r:?}");
    assert!(r.error.is_none(), "the long-lived connection broke: {r:?}");
    assert!(r.max_gap < Duration::from_secs(1), "{r:?}");

    // The new lbd adopted the maps and the runtime state, and works.
    let log = fs::read_to_string(&lab.log_path).unwrap();
    let second = log
        .split("===== lbd start #2 =====")
        .nth(1)
        .expect("second start logged");
    assert!(
        second.contains("adopted pinned maps"),
        "{}",
        lab.log_tail(30)
    );
    assert!(
        second.contains("using runtime state"),
        "{}",
        lab.log_tail(30)
    );
    let status = lab.status();
    assert_eq!(
        lab.config_view(),
        view,
        "runtime changes lost across the restart"
    );
    assert_eq!(lab.state_json(), state);
    assert_eq!(status.get("interface").str(), lab.lb_if);
    assert_eq!(status.get("xdp_mode").str(), "native");
    assert_ne!(
        status.get("program_id").as_f64(),
        old_program,
        "the program was not replaced"
    );
    let link = netns::ip(&lab.lb_ns, &["-d", "link", "show", "dev", &lab.lb_if]).unwrap();
    assert!(
        link.contains(&format!(
            "prog/xdp id {} ",
            status.get("program_id").as_f64().unwrap_or(0.0) as u64
        )),
        "{link}"
    );
    lab.lbctl_ok(&["backend", "undrain", WEB6, &v6(&lab, "b2")]);
    let by = spread(&lab, web6(), "web6 after undrain");
    assert!(by.contains_key("b2"), "{by:?}");
    println!("kill_and_restart passed in {:?}", t0.elapsed());
}

// ---------------------------------------------------------------- 4

/// The 1-based number of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    1 + text
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in\n{text}"))
}

/// One raw exchange on the control socket: what came back before the
/// daemon closed (or 5 s passed).
fn raw_request(socket: &Path, bytes: &[u8]) -> (String, bool) {
    let mut s = UnixStream::connect(socket).expect("connecting to the control socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `lbctl` as uid/gid 65534 without supplementary groups.
fn lbctl_as_nobody(lab: &Lab, args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(lbctl_bin())
        .arg("--socket")
        .arg(&lab.socket)
        .args(args);
    run_bounded(&mut cmd, Duration::from_secs(20)).unwrap()
}

#[test]
fn bad_inputs_change_nothing() {
    let t0 = Instant::now();
    let mut lab = Lab::new(3).expect("building the lab");
    let vips = lab.standard_vips(&["b1", "b2", "b3"]);
    let good = lab.config_text(&vips);
    lab.write_config(&good);
    lab.start_lbd().expect("starting lbd");
    let view = lab.config_view();
    let state = lab.state_json();
    assert!(state.contains("10.100.0.1:80/tcp"), "{state}");
    let unchanged = |lab: &mut Lab, what: &str| {
        assert!(lab.lbd_running(), "{what}: lbd died\n{}", lab.log_tail(30));
        assert_eq!(lab.config_view(), view, "{what}: the running state changed");
        assert_eq!(lab.state_json(), state, "{what}: state.json changed");
    };

    // Bad config files: `lbd check-config` names the file and line, and a
    // reload of them is refused with the same words and changes nothing.
    let b1 = v4(&lab, "b1");
    let b2 = v4(&lab, "b2");
    let entry_b1 = format!("{{ address = \"{b1}\" }}");
    let entry_b2 = format!("{{ address = \"{b2}\" }}");
    let cases: Vec<(&str, String, &str, Vec<&str>)> = vec![
        (
            "malformed TOML",
            good.replacen(
                "[[vip]]\nname = \"any\"",
                "[[vip] # broken\nname = \"any\"",
                1,
            ),
            "[[vip] # broken",
            vec![],
        ),
        (
            "unknown key",
            good.replacen("name = \"web\"\n", "name = \"web\"\nweigth = 5\n", 1),
            "weigth = 5",
            vec!["key `weigth` is not allowed", "vip"],
        ),
        (
            "duplicate VIP",
            format!(
                "{good}\n[[vip]]\nname = \"web-again\"\naddress = \"10.100.0.1\" # dup\n\
                 port = 80\nprotocol = \"tcp\"\n"
            ),
            "# dup",
            vec!["10.100.0.1:80/tcp", "already defined", "\"web\""],
        ),
        (
            "backend of the wrong family",
            good.replacen(
                &entry_b1,
                &format!("{entry_b1},\n  {{ address = \"fd10::99\" }}"),
                1,
            ),
            "fd10::99",
            vec!["fd10::99", "IPv6", "IPv4"],
        ),
        (
            "weight out of range",
            good.replacen(
                &entry_b2,
                &format!("{{ address = \"{b2}\", weight = 70000 }}"),
                1,
            ),
            "70000",
            vec!["weight", "70000", "0..=65535"],
        ),
    ];
    let bad_path = lab.dir.join("bad.toml");
    for (what, text, needle, words) in &cases {
        let line = line_of(text, needle);
        fs::write(&bad_path, text).unwrap();
        let out = run_bounded(
            Command::new(lbd_bin())
                .args(["check-config", "--config"])
                .arg(&bad_path),
            Duration::from_secs(10),
        )
        .unwrap();
        println!("check-config, {what}: {}", out.stderr.trim());
        assert_eq!(out.code, Some(1), "check-config, {what}: {out}");
        let prefix = format!("{}:{line}:", bad_path.display());
        assert!(
            out.stderr.contains(&prefix),
            "check-config, {what}: expected {prefix}\n{out}"
        );
        for w in words {
            assert!(
                out.stderr.contains(w),
                "check-config, {what}: expected {w:?}\n{out}"
            );
        }

        lab.write_config(text);
        for args in [&["reload"][..], &["reload", "--dry-run"]] {
            let out = lab.lbctl(args);
            assert_eq!(out.code, Some(1), "lbctl {args:?}, {what}: {out}");
            let prefix = format!("{}:{line}:", lab.config_path.display());
            assert!(
                out.stderr.contains(&prefix),
                "lbctl {args:?}, {what}: expected {prefix}\n{out}"
            );
            for w in words {
                assert!(
                    out.stderr.contains(w),
                    "lbctl {args:?}, {what}: expected {w:?}\n{out}"
                );
            }
            unchanged(&mut lab, &format!("lbctl {args:?}, {what}"));
        }
        lab.write_config(&good);
    }
    // A config file that is gone.
    fs::remove_file(&lab.config_path).unwrap();
    let out = lab.lbctl(&["reload"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains(&format!("{}: cannot read", lab.config_path.display())),
        "{out}"
    );
    unchanged(&mut lab, "reload without a config file");
    // A setting only a restart can change is refused by reload.
    lab.write_config(&good.replace("xdp_mode = \"native\"", "xdp_mode = \"generic\""));
    let out = lab.lbctl(&["reload"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("xdp_mode") && out.stderr.contains("restart"),
        "{out}"
    );
    unchanged(&mut lab, "reload of xdp_mode");
    lab.write_config(&good);

    // Bad lbctl requests: usage errors exit 2 before anything is sent,
    // refusals exit 1 with the daemon's reason.
    let cases: Vec<(Vec<String>, i32, Vec<&str>)> = vec![
        (
            vec![
                "backend".into(),
                "set".into(),
                WEB.into(),
                b1.clone(),
                "--weight".into(),
                "70000".into(),
            ],
            2,
            vec!["70000"],
        ),
        (
            vec![
                "backend".into(),
                "add".into(),
                WEB.into(),
                "fd10::99".into(),
            ],
            1,
            vec!["fd10::99", "IPv6", "IPv4"],
        ),
        (
            vec![
                "backend".into(),
                "drain".into(),
                "10.100.0.9:80/tcp".into(),
                b1.clone(),
            ],
            1,
            vec!["unknown VIP", "10.100.0.9:80/tcp"],
        ),
        (
            vec!["vip".into(), "del".into(), "nosuch".into()],
            1,
            vec!["unknown VIP", "nosuch"],
        ),
        (
            vec![
                "backend".into(),
                "del".into(),
                "web".into(),
                "10.10.0.99".into(),
            ],
            1,
            vec!["no backend 10.10.0.99"],
        ),
        (
            vec!["backend".into(), "add".into(), "web".into(), b1.clone()],
            1,
            vec!["already has backend"],
        ),
        (
            vec!["vip".into(), "add".into(), WEB.into()],
            1,
            vec!["already exists"],
        ),
        (
            vec!["vip".into(), "add".into(), "10.100.0.1:80".into()],
            2,
            vec![],
        ),
    ];
    for (args, code, words) in &cases {
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let out = lab.lbctl(&args);
        println!("lbctl {args:?}: exit {:?}: {}", out.code, out.stderr.trim());
        assert_eq!(out.code, Some(*code), "lbctl {args:?}: {out}");
        for w in words {
            assert!(
                out.stderr.contains(w),
                "lbctl {args:?}: expected {w:?}\n{out}"
            );
        }
        unchanged(&mut lab, &format!("lbctl {args:?}"));
    }

    // Garbled requests on the socket: answered or closed, nothing changed,
    // and the daemon keeps serving.
    let (answer, closed) = raw_request(&lab.socket, b"\x00\xff\xfegarbage \x01\x02\r\n\r\n");
    println!("garbage: closed={closed}, {answer:?}");
    assert!(
        closed || answer.starts_with("HTTP/1.1 4"),
        "garbage: {answer:?}"
    );
    unchanged(&mut lab, "garbage bytes");
    for (path, body, words) in [
        (
            "/v1/change",
            "this is not JSON",
            &["request body is not JSON"][..],
        ),
        (
            "/v1/change",
            r#"{"op":"backend-add","vip":"web"}"#,
            &["invalid request"],
        ),
        ("/v1/change", r#"{"op":"vip-del"}"#, &["invalid request"]),
        ("/v1/reload", "{{{", &["not JSON"]),
    ] {
        let (answer, _) = raw_request(&lab.socket, &post(path, body));
        println!("POST {path} {body:?}: {answer:?}");
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "POST {path} {body:?}: {answer:?}"
        );
        for w in words {
            assert!(
                answer.contains(w),
                "POST {path} {body:?}: expected {w:?}: {answer:?}"
            );
        }
        unchanged(&mut lab, &format!("POST {path} {body:?}"));
    }
    // A client that never finishes its request holds no one else up.
    let mut stuck = UnixStream::connect(&lab.socket).unwrap();
    stuck
        .write_all(b"POST /v1/change HTTP/1.1\r\nHost: lb\r\nContent-Length: 1000\r\n\r\n{")
        .unwrap();
    let t = Instant::now();
    lab.lbctl_ok(&["status"]);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "status took {:?}",
        t.elapsed()
    );
    drop(stuck);
    unchanged(&mut lab, "an unfinished request");

    // Not root: the 0600 socket keeps uid 65534 out.
    let mode = fs::metadata(&lab.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode");
    for args in [&["backend", "drain", WEB, &b1][..], &["status"]] {
        let out = lbctl_as_nobody(&lab, args);
        println!("lbctl {args:?} as nobody: {out}");
        assert_eq!(out.code, Some(1), "{out}");
        assert!(out.stderr.contains("permission denied"), "{out}");
        unchanged(&mut lab, "lbctl as nobody");
    }
    // Even with the socket opened up (a mistake), lbd itself refuses uid
    // 65534 by its peer credentials, and audits the attempt.
    fs::set_permissions(&lab.socket, fs::Permissions::from_mode(0o666)).unwrap();
    let out = lbctl_as_nobody(&lab, &["backend", "drain", WEB, &b1]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("uid 65534 may not change"), "{out}");
    let out = lbctl_as_nobody(&lab, &["status"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("uid 65534 may not read"), "{out}");
    fs::set_permissions(&lab.socket, fs::Permissions::from_mode(0o600)).unwrap();
    unchanged(&mut lab, "lbctl as nobody through an open socket");
    let audit = fs::read_to_string(lab.state_dir.join("audit.log")).unwrap_or_default();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"uid\":65534") && l.contains("refused")),
        "audit log:\n{audit}"
    );
    assert!(
        !audit.contains("\"result\":\"ok\""),
        "nothing was applied:\n{audit}"
    );

    // A 100 KB garbage change is refused and audited, but bounded: its
    // entry keeps the first 4 KiB and the size.
    let garbage = "x".repeat(100_000);
    let (answer, _) = raw_request(&lab.socket, &post(lb::api::types::PATH_CHANGE, &garbage));
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    unchanged(&mut lab, "a 100 KB garbage body");
    let audit = fs::read_to_string(lab.state_dir.join("audit.log")).unwrap_or_default();
    let last = audit.lines().last().expect("the attempt was audited");
    println!("audit entry of a 100 KB body: {} bytes", last.len());
    assert!(last.len() < 6000, "audit entry of {} bytes", last.len());
    assert!(
        last.contains("\"truncated\":true") && last.contains("\"bytes\":100002"),
        "{}",
        &last[..last.len().min(300)]
    );

    // `reload --dry-run` shows the difference and applies nothing;
    // `reload` applies it.
    let b3 = v4(&lab, "b3");
    let edited = good
        .replacen(&format!("{{ address = \"{b3}\" }}"), &format!("{{ address = \"{b3}\", weight = 50 }}"), 1)
        .replacen(&format!("[[vip]]\nname = \"any\"\naddress = \"10.100.0.2\"\nprotocol = \"tcp\"\nbackends = [\n  {entry_b1},\n"),
                  "[[vip]]\nname = \"any\"\naddress = \"10.100.0.2\"\nprotocol = \"tcp\"\nbackends = [\n", 1);
    assert_ne!(
        edited.matches(&entry_b1).count(),
        good.matches(&entry_b1).count(),
        "edit applied"
    );
    lab.write_config(&edited);
    let diff = [
        format!("~ backend {WEB} {b3} weight 100 -> 50"),
        format!("- backend {ANY} {b1}"),
    ];
    let out = lab.lbctl_ok(&["reload", "--dry-run"]);
    println!("reload --dry-run:\n{out}");
    for d in &diff {
        assert!(out.lines().any(|l| l == d), "expected {d:?} in\n{out}");
    }
    assert!(out.contains("Dry run: nothing applied."), "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    let json = Json::parse(&lab.lbctl_ok(&["--json", "reload", "--dry-run"])).unwrap();
    assert_eq!(json.get("applied").as_bool(), Some(false));
    assert_eq!(json.get("diff").arr().len(), 2, "{json:?}");
    unchanged(&mut lab, "reload --dry-run");

    let out = lab.lbctl_ok(&["reload"]);
    println!("reload:\n{out}");
    for d in &diff {
        assert!(out.lines().any(|l| l == d), "expected {d:?} in\n{out}");
    }
    assert!(out.contains("Applied."), "{out}");
    let status = lab.status();
    assert_eq!(backends_of(&status, WEB)[&b3], (50, false));
    assert!(!backends_of(&status, ANY).contains_key(&b1));
    let state_now = lab.state_json();
    assert_ne!(state_now, state);
    assert!(state_now.contains("\"weight\": 50"), "{state_now}");
    let out = lab.lbctl_ok(&["reload"]);
    assert!(out.contains("No changes"), "{out}");
    let by = spread(&lab, any(80), "any after the reload");
    assert!(!by.contains_key("b1"), "{by:?}");
    println!("bad_inputs_change_nothing passed in {:?}", t0.elapsed());
}

// ---------------------------------------------------------------- 5

/// Creates a small BPF array map and pins it at `path` (raw `bpf(2)`: aya
/// creates maps only from object files).
fn pin_small_map(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4; // key size
    attr[2] = 16; // value size
    attr[3] = 8; // max entries
                 // SAFETY: bpf(BPF_MAP_CREATE) with a zeroed attribute block we own.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), size_of_val(&attr)) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64; // pathname
    attr[1] = fd as u64; // bpf_fd, file_flags 0
                         // SAFETY: bpf(BPF_OBJ_PIN) with a path that outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 6, attr.as_ptr(), size_of_val(&attr)) };
    let err = std::io::Error::last_os_error();
    // SAFETY: our descriptor.
    unsafe { libc::close(fd as i32) };
    assert_eq!(rc, 0, "BPF_OBJ_PIN {}: {err}", path.display());
}

#[test]
fn pinned_state_and_locks() {
    let t0 = Instant::now();
    let mut lab = Lab::new(0).expect("building the lab");
    lab.write_config(&lab.config_text(&[]));

    // Pinned maps of layout v0, as an older lbd would have left them.
    let iface_dir = lab.pin_place().interface_dir();
    let old = iface_dir.join("v0");
    fs::create_dir_all(old.join("maps")).unwrap();
    pin_small_map(&old.join("maps").join("CONNTRACK"));

    let t = Instant::now();
    let out = run_bounded(
        nsenter(&lab.lb_ns, &lbd_bin())
            .args(["run", "--config"])
            .arg(&lab.config_path),
        Duration::from_secs(20),
    )
    .unwrap();
    let took = t.elapsed();
    println!("lbd run over layout v0: {out} after {took:?}");
    assert_eq!(out.code, Some(1), "{out}");
    assert!(took < Duration::from_secs(5), "refusing took {took:?}");
    for w in [
        old.display().to_string(),
        "another layout (v0)".to_string(),
        format!("map layout v{}", lb_common::MAP_LAYOUT_VERSION),
        format!("lbd detach --interface {}", lab.lb_if),
    ] {
        assert!(out.stderr.contains(&w), "expected {w:?}: {out}");
    }
    // It touched nothing: the old maps are there, nothing new is.
    assert!(old.join("maps").join("CONNTRACK").exists());
    let entries: Vec<String> = fs::read_dir(&iface_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["v0"], "{}", iface_dir.display());
    assert!(!lab.socket.exists());
    let link = netns::ip(&lab.lb_ns, &["-d", "link", "show", "dev", &lab.lb_if]).unwrap();
    assert!(!link.contains("prog/xdp"), "{link}");

    // The advice works: detach removes them, then lbd starts.
    let out = lab.lbd_in_lb_ns(&["detach", "--interface", &lab.lb_if]);
    assert!(out.ok(), "{out}");
    assert!(
        out.stdout.contains(&format!("detached from {}", lab.lb_if)),
        "{out}"
    );
    assert!(!iface_dir.exists());
    lab.start_lbd().expect("lbd after detach");
    let status = lab.status();
    assert_eq!(status.get("xdp_mode").str(), "native");
    assert!(status.get("vips").arr().is_empty());
    assert!(lab.pin_dir().join("maps").join("CONNTRACK").exists());
    println!("pinned_state_and_locks passed in {:?}", t0.elapsed());
}

/// Kills and reaps a child on drop.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A second lbd (for another interface) whose config names the control
/// socket of a running lbd must not take that socket over.
///
/// Guards `lb::api::server::bind`'s refusal of a socket that answers: if
/// it removed whatever is at the path, the second daemon would silently
/// take the first one's socket (lbctl would then talk to the wrong daemon),
/// and once it exits the first daemon, still running, could not be reached
/// at all. Both configs naming the default `/run/lb/lbd.sock` is enough for
/// this (the per-interface lock allows the two daemons).
#[test]
fn a_running_daemons_socket_is_not_taken_over() {
    let first = lab_with_lbd(1, &["b1"]);
    let mut second = Lab::new(1).expect("building the second lab");
    let vips = second.standard_vips(&["b1"]);
    let text = second.config_text(&vips).replace(
        &format!("control_socket = \"{}\"", second.socket.display()),
        &format!("control_socket = \"{}\"", first.socket.display()),
    );
    second.write_config(&text);
    let mut other = Reap(second.spawn_lbd_run().expect("spawning the second lbd"));
    let t = Instant::now();
    while other.0.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(50));
    }
    let status = first.status();
    assert_eq!(
        status.get("interface").str(),
        first.lb_if,
        "{} now answers for {}:\n{}",
        first.socket.display(),
        status.get("interface").str(),
        second.log_tail(10)
    );
    let exited = other.0.try_wait().unwrap();
    assert!(
        exited.is_some_and(|s| !s.success()),
        "the second lbd is running on a socket in use: {exited:?}"
    );
}

/// `[limits]` sizes the maps lbd loads and bounds what it accepts: a config
/// over them is refused by `check-config`, a runtime change over them
/// changes nothing, and a reload that changes them asks for a restart.
#[test]
fn limits_size_the_maps_and_bound_the_state() {
    let mut lab = Lab::new(1).expect("building the lab");
    let vips = lab.standard_vips(&["b1"]);
    // Three VIPs at the default table size need 3 x 2 x 65537 = 393222 slots.
    let base = lab.config_text(&vips);
    let with_limits = |pool: u32| {
        format!("{base}\n[limits]\nmax_vips = 3\ntable_pool = {pool}\nconntrack_size = 65536\n")
    };
    let check = |lab: &Lab, text: &str| {
        lab.write_config(text);
        run_bounded(
            Command::new(lbd_bin())
                .args(["check-config", "--config"])
                .arg(&lab.config_path),
            Duration::from_secs(10),
        )
        .unwrap()
    };
    let small = check(&lab, &with_limits(393_221));
    assert!(!small.ok(), "a pool one slot short: {small}");
    assert!(small.stderr.contains("393222 slots"), "{small}");
    assert!(small.stderr.contains("table_pool"), "{small}");
    let fits = check(&lab, &with_limits(393_222));
    assert!(fits.ok(), "{fits}");

    lab.start_lbd().expect("starting lbd");
    let pinned = |map: &str| {
        aya::maps::MapInfo::from_pin(lab.pin_dir().join("maps").join(map))
            .unwrap_or_else(|e| panic!("{map}: {e}"))
            .max_entries()
    };
    assert_eq!(pinned("MAGLEV"), 393_222);
    assert_eq!(pinned("CONNTRACK"), 65_536);
    assert_eq!(pinned("VIPS"), 3);

    let state = lab.state_json();
    let fourth = lab.lbctl(&["vip", "add", "10.100.0.3:80/tcp", "--table-size", "251"]);
    assert_eq!(fourth.code, Some(1), "{fourth}");
    assert!(fourth.stderr.contains("max_vips"), "{fourth}");
    assert_eq!(
        lab.state_json(),
        state,
        "a refused change changed the state"
    );

    lab.write_config(&with_limits(500_000));
    let reload = lab.lbctl(&["reload"]);
    assert_eq!(reload.code, Some(1), "{reload}");
    assert!(reload.stderr.contains("[limits]"), "{reload}");
    assert!(reload.stderr.contains("restart"), "{reload}");
    assert_eq!(lab.state_json(), state);
}
