//! Certificates for the TLS API tests, made with the openssl CLI: CAs, a
//! server certificate and client certificates with the names a test
//! wants (SAN DNS names or only a subject CN).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context, Result};

/// A key pair's files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running openssl (is it installed? `cargo xtask setup`)")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `openssl req` making a fresh P-256 key into `key`, with `extra` after.
fn req(dir: &Path, key: &str, extra: &[&str]) -> Result<()> {
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key,
    ];
    args.extend_from_slice(extra);
    openssl(dir, &args)
}

/// A self-signed CA named `name` in `dir` (`NAME.pem`, `NAME.key`).
pub fn ca(dir: &Path, name: &str) -> Result<Pair> {
    fs::create_dir_all(dir)?;
    let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
    let subject = format!("/CN={name}");
    req(
        dir,
        &key,
        &["-x509", "-out", &cert, "-days", "2", "-subj", &subject],
    )?;
    Ok(Pair {
        cert: dir.join(cert),
        key: dir.join(key),
    })
}

/// A certificate signed by `ca`: subject CN `cn`, the SANs given
/// (`DNS:x`, `IP:127.0.0.1`; none: no SAN extension), for `usage`
/// (`serverAuth` or `clientAuth`).
pub fn issue(
    dir: &Path,
    ca: &Pair,
    name: &str,
    cn: &str,
    sans: &[&str],
    usage: &str,
) -> Result<Pair> {
    let (cert, key, csr, ext) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
    );
    let subject = format!("/CN={cn}");
    req(dir, &key, &["-out", &csr, "-subj", &subject])?;
    let mut e = format!("basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n");
    if !sans.is_empty() {
        e += &format!("subjectAltName={}\n", sans.join(","));
    }
    fs::write(dir.join(&ext), e)?;
    let (ca_cert, ca_key) = (ca.cert.display().to_string(), ca.key.display().to_string());
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    )?;
    Ok(Pair {
        cert: dir.join(cert),
        key: dir.join(key),
    })
}
