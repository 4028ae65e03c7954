//! The control API client: HTTP/1.1 over lbd's Unix socket, or over TLS
//! 1.3 with a client certificate (`--server https://HOST:PORT`), one
//! connection per request.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use tokio::net::UnixStream;

use super::CliError;
use crate::api::types::ErrorBody;

/// How long one request may take, connecting included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Client {
    socket: PathBuf,
    /// `--server`: lbd's TLS API instead of the socket.
    tls: Option<Remote>,
    timeout: Duration,
}

/// lbd's API over TLS: where, the name its certificate must carry, and our
/// side of the handshake.
struct Remote {
    url: String,
    addr: String,
    name: rustls::pki_types::ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
}

/// `--server`'s files: the CA lbd's certificate is signed by, and this
/// client's certificate and key (without them lbd refuses the handshake).
pub struct TlsFiles<'a> {
    pub ca: &'a Path,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            tls: None,
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// A client of lbd's TLS API at `url` (`https://HOST:PORT`).
    pub fn remote(url: &str, files: TlsFiles<'_>) -> Result<Self, CliError> {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
        let bad = |m: String| CliError::Other(m);
        let Some(addr) = url.strip_prefix("https://") else {
            return Err(bad(format!(
                "--server {url:?}: give https://HOST:PORT (lbd offers no plaintext TCP)"
            )));
        };
        let addr = addr.trim_end_matches('/').to_string();
        let host = match addr.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => {
                h.trim_start_matches('[').trim_end_matches(']')
            }
            _ => return Err(bad(format!("--server {url:?}: give https://HOST:PORT"))),
        };
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| bad(format!("--server {url:?}: {e}")))?;
        let read_certs = |p: &Path| -> Result<Vec<CertificateDer<'static>>, CliError> {
            CertificateDer::pem_file_iter(p)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(format!("{}: {e}", p.display())))
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs(files.ca)? {
            roots
                .add(c)
                .map_err(|e| bad(format!("--ca {}: {e}", files.ca.display())))?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (files.cert, files.key) {
            (Some(cert), Some(key)) => {
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| bad(format!("--key {}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(read_certs(cert)?, key)
                    .map_err(|e| bad(format!("--cert and --key: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(bad("--cert and --key go together".into())),
        };
        Ok(Client {
            socket: PathBuf::new(),
            tls: Some(Remote {
                url: url.to_string(),
                addr,
                name,
                connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
            }),
            timeout: REQUEST_TIMEOUT,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Where requests go, for messages.
    pub fn target(&self) -> String {
        match &self.tls {
            Some(r) => r.url.clone(),
            None => format!("socket {}", self.socket.display()),
        }
    }

    /// `GET path_and_query`; the raw body of a 2xx answer.
    pub async fn get(&self, path_and_query: &str) -> Result<Bytes, CliError> {
        self.request(Method::GET, path_and_query, None).await
    }

    /// `POST path` with a JSON body; the raw body of a 2xx answer.
    pub async fn post<T: Serialize>(&self, path: &str, body: &T) -> Result<Bytes, CliError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| CliError::Other(format!("cannot encode the request: {e}")))?;
        self.request(Method::POST, path, Some(body)).await
    }

    async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, CliError> {
        let what = format!(
            "{method} {}",
            path_and_query.split('?').next().unwrap_or("")
        );
        match tokio::time::timeout(self.timeout, self.exchange(method, path_and_query, body)).await
        {
            Ok(r) => r,
            Err(_) => Err(CliError::Other(format!(
                "lbd did not answer {what} within {}s ({})",
                self.timeout.as_secs(),
                self.target()
            ))),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, CliError> {
        if let Some(r) = &self.tls {
            let cannot =
                |e: io::Error| CliError::Other(format!("cannot connect to lbd at {}: {e}", r.url));
            let tcp = tokio::net::TcpStream::connect(&r.addr)
                .await
                .map_err(cannot)?;
            let tls = r
                .connector
                .connect(r.name.clone(), tcp)
                .await
                .map_err(cannot)?;
            return send(tls, method, path_and_query, body).await;
        }
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| CliError::Connect {
                socket: self.socket.clone(),
                error: e,
            })?;
        send(stream, method, path_and_query, body).await
    }
}

/// One request and its answer on a fresh connection.
async fn send<S>(
    stream: S,
    method: Method,
    path_and_query: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, CliError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    {
        let broken = |e: hyper::Error| CliError::Other(format!("talking to lbd: {e}"));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(broken)?;
        // Drives the connection; ends when the answer is read or the
        // connection breaks (which `send_request` then reports).
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });

        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::HOST, "lb")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("lbctl/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CliError::Other(format!("bad request {path_and_query:?}: {e}")))?;

        let resp = sender.send_request(req).await.map_err(broken)?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(broken)?.to_bytes();
        driver.abort();
        if status.is_success() {
            Ok(body)
        } else {
            Err(daemon_error(status, &body))
        }
    }
}

/// The error a non-2xx answer carries: its [`ErrorBody`], or what there is.
fn daemon_error(status: StatusCode, body: &[u8]) -> CliError {
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                format!("lbd answered {status}")
            } else {
                format!("lbd answered {status}: {text}")
            }
        }
    };
    CliError::Daemon { status, message }
}

/// Decodes a 2xx body into the type the API promises.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CliError> {
    serde_json::from_slice(body).map_err(|e| {
        CliError::Other(format!(
            "lbd sent an answer lbctl does not understand ({e}); are lbctl and lbd the same version?"
        ))
    })
}

/// Percent-encodes a query value: everything but RFC 3986's unreserved
/// characters.
pub fn encode_query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `path?k=v&k=v` with the values encoded.
pub fn with_query(path: &str, params: &[(&str, String)]) -> String {
    let mut out = path.to_string();
    for (i, (k, v)) in params.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(k);
        out.push('=');
        out.push_str(&encode_query_value(v));
    }
    out
}

