//! The `versus` topology (a `SwitchedLab`, as in the tests and the demo) and
//! the balancers set up in it, one at a time.
//!
//! ```text
//!                        switch ns: bridge vs-br (MTU 1600)
//!     ┌──────────────┬──────────────┬──────────────┬──────────────┐
//!  client ns       lb ns           b1 ns          b2 ns          b3 ns
//!  vs-client       vs-lb           vs-b1          vs-b2          vs-b3
//!  198.18.0.2      198.18.0.1      198.18.0.11    198.18.0.12    198.18.0.13
//!  wrk             lb / HAProxy /  nginx on :80, VIP on lo
//!  (MTU 1500)      nft DNAT
//! ```
//!
//! The client routes the VIP (198.18.100.1) to the balancer host. What the
//! balancer host runs changes between measurements; client and backends stay.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use lb::{
    balancer::{Balancer, LoadOptions},
    decap::Decap,
    model::{AttachMode, BackendSpec, EncapSources, Limits, NextHop, Proto, VipId, VipSettings},
};
use lb_common::Counter;
use lb_lab::{
    netns::{self, in_netns},
    switched::{SwitchedLab, SwitchedSpec},
};

use super::tools::{exec_ok, process_cpu, wait_for, Procs};

pub const LB_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// The client's source addresses: a fresh one for each balancer set up
/// (see [`Rig::use_client_source`]).
const CLIENT_SOURCES: &str = "198.18.1.0/24";
fn client_source(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, n)
}
pub const BACKENDS: usize = 3;
const IF_LB: &str = "vs-lb";
const IF_CLIENT: &str = "vs-client";
const BRIDGE: &str = "vs-br";
/// Room for the 20-byte IPIP header in front of a 1500-byte packet on the
/// balancer's path; the client stays at 1500.
const MTU: u32 = 1600;
const CMD_TIMEOUT: Duration = Duration::from_secs(10);

pub fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 11 + i as u8)
}
fn backend_if(i: usize) -> String {
    format!("vs-b{}", i + 1)
}

