//! The control socket: HTTP/JSON over a Unix socket (see `types` for the
//! protocol). The socket is root's (mode 0600, or 0660 with the read group);
//! on top of that every request is authorised by the peer's credentials
//! (SO_PEERCRED): changes only from uid 0, reads also from members of the
//! configured read group. Every change request is audited, refused or not.

use std::{net::IpAddr, os::unix::fs::PermissionsExt, path::Path, sync::Arc};

use axum::{
    body::Bytes,
    extract::{connect_info::Connected, ConnectInfo, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::IncomingStream,
    Json, Router,
};
use serde::Deserialize;
use tokio::net::UnixListener;

use super::{
    audit::{AuditLog, Peer},
    tls,
    types::{self as control, Change, ErrorBody, ReloadRequest},
};
use crate::{
    daemon::{ApplyError, Daemon, Shared as SharedDaemon},
    model::{
        defaults::{DEFAULT_WEIGHT, MAX_TIER, STORE_APPLY_WAIT, WEIGHT_RANGE},
        discovery::{Found, Source},
        Role,
    },
    store::{
        etcd::{CommitError, Etcd},
        layout::{ChangeNote, StoredVip},
        report,
    },
};

#[derive(Clone)]
struct Api {
    daemon: SharedDaemon,
    audit: Arc<AuditLog>,
    read_gid: Option<u32>,
    hooks: Arc<Hooks>,
}

/// What the rest of the daemon wants to hear about changes.
pub struct Hooks {
    /// Notified after every applied change: the health checker reconciles.
    pub changed: Arc<tokio::sync::Notify>,
    /// Notified after every applied change: the next-hop resolver picks up
    /// new backends at once.
    pub nexthops: Arc<tokio::sync::Notify>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `[store]`: where changes are committed.
    pub store: Option<Etcd>,
}

impl Hooks {
    pub fn notify_changed(&self) {
        self.changed.notify_one();
        self.nexthops.notify_one();
    }
}

/// Who is on the other end, taken when the connection is accepted: a
/// local process (its credentials) or a TLS client (its certificate's
/// identity and role).
#[derive(Clone, Debug)]
enum PeerCred {
    Local(Option<Peer>),
    Tls(tls::Client),
}

impl Connected<IncomingStream<'_, UnixListener>> for PeerCred {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        PeerCred::Local(
            stream
                .io()
                .peer_cred()
                .ok()
                .map(|c| Peer::local(c.uid(), c.gid(), c.pid().unwrap_or(0))),
        )
    }
}

impl Connected<IncomingStream<'_, tls::TlsListener>> for PeerCred {
    fn connect_info(stream: IncomingStream<'_, tls::TlsListener>) -> Self {
        PeerCred::Tls(stream.remote_addr().clone())
    }
}

fn no_role(c: &tls::Client) -> String {
    format!(
        "client {:?} ({}) has no role in [api_roles]",
        c.identity, c.addr
    )
}

