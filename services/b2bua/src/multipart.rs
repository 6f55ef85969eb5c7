//! The SDP part of a `multipart/mixed` body (RFC 2046 §5.1, RFC 5621), so the media
//! of a SIP-I/SIP-T call (ITU-T Q.1912.5, RFC 3204: SDP beside a binary ISUP part)
//! can be anchored like a plain `application/sdp` one.
//!
//! Hand-written on purpose: MIME crates decode the parts into their own model and
//! write them out anew, so they cannot give back the other parts (binary ISUP, part
//! headers, preamble, epilogue) byte for byte. A carrier's ISUP must arrive exactly as
//! it was sent; this module only finds where the SDP part's content lies, and
//! [`splice`] puts the relay's rewrite there and leaves every other byte alone.
//!
//! Strict on purpose: whatever is not clearly one SDP part in a well-formed body
//! (missing close delimiter, two SDP parts, nested multiparts, an encoded SDP part...)
//! is an error, and the caller then sends the body as it came, un-anchored.

use bytes::{Bytes, BytesMut};
use std::ops::Range;
use trunkline_sip::scan::{self, is_ws, quoted_end};

/// Why the SDP of a multipart body cannot be located; the caller then sends the body
/// untouched (un-anchored) rather than risk corrupting a part it does not understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("Content-Type is not multipart/mixed")]
    NotMixed,
    #[error("Content-Type has no valid boundary parameter (RFC 2046 §5.1.1)")]
    Boundary,
    #[error("no delimiter line of the boundary in the body")]
    NoDelimiter,
    #[error("the body has no close delimiter (--boundary--)")]
    Unterminated,
    #[error("a part has malformed headers")]
    PartHeader,
    #[error("a part is itself multipart (nested multiparts are not anchored)")]
    Nested,
    #[error("no application/sdp part")]
    NoSdp,
    #[error("more than one application/sdp part")]
    ManySdp,
    #[error("the SDP part has a Content-Transfer-Encoding other than 7bit, 8bit or binary")]
    Encoding,
    #[error("the SDP part has its own Content-Length, which a rewrite would falsify")]
    PartLength,
    #[error("the SDP part is empty")]
    EmptySdp,
}

/// Longest boundary RFC 2046 §5.1.1 allows.
const MAX_BOUNDARY: usize = 70;

/// True when `content_type` (a Content-Type header value) names `multipart/mixed`:
/// the one multipart type whose SDP part the call anchors.
pub fn is_multipart_mixed(content_type: &[u8]) -> bool {
    media_type(content_type).eq_ignore_ascii_case(b"multipart/mixed")
}

/// The byte range, within `body`, of the content of the single `application/sdp`
/// part of a `multipart/mixed` body whose Content-Type header value is
/// `content_type`. The range excludes the part's headers and the CRLF that belongs to
/// the following delimiter, so replacing exactly that range rewrites the SDP and
/// nothing else.
pub fn sdp_part(content_type: &[u8], body: &[u8]) -> Result<Range<usize>, MultipartError> {
    if !is_multipart_mixed(content_type) {
        return Err(MultipartError::NotMixed);
    }
    let boundary = boundary(content_type)?;
    let mut dash = Vec::with_capacity(boundary.len() + 2);
    dash.extend_from_slice(b"--");
    dash.extend_from_slice(boundary);

    // The first delimiter may open the body; otherwise it follows a CRLF that ends
    // the preamble (RFC 2046 §5.1.1).
    let (mut next, mut close) = match delimiter_at(body, 0, &dash) {
        Some(d) => d,
        None => {
            let at = next_delimiter(body, 0, &dash).ok_or(MultipartError::NoDelimiter)?;
            (at.after, at.close)
        }
    };
    let mut sdp = None;
    let mut nested = false;
    let mut sdp_count = 0usize;
    while !close {
        let start = next;
        let end = next_delimiter(body, start, &dash).ok_or(MultipartError::Unterminated)?;
        let part = body
            .get(start..end.crlf)
            .ok_or(MultipartError::Unterminated)?;
        let info = inspect_part(part)?;
        match info.kind {
            PartKind::Sdp => {
                sdp_count += 1;
                if !info.identity_encoding {
                    return Err(MultipartError::Encoding);
                }
                if info.has_length {
                    return Err(MultipartError::PartLength);
                }
                sdp = Some(start + info.content.start..start + info.content.end);
            }
            PartKind::Multipart => nested = true,
            PartKind::Other => {}
        }
        next = end.after;
        close = end.close;
    }
    if nested {
        return Err(MultipartError::Nested);
    }
    match (sdp_count, sdp) {
        (1, Some(r)) if r.is_empty() => Err(MultipartError::EmptySdp),
        (1, Some(r)) => Ok(r),
        (0, _) => Err(MultipartError::NoSdp),
        _ => Err(MultipartError::ManySdp),
    }
}

