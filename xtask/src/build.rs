//! `cargo xtask build`: the eBPF objects first (the userspace library embeds
//! them, see lb-userspace/build.rs), then the host workspace.

use std::env;
use std::process::Command;

use anyhow::Result;

use crate::{repo_root, setup, status};

/// Variables that the cargo running xtask (or the user) may have set and that
/// would leak into the eBPF build: a toolchain override would beat
/// lb-ebpf/rust-toolchain.toml (nightly), and target, flags, wrappers or target
/// dir would beat lb-ebpf/.cargo/config.toml (bpfel-unknown-none, build-std).
const OUTER_BUILD_VARS: &[&str] = &[
    "CARGO",
    "CARGO_BUILD_RUSTC",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_TARGET_DIR",
    "RUSTC",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
    "RUSTDOC",
    "RUSTFLAGS",
    "RUSTUP_TOOLCHAIN",
];

pub fn clean_env(cmd: &mut Command) {
    for var in OUTER_BUILD_VARS {
        cmd.env_remove(var);
    }
}

/// Setup (quiet when nothing is missing), eBPF, then userspace.
pub fn all(release: bool) -> Result<()> {
    setup::ensure()?;
    ebpf()?;
    userspace(release)
}

/// The eBPF crates, each a workspace of its own: the product's programs
/// (lb-ebpf) and the bench-only ones (tests/bench-ebpf).
const EBPF_CRATES: &[&str] = &["lb-ebpf", "tests/bench-ebpf"];

/// Always release: the verifier needs optimised code, and lb-userspace/build.rs
/// (and the bench) look only in target/bpf/bpfel-unknown-none/release. One
/// target dir for both crates, so `core` (build-std) is built once.
fn ebpf() -> Result<()> {
    let root = repo_root();
    for dir in EBPF_CRATES {
        let mut cmd = Command::new("cargo");
        clean_env(&mut cmd);
        // ~/.cargo/bin first: rustup's cargo proxy (which honours rust-toolchain.toml)
        // and the bpf-linker that setup checked.
        cmd.env("PATH", setup::path_with(&[setup::cargo_bin()]))
            .current_dir(root.join(dir))
            .args(["build", "--release", "--target-dir"])
            .arg(root.join("target/bpf"));
        status(&mut cmd)?;
    }
    Ok(())
}

fn userspace(release: bool) -> Result<()> {
    let mut cmd = workspace_cargo();
    cmd.args(["build", "--workspace", "--all-targets"]);
    if release {
        cmd.arg("--release");
    }
    status(&mut cmd)
}

/// cargo for the host workspace: the same cargo (so the same toolchain and
/// build cache) that runs xtask.
pub fn workspace_cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo_root());
    cmd
}
