//! How events look: the plain line of the text encoding for pipes, and a
//! styled line (time stamp, a colour per sender, own and private messages
//! set apart, system notices dimmed) for people at a terminal.
//!
//! Every piece of peer-controlled text goes through [`sanitize`] as it is
//! put into a [`Line`]; styles are added afterwards, by us, so the escape
//! sequences in the output are only ever our own.

use std::fmt::Write as _;
use std::net::SocketAddr;

use anstyle::{Ansi256Color, AnsiColor, Color, Effects, Style};
use chrono::{DateTime, Local, NaiveDate, TimeZone as _};

use super::sanitize::{sanitize, sanitize_json};
use crate::protocol::{ChatLine, Event};

/// Colours senders are drawn from: xterm 256-colour cube entries of mid
/// lightness, so each reads on a black and on a white background (the
/// 16 named colours depend on the terminal's theme; the cube does not).
/// Blues, greens, cyans, olive/orange and purples; nothing near red (red
/// marks errors) and no pure magenta (it marks private messages). The test
/// `palette_is_readable_and_not_red` computes both properties.
const PALETTE: [u8; 14] = [27, 28, 29, 30, 31, 32, 63, 64, 97, 98, 100, 130, 133, 134];

/// How serious a client notice is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Routine (reconnected, lines sent after reconnecting).
    Info,
    /// Something the user should notice (connection lost, lines not sent).
    Warn,
}

/// A line of styled pieces, ready for a terminal with or without colour.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Line {
    spans: Vec<(Style, String)>,
}

impl Line {
    fn push(&mut self, style: Style, text: &str) {
        self.spans.push((style, sanitize(text).into_owned()));
    }

    /// The text without styles.
    pub fn plain(&self) -> String {
        self.spans.iter().map(|(_, t)| t.as_str()).collect()
    }

    /// The text with ANSI styles.
    pub fn ansi(&self) -> String {
        let mut out = String::new();
        for (style, text) in &self.spans {
            let _ = write!(out, "{}{text}{}", style.render(), style.render_reset());
        }
        out
    }
}

/// The text-encoding line of an event, safe to print: what the piped client
/// prints, exactly the line a text-encoding client would receive.
pub fn plain_event(event: &Event) -> String {
    sanitize(&event.to_text()).into_owned()
}

/// The JSON the server sent, safe to print (for `--json`).
pub fn json_event(raw: &str) -> String {
    sanitize_json(raw).into_owned()
}

/// A client notice as a plain line.
pub fn plain_notice(text: &str) -> String {
    format!("~ {}", sanitize(text))
}