/// `body` with the bytes in `range` replaced by `sdp`; every other byte is kept.
/// `None` when `range` does not lie within `body`.
pub fn splice(body: &[u8], range: Range<usize>, sdp: &[u8]) -> Option<Bytes> {
    let head = body.get(..range.start)?;
    let tail = body.get(range.end..)?;
    if range.start > range.end {
        return None;
    }
    let mut out = BytesMut::with_capacity(head.len() + sdp.len() + tail.len());
    out.extend_from_slice(head);
    out.extend_from_slice(sdp);
    out.extend_from_slice(tail);
    Some(out.freeze())
}

// ----- Content-Type ---------------------------------------------------------------

/// `b` without SP/HT at either end.
fn trim(b: &[u8]) -> &[u8] {
    let (s, e) = scan::trim(b);
    b.get(s..e).unwrap_or_default()
}

/// `type/subtype` of a Content-Type value, without parameters.
fn media_type(v: &[u8]) -> &[u8] {
    trim(v.split(|c| *c == b';').next().unwrap_or_default())
}

/// The boundary parameter of a multipart Content-Type value: parameter names are
/// case-insensitive, the value a token or a quoted string; quoted strings of other
/// parameters may hold `;`. Exactly one boundary, valid per RFC 2046 §5.1.1.
fn boundary(v: &[u8]) -> Result<&[u8], MultipartError> {
    let mut i = v
        .iter()
        .position(|c| *c == b';')
        .ok_or(MultipartError::Boundary)?;
    let mut found = None;
    while i < v.len() {
        // `v[i]` is ';': one parameter follows.
        let eq = match v[i + 1..].iter().position(|c| *c == b'=' || *c == b';') {
            Some(p) if v[i + 1 + p] == b'=' => i + 1 + p,
            Some(p) => {
                i += 1 + p;
                continue;
            }
            None => break,
        };
        let name = trim(&v[i + 1..eq]);
        let mut j = eq + 1;
        while j < v.len() && is_ws(v[j]) {
            j += 1;
        }
        let (value, after) = if v.get(j) == Some(&b'"') {
            let close = quoted_end(v, j).ok_or(MultipartError::Boundary)?;
            // Without the quotes; a boundary never needs an escape.
            (&v[j + 1..close - 1], close)
        } else {
            let end = v[j..]
                .iter()
                .position(|c| *c == b';')
                .map_or(v.len(), |p| j + p);
            (trim(&v[j..end]), end)
        };
        if name.eq_ignore_ascii_case(b"boundary") {
            if found.is_some() || value.contains(&b'\\') {
                return Err(MultipartError::Boundary);
            }
            found = Some(value);
        }
        // Skip to the next ';' (after a quoted value, only whitespace should remain).
        i = v[after..]
            .iter()
            .position(|c| *c == b';')
            .map_or(v.len(), |p| after + p);
    }
    let b = found.ok_or(MultipartError::Boundary)?;
    let valid = !b.is_empty()
        && b.len() <= MAX_BOUNDARY
        && b.last() != Some(&b' ')
        && b.iter().all(|c| is_bchar(*c));
    if valid {
        Ok(b)
    } else {
        Err(MultipartError::Boundary)
    }
}

