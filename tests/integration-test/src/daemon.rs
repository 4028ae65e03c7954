//! A lab for acceptance tests of the real `lbd` and `lbctl` binaries: a
//! one-armed balancer on a switched segment, in network namespaces.
//!
//! ```text
//!                      switch ns: bridge br0 (MTU 1600)
//!      ┌──────────────┬──────────────┬─────────────┬─────────────┐
//!    pcl (1500)     plb [XDP pass]   pb1           pb2   ...     (bridge ports)
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

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::fs::PermissionsExt,
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb::{decap::Decap, host::pin::PinPlace, model::AttachMode};
use lb_common::{ConnEntry, FlowKey, PROTO_TCP};

use crate::netns::{self, in_netns, spawn_in_netns, Topology, NETNS_RUN_DIR};

/// Prefix of everything global a lab names (interfaces, temp dirs).
pub const TAG_PREFIX: &str = "lbdt";
pub const BPFFS: &str = "/sys/fs/bpf";
pub const RUN_DIR: &str = "/run/lb";

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

/// How long one connection attempt, or one answer, may take. A SYN lost
/// once is retransmitted after 1 s, so this allows for one loss.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// How long lbd may take to answer on its control socket after starting.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest any background loop (server, stream, long-lived
/// connection) runs, whether or not it is told to stop.
pub const MAX_BACKGROUND: Duration = Duration::from_secs(300);
/// How often [`Lab::wait_status`] asks `lbctl --json status`.
pub const STATUS_POLL: Duration = Duration::from_millis(50);

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

// ---------------------------------------------------------------- binaries

/// `target/<profile>/<name>`, found from the running executable: a test
/// (`target/<profile>/deps/<test>-<hash>`) or a binary such as the bench
/// (`target/<profile>/bench`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let parent = exe.parent().expect("executable in a directory");
    let dir = if parent.ends_with("deps") {
        parent.parent().expect("target/<profile>/deps")
    } else {
        parent
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: build it first (`cargo xtask build` or `cargo build -p lb-userspace --bins`)",
        path.display()
    );
    path
}

pub fn lbd_bin() -> PathBuf {
    bin("lbd")
}

pub fn lbctl_bin() -> PathBuf {
    bin("lbctl")
}

/// What a finished command left.
#[derive(Clone, Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}---",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to its end, at most `timeout`; killed after that.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    match status {
        Some(s) => Ok(Output {
            code: s.code(),
            stdout,
            stderr,
        }),
        None => {
            bail!("{cmd:?} did not finish within {timeout:?}\nstdout: {stdout}\nstderr: {stderr}")
        }
    }
}

/// `nsenter --net=/var/run/netns/<ns> <prog> <args>`: the program runs in
/// the namespace's network stack but sees the host's mounts (bpffs).
pub fn nsenter(ns: &str, prog: &Path) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={NETNS_RUN_DIR}/{ns}")).arg(prog);
    c
}

/// Kill the child when the thread that started it ends (a test process
/// killed outright leaves no lbd behind).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

// ---------------------------------------------------------------- names

fn base36(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for d in out.iter_mut().rev() {
        *d = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out).expect("ASCII")
}

/// `lbdt` + the pid (5 base-36 digits) + a per-process counter (2 digits).
fn new_tag() -> String {
    let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed) as u64;
    format!(
        "{TAG_PREFIX}{}{}",
        base36(std::process::id() as u64, 5),
        base36(n, 2)
    )
}

/// The pid a tagged name was made by.
fn tag_pid(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(TAG_PREFIX)?.get(..5)?;
    u32::from_str_radix(digits, 36).ok()
}

