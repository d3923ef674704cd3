//! The interactive front end: the terminal in raw mode (crossterm), our
//! own line editor ([`super::editor`]) on its last row, and incoming lines
//! printed above it, so that what the user is typing is never overwritten.
//!
//! Everything runs in the engine's task: keys are read from crossterm's
//! async event stream (the engine's line [`Source`]) and lines are printed
//! by the [`Screen`]; both share one [`Ui`], which is only borrowed between
//! awaits. Nothing reads ahead and throws input away: a paste arrives as
//! one event (bracketed paste), and each of its lines is queued to be sent.
//!
//! Raw mode turns Ctrl+Z into a key, so suspending is ours to do: give the
//! terminal back, stop with `SIGTSTP`, and on `fg` take raw mode again and
//! redraw. `SIGCONT` is watched too, for a stop that came from elsewhere
//! (`kill -STOP`), after which the shell may have reset the terminal.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::rc::Rc;

use anyhow::Context as _;
use crossterm::event::{DisableBracketedPaste, EnableBracketedPaste, Event, EventStream};
use crossterm::terminal::{self, Clear, ClearType};
use crossterm::{cursor, queue, style::Print};
use futures_util::StreamExt as _;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::complete::{complete, Completion, Known};
use super::editor::{Action, Editor};
use super::render::{self, Level};
use super::sanitize::sanitize;
use super::state::Incoming;
use super::{drive, Config, Screen, Source, Status};

/// The prompt before the first welcome.
const FIRST_PROMPT: &str = "[connecting] > ";

/// Whether both ends are a terminal, so the interactive client fits.
pub fn is_interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// Whether to colour: only on a terminal, and never with `NO_COLOR` set
/// (see no-color.org: any non-empty value).
pub fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The prompt for where we are: `[#rust alice] > `, with a marker while
/// the connection is down.
pub(crate) fn prompt(status: &Status<'_>) -> String {
    let mut where_ = sanitize(status.room).into_owned();
    if let Some(nick) = status.nick {
        where_.push(' ');
        where_.push_str(&sanitize(nick));
    }
    if !status.connected {
        where_.push_str(" (reconnecting)");
    }
    format!("[{where_}] > ")
}

/// The terminal's state shared by the key reader and the printer.
/// Lines PageUp asks for at a time.
const SCROLLBACK_PAGE: usize = 50;

struct Ui {
    editor: Editor,
    /// Names for Tab completion.
    known: Known,
    prompt: String,
    width: u16,
    color: bool,
    json: bool,
    /// Our confirmed nickname, to spot lines that name us.
    nick: Option<String>,
    /// Ring the terminal bell on a mention (off with `--no-bell`).
    bell: bool,
    days: render::Days,
}

impl Ui {
    /// Draws the prompt row again: prompt, the visible part of the line,
    /// the cursor in its place.
    fn draw(&self) -> io::Result<()> {
        let mut out = io::stdout().lock();
        let view = self.editor.view(&self.prompt, self.width);
        queue!(
            out,
            Print('\r'),
            Clear(ClearType::CurrentLine),
            Print(view.text),
            cursor::MoveToColumn(view.cursor)
        )?;
        out.flush()
    }

    /// Prints `line` above the prompt row, then draws the prompt again.
    fn above(&self, line: &str) -> io::Result<()> {
        {
            let mut out = io::stdout().lock();
            // Raw mode: a line feed does not return the carriage.
            let line = line.replace('\n', "\r\n");
            queue!(
                out,
                Print('\r'),
                Clear(ClearType::CurrentLine),
                Print(line),
                Print("\r\n")
            )?;
        }
        self.draw()
    }

    /// Empties the prompt row, so leaving (or an error printed after us)
    /// leaves no stray prompt behind.
    fn clear_row(&self) -> io::Result<()> {
        let mut out = io::stdout().lock();
        queue!(out, Print('\r'), Clear(ClearType::CurrentLine))?;
        out.flush()
    }

    fn styled(&self, line: &render::Line) -> String {
        if self.color {
            line.ansi()
        } else {
            line.plain()
        }
    }

