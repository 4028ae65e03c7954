//! Maglev tables share one array: each VIP gets a region of twice its table
//! size. These tests fill a small pool exactly, resize a VIP into a new
//! region, refuse what does not fit without touching what is live, and adopt
//! the regions from pinned maps after a restart.

use std::net::IpAddr;

use lb::{
    balancer::{LoadOptions, MapsError},
    model::{EncapSources, Limits, Proto, VipId, VipSettings},
};
use lb_common::FlowKey;
use lb_lab::{
    frame::{self, Frame},
    harness::*,
};

fn sized(table_size: u32) -> VipSettings {
    VipSettings {
        table_size,
        ..Default::default()
    }
}

fn lb_with_pool(table_pool: u32, pin_dir: Option<std::path::PathBuf>) -> TestLb {
    TestLb::with_options(LoadOptions {
        limits: Limits {
            max_vips: 8,
            table_pool,
            conntrack_size: 4096,
        },
        pin_dir,
        ..Default::default()
    })
}

/// Sends `n` new flows to `vip` (TCP port 80) and checks that each went to
/// the backend user space predicts from its copy of the live table.
fn check_flows(t: &mut TestLb, vip: &VipId, n: u16) {
    let IpAddr::V4(addr) = vip.addr else {
        panic!("IPv4 VIPs only")
    };
    let dst = addr.to_string();
    for i in 0..n {
        let client = format!("198.51.{}.{}", i / 250, 1 + i % 250);
        let (action, out) = t.run(&Frame::tcp(&client, 1000 + i, &dst, 80).build());
        assert_eq!(action, XDP_TX, "flow {i} to {dst}");
        let flow = FlowKey::new(client.parse().unwrap(), 1000 + i, addr.into(), 80, 6);
        let predicted = t.lb.predict(&flow).and_then(|p| p.backend);
        assert_eq!(Some(frame::outer_dst(&out)), predicted, "flow {i} to {dst}");
    }
}

#[test]
fn vips_fill_the_pool_and_a_freed_region_is_reused() {
    // Room for exactly one 251-slot and one 509-slot VIP.
    let mut t = lb_with_pool(2 * 251 + 2 * 509, None);
    let (a, b, c) = (
        vip("10.100.0.1", 80, Proto::Tcp),
        vip("10.100.0.2", 80, Proto::Tcp),
        vip("10.100.0.3", 80, Proto::Tcp),
    );
    t.add_vip(a, sized(251), &backends(&["10.0.0.2", "10.0.0.3"]));
    t.add_vip(b, sized(509), &backends(&["10.0.0.4", "10.0.0.5"]));
    let err = t.lb.upsert_vip(c, sized(251)).unwrap_err();
    assert!(
        matches!(
            err,
            MapsError::TablePoolFull {
                need: 502,
                free: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        t.lb.vips().all(|(v, _)| *v != c),
        "a refused VIP is not half made"
    );
    check_flows(&mut t, &a, 200);
    check_flows(&mut t, &b, 200);

    t.lb.remove_vip(&a).unwrap();
    t.add_vip(c, sized(251), &backends(&["10.0.0.6", "10.0.0.7"]));
    check_flows(&mut t, &b, 200);
    check_flows(&mut t, &c, 200);
}

#[test]
fn a_new_table_size_moves_the_vip_and_a_refused_one_changes_nothing() {
    let v = vip("10.100.0.1", 80, Proto::Tcp);
    let set = backends(&["10.0.0.2", "10.0.0.3", "10.0.0.4"]);
    // Room for the 251-slot region and a 509-slot one at the same time.
    let mut t = lb_with_pool(2 * 251 + 2 * 509, None);
    t.add_vip(v, sized(251), &set);
    check_flows(&mut t, &v, 300);
    t.lb.upsert_vip(v, sized(509)).unwrap();
    assert_eq!(t.lb.live_table(&v).map(<[u32]>::len), Some(509));
    check_flows(&mut t, &v, 300);
    // Back to 251: the first region was released, so this fits again.
    t.lb.upsert_vip(v, sized(251)).unwrap();
    assert_eq!(t.lb.live_table(&v).map(<[u32]>::len), Some(251));
    check_flows(&mut t, &v, 300);

    // A pool with no room for a second region: the resize is refused and
    // the live table keeps serving.
    let mut small = lb_with_pool(2 * 509, None);
    small.add_vip(v, sized(251), &set);
    let before = small.lb.live_table(&v).map(<[u32]>::to_vec);
    let err = small.lb.upsert_vip(v, sized(509)).unwrap_err();
    assert!(matches!(err, MapsError::TablePoolFull { .. }), "{err}");
    assert_eq!(small.lb.live_table(&v).map(<[u32]>::to_vec), before);
    check_flows(&mut small, &v, 300);
    // A backend change still works in the VIP's own region.
    small
        .lb
        .set_backends(v, &backends(&["10.0.0.2", "10.0.0.3"]))
        .unwrap();
    check_flows(&mut small, &v, 300);
}

/// Removes a pin directory on the way out, also when the test fails.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn regions_are_adopted_from_pinned_maps() {
    let dir = PinDir(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/lb-test-tables-{}",
        std::process::id()
    )));
    let pool = 2 * 251 + 2 * 509 + 2 * 1021;
    let (a, b) = (
        vip("10.100.0.1", 80, Proto::Tcp),
        vip("10.100.0.2", 80, Proto::Tcp),
    );
    let set_a = backends(&["10.0.0.2", "10.0.0.3"]);
    let set_b = backends(&["10.0.0.4", "10.0.0.5", "10.0.0.6"]);
    {
        let mut t = lb_with_pool(pool, Some(dir.0.clone()));
        t.add_vip(a, sized(251), &set_a);
        t.add_vip(b, sized(509), &set_b);
        // Flip B once more, so its live table is the second half.
        t.lb.set_backends(b, &set_b[..2]).unwrap();
    }
    let mut t = lb_with_pool(pool, Some(dir.0.clone()));
    assert!(t.lb.adopted());
    check_flows(&mut t, &a, 200);
    check_flows(&mut t, &b, 200);
    // What is left is exactly one 1021-slot region: the adopted ones are
    // reserved, so a new VIP cannot land on them.
    let c = vip("10.100.0.3", 80, Proto::Tcp);
    let err = t.lb.upsert_vip(c, sized(2039)).unwrap_err();
    assert!(
        matches!(err, MapsError::TablePoolFull { free: 2042, .. }),
        "{err}"
    );
    t.add_vip(c, sized(1021), &backends(&["10.0.0.7"]));
    // Reconcile as lbd does after adopting (weights are not in the maps).
    t.lb.set_backends(a, &set_a).unwrap();
    t.lb.set_backends(b, &set_b[..2]).unwrap();
    for v in [a, b, c] {
        check_flows(&mut t, &v, 200);
    }
}

