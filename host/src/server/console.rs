//! The web console: a small page and script, built into the binary, that
//! read and change the fleet through the same API (`/api/v1`) as any other
//! client, with the same tokens. Nothing here touches the database; the
//! files carry no data, so they are served without a token, and the page
//! asks for one when the API does.
//!
//! The chart library (uPlot) is vendored, pinned by tests/browser/package.json;
//! a test checks the copy is that version's.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;

/// The console's files: path under `/console/`, content type, body.
const FILES: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("console/index.html"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("console/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("console/console.css"),
    ),
    (
        "vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("console/vendor/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("console/vendor/uPlot.min.css"),
    ),
];

/// Scripts and styles only from this server, no framing, no referrer: the
/// page shows what a token let it read.
const SECURITY_HEADERS: [(header::HeaderName, &str); 4] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-cache"),
];

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new().route("/", get(|| async { Redirect::to("/console/") }));
    for (path, content_type, body) in FILES {
        let answer = move || async move {
            let mut response = ([(header::CONTENT_TYPE, *content_type)], *body).into_response();
            for (name, value) in SECURITY_HEADERS {
                response
                    .headers_mut()
                    .insert(name, header::HeaderValue::from_static(value));
            }
            response
        };
        router = router.route(&format!("/console/{path}"), get(answer));
    }
    router.route("/console", get(|| async { Redirect::to("/console/") }))
}
