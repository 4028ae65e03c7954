//! The API over TCP (`api_listen`): TLS 1.3 only (rustls), a client
//! certificate signed by `api_client_ca` required, the client's identity
//! (each DNS, e-mail or URI SAN of its certificate, and its subject CN)
//! mapped to a role by `[api_roles]`. Plaintext TCP is not offered.
//!
//! Handshakes run concurrently, off the accept loop, each bounded in time,
//! so a slow or silent client holds up no one; a failed handshake (no
//! certificate, an unknown CA) is audited with the client's address.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_rustls::{server::TlsStream, TlsAcceptor};

use super::audit::{AuditLog, Peer};
use crate::{config::ApiTls, model::Role};

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at most; more connections wait to be accepted,
/// so a flood cannot take the file descriptors health checks and the
/// store need.
const MAX_HANDSHAKES: usize = 64;

/// A TLS client as the API sees it: where from, who its certificate says
/// it is, and the role that gives it (`None`: no identity of it is in
/// `[api_roles]`).
#[derive(Clone, Debug)]
pub struct Client {
    pub addr: SocketAddr,
    pub identity: String,
    pub role: Option<Role>,
}

/// Builds the server side: the key pair, TLS 1.3 only, client
/// certificates verified against the CA and required.
pub fn server_config(tls: &ApiTls) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&tls.cert, "api_tls_cert")?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .with_context(|| format!("api_tls_key {}: no private key", tls.key.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&tls.client_ca, "api_client_ca")? {
        roots
            .add(ca)
            .with_context(|| format!("api_client_ca {}", tls.client_ca.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("api_client_ca: building the client verifier")?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("api_tls_cert and api_tls_key do not make a key pair")?;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{key} {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{key} {}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{key} {}: no certificate in it",
        path.display()
    );
    Ok(certs)
}

/// Every name a client certificate gives its holder: SANs (DNS, e-mail,
/// URI), then the subject's CN.
pub fn identities(cert: &[u8]) -> Vec<String> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer};
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(cert) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    names.push(s.to_string())
                }
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            names.push(s.to_string());
        }
    }
    names
}

/// The role of the best-placed identity of a client's names.
pub fn role_of(
    names: &[String],
    roles: &std::collections::BTreeMap<String, Role>,
) -> Option<(String, Role)> {
    names
        .iter()
        .filter_map(|n| roles.get(n).map(|r| (n.clone(), *r)))
        .max_by_key(|(_, r)| *r)
}

/// The listener axum serves the API on: connections whose handshake
/// succeeded, with their client.
pub struct TlsListener {
    local: SocketAddr,
    rx: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, Client)>,
}

impl TlsListener {
    /// Binds `api_listen` and starts accepting; every failed handshake is
    /// audited.
    pub async fn bind(tls: &ApiTls, audit: Arc<AuditLog>) -> anyhow::Result<TlsListener> {
        let config = server_config(tls)?;
        let tcp = TcpListener::bind(tls.listen)
            .await
            .with_context(|| format!("api_listen {}", tls.listen))?;
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let roles = Arc::new(tls.roles.clone());
        let (tx, rx) = mpsc::channel(64);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (stream, addr) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("api_listen: accepting: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx, audit, roles) =
                    (acceptor.clone(), tx.clone(), audit.clone(), roles.clone());
                tokio::spawn(async move {
                    let shaken =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    drop(slot);
                    let tls = match shaken {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return refused(&audit, addr, &format!("TLS handshake: {e}")),
                        Err(_) => return refused(&audit, addr, "TLS handshake: timed out"),
                    };
                    let names = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| identities(c.as_ref()))
                        .unwrap_or_default();
                    let (identity, role) = match role_of(&names, &roles) {
                        Some((n, r)) => (n, Some(r)),
                        None => (names.first().cloned().unwrap_or_default(), None),
                    };
                    let _ = tx
                        .send((
                            tls,
                            Client {
                                addr,
                                identity,
                                role,
                            },
                        ))
                        .await;
                });
            }
        });
        Ok(TlsListener { local, rx })
    }
}

fn refused(audit: &AuditLog, addr: SocketAddr, why: &str) {
    let who = Peer::remote(addr, String::new());
    audit.record(
        &who,
        &serde_json::json!({"op": "connect"}),
        &format!("refused: {why}"),
    );
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = Client;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Client {
            addr: self.local,
            identity: String::new(),
            role: None,
        })
    }
}
