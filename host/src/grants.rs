//! What an app may reach outside its sandbox: its grants.
//!
//! Grants are declared per app (`[app.grants]` in gateway.toml, or `grants`
//! in a signed cloud deployment's manifest) and capped by the gateway-wide
//! `[allow]`, which only gateway.toml sets: a grant outside `[allow]` is
//! refused when the config is read or the deployment arrives, naming the
//! grant. At call time the capability units check both again before any
//! I/O, and refuse anything else with a typed `denied` error.
//!
//! Today grants name Modbus endpoints and unit ids, serial ports, topics on
//! the local MQTT bus, the TCP addresses a guest may connect to through
//! `wasi:sockets`, the URL prefixes it may request through `wasi:http`,
//! and the address a `wasi:http/proxy` app serves HTTP on.
//! This module is a leaf: it knows the shapes and the rules, not the units
//! that use them.

use serde::{Deserialize, Serialize};

/// An app's grants, or the gateway's `[allow]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Modbus endpoints and the unit ids on each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modbus: Vec<ModbusGrant>,
    /// Addresses the app may connect to (TCP) or send to (UDP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sockets: Vec<SocketGrant>,
    /// Serial ports the app may open, as raw bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serial: Vec<SerialGrant>,
    /// Topics on the local MQTT bus (`[bus]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bus: Vec<BusGrant>,
    /// URL prefixes the app may send requests to (`wasi:http`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpGrant>,
    /// The address a `wasi:http/proxy` app serves HTTP on (an app has at
    /// most one); in `[allow]`, the addresses apps may serve on, with the
    /// token their requests need.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serve_http: Vec<ServeHttpGrant>,
}

/// Where an app serves HTTP: an `ip:port` it listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeHttpGrant {
    /// `ip:port` (IPv6 in brackets). Loopback unless `[allow]` gives a
    /// token for it.
    pub address: String,
    /// In `[allow]` only: a file holding the token that every request to
    /// this address must carry (`Authorization: Bearer TOKEN`). Needed for
    /// any address beyond loopback. The token is the gateway's, so an app's
    /// grant (which a cloud deployment may carry) never holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<std::path::PathBuf>,
    /// How many requests the app handles at once, each in its own instance
    /// (its memory limit each); more are answered `503` at once, so a burst
    /// costs the gateway at most this many instances.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
}

fn default_max_in_flight() -> u32 {
    DEFAULT_MAX_IN_FLIGHT
}

/// Requests an HTTP app handles at once, unless its grant says otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 4;

/// The most requests a grant may let an app handle at once.
pub const MAX_IN_FLIGHT: u32 = 64;

impl ServeHttpGrant {
    /// The address, parsed (`Grants::check` refused any that does not).
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        self.address.parse().ok()
    }
}

/// Where an app may send HTTP requests: a URL prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// `http://10.0.0.7:8080/api/`: a request must have this scheme, host
    /// and port, and a path under this one (whole segments: `/api` covers
    /// `/api` and `/api/x`, not `/apix`).
    pub url: String,
    /// How long a request waits to connect, and then for its answer's
    /// first byte and each byte after, unless the guest says less.
    #[serde(default = "default_http_timeout_ms")]
    pub timeout_ms: u32,
}

fn default_http_timeout_ms() -> u32 {
    10_000
}

/// A URL as grants compare it: scheme, host (lower case), port, path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    scheme: String,
    host: String,
    port: u16,
    path: String,
}

impl HttpTarget {
    /// Parse an `http://` or `https://` URL (a grant's prefix, or a
    /// request's URL; a request's query is not part of what is compared).
    pub fn parse(text: &str) -> Result<HttpTarget, String> {
        let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{text:?}: only http:// and https:// URLs"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{text:?}: no user name or password in the URL"));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("{text:?} has no host"))?
            .to_ascii_lowercase();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("{text:?} has no port"))?;
        Ok(HttpTarget {
            scheme: url.scheme().to_string(),
            host,
            port,
            path: url.path().to_string(),
        })
    }

    /// Whether `self` (a grant) covers `request`.
    pub fn covers(&self, request: &HttpTarget) -> bool {
        let prefix = self.path.trim_end_matches('/');
        self.scheme == request.scheme
            && self.host == request.host
            && self.port == request.port
            && (request.path == prefix
                || request
                    .path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

/// HTTP grants with their URLs parsed once.
#[derive(Debug, Clone, Default)]
pub struct HttpRules(Vec<(HttpTarget, HttpGrant)>);

impl HttpRules {
    pub fn new(grants: &[HttpGrant]) -> HttpRules {
        HttpRules(
            grants
                .iter()
                .filter_map(|g| Some((HttpTarget::parse(&g.url).ok()?, g.clone())))
                .collect(),
        )
    }

    /// The grant covering `request`, if any.
    pub fn covering(&self, request: &HttpTarget) -> Option<&HttpGrant> {
        self.0
            .iter()
            .find(|(target, _)| target.covers(request))
            .map(|(_, g)| g)
    }
}

/// Topics on the local bus an app may subscribe to or publish on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusGrant {
    /// An MQTT topic filter (`sensors/+/temperature`, `plant/line1/#`): the
    /// app may subscribe to it or to any filter within it, or publish on
    /// any topic it matches.
    pub topic: String,
    /// What the app may do there.
    pub access: BusAccess,
}

/// What a bus grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusAccess {
    Subscribe,
    Publish,
    Both,
}