/// Removes what labs of dead test processes left: pin directories, lock
/// files, temp directories.
pub fn sweep_stale() {
    let dead =
        |name: &str| tag_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
    for top in ["lb", "lb-decap"] {
        for ns_dir in netns_dirs(&Path::new(BPFFS).join(top)) {
            let Ok(entries) = fs::read_dir(&ns_dir) else {
                continue;
            };
            for e in entries.flatten() {
                if dead(&e.file_name().to_string_lossy()) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
            let _ = fs::remove_dir(&ns_dir);
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead(&name) && e.path().is_dir() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir(RUN_DIR) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // lbd-netns-<cookie>-<interface>.lock
            let ifname = name
                .strip_prefix("lbd-netns-")
                .and_then(|n| n.strip_suffix(".lock"))
                .and_then(|n| n.split_once('-'))
                .map(|(_, i)| i);
            if ifname.is_some_and(dead) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// The `netns-<cookie>` directories under `dir`.
pub fn netns_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| lb::host::netns::NetnsId::parse(&e.file_name().to_string_lossy()).is_some())
        .map(|e| e.path())
        .collect()
}

/// Every pin directory lb keeps for an interface named `ifname`, in any
/// namespace (and at the pre-namespace paths): for labs with names no one
/// else uses, to find what a killed run left.
pub fn pins_named(ifname: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for top in ["lb", "lb-decap"] {
        let top = Path::new(BPFFS).join(top);
        found.push(top.join(ifname));
        found.extend(netns_dirs(&top).into_iter().map(|d| d.join(ifname)));
    }
    found.retain(|p| p.exists());
    found
}

/// The pin place of `ifname` in namespace `ns`.
pub fn pin_place(ns: &str, ifname: &str) -> Result<PinPlace> {
    in_netns(ns, || PinPlace::current(ifname))?
}

/// Removes what lbd may have left for `ifname` in `ns`: pins of every
/// layout, the decap pin, the lock file.
pub fn remove_interface_leftovers(ns: &str, ifname: &str) {
    if let Ok(place) = pin_place(ns, ifname) {
        let _ = place.remove_balancer();
        let _ = place.remove_decap();
        let _ = fs::remove_file(lb::daemon::lock::lock_path(
            Path::new(RUN_DIR),
            place.netns,
            ifname,
        ));
    }
}

// ---------------------------------------------------------------- config

/// One `[[vip]]` of a config file.
#[derive(Clone, Debug)]
pub struct VipSpec {
    pub name: String,
    pub addr: IpAddr,
    pub port: Option<u16>,
    /// `tcp` (the default) or `udp`.
    pub protocol: &'static str,
    /// Address and weight (`None`: the default).
    pub backends: Vec<(IpAddr, Option<u32>)>,
    /// Its `[vip.health]` table, if any.
    pub health: Option<HealthCheck>,
    /// `table_size` (`None`: the default).
    pub table_size: Option<u32>,
}

impl VipSpec {
    pub fn new(
        name: &str,
        addr: impl Into<IpAddr>,
        port: Option<u16>,
        backends: &[IpAddr],
    ) -> Self {
        VipSpec {
            name: name.into(),
            addr: addr.into(),
            port,
            protocol: "tcp",
            backends: backends.iter().map(|b| (*b, None)).collect(),
            health: None,
            table_size: None,
        }
    }

    /// The same VIP with `protocol = "udp"`.
    pub fn udp(mut self) -> Self {
        self.protocol = "udp";
        self
    }

    /// The same VIP with a `[vip.health]` table.
    pub fn with_health(mut self, health: HealthCheck) -> Self {
        self.health = Some(health);
        self
    }

    /// `ADDR[:PORT]/PROTO`, as lbd writes it.
    pub fn id(&self) -> String {
        vip_id_proto(self.addr, self.port, self.protocol)
    }
}

/// `ADDR[:PORT]/tcp`, as lbd writes it.
pub fn vip_id(addr: IpAddr, port: Option<u16>) -> String {
    vip_id_proto(addr, port, "tcp")
}

/// `ADDR[:PORT]/PROTO`, as lbd writes it.
pub fn vip_id_proto(addr: IpAddr, port: Option<u16>, proto: &str) -> String {
    match (addr, port) {
        (IpAddr::V4(a), None) => format!("{a}/{proto}"),
        (IpAddr::V6(a), None) => format!("[{a}]/{proto}"),
        (IpAddr::V4(a), Some(p)) => format!("{a}:{p}/{proto}"),
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}/{proto}"),
    }
}

/// A `[vip.health]` table.
#[derive(Clone, Debug)]
pub struct HealthCheck {
    /// `tcp`, `http`, `udp` or `none`.
    pub kind: &'static str,
    /// `None`: the VIP's port.
    pub port: Option<u16>,
    /// HTTP only.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl HealthCheck {
    pub fn new(
        kind: &'static str,
        interval: Duration,
        timeout: Duration,
        rise: u32,
        fall: u32,
    ) -> Self {
        HealthCheck {
            kind,
            port: None,
            path: None,
            interval,
            timeout,
            rise,
            fall,
        }
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.path = Some(path.into());
        self
    }

    /// The table's text (durations in milliseconds).
    pub fn toml(&self) -> String {
        let mut t = format!("[vip.health]\nkind = \"{}\"\n", self.kind);
        if let Some(p) = self.port {
            t += &format!("port = {p}\n");
        }
        if let Some(p) = &self.path {
            t += &format!("path = \"{p}\"\n");
        }
        t += &format!(
            "interval = \"{}ms\"\ntimeout = \"{}ms\"\nrise = {}\nfall = {}\n",
            self.interval.as_millis(),
            self.timeout.as_millis(),
            self.rise,
            self.fall
        );
        t
    }

    /// How long detecting a failed backend may take: `fall × interval +
    /// timeout`, plus one interval of slack (the issue's bound).
    pub fn down_bound(&self) -> Duration {
        self.interval * self.fall + self.timeout + self.interval
    }

    /// How long noticing a backend's return may take: `rise × interval`,
    /// plus one interval of slack.
    pub fn up_bound(&self) -> Duration {
        self.interval * self.rise + self.interval
    }
}

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
    topo: Option<Topology>,
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

    fn create(n_backends: usize, eth0: bool, mtu_to_backends: u32) -> Result<Lab> {
        sweep_stale();
        let tag = new_tag();
        let dir = std::env::temp_dir().join(&tag);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        // Traversable by others, so a non-root client is stopped by the
        // socket's own mode, not by the directory's.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        let mut lab = Lab {
            config_path: dir.join("lb.toml"),
            socket: dir.join("lbd.sock"),
            state_dir: dir.join("state"),
            log_path: dir.join("lbd.log"),
            dir,
            lb_if: if eth0 {
                "eth0".into()
            } else {
                format!("{tag}lb")
            },
            lb_ns: String::new(),
            client_ns: String::new(),
            client_if: if eth0 { "eth0".into() } else { "c0".into() },
            switch_ns: String::new(),
            backends: Vec::new(),
            lbd: None,
            lbd_starts: 0,
            servers: Mutex::new(Vec::new()),
            stopped: Mutex::new(Vec::new()),
            passthrough: None,
            topo: Some(Topology::new()?),
            tag,
        };
        lab.build(n_backends, eth0, mtu_to_backends)?;
        Ok(lab)
    }

    fn topo(&mut self) -> &mut Topology {
        self.topo.as_mut().expect("topology lives until drop")
    }

    fn build(&mut self, n_backends: usize, eth0: bool, link_mtu: u32) -> Result<()> {
        let sw = self.topo().add_ns("sw")?;
        let cl = self.topo().add_ns("cl")?;
        let lb = self.topo().add_ns("lb")?;
        self.switch_ns = sw.clone();
        self.client_ns = cl.clone();
        self.lb_ns = lb.clone();
        self.topo().add_bridge(&sw, "br0")?;
        netns::ip(
            &sw,
            &[
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;

        // Client: MTU 1500, checksums finished in software (see
        // `netns::set_tx_checksum`), the VIPs routed to the balancer.
        let c0 = self.client_if.clone();
        self.topo().veth((&cl, &c0), (&sw, "pcl"))?;
        self.topo().set_master(&sw, "pcl", "br0")?;
        netns::set_tx_checksum(&cl, &c0, false)?;
        self.topo().add_addr(&cl, &c0, &format!("{CLIENT4}/24"))?;
        self.topo().add_addr(&cl, &c0, &format!("{CLIENT6}/64"))?;
        self.topo()
            .add_route(&cl, &["10.100.0.0/24", "via", &LB4.to_string()])?;
        self.topo()
            .add_route(&cl, &["fd10:100::/64", "via", &LB6.to_string()])?;

        // The balancer: one arm; its bridge port passes XDP_TX frames on.
        let lb_if = self.lb_if.clone();
        self.topo().veth((&lb, &lb_if), (&sw, "plb"))?;
        self.topo().set_master(&sw, "plb", "br0")?;
        mtu(&lb, &lb_if, link_mtu)?;
        mtu(&sw, "plb", link_mtu)?;
        self.topo().add_addr(&lb, &lb_if, &format!("{LB4}/24"))?;
        self.topo().add_addr(&lb, &lb_if, &format!("{LB6}/64"))?;
        let mut pass = Decap::load().context("loading the pass-through program")?;
        let mode = in_netns(&sw, || pass.attach("plb", AttachMode::Native))??;
        anyhow::ensure!(
            mode == aya::programs::XdpMode::Driver,
            "pass-through not native"
        );
        self.passthrough = Some(pass);

        for i in 1..=n_backends {
            let name = format!("b{i}");
            let ns = self.topo().add_ns(&name)?;
            let ifname = if eth0 {
                "eth0".to_string()
            } else {
                format!("{}{name}", self.tag)
            };
            let port = format!("p{name}");
            let host = BackendHost {
                name: name.clone(),
                ns: ns.clone(),
                ifname: ifname.clone(),
                v4: Ipv4Addr::new(10, 10, 0, 10 + i as u8),
                v6: format!("fd10::{}", 10 + i).parse().expect("IPv6"),
            };
            self.topo().veth((&ns, &ifname), (&sw, &port))?;
            self.topo().set_master(&sw, &port, "br0")?;
            mtu(&ns, &ifname, link_mtu)?;
            mtu(&sw, &port, link_mtu)?;
            self.topo()
                .add_addr(&ns, &ifname, &format!("{}/24", host.v4))?;
            self.topo()
                .add_addr(&ns, &ifname, &format!("{}/64", host.v6))?;
            self.topo().add_addr(&ns, "lo", &format!("{VIP_WEB}/32"))?;
            self.topo().add_addr(&ns, "lo", &format!("{VIP_ANY}/32"))?;
            self.topo()
                .add_addr(&ns, "lo", &format!("{VIP_EXTRA}/32"))?;
            self.topo()
                .add_addr(&ns, "lo", &format!("{VIP_WEB6}/128"))?;
            for key in [
                "net.ipv4.conf.all.rp_filter".to_string(),
                "net.ipv4.conf.default.rp_filter".to_string(),
                "net.ipv4.conf.lo.rp_filter".to_string(),
                format!("net.ipv4.conf.{ifname}.rp_filter"),
            ] {
                self.topo().sysctl(&ns, &key, "0")?;
            }
            let out = run_bounded(
                nsenter(&ns, &lbd_bin()).args([
                    "decap",
                    "--interface",
                    &ifname,
                    "--address",
                    &host.v4.to_string(),
                    "--address",
                    &host.v6.to_string(),
                ]),
                Duration::from_secs(20),
            )?;
            anyhow::ensure!(out.ok(), "lbd decap on {ifname} in {ns}: {out}");
            for port in PORTS {
                let server = Server::start(&host, Service::Greeter(port))?;
                self.servers.lock().expect("not poisoned").push(server);
            }
            self.backends.push(host);
        }
        mtu(&sw, "br0", link_mtu)?;
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
        let mut cmd = nsenter(&self.lb_ns, &lbd_bin());
        cmd.args(["run", "--config"])
            .arg(&self.config_path)
            .env("LBD_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut cmd);
        cmd.spawn().context("spawning lbd run")
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
        let mut cmd = Command::new(lbctl_bin());
        cmd.arg("--socket").arg(&self.socket).args(args);
        run_bounded(&mut cmd, Duration::from_secs(20)).expect("running lbctl")
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
            let unresolved: Vec<String> = s
                .get("vips")
                .arr()
                .iter()
                .flat_map(|v| {
                    v.get("backends")
                        .arr()
                        .iter()
                        .filter(|b| b.get("next_hop").as_bool() != Some(true))
                        .map(|b| format!("{} {}", v.get("vip").str(), b.get("addr").str()))
                        .collect::<Vec<_>>()
                })
                .collect();
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

    // ------------------------------------------------------------ traffic

    /// Runs `f` in the client namespace.
    pub fn in_client<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> T {
        in_netns(&self.client_ns, f).expect("entering the client namespace")
    }

    /// One connection from the client: the greeting's backend name.
    pub fn greet(&self, to: SocketAddr) -> Result<String, String> {
        self.in_client(|| greet(to).map(|(name, _)| name))
    }

    /// `n` connections from the client to `to`: how many reached each
    /// backend; the first failure ends it.
    pub fn spread(&self, to: SocketAddr, n: usize) -> Result<BTreeMap<String, usize>, String> {
        self.in_client(|| {
            let mut by = BTreeMap::new();
            for i in 0..n {
                let (name, _) =
                    greet(to).map_err(|e| format!("connection {i} of {n} to {to}: {e}"))?;
                *by.entry(name).or_insert(0) += 1;
            }
            Ok(by)
        })
    }

    /// A connection from the client that exchanges a line every `every`
    /// until stopped.
    pub fn long_lived(&self, to: SocketAddr, every: Duration) -> Result<LongLived> {
        LongLived::start(&self.client_ns, to, every)
    }

    /// Connections from the client, one after another, round robin over
    /// `targets`, until stopped.
    pub fn stream(&self, targets: &[SocketAddr]) -> ConnStream {
        ConnStream::start(&self.client_ns, targets.to_vec())
    }

    /// Server-side counts of connections accepted by the greeters, by
    /// backend (every backend is listed).
    pub fn accepted(&self) -> BTreeMap<String, u64> {
        let mut by: BTreeMap<String, u64> =
            self.backends.iter().map(|b| (b.name.clone(), 0)).collect();
        let running = self.servers.lock().expect("not poisoned");
        let stopped = self.stopped.lock().expect("not poisoned");
        for s in running.iter().chain(stopped.iter()) {
            if matches!(s.service, Service::Greeter(_)) {
                *by.entry(s.backend.clone()).or_insert(0) += s.served();
            }
        }
        by
    }

    // ------------------------------------------------------------ services

    /// Starts `service` on backend `backend` (it must not be running);
    /// returns the moment it began to accept.
    pub fn start_service(&self, backend: &str, service: Service) -> Result<Instant> {
        let host = self.backend(backend).clone();
        let mut servers = self.servers.lock().expect("not poisoned");
        anyhow::ensure!(
            !servers
                .iter()
                .any(|s| s.backend == backend && s.service == service),
            "{backend} {service:?} is already running"
        );
        servers.push(Server::start(&host, service)?);
        Ok(Instant::now())
    }

    /// Stops `service` on backend `backend` (it must be running); returns
    /// once its socket is closed, with the moment it was.
    pub fn stop_service(&self, backend: &str, service: Service) -> Instant {
        let server = {
            let mut servers = self.servers.lock().expect("not poisoned");
            let i = servers
                .iter()
                .position(|s| s.backend == backend && s.service == service)
                .unwrap_or_else(|| panic!("{backend} {service:?} is not running"));
            servers.remove(i)
        };
        let at = server.stop();
        self.stopped.lock().expect("not poisoned").push(server);
        at
    }

    /// Whether `service` runs on backend `backend`.
    pub fn service_running(&self, backend: &str, service: Service) -> bool {
        self.servers
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|s| s.backend == backend && s.service == service)
    }

    /// Makes backend `backend`'s running HTTP service on `port` answer
    /// `/healthz` with 200 (`true`) or 503.
    pub fn set_http_healthy(&self, backend: &str, port: u16, healthy: bool) {
        let servers = self.servers.lock().expect("not poisoned");
        let s = servers
            .iter()
            .find(|s| s.backend == backend && s.service == Service::Http(port))
            .unwrap_or_else(|| panic!("{backend} serves no HTTP on {port}"));
        s.ctl.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Connections (TCP) or datagrams (UDP) served by `service` of
    /// `backend`, over all its starts.
    pub fn served(&self, backend: &str, service: Service) -> u64 {
        let running = self.servers.lock().expect("not poisoned");
        let stopped = self.stopped.lock().expect("not poisoned");
        running
            .iter()
            .chain(stopped.iter())
            .filter(|s| s.backend == backend && s.service == service)
            .map(|s| s.served())
            .sum()
    }

    /// Sets sysctl `key` to `value` in every backend's namespace.
    pub fn backend_sysctl(&self, key: &str, value: &str) -> Result<()> {
        for b in &self.backends {
            netns::sysctl(&b.ns, key, value)?;
        }
        Ok(())
    }

    /// Plugs (`true`) or pulls the cable of backend `backend`: its bridge
    /// port goes up or down, so it neither receives nor answers anything,
    /// while its own interface and addresses stay as they are.
    pub fn set_backend_cable(&self, backend: &str, plugged: bool) -> Result<()> {
        let port = format!("p{backend}");
        let state = if plugged { "up" } else { "down" };
        netns::ip(&self.switch_ns, &["link", "set", "dev", &port, state])?;
        Ok(())
    }

    // ------------------------------------------------------------ health

    /// Polls `lbctl --json status` (one poll every [`STATUS_POLL`]) until
    /// `cond` holds, at most `timeout`; the moment the answer that
    /// satisfied it arrived, and that answer.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Json) -> bool,
    ) -> Result<(Instant, Json)> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut polls = 0u32;
        loop {
            let asked = Instant::now();
            let s = self.status();
            let now = Instant::now();
            polls += 1;
            if cond(&s) {
                return Ok((now, s));
            }
            if now > deadline {
                bail!(
                    "{what}: not within {timeout:?} ({polls} polls); last status:\n{}\n{}",
                    health_view(&s),
                    self.log_tail(30)
                );
            }
            thread::sleep(STATUS_POLL.saturating_sub(asked.elapsed()));
        }
    }

    /// Waits until backend `addr` of `vip` reports health `want`; the moment
    /// `lbctl` said so.
    pub fn wait_health(
        &self,
        vip: &str,
        addr: &str,
        want: &str,
        timeout: Duration,
    ) -> Result<Instant> {
        let (at, _) = self.wait_status(&format!("{vip} {addr} {want}"), timeout, |s| {
            health_of(s, vip).get(addr).map(String::as_str) == Some(want)
        })?;
        Ok(at)
    }

    /// Waits until every backend of `vip` is "up".
    pub fn wait_all_up(&self, vip: &str, timeout: Duration) -> Result<Instant> {
        let (at, _) = self.wait_status(&format!("{vip}: all backends up"), timeout, |s| {
            let h = health_of(s, vip);
            !h.is_empty() && h.values().all(|v| v == "up")
        })?;
        Ok(at)
    }

    /// `lbctl --json explain SRC VIP`: the backend address it names (None
    /// when it names none) and its source ("connection table" or "maglev
    /// table").
    pub fn explain(&self, src: SocketAddr, vip: &str) -> (Option<String>, String) {
        let text = self.lbctl_ok(&["--json", "explain", &src.to_string(), vip]);
        let j = Json::parse(&text).unwrap_or_else(|e| panic!("lbctl explain: {e}:\n{text}"));
        let backend = match j.get("backend") {
            Json::Str(s) => Some(s.clone()),
            _ => None,
        };
        (backend, j.get("source").str().to_string())
    }

    // ------------------------------------------------------------ metrics

    /// `GET path` (HTTP/1.0) from lbd's metrics listener, from inside the
    /// lb namespace.
    pub fn metrics_get(&self, path: &str) -> Result<HttpReply> {
        let path = path.to_string();
        in_netns(&self.lb_ns, move || http10_get(METRICS_ADDR, &path))?
    }

    /// The text of `GET /metrics`, which must answer 200.
    pub fn scrape(&self) -> String {
        let r = self
            .metrics_get("/metrics")
            .unwrap_or_else(|e| panic!("scraping {METRICS_ADDR}/metrics: {e:#}"));
        assert_eq!(r.status, 200, "GET /metrics: {r:?}");
        r.body
    }

    // ------------------------------------------------------------ flows

    /// New flows from the client, one after another (a few ms apart),
    /// round robin over `targets`, until stopped: TCP connections that
    /// read the greeting, or UDP sockets that send one datagram and read
    /// the answer. Each flow's local port is known, also when it fails.
    pub fn flows(&self, proto: FlowProto, targets: &[SocketAddr]) -> FlowStream {
        FlowStream::start(&self.client_ns, proto, targets.to_vec())
    }

    // ------------------------------------------------------------ maps

    /// The balancer's connection table, read from its pinned map.
    pub fn conntrack(&self) -> Result<HashMap<FlowKey, ConnEntry>> {
        read_conntrack(&self.pin_dir().join("maps").join("CONNTRACK"))
    }

    /// Interface counters of every lab interface, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        let mut links = vec![
            (self.client_ns.clone(), self.client_if.clone()),
            (self.lb_ns.clone(), self.lb_if.clone()),
            (self.switch_ns.clone(), "plb".to_string()),
        ];
        for b in &self.backends {
            links.push((b.ns.clone(), b.ifname.clone()));
        }
        for (ns, ifname) in links {
            match netns::ip(&ns, &["-s", "-d", "link", "show", "dev", &ifname]) {
                Ok(s) => out += &s,
                Err(e) => out += &format!("{ifname}: {e}\n"),
            }
        }
        if let Ok(n) = netns::ip(&self.lb_ns, &["neigh", "show"]) {
            out += &format!("lb neighbours:\n{n}");
        }
        out += &format!("accepted: {:?}\n", self.accepted());
        out
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
        self.topo = None;
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn mtu(ns: &str, ifname: &str, mtu: u32) -> Result<()> {
    netns::ip(ns, &["link", "set", "dev", ifname, "mtu", &mtu.to_string()])?;
    Ok(())
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

// ---------------------------------------------------------------- clients

/// Connects to `to`, reads the greeting line; the backend's name and the
/// connection's local address. Must run in the client namespace.
pub fn greet(to: SocketAddr) -> Result<(String, SocketAddr), String> {
    let mut s =
        TcpStream::connect_timeout(&to, IO_TIMEOUT).map_err(|e| format!("connect {to}: {e}"))?;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let line = read_line(&mut s).map_err(|e| format!("greeting from {to} (local {local}): {e}"))?;
    Ok((line, local))
}

/// Reads one `\n`-terminated line byte by byte (no buffering past it).
fn read_line(s: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b)? {
            0 => {
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "closed before a full line",
                ))
            }
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
        if line.len() > 1024 {
            return Err(std::io::Error::other("line too long"));
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// What a [`LongLived`] connection did.
#[derive(Clone, Debug)]
pub struct LongLivedReport {
    pub backend: String,
    pub exchanges: u64,
    pub error: Option<String>,
    /// The longest time between two completed exchanges.
    pub max_gap: Duration,
}

/// One TCP connection from the client exchanging a line every interval in
/// a background thread.
pub struct LongLived {
    pub backend: String,
    pub local: SocketAddr,
    pub to: SocketAddr,
    stop: Arc<AtomicBool>,
    exchanges: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<LongLivedReport>>>,
}

impl LongLived {
    pub fn start(client_ns: &str, to: SocketAddr, every: Duration) -> Result<LongLived> {
        let stop = Arc::new(AtomicBool::new(false));
        let exchanges = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        let (stop2, ex2) = (stop.clone(), exchanges.clone());
        let handle = spawn_in_netns(client_ns, move || -> LongLivedReport {
            let mut s = match TcpStream::connect_timeout(&to, IO_TIMEOUT) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(format!("connect {to}: {e}")));
                    return LongLivedReport {
                        backend: String::new(),
                        exchanges: 0,
                        error: Some(e.to_string()),
                        max_gap: Duration::ZERO,
                    };
                }
            };
            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
            let _ = s.set_nodelay(true);
            let local = s.local_addr().expect("local address");
            let backend = match read_line(&mut s) {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(format!("greeting: {e}")));
                    return LongLivedReport {
                        backend: String::new(),
                        exchanges: 0,
                        error: Some(e.to_string()),
                        max_gap: Duration::ZERO,
                    };
                }
            };
            let _ = tx.send(Ok((backend.clone(), local)));
            let mut report = LongLivedReport {
                backend,
                exchanges: 0,
                error: None,
                max_gap: Duration::ZERO,
            };
            let mut last = Instant::now();
            let mut i = 0u64;
            let give_up = Instant::now() + MAX_BACKGROUND;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < give_up {
                thread::sleep(every);
                i += 1;
                let msg = format!("ping {i}");
                let result = s
                    .write_all(format!("{msg}\n").as_bytes())
                    .and_then(|_| read_line(&mut s));
                match result {
                    Ok(echo) if echo == msg => {
                        report.exchanges += 1;
                        ex2.fetch_add(1, Ordering::Relaxed);
                        report.max_gap = report.max_gap.max(last.elapsed());
                        last = Instant::now();
                    }
                    Ok(other) => {
                        report.error = Some(format!("exchange {i}: sent {msg:?}, got {other:?}"));
                        break;
                    }
                    Err(e) => {
                        report.error = Some(format!(
                            "exchange {i} after {} good ones: {e}",
                            report.exchanges
                        ));
                        break;
                    }
                }
            }
            report
        });
        match rx.recv_timeout(IO_TIMEOUT * 2) {
            Ok(Ok((backend, local))) => Ok(LongLived {
                backend,
                local,
                to,
                stop,
                exchanges,
                handle: Some(handle),
            }),
            Ok(Err(e)) => {
                let _ = handle.join();
                bail!("long-lived connection to {to}: {e}")
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                bail!("long-lived connection to {to}: no greeting")
            }
        }
    }

    /// Exchanges so far.
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }

    /// Whether the thread ended (on an error: it only ends when stopped).
    pub fn broken(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished()) && !self.stop.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) -> LongLivedReport {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take().expect("joined once");
        match h.join() {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => LongLivedReport {
                backend: self.backend.clone(),
                exchanges: 0,
                error: Some(format!("{e:#}")),
                max_gap: Duration::ZERO,
            },
            Err(_) => LongLivedReport {
                backend: self.backend.clone(),
                exchanges: 0,
                error: Some("thread panicked".into()),
                max_gap: Duration::ZERO,
            },
        }
    }
}

