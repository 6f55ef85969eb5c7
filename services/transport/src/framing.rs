//! Stream framing of SIP messages (RFC 3261 §18.3) and CRLF keep-alives (RFC 5626 §4.4.1).
//!
//! Pure functions on a buffer: no socket, no clock. The only SIP this module understands is
//! where the headers end (the first CRLFCRLF) and the value of `Content-Length` / `l`; everything
//! else is the parser's job, above the transport.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::TransportError;
use trunkline_sip::parse::{find_crlf, find_header_end};

/// The RFC 5626 keep-alive ping a client sends on a stream.
pub const PING: &[u8] = b"\r\n\r\n";
/// The RFC 5626 keep-alive pong the server answers with.
pub const PONG: &[u8] = b"\r\n";

/// One unit taken off a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete message: headers, blank line and exactly Content-Length bytes of body.
    Message(Bytes),
    /// A CRLFCRLF keep-alive ping, to be answered with [`PONG`].
    Ping,
}

/// Cuts messages out of a TCP byte stream.
///
/// It remembers how far it has already searched for the end of the headers, and the message
/// length once the headers are complete, so a peer that drips a message byte by byte costs
/// linear, not quadratic, time, and CRLFCRLF inside a body is never mistaken for a header end.
#[derive(Debug, Default, Clone)]
pub struct StreamFramer {
    /// Bytes at the front of the buffer already searched for CRLFCRLF without success.
    scanned: usize,
    /// Total length of the current message once its headers have been read.
    total: Option<usize>,
}

impl StreamFramer {
    /// A framer at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next frame off the front of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed. Leading CR/LF bytes between messages are
    /// skipped, except that a CRLFCRLF at a message boundary is reported as a [`Frame::Ping`].
    /// An error means the stream cannot be framed any more and the connection must be closed.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        max_message_bytes: usize,
    ) -> Result<Option<Frame>, TransportError> {
        if self.total.is_none() {
            if let Some(ping) = self.read_head(buf, max_message_bytes)? {
                return Ok(Some(ping));
            }
        }
        let Some(total) = self.total else {
            return Ok(None);
        };
        if buf.len() < total {
            return Ok(None);
        }
        self.total = None;
        self.scanned = 0;
        // Copied at exact size so a long-lived call never pins the connection's read buffer.
        let msg = Bytes::copy_from_slice(&buf[..total]);
        buf.advance(total);
        Ok(Some(Frame::Message(msg)))
    }

    /// Skips CRLFs between messages and looks for the end of the headers; sets `total` when
    /// found. Returns only pings.
    fn read_head(
        &mut self,
        buf: &mut BytesMut,
        max_message_bytes: usize,
    ) -> Result<Option<Frame>, TransportError> {
        if self.scanned == 0 {
            loop {
                if buf.starts_with(PING) {
                    buf.advance(PING.len());
                    return Ok(Some(Frame::Ping));
                }
                match buf.first() {
                    Some(b'\r' | b'\n') => {
                        if PING.starts_with(buf) {
                            // Could still become a ping: wait for the rest.
                            return Ok(None);
                        }
                        buf.advance(1);
                    }
                    Some(_) => break,
                    None => return Ok(None),
                }
            }
        }

        let from = self.scanned.saturating_sub(PING.len() - 1);
        let Some(pos) = find_header_end(&buf[from..]).map(|end| from + end - PING.len()) else {
            if buf.len() > max_message_bytes {
                return Err(TransportError::MessageTooLarge {
                    size: buf.len(),
                    limit: max_message_bytes,
                });
            }
            self.scanned = buf.len();
            return Ok(None);
        };

        let head_len = pos + PING.len();
        let body_len = content_length(&buf[..pos])?.ok_or(TransportError::MissingContentLength)?;
        let total = head_len
            .checked_add(body_len)
            .ok_or(TransportError::BadContentLength)?;
        if total > max_message_bytes {
            return Err(TransportError::MessageTooLarge {
                size: total,
                limit: max_message_bytes,
            });
        }
        self.total = Some(total);
        Ok(None)
    }
}

/// Whether `buf` holds the beginning of a message (as opposed to nothing, or the beginning of a
/// keep-alive), so the partial-message timer must run.
pub fn message_started(buf: &[u8]) -> bool {
    !buf.is_empty() && !PING.starts_with(buf)
}

