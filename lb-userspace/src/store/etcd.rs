//! lb's requests to etcd: read the desired state at one revision, commit a
//! change against the revision it was planned on, publish and list node
//! reports. Every request has a short timeout, so a node cut off from the
//! store learns it in seconds (and keeps forwarding meanwhile).

use std::time::Duration;

use anyhow::Context;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};

use super::{
    layout::{ChangeNote, Kv, Layout, Snapshot},
    report::NodeReport,
    StoreSettings,
};
use crate::{
    model::{
        defaults::{STORE_MAX_TXN_OPS, STORE_REQUEST_TIMEOUT},
        discovery::{Found, Set},
        VipId,
    },
    state::DesiredState,
};
use std::{collections::BTreeMap, net::IpAddr};

/// A connection to etcd (made lazily: creating it does not reach the
/// store) and the key layout.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    pub layout: Layout,
}

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The desired state changed after the revision the change was
    /// planned against: nothing was written.
    #[error(
        "the desired state changed in the store since revision {planned} (it is at revision \
         {now} now), so nothing was changed: another change came first; retry"
    )]
    Conflict { planned: i64, now: i64 },
    #[error("the store: {0:#}")]
    Store(anyhow::Error),
    #[error(
        "the change writes {0} keys in one transaction, more than etcd's default --max-txn-ops \
         ({STORE_MAX_TXN_OPS}): nothing was changed; import in parts, or raise --max-txn-ops \
         on every etcd member"
    )]
    TooLarge(usize),
}

