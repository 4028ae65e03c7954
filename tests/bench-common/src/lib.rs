//! Types shared by the bench-only XDP programs (`tests/bench-ebpf`) and the
//! bench (`tests/bench`). Nothing in the product uses them.
//!
//! `no_std`, so the same definitions compile for `bpfel-unknown-none`; the
//! `user` feature adds what user space needs (`aya::Pod`).
#![cfg_attr(not(test), no_std)]

use core::mem::size_of;

/// Largest frame the bench wrapper can restore.
pub const BENCH_FRAME_MAX: usize = 256;

/// The frame the bench wrapper writes back before every run of the program
/// under test, because `BPF_PROG_TEST_RUN` with `repeat > 1` (and live frames
/// on recycled pages) would otherwise hand that program its own output.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BenchTemplate {
    /// Bytes of `data` that make the frame (1..=BENCH_FRAME_MAX).
    pub len: u32,
    /// When not 0: offset of a 4-byte field (a source address's last word)
    /// that gets `vary_base + n` (big-endian) on the n-th run on a CPU, so
    /// that every packet is a new flow.
    pub vary_off: u32,
    pub vary_base: u32,
    pub _pad: u32,
    pub data: [u8; BENCH_FRAME_MAX],
}
const _: () = assert!(size_of::<BenchTemplate>() == 16 + BENCH_FRAME_MAX);

/// Slots of the per-CPU counters of the counting-and-dropping receiver.
pub const BENCH_COUNT_PACKETS: u32 = 0;
pub const BENCH_COUNT_BYTES: u32 = 1;

// SAFETY: `#[repr(C)]`, `Copy`, integers and a byte array only, with the
// padding an explicit field: any bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for BenchTemplate {}