impl Drop for LongLived {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One connection of a [`ConnStream`].
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Since the stream started.
    pub at: Duration,
    pub to: SocketAddr,
    /// The local address, when the connection was made.
    pub local: Option<SocketAddr>,
    /// The backend's name, or why it failed.
    pub result: Result<String, String>,
}

#[derive(Clone, Debug, Default)]
pub struct StreamReport {
    pub attempts: Vec<Attempt>,
}

impl StreamReport {
    pub fn ok(&self) -> usize {
        self.attempts.iter().filter(|a| a.result.is_ok()).count()
    }

    pub fn failures(&self) -> Vec<&Attempt> {
        self.attempts.iter().filter(|a| a.result.is_err()).collect()
    }

    /// Connection-table keys of the connections made.
    pub fn flows(&self) -> BTreeSet<FlowKeyOrd> {
        self.attempts
            .iter()
            .filter_map(|a| a.local.map(|l| FlowKeyOrd(flow_key(l, a.to))))
            .collect()
    }
}

/// A [`FlowKey`] with an order, for sets that print in a stable order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKeyOrd(pub FlowKey);

impl FlowKeyOrd {
    fn tuple(&self) -> (IpAddr, u16, IpAddr, u16) {
        let k = &self.0;
        (
            k.src_ip(),
            u16::from_be(k.sport),
            k.dst_ip(),
            u16::from_be(k.dport),
        )
    }
}