/// `bchars` of RFC 2046 §5.1.1.
fn is_bchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c)
}

// ----- delimiters -----------------------------------------------------------------

/// A delimiter found in the body.
struct Delimiter {
    /// Where the CRLF before `--boundary` starts: the end of the preceding part.
    crlf: usize,
    /// Just past the delimiter line.
    after: usize,
    /// `--boundary--`: no part follows.
    close: bool,
}

/// When a delimiter line (`--boundary` + padding + CRLF, or the close delimiter
/// `--boundary--` + padding + CRLF or end of body) starts at `at`: the index just
/// past it and whether it closes the body.
fn delimiter_at(body: &[u8], at: usize, dash: &[u8]) -> Option<(usize, bool)> {
    if !body.get(at..)?.starts_with(dash) {
        return None;
    }
    let mut i = at + dash.len();
    let close = body.get(i..)?.starts_with(b"--");
    if close {
        i += 2;
    }
    while body.get(i).is_some_and(|c| is_ws(*c)) {
        i += 1;
    }
    if body.get(i..)?.starts_with(b"\r\n") {
        Some((i + 2, close))
    } else if close && i == body.len() {
        Some((i, true))
    } else {
        // `--boundary` followed by anything else is content, not a delimiter.
        None
    }
}

/// The first delimiter (CRLF `--boundary` ...) at or after `from`.
fn next_delimiter(body: &[u8], from: usize, dash: &[u8]) -> Option<Delimiter> {
    let mut i = from;
    loop {
        let crlf = i + find_crlf_dash(body.get(i..)?, dash)?;
        if let Some((after, close)) = delimiter_at(body, crlf + 2, dash) {
            return Some(Delimiter { crlf, after, close });
        }
        i = crlf + 1;
    }
}

