//! The terminal client: connects to a server, sends each input line as a
//! text frame, and prints each incoming frame as one output line.
//!
//! Input and output are passed in, so tests drive the same code the binary
//! runs. Chat goes to `output`; anything that ends the session is returned as
//! an error whose text is a sentence for people.

use std::io;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use http::header::SEC_WEBSOCKET_PROTOCOL;
use http::{HeaderValue, Uri};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_websockets::{
    ClientBuilder, CloseCode, Limits, MaybeTlsStream, Message, WebSocketStream,
};

use crate::protocol::JSON_SUBPROTOCOL;

/// The server address used when none is given.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:2000";
/// How long connecting (TCP and handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the server's answer to our Close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message accepted from the server, so that a hostile server
/// cannot make the client allocate without bound.
pub const MAX_INCOMING_BYTES: usize = 64 * 1024;

/// Settings of the client.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server's URL, `ws://HOST:PORT`.
    pub url: String,
    /// Ask for the JSON encoding and print events as JSON lines.
    pub json: bool,
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects, then relays lines until the input ends (a clean end: `Ok`) or
/// the connection does (an error describing why).
pub async fn run<R, W>(config: &Config, input: R, mut output: W) -> anyhow::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut ws = connect(config).await?;
    let mut lines = input.lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if line.trim().is_empty() {
                        continue;
                    }
                    ws.send(Message::text(line)).await.with_context(|| {
                        format!("lost the connection to {} while sending", config.url)
                    })?;
                }
                Ok(None) => return close(config, ws, &mut output).await,
                Err(e) => bail!("cannot read input: {e}"),
            },
            frame = ws.next() => {
                if let Some(end) = print_frame(config, frame, &mut output).await? {
                    return end;
                }
            }
        }
    }
}

/// Prints one incoming frame. Returns `Some(result)` when the frame ends
/// the session.
async fn print_frame<W: AsyncWrite + Unpin>(
    config: &Config,
    frame: Option<Result<Message, tokio_websockets::Error>>,
    output: &mut W,
) -> anyhow::Result<Option<anyhow::Result<()>>> {
    let msg = match frame {
        None => {
            return Ok(Some(Err(anyhow!(
                "the connection to {} was lost (the server went away)",
                config.url
            ))))
        }
        Some(Err(e)) => {
            return Ok(Some(Err(anyhow!(
                "the connection to {} failed: {e}",
                config.url
            ))))
        }
        Some(Ok(msg)) => msg,
    };
    if let Some(text) = msg.as_text() {
        output.write_all(text.as_bytes()).await?;
        output.write_all(b"\n").await?;
        output.flush().await?;
    } else if let Some((code, reason)) = msg.as_close() {
        return Ok(Some(closed_by_server(config, Some((code, reason)))));
    } else if msg.is_close() {
        return Ok(Some(closed_by_server(config, None)));
    }
    Ok(None)
}

/// The outcome of a Close frame the server sent first.
fn closed_by_server(config: &Config, close: Option<(CloseCode, &str)>) -> anyhow::Result<()> {
    match close {
        // 1000 is the server's answer to /quit: the user asked to leave.
        Some((code, _)) if code == CloseCode::NORMAL_CLOSURE => Ok(()),
        Some((code, reason)) if code == CloseCode::GOING_AWAY => Err(anyhow!(
            "the server at {} went away: {} (close code {})",
            config.url,
            if reason.is_empty() {
                "going away"
            } else {
                reason
            },
            u16::from(code)
        )),
        Some((code, reason)) => Err(anyhow!(
            "the server at {} closed the connection: {} (close code {})",
            config.url,
            if reason.is_empty() {
                "no reason given"
            } else {
                reason
            },
            u16::from(code)
        )),
        None => Err(anyhow!(
            "the server at {} closed the connection",
            config.url
        )),
    }
}

/// Our input ended: say goodbye with a Close frame, print whatever the
/// server still sends until it answers, and end cleanly.
async fn close<W: AsyncWrite + Unpin>(
    config: &Config,
    mut ws: Socket,
    output: &mut W,
) -> anyhow::Result<()> {
    ws.send(Message::close(Some(CloseCode::NORMAL_CLOSURE), ""))
        .await
        .with_context(|| format!("lost the connection to {} while closing", config.url))?;
    let drain = async {
        // Ends when the answering Close has arrived (or the stream ended).
        while let Some(Ok(msg)) = ws.next().await {
            if let Some(text) = msg.as_text() {
                output.write_all(text.as_bytes()).await?;
                output.write_all(b"\n").await?;
            }
        }
        output.flush().await?;
        anyhow::Ok(())
    };
    // A server that never answers our Close does not keep us hanging.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
    Ok(())
}

/// Opens the WebSocket connection, or explains in one sentence why not.
async fn connect(config: &Config) -> anyhow::Result<Socket> {
    let url = &config.url;
    let uri: Uri = url
        .parse()
        .map_err(|e| anyhow!("invalid server URL {url:?}: {e} (expected ws://HOST:PORT)"))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => {
            bail!("cannot connect to {url}: wss:// (TLS) is not supported yet; use ws://")
        }
        _ => bail!("invalid server URL {url:?}: expected ws://HOST:PORT"),
    }
    let mut builder = ClientBuilder::from_uri(uri)
        .limits(Limits::default().max_payload_len(Some(MAX_INCOMING_BYTES)));
    if config.json {
        builder = builder
            .add_header(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(JSON_SUBPROTOCOL),
            )
            .map_err(|e| anyhow!("cannot build the request: {e}"))?;
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
    if config.json {
        let chosen = response.headers().get(SEC_WEBSOCKET_PROTOCOL);
        if chosen.map(HeaderValue::as_bytes) != Some(JSON_SUBPROTOCOL.as_bytes()) {
            bail!("the server at {url} does not offer the JSON encoding ({JSON_SUBPROTOCOL})");
        }
    }
    Ok(ws)
}

/// A short human explanation of a connection error.
fn explain(e: &tokio_websockets::Error) -> String {
    use tokio_websockets::upgrade::Error as Upgrade;
    match e {
        tokio_websockets::Error::Io(io) => match io.kind() {
            io::ErrorKind::ConnectionRefused => "connection refused (is the server running?)".into(),
            io::ErrorKind::ConnectionReset => "connection reset by the server".into(),
            io::ErrorKind::TimedOut => "timed out".into(),
            io::ErrorKind::UnexpectedEof => {
                "the server closed the connection during the handshake (is it a chat server?)"
                    .into()
            }
            _ => io.to_string(),
        },
        tokio_websockets::Error::CannotResolveHost => "cannot resolve the host name".into(),
        tokio_websockets::Error::Upgrade(Upgrade::DidNotSwitchProtocols(status)) => format!(
            "the server answered HTTP {status} instead of opening a WebSocket (is it a chat server?)"
        ),
        tokio_websockets::Error::Upgrade(u) => format!("the WebSocket handshake failed: {u}"),
        other => other.to_string(),
    }
}