impl PartialOrd for FlowKeyOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FlowKeyOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.tuple(), self.0.proto).cmp(&(other.tuple(), other.0.proto))
    }
}

impl std::fmt::Display for FlowKeyOrd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, sp, d, dp) = self.tuple();
        write!(f, "{s}:{sp}->{d}:{dp}/{}", self.0.proto)
    }
}

/// The client doing one thing after another, a few ms apart, in a
/// background thread until stopped: what [`ConnStream`] and [`FlowStream`]
/// share.
struct ClientLoop<T> {
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<Vec<T>>>>,
    /// The panic message if the thread panicked.
    panicked: &'static str,
}

impl<T: Send + 'static> ClientLoop<T> {
    /// Runs `step(target, n, started)` in `client_ns` on each of `targets`
    /// in turn (`n` counts the steps from 1, `started` is when the thread
    /// started), for at most `MAX_BACKGROUND` or 100 000 steps.
    fn start(
        client_ns: &str,
        panicked: &'static str,
        targets: Vec<SocketAddr>,
        mut step: impl FnMut(SocketAddr, usize, Instant) -> T + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicU64::new(0));
        let (stop2, made2) = (stop.clone(), made.clone());
        let handle = spawn_in_netns(client_ns, move || {
            let started = Instant::now();
            let give_up = started + MAX_BACKGROUND;
            let mut done = Vec::new();
            let mut i = 0usize;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < give_up && i < 100_000 {
                let to = targets[i % targets.len()];
                i += 1;
                done.push(step(to, i, started));
                made2.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(5));
            }
            done
        });
        ClientLoop {
            stop,
            made,
            handle: Some(handle),
            panicked,
        }
    }

    fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    fn stop(mut self) -> Vec<T> {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take().expect("joined once");
        h.join()
            .expect(self.panicked)
            .expect("entering the client namespace")
    }
}

