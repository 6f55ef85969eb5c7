//! The message parser: one pass over the header section, slicing the input `Bytes`
//! without copying (only folded header values are re-assembled).
//!
//! It checks framing and syntax; semantic rules (mandatory headers, CSeq/method
//! agreement, single-valued headers...) live in `validate` so the caller can still
//! answer a well-framed but invalid request with the right status code.

use crate::error::ParseError;
use crate::header::{Header, HeaderName, Headers};
use crate::message::{Message, Request, Response};
use crate::method::Method;
use crate::scan;
use crate::uri::Uri;
use bytes::{Bytes, BytesMut};

/// Where the header section ends: the index of the first body byte.
pub fn find_header_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        let p = find_crlf(b, i)?;
        if b.get(p + 2..p + 4) == Some(b"\r\n") {
            return Some(p + 4);
        }
        // The byte after this CRLF's '\n' cannot start the blank line's CRLF unless it
        // is '\r', which the next search finds.
        i = p + 2;
    }
}

/// Index of the first CRLF at or after `from`. Every message is cut into lines by this,
/// so it looks for '\r' with `memchr` (a word at a time) instead of comparing each pair
/// of bytes.
pub fn find_crlf(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let p = i + memchr::memchr(b'\r', b.get(i..)?)?;
        if b.get(p + 1) == Some(&b'\n') {
            return Some(p);
        }
        i = p + 1;
    }
}

/// Parses one message from a datagram or a framed stream chunk. Bytes after the
/// Content-Length body are ignored (RFC 3261 §18.3, RFC 4475 §3.1.1.8); a
/// Content-Length larger than what arrived is an error.
pub fn parse_message(data: Bytes) -> Result<Message, ParseError> {
    let mut start = 0;
    while data.len() >= start + 2 && &data[start..start + 2] == b"\r\n" {
        start += 2;
    }
    if start >= data.len() {
        return Err(ParseError::Empty);
    }
    let data = data.slice(start..);
    let body_start = find_header_end(&data).ok_or(ParseError::Incomplete)?;
    let line_end = find_crlf(&data, 0).ok_or(ParseError::Incomplete)?;
    let start_line = data.slice(..line_end);
    let headers = parse_headers(&data, line_end + 2, body_start - 2, false)?;
    let body = frame_body(&data, body_start, &headers)?;
    if start_line.starts_with(b"SIP/") {
        parse_status_line(&start_line).map(|(version, status, reason)| {
            Message::Response(Response {
                status,
                reason,
                version,
                headers,
                body,
            })
        })
    } else {
        let (method, uri, version) = parse_request_line(&start_line)?;
        Ok(Message::Request(Request {
            method,
            uri,
            version,
            headers,
            body,
        }))
    }
}

/// The body per Content-Length, or everything left when it is absent.
fn frame_body(data: &Bytes, body_start: usize, headers: &Headers) -> Result<Bytes, ParseError> {
    let available = data.len() - body_start;
    match headers.get(HeaderName::ContentLength) {
        None => Ok(data.slice(body_start..)),
        Some(v) => {
            let declared = parse_content_length(v)?;
            if declared > available {
                return Err(ParseError::BodyTruncated {
                    declared,
                    available,
                });
            }
            Ok(data.slice(body_start..body_start + declared))
        }
    }
}

/// Content-Length: digits only, bounded well below any allocation that matters.
pub fn parse_content_length(v: &[u8]) -> Result<usize, ParseError> {
    let (s, e) = scan::trim(v);
    let d = &v[s..e];
    if d.len() > 9 {
        return Err(ParseError::ContentLength);
    }
    scan::decimal(d)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or(ParseError::ContentLength)
}

fn parse_request_line(line: &Bytes) -> Result<(Method, Uri, Bytes), ParseError> {
    // Exactly: Method SP Request-URI SP SIP-Version (RFC 3261 §25.1); extra LWS is an error.
    let mut parts = line.split(|c| *c == b' ');
    let m = parts.next().ok_or(ParseError::StartLine("no method"))?;
    let u = parts
        .next()
        .ok_or(ParseError::StartLine("no request-URI"))?;
    let v = parts.next().ok_or(ParseError::StartLine("no version"))?;
    if parts.next().is_some() {
        return Err(ParseError::StartLine("extra whitespace in request line"));
    }
    let method = Method::from_token(m).ok_or(ParseError::StartLine("bad method"))?;
    if !is_version(v) {
        return Err(ParseError::StartLine("bad SIP version"));
    }
    let us = std::str::from_utf8(u).map_err(|_| ParseError::Uri("not UTF-8"))?;
    let uri = Uri::parse(us).map_err(ParseError::Uri)?;
    let vs = line.len() - v.len();
    Ok((method, uri, line.slice(vs..)))
}

/// `SIP/` 1*DIGIT `.` 1*DIGIT, case-insensitively: other versions parse so they can
/// be answered with 505.
fn is_version(v: &[u8]) -> bool {
    if v.len() < 7 || !v[..4].eq_ignore_ascii_case(b"SIP/") {
        return false;
    }
    let rest = &v[4..];
    match rest.iter().position(|c| *c == b'.') {
        Some(dot) => {
            dot > 0
                && dot + 1 < rest.len()
                && rest[..dot].iter().all(u8::is_ascii_digit)
                && rest[dot + 1..].iter().all(u8::is_ascii_digit)
        }
        None => false,
    }
}

