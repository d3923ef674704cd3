//! The marker each message carries, and finding it again in a relayed frame.
//!
//! Servers add prefixes (`127.0.0.1:53211: `), names, or quote and escape the
//! text (`"..."`), so the receiver searches for the marker anywhere in the frame
//! rather than expecting the frame to equal what was sent. The marker uses only
//! ASCII letters, digits, `:` and filler `x`, which no escaping scheme alters.
//!
//! Measured message:  `L<runid>:<sender>:<seq>:<send_ns> xxxx...`
//! Barrier message:   `B<runid>:<sender>:<round>`
//!
//! `<runid>` is 8 lowercase hex digits chosen per run, so frames from an
//! earlier or concurrent run are ignored; every other field is decimal.

use memchr::memmem::Finder;

/// One measured message as identified in a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub sender: u32,
    pub seq: u32,
    /// Send time in nanoseconds since the process-wide clock epoch (see `clock`).
    pub send_ns: u64,
}

/// What a received frame turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Message(Mark),
    Barrier {
        sender: u32,
        round: u32,
    },
    /// Anything else: welcome lines, notices, other runs' traffic.
    Other,
}

/// Builds the text of a measured message, padded with filler to `size` bytes
/// (never truncated: a `size` smaller than the marker gives just the marker).
pub fn encode_message(runid: u32, mark: Mark, size: usize) -> String {
    let mut s = format!("L{runid:08x}:{}:{}:{}", mark.sender, mark.seq, mark.send_ns);
    if s.len() < size {
        // A space ends the last number even if a server strips trailing filler.
        s.push(' ');
        let fill = size - s.len();
        s.push_str(&"x".repeat(fill));
    }
    s
}

pub fn encode_barrier(runid: u32, sender: u32, round: u32) -> String {
    format!("B{runid:08x}:{sender}:{round}")
}

/// Finds this run's markers in frames. Holds prebuilt substring searchers so
/// the per-frame cost is one fast scan.
pub struct Parser {
    message: Finder<'static>,
    barrier: Finder<'static>,
}

impl Parser {
    pub fn new(runid: u32) -> Self {
        Parser {
            message: Finder::new(format!("L{runid:08x}:").as_bytes()).into_owned(),
            barrier: Finder::new(format!("B{runid:08x}:").as_bytes()).into_owned(),
        }
    }

    pub fn parse(&self, frame: &[u8]) -> Frame {
        if let Some(at) = self.message.find(frame) {
            let rest = &frame[at + self.message.needle().len()..];
            if let Some(mark) = parse_message_fields(rest) {
                return Frame::Message(mark);
            }
        }
        if let Some(at) = self.barrier.find(frame) {
            let rest = &frame[at + self.barrier.needle().len()..];
            let (sender, rest) = take_number(rest);
            let (round, _) = take_colon(rest).map(take_number).unwrap_or((None, rest));
            if let (Some(sender), Some(round)) = (sender, round) {
                if let (Ok(sender), Ok(round)) = (u32::try_from(sender), u32::try_from(round)) {
                    return Frame::Barrier { sender, round };
                }
            }
        }
        Frame::Other
    }
}

fn parse_message_fields(rest: &[u8]) -> Option<Mark> {
    let (sender, rest) = take_number(rest);
    let (seq, rest) = take_number(take_colon(rest)?);
    let (send_ns, _) = take_number(take_colon(rest)?);
    Some(Mark {
        sender: u32::try_from(sender?).ok()?,
        seq: u32::try_from(seq?).ok()?,
        send_ns: send_ns?,
    })
}

/// Leading decimal digits as a number (None if there are none or it overflows).
fn take_number(s: &[u8]) -> (Option<u64>, &[u8]) {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return (None, &s[digits..]);
    }
    let mut n: u64 = 0;
    for &b in &s[..digits] {
        match n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
        {
            Some(v) => n = v,
            None => return (None, &s[digits..]),
        }
    }
    (Some(n), &s[digits..])
}

fn take_colon(s: &[u8]) -> Option<&[u8]> {
    s.strip_prefix(b":")
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: u32 = 0x00c0_ffee;

    fn mark(sender: u32, seq: u32, send_ns: u64) -> Mark {
        Mark {
            sender,
            seq,
            send_ns,
        }
    }

    #[test]
    fn message_round_trips_and_is_padded_to_size() {
        let m = mark(3, 41, 123_456_789);
        let text = encode_message(RUN, m, 64);
        assert_eq!(text.len(), 64);
        assert!(text.starts_with("L00c0ffee:3:41:123456789 x"));
        assert_eq!(Parser::new(RUN).parse(text.as_bytes()), Frame::Message(m));
    }

    #[test]
    fn small_size_gives_bare_marker() {
        let m = mark(0, 0, 0);
        let text = encode_message(RUN, m, 1);
        assert_eq!(text, "L00c0ffee:0:0:0");
        assert_eq!(Parser::new(RUN).parse(text.as_bytes()), Frame::Message(m));
    }

    #[test]
    fn finds_marker_behind_prefixes_and_quoting() {
        let m = mark(9, 7, 55);
        let text = encode_message(RUN, m, 40);
        let p = Parser::new(RUN);
        for framed in [
            format!("127.0.0.1:53211: {text}"),
            format!("alice (127.0.0.1:53211): {text}"),
            format!("127.0.0.1:53211: {text:?}"),
            format!("{{\"from\":\"bob\",\"text\":\"{text}\"}}"),
        ] {
            assert_eq!(p.parse(framed.as_bytes()), Frame::Message(m), "{framed}");
        }
    }

    #[test]
    fn barrier_round_trips() {
        let text = format!("x: {}", encode_barrier(RUN, 2, 5));
        assert_eq!(
            Parser::new(RUN).parse(text.as_bytes()),
            Frame::Barrier {
                sender: 2,
                round: 5
            }
        );
    }

    #[test]
    fn ignores_other_frames_other_runs_and_damaged_markers() {
        let p = Parser::new(RUN);
        let other_run = encode_message(RUN + 1, mark(1, 1, 1), 64);
        for frame in [
            "Welcome to chat! Type a message",
            "* alice joined",
            "",
            other_run.as_str(),
            "L00c0ffee:",
            "L00c0ffee:1:2",
            "L00c0ffee:1:2:",
            "L00c0ffee:a:2:3",
            "L00c0ffee:99999999999:2:3",
            "B00c0ffee:1",
        ] {
            assert_eq!(p.parse(frame.as_bytes()), Frame::Other, "{frame:?}");
        }
    }

    #[test]
    fn overflowing_numbers_are_rejected() {
        let p = Parser::new(RUN);
        let frame = "L00c0ffee:1:2:99999999999999999999999";
        assert_eq!(p.parse(frame.as_bytes()), Frame::Other);
    }
}
