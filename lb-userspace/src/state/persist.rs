//! The desired state on disk (`<state_dir>/state.json`): what a restarted
//! lbd takes over instead of the config file, written atomically.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::DesiredState;
use crate::model::{discovery::Set, VipId};

/// A state file's contents.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Saved {
    pub state: DesiredState,
    pub store_revision: Option<i64>,
    pub discovered: BTreeMap<VipId, Set>,
}

/// Where the daemon keeps its runtime state.
pub fn state_file(state_dir: &Path) -> PathBuf {
    state_dir.join("state.json")
}

/// The state file: the desired state and the interface whose daemon owns
/// it, so two daemons given one `state_dir` cannot take each other's state.
#[derive(Serialize, Deserialize)]
struct Persisted<'a> {
    #[serde(default)]
    interface: std::borrow::Cow<'a, str>,
    /// With a store: the desired state's revision this state is of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    store_revision: Option<i64>,
    /// What each VIP's source (`backends_from`) last brought: a restarted
    /// lbd forwards to them until its sources answer (fail static).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    discovered: std::borrow::Cow<'a, BTreeMap<VipId, Set>>,
    #[serde(flatten)]
    state: std::borrow::Cow<'a, DesiredState>,
}

/// Reads the runtime state persisted by the daemon of `interface`, if any.
pub fn load(state_dir: &Path, interface: &str) -> anyhow::Result<Option<DesiredState>> {
    Ok(load_saved(state_dir, interface)?.map(|s| s.state))
}

/// [`load`], with the store revision the state was saved at (`None`: not
/// from a store) and the sources' last sets.
pub fn load_saved(state_dir: &Path, interface: &str) -> anyhow::Result<Option<Saved>> {
    let path = state_file(state_dir);
    match fs::read(&path) {
        Ok(bytes) => {
            let p: Persisted<'_> = serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("{}: not a valid lbd state file: {e}", path.display())
            })?;
            if !p.interface.is_empty() && p.interface != interface {
                anyhow::bail!(
                    "{} holds the runtime state of the lbd on interface {}, not {interface}: \
                     give each lbd its own state_dir",
                    path.display(),
                    p.interface
                );
            }
            let s = p.state.into_owned();
            s.validate()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok(Some(Saved {
                state: s,
                store_revision: p.store_revision,
                discovered: p.discovered.into_owned(),
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// Writes the state atomically: a temporary file, fsync, then rename over
/// the old one, so a crash leaves either the old or the new state.
pub fn save(state_dir: &Path, interface: &str, state: &DesiredState) -> anyhow::Result<()> {
    save_all(state_dir, interface, state, None, &BTreeMap::new())
}

/// [`save`], recording the store revision the state is of and the
/// sources' last sets.
pub fn save_all(
    state_dir: &Path,
    interface: &str,
    state: &DesiredState,
    store_revision: Option<i64>,
    discovered: &BTreeMap<VipId, Set>,
) -> anyhow::Result<()> {
    fs::create_dir_all(state_dir)?;
    let path = state_file(state_dir);
    let tmp = state_dir.join(".state.json.tmp");
    let mut f = fs::File::create(&tmp)?;
    let p = Persisted {
        interface: interface.into(),
        store_revision,
        discovered: std::borrow::Cow::Borrowed(discovered),
        state: std::borrow::Cow::Borrowed(state),
    };
    f.write_all(&serde_json::to_vec_pretty(&p)?)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    if let Ok(dir) = fs::File::open(state_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{parse_vip, HealthKind, HealthSpec, VipSettings},
        state::{BackendDesired, VipDesired},
    };

    #[test]
    fn persists_atomically() {
        let dir = std::env::temp_dir().join(format!("lb-state-test-{}", std::process::id()));
        let mut s = DesiredState::default();
        let id = parse_vip("10.0.0.1:80/tcp").unwrap();
        s.add_vip(
            id,
            VipDesired {
                name: "web".into(),
                settings: VipSettings::default(),
                backends: vec![],
                health: None,
                backends_from: None,
            },
        )
        .unwrap();
        s.add_backend(
            &id,
            BackendDesired {
                addr: "10.0.0.2".parse().unwrap(),
                weight: 5,
                tier: 0,
                drained: true,
                health: None,
            },
        )
        .unwrap();
        let tcp = |port| HealthSpec {
            port,
            ..HealthSpec::new(HealthKind::Tcp)
        };
        s.vips.get_mut(&id).unwrap().health = Some(tcp(80));
        s.add_backend(
            &id,
            BackendDesired {
                addr: "10.0.0.3".parse().unwrap(),
                weight: 1,
                tier: 0,
                drained: false,
                health: Some(tcp(8080)),
            },
        )
        .unwrap();
        save(&dir, "eth0", &s).unwrap();
        let json = fs::read_to_string(state_file(&dir)).unwrap();
        // No override, no key: files of an older lbd read the same.
        assert_eq!(json.matches("\"health\"").count(), 2, "{json}");
        assert_eq!(load(&dir, "eth0").unwrap(), Some(s.clone()));
        // Another interface's daemon does not take this state.
        let other = load(&dir, "eth1").unwrap_err().to_string();
        assert!(other.contains("interface eth0, not eth1"), "{other}");

        // A bad check in a state file is refused like any other value.
        s.vips.get_mut(&id).unwrap().backends[1].health = Some(tcp(0));
        save(&dir, "eth0", &s).unwrap();
        let e = load(&dir, "eth0").unwrap_err().to_string();
        assert!(
            e.contains("VIP 10.0.0.1:80/tcp backend 10.0.0.3: health check: key `port`"),
            "{e}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