impl<T> Drop for ClientLoop<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// New connections from the client, back to back (a few ms apart), in a
/// background thread until stopped.
pub struct ConnStream(ClientLoop<Attempt>);

impl ConnStream {
    fn start(client_ns: &str, targets: Vec<SocketAddr>) -> ConnStream {
        let greet_one = |to, _, started: Instant| {
            let at = started.elapsed();
            match greet(to) {
                Ok((name, local)) => Attempt {
                    at,
                    to,
                    local: Some(local),
                    result: Ok(name),
                },
                Err(e) => Attempt {
                    at,
                    to,
                    local: None,
                    result: Err(e),
                },
            }
        };
        ConnStream(ClientLoop::start(
            client_ns,
            "stream thread panicked",
            targets,
            greet_one,
        ))
    }

    /// Connections attempted so far.
    pub fn made(&self) -> u64 {
        self.0.made()
    }

    pub fn stop(self) -> StreamReport {
        StreamReport {
            attempts: self.0.stop(),
        }
    }
}

// ---------------------------------------------------------------- flows

/// What a [`FlowStream`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowProto {
    Tcp,
    Udp,
}

/// How long a UDP flow waits for its answer.
pub const UDP_REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// One flow of a [`FlowStream`].
#[derive(Clone, Debug)]
pub struct Flow {
    pub started: Instant,
    pub ended: Instant,
    pub to: SocketAddr,
    /// The client's address and port (known also when the flow failed,
    /// unless the socket could not even be made).
    pub local: Option<SocketAddr>,
    /// The answering backend's name, or why there was none.
    pub result: Result<String, String>,
}

/// New flows from the client in a background thread, until stopped.
pub struct FlowStream(ClientLoop<Flow>);

impl FlowStream {
    fn start(client_ns: &str, proto: FlowProto, targets: Vec<SocketAddr>) -> FlowStream {
        assert!(!targets.is_empty(), "a flow stream needs a target");
        let one_flow = move |to, i, _| {
            let started = Instant::now();
            let (local, result) = match proto {
                FlowProto::Tcp => tcp_flow(to),
                FlowProto::Udp => udp_flow(to, i),
            };
            Flow {
                started,
                ended: Instant::now(),
                to,
                local,
                result,
            }
        };
        FlowStream(ClientLoop::start(
            client_ns,
            "flow thread panicked",
            targets,
            one_flow,
        ))
    }

    /// Flows attempted so far.
    pub fn made(&self) -> u64 {
        self.0.made()
    }

    pub fn stop(self) -> Vec<Flow> {
        self.0.stop()
    }
}

