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
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

/// Bytes between array values in the kernel's layout (`round_up(4, 8)`).
const STRIDE: usize = 8;

pub struct TableMem {
    base: NonNull<AtomicU32>,
    entries: u32,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; all
// access goes through atomics.
unsafe impl Send for TableMem {}
// SAFETY: as for Send: shared references only reach the memory through
// atomics.
unsafe impl Sync for TableMem {}

impl TableMem {
    /// Maps an array map of `entries` u32 values created with
    /// `BPF_F_MMAPABLE`.
    pub fn map(fd: BorrowedFd<'_>, entries: u32) -> io::Result<TableMem> {
        let bytes = (entries as usize * STRIDE).max(1);
        // SAFETY: a fresh shared mapping of the map's memory; the kernel
        // checks the length against the map and the flag.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<AtomicU32>()).ok_or(io::ErrorKind::InvalidData)?;
        Ok(TableMem {
            base,
            entries,
            bytes,
        })
    }

    fn slot(&self, i: u32) -> Option<&AtomicU32> {
        let words = STRIDE / 4;
        // SAFETY: in bounds of the mapping, which lives as long as `self`.
        (i < self.entries).then(|| unsafe { &*self.base.as_ptr().add(i as usize * words) })
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

impl Drop for TableMem {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
