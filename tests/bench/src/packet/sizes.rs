//! How big the programs are after verification, and (when `bpftool` is
//! installed) which calls their translated code makes.

use std::{collections::BTreeMap, process::Command};

use anyhow::Result;
use aya::programs::Xdp;

use crate::report::{Cell, Table};

pub struct Size {
    name: &'static str,
    /// Instructions after verification and rewriting (xlated).
    insns: Option<u32>,
    jited: u32,
    /// Instructions the verifier processed (all paths).
    verified: Option<u32>,
    /// Calls in the xlated code by callee, or why they are unknown.
    calls: std::result::Result<BTreeMap<String, usize>, String>,
}

pub fn of(name: &'static str, prog: &Xdp) -> Result<Size> {
    let info = prog.info()?;
    Ok(Size {
        name,
        insns: info.size_translated().map(|bytes| bytes / 8),
        jited: info.size_jitted(),
        verified: info.verified_instruction_count(),
        calls: xlated_calls(info.id()),
    })
}

/// Counts the `call` instructions of `bpftool prog dump xlated`, by callee
/// (helpers, and the map lookups the kernel did not inline). Static counts:
/// every call site once, whichever path a packet takes.
fn xlated_calls(id: u32) -> std::result::Result<BTreeMap<String, usize>, String> {
    let out = Command::new("bpftool")
        .args(["prog", "dump", "xlated", "id", &id.to_string()])
        .output()
        .map_err(|e| format!("bpftool: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "bpftool: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut calls = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // e.g. "  42: (85) call bpf_map_lookup_elem#1"
        if let Some((_, callee)) = line.split_once(") call ") {
            let name = callee.split('#').next().unwrap_or(callee).trim();
            // "pc+N": a call to a BPF subprogram of the same program.
            let name = if name.starts_with("pc") {
                "(BPF subprogram)"
            } else {
                name
            };
            *calls.entry(name.to_string()).or_insert(0) += 1;
        }
    }
    Ok(calls)
}

pub fn table(sizes: &[Size]) -> Table {
    let mut t = Table::new(
        "packet: program sizes",
        &[
            "program",
            "instructions (xlated)",
            "JITed bytes",
            "verifier processed",
            "calls (static)",
            "calls by callee",
        ],
    );
    let opt = |v: Option<u32>| v.map_or(Cell::None, |n| Cell::num(n as f64, 0));
    for s in sizes {
        let (total, detail) = match &s.calls {
            Ok(c) => (
                Cell::num(c.values().sum::<usize>() as f64, 0),
                Cell::text(
                    c.iter()
                        .map(|(k, v)| format!("{k} ×{v}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            ),
            Err(e) => (Cell::None, Cell::text(e.clone())),
        };
        t.row(vec![
            Cell::text(s.name),
            opt(s.insns),
            Cell::num(s.jited as f64, 0),
            opt(s.verified),
            total,
            detail,
        ]);
    }
    t.note(
        "Calls are counted in `bpftool prog dump xlated` (every call site once); array and \
         per-CPU array lookups the kernel inlines are not calls.",
    );
    t
}
