//! Calibrates the balancer's clock (`lb_common::clock`) at load time: the
//! clock probe reads the tick counter and CLOCK_MONOTONIC together, readings
//! `MIN_SPAN_TICKS` apart give the tick length, and the earliest reading in
//! its tick gives the offset. A reader delayed (a loaded machine) only makes
//! its readings later inside their ticks, which both allow for.

use std::time::{Duration, Instant};

use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use lb_common::clock::{calibrate_tick, earliest_offset, TickEdge, MIN_SPAN_TICKS};

use super::error::{MapsError, Result};

/// Longest wait for the readings (16 ticks at 100 Hz are 160 ms): reached
/// only if the tick counter stands still.
const LIMIT: Duration = Duration::from_secs(2);

/// The balancer clock's tick length and offset, in ns.
pub(super) fn measure() -> Result<(u64, u64)> {
    let mut ebpf = Ebpf::load(crate::objects::CLOCK)?;
    let prog: &mut Xdp = ebpf
        .program_mut("lb_clock")
        .ok_or_else(|| MapsError::Clock("the clock probe is missing".into()))?
        .try_into()?;
    prog.load()?;
    let deadline = Instant::now() + LIMIT;
    let first = read(prog)?;
    let mut readings = vec![first];
    let mut last = first;
    while last.ticks < first.ticks + MIN_SPAN_TICKS {
        if Instant::now() > deadline {
            return Err(MapsError::Clock(
                "the kernel's tick counter did not move".into(),
            ));
        }
        last = read(prog)?;
        // The first reading in each tick: the one closest to its start.
        if readings.last().is_some_and(|r| r.ticks != last.ticks) {
            readings.push(last);
        }
    }
    let tick_ns = calibrate_tick(first, last).ok_or_else(|| {
        MapsError::Clock(format!(
            "{} ns per tick over {} ticks is no tick rate of this kernel's kind",
            last.mono_ns.saturating_sub(first.mono_ns) / (last.ticks - first.ticks),
            last.ticks - first.ticks
        ))
    })?;
    let offset_ns = earliest_offset(tick_ns, readings).expect("at least one reading");
    Ok((tick_ns, offset_ns))
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