/// An error answer: status plus `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        let status = match e {
            ApplyError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApplyError::NotFound(_) => StatusCode::NOT_FOUND,
            ApplyError::Conflict(_) => StatusCode::CONFLICT,
            ApplyError::Kernel(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApplyError::Pending(_) | ApplyError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

impl Api {
    fn allow_read(&self, peer: &PeerCred) -> Result<Peer, ApiError> {
        match peer {
            PeerCred::Local(Some(p)) if p.uid == 0 => Ok(p.clone()),
            PeerCred::Local(Some(p))
                if self.read_gid.is_some_and(|g| in_group(p.uid, p.gid, g)) =>
            {
                Ok(p.clone())
            }
            PeerCred::Local(Some(p)) => Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("uid {} may not read lbd's state", p.uid),
            )),
            PeerCred::Local(None) => Err(ApiError(
                StatusCode::FORBIDDEN,
                "peer credentials unavailable".into(),
            )),
            PeerCred::Tls(c) => {
                let who = Peer::remote(c.addr, c.identity.clone());
                if c.role.is_some() {
                    return Ok(who);
                }
                let msg = no_role(c);
                self.audit.record(
                    &who,
                    &serde_json::json!({"op": "read"}),
                    &format!("refused: {msg}"),
                );
                Err(ApiError(StatusCode::FORBIDDEN, msg))
            }
        }
    }

    /// Whether `peer` may make a change that needs `need`: local root, or
    /// a TLS client whose role is at least `need`. Refusals are audited.
    fn allow_change(
        &self,
        peer: &PeerCred,
        what: &serde_json::Value,
        need: Role,
    ) -> Result<Peer, ApiError> {
        match peer {
            PeerCred::Local(Some(p)) if p.uid == 0 => Ok(p.clone()),
            PeerCred::Local(Some(p)) => {
                let msg = format!("uid {} may not change lbd's state (only root may)", p.uid);
                self.audit.record(p, what, &format!("refused: {msg}"));
                Err(ApiError(StatusCode::FORBIDDEN, msg))
            }
            PeerCred::Local(None) => Err(ApiError(
                StatusCode::FORBIDDEN,
                "peer credentials unavailable".into(),
            )),
            PeerCred::Tls(c) => {
                let who = Peer::remote(c.addr, c.identity.clone());
                let msg = match c.role {
                    Some(r) if r >= need => return Ok(who),
                    Some(r) => format!("client {:?} has role {r}: this needs {need}", c.identity),
                    None => no_role(c),
                };
                self.audit.record(&who, what, &format!("refused: {msg}"));
                Err(ApiError(StatusCode::FORBIDDEN, msg))
            }
        }
    }

    /// The store, or why there is none.
    fn store(&self) -> Result<&Etcd, ApiError> {
        self.hooks.store.as_ref().ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "this lbd has no [store]: its VIPs are its config file's".into(),
            )
        })
    }

    /// A failed request to the store, with how long it has been so.
    fn store_unreachable(&self, e: anyhow::Error) -> ApplyError {
        let since = self
            .daemon()
            .store_status()
            .filter(|s| !s.reachable)
            .map(|s| format!(" (unreachable since {})", s.since))
            .unwrap_or_default();
        ApplyError::Unavailable(format!("the store{since}: {e:#}"))
    }

    fn daemon(&self) -> std::sync::MutexGuard<'_, Daemon> {
        // A panic while holding the lock would poison it; the state it
        // guards is only ever replaced whole, so carry on with it.
        self.daemon.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether `uid` (primary group `gid`) is a member of group `group`.
fn in_group(uid: u32, gid: u32, group: u32) -> bool {
    if gid == group {
        return true;
    }
    // SAFETY: getpwuid_r/getgrouplist with buffers we own and sizes we pass.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut result = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) != 0
            || result.is_null()
        {
            return false;
        }
        let mut groups = vec![0 as libc::gid_t; 256];
        let mut n = groups.len() as libc::c_int;
        if libc::getgrouplist(pwd.pw_name, gid, groups.as_mut_ptr(), &mut n) < 0 {
            return false;
        }
        groups[..n as usize].contains(&group)
    }
}

/// Looks up a group's id by name.
pub fn group_id(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: getgrnam_r with buffers we own.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut result = std::ptr::null_mut();
        if libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        ) != 0
            || result.is_null()
        {
            anyhow::bail!("read_group {name:?}: no such group");
        }
        Ok(grp.gr_gid)
    }
}

/// Binds the control socket: stale socket removed, parent directory made,
/// owner root, mode 0600 (0660 and group `read_gid` when one is set).
pub fn bind(path: &Path, read_gid: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket someone answers on belongs to a running lbd: never take it
    // over (its daemon would keep running, unreachable).
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "{} is in use by a running lbd; give this one another control_socket",
            path.display()
        );
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("removing stale socket {}: {e}", path.display()),
    }
    let listener =
        UnixListener::bind(path).map_err(|e| anyhow::anyhow!("binding {}: {e}", path.display()))?;
    let mode = if read_gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = read_gid {
        std::os::unix::fs::chown(path, Some(0), Some(gid))?;
    }
    Ok(listener)
}