fn parse_status_line(line: &Bytes) -> Result<(Bytes, u16, Bytes), ParseError> {
    let sp = line
        .iter()
        .position(|c| *c == b' ')
        .ok_or(ParseError::StartLine("no status code"))?;
    let version = line.slice(..sp);
    if !is_version(&version) {
        return Err(ParseError::StartLine("bad SIP version"));
    }
    let code = line
        .get(sp + 1..sp + 4)
        .ok_or(ParseError::StartLine("short status code"))?;
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::StartLine("non-numeric status code"));
    }
    let status =
        (code[0] - b'0') as u16 * 100 + (code[1] - b'0') as u16 * 10 + (code[2] - b'0') as u16;
    if !(100..=699).contains(&status) {
        return Err(ParseError::StartLine("status code out of range"));
    }
    let rest = &line[sp + 4..];
    let reason = match rest.first() {
        None => Bytes::new(),
        Some(b' ') => line.slice(sp + 5..),
        Some(_) => return Err(ParseError::StartLine("status code too long")),
    };
    if reason.iter().any(|c| *c < 0x20 && *c != b'\t') {
        return Err(ParseError::Text);
    }
    Ok((version, status, reason))
}

/// Parses header lines between `from` and `to` (the CRLF ending the last header).
/// With `lenient`, malformed lines are skipped instead of failing, which is how a
/// 400 can still be addressed to the sender of a broken request.
fn parse_headers(
    data: &Bytes,
    from: usize,
    to: usize,
    lenient: bool,
) -> Result<Headers, ParseError> {
    let mut headers = Headers::with_capacity(16);
    let section = data.slice(from..to);
    let mut lines: Vec<(usize, usize)> = Vec::with_capacity(16);
    let mut i = 0;
    while i < section.len() {
        let end = find_crlf(&section, i).unwrap_or(section.len());
        lines.push((i, end));
        i = end + 2;
    }
    let mut idx = 0;
    while idx < lines.len() {
        let (ls, le) = lines[idx];
        let line = &section[ls..le];
        idx += 1;
        if line.is_empty() {
            continue;
        }
        if scan::is_ws(line[0]) {
            // A continuation with no header to continue: RFC 4475 §3.1.2.9 wants 400.
            if lenient {
                continue;
            }
            return Err(ParseError::HeaderLine);
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            if lenient {
                continue;
            }
            return Err(ParseError::HeaderLine);
        };
        let (ns, ne) = scan::trim(&line[..colon]);
        let name = &line[ns..ne];
        if name.is_empty() || !name.iter().all(|c| scan::is_token_char(*c)) {
            if lenient {
                continue;
            }
            return Err(ParseError::HeaderName);
        }
        // Gather continuation lines.
        let mut cont_end = idx;
        while cont_end < lines.len() {
            let (cs, ce) = lines[cont_end];
            if ce > cs && scan::is_ws(section[cs]) {
                cont_end += 1;
            } else {
                break;
            }
        }
        let first = &line[colon + 1..];
        let value = if cont_end == idx {
            let (vs, ve) = scan::trim(first);
            section.slice(ls + colon + 1 + vs..ls + colon + 1 + ve)
        } else {
            let mut v = BytesMut::with_capacity(le - ls + 64);
            let push = |seg: &[u8], v: &mut BytesMut| {
                let (s, e) = scan::trim(seg);
                if e > s {
                    if !v.is_empty() {
                        v.extend_from_slice(b" ");
                    }
                    v.extend_from_slice(&seg[s..e]);
                }
            };
            push(first, &mut v);
            for &(cs, ce) in &lines[idx..cont_end] {
                push(&section[cs..ce], &mut v);
            }
            v.freeze()
        };
        idx = cont_end;
        headers.push(Header {
            kind: HeaderName::classify(name),
            name: section.slice(ls + ns..ls + ne),
            value,
        });
    }
    Ok(headers)
}

/// What can be recovered from a message that failed to parse: whether it looks like
/// a request and the headers needed to address an error response.
#[derive(Debug, Clone)]
pub struct Salvaged {
    pub is_request: bool,
    pub headers: Headers,
}

