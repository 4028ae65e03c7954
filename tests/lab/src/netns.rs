//! Network-namespace topologies for tests against the real programs.
//!
//! A [`Topology`] creates uniquely named namespaces (`lbt-<pid>-<n>-<name>`,
//! so tests running in parallel, in one process or several, never collide),
//! connects them with veth pairs or bridges, configures addresses and routes
//! with iproute2, and removes everything on drop, also when the test panics:
//! the processes it spawned are killed and its namespaces deleted (which
//! deletes their interfaces). Namespaces left behind by a test process that
//! was killed outright are swept by the next [`Topology::new`].
//!
//! Rust code runs inside a namespace with [`in_netns`] (a scoped thread that
//! joins the namespace with `setns(CLONE_NEWNET)`) or [`spawn_in_netns`]. That
//! is how a test attaches XDP programs inside a namespace: the attach resolves
//! the interface and creates the link in the calling thread's namespace. BPF
//! programs and maps are not namespaced, so loading and map access work from
//! any thread.

use std::{
    fs::File,
    io,
    mem::{size_of, zeroed},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

/// Where iproute2 keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";
/// Prefix of every namespace a [`Topology`] creates.
pub const NS_PREFIX: &str = "lbt-";
/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const IFNAME_MAX: usize = 15;

static NEXT_TOPOLOGY: AtomicU32 = AtomicU32::new(0);

/// A set of namespaces and the processes running in them, torn down on drop.
pub struct Topology {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Topology {
    /// An empty topology with a prefix no other live topology uses.
    pub fn new() -> Result<Self> {
        sweep_stale();
        let n = NEXT_TOPOLOGY.fetch_add(1, Ordering::Relaxed);
        Ok(Topology {
            prefix: format!("{NS_PREFIX}{}-{n}-", std::process::id()),
            namespaces: Vec::new(),
            children: Vec::new(),
        })
    }

    /// `lbt-<pid>-<n>-`: the names of this topology's namespaces start so.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespaces created so far, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Creates namespace `<prefix><name>` with `lo` up and IPv6 duplicate
    /// address detection off (addresses are usable at once); returns its
    /// full name.
    pub fn add_ns(&mut self, name: &str) -> Result<String> {
        let full = format!("{}{name}", self.prefix);
        run(Command::new("ip").args(["netns", "add", &full]))?;
        // Owned from here: dropped (deleted) even if the setup below fails.
        self.namespaces.push(full.clone());
        ip(&full, &["link", "set", "lo", "up"])?;
        for key in [
            "net.ipv6.conf.all.accept_dad",
            "net.ipv6.conf.default.accept_dad",
        ] {
            sysctl(&full, key, "0")?;
        }
        Ok(full)
    }

    /// A veth pair: `a.1` in namespace `a.0`, its peer `b.1` in `b.0`, both
    /// up. The pair is created inside the namespaces, so the names only have
    /// to be unique there.
    pub fn veth(&mut self, a: (&str, &str), b: (&str, &str)) -> Result<()> {
        self.check_ns(a.0)?;
        self.check_ns(b.0)?;
        check_ifname(a.1)?;
        check_ifname(b.1)?;
        ip(
            a.0,
            &[
                "link", "add", a.1, "type", "veth", "peer", "name", b.1, "netns", b.0,
            ],
        )?;
        ip(a.0, &["link", "set", a.1, "up"])?;
        ip(b.0, &["link", "set", b.1, "up"])?;
        Ok(())
    }

    /// A bridge `name` in namespace `ns`, up.
    pub fn add_bridge(&mut self, ns: &str, name: &str) -> Result<()> {
        self.check_ns(ns)?;
        check_ifname(name)?;
        ip(ns, &["link", "add", name, "type", "bridge"])?;
        ip(ns, &["link", "set", name, "up"])?;
        Ok(())
    }

    /// Enslaves `ifname` to `bridge` (both in `ns`).
    pub fn set_master(&mut self, ns: &str, ifname: &str, bridge: &str) -> Result<()> {
        self.check_ns(ns)?;
        ip(ns, &["link", "set", ifname, "master", bridge])?;
        Ok(())
    }

    /// Plugs `host` (namespace, interface) into `bridge` of `switch_ns`
    /// through a veth whose bridge-side end is `port`: the port gets `mtu`,
    /// and so does the host's end when `host_mtu` (a host whose frames grow
    /// on the way, such as the balancer's or a backend's).
    pub fn plug(
        &mut self,
        host: (&str, &str),
        switch_ns: &str,
        port: &str,
        bridge: &str,
        mtu: &str,
        host_mtu: bool,
    ) -> Result<()> {
        self.veth(host, (switch_ns, port))?;
        self.set_master(switch_ns, port, bridge)?;
        ip(switch_ns, &["link", "set", "dev", port, "mtu", mtu])?;
        if host_mtu {
            ip(host.0, &["link", "set", "dev", host.1, "mtu", mtu])?;
        }
        Ok(())
    }

    /// Adds `cidr` (`10.0.0.1/24`, `fd00::1/64`) to `ifname`; IPv6 addresses
    /// get `nodad`.
    pub fn add_addr(&mut self, ns: &str, ifname: &str, cidr: &str) -> Result<()> {
        self.check_ns(ns)?;
        let mut args = vec!["addr", "add", cidr, "dev", ifname];
        if cidr.contains(':') {
            args.push("nodad");
        }
        ip(ns, &args)?;
        Ok(())
    }

    /// `ip route add <args>` in `ns` (`-6` is added for IPv6 destinations or
    /// gateways).
    pub fn add_route(&mut self, ns: &str, args: &[&str]) -> Result<()> {
        self.check_ns(ns)?;
        let mut full = Vec::new();
        if args.iter().any(|a| a.contains(':')) {
            full.push("-6");
        }
        full.extend(["route", "add"]);
        full.extend(args);
        ip(ns, &full)?;
        Ok(())
    }

    /// Sets a sysctl in `ns` (see [`sysctl`]).
    pub fn sysctl(&mut self, ns: &str, key: &str, value: &str) -> Result<()> {
        self.check_ns(ns)?;
        sysctl(ns, key, value)
    }

    /// Starts `cmd` in `ns` (stdin and stdout closed, stderr inherited); it is
    /// killed when the topology drops. Returns its pid.
    pub fn spawn(&mut self, ns: &str, cmd: &[&str]) -> Result<u32> {
        self.check_ns(ns)?;
        let (prog, args) = cmd.split_first().ok_or_else(|| anyhow!("empty command"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns, prog])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {cmd:?} in {ns}"))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Whether a process started with [`Topology::spawn`] is still running.
    pub fn is_running(&mut self, pid: u32) -> bool {
        self.children
            .iter_mut()
            .find(|c| c.id() == pid)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills (and reaps) a process started with [`Topology::spawn`].
    pub fn kill(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut child = self.children.swap_remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn check_ns(&self, ns: &str) -> Result<()> {
        if self.namespaces.iter().any(|n| n == ns) {
            Ok(())
        } else {
            bail!("namespace {ns} is not part of topology {}", self.prefix)
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = run(Command::new("ip").args(["netns", "del", &ns])) {
                eprintln!("netns: deleting {ns}: {e:#}");
            }
        }
    }
}

/// Deletes namespaces of test processes that no longer exist (killed before
/// their topologies could drop). Namespaces of live processes are left alone.
fn sweep_stale() {
    let Ok(list) = run(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(Command::new("ip").args(["netns", "del", name]));
        }
    }
}

fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains(['/', ' ', ':']) {
        bail!("bad interface name {name:?} (1..={IFNAME_MAX} chars, no '/', ' ' or ':')");
    }
    Ok(())
}

/// Runs `cmd`; its stdout on success, an error with its stderr otherwise.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n <ns> <args>`; its output.
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(["-n", ns]).args(args))
}

/// `ip netns exec <ns> <cmd>`; its output.
pub fn exec(ns: &str, cmd: &[&str]) -> Result<String> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(cmd))
}