/// Offset of the first CRLF immediately followed by `dash` in `hay`.
fn find_crlf_dash(hay: &[u8], dash: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 2 + dash.len() <= hay.len() {
        let rel = hay[i..].iter().position(|c| *c == b'\r')?;
        let at = i + rel;
        if hay.get(at + 1) == Some(&b'\n') && hay.get(at + 2..).is_some_and(|r| r.starts_with(dash))
        {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

// ----- parts ----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartKind {
    Sdp,
    Multipart,
    Other,
}

/// What the call needs to know about one part.
struct PartInfo {
    kind: PartKind,
    /// The content, relative to the part's start.
    content: Range<usize>,
    /// No Content-Transfer-Encoding, or 7bit/8bit/binary: the bytes are the SDP.
    identity_encoding: bool,
    has_length: bool,
}

/// Reads one part's headers (up to the empty line; folded lines allowed). A part
/// without Content-Type is text/plain (RFC 2045 §5.2).
fn inspect_part(part: &[u8]) -> Result<PartInfo, MultipartError> {
    let mut content_type: Option<Vec<u8>> = None;
    let mut encoding: Option<Vec<u8>> = None;
    let mut has_length = false;
    // Which header the last line belonged to (for folded continuation lines).
    let mut last: Option<Field> = None;
    let mut pos = 0;
    let content_start = loop {
        if pos >= part.len() {
            // Headers only, no content.
            break part.len();
        }
        let line_end = find_crlf(&part[pos..]).map_or(part.len(), |p| pos + p);
        let line = &part[pos..line_end];
        let next = (line_end + 2).min(part.len());
        if line.is_empty() {
            break next;
        }
        if line.first().is_some_and(|c| is_ws(*c)) {
            let target = match last {
                Some(Field::ContentType) => content_type.as_mut(),
                Some(Field::Encoding) => encoding.as_mut(),
                Some(Field::Other) => None,
                None => return Err(MultipartError::PartHeader),
            };
            if let Some(t) = target {
                t.push(b' ');
                t.extend_from_slice(trim(line));
            }
        } else {
            let colon = line
                .iter()
                .position(|c| *c == b':')
                .ok_or(MultipartError::PartHeader)?;
            let name = trim(&line[..colon]);
            if name.is_empty() || name.iter().any(|c| is_ws(*c)) {
                return Err(MultipartError::PartHeader);
            }
            let value = trim(&line[colon + 1..]).to_vec();
            let field = if name.eq_ignore_ascii_case(b"Content-Type") {
                if content_type.replace(value).is_some() {
                    return Err(MultipartError::PartHeader);
                }
                Field::ContentType
            } else if name.eq_ignore_ascii_case(b"Content-Transfer-Encoding") {
                if encoding.replace(value).is_some() {
                    return Err(MultipartError::PartHeader);
                }
                Field::Encoding
            } else {
                if name.eq_ignore_ascii_case(b"Content-Length") {
                    has_length = true;
                }
                Field::Other
            };
            last = Some(field);
        }
        pos = next;
    };
    let kind = match content_type.as_deref().map(media_type) {
        Some(t) if t.eq_ignore_ascii_case(b"application/sdp") => PartKind::Sdp,
        Some(t)
            if t.get(..10)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"multipart/")) =>
        {
            PartKind::Multipart
        }
        _ => PartKind::Other,
    };
    let identity_encoding = encoding.as_deref().map(trim).is_none_or(|e| {
        e.eq_ignore_ascii_case(b"7bit")
            || e.eq_ignore_ascii_case(b"8bit")
            || e.eq_ignore_ascii_case(b"binary")
    });
    Ok(PartInfo {
        kind,
        content: content_start..part.len(),
        identity_encoding,
        has_length,
    })
}

#[derive(Debug, Clone, Copy)]
enum Field {
    ContentType,
    Encoding,
    Other,
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CT: &[u8] = b"multipart/mixed;boundary=unique-boundary-1";

    const SDP: &[u8] = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n\
t=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

    /// An IAM-like ISUP payload: non-UTF-8 bytes, a lone CR, CRLFs and even
    /// `\r\n--` that is not followed by the boundary.
    const ISUP: &[u8] = b"\x01\x00\x49\x00\x00\x03\x02\x00\x07\x04\x10\x00\x33\x63\x21\x43\x00\
\xff\xfe\x80\r\n\r\n\x0d\x0a--unique\r\x00\x0a--unique-boundary-2\x00\xc3\x28";

    fn sip_i_body(sdp_first: bool, preamble: &[u8], epilogue: &[u8]) -> Vec<u8> {
        let sdp_part = [
            b"--unique-boundary-1\r\nContent-Type: application/sdp\r\n\r\n".as_slice(),
            SDP,
        ]
        .concat();
        let isup_part = [
            b"--unique-boundary-1\r\nContent-Type: application/ISUP;version=itu-t92+\r\n\
Content-Disposition: signal;handling=optional\r\n\r\n"
                .as_slice(),
            ISUP,
        ]
        .concat();
        let (first, second) = if sdp_first {
            (sdp_part, isup_part)
        } else {
            (isup_part, sdp_part)
        };
        [
            preamble,
            &first,
            b"\r\n",
            &second,
            b"\r\n--unique-boundary-1--",
            epilogue,
        ]
        .concat()
    }

    fn found(ct: &[u8], body: &[u8]) -> Result<Vec<u8>, MultipartError> {
        sdp_part(ct, body).map(|r| body[r].to_vec())
    }