/// What to say when the socket cannot be reached.
pub fn connect_message(socket: &Path, e: &io::Error) -> String {
    let why = match e.kind() {
        io::ErrorKind::NotFound => "no such socket".to_string(),
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::PermissionDenied => {
            return format!(
                "cannot connect to lbd at {}: permission denied; run lbctl as root or as a \
                 user allowed to use the socket",
                socket.display()
            )
        }
        _ => e.to_string(),
    };
    format!(
        "cannot connect to lbd at {}: {why}; is lbd running, and is --socket the path in its \
         config?",
        socket.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{Change, Status, PATH_CHANGE, PATH_STATUS};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    #[test]
    fn encodes_query_values() {
        assert_eq!(
            encode_query_value("10.100.0.1:80/tcp"),
            "10.100.0.1%3A80%2Ftcp"
        );
        assert_eq!(
            encode_query_value("[2001:db8::1]:443/tcp"),
            "%5B2001%3Adb8%3A%3A1%5D%3A443%2Ftcp"
        );
        assert_eq!(encode_query_value("web a&b=c"), "web%20a%26b%3Dc");
        assert_eq!(encode_query_value("é"), "%C3%A9");
        assert_eq!(
            with_query(
                "/v1/explain",
                &[("src", "2001:db8::7".into()), ("sport", "40000".into())]
            ),
            "/v1/explain?src=2001%3Adb8%3A%3A7&sport=40000"
        );
        assert_eq!(with_query("/v1/status", &[]), "/v1/status");
    }

    #[test]
    fn error_bodies() {
        let e = daemon_error(StatusCode::NOT_FOUND, br#"{"error":"unknown VIP web"}"#);
        assert_eq!(e.to_string(), "unknown VIP web");
        assert_eq!(e.exit_code(), 1);
        let e = daemon_error(StatusCode::BAD_GATEWAY, b"");
        assert_eq!(e.to_string(), "lbd answered 502 Bad Gateway");
        let e = daemon_error(StatusCode::INTERNAL_SERVER_ERROR, b"oops\n");
        assert_eq!(
            e.to_string(),
            "lbd answered 500 Internal Server Error: oops"
        );
    }

    fn temp_socket(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lbctl-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("lbd.sock")
    }

    /// Answers one request with `response` and returns what it received.
    fn serve_once(listener: UnixListener, response: String) -> tokio::task::JoinHandle<String> {
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then as much body as Content-Length says.
            loop {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(response.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            String::from_utf8(got).unwrap()
        })
    }

    fn http_response(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn gets_and_decodes() {
        let path = temp_socket("get");
        let listener = UnixListener::bind(&path).unwrap();
        let body = r#"{"interface":"eth0","xdp_mode":"native","program_id":7,"uptime_secs":61,
            "pin_dir":"/sys/fs/bpf/lb","vips":[]}"#;
        let server = serve_once(listener, http_response("200 OK", body));
        let raw = Client::new(&path).get(PATH_STATUS).await.unwrap();
        let status: Status = decode(&raw).unwrap();
        assert_eq!(status.interface, "eth0");
        assert_eq!(status.program_id, 7);
        let req = server.await.unwrap();
        assert!(req.starts_with("GET /v1/status HTTP/1.1\r\n"), "{req}");
        assert!(
            req.to_ascii_lowercase().contains("\r\nhost: lb\r\n"),
            "{req}"
        );
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn posts_json_and_reports_refusals() {
        let path = temp_socket("post");
        let listener = UnixListener::bind(&path).unwrap();
        let server = serve_once(
            listener,
            http_response(
                "409 Conflict",
                r#"{"error":"VIP 10.0.0.1:80/tcp already has backend 10.0.0.2"}"#,
            ),
        );
        let change = Change::BackendAdd {
            vip: "web".into(),
            addr: "10.0.0.2".parse().unwrap(),
            weight: Some(5),
            tier: None,
        };
        let err = Client::new(&path)
            .post(PATH_CHANGE, &change)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "VIP 10.0.0.1:80/tcp already has backend 10.0.0.2"
        );
        assert_eq!(err.exit_code(), 1);
        let req = server.await.unwrap();
        assert!(req.starts_with("POST /v1/change HTTP/1.1\r\n"), "{req}");
        let lower = req.to_ascii_lowercase();
        assert!(
            lower.contains("\r\ncontent-type: application/json\r\n"),
            "{req}"
        );
        let (_, body) = req.split_once("\r\n\r\n").unwrap();
        let sent: Change = serde_json::from_str(body).unwrap();
        assert_eq!(sent, change);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn says_when_lbd_is_not_there() {
        let path = temp_socket("absent");
        let err = Client::new(&path).get(PATH_STATUS).await.unwrap_err();
        assert_eq!(err.exit_code(), 1);
        let msg = err.to_string();
        assert!(msg.contains("cannot connect to lbd at"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("is lbd running"), "{msg}");
        assert!(msg.contains("--socket"), "{msg}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn times_out() {
        let path = temp_socket("slow");
        let listener = UnixListener::bind(&path).unwrap();
        // Accepts and never answers.
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let mut client = Client::new(&path);
        client.timeout = Duration::from_millis(200);
        let err = client.get(PATH_STATUS).await.unwrap_err();
        assert!(
            err.to_string().contains("did not answer GET /v1/status"),
            "{err}"
        );
        assert_eq!(err.exit_code(), 1);
        server.abort();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
