//! `client`: the terminal chat client. Arguments, then `client::run` on
//! stdin and stdout.
use chat::client::{self, Config, DEFAULT_URL};
use clap::Parser;

/// A terminal client for the WebSocket broadcast chat.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Server URL.
    #[arg(long, env = "CHAT_URL", default_value = DEFAULT_URL)]
    url: String,
    /// Ask the server for JSON events (subprotocol chat.v1.json) and print
    /// them as they come, one JSON object per line.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let config = Config {
        url: args.url,
        json: args.json,
    };
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let code = match client::run(&config, stdin, tokio::io::stdout()).await {
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
