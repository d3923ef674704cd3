//! The request policy: whether a request may open a chat, decided by pure
//! functions over `http::Request`, tested without sockets.
//!
//! [`negotiate`] is the one place that decides whether a request becomes a
//! chat session: the Host guard against DNS rebinding, the [`Policy`] (which
//! browser origins may connect, and the token clients must show), then the
//! upgrade itself and the subprotocol.
//!
//! Secrets never reach a log: a token may come in the `Authorization` header
//! or in the request URI, so neither is ever logged, and
//! [`without_credentials`] removes both from the request handed on.

use std::fmt;
use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::header::{HeaderName, AUTHORIZATION, HOST, ORIGIN};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use subtle::ConstantTimeEq as _;

use crate::protocol::{percent_decode, Encoding, JSON_SUBPROTOCOL, TEXT_SUBPROTOCOL};

/// Fixed GUID from RFC 6455, section 1.3.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A refused request: the status, a one-line explanation for people, and any
/// headers the status calls for.
#[derive(Debug)]
pub struct Rejection {
    /// The HTTP status to answer with.
    pub status: StatusCode,
    /// Sent as the plain-text body.
    pub message: String,
    /// An extra response header the status calls for (e.g.
    /// `Sec-WebSocket-Version: 13` with 426).
    pub header: Option<(&'static str, &'static str)>,
    /// More for the log, never sent (e.g. the refused Origin, sanitized).
    pub detail: Option<String>,
    /// A short fixed word for the `reason` label of
    /// `chat_handshakes_rejected_total` (never peer-supplied text).
    pub reason: &'static str,
}

impl Rejection {
    /// A refusal with `status` and a one-line explanation.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Rejection {
            status,
            message: message.into(),
            header: None,
            detail: None,
            reason: match status {
                StatusCode::UNAUTHORIZED => "token",
                StatusCode::FORBIDDEN => "origin",
                StatusCode::METHOD_NOT_ALLOWED => "method",
                StatusCode::UPGRADE_REQUIRED => "not_websocket",
                StatusCode::HTTP_VERSION_NOT_SUPPORTED => "http_version",
                StatusCode::TOO_MANY_REQUESTS => "per_ip_cap",
                StatusCode::SERVICE_UNAVAILABLE => "connection_cap",
                _ => "bad_request",
            },
        }
    }

    /// Sets the `reason` label.
    #[must_use]
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = reason;
        self
    }

    /// The `reason` label of `chat_handshakes_rejected_total`.
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    /// Adds a response header the status calls for.
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Self {
        self.header = Some((name, value));
        self
    }

    /// Adds a note for the log only.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The answer as a response for hyper. `Connection: close`: a refused
    /// client is not kept waiting on an idle connection.
    pub fn to_response(&self) -> Response<http_body_util::Full<bytes::Bytes>> {
        let mut response = Response::new(http_body_util::Full::from(format!("{}\n", self.message)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        if let Some((name, value)) = self.header {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                headers.insert(name, HeaderValue::from_static(value));
            }
        }
        response
    }

    /// The full HTTP/1.1 response, for the answers written before any
    /// HTTP is read (connection caps, plain HTTP on the TLS port).
    pub fn to_bytes(&self) -> Vec<u8> {
        let body = format!("{}\n", self.message);
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes();
        if let Some((name, value)) = self.header {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body.as_bytes());
        out
    }
}

/// Who may open a chat: checked by [`negotiate`] before any upgrade.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Browser origins allowed to connect, such as `https://chat.example.com`
    /// (scheme, host and port; compared without regard to ASCII case), or
    /// `*` for any. Empty: same host only, that is, the Origin's host and
    /// port must equal the request's `Host` header (a missing port means the
    /// scheme's default, 80 for http and 443 for https). Either way a
    /// request without an Origin header (not from a browser) is allowed:
    /// Origin protects browsers' users from other sites' pages, and any
    /// other client can send whatever Origin it likes.
    pub allowed_origins: Vec<String>,
    /// The secret every client must show, as `Authorization: Bearer TOKEN`
    /// or as a `token` query parameter; `None`: no token needed.
    pub token: Option<Token>,
    /// Host names (with or without a port) this server answers to besides
    /// loopback names, when it listens on a loopback address; see
    /// [`Policy::check_host`].
    pub allowed_hosts: Vec<String>,
    /// Whether the server listens on a loopback address: then only
    /// loopback names and [`Policy::allowed_hosts`] are accepted as `Host`.
    /// Set by `server::run` from the bound address.
    pub loopback_bind: bool,
}