/// The client ports of flows: below the kernel's ephemeral range
/// (32768..), so they never clash with ports it picks, and handed out in
/// turn, so each flow of the process has a port of its own (until 22000
/// flows later): its connection-table entry is its own, not one a reused
/// port overwrote.
const FLOW_PORTS: std::ops::Range<u32> = 10_000..32_000;
static NEXT_FLOW_PORT: AtomicU32 = AtomicU32::new(0);

fn next_flow_port() -> u16 {
    let n = NEXT_FLOW_PORT.fetch_add(1, Ordering::Relaxed) % FLOW_PORTS.len() as u32;
    (FLOW_PORTS.start + n) as u16
}

fn unspecified(like: SocketAddr, port: u16) -> SocketAddr {
    match like {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, port).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, port).into(),
    }
}

/// A TCP connection to `to` that reads the greeting.
fn tcp_flow(to: SocketAddr) -> (Option<SocketAddr>, Result<String, String>) {
    let from = unspecified(to, next_flow_port());
    let (local, conn) = tcp_connect(Some(from), to, IO_TIMEOUT);
    let result = conn
        .map_err(|e| format!("connect {to}: {e}"))
        .and_then(|mut s| {
            s.set_read_timeout(Some(IO_TIMEOUT))
                .map_err(|e| e.to_string())?;
            read_line(&mut s).map_err(|e| format!("greeting from {to}: {e}"))
        });
    (local, result)
}

/// One datagram to `to` from a new socket, and its answer.
fn udp_flow(to: SocketAddr, i: usize) -> (Option<SocketAddr>, Result<String, String>) {
    let bind = unspecified(to, next_flow_port());
    let s = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return (None, Err(format!("bind: {e}"))),
    };
    // Connected, the socket has the source address its datagrams carry.
    if let Err(e) = s.connect(to) {
        return (None, Err(format!("connect: {e}")));
    }
    let local = s.local_addr().ok();
    let result = (|| {
        s.send(format!("flow {i}\n").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        s.set_read_timeout(Some(UDP_REPLY_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 256];
        let n = s
            .recv(&mut buf)
            .map_err(|e| format!("answer from {to}: {e}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
    })();
    (local, result)
}

/// `sockaddr_in`/`sockaddr_in6` for `a`.
fn to_sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::from((
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::from((
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
            )))
        }
        _ => None,
    }
}

/// A TCP connection to `to` within `timeout`, from `from` if given (with
/// `SO_REUSEADDR`), and its local address, which (unlike with
/// `TcpStream::connect_timeout`) is known also when the connection fails.
pub fn tcp_connect(
    from: Option<SocketAddr>,
    to: SocketAddr,
    timeout: Duration,
) -> (Option<SocketAddr>, std::io::Result<TcpStream>) {
    let last = std::io::Error::last_os_error;
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: a plain syscall; the descriptor is owned from here on.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return (None, Err(last()));
    }
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(from) = from {
        let one: libc::c_int = 1;
        let (sa, len) = to_sockaddr(from);
        // SAFETY: an int option of its size; a sockaddr of `len` bytes.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len)
        };
        if r != 0 {
            return (None, Err(last()));
        }
    }
    let (sa, len) = to_sockaddr(to);
    // SAFETY: a sockaddr of `len` bytes.
    let r = unsafe { libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len) };
    let connect_err = (r != 0).then(last);
    let local = {
        // SAFETY: getsockname into a sockaddr_storage of the size given.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut l = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let r = unsafe { libc::getsockname(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut l) };
        if r == 0 {
            from_sockaddr(&ss).filter(|a| a.port() != 0)
        } else {
            None
        }
    };
    if let Some(e) = connect_err {
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return (local, Err(e));
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        if n == 0 {
            return (
                local,
                Err(std::io::Error::new(
                    ErrorKind::TimedOut,
                    "connect timed out",
                )),
            );
        }
        if n < 0 {
            return (local, Err(last()));
        }
        let mut err: libc::c_int = 0;
        let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_ERROR into an int of the size given.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut _ as *mut libc::c_void,
                &mut l,
            )
        };
        if r != 0 {
            return (local, Err(last()));
        }
        if err != 0 {
            return (local, Err(std::io::Error::from_raw_os_error(err)));
        }
    }
    let stream = TcpStream::from(sock);
    if let Err(e) = stream.set_nonblocking(false) {
        return (local, Err(e));
    }
    (local, Ok(stream))
}

// ---------------------------------------------------------------- HTTP

/// Where lbd serves metrics in the lb namespace (the lab's config).
pub const METRICS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9469);

/// A parsed HTTP response.
#[derive(Clone, Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path HTTP/1.0` to `to`; the whole response (the server closes
/// the connection after it). Must run in the right namespace.
pub fn http10_get(to: SocketAddr, path: &str) -> Result<HttpReply> {
    let mut s =
        TcpStream::connect_timeout(&to, IO_TIMEOUT).with_context(|| format!("connect {to}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {to}\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to GET {path}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            anyhow::anyhow!("no end of the header: {:?}", String::from_utf8_lossy(&raw))
        })?;
    let head = std::str::from_utf8(&raw[..split]).context("header not UTF-8")?;
    let body = String::from_utf8(raw[split + 4..].to_vec()).context("body not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for l in lines {
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("bad header line {l:?}"))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let reply = HttpReply {
        status,
        headers,
        body,
    };
    if let Some(te) = reply.header("transfer-encoding") {
        bail!("unexpected transfer-encoding {te} in an HTTP/1.0 answer");
    }
    if let Some(cl) = reply.header("content-length") {
        let cl: usize = cl.parse().context("content-length")?;
        anyhow::ensure!(
            cl == reply.body.len(),
            "content-length {cl}, body {} bytes",
            reply.body.len()
        );
    }
    Ok(reply)
}

// ---------------------------------------------------------------- servers

/// What a backend serves. Each service of each backend can be stopped and
/// started on its own ([`Lab::stop_service`], [`Lab::start_service`]); a
/// lab starts every backend with `Greeter(80)` and `Greeter(8080)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// TCP on `[::]:port` (dual stack): greets every connection with the
    /// backend's name and a newline, then echoes lines until the peer
    /// closes.
    Greeter(u16),
    /// HTTP/1.x on `[::]:port`, one request per connection: `GET /healthz`
    /// answers 200 (503 while [`Lab::set_http_healthy`] says unhealthy),
    /// anything else 404.
    Http(u16),
    /// UDP on `port` of each of the backend's addresses (its own and the
    /// VIPs on `lo`, so that a reply leaves from the address the datagram
    /// went to): answers every datagram with the backend's name and a
    /// newline.
    Udp(u16),
}

impl Service {
    pub fn port(self) -> u16 {
        match self {
            Service::Greeter(p) | Service::Http(p) | Service::Udp(p) => p,
        }
    }
}

/// An eventfd that wakes a server's `poll` at once when it is told to stop.
struct Waker(OwnedFd);

