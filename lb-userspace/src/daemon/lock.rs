//! Locks: one lbd per interface of a network namespace: an exclusive `flock` on
//! `/run/lb/lbd-netns-<cookie>-<interface>.lock`, held for the daemon's life
//! and removed when it ends, so lock files do not pile up; and one lbd per
//! state directory (`<state_dir>/lbd.lock`).
//!
//! Removing a lock file races with a process that opened it just before and
//! waits to lock it: that process would then hold a lock on a file nobody
//! else can find. So a taker checks, once it holds the lock, that the path
//! still names the file it locked, and starts over if not; the holder
//! unlinks before it unlocks.

use std::{
    fs,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::Context;

use crate::host::netns::NetnsId;

/// Where lbd keeps its lock files.
pub const RUN_DIR: &str = "/run/lb";

/// The lock file for an interface of a namespace.
pub fn lock_path(run_dir: &Path, netns: NetnsId, interface: &str) -> PathBuf {
    run_dir.join(format!("lbd-{netns}-{interface}.lock"))
}

/// Holds a lock; dropping it removes the file and unlocks.
pub struct Lock {
    file: Option<fs::File>,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock of `interface` in `netns`; a second daemon for the same
    /// interface of the same namespace is refused, naming the holder.
    pub fn interface(run_dir: &Path, netns: NetnsId, interface: &str) -> anyhow::Result<Self> {
        let path = lock_path(run_dir, netns, interface);
        Self::take_path(path, |holder, path| {
            format!(
                "another lbd is already running for interface {interface} in this network \
                 namespace (pid {holder}; lock {})",
                path.display()
            )
        })
    }

    /// The routing table `[announce]` names, in this namespace: two lbd
    /// (on two interfaces) writing one table would fight over the routes
    /// of a shared VIP address.
    pub fn table(run_dir: &Path, netns: NetnsId, table: u32) -> anyhow::Result<Self> {
        let path = run_dir.join(format!("lbd-{netns}-table-{table}.lock"));
        Self::take_path(path, |holder, path| {
            format!(
                "[announce] table = {table} is used by another lbd in this network namespace \
                 (pid {holder}; lock {}): give each lbd a table of its own",
                path.display()
            )
        })
    }

    /// Takes the lock of a state directory: two daemons writing one state
    /// file would each adopt the other's changes.
    pub fn state_dir(state_dir: &Path) -> anyhow::Result<Self> {
        Self::take_path(state_dir.join("lbd.lock"), |holder, _| {
            format!(
                "state_dir {} is in use by another lbd (pid {holder}): give each lbd a \
                 state_dir of its own",
                state_dir.display()
            )
        })
    }

    fn take_path(path: PathBuf, busy: impl Fn(&str, &Path) -> String) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        loop {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: a valid fd we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                anyhow::bail!("{}", busy(holder.trim(), &path));
            }
            // The holder we waited for may have removed the file meanwhile.
            let same = match (file.metadata(), fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                continue;
            }
            file.set_len(0)?;
            fs::write(&path, format!("{}\n", std::process::id()))?;
            return Ok(Lock {
                file: Some(file),
                path,
            });
        }
    }

    /// Whether some process holds the lock now (without taking it for long).
    pub fn is_held(run_dir: &Path, netns: NetnsId, interface: &str) -> bool {
        let path = lock_path(run_dir, netns, interface);
        let Ok(file) = fs::File::open(&path) else {
            return false;
        };
        // SAFETY: a valid fd we own; released when `file` closes.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lb-lock-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn one_holder_per_namespace_and_interface_and_no_file_left() {
        let dir = run_dir("one");
        let a = Lock::interface(&dir, NetnsId(1), "eth0").expect("first");
        let err = Lock::interface(&dir, NetnsId(1), "eth0")
            .err()
            .expect("refused");
        assert!(err.to_string().contains("already running"), "{err}");
        // Same interface name, other namespace: its own lock.
        let b = Lock::interface(&dir, NetnsId(2), "eth0").expect("other namespace");
        assert!(Lock::is_held(&dir, NetnsId(1), "eth0"));
        drop(a);
        drop(b);
        assert!(!Lock::is_held(&dir, NetnsId(1), "eth0"));
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "lock files left");
        fs::remove_dir_all(&dir).unwrap();
    }
}
