//! Where lb's kernel objects live on bpffs, so they outlive lbd:
//!
//! ```text
//! /sys/fs/bpf/lb/netns-<cookie>/<interface>/v<MAP_LAYOUT_VERSION>/
//!     maps/<MAP>          every map the balancer uses (adopted on restart)
//!     prog                the balancer program
//!     link-native         the XDP link (or link-generic): keeps the program
//!                         attached while no lbd runs
//! /sys/fs/bpf/lb-decap/netns-<cookie>/<interface>/
//!     link-native         the decap program's link (or link-generic)
//! ```
//!
//! Keyed by network namespace (see `netns`) and interface: lbd instances for
//! same-named interfaces in different namespaces never meet. The version
//! directory is the map layout's: a daemon never adopts maps whose layout it
//! does not know.
//!
//! Versions before the namespace key pinned at `/sys/fs/bpf/lb/<interface>/`
//! and `/sys/fs/bpf/lb-decap/<interface>/`. Such pins are taken over (moved
//! to the new place, connection table intact) only when their XDP link is the
//! one attached to this namespace's interface; otherwise they belong to some
//! other namespace's interface and are left alone.

use std::{
    fs,
    path::{Path, PathBuf},
};

use lb_common::MAP_LAYOUT_VERSION;

use super::{iface::Interface, netns::NetnsId};

pub const BPFFS: &str = "/sys/fs/bpf";

/// The names an XDP link is pinned under, by attach mode.
pub const LINK_PINS: [&str; 2] = ["link-native", "link-generic"];

/// Where one interface's objects go: bpffs, namespace, interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinPlace {
    pub bpffs: PathBuf,
    pub netns: NetnsId,
    pub interface: String,
}

impl PinPlace {
    /// The place for `interface` in the calling thread's namespace on the
    /// host's bpffs.
    pub fn current(interface: &str) -> anyhow::Result<PinPlace> {
        Ok(PinPlace {
            bpffs: PathBuf::from(BPFFS),
            netns: NetnsId::current()?,
            interface: interface.to_string(),
        })
    }

    /// `lb`: every balancer's pins, by namespace.
    fn balancer_root(&self) -> PathBuf {
        self.bpffs.join("lb")
    }

    /// `lb/netns-<cookie>`: every balancer of this namespace.
    fn netns_dir(&self) -> PathBuf {
        self.balancer_root().join(self.netns.to_string())
    }

    /// `lb/netns-<cookie>/<interface>`: the balancer's pins of every layout.
    pub fn interface_dir(&self) -> PathBuf {
        self.netns_dir().join(&self.interface)
    }

    /// The balancer's pin directory for this build's map layout.
    pub fn balancer_dir(&self) -> PathBuf {
        self.interface_dir().join(format!("v{MAP_LAYOUT_VERSION}"))
    }

    fn decap_root(&self) -> PathBuf {
        self.bpffs.join("lb-decap")
    }

    fn decap_netns_dir(&self) -> PathBuf {
        self.decap_root().join(self.netns.to_string())
    }

    /// Where the decap program's link is pinned.
    pub fn decap_dir(&self) -> PathBuf {
        self.decap_netns_dir().join(&self.interface)
    }

    /// Where versions before the namespace key pinned the balancer.
    pub fn legacy_balancer_dir(&self) -> PathBuf {
        self.bpffs.join("lb").join(&self.interface)
    }

    /// Where versions before the namespace key pinned decap.
    pub fn legacy_decap_dir(&self) -> PathBuf {
        self.bpffs.join("lb-decap").join(&self.interface)
    }

