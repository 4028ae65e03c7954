//! lbd's API over TLS (`api_listen`): TLS 1.3 with client certificates,
//! roles from `[api_roles]`, every refusal audited with the client's
//! identity. Certificates are made with openssl (`lb_lab::certs`); lbctl
//! talks to 127.0.0.1 in the balancer's namespace with `--server`.
//!
//! [`clients_get_what_their_certificate_allows`]: no certificate, an
//! unknown CA, a certificate whose names are in no role: refused (at the
//! handshake, or at the request), audited; `read` reads but may not change;
//! `operate` drains but may not delete a VIP; `admin` changes, and the
//! audit log names it.

use std::{path::Path, time::Duration};

use lb_lab::{
    certs,
    lab::Lab,
    process::{lbctl_bin, nsenter, run_bounded, Output},
    status::Json,
};

const LISTEN: &str = "127.0.0.1:9470";

fn lbctl_tls(lab: &Lab, ca: &Path, client: Option<&certs::Pair>, args: &[&str]) -> Output {
    let mut cmd = nsenter(&lab.lb_ns, &lbctl_bin());
    cmd.args(["--server", &format!("https://{LISTEN}"), "--ca"])
        .arg(ca);
    if let Some(c) = client {
        cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
    }
    cmd.args(args);
    run_bounded(&mut cmd, Duration::from_secs(20)).expect("running lbctl")
}

/// The audit log's lines from `from` on.
fn audit_since(lab: &Lab, from: usize) -> Vec<Json> {
    let text = std::fs::read_to_string(lab.state_dir.join("audit.log")).unwrap_or_default();
    text.lines()
        .skip(from)
        .map(|l| Json::parse(l).expect("audit lines are JSON"))
        .collect()
}

#[test]
fn clients_get_what_their_certificate_allows() {
    let mut lab = Lab::new(2).expect("lab");
    let dir = lab.dir.join("pki");
    let ca = certs::ca(&dir, "clients-ca").unwrap();
    let other_ca = certs::ca(&dir, "other-ca").unwrap();
    let server = certs::issue(
        &dir,
        &ca,
        "api",
        "lb.test",
        &["IP:127.0.0.1", "DNS:lb.test"],
        "serverAuth",
    )
    .unwrap();
    let admin = certs::issue(
        &dir,
        &ca,
        "admin",
        "alice",
        &["DNS:admin.ops.test"],
        "clientAuth",
    )
    .unwrap();
    let operator = certs::issue(&dir, &ca, "operator", "oncall", &[], "clientAuth").unwrap();
    let reader = certs::issue(&dir, &ca, "reader", "monitor", &[], "clientAuth").unwrap();
    let nobody = certs::issue(&dir, &ca, "nobody", "intern", &[], "clientAuth").unwrap();
    let stranger = certs::issue(&dir, &other_ca, "stranger", "monitor", &[], "clientAuth").unwrap();

    let b: Vec<String> = ["b1", "b2"]
        .iter()
        .map(|n| lab.backend(n).v4.to_string())
        .collect();
    let mut cfg = lab.config_text(&lab.standard_vips(&["b1", "b2"]));
    // Top-level keys go before the tables.
    cfg = cfg.replacen(
        "\n[encap]",
        &format!(
            "api_listen = \"{LISTEN}\"\napi_tls_cert = \"{}\"\napi_tls_key = \"{}\"\n\
             api_client_ca = \"{}\"\n\n[api_roles]\n\"admin.ops.test\" = \"admin\"\n\
             \"oncall\" = \"operate\"\n\"monitor\" = \"read\"\n\n[encap]",
            server.cert.display(),
            server.key.display(),
            ca.cert.display()
        ),
        1,
    );
    lab.write_config(&cfg);
    lab.start_lbd().expect("lbd");
    let start = audit_since(&lab, 0).len();

    // No certificate, an unknown CA: the handshake is refused, and audited.
    let out = lbctl_tls(&lab, &ca.cert, None, &["status"]);
    assert!(!out.ok(), "no certificate: {out}");
    let out = lbctl_tls(&lab, &ca.cert, Some(&stranger), &["status"]);
    assert!(!out.ok(), "unknown CA: {out}");
    // A certificate lbd trusts, whose names are in no role.
    let out = lbctl_tls(&lab, &ca.cert, Some(&nobody), &["status"]);
    assert!(!out.ok() && out.stderr.contains("has no role"), "{out}");

    // read: reads, may not change.
    let status = lbctl_tls(&lab, &ca.cert, Some(&reader), &["status"]);
    assert!(
        status.ok() && status.stdout.contains("VIP 10.100.0.1:80/tcp"),
        "{status}"
    );
    let out = lbctl_tls(
        &lab,
        &ca.cert,
        Some(&reader),
        &["backend", "set", "web", &b[0], "--weight", "5"],
    );
    assert!(
        !out.ok() && out.stderr.contains("has role read: this needs operate"),
        "{out}"
    );

    // operate: drains, may not delete a VIP.
    let out = lbctl_tls(
        &lab,
        &ca.cert,
        Some(&operator),
        &["backend", "drain", "web", &b[1]],
    );
    assert!(out.ok(), "{out}");
    let out = lbctl_tls(&lab, &ca.cert, Some(&operator), &["vip", "del", "web"]);
    assert!(
        !out.ok() && out.stderr.contains("this needs admin"),
        "{out}"
    );

    // admin: a change, applied.
    let out = lbctl_tls(
        &lab,
        &ca.cert,
        Some(&admin),
        &["backend", "set", "web", &b[0], "--weight", "7"],
    );
    assert!(out.ok(), "{out}");
    let local = lab.lbctl_ok(&["--json", "backend", "list", "web"]);
    assert!(local.contains("\"weight\": 7"), "{local}");

    // The audit trail: every refusal and every change, with who.
    let audit = audit_since(&lab, start);
    let lines: Vec<String> = audit
        .iter()
        .map(|a| {
            format!(
                "{} {} {}",
                a.get("identity").str(),
                a.get("change").get("op").str(),
                a.get("result").str()
            )
        })
        .collect();
    println!("audit:\n{}", lines.join("\n"));
    let handshakes = audit
        .iter()
        .filter(|a| {
            a.get("change").get("op").str() == "connect"
                && a.get("result").str().starts_with("refused: TLS handshake")
                && a.get("from").str().starts_with("127.0.0.1:")
        })
        .count();
    assert_eq!(
        handshakes, 2,
        "no certificate and the unknown CA: {lines:?}"
    );
    let has = |identity: &str, result: &str| {
        audit.iter().any(|a| {
            a.get("identity").str() == identity && a.get("result").str().starts_with(result)
        })
    };
    assert!(has("intern", "refused: client \"intern\""), "{lines:?}");
    assert!(
        has("monitor", "refused: client \"monitor\" has role read"),
        "{lines:?}"
    );
    assert!(has("oncall", "ok"), "{lines:?}");
    assert!(
        has("oncall", "refused: client \"oncall\" has role operate"),
        "{lines:?}"
    );
    assert!(has("admin.ops.test", "ok"), "{lines:?}");
    // The local socket is as it was: root changes.
    lab.lbctl_ok(&["backend", "undrain", "web", &b[1]]);
}
