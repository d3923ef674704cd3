//! The HTTP/1.1 request that opens every connection, up to the WebSocket
//! upgrade.
//!
//! tokio-websockets' own `accept` reads the request with neither a size cap
//! nor a timeout, so a silent or endless handshake could hold a task forever
//! or grow memory without bound. Here the request is read into a buffer of at
//! most [`MAX_REQUEST_BYTES`], parsed with `httparse`, checked by
//! [`negotiate`], and answered either with `101 Switching Protocols` or with a
//! plain HTTP error; only then is the stream handed to tokio-websockets
//! (`ServerBuilder::serve`). The caller bounds the whole exchange with
//! [`HANDSHAKE_TIMEOUT`].
//!
//! [`negotiate`] is the one place that decides whether a request becomes a
//! chat session: the [`Policy`] (which browser origins may connect, and the
//! token clients must show), then the upgrade itself and the subprotocol; a
//! browser page or a metrics endpoint later.
//!
//! Secrets never reach a log: a token may come in the `Authorization` header
//! or in the request URI, so neither is ever logged, and both are removed
//! from the request handed on in [`Accepted`].

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::{BufMut as _, BytesMut};
use http::header::{HeaderName, AUTHORIZATION, HOST, ORIGIN};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use subtle::ConstantTimeEq as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::protocol::{Encoding, JSON_SUBPROTOCOL, TEXT_SUBPROTOCOL};

/// Largest request head (request line and headers) the server reads.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client has to send its request and receive the answer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most headers a request may carry.
const MAX_HEADERS: usize = 64;
/// Fixed GUID from RFC 6455, section 1.3.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a connection did not become a WebSocket session.
#[derive(Debug)]
pub enum HandshakeError {
    /// The request head grew past [`MAX_REQUEST_BYTES`] (or had too many headers).
    TooLarge,
    /// The bytes were not an HTTP/1.1 request.
    Malformed(String),
    /// The client sent WebSocket data before it had our answer (RFC 6455
    /// forbids this, and those bytes would otherwise be lost).
    EarlyData,
    /// The peer closed the connection before finishing its request.
    Closed,
    /// The request was valid HTTP but was refused (see [`Rejection`]).
    Rejected(Rejection),
    /// Reading or writing failed.
    Io(std::io::Error),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::TooLarge => {
                write!(
                    f,
                    "request head larger than {MAX_REQUEST_BYTES} bytes or {MAX_HEADERS} headers"
                )
            }
            HandshakeError::Malformed(why) => write!(f, "malformed HTTP request: {why}"),
            HandshakeError::EarlyData => f.write_str("client sent data before the upgrade"),
            HandshakeError::Closed => f.write_str("connection closed during the handshake"),
            HandshakeError::Rejected(r) => {
                write!(f, "refused with {}: {}", r.status, r.message)?;
                if let Some(detail) = &r.detail {
                    write!(f, " ({detail})")?;
                }
                Ok(())
            }
            HandshakeError::Io(e) => write!(f, "I/O error during the handshake: {e}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

impl HandshakeError {
    /// The HTTP answer owed to the client, if any.
    pub fn response(&self) -> Option<Vec<u8>> {
        match self {
            HandshakeError::TooLarge => Some(
                Rejection::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head too large",
                )
                .to_bytes(),
            ),
            HandshakeError::Malformed(_) | HandshakeError::EarlyData => Some(
                Rejection::new(StatusCode::BAD_REQUEST, "malformed WebSocket handshake").to_bytes(),
            ),
            HandshakeError::Rejected(r) => Some(r.to_bytes()),
            HandshakeError::Closed | HandshakeError::Io(_) => None,
        }
    }
}

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
}

impl Rejection {
    /// A refusal with `status` and a one-line explanation.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Rejection {
            status,
            message: message.into(),
            header: None,
            detail: None,
        }
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

    /// The full HTTP/1.1 response.
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

/// An accepted upgrade: what the session needs to know about the request.
#[derive(Debug)]
pub struct Accepted {
    /// The encoding the client chose through its subprotocol.
    pub encoding: Encoding,
    /// The request, for anything later layers want from it, without its
    /// credentials: no `Authorization` header and no `token` query
    /// parameter, so logging it cannot leak them.
    pub request: Request<()>,
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
}