/// Namespaces, backends' web servers and whatever balancer runs now.
/// Field order is drop order: processes, then the balancer's programs, then
/// the namespaces, then the scratch directory.
pub struct Rig {
    pub procs: Procs,
    pub lb: Option<LbRig>,
    net: SwitchedLab,
    pub dir: PathBuf,
    pub client_ns: String,
    pub lb_ns: String,
    pub backend_ns: Vec<String>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.procs = Procs::default();
        self.lb = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// lb's programs: the balancer on the balancer host, the pass-through on its
/// bridge port, decap on each backend. Detached when dropped.
pub struct LbRig {
    pub balancer: Balancer,
    pub decaps: Vec<Decap>,
    _pass: Decap,
}

impl Rig {
    pub fn build() -> Result<Rig> {
        // Backends as in the demo: the VIP on lo, never announced.
        let net = SwitchedLab::build(&SwitchedSpec {
            ns_prefix: "vs-".into(),
            bridge: BRIDGE.into(),
            port_prefix: "vs-sw-".into(),
            client_if: IF_CLIENT.into(),
            lb_if: IF_LB.into(),
            backend_ifs: (0..BACKENDS).map(backend_if).collect(),
            v4: LB_ADDR,
            v6: None,
            mtu: MTU,
            backend_lo: vec![VIP.into()],
            // Routed per balancer, from a source of its own.
            client_routes: Vec::new(),
            quiet_arp: true,
        })?;
        sweep_stale_dirs();
        let dir = std::env::temp_dir().join(format!("lb-versus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut rig = Rig {
            procs: Procs::default(),
            lb: None,
            client_ns: net.client.ns.clone(),
            lb_ns: net.lb.ns.clone(),
            backend_ns: net.backends.iter().map(|b| b.ns.clone()).collect(),
            net,
            dir,
        };
        let (cl, lb) = (rig.client_ns.clone(), rig.lb_ns.clone());
        for (k, v) in [
            ("net.ipv4.ip_local_port_range", "1024 65535"),
            ("net.ipv4.tcp_tw_reuse", "1"),
            ("net.ipv4.conf.all.accept_redirects", "0"),
            (&format!("net.ipv4.conf.{IF_CLIENT}.accept_redirects"), "0"),
        ] {
            rig.net.topo.sysctl(&cl, k, v)?;
        }

        rig.net
            .topo
            .add_route(&lb, &[CLIENT_SOURCES, "dev", IF_LB])?;
        for (k, v) in [
            ("net.ipv4.conf.all.send_redirects", "0"),
            (&format!("net.ipv4.conf.{IF_LB}.send_redirects"), "0"),
            ("net.ipv4.ip_local_port_range", "1024 65535"),
            ("net.ipv4.tcp_tw_reuse", "1"),
        ] {
            rig.net.topo.sysctl(&lb, k, v)?;
        }

        for (i, ns) in rig.backend_ns.clone().iter().enumerate() {
            let ifname = backend_if(i);
            rig.net
                .topo
                .add_route(ns, &[CLIENT_SOURCES, "dev", &ifname])?;
            for (k, v) in [
                ("net.ipv4.conf.all.accept_redirects", "0"),
                (&format!("net.ipv4.conf.{ifname}.accept_redirects"), "0"),
                ("net.core.somaxconn", "4096"),
                ("net.ipv4.tcp_max_syn_backlog", "4096"),
            ] {
                rig.net.topo.sysctl(ns, k, v)?;
            }
            rig.start_nginx(i)?;
        }
        for i in 0..BACKENDS {
            let ns = rig.backend_ns[i].clone();
            let log = rig.dir.join(format!("nginx-b{}.log", i + 1));
            let what = format!("nginx b{}", i + 1);
            wait_for(Duration::from_secs(5), &format!("{what} listening"), || {
                stub_requests(&ns).is_ok()
            })
            .or_else(|e| rig.procs.check(&what, &log).and(Err(e)))?;
        }
        Ok(rig)
    }

    fn start_nginx(&mut self, i: usize) -> Result<()> {
        let name = format!("b{}", i + 1);
        let d = self.dir.join(&name);
        std::fs::create_dir_all(&d)?;
        let d = d.display().to_string();
        // One process (no master, so nothing outlives a SIGKILL), one
        // worker's worth of events, no logging; the body names the backend.
        let conf = format!(
            r#"master_process off;
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    server {{
        listen 80 backlog=4096;
        location = /stub {{ stub_status; }}
        location / {{ default_type text/plain; return 200 "hello from {name}\n"; }}
    }}
}}
"#
        );
        let path = self.dir.join(format!("nginx-{name}.conf"));
        std::fs::write(&path, conf)?;
        let ns = self.backend_ns[i].clone();
        let log = self.dir.join(format!("nginx-{name}.log"));
        self.procs.spawn(
            &format!("nginx {name}"),
            &ns,
            &["nginx", "-c", &path.display().to_string(), "-p", &d],
            &log,
        )?;
        Ok(())
    }

    /// Makes the client's connections come from source address number `n`
    /// (1..=254), to the VIP (via the balancer host) and to b1 (direct).
    /// A fresh source for each balancer keeps TIME_WAIT sockets an earlier
    /// one left on the backends (whose TCP timestamps were those of another
    /// destination) from rejecting the next one's reused ports.
    pub fn use_client_source(&mut self, n: u8) -> Result<()> {
        let src = client_source(n).to_string();
        let cl = self.client_ns.clone();
        netns::ip(
            &cl,
            &["addr", "replace", &format!("{src}/32"), "dev", IF_CLIENT],
        )?;
        netns::ip(
            &cl,
            &[
                "route",
                "replace",
                &format!("{VIP}/32"),
                "via",
                &LB_ADDR.to_string(),
                "src",
                &src,
            ],
        )?;
        netns::ip(
            &cl,
            &[
                "route",
                "replace",
                &format!("{}/32", backend_addr(0)),
                "dev",
                IF_CLIENT,
                "src",
                &src,
            ],
        )?;
        Ok(())
    }

    /// Backends send replies to the client through the balancer host
    /// (`true`, needed for DNAT) or straight to it (`false`).
    pub fn reply_via_balancer(&mut self, via: bool) -> Result<()> {
        for (i, ns) in self.backend_ns.iter().enumerate() {
            let ifname = backend_if(i);
            let lb = LB_ADDR.to_string();
            let mut args = vec!["route", "replace", CLIENT_SOURCES];
            if via {
                args.extend(["via", &lb]);
            }
            args.extend(["dev", &ifname]);
            netns::ip(ns, &args)?;
        }
        Ok(())
    }

    pub fn set_forwarding(&mut self, on: bool) -> Result<()> {
        let lb = self.lb_ns.clone();
        self.net
            .topo
            .sysctl(&lb, "net.ipv4.ip_forward", if on { "1" } else { "0" })
    }

    // ------------------------------------------------------------ lb

