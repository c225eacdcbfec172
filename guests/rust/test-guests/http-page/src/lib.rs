//! Test guest: a component of the `wasi:http/proxy` world, as a Spin or
//! wasmtime-serve HTTP component is, that a gateway runs as an app serving
//! HTTP on its granted address. One instance per request, so what it keeps
//! between requests is in `wasi:keyvalue`.
//!
//! - `GET /hello`: `hello from GREETING`, GREETING being its `greeting`
//!   config (through `wasi:config`), and the version it says it is;
//! - `GET /visits`: counts the request in `wasi:keyvalue` (the app's
//!   storage) and answers `visits N`;
//! - `POST /echo`: answers the request's body;
//! - `GET /big?kib=N`: stores N KiB under `big` (its quota may refuse it:
//!   the answer is then `507` with the refusal);
//! - `GET /trap`: panics;
//! - `GET /spin`: loops until its deadline.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

mod standard {
    wit_bindgen::generate!({
        inline: "
            package wasmgate-test:http-page;
            world imports {
                import wasi:config/store@0.2.0-draft-2024-09-27;
                include wasi:keyvalue/imports@0.2.0-draft2;
            }
        ",
        path: [
            "../../../../wit/deps/config-draft-2024-09-27",
            "../../../../wit/deps/keyvalue-draft2",
        ],
        world: "wasmgate-test:http-page/imports",
        generate_all,
    });
}

use standard::wasi::config::store as config;
use standard::wasi::keyvalue::{atomics, store};

struct Page;

impl Guest for Page {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (status, body) = match (request.method(), path.as_str()) {
            (Method::Get, "/hello") => {
                let greeting = config::get("greeting")
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| "nobody".into());
                let version = config::get("version").ok().flatten().unwrap_or_default();
                (200, format!("hello from {greeting} {version}").into_bytes())
            }
            (Method::Get, "/visits") => match visits() {
                Ok(n) => (200, format!("visits {n}").into_bytes()),
                Err(e) => (500, e.into_bytes()),
            },
            (Method::Post, "/echo") => (200, read_body(&request)),
            (Method::Get, p) if p.starts_with("/big?kib=") => {
                let kib: usize = p["/big?kib=".len()..].parse().unwrap_or(0);
                match store_big(kib) {
                    Ok(()) => (200, b"stored".to_vec()),
                    Err(e) => (507, e.into_bytes()),
                }
            }
            (Method::Get, "/trap") => panic!("asked to trap"),
            (Method::Get, "/spin") =>
            {
                #[allow(clippy::empty_loop)]
                loop {}
            }
            _ => (404, b"no such page".to_vec()),
        };
        respond(out, status, &body);
    }
}

fn visits() -> Result<i64, String> {
    let bucket = store::open("").map_err(|e| format!("open: {e:?}"))?;
    atomics::increment(&bucket, "visits", 1).map_err(|e| format!("increment: {e:?}"))
}

fn store_big(kib: usize) -> Result<(), String> {
    let bucket = store::open("").map_err(|e| format!("open: {e:?}"))?;
    bucket
        .set("big", &vec![b'x'; kib * 1024])
        .map_err(|e| format!("refused: {e:?}"))
}

/// The whole request body.
fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut all = Vec::new();
    let Ok(body) = request.consume() else {
        return all;
    };
    let Ok(stream) = body.stream() else {
        return all;
    };
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        all.extend_from_slice(&chunk);
    }
    drop(stream);
    let _ = IncomingBody::finish(body);
    all
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let outgoing = response.body().expect("the body, once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("the stream, once");
    for chunk in body.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .expect("the client takes the body");
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finish the body");
}

wasi::http::proxy::export!(Page);