/// A stable colour for a sender: a hash of the lower-cased nickname (nicks
/// are unique ignoring case), or of the address for those without one.
pub fn sender_color(nick: Option<&str>, addr: SocketAddr) -> Color {
    // FNV-1a: tiny, stable across runs and platforms (std's hasher is not).
    let mut hash: u32 = 0x811c_9dc5;
    let key = match nick {
        Some(n) => n.to_ascii_lowercase(),
        None => addr.to_string(),
    };
    for b in key.bytes() {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    Color::Ansi256(Ansi256Color(PALETTE[hash as usize % PALETTE.len()]))
}

fn fg(color: impl Into<Color>) -> Style {
    Style::new().fg_color(Some(color.into()))
}

fn dim() -> Style {
    Style::new().effects(Effects::DIMMED)
}

fn name(nick: Option<&str>, addr: SocketAddr) -> String {
    nick.map_or_else(|| addr.to_string(), str::to_string)
}

fn stamp(line: &mut Line, ts_millis: Option<u64>) {
    let time = ts_millis
        .and_then(|ms| i64::try_from(ms).ok())
        .and_then(|ms| Local.timestamp_millis_opt(ms).single())
        .unwrap_or_else(Local::now);
    line.push(dim(), &format!("{} ", clock(time)));
}

fn clock(time: DateTime<Local>) -> String {
    time.format("%H:%M").to_string()
}

/// Whether `text` names `nick` as a word of its own, ignoring case: "erin:"
/// and "hi Erin!" do, "erinyes" does not.
pub fn names(text: &str, nick: &str) -> bool {
    if nick.is_empty() {
        return false;
    }
    let (text, nick) = (text.to_lowercase(), nick.to_lowercase());
    let part_of_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    text.match_indices(&nick).any(|(i, m)| {
        !part_of_word(text[..i].chars().next_back())
            && !part_of_word(text[i + m.len()..].chars().next())
    })
}

/// Whether `event` is someone else's line that names us (`nick`), or a
/// private message to us: what is highlighted and rings the bell.
pub fn mentions_me(event: &Event, me: Option<SocketAddr>, nick: Option<&str>) -> bool {
    match event {
        Event::Message(chat) | Event::Action(chat) => {
            Some(chat.from) != me && nick.is_some_and(|n| names(&chat.text, n))
        }
        Event::Private { from, .. } => Some(*from) != me,
        _ => false,
    }
}

/// Whether `event` is replayed history rather than a live line.
pub fn is_history(event: &Event) -> bool {
    matches!(event, Event::Message(c) | Event::Action(c) if c.history)
}

/// The marker style of a line that names us: black on yellow, like a
/// highlighter pen (yellow text alone is for warnings).
fn highlight() -> Style {
    fg(AnsiColor::Black)
        .bg_color(Some(AnsiColor::Yellow.into()))
        .bold()
}

/// The styled line of an event. `me` is this connection's address, so our
/// own lines can be told apart, and `nick` our nickname, so lines that name
/// us stand out. History (lines replayed on joining or resuming) is dimmed.
pub fn rich_event(event: &Event, me: Option<SocketAddr>, nick: Option<&str>) -> Line {
    let mut line = Line::default();
    let mention = mentions_me(event, me, nick);
    match event {
        Event::Message(chat) => {
            stamp(&mut line, Some(chat.ts));
            sender(&mut line, chat, me);
            line.push(Style::new(), ": ");
            let style = if mention { highlight() } else { Style::new() };
            line.push(style, &chat.text);
        }
        Event::Action(chat) => {
            stamp(&mut line, Some(chat.ts));
            let color = sender_color(chat.nick.as_deref(), chat.from);
            line.push(fg(color), "* ");
            sender(&mut line, chat, me);
            let style = if mention {
                highlight()
            } else {
                Style::new().italic()
            };
            line.push(style, &format!(" {}", chat.text));
        }
        Event::History { room, count } => {
            stamp(&mut line, None);
            let s = if *count == 1 { "" } else { "s" };
            line.push(
                dim(),
                &format!("── history of {room}: the last {count} message{s} ──"),
            );
        }
        Event::Private {
            ts,
            from,
            nick,
            to,
            to_nick,
            text,
        } => {
            stamp(&mut line, Some(*ts));
            let tag = fg(AnsiColor::Magenta).bold();
            let body = fg(AnsiColor::BrightMagenta);
            if Some(*from) == me {
                line.push(tag, "[private] to ");
                line.push(
                    fg(sender_color(to_nick.as_deref(), *to)).bold(),
                    &name(to_nick.as_deref(), *to),
                );
            } else {
                line.push(tag, "[private] from ");
                line.push(
                    fg(sender_color(nick.as_deref(), *from)).bold(),
                    &name(nick.as_deref(), *from),
                );
            }
            line.push(tag, ": ");
            line.push(body, text);
        }
        Event::Error { message } => {
            stamp(&mut line, None);
            line.push(fg(AnsiColor::Red).bold(), &format!("! {message}"));
        }
        Event::Resumed {
            lost,
            restarted,
            interrupted,
            ..
        } if *lost > 0 || *restarted || *interrupted => {
            stamp(&mut line, None);
            line.push(fg(AnsiColor::Yellow).bold(), &event.to_text());
        }
        Event::Skipped { .. } => {
            stamp(&mut line, None);
            line.push(fg(AnsiColor::Yellow).bold(), &event.to_text());
        }
        // Presence, lists, help: system notices, dimmed.
        _ => {
            stamp(&mut line, None);
            line.push(dim(), &event.to_text());
        }
    }
    if is_history(event) {
        for (style, _) in &mut line.spans {
            *style = style.effects(style.get_effects() | Effects::DIMMED);
        }
    }
    line
}

/// Notices when the day changes between one shown line and the next.
#[derive(Debug, Default)]
pub struct Days {
    last: Option<NaiveDate>,
}

impl Days {
    /// No line shown yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The date line to show before `event`, if its day is not the day of
    /// the line before it (or, for the first line, not today).
    pub fn before(&mut self, event: &Event) -> Option<Line> {
        let ts = match event {
            Event::Message(c) | Event::Action(c) => Some(c.ts),
            Event::Private { ts, .. } => Some(*ts),
            _ => None,
        };
        self.at(ts)
    }

    /// The date line to show before a line stamped now (a client notice).
    pub fn now(&mut self) -> Option<Line> {
        self.at(None)
    }

    fn at(&mut self, ts: Option<u64>) -> Option<Line> {
        let time = ts
            .and_then(|ms| i64::try_from(ms).ok())
            .and_then(|ms| Local.timestamp_millis_opt(ms).single())
            .unwrap_or_else(Local::now);
        let day = time.date_naive();
        let previous = self.last.replace(day);
        let changed = match previous {
            Some(previous) => previous != day,
            None => day != Local::now().date_naive(),
        };
        changed.then(|| {
            let mut line = Line::default();
            line.push(dim(), &format!("── {} ──", day.format("%A %-d %B %Y")));
            line
        })
    }
}

/// The sender of a chat line: bold in their colour; our own name black on
/// our colour, so our lines stand out when scrolling back.
fn sender(line: &mut Line, chat: &ChatLine, me: Option<SocketAddr>) {
    let color = sender_color(chat.nick.as_deref(), chat.from);
    let style = if Some(chat.from) == me {
        fg(AnsiColor::Black).bg_color(Some(color)).bold()
    } else {
        fg(color).bold()
    };
    line.push(style, &name(chat.nick.as_deref(), chat.from));
}

/// A client notice (connection lost, reconnected) as a styled line.
pub fn rich_notice(level: Level, text: &str) -> Line {
    let mut line = Line::default();
    stamp(&mut line, None);
    let style = match level {
        Level::Info => dim(),
        Level::Warn => fg(AnsiColor::Yellow).bold(),
    };
    line.push(style, &format!("~ {text}"));
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(from: u16, nick: Option<&str>, text: &str) -> ChatLine {
        ChatLine {
            room: "#lobby".into(),
            seq: 1,
            ts: 1_700_000_000_000,
            from: SocketAddr::from(([127, 0, 0, 1], from)),
            nick: nick.map(String::from),
            text: text.into(),
            history: false,
        }
    }

    #[test]
    fn colours_are_stable_per_sender_and_ignore_case() {
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let b = SocketAddr::from(([127, 0, 0, 1], 2));
        assert_eq!(
            sender_color(Some("alice"), a),
            sender_color(Some("Alice"), b)
        );
        assert_eq!(sender_color(None, a), sender_color(None, a));
    }

    /// The sRGB of an xterm 256-colour cube entry (16..=231).
    fn cube_rgb(index: u8) -> [f64; 3] {
        const LEVELS: [f64; 6] = [0.0, 95.0, 135.0, 175.0, 215.0, 255.0];
        let n = usize::from(index - 16);
        [LEVELS[n / 36], LEVELS[n / 6 % 6], LEVELS[n % 6]]
    }

    /// WCAG relative luminance.
    fn luminance(rgb: [f64; 3]) -> f64 {
        let lin = |c: f64| {
            let c = c / 255.0;
            if c <= 0.040_45 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * lin(rgb[0]) + 0.7152 * lin(rgb[1]) + 0.0722 * lin(rgb[2])
    }

    /// Hue in degrees (0 = red) and HSV saturation.
    fn hue_saturation(rgb: [f64; 3]) -> (f64, f64) {
        let [r, g, b] = rgb.map(|c| c / 255.0);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let d = max - min;
        if d == 0.0 {
            return (0.0, 0.0);
        }
        let h = if max == r {
            60.0 * ((g - b) / d).rem_euclid(6.0)
        } else if max == g {
            60.0 * ((b - r) / d + 2.0)
        } else {
            60.0 * ((r - g) / d + 4.0)
        };
        (h, d / max)
    }

    #[test]
    fn palette_is_readable_and_not_red() {
        for &index in &PALETTE {
            assert!((16..=231).contains(&index), "{index} is not a cube colour");
            let rgb = cube_rgb(index);
            let l = luminance(rgb);
            let on_black = (l + 0.05) / 0.05;
            let on_white = 1.05 / (l + 0.05);
            assert!(on_black >= 3.5, "{index} {rgb:?}: {on_black:.1}:1 on black");
            assert!(on_white >= 3.5, "{index} {rgb:?}: {on_white:.1}:1 on white");
            let (hue, sat) = hue_saturation(rgb);
            let from_red = hue.min(360.0 - hue);
            assert!(sat > 0.3, "{index} {rgb:?} is grey");
            assert!(from_red > 25.0, "{index} {rgb:?} is red-ish (hue {hue:.0})");
        }
        // The errors' colour really is excluded by the same measure.
        let (hue, _) = hue_saturation([215.0, 0.0, 0.0]);
        assert!(hue.min(360.0 - hue) <= 25.0);
    }

    #[test]
    fn colours_are_spread_and_stable() {
        // Pinned: a nick keeps its colour across releases of this palette.
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let first = sender_color(Some("alice"), a);
        assert_eq!(first, sender_color(Some("ALICE"), a));
        let used: std::collections::HashSet<_> = (0..200)
            .map(|i| sender_color(Some(&format!("user{i}")), a))
            .collect();
        assert!(used.len() >= PALETTE.len() - 1, "{used:?}");
    }

    #[test]
    fn peer_text_cannot_smuggle_escapes_into_styled_lines() {
        let ev = Event::Message(chat(1, Some("x\u{1b}[2J"), "\u{1b}]0;title\u{7}\u{9b}2J"));
        let line = rich_event(&ev, None, None);
        assert!(!line
            .plain()
            .chars()
            .any(super::super::sanitize::is_dangerous));
        // The only ESCs in the coloured form are our own SGR sequences.
        let ansi = line.ansi();
        for (i, _) in ansi.match_indices('\u{1b}') {
            let rest = &ansi[i + 1..];
            assert!(rest.starts_with('['), "{ansi:?}");
            let end = rest.find('m').unwrap();
            assert!(rest[1..end].chars().all(|c| c.is_ascii_digit() || c == ';'));
        }
    }

    #[test]
    fn own_and_private_lines_differ_from_others() {
        let me = SocketAddr::from(([127, 0, 0, 1], 1));
        let own = rich_event(&Event::Message(chat(1, Some("al"), "hi")), Some(me), None).ansi();
        let other = rich_event(&Event::Message(chat(1, Some("al"), "hi")), None, None).ansi();
        assert_ne!(own, other);
        let private = Event::Private {
            ts: 0,
            from: SocketAddr::from(([127, 0, 0, 1], 2)),
            nick: Some("bob".into()),
            to: me,
            to_nick: None,
            text: "psst".into(),
        };
        let plain = rich_event(&private, Some(me), None).plain();
        assert!(plain.ends_with("[private] from bob: psst"), "{plain}");
        assert!(mentions_me(&private, Some(me), None));
    }

    #[test]
    fn a_line_that_names_us_is_highlighted() {
        assert!(names("erin: look", "erin"));
        assert!(names("hi Erin!", "erin"));
        assert!(names("ask (erin)", "erin"));
        assert!(!names("erinyes are here", "erin"));
        assert!(!names("sherin", "erin"));
        assert!(!names("anything", ""));
        let me = SocketAddr::from(([127, 0, 0, 1], 1));
        let from_bob = Event::Message(chat(2, Some("bob"), "erin: lunch?"));
        let plain = Event::Message(chat(2, Some("bob"), "lunch?"));
        assert!(mentions_me(&from_bob, Some(me), Some("erin")));
        assert!(!mentions_me(&plain, Some(me), Some("erin")));
        // Our own line naming ourselves is no mention.
        let own = Event::Message(chat(1, Some("erin"), "erin here"));
        assert!(!mentions_me(&own, Some(me), Some("erin")));
        let marked = rich_event(&from_bob, Some(me), Some("erin")).ansi();
        let unmarked = rich_event(&from_bob, Some(me), None).ansi();
        assert_ne!(marked, unmarked);
        assert!(
            marked.contains(&highlight().render().to_string()),
            "{marked:?}"
        );
    }

    #[test]
    fn history_is_dimmed_and_headed() {
        let mut old = chat(2, Some("bob"), "before you came");
        old.history = true;
        let line = rich_event(&Event::Message(old), None, None);
        assert!(line
            .spans
            .iter()
            .all(|(s, _)| s.get_effects().contains(Effects::DIMMED)));
        let live = rich_event(&Event::Message(chat(2, Some("bob"), "now")), None, None);
        assert!(!live
            .spans
            .iter()
            .all(|(s, _)| s.get_effects().contains(Effects::DIMMED)));
        let head = rich_event(
            &Event::History {
                room: "#rust".into(),
                count: 3,
            },
            None,
            None,
        );
        assert!(head
            .plain()
            .ends_with("── history of #rust: the last 3 messages ──"));
    }

    #[test]
    fn a_date_line_comes_when_the_day_changes() {
        const DAY: u64 = 86_400_000;
        let at = |ts: u64| {
            let mut c = chat(2, None, "x");
            c.ts = ts;
            Event::Message(c)
        };
        let mut days = Days::new();
        // Three days ago at noon UTC, then 10 minutes later, then two days on.
        let now = u64::try_from(Local::now().timestamp_millis()).unwrap();
        let start = (now / DAY - 3) * DAY + DAY / 2;
        let first = days.before(&at(start)).expect("not today: a date line");
        assert!(first.plain().starts_with("── ") && first.plain().ends_with(" ──"));
        assert_eq!(days.before(&at(start + 600_000)), None);
        let next = days.before(&at(start + 2 * DAY)).expect("a new day");
        assert_ne!(next, first);
        // A notice without a time stamp is today's.
        assert!(days.before(&Event::Info { text: "x".into() }).is_some());
        assert_eq!(days.before(&Event::Info { text: "y".into() }), None);
    }
}