impl Policy {
    /// Refuses a request whose `Host` is not ours while we listen on
    /// loopback (403): the DNS-rebinding guard. A page on `evil.example`
    /// whose name is re-pointed at 127.0.0.1 reaches us with
    /// `Host: evil.example` and, to the browser, the same origin; only the
    /// Host header tells it apart. A request without a Host header is not
    /// from a browser and is let through.
    pub fn check_host(&self, headers: &HeaderMap) -> Result<(), Rejection> {
        if !self.loopback_bind {
            return Ok(());
        }
        let Some(value) = headers.get(HOST) else {
            return Ok(());
        };
        let host = value.to_str().unwrap_or("").trim();
        let name = host
            .parse::<Authority>()
            .map(|a| {
                a.host()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            })
            .unwrap_or_default();
        let listed = self.allowed_hosts.iter().any(|allowed| {
            allowed.eq_ignore_ascii_case(host) || allowed.eq_ignore_ascii_case(&name)
        });
        if listed || is_loopback_name(&name) {
            return Ok(());
        }
        Err(Rejection::new(
            StatusCode::FORBIDDEN,
            "this server listens on loopback and answers only to loopback names; start it with --allowed-host NAME to add one",
        )
        .with_detail(format!("host {}", sanitize(value.as_bytes())))
        .with_reason("host"))
    }

    /// Refuses a request with a foreign Origin (403).
    fn check_origin(&self, headers: &HeaderMap) -> Result<(), Rejection> {
        for value in headers.get_all(ORIGIN) {
            let origin = value.to_str().unwrap_or("").trim();
            let allowed = if self.allowed_origins.is_empty() {
                let host = headers.get(HOST).and_then(|h| h.to_str().ok());
                same_host(origin, host)
            } else {
                let origin = origin.trim_end_matches('/');
                self.allowed_origins
                    .iter()
                    .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
            };
            if !allowed {
                return Err(Rejection::new(
                    StatusCode::FORBIDDEN,
                    "pages from this origin may not open a chat here",
                )
                .with_detail(format!("origin {}", sanitize(value.as_bytes()))));
            }
        }
        Ok(())
    }

    /// Refuses a request without the right token (401).
    fn check_token<B>(&self, request: &Request<B>) -> Result<(), Rejection> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let bearer = request
            .headers()
            .get_all(AUTHORIZATION)
            .iter()
            .filter_map(|v| bearer_token(v.as_bytes()).map(<[u8]>::to_vec));
        let mut presented = false;
        let mut valid = false;
        // Every candidate is compared, so the time taken does not tell which
        // one (if any) matched.
        for candidate in bearer.chain(query_tokens(request.uri())) {
            presented = true;
            valid |= token.matches(&candidate);
        }
        if valid {
            return Ok(());
        }
        let message = if presented {
            "wrong token"
        } else {
            "this chat needs a token: send \"Authorization: Bearer TOKEN\" or add ?token=TOKEN to the URL"
        };
        Err(Rejection::new(StatusCode::UNAUTHORIZED, message)
            .with_header("WWW-Authenticate", "Bearer"))
    }
}

/// A shared secret. Its `Debug` never shows it, and comparing takes the
/// same time wherever the first difference is.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl Token {
    /// A token with this value.
    pub fn new(value: impl Into<String>) -> Self {
        Token(value.into().into_bytes())
    }

    /// Whether `candidate` is this token, in constant time for a given
    /// length (the length itself is not secret).
    fn matches(&self, candidate: &[u8]) -> bool {
        self.0.ct_eq(candidate).into()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Whether `name` (a host without port or brackets) is a loopback name:
/// `localhost`, a name under `.localhost`, or a loopback address.
fn is_loopback_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == "localhost"
        || lower.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks an `--allowed-origin` value at start: `*`, or a scheme
/// (http or https) and a host with an optional port, and nothing else.
/// The error names the value and says what is expected.
pub fn validate_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let bad = || {
        format!(
            "invalid --allowed-origin {origin:?}: expected * or scheme://host[:port], such as https://chat.example.com"
        )
    };
    let uri = origin
        .trim_end_matches('/')
        .parse::<Uri>()
        .map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let path_ok = uri
        .path_and_query()
        .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/");
    match uri.authority() {
        Some(a) if scheme_ok && path_ok && !a.host().is_empty() && !a.as_str().contains('@') => {
            Ok(())
        }
        _ => Err(bad()),
    }
}

