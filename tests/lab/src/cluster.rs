//! The cluster lab: lb as the front door of a cluster, with real routing
//! software. A router namespace between a client and a switched fabric;
//! on the fabric, balancer nodes (lbd, with BIRD 2 or keepalived beside it)
//! and backends (`lbd decap`, the greeters, a UDP responder).
//!
//! ```text
//!   client ns                router ns                     switch ns: bridge br0
//!   eth0 198.51.100.2  ── eth0 198.51.100.1                ┌──────┬──────┬─────┬──────┬──
//!   + .100-.199 (sources)    eth1 10.20.0.1 ─────────── p-r   p-n1   p-n2 ... p-b1  p-b2 ...
//!   default via .1           BIRD: BGP + BFD from           │      │          │
//!                            the nodes, ECMP into main     n1 ns  n2 ns      b1 ns ...
//!                                                          eth0   eth0       eth0 10.20.0.11
//!                                                          .21    .22        VIPs on lo,
//!                                                          lbd + BIRD or     default via .1
//!                                                          keepalived
//! ```
//!
//! Every node and backend calls its interface `eth0`, as containers would:
//! nothing of one lb instance may meet another's. A node's bridge port runs
//! the pass-through program (a frame sent with `XDP_TX` reaches a veth peer
//! only when the peer has a native XDP program). The backends answer DSR
//! traffic straight to the client through the router.
//!
//! The processes (lbd, BIRD, keepalived) are started by the lab with
//! `nsenter --net` and stopped by pid; everything is torn down on drop,
//! also when a test panics (the daemons' logs are printed first).

mod bird;
pub mod etcd;
mod fleet;
mod keepalived;

pub use fleet::{udp_probe, Fleet, FleetReport};

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::Child,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use lb::decap::Decap;

use crate::{
    lab::BackendHost,
    netns::{self, Topology},
    process::{lbctl_at, lbd_bin, nsenter, run_bounded, spawn_lbd, Output},
    servers::{Server, Service},
    status::{unresolved_next_hops, Json},
    switched::passthrough_on,
};

/// The fabric: router .1, backends .11.., nodes .21...
pub const FABRIC: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 0);
pub const ROUTER_FABRIC: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 1);
pub const ROUTER_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The client's extra source addresses: 198.51.100.100 and up.
pub const CLIENT_SOURCES: u8 = 100;
/// The VIP every node serves alike (TCP 80), announced over BGP.
pub const VIP_WEB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The VIP whose backends differ by site (TCP 80).
pub const VIP_SITE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// A UDP VIP (port 53): a datagram forwarded twice is answered twice.
pub const VIP_DNS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);
/// The IPv6 VIP every node serves alike (TCP 80).
pub const VIP_WEB6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
/// The fabric's IPv6 /64: the same host numbers as in IPv4 (`fd20::21`).
pub const ROUTER_FABRIC6: Ipv6Addr = Ipv6Addr::new(0xfd20, 0, 0, 0, 0, 0, 0, 1);
pub const ROUTER_CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xcafe, 0, 0, 0, 0, 1);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xcafe, 0, 0, 0, 0, 2);
/// The keepalived VIP moves between two nodes (in the fabric's subnet).
pub const VIP_VRRP: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 100);
/// lbd's routing table on every node.
pub const TABLE: u32 = 100;
const BRIDGE: &str = "br0";
/// The address prefixes BIRD exports host routes of.
pub const VIP_PREFIX: &str = "203.0.113.0/24";
pub const VIP_PREFIX6: &str = "2001:db8:100::/48";

/// A balancer node: its namespace, address, and what runs there.
pub struct Node {
    pub name: String,
    pub ns: String,
    pub addr: Ipv4Addr,
    pub addr6: Ipv6Addr,
    pub dir: PathBuf,
    lbd: Option<Child>,
    bird: Option<Child>,
    keepalived: Option<keepalived::Keepalived>,
    _passthrough: Decap,
}

impl Node {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("lbd.sock")
    }
    fn config_path(&self) -> PathBuf {
        self.dir.join("lb.toml")
    }
    fn log(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{what}.log"))
    }
}

pub struct Cluster {
    pub topo: Topology,
    pub dir: PathBuf,
    pub switch_ns: String,
    pub router_ns: String,
    pub client_ns: String,
    pub nodes: Vec<Node>,
    pub backends: Vec<BackendHost>,
    servers: Vec<Server>,
    stopped: Vec<Server>,
    router_bird: Option<Child>,
    /// The store's members, when a test started them ([`Cluster::start_etcd`]).
    etcd: Vec<etcd::Member>,
    etcd_tls: Option<etcd::EtcdTls>,
}

