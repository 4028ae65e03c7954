//! The config file's rules, each shown with the message an operator gets.

use super::*;
use crate::{
    model::{
        defaults::*, Forwarding, HealthDecision, HealthKind, HealthSpec, Scheduler, VipSettings,
    },
    state::BackendDesired,
};

const PATH: &str = "/etc/lb/lb.toml";

const EXAMPLE: &str = r#"interface = "eth0"               # where the balancer attaches (required)
xdp_mode = "auto"
control_socket = "/run/lb/lbd.sock"
metrics_listen = "127.0.0.1:9469"
state_dir = "/var/lib/lb"
read_group = "lbview"
tcp_idle_timeout = "15m"

[encap]
source_v4 = "192.0.2.10"

[[vip]]
name = "web"
address = "10.100.0.1"
port = 80
protocol = "tcp"
scheduler = "maglev"
forwarding = "ipip"
conntrack = true
table_size = 65537
backends = [ { address = "10.0.0.2", weight = 100 }, { address = "10.0.0.3" } ]
[vip.health]
kind = "http"
port = 80
path = "/healthz"
expect_status = 200
interval = "1s"
timeout = "500ms"
rise = 2
fall = 3
"#;

fn ok(text: &str) -> Config {
    parse(Path::new(PATH), text).unwrap_or_else(|e| panic!("{e}"))
}

/// The error for `text`, checked to be on `line` and to mention each of
/// `words`.
fn bad(text: &str, line: usize, words: &[&str]) -> ConfigError {
    let e = parse(Path::new(PATH), text).expect_err("config should be refused");
    let shown = e.to_string();
    assert_eq!(e.line, Some(line), "{shown}");
    assert!(
        shown.starts_with(&format!("{PATH}:{line}:")),
        "{shown}: should start with the file and line"
    );
    for w in words {
        assert!(shown.contains(w), "{shown}: should mention {w}");
    }
    e
}

#[test]
fn names_are_optional_and_default_to_the_identity() {
    let minimal = "interface = \"eth0\"\n[encap]\nsource_v4 = \"192.0.2.10\"\n\
                   [[vip]]\naddress = \"10.100.0.1\"\nport = 80\nprotocol = \"tcp\"\n\
                   backends = [ { address = \"10.0.0.2\" } ]\n\
                   [[vip]]\naddress = \"10.100.0.1\"\nprotocol = \"udp\"\n\
                   backends = [ { address = \"10.0.0.2\" } ]\n";
    let state = ok(minimal).desired_state().unwrap();
    let names: Vec<&str> = state.vips.values().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["10.100.0.1/udp", "10.100.0.1:80/tcp"]);
    // A name given must still be unique, also against an identity.
    let clash = format!(
        "{minimal}[[vip]]\nname = \"10.100.0.1:80/tcp\"\naddress = \"10.100.0.9\"\n\
         protocol = \"tcp\"\nbackends = [ {{ address = \"10.0.0.2\" }} ]\n"
    );
    let e = parse(Path::new(PATH), &clash).expect_err("a duplicate name");
    assert!(e.to_string().contains("already the name of VIP"), "{e}");
}

#[test]
fn limits_are_read_checked_and_applied_to_the_state() {
    assert_eq!(ok(EXAMPLE).limits, Limits::default());
    let with = |limits: &str| example_with("[encap]", &format!("[limits]\n{limits}\n\n[encap]"));
    let c = ok(&with(
        "max_vips = 2\ntable_pool = 300000\nconntrack_size = 65536",
    ));
    assert_eq!(
        c.limits,
        Limits {
            max_vips: 2,
            table_pool: 300_000,
            conntrack_size: 65_536
        }
    );
    assert_eq!(c.limits, c.limits);
    bad(
        &with("max_vips = 0"),
        10,
        &["[limits]", "max_vips", "out of range"],
    );
    bad(
        &with("conntrack_size = 10"),
        10,
        &["conntrack_size", "out of range"],
    );
    bad(&with("max_vip = 2"), 10, &["max_vip"]);

    // Over the limits: the whole state is refused, naming the key.
    let second = "\n[[vip]]\nname = \"dns\"\naddress = \"10.100.0.2\"\nport = 53\n\
                  protocol = \"udp\"\ntable_size = 251\nbackends = [ { address = \"10.0.0.2\" } ]\n";
    bad(
        &format!("{}{second}", with("max_vips = 1")),
        35,
        &["2 VIPs configured", "max_vips"],
    );
    bad(
        &format!("{}{second}", with("table_pool = 131074")),
        40,
        &["131576 slots", "table_pool"],
    );
    ok(&format!("{}{second}", with("table_pool = 131576")));
}

/// The example with `replace` applied (which must change something).
fn example_with(from: &str, to: &str) -> String {
    assert!(EXAMPLE.contains(from), "{from}");
    EXAMPLE.replacen(from, to, 1)
}

fn vip_id(s: &str) -> VipId {
    s.parse().unwrap()
}

