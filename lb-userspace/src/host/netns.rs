//! The network namespace lbd runs in, and what it must know about its mount
//! namespace.
//!
//! Several lbd (and decap) instances may share a host, one per network
//! namespace, each on an interface of the same name (`eth0` in every
//! container). Everything lb keeps on the host is therefore keyed by the
//! namespace as well as the interface. The key is the namespace's cookie
//! (`SO_NETNS_COOKIE`): the same for every process in the namespace, and,
//! unlike its inode number, never given to another namespace after this one
//! is gone, so a new namespace can never adopt a dead one's maps.

use std::{fmt, os::fd::AsRawFd, path::Path};

/// `SO_NETNS_COOKIE` from the kernel's socket options (the same number on
/// every architecture lb runs on); the libc crate does not name it.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// A network namespace, by its cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetnsId(pub u64);

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "netns-{}", self.0)
    }
}

impl NetnsId {
    /// The namespace of the calling thread.
    pub fn current() -> anyhow::Result<NetnsId> {
        // Any socket reports the cookie of the namespace it was made in.
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")
            .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))
            .map_err(|e| anyhow::anyhow!("opening a socket to learn the network namespace: {e}"))?;
        let mut cookie: u64 = 0;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: a valid socket fd and an out-buffer of the stated length.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            anyhow::bail!(
                "reading the network namespace cookie (SO_NETNS_COOKIE, Linux 5.14+): {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(NetnsId(cookie))
    }

    /// Parses the `netns-<cookie>` form [`Display`](fmt::Display) writes.
    pub fn parse(s: &str) -> Option<NetnsId> {
        s.strip_prefix("netns-")?.parse().ok().map(NetnsId)
    }
}

/// Whether this process's mount namespace is one that outlives it: the
/// host's (pid 1's), or at least one other process's. `ip netns exec` gives
/// its command a private one of its own, with `/sys` remounted, which ends
/// with the command, and with it anything mounted there.
pub fn mount_namespace_outlives_us() -> bool {
    let Some(ours) = ns_id("/proc/self/ns/mnt") else {
        // Unreadable (a restricted /proc): assume the host's, as before.
        return true;
    };
    if let Some(init) = ns_id("/proc/1/ns/mnt") {
        return ours == init;
    }
    // pid 1's namespaces may be closed to us (a sandboxed init): then any
    // other process in our mount namespace shows that it is shared.
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    procs.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.bytes().all(|b| b.is_ascii_digit())
            && name != me
            && ns_id(&format!("/proc/{name}/ns/mnt")) == Some(ours)
    })
}

fn ns_id(path: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(Path::new(path))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_agree() {
        let id = NetnsId(4097);
        assert_eq!(id.to_string(), "netns-4097");
        assert_eq!(NetnsId::parse("netns-4097"), Some(id));
        assert_eq!(NetnsId::parse("eth0"), None);
        assert_eq!(NetnsId::parse("netns-x"), None);
    }

    #[test]
    fn the_cookie_is_stable_within_a_namespace() {
        let a = NetnsId::current().expect("cookie");
        let b = NetnsId::current().expect("cookie");
        assert_eq!(a, b);
        assert_ne!(a.0, 0);
    }
}
