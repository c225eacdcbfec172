//! Test guest: a Spin HTTP component, written as Spin's templates write
//! one (`#[http_component]`), with nothing wasmgate-specific in it.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;

#[http_component]
fn handle(request: Request) -> anyhow::Result<impl IntoResponse> {
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(format!(
            "hello from spin: {} {}",
            request.method(),
            request.path()
        ))
        .build())
}
