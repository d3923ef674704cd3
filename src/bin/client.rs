//! `client`: the terminal chat client. Arguments, then the interactive
//! client on a terminal or `client::run` on stdin and stdout in a pipe.
use std::path::PathBuf;

use chat::client::{self, terminal, Config, DEFAULT_URL};
use clap::Parser;

/// A terminal client for the WebSocket broadcast chat.
///
/// On a terminal it has a line editor (arrow keys for history), colours,
/// time stamps, and reconnects when the connection drops. In a pipe it
/// sends each input line and prints each event as a plain line.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Server URL (ws:// or wss://).
    #[arg(long, env = "CHAT_URL", default_value = DEFAULT_URL)]
    url: String,
    /// Nickname to take on connecting (and again after reconnecting).
    #[arg(long, env = "CHAT_NICK")]
    nick: Option<String>,
    /// Room to join on connecting.
    #[arg(long, env = "CHAT_ROOM")]
    room: Option<String>,
    /// Print events as the server's JSON objects, one per line.
    #[arg(long)]
    json: bool,
    /// Wait for the server if it is not there yet, and reconnect when the
    /// connection drops, also in a pipe.
    #[arg(long)]
    retry: bool,
    /// Do not reconnect when the connection drops (the default in a pipe).
    #[arg(long, conflicts_with = "retry")]
    no_reconnect: bool,
    /// Extra CA certificates (PEM) to trust for wss://, such as a
    /// self-signed server's certificate.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let interactive = terminal::is_interactive();
    let config = Config {
        json: args.json,
        nick: args.nick,
        room: args.room,
        reconnect: args.retry || (interactive && !args.no_reconnect),
        wait_for_server: args.retry,
        ca: args.ca,
        ..Config::new(args.url)
    };
    let result = if interactive {
        terminal::run(&config).await
    } else {
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        client::run(&config, stdin, tokio::io::stdout()).await
    };
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    // Exit right away: tokio's stdin reader may still be blocked in a read
    // of the terminal, and the runtime would wait for it.
    std::process::exit(code);
}
