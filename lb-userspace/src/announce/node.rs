//! The node's own state on disk (`<state_dir>/node.json`): whether it is
//! drained, and since when. Kept apart from the desired state because it
//! belongs to this node, not to the VIPs every node serves alike.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub drained: bool,
    /// Seconds since the Unix epoch of the last drain or undrain.
    #[serde(default)]
    pub since: u64,
}

impl NodeState {
    pub fn since(&self) -> Option<SystemTime> {
        (self.since != 0).then(|| UNIX_EPOCH + Duration::from_secs(self.since))
    }
}

pub fn node_file(state_dir: &Path) -> PathBuf {
    state_dir.join("node.json")
}

/// The saved state; a missing file is a node that was never drained.
pub fn load(state_dir: &Path) -> anyhow::Result<NodeState> {
    let path = node_file(state_dir);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a valid lbd node file: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeState::default()),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// Writes the state atomically and durably: a temporary file, fsync,
/// rename over the old one, fsync of the directory (so a drain survives a
/// power loss). On failure the temporary file is removed.
pub fn save(state_dir: &Path, state: &NodeState) -> anyhow::Result<()> {
    fs::create_dir_all(state_dir)?;
    let path = node_file(state_dir);
    let tmp = state_dir.join(".node.json.tmp");
    let written = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(state)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(state_dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        anyhow::bail!("{}: {e}", path.display());
    }
    Ok(())
}

/// A drained (or undrained) state stamped now.
pub fn now(drained: bool) -> NodeState {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    NodeState { drained, since }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_defaults_to_undrained() {
        let dir = std::env::temp_dir().join(format!("lb-node-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(load(&dir).unwrap(), NodeState::default());
        let s = now(true);
        save(&dir, &s).unwrap();
        assert_eq!(load(&dir).unwrap(), s);
        fs::write(node_file(&dir), b"{garbage").unwrap();
        assert!(load(&dir).unwrap_err().to_string().contains("node.json"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
