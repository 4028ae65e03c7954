//! The audit log: one JSON line per change request (who, what, result) in
//! `state_dir/audit.log`, mirrored to the daemon's log.

use std::{
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Serialize;

/// Who asked, from the socket's peer credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

#[derive(Serialize)]
struct Record<'a> {
    /// RFC 3339, UTC.
    time: String,
    uid: u32,
    pid: i32,
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
        let rec = Record {
            time,
            uid: peer.uid,
            pid: peer.pid,
            change,
            result,
        };
        tracing::info!(uid = peer.uid, pid = peer.pid, change = %change, result, "audit");
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
