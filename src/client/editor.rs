//! The line being typed: its text, the cursor, the input history, and what
//! each key does to them. Pure state: no terminal, no I/O, so every key is
//! tested without one; [`super::terminal`] feeds it crossterm's key events
//! and draws what [`Editor::view`] says.
//!
//! A paste is taken whole ([`Editor::paste`]): every line break in it
//! finishes a line, so pasting three lines sends three lines, in order.
//! (rustyline, the editor before this one, threw away input it had read
//! ahead between two lines, and with it all but the first pasted line.)

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use unicode_width::UnicodeWidthChar as _;

/// Lines of input history kept for Up and Down.
pub const INPUT_HISTORY: usize = 1000;

/// What a key asks of the front end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do (a key that does nothing here).
    Nothing,
    /// The line or the cursor changed: draw it again.
    Redraw,
    /// A finished line, to send. The editor is empty again.
    Submit(String),
    /// Ctrl+C (`broke_off`: drop what still waits to be sent), or Ctrl+D
    /// on an empty line (send it first): leave.
    Quit {
        /// Ctrl+C rather than Ctrl+D.
        broke_off: bool,
    },
    /// Ctrl+Z: give the terminal back and stop until `fg`.
    Suspend,
    /// Tab: complete the word before the cursor.
    Complete,
    /// Ctrl+L: clear the screen.
    Clear,
    /// PageUp: show the room's lines before the oldest one shown.
    Scrollback,
}

/// The line editor's state.
#[derive(Debug, Default)]
pub struct Editor {
    /// The line, as characters so the cursor moves by character.
    line: Vec<char>,
    /// Index into `line`: the cursor stands before `line[cursor]`.
    cursor: usize,
    /// Earlier lines, oldest first; consecutive repeats are kept once.
    history: Vec<String>,
    /// While browsing with Up and Down: the entry shown, and the line that
    /// was being typed before Up, given back by Down past the newest.
    browsing: Option<(usize, Vec<char>)>,
}

/// What to draw: the visible part of prompt and line, and where the
/// cursor goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The prompt followed by the part of the line that fits.
    pub text: String,
    /// The cursor's column, counted from 0.
    pub cursor: u16,
}

impl Editor {
    /// An empty line and no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The line as typed so far.
    pub fn line(&self) -> String {
        self.line.iter().collect()
    }

    /// The text before the cursor (what completion looks at).
    pub fn before_cursor(&self) -> String {
        self.line[..self.cursor].iter().collect()
    }

    /// Replaces the text before the cursor with `text` (a completion),
    /// keeping what follows the cursor.
    pub fn replace_before_cursor(&mut self, text: &str) {
        let rest: Vec<char> = self.line[self.cursor..].to_vec();
        self.line = text.chars().collect();
        self.cursor = self.line.len();
        self.line.extend(rest);
    }

