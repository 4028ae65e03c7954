//! A real authoritative DNS server for discovery tests: Knot DNS (Debian's
//! `knot`), one zone, in a namespace of the test's, on a port of its own.
//! Records change live (the zone file rewritten with a new serial, then
//! `knotc zone-reload`); the server can be paused (SIGSTOP: queries time
//! out) and resumed.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::process::{die_with_parent, nsenter, run_bounded};

pub struct Knot {
    ns: String,
    dir: PathBuf,
    zone: String,
    listen: SocketAddr,
    serial: u32,
    child: Option<Child>,
}

impl Knot {
    /// Starts knotd in `ns` on `listen`, serving `zone` with `records`
    /// (zone-file lines relative to the zone, e.g. `b1 A 10.10.0.11`).
    pub fn start(
        ns: &str,
        dir: &Path,
        zone: &str,
        listen: SocketAddr,
        records: &[String],
    ) -> Result<Knot> {
        fs::create_dir_all(dir.join("db"))?;
        let conf = dir.join("knot.conf");
        fs::write(
            &conf,
            format!(
                "server:\n    rundir: \"{d}\"\n    user: root:root\n    listen: {ip}@{port}\n\
                 log:\n  - target: stderr\n    any: info\n\
                 database:\n    storage: \"{d}/db\"\n\
                 control:\n    listen: \"{d}/knot.sock\"\n\
                 zone:\n  - domain: {zone}\n    storage: \"{d}\"\n    file: \"{zone}.zone\"\n\
                 \x20   zonefile-load: whole\n    journal-content: none\n",
                d = dir.display(),
                ip = listen.ip(),
                port = listen.port(),
            ),
        )?;
        let mut k = Knot {
            ns: ns.to_string(),
            dir: dir.to_path_buf(),
            zone: zone.to_string(),
            listen,
            serial: 1,
            child: None,
        };
        k.write_zone(records)?;
        let log = fs::File::create(dir.join("knot.log"))?;
        let mut cmd = nsenter(ns, Path::new("/usr/sbin/knotd"));
        cmd.arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut cmd);
        k.child = Some(
            cmd.spawn()
                .context("spawning knotd (is knot installed? `cargo xtask setup`)")?,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while k.knotc(&["zone-status", &k.zone]).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "knotd did not answer: {}",
                    fs::read_to_string(dir.join("knot.log")).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(k)
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn write_zone(&self, records: &[String]) -> Result<()> {
        let mut z = format!(
            "$ORIGIN {zone}.\n$TTL 1\n@ IN SOA ns admin {serial} 60 60 60 1\n@ IN NS ns\nns IN A {ip}\n",
            zone = self.zone,
            serial = self.serial,
            ip = self.listen.ip(),
        );
        for r in records {
            z += r;
            z.push('\n');
        }
        fs::write(self.dir.join(format!("{}.zone", self.zone)), z)?;
        Ok(())
    }

    /// Replaces the zone's records (a new serial) and reloads it; returns
    /// once knotd has.
    pub fn set_records(&mut self, records: &[String]) -> Result<()> {
        self.serial += 1;
        self.write_zone(records)?;
        self.knotc(&["-b", "zone-reload", &self.zone])?;
        Ok(())
    }

    /// Stops answering (SIGSTOP): queries time out.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: a signal to our own child's pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    fn knotc(&self, args: &[&str]) -> Result<String> {
        let mut cmd = nsenter(&self.ns, Path::new("/usr/sbin/knotc"));
        cmd.arg("-s").arg(self.dir.join("knot.sock")).args(args);
        let out = run_bounded(&mut cmd, Duration::from_secs(10))?;
        anyhow::ensure!(out.ok(), "knotc {args:?}: {out}");
        Ok(out.stdout)
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
