//! `server`: the chat server. Arguments, logging, bind, then `server::run`.
use std::io::IsTerminal as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use chat::hub::{
    HubConfig, DEFAULT_CHANNEL_CAPACITY, DEFAULT_HISTORY_DEPTH, DEFAULT_MAX_ROOMS,
    DEFAULT_PRESENCE_LIMIT,
};
use chat::server::{self, Config};
use clap::builder::TypedValueParser as _;
use clap::Parser;
use tokio::net::TcpListener;
use tracing::info;

/// A WebSocket broadcast chat server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CHAT_ADDR", default_value = "127.0.0.1:2000")]
    addr: SocketAddr,
    /// Server name shown in the welcome line.
    #[arg(long, env = "CHAT_NAME", default_value = "chat")]
    name: String,
    /// How many messages a room buffers for a slow receiver before it
    /// starts skipping messages for that receiver.
    #[arg(long, default_value_t = DEFAULT_CHANNEL_CAPACITY as u32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    channel_capacity: u32,
    /// Lines of history each room keeps for /history, for newcomers and for
    /// clients catching up after a reconnect (0 disables history).
    #[arg(long, env = "CHAT_HISTORY", default_value_t = DEFAULT_HISTORY_DEPTH)]
    history: usize,
    /// Most rooms that may exist at once.
    #[arg(long, default_value_t = DEFAULT_MAX_ROOMS, value_parser = clap::value_parser!(u64).range(1..).map(|v| v as usize))]
    max_rooms: usize,
    /// Rooms with more members than this do not announce joins and leaves
    /// (0: always announce).
    #[arg(long, default_value_t = DEFAULT_PRESENCE_LIMIT)]
    presence_limit: usize,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    if let Err(e) = serve(args).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    info!("listening on {}", listener.local_addr()?);
    let config = Config {
        hub: HubConfig {
            name: args.name,
            channel_capacity: args.channel_capacity as usize,
            history_depth: args.history,
            max_rooms: args.max_rooms,
            presence_limit: args.presence_limit,
        },
        ..Config::default()
    };
    server::run(listener, config, shutdown_signal()).await
}

/// Completes on Ctrl+C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("received Ctrl+C"),
        () = term => info!("received SIGTERM"),
    }
}
