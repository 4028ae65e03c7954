//! Calibrates the balancer's clock (`lb_common::clock`) at load time: the
//! clock probe reads the tick counter and CLOCK_MONOTONIC together, and two
//! tick edges four ticks apart give the tick length and the offset.

use std::time::{Duration, Instant};

use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use lb_common::clock::{calibrate, TickEdge};

use super::error::{MapsError, Result};

/// Ticks between the two edges of the first attempt (4 ms at 1000 Hz, 40 ms
/// at 100 Hz): an edge read a few µs late is then well inside the
/// tolerance. Each further attempt doubles it, for a reader that was
/// preempted at an edge (a busy VM).
const SPAN_TICKS: u64 = 4;
const ATTEMPTS: u32 = 3;
/// Longest wait for one attempt's edges (16 ticks at 24 Hz are 667 ms):
/// reached only if the tick counter stands still.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(2);

/// The balancer clock's tick length and offset, in ns.
pub(super) fn measure() -> Result<(u64, u64)> {
    let mut ebpf = Ebpf::load(crate::objects::CLOCK)?;
    let prog: &mut Xdp = ebpf
        .program_mut("lb_clock")
        .ok_or_else(|| MapsError::Clock("the clock probe is missing".into()))?
        .try_into()?;
    prog.load()?;
    for n in 0..ATTEMPTS {
        if let Some(clock) = attempt(prog, SPAN_TICKS << n)? {
            return Ok(clock);
        }
    }
    Err(MapsError::Clock(format!(
        "{ATTEMPTS} measurements of the kernel's tick were no tick rate's \
         (readings delayed: an overloaded machine?)"
    )))
}

fn attempt(prog: &Xdp, span: u64) -> Result<Option<(u64, u64)>> {
    let deadline = Instant::now() + ATTEMPT_LIMIT;
    let start = read(prog)?;
    let first = next_edge(prog, start.ticks, deadline)?;
    let mut last = first;
    while last.ticks < first.ticks + span {
        last = next_edge(prog, last.ticks, deadline)?;
    }
    Ok(calibrate(first, last))
}

/// The first reading whose tick count is past `ticks`.
fn next_edge(prog: &Xdp, ticks: u64, deadline: Instant) -> Result<TickEdge> {
    loop {
        let r = read(prog)?;
        if r.ticks != ticks {
            return Ok(r);
        }
        if Instant::now() > deadline {
            return Err(MapsError::Clock(
                "the kernel's tick counter did not move".into(),
            ));
        }
    }
}

fn read(prog: &Xdp) -> Result<TickEdge> {
    // The smallest frame XDP test runs take is an Ethernet header.
    let input = [0u8; 64];
    let mut out = [0u8; 64];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(&input),
        data_out: Some(&mut out),
        ..Default::default()
    })?;
    if r.data_size_out < 16 {
        return Err(MapsError::Clock("the clock probe wrote nothing".into()));
    }
    let word = |i: usize| u64::from_ne_bytes(out[i..i + 8].try_into().unwrap());
    Ok(TickEdge {
        ticks: word(0),
        mono_ns: word(8),
    })
}