/// Serves the API until the future is dropped: on the Unix socket, and
/// over TLS when `tls` is given (the same requests, authorised by role).
pub async fn serve(
    listener: UnixListener,
    tls: Option<tls::TlsListener>,
    daemon: SharedDaemon,
    audit: Arc<AuditLog>,
    read_gid: Option<u32>,
    hooks: Arc<Hooks>,
) -> anyhow::Result<()> {
    let api = Api {
        daemon,
        audit,
        read_gid,
        hooks,
    };
    let app = Router::new()
        .route(control::PATH_STATUS, get(status))
        .route(control::PATH_STATS, get(stats))
        .route(control::PATH_EXPLAIN, get(explain))
        .route(control::PATH_CHANGE, post(change))
        .route(control::PATH_RELOAD, post(reload))
        .route(control::PATH_DEBUG, get(debug_view))
        .route(control::PATH_NODE, get(node))
        .route(control::PATH_CLUSTER, get(cluster))
        .route(control::PATH_CLUSTER_FORGET, post(cluster_forget))
        .route(control::PATH_STORE_IMPORT, post(store_import))
        .route(control::PATH_STORE_EXPORT, get(store_export))
        .route(control::PATH_STORE_REGISTER, post(store_register))
        .route(control::PATH_STORE_RENEW, post(store_renew))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such API endpoint".into()) })
        .with_state(api);
    let local = axum::serve(
        listener,
        app.clone()
            .into_make_service_with_connect_info::<PeerCred>(),
    );
    match tls {
        None => local.await?,
        Some(tls) => {
            let remote = axum::serve(tls, app.into_make_service_with_connect_info::<PeerCred>());
            tokio::select! {
                r = local => r?,
                r = remote => r?,
            }
        }
    }
    Ok(())
}

async fn status(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
) -> Result<Response, ApiError> {
    api.allow_read(&peer)?;
    let s = api.daemon().status();
    Ok(Json(s).into_response())
}

async fn stats(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
) -> Result<Response, ApiError> {
    api.allow_read(&peer)?;
    let s = api.daemon().stats()?;
    Ok(Json(s).into_response())
}

#[derive(Deserialize)]
struct ExplainQuery {
    src: IpAddr,
    sport: u16,
    vip: String,
    dport: Option<u16>,
}

async fn explain(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
    query: Result<Query<ExplainQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    api.allow_read(&peer)?;
    let Query(q) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("explain: {e}")))?;
    let e = api.daemon().explain(q.src, q.sport, &q.vip, q.dport)?;
    Ok(Json(e).into_response())
}

#[derive(Deserialize)]
struct DebugQuery {
    #[serde(default)]
    after: u64,
}

async fn debug_view(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
    query: Result<Query<DebugQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    api.allow_read(&peer)?;
    let Query(q) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("debug: {e}")))?;
    let mut d = api.daemon();
    d.follow_trace();
    Ok(Json(d.trace_view(q.after)).into_response())
}

/// A request body as the audit log records it: its JSON, or its text when
/// it is not JSON (a refused request is recorded too).
fn as_audited(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// Parses a JSON body ourselves, so a garbled one gets our error format.
fn parse_body<T: serde::de::DeserializeOwned>(
    body: &Bytes,
) -> Result<(T, serde_json::Value), ApiError> {
    let raw: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("request body is not JSON: {e}"),
        )
    })?;
    let typed = serde_json::from_value(raw.clone())
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid request: {e}")))?;
    Ok((typed, raw))
}

async fn change(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let raw_for_audit = as_audited(&body);
    // Every change needs at least `operate`; which one, the change says.
    let who = api.allow_change(&peer, &raw_for_audit, Role::Operate)?;
    let (change, raw) = match parse_body::<Change>(&body) {
        Ok(v) => v,
        Err(e) => {
            api.audit
                .record(&who, &raw_for_audit, &format!("refused: {}", e.1));
            return Err(e);
        }
    };
    let who = api.allow_change(&peer, &raw, change.role())?;
    let result = match (&change, &api.hooks.store) {
        (Change::NodeDrain, _) => set_drained(&api, true).await,
        (Change::NodeUndrain, _) => set_drained(&api, false).await,
        // The node's own: not part of the cluster's state.
        (Change::DebugOn { .. } | Change::DebugOff, _) | (_, None) => api.daemon().change(&change),
        (_, Some(etcd)) => store_change(&api, etcd, &change, &raw).await,
    };
    match result {
        Ok(summary) => {
            api.audit.record(&who, &raw, "ok");
            api.hooks.notify_changed();
            Ok(Json(control::ChangeResult { summary }).into_response())
        }
        Err(e @ ApplyError::Pending(_)) => {
            api.audit
                .record(&who, &raw, &format!("accepted, not yet in effect: {e}"));
            Err(e.into())
        }
        Err(e) => {
            api.audit.record(&who, &raw, &format!("refused: {e}"));
            Err(e.into())
        }
    }
}

