//! The next-hop resolver against a real kernel: two network namespaces
//! joined by a veth pair, the resolver running inside the first.
//!
//! The namespaces are `lbnh-<pid>-a` and `lbnh-<pid>-b`, deleted by a guard
//! when the test ends, also when it fails. Neighbour solicitations only go
//! over the test's veth.

use std::{
    fs::File,
    net::IpAddr,
    os::fd::AsRawFd,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures::StreamExt;
use lb::host::nexthop::{self, Event, NextHop, Resolution, Resolver};

const PREFIX: &str = "lbnh-";
const IF_A: &str = "nha";
const IF_B: &str = "nhb";
const A4: &str = "10.76.0.1/24";
const B4: &str = "10.76.0.2";
const A6: &str = "fd00:76::1/64";
const B6: &str = "fd00:76::2";
/// A second address of B, resolved by the [`Resolver`] itself.
const B4_OTHER: &str = "10.76.0.3";
/// Behind B (routes added in A).
const REMOTE4: &str = "10.77.0.5";
const REMOTE6: &str = "fd00:77::5";
/// No route in A.
const NOWHERE4: &str = "192.0.2.1";
const NOWHERE6: &str = "2001:db8::1";
/// What `ip neigh replace` sets for B in the watcher part.
const FAKE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x77, 0x01];
const WAIT: Duration = Duration::from_secs(3);

/// Runs `cmd`, failing (with its stderr) unless it succeeds; its stdout.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["ip", "-n", ns];
    full.extend(args);
    run(&full)
}

/// Namespaces deleted on drop (also during a panic's unwinding).
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new() -> Self {
        sweep_stale();
        Namespaces(Vec::new())
    }

    /// Creates `lbnh-<pid>-<name>` with `lo` up and IPv6 duplicate address
    /// detection off, so addresses (link-local ones too, which neighbour
    /// solicitations come from) are usable at once.
    fn add(&mut self, name: &str) -> String {
        let full = format!("{PREFIX}{}-{name}", std::process::id());
        run(&["ip", "netns", "add", &full]);
        self.0.push(full.clone());
        ip(&full, &["link", "set", "lo", "up"]);
        for key in ["all", "default"] {
            run(&[
                "ip",
                "netns",
                "exec",
                &full,
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{key}.accept_dad=0"),
            ]);
        }
        full
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.0.drain(..).rev() {
            let status = Command::new("ip")
                .args(["netns", "del", &ns])
                .stdin(Stdio::null())
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                eprintln!("deleting namespace {ns}: {status:?}");
            }
        }
    }
}

/// Deletes `lbnh-<pid>-*` namespaces of processes that no longer exist (a
/// test run killed before its guard could drop).
fn sweep_stale() {
    let list = run(&["ip", "netns", "list"]);
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("bad MAC {text}")))
        .collect();
    bytes
        .try_into()
        .unwrap_or_else(|_| panic!("bad MAC {text}"))
}

/// `(ifindex, MAC)` of `ifname` in `ns`.
fn link(ns: &str, ifname: &str) -> (u32, [u8; 6]) {
    let out = ip(ns, &["-o", "link", "show", "dev", ifname]);
    let index = out
        .split(':')
        .next()
        .and_then(|i| i.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex in {out}"));
    let mac = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {out}"));
    (index, parse_mac(mac))
}

/// Runs `f` on a fresh thread that has joined namespace `ns`, in a Tokio
/// runtime of that thread (so every socket is created inside `ns`).
fn in_netns<F, Fut>(ns: &str, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let path = format!("/var/run/netns/{ns}");
    let thread = std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: a plain syscall on a descriptor we own.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), f())
                .await
                .expect("test body timed out")
        });
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Polls `resolve(addr)` until it is resolved, for at most [`WAIT`].
async fn resolved(handle: &nexthop::Handle, addr: IpAddr) -> NextHop {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = nexthop::resolve(handle, addr).await.expect("resolve");
        match r {
            Resolution::Resolved(nh) => return nh,
            _ if Instant::now() >= deadline => panic!("{addr} not resolved within {WAIT:?}: {r:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Discards the events already queued.
async fn drain(events: &mut (impl futures::Stream<Item = Event> + Unpin)) {
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), events.next()).await {}
}

/// The next event `pred` accepts, within [`WAIT`].
async fn next_event(
    events: &mut (impl futures::Stream<Item = Event> + Unpin),
    mut pred: impl FnMut(&Event) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream ended"),
            Err(_) => panic!("no matching event within {WAIT:?}"),
        }
    }
}