    /// Splices a new SDP in and checks that only the SDP changed.
    fn assert_rewrites_only_the_sdp(ct: &[u8], body: &[u8]) {
        let r = sdp_part(ct, body).expect("an SDP part");
        let new_sdp = b"v=0\r\nc=IN IP4 198.51.100.77\r\nm=audio 30000 RTP/AVP 0\r\n";
        let out = splice(body, r.clone(), new_sdp).expect("range within the body");
        assert_eq!(&out[..r.start], &body[..r.start]);
        assert_eq!(&out[r.start + new_sdp.len()..], &body[r.end..]);
        assert_eq!(found(ct, &out).expect("still one SDP part"), new_sdp);
    }

    #[test]
    fn sip_i_invite_body_with_binary_isup() {
        let body = sip_i_body(true, b"", b"\r\n");
        assert_eq!(found(CT, &body).unwrap(), SDP);
        assert_rewrites_only_the_sdp(CT, &body);
        // The ISUP part, CRLF look-alikes and all, is kept byte for byte.
        let r = sdp_part(CT, &body).unwrap();
        let out = splice(&body, r, b"v=0\r\n").unwrap();
        assert!(out.windows(ISUP.len()).any(|w| w == ISUP));
    }

    #[test]
    fn parts_in_either_order() {
        for sdp_first in [true, false] {
            let body = sip_i_body(sdp_first, b"", b"");
            assert_eq!(found(CT, &body).unwrap(), SDP, "sdp_first={sdp_first}");
            assert_rewrites_only_the_sdp(CT, &body);
        }
    }

    #[test]
    fn quoted_boundary() {
        let body = sip_i_body(false, b"", b"");
        let ct = b"multipart/mixed; boundary=\"unique-boundary-1\"";
        assert_eq!(found(ct, &body).unwrap(), SDP);
    }

    #[test]
    fn boundary_with_space_and_specials_needs_quotes() {
        let ct = b"multipart/mixed; boundary=\"a b'()+_,-./:=?\"";
        let body = b"--a b'()+_,-./:=?\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n\
\r\n--a b'()+_,-./:=?--\r\n";
        assert_eq!(found(ct, body).unwrap(), b"v=0\r\n");
    }

    #[test]
    fn preamble_and_epilogue_are_kept() {
        let pre = b"This is a SIP-I message. Ignore me.\r\n\x00\xff\r\n";
        let epi = b"\r\nepilogue \xfe\xff with --unique-boundary-1 inside\r\n";
        let body = sip_i_body(true, pre, epi);
        assert_eq!(found(CT, &body).unwrap(), SDP);
        let r = sdp_part(CT, &body).unwrap();
        let out = splice(&body, r, b"v=0\r\n").unwrap();
        assert!(out.starts_with(pre));
        assert!(out.ends_with(epi));
        assert_rewrites_only_the_sdp(CT, &body);
    }

    #[test]
    fn content_type_params_and_case() {
        let body = sip_i_body(true, b"", b"");
        for ct in [
            &b"Multipart/Mixed; BOUNDARY=unique-boundary-1"[..],
            b"multipart/mixed ;charset=\"a;b\";  Boundary = unique-boundary-1 ; x=y",
            b"  MULTIPART/MIXED;bOuNdArY=\"unique-boundary-1\";foo",
            b"multipart/mixed;foo=\"x\\\"y;boundary=no\";boundary=unique-boundary-1",
        ] {
            assert_eq!(
                found(ct, &body).unwrap(),
                SDP,
                "{}",
                String::from_utf8_lossy(ct)
            );
        }
        // The boundary value itself is case-sensitive.
        assert_eq!(
            found(b"multipart/mixed;boundary=UNIQUE-boundary-1", &body),
            Err(MultipartError::NoDelimiter)
        );
        // Part media types are case-insensitive and may carry parameters.
        let body = b"--b\r\ncontent-type:  Application/SDP ; charset=utf-8\r\n\r\nv=0\r\n\
\r\n--b--";
        assert_eq!(
            found(b"multipart/mixed;boundary=b", body).unwrap(),
            b"v=0\r\n"
        );
    }