    /// Ctrl+Z: hand the terminal back as it was and stop; carries on here
    /// after `fg`.
    fn suspend(&mut self) -> io::Result<()> {
        self.clear_row()?;
        leave_raw_mode();
        // Not caught by us (only SIGCONT is), so this stops the process the
        // way Ctrl+Z does in cooked mode. In a process group without job
        // control the kernel ignores it, and we simply carry on.
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGTSTP);
        self.resume()
    }

    /// After a stop: the shell may have put the terminal in its own mode,
    /// so raw mode is set again (not just assumed), then the row redrawn.
    fn resume(&mut self) -> io::Result<()> {
        // crossterm skips enabling when it thinks raw mode is still on.
        let _ = terminal::disable_raw_mode();
        enter_raw_mode()?;
        if let Ok((width, _)) = terminal::size() {
            self.width = width;
        }
        self.draw()
    }
}

fn enter_raw_mode() -> io::Result<()> {
    terminal::enable_raw_mode()?;
    let mut out = io::stdout();
    queue!(out, EnableBracketedPaste)?;
    out.flush()
}

fn leave_raw_mode() {
    let mut out = io::stdout();
    let _ = queue!(out, DisableBracketedPaste);
    let _ = out.flush();
    let _ = terminal::disable_raw_mode();
}

/// Raw mode for as long as it lives: dropped on every way out (errors and
/// panics included), it gives the terminal back as it was.
struct RawMode;

impl RawMode {
    fn enter() -> anyhow::Result<Self> {
        enter_raw_mode().context("cannot set up the terminal (raw mode)")?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        leave_raw_mode();
    }
}

/// Lines as the user finishes them: the engine's [`Source`].
struct Keys {
    events: EventStream,
    resumed: Signal,
    ui: Rc<RefCell<Ui>>,
    /// Finished lines not yet handed to the engine (a paste brings several
    /// at once). Kept here, not in a future, so a cancelled read loses none.
    ready: VecDeque<String>,
    /// Ctrl+C or Ctrl+D: no more lines.
    done: bool,
    /// It was Ctrl+C: lines still waiting to be sent are dropped.
    broke_off: bool,
}

impl Keys {
    fn handle(&mut self, event: Event) -> io::Result<()> {
        let mut ui = self.ui.borrow_mut();
        match event {
            Event::Key(key) => match ui.editor.key(key) {
                Action::Nothing => {}
                Action::Complete => match complete(&ui.editor.before_cursor(), &ui.known) {
                    Completion::None => {}
                    Completion::Replace(text) => {
                        ui.editor.replace_before_cursor(&text);
                        ui.draw()?;
                    }
                    Completion::Choices(choices) => {
                        let line =
                            ui.styled(&render::rich_notice(Level::Info, &choices.join("  ")));
                        ui.above(&line)?;
                    }
                },
                Action::Redraw => ui.draw()?,
                Action::Submit(line) => {
                    self.ready.push_back(line);
                    ui.draw()?;
                }
                Action::Quit { broke_off } => {
                    self.done = true;
                    self.broke_off = broke_off;
                    // Lines finished but not yet handed over go too.
                    if broke_off {
                        self.ready.clear();
                    }
                }
                Action::Suspend => ui.suspend()?,
                // The page before the oldest line shown, asked for as the
                // user could type it; it comes dimmed, under a header.
                Action::Scrollback => match ui.known.oldest() {
                    Some(seq) if seq > 1 => {
                        self.ready
                            .push_back(format!("/history {SCROLLBACK_PAGE} before {seq}"));
                    }
                    _ => {
                        let line = ui.styled(&render::rich_notice(
                            Level::Info,
                            "nothing earlier to show in this room",
                        ));
                        ui.above(&line)?;
                    }
                },
                Action::Clear => {
                    let mut out = io::stdout();
                    queue!(out, Clear(ClearType::All), cursor::MoveTo(0, 0))?;
                    ui.draw()?;
                }
            },
            Event::Paste(text) => {
                let lines = ui.editor.paste(&text);
                self.ready.extend(lines);
                ui.draw()?;
            }
            Event::Resize(width, _) => {
                ui.width = width;
                ui.draw()?;
            }
            _ => {}
        }
        Ok(())
    }
}

impl Source for Keys {
    fn broke_off(&self) -> bool {
        self.broke_off
    }

