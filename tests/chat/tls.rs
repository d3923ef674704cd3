//! `wss://`: a CA and a server certificate made at test time, a real TLS
//! client trusting only that CA, and what happens to clients that get TLS
//! wrong.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat::server::Config;
use futures_util::SinkExt as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

use crate::support::{next_text, upgrade_on, TestServer, WAIT};

/// PEM files of a throwaway CA and a server certificate for localhost and
/// 127.0.0.1, in a directory of their own.
struct Pki {
    dir: PathBuf,
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("chat-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "chat test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        // A key that belongs to no certificate here.
        std::fs::write(
            dir.join("other-key.pem"),
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        Pki {
            dir,
            ca_der: ca.der().clone(),
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A TLS connector that trusts this CA alone.
    fn connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_tls(pki: &Pki, config: Config) -> TestServer {
    let tls = chat::http::tls::load(&pki.cert(), &pki.key()).expect("test certificate should load");
    TestServer::start_with(Config {
        tls: Some(tls),
        ..config
    })
    .await
}

/// A `wss://` client, welcome consumed.
async fn wss(pki: &Pki, server: &TestServer) -> WebSocketStream<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio::time::timeout(
        WAIT,
        pki.connector()
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("TLS handshake timed out")
    .expect("TLS handshake failed");
    let builder = ClientBuilder::new()
        .uri(&format!("wss://localhost:{}", server.addr.port()))
        .unwrap();
    upgrade_on(builder, tls).await
}

#[tokio::test]
async fn wss_works_and_plain_clients_are_told_to_use_it() {
    let pki = Pki::new("roundtrip");
    let server = start_tls(&pki, Config::default()).await;
    let mut a = wss(&pki, &server).await;
    let mut b = wss(&pki, &server).await;
    a.send(Message::text("over TLS")).await.unwrap();
    assert!(next_text(&mut b).await.ends_with(": over TLS"));
    assert!(next_text(&mut a).await.ends_with(": over TLS"));

    // A ws:// client fails, without hanging.
    let plain = tokio::time::timeout(
        WAIT,
        ClientBuilder::new().uri(&server.url()).unwrap().connect(),
    )
    .await
    .expect("a ws:// client to the TLS port hung");
    assert!(plain.is_err(), "a ws:// client got in over plain TCP");
    // What it was told, in plain text.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut answer))
        .await
        .expect("the server kept a plain connection open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("use wss://"), "{answer}");
    // Garbage that is neither TLS nor HTTP is dropped.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(&[0x00; 64]).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut answer))
        .await
        .expect("the server kept a garbage connection open");

    // The server keeps serving TLS clients.
    let mut c = wss(&pki, &server).await;
    c.send(Message::text("still here")).await.unwrap();
    assert!(next_text(&mut a).await.ends_with(": still here"));
    drop((a, b, c));
    server.shutdown().await;
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_dropped_after_its_timeout() {
    let pki = Pki::new("timeout");
    let server = start_tls(
        &pki,
        Config {
            tls_handshake_timeout: Duration::from_millis(300),
            ..Config::default()
        },
    )
    .await;
    // One sends nothing, one the first byte of a ClientHello.
    for start in [&[][..], &[0x16][..]] {
        let mut raw = TcpStream::connect(server.addr).await.unwrap();
        raw.write_all(start).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, raw.read(&mut buf))
            .await
            .expect("the server kept a stalled TLS handshake open")
            .unwrap_or(0);
        assert_eq!(n, 0, "expected the connection to be closed");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250), "closed early: {took:?}");
    }
    wss(&pki, &server).await;
    server.shutdown().await;
}

fn load_error(cert: &Path, key: &Path) -> String {
    format!(
        "{:#}",
        chat::http::tls::load(cert, key).expect_err("should not load")
    )
}

#[test]
fn bad_certificate_and_key_files_are_named_in_the_error() {
    let pki = Pki::new("bad-files");
    std::fs::write(pki.path("garbage.pem"), "not a certificate\n").unwrap();
    let missing = pki.path("missing.pem");

    let e = load_error(&missing, &pki.key());
    assert!(
        e.contains("certificate file") && e.contains("missing.pem"),
        "{e}"
    );
    let e = load_error(&pki.path("garbage.pem"), &pki.key());
    assert!(
        e.contains("garbage.pem") && e.contains("no certificate"),
        "{e}"
    );
    let e = load_error(&pki.cert(), &missing);
    assert!(e.contains("key file") && e.contains("missing.pem"), "{e}");
    let e = load_error(&pki.cert(), &pki.path("garbage.pem"));
    assert!(e.contains("key file") && e.contains("garbage.pem"), "{e}");
    // A key that does not belong to the certificate.
    let e = load_error(&pki.cert(), &pki.path("other-key.pem"));
    assert!(e.contains("other-key.pem") && e.contains("cert.pem"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}

#[tokio::test]
async fn the_server_binary_exits_1_on_a_bad_certificate() {
    let pki = Pki::new("binary");
    let missing = pki.path("missing.pem");
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_server"))
            .arg("--addr")
            .arg("127.0.0.1:0")
            .arg("--tls-cert")
            .arg(&missing)
            .arg("--tls-key")
            .arg(pki.key())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the server did not exit")
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr,
        format!(
            "error: cannot read the TLS certificate file {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
}
