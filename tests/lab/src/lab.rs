//! A lab for acceptance tests of the real `lbd` and `lbctl` binaries: a
//! one-armed balancer on a switched segment, in network namespaces (a
//! [`SwitchedLab`], the one the demo and the bench use too).
//!
//! ```text
//!                      switch ns: bridge br0 (MTU 1600)
//!      ┌──────────────┬──────────────┬─────────────┬─────────────┐
//!    pclient        plb [XDP pass]   pb1           pb2   ...     (bridge ports)
//!      │              │              │             │
//!   client ns       lb ns          b1 ns         b2 ns   ...
//!   c0 10.10.0.2    <lb if> .1     <b1 if> .11   <b2 if> .12
//!   fd10::2         fd10::1        fd10::11      fd10::12
//!   VIPs via .1     lbd run        lbd decap, servers, VIPs on lo
//! ```
//!
//! `lbd run` runs inside the lb namespace (with `nsenter --net`, which keeps
//! the host's mount namespace and so its bpffs) and sends the encapsulated
//! frames back out of the interface they came in on (`XDP_TX`); a frame
//! sent by `XDP_TX` out of a veth reaches the peer only when the peer has a
//! native XDP program, so the lb's bridge port gets a pass-through program
//! (the decap program with no tunnel address: it passes everything). The
//! backends run `lbd decap` and a small TCP server on ports 80 and 8080
//! that greets each connection with the backend's name and then echoes
//! lines.
//!
//! For health checks, each backend's services ([`Service`]: the greeter,
//! an HTTP `/healthz` endpoint that can be made to answer 503, a UDP
//! server answering with the backend's name) can be started and stopped
//! one by one, a stop returning the moment the socket closed; configs can
//! have UDP VIPs and `[vip.health]` tables ([`HealthCheck`]);
//! [`Lab::wait_status`] polls `lbctl --json status` every 50 ms;
//! [`Lab::flows`] runs a stream of new TCP or UDP flows whose client ports
//! are known also when they fail (for `lbctl explain`); [`Lab::scrape`]
//! reads lbd's `/metrics` from inside the lb namespace.
//!
//! Everything global is named after a tag unique to the test process and
//! lab (`lbdt<pid><n>`): interfaces (`lbdt<tag>lb`, `lbdt<tag>b1`, ...) and
//! the temporary directory. Pin directories and locks are lbd's, keyed by
//! network namespace and interface (`/sys/fs/bpf/lb/netns-<cookie>/<if>`,
//! `/run/lb/lbd-netns-<cookie>-<if>.lock`). [`Lab::new_eth0`] builds the
//! container layout instead, every host's interface named `eth0`, which is
//! what proves that several lb instances on one host never meet. A lab
//! removes all of it on drop, also when the test panics (then it prints the
//! tail of lbd's log first); leftovers of test processes that were killed
//! outright are swept by the next [`Lab::new`] (tagged names only: an
//! `eth0` lab of a killed process leaves its pins behind).

mod config;
mod traffic;

pub use config::*;

use std::{
    collections::HashMap,
    fs,
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Child,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb::{decap::Decap, host::pin::PinPlace};
use lb_common::{ConnEntry, FlowKey, PROTO_TCP};

use crate::{
    process::*,
    servers::*,
    status::*,
    switched::{SwitchedLab, SwitchedSpec},
};

pub const LB4: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
pub const LB6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 0, 0, 0, 0, 0, 1);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 0, 0, 0, 0, 0, 2);
/// The TCP:80 VIP.
pub const VIP_WEB: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
/// The port-less TCP VIP.
pub const VIP_ANY: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
/// The IPv6 TCP:80 VIP.
pub const VIP_WEB6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0x100, 0, 0, 0, 0, 0, 1);
/// An address every backend has on `lo`, for VIPs made at run time.
pub const VIP_EXTRA: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 3);
/// The ports the backends' servers listen on.
pub const PORTS: [u16; 2] = [80, 8080];

