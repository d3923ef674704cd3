//! `client`: the terminal chat client. Arguments, then the interactive
//! client on a terminal or `client::run` on stdin and stdout in a pipe.
use std::path::PathBuf;

use chat::client::{self, terminal, Config, Secret, DEFAULT_URL};
use clap::Parser;

/// A terminal client for the WebSocket broadcast chat.
///
/// On a terminal it has a line editor (arrow keys for history, Tab to
/// complete nicknames, commands and rooms), a prompt saying where you are,
/// colours, time stamps, a bell when someone names you, and reconnects when
/// the connection drops. In a pipe it sends each input line, paced under
/// the server's rate limit, and prints each event as a plain line.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Server URL (ws:// or wss://). Several, separated by commas or by
    /// repeating --url, are tried in turn: the first at the start, the
    /// next whenever a connection fails or is lost.
    #[arg(
        long,
        env = "CHAT_URL",
        default_value = DEFAULT_URL,
        value_delimiter = ',',
        value_name = "URL[,URL...]"
    )]
    url: Vec<String>,
    /// Nickname to take on connecting (and again after reconnecting).
    #[arg(long, env = "CHAT_NICK")]
    nick: Option<String>,
    /// Room to start in (asked for when connecting; a server too old for
    /// that puts everyone in #lobby first, and the client then joins it).
    #[arg(long, env = "CHAT_ROOM", default_value = chat::protocol::DEFAULT_ROOM)]
    room: String,
    /// The server's token, if it asks for one: sent as
    /// `Authorization: Bearer TOKEN`, never printed. Prefer CHAT_TOKEN, as
    /// other users can read command lines.
    #[arg(long, env = "CHAT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Do not ring the terminal bell when a line names you.
    #[arg(long)]
    no_bell: bool,
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
    /// Extra certificates (PEM) to trust for wss://: CAs, or a self-signed
    /// server's own certificate (accepted when the server shows exactly it).
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
        // The default room needs no /join (and no "left #lobby" noise).
        room: (!args.room.eq_ignore_ascii_case(chat::protocol::DEFAULT_ROOM)).then_some(args.room),
        token: args.token.map(Secret::new),
        bell: !args.no_bell,
        reconnect: args.retry || (interactive && !args.no_reconnect),
        wait_for_server: args.retry,
        ca: args.ca,
        ..Config::for_servers(args.url)
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
