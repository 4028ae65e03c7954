//! The bench-only XDP programs of `tests/bench-ebpf` (see there): the
//! frame-restoring wrapper, the `XDP_PASS` and MAC-swap `XDP_TX` floors and
//! the counting-and-dropping receiver.

use anyhow::{Context, Result};
use aya::{
    maps::{Array, PerCpuArray, ProgramArray},
    programs::{ProgramFd, Xdp},
    Ebpf,
};
use bench_common::{BenchTemplate, BENCH_COUNT_BYTES, BENCH_COUNT_PACKETS, BENCH_FRAME_MAX};

/// Built by `cargo xtask build` (which `cargo xtask bench` runs first).
static OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../target/bpf/bpfel-unknown-none/release/bench-ebpf"
));

pub struct BenchProgs {
    ebpf: Ebpf,
}

/// Program names in the object.
pub const WRAPPER: &str = "bench_wrapper";
pub const PASS: &str = "bench_pass";
pub const TX: &str = "bench_tx";
pub const COUNT: &str = "bench_count";

impl BenchProgs {
    /// Loads all four programs (none is attached).
    pub fn load() -> Result<BenchProgs> {
        let mut ebpf = Ebpf::load(OBJECT).context("loading bench-ebpf")?;
        for name in [WRAPPER, PASS, TX, COUNT] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("{name} not in bench-ebpf"))?
                .try_into()?;
            prog.load().with_context(|| format!("loading {name}"))?;
        }
        Ok(BenchProgs { ebpf })
    }

    pub fn prog(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("{name} not in bench-ebpf"))?
            .try_into()?)
    }

    /// Points the wrapper's tail call at `target` (any loaded XDP program,
    /// e.g. the balancer's, or [`PASS`] to measure the wrapper itself).
    pub fn set_target(&mut self, target: &ProgramFd) -> Result<()> {
        let mut arr =
            ProgramArray::try_from(self.ebpf.map_mut("BENCH_TARGET").context("BENCH_TARGET")?)?;
        arr.set(0, target, 0)
            .context("setting the wrapper's target")
    }

    /// The target is one of this object's own programs.
    pub fn set_own_target(&mut self, name: &str) -> Result<()> {
        let fd = self.prog(name)?.fd()?.try_clone()?;
        self.set_target(&fd)
    }

    /// The frame the wrapper restores before each run; `vary_off` (0: none)
    /// is the offset of a 4-byte word set to `vary_base + n` on the n-th run.
    pub fn set_template(&mut self, frame: &[u8], vary_off: u32, vary_base: u32) -> Result<()> {
        anyhow::ensure!(
            !frame.is_empty() && frame.len() <= BENCH_FRAME_MAX,
            "bench frames are 1..={BENCH_FRAME_MAX} bytes, not {}",
            frame.len()
        );
        let mut data = [0u8; BENCH_FRAME_MAX];
        data[..frame.len()].copy_from_slice(frame);
        let t = BenchTemplate {
            len: frame.len() as u32,
            vary_off,
            vary_base,
            _pad: 0,
            data,
        };
        let mut arr: Array<_, BenchTemplate> = Array::try_from(
            self.ebpf
                .map_mut("BENCH_TEMPLATE")
                .context("BENCH_TEMPLATE")?,
        )?;
        arr.set(0, t, 0).context("writing the template")
    }

    /// Packets and bytes [`COUNT`] has seen, over all CPUs.
    pub fn counted(&self) -> Result<(u64, u64)> {
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("BENCH_COUNTS").context("BENCH_COUNTS")?)?;
        let sum = |i: u32| -> Result<u64> { Ok(arr.get(&i, 0)?.iter().sum()) };
        Ok((sum(BENCH_COUNT_PACKETS)?, sum(BENCH_COUNT_BYTES)?))
    }
}
