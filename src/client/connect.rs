//! Opening one WebSocket connection to the server: the URL, TLS for
//! `wss://`, the JSON subprotocol, and errors explained in one sentence.
//!
//! Nothing here knows about chat events or terminals; [`Connector`] hands
//! back an open socket or a sentence saying why there is none.
//!
//! `--ca FILE` trusts its certificates two ways: as CAs (a server
//! certificate they signed passes normal chain validation) and as pins (a
//! server certificate byte for byte equal to one of them is accepted as
//! it is). Pinning is what makes an ordinary self-signed certificate work:
//! made the usual way (`openssl req -x509`) it says it is a CA, and WebPKI
//! refuses a CA certificate as the server's own (`CaUsedAsEndEntity`).

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use http::uri::PathAndQuery;
use http::{HeaderValue, Uri};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_websockets::{ClientBuilder, Limits, MaybeTlsStream, WebSocketStream};

use crate::protocol::{Hello, JSON_SUBPROTOCOL};

/// How long connecting (TCP, TLS and handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An open connection to the server.
pub type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Everything needed to (re)connect to one server, prepared once: the
/// parsed URL and, for `wss://`, the TLS settings with their trust roots.
pub struct Connector {
    url: String,
    uri: Uri,
    tls: Option<tokio_websockets::Connector>,
    max_incoming: usize,
    /// `Authorization: Bearer ...`, marked sensitive; never printed.
    authorization: Option<HeaderValue>,
}

impl Connector {
    /// Checks the URL and, for `wss://`, loads the system's trust roots and
    /// the extra CA certificates in `ca` (PEM), if given.
    pub fn new(url: &str, ca: Option<&Path>, max_incoming: usize) -> anyhow::Result<Self> {
        let mut all = Self::all(&[url], ca, max_incoming)?;
        Ok(all.remove(0))
    }

    /// One connector per URL, in order. Every URL is checked before
    /// anything else is done, and the first bad one is named; the TLS
    /// settings (trust roots and `ca`) are loaded once, if any URL is
    /// `wss://`, and shared.
    pub fn all<U: AsRef<str>>(
        urls: &[U],
        ca: Option<&Path>,
        max_incoming: usize,
    ) -> anyhow::Result<Vec<Self>> {
        // `--url "ws://a:1, ws://b:2"` means what it says.
        let urls: Vec<&str> = urls.iter().map(|url| url.as_ref().trim()).collect();
        let parsed = urls
            .iter()
            .map(|url| parse_url(url))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let tls = if parsed.iter().any(|(_, secure)| *secure) {
            Some(tls_connector(ca)?)
        } else {
            None
        };
        Ok(urls
            .iter()
            .zip(parsed)
            .map(|(url, (uri, secure))| Connector {
                url: url.to_string(),
                uri,
                tls: tls
                    .clone()
                    .filter(|_| secure)
                    .map(tokio_websockets::Connector::Rustls),
                max_incoming,
                authorization: None,
            })
            .collect())
    }

