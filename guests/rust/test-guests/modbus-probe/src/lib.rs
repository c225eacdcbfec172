//! Test guest: Modbus through the host's `modbus` interface.
//!
//! - Each tick it reads input register 0 of `endpoint` / `unit` (its
//!   config) and reports it as `reading`, or the error's kind as
//!   `last_error`.
//! - The action `call` runs one request written as text,
//!   `OP ENDPOINT UNIT ADDRESS ARG [timeout=MS]`, where OP is `read-coils`,
//!   `read-discrete`, `read-holding` or `read-input` (ARG: the count), or
//!   `write-coils` / `write-registers` (ARG: values, comma-separated). It
//!   answers `ok` and the values, or the error (`timeout: ...`).
//! - With `flood = true` each tick sends 1,000 reads instead, and reports
//!   how many were refused with `limit` as `flood_limited`.
//! - `tcp ADDRESS TEXT` / `udp ADDRESS TEXT` send TEXT through
//!   `wasi:sockets` (Rust's std::net for TCP, the WASI bindings for UDP)
//!   and answer `ok` and the reply, or the error.
//! - OP `bench` (ARG: a count) reads holding register ADDRESS that many
//!   times in one call and answers `ok NANOSECONDS` (the benchmark's P8).
//! - `http URL [BODY]` sends a GET (a POST with BODY) through `wasi:http`
//!   and answers `ok STATUS BODY`, or `error: CODE`. `http-burst N URL`
//!   sends N GETs in the one call and answers `sent S refused R`.
//! - Serial, through the host's `serial` interface: `serial-open PATH BAUD`
//!   opens a port and keeps it, `serial-write TEXT` writes TEXT and a
//!   newline, `serial-read-line MS` answers `ok` and the next line (without
//!   its newline), `serial-close` drops the port. Errors are answered as
//!   above.

use wasmgate_guest::modbus::{self, IoError, Unit};
use wasmgate_guest::serial;
use wasmgate_guest::{App, Config, Timestamp, Value, info, this_device};

struct Probe {
    unit: Unit,
    flood: bool,
    limited: i64,
    port: Option<serial::Framed>,
}

fn describe(error: &IoError) -> String {
    match error {
        IoError::Exception(e) => format!("exception {}: {}", e.code, e.name),
        IoError::Denied(m)
        | IoError::Invalid(m)
        | IoError::Limit(m)
        | IoError::Timeout(m)
        | IoError::Closed(m) => format!("{}: {m}", modbus::kind(error)),
    }
}

fn list<T: ToString>(values: &[T]) -> String {
    values
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// TEXT to ADDRESS over TCP or UDP, and the first reply.
fn socket(kind: &str, address: &str, text: &str) -> String {
    use std::io::{Read, Write};
    let wait = Some(std::time::Duration::from_secs(2));
    let reply = match kind {
        "tcp" => std::net::TcpStream::connect(address).and_then(|mut stream| {
            stream.set_read_timeout(wait)?;
            stream.write_all(text.as_bytes())?;
            let mut buffer = [0u8; 256];
            let n = stream.read(&mut buffer)?;
            Ok(buffer[..n].to_vec())
        }),
        // Rust's std has no UDP on wasip2 yet: wasi:sockets itself.
        _ => return udp(address, text),
    };
    match reply {
        Ok(bytes) => format!("ok {}", String::from_utf8_lossy(&bytes)),
        Err(e) => format!("error: {e}"),
    }
}

/// One request through `wasi:http/outgoing-handler`: `ok STATUS BODY`, or
/// the error code.
fn http(url: &str, body: Option<&str>) -> String {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    let Some((scheme, rest)) = url.split_once("://") else {
        return "error: not a URL".into();
    };
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, format!("/{path}")),
        None => (rest, "/".to_string()),
    };
    // A length, not chunks: Python's http.server reads bodies by length.
    let headers = match body {
        Some(body) => Fields::from_list(&[(
            "content-length".to_string(),
            body.len().to_string().into_bytes(),
        )]),
        None => Ok(Fields::new()),
    };
    let Ok(headers) = headers else {
        return "error: bad headers".into();
    };
    let request = OutgoingRequest::new(headers);
    let method = if body.is_some() {
        Method::Post
    } else {
        Method::Get
    };
    let scheme = if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let set = request.set_method(&method).is_ok()
        && request.set_scheme(Some(&scheme)).is_ok()
        && request.set_authority(Some(authority)).is_ok()
        && request.set_path_with_query(Some(&path)).is_ok();
    if !set {
        return "error: cannot build the request".into();
    }
    let Ok(outgoing) = request.body() else {
        return "error: no body".into();
    };
    let future = match outgoing_handler::handle(request, None) {
        Ok(future) => future,
        Err(code) => return format!("error: {code:?}"),
    };
    if let Some(body) = body {
        let Ok(stream) = outgoing.write() else {
            return "error: cannot write the body".into();
        };
        if stream.blocking_write_and_flush(body.as_bytes()).is_err() {
            return "error: writing the body failed".into();
        }
    }
    if let Err(code) = OutgoingBody::finish(outgoing, None) {
        return format!("error: {code:?}");
    }
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return format!("error: {code:?}"),
        _ => return "error: no response".into(),
    };
    let status = response.status();
    let Ok(incoming) = response.consume() else {
        return "error: no response body".into();
    };
    let Ok(stream) = incoming.stream() else {
        return "error: no response stream".into();
    };
    let mut bytes = Vec::new();
    while let Ok(chunk) = stream.blocking_read(4096) {
        bytes.extend(chunk);
    }
    format!("ok {status} {}", String::from_utf8_lossy(&bytes))
}

