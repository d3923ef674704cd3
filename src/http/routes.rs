//! The plain HTTP endpoints: the page's files ([`page`]) on the chat
//! port, `/healthz`, `/readyz` and `/metrics` where operators' endpoints
//! are served, with `HEAD` for each, 405 with `Allow` for other methods,
//! 404 elsewhere. `/ws` is not routed here: without an upgrade it is
//! answered by `policy::negotiate` (426, telling people to use a WebSocket
//! client).

use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};

use super::{page, Body, Door, Serves};

/// The answer for a routed path, or `None` for `/ws`, which this listener
/// leaves to the upgrade.
pub fn route<B>(req: &Request<B>, door: &Door) -> Option<Response<Body>> {
    let ops = door.serves != Serves::Chat;
    let chat = door.serves != Serves::Ops;
    let answer = match req.uri().path() {
        path if chat && page::serves(path) => page::asset(path)?,
        "/healthz" if ops => plain(StatusCode::OK, "ok\n".into()),
        "/readyz" if ops => match door.readiness.check() {
            Ok(()) => plain(StatusCode::OK, "ready\n".into()),
            Err(down) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", down.join(", ")),
            ),
        },
        "/metrics" if ops => {
            let mut response = plain(StatusCode::OK, door.metrics.encode(&door.hub));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        "/ws" if chat => return None,
        _ => return Some(not_found()),
    };
    Some(match *req.method() {
        // hyper leaves out the body of an answer to HEAD.
        Method::GET | Method::HEAD => answer,
        _ => {
            let mut response = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are allowed here\n".into(),
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
    })
}

/// 404 for any path this listener does not serve.
pub fn not_found() -> Response<Body> {
    plain(StatusCode::NOT_FOUND, "not found\n".into())
}

fn plain(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