    /// Sends `token` as `Authorization: Bearer TOKEN` on every connection.
    pub fn with_token(mut self, token: Option<&str>) -> anyhow::Result<Self> {
        self.authorization = match token {
            None => None,
            Some(token) => {
                // The error must not echo the token, so no `{e}` of it.
                let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    anyhow!("the token holds characters an HTTP header cannot carry (control characters or line breaks)")
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(self)
    }

    /// The URL as given (without surrounding spaces), for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a connection asking for the JSON encoding and for what
    /// `hello` asks (query parameters of the upgrade URL), or explains in
    /// one sentence why not.
    pub async fn connect(&self, hello: &Hello) -> anyhow::Result<Socket> {
        let url = &self.url;
        let mut builder = ClientBuilder::from_uri(with_hello(&self.uri, hello)?)
            // A hostile server must not make us allocate without bound.
            .limits(Limits::default().max_payload_len(Some(self.max_incoming)))
            .add_header(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(JSON_SUBPROTOCOL),
            )
            .map_err(|e| anyhow!("cannot build the request: {e}"))?;
        if let Some(value) = &self.authorization {
            builder = builder
                .add_header(AUTHORIZATION, value.clone())
                .map_err(|_| {
                    anyhow!("cannot build the request: the token is not a valid header")
                })?;
        }
        if let Some(tls) = &self.tls {
            builder = builder.connector(tls);
        }
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, builder.connect())
            .await
            .map_err(|_| {
                anyhow!(
                    "cannot connect to {url}: no answer within {}s (is the address right?)",
                    CONNECT_TIMEOUT.as_secs()
                )
            })?;
        let (ws, response) = connected.map_err(|e| {
            anyhow!(
                "cannot connect to {url}: {}",
                explain(&e, self.authorization.is_some())
            )
        })?;
        let chosen = response.headers().get(SEC_WEBSOCKET_PROTOCOL);
        if chosen.map(HeaderValue::as_bytes) != Some(JSON_SUBPROTOCOL.as_bytes()) {
            bail!(
                "the server at {url} does not speak this client's protocol ({JSON_SUBPROTOCOL}); is it a chat server?"
            );
        }
        Ok(ws)
    }
}

/// A server URL, checked: its URI and whether it is `wss://`.
fn parse_url(url: &str) -> anyhow::Result<(Uri, bool)> {
    if url.is_empty() {
        bail!("invalid server URL: an empty one (in a list, separate URLs by one comma each)");
    }
    let uri: Uri = url.parse().map_err(|e| {
        anyhow!("invalid server URL {url:?}: {e} (expected ws://HOST:PORT or wss://HOST:PORT)")
    })?;
    let secure = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => bail!("invalid server URL {url:?}: expected ws://HOST:PORT or wss://HOST:PORT"),
    };
    if uri.host().is_none() {
        bail!("invalid server URL {url:?}: it names no host");
    }
    Ok((uri, secure))
}

/// `uri` with `hello`'s parameters added to its query (after any the user
/// gave in `--url`).
fn with_hello(uri: &Uri, hello: &Hello) -> anyhow::Result<Uri> {
    if hello.is_empty() {
        return Ok(uri.clone());
    }
    let path = uri.path();
    let path_and_query = match uri.query() {
        Some(query) if !query.is_empty() => format!("{path}?{query}&{}", hello.to_query()),
        _ => format!("{path}?{}", hello.to_query()),
    };
    let mut parts = uri.clone().into_parts();
    // The error must not echo the query: it may hold the reclaim token.
    parts.path_and_query = Some(
        PathAndQuery::try_from(path_and_query)
            .map_err(|_| anyhow!("cannot build the request URL"))?,
    );
    Uri::from_parts(parts).map_err(|_| anyhow!("cannot build the request URL"))
}