    /// Refuses pinned state of another map layout for the interface.
    pub fn check_layout(&self) -> anyhow::Result<()> {
        let dir = self.interface_dir();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name != format!("v{MAP_LAYOUT_VERSION}") {
                anyhow::bail!(
                    "{} holds pinned maps of another layout ({name}); this lbd uses map layout \
                     v{MAP_LAYOUT_VERSION} and cannot adopt them. Run the lbd version that made \
                     them, or remove them with `lbd detach --interface {}` (this drops the \
                     connection table) and start again",
                    dir.join(&name).display(),
                    self.interface
                );
            }
        }
        Ok(())
    }

    /// Removes the balancer's pins (all layouts). Unpinning the link
    /// detaches the program once no process holds it.
    pub fn remove_balancer(&self) -> anyhow::Result<bool> {
        let removed = remove_dir(&self.interface_dir())?;
        remove_if_empty(&self.netns_dir());
        remove_if_empty(&self.balancer_root());
        Ok(removed)
    }

    /// Removes the decap link's pin (detaching it).
    pub fn remove_decap(&self) -> anyhow::Result<bool> {
        let removed = remove_dir(&self.decap_dir())?;
        remove_if_empty(&self.decap_netns_dir());
        remove_if_empty(&self.decap_root());
        Ok(removed)
    }
}

/// What was found at a pre-namespace pin path.
#[derive(Debug, PartialEq, Eq)]
pub enum Legacy {
    /// Nothing there.
    None,
    /// Its link drives this namespace's interface: moved to the new place.
    Claimed { from: PathBuf, to: PathBuf },
    /// It does not (another namespace's interface of the same name, or an
    /// interface that is gone): left alone.
    Foreign { at: PathBuf, why: String },
}

