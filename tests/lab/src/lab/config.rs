//! A lab's config file: its `[[vip]]` and `[vip.health]` tables.

use std::{net::IpAddr, time::Duration};

// ---------------------------------------------------------------- config

/// One `[[vip]]` of a config file.
#[derive(Clone, Debug)]
pub struct VipSpec {
    pub name: String,
    pub addr: IpAddr,
    pub port: Option<u16>,
    /// `tcp` (the default) or `udp`.
    pub protocol: &'static str,
    /// Address and weight (`None`: the default).
    pub backends: Vec<(IpAddr, Option<u32>)>,
    /// Its `[vip.health]` table, if any.
    pub health: Option<HealthCheck>,
    /// `table_size` (`None`: the default).
    pub table_size: Option<u32>,
    /// `scheduler` (`None`: the default, Maglev).
    pub scheduler: Option<&'static str>,
}

impl VipSpec {
    pub fn new(
        name: &str,
        addr: impl Into<IpAddr>,
        port: Option<u16>,
        backends: &[IpAddr],
    ) -> Self {
        VipSpec {
            name: name.into(),
            addr: addr.into(),
            port,
            protocol: "tcp",
            backends: backends.iter().map(|b| (*b, None)).collect(),
            health: None,
            table_size: None,
            scheduler: None,
        }
    }

    /// The same VIP with `scheduler = "<name>"`.
    pub fn with_scheduler(mut self, name: &'static str) -> Self {
        self.scheduler = Some(name);
        self
    }

    /// The same VIP with `protocol = "udp"`.
    pub fn udp(mut self) -> Self {
        self.protocol = "udp";
        self
    }

    /// The same VIP with a `[vip.health]` table.
    pub fn with_health(mut self, health: HealthCheck) -> Self {
        self.health = Some(health);
        self
    }

    /// `ADDR[:PORT]/PROTO`, as lbd writes it.
    pub fn id(&self) -> String {
        vip_id_proto(self.addr, self.port, self.protocol)
    }
}

/// `ADDR[:PORT]/tcp`, as lbd writes it.
pub fn vip_id(addr: IpAddr, port: Option<u16>) -> String {
    vip_id_proto(addr, port, "tcp")
}

/// `ADDR[:PORT]/PROTO`, as lbd writes it.
pub fn vip_id_proto(addr: IpAddr, port: Option<u16>, proto: &str) -> String {
    match (addr, port) {
        (IpAddr::V4(a), None) => format!("{a}/{proto}"),
        (IpAddr::V6(a), None) => format!("[{a}]/{proto}"),
        (IpAddr::V4(a), Some(p)) => format!("{a}:{p}/{proto}"),
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}/{proto}"),
    }
}

/// A `[vip.health]` table.
#[derive(Clone, Debug)]
pub struct HealthCheck {
    /// `tcp`, `http`, `udp` or `none`.
    pub kind: &'static str,
    /// `None`: the VIP's port.
    pub port: Option<u16>,
    /// HTTP only.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl HealthCheck {
    pub fn new(
        kind: &'static str,
        interval: Duration,
        timeout: Duration,
        rise: u32,
        fall: u32,
    ) -> Self {
        HealthCheck {
            kind,
            port: None,
            path: None,
            interval,
            timeout,
            rise,
            fall,
        }
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.path = Some(path.into());
        self
    }

    /// The table's text (durations in milliseconds).
    pub fn toml(&self) -> String {
        let mut t = format!("[vip.health]\nkind = \"{}\"\n", self.kind);
        if let Some(p) = self.port {
            t += &format!("port = {p}\n");
        }
        if let Some(p) = &self.path {
            t += &format!("path = \"{p}\"\n");
        }
        t += &format!(
            "interval = \"{}ms\"\ntimeout = \"{}ms\"\nrise = {}\nfall = {}\n",
            self.interval.as_millis(),
            self.timeout.as_millis(),
            self.rise,
            self.fall
        );
        t
    }

    /// How long detecting a failed backend may take: `fall × interval +
    /// timeout`, plus one interval of slack: the bound the health tests
    /// hold lbd to.
    pub fn down_bound(&self) -> Duration {
        self.interval * self.fall + self.timeout + self.interval
    }

    /// How long noticing a backend's return may take: `rise × interval`,
    /// plus one interval of slack.
    pub fn up_bound(&self) -> Duration {
        self.interval * self.rise + self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{VIP_EXTRA, VIP_WEB6};

    #[test]
    fn health_tables_and_bounds() {
        let h = HealthCheck::new(
            "http",
            Duration::from_millis(300),
            Duration::from_millis(200),
            2,
            3,
        )
        .port(8081)
        .path("/healthz");
        assert_eq!(
            h.toml(),
            "[vip.health]\nkind = \"http\"\nport = 8081\npath = \"/healthz\"\n\
             interval = \"300ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 3\n"
        );
        assert_eq!(h.down_bound(), Duration::from_millis(3 * 300 + 200 + 300));
        assert_eq!(h.up_bound(), Duration::from_millis(2 * 300 + 300));
        let v = VipSpec::new("dns", VIP_EXTRA, Some(53), &[]).udp();
        assert_eq!(v.id(), "10.100.0.3:53/udp");
        assert_eq!(vip_id(VIP_WEB6.into(), None), "[fd10:100::1]/tcp");
    }
}