/// TLS settings trusting the system's roots plus the PEM certificates in
/// `ca`, both as CAs and as pinned server certificates.
fn tls_connector(ca: Option<&Path>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are not fatal: --ca may be all we need,
    // and a missing root shows up as a clear verification error later.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let mut pinned = Vec::new();
    if let Some(ca) = ca {
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("cannot read the CA file {}", ca.display()))?
        {
            let cert =
                cert.with_context(|| format!("bad certificate in the CA file {}", ca.display()))?;
            // A certificate that cannot be a trust anchor may still be pinned.
            let _ = roots.add(cert.clone());
            pinned.push(cert);
        }
        if pinned.is_empty() {
            bail!("the CA file {} holds no PEM certificate", ca.display());
        }
    }
    if roots.is_empty() && pinned.is_empty() {
        bail!("no trusted TLS certificates found on this system; pass --ca FILE");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = if roots.is_empty() {
        None
    } else {
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| anyhow!("cannot set up TLS certificate checks: {e}"))?,
        )
    };
    let verifier = PinnedOrWebPki {
        pinned,
        webpki,
        provider: provider.clone(),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Accepts a server certificate that is exactly one of the `--ca`
/// certificates; any other goes through normal WebPKI chain validation.
/// Either way the handshake's signatures are checked against the
/// certificate, so a peer must hold its private key.
#[derive(Debug)]
struct PinnedOrWebPki {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The user handed us this very certificate: that is the trust
        // decision, as with an SSH host key (names and dates included).
        if self
            .pinned
            .iter()
            .any(|pin| pin.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(webpki) => webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls error as a sentence (its `Display` is partly `Debug` output,
/// such as `Other(OtherError(CaUsedAsEndEntity))`).
fn explain_tls(e: &rustls::Error) -> String {
    use rustls::Error as E;
    let cert = match e {
        E::InvalidCertificate(c) => c,
        E::AlertReceived(_) => {
            return "the server refused the TLS handshake (it sent an alert)".into()
        }
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            return "the server does not speak TLS as expected (is it a wss:// server?)".into()
        }
        E::NoCertificatesPresented => return "the server presented no certificate".into(),
        _ => return "the TLS handshake failed".into(),
    };
    let why = match cert {
        CertificateError::UnknownIssuer => {
            "the server's certificate is not signed by an authority this client trusts"
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server's certificate has expired"
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet (is this machine's clock right?)"
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "the server's certificate is for another host name"
        }
        CertificateError::Revoked => "the server's certificate has been revoked",
        CertificateError::BadSignature | CertificateError::BadEncoding => {
            "the server's certificate is damaged or badly signed"
        }
        CertificateError::Other(other) if other.to_string().contains("CaUsedAsEndEntity") => {
            "the server's certificate is a CA certificate, which is refused as a server's own unless it is pinned"
        }
        _ => "the server's certificate was refused",
    };
    format!("{why} (for a self-signed server, pass its certificate with --ca FILE)")
}

/// A short human explanation of a connection error.
fn explain(e: &tokio_websockets::Error, sent_token: bool) -> String {
    use tokio_websockets::upgrade::Error as Upgrade;
    match e {
        tokio_websockets::Error::Io(io) => {
            // TLS failures arrive as I/O errors wrapping a rustls error.
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return format!("TLS failed: {}", explain_tls(tls));
            }
            match io.kind() {
                io::ErrorKind::ConnectionRefused => {
                    "connection refused (is the server running?)".into()
                }
                io::ErrorKind::ConnectionReset => "connection reset by the server".into(),
                io::ErrorKind::TimedOut => "timed out".into(),
                io::ErrorKind::UnexpectedEof => {
                    "the server closed the connection during the handshake (is it a chat server?)"
                        .into()
                }
                _ => io.to_string(),
            }
        }
        tokio_websockets::Error::CannotResolveHost => "cannot resolve the host name".into(),
        tokio_websockets::Error::Upgrade(Upgrade::DidNotSwitchProtocols(401)) if sent_token => {
            "the server refused the token (check --token or CHAT_TOKEN)".into()
        }
        tokio_websockets::Error::Upgrade(Upgrade::DidNotSwitchProtocols(401)) => {
            "the server needs a token: pass --token TOKEN or set CHAT_TOKEN".into()
        }
        tokio_websockets::Error::Upgrade(Upgrade::DidNotSwitchProtocols(status)) => format!(
            "the server answered HTTP {status} instead of opening a WebSocket (is it a chat server?)"
        ),
        tokio_websockets::Error::Upgrade(u) => format!("the WebSocket handshake failed: {u}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hello_goes_into_the_query_after_the_users_own() {
        let hello = Hello {
            nick: Some("alice".into()),
            room: Some("#rust".into()),
            reclaim: None,
        };
        let uri: Uri = "ws://127.0.0.1:2000".parse().unwrap();
        assert_eq!(
            with_hello(&uri, &hello).unwrap(),
            "ws://127.0.0.1:2000/?nick=alice&room=%23rust"
        );
        let uri: Uri = "wss://chat.example.org/ws?token=s".parse().unwrap();
        assert_eq!(
            with_hello(&uri, &hello).unwrap(),
            "wss://chat.example.org/ws?token=s&nick=alice&room=%23rust"
        );
        assert_eq!(with_hello(&uri, &Hello::default()).unwrap(), uri);
    }
}
