//! The store's keys and values: where each piece of the desired state
//! lives, how it is written, and how a range read of the desired state is
//! turned back into a [`DesiredState`] — refusing the whole of it, with the
//! key named, if any key is not what lb writes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use std::net::IpAddr;

use crate::{
    model::{
        discovery::{Found, Set},
        Proto, VipId,
    },
    state::{DesiredState, VipDesired},
};

/// The keys under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// `prefix` without a trailing slash (one is removed).
    pub fn new(prefix: &str) -> Self {
        Layout {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// Everything of the desired state: a range read of it is one
    /// consistent revision.
    pub fn desired(&self) -> String {
        format!("{}/desired/", self.prefix)
    }

    fn vips(&self) -> String {
        format!("{}vips/", self.desired())
    }

    /// Rewritten by every change: its mod revision is the state's revision.
    pub fn revision(&self) -> String {
        format!("{}revision", self.desired())
    }

    pub fn vip(&self, id: &VipId) -> String {
        let proto = match id.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        format!("{}{proto}/{}/{}", self.vips(), id.addr, id.port)
    }

    /// Everything of lb's: one watch covers it.
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// Backends registered under leases (`lbctl backend register`).
    pub fn registrations(&self) -> String {
        format!("{}/registered/", self.prefix)
    }

    pub fn registration(&self, vip: &VipId, backend: &IpAddr) -> String {
        let vip_key = self.vip(vip);
        let rest = vip_key.strip_prefix(&self.vips()).expect("a VIP key");
        format!("{}{rest}/{backend}", self.registrations())
    }

    /// The VIP and backend a registration key names.
    fn registration_of(&self, key: &str) -> Option<(VipId, IpAddr)> {
        let rest = key.strip_prefix(&self.registrations())?;
        let (vip, backend) = rest.rsplit_once('/')?;
        Some((
            self.vip_of(&format!("{}{vip}", self.vips()))?,
            backend.parse().ok()?,
        ))
    }

    /// The registrations of a range read of [`Layout::registrations`], by
    /// VIP. A key or value lb cannot read is left out and returned, so it
    /// is reported (it never touches the desired state).
    pub fn decode_registrations(
        &self,
        kvs: &[(&[u8], &[u8])],
    ) -> (BTreeMap<VipId, Set>, Vec<String>) {
        let mut out: BTreeMap<VipId, Set> = BTreeMap::new();
        let mut bad = Vec::new();
        for (key, value) in kvs {
            let key = String::from_utf8_lossy(key).into_owned();
            let found = self
                .registration_of(&key)
                .ok_or("not a registration key")
                .and_then(|k| {
                    serde_json::from_slice::<Found>(value)
                        .map(|f| (k, f))
                        .map_err(|_| "not a registration lb can read")
                });
            match found {
                Ok(((vip, addr), f)) => {
                    out.entry(vip).or_default().insert(addr, f);
                }
                Err(why) => bad.push(format!("{key}: {why}")),
            }
        }
        (out, bad)
    }

    /// Every node that ever reported, without a lease: a node whose report
    /// is gone shows as missing until it is forgotten.
    pub fn members(&self) -> String {
        format!("{}/members/", self.prefix)
    }

    pub fn member(&self, name: &str) -> String {
        format!("{}{name}", self.members())
    }

    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn node(&self, name: &str) -> String {
        format!("{}{name}", self.nodes())
    }

    /// The VIP a key names, if it is a VIP key.
    fn vip_of(&self, key: &str) -> Option<VipId> {
        let rest = key.strip_prefix(&self.vips())?;
        let mut parts = rest.split('/');
        let (proto, addr, port) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(VipId {
            addr: addr.parse().ok()?,
            port: port.parse().ok()?,
            proto: match proto {
                "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                _ => return None,
            },
        })
    }
}

/// A VIP as the store holds it: its identity beside the rest, so a value
/// read on its own says what it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVip {
    pub vip: VipId,
    #[serde(flatten)]
    pub desired: VipDesired,
}

/// Who made the last change to the desired state, and what it was.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeNote {
    /// The node the change went through.
    pub node: String,
    /// The change, as the operator asked for it (`backend-set ...`).
    pub what: String,
    /// RFC 3339.
    pub at: String,
}

impl ChangeNote {
    /// A change made now through `node`.
    pub fn now(node: String, what: String) -> Self {
        ChangeNote {
            node,
            what,
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }
}

/// The desired state as read from the store at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The desired state's revision: the mod revision of
    /// [`Layout::revision`]; 0 when nothing was ever written.
    pub revision: i64,
    /// The store's revision at the read (a watch goes on after it).
    pub store_revision: i64,
    pub state: DesiredState,
    pub last_change: Option<ChangeNote>,
}

/// One key of a range read: key, value, mod revision.
pub type Kv<'a> = (&'a [u8], &'a [u8], i64);

