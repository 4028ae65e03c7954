//! BIRD 2 on the router and the nodes: the configs the README's "Cluster"
//! section describes, rendered for the lab, and the processes (`bird -f -c
//! CONF -s SOCK -P PID`, stopped by pid).
//!
//! A node's BIRD learns lbd's routes from kernel table [`TABLE`] (`learn`:
//! routes of protocols other than 0, 1, 2 and 12) and never writes there;
//! it exports only host routes inside [`VIP_PREFIX`] to the router over
//! eBGP, with BFD. The router merges equal routes from several nodes into
//! one multipath route (`merge paths on`).

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

use super::{Cluster, ROUTER_FABRIC, ROUTER_FABRIC6, TABLE, VIP_PREFIX, VIP_PREFIX6};
use crate::process::{die_with_parent, nsenter, run_bounded};

/// BFD: 200 ms, three misses: a silent node is down after 600 ms. (100 ms
/// is common on real routers; on a shared two-CPU test machine a stall of
/// 300 ms is not rare, and a false "down" would fail the test.)
const BFD: &str = "interval 200 ms; multiplier 3;";
/// BGP timers short enough that sessions come up within seconds.
const BGP_TIMERS: &str = "hold time 3; keepalive time 1; connect delay time 1; \
                          connect retry time 1; error wait time 1, 2;";
const ROUTER_AS: u32 = 65000;
const NODE_AS: u32 = 65001;

/// The VIP host routes, the only routes a node exports and the router
/// imports (the same filters on both sides).
fn vip_filters() -> String {
    format!(
        "filter vips4 {{ if net ~ [ {VIP_PREFIX}{{32,32}} ] then accept; reject; }}\n\
         filter vips6 {{ if net ~ [ {VIP_PREFIX6}{{128,128}} ] then accept; reject; }}\n"
    )
}

/// A node's BIRD: lbd's table in, the VIP host routes out to the router.
pub fn node_config(log: &Path, router_id: &str, addr6: &str) -> String {
    format!(
        r#"log "{log}" all;
router id {router_id};

protocol device {{ scan time 10; }}

# lbd's table: learn its routes (protocol 108), never write there.
protocol kernel lbd_routes {{
  kernel table {TABLE};
  learn;
  scan time 10;
  ipv4 {{ import all; export none; }};
}}

protocol kernel lbd_routes6 {{
  kernel table {TABLE};
  learn;
  scan time 10;
  ipv6 {{ import all; export none; }};
}}

protocol bfd {{
  interface "eth0" {{ {BFD} }};
}}

{filters}
protocol bgp uplink {{
  local {router_id} as {NODE_AS};
  neighbor {ROUTER_FABRIC} as {ROUTER_AS};
  {BGP_TIMERS}
  bfd on;
  ipv4 {{ import none; export filter vips4; next hop self; }};
}}

protocol bgp uplink6 {{
  local {addr6} as {NODE_AS};
  neighbor {ROUTER_FABRIC6} as {ROUTER_AS};
  {BGP_TIMERS}
  bfd on;
  ipv6 {{ import none; export filter vips6; next hop self; }};
}}
"#,
        log = log.display(),
        filters = vip_filters(),
    )
}

/// The router's BIRD: a passive session per node, ECMP into the kernel.
pub fn router_config(log: &Path, nodes: &[(String, String)]) -> String {
    let mut c = format!(
        r#"log "{log}" all;
router id {ROUTER_FABRIC};

protocol device {{ scan time 10; }}

# Equal routes from several nodes become one multipath route.
protocol kernel {{
  merge paths on limit 16;
  scan time 10;
  ipv4 {{ import none; export all; }};
}}

protocol kernel {{
  merge paths on limit 16;
  scan time 10;
  ipv6 {{ import none; export all; }};
}}

protocol bfd {{
  interface "eth1" {{ {BFD} }};
}}

{filters}
template bgp node {{
  passive on;
  hold time 3;
  keepalive time 1;
  # Take a node back at once after it restarts.
  error wait time 0, 0;
  bfd on;
}}

template bgp node4 from node {{
  local {ROUTER_FABRIC} as {ROUTER_AS};
  ipv4 {{ import filter vips4; export none; }};
}}

template bgp node6 from node {{
  local {ROUTER_FABRIC6} as {ROUTER_AS};
  ipv6 {{ import filter vips6; export none; next hop prefer global; }};
}}
"#,
        log = log.display(),
        filters = vip_filters(),
    );
    for (i, (v4, v6)) in nodes.iter().enumerate() {
        let n = i + 1;
        c += &format!("protocol bgp node{n}_4 from node4 {{ neighbor {v4} as {NODE_AS}; }}\n");
        c += &format!("protocol bgp node{n}_6 from node6 {{ neighbor {v6} as {NODE_AS}; }}\n");
    }
    c
}