    #[test]
    fn other_multipart_types_and_single_parts_are_not_ours() {
        let body = sip_i_body(true, b"", b"");
        for ct in [
            &b"multipart/alternative;boundary=unique-boundary-1"[..],
            b"multipart/related;boundary=unique-boundary-1",
            b"application/sdp",
            b"multipart/mixedx;boundary=unique-boundary-1",
        ] {
            assert_eq!(found(ct, &body), Err(MultipartError::NotMixed));
        }
    }

    #[test]
    fn two_sdp_parts_find_none() {
        let body = b"--b\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n\r\n\
--b\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n\r\n--b--\r\n";
        assert_eq!(
            found(b"multipart/mixed;boundary=b", body),
            Err(MultipartError::ManySdp)
        );
    }

    #[test]
    fn no_sdp_part_finds_none() {
        let body = b"--b\r\nContent-Type: application/ISUP;version=itu-t92+\r\n\r\n\x01\x02\r\n\
--b\r\n\r\nv=0 a part without Content-Type is text/plain\r\n--b--";
        assert_eq!(
            found(b"multipart/mixed;boundary=b", body),
            Err(MultipartError::NoSdp)
        );
    }

    #[test]
    fn no_close_delimiter_finds_none() {
        let mut body = sip_i_body(true, b"", b"");
        body.truncate(body.len() - b"\r\n--unique-boundary-1--".len());
        assert_eq!(found(CT, &body), Err(MultipartError::Unterminated));
        // A close delimiter with junk on its line is no delimiter either.
        let mut body = sip_i_body(true, b"", b"");
        body.extend_from_slice(b"junk");
        assert_eq!(found(CT, &body), Err(MultipartError::Unterminated));
    }

    #[test]
    fn boundary_missing_or_invalid_finds_none() {
        let body = sip_i_body(true, b"", b"");
        for ct in [
            &b"multipart/mixed"[..],
            b"multipart/mixed;",
            b"multipart/mixed; charset=utf-8",
            b"multipart/mixed; boundary=",
            b"multipart/mixed; boundary=\"\"",
            b"multipart/mixed; boundary=\"unterminated",
            b"multipart/mixed; boundary=\"trailing space \"",
            b"multipart/mixed; boundary=\"esc\\aped\"",
            b"multipart/mixed; boundary=a; boundary=b",
            b"multipart/mixed; boundary=bad\x00char",
        ] {
            assert_eq!(
                found(ct, &body),
                Err(MultipartError::Boundary),
                "{}",
                String::from_utf8_lossy(ct)
            );
        }
        let long = format!("multipart/mixed;boundary={}", "x".repeat(71));
        assert_eq!(found(long.as_bytes(), &body), Err(MultipartError::Boundary));
    }

    #[test]
    fn boundary_absent_from_the_body_finds_none() {
        let body = sip_i_body(true, b"", b"");
        assert_eq!(
            found(b"multipart/mixed;boundary=other", &body),
            Err(MultipartError::NoDelimiter)
        );
        // A boundary that is only a prefix of the body's delimiters.
        assert_eq!(
            found(b"multipart/mixed;boundary=unique-boundary", &body),
            Err(MultipartError::NoDelimiter)
        );
    }

    #[test]
    fn encoded_sdp_part_is_refused() {
        let body = b"--b\r\nContent-Type: application/sdp\r\n\
Content-Transfer-Encoding: base64\r\n\r\ndj0wDQo=\r\n--b--";
        assert_eq!(
            found(b"multipart/mixed;boundary=b", body),
            Err(MultipartError::Encoding)
        );
        let body = b"--b\r\nContent-Type: application/sdp\r\n\
Content-Transfer-Encoding:  8BIT\r\n\r\nv=0\r\n\r\n--b--";
        assert_eq!(
            found(b"multipart/mixed;boundary=b", body).unwrap(),
            b"v=0\r\n"
        );
    }