/// Whether a datagram is only a keep-alive (CRLFs or other whitespace, RFC 5626 §3.5.1 clients
/// behind NAT send these), to be dropped without reaching the parser.
pub fn is_datagram_keepalive(datagram: &[u8]) -> bool {
    datagram
        .iter()
        .all(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t'))
}

/// Reads the Content-Length of a header block (start line and headers, without the final blank
/// line). `Ok(None)` when absent; an error when malformed or when two values disagree.
///
/// Header names are matched case-insensitively, in full (`Content-Length`) or compact (`l`)
/// form, with optional whitespace before the colon; folded values (continuation lines starting
/// with SP or HT) are joined.
pub fn content_length(head: &[u8]) -> Result<Option<usize>, TransportError> {
    let mut found: Option<usize> = None;
    let mut lines = LineIter { rest: head }.skip(1).peekable();
    while let Some(line) = lines.next() {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        if line.first().is_some_and(|b| matches!(b, b' ' | b'\t')) {
            // A continuation line of some other header.
            continue;
        }
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let mut value = parse_decimal(&line[colon + 1..]);
        while let Some(next) = lines.peek() {
            if !next.first().is_some_and(|b| matches!(b, b' ' | b'\t')) {
                break;
            }
            // Folded value: the first part must be empty, the continuation holds the number.
            value = match value {
                Err(Empty) => parse_decimal(next),
                Ok(_) if trim(next).is_empty() => value,
                _ => Err(Invalid),
            };
            lines.next();
        }
        let value = value.map_err(|_| TransportError::BadContentLength)?;
        match found {
            Some(previous) if previous != value => return Err(TransportError::BadContentLength),
            _ => found = Some(value),
        }
    }
    Ok(found)
}

/// Why a value did not parse as a number.
#[derive(Debug)]
enum NotANumber {
    /// Only whitespace.
    Empty,
    /// Anything else that is not a decimal number.
    Invalid,
}
use NotANumber::{Empty, Invalid};

/// Parses a non-negative decimal surrounded by optional whitespace.
fn parse_decimal(raw: &[u8]) -> Result<usize, NotANumber> {
    let digits = trim(raw);
    if digits.is_empty() {
        return Err(Empty);
    }
    digits.iter().try_fold(0usize, |acc, &b| {
        if !b.is_ascii_digit() {
            return Err(Invalid);
        }
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(usize::from(b - b'0')))
            .ok_or(Invalid)
    })
}

