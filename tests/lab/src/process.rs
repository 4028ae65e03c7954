//! Running the real binaries: where they are, bounded runs, `nsenter`, and
//! the names (tags) a lab gives what it makes, with the sweeping of what
//! labs of killed test processes left behind.

use std::{
    fs,
    io::Read,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::{self},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb::host::pin::PinPlace;

use crate::netns::{in_netns, NETNS_RUN_DIR};

/// Prefix of everything global a lab names (interfaces, temp dirs).
pub const TAG_PREFIX: &str = "lbdt";
pub const BPFFS: &str = "/sys/fs/bpf";
pub const RUN_DIR: &str = "/run/lb";

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

/// `lbd run --config <config>` in namespace `ns`, its output appended to
/// `log`, killed if the test process dies; does not wait for it.
pub fn spawn_lbd(ns: &str, config: &Path, log: fs::File) -> Result<Child> {
    let mut cmd = nsenter(ns, &lbd_bin());
    cmd.args(["run", "--config"])
        .arg(config)
        .env("LBD_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    die_with_parent(&mut cmd);
    cmd.spawn().context("spawning lbd run")
}

/// `lbctl --socket <socket> <args>` as root, from the root namespace.
pub fn lbctl_at(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(lbctl_bin());
    cmd.arg("--socket").arg(socket).args(args);
    run_bounded(&mut cmd, Duration::from_secs(20)).expect("running lbctl")
}

/// Kill the child when the thread that started it ends (a test process
/// killed outright leaves no lbd behind).
pub(crate) fn die_with_parent(cmd: &mut Command) {
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
pub(crate) fn new_tag() -> String {
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
/// layout, the decap pin, the lock files.
pub fn remove_interface_leftovers(ns: &str, ifname: &str) {
    if let Ok(place) = pin_place(ns, ifname) {
        let _ = place.remove_balancer();
        let _ = place.remove_decap();
        let _ = fs::remove_file(lb::daemon::lock::lock_path(
            Path::new(RUN_DIR),
            place.netns,
            ifname,
        ));
        // The namespace's routing-table locks (`[announce] table`).
        let prefix = format!("lbd-{}-table-", place.netns);
        if let Ok(dir) = fs::read_dir(RUN_DIR) {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
