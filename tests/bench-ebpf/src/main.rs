//! Bench-only XDP programs, loaded by `cargo xtask bench` and nothing else.
//!
//! - `bench_wrapper` restores the frame from a template and tail-calls the
//!   program under test, so that every one of a million `BPF_PROG_TEST_RUN`
//!   repetitions (or recycled live-frame pages) is the same packet, not the
//!   previous run's output. Its own cost is measured by pointing it at
//!   `bench_pass` and subtracted.
//! - `bench_pass` (returns `XDP_PASS`) and `bench_tx` (swaps the MACs and
//!   returns `XDP_TX`) are the floors the balancer is compared with.
//! - `bench_count` counts and drops what arrives: the receiving end of the
//!   live packet-rate bench.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_store_bytes},
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
    EbpfContext,
};
use bench_common::{BenchTemplate, BENCH_COUNT_BYTES, BENCH_COUNT_PACKETS, BENCH_FRAME_MAX};
use lb_ebpf::ptr_at;

/// The frame the wrapper restores before each run, written by the bench.
#[map]
static BENCH_TEMPLATE: Array<BenchTemplate> = Array::with_max_entries(1, 0);

/// Runs so far on this CPU, for `vary_off`.
#[map]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Slot 0: the program under test.
#[map]
static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Packets and bytes the counting receiver dropped, per CPU
/// (`BENCH_COUNT_PACKETS`, `BENCH_COUNT_BYTES`).
#[map]
static BENCH_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

#[xdp]
pub fn bench_wrapper(ctx: XdpContext) -> u32 {
    if restore(&ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: on success the tail call does not return; on failure (no
    // target loaded) we fall through to ABORTED, which the bench reports.
    unsafe { BENCH_TARGET.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

/// Puts the template frame back: the head where it was (the program under
/// test may have pushed or pulled headers) and every byte as it was, then the
/// per-run source word. Only the head is put back, so with `repeat > 1` a
/// template must be a frame whose tail the program leaves alone: the
/// balancer trims Ethernet padding, so templates carry none. (Live frames
/// get their pointers reset by the kernel, and are not affected.)
#[inline(always)]
fn restore(ctx: &XdpContext) -> Option<()> {
    let t = BENCH_TEMPLATE.get_ptr_mut(0)?;
    let len = unsafe { (*t).len } as usize;
    if len == 0 || len > BENCH_FRAME_MAX {
        return None;
    }
    // Through the stack, so the compiler cannot fold the subtraction into
    // pointer arithmetic (`data + len`), which the verifier refuses.
    let cur = (ctx.data_end() - ctx.data()) as u32;
    let cur = unsafe { core::ptr::read_volatile(&cur) };
    let delta = cur as i32 - len as i32;
    if delta != 0 && unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, delta) } != 0 {
        return None;
    }
    let data = unsafe { (*t).data.as_mut_ptr() };
    if unsafe { bpf_xdp_store_bytes(ctx.as_ptr() as *mut _, 0, data as *mut _, len as u32) } != 0 {
        return None;
    }
    let off = unsafe { (*t).vary_off } as usize;
    if off != 0 {
        let seq = BENCH_SEQ.get_ptr_mut(0)?;
        let n = unsafe {
            *seq = (*seq).wrapping_add(1);
            *seq
        };
        let word: *mut [u8; 4] = ptr_at(ctx, off)?;
        unsafe { *word = (*t).vary_base.wrapping_add(n).to_be_bytes() };
    }
    Some(())
}

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_tx(ctx: XdpContext) -> u32 {
    let Some(eth) = ptr_at::<[u8; 12]>(&ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: ptr_at checked the 12 bytes lie inside the frame.
    unsafe {
        let mut m = *eth;
        m.rotate_left(6);
        *eth = m;
    }
    xdp_action::XDP_TX
}

#[xdp]
pub fn bench_count(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    if let Some(p) = BENCH_COUNTS.get_ptr_mut(BENCH_COUNT_PACKETS) {
        unsafe { *p += 1 };
    }
    if let Some(b) = BENCH_COUNTS.get_ptr_mut(BENCH_COUNT_BYTES) {
        unsafe { *b += len };
    }
    xdp_action::XDP_DROP
}