impl BusAccess {
    fn covers(self, wanted: BusAccess) -> bool {
        self == BusAccess::Both || self == wanted
    }

    pub fn name(self) -> &'static str {
        match self {
            BusAccess::Subscribe => "subscribe",
            BusAccess::Publish => "publish",
            BusAccess::Both => "both",
        }
    }
}

/// Whether every topic `inner` (a topic or a filter) matches is matched by
/// `outer`. (rumqttc's `matches` compares a filter with a filter this way.)
pub fn topic_within(inner: &str, outer: &str) -> bool {
    rumqttc::matches(inner, outer)
}

/// One serial port an app may open (the `serial` interface).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialGrant {
    /// The device, under `/dev` (`/dev/ttyUSB0`, `/dev/serial/by-id/...`).
    pub port: String,
    /// How long a read or write waits unless the call says otherwise (at
    /// most [`MAX_TIMEOUT_MS`]).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
}

/// One address a guest may reach through `wasi:sockets`: outbound TCP
/// connects, or UDP datagrams to it (and from it: others are dropped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketGrant {
    /// `ip:port` (IPv6 in brackets). Addresses, not names: the guest gets no
    /// name lookup.
    pub address: String,
    /// `tcp` (connect) or `udp` (send to, receive from).
    pub protocol: Protocol,
}

/// A socket grant's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// One Modbus endpoint and the units on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusGrant {
    /// `tcp://host:port`.
    pub endpoint: String,
    /// The unit ids (slave addresses) that may be addressed. An app's grant
    /// must list them; in `[allow]`, leaving them out allows any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<Vec<u8>>,
    /// How long a request waits for its answer unless the call says
    /// otherwise (at most [`MAX_TIMEOUT_MS`]).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
}

fn default_timeout_ms() -> u32 {
    DEFAULT_TIMEOUT_MS
}

/// A request's wait for its answer, unless the grant or the call says
/// otherwise.
pub const DEFAULT_TIMEOUT_MS: u32 = 1000;

/// The longest wait a grant or a call may set.
pub const MAX_TIMEOUT_MS: u32 = 60_000;

/// A Modbus endpoint as the gateway connects to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// Modbus TCP: a host name or address, and a port.
    Tcp { host: String, port: u16 },
    /// Modbus RTU on a serial line: its device and settings (8 data bits).
    Rtu {
        path: String,
        baud: u32,
        parity: Parity,
        stop_bits: u8,
    },
}

/// The baud rates a serial line may be opened at.
pub const BAUD_RATES: std::ops::RangeInclusive<u32> = 300..=921_600;

/// A serial line's parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl Parity {
    pub fn name(self) -> &'static str {
        match self {
            Parity::None => "none",
            Parity::Even => "even",
            Parity::Odd => "odd",
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Endpoint::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Endpoint::Rtu {
                path,
                baud,
                parity,
                stop_bits,
            } => write!(
                f,
                "rtu://{path}?baud={baud}&parity={}&stop_bits={stop_bits}",
                parity.name()
            ),
        }
    }
}

