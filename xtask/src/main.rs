//! `cargo xtask`: the one entry point for building and testing lb.
//!
//! The eBPF programs need a nightly toolchain, `rust-src` and bpf-linker, while
//! everything else builds with stable; this tool hides that split. Each
//! subcommand first makes sure the toolchain is present (`setup`), so a fresh
//! clone needs nothing but `cargo xtask test`.

mod build;
mod run;
mod setup;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(bin_name = "cargo xtask", about = "Build, test and run lb")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing: LLVM 22, bpf-linker 0.13.0, nightly rust-src, iproute2.
    Setup,
    /// Build the eBPF objects (always release) and the userspace workspace.
    Build {
        /// Build the userspace in release mode.
        #[arg(long)]
        release: bool,
    },
    /// Build everything, mount bpffs and run `cargo test --workspace` (needs root).
    Test {
        /// Only run tests whose name contains this string.
        filter: Option<String>,
        /// Arguments for the test binaries, e.g. `-- --nocapture`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build in release mode and run the benchmark (needs root): markdown
    /// tables on stdout, all figures in target/bench/report.json.
    Bench {
        /// Fewer rounds and shorter runs (under two minutes).
        #[arg(long)]
        quick: bool,
        /// Only these sections (comma-separated: packet,live,versus,control,skew).
        #[arg(long)]
        only: Option<String>,
        /// More arguments for the bench binary.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build and run the namespace demo (needs root).
    Demo {
        /// Arguments for the demo binary.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

/// Does nothing: installed for SIGINT/SIGTERM so xtask outlives its child.
extern "C" fn wait_for_child(_: libc::c_int) {}

fn main() {
    let cli = Cli::parse();
    // Ctrl-C reaches the whole process group: let the child (a test run, the
    // demo) clean up and exit, and report its status, instead of returning
    // to the shell while it still prints. A handler (unlike SIG_IGN) is reset
    // to the default in the child at exec.
    // SAFETY: the handler is async-signal-safe (it does nothing).
    unsafe {
        libc::signal(
            libc::SIGINT,
            wait_for_child as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            wait_for_child as *const () as libc::sighandler_t,
        );
    }
    if let Err(e) = dispatch(cli.command) {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Setup => {
            setup::ensure()?;
            println!("toolchain ready");
            Ok(())
        }
        Command::Build { release } => build::all(release),
        Command::Test { filter, args } => run::test(filter, args),
        Command::Bench {
            quick,
            only,
            mut args,
        } => {
            if quick {
                args.push("--quick".into());
            }
            if let Some(only) = only {
                args.extend(["--only".into(), only]);
            }
            run::bench(args)
        }
        Command::Demo { args } => run::demo(args),
    }
}

/// The repository root: xtask lives one level below it.
fn repo_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("xtask sits inside the repository")
        .to_path_buf()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command with inherited stdio and turns a non-zero exit into an error.
fn status(cmd: &mut std::process::Command) -> Result<()> {
    let shown = show(cmd);
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("could not start `{shown}`: {e}"))?;
    anyhow::ensure!(status.success(), "`{shown}` failed ({status})");
    Ok(())
}

/// The command line as a user would type it, for error messages.
fn show(cmd: &std::process::Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
