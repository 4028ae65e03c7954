//! Loads and stores of 16- and 32-bit words of packet memory at any
//! alignment, one instruction each.
//!
//! LLVM's BPF backend splits every access it cannot prove aligned into
//! bytes (a `u32` becomes four loads, three shifts and three ors), and no
//! header word of a frame is aligned: Ethernet puts the IP header 14 bytes
//! in. The verifier accepts misaligned packet access on kernels whose
//! architecture has efficient unaligned access (x86-64, arm64), so these
//! emit the instruction itself. Not for the stack, where the verifier
//! requires alignment on every architecture.
//!
//! Values are in memory order (the target is little-endian): a field sent
//! in network byte order needs `from_be`, an address kept as sent needs
//! nothing.

use core::arch::asm;

/// # Safety
/// `p` must point at two readable bytes of packet memory the verifier has
/// seen bounds-checked.
#[inline(always)]
pub unsafe fn load16(p: *const u8) -> u16 {
    let v: u64;
    // SAFETY: the caller's contract; the instruction reads exactly 2 bytes.
    unsafe {
        asm!("{v} = *(u16 *)({p} + 0)", v = out(reg) v, p = in(reg) p,
             options(readonly, nostack, preserves_flags));
    }
    v as u16
}

/// # Safety
/// As [`load16`], for four bytes.
#[inline(always)]
pub unsafe fn load32(p: *const u8) -> u32 {
    let v: u64;
    // SAFETY: the caller's contract; the instruction reads exactly 4 bytes.
    unsafe {
        asm!("{v} = *(u32 *)({p} + 0)", v = out(reg) v, p = in(reg) p,
             options(readonly, nostack, preserves_flags));
    }
    v as u32
}

/// # Safety
/// `p` must point at two writable bytes of packet memory the verifier has
/// seen bounds-checked.
#[inline(always)]
pub unsafe fn store16(p: *mut u8, v: u16) {
    // SAFETY: the caller's contract; the instruction writes exactly 2 bytes.
    unsafe {
        asm!("*(u16 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) v as u64,
             options(nostack, preserves_flags));
    }
}

/// # Safety
/// As [`store16`], for four bytes.
#[inline(always)]
pub unsafe fn store32(p: *mut u8, v: u32) {
    // SAFETY: the caller's contract; the instruction writes exactly 4 bytes.
    unsafe {
        asm!("*(u32 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) v as u64,
             options(nostack, preserves_flags));
    }
}
