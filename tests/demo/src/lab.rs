//! The demo's world: namespaces on a switch (a `SwitchedLab`, the tests' and
//! the bench's lab too), the XDP programs, lbd, the backends' web servers,
//! and the cleanup that removes all of it.
//!
//! ```text
//!                         switch ns: bridge dm-br (MTU 1600)
//!     ┌──────────────┬───────────────┬──────────────┬──────────────┐
//!  dm-sw-client    dm-sw-lb         dm-sw-b1       dm-sw-b2       dm-sw-b3
//!     │            [XDP pass]        │              │              │
//!  client ns       lb ns            b1 ns          b2 ns          b3 ns
//!  dm-client       dm-lb            dm-b1          dm-b2          dm-b3
//!  198.18.0.2      198.18.0.1       198.18.0.11    198.18.0.12    198.18.0.13
//!  (MTU 1500)      lbd run          lbd decap, VIP on lo, HTTP server on :80
//! ```
//!
//! The client routes the VIP to the balancer. lbd's XDP program on `dm-lb`
//! encapsulates each packet for a VIP (IPIP, outer source 198.18.0.1) and
//! sends it back out of the same interface (`XDP_TX`) to the backend's MAC;
//! the backend's decap program unwraps it and the backend answers the
//! client directly (direct server return).
//!
//! Interface names are fixed and start with `dm-`: the programs pinned on
//! bpffs are named after them (`/sys/fs/bpf/lb/netns-<cookie>/dm-lb`,
//! `/sys/fs/bpf/lb-decap/netns-<cookie>/dm-b1`, ...), and fixed names let a
//! demo remove what an earlier one left when it was killed outright. Only
//! one demo runs at a time.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb::api::types::{BackendStatus, Status};
use lb_lab::{
    netns::NS_PREFIX,
    process::{nsenter, pins_named},
    switched::{SwitchedLab, SwitchedSpec},
};

use crate::{check_interrupt, http::Server};

pub const LB_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The VIP: an address of the benchmarking range, like the segment.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP_PORT: u16 = 80;
/// The VIP as lbctl names it.
pub const VIP_ID: &str = "198.18.100.1:80/tcp";
/// An address nobody has: the pass-through program "decapsulates" for it,
/// so it passes everything else unchanged.
pub const UNUSED_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 254);
pub const METRICS_ADDR: &str = "127.0.0.1:9469";
pub const BACKENDS: usize = 3;

pub const IF_LB: &str = "dm-lb";
pub const IF_CLIENT: &str = "dm-client";
pub const BRIDGE: &str = "dm-br";
/// Namespace names are `lbt-<pid>-<n>-demo-<role>` (see `netns::Topology`).
const NS_TAG: &str = "-demo-";
/// MTU of everything on the balancer's path: room for the 20-byte outer
/// header in front of a 1500-byte packet. The client stays at 1500.
const MTU: u32 = 1600;
/// The start of every bridge port's name, which ends with the host's role.
const PORT_PREFIX: &str = "dm-sw-";

const BPFFS: &str = "/sys/fs/bpf";
const RUN_DIR: &str = "/run/lb";
/// How long lbd may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one lbd/lbctl/nsenter command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

fn backend_if(i: usize) -> String {
    format!("dm-b{}", i + 1)
}
/// The bridge port (in the switch namespace) of a host's interface.
fn port_of(ifname: &str) -> String {
    format!("{PORT_PREFIX}{}", ifname.trim_start_matches("dm-"))
}
/// Every interface the demo may pin a program on.
fn pinnable_interfaces() -> Vec<String> {
    let mut v = vec![IF_LB.to_string(), port_of(IF_LB)];
    v.extend((0..BACKENDS).map(backend_if));
    v
}

pub fn vip_socket() -> SocketAddr {
    SocketAddr::from((VIP, VIP_PORT))
}

// ---------------------------------------------------------------- commands

/// `target/<profile>/<name>`, next to the demo's own executable.
pub fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the demo's executable")?;
    let path = exe
        .parent()
        .map(|d| d.join(name))
        .context("the demo's executable has no directory")?;
    if !path.is_file() {
        bail!(
            "{} not found: build it first with `cargo xtask build` (or run `cargo xtask demo`, \
             which builds everything)",
            path.display()
        );
    }
    Ok(path)
}

/// A finished command's exit status and output.
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stderr, else stdout, trimmed: what to show when it failed.
    pub fn message(&self) -> String {
        let s = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        s.trim().to_string()
    }
}