fn fabric(n: u8) -> Ipv4Addr {
    let [a, b, c, _] = FABRIC.octets();
    Ipv4Addr::new(a, b, c, n)
}

/// Host `n` of the fabric's /64, written with the same digits (`fd20::21`).
fn fabric6(n: u8) -> Ipv6Addr {
    let digits = u16::from_str_radix(&n.to_string(), 16).expect("decimal digits are hex");
    Ipv6Addr::new(0xfd20, 0, 0, 0, 0, 0, 0, digits)
}

/// Namespace `name` plugged into the fabric (port `p-<name>`, MTU 1600 for
/// the encapsulated frames) as host `n` of both families, with the router
/// as its IPv4 default route.
fn fabric_host(
    topo: &mut Topology,
    switch_ns: &str,
    name: &str,
    n: u8,
) -> Result<(String, Ipv4Addr, Ipv6Addr)> {
    let ns = topo.add_ns(name)?;
    let (v4, v6) = (fabric(n), fabric6(n));
    let port = format!("p-{name}");
    topo.plug((&ns, "eth0"), switch_ns, &port, BRIDGE, "1600", true)?;
    topo.add_addr(&ns, "eth0", &format!("{v4}/24"))?;
    topo.add_addr(&ns, "eth0", &format!("{v6}/64"))?;
    topo.add_route(&ns, &["default", "via", &ROUTER_FABRIC.to_string()])?;
    Ok((ns, v4, v6))
}

/// The client's `i`th extra source address.
pub fn client_source(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, CLIENT_SOURCES + i)
}