/// Strips SP and HT from both ends.
fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Splits a header block on CRLF.
struct LineIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for LineIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        match find_crlf(self.rest, 0) {
            Some(i) => {
                let line = &self.rest[..i];
                self.rest = &self.rest[i + 2..];
                Some(line)
            }
            None => {
                let line = self.rest;
                self.rest = &[];
                Some(line)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    const LIMIT: usize = 16 * 1024;

    fn msg(cl_header: &str, body: &str) -> String {
        format!(
            "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK1\r\n{cl_header}\r\n\r\n{body}"
        )
    }

    fn decode_all(framer: &mut StreamFramer, buf: &mut BytesMut) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = framer.decode(buf, LIMIT).unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn complete_message() {
        let m = msg("Content-Length: 4", "abcd");
        let mut buf = BytesMut::from(m.as_str());
        let frames = decode_all(&mut StreamFramer::new(), &mut buf);
        assert_eq!(frames, vec![Frame::Message(Bytes::from(m))]);
        assert!(buf.is_empty());
    }

    #[test]
    fn two_messages_in_one_read() {
        let a = msg("Content-Length: 2", "hi");
        let b = msg("content-length:0", "");
        let mut buf = BytesMut::from(format!("{a}{b}").as_str());
        let frames = decode_all(&mut StreamFramer::new(), &mut buf);
        assert_eq!(
            frames,
            vec![
                Frame::Message(Bytes::from(a)),
                Frame::Message(Bytes::from(b))
            ]
        );
    }

    #[test]
    fn message_split_across_reads_byte_by_byte() {
        // A body that itself starts with CRLFs must not be mistaken for keep-alives.
        let m = msg("Content-Length: 6", "\r\n\r\nxy");
        let mut framer = StreamFramer::new();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in m.as_bytes() {
            buf.extend_from_slice(&[*b]);
            frames.extend(decode_all(&mut framer, &mut buf));
        }
        assert_eq!(frames, vec![Frame::Message(Bytes::from(m))]);
    }

    #[test]
    fn compact_header_and_space_before_colon() {
        let m = msg("L  :  3", "abc");
        let mut buf = BytesMut::from(m.as_str());
        assert_eq!(
            decode_all(&mut StreamFramer::new(), &mut buf),
            vec![Frame::Message(Bytes::from(m))]
        );
        assert_eq!(
            content_length(b"X\r\nContent-Length\t: 12").unwrap(),
            Some(12)
        );
    }

    #[test]
    fn folded_value() {
        assert_eq!(
            content_length(b"X\r\nContent-Length:\r\n  7\r\nTo: a").unwrap(),
            Some(7)
        );
    }

    #[test]
    fn other_headers_ending_in_l_are_ignored() {
        assert_eq!(
            content_length(b"X\r\nCall-ID: 1\r\nUrl: 9\r\nl: 5").unwrap(),
            Some(5)
        );
        // The start line is never a header, whatever it contains.
        assert_eq!(content_length(b"l: 5\r\nTo: a").unwrap(), None);
    }

    #[test]
    fn missing_content_length() {
        let m = "OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n";
        let mut buf = BytesMut::from(m);
        assert!(matches!(
            StreamFramer::new().decode(&mut buf, LIMIT),
            Err(TransportError::MissingContentLength)
        ));
    }

    #[test]
    fn negative_or_garbage_content_length() {
        for bad in [
            "Content-Length: -1",
            "Content-Length: abc",
            "Content-Length: 1 2",
            "Content-Length: +3",
            "Content-Length:",
            "Content-Length: 99999999999999999999999999",
            "Content-Length: 1\r\nl: 2",
        ] {
            let mut buf = BytesMut::from(msg(bad, "").as_str());
            assert!(
                matches!(
                    StreamFramer::new().decode(&mut buf, LIMIT),
                    Err(TransportError::BadContentLength)
                ),
                "{bad}"
            );
        }
        // Two equal values are harmless.
        assert_eq!(
            content_length(b"X\r\nContent-Length: 1\r\nl: 1").unwrap(),
            Some(1)
        );
    }

    #[test]
    fn oversize_announced_and_unterminated() {
        let mut buf = BytesMut::from(msg("Content-Length: 20000", "").as_str());
        assert!(matches!(
            StreamFramer::new().decode(&mut buf, LIMIT),
            Err(TransportError::MessageTooLarge { size, limit: LIMIT }) if size > 20000
        ));

        let mut buf = BytesMut::from(vec![b'a'; LIMIT + 1].as_slice());
        assert!(matches!(
            StreamFramer::new().decode(&mut buf, LIMIT),
            Err(TransportError::MessageTooLarge { .. })
        ));
        // Exactly at the limit is fine.
        let head = msg("Content-Length: 0", "");
        let body_len =
            LIMIT - head.len() + "Content-Length: 0".len() - "Content-Length: 00000".len();
        let m = msg(
            &format!("Content-Length: {body_len:05}"),
            &"b".repeat(body_len),
        );
        assert_eq!(m.len(), LIMIT);
        let mut buf = BytesMut::from(m.as_str());
        assert_eq!(decode_all(&mut StreamFramer::new(), &mut buf).len(), 1);
    }

    #[test]
    fn leading_crlfs_are_skipped() {
        let m = msg("Content-Length: 0", "");
        let mut buf = BytesMut::from(format!("\r\n{m}\r\n").as_str());
        let mut framer = StreamFramer::new();
        assert_eq!(
            decode_all(&mut framer, &mut buf),
            vec![Frame::Message(Bytes::from(m))]
        );
        // A lone trailing CRLF waits (it may be half a ping) and is not a started message.
        assert_eq!(&buf[..], b"\r\n");
        assert!(!message_started(&buf));
        buf.extend_from_slice(b"\nINVITE");
        assert_eq!(framer.decode(&mut buf, LIMIT).unwrap(), None);
        assert_eq!(&buf[..], b"INVITE");
        assert!(message_started(&buf));
    }

    #[test]
    fn ping_is_reported() {
        let m = msg("Content-Length: 0", "");
        let mut buf = BytesMut::from(format!("\r\n\r\n{m}\r\n\r\n").as_str());
        assert_eq!(
            decode_all(&mut StreamFramer::new(), &mut buf),
            vec![Frame::Ping, Frame::Message(Bytes::from(m)), Frame::Ping]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn datagram_keepalive() {
        assert!(is_datagram_keepalive(b"\r\n\r\n"));
        assert!(is_datagram_keepalive(b"\r\n"));
        assert!(!is_datagram_keepalive(b"OPTIONS"));
    }
}