    #[test]
    fn nested_multipart_is_refused() {
        let body = b"--b\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n\r\n\
--b\r\nContent-Type: multipart/mixed;boundary=c\r\n\r\n--c\r\nContent-Type: application/sdp\r\n\
\r\nv=0\r\n\r\n--c--\r\n--b--";
        assert_eq!(
            found(b"multipart/mixed;boundary=b", body),
            Err(MultipartError::Nested)
        );
    }

    #[test]
    fn part_content_length_and_malformed_headers_are_refused() {
        let body =
            b"--b\r\nContent-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n\r\n--b--";
        assert_eq!(
            found(b"multipart/mixed;boundary=b", body),
            Err(MultipartError::PartLength)
        );
        let body = b"--b\r\nv=0 without headers\r\n--b--";
        assert_eq!(
            found(b"multipart/mixed;boundary=b", body),
            Err(MultipartError::PartHeader)
        );
        let body =
            b"--b\r\nContent-Type: application/sdp\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--";
        assert_eq!(
            found(b"multipart/mixed;boundary=b", body),
            Err(MultipartError::PartHeader)
        );
    }

    #[test]
    fn folded_part_header_and_transport_padding() {
        let body = b"preamble\r\n--b  \r\nContent-Type:\r\n application/sdp\r\n\r\nv=0\r\n\
\r\n--b\t\r\nContent-Type: application/ISUP\r\n\r\n\x01\r\n--b--  \r\n";
        assert_eq!(
            found(b"multipart/mixed;boundary=b", body).unwrap(),
            b"v=0\r\n"
        );
    }

    #[test]
    fn empty_sdp_part_is_refused() {
        let body = b"--b\r\nContent-Type: application/sdp\r\n\r\n\r\n--b--";
        assert_eq!(
            found(b"multipart/mixed;boundary=b", body),
            Err(MultipartError::EmptySdp)
        );
        let body = b"--b\r\nContent-Type: application/sdp\r\n--b--";
        assert_eq!(
            found(b"multipart/mixed;boundary=b", body),
            Err(MultipartError::EmptySdp)
        );
    }

    #[test]
    fn splice_outside_the_body_is_none() {
        assert!(splice(b"abc", 2..4, b"x").is_none());
        assert!(splice(b"abc", 4..4, b"x").is_none());
        #[allow(clippy::reversed_empty_ranges)]
        let r = 2..1;
        assert!(splice(b"abc", r, b"x").is_none());
        assert_eq!(&splice(b"abc", 1..2, b"xyz").unwrap()[..], b"axyzc");
    }

    /// Bytes of a boundary (bchars, no trailing space).
    fn boundary_strategy() -> impl Strategy<Value = String> {
        "[A-Za-z0-9'()+_,./:=?-][A-Za-z0-9 '()+_,./:=?-]{0,30}[A-Za-z0-9'()+_,./:=?-]"
    }