/// TEXT to ADDRESS (an IPv4 ip:port) in one datagram through
/// `wasi:sockets/udp`, and the first datagram back within 2 s.
fn udp(address: &str, text: &str) -> String {
    use wasi::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
    use wasi::sockets::udp::OutgoingDatagram;
    use wasi::sockets::{instance_network, udp_create_socket};
    let Ok(remote) = address.parse::<std::net::SocketAddrV4>() else {
        return "error: not an IPv4 ip:port".into();
    };
    let v4 = |ip: std::net::Ipv4Addr, port| {
        let [a, b, c, d] = ip.octets();
        IpSocketAddress::Ipv4(Ipv4SocketAddress {
            port,
            address: (a, b, c, d),
        })
    };
    let outcome = (|| {
        let network = instance_network::instance_network();
        let socket = udp_create_socket::create_udp_socket(IpAddressFamily::Ipv4)?;
        socket.start_bind(&network, v4(std::net::Ipv4Addr::UNSPECIFIED, 0))?;
        socket.subscribe().block();
        socket.finish_bind()?;
        let (incoming, outgoing) = socket.stream(Some(v4(*remote.ip(), remote.port())))?;
        outgoing.subscribe().block();
        outgoing.check_send()?;
        outgoing.send(&[OutgoingDatagram {
            data: text.as_bytes().to_vec(),
            remote_address: None,
        }])?;
        let timeout = wasi::clocks::monotonic_clock::subscribe_duration(2_000_000_000);
        let arrived = wasi::io::poll::poll(&[&incoming.subscribe(), &timeout]);
        if !arrived.contains(&0) {
            return Ok(None);
        }
        let datagrams = incoming.receive(1)?;
        Ok(datagrams.into_iter().next().map(|d| d.data))
    })();
    match outcome {
        Ok(Some(data)) => format!("ok {}", String::from_utf8_lossy(&data)),
        Ok(None) => "error: no answer within 2 s".into(),
        Err(code) => {
            let code: wasi::sockets::network::ErrorCode = code;
            format!("error: {code:?}")
        }
    }
}

/// Run one request written as text.
fn call(text: &str) -> Result<String, String> {
    if let Some(rest) = text.strip_prefix("http-burst ") {
        let (n, url) = rest.split_once(' ').ok_or("http-burst N URL")?;
        let n: u32 = n.parse().map_err(|e| format!("N: {e}"))?;
        let sent = (0..n)
            .filter(|_| http(url, None).starts_with("ok "))
            .count();
        return Ok(format!("sent {sent} refused {}", n as usize - sent));
    }
    if let Some(rest) = text.strip_prefix("http ") {
        let (url, body) = match rest.split_once(' ') {
            Some((url, body)) => (url, Some(body)),
            None => (rest, None),
        };
        return Ok(http(url, body));
    }
    if let Some((kind, rest)) = text.split_once(' ')
        && (kind == "tcp" || kind == "udp")
    {
        let (address, message) = rest.split_once(' ').ok_or("tcp ADDRESS TEXT")?;
        return Ok(socket(kind, address, message));
    }
    let mut words = text.split_whitespace();
    let mut next = |what: &str| words.next().ok_or(format!("missing {what}"));
    let op = next("op")?.to_string();
    let endpoint = next("endpoint")?.to_string();
    let unit: u8 = next("unit")?.parse().map_err(|e| format!("unit: {e}"))?;
    let address: u16 = next("address")?
        .parse()
        .map_err(|e| format!("address: {e}"))?;
    let arg = next("argument")?.to_string();
    let mut device = Unit::new(&endpoint, unit);
    if let Ok(option) = next("option")
        && let Some(ms) = option.strip_prefix("timeout=")
    {
        device = device.timeout_ms(ms.parse().map_err(|e| format!("timeout: {e}"))?);
    }
    let count = || arg.parse::<u16>().map_err(|e| format!("count: {e}"));
    let answer = match op.as_str() {
        "read-coils" => device.read_coils(address, count()?).map(|v| list(&v)),
        "read-discrete" => device
            .read_discrete_inputs(address, count()?)
            .map(|v| list(&v)),
        "read-holding" => device
            .read_holding_registers(address, count()?)
            .map(|v| list(&v)),
        "read-input" => device
            .read_input_registers(address, count()?)
            .map(|v| list(&v)),
        "bench" => {
            let started = std::time::Instant::now();
            (0..count()?)
                .try_for_each(|_| device.read_holding_registers(address, 1).map(|_| ()))
                .map(|()| started.elapsed().as_nanos().to_string())
        }
        "write-coils" => {
            let values: Vec<bool> = arg.split(',').map(|v| v == "1" || v == "true").collect();
            device.write_coils(address, &values).map(|()| String::new())
        }
        "write-registers" => {
            let values = arg
                .split(',')
                .map(|v| v.parse::<u16>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("values: {e}"))?;
            device
                .write_registers(address, &values)
                .map(|()| String::new())
        }
        other => return Err(format!("no such op {other}")),
    };
    Ok(match answer {
        Ok(values) if values.is_empty() => "ok".to_string(),
        Ok(values) => format!("ok {values}"),
        Err(e) => describe(&e),
    })
}