/// A change with a store: planned here on the revision the maps hold,
/// committed only if the store is still at that revision, then waited for
/// until this node has applied it (every node applies it from its watch).
async fn store_change(
    api: &Api,
    etcd: &Etcd,
    change: &Change,
    raw: &serde_json::Value,
) -> Result<String, ApplyError> {
    let (planned, node) = {
        let d = api.daemon();
        let node = d
            .store_settings()
            .map(|s| s.node.clone())
            .unwrap_or_default();
        (d.plan_store_change(change)?, node)
    };
    if planned.lines.is_empty() {
        return Ok("no change".into());
    }
    let note = ChangeNote::now(node, raw.to_string());
    let revision = etcd
        .commit(planned.planned, &planned.from, &planned.to, &note)
        .await
        .map_err(refused_commit)?;
    let mut applied = planned.applied;
    let waited = tokio::time::timeout(STORE_APPLY_WAIT, applied.wait_for(|r| *r >= revision)).await;
    let lines = planned.lines.join("\n");
    match waited {
        Ok(Ok(_)) => Ok(format!(
            "{lines}\n(store revision {revision}, applied on this node)"
        )),
        _ => Err(ApplyError::Pending(format!(
            "{lines}\ncommitted to the store at revision {revision}, but this node has not \
             applied it yet: see lbctl status"
        ))),
    }
}

/// A commit that did not happen: a lost race (409) or no store (503).
fn refused_commit(e: CommitError) -> ApplyError {
    match e {
        CommitError::Conflict { .. } => ApplyError::Conflict(e.to_string()),
        CommitError::TooLarge(_) => ApplyError::Invalid(e.to_string()),
        // A request that timed out may have reached etcd all the same.
        CommitError::Store(_) => ApplyError::Unavailable(format!(
            "{e}; the store did not confirm the change, so it may or may not have been made: \
             check `lbctl store export` before retrying"
        )),
    }
}

async fn cluster(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
) -> Result<Response, ApiError> {
    api.allow_read(&peer)?;
    let etcd = api.store()?;
    let unreachable = |e: anyhow::Error| ApiError::from(api.store_unreachable(e));
    let snap = etcd.snapshot().await.map_err(unreachable)?;
    let reports = etcd.reports().await.map_err(unreachable)?;
    let members = etcd.members().await.map_err(unreachable)?;
    Ok(Json(report::analyse(snap.revision, reports, &members)).into_response())
}

/// `lbctl cluster forget NODE`: a member gone for good stops showing as
/// missing. Refused while it still reports.
async fn cluster_forget(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let raw = as_audited(&body);
    let who = api.allow_change(&peer, &raw, Role::Admin)?;
    let result = async {
        let (req, _) = parse_body::<control::ClusterForget>(&body)?;
        let etcd = api.store()?;
        let forgotten = etcd
            .forget(&req.node)
            .await
            .map_err(|e| ApiError::from(api.store_unreachable(e)))?;
        if !forgotten {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "node {:?} still reports (it is alive: stop it first) or is not a member",
                    req.node
                ),
            ));
        }
        Ok(format!("forgot node {}", req.node))
    }
    .await;
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("refused: {}", e.1),
    };
    api.audit.record(&who, &raw, &outcome);
    Ok(Json(control::ChangeResult { summary: result? }).into_response())
}

async fn store_export(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
) -> Result<Response, ApiError> {
    api.allow_read(&peer)?;
    let etcd = api.store()?;
    let snap = etcd
        .snapshot()
        .await
        .map_err(|e| ApiError::from(api.store_unreachable(e)))?;
    let vips = snap
        .state
        .vips
        .into_iter()
        .map(|(vip, desired)| StoredVip { vip, desired })
        .collect();
    Ok(Json(control::StoreExport {
        revision: snap.revision,
        vips,
    })
    .into_response())
}

