//! Acceptance tests of health checks, fail-open and metrics, against the
//! real `lbd` and `lbctl` in the namespace lab of `lb_lab::lab`
//! (a client, the balancer and backends b1..bn on a bridge).
//!
//! 1. [`tcp_check`], [`http_check`], [`udp_check`]: a stopped backend is
//!    reported down within `fall × interval + timeout + interval` (plus
//!    [`POLL_ALLOWANCE`]) of its server stopping, and up again within
//!    `rise × interval + interval` (plus the allowance) of it starting;
//!    under a continuous stream of new flows from the client, no flow that
//!    starts after `lbctl` reports the backend down fails or reaches it,
//!    and every flow that fails before that was sent to the stopped backend
//!    (`lbctl explain` names its connection-table entry's backend). The
//!    HTTP test also takes a backend down by its `/healthz` answering 503
//!    while its service keeps running.
//! 2. [`flapping_does_not_flap`]: a backend whose server goes up and down
//!    every 300 ms, with rise = fall = 3, keeps its reported state (from up
//!    and from down), and `lb_backend_transitions_total` does not move.
//! 3. [`all_down_fails_open`]: every backend failing its check → the VIP
//!    fails open (status JSON, the loud line in `lbctl status`, the log,
//!    `lb_vip_fail_open`) and connections still reach all backends; one
//!    backend back → only it gets traffic.
//! 4. [`metrics`]: a scrape parses strictly as the Prometheus text format
//!    and has every documented family with its type; after exactly 100 UDP
//!    datagrams to a VIP, the VIP's and its backends' packet counters rose
//!    by exactly 100 (bytes by exactly 100 frames' worth); other paths 404.
//! 5. [`unresponsive_backend`]: a backend that stops
//!    answering altogether (its cable pulled: probes time out) is reported
//!    down within the same bound.
//!
//! Times are measured from the moment a server's socket closed (or its
//! answer changed) to the moment `lbctl --json status` (polled every
//! `STATUS_POLL` = 50 ms) showed the new state.
//!
//! Needs root and the binaries (`cargo xtask build`). Run:
//! `cargo test -p integration-test --test health`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use lb_lab::{clients::*, lab::*, servers::*, status::*};

const WEB: &str = "10.100.0.1:80/tcp";
const UDP_PORT: u16 = 5353;
const DNS: &str = "10.100.0.3:5353/udp";
/// The port of the HTTP health endpoint, apart from the service's.
const HEALTH_PORT: u16 = 8081;

/// Allowed on top of every bound, for observing a state rather than the
/// moment it changed: status is polled every 50 ms (`STATUS_POLL`) and one
/// `lbctl --json status` takes some tens of ms.
const POLL_ALLOWANCE: Duration = Duration::from_millis(200);

fn web() -> SocketAddr {
    SocketAddr::from((VIP_WEB, 80))
}

fn dns() -> SocketAddr {
    SocketAddr::from((VIP_EXTRA, UDP_PORT))
}

