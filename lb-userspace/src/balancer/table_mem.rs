//! The `MAGLEV` array mapped into our memory (`BPF_F_MMAPABLE`): a table is
//! written with plain stores instead of one `bpf()` call per slot, so a
//! 65537-slot table costs microseconds, not tens of milliseconds, and a
//! config of a thousand VIPs applies in well under a second.
//!
//! Safe because of how tables are switched (see the `balancer` module): user space only
//! writes the half of a VIP's region that the data path does not read, and
//! makes it live afterwards with a map update (a syscall, after a fence).
//! Each slot is a naturally aligned `u32`, written whole.
//!
//! The kernel stores array values 8-byte aligned, so a `u32` slot takes 8
//! bytes of the mapping (and of memory).

use std::{
    io,
    os::fd::BorrowedFd,
    sync::atomic::{AtomicU32, Ordering},
};

use super::mapping::Mapping;

/// Bytes between array values in the kernel's layout (`round_up(4, 8)`).
const STRIDE: usize = 8;

pub struct TableMem {
    mem: Mapping,
    entries: u32,
}

impl TableMem {
    /// Maps an array map of `entries` u32 values created with
    /// `BPF_F_MMAPABLE`.
    pub fn map(fd: BorrowedFd<'_>, entries: u32) -> io::Result<TableMem> {
        Ok(TableMem {
            mem: Mapping::new(fd, entries as usize * STRIDE)?,
            entries,
        })
    }

    fn slot(&self, i: u32) -> Option<&AtomicU32> {
        let words = STRIDE / 4;
        // SAFETY: in bounds of the mapping, which lives as long as `self`.
        (i < self.entries)
            .then(|| unsafe { &*self.mem.base::<AtomicU32>().add(i as usize * words) })
    }

    pub fn get(&self, i: u32) -> Option<u32> {
        self.slot(i).map(|s| s.load(Ordering::Relaxed))
    }

    /// `false` when `i` is out of range.
    pub fn set(&self, i: u32, value: u32) -> bool {
        self.slot(i)
            .map(|s| s.store(value, Ordering::Relaxed))
            .is_some()
    }

    /// Orders every store before whatever makes them live.
    pub fn publish(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
    }
}