    /// Loads and attaches lb: balancer on the balancer host, the pass-through
    /// on its bridge port (XDP_TX out of a veth needs a native program on the
    /// peer), decap on every backend.
    pub fn start_lb(&mut self) -> Result<String> {
        self.lb = None;
        let mut balancer = Balancer::load(&LoadOptions {
            limits: Limits {
                max_vips: 4,
                ..Default::default()
            },
            ..Default::default()
        })
        .context("loading lb's balancer (built objects? `cargo xtask build --release`)")?;
        balancer.set_encap_sources(&EncapSources {
            v4: Some((LB_ADDR, 32)),
            v6: None,
        })?;
        let lb_index = netns::ifindex(&self.lb_ns, IF_LB)?;
        let lb_mac = netns::mac(&self.lb_ns, IF_LB)?;
        let mut specs = Vec::new();
        for i in 0..BACKENDS {
            let addr = IpAddr::V4(backend_addr(i));
            balancer.set_next_hop(
                addr,
                Some(NextHop {
                    ifindex: lb_index,
                    dst_mac: netns::mac(&self.backend_ns[i], &backend_if(i))?,
                    src_mac: lb_mac,
                    mtu: 0,
                }),
            )?;
            specs.push(BackendSpec {
                addr,
                weight: 100,
                tier: 0,
            });
        }
        let vip = VipId {
            addr: IpAddr::V4(VIP),
            port: 80,
            proto: Proto::Tcp,
        };
        balancer.upsert_vip(vip, VipSettings::default())?;
        balancer.set_backends(vip, &specs)?;

        let pass = self.net.passthrough()?;
        let mut decaps = Vec::new();
        let mut modes = Vec::new();
        for i in 0..BACKENDS {
            let mut d = Decap::load()?;
            d.add_address(IpAddr::V4(backend_addr(i)))?;
            let ifname = backend_if(i);
            let m = in_netns(&self.backend_ns[i], || d.attach(&ifname, AttachMode::Auto))?
                .with_context(|| format!("attaching decap to {ifname}"))?;
            modes.push(format!("{m:?}"));
            decaps.push(d);
        }
        let m = in_netns(&self.lb_ns, || balancer.attach(IF_LB, AttachMode::Auto))?
            .context("attaching lb's balancer")?;
        self.lb = Some(LbRig {
            balancer,
            decaps,
            _pass: pass,
        });
        Ok(format!("balancer {m:?} mode, decap {}", modes.join("/")))
    }

    pub fn stop_lb(&mut self) {
        self.lb = None;
    }

    // ------------------------------------------------------------ HAProxy

    /// HAProxy in TCP mode on the VIP (added to the balancer host's lo), round
    /// robin over the three backends; returns its pid.
    pub fn start_haproxy(&mut self) -> Result<u32> {
        let lb = self.lb_ns.clone();
        netns::ip(&lb, &["addr", "replace", &format!("{VIP}/32"), "dev", "lo"])?;
        let servers: String = (0..BACKENDS)
            .map(|i| format!("    server b{} {}:80\n", i + 1, backend_addr(i)))
            .collect();
        let sock = self.haproxy_socket();
        let conf = format!(
            r#"global
    maxconn 8000
    stats socket {sock} mode 600 level user
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend vip
    bind {VIP}:80
    default_backend web
backend web
    balance roundrobin
{servers}"#,
            sock = sock.display()
        );
        let path = self.dir.join("haproxy.cfg");
        std::fs::write(&path, conf)?;
        let log = self.dir.join("haproxy.log");
        let pid = self.procs.spawn(
            "haproxy",
            &lb,
            &["haproxy", "-db", "-f", &path.display().to_string()],
            &log,
        )?;
        wait_for(Duration::from_secs(5), "haproxy's stats socket", || {
            haproxy_sessions(&sock).is_ok()
        })
        .or_else(|e| self.procs.check("haproxy", &log).and(Err(e)))?;
        Ok(pid)
    }

    pub fn haproxy_socket(&self) -> PathBuf {
        self.dir.join("haproxy.sock")
    }

    pub fn stop_haproxy(&mut self) -> Result<()> {
        self.procs.stop("haproxy");
        let _ = std::fs::remove_file(self.haproxy_socket());
        netns::ip(
            &self.lb_ns,
            &["addr", "del", &format!("{VIP}/32"), "dev", "lo"],
        )?;
        Ok(())
    }

    // ------------------------------------------------------------ nftables

