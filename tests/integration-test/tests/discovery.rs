//! Backends from DNS (`backends_from`), against a real Knot DNS serving
//! SRV records in the balancer's namespace (`lb_lab::knot`):
//! [`srv_records_add_and_remove_backends_and_failures_keep_the_set`] —
//! records added live become backends (checked, so they start down; the SRV
//! priority's rank is the tier), a removed record's backend drains and then
//! leaves; the server paused (queries time out): the set is kept and the
//! source is stale; an empty answer is held for `hold_empty`, then applied.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use lb_lab::{
    knot::Knot,
    lab::{Lab, VIP_WEB},
    status::{vip_of, Json},
};

const HOLD_EMPTY: u64 = 3;
const DRAIN: u64 = 2;

/// Each backend's (weight, tier, health, drained) by address, and whether
/// it came from the source.
fn backends(lab: &Lab) -> BTreeMap<String, (u64, u64, String, bool)> {
    let s = lab.status();
    vip_of(&s, "web")
        .get("backends")
        .arr()
        .iter()
        .map(|b| {
            (
                b.get("addr").str().to_string(),
                (
                    b.get("weight").as_f64().unwrap_or(0.0) as u64,
                    b.get("tier").as_f64().unwrap_or(0.0) as u64,
                    b.get("health").str().to_string(),
                    b.get("drained").as_bool().unwrap_or(false),
                ),
            )
        })
        .collect()
}

fn discovery(lab: &Lab) -> Json {
    vip_of(&lab.status(), "web").get("discovery").clone()
}

/// Waits until `ok` holds of the backends; how long that took.
fn wait_for(
    lab: &Lab,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&BTreeMap<String, (u64, u64, String, bool)>) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let b = backends(lab);
        if ok(&b) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: backends {b:?}\n{}",
            lab.log_tail(30)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn srv(prio: u16, weight: u16, host: &str) -> String {
    format!("_web._tcp IN SRV {prio} {weight} 80 {host}")
}

#[test]
fn srv_records_add_and_remove_backends_and_failures_keep_the_set() {
    let mut lab = Lab::new(3).expect("lab");
    let addr = |n: &str| lab.backend(n).v4.to_string();
    let (b1, b2, b3) = (addr("b1"), addr("b2"), addr("b3"));
    let hosts = vec![
        format!("b1 IN A {b1}"),
        format!("b2 IN A {b2}"),
        format!("b3 IN A {b3}"),
    ];
    let with = |srvs: &[String]| -> Vec<String> {
        hosts.iter().cloned().chain(srvs.iter().cloned()).collect()
    };
    let listen: SocketAddr = "127.0.0.1:5300".parse().unwrap();
    let mut knot = Knot::start(
        &lab.lb_ns,
        &lab.dir.join("knot"),
        "svc.test",
        listen,
        &with(&[srv(10, 100, "b1"), srv(10, 50, "b2")]),
    )
    .expect("knot");
    let config = lab.config_text(&[])
        + &format!(
            "\n[discovery]\nnameservers = [\"{listen}\"]\n\n[[vip]]\nname = \"web\"\n\
             address = \"{VIP_WEB}\"\nport = 80\nprotocol = \"tcp\"\n\
             backends_from = {{ dns_srv = \"_web._tcp.svc.test\", refresh = \"200ms\", \
             hold_empty = \"{HOLD_EMPTY}s\", hold_removal = \"{HOLD_EMPTY}s\", drain = \"{DRAIN}s\" }}\n\
             [vip.health]\nkind = \"tcp\"\nport = 80\ninterval = \"200ms\"\ntimeout = \"100ms\"\n\
             rise = 1\nfall = 2\n"
        );
    lab.write_config(&config);
    lab.start_lbd().expect("lbd");

    // The first answer: b1 and b2, weights from SRV, both tier 0, up once
    // their checks pass.
    let took = wait_for(&lab, "first answer", Duration::from_secs(10), |b| {
        b.get(&b1).is_some_and(|x| x.2 == "up") && b.get(&b2).is_some_and(|x| x.2 == "up")
    });
    let b = backends(&lab);
    assert_eq!((b[&b1].0, b[&b2].0), (100, 50), "SRV weights: {b:?}");
    assert_eq!(b.len(), 2, "{b:?}");
    let s = lab.status();
    assert!(
        vip_of(&s, "web")
            .get("backends")
            .arr()
            .iter()
            .all(|x| x.get("discovered").as_bool() == Some(true)),
        "{s:?}"
    );
    println!("discovery: SRV backends up {took:?} after lbd answered");

    // A record added live: a farther priority, so tier 1.
    knot.set_records(&with(&[
        srv(10, 100, "b1"),
        srv(10, 50, "b2"),
        srv(20, 10, "b3"),
    ]))
    .unwrap();
    let took = wait_for(&lab, "b3 added", Duration::from_secs(5), |b| {
        b.get(&b3).is_some_and(|x| x.1 == 1 && x.2 == "up")
    });
    println!("discovery: a record added became a backend (tier 1, up) in {took:?}");

    // A record removed (one of three: at once): b2 drains, then leaves.
    knot.set_records(&with(&[srv(10, 100, "b1"), srv(20, 10, "b3")]))
        .unwrap();
    let drained = wait_for(&lab, "b2 draining", Duration::from_secs(5), |b| {
        b.get(&b2).is_some_and(|x| x.3)
    });
    let gone = wait_for(&lab, "b2 gone", Duration::from_secs(DRAIN + 5), |b| {
        !b.contains_key(&b2)
    });
    println!("discovery: a record removed drained its backend in {drained:?}, gone {gone:?} later (drain {DRAIN}s)");
    let text = lab.lbctl_ok(&["status"]);
    assert!(
        text.contains("backends from dns_srv _web._tcp.svc.test"),
        "{text}"
    );

    // The server stops answering: the set is kept, the source stale.
    let before = backends(&lab);
    knot.pause();
    let start = Instant::now();
    while discovery(&lab).get("stale_since").str().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "never stale");
        thread::sleep(Duration::from_millis(50));
    }
    let stale_after = start.elapsed();
    thread::sleep(Duration::from_secs(3));
    assert_eq!(backends(&lab), before, "a failing resolver changes nothing");
    let text = lab.lbctl_ok(&["status"]);
    assert!(text.contains("STALE since"), "{text}");
    println!(
        "discovery: resolver timing out: stale after {stale_after:?}, set kept; {}",
        discovery(&lab).get("error").str()
    );
    knot.resume();
    let start = Instant::now();
    while !discovery(&lab).get("stale_since").str().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "still stale");
        thread::sleep(Duration::from_millis(50));
    }

    // An empty answer: held for hold_empty, then applied (everything
    // drains).
    knot.set_records(&hosts).unwrap();
    let t = Instant::now();
    let start = Instant::now();
    while discovery(&lab).get("held").str().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the empty answer is not held"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(backends(&lab), before, "held: nothing changed yet");
    let applied = wait_for(
        &lab,
        "empty answer applied",
        Duration::from_secs(HOLD_EMPTY + 5),
        |b| b.values().all(|x| x.3),
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(HOLD_EMPTY),
        "the empty answer waited {waited:?}, less than hold_empty"
    );
    println!("discovery: an empty answer was held and applied {waited:?} after it began (hold_empty {HOLD_EMPTY}s; {applied:?} after it was seen held)");

    // Records back: the backends return.
    knot.set_records(&with(&[srv(10, 100, "b1")])).unwrap();
    wait_for(&lab, "b1 back", Duration::from_secs(5), |b| {
        b.get(&b1).is_some_and(|x| !x.3 && x.2 == "up")
    });
}
