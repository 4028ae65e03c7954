//! `cargo xtask bench [--quick] [-- --only SECTION,...]`: how fast lb is,
//! always next to a baseline measured in the same run (times on shared
//! machines drift; ratios within one run hold). Nothing here asserts a time;
//! what is checked is that each scenario really took the path it claims.
//!
//! Sections, each in its own module:
//! - `packet`: per-packet cost through `BPF_PROG_TEST_RUN`, against the
//!   `XDP_PASS` and MAC-swap `XDP_TX` floors.
//! - `live`: packets/s through real veth devices with live frames.
//! - `versus`: lb against HAProxy and nftables DNAT, HTTP through namespaces.
//! - `control`: Maglev builds, applying changes, memory.
//! - `skew`: Maglev, round-robin and least-connections in front of one
//!   slow backend: latency and open connections per backend.
//!
//! Prints one markdown table per measurement and writes them all to
//! `target/bench/report.json`.

mod control;
mod live;
mod packet;
mod progs;
mod report;
mod skew;
mod versus;

use std::{path::PathBuf, time::Instant};

use anyhow::{bail, Result};

use crate::report::Table;

/// Options every section sees.
#[derive(Clone, Copy, Debug)]
pub struct Opts {
    /// Fewer rounds and shorter runs: the whole bench in under two minutes.
    pub quick: bool,
}

type Section = fn(&Opts) -> Result<Vec<Table>>;

const SECTIONS: &[(&str, Section)] = &[
    ("packet", packet::run),
    ("live", live::run),
    ("versus", versus::run),
    ("control", control::run),
    ("skew", skew::run),
];

/// An error once the bench was asked to stop (Ctrl-C, SIGTERM): sections
/// call it between rounds, so their guards clean up on the way out.
pub fn interrupted() -> Result<()> {
    Ok(lb_lab::interrupt::check()?)
}

const USAGE: &str = "usage: bench [--quick] [--only packet,live,versus,control,skew]";

fn main() -> Result<()> {
    let mut opts = Opts { quick: false };
    let mut only: Option<Vec<String>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--only" => match args.next() {
                Some(list) => only = Some(list.split(',').map(str::to_string).collect()),
                None => bail!("--only needs a list of sections\n{USAGE}"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if let Some(list) = &only {
        for name in list {
            if !SECTIONS.iter().any(|(n, _)| n == name) {
                bail!("unknown section {name:?}\n{USAGE}");
            }
        }
    }

    // SAFETY: a plain syscall on the calling thread, before any other thread
    // exists, so every thread the bench starts inherits the namespace and
    // nothing it does can reach the host's network.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!(
            "unshare(CLONE_NEWNET): {} (run as root)",
            std::io::Error::last_os_error()
        );
    }

    // Before anything is measured, so an install does not land in a section.
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|n| n == name));
    if wanted("packet") || wanted("versus") {
        if let Err(e) = versus::tools::ensure_installed() {
            // `versus` fails on its own when it needs them; `packet` only
            // loses its call counts.
            println!("installing the bench's tools: {e:#}\n");
        }
    }

    lb_lab::interrupt::install();
    let started = Instant::now();
    let machine = report::machine();
    println!(
        "# lb bench{}\n\nkernel {}, {} online CPUs ({} possible), {}\n",
        if opts.quick { " (--quick)" } else { "" },
        machine["kernel"].as_str().unwrap_or("?"),
        machine["online_cpus"],
        machine["possible_cpus"],
        machine["cpu"].as_str().unwrap_or("?"),
    );
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (name, run) in SECTIONS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|n| n == name)) {
            continue;
        }
        if interrupted().is_err() {
            failed.push(*name);
            continue;
        }
        let t = Instant::now();
        println!("## {name}\n");
        match run(&opts) {
            Ok(tables) => {
                for table in &tables {
                    println!("{}", table.markdown());
                }
                println!("({name}: {:.0} s)\n", t.elapsed().as_secs_f64());
                done.push((*name, tables));
            }
            Err(e) => {
                println!("{name} FAILED: {e:#}\n");
                failed.push(*name);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench/report.json");
    // An interrupted run keeps the last whole report.
    interrupted()?;
    report::save(&path, opts.quick, &done, seconds)?;
    println!(
        "bench: {seconds:.0} s; report in target/bench/report.json (load average {})",
        report::load_average()
    );
    if !failed.is_empty() {
        bail!("sections failed: {}", failed.join(", "));
    }
    Ok(())
}