/// The MTU of the links toward the balancer and the backends in the
/// standard lab: above the clients' 1500, so encapsulated full-size packets
/// fit and the ICMP "too big" path is not taken.
pub const LAB_MTU: u32 = 1600;

/// How long lbd may take to answer on its control socket after starting.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often [`Lab::wait_status`] asks `lbctl --json status`.
pub const STATUS_POLL: Duration = Duration::from_millis(50);

/// Where lbd serves metrics in the lb namespace (the lab's config).
pub const METRICS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9469);

// ---------------------------------------------------------------- the lab

/// A backend host: its namespace, interface and addresses.
#[derive(Clone, Debug)]
pub struct BackendHost {
    /// `b1`, `b2`, ...: what its server greets with.
    pub name: String,
    pub ns: String,
    pub ifname: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The VIPs it holds on `lo` (where its UDP service answers too).
    pub lo_addrs: Vec<IpAddr>,
}

pub struct Lab {
    pub tag: String,
    /// Per-lab temporary directory (mode 0755): config, socket, state, log.
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log_path: PathBuf,
    pub lb_if: String,
    pub lb_ns: String,
    pub client_ns: String,
    /// The client's interface.
    pub client_if: String,
    pub switch_ns: String,
    pub backends: Vec<BackendHost>,
    lbd: Option<Child>,
    lbd_starts: u32,
    /// The running services.
    servers: Mutex<Vec<Server>>,
    /// Stopped ones, joined on drop (and counted by `accepted`).
    stopped: Mutex<Vec<Server>>,
    passthrough: Option<Decap>,
    net: Option<SwitchedLab>,
}

impl Lab {
    /// Builds the topology with `n_backends` backends (b1..bn, all running
    /// decap and servers). lbd is not started.
    pub fn new(n_backends: usize) -> Result<Lab> {
        Self::create(n_backends, false, LAB_MTU)
    }

    /// [`Lab::new`] in the container layout: the client's, the balancer's
    /// and every backend's interface is named `eth0`.
    pub fn new_eth0(n_backends: usize) -> Result<Lab> {
        Self::create(n_backends, true, LAB_MTU)
    }

    /// [`Lab::new`] with every link at `mtu`, the clients' included (the
    /// usual data-centre network has 1500 everywhere).
    pub fn new_with_mtu(n_backends: usize, mtu: u32) -> Result<Lab> {
        Self::create(n_backends, false, mtu)
    }

    fn create(n_backends: usize, eth0: bool, link_mtu: u32) -> Result<Lab> {
        sweep_stale();
        let tag = new_tag();
        let named = |tagged: String| if eth0 { "eth0".to_string() } else { tagged };
        let spec = SwitchedSpec {
            ns_prefix: String::new(),
            bridge: "br0".into(),
            port_prefix: "p".into(),
            client_if: named("c0".into()),
            lb_if: named(format!("{tag}lb")),
            backend_ifs: (1..=n_backends)
                .map(|i| named(format!("{tag}b{i}")))
                .collect(),
            v4: LB4,
            v6: Some(LB6),
            mtu: link_mtu,
            backend_lo: vec![
                VIP_WEB.into(),
                VIP_ANY.into(),
                VIP_EXTRA.into(),
                VIP_WEB6.into(),
            ],
            client_routes: vec!["10.100.0.0/24".into(), "fd10:100::/64".into()],
            quiet_arp: false,
        };
        let net = SwitchedLab::build(&spec)?;
        let dir = std::env::temp_dir().join(&tag);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        // Traversable by others, so a non-root client is stopped by the
        // socket's own mode, not by the directory's.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        let backends = net
            .backends
            .iter()
            .map(|h| BackendHost {
                name: h.role.clone(),
                ns: h.ns.clone(),
                ifname: h.ifname.clone(),
                v4: h.v4,
                v6: h.v6.expect("the lab has IPv6"),
                lo_addrs: spec.backend_lo.clone(),
            })
            .collect();
        let mut lab = Lab {
            config_path: dir.join("lb.toml"),
            socket: dir.join("lbd.sock"),
            state_dir: dir.join("state"),
            log_path: dir.join("lbd.log"),
            dir,
            lb_if: net.lb.ifname.clone(),
            lb_ns: net.lb.ns.clone(),
            client_ns: net.client.ns.clone(),
            client_if: net.client.ifname.clone(),
            switch_ns: net.switch_ns.clone(),
            backends,
            lbd: None,
            lbd_starts: 0,
            servers: Mutex::new(Vec::new()),
            stopped: Mutex::new(Vec::new()),
            passthrough: None,
            net: Some(net),
            tag,
        };
        lab.start_backends()?;
        Ok(lab)
    }

