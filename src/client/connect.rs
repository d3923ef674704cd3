//! Opening one WebSocket connection to the server: the URL, TLS for
//! `wss://`, the JSON subprotocol, and errors explained in one sentence.
//!
//! Nothing here knows about chat events or terminals; [`Connector`] hands
//! back an open socket or a sentence saying why there is none.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use http::header::SEC_WEBSOCKET_PROTOCOL;
use http::{HeaderValue, Uri};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_websockets::{ClientBuilder, Limits, MaybeTlsStream, WebSocketStream};

use crate::protocol::JSON_SUBPROTOCOL;

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
}

impl Connector {
    /// Checks the URL and, for `wss://`, loads the system's trust roots and
    /// the extra CA certificates in `ca` (PEM), if given.
    pub fn new(url: &str, ca: Option<&Path>, max_incoming: usize) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().map_err(|e| {
            anyhow!("invalid server URL {url:?}: {e} (expected ws://HOST:PORT or wss://HOST:PORT)")
        })?;
        let tls = match uri.scheme_str() {
            Some("ws") => None,
            Some("wss") => Some(tokio_websockets::Connector::Rustls(tls_connector(ca)?)),
            _ => bail!("invalid server URL {url:?}: expected ws://HOST:PORT or wss://HOST:PORT"),
        };
        if uri.host().is_none() {
            bail!("invalid server URL {url:?}: it names no host");
        }
        Ok(Connector {
            url: url.to_string(),
            uri,
            tls,
            max_incoming,
        })
    }

    /// The URL as given, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a connection asking for the JSON encoding, or explains in one
    /// sentence why not.
    pub async fn connect(&self) -> anyhow::Result<Socket> {
        let url = &self.url;
        let mut builder = ClientBuilder::from_uri(self.uri.clone())
            // A hostile server must not make us allocate without bound.
            .limits(Limits::default().max_payload_len(Some(self.max_incoming)))
            .add_header(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(JSON_SUBPROTOCOL),
            )
            .map_err(|e| anyhow!("cannot build the request: {e}"))?;
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
        let (ws, response) =
            connected.map_err(|e| anyhow!("cannot connect to {url}: {}", explain(&e)))?;
        let chosen = response.headers().get(SEC_WEBSOCKET_PROTOCOL);
        if chosen.map(HeaderValue::as_bytes) != Some(JSON_SUBPROTOCOL.as_bytes()) {
            bail!(
                "the server at {url} does not speak this client's protocol ({JSON_SUBPROTOCOL}); is it a chat server?"
            );
        }
        Ok(ws)
    }
}

/// TLS settings trusting the system's roots plus the PEM certificates in
/// `ca` (for a server with a self-signed certificate).
fn tls_connector(ca: Option<&Path>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are not fatal: --ca may be all we need,
    // and a missing root shows up as a clear verification error later.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = ca {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("cannot read the CA file {}", ca.display()))?
        {
            let cert =
                cert.with_context(|| format!("bad certificate in the CA file {}", ca.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("unusable certificate in {}", ca.display()))?;
            added += 1;
        }
        if added == 0 {
            bail!("the CA file {} holds no PEM certificate", ca.display());
        }
    }
    if roots.is_empty() {
        bail!("no trusted TLS certificates found on this system; pass --ca FILE");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A short human explanation of a connection error.
fn explain(e: &tokio_websockets::Error) -> String {
    use tokio_websockets::upgrade::Error as Upgrade;
    match e {
        tokio_websockets::Error::Io(io) => {
            // TLS failures arrive as I/O errors wrapping a rustls error.
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return format!("TLS failed: {tls} (for a self-signed server, pass --ca FILE)");
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
        tokio_websockets::Error::Upgrade(Upgrade::DidNotSwitchProtocols(status)) => format!(
            "the server answered HTTP {status} instead of opening a WebSocket (is it a chat server?)"
        ),
        tokio_websockets::Error::Upgrade(u) => format!("the WebSocket handshake failed: {u}"),
        other => other.to_string(),
    }
}