#[test]
fn resolves_next_hops_in_a_namespace() {
    let mut guard = Namespaces::new();
    let a = guard.add("a");
    let b = guard.add("b");
    ip(
        &a,
        &[
            "link", "add", IF_A, "type", "veth", "peer", "name", IF_B, "netns", &b,
        ],
    );
    ip(&a, &["addr", "add", A4, "dev", IF_A]);
    ip(&a, &["addr", "add", A6, "dev", IF_A, "nodad"]);
    ip(&b, &["addr", "add", &format!("{B4}/24"), "dev", IF_B]);
    ip(
        &b,
        &["addr", "add", &format!("{B6}/64"), "dev", IF_B, "nodad"],
    );
    ip(&b, &["addr", "add", &format!("{B4_OTHER}/24"), "dev", IF_B]);
    ip(&a, &["link", "set", IF_A, "up"]);
    ip(&b, &["link", "set", IF_B, "up"]);
    ip(&a, &["route", "add", "10.77.0.0/24", "via", B4]);
    ip(&a, &["-6", "route", "add", "fd00:77::/64", "via", B6]);
    let (a_index, a_mac) = link(&a, IF_A);
    let (_, b_mac) = link(&b, IF_B);
    let expected = NextHop {
        ifindex: a_index,
        dst_mac: b_mac,
        src_mac: a_mac,
        // A veth's default MTU.
        mtu: 1500,
    };

    let ns_a = a.clone();
    in_netns(&a, move || async move {
        let handle = nexthop::connect().expect("connect");
        let mut events = nexthop::watch().expect("watch");

        for (direct, remote) in [(B4, REMOTE4), (B6, REMOTE6)] {
            let (direct, remote) = (addr(direct), addr(remote));
            // No neighbour entry yet: the route is known, the MAC is not.
            // Behind a gateway, the neighbour is the gateway.
            for target in [direct, remote] {
                assert_eq!(
                    nexthop::resolve(&handle, target).await.expect("resolve"),
                    Resolution::Incomplete {
                        ifindex: a_index,
                        via: direct
                    },
                    "{target} before resolution"
                );
            }
            nexthop::trigger(&handle, a_index, direct)
                .await
                .expect("trigger");
            assert_eq!(resolved(&handle, direct).await, expected, "{direct}");
            assert_eq!(resolved(&handle, remote).await, expected, "{remote}");
        }
        // The neighbour became reachable: the watcher saw it.
        next_event(&mut events, |e| {
            *e == Event::Neighbour {
                ifindex: a_index,
                addr: Some(addr(B4)),
            }
        })
        .await;

        for nowhere in [NOWHERE4, NOWHERE6] {
            assert_eq!(
                nexthop::resolve(&handle, addr(nowhere))
                    .await
                    .expect("resolve"),
                Resolution::NoRoute,
                "{nowhere}"
            );
        }

        // The resolver (its own sockets and watcher) reports changes only.
        let mut resolver = Resolver::new().expect("resolver");
        let mut tracked: Vec<IpAddr> = [B4, REMOTE4, B6, REMOTE6, NOWHERE4, NOWHERE6]
            .iter()
            .map(|t| addr(t))
            .collect();
        resolver.track(&tracked);
        let changes = resolver.refresh().await;
        let mut want: Vec<(IpAddr, Option<NextHop>)> = [B4, REMOTE4, B6, REMOTE6]
            .iter()
            .map(|t| (addr(t), Some(expected)))
            .collect();
        want.sort_by_key(|(a, _)| *a);
        assert_eq!(changes, want);
        assert_eq!(resolver.refresh().await, vec![]);
        assert_eq!(
            resolver.egress_interfaces().into_iter().collect::<Vec<_>>(),
            vec![a_index]
        );
        assert!(!resolver.is_relevant(&Event::Neighbour {
            ifindex: a_index,
            addr: Some(addr("10.76.0.99")),
        }));

        // A missing neighbour: the resolver triggers it and reports it once
        // it is resolved.
        let other = addr(B4_OTHER);
        tracked.push(other);
        resolver.track(&tracked);
        let deadline = Instant::now() + WAIT;
        loop {
            let changes = resolver.refresh().await;
            if !changes.is_empty() {
                assert_eq!(changes, vec![(other, Some(expected))]);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{other} not resolved by the resolver"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // A STALE neighbour a next hop relies on is re-confirmed: the
        // refresh "uses" it, which moves it to DELAY (then a unicast probe).
        let b_mac_text = mac_text(&expected.dst_mac);
        ip(
            &ns_a,
            &[
                "neigh",
                "change",
                B6,
                "lladdr",
                &b_mac_text,
                "dev",
                IF_A,
                "nud",
                "stale",
            ],
        );
        assert!(ip(&ns_a, &["neigh", "show", B6, "dev", IF_A]).contains("STALE"));
        assert_eq!(resolver.refresh().await, vec![]);
        let state = ip(&ns_a, &["neigh", "show", B6, "dev", IF_A]);
        assert!(
            state.contains("DELAY") || state.contains("PROBE") || state.contains("REACHABLE"),
            "{B6} not re-confirmed: {state}"
        );

        // Let the echoes of the above pass: the resolver's wait times out
        // when nothing relevant happens.
        let mut quiet = false;
        for _ in 0..20 {
            if !resolver.wait_for_change(Duration::from_millis(300)).await {
                quiet = true;
                break;
            }
        }
        assert!(quiet, "relevant events never stopped");

        // A neighbour change: an event the resolver cares about (it wakes
        // up), and the new MAC for the addresses behind that neighbour.
        let fake = mac_text(&FAKE_MAC);
        drain(&mut events).await;
        ip(
            &ns_a,
            &[
                "neigh",
                "replace",
                B4,
                "lladdr",
                &fake,
                "dev",
                IF_A,
                "nud",
                "permanent",
            ],
        );
        let event = next_event(&mut events, |e| {
            *e == Event::Neighbour {
                ifindex: a_index,
                addr: Some(addr(B4)),
            }
        })
        .await;
        assert!(resolver.is_relevant(&event));
        let started = Instant::now();
        assert!(resolver.wait_for_change(WAIT).await, "no wake-up");
        assert!(started.elapsed() < Duration::from_secs(1));
        let moved = NextHop {
            dst_mac: FAKE_MAC,
            ..expected
        };
        let changes = resolver.refresh().await;
        assert_eq!(
            changes,
            vec![(addr(B4), Some(moved)), (addr(REMOTE4), Some(moved))]
        );

        // An MTU change is followed: the next hops on the interface carry it.
        drain(&mut events).await;
        ip(&ns_a, &["link", "set", IF_A, "mtu", "1400"]);
        next_event(&mut events, |e| matches!(e, Event::Link { .. })).await;
        assert!(resolver.wait_for_change(WAIT).await, "no wake-up");
        let changes = resolver.refresh().await;
        assert!(
            changes.iter().any(|(a, _)| *a == addr(B4))
                && changes
                    .iter()
                    .all(|(_, nh)| nh.is_some_and(|n| n.mtu == 1400)),
            "{changes:?}"
        );

        // A route change is reported too, and losing the route shows.
        drain(&mut events).await;
        ip(&ns_a, &["route", "del", "10.77.0.0/24"]);
        next_event(&mut events, |e| *e == Event::Route).await;
        assert!(resolver.wait_for_change(WAIT).await, "no wake-up");
        assert_eq!(resolver.refresh().await, vec![(addr(REMOTE4), None)]);

        // An address no longer tracked is reported once, as `None`.
        tracked.retain(|a| *a != addr(B6));
        resolver.track(&tracked);
        assert_eq!(resolver.refresh().await, vec![(addr(B6), None)]);
        assert_eq!(resolver.refresh().await, vec![]);
    });
}
