//! Same decisions on every node: two lbd that reach the same VIPs,
//! backends and weights by different histories (one from its config file;
//! the other through lbctl changes, a kill -9 and restart, then a reload,
//! with its backend ids allocated in another order) hold the same Maglev
//! tables: the same checksum per VIP in `lbctl status --json`, and the same
//! backend from `lbctl explain` (the API it uses) for 10,000 random flows.
//! A flow a router moves from one balancer node to another keeps its
//! backend.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use lb::cli::client::{with_query, Client};
use lb_lab::{lab::*, rng::Rng, status::*};

/// The final state both nodes reach: web over b1, b2 (weight 50), b3; any
/// over b2, b3; web6 over b1..b3 with weights 1, 2, 3.
fn final_vips(lab: &Lab) -> Vec<VipSpec> {
    let v4 = |n: &str| IpAddr::from(lab.backend(n).v4);
    let v6 = |n: &str| IpAddr::from(lab.backend(n).v6);
    let mut web = VipSpec::new("web", VIP_WEB, Some(80), &[v4("b1"), v4("b2"), v4("b3")]);
    web.backends[1].1 = Some(50);
    let any = VipSpec::new("any", VIP_ANY, None, &[v4("b2"), v4("b3")]);
    let mut web6 = VipSpec::new("web6", VIP_WEB6, Some(80), &[v6("b1"), v6("b2"), v6("b3")]);
    for (i, b) in web6.backends.iter_mut().enumerate() {
        b.1 = Some(i as u32 + 1);
    }
    vec![web, any, web6]
}

/// Each VIP's table checksum, by name.
fn checksums(lab: &Lab) -> BTreeMap<String, String> {
    lab.status()
        .get("vips")
        .arr()
        .iter()
        .map(|v| {
            let sum = v.get("table_checksum").str().to_string();
            assert_eq!(sum.len(), 16, "a checksum for {v:?}");
            (v.get("name").str().to_string(), sum)
        })
        .collect()
}

#[test]
fn nodes_with_the_same_state_make_the_same_choices() {
    // Node A: straight from its config file.
    let a = Lab::with_lbd(3, |_| {}, final_vips);

    // Node B: web from b3 alone, then lbctl; any and web6 start elsewhere.
    let mut b = Lab::new(3).expect("lab B");
    let [b1, b2, b3] = ["b1", "b2", "b3"].map(|n| b.backend(n).v4.to_string());
    let first = {
        let mut vips = final_vips(&b);
        vips[0].backends = vec![(b.backend("b3").v4.into(), None)];
        vips[1].backends = vec![(b.backend("b1").v4.into(), Some(5))];
        vips[2].backends.truncate(1);
        vips
    };
    b.write_config(&b.config_text(&first));
    b.start_lbd().expect("lbd B");
    for args in [
        vec!["backend", "add", "web", &b2, "--weight", "7"],
        vec!["backend", "add", "web", &b1],
        vec!["backend", "del", "web", &b2],
        vec!["backend", "drain", "web", &b3],
    ] {
        b.lbctl_ok(&args);
    }
    b.kill_lbd();
    b.start_lbd().expect("lbd B again");
    for args in [
        vec!["backend", "add", "web", &b2, "--weight", "50"],
        vec!["backend", "undrain", "web", &b3],
    ] {
        b.lbctl_ok(&args);
    }
    // any and web6 through a reload of the final file (web is unchanged).
    b.write_config(&b.config_text(&final_vips(&b)));
    let out = b.lbctl_ok(&["reload"]);
    assert!(
        !out.contains("10.100.0.1:80/tcp") && out.contains("10.100.0.2/tcp"),
        "the reload changes any and web6, not web: {out}"
    );
    b.wait_next_hops(Duration::from_secs(10))
        .expect("next hops B");

    let (sa, sb) = (checksums(&a), checksums(&b));
    assert_eq!(sa.len(), 3);
    assert_eq!(sa, sb, "same state, same tables");
    println!("checksums on both nodes: {sa:?}");
    // The metric carries the low 48 bits, the same on both nodes.
    let metric = |lab: &Lab| -> u64 {
        let m = lab.scrape();
        let line = m
            .lines()
            .find(|l| l.starts_with("lb_vip_table_checksum{vip=\"10.100.0.1:80/tcp\"}"))
            .unwrap_or_else(|| panic!("no checksum metric:\n{m}"));
        line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
    };
    let web_sum = u64::from_str_radix(&sa["web"], 16).unwrap();
    assert_eq!(metric(&a), web_sum & 0xffff_ffff_ffff);
    assert_eq!(metric(&a), metric(&b));

    // Ten thousand random flows to web, a thousand to each other VIP: the
    // same backend from both nodes.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (ca, cb) = (Client::new(&a.socket), Client::new(&b.socket));
    let mut rng = Rng(0x5eed_ab1e);
    let mut asked = 0;
    let mut spread: BTreeMap<String, usize> = BTreeMap::new();
    for (vip, n, v6) in [
        ("10.100.0.1:80/tcp", 10_000, false),
        ("10.100.0.2/tcp", 1_000, false),
        ("[fd10:100::1]:80/tcp", 1_000, true),
    ] {
        for _ in 0..n {
            let (src, sport) = if v6 { rng.client_v6() } else { rng.client_v4() };
            let mut q = vec![
                ("src", src.clone()),
                ("sport", sport.to_string()),
                ("vip", vip.to_string()),
            ];
            if vip.ends_with("2/tcp") {
                q.push(("dport", (1 + rng.below(65535)).to_string()));
            }
            let path = with_query(lb::api::types::PATH_EXPLAIN, &q);
            let backend = |c: &Client| -> String {
                let raw = rt.block_on(c.get(&path)).expect("explain");
                let j = Json::parse(std::str::from_utf8(&raw).unwrap()).unwrap();
                j.get("backend").str().to_string()
            };
            let (ba, bb) = (backend(&ca), backend(&cb));
            assert!(!ba.is_empty(), "node A chose no backend for {path}");
            assert_eq!(ba, bb, "{path}: node A sends it to {ba}, node B to {bb}");
            *spread.entry(format!("{vip} {ba}")).or_default() += 1;
            asked += 1;
        }
    }
    println!("{asked} flows, the same backend on both nodes: {spread:?}");
}