impl Etcd {
    pub async fn connect(settings: &StoreSettings) -> anyhow::Result<Self> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(STORE_REQUEST_TIMEOUT)
            .with_timeout(STORE_REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(1), STORE_REQUEST_TIMEOUT)
            .with_keep_alive_while_idle(true)
            // A member cut off from its cluster's leader must not answer
            // with what it had: the node would think it is current.
            .with_require_leader(true);
        if let Some(tls) = &settings.tls {
            let read = |p: &std::path::Path| {
                std::fs::read(p).with_context(|| format!("[store] reading {}", p.display()))
            };
            let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            opts = opts.with_tls(t);
        }
        let client = Client::connect(&settings.endpoints, Some(opts))
            .await
            .context("connecting to etcd")?;
        Ok(Etcd {
            client,
            layout: Layout::new(&settings.prefix),
        })
    }

    /// The desired state, whole, at the store's current revision.
    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let mut c = self.client.clone();
        let resp = within(c.get(self.layout.desired(), Some(GetOptions::new().with_prefix())))
            .await
            .context("reading the desired state")?;
        let store_revision = resp.header().map_or(0, |h| h.revision());
        let kvs: Vec<Kv<'_>> = resp
            .kvs()
            .iter()
            .map(|kv| (kv.key(), kv.value(), kv.mod_revision()))
            .collect();
        Ok(self.layout.decode(&kvs, store_revision)?)
    }

    /// Makes the store hold `to`, planned as a change of `from` at desired
    /// revision `planned`: written only if the desired state is still at
    /// that revision. Returns the new revision.
    pub async fn commit(
        &self,
        planned: i64,
        from: &DesiredState,
        to: &DesiredState,
        note: &ChangeNote,
    ) -> Result<i64, CommitError> {
        let store = |e: anyhow::Error| CommitError::Store(e);
        let writes = self.layout.writes(from, to);
        let mut ops: Vec<TxnOp> = writes
            .puts
            .into_iter()
            .map(|(k, v)| TxnOp::put(k, v, None))
            .collect();
        ops.extend(
            writes
                .deletes
                .into_iter()
                .map(|k| TxnOp::delete(k, None::<DeleteOptions>)),
        );
        let note = serde_json::to_vec(note).expect("a change note always serialises");
        ops.push(TxnOp::put(self.layout.revision(), note, None));
        if ops.len() > STORE_MAX_TXN_OPS {
            return Err(CommitError::TooLarge(ops.len()));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.layout.revision(),
                CompareOp::Equal,
                planned,
            )])
            .and_then(ops)
            .or_else([TxnOp::get(self.layout.revision(), None)]);
        let mut c = self.client.clone();
        let resp = within(c.txn(txn))
            .await
            .context("committing the change")
            .map_err(store)?;
        if resp.succeeded() {
            return Ok(resp.header().map_or(0, |h| h.revision()));
        }
        let now = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => Some(g.kvs().first()?.mod_revision()),
                _ => None,
            })
            .unwrap_or(0);
        Err(CommitError::Conflict { planned, now })
    }

    /// Watches everything of lb's from `store_revision` on.
    pub async fn watch(&self, store_revision: i64) -> anyhow::Result<WatchStream> {
        let mut c = self.client.clone();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(store_revision);
        within(c.watch(self.layout.all(), Some(opts)))
            .await
            .context("watching the store")
    }

    /// Registers a backend of `vip` under a new lease of `ttl`; returns it.
    pub async fn register(
        &self,
        vip: &VipId,
        backend: &IpAddr,
        found: Found,
        ttl: Duration,
    ) -> anyhow::Result<i64> {
        let lease = self.grant(ttl).await?;
        let mut c = self.client.clone();
        let value = serde_json::to_vec(&found).expect("a registration always serialises");
        within(c.put(
            self.layout.registration(vip, backend),
            value,
            Some(PutOptions::new().with_lease(lease)),
        ))
        .await
        .context("writing the registration")?;
        Ok(lease)
    }

    /// Every registration, by VIP, and the keys that could not be read.
    pub async fn registrations(&self) -> anyhow::Result<(BTreeMap<VipId, Set>, Vec<String>)> {
        let mut c = self.client.clone();
        let resp = within(c.get(
            self.layout.registrations(),
            Some(GetOptions::new().with_prefix()),
        ))
        .await
        .context("reading the registrations")?;
        let kvs: Vec<(&[u8], &[u8])> = resp.kvs().iter().map(|kv| (kv.key(), kv.value())).collect();
        Ok(self.layout.decode_registrations(&kvs))
    }

    /// A lease of `ttl` for the node's report.
    pub async fn grant(&self, ttl: Duration) -> anyhow::Result<i64> {
        let mut c = self.client.clone();
        let resp = within(c.lease_grant(ttl.as_secs() as i64, None))
            .await
            .context("granting a lease")?;
        Ok(resp.id())
    }

    /// Renews the lease once; false when it has expired (the node's key is
    /// gone: a new lease is needed).
    pub async fn keep_alive(&self, lease: i64) -> anyhow::Result<bool> {
        let mut c = self.client.clone();
        let (mut keeper, mut stream) = within(c.lease_keep_alive(lease))
            .await
            .context("renewing a lease")?;
        within(keeper.keep_alive())
            .await
            .context("renewing a lease")?;
        let resp = within(stream.message()).await.context("renewing a lease")?;
        Ok(resp.is_some_and(|r| r.ttl() > 0))
    }

    /// Renews a registration's lease once, only if every key it holds is
    /// a registration (a node's report lease is not a client's to renew);
    /// false when it has expired.
    pub async fn renew_registration(&self, lease: i64) -> anyhow::Result<Option<bool>> {
        let mut c = self.client.clone();
        let ttl = within(c.lease_time_to_live(
            lease,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        ))
        .await
        .context("looking up the lease")?;
        if ttl.ttl() <= 0 {
            return Ok(Some(false));
        }
        let prefix = self.layout.registrations();
        if !ttl.keys().iter().all(|k| k.starts_with(prefix.as_bytes())) || ttl.keys().is_empty() {
            return Ok(None);
        }
        self.keep_alive(lease).await.map(Some)
    }

    pub async fn revoke(&self, lease: i64) -> anyhow::Result<()> {
        let mut c = self.client.clone();
        within(c.lease_revoke(lease)).await?;
        Ok(())
    }

    pub async fn publish(&self, lease: i64, report: &NodeReport) -> anyhow::Result<()> {
        let mut c = self.client.clone();
        let value = serde_json::to_vec(report).expect("a report always serialises");
        within(c.put(
            self.layout.node(&report.node),
            value,
            Some(PutOptions::new().with_lease(lease)),
        ))
        .await
        .context("publishing the node's report")?;
        Ok(())
    }

    /// Records the node as a member of the cluster (no lease: it stays
    /// when the node goes, so `cluster status` can say it is missing).
    pub async fn join(&self, node: &str) -> anyhow::Result<()> {
        let mut c = self.client.clone();
        within(c.put(self.layout.member(node), node.as_bytes().to_vec(), None))
            .await
            .context("recording the node as a member")?;
        Ok(())
    }

    /// Every node that ever joined.
    pub async fn members(&self) -> anyhow::Result<Vec<String>> {
        let mut c = self.client.clone();
        let prefix = self.layout.members();
        let resp = within(c.get(
            prefix.clone(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        ))
        .await
        .context("reading the members")?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned())
            .collect())
    }

    /// Forgets a member that no longer reports (a node gone for good);
    /// false when it still reports (then it stays) or was never one.
    pub async fn forget(&self, node: &str) -> anyhow::Result<bool> {
        let txn = Txn::new()
            .when([Compare::version(
                self.layout.node(node),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::delete(self.layout.member(node), None)]);
        let mut c = self.client.clone();
        let resp = within(c.txn(txn)).await.context("forgetting the node")?;
        let deleted = resp
            .op_responses()
            .into_iter()
            .any(|r| matches!(r, etcd_client::TxnOpResponse::Delete(d) if d.deleted() > 0));
        Ok(resp.succeeded() && deleted)
    }

    /// Every live node's report; one that cannot be read is listed by its
    /// key with the problem as its refusal, so it is seen, not hidden.
    pub async fn reports(&self) -> anyhow::Result<Vec<NodeReport>> {
        let mut c = self.client.clone();
        let resp = within(c.get(self.layout.nodes(), Some(GetOptions::new().with_prefix())))
            .await
            .context("reading the node reports")?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                serde_json::from_slice(kv.value()).unwrap_or_else(|e| NodeReport {
                    node: String::from_utf8_lossy(kv.key()).into_owned(),
                    refused: Some(format!("unreadable report: {e}")),
                    ..NodeReport::default()
                })
            })
            .collect())
    }
}

/// One request, bounded by [`STORE_REQUEST_TIMEOUT`].
async fn within<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(STORE_REQUEST_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!("no answer within {STORE_REQUEST_TIMEOUT:?}"),
    }
}