impl Policy {
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
    fn check_token(&self, request: &Request<()>) -> Result<(), Rejection> {
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

/// Decodes `%XX` escapes (as `encodeURIComponent` makes them); anything
/// malformed is kept as it is.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (input[i], input.get(i + 1), input.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
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
fn without_credentials(mut request: Request<()>) -> Request<()> {
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

/// Reads the request, decides, and answers it. On success the stream is
/// positioned at the first WebSocket frame. On failure the HTTP error answer
/// (if one is owed) has been written.
///
/// Not bounded in time by itself: the caller wraps it in a timeout.
pub async fn accept<S>(stream: &mut S, policy: &Policy) -> Result<Accepted, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let result: Result<Accepted, HandshakeError> = async {
        let request = read_request(stream).await?;
        let (encoding, response) = negotiate(&request, policy).map_err(HandshakeError::Rejected)?;
        stream.write_all(&response).await?;
        Ok(Accepted {
            encoding,
            request: without_credentials(request),
        })
    }
    .await;
    if let Err(err) = &result {
        if let Some(answer) = err.response() {
            // Best effort: the peer may already be gone.
            let _ = stream.write_all(&answer).await;
            let _ = stream.shutdown().await;
        }
    }
    result
}

/// Reads one request head of at most [`MAX_REQUEST_BYTES`].
pub async fn read_request<S>(stream: &mut S) -> Result<Request<()>, HandshakeError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let room = MAX_REQUEST_BYTES - buf.len();
        if room == 0 {
            return Err(HandshakeError::TooLarge);
        }
        let before = buf.len();
        let n = stream.read_buf(&mut (&mut buf).limit(room)).await?;
        if n == 0 {
            return Err(HandshakeError::Closed);
        }
        // Parse only once the blank line that ends the head may have arrived,
        // so a client dribbling bytes cannot make us re-parse 8 KiB per byte.
        let tail = &buf[before.saturating_sub(3)..];
        if !contains(tail, b"\r\n\r\n") && !contains(tail, b"\n\n") {
            continue;
        }
        if let Some(request) = parse_request(&buf)? {
            return Ok(request);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Parses a complete request head; `None` if more bytes are needed.
fn parse_request(buf: &[u8]) -> Result<Option<Request<()>>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooLarge),
        Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
    };
    if len != buf.len() {
        return Err(HandshakeError::EarlyData);
    }
    let malformed = |e: http::Error| HandshakeError::Malformed(e.to_string());
    let mut builder = Request::builder()
        .method(parsed.method.unwrap_or("GET"))
        .uri(parsed.path.unwrap_or("/"))
        .version(match parsed.version {
            Some(0) => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        });
    for header in parsed.headers.iter() {
        builder = builder.header(header.name, header.value);
    }
    builder.body(()).map(Some).map_err(malformed)
}

/// Decides whether a request becomes a chat session and builds the answer.
///
/// Returns the chosen encoding and the `101 Switching Protocols` response.
/// The policy is checked before the upgrade headers, so a client without
/// the token learns nothing more than "401".
pub fn negotiate(request: &Request<()>, policy: &Policy) -> Result<(Encoding, Vec<u8>), Rejection> {
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

    let mut response = Vec::with_capacity(160);
    response.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    response.extend_from_slice(accept_key(key).as_bytes());
    response.extend_from_slice(b"\r\n");
    if let Some(encoding) = encoding {
        response.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        response.extend_from_slice(encoding.subprotocol().as_bytes());
        response.extend_from_slice(b"\r\n");
    }
    response.extend_from_slice(b"\r\n");
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
        let resp = String::from_utf8(resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101"));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!resp.contains("Sec-WebSocket-Protocol"));
    }

    #[test]
    fn json_subprotocol_is_chosen_and_echoed() {
        let (enc, resp) = negotiate(
            &request(&[("Sec-WebSocket-Protocol", "foo, chat.v1.json")]),
            &Policy::default(),
        )
        .unwrap();
        assert_eq!(enc, Encoding::Json);
        assert!(String::from_utf8(resp)
            .unwrap()
            .contains("Sec-WebSocket-Protocol: chat.v1.json\r\n"));
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
    fn parse_waits_for_the_blank_line_and_refuses_early_data() {
        assert!(parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .unwrap()
            .is_none());
        let req = parse_request(b"GET /chat HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.uri().path(), "/chat");
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x81\x80"),
            Err(HandshakeError::EarlyData)
        ));
    }
}
