//! TLS for `wss://`: loading the certificate and key, and the server side
//! of the TLS handshake, which runs in the connection's task before the HTTP
//! upgrade (the upgrade and the session then run over the TLS stream, as
//! they would over TCP).
//!
//! rustls with the `ring` provider: pure Rust plus a little C and assembly,
//! no cmake or Go toolchain, so the build stays lean.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use http::StatusCode;
use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::policy::Rejection;

/// How long a client has to complete the TLS handshake (the HTTP upgrade
/// that follows has its own timeout).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of every TLS connection: a record of type "handshake".
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Reads a PEM certificate chain and private key into a server
/// configuration. Errors name the file at fault and say what is wrong with
/// it, in one line.
pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            anyhow!(
                "cannot read the TLS certificate file {}: {}",
                cert.display(),
                describe(e, "certificate")
            )
        })?;
    if certs.is_empty() {
        return Err(anyhow!(
            "the TLS certificate file {} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            cert.display()
        ));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow!(
            "cannot read the TLS key file {}: {}",
            key.display(),
            describe(e, "private key")
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("cannot set up TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| {
            anyhow!(
                "cannot use the TLS certificate {} with the key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// A PEM error as a person would put it.
fn describe(error: pem::Error, what: &str) -> String {
    match error {
        pem::Error::Io(e) => e.to_string(),
        pem::Error::NoItemsFound => format!("no PEM {what} in it"),
        other => format!("not valid PEM: {other}"),
    }
}

/// Why a TLS handshake failed.
#[derive(Debug)]
pub enum TlsError {
    /// The client spoke plain HTTP (`ws://` or `http://`) to the TLS port;
    /// it was told so in a plain-text 400.
    PlainHttp,
    /// The peer closed the connection before the handshake began.
    Closed,
    /// The handshake failed (a bad or foreign ClientHello, an alert, I/O).
    Handshake(std::io::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::PlainHttp => {
                f.write_str("client spoke plain HTTP to the TLS port (told to use wss://)")
            }
            TlsError::Closed => f.write_str("connection closed before the TLS handshake"),
            TlsError::Handshake(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Runs the server side of the TLS handshake. A client that starts with
/// plain text instead (a `ws://` URL pointed at this port) gets a plain
/// `400` that says so, instead of TLS alert bytes it cannot read.
///
/// Not bounded in time by itself: the caller wraps it in a timeout.
pub async fn accept(
    mut stream: TcpStream,
    config: Arc<ServerConfig>,
) -> Result<TlsStream<TcpStream>, TlsError> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) => return Err(TlsError::Closed),
        Ok(_) => {}
        Err(e) => return Err(TlsError::Handshake(e)),
    }
    if first[0] != TLS_HANDSHAKE_RECORD && first[0].is_ascii_alphabetic() {
        let answer = Rejection::new(
            StatusCode::BAD_REQUEST,
            "this port speaks TLS: use wss:// (or https://)",
        );
        // Best effort: the answer is a courtesy.
        let _ = stream.write_all(&answer.to_bytes()).await;
        let _ = stream.shutdown().await;
        return Err(TlsError::PlainHttp);
    }
    TlsAcceptor::from(config)
        .accept(stream)
        .await
        .map_err(TlsError::Handshake)
}