    /// Applies one key.
    pub fn key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::Nothing;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        match key.code {
            KeyCode::Enter => self.submit(),
            KeyCode::Char('j' | 'm') if ctrl => self.submit(),
            KeyCode::Char('c') if ctrl => Action::Quit { broke_off: true },
            KeyCode::Char('d') if ctrl => {
                if self.line.is_empty() {
                    Action::Quit { broke_off: false }
                } else {
                    self.delete()
                }
            }
            KeyCode::Char('z') if ctrl => Action::Suspend,
            KeyCode::Char('l') if ctrl => Action::Clear,
            KeyCode::Char('a') if ctrl => self.move_to(0),
            KeyCode::Home => self.move_to(0),
            KeyCode::Char('e') if ctrl => self.move_to(self.line.len()),
            KeyCode::End => self.move_to(self.line.len()),
            KeyCode::Char('b') if ctrl => self.move_to(self.cursor.saturating_sub(1)),
            KeyCode::Left if ctrl || alt => self.move_to(self.word_start()),
            KeyCode::Char('b') if alt => self.move_to(self.word_start()),
            KeyCode::Left => self.move_to(self.cursor.saturating_sub(1)),
            KeyCode::Char('f') if ctrl => self.move_to((self.cursor + 1).min(self.line.len())),
            KeyCode::Right if ctrl || alt => self.move_to(self.word_end()),
            KeyCode::Char('f') if alt => self.move_to(self.word_end()),
            KeyCode::Right => self.move_to((self.cursor + 1).min(self.line.len())),
            KeyCode::Char('u') if ctrl => {
                self.line.drain(..self.cursor);
                self.cursor = 0;
                Action::Redraw
            }
            KeyCode::Char('k') if ctrl => {
                self.line.truncate(self.cursor);
                Action::Redraw
            }
            KeyCode::Char('w') if ctrl => {
                let start = self.word_start();
                self.line.drain(start..self.cursor);
                self.cursor = start;
                Action::Redraw
            }
            KeyCode::Backspace => self.backspace(),
            KeyCode::Char('h') if ctrl => self.backspace(),
            KeyCode::Delete => self.delete(),
            KeyCode::Up => self.older(),
            KeyCode::Char('p') if ctrl => self.older(),
            KeyCode::Down => self.newer(),
            KeyCode::Char('n') if ctrl => self.newer(),
            KeyCode::Tab => Action::Complete,
            KeyCode::PageUp => Action::Scrollback,
            KeyCode::Char(c) if !ctrl && !alt => {
                self.insert(c);
                Action::Redraw
            }
            _ => Action::Nothing,
        }
    }

    /// Takes pasted text: each line break in it finishes a line (returned
    /// in order, each as if Enter had been pressed); what follows the last
    /// break stays in the editor. Tabs become spaces and other control
    /// characters are dropped, as a typed line could not hold them.
    pub fn paste(&mut self, text: &str) -> Vec<String> {
        let mut done = Vec::new();
        // CR LF is one break; tmux and terminals send pasted breaks as CR.
        let text = text.replace("\r\n", "\n");
        for c in text.chars() {
            match c {
                '\n' | '\r' => {
                    if let Action::Submit(line) = self.submit() {
                        done.push(line);
                    }
                }
                '\t' => self.insert(' '),
                c if c.is_control() => {}
                c => self.insert(c),
            }
        }
        done
    }

    /// What to draw on one row `width` columns wide, after `prompt`: the
    /// line scrolls sideways so that the cursor is always visible, and the
    /// last column stays free so the cursor never wraps to the next row.
    pub fn view(&self, prompt: &str, width: u16) -> View {
        let width = usize::from(width.max(2));
        let prompt_width: usize = prompt.chars().map(char_width).sum();
        // A prompt wider than the terminal is cut; the line gets at least
        // a few columns.
        let room_for_line = width.saturating_sub(prompt_width + 1).max(8.min(width - 1));
        let prompt: String = if prompt_width + room_for_line < width {
            prompt.to_string()
        } else {
            take_width(prompt, width - 1 - room_for_line)
        };
        let prompt_width: usize = prompt.chars().map(char_width).sum();
        // The first shown character: as far left as lets the cursor show.
        let width_of = |chars: &[char]| chars.iter().copied().map(char_width).sum::<usize>();
        let mut start = 0;
        while start < self.cursor && width_of(&self.line[start..self.cursor]) > room_for_line {
            start += 1;
        }
        let mut text = prompt;
        let mut used = 0;
        for &c in &self.line[start..] {
            let w = char_width(c);
            if used + w > room_for_line {
                break;
            }
            text.push(c);
            used += w;
        }
        let cursor = prompt_width + width_of(&self.line[start..self.cursor]);
        View {
            text,
            cursor: u16::try_from(cursor).unwrap_or(u16::MAX),
        }
    }

    fn insert(&mut self, c: char) {
        self.browsing = None;
        self.line.insert(self.cursor, c);
        self.cursor += 1;
    }

    fn submit(&mut self) -> Action {
        let line: String = self.line.drain(..).collect();
        self.cursor = 0;
        self.browsing = None;
        if !line.trim().is_empty() && self.history.last() != Some(&line) {
            if self.history.len() >= INPUT_HISTORY {
                self.history.remove(0);
            }
            self.history.push(line.clone());
        }
        Action::Submit(line)
    }

    fn move_to(&mut self, cursor: usize) -> Action {
        self.cursor = cursor;
        Action::Redraw
    }

    fn backspace(&mut self) -> Action {
        if self.cursor == 0 {
            return Action::Nothing;
        }
        self.cursor -= 1;
        self.line.remove(self.cursor);
        Action::Redraw
    }

    fn delete(&mut self) -> Action {
        if self.cursor >= self.line.len() {
            return Action::Nothing;
        }
        self.line.remove(self.cursor);
        Action::Redraw
    }

    /// Where the word before the cursor starts (Ctrl+W, Alt+B).
    fn word_start(&self) -> usize {
        let mut i = self.cursor;
        while i > 0 && self.line[i - 1].is_whitespace() {
            i -= 1;
        }
        while i > 0 && !self.line[i - 1].is_whitespace() {
            i -= 1;
        }
        i
    }

    /// Where the word after the cursor ends (Alt+F).
    fn word_end(&self) -> usize {
        let mut i = self.cursor;
        while i < self.line.len() && self.line[i].is_whitespace() {
            i += 1;
        }
        while i < self.line.len() && !self.line[i].is_whitespace() {
            i += 1;
        }
        i
    }

    fn older(&mut self) -> Action {
        let index = match &self.browsing {
            Some((0, _)) => return Action::Nothing,
            Some((i, _)) => i - 1,
            None if self.history.is_empty() => return Action::Nothing,
            None => self.history.len() - 1,
        };
        let draft = match self.browsing.take() {
            Some((_, draft)) => draft,
            None => std::mem::take(&mut self.line),
        };
        self.show(self.history[index].chars().collect());
        self.browsing = Some((index, draft));
        Action::Redraw
    }

    fn newer(&mut self) -> Action {
        let Some((index, draft)) = self.browsing.take() else {
            return Action::Nothing;
        };
        if index + 1 < self.history.len() {
            self.show(self.history[index + 1].chars().collect());
            self.browsing = Some((index + 1, draft));
        } else {
            self.show(draft);
        }
        Action::Redraw
    }

    fn show(&mut self, line: Vec<char>) {
        self.line = line;
        self.cursor = self.line.len();
    }
}