    pub(crate) fn net(&self) -> &SwitchedLab {
        self.net
            .as_ref()
            .expect("the lab's network lives until drop")
    }

    /// The pass-through program on the balancer's bridge port; on each
    /// backend `lbd decap` and the greeters.
    fn start_backends(&mut self) -> Result<()> {
        self.passthrough = Some(self.net().passthrough()?);
        for host in self.backends.clone() {
            let out = run_bounded(
                nsenter(&host.ns, &lbd_bin()).args([
                    "decap",
                    "--interface",
                    &host.ifname,
                    "--address",
                    &host.v4.to_string(),
                    "--address",
                    &host.v6.to_string(),
                ]),
                Duration::from_secs(20),
            )?;
            anyhow::ensure!(
                out.ok(),
                "lbd decap on {} in {}: {out}",
                host.ifname,
                host.ns
            );
            for port in PORTS {
                let server = Server::start(&host, Service::Greeter(port))?;
                self.servers.lock().expect("not poisoned").push(server);
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

    /// The backend's name for an address.
    pub fn backend_name(&self, addr: IpAddr) -> Option<&str> {
        self.backends
            .iter()
            .find(|b| IpAddr::V4(b.v4) == addr || IpAddr::V6(b.v6) == addr)
            .map(|b| b.name.as_str())
    }

    /// A lab with `n_backends` backends, `setup` run before lbd starts
    /// (services), lbd running the VIPs `vips` makes, next hops resolved.
    /// Panics if a step fails: for tests, which need the whole of it.
    pub fn with_lbd(
        n_backends: usize,
        setup: impl FnOnce(&Lab),
        vips: impl FnOnce(&Lab) -> Vec<VipSpec>,
    ) -> Lab {
        let t = Instant::now();
        let mut lab = Lab::new(n_backends).expect("building the lab");
        setup(&lab);
        let vips = vips(&lab);
        lab.write_config(&lab.config_text(&vips));
        lab.start_lbd().expect("starting lbd");
        lab.wait_next_hops(Duration::from_secs(10))
            .expect("next hops resolve");
        println!("lab {} up in {:?}", lab.tag, t.elapsed());
        lab
    }

    /// The three standard VIPs, each with backends `names` (`b1`, ...).
    pub fn standard_vips(&self, names: &[&str]) -> Vec<VipSpec> {
        let v4: Vec<IpAddr> = names.iter().map(|n| self.backend(n).v4.into()).collect();
        let v6: Vec<IpAddr> = names.iter().map(|n| self.backend(n).v6.into()).collect();
        vec![
            VipSpec::new("web", VIP_WEB, Some(80), &v4),
            VipSpec::new("any", VIP_ANY, None, &v4),
            VipSpec::new("web6", VIP_WEB6, Some(80), &v6),
        ]
    }

    /// The config file's text for `vips`.
    pub fn config_text(&self, vips: &[VipSpec]) -> String {
        let mut t = format!(
            "# lbd acceptance test {tag}\n\
             interface = \"{lb_if}\"\n\
             xdp_mode = \"native\"\n\
             control_socket = \"{socket}\"\n\
             # In the lb namespace's own loopback: no other test shares it.\n\
             metrics_listen = \"127.0.0.1:9469\"\n\
             state_dir = \"{state}\"\n\
             \n\
             [encap]\n\
             source_v4 = \"{LB4}\"\n\
             source_v6 = \"{LB6}\"\n",
            tag = self.tag,
            lb_if = self.lb_if,
            socket = self.socket.display(),
            state = self.state_dir.display(),
        );
        for v in vips {
            t += &format!(
                "\n[[vip]]\nname = \"{}\"\naddress = \"{}\"\n",
                v.name, v.addr
            );
            if let Some(p) = v.port {
                t += &format!("port = {p}\n");
            }
            if let Some(n) = v.table_size {
                t += &format!("table_size = {n}\n");
            }
            if let Some(s) = v.scheduler {
                t += &format!("scheduler = \"{s}\"\n");
            }
            t += &format!("protocol = \"{}\"\nbackends = [\n", v.protocol);
            for (addr, weight) in &v.backends {
                match weight {
                    Some(w) => t += &format!("  {{ address = \"{addr}\", weight = {w} }},\n"),
                    None => t += &format!("  {{ address = \"{addr}\" }},\n"),
                }
            }
            t += "]\n";
            if let Some(h) = &v.health {
                t += &h.toml();
            }
        }
        t
    }

    pub fn write_config(&self, text: &str) {
        fs::write(&self.config_path, text).expect("writing the config");
    }

    // ------------------------------------------------------------ lbd

    /// Starts `lbd run` in the lb namespace and waits (bounded) until it
    /// answers `lbctl status`.
    pub fn start_lbd(&mut self) -> Result<()> {
        anyhow::ensure!(self.lbd.is_none(), "lbd already running");
        let child = self.spawn_lbd_run()?;
        self.lbd = Some(child);
        self.wait_ready()
    }

    /// Spawns `lbd run --config <config>` in the lb namespace, its output
    /// appended to the log; does not wait.
    pub fn spawn_lbd_run(&mut self) -> Result<Child> {
        self.lbd_starts += 1;
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        writeln!(log, "===== lbd start #{} =====", self.lbd_starts)?;
        spawn_lbd(&self.lb_ns, &self.config_path, log)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.lbd.as_mut().expect("started").try_wait()? {
                self.lbd = None;
                bail!(
                    "lbd exited ({status}) before its control socket answered\n{}",
                    self.log_tail(40)
                );
            }
            if self.socket.exists() && self.lbctl(&["status"]).ok() {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "lbd did not answer on {} within {READY_TIMEOUT:?}\n{}",
                    self.socket.display(),
                    self.log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` lbd (and reap it).
    pub fn kill_lbd(&mut self) {
        if let Some(mut c) = self.lbd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM to lbd, and wait (bounded) for it to exit: the stop an
    /// init system makes.
    pub fn stop_lbd(&mut self) -> Result<()> {
        let Some(mut c) = self.lbd.take() else {
            return Ok(());
        };
        // SAFETY: a signal to our own child, which we have not reaped yet.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if c.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        bail!("lbd did not exit within 10 s of SIGTERM")
    }

    pub fn lbd_pid(&self) -> Option<u32> {
        self.lbd.as_ref().map(|c| c.id())
    }

    /// Whether lbd is still running.
    pub fn lbd_running(&mut self) -> bool {
        self.lbd
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last `n` lines of lbd's log (all its starts), for messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!(
            "--- last {} lines of {}\n{}\n---",
            lines.len() - from,
            self.log_path.display(),
            lines[from..].join("\n")
        )
    }

    /// Where lbd pins the balancer's objects in this lab's lb namespace.
    pub fn pin_place(&self) -> PinPlace {
        pin_place(&self.lb_ns, &self.lb_if).expect("the lb namespace's pin place")
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.pin_place().balancer_dir()
    }

    /// `lbd <args>` in the lb namespace, bounded.
    pub fn lbd_in_lb_ns(&self, args: &[&str]) -> Output {
        run_bounded(
            nsenter(&self.lb_ns, &lbd_bin()).args(args),
            Duration::from_secs(20),
        )
        .expect("running lbd")
    }

    // ------------------------------------------------------------ lbctl

    /// `lbctl --socket <socket> <args>` as root, from the root namespace.
    pub fn lbctl(&self, args: &[&str]) -> Output {
        lbctl_at(&self.socket, args)
    }

    /// `lbctl`, which must succeed.
    pub fn lbctl_ok(&self, args: &[&str]) -> String {
        let out = self.lbctl(args);
        assert!(
            out.ok(),
            "lbctl {args:?} failed: {out}\n{}",
            self.log_tail(30)
        );
        out.stdout
    }

    /// `lbctl --json status`, parsed.
    pub fn status(&self) -> Json {
        let text = self.lbctl_ok(&["--json", "status"]);
        Json::parse(&text).unwrap_or_else(|e| panic!("lbctl --json status: {e}:\n{text}"))
    }

    /// The VIP/backend sets of `lbctl --json status`, without traffic,
    /// health, next hops or uptime: what a refused change must not touch.
    pub fn config_view(&self) -> String {
        config_view(&self.status())
    }

    pub fn state_json(&self) -> String {
        fs::read_to_string(self.state_dir.join("state.json")).unwrap_or_default()
    }

    /// Waits (bounded) until every backend of every VIP has a resolved next
    /// hop in `lbctl --json status`.
    pub fn wait_next_hops(&self, timeout: Duration) -> Result<Json> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            let unresolved = unresolved_next_hops(&s);
            if unresolved.is_empty() {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!(
                    "next hops still unresolved after {timeout:?}: {unresolved:?}\n{}",
                    self.log_tail(30)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("lab {} failed; lbd log:\n{}", self.tag, self.log_tail(60));
        }
        let mut servers = std::mem::take(self.servers.get_mut().unwrap_or_else(|p| p.into_inner()));
        servers.append(self.stopped.get_mut().unwrap_or_else(|p| p.into_inner()));
        for s in &servers {
            s.stop_flag();
        }
        for s in servers {
            s.join();
        }
        self.kill_lbd();
        // Unpin everything (lbd detach in each namespace, as an operator
        // would), falling back to removing the directories.
        let mut ifs = vec![(self.lb_ns.clone(), self.lb_if.clone())];
        ifs.extend(
            self.backends
                .iter()
                .map(|b| (b.ns.clone(), b.ifname.clone())),
        );
        for (ns, ifname) in ifs {
            let mut cmd = nsenter(&ns, &lbd_bin());
            cmd.args(["detach", "--interface", &ifname]);
            match run_bounded(&mut cmd, Duration::from_secs(20)) {
                Ok(o) if o.ok() => {}
                Ok(o) => eprintln!("lab {}: lbd detach --interface {ifname}: {o}", self.tag),
                Err(e) => eprintln!("lab {}: lbd detach --interface {ifname}: {e:#}", self.tag),
            }
            remove_interface_leftovers(&ns, &ifname);
        }
        self.passthrough = None;
        self.net = None;
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Every entry of a pinned connection table.
pub fn read_conntrack(path: &Path) -> Result<HashMap<FlowKey, ConnEntry>> {
    let data = aya::maps::MapData::from_pin(path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let map =
        aya::maps::HashMap::<_, FlowKey, ConnEntry>::try_from(aya::maps::Map::LruHashMap(data))
            .context("CONNTRACK as an LRU hash")?;
    let mut out = HashMap::new();
    for item in map.iter() {
        // An entry evicted between getting its key and its value is
        // skipped by the iterator's error; nothing is evicted in these tests.
        let (k, v) = item.context("reading CONNTRACK")?;
        out.insert(k, v);
    }
    Ok(out)
}

/// The connection-table key of a client connection.
pub fn flow_key(local: SocketAddr, vip: SocketAddr) -> FlowKey {
    FlowKey::new(local.ip(), local.port(), vip.ip(), vip.port(), PROTO_TCP)
}