/// Best-effort header recovery for a message `parse_message` rejected, so a request
/// with (say) a bad Request-URI still gets its 400 instead of silence.
pub fn salvage(data: &Bytes) -> Option<Salvaged> {
    let mut start = 0;
    while data.len() >= start + 2 && &data[start..start + 2] == b"\r\n" {
        start += 2;
    }
    let data = data.slice(start..);
    let line_end = find_crlf(&data, 0)?;
    let hdr_end = find_header_end(&data).map(|e| e - 2).unwrap_or(data.len());
    if hdr_end < line_end + 2 {
        return None;
    }
    let headers = parse_headers(&data, line_end + 2, hdr_end, true).ok()?;
    Some(Salvaged {
        is_request: !data.starts_with(b"SIP/"),
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The memchr line finders find what comparing every window of bytes finds,
        /// stray '\r' and '\n' included.
        #[test]
        fn line_finders_agree_with_byte_windows(
            parts in prop::collection::vec(prop::sample::select(vec!["\r", "\n", "\r\n", "a", ":"]), 0..24),
            from in 0usize..8,
        ) {
            let b = parts.concat().into_bytes();
            let crlf = b.get(from..).and_then(|t| t.windows(2).position(|w| w == b"\r\n")).map(|p| p + from);
            prop_assert_eq!(find_crlf(&b, from), crlf);
            let end = b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
            prop_assert_eq!(find_header_end(&b), end);
        }
    }

    fn req(s: &str) -> Request {
        match parse_message(Bytes::from(s.to_string())).unwrap() {
            Message::Request(r) => r,
            Message::Response(_) => panic!("expected a request"),
        }
    }

    const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.com>\r\n\
From: Alice <sip:alice@example.org>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.org\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@192.0.2.1>\r\n\
X-Odd:   keep  me \r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\r\nEXTRA";

    #[test]
    fn parses_an_invite_zero_copy() {
        let r = req(INVITE);
        assert_eq!(r.method, Method::Invite);
        assert_eq!(&r.body[..], b"v=0\r");
        assert_eq!(r.headers.cseq().unwrap().seq, 314159);
        assert_eq!(r.headers.from_addr().unwrap().tag(), Some("1928301774"));
        assert_eq!(&r.headers.get_named("x-odd").unwrap()[..], b"keep  me");
        assert_eq!(
            r.headers.top_via().unwrap().branch(),
            Some("z9hG4bK776asdhds")
        );
    }

    #[test]
    fn encode_then_parse_round_trips() {
        let r = req(INVITE);
        let again = req(std::str::from_utf8(&r.encode()).unwrap());
        assert_eq!(r, again);
    }

    #[test]
    fn folded_and_compact_headers() {
        let r = req("OPTIONS sip:x@example.com SIP/2.0\r\nv: SIP/2.0/UDP h;\r\n branch=z9hG4bK1\r\ni: abc\r\nf: <sip:a@b>;tag=1\r\nt: <sip:x@example.com>\r\nCSeq: 1\r\n  OPTIONS\r\nl: 0\r\n\r\n");
        assert_eq!(&r.headers.call_id().unwrap()[..], b"abc");
        assert_eq!(r.headers.top_via().unwrap().branch(), Some("z9hG4bK1"));
        assert_eq!(r.headers.cseq().unwrap().method, Method::Options);
    }

    #[test]
    fn responses_with_empty_or_utf8_reason() {
        let m = parse_message(Bytes::from_static(b"SIP/2.0 100 \r\nl: 0\r\n\r\n")).unwrap();
        assert!(matches!(m, Message::Response(ref r) if r.status == 100 && r.reason.is_empty()));
        let m = parse_message(Bytes::from("SIP/2.0 200 \u{43e}\u{43a}\r\nl: 0\r\n\r\n")).unwrap();
        assert!(matches!(m, Message::Response(ref r) if r.status == 200));
        assert!(parse_message(Bytes::from_static(b"SIP/2.0 700 Big\r\nl: 0\r\n\r\n")).is_err());
        assert!(parse_message(Bytes::from_static(b"SIP/2.0 20 X\r\nl: 0\r\n\r\n")).is_err());
    }

    #[test]
    fn framing_errors() {
        assert_eq!(
            parse_message(Bytes::from_static(
                b"INVITE sip:a@b SIP/2.0\r\nl: 10\r\n\r\nabc"
            )),
            Err(ParseError::BodyTruncated {
                declared: 10,
                available: 3
            })
        );
        assert_eq!(
            parse_message(Bytes::from_static(
                b"INVITE sip:a@b SIP/2.0\r\nl: -1\r\n\r\n"
            )),
            Err(ParseError::ContentLength)
        );
        assert_eq!(
            parse_message(Bytes::from_static(b"INVITE sip:a@b SIP/2.0\r\nl: 1")),
            Err(ParseError::Incomplete)
        );
        assert!(parse_message(Bytes::from_static(b"INVITE  sip:a@b SIP/2.0\r\n\r\n")).is_err());
        assert!(parse_message(Bytes::from_static(
            b"INVITE sip:a@b SIP/2.0\r\n bad\r\n\r\n"
        ))
        .is_err());
        assert!(parse_message(Bytes::from_static(
            b"INVITE sip:a@b SIP/2.0\r\nNo colon\r\n\r\n"
        ))
        .is_err());
    }

    #[test]
    fn salvage_recovers_headers_of_a_bad_request() {
        let raw = Bytes::from_static(
            b"INVITE <sip:a@b> SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCall-ID: x\r\n\r\n",
        );
        assert!(parse_message(raw.clone()).is_err());
        let s = salvage(&raw).unwrap();
        assert!(s.is_request);
        assert_eq!(&s.headers.call_id().unwrap()[..], b"x");
    }
}
