//! A BPF array made with `BPF_F_MMAPABLE`, mapped into our memory: what
//! `table_mem` and `conns` build on. The mapping lives as long as this
//! value; what may be stored through it, and how, is theirs to say.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
};

pub struct Mapping {
    base: NonNull<u8>,
    bytes: usize,
}

// SAFETY: plain shared memory owned by this value; the types built on it
// reach it only through atomics.
unsafe impl Send for Mapping {}
// SAFETY: as for Send.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `bytes` of the map behind `fd`, read and write.
    pub fn new(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<Mapping> {
        let bytes = bytes.max(1);
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
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(io::ErrorKind::InvalidData)?;
        Ok(Mapping { base, bytes })
    }

    /// The start of the mapping (page-aligned).
    pub fn base<T>(&self) -> *mut T {
        self.base.as_ptr().cast()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
