//! Uploads on a network with every link at MTU 1500, through the real lbd:
//! a client's full-size segments do not fit once encapsulated, the balancer
//! answers with ICMP "too big", the client lowers its path MTU to the VIP,
//! and 200 KB and 10 MB uploads to an echo service complete, echoed byte
//! for byte, over IPIP and IP6IP6.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use lb_lab::{clients::*, lab::*, netns, process::*};

/// Sends `size` bytes of numbered lines to `to`'s echo service and checks
/// every line that comes back; runs in the client's namespace.
fn upload(lab: &Lab, to: SocketAddr, size: usize, wait: Duration) -> Result<Duration, String> {
    lab.in_client(move || {
        let t = Instant::now();
        let s = TcpStream::connect_timeout(&to, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(wait)).unwrap();
        s.set_write_timeout(Some(wait)).unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut greeting = String::new();
        reader
            .read_line(&mut greeting)
            .map_err(|e| format!("greeting: {e}"))?;
        const LINE: usize = 1000;
        let lines = size / LINE;
        let line = |i: usize| format!("{i:0>width$}\n", width = LINE - 1);
        let mut w = s.try_clone().unwrap();
        let writer = thread::spawn(move || -> std::io::Result<()> {
            for i in 0..lines {
                w.write_all(line(i).as_bytes())?;
            }
            w.flush()
        });
        let mut got = String::new();
        for i in 0..lines {
            got.clear();
            reader
                .read_line(&mut got)
                .map_err(|e| format!("echo of line {i} of {lines}: {e} after {:?}", t.elapsed()))?;
            if got != line(i) {
                return Err(format!("line {i}: echoed {:?}", &got[..got.len().min(40)]));
            }
        }
        writer
            .join()
            .unwrap()
            .map_err(|e| format!("sending: {e}"))?;
        Ok(t.elapsed())
    })
}

/// 200 KB and 10 MB to the IPv4 and to the IPv6 web VIP, which must all
/// complete, echoed byte for byte.
fn upload_all(lab: &Lab) {
    let v4 = SocketAddr::from((VIP_WEB, 80));
    let v6 = SocketAddr::from((VIP_WEB6, 80));
    for (to, size) in [
        (v4, 200_000),
        (v4, 10_000_000),
        (v6, 200_000),
        (v6, 10_000_000),
    ] {
        let took = upload(lab, to, size, Duration::from_secs(20)).unwrap_or_else(|e| {
            panic!("uploading {size} bytes to {to}: {e}\n{}", lab.log_tail(20))
        });
        println!("{size} bytes to {to} and back in {took:?}");
    }
}

#[test]
fn uploads_complete_at_mtu_1500() {
    let mut lab = Lab::new_with_mtu(1, 1500).expect("building the lab");
    let vips = lab.standard_vips(&["b1"]);
    lab.write_config(&lab.config_text(&vips));
    lab.start_lbd().expect("starting lbd");
    lab.wait_next_hops(Duration::from_secs(10)).unwrap();
    let status = lab.status();
    let web = status
        .get("vips")
        .arr()
        .iter()
        .find(|v| v.get("name").str() == "web")
        .cloned()
        .unwrap();
    let b = &web.get("backends").arr()[0];
    assert_eq!(b.get("mtu").as_f64(), Some(1500.0), "{status:?}");
    assert_eq!(b.get("inner_mtu").as_f64(), Some(1480.0));

    upload_all(&lab);
    let metrics = lab.scrape();
    let sent: f64 = metrics
        .lines()
        .find(|l| l.starts_with("lb_events_total{event=\"icmp_too_big_sent\"}"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0);
    println!("ICMP too big sent: {sent}");
    assert!(sent >= 2.0, "the balancer sent {sent} ICMP messages");
    // The client learnt the path MTU to each VIP from them.
    let r4 = netns::ip(&lab.client_ns, &["route", "get", &VIP_WEB.to_string()]).unwrap();
    assert!(r4.contains("mtu 1480"), "{r4}");
    let r6 = netns::ip(
        &lab.client_ns,
        &["-6", "route", "get", &VIP_WEB6.to_string()],
    )
    .unwrap();
    assert!(r6.contains("mtu 1460"), "{r6}");
}

/// Config text for `vips` with `[icmp] too_big = false`.
fn without_icmp(lab: &Lab, vips: &[VipSpec]) -> String {
    let text = lab.config_text(vips);
    // `[icmp]` must come before the `[[vip]]` tables.
    let (head, rest) = text.split_at(text.find("[[vip]]").unwrap());
    format!("{head}[icmp]\ntoo_big = false\n\n{rest}")
}

fn metric(lab: &Lab, prefix: &str) -> f64 {
    lab.scrape()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0)
}

/// For networks that drop ICMP: the backends clamp the MSS of their
/// SYN-ACKs (`lbd decap --clamp-mss auto`) and the same uploads complete
/// with the balancer's answer switched off, no ICMP sent, nothing dropped.
#[test]
fn with_clamped_mss_uploads_need_no_icmp() {
    let mut lab = Lab::new_with_mtu(1, 1500).expect("building the lab");
    let b1 = lab.backend("b1").clone();
    let out = run_bounded(
        nsenter(&b1.ns, &lbd_bin()).args([
            "decap",
            "--interface",
            &b1.ifname,
            "--address",
            &b1.v4.to_string(),
            "--address",
            &b1.v6.to_string(),
            "--clamp-mss",
            "auto",
        ]),
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(out.ok(), "{out}");
    assert!(
        out.stdout
            .contains("clamped to MSS 1440 (IPv4) / 1400 (IPv6)"),
        "{out}"
    );
    let vips = lab.standard_vips(&["b1"]);
    lab.write_config(&without_icmp(&lab, &vips));
    lab.start_lbd().expect("starting lbd");
    lab.wait_next_hops(Duration::from_secs(10)).unwrap();
    upload_all(&lab);
    assert_eq!(
        metric(&lab, "lb_events_total{event=\"icmp_too_big_sent\"}"),
        0.0
    );
    assert_eq!(metric(&lab, "lb_drops_total{reason=\"too_big\"}"), 0.0);
}

/// What the ICMP answer fixes: with it switched off, the same upload stalls
/// (the oversize segments are dropped, counted, and nobody tells the client).
#[test]
fn without_the_icmp_answer_uploads_stall() {
    let mut lab = Lab::new_with_mtu(1, 1500).expect("building the lab");
    let vips = lab.standard_vips(&["b1"]);
    lab.write_config(&without_icmp(&lab, &vips));
    lab.start_lbd().expect("starting lbd");
    lab.wait_next_hops(Duration::from_secs(10)).unwrap();
    let r = upload(
        &lab,
        SocketAddr::from((VIP_WEB, 80)),
        200_000,
        Duration::from_secs(3),
    );
    assert!(
        r.is_err(),
        "the upload completed without the ICMP answer: {r:?}"
    );
    let metrics = lab.scrape();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("lb_drops_total{reason=\"too_big\"}") && !l.ends_with(" 0")),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("too_big"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