/// Moves `legacy` (a directory holding a pinned XDP link, `link-*`, itself
/// or in a layout directory below it) to `to` when that link's program is
/// the one attached to `iface`; `to` must not exist yet.
pub fn claim_legacy(legacy: &Path, to: &Path, iface: &Interface) -> Legacy {
    if !legacy.is_dir() {
        return Legacy::None;
    }
    let foreign = |why: String| Legacy::Foreign {
        at: legacy.to_path_buf(),
        why,
    };
    if to.exists() {
        return foreign(format!("{} exists already", to.display()));
    }
    // The link of this build's layout, or of any other a version before
    // left (after the move, the layout check names what to do about it).
    let mut link_dirs = vec![legacy.to_path_buf()];
    if let Ok(entries) = fs::read_dir(legacy) {
        link_dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    let pinned: Vec<u32> = link_dirs
        .iter()
        .flat_map(|d| LINK_PINS.iter().map(move |n| d.join(n)))
        .filter(|p| p.exists())
        .filter_map(|p| link_program(&p).ok())
        .collect();
    let Some(attached) = iface.xdp_prog_id else {
        return foreign("no XDP program runs on this namespace's interface".into());
    };
    if !pinned.contains(&attached) {
        return foreign(format!(
            "its link does not drive this namespace's interface (program {attached} runs there)"
        ));
    }
    if let Some(parent) = to.parent() {
        if let Err(e) = fs::create_dir_all(parent) {
            return foreign(format!("creating {}: {e}", parent.display()));
        }
    }
    match fs::rename(legacy, to) {
        Ok(()) => Legacy::Claimed {
            from: legacy.to_path_buf(),
            to: to.to_path_buf(),
        },
        Err(e) => foreign(format!("moving it to {}: {e}", to.display())),
    }
}

/// The id of the program a pinned link runs.
fn link_program(path: &Path) -> anyhow::Result<u32> {
    let link = aya::programs::links::PinnedLink::from_pin(path)?;
    let fd_link = aya::programs::links::FdLink::from(link);
    Ok(fd_link.info()?.program_id())
}

/// Logs what [`claim_legacy`] did.
pub fn report_legacy(what: &str, legacy: &Legacy) {
    match legacy {
        Legacy::None => {}
        Legacy::Claimed { from, to } => tracing::info!(
            from = %from.display(),
            to = %to.display(),
            "took over the {what} pins an earlier lbd left for this interface"
        ),
        Legacy::Foreign { at, why } => tracing::warn!(
            at = %at.display(),
            "left the {what} pins at the pre-namespace path alone: {why}"
        ),
    }
}

fn remove_dir(dir: &Path) -> anyhow::Result<bool> {
    if !dir.exists() {
        return Ok(false);
    }
    fs::remove_dir_all(dir).map_err(|e| anyhow::anyhow!("removing {}: {e}", dir.display()))?;
    Ok(true)
}

fn remove_if_empty(dir: &Path) {
    // Fails harmlessly when another interface (or namespace) still has pins.
    let _ = fs::remove_dir(dir);
}

/// Checks that `path` is on a bpf filesystem that outlives lbd, mounting one
/// at /sys/fs/bpf when nothing is mounted there yet.
///
/// In a private mount namespace (`ip netns exec` makes one, and mounts a
/// fresh, empty bpffs in it) anything pinned would vanish with the
/// namespace when lbd exits, taking the pinned link and so the attached
/// program with it. There lbd accepts only the host's bpffs (the one pid 1
/// sees at the same path), and otherwise refuses, naming the fix.
pub fn ensure_bpffs(path: &Path) -> anyhow::Result<()> {
    if !crate::host::netns::mount_namespace_outlives_us() {
        let host = Path::new("/proc/1/root").join(path.strip_prefix("/").unwrap_or(path));
        if is_bpffs(path) && is_bpffs(&host) && same_filesystem(path, &host) {
            return Ok(());
        }
        anyhow::bail!(
            "{} is not the host's bpf filesystem: lbd runs in a private mount namespace (as under \
             `ip netns exec`), where anything pinned would vanish when lbd exits and detach the \
             program. Enter only the network namespace instead: \
             `nsenter --net=/run/netns/NAME lbd ...`",
            path.display()
        );
    }
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

fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(ns: u64, interface: &str) -> PinPlace {
        PinPlace {
            bpffs: PathBuf::from("/sys/fs/bpf"),
            netns: NetnsId(ns),
            interface: interface.into(),
        }
    }

    #[test]
    fn removing_the_last_pins_leaves_no_directory_behind() {
        let root = std::env::temp_dir().join(format!("lb-pin-removal-test-{}", std::process::id()));
        let at = |ns: u64, interface: &str| PinPlace {
            bpffs: root.clone(),
            ..place(ns, interface)
        };
        let (a, b) = (at(7, "eth0"), at(8, "eth0"));
        for p in [&a, &b] {
            fs::create_dir_all(p.balancer_dir()).unwrap();
            fs::create_dir_all(p.decap_dir()).unwrap();
        }
        assert!(a.remove_balancer().unwrap() && a.remove_decap().unwrap());
        // Another namespace still has pins: only a's own directories go.
        assert!(!a.netns_dir().exists() && !a.decap_netns_dir().exists());
        assert!(b.balancer_dir().exists() && b.decap_dir().exists());
        assert!(b.remove_balancer().unwrap() && b.remove_decap().unwrap());
        assert!(!root.join("lb").exists() && !root.join("lb-decap").exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn same_interface_name_in_two_namespaces_has_two_places() {
        let (a, b) = (place(7, "eth0"), place(8, "eth0"));
        assert_ne!(a.balancer_dir(), b.balancer_dir());
        assert_ne!(a.decap_dir(), b.decap_dir());
        assert_eq!(
            a.balancer_dir(),
            PathBuf::from(format!("/sys/fs/bpf/lb/netns-7/eth0/v{MAP_LAYOUT_VERSION}"))
        );
        assert_eq!(
            a.decap_dir(),
            PathBuf::from("/sys/fs/bpf/lb-decap/netns-7/eth0")
        );
        // The old place is the same for both: hence the ownership check.
        assert_eq!(a.legacy_balancer_dir(), b.legacy_balancer_dir());
    }

    #[test]
    fn legacy_pins_without_a_matching_link_are_left_alone() {
        let root = std::env::temp_dir().join(format!("lb-pin-test-{}", std::process::id()));
        let legacy = root.join("old");
        fs::create_dir_all(legacy.join("v2")).unwrap();
        let to = root.join("new");
        let iface = Interface {
            ifindex: 2,
            xdp_prog_id: Some(42),
            mtu: 1500,
            mac: [2, 0, 0, 0, 0, 1],
        };
        // No link pinned there: nothing proves it is this interface's.
        let r = claim_legacy(&legacy, &to, &iface);
        assert!(matches!(r, Legacy::Foreign { .. }), "{r:?}");
        assert!(legacy.exists() && !to.exists());
        assert_eq!(claim_legacy(&root.join("none"), &to, &iface), Legacy::None);
        fs::remove_dir_all(&root).unwrap();
    }
}
