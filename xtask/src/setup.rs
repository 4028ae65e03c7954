//! `cargo xtask setup`: installs the toolchain pieces that are missing, and
//! only those, so every other subcommand can call it and stay quiet.
//!
//! What the eBPF build needs beyond stable Rust:
//! - bpf-linker 0.13.0, built against Debian's LLVM 22 (prebuilt downloads
//!   do not work here, so it is compiled from source);
//! - the preinstalled nightly toolchain with `rust-src` (`build-std = core`);
//! - iproute2's `ip`, which the namespace tests drive;
//! - BIRD 2 and keepalived, which the cluster tests start in their
//!   namespaces (the BGP speaker and the VRRP daemon lb is run with);
//! - etcd, the store the cluster tests share their desired state through,
//!   and protoc, which the `etcd-client` crate compiles etcd's API with;
//! - Knot DNS, the server the discovery tests change records on.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::{build, is_root, repo_root, status};

const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const LLVM_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn ensure() -> Result<()> {
    // apt first: bpf-linker links against LLVM 22, so LLVM must exist before it is built.
    debian_packages()?;
    bpf_linker()?;
    nightly_rust_src()
}

fn debian_packages() -> Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    if !Path::new(LLVM_BIN).join("llvm-config").exists() {
        missing.extend(LLVM_PACKAGES);
    }
    // Non-root users often lack /usr/sbin in PATH, where `ip` lives.
    if find_program("ip", &[PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]).is_none() {
        missing.push("iproute2");
    }
    let sbin = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    for (program, package) in [
        ("bird", "bird2"),
        ("keepalived", "keepalived"),
        ("nft", "nftables"),
        ("knotd", "knot"),
    ] {
        if find_program(program, &sbin).is_none() {
            missing.push(package);
        }
    }
    let bin = [PathBuf::from("/usr/bin")];
    for (program, package) in [
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
        ("protoc", "protobuf-compiler"),
        // The TLS API tests make their CAs and certificates with it.
        ("openssl", "openssl"),
    ] {
        if find_program(program, &bin).is_none() {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    ensure!(
        is_root(),
        "missing Debian packages: {list}; `cargo xtask setup` needs root to install them \
         (run it as root, or `apt-get install {list}` yourself)"
    );
    println!("installing {list} (apt-get)...");
    status(Command::new("apt-get").args(["update", "-q"]))?;
    status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
    )
}

fn bpf_linker() -> Result<()> {
    if bpf_linker_version().as_deref() == Some(BPF_LINKER_VERSION) {
        return Ok(());
    }
    println!("installing bpf-linker {BPF_LINKER_VERSION} (takes a few minutes)...");
    let mut cmd = Command::new("cargo");
    build::clean_env(&mut cmd);
    // Stable builds it; llvm-config from Debian's LLVM 22 must be found first on PATH.
    cmd.env("RUSTUP_TOOLCHAIN", "stable")
        .env("PATH", path_with(&[PathBuf::from(LLVM_BIN), cargo_bin()]))
        .current_dir(repo_root())
        .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
        .args(["--no-default-features", "--features", "llvm-22"]);
    status(&mut cmd)?;
    ensure!(
        bpf_linker_version().as_deref() == Some(BPF_LINKER_VERSION),
        "cargo installed bpf-linker, but `bpf-linker --version` does not report {BPF_LINKER_VERSION}"
    );
    Ok(())
}

/// The version of the bpf-linker the eBPF build will use. ~/.cargo/bin comes
/// first because the build puts it first on PATH.
fn bpf_linker_version() -> Option<String> {
    let exe = find_program_first_in("bpf-linker", &[cargo_bin()])?;
    let out = Command::new(exe).arg("--version").output().ok()?;
    // Prints "bpf-linker 0.13.0".
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.split_whitespace().nth(1).map(str::to_owned)
}

fn nightly_rust_src() -> Result<()> {
    // The nightly is preinstalled on the machine and cannot be downloaded here.
    // Only the undated `nightly-<host>` counts: lb-ebpf/rust-toolchain.toml asks for it.
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    let has_nightly = toolchains.lines().any(|line| {
        line.strip_prefix("nightly-")
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    if !has_nightly {
        bail!(
            "the eBPF build needs the preinstalled Rust nightly toolchain, and it is missing \
             (`rustup toolchain list` shows no `nightly`); setup cannot download toolchains, \
             so install it where the network allows: \
             `rustup toolchain install nightly --component rust-src`"
        );
    }
    if has_rust_src()? {
        return Ok(());
    }
    println!("installing rust-src for the nightly toolchain...");
    // The shared script tries rustup (with a timeout) and falls back to the archive
    // next to it, so when it exists it is the whole job; calling rustup first as
    // well would make an offline machine wait for two rustup timeouts.
    let script = repo_root().join("../shared/toolchain/install-rust-src.sh");
    if script.exists() {
        status(Command::new("bash").arg(&script))?;
    } else {
        let mut rustup = Command::new("rustup");
        rustup.args("component add rust-src --toolchain nightly".split(' '));
        status(&mut rustup).context("could not install rust-src for the nightly toolchain")?;
    }
    ensure!(
        has_rust_src()?,
        "rust-src is still missing from the nightly toolchain after installing it"
    );
    Ok(())
}

fn has_rust_src() -> Result<bool> {
    let mut rustup = Command::new("rustup");
    rustup.args("component list --toolchain nightly --installed".split(' '));
    let installed = output(&mut rustup)?;
    Ok(installed
        .lines()
        .any(|line| line.trim() == "rust-src" || line.starts_with("rust-src-")))
}

/// Where `cargo install` puts binaries: $CARGO_HOME/bin, else ~/.cargo/bin.
pub fn cargo_bin() -> PathBuf {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    cargo_home.join("bin")
}

/// $PATH with `dirs` in front.
pub fn path_with(dirs: &[PathBuf]) -> OsString {
    let rest = env::var_os("PATH").unwrap_or_default();
    let all = dirs.iter().cloned().chain(env::split_paths(&rest));
    env::join_paths(all).expect("PATH entries contain no ':'")
}

/// Looks for an executable in $PATH, then in `extra` directories.
fn find_program(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// Looks for an executable in `first` directories, then in $PATH.
fn find_program_first_in(name: &str, first: &[PathBuf]) -> Option<PathBuf> {
    first
        .iter()
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .or_else(|| find_program(name, &[]))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs a command quietly and returns its stdout.
fn output(cmd: &mut Command) -> Result<String> {
    let shown = crate::show(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    ensure!(
        out.status.success(),
        "`{shown}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
