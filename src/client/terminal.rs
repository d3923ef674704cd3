//! The interactive front end: a line editor (rustyline) on the terminal,
//! with incoming lines printed above the prompt by its external printer, so
//! that what the user is typing is never overwritten.
//!
//! rustyline blocks a thread while it reads, so it gets its own thread and
//! hands finished lines to the engine over a channel. Printing goes through
//! a second thread too: the external printer may block until the editor
//! has redrawn, and the engine must not stall on that.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread;

use anyhow::Context as _;
use rustyline::error::ReadlineError;
use rustyline::{Config as EditorConfig, DefaultEditor, ExternalPrinter as _};

use super::render::{self, Level};
use super::state::Incoming;
use super::{drive, Config, Screen};

/// What the editor shows before the line being typed.
const PROMPT: &str = "> ";
/// Lines of input history kept for the arrow keys.
const INPUT_HISTORY: usize = 1000;

/// Whether both ends are a terminal, so the interactive client fits.
pub fn is_interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// Whether to colour: only on a terminal, and never with `NO_COLOR` set
/// (see no-color.org: any non-empty value).
pub fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Lines shown above the prompt.
struct Term {
    print: std_mpsc::Sender<String>,
    color: bool,
    json: bool,
}

impl Term {
    fn put(&self, line: String) -> std::io::Result<()> {
        self.print
            .send(line + "\n")
            .map_err(|_| std::io::Error::other("the terminal printer stopped"))
    }

    fn styled(&self, line: &render::Line) -> String {
        if self.color {
            line.ansi()
        } else {
            line.plain()
        }
    }
}

impl Screen for Term {
    async fn event(&mut self, incoming: &Incoming, me: Option<SocketAddr>) -> std::io::Result<()> {
        let line = if self.json {
            render::json_event(&incoming.raw)
        } else {
            self.styled(&render::rich_event(&incoming.event, me))
        };
        self.put(line)
    }

    async fn unknown(&mut self, raw: &str) -> std::io::Result<()> {
        let line = self.styled(&render::rich_notice(
            Level::Info,
            &format!("unrecognised event: {raw}"),
        ));
        self.put(line)
    }

    async fn notice(&mut self, level: Level, text: &str) -> std::io::Result<()> {
        let line = self.styled(&render::rich_notice(level, text));
        self.put(line)
    }
}

/// Runs the client interactively on this process's terminal. Ends like
/// [`super::run`]; the terminal is put back as it was in every case.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    // rustyline restores the terminal when a read ends, but a read that is
    // still going when the connection ends (it is blocked in its thread)
    // would leave raw mode on; so remember the settings and put them back.
    let saved = nix::sys::termios::tcgetattr(std::io::stdin()).ok();
    let editor_config = EditorConfig::builder()
        .max_history_size(INPUT_HISTORY)
        .context("cannot set up the line editor")?
        .auto_add_history(true)
        // Bracketed paste would be left on if we exit in the middle of a read.
        .bracketed_paste(false)
        .build();
    let mut editor =
        DefaultEditor::with_config(editor_config).context("cannot set up the line editor")?;
    let mut printer = editor
        .create_external_printer()
        .context("cannot set up the terminal printer")?;

    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let reading = Arc::new(AtomicBool::new(true));
    let still_reading = reading.clone();
    thread::spawn(move || {
        loop {
            // A fixed prompt: rustyline cannot change it during a read, and
            // one showing the room would be stale right after a /join.
            match editor.readline(PROMPT) {
                Ok(line) => {
                    if line_tx.send(line).is_err() {
                        break;
                    }
                }
                // Ctrl+C and Ctrl+D both mean "leave": dropping the sender
                // ends the input, and the engine closes cleanly.
                Err(ReadlineError::Interrupted | ReadlineError::Eof) => break,
                Err(_) => break,
            }
        }
        still_reading.store(false, Ordering::SeqCst);
    });

    let (print_tx, print_rx) = std_mpsc::channel::<String>();
    let printing = thread::spawn(move || {
        for line in print_rx {
            if printer.print(line).is_err() {
                break;
            }
        }
    });

    let mut screen = Term {
        print: print_tx,
        color: use_color(),
        json: config.json,
    };
    let result = drive(config, &mut lines, &mut screen).await;
    drop(screen);
    // Everything queued is on the screen before we return.
    let _ = printing.join();
    if reading.load(Ordering::SeqCst) {
        if let Some(saved) = saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                &saved,
            );
        }
        // Leave the half-typed prompt line behind us.
        println!();
    }
    result
}