/// `lbctl store import`: the store holds exactly the file's VIPs after it,
/// in one transaction against the revision read (or the diff, dry run).
async fn store_import(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let reader = api.allow_read(&peer)?;
    let (req, _) = match parse_body::<control::StoreImport>(&body) {
        Ok(v) => v,
        Err(e) => {
            let what = serde_json::json!({"op": "store-import"});
            api.audit
                .record(&reader, &what, &format!("refused: {}", e.1));
            return Err(e);
        }
    };
    let what = serde_json::json!({
        "op": "store-import",
        "dry_run": req.dry_run,
        "vips": req.state.vips.keys().map(|v| v.to_string()).collect::<Vec<_>>(),
    });
    let who = if req.dry_run {
        reader
    } else {
        api.allow_change(&peer, &what, Role::Admin)?
    };
    let result = import(&api, &req).await;
    if !req.dry_run {
        let outcome = match &result {
            Ok(r) => format!("ok (revision {})", r.revision),
            Err(e) => format!("refused: {e}"),
        };
        api.audit.record(&who, &what, &outcome);
    }
    Ok(Json(result?).into_response())
}

async fn import(
    api: &Api,
    req: &control::StoreImport,
) -> Result<control::StoreImportResult, ApplyError> {
    let etcd = api.store().map_err(|e| ApplyError::Invalid(e.1))?;
    let node = {
        let d = api.daemon();
        d.check_state(&req.state)?;
        d.store_settings()
            .map(|s| s.node.clone())
            .unwrap_or_default()
    };
    let snap = etcd
        .snapshot()
        .await
        .map_err(|e| api.store_unreachable(e))?;
    let diff = crate::state::plan::diff(&snap.state, &req.state).lines;
    if req.dry_run || diff.is_empty() {
        return Ok(control::StoreImportResult {
            diff,
            applied: false,
            revision: snap.revision,
        });
    }
    let note = ChangeNote::now(
        node,
        format!("store-import of {} VIPs", req.state.vips.len()),
    );
    let revision = etcd
        .commit(snap.revision, &snap.state, &req.state, &note)
        .await
        .map_err(refused_commit)?;
    Ok(control::StoreImportResult {
        diff,
        applied: true,
        revision,
    })
}

/// `lbctl backend register`: a backend of a VIP that takes registrations,
/// under a new lease; audited like a change.
async fn store_register(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let raw_for_audit = as_audited(&body);
    let who = api.allow_change(&peer, &raw_for_audit, Role::Admin)?;
    let result = register(&api, &body).await;
    let outcome = match &result {
        Ok(lease) => format!("ok (lease {lease:x})"),
        Err(e) => format!("refused: {}", e.1),
    };
    api.audit.record(&who, &raw_for_audit, &outcome);
    Ok(Json(control::StoreLease { lease: result? }).into_response())
}

async fn register(api: &Api, body: &Bytes) -> Result<i64, ApiError> {
    let (req, _) = parse_body::<control::StoreRegister>(body)?;
    let etcd = api.store()?;
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    if !(1..=3600).contains(&req.ttl_secs) {
        return Err(bad(format!(
            "ttl: {}s is out of range 1s..=1h",
            req.ttl_secs
        )));
    }
    let (vip, found) = {
        let d = api.daemon();
        let id = d.declared().resolve(&req.vip).map_err(ApplyError::from)?;
        let v = &d.declared().vips[&id];
        let takes = v
            .backends_from
            .as_ref()
            .is_some_and(|b| b.source == Source::Registered);
        if !takes {
            return Err(bad(format!(
                "VIP {id} takes no registrations (it needs backends_from = {{ registered = true }})"
            )));
        }
        if req.addr.is_ipv4() != id.addr.is_ipv4() {
            return Err(bad(format!(
                "backend {} is not of VIP {id}'s family",
                req.addr
            )));
        }
        let weight = req.weight.unwrap_or(DEFAULT_WEIGHT);
        if !WEIGHT_RANGE.contains(&weight) {
            return Err(bad(format!("weight: {weight} is out of range 0..=65535")));
        }
        let tier = req.tier.unwrap_or(0);
        if tier > MAX_TIER {
            return Err(bad(format!("tier: {tier} is out of range 0..=15")));
        }
        (id, Found { weight, tier })
    };
    etcd.register(
        &vip,
        &req.addr,
        found,
        std::time::Duration::from_secs(req.ttl_secs),
    )
    .await
    .map_err(|e| ApiError::from(api.store_unreachable(e)))
}