/// Writes `value` to sysctl `key` (`net.ipv4.ip_forward`) of namespace `ns`.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    in_netns(ns, || std::fs::write(&path, value))?
        .with_context(|| format!("sysctl {key}={value} in {ns}"))
}

/// Reads sysctl `key` of namespace `ns`.
pub fn sysctl_get(ns: &str, key: &str) -> Result<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let v = in_netns(ns, || std::fs::read_to_string(&path))?
        .with_context(|| format!("sysctl {key} in {ns}"))?;
    Ok(v.trim().to_string())
}

/// The ifindex of `ifname` in `ns`.
pub fn ifindex(ns: &str, ifname: &str) -> Result<u32> {
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: a valid NUL-terminated name.
    let index = in_netns(ns, || unsafe { libc::if_nametoindex(name.as_ptr()) })?;
    if index == 0 {
        bail!("no interface {ifname} in {ns}");
    }
    Ok(index)
}

/// The MAC address of `ifname` in `ns`.
pub fn mac(ns: &str, ifname: &str) -> Result<[u8; 6]> {
    let out = ip(ns, &["-o", "link", "show", "dev", ifname])?;
    let text = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .ok_or_else(|| anyhow!("{ifname} in {ns} has no Ethernet address: {out}"))?;
    parse_mac(text)
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        let part = parts.next().ok_or_else(|| anyhow!("bad MAC {text}"))?;
        *b = u8::from_str_radix(part, 16).with_context(|| format!("bad MAC {text}"))?;
    }
    if parts.next().is_some() {
        bail!("bad MAC {text}");
    }
    Ok(mac)
}

