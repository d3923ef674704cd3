//! The browser page: `index.html`, one script, one style sheet and an
//! icon, embedded in the binary (no build step), each served with headers
//! that keep a peer's text from ever running as code: a
//! Content-Security-Policy without `unsafe-inline`, Trusted Types as a
//! tripwire for any HTML sink, `nosniff` and no referrer.

use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use http::{HeaderValue, Response, StatusCode};

use super::Body;

/// Scripts and styles come only from this origin's files, the page talks
/// only to its own origin (the WebSocket included), and it cannot be
/// framed.
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'; require-trusted-types-for 'script'";

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("page/index.html"),
    },
    Asset {
        path: "/chat.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("page/chat.js"),
    },
    Asset {
        path: "/chat.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("page/chat.css"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("page/favicon.svg"),
    },
];

/// Whether `path` is one of the page's files.
pub fn serves(path: &str) -> bool {
    ASSETS.iter().any(|a| a.path == path)
}

/// The file at `path`, with the page's headers, or `None`.
pub fn asset(path: &str) -> Option<Response<Body>> {
    let asset = ASSETS.iter().find(|a| a.path == path)?;
    let mut response = Response::new(Body::from(asset.body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Embedded in the binary: a new build may change them, so browsers
    // revalidate rather than keep a stale script.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = std::str::from_utf8(include_bytes!("page/index.html")).unwrap();
        assert!(html.contains(r#"<script src="/chat.js" defer></script>"#));
        assert!(!html.contains("<style"), "inline style element");
        assert!(!html.contains("style="), "inline style attribute");
        // An inline handler is an attribute ` onclick=`, ` onerror=`...
        let handler = html.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!handler, "inline event handler");
        let scripts = html.matches("<script").count();
        assert_eq!(scripts, 1, "one script, from a file");
    }

    #[test]
    fn the_script_never_writes_html() {
        let js = std::str::from_utf8(include_bytes!("page/chat.js")).unwrap();
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!js.contains(sink), "chat.js uses {sink}");
        }
    }

    #[test]
    fn every_asset_carries_the_policy() {
        for path in ["/", "/chat.js", "/chat.css", "/favicon.svg"] {
            let response = asset(path).unwrap();
            let csp = response.headers()[CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap();
            assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
            assert!(csp.contains("require-trusted-types-for 'script'"));
            assert_eq!(response.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(response.headers()[REFERRER_POLICY], "no-referrer");
        }
        assert!(asset("/nope").is_none());
    }
}