/// Renews a registration's lease once (not audited: it is the heartbeat).
async fn store_renew(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
    body: Bytes,
) -> Result<Response, ApiError> {
    api.allow_change(
        &peer,
        &serde_json::json!({"op": "store-renew"}),
        Role::Admin,
    )?;
    let (req, _) = parse_body::<control::StoreLease>(&body)?;
    let alive = api
        .store()?
        .renew_registration(req.lease)
        .await
        .map_err(|e| ApiError::from(api.store_unreachable(e)))?
        .ok_or_else(|| {
            ApiError(
                StatusCode::FORBIDDEN,
                format!("lease {:x} is not a registration's", req.lease),
            )
        })?;
    Ok(Json(control::StoreRenewed { alive }).into_response())
}

/// How long a drain or undrain waits for the announcer to update the table.
const ANNOUNCE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Drains or undrains the node and waits until the routing table shows it:
/// the answer says what was withdrawn or announced, not what was asked.
async fn set_drained(api: &Api, drained: bool) -> Result<String, ApplyError> {
    let (what, epoch, mut settled, managed) = {
        let mut d = api.daemon();
        let managed = d.config().announce.and_then(|a| a.table).is_some();
        let settled = d.announce_settled();
        let (what, epoch) = d.set_drained(drained)?;
        (what, epoch, settled, managed)
    };
    if !managed {
        return Ok(format!(
            "{what} (no [announce] table: lbd writes no routes)"
        ));
    }
    let waited = tokio::time::timeout(ANNOUNCE_WAIT, settled.wait_for(|e| *e >= epoch)).await;
    let status = api.daemon().node_status();
    let unsettled = waited.is_err() || status.error.is_some();
    if unsettled {
        return Err(ApplyError::Pending(format!(
            "{what} (saved), but routing table {} is not updated yet: {}; lbd retries every second",
            status.table.unwrap_or_default(),
            status
                .error
                .as_deref()
                .unwrap_or("the announcer did not answer in time")
        )));
    }
    let list = |announced: bool| -> String {
        let v: Vec<String> = status
            .addresses
            .iter()
            .filter(|a| a.announced == announced)
            .map(|a| a.address.to_string())
            .collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    Ok(format!(
        "{what}: announced {}; withdrawn {}",
        list(true),
        list(false)
    ))
}

async fn node(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
) -> Result<Response, ApiError> {
    api.allow_read(&peer)?;
    let s = api.daemon().node_status();
    Ok(Json(s).into_response())
}

async fn reload(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Everyone who may reload may read: check that before looking at the body.
    let reader = api.allow_read(&peer)?;
    let (req, raw) = if body.is_empty() {
        (
            ReloadRequest::default(),
            serde_json::json!({"op": "reload"}),
        )
    } else {
        match parse_body::<ReloadRequest>(&body) {
            Ok(v) => v,
            Err(e) => {
                let what =
                    serde_json::json!({"op": "reload", "request": String::from_utf8_lossy(&body)});
                api.audit
                    .record(&reader, &what, &format!("refused: {}", e.1));
                return Err(e);
            }
        }
    };
    let audit_what = serde_json::json!({"op": "reload", "request": raw});
    let who = if req.dry_run {
        reader
    } else {
        api.allow_change(&peer, &audit_what, Role::Admin)?
    };
    let result = api.daemon().reload(req.dry_run);
    match result {
        Ok(r) => {
            if !req.dry_run {
                api.audit.record(&who, &audit_what, "ok");
                api.hooks.metrics.reload(true);
                api.hooks.notify_changed();
            }
            Ok(Json(r).into_response())
        }
        Err(e) => {
            if !req.dry_run {
                api.audit
                    .record(&who, &audit_what, &format!("refused: {e}"));
                api.hooks.metrics.reload(false);
            }
            Err(e.into())
        }
    }
}