/// Runs `cmd` to its end within `timeout` (killed after that), in a
/// process group of its own so that a Ctrl-C on the terminal reaches only
/// the demo, which then cleans up in order.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let out = lb_lab::process::run_bounded(cmd.process_group(0), timeout)?;
    Ok(Output {
        ok: out.ok(),
        stdout: out.stdout,
        stderr: out.stderr,
    })
}

/// Runs `cmd`; its stdout, or an error naming the command and its message.
fn run_ok(cmd: &mut Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = run_bounded(cmd, COMMAND_TIMEOUT)?;
    if !out.ok {
        bail!("{what} failed: {}", out.message());
    }
    Ok(out.stdout)
}

// ---------------------------------------------------------------- the lab

pub struct Backend {
    pub name: String,
    pub addr: Ipv4Addr,
    pub ns: String,
    pub ifname: String,
    server: Option<Server>,
}

/// Everything the demo made; [`Lab::cleanup`] (also run on drop) removes it.
pub struct Lab {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    pub log_path: PathBuf,
    pub switch_ns: String,
    pub client_ns: String,
    pub lb_ns: String,
    pub backends: Vec<Backend>,
    lbd_bin: PathBuf,
    lbctl_bin: PathBuf,
    lbd: Option<Child>,
    /// (namespace, interface) of every program attached and pinned, in order.
    pinned: Vec<(String, String)>,
    net: Option<SwitchedLab>,
    /// bpffs and run directories that did not exist before the demo (removed
    /// at the end if they are empty then).
    created_dirs: Vec<PathBuf>,
    cleaned: bool,
}