#[test]
fn example_parses() {
    let c = ok(EXAMPLE);
    assert_eq!(c.path, Path::new(PATH));
    assert_eq!(c.interface, "eth0");
    assert_eq!(c.xdp_mode, AttachMode::Auto);
    assert_eq!(c.control_socket, Path::new("/run/lb/lbd.sock"));
    assert_eq!(c.metrics_listen, "127.0.0.1:9469".parse().unwrap());
    assert_eq!(c.state_dir, Path::new("/var/lib/lb"));
    assert_eq!(c.read_group.as_deref(), Some("lbview"));
    assert_eq!(c.tcp_idle_timeout, Duration::from_secs(900));
    assert_eq!(c.udp_idle_timeout, Duration::from_secs(300));
    assert_eq!(
        c.encap,
        EncapSources {
            v4: Some(("192.0.2.10".parse().unwrap(), 32)),
            v6: None
        }
    );
    assert_eq!(c.tcp_idle_timeout, Duration::from_secs(900));

    let state = c.desired_state().unwrap();
    let id = vip_id("10.100.0.1:80/tcp");
    let expected = DesiredState {
        vips: [(
            id,
            VipDesired {
                name: "web".into(),
                settings: VipSettings {
                    scheduler: Scheduler::Maglev,
                    forwarding: Forwarding::Ipip,
                    stateless: false,
                    table_size: 65537,
                    tiers: Default::default(),
                },
                backends: vec![
                    BackendDesired {
                        addr: "10.0.0.2".parse().unwrap(),
                        weight: 100,
                        tier: 0,
                        drained: false,
                        health: None,
                    },
                    BackendDesired {
                        addr: "10.0.0.3".parse().unwrap(),
                        weight: DEFAULT_WEIGHT,
                        tier: 0,
                        drained: false,
                        health: None,
                    },
                ],
                health: Some(HealthSpec {
                    kind: HealthKind::Http,
                    port: 80,
                    path: "/healthz".into(),
                    expect_status: Some(200),
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_millis(500),
                    rise: 2,
                    fall: 3,
                }),
                backends_from: None,
            },
        )]
        .into(),
    };
    assert_eq!(state, expected);
    assert_eq!(c.vips[0].lines.entry, 12);
    assert_eq!(c.vips[0].lines.backends, vec![21, 21]);
    assert_eq!(c.vip("web").unwrap().id, id);
    assert_eq!(c.vip("10.100.0.1:80/tcp").unwrap().desired.name, "web");

    // The desired state (health included) survives its JSON persistence.
    let json = serde_json::to_string(&state).unwrap();
    assert!(json.contains(r#""interval":"1s""#), "{json}");
    assert_eq!(serde_json::from_str::<DesiredState>(&json).unwrap(), state);
}

#[test]
fn round_robin_and_least_connections_need_the_connection_table() {
    let vip = |scheduler: &str, conntrack: bool| {
        format!(
            "interface = \"eth0\"\n[encap]\nsource_v4 = \"192.0.2.10\"\n[[vip]]\n\
             address = \"10.100.0.1\"\nport = 80\nprotocol = \"tcp\"\n\
             scheduler = \"{scheduler}\"\nconntrack = {conntrack}\n\
             backends = [ {{ address = \"10.0.0.2\" }} ]\n"
        )
    };
    for (name, s) in [
        ("round-robin", Scheduler::RoundRobin),
        ("least-connections", Scheduler::LeastConnections),
    ] {
        let c = ok(&vip(name, true));
        assert_eq!(c.vips[0].desired.settings.scheduler, s);
        bad(
            &vip(name, false),
            8,
            &[name, "needs the connection table", "conntrack = false"],
        );
    }
    bad(&vip("wrr", true), 8, &["wrr", "round-robin"]);
}

#[test]
fn defaults() {
    let c = ok(r#"
interface = "eth1"
[encap]
source_v4_prefix = "192.0.2.0/24"
[[vip]]
name = "dns"
address = "10.100.0.53"
protocol = "udp"
scheduler = "source-hash"
conntrack = false
backends = [{ address = "10.0.0.2", drained = true }]
[vip.health]
kind = "udp"
port = 53
"#);
    assert_eq!(c.xdp_mode, AttachMode::Auto);
    assert_eq!(c.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
    assert_eq!(c.metrics_listen, DEFAULT_METRICS_LISTEN);
    assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
    assert_eq!(c.read_group, None);
    assert_eq!(c.encap.v4, Some(("192.0.2.0".parse().unwrap(), 24)));
    let v = &c.vips[0];
    assert_eq!(v.id, vip_id("10.100.0.53/udp"));
    assert_eq!(v.desired.settings.scheduler, Scheduler::SourceHash);
    assert!(v.desired.settings.stateless);
    assert_eq!(
        v.desired.settings.table_size,
        VipSettings::default().table_size
    );
    assert_eq!(
        v.desired.backends,
        vec![BackendDesired {
            addr: "10.0.0.2".parse().unwrap(),
            weight: DEFAULT_WEIGHT,
            tier: 0,
            drained: true,
            health: None,
        }]
    );
    let h = v.desired.health.as_ref().unwrap();
    assert_eq!(
        (
            h.port,
            h.path.as_str(),
            h.interval,
            h.timeout,
            h.rise,
            h.fall
        ),
        (
            53,
            "",
            DEFAULT_HEALTH_INTERVAL,
            DEFAULT_HEALTH_TIMEOUT,
            2,
            3
        )
    );
    assert_eq!(h.expect_status, None);

    // A VIP with a port gives its health check that port.
    let c = ok(&example_with("port = 80\npath", "path"));
    assert_eq!(c.vips[0].desired.health.as_ref().unwrap().port, 80);
    // No VIPs at all is a valid (empty) config.
    let c = ok("interface = \"eth0\"\nxdp_mode = \"generic\"\n");
    assert_eq!(c.xdp_mode, AttachMode::Generic);
    assert!(c.desired_state().unwrap().vips.is_empty());
}

#[test]
fn ipv6_vip() {
    let c = ok(r#"
interface = "eth0"
xdp_mode = "native"
metrics_listen = "[::1]:9469"
udp_idle_timeout = "2m 30s"
[encap]
source_v6_prefix = "2001:db8:ffff::/96"
[[vip]]
name = "web6"
address = "2001:db8::1"
port = 443
protocol = "tcp"
backends = [
  { address = "2001:db8:1::2", weight = 10 },
  { address = "2001:db8:1::3", weight = 0 },
]
[[vip]]
name = "any6"
address = "2001:db8::2"
protocol = "udp"
forwarding = "l2dsr"
backends = [{ address = "2001:db8:1::4" }]
"#);
    assert_eq!(c.xdp_mode, AttachMode::Native);
    assert_eq!(c.metrics_listen, "[::1]:9469".parse().unwrap());
    assert_eq!(c.udp_idle_timeout, Duration::from_secs(150));
    assert_eq!(c.encap.v6, Some(("2001:db8:ffff::".parse().unwrap(), 96)));
    let state = c.desired_state().unwrap();
    let web6 = &state.vips[&vip_id("[2001:db8::1]:443/tcp")];
    assert_eq!(web6.backends[1].weight, 0);
    assert_eq!(c.vips[0].lines.backends, vec![14, 15]);
    let any6 = &state.vips[&vip_id("2001:db8::2/udp")];
    assert_eq!(any6.settings.forwarding, Forwarding::L2dsr);
}

#[test]
fn unknown_keys() {
    let e = bad(
        &example_with("read_group", "read_grup = \"x\"\nread_group"),
        6,
        &["key `read_grup` is not allowed", "interface", "vip"],
    );
    assert_eq!(e.message.matches("expected one of").count(), 1);
    bad(
        &example_with("conntrack = true", "contrack = true"),
        19,
        &[
            "vip[0] \"web\"",
            "key `contrack` is not allowed",
            "conntrack",
        ],
    );
    bad(
        &example_with("weight = 100", "weigth = 100"),
        21,
        &[
            "vip[0] \"web\": backend 10.0.0.2: key `weigth` is not allowed \
             (expected one of address, weight, tier, drained, health)",
        ],
    );
    bad(
        &example_with("rise = 2", "raise = 2"),
        29,
        &["vip[0] \"web\": [vip.health]: key `raise` is not allowed"],
    );
    bad(
        &example_with("source_v4 =", "source_v5 ="),
        10,
        &["[encap]: key `source_v5` is not allowed"],
    );
    // A backend's own health check takes the [vip.health] keys only.
    bad(
        &example_with(
            "{ address = \"10.0.0.3\" }",
            "{ address = \"10.0.0.3\", health = { port = 8080, raise = 3 } }",
        ),
        21,
        &[
            "vip[0] \"web\": backend 10.0.0.3: [vip.backends.health]: key `raise` is not \
             allowed (expected one of kind, port, path",
        ],
    );
}

#[test]
fn bad_values() {
    bad(
        &example_with("protocol = \"tcp\"", "protocol = \"sctp\""),
        16,
        &["vip[0] \"web\": key `protocol`", "sctp", "tcp", "udp"],
    );
    bad(
        &example_with("xdp_mode = \"auto\"", "xdp_mode = \"fast\""),
        2,
        &["key `xdp_mode`", "fast", "native"],
    );
    bad(
        &example_with("address = \"10.100.0.1\"", "address = \"10.100.0.x\""),
        14,
        &[
            "vip \"web\": key `address`",
            "10.100.0.x",
            "not an IP address",
        ],
    );
    bad(
        &example_with("address = \"10.0.0.3\"", "address = \"10.0.0\""),
        21,
        &["vip \"web\": backends[1]: key `address`", "\"10.0.0\""],
    );
    bad(
        &example_with("port = 80", "port = \"80\""),
        15,
        &["key `port`", "expected an integer"],
    );
    bad(
        &example_with("port = 80", "port = 65536"),
        15,
        &["key `port`", "65536", "1..=65535"],
    );
    bad(
        &example_with(
            "metrics_listen = \"127.0.0.1:9469\"",
            "metrics_listen = \"localhost\"",
        ),
        4,
        &["key `metrics_listen`", "localhost"],
    );
    bad(
        &example_with("\"15m\"", "\"15 minutes-ish\""),
        7,
        &["key `tcp_idle_timeout`", "not a duration"],
    );
    bad(
        &example_with("table_size = 65537", "table_size = 1000"),
        20,
        &["key `table_size`", "1000", "prime"],
    );
    bad(
        &example_with("backends = [", "backends = [ \"10.0.0.9\","),
        21,
        &["vip[0] \"web\": backends[0]", "expected a table"],
    );
    bad(
        &example_with("interface = \"eth0\"", "interface = \"eth0 with spaces\""),
        1,
        &["key `interface`"],
    );
}

#[test]
fn missing_keys() {
    bad(
        &example_with("interface = \"eth0\"", "#"),
        1,
        &["key `interface` is required"],
    );
    // Also when the file starts with a table.
    bad(
        "[encap]\nsource_v4 = \"192.0.2.1\"\n",
        1,
        &["key `interface` is required"],
    );
    bad("", 1, &["key `interface` is required"]);
    bad(
        &example_with("protocol = \"tcp\"\n", ""),
        12,
        &["vip[0] \"web\": key `protocol` is required"],
    );
    bad(
        &example_with("{ address = \"10.0.0.3\" }", "{ weight = 1 }"),
        21,
        &["vip[0] \"web\": backends[1]: key `address` is required"],
    );
    bad(
        &example_with("kind = \"http\"\n", ""),
        22,
        &["[vip.health]: key `kind` is required"],
    );
}

#[test]
fn port_zero() {
    bad(
        &example_with("port = 80", "port = 0"),
        15,
        &["vip \"web\": key `port`", "omit port for every port"],
    );
    // A port-less VIP needs a port for its health check...
    bad(
        &example_with("port = 80\nprotocol", "protocol").replace("port = 80\npath", "path"),
        21,
        &["[vip.health]: key `port` is required", "every port"],
    );
    // ... unless it has none.
    let c = ok(&EXAMPLE
        .replace("port = 80\n", "")
        .replace("kind = \"http\"", "kind = \"none\"")
        .replace("path = \"/healthz\"\nexpect_status = 200\n", ""));
    assert_eq!(c.vips[0].id, vip_id("10.100.0.1/tcp"));
    assert_eq!(c.vips[0].desired.health.as_ref().unwrap().port, 0);
}

#[test]
fn duplicates() {
    let second = r#"
[[vip]]
name = "web2"
address = "10.100.0.1"
port = 80
protocol = "tcp"
"#;
    bad(
        &format!("{EXAMPLE}{second}"),
        34,
        &[
            "vip \"web2\"",
            "10.100.0.1:80/tcp",
            "already defined by vip \"web\" (line 12)",
        ],
    );
    // Another protocol is another VIP.
    ok(&format!("{EXAMPLE}{}", second.replace("tcp", "udp")));
    bad(
        &format!(
            "{EXAMPLE}{}",
            second.replace("web2", "web").replace("80", "81")
        ),
        33,
        &[
            "vip \"web\": key `name`",
            "already the name of VIP 10.100.0.1:80/tcp (line 12)",
        ],
    );
    bad(
        &example_with("{ address = \"10.0.0.3\" }", "{ address = \"10.0.0.2\" }"),
        21,
        &["vip \"web\"", "backend 10.0.0.2 is listed twice"],
    );
    bad(
        &example_with(
            "xdp_mode = \"auto\"",
            "xdp_mode = \"auto\"\nxdp_mode = \"native\"",
        ),
        3,
        &["duplicate key `xdp_mode`"],
    );
}

#[test]
fn families() {
    let text = example_with(
        "backends = [ { address = \"10.0.0.2\", weight = 100 }, { address = \"10.0.0.3\" } ]",
        "backends = [\n  { address = \"10.0.0.2\" },\n  { address = \"2001:db8::2\" },\n]",
    );
    let e = bad(
        &text,
        23,
        &["vip \"web\": backend 2001:db8::2 is IPv6, but VIP 10.100.0.1:80/tcp is IPv4: ipip forwarding keeps the family"],
    );
    assert!(e
        .to_string()
        .starts_with("/etc/lb/lb.toml:23: vip \"web\": backend"));
    // l2dsr does not encapsulate, so mixed families are fine there.
    ok(&text.replace("forwarding = \"ipip\"", "forwarding = \"l2dsr\""));

    // ipip needs an outer source of the VIP's family.
    bad(
        &example_with("source_v4 = \"192.0.2.10\"", ""),
        18,
        &["vip \"web\"", "source_v4 or source_v4_prefix", "[encap]"],
    );
    bad(
        &example_with("source_v4 = \"192.0.2.10\"", "source_v6 = \"2001:db8::10\""),
        18,
        &["source_v4"],
    );
    bad(
        &example_with("source_v4 = \"192.0.2.10\"", "source_v4 = \"2001:db8::10\""),
        10,
        &["[encap]: key `source_v4`", "not an IPv4 address"],
    );
    bad(
        &example_with(
            "source_v4 = \"192.0.2.10\"",
            "source_v4 = \"192.0.2.10\"\nsource_v4_prefix = \"192.0.2.0/24\"",
        ),
        11,
        &["[encap]", "not both"],
    );
    bad(
        &example_with(
            "source_v4 = \"192.0.2.10\"",
            "source_v4_prefix = \"192.0.2.10/24\"",
        ),
        10,
        &["key `source_v4_prefix`", "host bits", "192.0.2.0/24"],
    );
    bad(
        &example_with(
            "source_v4 = \"192.0.2.10\"",
            "source_v4_prefix = \"192.0.2.0/33\"",
        ),
        10,
        &["key `source_v4_prefix`"],
    );
}

#[test]
fn weights() {
    bad(
        &example_with("weight = 100", "weight = 70000"),
        21,
        &[
            "vip \"web\": backend 10.0.0.2: key `weight`",
            "70000",
            "0..=65535",
        ],
    );
    bad(
        &example_with("weight = 100", "weight = -1"),
        21,
        &["key `weight`", "-1"],
    );
    // A drained backend keeps its (valid) weight.
    let c = ok(&example_with("weight = 100", "weight = 7, drained = true"));
    assert_eq!(c.vips[0].desired.backends[0].effective_weight(), 0);
    assert_eq!(c.vips[0].desired.backends[0].weight, 7);
}

#[test]
fn tiers() {
    use crate::model::{TierMode, TierPolicy};
    let c = ok(&example_with(
        "{ address = \"10.0.0.3\" }",
        "{ address = \"10.0.0.3\", tier = 1 }",
    ));
    let b = &c.vips[0].desired.backends;
    assert_eq!((b[0].tier, b[1].tier), (0, 1));
    assert_eq!(c.vips[0].desired.settings.tiers, TierPolicy::default());
    let strict = "[vip.tiers]\nmode = \"strict\"\nmin_healthy = 2\n[vip.health]";
    let c = ok(&example_with("[vip.health]", strict));
    let t = c.vips[0].desired.settings.tiers;
    assert_eq!((t.mode, t.min_healthy), (TierMode::Strict, 2));
    let spill = "[vip.tiers]\noverprovisioning = 1.25\n[vip.health]";
    let c = ok(&example_with("[vip.health]", spill));
    assert_eq!(c.vips[0].desired.settings.tiers.overprovisioning, 125);

    bad(
        &example_with(
            "{ address = \"10.0.0.3\" }",
            "{ address = \"10.0.0.3\", tier = 16 }",
        ),
        21,
        &["backend 10.0.0.3: key `tier`", "16", "0..=15"],
    );
    bad(
        &example_with(
            "[vip.health]",
            "[vip.tiers]\noverprovisioning = 0.9\n[vip.health]",
        ),
        23,
        &["[vip.tiers]: key `overprovisioning`", "0.9", "1..=10"],
    );
    bad(
        &example_with("[vip.health]", "[vip.tiers]\nmin_healthy = 2\n[vip.health]"),
        23,
        &["key `min_healthy` applies to mode = \"strict\" only"],
    );
    bad(
        &example_with(
            "[vip.health]",
            "[vip.tiers]\nmode = \"strict\"\noverprovisioning = 2.0\n[vip.health]",
        ),
        24,
        &["key `overprovisioning` applies to mode = \"spill\" only"],
    );
    bad(
        &example_with(
            "[vip.health]",
            "[vip.tiers]\nmode = \"nearest\"\n[vip.health]",
        ),
        23,
        &["key `mode`", "spill", "strict"],
    );
}

#[test]
fn health_rules() {
    bad(
        &example_with("timeout = \"500ms\"", "timeout = \"1s\""),
        28,
        &["[vip.health]: key `timeout`", "less than the interval 1s"],
    );
    bad(
        &example_with("timeout = \"500ms\"\n", "")
            .replace("interval = \"1s\"", "interval = \"200ms\""),
        27,
        &["key `interval`", "500ms (the default)"],
    );
    bad(
        &example_with("interval = \"1s\"", "interval = \"5ms\""),
        27,
        &["key `interval`", "10ms"],
    );
    bad(
        &example_with("kind = \"http\"", "kind = \"tcp\""),
        25,
        &["vip \"web\": [vip.health]: key `path` is only for kind = \"http\""],
    );
    bad(
        &example_with("kind = \"http\"", "kind = \"tcp\"").replace("path = \"/healthz\"\n", ""),
        25,
        &["key `expect_status` is only for kind = \"http\""],
    );
    bad(
        &example_with("kind = \"http\"", "kind = \"icmp\""),
        23,
        &["key `kind`", "icmp"],
    );
    bad(
        &example_with("rise = 2", "rise = 0"),
        29,
        &["key `rise`", "1..=100"],
    );
    bad(&example_with("fall = 3", "fall = 101"), 30, &["key `fall`"]);
    bad(
        &example_with("\"/healthz\"", "\"healthz\""),
        25,
        &["key `path`", "must start with '/'"],
    );
    bad(
        &example_with("expect_status = 200", "expect_status = 42"),
        26,
        &["key `expect_status`", "100..=599"],
    );
}

/// `EXAMPLE` with the backends one per line: 10.0.0.2 on line 22 with
/// `b2`'s keys, 10.0.0.3 on line 23 with `b3`'s.
fn example_backends(b2: &str, b3: &str) -> String {
    example_with(
        "backends = [ { address = \"10.0.0.2\", weight = 100 }, { address = \"10.0.0.3\" } ]",
        &format!(
            "backends = [\n  {{ address = \"10.0.0.2\"{b2} }},\n  {{ address = \"10.0.0.3\"{b3} }},\n]"
        ),
    )
}

#[test]
fn backend_health_overrides() {
    // The backend's keys over the VIP's; the rest inherited.
    let c = ok(&example_backends(
        "",
        ", health = { port = 8080, path = \"/ready\", rise = 5 }",
    ));
    let v = &c.vips[0].desired;
    let vip = v.health.clone().unwrap();
    assert_eq!(v.backends[0].health, None);
    assert_eq!(
        v.backends[1].health,
        Some(HealthSpec {
            port: 8080,
            path: "/ready".into(),
            rise: 5,
            ..vip.clone()
        })
    );
    assert_eq!(v.health_of(&v.backends[0]), Some(&vip));
    assert_eq!(v.health_of(&v.backends[1]).unwrap().port, 8080);
    // It survives the state file.
    let state = c.desired_state().unwrap();
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(serde_json::from_str::<DesiredState>(&json).unwrap(), state);

    // Another kind does not inherit the VIP's http-only keys; `none`
    // leaves the backend unchecked.
    let c = ok(&example_backends(
        ", health = { kind = \"tcp\" }",
        ", health = { kind = \"none\" }",
    ));
    let v = &c.vips[0].desired;
    let tcp = v.backends[0].health.clone().unwrap();
    assert_eq!(
        (tcp.kind, tcp.port, tcp.path.as_str()),
        (HealthKind::Tcp, 80, "")
    );
    assert_eq!(tcp.expect_status, None);
    assert_eq!(tcp.interval, vip.interval);
    assert!(v.active_check(&v.backends[0]).is_some());
    assert_eq!(v.active_check(&v.backends[1]), None);

    // Without [vip.health], the backend's own check needs a kind...
    let no_vip_health = |b3: &str| {
        example_backends("", b3).replace(&EXAMPLE[EXAMPLE.find("[vip.health]").unwrap()..], "")
    };
    bad(
        &no_vip_health(", health = { port = 8080 }"),
        23,
        &[
            "vip \"web\": backend 10.0.0.3: [vip.backends.health]: key `kind` is required: \
             the VIP has no [vip.health]",
        ],
    );
    // ... and then has the defaults, and the VIP's port.
    let c = ok(&no_vip_health(", health = { kind = \"http\" }"));
    let v = &c.vips[0].desired;
    assert_eq!(v.health, None);
    assert_eq!(v.active_check(&v.backends[0]), None);
    let h = v.backends[1].health.clone().unwrap();
    assert_eq!(
        h,
        HealthSpec {
            port: 80,
            ..HealthSpec::new(HealthKind::Http)
        }
    );

    // The same rules, told at the backend's line and key.
    bad(
        &example_backends("", ", health = { timeout = \"2s\" }"),
        23,
        &[
            "vip \"web\": backend 10.0.0.3: [vip.backends.health]: key `timeout`: the \
             timeout 2s must be more than 0 and less than the interval 1s",
        ],
    );
    bad(
        &example_backends("", ", health = { interval = \"300ms\" }"),
        23,
        &["key `interval`: the timeout 500ms (from [vip.health]) must be more than 0"],
    );
    bad(
        &no_vip_health(", health = { kind = \"tcp\", interval = \"300ms\" }"),
        23,
        &["key `interval`: the timeout 500ms (the default) must be"],
    );
    bad(
        &example_backends(", health = { kind = \"udp\", path = \"/x\" }", ""),
        22,
        &[
            "backend 10.0.0.2: [vip.backends.health]: key `path` is only for kind = \"http\" \
           (this check is \"udp\")",
        ],
    );
    bad(
        &example_backends("", ", health = { path = \"ready\" }"),
        23,
        &["key `path`: \"ready\" must start with '/'"],
    );
    bad(
        &example_backends("", ", health = { fall = 0 }"),
        23,
        &["backend 10.0.0.3: [vip.backends.health]: key `fall`: 0 is out of range 1..=100"],
    );
    bad(
        &example_backends("", ", health = { port = 0 }"),
        23,
        &["key `port`: 0 is out of range 1..=65535"],
    );
    bad(
        &example_backends("", ", health = { kind = \"ping\" }"),
        23,
        &["key `kind`", "ping"],
    );
    // A port-less VIP: the backend's own check needs a port unless the
    // VIP's check gives one.
    let portless = example_backends("", ", health = { kind = \"tcp\" }")
        .replace("port = 80\nprotocol", "protocol");
    ok(&portless);
    bad(
        &portless.replace("port = 80\npath", "path"),
        24,
        &["[vip.health]: key `port` is required"],
    );
    bad(
        &no_vip_health(", health = { kind = \"tcp\" }").replace("port = 80\nprotocol", "protocol"),
        22,
        &[
            "backend 10.0.0.3: [vip.backends.health]: key `port` is required: the VIP \
             has no port",
        ],
    );
}

#[test]
fn health_specs_validate_like_the_file() {
    let tcp = HealthSpec::new(Tcp);
    // Port 0 is the VIP's; a port-less VIP needs one.
    assert_eq!(tcp.clone().resolve(80).unwrap().port, 80);
    assert_eq!(
        tcp.clone().resolve(0).unwrap_err().to_string(),
        "key `port` is required: the VIP has no port (it takes every port), so the tcp \
         check needs one"
    );
    assert_eq!(tcp.validate(80).unwrap_err().key(), "port");
    let none = HealthSpec::new(HealthKind::None).resolve(0).unwrap();
    assert_eq!(none.port, 0);
    // An empty http path is `/`.
    let http = HealthSpec {
        path: String::new(),
        ..HealthSpec::new(Http)
    };
    assert_eq!(http.resolve(80).unwrap().path, "/");

    let bad = |f: &dyn Fn(&mut HealthSpec), kind: HealthKind| {
        let mut h = HealthSpec::new(kind);
        f(&mut h);
        h.resolve(8080).unwrap_err()
    };
    let ms = Duration::from_millis;
    use HealthKind::{Http, Tcp};
    for (e, key, text) in [
        (
            bad(&|h| h.interval = ms(5), Tcp),
            "interval",
            "5ms is out of range 10ms..=1h",
        ),
        (
            bad(&|h| h.interval = ms(3_600_001), Tcp),
            "interval",
            "out of range",
        ),
        (
            bad(&|h| h.timeout = ms(1000), Tcp),
            "timeout",
            "the timeout 1s must be more than 0 and less than the interval 1s",
        ),
        (bad(&|h| h.timeout = ms(0), Tcp), "timeout", "more than 0"),
        (
            bad(&|h| h.rise = 0, Tcp),
            "rise",
            "0 is out of range 1..=100",
        ),
        (
            bad(&|h| h.fall = 101, Tcp),
            "fall",
            "101 is out of range 1..=100",
        ),
        (
            bad(&|h| h.path = "/x".into(), Tcp),
            "path",
            "only for kind = \"http\" (this check is \"tcp\")",
        ),
        (
            bad(&|h| h.expect_status = Some(200), HealthKind::Udp),
            "expect_status",
            "only for kind",
        ),
        (
            bad(&|h| h.expect_status = Some(600), Http),
            "expect_status",
            "600 is out of range 100..=599",
        ),
        (
            bad(&|h| h.path = "x".into(), Http),
            "path",
            "must start with '/'",
        ),
        (
            bad(&|h| h.path = "/a b".into(), Http),
            "path",
            "no whitespace",
        ),
    ] {
        assert_eq!(e.key(), key, "{e}");
        assert!(e.to_string().contains(text), "{e}: should say {text}");
    }
    // The rules that need no VIP (what lbctl checks before asking).
    assert!(HealthSpec::new(Tcp).validate_settings().is_ok());

    // Requests may leave out what has a default.
    let h: HealthSpec = serde_json::from_str(r#"{"kind":"http","port":8080}"#).unwrap();
    assert_eq!(
        h,
        HealthSpec {
            port: 8080,
            path: String::new(),
            ..HealthSpec::new(Http)
        }
    );
    assert_eq!(h.resolve(80).unwrap().path, "/");
}

#[test]
fn malformed_toml() {
    let e = bad(
        &example_with("[[vip]]", "[[vip]"),
        12,
        &["unclosed array table"],
    );
    assert_eq!(e.column, Some(7));
    assert!(e.to_string().starts_with("/etc/lb/lb.toml:12:7: "), "{e}");
    let e = bad(&example_with("port = 80", "port = 80 80"), 15, &[]);
    assert!(e.column.is_some());
}

#[test]
fn load_reads_files() {
    let dir = std::env::temp_dir().join(format!("lb-config-test-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    fs::write(&path, EXAMPLE).unwrap();
    let c = load(&path).unwrap();
    assert_eq!(c.path, path);
    assert_eq!(c.vips.len(), 1);

    fs::write(&path, example_with("port = 80", "port = 0")).unwrap();
    let e = load(&path).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}:15: ", path.display())),
        "{e}"
    );

    let missing = dir.join("missing.toml");
    let e = load(&missing).unwrap_err();
    assert_eq!(e.line, None);
    assert!(e
        .to_string()
        .starts_with(&format!("{}: cannot read", missing.display())));

    fs::write(&path, b"interface = \"eth0\"\n# \xff\n").unwrap();
    assert_eq!(load(&path).unwrap_err().line, Some(2));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn health_spec_json() {
    let h = HealthSpec {
        kind: HealthKind::Tcp,
        port: 8080,
        path: String::new(),
        expect_status: None,
        interval: Duration::from_millis(1500),
        timeout: Duration::from_micros(250_500),
        rise: 1,
        fall: 100,
    };
    let json = serde_json::to_string(&h).unwrap();
    assert_eq!(serde_json::from_str::<HealthSpec>(&json).unwrap(), h);
}

#[test]
fn announce_names_a_table_of_lbds_own() {
    let base = "interface = \"eth0\"\n";
    assert_eq!(ok(base).announce, None);
    let c = ok(&format!("{base}[announce]\ntable = 100\n"));
    assert_eq!(
        c.announce,
        Some(Announce {
            table: Some(100),
            when: model::AnnounceWhen::Healthy
        })
    );
    let c = ok(&format!(
        "{base}[announce]\ntable = 4000\nwhen = \"always\"\n"
    ));
    assert_eq!(c.announce.unwrap().when, model::AnnounceWhen::Always);
    // Only documentation: no table needed.
    let c = ok(&format!("{base}[announce]\nwhen = \"never\"\n"));
    assert_eq!(c.announce.unwrap().table, None);

    for (table, name) in [
        (254, "main"),
        (255, "local"),
        (0, "unspec"),
        (253, "default"),
    ] {
        bad(
            &format!("{base}[announce]\n\ntable = {table}\n"),
            4,
            &["[announce]", "key `table`", name],
        );
    }
    bad(
        &format!("{base}[announce]\ntable = -1\n"),
        3,
        &["key `table`", "out of range"],
    );
    bad(
        &format!("{base}[announce]\ntable = 4294967296\n"),
        3,
        &["key `table`", "out of range"],
    );
    bad(
        &format!("{base}[announce]\nwhen = \"healthy\"\n"),
        2,
        &["key `table` is missing"],
    );
    bad(
        &format!("{base}[announce]\ntable = 100\nwhen = \"sometimes\"\n"),
        4,
        &["sometimes", "healthy", "always", "never"],
    );
    bad(
        &format!("{base}[announce]\ntable = 100\nprotocol = 12\n"),
        4,
        &["protocol"],
    );
}

const STORE: &str = "interface = \"eth0\"\n\n[store]\nkind = \"etcd\"\n\
                     endpoints = [\"http://10.30.0.31:2379\", \"http://10.30.0.32:2379\"]\n";

#[test]
fn a_store_takes_endpoints_and_defaults_the_rest() {
    let c = ok(STORE);
    let s = c.store.expect("[store]");
    assert_eq!(s.endpoints.len(), 2);
    assert_eq!(s.prefix, DEFAULT_STORE_PREFIX);
    assert!(!s.node.is_empty(), "the host name by default");
    assert!(s.tls.is_none() && !s.announce_before_read);
    let c = ok(&format!(
        "{STORE}prefix = \"/edge/lb/\"\nnode_name = \"lb-a\"\nannounce_before_read = true\n"
    ));
    let s = c.store.unwrap();
    assert_eq!((s.prefix.as_str(), s.node.as_str()), ("/edge/lb", "lb-a"));
    assert!(s.announce_before_read);
    let tls = "interface = \"eth0\"\n[store]\nkind = \"etcd\"\nendpoints = [\"https://etcd:2379\"]\n\
               tls_ca = \"/etc/lb/ca.pem\"\ntls_cert = \"/etc/lb/n.pem\"\ntls_key = \"/etc/lb/n.key\"\n";
    let s = ok(tls).store.unwrap();
    assert_eq!(
        s.tls.unwrap().identity.unwrap().0,
        PathBuf::from("/etc/lb/n.pem")
    );
}

#[test]
fn store_mistakes_are_named() {
    bad(
        "interface = \"eth0\"\n[store]\nkind = \"consul\"\nendpoints = [\"http://a:2379\"]\n",
        3,
        &["[store]", "key `kind`", "\"etcd\""],
    );
    bad(
        "interface = \"eth0\"\n[store]\nkind = \"etcd\"\nendpoints = []\n",
        4,
        &["key `endpoints`", "at least one"],
    );
    bad(
        "interface = \"eth0\"\n[store]\nkind = \"etcd\"\nendpoints = [\"10.0.0.1:2379\"]\n",
        4,
        &["key `endpoints`", "http://"],
    );
    // https goes with a CA; http without one.
    bad(
        "interface = \"eth0\"\n[store]\nkind = \"etcd\"\nendpoints = [\"https://a:2379\"]\n",
        4,
        &["https:// goes with tls_ca"],
    );
    bad(
        &format!("{STORE}tls_cert = \"/c.pem\"\n"),
        3,
        &["tls_cert and tls_key go together"],
    );
    bad(&format!("{STORE}prefix = \"lb\"\n"), 6, &["key `prefix`"]);
    bad(
        &format!("{STORE}node_name = \"a/b\"\n"),
        6,
        &["key `node_name`"],
    );
    bad(
        &format!("{STORE}endpoint = \"x\"\n"),
        6,
        &["key `endpoint` is not allowed"],
    );
}

#[test]
fn with_a_store_the_vips_are_not_the_files() {
    let text =
        format!("{STORE}\n[[vip]]\naddress = \"10.100.0.1\"\nport = 80\nprotocol = \"tcp\"\n");
    bad(
        &text,
        7,
        &["[[vip]]", "(line 3)", "lbctl store import FILE"],
    );
}

#[test]
fn a_vip_file_for_import_needs_no_interface_and_no_encap() {
    let dir = std::env::temp_dir().join(format!("lb-vips-test-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("vips.toml");
    // ipip without [encap]: each node checks its own sources.
    fs::write(
        &file,
        "[[vip]]\nname = \"web\"\naddress = \"10.100.0.1\"\nport = 80\nprotocol = \"tcp\"\n\
         backends = [ { address = \"10.0.0.2\" } ]\n",
    )
    .unwrap();
    let s = load_vips(&file).unwrap();
    assert_eq!(s.vips.len(), 1);
    // An lbd config imports as it is.
    fs::write(&file, EXAMPLE).unwrap();
    assert_eq!(load_vips(&file).unwrap().vips.len(), 1);
    // A VIP's own mistakes are still refused.
    fs::write(
        &file,
        "[[vip]]\naddress = \"10.100.0.1\"\nport = 80\nprotocol = \"sctp\"\n",
    )
    .unwrap();
    assert!(load_vips(&file).is_err());
    // And lbd itself still needs its interface.
    let e = parse(Path::new(PATH), "[encap]\nsource_v4 = \"192.0.2.1\"\n").unwrap_err();
    assert!(e.to_string().contains("key `interface` is required"), "{e}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn health_is_decided_by_quorum_with_a_store_and_locally_without() {
    assert_eq!(ok(STORE).health_decision, HealthDecision::Quorum);
    assert_eq!(
        ok("interface = \"eth0\"\n").health_decision,
        HealthDecision::Local
    );
    let local = format!("health_decision = \"local\"\n{STORE}");
    assert_eq!(ok(&local).health_decision, HealthDecision::Local);
    bad(
        "interface = \"eth0\"\nhealth_decision = \"quorum\"\n",
        2,
        &["key `health_decision`", "needs a [store]"],
    );
    bad(
        "interface = \"eth0\"\nhealth_decision = \"vote\"\n",
        2,
        &["health_decision", "local", "quorum"],
    );
}

const FROM: &str =
    "interface = \"eth0\"\n[encap]\nsource_v4 = \"192.0.2.1\"\n\n[[vip]]\nname = \"web\"\n\
                    address = \"10.100.0.1\"\nport = 80\nprotocol = \"tcp\"\n";

#[test]
fn backends_from_takes_one_source_and_its_rules() {
    let c = ok(&format!(
        "{FROM}backends_from = {{ dns_srv = \"_web._tcp.svc.example.\", refresh = \"5s\", hold_empty = \"1m\", max_remove = 25 }}\n"
    ));
    let from = c.vips[0].desired.backends_from.clone().unwrap();
    assert_eq!(
        from.source,
        model::discovery::Source::DnsSrv("_web._tcp.svc.example".into())
    );
    assert_eq!(from.refresh, Duration::from_secs(5));
    assert_eq!(from.hold_empty, Duration::from_secs(60));
    assert_eq!(from.max_remove_percent, 25);
    assert_eq!(from.hold_removal, DEFAULT_HOLD_REMOVAL);
    let c = ok(&format!(
        "{FROM}backends_from = {{ dns = \"web.svc.example\", port = 80 }}\n[discovery]\nnameservers = [\"10.0.0.53\", \"[fd00::53]:5353\"]\n"
    ));
    assert!(c.vips[0].desired.backends_from.is_some());
    assert_eq!(
        c.nameservers,
        [
            "10.0.0.53:53".parse().unwrap(),
            "[fd00::53]:5353".parse().unwrap()
        ]
    );
}

#[test]
fn backends_from_mistakes_are_named() {
    let line = 10;
    bad(
        &format!("{FROM}backends_from = {{ dns = \"web.svc.example\", port = 8080 }}\n"),
        line,
        &["backends_from", "key `port`", "does not translate ports"],
    );
    bad(
        &format!("{FROM}backends_from = {{ dns_srv = \"_w._tcp.x\", port = 80 }}\n"),
        line,
        &["key `port` goes with `dns`"],
    );
    bad(
        &format!("{FROM}backends_from = {{ dns = \"a.x\", dns_srv = \"_w._tcp.x\" }}\n"),
        line,
        &["exactly one source"],
    );
    bad(
        &format!("{FROM}backends_from = {{ dns = \"a b\" }}\n"),
        line,
        &["is not a DNS name"],
    );
    bad(
        &format!("{FROM}backends_from = {{ dns = \"a.x\", refresh = \"1ms\" }}\n"),
        line,
        &["refresh", "out of range"],
    );
    bad(
        &format!("{FROM}backends_from = {{ dns = \"a.x\", max_remove = 101 }}\n"),
        line,
        &["max_remove"],
    );
    bad(
        &format!("{FROM}[discovery]\nnameservers = [\"ns1\"]\n"),
        11,
        &["key `nameservers`", "ADDRESS:PORT"],
    );
}

#[test]
fn the_tcp_api_is_tls_with_client_certificates_and_roles() {
    let head =
        "interface = \"eth0\"\napi_listen = \"0.0.0.0:9470\"\napi_tls_cert = \"/etc/lb/api.pem\"\n\
                api_tls_key = \"/etc/lb/api.key\"\napi_client_ca = \"/etc/lb/ca.pem\"\n";
    let c = ok(&format!(
        "{head}[api_roles]\n\"admin.ops.example\" = \"admin\"\n\"monitor\" = \"read\"\n"
    ));
    let tls = c.api_tls.unwrap();
    assert_eq!(tls.listen, "0.0.0.0:9470".parse().unwrap());
    assert_eq!(tls.roles["admin.ops.example"], model::Role::Admin);
    // Without roles nobody could use it; without TLS it is not offered.
    bad(head, 2, &["api_listen needs [api_roles]"]);
    bad(
        "interface = \"eth0\"\napi_listen = \"0.0.0.0:9470\"\n[api_roles]\n\"a\" = \"read\"\n",
        2,
        &["needs `api_tls_cert`", "TLS with client certificates only"],
    );
    bad(
        &format!("{head}[api_roles]\n\"a\" = \"root\"\n"),
        7,
        &["api_roles", "read", "operate", "admin"],
    );
    bad(
        "interface = \"eth0\"\n[api_roles]\n\"a\" = \"read\"\n",
        2,
        &["[api_roles]", "goes with api_listen"],
    );
}