impl Endpoint {
    /// Parse `tcp://host:port` (an IPv6 address in brackets; host names
    /// are compared in lower case) or
    /// `rtu:///dev/ttyUSB0?baud=9600&parity=none&stop_bits=1` (a serial
    /// device; `baud` is needed, parity `none` and one stop bit unless
    /// given).
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let url = url::Url::parse(text).map_err(|e| {
            format!("{text:?} is not an endpoint (tcp://host:port or rtu:///dev/...?baud=N): {e}")
        })?;
        if url.scheme() == "rtu" {
            return Self::parse_rtu(text, &url);
        }
        if url.scheme() != "tcp" {
            return Err(format!(
                "{text:?}: endpoints are tcp://host:port or rtu:///dev/...?baud=N, not {}://",
                url.scheme()
            ));
        }
        if !url.username().is_empty()
            || url.password().is_some()
            || !matches!(url.path(), "" | "/")
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(format!(
                "{text:?}: an endpoint is tcp://host:port, nothing more"
            ));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(address)) => address.to_string(),
            Some(host) => host.to_string().to_ascii_lowercase(),
            None => return Err(format!("{text:?} has no host")),
        };
        let port = url
            .port()
            .ok_or_else(|| format!("{text:?} has no port (Modbus TCP is usually 502)"))?;
        Ok(Endpoint::Tcp { host, port })
    }

    fn parse_rtu(text: &str, url: &url::Url) -> Result<Endpoint, String> {
        let path = url.path().to_string();
        if url.host().is_some() || !path.starts_with("/dev/") || url.fragment().is_some() {
            return Err(format!(
                "{text:?}: a serial endpoint is rtu:///dev/NAME?baud=N (three slashes, a device under /dev)"
            ));
        }
        let (mut baud, mut parity, mut stop_bits) = (None, Parity::None, 1u8);
        for (key, value) in url.query_pairs() {
            match (key.as_ref(), value.as_ref()) {
                ("baud", v) => {
                    baud = Some(
                        v.parse::<u32>()
                            .ok()
                            .filter(|b| BAUD_RATES.contains(b))
                            .ok_or_else(|| {
                                format!("{text:?}: baud {v} is not between 300 and 921600")
                            })?,
                    )
                }
                ("parity", "none") => parity = Parity::None,
                ("parity", "even") => parity = Parity::Even,
                ("parity", "odd") => parity = Parity::Odd,
                ("stop_bits", "1") => stop_bits = 1,
                ("stop_bits", "2") => stop_bits = 2,
                (key, value) => {
                    return Err(format!(
                        "{text:?}: {key}={value} is not a serial setting (baud=N, parity=none|even|odd, stop_bits=1|2)"
                    ));
                }
            }
        }
        let baud = baud.ok_or_else(|| format!("{text:?} has no baud=N"))?;
        Ok(Endpoint::Rtu {
            path,
            baud,
            parity,
            stop_bits,
        })
    }
}

/// Modbus grants with their endpoints parsed once: every request is
/// checked against them, and must not parse a URL per grant to do it.
#[derive(Debug, Clone, Default)]
pub struct ModbusRules(Vec<(Endpoint, ModbusGrant)>);

impl ModbusRules {
    /// The grants whose endpoints parse (`Grants::check` names the others).
    pub fn new(grants: &[ModbusGrant]) -> ModbusRules {
        ModbusRules(
            grants
                .iter()
                .filter_map(|g| Some((Endpoint::parse(&g.endpoint).ok()?, g.clone())))
                .collect(),
        )
    }

    /// The grant that covers `unit` on `endpoint`, if any.
    pub fn covering(&self, endpoint: &Endpoint, unit: u8) -> Option<&ModbusGrant> {
        self.0
            .iter()
            .find(|(e, g)| e == endpoint && g.units.as_ref().is_none_or(|u| u.contains(&unit)))
            .map(|(_, g)| g)
    }
}

impl Grants {
    /// Check the shapes: endpoints that parse, units listed where `app`
    /// grants must list them, timeouts in range. The error names the grant
    /// (`modbus[0].units`, say).
    pub fn check(&self, app: bool) -> Result<(), (String, String)> {
        for (i, grant) in self.sockets.iter().enumerate() {
            grant.address.parse::<std::net::SocketAddr>().map_err(|_| {
                (
                    format!("sockets[{i}].address"),
                    format!("{:?} is not an ip:port address", grant.address),
                )
            })?;
        }
        for (i, grant) in self.http.iter().enumerate() {
            HttpTarget::parse(&grant.url).map_err(|e| (format!("http[{i}].url"), e))?;
            if grant.url.contains(['?', '#']) {
                return Err((
                    format!("http[{i}].url"),
                    format!("{:?}: a grant is a URL prefix, without ? or #", grant.url),
                ));
            }
            check_timeout(grant.timeout_ms).map_err(|e| (format!("http[{i}].timeout_ms"), e))?;
        }
        for (i, grant) in self.serve_http.iter().enumerate() {
            check_serve_http(grant, app)
                .map_err(|(field, e)| (format!("serve_http[{i}]{field}"), e))?;
        }
        if app && self.serve_http.len() > 1 {
            return Err((
                "serve_http".into(),
                "an app serves HTTP on one address at most".into(),
            ));
        }
        for (i, grant) in self.bus.iter().enumerate() {
            check_bus_filter(&grant.topic).map_err(|e| (format!("bus[{i}].topic"), e))?;
        }
        for (i, grant) in self.serial.iter().enumerate() {
            check_serial_port(&grant.port).map_err(|e| (format!("serial[{i}].port"), e))?;
            check_timeout(grant.timeout_ms).map_err(|e| (format!("serial[{i}].timeout_ms"), e))?;
        }
        for (i, grant) in self.modbus.iter().enumerate() {
            let key = |field: &str| format!("modbus[{i}].{field}");
            Endpoint::parse(&grant.endpoint).map_err(|e| (key("endpoint"), e))?;
            match &grant.units {
                None if app => {
                    return Err((
                        key("units"),
                        "an app's grant lists the unit ids it may address".into(),
                    ));
                }
                Some(units) if units.is_empty() => {
                    return Err((key("units"), "no unit ids listed".into()));
                }
                _ => {}
            }
            check_timeout(grant.timeout_ms).map_err(|e| (key("timeout_ms"), e))?;
        }
        Ok(())
    }