impl Cluster {
    /// The namespaces and links, the backends serving (decap, greeters on
    /// 80 and 8080, UDP on 53); no node runs anything yet.
    pub fn build(n_nodes: usize, n_backends: usize, client_sources: u8) -> Result<Cluster> {
        let mut topo = Topology::new()?;
        let dir = std::env::temp_dir().join(topo.prefix().trim_end_matches('-'));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let switch_ns = topo.add_ns("fabric")?;
        topo.add_bridge(&switch_ns, BRIDGE)?;
        // Flood multicast (VRRP, IPv6 ND) without a querier.
        netns::ip(
            &switch_ns,
            &[
                "link",
                "set",
                BRIDGE,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;

        // Router: client side and fabric side.
        let router_ns = topo.add_ns("router")?;
        let client_ns = topo.add_ns("client")?;
        topo.veth((&client_ns, "eth0"), (&router_ns, "eth0"))?;
        topo.add_addr(&client_ns, "eth0", &format!("{CLIENT}/24"))?;
        topo.add_addr(&client_ns, "eth0", &format!("{CLIENT6}/64"))?;
        for i in 0..client_sources {
            topo.add_addr(&client_ns, "eth0", &format!("{}/24", client_source(i)))?;
        }
        topo.add_route(&client_ns, &["default", "via", &ROUTER_CLIENT.to_string()])?;
        topo.add_route(&client_ns, &["default", "via", &ROUTER_CLIENT6.to_string()])?;
        // Frames the client's stack sends must carry finished checksums:
        // the balancer forwards them in XDP (see `netns::set_tx_checksum`).
        netns::set_tx_checksum(&client_ns, "eth0", false)?;
        topo.add_addr(&router_ns, "eth0", &format!("{ROUTER_CLIENT}/24"))?;
        topo.add_addr(&router_ns, "eth0", &format!("{ROUTER_CLIENT6}/64"))?;
        topo.plug(
            (&router_ns, "eth1"),
            &switch_ns,
            "p-r",
            BRIDGE,
            "1500",
            false,
        )?;
        topo.add_addr(&router_ns, "eth1", &format!("{ROUTER_FABRIC}/24"))?;
        topo.add_addr(&router_ns, "eth1", &format!("{ROUTER_FABRIC6}/64"))?;
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            // Layer-4 hashing: flows from one client address spread too.
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.fib_multipath_hash_policy", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            topo.sysctl(&router_ns, k, v)?;
        }

        let mut backends = Vec::new();
        for i in 0..n_backends {
            let name = format!("b{}", i + 1);
            let (ns, v4, v6) = fabric_host(&mut topo, &switch_ns, &name, 11 + i as u8)?;
            let lo_addrs: Vec<IpAddr> = vec![
                VIP_WEB.into(),
                VIP_SITE.into(),
                VIP_DNS.into(),
                VIP_VRRP.into(),
                VIP_WEB6.into(),
            ];
            for a in &lo_addrs {
                let len = if a.is_ipv4() { 32 } else { 128 };
                topo.add_addr(&ns, "lo", &format!("{a}/{len}"))?;
            }
            topo.add_route(&ns, &["default", "via", &ROUTER_FABRIC6.to_string()])?;
            // Decapsulated packets carry the client's source; the VIPs on lo
            // are never announced (VIP_VRRP is in the fabric's subnet).
            for (k, v) in [
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv4.conf.lo.rp_filter", "0"),
                ("net.ipv4.conf.eth0.rp_filter", "0"),
                ("net.ipv4.conf.all.arp_ignore", "1"),
                ("net.ipv4.conf.all.arp_announce", "2"),
            ] {
                topo.sysctl(&ns, k, v)?;
            }
            backends.push(BackendHost {
                name,
                ns,
                ifname: "eth0".into(),
                v4,
                v6,
                lo_addrs,
            });
        }

        let mut nodes = Vec::new();
        for i in 0..n_nodes {
            let name = format!("n{}", i + 1);
            let (ns, addr, addr6) = fabric_host(&mut topo, &switch_ns, &name, 21 + i as u8)?;
            let pass = passthrough_on(&switch_ns, &format!("p-{name}"))?;
            let node_dir = dir.join(&name);
            fs::create_dir_all(&node_dir)?;
            nodes.push(Node {
                name,
                ns,
                addr,
                addr6,
                dir: node_dir,
                lbd: None,
                bird: None,
                keepalived: None,
                _passthrough: pass,
            });
        }
        let mut c = Cluster {
            topo,
            dir,
            switch_ns,
            router_ns,
            client_ns,
            nodes,
            backends,
            servers: Vec::new(),
            stopped: Vec::new(),
            router_bird: None,
            etcd: Vec::new(),
            etcd_tls: None,
        };
        c.start_backends()?;
        Ok(c)
    }

    fn start_backends(&mut self) -> Result<()> {
        for host in self.backends.clone() {
            let out = run_bounded(
                nsenter(&host.ns, &lbd_bin()).args([
                    "decap",
                    "--interface",
                    "eth0",
                    "--address",
                    &host.v4.to_string(),
                    "--address",
                    &host.v6.to_string(),
                ]),
                Duration::from_secs(20),
            )?;
            anyhow::ensure!(out.ok(), "lbd decap in {}: {out}", host.ns);
            for service in [
                Service::Greeter(80),
                Service::Greeter(8080),
                Service::Udp(53),
            ] {
                self.servers.push(Server::start(&host, service)?);
            }
        }
        Ok(())
    }

    pub fn backend(&self, name: &str) -> &BackendHost {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Stops one of a backend's services (its socket is closed on return).
    pub fn stop_service(&mut self, backend: &str, service: Service) {
        let i = self
            .servers
            .iter()
            .position(|s| s.backend == backend && s.service == service)
            .unwrap_or_else(|| panic!("{backend} does not run {service:?}"));
        let s = self.servers.swap_remove(i);
        s.stop_flag();
        s.join();
    }

    pub fn start_service(&mut self, backend: &str, service: Service) -> Result<()> {
        let host = self.backend(backend).clone();
        self.servers.push(Server::start(&host, service)?);
        Ok(())
    }

    // ------------------------------------------------------------ lbd

    /// The node's config file: its interface, socket, state, encap source,
    /// `[announce]` with `when`, then the `[[vip]]` tables given.
    pub fn lbd_config(&self, node: &str, when: &str, vips: &str) -> String {
        let n = self.node(node);
        format!(
            "# cluster node {node}\n\
             interface = \"eth0\"\n\
             xdp_mode = \"native\"\n\
             control_socket = \"{socket}\"\n\
             metrics_listen = \"127.0.0.1:9469\"\n\
             state_dir = \"{state}\"\n\
             \n\
             [encap]\n\
             source_v4 = \"{addr}\"\n\
             source_v6 = \"{addr6}\"\n\
             \n\
             [announce]\n\
             table = {TABLE}\n\
             when = \"{when}\"\n\
             {vips}",
            socket = n.socket().display(),
            state = n.dir.join("state").display(),
            addr = n.addr,
            addr6 = n.addr6,
        )
    }

    /// Writes the node's config and starts `lbd run`; waits until it answers.
    pub fn start_lbd(&mut self, node: &str, config: &str) -> Result<()> {
        let n = self.node_mut(node);
        anyhow::ensure!(n.lbd.is_none(), "lbd already runs on {node}");
        fs::write(n.config_path(), config)?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.log("lbd"))?;
        n.lbd = Some(spawn_lbd(&n.ns, &n.config_path(), log)?);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self
                .node_mut(node)
                .lbd
                .as_mut()
                .expect("spawned")
                .try_wait()?
            {
                bail!("lbd on {node} exited ({st})\n{}", self.logs(node, 30));
            }
            if self.node(node).socket().exists() && self.lbctl(node, &["status"]).ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("lbd on {node} did not answer\n{}", self.logs(node, 30));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` of the node's lbd.
    pub fn kill_lbd(&mut self, node: &str) {
        if let Some(mut c) = self.node_mut(node).lbd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn lbctl(&self, node: &str, args: &[&str]) -> Output {
        lbctl_at(&self.node(node).socket(), args)
    }

    pub fn lbctl_ok(&self, node: &str, args: &[&str]) -> String {
        let out = self.lbctl(node, args);
        assert!(out.ok(), "lbctl {args:?} on {node}: {out}");
        out.stdout
    }

    pub fn lbctl_json(&self, node: &str, args: &[&str]) -> Json {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        Json::parse(&self.lbctl_ok(node, &full)).expect("lbctl --json answers JSON")
    }

    /// A global counter of the node's balancer (`lbctl stats`).
    pub fn counter(&self, node: &str, label: &str) -> u64 {
        let stats = self.lbctl_json(node, &["stats"]);
        stats
            .get("counters")
            .arr()
            .iter()
            .find(|c| c.arr().first().map(Json::str) == Some(label))
            .and_then(|c| c.arr().get(1)?.as_f64())
            .unwrap_or(0.0) as u64
    }

    /// Packets the node's balancer forwarded for the VIP named `vip`.
    pub fn vip_packets(&self, node: &str, vip: &str) -> u64 {
        self.lbctl_json(node, &["status"])
            .get("vips")
            .arr()
            .iter()
            .find(|v| v.get("name").str() == vip)
            .and_then(|v| v.get("packets").as_f64())
            .unwrap_or(0.0) as u64
    }

    /// Waits until every node's next hops to every backend are resolved.
    pub fn wait_next_hops(&self, node: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.lbctl_json(node, &["status"]);
            let unresolved = unresolved_next_hops(&s);
            if unresolved.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("next hops on {node} unresolved after {timeout:?}: {unresolved:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    // ------------------------------------------------------------ routing

    /// The router's next hops toward `addr` in its main table (empty: no
    /// route).
    pub fn router_next_hops(&self, addr: impl Into<IpAddr>) -> BTreeSet<IpAddr> {
        let addr = addr.into();
        let (family, len) = if addr.is_ipv4() {
            ("-4", 32)
        } else {
            ("-6", 128)
        };
        let out = netns::ip(
            &self.router_ns,
            &[family, "route", "show", &format!("{addr}/{len}")],
        )
        .unwrap_or_default();
        next_hops(&out)
    }

    /// Waits until the router's next hops toward `addr` are the addresses
    /// of `nodes`; how long that took.
    pub fn wait_router(
        &self,
        addr: impl Into<IpAddr>,
        nodes: &[&str],
        timeout: Duration,
    ) -> Result<Duration> {
        let addr = addr.into();
        let want: BTreeSet<IpAddr> = nodes
            .iter()
            .map(|n| {
                let n = self.node(n);
                if addr.is_ipv4() {
                    IpAddr::V4(n.addr)
                } else {
                    IpAddr::V6(n.addr6)
                }
            })
            .collect();
        let start = Instant::now();
        loop {
            let have = self.router_next_hops(addr);
            if have == want {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "router: next hops to {addr} are {have:?}, want {want:?} ({nodes:?}) within \
                     {timeout:?}\n{}",
                    self.routing_diagnostics()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// BIRD's view on the router and every node, and the routes.
    pub fn routing_diagnostics(&self) -> String {
        let mut out = String::new();
        out += &format!(
            "router routes:\n{}{}\n",
            netns::ip(&self.router_ns, &["route"]).unwrap_or_default(),
            netns::ip(&self.router_ns, &["-6", "route"]).unwrap_or_default()
        );
        let mut socks = vec![("router".to_string(), self.dir.join("router-bird.ctl"))];
        socks.extend(
            self.nodes
                .iter()
                .map(|n| (n.name.clone(), n.dir.join("bird.ctl"))),
        );
        for (who, sock) in socks {
            if sock.exists() {
                out += &format!("{who}: {}\n", bird::birdc(&sock, &["show", "protocols"]));
            }
        }
        for n in &self.nodes {
            out += &format!(
                "{} table {TABLE}: {}\n",
                n.name,
                netns::ip(&n.ns, &["route", "show", "table", &TABLE.to_string()])
                    .unwrap_or_else(|e| e.to_string())
            );
        }
        out
    }

    /// The node's and the router's logs (the last `n` lines of each).
    pub fn logs(&self, node: &str, n: usize) -> String {
        let tail = |p: PathBuf| {
            let t = fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            format!(
                "--- {}\n{}\n",
                p.display(),
                lines[lines.len().saturating_sub(n)..].join("\n")
            )
        };
        let nd = self.node(node);
        tail(nd.log("lbd")) + &tail(nd.log("bird")) + &tail(nd.log("keepalived"))
    }

    /// Takes the node's link down on its own side: the router sees no
    /// link event (its port on the bridge stays up), only silence.
    pub fn cut_link(&self, node: &str) -> Result<()> {
        netns::ip(&self.node(node).ns, &["link", "set", "eth0", "down"])?;
        Ok(())
    }

    /// Floods every frame to every port (the bridge forgets MACs at once),
    /// as a switch does before it learns or when its table overflows.
    pub fn set_flooding(&self, on: bool) -> Result<()> {
        let ageing = if on { "0" } else { "30000" };
        netns::ip(
            &self.switch_ns,
            &[
                "link",
                "set",
                BRIDGE,
                "type",
                "bridge",
                "ageing_time",
                ageing,
            ],
        )?;
        if on {
            netns::exec(&self.switch_ns, &["bridge", "fdb", "flush", "dev", BRIDGE])
                .or_else(|_| netns::ip(&self.switch_ns, &["neigh", "flush", "all"]))?;
        }
        Ok(())
    }

    /// A TCP client address per connection, spread over the client's
    /// addresses.
    pub fn sources(&self, n: usize, client_sources: u8) -> Vec<IpAddr> {
        (0..n)
            .map(|i| IpAddr::V4(client_source((i % client_sources as usize) as u8)))
            .collect()
    }

    pub fn web() -> SocketAddr {
        SocketAddr::from((VIP_WEB, 80))
    }
}

/// The next hops of an `ip route show` answer: `via A` of a single path or
/// every `nexthop via A` of a multipath route.
fn next_hops(out: &str) -> BTreeSet<IpAddr> {
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "via")
        .filter_map(|w| w[1].parse().ok())
        .collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() {
            for n in &self.nodes {
                eprintln!("{}", self.logs(&n.name, 40));
            }
            if !self.etcd.is_empty() {
                eprintln!("{}", self.etcd_logs(20));
            }
            eprintln!("{}", self.routing_diagnostics());
        }
        for s in self.servers.drain(..).chain(self.stopped.drain(..)) {
            s.stop_flag();
            s.join();
        }
        if let Some(mut b) = self.router_bird.take() {
            let _ = b.kill();
            let _ = b.wait();
        }
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for name in names {
            self.kill_lbd(&name);
            let n = self.node_mut(&name);
            if let Some(mut b) = n.bird.take() {
                let _ = b.kill();
                let _ = b.wait();
            }
            if let Some(k) = n.keepalived.take() {
                k.kill();
            }
        }
        self.stop_etcd();
        // Unpin (lbd detach removes the pins and lbd's routes) on every
        // node and backend, as an operator would.
        let places: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.ns.clone())
            .chain(self.backends.iter().map(|b| b.ns.clone()))
            .collect();
        for ns in places {
            let mut cmd = nsenter(&ns, &lbd_bin());
            cmd.args(["detach", "--interface", "eth0"]);
            if let Ok(o) = run_bounded(&mut cmd, Duration::from_secs(20)) {
                if !o.ok() {
                    eprintln!("cluster: lbd detach in {ns}: {o}");
                }
            }
            crate::process::remove_interface_leftovers(&ns, "eth0");
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_of_single_and_multipath_routes() {
        let single = "203.0.113.10 via 10.20.0.21 dev eth1 proto bird metric 32\n";
        assert_eq!(next_hops(single), [IpAddr::V4(fabric(21))].into());
        let multi = "203.0.113.10 proto bird metric 32 \n\tnexthop via 10.20.0.21 dev eth1 \
                     weight 1 \n\tnexthop via 10.20.0.22 dev eth1 weight 1 \n";
        assert_eq!(
            next_hops(multi),
            [IpAddr::V4(fabric(21)), IpAddr::V4(fabric(22))].into()
        );
        let v6 = "2001:db8:100::10 proto bird metric 32 pref medium\n\tnexthop via fd20::21 \
                  dev eth1 weight 1 \n\tnexthop via fd20::23 dev eth1 weight 1 \n";
        assert_eq!(
            next_hops(v6),
            [IpAddr::V6(fabric6(21)), IpAddr::V6(fabric6(23))].into()
        );
        assert!(next_hops("").is_empty());
    }
}
