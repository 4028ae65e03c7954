//! Atomic read-modify-writes on map memory shared by every CPU. Rust's BPF
//! target declares no compare-and-swap, so core's atomic types offer no
//! read-modify-write at all; the intrinsics lower to the kernel's
//! `BPF_ATOMIC` instructions.
//!
//! An add whose result is unused may be relaxed: it becomes the plain
//! `lock +=`. A fetch whose result is used must not be relaxed: LLVM then
//! emits the same non-fetching instruction and the "old value" it returns
//! is the operand. `integration-test/tests/schedulers.rs` checks the
//! emitted instructions.

use core::intrinsics::{self, AtomicOrdering};

/// `*p += n`, atomically; nothing returned.
#[inline(always)]
pub fn add(p: *mut u64, n: u64) {
    unsafe { intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, n) };
}

/// `*p &= bits`, atomically; nothing returned.
#[inline(always)]
pub fn and(p: *mut u64, bits: u64) {
    unsafe { intrinsics::atomic_and::<u64, u64, { AtomicOrdering::Relaxed }>(p, bits) };
}

/// `*p |= bits`, atomically; returns the value before.
#[inline(always)]
pub fn fetch_or(p: *mut u64, bits: u64) -> u64 {
    unsafe { intrinsics::atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(p, bits) }
}
