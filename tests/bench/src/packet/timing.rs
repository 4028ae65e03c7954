//! Running programs through `BPF_PROG_TEST_RUN` on a chosen CPU, and the
//! statistics of the rounds.

use anyhow::{ensure, Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
pub use lb_lab::cpu::{pin, Affinity};

/// One `BPF_PROG_TEST_RUN` call without copying the output back: the XDP
/// action of the last repetition and the kernel's ns per repetition (whole
/// ns: the kernel divides its total by `repeat` in integers).
pub fn test_run(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, u64)> {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value, r.duration.as_nanos() as u64))
}

/// `test_run`, failing unless the program ended in `expect`.
pub fn run_expect(prog: &Xdp, frame: &[u8], repeat: u32, expect: u32) -> Result<u64> {
    let (action, ns) = test_run(prog, frame, repeat)?;
    ensure!(
        action == expect,
        "XDP action {action} where the scenario expects {expect}"
    );
    Ok(ns)
}

/// Mean kernel ns of one run over `frames[warm..]`, one `repeat=1` call per
/// frame (the first `warm` frames run untimed first). A single frame serves
/// every call.
pub fn per_call(
    prog: &Xdp,
    frames: &[Vec<u8>],
    calls: usize,
    warm: usize,
    expect: u32,
) -> Result<f64> {
    let frame = |i: usize| &frames[i % frames.len()][..];
    for i in 0..warm {
        run_expect(prog, frame(i), 1, expect)?;
    }
    let mut total = 0u64;
    for i in warm..warm + calls {
        total += run_expect(prog, frame(i), 1, expect)?;
    }
    Ok(total as f64 / calls as f64)
}

/// The CPU the bench measures on (`BPF_PROG_TEST_RUN` runs an XDP program on
/// the calling CPU), and the one it loads maps and walks tables on, so that
/// the kernel work this causes (deferred map frees) stays off the measured
/// CPU. With a single CPU they are the same.
pub const MEASURE_CPU: usize = 0;

pub fn housekeeping_cpu() -> usize {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        1
    } else {
        0
    }
}

/// Runs `f` on the measured CPU, then moves back to the housekeeping one.
pub fn on_measure_cpu<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    pin(MEASURE_CPU)?;
    let out = f();
    pin(housekeeping_cpu())?;
    out
}

pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// Jiffies a CPU spent so far, from `/proc/stat`: user, nice, system, idle,
/// iowait, irq, softirq, steal.
pub fn cpu_times(cpu: usize) -> Option<[u64; 8]> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat
        .lines()
        .find(|l| l.starts_with(&format!("cpu{cpu} ")))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    v.try_into().ok()
}

/// Shares of a CPU's time between two `cpu_times`: interrupts and softirqs
/// (which the kernel's test-run timer counts when they land in its loop),
/// and time stolen by the hypervisor.
pub fn disturbance(before: &[u64; 8], after: &[u64; 8]) -> (f64, f64) {
    let d: Vec<f64> = after
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b) as f64)
        .collect();
    let total: f64 = d.iter().sum::<f64>().max(1.0);
    ((d[5] + d[6]) / total, d[7] / total)
}