/// Turns transmit checksum offload of `ifname` in `ns` on or off, like
/// `ethtool -K <ifname> tx off`.
///
/// A veth leaves locally generated TCP/UDP checksums to "hardware"
/// (`CHECKSUM_PARTIAL`); the peer's stack completes them, but a native XDP
/// program on the peer sees only the bytes and a frame it redirects leaves
/// with the checksum unfinished. Traffic that an XDP program forwards
/// should therefore come from an interface with this off, as from a wire.
pub fn set_tx_checksum(ns: &str, ifname: &str, on: bool) -> Result<()> {
    /// `struct ethtool_value`.
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    check_ifname(ifname)?;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: on as u32,
    };
    let rc = in_netns(ns, || {
        // SAFETY: an ioctl on a socket we own, with an `ifreq` naming the
        // interface and pointing at `value`, which outlives the call.
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let mut ifr: libc::ifreq = zeroed();
            for (d, s) in ifr.ifr_name.iter_mut().zip(ifname.bytes()) {
                *d = s as libc::c_char;
            }
            ifr.ifr_ifru.ifru_data = &mut value as *mut EthtoolValue as *mut libc::c_char;
            if libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    })?;
    rc.with_context(|| format!("ETHTOOL_STXCSUM {ifname} in {ns}"))
}

/// Moves the calling thread into namespace `ns` (network namespace only).
fn enter(ns: &str) -> Result<()> {
    let path = format!("{NETNS_RUN_DIR}/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a plain syscall on a descriptor we own.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("setns({path})"));
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside namespace `ns` and returns its result.
/// Sockets `f` creates belong to `ns` (and stay there whichever thread uses
/// them later); netlink and `if_nametoindex` see `ns`. A panic in `f` is
/// propagated to the caller.
pub fn in_netns<T: Send, F: FnOnce() -> T + Send>(ns: &str, f: F) -> Result<T> {
    thread::scope(|s| {
        let handle = s.spawn(|| {
            enter(ns)?;
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Starts `f` on a thread inside namespace `ns` (a server, say). The thread
/// keeps the namespace's interfaces alive until it ends, so `f` should be
/// bounded in time.
pub fn spawn_in_netns<T, F>(ns: &str, f: F) -> JoinHandle<Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = ns.to_string();
    thread::spawn(move || {
        enter(&ns)?;
        Ok(f())
    })
}

/// An `AF_PACKET` socket receiving every frame seen on one interface (after
/// the interface's XDP program, in both directions).
pub struct Capture {
    fd: OwnedFd,
}

/// A captured frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub data: Vec<u8>,
    /// `PACKET_HOST`, `PACKET_OUTGOING`, ... (`sll_pkttype`).
    pub pkttype: u8,
}

impl Frame {
    /// Whether the interface sent (rather than received) the frame.
    pub fn outgoing(&self) -> bool {
        self.pkttype == libc::PACKET_OUTGOING
    }
}

impl Capture {
    /// Opens the socket in `ns`, bound to `ifname`.
    pub fn open(ns: &str, ifname: &str) -> Result<Capture> {
        let index = ifindex(ns, ifname)?;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let fd = in_netns(ns, || -> Result<OwnedFd> {
            // SAFETY: plain syscalls; the descriptor is owned at once.
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
            if raw < 0 {
                return Err(io::Error::last_os_error()).context("socket(AF_PACKET)");
            }
            // SAFETY: the fd was just returned by socket() and is owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
            let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            // SAFETY: valid fd, and a sockaddr_ll with its true length.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error()).context("bind(AF_PACKET)");
            }
            Ok(fd)
        })??;
        Ok(Capture { fd })
    }

    /// The next frame, waiting at most `timeout`.
    pub fn recv(&self, timeout: Duration) -> Result<Option<Frame>> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros().max(1) as libc::suseconds_t,
        };
        // SAFETY: plain syscalls on our descriptor with buffers we own.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("SO_RCVTIMEO");
        }
        let mut buf = vec![0u8; 65536];
        // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: valid fd, buffer, out-pointer and length.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut sll as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(None),
                io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e).context("recvfrom(AF_PACKET)"),
            };
        }
        buf.truncate(n as usize);
        Ok(Some(Frame {
            data: buf,
            pkttype: sll.sll_pkttype,
        }))
    }

    /// The first frame `pred` accepts, looking at no more than `max_frames`
    /// frames and waiting no longer than `timeout` in all.
    pub fn find(
        &self,
        timeout: Duration,
        max_frames: usize,
        mut pred: impl FnMut(&Frame) -> bool,
    ) -> Result<Option<Frame>> {
        let deadline = Instant::now() + timeout;
        for _ in 0..max_frames {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.recv(left)? {
                Some(f) if pred(&f) => return Ok(Some(f)),
                Some(_) => {}
                None => break,
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:ab:0c:00:ff:10").unwrap(),
            [2, 0xab, 0x0c, 0, 0xff, 0x10]
        );
        assert!(parse_mac("02:ab:0c:00:ff").is_err());
        assert!(parse_mac("02:ab:0c:00:ff:10:11").is_err());
        assert!(parse_mac("02:ab:0c:00:ff:zz").is_err());
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(check_ifname("lb0").is_ok());
        assert!(check_ifname("abcdefghijklmno").is_ok());
        assert!(check_ifname("abcdefghijklmnop").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
    }
}