impl Probe {
    /// Run one serial op written as text.
    fn serial(&mut self, text: &str) -> Result<String, String> {
        let (op, rest) = text.split_once(' ').unwrap_or((text, ""));
        let answer = match op {
            "serial-open" => {
                let (path, baud) = rest.split_once(' ').ok_or("serial-open PATH BAUD")?;
                let baud = baud.parse().map_err(|e| format!("baud: {e}"))?;
                serial::open(path, baud).map(|port| {
                    self.port = Some(serial::Framed::new(port));
                    String::new()
                })
            }
            "serial-close" => {
                self.port = None;
                Ok(String::new())
            }
            "serial-write" | "serial-read-line" => {
                let port = self.port.as_mut().ok_or("no port open")?;
                if op == "serial-write" {
                    port.write(format!("{rest}\n").as_bytes())
                        .map(|()| String::new())
                } else {
                    let ms = rest.parse().map_err(|e| format!("timeout: {e}"))?;
                    port.read_until(b'\n', 4096, ms)
                        .map(|line| String::from_utf8_lossy(&line).trim_end().to_string())
                }
            }
            other => return Err(format!("no such op {other}")),
        };
        Ok(match answer {
            Ok(text) if text.is_empty() => "ok".to_string(),
            Ok(text) => format!("ok {text}"),
            Err(e) => describe(&e),
        })
    }
}

impl App for Probe {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        let endpoint = config.get("endpoint").unwrap_or("tcp://127.0.0.1:5020");
        let unit = config.get("unit").and_then(|u| u.parse().ok()).unwrap_or(1);
        info!("modbus-probe started on {endpoint} unit {unit}");
        Ok(Probe {
            unit: Unit::new(endpoint, unit),
            flood: config.get("flood") == Some("true"),
            limited: 0,
            port: None,
        })
    }

    fn on_tick(&mut self, _now: Timestamp) {
        let device = this_device();
        if self.flood {
            for _ in 0..1000 {
                if let Err(IoError::Limit(_)) = self.unit.read_holding_registers(0, 1) {
                    self.limited += 1;
                }
            }
            let _ = device.report(&[("flood_limited".to_string(), Value::Integer(self.limited))]);
            return;
        }
        let report = match self.unit.read_input_registers(0, 1) {
            Ok(words) => (
                "reading".to_string(),
                Value::Integer(i64::from(words.first().copied().unwrap_or(0))),
            ),
            Err(e) => (
                "last_error".to_string(),
                Value::Text(modbus::kind(&e).into()),
            ),
        };
        let _ = device.report(&[report]);
    }

    fn on_action(
        &mut self,
        _device: String,
        name: String,
        argument: Option<Value>,
    ) -> Result<Option<Value>, String> {
        match (name.as_str(), argument) {
            ("call", Some(Value::Text(text))) if text.starts_with("serial-") => {
                self.serial(&text).map(|a| Some(Value::Text(a)))
            }
            ("call", Some(Value::Text(text))) => call(&text).map(|a| Some(Value::Text(a))),
            _ => Err(format!("no such action {name}")),
        }
    }
}

wasmgate_guest::app!(Probe);
