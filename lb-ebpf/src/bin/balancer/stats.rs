//! Stage 8: counters. Per-CPU arrays, so an increment is a plain add on this
//! CPU's copy; user space sums the copies.

use lb_common::{Counter, TrafficStats};

use crate::{action, maps, Out};

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(v) = maps::STATS.get_ptr_mut(c as u32) {
        unsafe { *v += 1 };
    }
}

/// Counts a packet's action and reason, and returns the XDP action.
#[inline(always)]
pub fn finish(out: Out) -> u32 {
    match out {
        Out::Pass(reason) => {
            count(Counter::ActionPass);
            count(reason);
        }
        Out::Drop(reason) => {
            count(Counter::ActionDrop);
            count(reason);
        }
        Out::TooBig(_) => {
            count(Counter::ActionDrop);
            count(Counter::DropTooBig);
        }
        Out::Tx => count(Counter::ActionTx),
        Out::Redirect => count(Counter::ActionRedirect),
    }
    action(out)
}

/// Adds one packet of `bytes` to a VIP's or backend's traffic.
#[inline(always)]
pub fn add_traffic(map: &aya_ebpf::maps::PerCpuArray<TrafficStats>, index: u32, bytes: u64) {
    if let Some(t) = map.get_ptr_mut(index) {
        unsafe {
            (*t).packets += 1;
            (*t).bytes += bytes;
        }
    }
}