/// The checks of the detection tests: small, so the tests are fast.
fn fast(kind: &'static str) -> HealthCheck {
    HealthCheck::new(
        kind,
        Duration::from_millis(300),
        Duration::from_millis(200),
        2,
        2,
    )
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// The VIP `web` on backends `names`, checked by `check`.
fn web_vip(lab: &Lab, names: &[&str], check: &HealthCheck) -> Vec<VipSpec> {
    vec![VipSpec::new("web", VIP_WEB, Some(80), &addrs(lab, names)).with_health(check.clone())]
}

/// Waits until lbctl reports `addr` of `vip` in `state` ("up" or "down");
/// when it did. Waits up to `check`'s bound for that change and 5 s more,
/// so that a late change is measured against the bound, not cut short.
fn wait_reported(
    lab: &Lab,
    vip: &str,
    addr: &str,
    state: &str,
    check: &HealthCheck,
) -> anyhow::Result<Instant> {
    let bound = if state == "up" {
        check.up_bound()
    } else {
        check.down_bound()
    };
    lab.wait_health(vip, addr, state, bound + Duration::from_secs(5))
}

fn addrs(lab: &Lab, names: &[&str]) -> Vec<IpAddr> {
    names.iter().map(|n| lab.backend(n).v4.into()).collect()
}

fn v4(lab: &Lab, name: &str) -> String {
    lab.backend(name).v4.to_string()
}

fn scrape(lab: &Lab) -> prom::Scrape {
    let text = lab.scrape();
    prom::parse(&text).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{text}"))
}

// ---------------------------------------------------------------- detection

/// What one stop-and-return of a backend showed.
struct Outage {
    stopped: Instant,
    down: Instant,
    started: Instant,
    up: Instant,
    flows: Vec<Flow>,
}

/// Under a stream of new `proto` flows to `target`: waits until every
/// backend of `vip` is up and has answered flows, runs `stop` (which
/// returns the moment the victim stopped serving), waits for `lbctl` to
/// report `victim` down, lets flows run a second, runs `start` (returning
/// when it serves again), waits for up, lets flows run a second. Checks the
/// bounds and the flows (see the module's description); returns the times
/// and flows for more checks.
#[allow(clippy::too_many_arguments)]
fn outage(
    lab: &Lab,
    what: &str,
    vip: &str,
    target: SocketAddr,
    proto: FlowProto,
    check: &HealthCheck,
    victim: &str,
    stop: impl FnOnce() -> Instant,
    start: impl FnOnce() -> Instant,
) -> Outage {
    let victim_addr = v4(lab, victim);
    lab.wait_all_up(vip, Duration::from_secs(10))
        .expect("all backends up");
    let stream = lab.flows(proto, &[target]);
    thread::sleep(Duration::from_millis(600));

    let stopped = stop();
    let down = wait_reported(lab, vip, &victim_addr, "down", check)
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let m = scrape(lab);
    thread::sleep(Duration::from_secs(1));

    let started = start();
    let up = wait_reported(lab, vip, &victim_addr, "up", check)
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    thread::sleep(Duration::from_secs(1));
    let flows = stream.stop();

    let detect = down - stopped;
    let back = up - started;
    println!(
        "{what}: down reported {} ms after the stop (bound {} + {} ms), up {} ms after the start \
         (bound {} + {} ms); {} flows",
        ms(detect),
        ms(check.down_bound()),
        ms(POLL_ALLOWANCE),
        ms(back),
        ms(check.up_bound()),
        ms(POLL_ALLOWANCE),
        flows.len()
    );

    // The metrics agreed while it was down.
    let l = [("vip", vip), ("backend", victim_addr.as_str())];
    assert_eq!(
        m.get("lb_backend_up", &l),
        Some(0.0),
        "{what}: lb_backend_up"
    );
    assert!(
        m.get(
            "lb_backend_transitions_total",
            &[l[0], l[1], ("state", "down")]
        ) >= Some(1.0),
        "{what}: a down transition counted"
    );

    // The flows.
    let name_of = |f: &Flow| f.result.as_ref().ok().cloned();
    let before: Vec<&Flow> = flows.iter().filter(|f| f.ended < stopped).collect();
    let answered: BTreeSet<String> = before.iter().filter_map(|f| name_of(f)).collect();
    assert!(
        before.iter().all(|f| f.result.is_ok()),
        "{what}: flows failed before the stop: {:?}",
        before
            .iter()
            .filter(|f| f.result.is_err())
            .collect::<Vec<_>>()
    );
    let all: BTreeSet<String> = lab.backends.iter().map(|b| b.name.clone()).collect();
    assert_eq!(
        answered, all,
        "{what}: every backend answered before the stop"
    );

    let after_down: Vec<&Flow> = flows.iter().filter(|f| f.started >= down).collect();
    let failed_after: Vec<&&Flow> = after_down.iter().filter(|f| f.result.is_err()).collect();
    assert!(
        failed_after.is_empty(),
        "{what}: {} of {} flows started after lbctl reported {victim} down failed: {failed_after:?}\n{}",
        failed_after.len(),
        after_down.len(),
        lab.log_tail(30)
    );
    let to_victim: Vec<&&Flow> = after_down
        .iter()
        .filter(|f| f.ended <= started && name_of(f).as_deref() == Some(victim))
        .collect();
    assert!(
        to_victim.is_empty(),
        "{what}: flows reached {victim} while it was reported down: {to_victim:?}"
    );
    let returned = flows
        .iter()
        .filter(|f| f.started >= up && name_of(f).as_deref() == Some(victim))
        .count();
    assert!(
        returned > 0,
        "{what}: no flow reached {victim} after it came back"
    );

    // Every failure was a flow the balancer sent to the stopped backend:
    // its connection-table entry (made by its first packet, still there)
    // names it. Asked now that the victim is up again, so the entry is live.
    let failed: Vec<&Flow> = flows.iter().filter(|f| f.result.is_err()).collect();
    assert!(failed.len() <= 200, "{what}: {} flows failed", failed.len());
    let mut sources = BTreeMap::new();
    for f in &failed {
        assert!(
            f.ended >= stopped,
            "{what}: a flow failed before the stop: {f:?}"
        );
        let local = f
            .local
            .unwrap_or_else(|| panic!("{what}: failed flow without a local address: {f:?}"));
        let (backend, source) = lab.explain(local, vip);
        assert_eq!(
            backend.as_deref(),
            Some(victim_addr.as_str()),
            "{what}: a flow to a healthy backend failed: {f:?} (explain: {source})"
        );
        *sources.entry(source).or_insert(0) += 1;
    }
    println!(
        "{what}: {} flows failed, each sent to {victim} before it was reported down \
         (explain sources: {sources:?}); {} flows after, none failed; {returned} reached \
         {victim} after its return",
        failed.len(),
        after_down.len()
    );

    assert!(
        detect <= check.down_bound() + POLL_ALLOWANCE,
        "{what}: down reported after {detect:?}, bound {:?} + {POLL_ALLOWANCE:?}",
        check.down_bound()
    );
    assert!(
        back <= check.up_bound() + POLL_ALLOWANCE,
        "{what}: up reported after {back:?}, bound {:?} + {POLL_ALLOWANCE:?}",
        check.up_bound()
    );
    Outage {
        stopped,
        down,
        started,
        up,
        flows,
    }
}

#[test]
fn tcp_check() {
    let check = fast("tcp");
    let lab = Lab::with_lbd(3, |_| {}, |lab| web_vip(lab, &["b1", "b2", "b3"], &check));
    let svc = Service::Greeter(80);
    outage(
        &lab,
        "tcp",
        WEB,
        web(),
        FlowProto::Tcp,
        &check,
        "b2",
        || lab.stop_service("b2", svc),
        || lab.start_service("b2", svc).expect("restarting b2"),
    );
    let m = scrape(&lab);
    let l = [("vip", WEB), ("backend", "10.10.0.12")];
    assert_eq!(m.get("lb_backend_up", &l), Some(1.0));
    assert_eq!(
        m.get(
            "lb_backend_transitions_total",
            &[l[0], l[1], ("state", "down")]
        ),
        Some(1.0)
    );
    // Up at the start (after `rise` checks) and after the return.
    assert_eq!(
        m.get(
            "lb_backend_transitions_total",
            &[l[0], l[1], ("state", "up")]
        ),
        Some(2.0)
    );
    assert!(m.sum("lb_failover_apply_seconds_count", &[]) >= 1.0);
}

#[test]
fn http_check() {
    // The health endpoint is its own HTTP server on 8081; the service is
    // the greeter on 80.
    let check = fast("http").port(HEALTH_PORT).path("/healthz");
    let lab = Lab::with_lbd(
        3,
        |lab| {
            for b in ["b1", "b2", "b3"] {
                lab.start_service(b, Service::Http(HEALTH_PORT)).unwrap();
            }
        },
        |lab| web_vip(lab, &["b1", "b2", "b3"], &check),
    );
    let (svc, health) = (Service::Greeter(80), Service::Http(HEALTH_PORT));

    // The backend stops: its service and its health endpoint.
    outage(
        &lab,
        "http, stopped",
        WEB,
        web(),
        FlowProto::Tcp,
        &check,
        "b2",
        || {
            // Measured from the health endpoint's stop; flows fail only
            // after the service's, just after.
            let at = lab.stop_service("b2", health);
            lab.stop_service("b2", svc);
            at
        },
        || {
            lab.start_service("b2", svc).unwrap();
            lab.start_service("b2", health).unwrap()
        },
    );

    // The backend says it is unhealthy (503) while its service runs: no
    // flow may fail at all, and none may reach it once it is reported down
    // (it would be answered, by its name, if one did).
    let o = outage(
        &lab,
        "http, 503",
        WEB,
        web(),
        FlowProto::Tcp,
        &check,
        "b2",
        || {
            lab.set_http_healthy("b2", HEALTH_PORT, false);
            Instant::now()
        },
        || {
            lab.set_http_healthy("b2", HEALTH_PORT, true);
            Instant::now()
        },
    );
    let failed: Vec<&Flow> = o.flows.iter().filter(|f| f.result.is_err()).collect();
    assert!(failed.is_empty(), "http, 503: flows failed: {failed:?}");
    let during: usize = o
        .flows
        .iter()
        .filter(|f| f.started >= o.down && f.ended <= o.started)
        .count();
    assert!(during > 0, "http, 503: no flows while b2 was down");
    println!(
        "http, 503: {} flows between down ({:?} after the stop) and the return, none to b2; up {:?} after",
        during,
        o.down - o.stopped,
        o.up - o.started
    );
}

#[test]
fn udp_check() {
    // A UDP check fails only on an ICMP port unreachable. Linux limits the
    // ICMP errors a host sends to one destination (net.ipv4.icmp_ratelimit,
    // 1000 ms, after a burst of 6): with checks every 300 ms most probes
    // of a stopped port would get no answer, and count as up, so `fall`
    // failures in a row would take a matter of luck. The limit is off in
    // the backends' namespaces, making detection deterministic (and
    // letting each failed client flow learn "refused" at once).
    let check = fast("udp");
    let lab = Lab::with_lbd(
        3,
        |lab| {
            lab.backend_sysctl("net.ipv4.icmp_ratelimit", "0").unwrap();
            lab.backend_sysctl("net.ipv6.icmp.ratelimit", "0").unwrap();
            for b in ["b1", "b2", "b3"] {
                lab.start_service(b, Service::Udp(UDP_PORT)).unwrap();
            }
        },
        |lab| {
            vec![VipSpec::new(
                "dns",
                VIP_EXTRA,
                Some(UDP_PORT),
                &addrs(lab, &["b1", "b2", "b3"]),
            )
            .udp()
            .with_health(check.clone())]
        },
    );
    let svc = Service::Udp(UDP_PORT);
    let o = outage(
        &lab,
        "udp",
        DNS,
        dns(),
        FlowProto::Udp,
        &check,
        "b2",
        || lab.stop_service("b2", svc),
        || lab.start_service("b2", svc).expect("restarting b2"),
    );
    // A datagram to the stopped port is refused (ICMP), not lost.
    for f in o.flows.iter().filter(|f| f.result.is_err()) {
        let e = f.result.as_ref().unwrap_err();
        assert!(
            e.contains("refused"),
            "udp: a failed flow was not refused: {f:?}"
        );
    }
}

/// A backend that stops answering altogether: its probes time out, so here
/// the timeout counts. With fall = 5 and a timeout close to the interval
/// the bound `fall × interval + timeout + interval` (1380 ms, + 200 ms)
/// holds only if checks start every interval whatever the last one took:
/// if each interval is counted from the end of the previous check, five
/// timed-out checks take at least 4 × (180 + 180) + 180 = 1620 ms.
#[test]
fn unresponsive_backend() {
    let check = HealthCheck::new(
        "tcp",
        Duration::from_millis(200),
        Duration::from_millis(180),
        2,
        5,
    );
    let lab = Lab::with_lbd(2, |_| {}, |lab| web_vip(lab, &["b1", "b2"], &check));
    let b2 = v4(&lab, "b2");
    lab.wait_all_up(WEB, Duration::from_secs(10)).unwrap();
    lab.set_backend_cable("b2", false).unwrap();
    let pulled = Instant::now();
    let down = wait_reported(&lab, WEB, &b2, "down", &check).unwrap();
    lab.set_backend_cable("b2", true).unwrap();
    let plugged = Instant::now();
    let up = wait_reported(&lab, WEB, &b2, "up", &check).unwrap();
    println!(
        "unresponsive: down reported {} ms after the cable was pulled (bound {} + {} ms), \
         up {} ms after it was plugged (bound {} + {} ms)",
        ms(down - pulled),
        ms(check.down_bound()),
        ms(POLL_ALLOWANCE),
        ms(up - plugged),
        ms(check.up_bound()),
        ms(POLL_ALLOWANCE)
    );
    // At least `fall` checks failed (more after the transition, until the
    // cable was back).
    let m = scrape(&lab);
    let fails = m
        .get(
            "lb_health_checks_total",
            &[("vip", WEB), ("backend", b2.as_str()), ("result", "fail")],
        )
        .unwrap_or(0.0);
    println!("unresponsive: {fails} failed checks");
    assert!(fails >= check.fall as f64, "{fails} failed checks");
    assert!(
        down - pulled <= check.down_bound() + POLL_ALLOWANCE,
        "down reported after {:?}, bound {:?} + {POLL_ALLOWANCE:?}",
        down - pulled,
        check.down_bound()
    );
    assert!(
        up - plugged <= check.up_bound() + POLL_ALLOWANCE,
        "up reported after {:?}, bound {:?} + {POLL_ALLOWANCE:?}",
        up - plugged,
        check.up_bound()
    );
}

// ---------------------------------------------------------------- flapping

/// Toggles `victim`'s greeter on 80 at `start + k × period` for k = 1..=n
/// (stopping it first if `from_up`), while another thread polls `lbctl
/// --json status` every 50 ms until `settle` after the last toggle; every
/// state it saw; the toggle instants (each the moment the socket opened or
/// closed).
fn flap(
    lab: &Lab,
    victim: &str,
    from_up: bool,
    period: Duration,
    n: u32,
    settle: Duration,
) -> (BTreeMap<String, usize>, Vec<Instant>) {
    let addr = v4(lab, victim);
    let svc = Service::Greeter(80);
    let seen = Mutex::new(BTreeMap::new());
    let done = AtomicBool::new(false);
    let mut toggles = Vec::new();
    thread::scope(|s| {
        s.spawn(|| {
            let give_up = Instant::now() + period * n + settle + Duration::from_secs(30);
            while !done.load(Ordering::Relaxed) && Instant::now() < give_up {
                let asked = Instant::now();
                let h = health_of(&lab.status(), WEB)
                    .get(&addr)
                    .cloned()
                    .unwrap_or_default();
                *seen.lock().unwrap().entry(h).or_insert(0) += 1;
                thread::sleep(STATUS_POLL.saturating_sub(asked.elapsed()));
            }
        });
        let t0 = Instant::now();
        let mut up = from_up;
        for k in 1..=n {
            let at = t0 + period * k;
            thread::sleep(at.saturating_duration_since(Instant::now()));
            let t = if up {
                lab.stop_service(victim, svc)
            } else {
                lab.start_service(victim, svc).unwrap()
            };
            up = !up;
            toggles.push(t);
        }
        thread::sleep(settle);
        done.store(true, Ordering::Relaxed);
    });
    (seen.into_inner().unwrap(), toggles)
}

#[test]
fn flapping_does_not_flap() {
    // Checks start at least 0.9 × interval apart (±10% jitter), so three
    // checks in a row span at least 2 × 0.9 × 250 = 450 ms, more than one
    // 300 ms phase of the flap: no run of rise = fall = 3 equal results can
    // happen while the backend alternates, in either direction. The test
    // checks that its phases really were shorter than 450 ms.
    let interval = Duration::from_millis(250);
    let check = HealthCheck::new("tcp", interval, Duration::from_millis(150), 3, 3);
    let period = Duration::from_millis(300);
    let lab = Lab::with_lbd(2, |_| {}, |lab| web_vip(lab, &["b1", "b2"], &check));
    let b2 = v4(&lab, "b2");
    let l = |extra: (&'static str, &'static str)| [("vip", WEB), ("backend", b2.as_str()), extra];
    let transitions = |m: &prom::Scrape| {
        (
            m.get("lb_backend_transitions_total", &l(("state", "up"))),
            m.get("lb_backend_transitions_total", &l(("state", "down"))),
        )
    };
    let checks = |m: &prom::Scrape, result| {
        m.get("lb_health_checks_total", &l(("result", result)))
            .unwrap_or(0.0)
    };
    let longest = 2 * interval * 9 / 10;
    lab.wait_all_up(WEB, Duration::from_secs(10)).unwrap();

    for from_up in [true, false] {
        let what = if from_up { "from up" } else { "from down" };
        let state = if from_up { "up" } else { "down" };
        if !from_up {
            lab.stop_service("b2", Service::Greeter(80));
            wait_reported(&lab, WEB, &b2, "down", &check).unwrap();
        }
        let before = scrape(&lab);
        // 10 toggles: it ends as it started.
        let (seen, toggles) = flap(&lab, "b2", from_up, period, 10, Duration::from_millis(800));
        let after = scrape(&lab);
        let phases: Vec<u128> = toggles.windows(2).map(|w| ms(w[1] - w[0])).collect();
        println!(
            "flapping {what}: phases {phases:?} ms; states seen {seen:?}; checks ok {} fail {}; \
             transitions {:?} -> {:?}",
            checks(&after, "ok") - checks(&before, "ok"),
            checks(&after, "fail") - checks(&before, "fail"),
            transitions(&before),
            transitions(&after)
        );
        assert!(
            phases.iter().all(|p| *p < ms(longest)),
            "{what}: the test's own toggling was late (a phase of {longest:?} or more \
             allows {} equal checks in a row): {phases:?}",
            check.rise
        );
        assert_eq!(
            seen.keys().map(String::as_str).collect::<Vec<_>>(),
            vec![state],
            "{what}: b2's reported state changed while it flapped: {seen:?}"
        );
        assert!(
            seen.values().sum::<usize>() >= 40,
            "{what}: too few status polls: {seen:?}"
        );
        assert_eq!(
            transitions(&after),
            transitions(&before),
            "{what}: lb_backend_transitions_total moved"
        );
        // The checks did see the flapping: both results, several times.
        for result in ["ok", "fail"] {
            let n = checks(&after, result) - checks(&before, result);
            assert!(n >= 3.0, "{what}: only {n} {result} checks while flapping");
        }
    }
    // Still alive: it comes back when it stays up.
    lab.start_service("b2", Service::Greeter(80)).unwrap();
    wait_reported(&lab, WEB, &b2, "up", &check).unwrap();
}

// ---------------------------------------------------------------- fail open

#[test]
fn all_down_fails_open() {
    // Checked on 8080 while the service is on 80: every backend can fail
    // its check while its service still answers.
    let check = fast("tcp").port(8080);
    let names = ["b1", "b2", "b3"];
    let lab = Lab::with_lbd(3, |_| {}, |lab| web_vip(lab, &names, &check));
    let loud = "ALL BACKENDS DOWN";
    lab.wait_all_up(WEB, Duration::from_secs(10)).unwrap();
    let s = lab.status();
    assert!(!fail_open_of(&s, WEB), "{}", health_view(&s));
    assert!(!lab.lbctl_ok(&["status"]).contains(loud));
    assert_eq!(
        scrape(&lab).get("lb_vip_fail_open", &[("vip", WEB)]),
        Some(0.0)
    );

    let stopped = names.map(|b| lab.stop_service(b, Service::Greeter(8080)));
    let (at, s) = lab
        .wait_status(
            "all backends down",
            check.down_bound() + Duration::from_secs(5),
            |s| health_of(s, WEB).values().all(|h| h == "down"),
        )
        .unwrap();
    let last = *stopped.iter().max().unwrap();
    println!(
        "all down reported {} ms after the last stop (bound {} + {} ms)",
        ms(at - last),
        ms(check.down_bound()),
        ms(POLL_ALLOWANCE)
    );
    assert!(
        at - last <= check.down_bound() + POLL_ALLOWANCE,
        "all down reported {:?} after the last stop",
        at - last
    );
    assert!(
        fail_open_of(&s, WEB),
        "fail_open in JSON: {}",
        health_view(&s)
    );
    let text = lab.lbctl_ok(&["status"]);
    println!("{text}");
    assert!(
        text.lines().any(|l| l.contains(loud)),
        "lbctl status says it loudly:\n{text}"
    );
    let m = scrape(&lab);
    assert_eq!(m.get("lb_vip_fail_open", &[("vip", WEB)]), Some(1.0));
    for b in names {
        let a = v4(&lab, b);
        assert_eq!(
            m.get("lb_backend_up", &[("vip", WEB), ("backend", a.as_str())]),
            Some(0.0),
            "{b}"
        );
    }
    assert!(
        std::fs::read_to_string(&lab.log_path)
            .unwrap_or_default()
            .contains(loud),
        "the log says it:\n{}",
        lab.log_tail(20)
    );

    // Traffic still flows, to all of them.
    let by = lab
        .spread(web(), 60)
        .unwrap_or_else(|e| panic!("failing open: {e}\n{}", lab.log_tail(30)));
    println!("failing open: {by:?}");
    assert_eq!(by.len(), 3, "every backend gets flows: {by:?}");

    // One backend back: the VIP closes and sends only to it.
    lab.start_service("b1", Service::Greeter(8080)).unwrap();
    let b1 = v4(&lab, "b1");
    wait_reported(&lab, WEB, &b1, "up", &check).unwrap();
    let s = lab.status();
    assert!(!fail_open_of(&s, WEB), "{}", health_view(&s));
    assert!(!lab.lbctl_ok(&["status"]).contains(loud));
    assert_eq!(
        scrape(&lab).get("lb_vip_fail_open", &[("vip", WEB)]),
        Some(0.0)
    );
    let by = lab.spread(web(), 30).unwrap();
    assert_eq!(
        by,
        BTreeMap::from([("b1".to_string(), 30)]),
        "only b1 is up"
    );
}

// ---------------------------------------------------------------- metrics

/// The documented families and their types.
const FAMILIES: [(&str, &str); 19] = [
    ("lb_vip_packets_total", "counter"),
    ("lb_vip_bytes_total", "counter"),
    ("lb_backend_packets_total", "counter"),
    ("lb_backend_bytes_total", "counter"),
    ("lb_backend_up", "gauge"),
    ("lb_backend_weight", "gauge"),
    ("lb_vip_fail_open", "gauge"),
    ("lb_tier_share_percent", "gauge"),
    ("lb_tier_backends_healthy", "gauge"),
    ("lb_xdp_actions_total", "counter"),
    ("lb_drops_total", "counter"),
    ("lb_conntrack_lookups_total", "counter"),
    ("lb_events_total", "counter"),
    ("lb_health_checks_total", "counter"),
    ("lb_health_check_duration_seconds", "histogram"),
    ("lb_failover_apply_seconds", "histogram"),
    ("lb_backend_transitions_total", "counter"),
    ("lb_config_reloads_total", "counter"),
    ("lb_health_checks_running", "gauge"),
];

#[test]
fn metrics() {
    let names = ["b1", "b2"];
    let lab = Lab::with_lbd(
        2,
        |lab| {
            for b in names {
                lab.start_service(b, Service::Udp(UDP_PORT)).unwrap();
            }
        },
        |lab| {
            vec![
                VipSpec::new("web", VIP_WEB, Some(80), &addrs(lab, &names))
                    .with_health(fast("tcp")),
                VipSpec::new("dns", VIP_EXTRA, Some(UDP_PORT), &addrs(lab, &names))
                    .udp()
                    .with_health(fast("udp")),
            ]
        },
    );
    lab.wait_all_up(WEB, Duration::from_secs(10)).unwrap();
    lab.wait_all_up(DNS, Duration::from_secs(10)).unwrap();
    // A reload that changes nothing, so that every family has a sample
    // (labelled families appear with their first sample).
    lab.lbctl_ok(&["reload"]);

    // The exposition: its type, every family documented, values sane.
    let r = lab.metrics_get("/metrics").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let before =
        prom::parse(&r.body).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{}", r.body));
    for (name, kind) in FAMILIES {
        assert_eq!(before.kind(name), Some(kind), "family {name}\n{}", r.body);
        assert!(
            before.families[name].help.is_some(),
            "{name} has a HELP line"
        );
    }
    for vip in [WEB, DNS] {
        assert_eq!(before.get("lb_vip_fail_open", &[("vip", vip)]), Some(0.0));
        // No tiers: tier 0 takes every new flow, with both backends up.
        let tier0 = [("vip", vip), ("tier", "0")];
        assert_eq!(before.get("lb_tier_share_percent", &tier0), Some(100.0));
        assert_eq!(before.get("lb_tier_backends_healthy", &tier0), Some(2.0));
        for b in names {
            let a = v4(&lab, b);
            let l = [("vip", vip), ("backend", a.as_str())];
            assert_eq!(before.get("lb_backend_up", &l), Some(1.0), "{vip} {b}");
            assert_eq!(
                before.get("lb_backend_weight", &l),
                Some(100.0),
                "{vip} {b}"
            );
            assert!(
                before
                    .get("lb_health_checks_total", &[l[0], l[1], ("result", "ok")])
                    .unwrap_or(0.0)
                    >= 2.0,
                "{vip} {b}: `rise` ok checks"
            );
        }
    }
    assert_eq!(before.get("lb_health_checks_running", &[]), Some(4.0));
    assert_eq!(
        before.get("lb_config_reloads_total", &[("result", "ok")]),
        Some(1.0)
    );
    // Every check is timed: the histogram counts what the counter counts
    // (a check may land between the two families' encoding).
    let checks = before.sum("lb_health_checks_total", &[]);
    let timed = before.sum("lb_health_check_duration_seconds_count", &[]);
    assert!(
        timed >= checks && timed <= checks + 4.0,
        "{timed} timed checks, {checks} counted"
    );

    // Only /metrics is served.
    for path in ["/", "/metric", "/metrics/x", "/healthz", "/v1/status"] {
        let r = lab.metrics_get(path).unwrap();
        assert_eq!(r.status, 404, "GET {path}: {r:?}");
    }

    // Exactly N datagrams to the UDP VIP, each answered (so each was
    // forwarded), from several sockets so that both backends get some.
    const N: usize = 100;
    const PAYLOAD: usize = 32;
    let answered = lab.in_client(|| {
        let mut answered = 0;
        for s in 0..10 {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.connect(dns()).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            for i in 0..N / 10 {
                let msg = format!("{s:02} {i:02} {}", "x".repeat(PAYLOAD - 6));
                assert_eq!(msg.len(), PAYLOAD);
                sock.send(msg.as_bytes()).unwrap();
                let mut buf = [0u8; 64];
                if sock.recv(&mut buf).is_ok() {
                    answered += 1;
                }
            }
        }
        answered
    });
    assert_eq!(answered, N, "every datagram answered");
    let after = scrape(&lab);

    let delta = |name: &str, want: &[(&str, &str)]| after.sum(name, want) - before.sum(name, want);
    // Ethernet 14 + IPv4 20 + UDP 8 + payload: frames as received.
    let frame = (14 + 20 + 8 + PAYLOAD) as f64;
    let vip_packets = delta("lb_vip_packets_total", &[("vip", DNS)]);
    let be_packets = delta("lb_backend_packets_total", &[("vip", DNS)]);
    let vip_bytes = delta("lb_vip_bytes_total", &[("vip", DNS)]);
    let be_bytes = delta("lb_backend_bytes_total", &[("vip", DNS)]);
    let tx = delta("lb_xdp_actions_total", &[("action", "tx")]);
    let per_backend: Vec<f64> = names
        .iter()
        .map(|b| {
            let a = v4(&lab, b);
            delta(
                "lb_backend_packets_total",
                &[("vip", DNS), ("backend", a.as_str())],
            )
        })
        .collect();
    println!(
        "{N} datagrams: vip packets +{vip_packets}, backends +{be_packets} {per_backend:?}, \
         vip bytes +{vip_bytes}, backend bytes +{be_bytes}, xdp tx +{tx}"
    );
    assert_eq!(vip_packets, N as f64, "lb_vip_packets_total");
    assert_eq!(be_packets, N as f64, "sum of lb_backend_packets_total");
    assert_eq!(vip_bytes, N as f64 * frame, "lb_vip_bytes_total");
    assert_eq!(be_bytes, N as f64 * frame, "sum of lb_backend_bytes_total");
    assert!(
        tx >= N as f64,
        "lb_xdp_actions_total{{action=\"tx\"}} +{tx}"
    );
    assert!(
        per_backend.iter().all(|p| *p > 0.0),
        "both backends got datagrams: {per_backend:?}"
    );
    assert_eq!(
        delta("lb_vip_packets_total", &[("vip", WEB)]),
        0.0,
        "no traffic to the TCP VIP"
    );
    // The same counters as `lbctl status` shows.
    let s = lab.status();
    assert_eq!(
        vip_of(&s, DNS).get("packets").as_f64(),
        after.get("lb_vip_packets_total", &[("vip", DNS)]),
        "status and metrics agree"
    );
}

#[test]
fn prometheus_parser_is_strict() {
    let good = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 3\n\
                # TYPE g gauge\ng -1.5e3\ng{k=\"v\",} NaN 1700000000000\n\
                # HELP h Hist.\n# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
                h_sum 0.3\nh_count 2\n";
    let s = prom::parse(good).unwrap();
    assert_eq!(s.get("a_total", &[("x", "q\"\\\n")]), Some(3.0));
    assert_eq!(s.get("g", &[]), Some(-1500.0));
    assert_eq!(s.kind("h"), Some("histogram"));
    let bad = [
        ("no newline at the end", "# TYPE g gauge\ng 1"),
        ("no TYPE", "g 1\n"),
        ("a counter not named _total", "# TYPE c counter\nc 1\n"),
        ("a negative counter", "# TYPE c_total counter\nc_total -1\n"),
        ("bad value", "# TYPE g gauge\ng one\n"),
        ("bad escape", "# TYPE g gauge\ng{a=\"\\t\"} 1\n"),
        ("unquoted", "# TYPE g gauge\ng{a=b} 1\n"),
        ("duplicate label", "# TYPE g gauge\ng{a=\"1\",a=\"2\"} 1\n"),
        ("duplicate series", "# TYPE g gauge\ng 1\ng 2\n"),
        ("sample of another family", "# TYPE g gauge\nh 1\n"),
        ("unknown type", "# TYPE g gauges\ng 1\n"),
        ("second TYPE", "# TYPE g gauge\ng 1\n# TYPE g gauge\n"),
        ("HELP without TYPE", "# HELP g x\n"),
        ("OpenMetrics EOF", "# TYPE g gauge\ng 1\n# EOF\n"),
        ("trailing garbage", "# TYPE g gauge\ng 1 2 3\n"),
        ("bad name", "# TYPE 1g gauge\n1g 1\n"),
        (
            "buckets decrease",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        ),
        (
            "no +Inf bucket",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        ),
        (
            "+Inf != count",
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 2\n",
        ),
        ("no _sum", "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n"),
    ];
    for (what, text) in bad {
        assert!(prom::parse(text).is_err(), "{what}: {text:?} parsed");
    }
}

// ---------------------------------------------------------------- Prometheus text format

/// A strict reader of the Prometheus text exposition format (0.0.4): what
/// a scrape must be, and lookups into it.
mod prom {
    use std::collections::{BTreeMap, BTreeSet};

    pub type Labels = BTreeMap<String, String>;

    #[derive(Clone, Debug, PartialEq)]
    pub struct Sample {
        pub name: String,
        pub labels: Labels,
        pub value: f64,
    }

    #[derive(Clone, Debug, Default)]
    pub struct Family {
        pub help: Option<String>,
        /// counter, gauge, histogram, summary or untyped.
        pub kind: String,
        pub samples: Vec<Sample>,
    }

    #[derive(Clone, Debug, Default)]
    pub struct Scrape {
        /// By the name in their `# TYPE` line.
        pub families: BTreeMap<String, Family>,
    }

    fn metric_name_ok(n: &str) -> bool {
        let mut c = n.chars();
        matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
    }

    fn label_name_ok(n: &str) -> bool {
        let mut c = n.chars();
        matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            && !n.starts_with("__")
    }

    /// A sample value as Go's ParseFloat reads it in this format: a
    /// decimal number, `NaN`, `+Inf` or `-Inf`.
    fn value(t: &str) -> Result<f64, String> {
        match t {
            "NaN" => return Ok(f64::NAN),
            "+Inf" | "Inf" => return Ok(f64::INFINITY),
            "-Inf" => return Ok(f64::NEG_INFINITY),
            _ => {}
        }
        let ok = !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
            && t.chars().any(|c| c.is_ascii_digit());
        if !ok {
            return Err(format!("bad value {t:?}"));
        }
        t.parse::<f64>()
            .map_err(|e| format!("bad value {t:?}: {e}"))
    }

    /// `name{a="x",b="y"}` (labels optional) at the start of `s`; the rest.
    fn name_and_labels(s: &str) -> Result<(String, Labels, &str), String> {
        let end = s.find(['{', ' ', '\t']).unwrap_or(s.len());
        let name = &s[..end];
        if !metric_name_ok(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        let mut rest = &s[end..];
        let mut labels = Labels::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut r = r;
            loop {
                r = r.trim_start_matches([' ', '\t']);
                if let Some(after) = r.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = r.find('=').ok_or("label without '='")?;
                let lname = r[..eq].trim_end_matches([' ', '\t']);
                if !label_name_ok(lname) {
                    return Err(format!("bad label name {lname:?}"));
                }
                r = r[eq + 1..].trim_start_matches([' ', '\t']);
                r = r
                    .strip_prefix('"')
                    .ok_or(format!("label {lname}: value not quoted"))?;
                let mut v = String::new();
                let mut chars = r.char_indices();
                let close = loop {
                    match chars.next() {
                        None => return Err(format!("label {lname}: unterminated value")),
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => v.push('\\'),
                            Some((_, '"')) => v.push('"'),
                            Some((_, 'n')) => v.push('\n'),
                            other => return Err(format!("label {lname}: bad escape {other:?}")),
                        },
                        Some((_, '\n')) => return Err(format!("label {lname}: raw newline")),
                        Some((_, c)) => v.push(c),
                    }
                };
                if labels.insert(lname.to_string(), v).is_some() {
                    return Err(format!("label {lname} twice"));
                }
                r = r[close + 1..].trim_start_matches([' ', '\t']);
                if let Some(after) = r.strip_prefix(',') {
                    r = after;
                } else if !r.starts_with('}') {
                    return Err(format!("expected ',' or '}}' after label {lname}"));
                }
            }
        }
        Ok((name.to_string(), labels, rest))
    }

    /// The family a sample named `name` belongs to, given the current
    /// family's name and type.
    fn belongs(family: &str, kind: &str, name: &str, labels: &Labels) -> Result<(), String> {
        let ok = match kind {
            "counter" | "gauge" | "untyped" => name == family,
            "histogram" => {
                (name == format!("{family}_bucket") && labels.contains_key("le"))
                    || name == format!("{family}_sum")
                    || name == format!("{family}_count")
            }
            "summary" => {
                name == family
                    || name == format!("{family}_sum")
                    || name == format!("{family}_count")
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "sample {name} does not belong to the {kind} family {family} declared before it"
            ))
        }
    }

    pub fn parse(text: &str) -> Result<Scrape, String> {
        if !text.is_empty() && !text.ends_with('\n') {
            return Err("the last line does not end with a newline".into());
        }
        let mut out = Scrape::default();
        let mut helps: BTreeMap<String, String> = BTreeMap::new();
        let mut current: Option<String> = None;
        let mut series: BTreeSet<(String, Vec<(String, String)>)> = BTreeSet::new();
        for (i, line) in text.lines().enumerate() {
            let at = |e: String| format!("line {}: {e}: {line:?}", i + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('#') {
                let rest = rest.trim_start_matches([' ', '\t']);
                let mut words = rest.splitn(3, [' ', '\t']);
                match words.next() {
                    Some("HELP") => {
                        let name = words
                            .next()
                            .ok_or_else(|| at("HELP without a name".into()))?;
                        if !metric_name_ok(name) {
                            return Err(at(format!("bad metric name {name:?}")));
                        }
                        let doc = words.next().unwrap_or("");
                        let mut d = String::new();
                        let mut cs = doc.chars();
                        while let Some(c) = cs.next() {
                            match c {
                                '\\' => match cs.next() {
                                    Some('\\') => d.push('\\'),
                                    Some('n') => d.push('\n'),
                                    other => {
                                        return Err(at(format!("bad escape {other:?} in HELP")))
                                    }
                                },
                                c => d.push(c),
                            }
                        }
                        if helps.insert(name.to_string(), d).is_some() {
                            return Err(at(format!("second HELP for {name}")));
                        }
                    }
                    Some("TYPE") => {
                        let name = words
                            .next()
                            .ok_or_else(|| at("TYPE without a name".into()))?;
                        if !metric_name_ok(name) {
                            return Err(at(format!("bad metric name {name:?}")));
                        }
                        let kind = words.next().unwrap_or("").trim_end();
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                        {
                            return Err(at(format!("unknown type {kind:?}")));
                        }
                        if out.families.contains_key(name) {
                            return Err(at(format!("second TYPE for {name}")));
                        }
                        if series
                            .iter()
                            .any(|(n, _)| n == name || n.starts_with(&format!("{name}_")))
                        {
                            return Err(at(format!("TYPE for {name} after its samples")));
                        }
                        if kind == "counter" && !name.ends_with("_total") {
                            return Err(at(format!("counter {name} is not named *_total")));
                        }
                        out.families.insert(
                            name.to_string(),
                            Family {
                                kind: kind.to_string(),
                                ..Default::default()
                            },
                        );
                        current = Some(name.to_string());
                    }
                    // Any other comment is allowed by the format, but an
                    // OpenMetrics end marker means the wrong format.
                    Some("EOF") => return Err(at("an OpenMetrics '# EOF' marker".into())),
                    _ => {}
                }
                continue;
            }
            let (name, labels, rest) = name_and_labels(line).map_err(at)?;
            let mut words = rest.split([' ', '\t']).filter(|w| !w.is_empty());
            let v = value(words.next().ok_or_else(|| at("no value".into()))?).map_err(at)?;
            if let Some(ts) = words.next() {
                ts.parse::<i64>()
                    .map_err(|_| at(format!("bad timestamp {ts:?}")))?;
            }
            if let Some(extra) = words.next() {
                return Err(at(format!("trailing {extra:?}")));
            }
            // Strict: every sample belongs to the family whose TYPE line
            // came last (families are contiguous).
            let fam = current
                .clone()
                .ok_or_else(|| at("a sample before any TYPE line".into()))?;
            let f = out.families.get_mut(&fam).expect("declared");
            belongs(&fam, &f.kind, &name, &labels).map_err(at)?;
            if f.kind == "counter" && (v.is_nan() || v < 0.0) {
                return Err(at(format!("counter value {v}")));
            }
            let key = (
                name.clone(),
                labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            );
            if !series.insert(key) {
                return Err(at("the same series twice".into()));
            }
            f.samples.push(Sample {
                name,
                labels,
                value: v,
            });
        }
        for (name, help) in helps {
            match out.families.get_mut(&name) {
                Some(f) => f.help = Some(help),
                None => return Err(format!("HELP for {name}, which has no TYPE")),
            }
        }
        for (name, f) in &out.families {
            if f.kind == "histogram" {
                check_histogram(name, f)?;
            }
        }
        Ok(out)
    }

    /// Per label set: buckets in increasing `le`, counts non-decreasing,
    /// the last `+Inf` and equal to `_count`; a `_sum`.
    fn check_histogram(name: &str, f: &Family) -> Result<(), String> {
        // Per label set (without `le`): (le, count) buckets, _sum, _count.
        type Series = (Vec<(f64, f64)>, Option<f64>, Option<f64>);
        let mut sets: BTreeMap<Vec<(String, String)>, Series> = BTreeMap::new();
        for s in &f.samples {
            let key: Vec<(String, String)> = s
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let e = sets.entry(key).or_default();
            if s.name.ends_with("_bucket") {
                let le = value(&s.labels["le"]).map_err(|e| format!("{name}: le: {e}"))?;
                e.0.push((le, s.value));
            } else if s.name.ends_with("_sum") {
                e.1 = Some(s.value);
            } else {
                e.2 = Some(s.value);
            }
        }
        if sets.is_empty() {
            return Err(format!("histogram {name} has no samples"));
        }
        for (labels, (buckets, sum, count)) in sets {
            let what = format!("histogram {name}{labels:?}");
            for w in buckets.windows(2) {
                if w[0].0.is_nan() || w[1].0.is_nan() || w[0].0 >= w[1].0 {
                    return Err(format!("{what}: le {} then {}", w[0].0, w[1].0));
                }
                if w[1].1 < w[0].1 {
                    return Err(format!("{what}: bucket counts decrease: {:?}", buckets));
                }
            }
            let last = buckets.last().ok_or(format!("{what}: no buckets"))?;
            if last.0 != f64::INFINITY {
                return Err(format!(
                    "{what}: the last bucket is le={}, not +Inf",
                    last.0
                ));
            }
            let count = count.ok_or(format!("{what}: no _count"))?;
            if last.1 != count {
                return Err(format!("{what}: +Inf bucket {} != _count {count}", last.1));
            }
            let sum = sum.ok_or(format!("{what}: no _sum"))?;
            if sum.is_nan() {
                return Err(format!("{what}: _sum is NaN"));
            }
        }
        Ok(())
    }

    impl Scrape {
        /// The value of the sample `name` whose labels are exactly `want`;
        /// None if there is none.
        pub fn get(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
            self.find(name, want)
                .into_iter()
                .find(|s| s.labels.len() == want.len())
                .map(|s| s.value)
        }

        /// The sum of the samples `name` whose labels include `want`.
        pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
            self.find(name, want).iter().map(|s| s.value).sum()
        }

        pub fn find(&self, name: &str, want: &[(&str, &str)]) -> Vec<&Sample> {
            self.families
                .values()
                .flat_map(|f| f.samples.iter())
                .filter(|s| {
                    s.name == name
                        && want
                            .iter()
                            .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .collect()
        }

        /// The type of a family, by its `# TYPE` name.
        pub fn kind(&self, family: &str) -> Option<&str> {
            self.families.get(family).map(|f| f.kind.as_str())
        }
    }
}