    /// Every grant must lie within `allow`. The error names the first that
    /// does not, and what it asks for.
    pub fn check_within(&self, allow: &Grants) -> Result<(), (String, String)> {
        for (i, grant) in self.sockets.iter().enumerate() {
            let Ok(address) = grant.address.parse() else {
                continue; // `check` names it
            };
            if !allow.socket_granted(address, grant.protocol) {
                return Err((
                    format!("sockets[{i}]"),
                    format!(
                        "{} {address} is not within the gateway's [allow]",
                        grant.protocol.name()
                    ),
                ));
            }
        }
        let allowed = HttpRules::new(&allow.http);
        for (i, grant) in self.http.iter().enumerate() {
            let Ok(target) = HttpTarget::parse(&grant.url) else {
                continue; // `check` names it
            };
            if allowed.covering(&target).is_none() {
                return Err((
                    format!("http[{i}]"),
                    format!("http {} is not within the gateway's [allow]", grant.url),
                ));
            }
        }
        for (i, grant) in self.serve_http.iter().enumerate() {
            let Some(address) = grant.socket_addr() else {
                continue; // `check` names it
            };
            match allow.serve_http_grant(address) {
                None => {
                    return Err((
                        format!("serve_http[{i}]"),
                        format!("serving HTTP on {address} is not within the gateway's [allow]"),
                    ));
                }
                Some(allowed) if grant.max_in_flight > allowed.max_in_flight => {
                    return Err((
                        format!("serve_http[{i}].max_in_flight"),
                        format!(
                            "{} requests at once is more than the gateway's [allow] gives on {address} ({})",
                            grant.max_in_flight, allowed.max_in_flight
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        for (i, grant) in self.bus.iter().enumerate() {
            let accesses: &[BusAccess] = match grant.access {
                BusAccess::Both => &[BusAccess::Subscribe, BusAccess::Publish],
                BusAccess::Subscribe => &[BusAccess::Subscribe],
                BusAccess::Publish => &[BusAccess::Publish],
            };
            for &access in accesses {
                if !allow.bus_granted(&grant.topic, access) {
                    return Err((
                        format!("bus[{i}]"),
                        format!(
                            "bus {} on {} is not within the gateway's [allow]",
                            access.name(),
                            grant.topic
                        ),
                    ));
                }
            }
        }
        for (i, grant) in self.serial.iter().enumerate() {
            if allow.serial_grant(&grant.port).is_none() {
                return Err((
                    format!("serial[{i}]"),
                    format!(
                        "serial port {} is not within the gateway's [allow]",
                        grant.port
                    ),
                ));
            }
        }
        for (i, grant) in self.modbus.iter().enumerate() {
            let Ok(endpoint) = Endpoint::parse(&grant.endpoint) else {
                continue; // `check` names it
            };
            for &unit in grant.units.iter().flatten() {
                if allow.modbus_grant(&endpoint, unit).is_none() {
                    return Err((
                        format!("modbus[{i}]"),
                        format!(
                            "modbus {endpoint} unit {unit} is not within the gateway's [allow]"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The grant that covers `unit` on `endpoint`, if any (parsing every
    /// grant: for checks made once; calls use [`ModbusRules`]).
    pub fn modbus_grant(&self, endpoint: &Endpoint, unit: u8) -> Option<ModbusGrant> {
        ModbusRules::new(&self.modbus)
            .covering(endpoint, unit)
            .cloned()
    }

    /// The grant of serial port `path`, if any (the exact path as granted:
    /// links are not followed, so a grant of `/dev/serial/by-id/X` is
    /// opened by that name).
    pub fn serial_grant(&self, path: &str) -> Option<&SerialGrant> {
        self.serial.iter().find(|g| g.port == path)
    }

    /// The `[allow]` entry for serving HTTP on `address`, if any (the same
    /// address exactly: `0.0.0.0` does not stand for every address).
    pub fn serve_http_grant(&self, address: std::net::SocketAddr) -> Option<&ServeHttpGrant> {
        self.serve_http
            .iter()
            .find(|g| g.socket_addr() == Some(address))
    }

    /// Whether `topic` (a topic to publish on, or a filter to subscribe
    /// to) lies within a grant that allows `access`.
    pub fn bus_granted(&self, topic: &str, access: BusAccess) -> bool {
        self.bus
            .iter()
            .any(|g| g.access.covers(access) && topic_within(topic, &g.topic))
    }

    /// Whether `address` is granted for `protocol`.
    pub fn socket_granted(&self, address: std::net::SocketAddr, protocol: Protocol) -> bool {
        self.sockets.iter().any(|g| {
            g.protocol == protocol && g.address.parse::<std::net::SocketAddr>() == Ok(address)
        })
    }

    /// Whether any socket of `protocol` is granted.
    pub fn any_socket(&self, protocol: Protocol) -> bool {
        self.sockets.iter().any(|g| g.protocol == protocol)
    }

    pub fn is_empty(&self) -> bool {
        self.modbus.is_empty()
            && self.sockets.is_empty()
            && self.serial.is_empty()
            && self.bus.is_empty()
            && self.http.is_empty()
            && self.serve_http.is_empty()
    }
}

/// A grant's `timeout_ms` is between 1 and [`MAX_TIMEOUT_MS`].
fn check_timeout(ms: u32) -> Result<(), String> {
    if (1..=MAX_TIMEOUT_MS).contains(&ms) {
        Ok(())
    } else {
        Err(format!("{ms} is not between 1 and {MAX_TIMEOUT_MS}"))
    }
}

/// A serve_http grant: an `ip:port`, a sane `max_in_flight`, and a token
/// where it must (and may) have one. The error is the field under the grant
/// (`.address`, say) and why.
fn check_serve_http(grant: &ServeHttpGrant, app: bool) -> Result<(), (&'static str, String)> {
    let address: std::net::SocketAddr = grant.address.parse().map_err(|_| {
        (
            ".address",
            format!("{:?} is not an ip:port address", grant.address),
        )
    })?;
    if !(1..=MAX_IN_FLIGHT).contains(&grant.max_in_flight) {
        return Err((
            ".max_in_flight",
            format!(
                "{} is not between 1 and {MAX_IN_FLIGHT}",
                grant.max_in_flight
            ),
        ));
    }
    match (&grant.token_file, app) {
        (Some(_), true) => Err((
            ".token_file",
            "the token is the gateway's: give token_file in [allow], not in the app's grant".into(),
        )),
        (None, false) if !address.ip().is_loopback() => Err((
            ".token_file",
            format!(
                "{address} reaches beyond this machine: give token_file, so that every request needs a token"
            ),
        )),
        _ => Ok(()),
    }
}

/// A bus grant is a valid MQTT filter, and not one of the broker's own
/// `$` topics (no filter from `#` down matches them anyway).
fn check_bus_filter(filter: &str) -> Result<(), String> {
    if filter.starts_with('$') {
        return Err(format!("{filter:?}: $ topics are the broker's own"));
    }
    if !rumqttc::valid_filter(filter) || filter.contains('\0') {
        return Err(format!(
            "{filter:?} is not an MQTT topic filter (+ stands for one whole level, # for the rest, last)"
        ));
    }
    Ok(())
}

/// A serial port is named by an absolute path under `/dev`, with no `..`.
fn check_serial_port(path: &str) -> Result<(), String> {
    let under_dev = path.strip_prefix("/dev/").is_some_and(|rest| {
        !rest.is_empty() && rest.split('/').all(|p| !matches!(p, "" | "." | ".."))
    });
    if under_dev {
        Ok(())
    } else {
        Err(format!(
            "{path:?} is not a device under /dev (/dev/ttyUSB0, say)"
        ))
    }
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(endpoint: &str, units: Option<Vec<u8>>) -> ModbusGrant {
        ModbusGrant {
            endpoint: endpoint.into(),
            units,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    #[test]
    fn endpoints_parse_to_one_form_and_anything_else_is_refused() {
        assert_eq!(
            Endpoint::parse("tcp://Meter.local:502").expect("parse"),
            Endpoint::Tcp {
                host: "meter.local".into(),
                port: 502
            }
        );
        assert_eq!(
            Endpoint::parse("tcp://[::1]:5020").expect("v6").to_string(),
            "tcp://[::1]:5020"
        );
        for bad in [
            "meter:502",
            "udp://meter:502",
            "tcp://meter",
            "tcp://meter:502/x",
            "tcp://u:p@meter:502",
            "tcp://meter:502?unit=1",
            "rtu:///dev/ttyUSB0",
            "rtu:///dev/ttyUSB0?baud=7",
            "rtu:///dev/ttyUSB0?baud=9600&parity=mark",
            "rtu:///etc/passwd?baud=9600",
            "rtu://host/dev/ttyUSB0?baud=9600",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        // A serial line: its settings are part of what is granted, in one
        // written form.
        let line = Endpoint::parse("rtu:///dev/ttyUSB0?stop_bits=2&baud=19200").expect("rtu");
        assert_eq!(
            line.to_string(),
            "rtu:///dev/ttyUSB0?baud=19200&parity=none&stop_bits=2"
        );
        assert_ne!(
            line,
            Endpoint::parse("rtu:///dev/ttyUSB0?baud=9600").expect("rtu")
        );
    }

    #[test]
    fn an_apps_grants_must_name_units_and_lie_within_allow() {
        let allow = Grants {
            modbus: vec![
                grant("tcp://10.0.0.5:502", Some(vec![1, 2])),
                grant("tcp://127.0.0.1:5020", None),
            ],
            sockets: Vec::new(),
            ..Grants::default()
        };
        allow.check(false).expect("allow may leave units out");
        let app = Grants {
            modbus: vec![
                grant("tcp://10.0.0.5:502", Some(vec![2])),
                grant("tcp://127.0.0.1:5020", Some(vec![7, 200])),
            ],
            sockets: Vec::new(),
            ..Grants::default()
        };
        app.check(true).expect("shapes");
        app.check_within(&allow).expect("within");

        let unit_outside = Grants {
            modbus: vec![grant("tcp://10.0.0.5:502", Some(vec![1, 3]))],
            sockets: Vec::new(),
            ..Grants::default()
        };
        assert_eq!(
            unit_outside.check_within(&allow),
            Err((
                "modbus[0]".into(),
                "modbus tcp://10.0.0.5:502 unit 3 is not within the gateway's [allow]".into()
            ))
        );
        let port_outside = Grants {
            modbus: vec![grant("tcp://10.0.0.5:503", Some(vec![1]))],
            sockets: Vec::new(),
            ..Grants::default()
        };
        assert!(port_outside.check_within(&allow).is_err());
        assert!(
            app.check_within(&Grants::default()).is_err(),
            "no [allow]: nothing"
        );

        let any_unit = Grants {
            modbus: vec![grant("tcp://10.0.0.5:502", None)],
            sockets: Vec::new(),
            ..Grants::default()
        };
        assert_eq!(
            any_unit.check(true).unwrap_err().0,
            "modbus[0].units",
            "an app names its units"
        );
    }

    #[test]
    fn sockets_are_granted_by_exact_address_and_protocol_within_allow() {
        let socket = |address: &str, protocol| SocketGrant {
            address: address.into(),
            protocol,
        };
        let allow = Grants {
            modbus: Vec::new(),
            sockets: vec![socket("127.0.0.1:8080", Protocol::Tcp)],
            ..Grants::default()
        };
        let app = Grants {
            modbus: Vec::new(),
            sockets: vec![socket("127.0.0.1:8080", Protocol::Tcp)],
            ..Grants::default()
        };
        app.check(true).expect("shape");
        app.check_within(&allow).expect("within");
        let address = "127.0.0.1:8080".parse().expect("address");
        assert!(app.socket_granted(address, Protocol::Tcp));
        assert!(!app.socket_granted(address, Protocol::Udp));
        assert!(!app.socket_granted("127.0.0.1:8081".parse().expect("address"), Protocol::Tcp));
        let udp = Grants {
            modbus: Vec::new(),
            sockets: vec![socket("127.0.0.1:8080", Protocol::Udp)],
            ..Grants::default()
        };
        udp.check(true).expect("udp is granted like tcp");
        assert_eq!(
            udp.check_within(&allow),
            Err((
                "sockets[0]".into(),
                "udp 127.0.0.1:8080 is not within the gateway's [allow]".into()
            ))
        );
        let named = Grants {
            modbus: Vec::new(),
            sockets: vec![socket("meter.local:80", Protocol::Tcp)],
            ..Grants::default()
        };
        assert_eq!(named.check(true).unwrap_err().0, "sockets[0].address");
    }

    #[test]
    fn a_call_is_covered_only_by_its_exact_endpoint_and_unit() {
        let app = Grants {
            modbus: vec![grant("tcp://meter:502", Some(vec![1]))],
            sockets: Vec::new(),
            ..Grants::default()
        };
        let meter = Endpoint::parse("tcp://METER:502").expect("parse");
        assert!(app.modbus_grant(&meter, 1).is_some());
        assert!(app.modbus_grant(&meter, 2).is_none());
        let other_port = Endpoint::parse("tcp://meter:503").expect("parse");
        assert!(app.modbus_grant(&other_port, 1).is_none());
    }

    #[test]
    fn serial_ports_are_devices_under_dev_granted_by_exact_path_within_allow() {
        let port = |path: &str| SerialGrant {
            port: path.into(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
        };
        let allow = Grants {
            serial: vec![
                port("/dev/ttyUSB0"),
                port("/dev/serial/by-id/usb-FTDI-if00"),
            ],
            ..Grants::default()
        };
        allow.check(false).expect("allow");
        let app = Grants {
            serial: vec![port("/dev/ttyUSB0")],
            ..Grants::default()
        };
        app.check(true).expect("shape");
        app.check_within(&allow).expect("within");
        assert!(app.serial_grant("/dev/ttyUSB0").is_some());
        assert!(app.serial_grant("/dev/ttyUSB1").is_none());
        let outside = Grants {
            serial: vec![port("/dev/ttyS0")],
            ..Grants::default()
        };
        assert_eq!(
            outside.check_within(&allow),
            Err((
                "serial[0]".into(),
                "serial port /dev/ttyS0 is not within the gateway's [allow]".into()
            ))
        );
        for bad in [
            "ttyUSB0",
            "/etc/passwd",
            "/dev/",
            "/dev/../etc/shadow",
            "/dev//tty",
        ] {
            let grant = Grants {
                serial: vec![port(bad)],
                ..Grants::default()
            };
            assert_eq!(grant.check(true).unwrap_err().0, "serial[0].port", "{bad}");
        }
    }

    #[test]
    fn bus_topics_are_granted_by_filter_and_access_within_allow() {
        let grant = |topic: &str, access| BusGrant {
            topic: topic.into(),
            access,
        };
        let allow = Grants {
            bus: vec![
                grant("sensors/#", BusAccess::Subscribe),
                grant("actuators/+/set", BusAccess::Both),
            ],
            ..Grants::default()
        };
        allow.check(false).expect("allow");
        let app = Grants {
            bus: vec![
                grant("sensors/room1/+", BusAccess::Subscribe),
                grant("actuators/valve/set", BusAccess::Publish),
            ],
            ..Grants::default()
        };
        app.check(true).expect("shape");
        app.check_within(&allow).expect("within");
        assert!(app.bus_granted("sensors/room1/temp", BusAccess::Subscribe));
        assert!(app.bus_granted("sensors/room1/+", BusAccess::Subscribe));
        assert!(
            !app.bus_granted("sensors/room1/#", BusAccess::Subscribe),
            "wider"
        );
        assert!(!app.bus_granted("sensors/room2/temp", BusAccess::Subscribe));
        assert!(!app.bus_granted("sensors/room1/temp", BusAccess::Publish));
        assert!(app.bus_granted("actuators/valve/set", BusAccess::Publish));
        assert!(!app.bus_granted("actuators/valve/set", BusAccess::Subscribe));
        let wider = Grants {
            bus: vec![grant("sensors/#", BusAccess::Both)],
            ..Grants::default()
        };
        assert_eq!(
            wider.check_within(&allow),
            Err((
                "bus[0]".into(),
                "bus publish on sensors/# is not within the gateway's [allow]".into()
            ))
        );
        for bad in ["", "a/#/b", "a+/b", "$SYS/#"] {
            let grants = Grants {
                bus: vec![grant(bad, BusAccess::Subscribe)],
                ..Grants::default()
            };
            assert_eq!(grants.check(true).unwrap_err().0, "bus[0].topic", "{bad:?}");
        }
    }

    #[test]
    fn http_is_granted_by_url_prefix_on_whole_path_segments_within_allow() {
        let grant = |url: &str| HttpGrant {
            url: url.into(),
            timeout_ms: 1000,
        };
        let allow = Grants {
            http: vec![grant("http://10.0.0.7:8080/")],
            ..Grants::default()
        };
        let app = Grants {
            http: vec![grant("http://10.0.0.7:8080/api")],
            ..Grants::default()
        };
        app.check(true).expect("shape");
        app.check_within(&allow).expect("within");
        let rules = HttpRules::new(&app.http);
        let covered = |url: &str| {
            rules
                .covering(&HttpTarget::parse(url).expect(url))
                .is_some()
        };
        assert!(covered("http://10.0.0.7:8080/api"));
        assert!(covered("http://10.0.0.7:8080/api/meters/1?x=1"));
        assert!(!covered("http://10.0.0.7:8080/apix"), "a whole segment");
        assert!(!covered("http://10.0.0.7:8080/"));
        assert!(!covered("https://10.0.0.7:8080/api"), "scheme");
        assert!(!covered("http://10.0.0.7:8081/api"), "port");
        assert!(!covered("http://10.0.0.70:8080/api"), "host");
        let outside = Grants {
            http: vec![grant("http://10.0.0.8/")],
            ..Grants::default()
        };
        assert_eq!(
            outside.check_within(&allow),
            Err((
                "http[0]".into(),
                "http http://10.0.0.8/ is not within the gateway's [allow]".into()
            ))
        );
        for bad in ["ftp://h/", "http://u:p@h/", "http://h/?q=1", "h:80"] {
            let grants = Grants {
                http: vec![grant(bad)],
                ..Grants::default()
            };
            assert_eq!(grants.check(true).unwrap_err().0, "http[0].url", "{bad}");
        }
    }

    fn serve(address: &str, token_file: Option<&str>, max_in_flight: u32) -> ServeHttpGrant {
        ServeHttpGrant {
            address: address.into(),
            token_file: token_file.map(Into::into),
            max_in_flight,
        }
    }

    #[test]
    fn serving_http_beyond_loopback_needs_a_token_and_an_app_serves_only_what_allow_gives() {
        // [allow]: loopback needs nothing; beyond it, a token file.
        let allow = Grants {
            serve_http: vec![
                serve("127.0.0.1:8090", None, 4),
                serve("0.0.0.0:8091", Some("/etc/wasmgate/page.token"), 8),
            ],
            ..Grants::default()
        };
        allow.check(false).expect("allow");
        let open = Grants {
            serve_http: vec![serve("0.0.0.0:8092", None, 4)],
            ..Grants::default()
        };
        assert_eq!(
            open.check(false).expect_err("no token"),
            (
                "serve_http[0].token_file".into(),
                "0.0.0.0:8092 reaches beyond this machine: give token_file, so that every request needs a token".into()
            )
        );

        // An app: one address, no token of its own, within [allow].
        let app = Grants {
            serve_http: vec![serve("0.0.0.0:8091", None, 8)],
            ..Grants::default()
        };
        app.check(true).expect("shape");
        app.check_within(&allow).expect("within");
        let with_token = Grants {
            serve_http: vec![serve("127.0.0.1:8090", Some("/tmp/t"), 4)],
            ..Grants::default()
        };
        assert_eq!(
            with_token.check(true).expect_err("token").0,
            "serve_http[0].token_file"
        );
        let two = Grants {
            serve_http: vec![
                serve("127.0.0.1:8090", None, 4),
                serve("127.0.0.1:8093", None, 4),
            ],
            ..Grants::default()
        };
        assert_eq!(two.check(true).expect_err("two").0, "serve_http");
        let elsewhere = Grants {
            serve_http: vec![serve("127.0.0.1:9999", None, 4)],
            ..Grants::default()
        };
        assert_eq!(
            elsewhere.check_within(&allow).expect_err("outside"),
            (
                "serve_http[0]".into(),
                "serving HTTP on 127.0.0.1:9999 is not within the gateway's [allow]".into()
            )
        );
        let greedy = Grants {
            serve_http: vec![serve("127.0.0.1:8090", None, 5)],
            ..Grants::default()
        };
        assert_eq!(
            greedy.check_within(&allow).expect_err("more at once").0,
            "serve_http[0].max_in_flight"
        );
        for bad in [
            serve("localhost:80", None, 4),
            serve("127.0.0.1:80", None, 0),
        ] {
            let grants = Grants {
                serve_http: vec![bad.clone()],
                ..Grants::default()
            };
            assert!(grants.check(true).is_err(), "{bad:?}");
        }
    }
}