    proptest! {
        #[test]
        fn splicing_the_sdp_back_gives_the_original_body(
            boundary in boundary_strategy(),
            quoted in any::<bool>(),
            preamble in proptest::collection::vec(any::<u8>(), 0..40),
            isup in proptest::collection::vec(any::<u8>(), 0..200),
            sdp in "v=0\r\n[ -~]{1,20}\r\n(c=IN IP4 [0-9.]{7,15}\r\n)?",
            sdp_first in any::<bool>(),
            epilogue in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let dash = format!("\r\n--{boundary}");
            // A boundary must not occur in the parts (RFC 2046 §5.1.1).
            let in_any = |b: &[u8]| b.windows(dash.len() - 2).any(|w| w == &dash.as_bytes()[2..]);
            prop_assume!(!in_any(&isup) && !in_any(&preamble) && !in_any(sdp.as_bytes()));
            let sdp_bytes = [format!("--{boundary}\r\nContent-Type: application/sdp\r\n\r\n").as_bytes(), sdp.as_bytes()].concat();
            let isup_part = [format!("--{boundary}\r\nContent-Type: application/ISUP;version=itu-t92+\r\n\r\n").as_bytes(), &isup].concat();
            let (first, second) = if sdp_first { (sdp_bytes, isup_part) } else { (isup_part, sdp_bytes) };
            let pre = if preamble.is_empty() { Vec::new() } else { [&preamble[..], b"\r\n"].concat() };
            // The epilogue follows the close delimiter's line.
            let epi = if epilogue.is_empty() { Vec::new() } else { [b"\r\n", &epilogue[..]].concat() };
            let body = [&pre[..], &first, b"\r\n", &second, format!("\r\n--{boundary}--").as_bytes(), &epi].concat();
            let ct = if quoted {
                format!("multipart/mixed; boundary=\"{boundary}\"")
            } else if boundary.contains(' ') {
                return Ok(());
            } else {
                format!("multipart/mixed;boundary={boundary}")
            };
            let r = sdp_part(ct.as_bytes(), &body).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert_eq!(&body[r.clone()], sdp.as_bytes());
            let same = splice(&body, r.clone(), &body[r.clone()]).expect("in range");
            prop_assert_eq!(&same[..], &body[..]);
            let other = splice(&body, r.clone(), b"v=0\r\nc=IN IP4 198.51.100.77\r\n").expect("in range");
            let r2 = sdp_part(ct.as_bytes(), &other).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert_eq!(&other[r2.clone()], b"v=0\r\nc=IN IP4 198.51.100.77\r\n");
            prop_assert_eq!(&other[..r2.start], &body[..r.start]);
            prop_assert_eq!(&other[r2.end..], &body[r.end..]);
        }

        #[test]
        fn arbitrary_input_never_panics(
            ct in proptest::collection::vec(any::<u8>(), 0..80),
            body in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let _ = sdp_part(&ct, &body);
            let _ = sdp_part(CT, &body);
        }

        #[test]
        fn mangled_multiparts_never_panic_and_ranges_stay_in_the_body(
            parts in proptest::collection::vec(
                (
                    prop_oneof![
                        Just(&b"Content-Type: application/sdp\r\n"[..]),
                        Just(&b"Content-Type: application/ISUP;version=itu-t92+\r\n"[..]),
                        Just(&b""[..]),
                        Just(&b"Content-Type: multipart/mixed;boundary=c\r\n"[..]),
                        Just(&b"Content-Type: application/sdp\r\nContent-Transfer-Encoding: binary\r\n"[..]),
                        Just(&b"Content-Type:\r\n\tapplication/sdp\r\n"[..]),
                    ],
                    proptest::collection::vec(
                        prop_oneof![
                            Just(b"--b".to_vec()),
                            Just(b"\r\n".to_vec()),
                            Just(b"v=0\r\n".to_vec()),
                            proptest::collection::vec(any::<u8>(), 0..8),
                        ],
                        0..6,
                    ),
                ),
                0..5,
            ),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
            flip in any::<Option<(prop::sample::Index, u8)>>(),
        ) {
            let mut body = Vec::new();
            for (headers, content) in &parts {
                body.extend_from_slice(b"--b\r\n");
                body.extend_from_slice(headers);
                body.extend_from_slice(b"\r\n");
                body.extend_from_slice(&content.concat());
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"--b--");
            if truncate {
                body.truncate(cut.index(body.len() + 1));
            }
            if let Some((at, byte)) = flip {
                if !body.is_empty() {
                    let i = at.index(body.len());
                    body[i] = byte;
                }
            }
            if let Ok(r) = sdp_part(b"multipart/mixed;boundary=b", &body) {
                prop_assert!(r.start < r.end && r.end <= body.len());
                let same = splice(&body, r.clone(), &body[r]).expect("in range");
                prop_assert_eq!(&same[..], &body[..]);
            }
        }
    }
}
