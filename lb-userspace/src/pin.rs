//! Where a balancer's kernel objects live on bpffs, so they outlive lbd:
//!
//! ```text
//! /sys/fs/bpf/lb/<interface>/v<MAP_LAYOUT_VERSION>/
//!     maps/<MAP>          every map the program uses (adopted on restart)
//!     prog                the balancer program
//!     link-native         the XDP link (or link-generic): keeps the program
//!                         attached while no lbd runs
//! ```
//!
//! The version directory is the map layout's: a daemon never adopts maps
//! whose layout it does not know.

use std::{
    fs,
    path::{Path, PathBuf},
};

use lb_common::MAP_LAYOUT_VERSION;

pub const BPFFS: &str = "/sys/fs/bpf";

/// The pin directory of the balancer on `interface`, for this build's layout.
pub fn pin_dir(bpffs: &Path, interface: &str) -> PathBuf {
    interface_dir(bpffs, interface).join(format!("v{MAP_LAYOUT_VERSION}"))
}

pub fn interface_dir(bpffs: &Path, interface: &str) -> PathBuf {
    bpffs.join("lb").join(interface)
}

/// Refuses pinned state of another map layout for the interface.
pub fn check_layout(bpffs: &Path, interface: &str) -> anyhow::Result<()> {
    let dir = interface_dir(bpffs, interface);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name != format!("v{MAP_LAYOUT_VERSION}") {
            anyhow::bail!(
                "{} holds pinned maps of another layout ({name}); this lbd uses map layout v{MAP_LAYOUT_VERSION} \
                 and cannot adopt them. Run the lbd version that made them, or remove them with \
                 `lbd detach --interface {interface}` (this drops the connection table) and start again",
                dir.join(&name).display()
            );
        }
    }
    Ok(())
}

/// Checks that `path` is on a bpf filesystem, mounting one at /sys/fs/bpf
/// when nothing is mounted there yet.
pub fn ensure_bpffs(path: &Path) -> anyhow::Result<()> {
    if is_bpffs(path) {
        return Ok(());
    }
    if path == Path::new(BPFFS) {
        let target = std::ffi::CString::new(BPFFS).expect("no NUL");
        let fstype = std::ffi::CString::new("bpf").expect("no NUL");
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc == 0 && is_bpffs(path) {
            return Ok(());
        }
    }
    anyhow::bail!(
        "{} is not a bpf filesystem; mount one with `mount -t bpf bpf {}`",
        path.display(),
        path.display()
    )
}

fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Removes everything pinned for an interface (all layouts). Unpinning the
/// link detaches the program once no process holds it.
pub fn remove_all(bpffs: &Path, interface: &str) -> anyhow::Result<bool> {
    let dir = interface_dir(bpffs, interface);
    if !dir.exists() {
        return Ok(false);
    }
    fs::remove_dir_all(&dir).map_err(|e| anyhow::anyhow!("removing {}: {e}", dir.display()))?;
    Ok(true)
}
