//! Types shared by the bench-only XDP programs (`lb-ebpf`'s `lb-bench`) and
//! the benchmark in `tests/integration-test`. Nothing in the product uses them.

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