/// Columns a character takes; control characters (never in the line) and
/// zero-width ones count as 0.
fn char_width(c: char) -> usize {
    c.width().unwrap_or(0)
}

fn take_width(s: &str, width: usize) -> String {
    let mut used = 0;
    s.chars()
        .take_while(|&c| {
            used += char_width(c);
            used <= width
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn ctrl(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
    }

    fn typed(text: &str) -> Editor {
        let mut e = Editor::new();
        for c in text.chars() {
            e.key(press(KeyCode::Char(c)));
        }
        e
    }

    #[test]
    fn a_paste_of_three_lines_submits_three_lines_in_order() {
        let mut e = typed("say: ");
        let done = e.paste("one\rtwo\r\nthree\npartial");
        assert_eq!(done, ["say: one", "two", "three"]);
        assert_eq!(e.line(), "partial");
        // Control characters in a paste never reach the line.
        assert!(e.paste("a\tb\u{1b}[2Jc").is_empty());
        assert_eq!(e.line(), "partiala b[2Jc");
    }

    #[test]
    fn emacs_keys_edit_the_line() {
        let mut e = typed("hello brave world");
        e.key(ctrl('w'));
        assert_eq!(e.line(), "hello brave ");
        e.key(ctrl('a'));
        e.key(press(KeyCode::Delete));
        assert_eq!(e.line(), "ello brave ");
        e.key(ctrl('e'));
        e.key(press(KeyCode::Backspace));
        e.key(press(KeyCode::Left));
        e.key(press(KeyCode::Left));
        e.key(press(KeyCode::Char('X')));
        assert_eq!(e.line(), "ello braXve");
        e.key(ctrl('k'));
        assert_eq!(e.line(), "ello braX");
        e.key(press(KeyCode::Left));
        e.key(ctrl('u'));
        assert_eq!(e.line(), "X");
        assert_eq!(e.before_cursor(), "");
        e.key(press(KeyCode::Right));
        assert_eq!(e.key(press(KeyCode::Enter)), Action::Submit("X".into()));
        assert_eq!(e.line(), "");
    }

    #[test]
    fn ctrl_c_quits_and_ctrl_d_quits_only_on_an_empty_line() {
        let mut e = typed("ab");
        e.key(press(KeyCode::Home));
        assert_eq!(e.key(ctrl('d')), Action::Redraw);
        assert_eq!(e.line(), "b");
        assert_eq!(e.key(ctrl('c')), Action::Quit { broke_off: true });
        let mut empty = Editor::new();
        assert_eq!(empty.key(ctrl('d')), Action::Quit { broke_off: false });
        assert_eq!(empty.key(ctrl('z')), Action::Suspend);
        assert_eq!(empty.key(press(KeyCode::PageUp)), Action::Scrollback);
    }

    #[test]
    fn up_and_down_walk_the_history_and_give_back_the_draft() {
        let mut e = Editor::new();
        e.paste("first\nsecond\nsecond\n");
        e.paste("draft");
        e.key(press(KeyCode::Up));
        assert_eq!(e.line(), "second");
        e.key(press(KeyCode::Up));
        assert_eq!(e.line(), "first");
        assert_eq!(e.key(press(KeyCode::Up)), Action::Nothing);
        e.key(press(KeyCode::Down));
        assert_eq!(e.line(), "second");
        e.key(press(KeyCode::Down));
        assert_eq!(e.line(), "draft");
        assert_eq!(e.key(press(KeyCode::Down)), Action::Nothing);
    }

    #[test]
    fn the_view_scrolls_so_the_cursor_shows() {
        let e = typed("abc");
        assert_eq!(
            e.view("> ", 20),
            View {
                text: "> abc".into(),
                cursor: 5
            }
        );
        let mut long = typed(&"x".repeat(30));
        long.paste("END");
        let v = long.view("> ", 20);
        assert!(v.text.starts_with("> ") && v.text.ends_with("END"), "{v:?}");
        assert!(v.cursor < 20 && v.text.chars().count() < 20, "{v:?}");
        long.key(press(KeyCode::Home));
        let v = long.view("> ", 20);
        assert_eq!(v.cursor, 2);
        assert!(v.text.chars().count() < 20, "{v:?}");
        // A terminal narrower than the prompt: the prompt is cut, the line
        // keeps a few columns, nothing reaches the last column.
        for width in [0, 1, 2, 5, 10, 12] {
            let v = long.view("[#a-long-room-name someone] > ", width);
            let used: usize = v.text.chars().map(char_width).sum();
            assert!(used < usize::from(width.max(2)), "{width}: {v:?}");
            assert!(v.cursor < width.max(2), "{width}: {v:?}");
        }
        // Wide characters count two columns.
        let wide = typed("日本語");
        assert_eq!(wide.view("> ", 20).cursor, 8);
    }

    #[test]
    fn completion_replaces_only_the_text_before_the_cursor() {
        let mut e = typed("al rest");
        for _ in 0..5 {
            e.key(press(KeyCode::Left));
        }
        assert_eq!(e.key(press(KeyCode::Tab)), Action::Complete);
        assert_eq!(e.before_cursor(), "al");
        e.replace_before_cursor("alice: ");
        assert_eq!(e.line(), "alice:  rest");
        assert_eq!(e.before_cursor(), "alice: ");
    }
}