/// Why what the store holds cannot be used. The node keeps the state it
/// has and reports this.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("store key {key}: {problem}")]
pub struct ContentError {
    pub key: String,
    pub problem: String,
}

impl Layout {
    /// Reads a range read of [`Layout::desired`] back into a state, whole
    /// or not at all.
    pub fn decode(&self, kvs: &[Kv<'_>], store_revision: i64) -> Result<Snapshot, ContentError> {
        let mut snap = Snapshot {
            store_revision,
            ..Snapshot::default()
        };
        for (key, value, mod_revision) in kvs {
            let key = String::from_utf8_lossy(key).into_owned();
            let bad = |problem: String| ContentError {
                key: key.clone(),
                problem,
            };
            if key == self.revision() {
                let note: ChangeNote = serde_json::from_slice(value)
                    .map_err(|e| bad(format!("not a change note: {e}")))?;
                snap.revision = *mod_revision;
                snap.last_change = Some(note);
                continue;
            }
            let id = self.vip_of(&key).ok_or_else(|| {
                bad(format!(
                    "not a key lb writes (expected {}<tcp|udp>/<address>/<port> or {})",
                    self.vips(),
                    self.revision()
                ))
            })?;
            let stored: StoredVip = serde_json::from_slice(value)
                .map_err(|e| bad(format!("not a VIP lb can read: {e}")))?;
            if stored.vip != id {
                return Err(bad(format!("holds VIP {}, not VIP {id}", stored.vip)));
            }
            snap.state.vips.insert(id, stored.desired);
        }
        snap.state.validate().map_err(|e| ContentError {
            key: self.desired(),
            problem: e.to_string(),
        })?;
        Ok(snap)
    }

    /// What turns `from` into `to`: the VIP keys to write (new or changed)
    /// and to delete. The caller adds the revision key and the comparison.
    pub fn writes(&self, from: &DesiredState, to: &DesiredState) -> Writes {
        let mut w = Writes::default();
        for (id, v) in &to.vips {
            if from.vips.get(id) != Some(v) {
                let stored = StoredVip {
                    vip: *id,
                    desired: v.clone(),
                };
                let json = serde_json::to_vec(&stored).expect("a VIP always serialises");
                w.puts.insert(self.vip(id), json);
            }
        }
        for id in from.vips.keys().filter(|id| !to.vips.contains_key(id)) {
            w.deletes.push(self.vip(id));
        }
        w
    }
}

/// The key writes of one change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    pub puts: BTreeMap<String, Vec<u8>>,
    pub deletes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{parse_vip, VipSettings},
        state::BackendDesired,
    };

    fn vip(name: &str, backends: &[&str]) -> VipDesired {
        VipDesired {
            name: name.into(),
            settings: VipSettings::default(),
            backends: backends
                .iter()
                .map(|a| BackendDesired {
                    addr: a.parse().unwrap(),
                    weight: 100,
                    tier: 0,
                    drained: false,
                    health: None,
                })
                .collect(),
            health: None,
            backends_from: None,
        }
    }

    fn state(vips: &[(&str, VipDesired)]) -> DesiredState {
        DesiredState {
            vips: vips
                .iter()
                .map(|(id, v)| (parse_vip(id).unwrap(), v.clone()))
                .collect(),
        }
    }

    /// A range read as etcd returns it, of what `writes` wrote.
    fn read_back(l: &Layout, w: &Writes, note_rev: Option<i64>) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
        let mut kvs: Vec<(Vec<u8>, Vec<u8>, i64)> = w
            .puts
            .iter()
            .map(|(k, v)| (k.clone().into_bytes(), v.clone(), 5))
            .collect();
        if let Some(rev) = note_rev {
            let note = serde_json::to_vec(&ChangeNote::default()).unwrap();
            kvs.push((l.revision().into_bytes(), note, rev));
        }
        kvs
    }

    fn decode(l: &Layout, kvs: &[(Vec<u8>, Vec<u8>, i64)]) -> Result<Snapshot, ContentError> {
        let refs: Vec<Kv<'_>> = kvs.iter().map(|(k, v, r)| (&k[..], &v[..], *r)).collect();
        l.decode(&refs, 9)
    }

    #[test]
    fn keys_name_protocol_address_and_port() {
        let l = Layout::new("/lb/v1/");
        assert_eq!(
            l.vip(&parse_vip("10.0.0.1:80/tcp").unwrap()),
            "/lb/v1/desired/vips/tcp/10.0.0.1/80"
        );
        assert_eq!(
            l.vip(&parse_vip("[2001:db8::1]:53/udp").unwrap()),
            "/lb/v1/desired/vips/udp/2001:db8::1/53"
        );
        assert_eq!(l.revision(), "/lb/v1/desired/revision");
        assert_eq!(l.node("lb-a"), "/lb/v1/nodes/lb-a");
        let web = parse_vip("10.0.0.1:80/tcp").unwrap();
        let b: IpAddr = "10.1.0.9".parse().unwrap();
        let key = l.registration(&web, &b);
        assert_eq!(key, "/lb/v1/registered/tcp/10.0.0.1/80/10.1.0.9");
        let value = br#"{"weight":5,"tier":1}"#;
        let (regs, bad) = l.decode_registrations(&[
            (key.as_bytes(), value),
            (b"/lb/v1/registered/tcp/10.0.0.1/80/x", value),
            (key.as_bytes(), b"nonsense"),
        ]);
        assert_eq!(regs[&web][&b], Found { weight: 5, tier: 1 });
        assert_eq!(bad.len(), 2, "{bad:?}");
        for id in ["10.0.0.1/tcp", "[2001:db8::1]:443/tcp", "10.0.0.9:53/udp"] {
            let id = parse_vip(id).unwrap();
            assert_eq!(l.vip_of(&l.vip(&id)), Some(id));
        }
    }

    #[test]
    fn a_state_written_reads_back_the_same() {
        let l = Layout::new("/lb/v1");
        let want = state(&[
            ("10.0.0.1:80/tcp", vip("web", &["10.1.0.1", "10.1.0.2"])),
            ("[2001:db8::1]:443/tcp", vip("web6", &["2001:db8:1::1"])),
        ]);
        let w = l.writes(&DesiredState::default(), &want);
        assert_eq!(w.puts.len(), 2);
        assert!(w.deletes.is_empty());
        let snap = decode(&l, &read_back(&l, &w, Some(7))).unwrap();
        assert_eq!(snap.state, want);
        assert_eq!((snap.revision, snap.store_revision), (7, 9));
        // Never written: revision 0.
        assert_eq!(decode(&l, &[]).unwrap().revision, 0);
    }

    #[test]
    fn a_change_writes_only_what_changed() {
        let l = Layout::new("/lb/v1");
        let from = state(&[
            ("10.0.0.1:80/tcp", vip("web", &["10.1.0.1"])),
            ("10.0.0.2:80/tcp", vip("api", &["10.1.0.3"])),
            ("10.0.0.3:80/tcp", vip("old", &["10.1.0.4"])),
        ]);
        let mut to = from.clone();
        to.vips.remove(&parse_vip("10.0.0.3:80/tcp").unwrap());
        to.vips
            .get_mut(&parse_vip("10.0.0.2:80/tcp").unwrap())
            .unwrap()
            .backends[0]
            .weight = 7;
        let w = l.writes(&from, &to);
        assert_eq!(
            w.puts.keys().collect::<Vec<_>>(),
            ["/lb/v1/desired/vips/tcp/10.0.0.2/80"]
        );
        assert_eq!(w.deletes, ["/lb/v1/desired/vips/tcp/10.0.0.3/80"]);
        assert_eq!(l.writes(&to, &to), Writes::default());
    }

    #[test]
    fn anything_lb_does_not_write_refuses_the_whole_state() {
        let l = Layout::new("/lb/v1");
        let good = l.writes(
            &DesiredState::default(),
            &state(&[("10.0.0.1:80/tcp", vip("web", &["10.1.0.1"]))]),
        );
        let base = read_back(&l, &good, Some(3));
        let with = |key: &str, value: &[u8]| {
            let mut kvs = base.clone();
            kvs.push((key.as_bytes().to_vec(), value.to_vec(), 4));
            decode(&l, &kvs).unwrap_err()
        };
        let e = with("/lb/v1/desired/stray", b"x");
        assert_eq!(e.key, "/lb/v1/desired/stray");
        assert!(e.problem.contains("not a key lb writes"), "{e}");
        let e = with("/lb/v1/desired/vips/tcp/10.0.0.2/80", b"{not json");
        assert!(e.problem.contains("not a VIP lb can read"), "{e}");
        // A value under another VIP's key.
        let (_, value) = good.puts.iter().next().unwrap();
        let e = with("/lb/v1/desired/vips/tcp/10.0.0.2/80", value);
        assert!(e.problem.contains("holds VIP 10.0.0.1:80/tcp"), "{e}");
        let e = with("/lb/v1/desired/vips/sctp/10.0.0.2/80", value);
        assert!(e.problem.contains("not a key lb writes"), "{e}");
        let e = with(&l.revision(), b"[]");
        assert!(e.problem.contains("not a change note"), "{e}");
        // Each VIP fine on its own, the whole not: two VIPs of one name.
        let other = l.writes(
            &DesiredState::default(),
            &state(&[("10.0.0.2:80/tcp", vip("web", &["10.1.0.2"]))]),
        );
        let (key, value) = other.puts.iter().next().unwrap();
        let e = with(key, value);
        assert_eq!(e.key, "/lb/v1/desired/");
        assert!(e.problem.contains("used twice"), "{e}");
    }
}
