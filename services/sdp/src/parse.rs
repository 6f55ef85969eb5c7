//! The line grammar of RFC 8866 §5 and the few field grammars the rewrite needs
//! (`o=`, `m=`, `c=`, `a=rtcp`). Everything else is kept as opaque bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smallvec::SmallVec;

use crate::{Eol, Line, Sdp, SdpError, Value};

/// Parses an SDP body. Accepts CRLF and bare LF line endings (remembered per line), a
/// last line without an ending, and blank line endings after the last line. Rejects a
/// body that does not start with `v=0`, any line not of the form `<letter>=<value>`,
/// values with NUL or a lone CR, a second `v=`, `o=` or `s=`, `o=`/`s=` inside a media
/// section, a missing `o=` or `s=`, an `o=` without six fields and a numeric version,
/// and an `m=` without media, numeric port and protocol. Values need not be UTF-8.
pub fn parse(data: &[u8]) -> Result<Sdp, SdpError> {
    if data.is_empty() {
        return Err(SdpError::Empty);
    }
    let mut lines: Vec<Line> = Vec::new();
    let mut trailer = Vec::new();
    let mut pos = 0;
    let mut lineno = 0;
    let mut in_media = false;
    let (mut seen_o, mut seen_s) = (false, false);
    while pos < data.len() {
        lineno += 1;
        let rest = &data[pos..];
        let (content, eol, used) = match memchr::memchr(b'\n', rest) {
            Some(i) if i > 0 && rest[i - 1] == b'\r' => (&rest[..i - 1], Eol::CrLf, i + 1),
            Some(i) => (&rest[..i], Eol::Lf, i + 1),
            None => (rest, Eol::None, rest.len()),
        };
        if content.is_empty() && !lines.is_empty() && only_line_endings(rest) {
            trailer = rest.to_vec();
            break;
        }
        let line = lineno;
        let err = |reason| SdpError::Line { line, reason };
        if content.len() < 2 || !content[0].is_ascii_alphabetic() || content[1] != b'=' {
            if lines.is_empty() {
                return Err(SdpError::NotSdp);
            }
            return Err(err("not of the form <letter>=<value>"));
        }
        let kind = content[0];
        let value = &content[2..];
        if memchr::memchr2(b'\r', 0, value).is_some() {
            return Err(err("value contains CR or NUL"));
        }
        if lines.is_empty() {
            if kind != b'v' || value != b"0" {
                return Err(SdpError::NotSdp);
            }
        } else {
            match kind {
                b'v' => return Err(err("second v= line")),
                b'o' | b's' if in_media => return Err(err("o= or s= inside a media section")),
                b'o' if seen_o => return Err(err("second o= line")),
                b's' if seen_s => return Err(err("second s= line")),
                b'o' => {
                    check_origin(value).map_err(err)?;
                    seen_o = true;
                }
                b's' => seen_s = true,
                b'm' => {
                    m_port(value).map_err(err)?;
                    in_media = true;
                }
                _ => {}
            }
        }
        lines.push(Line {
            kind,
            value: Value::from_slice(value),
            eol,
        });
        pos += used;
    }
    if !seen_o {
        return Err(SdpError::MissingOrigin);
    }
    if !seen_s {
        return Err(SdpError::MissingSessionName);
    }
    Ok(Sdp { lines, trailer })
}

/// Whether `rest` is nothing but blank line endings (CR LF or LF).
fn only_line_endings(rest: &[u8]) -> bool {
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            b'\n' => i += 1,
            b'\r' if rest.get(i + 1) == Some(&b'\n') => i += 2,
            _ => return false,
        }
    }
    true
}

/// Field spans of one line; an `o=` has six, an `m=` line rarely more than ten.
pub(crate) type Tokens = SmallVec<[(usize, usize); 10]>;

/// Byte spans of the space-separated fields of a value (runs of spaces are tolerated
/// so that a rewrite can splice one field and leave the spacing as it was).
pub(crate) fn tokens(v: &[u8]) -> Tokens {
    let mut out = Tokens::new();
    let mut start = None;
    for (i, &b) in v.iter().enumerate() {
        match (b == b' ', start) {
            (true, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, v.len()));
    }
    out
}

fn is_digits(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(u8::is_ascii_digit)
}