impl Waker {
    fn new() -> std::io::Result<Waker> {
        // SAFETY: a plain syscall; the descriptor is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Waker(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn wake(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a local to an eventfd we own.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// Waits (at most `timeout_ms`) until one of `fds` is readable or the
/// waker fires; which of `fds` are readable.
fn poll_readable(fds: &[RawFd], waker: &Waker, timeout_ms: i32) -> Vec<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .copied()
        .chain([waker.0.as_raw_fd()])
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: pollfds we own, their count.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    pfds[..fds.len()]
        .iter()
        .map(|p| p.revents & libc::POLLIN != 0)
        .collect()
}

/// What a server's thread and its controller share.
struct ServerCtl {
    stop: AtomicBool,
    waker: Waker,
    /// Connections accepted (TCP) or datagrams answered (UDP).
    served: AtomicU64,
    /// HTTP: `/healthz` answers 200 (else 503).
    healthy: AtomicBool,
    /// When the thread closed its socket(s).
    closed_at: Mutex<Option<Instant>>,
}

impl ServerCtl {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn mark_closed(&self) {
        *self.closed_at.lock().expect("not poisoned") = Some(Instant::now());
    }
}

/// A running [`Service`] of one backend: a thread owns its socket(s).
struct Server {
    backend: String,
    service: Service,
    ctl: Arc<ServerCtl>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds the service's socket(s) in the backend's namespace and starts
    /// serving; it accepts connections once this returns.
    fn start(host: &BackendHost, service: Service) -> Result<Server> {
        let ctl = Arc::new(ServerCtl {
            stop: AtomicBool::new(false),
            waker: Waker::new().context("eventfd")?,
            served: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            closed_at: Mutex::new(None),
        });
        let greeting = format!("{}\n", host.name);
        let ns = host.ns.as_str();
        let ctl2 = ctl.clone();
        let thread = match service {
            Service::Greeter(port) | Service::Http(port) => {
                let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
                let listener = in_netns(ns, || TcpListener::bind(addr))?
                    .with_context(|| format!("listening on {addr} in {ns}"))?;
                listener.set_nonblocking(true)?;
                if matches!(service, Service::Greeter(_)) {
                    thread::spawn(move || accept_loop(listener, ctl2, greeting))
                } else {
                    thread::spawn(move || http_loop(listener, ctl2))
                }
            }
            Service::Udp(port) => {
                let addrs: [IpAddr; 6] = [
                    host.v4.into(),
                    host.v6.into(),
                    VIP_WEB.into(),
                    VIP_ANY.into(),
                    VIP_EXTRA.into(),
                    VIP_WEB6.into(),
                ];
                let socks = in_netns(ns, || {
                    addrs
                        .iter()
                        .map(|a| UdpSocket::bind((*a, port)))
                        .collect::<std::io::Result<Vec<_>>>()
                })?
                .with_context(|| format!("binding UDP port {port} in {ns}"))?;
                for s in &socks {
                    s.set_nonblocking(true)?;
                }
                thread::spawn(move || udp_loop(socks, ctl2, greeting))
            }
        };
        Ok(Server {
            backend: host.name.clone(),
            service,
            ctl,
            thread: Some(thread),
        })
    }

    fn stop_flag(&self) {
        self.ctl.stop.store(true, Ordering::Relaxed);
        self.ctl.waker.wake();
    }