impl Lab {
    /// Checks the machine; makes nothing yet.
    pub fn new() -> Result<Lab> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("the demo needs root: it creates network namespaces and loads XDP programs");
        }
        let lbd_bin = bin("lbd")?;
        let lbctl_bin = bin("lbctl")?;
        for tool in ["ip", "nsenter"] {
            run_bounded(Command::new(tool).arg("-V"), COMMAND_TIMEOUT)
                .with_context(|| format!("`{tool}` is needed (iproute2, util-linux)"))?;
        }
        let dir = std::env::temp_dir().join(format!("lb-demo-{}", std::process::id()));
        let created_dirs = [
            Path::new(BPFFS).join("lb"),
            Path::new(BPFFS).join("lb-decap"),
            PathBuf::from(RUN_DIR),
        ]
        .into_iter()
        .filter(|d| !d.exists())
        .collect();
        Ok(Lab {
            config_path: dir.join("lb.toml"),
            socket: dir.join("lbd.sock"),
            log_path: dir.join("lbd.log"),
            dir,
            switch_ns: String::new(),
            client_ns: String::new(),
            lb_ns: String::new(),
            backends: Vec::new(),
            lbd_bin,
            lbctl_bin,
            lbd: None,
            pinned: Vec::new(),
            net: None,
            created_dirs,
            cleaned: false,
        })
    }

    pub fn backend_names(&self) -> Vec<String> {
        self.backends.iter().map(|b| b.name.clone()).collect()
    }

    pub fn backend(&self, name: &str) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .expect("a backend of the demo")
    }

    /// Refuses to run next to another demo; removes what a demo killed
    /// outright left: pinned programs, lock files and its temporary
    /// directory (its namespaces are swept by `Topology::new`).
    pub fn check_leftovers(&self) -> Result<()> {
        let me = std::process::id();
        let list = run_ok(Command::new("ip").args(["netns", "list"]))?;
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let pid = name
                .strip_prefix(NS_PREFIX)
                .filter(|_| name.contains(NS_TAG))
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid.filter(|p| *p != me && is_demo(*p)) {
                bail!("another demo is running (pid {pid}, namespace {name}): wait for it to end");
            }
        }
        let mut removed = Vec::new();
        // The namespaces of a demo killed outright are gone, so its links
        // are severed: removing the pins is all that is left to do.
        for ifname in pinnable_interfaces() {
            for p in pins_named(&ifname) {
                fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
                removed.push(format!("the pins at {}", p.display()));
            }
        }
        if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name
                    .strip_prefix("lb-demo-")
                    .and_then(|p| p.parse::<u32>().ok());
                if pid.is_some_and(|p| p != me && !is_demo(p))
                    && fs::remove_dir_all(e.path()).is_ok()
                {
                    removed.push(e.path().display().to_string());
                }
            }
        }
        if !removed.is_empty() {
            say!(
                "\nRemoved what an earlier demo, killed before it could clean up, left behind:\n  {}",
                removed.join(", ")
            );
        }
        Ok(())
    }

    /// Namespaces, bridge, veths, addresses, routes, sysctls; the
    /// pass-through program on the balancer's bridge port; each backend's
    /// decap program and web server.
    pub fn build(&mut self) -> Result<()> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        // The VIP is local on each backend (on lo), never announced by ARP:
        // the usual direct-server-return setup.
        let net = SwitchedLab::build(&SwitchedSpec {
            ns_prefix: "demo-".into(),
            bridge: BRIDGE.into(),
            port_prefix: PORT_PREFIX.into(),
            client_if: IF_CLIENT.into(),
            lb_if: IF_LB.into(),
            backend_ifs: (0..BACKENDS).map(backend_if).collect(),
            v4: LB_ADDR,
            v6: None,
            mtu: MTU,
            backend_lo: vec![VIP.into()],
            client_routes: vec![format!("{VIP}/32")],
            quiet_arp: true,
        })?;
        self.switch_ns = net.switch_ns.clone();
        self.client_ns = net.client.ns.clone();
        self.lb_ns = net.lb.ns.clone();
        let sw = self.switch_ns.clone();
        self.backends = net
            .backends
            .iter()
            .map(|h| Backend {
                name: h.role.clone(),
                addr: h.v4,
                ns: h.ns.clone(),
                ifname: h.ifname.clone(),
                server: None,
            })
            .collect();
        self.net = Some(net);
        say!("  client  {CLIENT_ADDR} on {IF_CLIENT}; its route to the VIP goes via the balancer");
        say!("  lb      {LB_ADDR} on {IF_LB}, where lbd will attach the balancer");

        // A frame the balancer sends with XDP_TX out of a veth reaches the
        // peer only if the peer runs a native XDP program: give the
        // balancer's bridge port one that passes everything.
        let port = port_of(IF_LB);
        let out = self.decap(&sw, &port, UNUSED_ADDR, Some("native"))?;
        say!(
            "  switch  bridge {BRIDGE}; a pass-through XDP program on {port}, the balancer's port"
        );
        say!(
            "          ({out}: frames the balancer sends back out of a veth need one on its peer)"
        );

        for i in 0..self.backends.len() {
            let (ns, ifname, addr, name) = {
                let b = &self.backends[i];
                (b.ns.clone(), b.ifname.clone(), b.addr, b.name.clone())
            };
            let out = self.decap(&ns, &ifname, addr, None)?;
            self.backends[i].server = Some(Server::start(&ns, &name)?);
            say!(
                "  {name}      {addr} on {ifname}, VIP on lo, decap XDP ({out}), web server on :80"
            );
        }
        Ok(())
    }

    /// `lbd decap` on `ifname` in `ns` (pinned: it stays after the command);
    /// the attach mode it reports.
    fn decap(
        &mut self,
        ns: &str,
        ifname: &str,
        addr: Ipv4Addr,
        mode: Option<&str>,
    ) -> Result<String> {
        // Recorded first: cleanup detaches even if the attach half worked.
        self.pinned.push((ns.to_string(), ifname.to_string()));
        let mut cmd = nsenter(ns, &self.lbd_bin);
        cmd.args([
            "decap",
            "--interface",
            ifname,
            "--address",
            &addr.to_string(),
        ]);
        if let Some(m) = mode {
            cmd.args(["--xdp-mode", m]);
        }
        let out = run_ok(&mut cmd)?;
        // "decap attached to dm-b1 (native) for 198.18.0.11"
        let mode = out
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .map_or("attached", |(m, _)| m);
        Ok(format!("{mode} mode"))
    }

    // ------------------------------------------------------------ lbd

    pub fn config_text(&self) -> String {
        let backends: String = self
            .backends
            .iter()
            .map(|b| {
                format!(
                    "  {{ address = \"{}\", weight = 100 }},  # {}\n",
                    b.addr, b.name
                )
            })
            .collect();
        format!(
            r#"# Generated by the lb demo.
# The balancer's one interface: it sends packets back out where they came in.
interface = "{IF_LB}"
xdp_mode = "auto"
control_socket = "{socket}"
state_dir = "{state}"
# On the lb namespace's own loopback.
metrics_listen = "{METRICS_ADDR}"

[encap]
# The outer source address of the IPIP packets.
source_v4 = "{LB_ADDR}"

[[vip]]
name = "web"
address = "{VIP}"
port = {VIP_PORT}
protocol = "tcp"
forwarding = "ipip"
backends = [
{backends}]

[vip.health]
kind = "http"
path = "/healthz"
interval = "500ms"
timeout = "300ms"
rise = 2  # good checks in a row to come up
fall = 2  # failed checks in a row to go down
"#,
            socket = self.socket.display(),
            state = self.dir.join("state").display(),
        )
    }

    /// Writes the config and starts `lbd run` in the lb namespace, its log
    /// going to a file; returns its pid.
    pub fn start_lbd(&mut self) -> Result<u32> {
        fs::write(&self.config_path, self.config_text())
            .with_context(|| format!("writing {}", self.config_path.display()))?;
        let log = fs::File::create(&self.log_path)
            .with_context(|| format!("creating {}", self.log_path.display()))?;
        self.pinned.push((self.lb_ns.clone(), IF_LB.to_string()));
        let mut cmd = nsenter(&self.lb_ns, &self.lbd_bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env("LBD_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child
        // before exec. lbd dies with the demo even if the demo is killed
        // outright (nsenter execs lbd, keeping the setting).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting lbd")?;
        let pid = child.id();
        self.lbd = Some(child);
        Ok(pid)
    }

    /// Fails if lbd has exited.
    pub fn check_lbd(&mut self) -> Result<()> {
        if let Some(child) = self.lbd.as_mut() {
            if let Some(status) = child.try_wait()? {
                self.lbd = None;
                bail!("lbd exited ({status}); its log:\n{}", self.log_tail(30));
            }
        }
        Ok(())
    }

    /// The last `n` lines of lbd's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| format!("    {}\n", tidy_log_line(l)))
            .collect()
    }

    /// The first line of lbd's log containing every one of `words`,
    /// without its timestamp.
    pub fn log_line(&self, words: &[&str]) -> Option<String> {
        let text = fs::read_to_string(&self.log_path).ok()?;
        text.lines()
            .find(|l| words.iter().all(|w| l.contains(w)))
            .map(tidy_log_line)
    }

    /// `lbctl --socket <ours> <args>`.
    pub fn lbctl(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(&self.lbctl_bin);
        cmd.arg("--socket").arg(&self.socket).args(args);
        run_bounded(&mut cmd, COMMAND_TIMEOUT)
    }

    /// `lbctl <args>`, which must succeed; its stdout.
    pub fn lbctl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.lbctl(args)?;
        if !out.ok {
            bail!("`lbctl {}` failed: {}", args.join(" "), out.message());
        }
        Ok(out.stdout)
    }

    /// `lbctl --json status`, decoded.
    pub fn status(&self) -> Result<Status> {
        let out = self.lbctl_ok(&["--json", "status"])?;
        lb::cli::client::decode::<Status>(out.as_bytes())
            .map_err(|e| anyhow::anyhow!("reading `lbctl --json status`: {e}"))
    }

    /// A backend of the VIP in a status.
    pub fn backend_status(status: &Status, addr: Ipv4Addr) -> Option<&BackendStatus> {
        status
            .vips
            .iter()
            .find(|v| v.vip.to_string() == VIP_ID)?
            .backends
            .iter()
            .find(|b| b.addr == IpAddr::V4(addr))
    }

    /// Polls `lbctl --json status` (every 50 ms, at most `limit`) until
    /// `done` holds; the status that satisfied it and the time it took.
    pub fn wait_status(
        &mut self,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&Status) -> bool,
    ) -> Result<(Status, Duration)> {
        let started = Instant::now();
        loop {
            check_interrupt()?;
            self.check_lbd()?;
            let last = match self.status() {
                Ok(s) if done(&s) => return Ok((s, started.elapsed())),
                Ok(s) => lb::cli::output::render_status(&s),
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() > limit {
                bail!("{what}: not within {limit:?}; last status:\n{last}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    // ------------------------------------------------------------ servers

    /// Stops a backend's web server (its port is closed when this returns).
    pub fn stop_server(&mut self, name: &str) {
        if let Some(b) = self.backends.iter_mut().find(|b| b.name == name) {
            if let Some(s) = b.server.take() {
                s.stop();
            }
        }
    }

    pub fn start_server(&mut self, name: &str) -> Result<()> {
        let b = self
            .backends
            .iter_mut()
            .find(|b| b.name == name)
            .expect("a backend of the demo");
        if b.server.is_none() {
            b.server = Some(Server::start(&b.ns, &b.name)?);
        }
        Ok(())
    }

    // ------------------------------------------------------------ cleanup

    /// Removes everything, in order: lbd (so nothing holds the balancer's
    /// interface), the web servers, every pinned program (`lbd detach`),
    /// the namespaces, the temporary directory. Prints what it does; returns
    /// what it could not remove. Runs once; also on drop.
    pub fn cleanup(&mut self) -> Vec<String> {
        if self.cleaned {
            return Vec::new();
        }
        self.cleaned = true;
        let mut problems = Vec::new();

        if let Some(mut child) = self.lbd.take() {
            match stop_child(&mut child) {
                Ok(how) => say!("  stopped lbd ({how})"),
                Err(e) => problems.push(format!("stopping lbd: {e:#}")),
            }
        }

        for b in &mut self.backends {
            if let Some(s) = b.server.take() {
                s.stop();
            }
        }

        let mut detached = Vec::new();
        for (ns, ifname) in std::mem::take(&mut self.pinned).into_iter().rev() {
            match self.detach(&ns, &ifname) {
                Ok(()) => detached.push(ifname),
                Err(e) => problems.push(format!("detaching from {ifname}: {e:#}")),
            }
        }
        if !detached.is_empty() {
            detached.reverse();
            say!(
                "  detached the XDP programs and removed their pins: {} (lbd detach)",
                detached.join(", ")
            );
        }

        if let Some(net) = self.net.take() {
            let n = net.topo.namespaces().len();
            let prefix = net.topo.prefix().to_string();
            drop(net);
            if let Ok(list) = run_ok(Command::new("ip").args(["netns", "list"])) {
                if list.lines().any(|l| l.starts_with(&prefix)) {
                    problems.push(format!("namespaces {prefix}* are still there"));
                }
            }
            say!("  deleted the {n} namespaces (and with them every veth and the bridge)");
        }

        if self.dir.exists() {
            match fs::remove_dir_all(&self.dir) {
                Ok(()) => say!("  removed {}", self.dir.display()),
                Err(e) => problems.push(format!("removing {}: {e}", self.dir.display())),
            }
        }
        // Directories lbd created for the demo, if nothing else uses them.
        for d in &self.created_dirs {
            let _ = fs::remove_dir(d);
        }

        for ifname in pinnable_interfaces() {
            for p in pins_named(&ifname) {
                problems.push(format!("{} is still there", p.display()));
            }
        }
        problems
    }

    /// `lbd detach` in the interface's namespace (it removes only that
    /// namespace's pins, and its lock file with its lock).
    fn detach(&self, ns: &str, ifname: &str) -> Result<()> {
        let args = ["detach", "--interface", ifname];
        let o = run_bounded(nsenter(ns, &self.lbd_bin).args(args), COMMAND_TIMEOUT)?;
        if !o.ok {
            bail!("{}", o.message());
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in self.cleanup() {
            say!("  NOT CLEAN: {p}");
        }
    }
}

/// Whether process `pid` is a demo (not just any process that got a
/// dead demo's pid).
fn is_demo(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "demo")
}

/// SIGTERM, then SIGKILL if it has not exited within [`STOP_TIMEOUT`].
fn stop_child(child: &mut Child) -> Result<&'static str> {
    if child.try_wait()?.is_some() {
        return Ok("it had exited");
    }
    // SAFETY: a signal to our own child, which has not been reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok("SIGTERM");
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.kill()?;
    child.wait()?;
    Ok("did not stop on SIGTERM: killed")
}

/// A log line without its timestamp (and any colour codes).
fn tidy_log_line(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    // "2025-01-01T00:00:00.000000Z  WARN lb::health: ..."
    match out.split_once(' ') {
        Some((ts, rest)) if ts.contains('T') && ts.ends_with('Z') => rest.trim_start().to_string(),
        _ => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit() {
        for n in pinnable_interfaces()
            .into_iter()
            .chain([port_of(IF_CLIENT), BRIDGE.to_string()])
        {
            assert!(n.len() <= lb_lab::netns::IFNAME_MAX, "{n}");
        }
        assert_eq!(port_of("dm-b2"), "dm-sw-b2");
    }

    #[test]
    fn log_lines_lose_their_timestamps() {
        assert_eq!(
            tidy_log_line("2025-11-25T16:53:01.123456Z  \u{1b}[33mWARN\u{1b}[0m lb::health: x"),
            "WARN lb::health: x"
        );
        assert_eq!(tidy_log_line("plain"), "plain");
    }
}