    async fn next_line(&mut self) -> io::Result<Option<String>> {
        // Bounded by the user: each turn handles one event.
        loop {
            if let Some(line) = self.ready.pop_front() {
                return Ok(Some(line));
            }
            if self.done {
                return Ok(None);
            }
            tokio::select! {
                event = self.events.next() => match event {
                    Some(event) => self.handle(event?)?,
                    // The terminal is gone: as good as Ctrl+D.
                    None => self.done = true,
                },
                _ = self.resumed.recv() => self.ui.borrow_mut().resume()?,
            }
        }
    }
}

/// Lines shown above the prompt.
struct Term {
    ui: Rc<RefCell<Ui>>,
}

impl Screen for Term {
    async fn event(&mut self, incoming: &Incoming, me: Option<SocketAddr>) -> io::Result<()> {
        let mut ui = self.ui.borrow_mut();
        let event = &incoming.event;
        ui.known.see(event);
        if ui.json {
            return ui.above(&render::json_event(&incoming.raw));
        }
        if let Some(date) = ui.days.before(event) {
            let date = ui.styled(&date);
            ui.above(&date)?;
        }
        let nick = ui.nick.as_deref();
        let line = ui.styled(&render::rich_event(event, me, nick));
        // Replayed history is not news: highlighted, but silent.
        let ring = ui.bell && !render::is_history(event) && render::mentions_me(event, me, nick);
        ui.above(&line)?;
        if ring {
            let mut out = io::stdout();
            out.write_all(b"\x07")?;
            out.flush()?;
        }
        Ok(())
    }

    async fn unknown(&mut self, raw: &str) -> io::Result<()> {
        let ui = self.ui.borrow();
        let line = ui.styled(&render::rich_notice(
            Level::Info,
            &format!("unrecognised event: {raw}"),
        ));
        ui.above(&line)
    }

    async fn notice(&mut self, level: Level, text: &str) -> io::Result<()> {
        let mut ui = self.ui.borrow_mut();
        if let Some(date) = ui.days.now() {
            let date = ui.styled(&date);
            ui.above(&date)?;
        }
        let line = ui.styled(&render::rich_notice(level, text));
        ui.above(&line)
    }

    fn status(&mut self, status: &Status<'_>) -> io::Result<()> {
        let mut ui = self.ui.borrow_mut();
        ui.known.place(status.room, status.nick);
        ui.nick = status.nick.map(str::to_string);
        let prompt = prompt(status);
        if prompt != ui.prompt {
            ui.prompt = prompt;
            ui.draw()?;
        }
        Ok(())
    }
}

/// Runs the client interactively on this process's terminal. Ends like
/// [`super::run`]; the terminal is put back as it was in every case.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let resumed = signal(SignalKind::from_raw(libc::SIGCONT))
        .context("cannot watch for SIGCONT (resuming after Ctrl+Z)")?;
    let raw = RawMode::enter()?;
    let width = terminal::size().map_or(80, |(w, _)| w);
    let ui = Rc::new(RefCell::new(Ui {
        editor: Editor::new(),
        known: Known::new(),
        prompt: FIRST_PROMPT.to_string(),
        width,
        color: use_color(),
        json: config.json,
        nick: None,
        bell: config.bell,
        days: render::Days::new(),
    }));
    ui.borrow().draw().context("cannot write to the terminal")?;
    let mut keys = Keys {
        events: EventStream::new(),
        resumed,
        ui: ui.clone(),
        ready: VecDeque::new(),
        done: false,
        broke_off: false,
    };
    let mut screen = Term { ui: ui.clone() };
    let result = drive(config, &mut keys, &mut screen).await;
    let _ = ui.borrow().clear_row();
    drop(raw);
    // Refusals were shown where they happened; the user saw them.
    result.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_says_where_we_are() {
        let mut status = Status {
            room: "#rust",
            nick: Some("alice"),
            connected: true,
        };
        assert_eq!(prompt(&status), "[#rust alice] > ");
        status.connected = false;
        assert_eq!(prompt(&status), "[#rust alice (reconnecting)] > ");
        status.nick = Some("x\u{1b}[2J");
        assert_eq!(prompt(&status), "[#rust x^[[2J (reconnecting)] > ");
    }
}