/// `bird -f` (in the foreground: the lab owns the process) in `ns`.
pub fn start(
    ns: &str,
    conf: &Path,
    sock: &Path,
    pid: &Path,
    log: &Path,
) -> Result<std::process::Child> {
    let err = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = nsenter(ns, Path::new("bird"));
    cmd.arg("-f")
        .arg("-c")
        .arg(conf)
        .arg("-s")
        .arg(sock)
        .arg("-P")
        .arg(pid)
        .stdin(Stdio::null())
        .stdout(err.try_clone()?)
        .stderr(err);
    die_with_parent(&mut cmd);
    cmd.spawn()
        .context("spawning bird (is bird2 installed? `cargo xtask setup`)")
}

/// `birdc -s SOCK ARGS`: its answer, or why there is none.
pub fn birdc(sock: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new("birdc");
    cmd.arg("-s").arg(sock).args(args);
    match run_bounded(&mut cmd, Duration::from_secs(5)) {
        Ok(o) => o.stdout,
        Err(e) => format!("birdc: {e:#}"),
    }
}

impl Cluster {
    /// Starts BIRD on the router, with a session per node.
    pub fn start_router_bird(&mut self) -> Result<()> {
        let nodes: Vec<(String, String)> = self
            .nodes
            .iter()
            .map(|n| (n.addr.to_string(), n.addr6.to_string()))
            .collect();
        let conf = self.dir.join("router-bird.conf");
        let log = self.dir.join("router-bird.log");
        fs::write(&conf, router_config(&log, &nodes))?;
        let b = start(
            &self.router_ns,
            &conf,
            &self.dir.join("router-bird.ctl"),
            &self.dir.join("router-bird.pid"),
            &log,
        )?;
        self.router_bird = Some(b);
        Ok(())
    }

    /// Starts BIRD on a node.
    pub fn start_bird(&mut self, node: &str) -> Result<()> {
        let n = self.node_mut(node);
        let log = n.log("bird");
        let conf = n.dir.join("bird.conf");
        fs::write(
            &conf,
            node_config(&log, &n.addr.to_string(), &n.addr6.to_string()),
        )?;
        let b = start(
            &n.ns,
            &conf,
            &n.dir.join("bird.ctl"),
            &n.dir.join("bird.pid"),
            &log,
        )?;
        n.bird = Some(b);
        Ok(())
    }

    /// `kill -9` of a node's BIRD.
    pub fn kill_bird(&mut self, node: &str) {
        if let Some(mut b) = self.node_mut(node).bird.take() {
            let _ = b.kill();
            let _ = b.wait();
        }
    }

    /// `birdc` on the router.
    pub fn router_birdc(&self, args: &[&str]) -> String {
        birdc(&self.dir.join("router-bird.ctl"), args)
    }

    /// The router's BGP sessions that are up.
    pub fn router_sessions_up(&self) -> usize {
        self.router_birdc(&["show", "protocols"])
            .lines()
            .filter(|l| l.contains(" BGP ") && l.contains("Established"))
            .count()
    }

    /// `birdc show route` on a node (where its routes come from).
    pub fn node_birdc(&self, node: &str, args: &[&str]) -> String {
        birdc(&self.node(node).dir.join("bird.ctl"), args)
    }
}
