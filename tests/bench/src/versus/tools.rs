//! What the `versus` section needs from outside Rust: the Debian packages
//! (installed on demand, also bpftool for `packet`), processes started in a namespace that die with the
//! bench, wrk's output, and CPU time from `/proc`.

use std::{
    fs,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_lab::process::run_bounded;

/// Debian package of each program the bench runs (bpftool: the `packet`
/// section's call counts).
pub const TOOLS: &[(&str, &str)] = &[
    ("wrk", "wrk"),
    ("haproxy", "haproxy"),
    ("nft", "nftables"),
    ("nginx", "nginx-light"),
    ("bpftool", "bpftool"),
];

const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// The path of `prog` in the usual directories, if installed.
pub fn which(prog: &str) -> Option<String> {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .map(|d| format!("{d}/{prog}"))
    .find(|p| Path::new(p).is_file())
}

/// Installs the packages of the missing tools with apt-get, in the network
/// namespace the bench was started in (the bench itself sits in a private one
/// with no way out). Returns the packages installed and how long it took.
pub fn ensure_installed() -> Result<(Vec<&'static str>, Duration)> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(prog, _)| which(prog).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok((missing, Duration::ZERO));
    }
    let started = Instant::now();
    if which("apt-get").is_none() {
        bail!(
            "missing {} and no apt-get to install them: install them by hand",
            missing.join(", ")
        );
    }
    // The parent (cargo xtask, a shell) is in the namespace the bench was
    // started in, which has the network.
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let netns = [
        format!("/proc/{parent}/ns/net"),
        "/proc/1/ns/net".to_string(),
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .context("no network namespace to run apt-get in")?;
    // Keep the packages' maintainer scripts from starting system services
    // (nginx, haproxy): invoke-rc.d asks policy-rc.d, and 101 means "no".
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let made_policy = !policy.exists();
    if made_policy {
        fs::write(
            policy,
            "#!/bin/sh\n# lb bench: no services during its apt-get\nexit 101\n",
        )
        .context("writing /usr/sbin/policy-rc.d")?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(policy, fs::Permissions::from_mode(0o755))?;
    }
    let apt = |args: &[&str]| -> Result<()> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={netns}"))
            .arg("apt-get")
            // Without network, fail within a minute or so rather than retry.
            .args([
                "-o",
                "Acquire::Retries=1",
                "-o",
                "Acquire::http::Timeout=30",
            ])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive");
        let out = run_bounded(&mut cmd, INSTALL_TIMEOUT)
            .with_context(|| format!("apt-get {}", args.join(" ")))?;
        if !out.ok() {
            let tail: Vec<&str> = out.stderr.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("apt-get {} failed:\n{}", args.join(" "), tail.join("\n"));
        }
        Ok(())
    };
    let mut args = vec![
        "install",
        "-y",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ];
    args.extend(&missing);
    let mut r = apt(&args);
    if r.is_err() {
        // Stale package lists: refresh once and retry.
        r = apt(&["update", "-q"]).and_then(|()| apt(&args));
    }
    if made_policy {
        let _ = fs::remove_file(policy);
    }
    r.with_context(|| {
        format!(
            "installing {} (needs network access to the Debian mirrors; or install them by hand)",
            missing.join(" ")
        )
    })?;
    for (prog, pkg) in TOOLS {
        if which(prog).is_none() {
            bail!("{pkg} installed but {prog} not found");
        }
    }
    Ok((missing, started.elapsed()))
}

/// Processes started in namespaces; killed (and reaped) on drop. Each also
/// gets SIGKILL if the bench dies before it can drop them.
#[derive(Default)]
pub struct Procs {
    children: Vec<(String, Child)>,
}

impl Procs {
    /// Starts `cmd` in namespace `ns` with stdout and stderr going to `log`.
    pub fn spawn(&mut self, what: &str, ns: &str, cmd: &[&str], log: &Path) -> Result<u32> {
        let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0);
        die_with_parent(&mut c);
        let child = c
            .spawn()
            .with_context(|| format!("starting {what}: {cmd:?}"))?;
        let pid = child.id();
        self.children.push((what.to_string(), child));
        Ok(pid)
    }

    /// Fails if the process started as `what` has exited.
    pub fn check(&mut self, what: &str, log: &Path) -> Result<()> {
        for (w, c) in &mut self.children {
            if w == what {
                if let Some(status) = c.try_wait()? {
                    let text = fs::read_to_string(log).unwrap_or_default();
                    bail!("{what} exited ({status}): {}", text.trim());
                }
            }
        }
        Ok(())
    }

    /// The pid of the process started as `what`.
    pub fn pid(&self, what: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(w, _)| w == what)
            .map(|(_, c)| c.id())
    }

    pub fn stop(&mut self, what: &str) {
        let mut keep = Vec::new();
        for (w, mut c) in self.children.drain(..) {
            if w == what {
                let _ = c.kill();
                let _ = c.wait();
            } else {
                keep.push((w, c));
            }
        }
        self.children = keep;
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, mut c) in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// SIGKILL to the child when the thread that started it ends.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child
    // before exec (and `ip netns exec` execs the program, keeping it).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `cmd` in `ns` to its end (at most `timeout`); its stdout, or an
/// error with its output.
pub fn exec_ok(ns: &str, cmd: &[&str], timeout: Duration) -> Result<String> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(cmd).process_group(0);
    die_with_parent(&mut c);
    let out = run_bounded(&mut c, timeout)?;
    if !out.ok() {
        bail!(
            "{cmd:?} in {ns} failed: {}{}",
            out.stderr.trim(),
            out.stdout.trim()
        );
    }
    Ok(out.stdout)
}

