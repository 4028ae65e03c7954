//! Probing: one check of one backend (TCP connect, HTTP GET, UDP datagram)
//! and its result. Nothing here knows about the daemon.

use std::net::{IpAddr, SocketAddr};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

use crate::model::{HealthKind, HealthSpec};

/// Probes `target` once, within the spec's timeout.
pub async fn probe(spec: &HealthSpec, target: SocketAddr) -> Result<(), String> {
    match tokio::time::timeout(spec.timeout, probe_inner(spec, target)).await {
        Ok(r) => r,
        // A UDP probe that got no ICMP error by the deadline counts as
        // answered: most UDP services do not reply to a stranger's datagram.
        Err(_) if spec.kind == HealthKind::Udp => Ok(()),
        Err(_) => Err(format!("timed out after {:?}", spec.timeout)),
    }
}

async fn probe_inner(spec: &HealthSpec, target: SocketAddr) -> Result<(), String> {
    match spec.kind {
        HealthKind::None => Ok(()),
        HealthKind::Tcp => TcpStream::connect(target)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        HealthKind::Http => http_get(spec, target).await,
        HealthKind::Udp => udp_probe(target).await,
    }
}

async fn http_get(spec: &HealthSpec, target: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect(target)
        .await
        .map_err(|e| e.to_string())?;
    let host = match target.ip() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lbd-health\r\nConnection: close\r\n\r\n",
        spec.path
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // The status line is all we need: "HTTP/1.x NNN ...".
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let code: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP response: {:?}",
                line.lines().next().unwrap_or("")
            )
        })?;
    let ok = match spec.expect_status {
        Some(want) => code == want,
        None => (200..300).contains(&code),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("HTTP status {code}"))
    }
}

/// Sends a datagram on a connected socket: a closed port answers with ICMP
/// port unreachable, which the socket reports as "connection refused".
async fn udp_probe(target: SocketAddr) -> Result<(), String> {
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("literal");
    let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    sock.connect(target).await.map_err(|e| e.to_string())?;
    sock.send(b"lbd health probe\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    sock.recv(&mut buf)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
