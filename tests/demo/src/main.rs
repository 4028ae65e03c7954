//! `cargo xtask demo`: lb end to end, the first thing to run.
//!
//! As root, in network namespaces it creates (and always removes, also on
//! failure and on Ctrl-C), it
//!
//! 1. starts a client, the balancer (`lbd run` with a generated config) and
//!    three backends serving HTTP on the VIP (`lbd decap` on each);
//! 2. sends a few hundred real HTTP requests and shows how they spread;
//! 3. stops one backend's server, shows lbd's health checks taking it out
//!    and no request failing after that, then brings it back;
//! 4. drains a backend with `lbctl`: an established (slow) download on it
//!    finishes while new connections avoid it;
//! 5. prints `lbctl status` and a few Prometheus metrics, then cleans up.
//!
//! Every step checks what it claims; the demo exits 0 only if all held (1
//! otherwise, 130 when interrupted). See `lab.rs` for the topology and
//! `http.rs` for the servers and the client. Traffic never leaves the
//! demo's namespaces.
//!
//! Run: `cargo xtask demo` (sets up the toolchain and builds first), or
//! `cargo xtask build && cargo run -p demo --bin demo` as root.

/// `println!` that never panics: stdout is line-buffered, so each line shows
/// at once (also in CI), and a closed stdout (`demo | head`) must not stop
/// the cleanup.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

mod http;
mod lab;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Result};
use lb_lab::{interrupt, netns::in_netns};

use http::{Slow, Tally, SLOW_GAP, SLOW_PARTS};
use lab::{Lab, METRICS_ADDR, VIP, VIP_ID};

/// Requests in step 2.
const SPREAD_REQUESTS: usize = 300;
/// Requests after each change in steps 3 and 4.
const AFTER_REQUESTS: usize = 200;
/// Requests showing a backend is back.
const BACK_REQUESTS: usize = 150;
/// Pause between requests while waiting for lbd to notice a failure.
const PROBE_GAP: Duration = Duration::from_millis(20);
/// How often `lbctl status` is asked meanwhile.
const STATUS_GAP: Duration = Duration::from_millis(100);
/// Bounds of the waits for lbd.
const START_LIMIT: Duration = Duration::from_secs(20);
const HEALTH_LIMIT: Duration = Duration::from_secs(15);
const DETECT_LIMIT: Duration = Duration::from_secs(10);
/// /slow requests tried to get one on the backend to drain.
const SLOW_TRIES: usize = 30;

/// An error if the demo was asked to stop (Ctrl-C, SIGTERM).
pub fn check_interrupt() -> Result<()> {
    Ok(interrupt::check()?)
}

