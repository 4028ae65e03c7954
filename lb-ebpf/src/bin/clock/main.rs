//! The clock probe, for the loader only: reads the kernel's tick counter
//! (`jiffies`) and CLOCK_MONOTONIC at one moment, so that user space can
//! give the balancer the tick length and the offset that turn the one into
//! the other (`lb_common::clock::tick_clock_ns`). Run with `BPF_PROG_TEST_RUN` on a
//! buffer of at least 16 bytes: the first eight get the tick count, the next
//! eight the monotonic time in ns, both in host byte order.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::xdp,
    programs::XdpContext,
};
use lb_ebpf::ptr_at;

#[xdp]
pub fn lb_clock(ctx: XdpContext) -> u32 {
    let Some(out) = ptr_at::<[u64; 2]>(&ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    // The tick count first: the time read after it is at or past the tick
    // that set it.
    let (ticks, mono) = unsafe { (bpf_jiffies64(), bpf_ktime_get_ns()) };
    // SAFETY: `ptr_at` checked the sixteen bytes are inside the buffer.
    unsafe { core::ptr::write_unaligned(out, [ticks, mono]) };
    xdp_action::XDP_PASS
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