/// Whether the Origin names the same host and port as the Host header.
fn same_host(origin: &str, host: Option<&str>) -> bool {
    let (Ok(origin), Some(Ok(host))) = (
        origin.parse::<Uri>(),
        host.map(|h| h.trim().parse::<Authority>()),
    ) else {
        // Includes the opaque origin "null" (sandboxed pages, file: URLs).
        return false;
    };
    let (Some(scheme), Some(authority)) = (origin.scheme_str(), origin.authority()) else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        _ => return false,
    };
    authority.host().eq_ignore_ascii_case(host.host())
        && authority.port_u16().unwrap_or(default_port) == host.port_u16().unwrap_or(default_port)
}

/// The credentials of an `Authorization: Bearer ...` value.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

/// The values of every `token` query parameter, percent-decoded.
fn query_tokens(uri: &Uri) -> impl Iterator<Item = Vec<u8>> + '_ {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.strip_prefix("token="))
        .map(|value| percent_decode(value.as_bytes()))
}

/// A peer-supplied header value made fit for a log line: quoted, escaped,
/// and cut to a sane length.
fn sanitize(value: &[u8]) -> String {
    const MAX: usize = 100;
    let text = String::from_utf8_lossy(&value[..value.len().min(MAX)]);
    let cut = if value.len() > MAX { "..." } else { "" };
    format!("{text:?}{cut}")
}

/// Removes the credentials from an accepted request: the `Authorization`
/// header and any `token` query parameter.
pub fn without_credentials<B>(mut request: Request<B>) -> Request<B> {
    request.headers_mut().remove(AUTHORIZATION);
    if let Some(query) = request.uri().query() {
        if query.split('&').any(|p| p.starts_with("token=")) {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|p| !p.starts_with("token="))
                .collect();
            let path = request.uri().path();
            let path_and_query = if kept.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", kept.join("&"))
            };
            let mut parts = request.uri().clone().into_parts();
            parts.path_and_query = PathAndQuery::try_from(path_and_query).ok();
            if let Ok(uri) = Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    request
}

/// Decides whether a request becomes a chat session and builds the answer.
///
/// Returns the chosen encoding and the `101 Switching Protocols` response.
/// The policy is checked before the upgrade headers, so a client without
/// the token learns nothing more than "401".
pub fn negotiate<B>(
    request: &Request<B>,
    policy: &Policy,
) -> Result<(Encoding, Response<()>), Rejection> {
    let headers = request.headers();
    if request.method() != Method::GET {
        return Err(
            Rejection::new(StatusCode::METHOD_NOT_ALLOWED, "only GET can open a chat")
                .with_header("Allow", "GET"),
        );
    }
    if request.version() != http::Version::HTTP_11 {
        return Err(Rejection::new(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "WebSocket needs HTTP/1.1",
        ));
    }
    policy.check_host(headers)?;
    policy.check_origin(headers)?;
    policy.check_token(request)?;
    if !has_token(headers, http::header::UPGRADE, "websocket") {
        return Err(Rejection::new(
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket chat server: connect with a WebSocket client (for example `cargo run --bin client`)",
        )
        .with_header("Upgrade", "websocket"));
    }
    if !has_token(headers, http::header::CONNECTION, "upgrade") {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "the Connection header must include \"Upgrade\"",
        ));
    }
    if !has_token(headers, http::header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(Rejection::new(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version: this server speaks version 13",
        )
        .with_header("Sec-WebSocket-Version", "13"));
    }
    let key = headers
        .get(http::header::SEC_WEBSOCKET_KEY)
        .map(|v| v.as_bytes())
        .filter(|k| BASE64.decode(k).is_ok_and(|raw| raw.len() == 16))
        .ok_or_else(|| {
            Rejection::new(
                StatusCode::BAD_REQUEST,
                "missing or invalid Sec-WebSocket-Key header",
            )
        })?;

    let encoding = if has_token(
        headers,
        http::header::SEC_WEBSOCKET_PROTOCOL,
        JSON_SUBPROTOCOL,
    ) {
        Some(Encoding::Json)
    } else if has_token(
        headers,
        http::header::SEC_WEBSOCKET_PROTOCOL,
        TEXT_SUBPROTOCOL,
    ) {
        Some(Encoding::Text)
    } else {
        // No subprotocol (or only ones we do not know): the text encoding,
        // and, as RFC 6455 asks, no Sec-WebSocket-Protocol in the answer.
        None
    };

    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::SEC_WEBSOCKET_ACCEPT, accept_key(key));
    if let Some(encoding) = encoding {
        response = response.header(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(encoding.subprotocol()),
        );
    }
    let response = response.body(()).map_err(|_| {
        Rejection::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not build the answer",
        )
    })?;
    Ok((encoding.unwrap_or(Encoding::Text), response))
}

