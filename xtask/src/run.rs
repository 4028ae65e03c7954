//! `cargo xtask test | bench | demo`: build, prepare the machine, run.
//! All three load XDP programs and create network namespaces, so they need root.

use std::fs;
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::{build, is_root, status};

pub fn test(filter: Option<String>, args: Vec<String>) -> Result<()> {
    require_root("test")?;
    build::all(false)?;
    mount_bpffs()?;
    let mut cmd = build::workspace_cargo();
    cmd.args(["test", "--workspace"]).args(filter);
    pass_through(&mut cmd, args);
    status(&mut cmd)
}

pub fn bench(args: Vec<String>) -> Result<()> {
    require_root("bench")?;
    build::all(true)?;
    mount_bpffs()?;
    let mut cmd = build::workspace_cargo();
    cmd.args("run --release -p bench --bin bench".split(' '));
    pass_through(&mut cmd, args);
    status(&mut cmd)
}

pub fn demo(args: Vec<String>) -> Result<()> {
    require_root("demo")?;
    build::all(false)?;
    mount_bpffs()?;
    let mut cmd = build::workspace_cargo();
    cmd.args("run -p demo --bin demo".split(' '));
    pass_through(&mut cmd, args);
    status(&mut cmd)
}

/// Checked before building, so a non-root user learns it in a second, not after
/// a full build.
fn require_root(subcommand: &str) -> Result<()> {
    ensure!(
        is_root(),
        "`cargo xtask {subcommand}` needs root: it loads XDP programs and creates network namespaces \
         (run it as root; `cargo xtask build` works without)"
    );
    Ok(())
}

/// Everything after `--` on our command line goes after `--` on cargo's, i.e.
/// to the test/bench/demo binaries.
fn pass_through(cmd: &mut Command, args: Vec<String>) {
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
}

/// The loader pins maps under /sys/fs/bpf, which must be a bpf filesystem.
fn mount_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some("/sys/fs/bpf") && fields.next() == Some("bpf")
    });
    if mounted {
        return Ok(());
    }
    status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("mounting the bpf filesystem at /sys/fs/bpf")
}