#[test]
fn adopted_maps_keep_their_settings() {
    let dir = PinDir(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/lb-test-settings-{}",
        std::process::id()
    )));
    let mac = [0x02, 0, 0, 0, 0, 0x42];
    let sources = EncapSources {
        v4: Some(("192.0.2.10".parse().unwrap(), 32)),
        v6: None,
    };
    {
        let mut t = lb_with_pool(2 * 251, Some(dir.0.clone()));
        t.lb.set_interface_mac(mac).unwrap();
        t.lb.set_encap_sources(&sources).unwrap();
        t.lb.set_too_big(None).unwrap();
    }
    // A restarted daemon's load writes no setting of its own: the running
    // program keeps its MAC check, encap sources and ICMP switch until the
    // daemon sets them, field by field.
    let mut t = lb_with_pool(2 * 251, Some(dir.0.clone()));
    assert!(t.lb.adopted());
    assert_eq!(t.lb.interface_mac(), mac);
    t.lb.set_too_big(Some(10)).unwrap();
    assert_eq!(
        t.lb.interface_mac(),
        mac,
        "one setting's write keeps the others"
    );
    let v = vip("10.100.0.1", 80, Proto::Tcp);
    t.add_vip(v, sized(251), &backends(&["10.0.0.2"]));
    let mut other = Frame::tcp("198.51.100.7", 4000, "10.100.0.1", 80);
    other.dst_mac = [0x02, 0, 0, 0, 0, 0x43];
    let f = other.build();
    assert_eq!(
        t.run(&f),
        (XDP_PASS, f.clone()),
        "still only frames to its MAC"
    );
    let mut ours = Frame::tcp("198.51.100.7", 4000, "10.100.0.1", 80);
    ours.dst_mac = mac;
    let (action, out) = t.run(&ours.build());
    assert_eq!(action, XDP_TX);
    assert_eq!(&out[26..30], &[192, 0, 2, 10], "the adopted outer source");
}