/// The `Sec-WebSocket-Accept` value for a client's key (RFC 6455, 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha.digest().bytes())
}

/// Whether any of the (possibly repeated, comma-separated) values of a
/// header is `token`, ignoring ASCII case.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder()
            .method("GET")
            .uri("/")
            .header("Host", "127.0.0.1:2000")
            .header("Upgrade", "websocket")
            .header("Connection", "keep-alive, Upgrade")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn plain_upgrade_gets_text_and_no_subprotocol() {
        let (enc, resp) = negotiate(&request(&[]), &Policy::default()).unwrap();
        assert_eq!(enc, Encoding::Text);
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            resp.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(resp.headers().get("sec-websocket-protocol").is_none());
    }

    #[test]
    fn json_subprotocol_is_chosen_and_echoed() {
        let (enc, resp) = negotiate(
            &request(&[("Sec-WebSocket-Protocol", "foo, chat.v1.json")]),
            &Policy::default(),
        )
        .unwrap();
        assert_eq!(enc, Encoding::Json);
        assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v1.json");
    }

    #[test]
    fn non_websocket_requests_are_refused() {
        let req = Request::builder().uri("/").body(()).unwrap();
        assert_eq!(
            negotiate(&req, &Policy::default()).unwrap_err().status,
            StatusCode::UPGRADE_REQUIRED
        );
        let mut bad_key = request(&[]);
        bad_key
            .headers_mut()
            .insert("Sec-WebSocket-Key", http::HeaderValue::from_static("short"));
        assert_eq!(
            negotiate(&bad_key, &Policy::default()).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    fn status(req: &Request<()>, policy: &Policy) -> Option<StatusCode> {
        negotiate(req, policy).err().map(|r| r.status)
    }

    #[test]
    fn the_default_origin_rule_is_same_host() {
        let policy = Policy::default();
        for ok in [
            "http://127.0.0.1:2000",
            "https://127.0.0.1:2000",
            "HTTP://127.0.0.1:2000",
        ] {
            assert_eq!(status(&request(&[("Origin", ok)]), &policy), None, "{ok}");
        }
        for bad in [
            "http://127.0.0.1:2001",
            "http://127.0.0.1",
            "http://evil.example:2000",
            "null",
            "127.0.0.1:2000",
            "",
        ] {
            assert_eq!(
                status(&request(&[("Origin", bad)]), &policy),
                Some(StatusCode::FORBIDDEN),
                "{bad}"
            );
        }
        // Default ports on both sides.
        let mut req = request(&[("Origin", "https://chat.example")]);
        req.headers_mut()
            .insert(HOST, http::HeaderValue::from_static("chat.example:443"));
        assert_eq!(status(&req, &policy), None);
        req.headers_mut()
            .insert(HOST, http::HeaderValue::from_static("Chat.Example"));
        assert_eq!(status(&req, &policy), None);
    }

    #[test]
    fn listed_origins_replace_the_same_host_rule() {
        let policy = Policy {
            allowed_origins: vec!["https://chat.example/".into()],
            ..Policy::default()
        };
        let ok = request(&[("Origin", "https://CHAT.example")]);
        assert_eq!(status(&ok, &policy), None);
        let same_host = request(&[("Origin", "http://127.0.0.1:2000")]);
        assert_eq!(status(&same_host, &policy), Some(StatusCode::FORBIDDEN));
        assert_eq!(status(&request(&[]), &policy), None, "no Origin: allowed");
        let any = Policy {
            allowed_origins: vec!["*".into()],
            ..Policy::default()
        };
        let elsewhere = request(&[("Origin", "http://evil.example")]);
        assert_eq!(status(&elsewhere, &any), None);
    }

    #[test]
    fn the_token_is_taken_from_the_header_or_the_query() {
        let policy = Policy {
            token: Some(Token::new("s3cret/+")),
            ..Policy::default()
        };
        assert_eq!(
            status(&request(&[]), &policy),
            Some(StatusCode::UNAUTHORIZED)
        );
        let bearer = request(&[("Authorization", "Bearer s3cret/+")]);
        assert_eq!(status(&bearer, &policy), None);
        let lower = request(&[("Authorization", "bearer  s3cret/+ ")]);
        assert_eq!(status(&lower, &policy), None);
        let wrong = request(&[("Authorization", "Bearer s3cret")]);
        assert_eq!(status(&wrong, &policy), Some(StatusCode::UNAUTHORIZED));
        let basic = request(&[("Authorization", "Basic s3cret/+")]);
        assert_eq!(status(&basic, &policy), Some(StatusCode::UNAUTHORIZED));
        let mut query = request(&[]);
        *query.uri_mut() = "/?room=a&token=s3cret%2F%2b".parse().unwrap();
        assert_eq!(status(&query, &policy), None);
        let rejection = negotiate(&wrong, &policy).unwrap_err();
        assert_eq!(rejection.header, Some(("WWW-Authenticate", "Bearer")));
    }

    #[test]
    fn credentials_are_removed_from_the_accepted_request() {
        let mut req = request(&[("Authorization", "Bearer s3cret")]);
        *req.uri_mut() = "/chat?token=s3cret&room=a".parse().unwrap();
        let clean = without_credentials(req);
        assert!(clean.headers().get(AUTHORIZATION).is_none());
        assert_eq!(clean.uri(), "/chat?room=a");
        assert!(!format!("{clean:?}").contains("s3cret"));
        assert_eq!(format!("{:?}", Token::new("s3cret")), "Token(<redacted>)");
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes() {
        assert_eq!(percent_decode(b"a%2Fb%zz%4"), b"a/b%zz%4");
    }

    #[test]
    fn on_a_loopback_bind_only_loopback_or_listed_hosts_are_answered() {
        let policy = Policy {
            loopback_bind: true,
            allowed_hosts: vec!["chat.example".into()],
            ..Policy::default()
        };
        for ok in [
            "127.0.0.1:2000",
            "localhost:2000",
            "LOCALHOST",
            "app.localhost:2000",
            "[::1]:2000",
            "127.3.4.5",
            "chat.example:2000",
        ] {
            let mut req = request(&[]);
            req.headers_mut()
                .insert(HOST, HeaderValue::from_str(ok).unwrap());
            assert_eq!(status(&req, &policy), None, "{ok}");
        }
        for bad in [
            "evil.example:2000",
            "127.0.0.1.evil.example",
            "10.0.0.1",
            "",
        ] {
            let mut req = request(&[]);
            req.headers_mut()
                .insert(HOST, HeaderValue::from_str(bad).unwrap());
            assert_eq!(status(&req, &policy), Some(StatusCode::FORBIDDEN), "{bad}");
        }
        // Not on loopback: any Host (the Origin rule still applies).
        let mut req = request(&[]);
        req.headers_mut()
            .insert(HOST, HeaderValue::from_static("evil.example"));
        assert_eq!(status(&req, &Policy::default()), None);
    }

    #[test]
    fn allowed_origins_are_validated() {
        for ok in [
            "*",
            "https://chat.example.com",
            "http://127.0.0.1:2000",
            "https://chat.example/",
        ] {
            assert_eq!(validate_origin(ok), Ok(()), "{ok}");
        }
        for bad in [
            "chat.example.com",
            "ftp://x",
            "https://",
            "https://a/b",
            "https://u@h",
            "",
            "http://x y",
        ] {
            let err = validate_origin(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