/// Sleeps, in small steps, unless interrupted.
fn pause(d: Duration) -> Result<()> {
    let until = Instant::now() + d;
    loop {
        check_interrupt()?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

// ---------------------------------------------------------------- main

fn main() -> ExitCode {
    interrupt::install();
    let started = Instant::now();
    say!("lb demo: an XDP layer-4 load balancer, end to end");
    say!("  A client, the balancer and three web servers, each in a network namespace of its");
    say!("  own on one switched segment. The balancer's XDP program picks a backend for each");
    say!("  new connection to the VIP (Maglev), wraps its packets in IPIP and sends them back");
    say!("  out to that backend; the backend's XDP program unwraps them and the web server");
    say!("  answers the client directly. Nothing leaves the demo's namespaces.");

    let mut lab = match Lab::new() {
        Ok(lab) => lab,
        Err(e) => {
            say!("\nThe demo cannot run: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = run(&mut lab);
    // An interrupted command (a Ctrl-C reaches `ip` too) counts as the
    // interrupt, not as a failure of its own.
    let interrupted = result.is_err() && interrupt::requested();
    match &result {
        Ok(()) => {}
        Err(_) if interrupted => say!("\nInterrupted: cleaning up."),
        Err(e) => {
            say!("\nFAILED: {e:#}");
            let tail = lab.log_tail(25);
            if !tail.is_empty() {
                say!("  the end of lbd's log:\n{tail}");
            }
        }
    }

    say!("\nCleanup");
    let problems = lab.cleanup();
    for p in &problems {
        say!("  NOT CLEAN: {p}");
    }
    if problems.is_empty() {
        say!("  nothing of the demo is left: no namespace, pinned program or lbd process");
    }
    let secs = started.elapsed().as_secs_f64();
    match (result.is_ok(), problems.is_empty()) {
        (true, true) => {
            say!("\nDemo passed in {secs:.1} s: every step did what it said.");
            ExitCode::SUCCESS
        }
        _ if interrupted => ExitCode::from(130),
        (true, false) => {
            say!("\nDemo FAILED after {secs:.1} s: the steps passed, but the cleanup did not.");
            ExitCode::FAILURE
        }
        (false, _) => {
            say!("\nDemo FAILED after {secs:.1} s (see above).");
            ExitCode::FAILURE
        }
    }
}

fn run(lab: &mut Lab) -> Result<()> {
    lab.check_leftovers()?;
    step1_start(lab)?;
    step2_spread(lab)?;
    step3_failover(lab)?;
    step4_drain(lab)?;
    step5_report(lab)?;
    Ok(())
}

// ---------------------------------------------------------------- helpers

/// `n` requests for `/`, one after another, each on a new connection.
fn batch(lab: &mut Lab, n: usize) -> Result<Tally> {
    let started = Instant::now();
    let mut t = Tally::default();
    for _ in 0..n {
        check_interrupt()?;
        t.record(http::get(&lab.client_ns, lab::vip_socket(), "/")?);
    }
    t.took = started.elapsed();
    lab.check_lbd()?;
    Ok(t)
}

/// Prints a command's output, indented.
fn show(text: &str) {
    for line in text.trim_end().lines() {
        say!("    {line}");
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

// ---------------------------------------------------------------- step 1

fn step1_start(lab: &mut Lab) -> Result<()> {
    say!("\nStep 1: a client, the balancer and three backends, each in a network namespace");
    say!("  ┌────────┐  ┌────────┐  ┌────────┐  ┌────────┐  ┌────────┐");
    say!("  │ client │  │   lb   │  │   b1   │  │   b2   │  │   b3   │");
    say!("  │   .2   │  │   .1   │  │  .11   │  │  .12   │  │  .13   │");
    say!("  └───┬────┘  └───┬────┘  └───┬────┘  └───┬────┘  └───┬────┘");
    say!("  ════╧═══════════╧═══════════╧═══════════╧═══════════╧════  switch: 198.18.0.0/24");
    say!("  VIP {VIP}:80/tcp; demo-only addresses, all of it removed at the end");
    lab.build()?;
    check_interrupt()?;

    let pid = lab.start_lbd()?;
    say!(
        "  lbd     started (pid {pid}) in the lb namespace, with this config ({}):",
        lab.config_path.display()
    );
    for line in lab.config_text().lines() {
        say!("    | {line}");
    }
    let (status, took) =
        lab.wait_status(START_LIMIT, "lbd answering on its control socket", |_| true)?;
    say!(
        "  lbd is up after {}: balancer on {} ({} XDP, program id {}), control socket {}",
        secs(took),
        status.interface,
        status.xdp_mode,
        status.program_id,
        lab.socket.display()
    );

    let addrs: Vec<_> = lab.backends.iter().map(|b| b.addr).collect();
    let (_, took) = lab.wait_status(HEALTH_LIMIT, "every backend up with a next hop", |s| {
        addrs
            .iter()
            .all(|a| Lab::backend_status(s, *a).is_some_and(|b| b.health == "up" && b.next_hop))
    })?;
    say!(
        "  health checks: {} up {} later (backends start down and need 2 good checks);",
        lab.backend_names().join(", "),
        secs(took)
    );
    say!("  lbd has resolved each backend's MAC address (the balancer writes frames itself)");

    // The first connection through the VIP (neighbours resolve on the way).
    let started = Instant::now();
    let first = loop {
        check_interrupt()?;
        match http::get(&lab.client_ns, lab::vip_socket(), "/")? {
            Ok(b) => break b,
            Err(e) if started.elapsed() > Duration::from_secs(5) => {
                bail!("no request through the VIP succeeded within 5 s (last: {e})")
            }
            Err(_) => pause(Duration::from_millis(100))?,
        }
    };
    say!("  first request from the client to http://{VIP}/: \"hello from {first}\"");
    Ok(())
}

// ---------------------------------------------------------------- step 2

fn step2_spread(lab: &mut Lab) -> Result<()> {
    say!("\nStep 2: {SPREAD_REQUESTS} HTTP requests to http://{VIP}/, each on a new connection");
    let names = lab.backend_names();
    let t = batch(lab, SPREAD_REQUESTS)?;
    say!("{}", t.bars(&names, "    ").trim_end());
    say!(
        "  {} requests → {} in {}",
        t.total(),
        t.summary(&names),
        secs(t.took)
    );
    ensure!(
        t.failed() == 0,
        "{} of {} requests failed ({})",
        t.failed(),
        t.total(),
        t.failure_reasons()
    );
    // An even spread gives each ~100; 45 is more than 6 standard deviations off.
    let floor = (SPREAD_REQUESTS * 15 / 100) as u32;
    for n in &names {
        ensure!(
            t.to(n) >= floor,
            "{n} got only {} of {SPREAD_REQUESTS} requests: not an even spread",
            t.to(n)
        );
    }
    say!("  ✓ all answered, spread evenly: Maglev hashing gives each equally weighted backend");
    say!("    about a third of the new connections");
    Ok(())
}

// ---------------------------------------------------------------- step 3

fn step3_failover(lab: &mut Lab) -> Result<()> {
    let names = lab.backend_names();
    let victim = "b2";
    let addr = lab.backend(victim).addr;
    say!("\nStep 3: {victim}'s web server stops; lbd's health checks notice and take {victim} out");
    lab.stop_server(victim);
    let stopped = Instant::now();
    say!("  stopped the web server on {victim} ({addr}): its port 80 refuses connections now");
    say!(
        "  sending a request every {} ms and asking `lbctl --json status` every {} ms...",
        PROBE_GAP.as_millis(),
        STATUS_GAP.as_millis()
    );

    let mut before = Tally::default();
    let mut polled = Instant::now() - STATUS_GAP;
    let detected = loop {
        check_interrupt()?;
        lab.check_lbd()?;
        if stopped.elapsed() > DETECT_LIMIT {
            bail!("lbd did not mark {victim} down within {DETECT_LIMIT:?} of its server stopping");
        }
        before.record(http::get(&lab.client_ns, lab::vip_socket(), "/")?);
        if polled.elapsed() >= STATUS_GAP {
            polled = Instant::now();
            let s = lab.status()?;
            if Lab::backend_status(&s, addr).is_some_and(|b| b.health == "down") {
                break stopped.elapsed();
            }
        }
        thread::sleep(PROBE_GAP);
    };
    say!(
        "  lbd marked {victim} down {} after its server stopped (a check every 500 ms; 2 failures",
        secs(detected)
    );
    say!("  in a row take a backend out of the Maglev table)");
    let mut logged = None;
    for _ in 0..20 {
        logged = lab.log_line(&["DOWN", &addr.to_string()]);
        if logged.is_some() {
            break;
        }
        pause(Duration::from_millis(50))?;
    }
    if let Some(line) = logged {
        say!("  lbd's log: {line}");
    }
    if before.failed() == 0 {
        say!("  until then: {} requests, none failed", before.total());
    } else {
        say!(
            "  until then: {} requests, {} failed ({}): new connections that Maglev still",
            before.total(),
            before.failed(),
            before.failure_reasons()
        );
        say!("  sent to {victim} before lbd noticed");
    }

    let after = batch(lab, AFTER_REQUESTS)?;
    say!(
        "  after detection: {} requests → {}",
        after.total(),
        after.summary(&names)
    );
    ensure!(
        after.failed() == 0,
        "{} requests failed after {victim} was marked down ({})",
        after.failed(),
        after.failure_reasons()
    );
    ensure!(
        after.to(victim) == 0,
        "{} requests went to {victim} after it was marked down",
        after.to(victim)
    );
    say!("  ✓ none failed and none went to {victim}: its share moved to the other two");

    lab.start_server(victim)?;
    say!("  restarted {victim}'s web server; waiting for lbd to see it...");
    let (_, took) = lab.wait_status(HEALTH_LIMIT, &format!("{victim} up again"), |s| {
        Lab::backend_status(s, addr).is_some_and(|b| b.health == "up")
    })?;
    say!(
        "  lbd marked {victim} up again {} later (2 good checks in a row)",
        secs(took)
    );
    let back = batch(lab, BACK_REQUESTS)?;
    say!("  {} requests → {}", back.total(), back.summary(&names));
    ensure!(
        back.failed() == 0,
        "{} requests failed after {victim} came back ({})",
        back.failed(),
        back.failure_reasons()
    );
    ensure!(
        back.to(victim) > 0,
        "{victim} got no requests after it came back"
    );
    say!("  ✓ {victim} takes its share again");
    Ok(())
}

// ---------------------------------------------------------------- step 4

fn step4_drain(lab: &mut Lab) -> Result<()> {
    let names = lab.backend_names();
    let target = "b3";
    let addr = lab.backend(target).addr.to_string();
    say!("\nStep 4: drain {target} with lbctl: its established connections finish, new ones avoid it");

    // A long download that the balancer sent to the backend to drain.
    let mut found = None;
    for attempt in 1..=SLOW_TRIES {
        check_interrupt()?;
        match Slow::start(&lab.client_ns, lab::vip_socket())? {
            Ok(s) if s.backend == target => {
                found = Some((s, attempt));
                break;
            }
            Ok(_) => {} // another backend: closed on drop
            Err(e) => bail!("a GET /slow failed: {e}"),
        }
    }
    let Some((slow, attempt)) = found else {
        bail!("none of {SLOW_TRIES} GET /slow requests landed on {target}");
    };
    let slow_started = slow.started;
    say!(
        "  a slow download is running on {target} (GET /slow: {SLOW_PARTS} parts, one every {} ms;",
        SLOW_GAP.as_millis()
    );
    say!("  the balancer sent request {attempt} of those tried to {target})");
    let reader = slow.finish(Duration::from_secs(10));

    say!("  $ lbctl backend drain {VIP_ID} {addr}");
    show(&lab.lbctl_ok(&["backend", "drain", VIP_ID, &addr])?);
    let drained = Instant::now();

    let t = batch(lab, AFTER_REQUESTS)?;
    say!("  {} new requests → {}", t.total(), t.summary(&names));
    let done = reader
        .join()
        .map_err(|_| anyhow!("the slow download's thread panicked"))?
        .map_err(|e| anyhow!("the slow download from {target} failed after the drain: {e}"))?;
    say!(
        "  the slow download from {target} completed: all {} parts ({} bytes) in {}, {} of it",
        done.parts,
        done.bytes,
        secs(done.finished - slow_started),
        secs(done.finished.saturating_duration_since(drained))
    );
    say!("  after the drain: the connection table kept its packets on {target}");
    ensure!(
        t.failed() == 0,
        "{} new requests failed while {target} was drained ({})",
        t.failed(),
        t.failure_reasons()
    );
    ensure!(
        t.to(target) == 0,
        "{} new requests went to {target} while it was drained",
        t.to(target)
    );
    ensure!(
        done.parts == SLOW_PARTS,
        "the slow download got {} of {SLOW_PARTS} parts",
        done.parts
    );
    ensure!(
        done.finished > drained,
        "the slow download finished before the drain: nothing shown"
    );
    say!("  ✓ new connections avoided {target} while its established one finished");

    say!("  $ lbctl backend undrain {VIP_ID} {addr}");
    show(&lab.lbctl_ok(&["backend", "undrain", VIP_ID, &addr])?);
    let back = batch(lab, BACK_REQUESTS)?;
    say!("  {} requests → {}", back.total(), back.summary(&names));
    ensure!(
        back.failed() == 0,
        "{} requests failed after the undrain ({})",
        back.failed(),
        back.failure_reasons()
    );
    ensure!(
        back.to(target) > 0,
        "{target} got no requests after the undrain"
    );
    say!("  ✓ {target} takes new connections again");
    Ok(())
}

// ---------------------------------------------------------------- step 5

/// The metrics shown, by name prefix.
const METRICS: [&str; 6] = [
    "lb_vip_packets_total",
    "lb_backend_up",
    "lb_health_checks_total",
    "lb_failover_apply_seconds_count",
    "lb_failover_apply_seconds_sum",
    "lb_xdp_actions_total",
];

fn step5_report(lab: &mut Lab) -> Result<()> {
    say!("\nStep 5: what lbd reports");
    say!("  $ lbctl status");
    show(&lab.lbctl_ok(&["status"])?);

    say!("  GET http://{METRICS_ADDR}/metrics from inside the lb namespace (some of its lines):");
    let text = fetch_metrics(&lab.lb_ns)?;
    let mut missing = Vec::new();
    for name in METRICS {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            // Of the XDP actions, those that happened.
            .filter(|l| !(name == "lb_xdp_actions_total" && l.ends_with(" 0")))
            .collect();
        if lines.is_empty() {
            missing.push(name);
        }
        for l in lines {
            say!("    {l}");
        }
    }
    ensure!(
        missing.is_empty(),
        "the metrics lack {}",
        missing.join(", ")
    );
    say!("  ✓ status and metrics agree with what the steps showed (b2's failed checks, one");
    say!("    failover, packets sent back out with XDP_TX)");
    Ok(())
}

/// `GET /metrics` from lbd's metrics listener, on the lb namespace's loopback.
fn fetch_metrics(lb_ns: &str) -> Result<String> {
    let addr: SocketAddr = METRICS_ADDR.parse()?;
    let raw = in_netns(lb_ns, || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        let mut raw = Vec::new();
        (&mut s).take(4 << 20).read_to_end(&mut raw)?;
        Ok(raw)
    })??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("the metrics listener sent no HTTP answer"))?;
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "the metrics listener answered {:?}",
        head.lines().next().unwrap_or("")
    );
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

/// The data of a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    // Bounded by the body's length: every round consumes a line.
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
        assert_eq!(dechunk(""), "");
    }
}
