//! From text to [`Config`](super::Config): where a byte offset is (for
//! messages), the messages of syntax (step 1) and shape (step 2, located
//! with the `spans` index) errors, and each key's own rules (step 3),
//! turning the serde shapes into the config.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use toml::Spanned;

use super::{
    raw::{
        HealthLayer, RawAnnounce, RawBackendsFrom, RawConfig, RawDiscovery, RawEncap, RawLimits,
        RawStore, RawTiers, RawVip,
    },
    spans::{Index, Seg},
    ApiTls, Config, ConfigError, VipConfig, VipLines,
};
use crate::{
    model::{
        announce,
        defaults::*,
        discovery::{BackendsFrom, Source as DiscoverySource},
        is_prime, Announce, AnnounceWhen, AttachMode, EncapSources, HealthDecision, HealthError,
        HealthKind, HealthSpec, Limits, TierMode, TierPolicy, VipId, VipSettings,
    },
    state::{BackendDesired, VipDesired},
    store::{StoreSettings, StoreTls},
};

/// The kernel's host name: a node's default name in the store.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

pub(super) struct Source<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

type Checked<T> = Result<T, ConfigError>;

impl Source<'_> {
    /// 1-based line and column (in characters) of a byte offset.
    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text.as_bytes()[..offset];
        let line = 1 + before.iter().filter(|b| **b == b'\n').count();
        let start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let column = 1 + String::from_utf8_lossy(&before[start..]).chars().count();
        (line, column)
    }

    /// An error at `span`: `ctx: message`.
    pub(super) fn at(
        &self,
        span: Range<usize>,
        ctx: &str,
        message: impl fmt::Display,
    ) -> ConfigError {
        let message = if ctx.is_empty() {
            message.to_string()
        } else {
            format!("{ctx}: {message}")
        };
        ConfigError::new(self.path, Some(self.line_col(span.start).0), message)
    }

    pub(super) fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let mut message = e.message().trim_end().replace('\n', "; ");
        let (line, column) = match e.span() {
            Some(span) => {
                if message == "duplicate key" {
                    if let Some(key) = self.text.get(span.clone()) {
                        message = format!("duplicate key `{}`", key.trim());
                    }
                }
                let (l, c) = self.line_col(span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ConfigError {
            path: self.path.to_path_buf(),
            line,
            column,
            message,
        }
    }

    /// A serde error (unknown key, wrong type, missing key, unknown value),
    /// told with the VIP and key it is about.
    pub(super) fn shape_error(&self, index: &Index, e: &toml::de::Error) -> ConfigError {
        let msg = e.message();
        let Some(span) = e.span() else {
            return ConfigError::new(self.path, None, tidy(msg));
        };
        let line = Some(self.line_col(span.start).0);
        let at_top = span == index.top || (span.is_empty() && span.start == 0);

        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let (key, expected) = rest.split_once('`').unwrap_or((rest, ""));
            let table = match index.by_key(&span) {
                Some(entry) => &entry.path[..entry.path.len() - 1],
                None if at_top => &[],
                None => index.by_value(&span).map_or(&[][..], |e| &e.path[..]),
            };
            let expected = expected
                .trim_start_matches(", ")
                .trim_start_matches("expected one of ")
                .trim_start_matches("expected ")
                .replace('`', "")
                .replace(" or ", ", ");
            let expected = if expected == "there are no fields" {
                String::new()
            } else {
                format!(" (expected one of {expected})")
            };
            let message = format!("key `{key}` is not allowed{expected}");
            return ConfigError::new(self.path, line, index.with_context(table, message));
        }
        if let Some(rest) = msg.strip_prefix("missing field `") {
            let key = rest.trim_end_matches('`');
            let table = match index.by_value(&span) {
                Some(entry) if !at_top => &entry.path[..],
                _ => &[],
            };
            let message = format!("key `{key}` is required");
            return ConfigError::new(self.path, line, index.with_context(table, message));
        }
        let entry = if at_top { None } else { index.by_value(&span) };
        let message = match entry {
            Some(entry) => match entry.path.split_last() {
                Some((Seg::Key(key), table)) => {
                    index.with_context(table, format!("key `{key}`: {}", tidy(msg)))
                }
                _ => index.with_context(&entry.path, tidy(msg)),
            },
            None => tidy(msg),
        };
        ConfigError::new(self.path, line, message)
    }

    /// lbd's config: `interface` required; with `[store]`, no `[[vip]]`.
    pub(super) fn convert(&self, raw: RawConfig) -> Checked<Config> {
        let interface = match &raw.interface {
            Some(i) => self.interface(i)?,
            None => {
                return Err(ConfigError::new(
                    self.path,
                    Some(1),
                    "key `interface` is required",
                ))
            }
        };
        if let (Some(store), Some(first)) = (&raw.store, raw.vip.first()) {
            let (line, _) = self.line_col(first.span().start);
            let (store_line, _) = self.line_col(store.span().start);
            return Err(ConfigError::new(
                self.path,
                Some(line),
                format!(
                    "[[vip]]: with [store] (line {store_line}) the VIPs come from the store, not \
                     from this file: write them there with `lbctl store import FILE` and remove \
                     them here"
                ),
            ));
        }
        // Registrations live in the store: without one they could never come.
        if raw.store.is_none() {
            if let Some(v) = raw.vip.iter().find(|v| {
                v.get_ref()
                    .backends_from
                    .as_ref()
                    .is_some_and(|b| b.get_ref().registered == Some(true))
            }) {
                let (line, _) = self.line_col(v.span().start);
                return Err(ConfigError::new(
                    self.path,
                    Some(line),
                    "[[vip]]: backends_from registered = true needs a [store]: registrations \
                     are leases in it",
                ));
            }
        }
        self.convert_with(raw, interface)
    }

    /// A file of VIPs for `lbctl store import`: `interface` and the rest
    /// of a node's keys are allowed (an lbd config may be imported as it
    /// is) but only its VIPs are used.
    pub(super) fn convert_vips(&self, raw: RawConfig) -> Checked<Config> {
        let interface = match &raw.interface {
            Some(i) => self.interface(i)?,
            None => String::new(),
        };
        self.convert_with(raw, interface)
    }

    fn convert_with(&self, raw: RawConfig, interface: String) -> Checked<Config> {
        let path = |v: &Option<Spanned<String>>, key: &str, default: &str| -> Checked<PathBuf> {
            match v {
                None => Ok(PathBuf::from(default)),
                Some(v) if v.get_ref().is_empty() => {
                    Err(self.at(v.span(), "", format!("key `{key}`: the path is empty")))
                }
                Some(v) => Ok(PathBuf::from(v.get_ref())),
            }
        };
        let control_socket = path(
            &raw.control_socket,
            "control_socket",
            DEFAULT_CONTROL_SOCKET,
        )?;
        let state_dir = path(&raw.state_dir, "state_dir", DEFAULT_STATE_DIR)?;
        let metrics_listen = match &raw.metrics_listen {
            None => DEFAULT_METRICS_LISTEN,
            Some(v) => v.get_ref().trim().parse().map_err(|_| {
                self.at(
                    v.span(),
                    "",
                    format!(
                        "key `metrics_listen`: {:?} is not ADDRESS:PORT (e.g. \"127.0.0.1:9469\" \
                         or \"[::1]:9469\")",
                        v.get_ref()
                    ),
                )
            })?,
        };
        let read_group = match &raw.read_group {
            None => None,
            Some(g) if g.get_ref().trim().is_empty() => {
                return Err(self.at(g.span(), "", "key `read_group`: the group name is empty"))
            }
            Some(g) => Some(g.get_ref().trim().to_string()),
        };
        let idle = |v: &Option<Spanned<String>>, key: &str, default| -> Checked<Duration> {
            let Some(v) = v else { return Ok(default) };
            let d = self.duration(v, "", key)?;
            let (min, max) = IDLE_TIMEOUT_RANGE;
            if d < min || d > max {
                return Err(self.at(
                    v.span(),
                    "",
                    format!(
                        "key `{key}`: {} is out of range {}..={}",
                        v.get_ref(),
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                ));
            }
            Ok(d)
        };
        let tcp_idle_timeout = idle(
            &raw.tcp_idle_timeout,
            "tcp_idle_timeout",
            DEFAULT_TCP_IDLE_TIMEOUT,
        )?;
        let udp_idle_timeout = idle(
            &raw.udp_idle_timeout,
            "udp_idle_timeout",
            DEFAULT_UDP_IDLE_TIMEOUT,
        )?;
        let encap = match &raw.encap {
            None => EncapSources::default(),
            Some(e) => self.encap(e)?,
        };
        let limits = match &raw.limits {
            None => Limits::default(),
            Some(l) => self.limits(l)?,
        };
        let too_big_per_second = match &raw.icmp {
            None => Some(DEFAULT_TOO_BIG_PER_SEC),
            Some(i) => {
                let rate = match &i.too_big_per_second {
                    None => DEFAULT_TOO_BIG_PER_SEC,
                    Some(v) => self.int(v, "[icmp]", "too_big_per_second", TOO_BIG_RATE_RANGE)?,
                };
                i.too_big.unwrap_or(true).then_some(rate)
            }
        };
        let announce = match &raw.announce {
            None => None,
            Some(a) => Some(self.announce(a)?),
        };
        let store = match &raw.store {
            None => None,
            Some(s) => Some(self.store(s)?),
        };
        let nameservers = match &raw.discovery {
            None => Vec::new(),
            Some(d) => self.nameservers(d)?,
        };
        let api_tls = self.api_tls(&raw)?;
        let health_decision = match (&raw.health_decision, &store) {
            (None, Some(_)) => HealthDecision::Quorum,
            (None, None) => HealthDecision::Local,
            (Some(h), None) if *h.get_ref() == HealthDecision::Quorum => {
                return Err(self.at(
                    h.span(),
                    "",
                    "key `health_decision`: \"quorum\" needs a [store] the nodes share their \
                     observations through",
                ))
            }
            (Some(h), _) => *h.get_ref(),
        };
        let vips = raw
            .vip
            .iter()
            .enumerate()
            .map(|(i, v)| self.vip(i, v))
            .collect::<Checked<_>>()?;
        Ok(Config {
            path: self.path.to_path_buf(),
            interface,
            xdp_mode: raw.xdp_mode.unwrap_or(AttachMode::Auto),
            control_socket,
            metrics_listen,
            state_dir,
            read_group,
            tcp_idle_timeout,
            udp_idle_timeout,
            encap,
            limits,
            too_big_per_second,
            announce,
            store,
            health_decision,
            nameservers,
            api_tls,
            vips,
        })
    }

    /// A VIP's `backends_from`: one source, its refresh and fail-static
    /// rules.
    fn backends_from(
        &self,
        ctx: &str,
        bf: &Spanned<RawBackendsFrom>,
        vip: &VipId,
    ) -> Checked<BackendsFrom> {
        let r = bf.get_ref();
        let registered = r.registered.unwrap_or(false);
        let source =
            match (&r.dns_srv, &r.dns) {
                (None, None) if registered => {
                    if let Some(p) = &r.port {
                        return Err(self.at(p.span(), ctx, "key `port` goes with `dns`"));
                    }
                    DiscoverySource::Registered
                }
                (Some(_), _) | (_, Some(_)) if registered => {
                    return Err(self.at(
                        bf.span(),
                        ctx,
                        "name exactly one source: dns_srv, dns or registered = true",
                    ))
                }
                (Some(n), None) => {
                    if let Some(p) = &r.port {
                        return Err(self.at(
                            p.span(),
                            ctx,
                            "key `port` goes with `dns`: SRV records carry their own ports",
                        ));
                    }
                    DiscoverySource::DnsSrv(n.get_ref().trim().trim_end_matches('.').to_string())
                }
                (None, Some(n)) => {
                    if let Some(p) = &r.port {
                        let port: u16 = self.int(p, ctx, "port", 1..=u16::MAX)?;
                        if port != vip.port {
                            return Err(self.at(
                                p.span(),
                                ctx,
                                format!(
                                    "key `port`: {port} is not the VIP's port ({}): lb does not \
                                 translate ports, backends receive the VIP's",
                                    vip.port
                                ),
                            ));
                        }
                    }
                    DiscoverySource::Dns(n.get_ref().trim().trim_end_matches('.').to_string())
                }
                _ => return Err(self.at(
                    bf.span(),
                    ctx,
                    "name exactly one source: dns_srv = \"_service._tcp.name\", dns = \"name\" \
                     or registered = true",
                )),
            };
        let mut out = BackendsFrom::new(source);
        let dur = |v: &Option<Spanned<String>>, key: &str, default: Duration| match v {
            None => Ok(default),
            Some(v) => self.duration(v, ctx, key),
        };
        out.refresh = dur(&r.refresh, "refresh", out.refresh)?;
        out.hold_empty = dur(&r.hold_empty, "hold_empty", out.hold_empty)?;
        out.hold_removal = dur(&r.hold_removal, "hold_removal", out.hold_removal)?;
        out.drain = dur(&r.drain, "drain", out.drain)?;
        if let Some(m) = &r.max_remove {
            out.max_remove_percent = self.int(m, ctx, "max_remove", 0..=100)?;
        }
        out.validate(vip).map_err(|e| self.at(bf.span(), "", e))?;
        Ok(out)
    }

    /// `api_listen` with `api_tls_cert`, `api_tls_key`, `api_client_ca`
    /// and `[api_roles]`: all of them or none (plaintext TCP is not
    /// offered).
    fn api_tls(&self, raw: &RawConfig) -> Checked<Option<ApiTls>> {
        let keys = [
            ("api_listen", &raw.api_listen),
            ("api_tls_cert", &raw.api_tls_cert),
            ("api_tls_key", &raw.api_tls_key),
            ("api_client_ca", &raw.api_client_ca),
        ];
        let given: Vec<_> = keys.iter().filter(|(_, v)| v.is_some()).collect();
        if given.is_empty() {
            if let Some(r) = &raw.api_roles {
                return Err(self.at(r.span(), "[api_roles]", "goes with api_listen"));
            }
            return Ok(None);
        }
        if let Some((missing, _)) = keys.iter().find(|(_, v)| v.is_none()) {
            let (first, v) = given[0];
            let span = v.as_ref().expect("given").span();
            return Err(self.at(
                span,
                "",
                format!(
                    "key `{first}` needs `{missing}` too: the TCP API is TLS with client \
                     certificates only (api_listen, api_tls_cert, api_tls_key, api_client_ca)"
                ),
            ));
        }
        let get = |i: usize| keys[i].1.as_ref().expect("all given");
        let listen_v = get(0);
        let listen: SocketAddr = listen_v.get_ref().trim().parse().map_err(|_| {
            self.at(
                listen_v.span(),
                "",
                format!(
                    "key `api_listen`: {:?} is not ADDRESS:PORT",
                    listen_v.get_ref()
                ),
            )
        })?;
        let roles =
            match &raw.api_roles {
                None => return Err(ConfigError::new(
                    self.path,
                    Some(self.line_col(listen_v.span().start).0),
                    "api_listen needs [api_roles]: which client identities (certificate SAN or \
                     subject CN) may read, operate or admin",
                )),
                Some(r) => r
                    .get_ref()
                    .iter()
                    .map(|(k, v)| (k.clone(), *v.get_ref()))
                    .collect(),
            };
        Ok(Some(ApiTls {
            listen,
            cert: PathBuf::from(get(1).get_ref()),
            key: PathBuf::from(get(2).get_ref()),
            client_ca: PathBuf::from(get(3).get_ref()),
            roles,
        }))
    }

    /// `[discovery] nameservers`: `ADDRESS` or `ADDRESS:PORT` (IPv6 in
    /// brackets with a port).
    fn nameservers(&self, d: &RawDiscovery) -> Checked<Vec<SocketAddr>> {
        let Some(list) = &d.nameservers else {
            return Ok(Vec::new());
        };
        list.get_ref()
            .iter()
            .map(|v| {
                let t = v.get_ref().trim();
                t.parse::<SocketAddr>()
                    .or_else(|_| t.parse::<IpAddr>().map(|a| SocketAddr::new(a, 53)))
                    .map_err(|_| {
                        self.at(
                            v.span(),
                            "[discovery]",
                            format!("key `nameservers`: {t:?} is not ADDRESS or ADDRESS:PORT"),
                        )
                    })
            })
            .collect()
    }

    /// `[store]`: etcd's endpoints and how to reach them.
    pub(super) fn store(&self, st: &Spanned<RawStore>) -> Checked<StoreSettings> {
        let ctx = "[store]";
        let r = st.get_ref();
        if r.kind.get_ref() != "etcd" {
            return Err(self.at(
                r.kind.span(),
                ctx,
                format!(
                    "key `kind`: {:?} is not a store lb knows (\"etcd\")",
                    r.kind.get_ref()
                ),
            ));
        }
        if r.endpoints.get_ref().is_empty() {
            return Err(self.at(
                r.endpoints.span(),
                ctx,
                "key `endpoints`: name at least one etcd client URL (e.g. \"http://10.0.0.1:2379\")",
            ));
        }
        let tls_wanted = r.tls_ca.is_some();
        let mut endpoints = Vec::new();
        for e in r.endpoints.get_ref() {
            let url = e.get_ref().trim();
            let scheme_ok = match url.split_once("://") {
                Some(("http", rest)) => !tls_wanted && !rest.is_empty(),
                Some(("https", rest)) => tls_wanted && !rest.is_empty(),
                _ => false,
            };
            if !scheme_ok {
                let want = if tls_wanted { "https" } else { "http" };
                return Err(self.at(
                    e.span(),
                    ctx,
                    format!(
                        "key `endpoints`: {url:?} is not a {want}:// URL (https:// goes with \
                         tls_ca, http:// without it)"
                    ),
                ));
            }
            endpoints.push(url.to_string());
        }
        let prefix = match &r.prefix {
            None => DEFAULT_STORE_PREFIX.to_string(),
            Some(p) => {
                let v = p.get_ref().trim_end_matches('/');
                if !v.starts_with('/') || v.len() < 2 {
                    return Err(self.at(
                        p.span(),
                        ctx,
                        format!(
                            "key `prefix`: {:?} is not a key prefix like \"/lb/v1\"",
                            p.get_ref()
                        ),
                    ));
                }
                v.to_string()
            }
        };
        let node = match &r.node_name {
            Some(n) => {
                let v = n.get_ref().trim();
                if v.is_empty() || v.contains('/') || v.chars().any(char::is_whitespace) {
                    return Err(self.at(
                        n.span(),
                        ctx,
                        format!(
                            "key `node_name`: {:?}: a name without '/' or spaces",
                            n.get_ref()
                        ),
                    ));
                }
                v.to_string()
            }
            None => host_name(),
        };
        let path = |v: &Spanned<String>| PathBuf::from(v.get_ref());
        let tls = match (&r.tls_ca, &r.tls_cert, &r.tls_key) {
            (None, None, None) => None,
            (Some(ca), None, None) => Some(StoreTls {
                ca: path(ca),
                identity: None,
            }),
            (Some(ca), Some(cert), Some(key)) => Some(StoreTls {
                ca: path(ca),
                identity: Some((path(cert), path(key))),
            }),
            _ => {
                return Err(self.at(
                    st.span(),
                    ctx,
                    "tls_cert and tls_key go together, and with tls_ca",
                ))
            }
        };
        Ok(StoreSettings {
            endpoints,
            prefix,
            node,
            tls,
            announce_before_read: r.announce_before_read.unwrap_or(false),
        })
    }

    /// `[announce]`: a table lbd may own (none of the kernel's), required
    /// unless nothing is announced.
    pub(super) fn announce(&self, a: &Spanned<RawAnnounce>) -> Checked<Announce> {
        let ctx = "[announce]";
        let r = a.get_ref();
        let when = r.when.unwrap_or_default();
        let table =
            match &r.table {
                None if when == AnnounceWhen::Never => None,
                None => return Err(self.at(
                    a.span(),
                    ctx,
                    "key `table` is missing: name the kernel routing table lbd writes VIP routes \
                     into (e.g. 100), or set when = \"never\"",
                )),
                Some(v) => {
                    let t: u32 = self.int(v, ctx, "table", 0..=u32::MAX)?;
                    if let Some(p) = announce::table_problem(t) {
                        return Err(self.at(v.span(), ctx, format!("key `table`: {p}")));
                    }
                    Some(t)
                }
            };
        Ok(Announce { table, when })
    }

    pub(super) fn limits(&self, l: &RawLimits) -> Checked<Limits> {
        let d = Limits::default();
        let key = |v: &Option<Spanned<i64>>, name: &str, default: u32, range| match v {
            None => Ok(default),
            Some(v) => self.int(v, "[limits]", name, range),
        };
        Ok(Limits {
            max_vips: key(&l.max_vips, "max_vips", d.max_vips, MAX_VIPS_RANGE)?,
            table_pool: key(&l.table_pool, "table_pool", d.table_pool, TABLE_POOL_RANGE)?,
            conntrack_size: key(
                &l.conntrack_size,
                "conntrack_size",
                d.conntrack_size,
                CONNTRACK_SIZE_RANGE,
            )?,
        })
    }

    /// Linux's rules for interface names (`dev_valid_name`).
    pub(super) fn interface(&self, v: &Spanned<String>) -> Checked<String> {
        let name = v.get_ref();
        let problem = if name.is_empty() {
            Some("the name is empty")
        } else if name.len() > 15 {
            Some("the name is longer than 15 bytes")
        } else if name == "." || name == ".." {
            Some("not an interface name")
        } else if name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        {
            Some("interface names have no '/', ':' or whitespace")
        } else {
            None
        };
        match problem {
            Some(p) => Err(self.at(v.span(), "", format!("key `interface`: {name:?}: {p}"))),
            None => Ok(name.clone()),
        }
    }

    pub(super) fn duration(&self, v: &Spanned<String>, ctx: &str, key: &str) -> Checked<Duration> {
        humantime::parse_duration(v.get_ref().trim()).map_err(|e| {
            self.at(
                v.span(),
                ctx,
                format!(
                    "key `{key}`: {:?} is not a duration like \"1s\" or \"500ms\" ({e})",
                    v.get_ref()
                ),
            )
        })
    }

    pub(super) fn int<T>(
        &self,
        v: &Spanned<i64>,
        ctx: &str,
        key: &str,
        range: std::ops::RangeInclusive<T>,
    ) -> Checked<T>
    where
        T: TryFrom<i64> + PartialOrd + fmt::Display + Copy,
    {
        match T::try_from(*v.get_ref()) {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(self.at(
                v.span(),
                ctx,
                format!(
                    "key `{key}`: {} is out of range {}..={}",
                    v.get_ref(),
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    pub(super) fn encap(&self, e: &RawEncap) -> Checked<EncapSources> {
        let ctx = "[encap]";
        let v4 = self.source(ctx, "v4", &e.source_v4, &e.source_v4_prefix, 32, |s| {
            Ipv4Addr::from_str(s)
                .ok()
                .map(|a| (u32::from(a) as u128, a))
        })?;
        let v6 = self.source(ctx, "v6", &e.source_v6, &e.source_v6_prefix, 128, |s| {
            Ipv6Addr::from_str(s).ok().map(|a| (u128::from(a), a))
        })?;
        Ok(EncapSources { v4, v6 })
    }

    /// `source_vN` (an address) or `source_vN_prefix` (`ADDR/LEN`, the host
    /// bits zero): the outer source of one family.
    pub(super) fn source<A: fmt::Display + Copy + Into<IpAddr>>(
        &self,
        ctx: &str,
        family: &str,
        addr: &Option<Spanned<String>>,
        prefix: &Option<Spanned<String>>,
        bits: u8,
        parse: impl Fn(&str) -> Option<(u128, A)>,
    ) -> Checked<Option<(A, u8)>> {
        let not_addr = |v: &Spanned<String>, key: &str, what: &str| {
            self.at(
                v.span(),
                ctx,
                format!("key `{key}`: {:?} is not an IP{family} {what}", v.get_ref()),
            )
        };
        let usable = |a: A, v: &Spanned<String>, key: &str| {
            let ip: IpAddr = a.into();
            if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255])
            {
                Err(self.at(
                    v.span(),
                    ctx,
                    format!("key `{key}`: {ip} is not usable as a source address"),
                ))
            } else {
                Ok(())
            }
        };
        match (addr, prefix) {
            (Some(_), Some(p)) => Err(self.at(
                p.span(),
                ctx,
                format!(
                    "key `source_{family}_prefix`: set either source_{family} or \
                     source_{family}_prefix, not both"
                ),
            )),
            (Some(v), None) => {
                let key = format!("source_{family}");
                let (_, a) =
                    parse(v.get_ref().trim()).ok_or_else(|| not_addr(v, &key, "address"))?;
                usable(a, v, &key)?;
                Ok(Some((a, bits)))
            }
            (None, Some(v)) => {
                let key = format!("source_{family}_prefix");
                let s = v.get_ref().trim();
                let bad = || not_addr(v, &key, "prefix (ADDRESS/LENGTH)");
                let (a, len) = s.split_once('/').ok_or_else(bad)?;
                let (n, a) = parse(a).ok_or_else(bad)?;
                let len: u8 = len
                    .parse()
                    .ok()
                    .filter(|l| (1..=bits).contains(l))
                    .ok_or_else(bad)?;
                let host_mask = (1u128 << (bits - len)) - 1;
                if n & host_mask != 0 {
                    let net = network(n & !host_mask, bits);
                    return Err(self.at(
                        v.span(),
                        ctx,
                        format!("key `{key}`: {s} has host bits set (did you mean {net}/{len}?)"),
                    ));
                }
                usable(a, v, &key)?;
                Ok(Some((a, len)))
            }
            (None, None) => Ok(None),
        }
    }

    pub(super) fn vip(&self, i: usize, sv: &Spanned<RawVip>) -> Checked<VipConfig> {
        let v = sv.get_ref();
        let line = |span: Range<usize>| self.line_col(span.start).0;
        let entry = line(sv.span());

        let given = v.name.as_ref().map(|n| n.get_ref().trim());
        if let (Some(n), Some(name)) = (&v.name, given) {
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(self.at(
                    n.span(),
                    &format!("vip[{i}]"),
                    format!("key `name`: {:?} is not a usable name", n.get_ref()),
                ));
            }
        }
        let ctx = match given {
            Some(name) => format!("vip {name:?}"),
            None => format!("vip[{i}]"),
        };
        let addr: IpAddr = v.address.get_ref().trim().parse().map_err(|_| {
            self.at(
                v.address.span(),
                &ctx,
                format!(
                    "key `address`: {:?} is not an IP address",
                    v.address.get_ref()
                ),
            )
        })?;
        let port = match &v.port {
            None => 0,
            Some(p) if *p.get_ref() == 0 => {
                return Err(self.at(
                    p.span(),
                    &ctx,
                    "key `port`: port 0 is not allowed: omit port for every port",
                ))
            }
            Some(p) => self.int(p, &ctx, "port", 1..=u16::MAX)?,
        };
        let id = VipId {
            addr,
            port,
            proto: v.protocol,
        };
        let table_size = match &v.table_size {
            None => VipSettings::default().table_size,
            Some(t) => {
                let n = *t.get_ref();
                match u32::try_from(n) {
                    Ok(n) if n <= lb_common::MAGLEV_MAX_SIZE && is_prime(n) => n,
                    _ => {
                        return Err(self.at(
                            t.span(),
                            &ctx,
                            format!(
                                "key `table_size`: {n} is not a prime between 2 and {}",
                                lb_common::MAGLEV_MAX_SIZE
                            ),
                        ))
                    }
                }
            }
        };
        let settings = VipSettings {
            scheduler: v
                .scheduler
                .as_ref()
                .map(|s| *s.get_ref())
                .unwrap_or_default(),
            forwarding: v
                .forwarding
                .as_ref()
                .map(|f| *f.get_ref())
                .unwrap_or_default(),
            stateless: !v.conntrack.unwrap_or(true),
            table_size,
            tiers: match &v.tiers {
                None => TierPolicy::default(),
                Some(t) => self.tiers(&format!("{ctx}: [vip.tiers]"), t.get_ref())?,
            },
        };

        let mut backends = Vec::with_capacity(v.backends.len());
        let mut backend_lines = Vec::with_capacity(v.backends.len());
        for (j, sb) in v.backends.iter().enumerate() {
            let b = sb.get_ref();
            let addr: IpAddr = b.address.get_ref().trim().parse().map_err(|_| {
                self.at(
                    b.address.span(),
                    &format!("{ctx}: backends[{j}]"),
                    format!(
                        "key `address`: {:?} is not an IP address",
                        b.address.get_ref()
                    ),
                )
            })?;
            let bctx = format!("{ctx}: backend {addr}");
            let weight = match &b.weight {
                None => DEFAULT_WEIGHT,
                Some(w) => self.int(w, &bctx, "weight", WEIGHT_RANGE)?,
            };
            let tier = match &b.tier {
                None => 0,
                Some(t) => self.int(t, &bctx, "tier", 0..=MAX_TIER)?,
            };
            backends.push(BackendDesired {
                addr,
                weight,
                tier,
                drained: b.drained.unwrap_or(false),
                health: None,
            });
            backend_lines.push(line(sb.span()));
        }

        let vip_layer = v.health.as_ref().map(HealthLayer::new);
        let health = match &vip_layer {
            None => None,
            // Worded as the other missing keys are (see `shape_error`): serde
            // cannot require `kind` of a struct that backends' tables share.
            Some(h) if h.kind.is_none() => {
                let table = match given {
                    Some(name) => format!("vip[{i}] {name:?}: [vip.health]"),
                    None => format!("vip[{i}]: [vip.health]"),
                };
                return Err(self.at(h.span.clone(), &table, "key `kind` is required"));
            }
            Some(h) => Some(self.health(&format!("{ctx}: [vip.health]"), port, h, None)?),
        };
        // Each backend's own check: its keys over the VIP's.
        for (sb, desired) in v.backends.iter().zip(&mut backends) {
            if let Some(h) = &sb.get_ref().health {
                let bctx = format!("{ctx}: backend {}: [vip.backends.health]", desired.addr);
                let layer = HealthLayer::new(h);
                desired.health = Some(self.health(&bctx, port, &layer, vip_layer.as_ref())?);
            }
        }

        let backends_from = match &v.backends_from {
            None => None,
            Some(bf) => Some(self.backends_from(&format!("{ctx}: backends_from"), bf, &id)?),
        };
        Ok(VipConfig {
            id,
            desired: VipDesired {
                name: given.map_or_else(|| id.to_string(), str::to_string),
                settings,
                backends,
                health,
                backends_from,
            },
            lines: VipLines {
                entry,
                name: v.name.as_ref().map_or(entry, |n| line(n.span())),
                address: line(v.address.span()),
                forwarding: v.forwarding.as_ref().map_or(entry, |f| line(f.span())),
                scheduler: v.scheduler.as_ref().map_or(entry, |s| line(s.span())),
                table_size: v.table_size.as_ref().map_or(entry, |t| line(t.span())),
                backends: backend_lines,
            },
        })
    }

    /// `[vip.tiers]`; each key only where its mode uses it, so a setting
    /// that would be ignored is refused instead.
    pub(super) fn tiers(&self, ctx: &str, t: &RawTiers) -> Checked<TierPolicy> {
        let mut policy = TierPolicy {
            mode: t.mode.unwrap_or_default(),
            ..Default::default()
        };
        let only = |key: &str, span: Range<usize>, mode: TierMode| {
            self.at(
                span,
                ctx,
                format!("key `{key}` applies to mode = \"{}\" only", mode.name()),
            )
        };
        if let Some(o) = &t.overprovisioning {
            if policy.mode != TierMode::Spill {
                return Err(only("overprovisioning", o.span(), TierMode::Spill));
            }
            let (lo, hi) = (
                *OVERPROVISIONING_RANGE.start() as f64 / 100.0,
                *OVERPROVISIONING_RANGE.end() as f64 / 100.0,
            );
            let x = *o.get_ref();
            if !(lo..=hi).contains(&x) {
                return Err(self.at(
                    o.span(),
                    ctx,
                    format!("key `overprovisioning`: {x} is out of range {lo}..={hi} (Envoy's default is 1.4)"),
                ));
            }
            policy.overprovisioning = (x * 100.0).round() as u32;
        }
        if let Some(m) = &t.min_healthy {
            if policy.mode != TierMode::Strict {
                return Err(only("min_healthy", m.span(), TierMode::Strict));
            }
            policy.min_healthy = self.int(m, ctx, "min_healthy", MIN_HEALTHY_RANGE)?;
        }
        Ok(policy)
    }

    /// A health check from its table `over` and, for a backend's own check,
    /// the VIP's table `base` under it (`over`'s keys win; the VIP's
    /// http-only keys are not inherited by a check of another kind). Each
    /// value is read where it is; the rules ([`HealthSpec::validate`]) are
    /// then told at the key that breaks them.
    pub(super) fn health(
        &self,
        ctx: &str,
        vip_port: u16,
        over: &HealthLayer<'_>,
        base: Option<&HealthLayer<'_>>,
    ) -> Checked<HealthSpec> {
        let Some(kind) = over.kind.or(base.and_then(|b| b.kind)) else {
            return Err(self.at(
                over.span.clone(),
                ctx,
                "key `kind` is required: the VIP has no [vip.health] to take it from",
            ));
        };
        let http = kind == HealthKind::Http;
        // Each key's value and whether the VIP's table gave it.
        macro_rules! pick {
            ($key:ident, $inherit:expr) => {
                match (over.$key, base.and_then(|b| b.$key).filter(|_| $inherit)) {
                    (Some(v), _) => Some((v, false)),
                    (None, Some(v)) => Some((v, true)),
                    (None, None) => None,
                }
            };
        }
        let port_v = pick!(port, true);
        let path_v = pick!(path, http);
        let status_v = pick!(expect_status, http);
        let interval_v = pick!(interval, true);
        let timeout_v = pick!(timeout, true);
        let rise_v = pick!(rise, true);
        let fall_v = pick!(fall, true);

        let port = match port_v {
            Some((p, _)) => self.int(p, ctx, "port", 1..=u16::MAX)?,
            None => 0,
        };
        let expect_status = match status_v {
            // Not http: refused below as only for http, whatever its value.
            Some((s, _)) if !http => Some(self.int(s, ctx, "expect_status", 0..=u16::MAX)?),
            Some((s, _)) => Some(self.int(s, ctx, "expect_status", HEALTH_STATUS_RANGE)?),
            None => None,
        };
        let interval = match interval_v {
            None => DEFAULT_HEALTH_INTERVAL,
            Some((v, _)) => self.duration(v, ctx, "interval")?,
        };
        let timeout = match timeout_v {
            None => DEFAULT_HEALTH_TIMEOUT,
            Some((v, _)) => self.duration(v, ctx, "timeout")?,
        };
        let count = |v: Option<(&Spanned<i64>, bool)>, key: &str, default: u32| match v {
            None => Ok(default),
            Some((v, _)) => self.int(v, ctx, key, HEALTH_COUNT_RANGE),
        };
        let spec = HealthSpec {
            kind,
            port,
            path: path_v.map(|(p, _)| p.get_ref().clone()).unwrap_or_default(),
            expect_status,
            interval,
            timeout,
            rise: count(rise_v, "rise", DEFAULT_HEALTH_RISE)?,
            fall: count(fall_v, "fall", DEFAULT_HEALTH_FALL)?,
        };
        // A key's place: where it was given, else the table's.
        let span_of = |given: Option<Range<usize>>| given.unwrap_or_else(|| over.span.clone());
        spec.resolve(vip_port).map_err(|e| match &e {
            HealthError::PortRequired { .. } => self.at(over.span.clone(), ctx, &e),
            HealthError::OnlyHttp { key, .. } => {
                let given = match *key {
                    "path" => over.path.map(|p| p.span()),
                    _ => over.expect_status.map(|s| s.span()),
                };
                self.at(span_of(given), ctx, &e)
            }
            HealthError::Path(_) => self.at(span_of(path_v.map(|(p, _)| p.span())), ctx, &e),
            HealthError::ExpectStatus(_) => {
                self.at(span_of(status_v.map(|(s, _)| s.span())), ctx, &e)
            }
            HealthError::Interval(_) => {
                self.at(span_of(interval_v.map(|(i, _)| i.span())), ctx, &e)
            }
            HealthError::Count { key, .. } => {
                let given = if *key == "rise" { rise_v } else { fall_v };
                self.at(span_of(given.map(|(v, _)| v.span())), ctx, &e)
            }
            HealthError::Timeout { timeout, interval } => {
                // Blame what this table set: its timeout, else its interval;
                // for a backend's own check, the VIP's table comes last.
                let (span, key) = [
                    (over.timeout, "timeout"),
                    (over.interval, "interval"),
                    (base.and_then(|b| b.timeout), "timeout"),
                    (base.and_then(|b| b.interval), "interval"),
                ]
                .into_iter()
                .find_map(|(v, key)| v.map(|v| (v.span(), key)))
                .unwrap_or((over.span.clone(), "timeout"));
                let from = match timeout_v {
                    None => " (the default)",
                    Some((_, true)) => " (from [vip.health])",
                    Some((_, false)) => "",
                };
                self.at(
                    span,
                    ctx,
                    format!(
                        "key `{key}`: the timeout {}{from} must be more than 0 and less than \
                         the interval {}",
                        humantime::format_duration(*timeout),
                        humantime::format_duration(*interval)
                    ),
                )
            }
        })
    }
}

/// The network address of a prefix, for messages.
fn network(n: u128, bits: u8) -> IpAddr {
    if bits == 32 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// Serde's wording, for operators.
fn tidy(msg: &str) -> String {
    let mut msg = msg
        .trim_end()
        .replace("unknown variant", "unknown value")
        .replace("expected i64", "expected an integer")
        .replace("expected a sequence", "expected an array")
        .replace("invalid type: map", "invalid type: table");
    // "expected struct RawBackend" -> "expected a table"
    while let Some(at) = msg.find("expected struct ") {
        let rest = &msg[at + "expected struct ".len()..];
        let end = rest
            .find(|c: char| !c.is_alphanumeric() && c != '_')
            .unwrap_or(rest.len());
        msg = format!("{}expected a table{}", &msg[..at], &rest[end..]);
    }
    msg
}