fn parse_u16(b: &[u8]) -> Option<u16> {
    if !is_digits(b) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>`: we
/// need the version (to bump it) and the address fields (to replace them).
fn check_origin(v: &[u8]) -> Result<(), &'static str> {
    let t = tokens(v);
    if t.len() != 6 {
        return Err("o= needs six fields");
    }
    let (s, e) = t[2];
    if !is_digits(&v[s..e]) {
        return Err("o= session version is not a number");
    }
    Ok(())
}

/// The fields of an `m=` line.
pub(crate) struct MLine {
    pub kind: String,
    pub port: u16,
    pub port_count: Option<u16>,
    pub proto: String,
    pub formats: Vec<String>,
}

/// The byte span of an `m=` line's port digits (what the rewrite replaces), without
/// building the rest of [`MLine`].
pub(crate) fn m_port_span(v: &[u8]) -> Option<(usize, usize)> {
    let t = tokens(v);
    let &(ps, pe) = t.get(1)?;
    if t.len() < 3 {
        return None;
    }
    let digits = v[ps..pe].iter().take_while(|&&b| b != b'/').count();
    parse_u16(&v[ps..ps + digits])?;
    Some((ps, ps + digits))
}

/// `m=<media> <port>[/<number of ports>] <proto> <fmt> ...`. Formats may be missing
/// (seen from real stacks for disabled streams), so they are not required.
pub(crate) fn parse_m(v: &[u8]) -> Result<MLine, &'static str> {
    let t = tokens(v);
    let (port, port_count) = m_port_fields(v, &t)?;
    let text = |(s, e): (usize, usize)| String::from_utf8_lossy(&v[s..e]).into_owned();
    Ok(MLine {
        kind: text(t[0]),
        port,
        port_count,
        proto: text(t[2]),
        formats: t[3..].iter().map(|&s| text(s)).collect(),
    })
}

/// The port of an `m=` line, checked as [`parse_m`] checks the line but without
/// building its fields as strings: parsing and the rewrite only need to know that the
/// line is sound and whether its port is 0.
pub(crate) fn m_port(v: &[u8]) -> Result<u16, &'static str> {
    m_port_fields(v, &tokens(v)).map(|(port, _)| port)
}

/// Port and port count of an `m=` line split into `t`; the checks every reader of an
/// m-line shares.
fn m_port_fields(v: &[u8], t: &[(usize, usize)]) -> Result<(u16, Option<u16>), &'static str> {
    if t.len() < 3 {
        return Err("m= needs media, port and protocol");
    }
    let (ps, pe) = t[1];
    let port_field = &v[ps..pe];
    let (port_bytes, count) = match memchr::memchr(b'/', port_field) {
        Some(i) => (&port_field[..i], Some(&port_field[i + 1..])),
        None => (port_field, None),
    };
    let port = parse_u16(port_bytes).ok_or("m= port is not a number 0-65535")?;
    let port_count = match count {
        Some(c) => Some(parse_u16(c).ok_or("m= port count is not a number 0-65535")?),
        None => None,
    };
    Ok((port, port_count))
}

/// `<nettype> <addrtype> <address>[/...]` as in `c=` and `a=rtcp`: the address if it
/// is an IP literal of the named type.
pub(crate) fn parse_addr(v: &[u8], t: &[(usize, usize)]) -> Option<IpAddr> {
    let [net, ty, addr] = t else { return None };
    if !v[net.0..net.1].eq_ignore_ascii_case(b"IN") {
        return None;
    }
    let addr = &v[addr.0..addr.1];
    let addr = addr.split(|&b| b == b'/').next()?;
    let addr = std::str::from_utf8(addr).ok()?;
    let ty = &v[ty.0..ty.1];
    if ty.eq_ignore_ascii_case(b"IP4") {
        addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    } else if ty.eq_ignore_ascii_case(b"IP6") {
        addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        None
    }
}

/// The address of a `c=` value, if it is an IP literal.
pub(crate) fn parse_c(v: &[u8]) -> Option<IpAddr> {
    let t = tokens(v);
    parse_addr(v, t.get(..3)?)
}

/// Splits an attribute value into name and (after the first colon) value.
pub(crate) fn attr(v: &[u8]) -> (&[u8], Option<&[u8]>) {
    match v.iter().position(|&b| b == b':') {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    }
}

/// `a=rtcp:<port> [<nettype> <addrtype> <address>]` (RFC 3605).
pub(crate) fn parse_rtcp(v: &[u8]) -> Option<(u16, Option<IpAddr>)> {
    let t = tokens(v);
    let (s, e) = *t.first()?;
    let port = parse_u16(&v[s..e])?;
    let addr = match t.len() {
        1 => None,
        4 => Some(parse_addr(v, &t[1..])?),
        _ => return None,
    };
    Some((port, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_err(data: &[u8]) -> (usize, &'static str) {
        match parse(data) {
            Err(SdpError::Line { line, reason }) => (line, reason),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    const MIN: &[u8] = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n";

    #[test]
    fn minimal_round_trips() {
        let sdp = parse(MIN).unwrap();
        assert_eq!(sdp.to_bytes(), MIN);
        assert_eq!(sdp.origin_version(), Some(1));
        assert!(sdp.media().is_empty());
    }

    #[test]
    fn rejects_what_is_not_sdp() {
        assert_eq!(parse(b""), Err(SdpError::Empty));
        assert_eq!(parse(b"o=x\r\n"), Err(SdpError::NotSdp));
        assert_eq!(parse(b"v=1\r\n"), Err(SdpError::NotSdp));
        assert_eq!(parse(b"\r\nv=0\r\n"), Err(SdpError::NotSdp));
        assert_eq!(parse(b"hello"), Err(SdpError::NotSdp));
        assert_eq!(parse(b"v=0\r\ns=-\r\n"), Err(SdpError::MissingOrigin));
        assert_eq!(
            parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"),
            Err(SdpError::MissingSessionName)
        );
    }

    #[test]
    fn names_the_bad_line() {
        let mut d = MIN.to_vec();
        d.extend_from_slice(b"t=0 0\r\nbogus\r\n");
        assert_eq!(line_err(&d).0, 5);
        let mut d = MIN.to_vec();
        d.extend_from_slice(b"m=audio 70000 RTP/AVP 0\r\n");
        assert_eq!(line_err(&d), (4, "m= port is not a number 0-65535"));
        let mut d = MIN.to_vec();
        d.extend_from_slice(b"m=audio +5 RTP/AVP 0\r\n");
        assert_eq!(line_err(&d).0, 4);
        let mut d = MIN.to_vec();
        d.extend_from_slice(b"m=audio 5000\r\n");
        assert_eq!(line_err(&d).0, 4);
        let mut d = MIN.to_vec();
        d.extend_from_slice(b"m=audio 5000 RTP/AVP 0\r\ns=again\r\n");
        assert_eq!(line_err(&d).0, 5);
        assert_eq!(line_err(b"v=0\r\no=- 1 x IN IP4 a\r\ns=-\r\n").0, 2);
        assert_eq!(line_err(b"v=0\r\no=- 1 1 IN IP4\r\ns=-\r\n").0, 2);
        assert_eq!(line_err(b"v=0\r\no=- 1 1 IN IP4 a\r\ns=\r-\r\n").0, 3);
        assert_eq!(line_err(b"v=0\r\nv=0\r\n").0, 2);
        // A blank line in the middle is not a trailer.
        assert_eq!(line_err(b"v=0\r\n\r\no=- 1 1 IN IP4 a\r\ns=-\r\n").0, 2);
        let e = parse(b"v=0\r\nxx\r\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "SDP line 2: not of the form <letter>=<value>"
        );
    }

    #[test]
    fn keeps_mixed_endings_trailer_and_non_utf8() {
        let data = b"v=0\no=- 1 1 IN IP4 192.0.2.1\r\ns=\xff\xfe\ni=x\r\n\r\n\n";
        let sdp = parse(data).unwrap();
        assert_eq!(sdp.to_bytes(), data);
        let data = b"v=0\no=- 1 1 IN IP4 192.0.2.1\r\ns=-";
        assert_eq!(parse(data).unwrap().to_bytes(), data);
    }

    #[test]
    fn field_grammars() {
        assert_eq!(tokens(b" a  bb c ")[..], [(1, 2), (4, 6), (7, 8)]);
        let m = parse_m(b"video 49170/2 RTP/AVP 31 32").unwrap();
        assert_eq!((m.port, m.port_count), (49170, Some(2)));
        assert_eq!(m_port_span(b"video 49170/2 RTP/AVP 31 32"), Some((6, 11)));
        assert_eq!(m_port_span(b"audio 4000 RTP/AVP 0"), Some((6, 10)));
        assert_eq!(m_port_span(b"audio x RTP/AVP 0"), None);
        assert_eq!(m_port_span(b"audio 4000"), None);
        assert_eq!(m.formats, vec!["31", "32"]);
        assert_eq!(
            parse_c(b"IN IP4 233.252.0.1/127"),
            Some("233.252.0.1".parse().unwrap())
        );
        assert_eq!(
            parse_c(b"IN IP6 2001:db8::1"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(parse_c(b"IN IP4 2001:db8::1"), None);
        assert_eq!(parse_c(b"IN IP4 host.example.com"), None);
        assert_eq!(parse_rtcp(b"53020"), Some((53020, None)));
        assert_eq!(
            parse_rtcp(b"53020 IN IP4 192.0.2.1"),
            Some((53020, Some("192.0.2.1".parse().unwrap())))
        );
        assert_eq!(parse_rtcp(b"x"), None);
        assert_eq!(
            attr(b"rtpmap:0 PCMU/8000"),
            (&b"rtpmap"[..], Some(&b"0 PCMU/8000"[..]))
        );
        assert_eq!(attr(b"sendonly"), (&b"sendonly"[..], None));
    }

    #[test]
    fn version_bump_is_decimal() {
        let mut sdp = parse(b"v=0\r\no=- 1 99 IN IP4 192.0.2.1\r\ns=-\r\n").unwrap();
        sdp.bump_version();
        assert_eq!(sdp.origin_version(), Some(100));
        let mut sdp =
            parse(b"v=0\r\no=- 1 18446744073709551615 IN IP4 192.0.2.1\r\ns=-\r\n").unwrap();
        sdp.bump_version();
        assert_eq!(sdp.origin_version(), None);
        assert!(sdp
            .to_bytes()
            .windows(20)
            .any(|w| w == b"18446744073709551616"));
    }
}