// ---------------------------------------------------------------- wrk

/// What one wrk run reported.
#[derive(Clone, Debug, Default)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub non_2xx: u64,
    pub socket_errors: u64,
    /// Latency percentiles (`--latency`), in microseconds.
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
}

/// `12345 requests in 5.00s, 1.23MB read`, `Socket errors: connect 0, read
/// 1, write 0, timeout 0`, `Non-2xx or 3xx responses: 5`, `50%  1.23ms`.
pub fn parse_wrk(text: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut found = false;
    for line in text.lines().map(str::trim) {
        if let Some((n, rest)) = line.split_once(" requests in ") {
            r.requests = n.trim().parse().with_context(|| format!("wrk: {line}"))?;
            let t = rest.split(',').next().unwrap_or("");
            r.seconds = duration_us(t).with_context(|| format!("wrk: {line}"))? / 1e6;
            found = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let n = part.split_whitespace().nth(1).unwrap_or("0");
                r.socket_errors += n.parse::<u64>().with_context(|| format!("wrk: {line}"))?;
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = rest
                .trim()
                .parse()
                .with_context(|| format!("wrk: {line}"))?;
        } else if let Some(rest) = line.strip_prefix("50%") {
            r.p50_us = duration_us(rest.trim()).ok();
        } else if let Some(rest) = line.strip_prefix("99%") {
            r.p99_us = duration_us(rest.trim()).ok();
        }
    }
    if !found || r.seconds <= 0.0 {
        bail!("no request count in wrk's output:\n{text}");
    }
    Ok(r)
}

/// `1.23ms`, `5.00s`, `870.00us`, `1.02m` in microseconds.
fn duration_us(s: &str) -> Result<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600e6)
    } else {
        bail!("bad duration {s:?}")
    };
    Ok(num
        .parse::<f64>()
        .with_context(|| format!("bad duration {s:?}"))?
        * mult)
}

// ---------------------------------------------------------------- CPU

/// Clock ticks per second of `/proc` times.
pub fn clock_ticks() -> f64 {
    // SAFETY: a plain libc call.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Busy time of all CPUs in seconds: user + nice + system + irq + softirq
/// of `/proc/stat`'s `cpu` line (idle, iowait and steal left out).
pub fn machine_busy() -> Result<f64> {
    let text = fs::read_to_string("/proc/stat").context("/proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if v.len() < 7 {
        bail!("short cpu line in /proc/stat: {line}");
    }
    // user nice system idle iowait irq softirq steal ...
    let busy = v[0] + v[1] + v[2] + v[5] + v[6];
    Ok(busy as f64 / clock_ticks())
}

/// User + system time of process `pid` (all its threads) in seconds.
pub fn process_cpu(pid: u32) -> Result<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    // The command may hold spaces: fields start after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("bad /proc/pid/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let utime: u64 = f.get(11).and_then(|x| x.parse().ok()).context("utime")?;
    let stime: u64 = f.get(12).and_then(|x| x.parse().ok()).context("stime")?;
    Ok((utime + stime) as f64 / clock_ticks())
}

/// CPU seconds so far of every user-space process that is not the bench or
/// one of its children (kernel threads left out), by pid, with its start
/// time: what else was running on the machine.
pub fn others_cpu() -> std::collections::HashMap<u32, (u64, f64)> {
    let me = std::process::id();
    let ticks = clock_ticks();
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = text.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // f[0] = field 3 (state): ppid 4, flags 9, utime 14, stime 15, starttime 22.
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        const PF_KTHREAD: u64 = 0x0020_0000;
        let (ppid, flags) = (num(1) as u32, num(6));
        if pid == me || ppid == me || flags & PF_KTHREAD != 0 || pid == 2 || ppid == 2 {
            continue;
        }
        out.insert(pid, (num(19), (num(11) + num(12)) as f64 / ticks));
    }
    out
}

/// CPU seconds the other processes used between two [`others_cpu`]
/// snapshots: processes started in between count whole; those that ended
/// in between are missed (an underestimate).
pub fn others_delta(
    before: &std::collections::HashMap<u32, (u64, f64)>,
    after: &std::collections::HashMap<u32, (u64, f64)>,
) -> f64 {
    after
        .iter()
        .map(|(pid, (start, cpu))| match before.get(pid) {
            Some((s0, c0)) if s0 == start => (cpu - c0).max(0.0),
            _ => *cpu,
        })
        .sum()
}

/// Waits until `ready` holds (polling every 20 ms), at most `limit`.
pub fn wait_for(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let text = "Running 2s test @ http://198.18.100.1/\n  1 threads and 32 connections\n  \
            Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.50ms  300.00us   \
            8.00ms   90.00%\n  Latency Distribution\n     50%    1.41ms\n     75%    1.60ms\n     \
            90%    1.90ms\n     99%    3.10ms\n  42000 requests in 2.00s, 5.00MB read\n  \
            Socket errors: connect 0, read 3, write 0, timeout 1\n  Non-2xx or 3xx responses: 2\n\
            Requests/sec:  21000.00\nTransfer/sec:      2.50MB\n";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.requests, 42000);
        assert_eq!(r.seconds, 2.0);
        assert_eq!(r.socket_errors, 4);
        assert_eq!(r.non_2xx, 2);
        assert_eq!(r.p50_us, Some(1410.0));
        assert_eq!(r.p99_us, Some(3100.0));
        assert!(parse_wrk("nothing").is_err());
    }
}
