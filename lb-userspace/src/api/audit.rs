//! The audit log: one JSON line per change request (who, what, result) in
//! `state_dir/audit.log`, mirrored to the daemon's log.
//!
//! Every attempt is recorded, refused ones too, so the trail is complete;
//! but a request is written only up to [`MAX_RECORDED`] bytes (with its full
//! size noted), so a client sending megabytes of garbage cannot turn the log
//! into a copy of it.

use std::{
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Serialize;

/// Who asked: a local process (the socket's peer credentials) or a TLS
/// client (its address and the identity its certificate gives it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// A TLS client: uid, gid and pid are 0 and mean nothing then.
    pub tls: Option<(std::net::SocketAddr, String)>,
}

impl Peer {
    pub fn local(uid: u32, gid: u32, pid: i32) -> Self {
        Peer {
            uid,
            gid,
            pid,
            tls: None,
        }
    }

    /// A TLS client; `identity` empty: it gave none lb knows.
    pub fn remote(addr: std::net::SocketAddr, identity: String) -> Self {
        Peer {
            uid: 0,
            gid: 0,
            pid: 0,
            tls: Some((addr, identity)),
        }
    }
}

/// How much of a request (and of a result) one audit entry keeps.
pub const MAX_RECORDED: usize = 4096;

/// A request as the audit log keeps it: whole when short, else its first
/// [`MAX_RECORDED`] bytes of JSON text and its size.
pub fn bounded(change: &serde_json::Value) -> serde_json::Value {
    let text = change.to_string();
    if text.len() <= MAX_RECORDED {
        return change.clone();
    }
    serde_json::json!({
        "truncated": true,
        "bytes": text.len(),
        "head": cut(&text, MAX_RECORDED),
    })
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Serialize)]
struct Record<'a> {
    /// RFC 3339, UTC.
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<i32>,
    /// A TLS client's address and certificate identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<&'a str>,
    change: &'a serde_json::Value,
    result: &'a str,
}

pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    pub fn new(state_dir: &Path) -> Self {
        AuditLog {
            path: state_dir.join("audit.log"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a change request and its outcome ("ok" or the error).
    pub fn record(&self, peer: &Peer, change: &serde_json::Value, result: &str) {
        let time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let change = &bounded(change);
        let long_result;
        let result = if result.len() > MAX_RECORDED {
            long_result = format!("{}... ({} bytes)", cut(result, MAX_RECORDED), result.len());
            long_result.as_str()
        } else {
            result
        };
        let local = peer.tls.is_none();
        let rec = Record {
            time,
            uid: local.then_some(peer.uid),
            pid: local.then_some(peer.pid),
            from: peer.tls.as_ref().map(|(a, _)| a.to_string()),
            identity: peer.tls.as_ref().map(|(_, i)| i.as_str()),
            change,
            result,
        };
        match &peer.tls {
            None => {
                tracing::info!(uid = peer.uid, pid = peer.pid, change = %change, result, "audit")
            }
            Some((addr, identity)) => {
                tracing::info!(from = %addr, identity, change = %change, result, "audit")
            }
        }
        let line = match serde_json::to_string(&rec) {
            Ok(l) => l,
            Err(e) => return tracing::error!("audit record: {e}"),
        };
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            tracing::error!("writing audit log {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_requests_are_kept_bounded_with_their_size() {
        let dir = std::env::temp_dir().join(format!("lb-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = AuditLog::new(&dir);
        let peer = Peer::local(0, 0, 1);
        let small = serde_json::json!({"op": "vip-del", "vip": "web"});
        log.record(&peer, &small, "ok");
        let garbage = serde_json::Value::String("é".repeat(50_000));
        log.record(&peer, &garbage, &"x".repeat(10_000));
        let text = std::fs::read_to_string(log.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "every attempt recorded");
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["change"], small, "short requests are kept whole");
        assert!(
            lines[1].len() < 3 * MAX_RECORDED,
            "{} bytes",
            lines[1].len()
        );
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["change"]["truncated"], true);
        assert_eq!(second["change"]["bytes"], 100_002);
        assert!(second["result"]
            .as_str()
            .unwrap()
            .ends_with("(10000 bytes)"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
