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
use chrono::{DateTime, Local, TimeZone as _};

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

/// The styled line of an event. `me` is this connection's address, so our
/// own lines can be told apart.
pub fn rich_event(event: &Event, me: Option<SocketAddr>) -> Line {
    let mut line = Line::default();
    match event {
        Event::Message(chat) => {
            stamp(&mut line, Some(chat.ts));
            sender(&mut line, chat, me);
            line.push(Style::new(), ": ");
            line.push(Style::new(), &chat.text);
        }
        Event::Action(chat) => {
            stamp(&mut line, Some(chat.ts));
            let color = sender_color(chat.nick.as_deref(), chat.from);
            line.push(fg(color), "* ");
            sender(&mut line, chat, me);
            line.push(Style::new().italic(), &format!(" {}", chat.text));
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
        // Presence, lists, history headers, help: system notices, dimmed.
        _ => {
            stamp(&mut line, None);
            line.push(dim(), &event.to_text());
        }
    }
    line
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
        let line = rich_event(&ev, None);
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
        let own = rich_event(&Event::Message(chat(1, Some("al"), "hi")), Some(me)).ansi();
        let other = rich_event(&Event::Message(chat(1, Some("al"), "hi")), None).ansi();
        assert_ne!(own, other);
        let private = Event::Private {
            ts: 0,
            from: SocketAddr::from(([127, 0, 0, 1], 2)),
            nick: Some("bob".into()),
            to: me,
            to_nick: None,
            text: "psst".into(),
        };
        let plain = rich_event(&private, Some(me)).plain();
        assert!(plain.ends_with("[private] from bob: psst"), "{plain}");
    }
}