    /// DNAT of the VIP to one of the backends chosen by `selector` (an nft
    /// expression such as `numgen inc mod 3`), with a counter.
    pub fn start_nft(&mut self, selector: &str) -> Result<()> {
        let map: Vec<String> = (0..BACKENDS)
            .map(|i| format!("{i} : {}", backend_addr(i)))
            .collect();
        let rules = format!(
            "table ip lbversus {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
             ip daddr {VIP} tcp dport 80 counter dnat to {selector} map {{ {} }}\n  }}\n}}\n",
            map.join(", ")
        );
        let path = self.dir.join("nft.rules");
        std::fs::write(&path, rules)?;
        exec_ok(
            &self.lb_ns,
            &["nft", "-f", &path.display().to_string()],
            CMD_TIMEOUT,
        )
        .context("loading the nftables DNAT rules")?;
        Ok(())
    }

    /// Packets the DNAT rule matched (the first of each connection: NAT
    /// chains see only new connections).
    pub fn nft_counter(&self) -> Result<u64> {
        let text = exec_ok(
            &self.lb_ns,
            &["nft", "list", "table", "ip", "lbversus"],
            CMD_TIMEOUT,
        )?;
        let n = text
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .with_context(|| format!("no counter in the nft table:\n{text}"))?;
        Ok(n.parse()?)
    }

    pub fn stop_nft(&mut self) -> Result<()> {
        exec_ok(
            &self.lb_ns,
            &["nft", "delete", "table", "ip", "lbversus"],
            CMD_TIMEOUT,
        )?;
        Ok(())
    }
}

impl LbRig {
    /// Packets the balancer sent back out (`XDP_TX`) and its program's run
    /// time so far (with BPF run-time stats on).
    pub fn snapshot(&mut self) -> Result<(u64, u64, Duration, u64)> {
        let tx = self.balancer.counters()?.get(Counter::ActionTx);
        let info = self.balancer.program().info()?;
        let mut decap_ns = Duration::ZERO;
        for d in &mut self.decaps {
            decap_ns += d.program().info()?.run_time();
        }
        Ok((
            tx,
            info.run_count(),
            info.run_time(),
            decap_ns.as_nanos() as u64,
        ))
    }
}

/// Removes the scratch directories of benches killed before they could
/// (their namespaces are swept by `Topology::new`, their processes died
/// with them).
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("lb-versus-")
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Requests nginx in backend namespace `ns` has served (its stub status,
/// fetched over its own lo; the fetch itself counts one).
pub fn stub_requests(ns: &str) -> Result<u64> {
    let text = in_netns(ns, || -> Result<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 80));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /stub HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    // "...\r\n\r\nActive connections: 1 \nserver accepts handled requests\n 7 7 9 \n..."
    let line = text
        .lines()
        .skip_while(|l| !l.starts_with("server accepts"))
        .nth(1)
        .with_context(|| format!("no stub status in {text:?}"))?;
    let n = line
        .split_whitespace()
        .nth(2)
        .with_context(|| format!("bad stub status line {line:?}"))?;
    Ok(n.parse()?)
}

/// TCP segments retransmitted so far in namespace `ns` (`RetransSegs` of
/// its /proc/net/snmp).
pub fn retransmits(ns: &str) -> Result<u64> {
    // thread-self: /proc/self/net would show the main thread's namespace.
    let text = in_netns(ns, || std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (
        tcp.next().context("no Tcp: line")?,
        tcp.next().context("no Tcp: values")?,
    );
    let i = names
        .split_whitespace()
        .position(|w| w == "RetransSegs")
        .context("no RetransSegs")?;
    Ok(values
        .split_whitespace()
        .nth(i)
        .context("short Tcp: line")?
        .parse()?)
}

/// Sessions HAProxy's backend `web` has had (`stot` of `show stat`).
pub fn haproxy_sessions(sock: &Path) -> Result<u64> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"show stat\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let header = text.lines().next().context("empty show stat")?;
    let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let stot = cols
        .iter()
        .position(|c| *c == "stot")
        .context("no stot column")?;
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f.first() == Some(&"web") && f.get(1) == Some(&"BACKEND") {
            return Ok(f.get(stot).context("short row")?.parse()?);
        }
    }
    bail!("no web,BACKEND row in show stat:\n{text}")
}

/// CPU seconds of process `pid`; an error if it has gone.
pub fn pid_cpu(pid: u32) -> Result<f64> {
    let t = process_cpu(pid)?;
    ensure!(t >= 0.0);
    Ok(t)
}