    /// Stops serving; returns once the socket(s) are closed (new
    /// connections are refused, datagrams answered "port unreachable"),
    /// with the moment they were.
    fn stop(&self) -> Instant {
        self.stop_flag();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(at) = *self.ctl.closed_at.lock().expect("not poisoned") {
                return at;
            }
            assert!(
                Instant::now() < deadline,
                "{} {:?} did not stop within 5 s",
                self.backend,
                self.service
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn served(&self) -> u64 {
        self.ctl.served.load(Ordering::Relaxed)
    }

    fn join(mut self) {
        self.stop_flag();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts connections on `listener` until the server is stopped, counting
/// each and handing it to `handle`; then closes the listener and marks the
/// server closed.
fn accept_until_stopped(listener: TcpListener, ctl: &ServerCtl, mut handle: impl FnMut(TcpStream)) {
    let give_up = Instant::now() + MAX_BACKGROUND;
    while !ctl.stopped() && Instant::now() < give_up {
        poll_readable(&[listener.as_raw_fd()], &ctl.waker, 100);
        if ctl.stopped() {
            break;
        }
        match listener.accept() {
            Ok((s, _)) => {
                ctl.served.fetch_add(1, Ordering::Relaxed);
                handle(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
    drop(listener);
    ctl.mark_closed();
}

fn accept_loop(listener: TcpListener, ctl: Arc<ServerCtl>, greeting: String) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    accept_until_stopped(listener, &ctl, |s| {
        let (ctl, greeting) = (ctl.clone(), greeting.clone());
        handlers.retain(|h| !h.is_finished());
        handlers.push(thread::spawn(move || serve(s, ctl, greeting)));
    });
    for h in handlers {
        let _ = h.join();
    }
}

fn serve(mut s: TcpStream, ctl: Arc<ServerCtl>, greeting: String) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_nodelay(true);
    if s.write_all(greeting.as_bytes()).is_err() {
        return;
    }
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let Ok(read_half) = s.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    let give_up = Instant::now() + MAX_BACKGROUND;
    while !ctl.stopped() && Instant::now() < give_up {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with('\n') => {
                if s.write_all(line.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Serves one HTTP request per connection, in the accepting thread (health
/// checks are few and send their request at once).
fn http_loop(listener: TcpListener, ctl: Arc<ServerCtl>) {
    accept_until_stopped(listener, &ctl, |s| http_answer(s, &ctl));
}

fn http_answer(mut s: TcpStream, ctl: &ServerCtl) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.lines().next().unwrap_or("").split(' ');
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (code, reason) = match (method, path) {
        ("GET", "/healthz") if ctl.healthy.load(Ordering::Relaxed) => (200, "OK"),
        ("GET", "/healthz") => (503, "Service Unavailable"),
        _ => (404, "Not Found"),
    };
    let body = format!("{code}\n");
    let reply = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(reply.as_bytes());
}

fn udp_loop(socks: Vec<UdpSocket>, ctl: Arc<ServerCtl>, reply: String) {
    let fds: Vec<RawFd> = socks.iter().map(|s| s.as_raw_fd()).collect();
    let give_up = Instant::now() + MAX_BACKGROUND;
    let mut buf = [0u8; 2048];
    while !ctl.stopped() && Instant::now() < give_up {
        let ready = poll_readable(&fds, &ctl.waker, 100);
        if ctl.stopped() {
            break;
        }
        for (s, _) in socks.iter().zip(ready).filter(|(_, r)| *r) {
            // Bounded: a burst is at most what the socket buffer holds.
            for _ in 0..10_000 {
                match s.recv_from(&mut buf) {
                    Ok((_, from)) => {
                        if s.send_to(reply.as_bytes(), from).is_ok() {
                            ctl.served.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }
    drop(socks);
    ctl.mark_closed();
}

// ---------------------------------------------------------------- status views

/// The VIP/backend sets of a status document, one line per VIP and
/// backend, sorted: VIP identity, name, scheduler, forwarding, stateless;
/// backend address, weight, drained.
pub fn config_view(status: &Json) -> String {
    let mut lines = Vec::new();
    for v in status.get("vips").arr() {
        let vip = v.get("vip").str().to_string();
        lines.push(format!(
            "vip {vip} name={} scheduler={} forwarding={} stateless={:?}",
            v.get("name").str(),
            v.get("scheduler").str(),
            v.get("forwarding").str(),
            v.get("stateless").as_bool()
        ));
        for b in v.get("backends").arr() {
            lines.push(format!(
                "  backend {vip} {} weight={:?} drained={:?}",
                b.get("addr").str(),
                b.get("weight").as_f64(),
                b.get("drained").as_bool()
            ));
        }
    }
    lines.join("\n")
}

/// The backends of one VIP in a status document: address → (weight, drained).
pub fn backends_of(status: &Json, vip: &str) -> BTreeMap<String, (u64, bool)> {
    let v = status
        .get("vips")
        .arr()
        .iter()
        .find(|v| v.get("vip").str() == vip || v.get("name").str() == vip)
        .unwrap_or_else(|| panic!("no VIP {vip} in status"));
    v.get("backends")
        .arr()
        .iter()
        .map(|b| {
            (
                b.get("addr").str().to_string(),
                (
                    b.get("weight").as_f64().unwrap_or(-1.0) as u64,
                    b.get("drained").as_bool().unwrap_or(false),
                ),
            )
        })
        .collect()
}

/// A VIP of a status document, by identity or name.
pub fn vip_of<'a>(status: &'a Json, vip: &str) -> &'a Json {
    status
        .get("vips")
        .arr()
        .iter()
        .find(|v| v.get("vip").str() == vip || v.get("name").str() == vip)
        .unwrap_or_else(|| panic!("no VIP {vip} in status"))
}

/// The health of each backend of `vip`: address → "up", "down" or
/// "unchecked".
pub fn health_of(status: &Json, vip: &str) -> BTreeMap<String, String> {
    vip_of(status, vip)
        .get("backends")
        .arr()
        .iter()
        .map(|b| {
            (
                b.get("addr").str().to_string(),
                b.get("health").str().to_string(),
            )
        })
        .collect()
}

/// Whether `vip` fails open.
pub fn fail_open_of(status: &Json, vip: &str) -> bool {
    vip_of(status, vip).get("fail_open").as_bool() == Some(true)
}

/// One line per VIP with its backends' health, for messages.
pub fn health_view(status: &Json) -> String {
    status
        .get("vips")
        .arr()
        .iter()
        .map(|v| {
            let vip = v.get("vip").str();
            format!(
                "{vip} fail_open={:?} {:?}",
                v.get("fail_open").as_bool(),
                health_of(status, vip)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------- JSON

/// A JSON value (this crate has no serde_json): enough to read lbctl's
/// output.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

static NULL: Json = Json::Null;

impl Json {
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = JsonParser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value(0)?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing data at byte {}", p.i));
        }
        Ok(v)
    }

    /// The member `key` of an object; `Null` if absent or not an object.
    pub fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map_or(&NULL, |(_, v)| v),
            _ => &NULL,
        }
    }

    pub fn has(&self, key: &str) -> bool {
        matches!(self, Json::Obj(m) if m.iter().any(|(k, _)| k == key))
    }

    pub fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            _ => &[],
        }
    }

    /// The string, or "" for anything else.
    pub fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            _ => "",
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("JSON: {what} at byte {}", self.i))
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > 64 {
            return self.err("nested too deep");
        }
        self.ws();
        let Some(&c) = self.s.get(self.i) else {
            return self.err("unexpected end");
        };
        match c {
            b'{' => {
                self.i += 1;
                let mut m = Vec::new();
                self.ws();
                if self.eat("}") {
                    return Ok(Json::Obj(m));
                }
                loop {
                    self.ws();
                    let Json::Str(k) = self.string()? else {
                        unreachable!()
                    };
                    self.ws();
                    if !self.eat(":") {
                        return self.err("expected ':'");
                    }
                    let v = self.value(depth + 1)?;
                    m.push((k, v));
                    self.ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("}") {
                        return Ok(Json::Obj(m));
                    }
                    return self.err("expected ',' or '}'");
                }
            }
            b'[' => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.eat("]") {
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value(depth + 1)?);
                    self.ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("]") {
                        return Ok(Json::Arr(a));
                    }
                    return self.err("expected ',' or ']'");
                }
            }
            b'"' => self.string(),
            b't' if self.eat("true") => Ok(Json::Bool(true)),
            b'f' if self.eat("false") => Ok(Json::Bool(false)),
            b'n' if self.eat("null") => Ok(Json::Null),
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).expect("ASCII");
                text.parse()
                    .map(Json::Num)
                    .or_else(|_| self.err("bad number"))
            }
            _ => self.err("unexpected character"),
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .ok_or("JSON: short \\u escape")?;
        let v = u32::from_str_radix(std::str::from_utf8(h).map_err(|e| e.to_string())?, 16)
            .map_err(|e| format!("JSON: \\u escape: {e}"))?;
        self.i += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<Json, String> {
        if !self.eat("\"") {
            return self.err("expected a string");
        }
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return self.err("unterminated string");
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return self.err("unterminated escape");
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut v = self.hex4()?;
                            if (0xd800..0xdc00).contains(&v) && self.eat("\\u") {
                                let lo = self.hex4()?;
                                v = 0x10000
                                    + ((v - 0xd800) << 10)
                                    + (lo.wrapping_sub(0xdc00) & 0x3ff);
                            }
                            char::from_u32(v).unwrap_or('\u{fffd}')
                        }
                        _ => return self.err("bad escape"),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(c),
            }
        }
        String::from_utf8(out)
            .map(Json::Str)
            .map_err(|e| format!("JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_parses_what_lbctl_prints() {
        let v = Json::parse(
            r#"{ "a": [1, -2.5e3, true, false, null], "s": "x\"\\\u00e9\ud83d\ude00", "o": {} }"#,
        )
        .unwrap();
        assert_eq!(v.get("a").arr().len(), 5);
        assert_eq!(v.get("a").arr()[1].as_f64(), Some(-2500.0));
        assert_eq!(v.get("s").str(), "x\"\\é😀");
        assert_eq!(v.get("o"), &Json::Obj(vec![]));
        assert_eq!(v.get("missing"), &Json::Null);
        assert!(Json::parse("{").is_err());
        assert!(Json::parse("[1,]").is_err());
        assert!(Json::parse("1 2").is_err());
    }

    #[test]
    fn health_tables_and_bounds() {
        let h = HealthCheck::new(
            "http",
            Duration::from_millis(300),
            Duration::from_millis(200),
            2,
            3,
        )
        .port(8081)
        .path("/healthz");
        assert_eq!(
            h.toml(),
            "[vip.health]\nkind = \"http\"\nport = 8081\npath = \"/healthz\"\n\
             interval = \"300ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 3\n"
        );
        assert_eq!(h.down_bound(), Duration::from_millis(3 * 300 + 200 + 300));
        assert_eq!(h.up_bound(), Duration::from_millis(2 * 300 + 300));
        let v = VipSpec::new("dns", VIP_EXTRA, Some(53), &[]).udp();
        assert_eq!(v.id(), "10.100.0.3:53/udp");
        assert_eq!(vip_id(VIP_WEB6.into(), None), "[fd10:100::1]/tcp");
    }

    #[test]
    fn tags_name_their_process() {
        let t = new_tag();
        assert!(
            t.len() + 4 <= 15,
            "{t}: room for a role suffix in an interface name"
        );
        assert_eq!(tag_pid(&format!("{t}lb")), Some(std::process::id()));
        assert_eq!(tag_pid("eth0"), None);
    }
}
