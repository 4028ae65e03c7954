//! Which CPU the calling thread runs on: per-CPU state in the programs (the
//! trace's and ICMP answers' token buckets, per-CPU counters) is only
//! predictable from a thread that stays on one CPU.

use std::mem::size_of;

use anyhow::{bail, ensure, Result};

/// Pins the calling thread to `cpu` and checks it is running there.
pub fn pin(cpu: usize) -> Result<()> {
    // SAFETY: `set` is a valid, initialised cpu_set_t of the size passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "sched_setaffinity(CPU {cpu}): {}",
                std::io::Error::last_os_error()
            );
        }
        let now = libc::sched_getcpu();
        ensure!(now == cpu as i32, "pinned to CPU {cpu}, running on {now}");
    }
    Ok(())
}

/// The calling thread's CPU affinity, put back when dropped (what runs
/// after must not inherit a pin).
pub struct Affinity(libc::cpu_set_t);

impl Affinity {
    pub fn save() -> Result<Affinity> {
        // SAFETY: as in `pin`.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
            }
            Ok(Affinity(set))
        }
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        // SAFETY: as in `pin`.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.0) };
    }
}
