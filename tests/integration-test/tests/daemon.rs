//! Acceptance tests of lbd and lbctl (see `integration_test::daemon`).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use integration_test::daemon::*;

fn web() -> SocketAddr {
    SocketAddr::from((VIP_WEB, 80))
}

#[test]
fn bring_up() {
    let t0 = Instant::now();
    let mut lab = Lab::new(3).expect("lab");
    println!("lab {} built in {:?}", lab.tag, t0.elapsed());
    let vips = lab.standard_vips(&["b1", "b2", "b3"]);
    lab.write_config(&lab.config_text(&vips));
    let t1 = Instant::now();
    lab.start_lbd().expect("lbd");
    println!("lbd ready in {:?}", t1.elapsed());
    let s = lab.wait_next_hops(Duration::from_secs(10)).unwrap();
    println!("next hops in {:?}", t1.elapsed());
    println!("{}", lab.lbctl_ok(&["status"]));
    let _ = s;
    let r = lab.spread(web(), 30);
    println!("{r:?} at {:?}", t0.elapsed());
    println!("{}", lab.diagnostics());
}
