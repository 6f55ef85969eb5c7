//! Reading the media sections and the anchoring rewrite (RFC 3264 offer/answer with
//! the relay in the middle).

use std::net::{IpAddr, Ipv4Addr};

use crate::parse::{attr, m_port, m_port_span, parse_c, parse_m, parse_rtcp, tokens};
use crate::{AnchorOptions, Direction, Eol, Line, MediaInfo, MediaPlan, Sdp, Value};

/// ICE attributes (RFC 8445/8839, and trickle's RFC 8840): they describe addresses
/// the relay hides, so they go unless the caller passes ICE through.
const ICE_ATTRIBUTES: &[&[u8]] = &[
    b"candidate",
    b"ice-ufrag",
    b"ice-pwd",
    b"ice-options",
    b"end-of-candidates",
    b"remote-candidates",
    b"ice-lite",
    b"ice-mismatch",
    b"ice-pacing",
];

fn attr_name(line: &Line) -> Option<&[u8]> {
    (line.kind == b'a').then(|| attr(&line.value).0)
}

fn is_attr(line: &Line, name: &[u8]) -> bool {
    attr_name(line).is_some_and(|n| n.eq_ignore_ascii_case(name))
}

fn is_ice(line: &Line) -> bool {
    attr_name(line).is_some_and(|n| ICE_ATTRIBUTES.iter().any(|i| n.eq_ignore_ascii_case(i)))
}

fn direction(lines: &[Line]) -> Option<Direction> {
    lines.iter().find_map(|l| {
        let name = attr_name(l)?;
        [
            (&b"sendrecv"[..], Direction::SendRecv),
            (b"sendonly", Direction::SendOnly),
            (b"recvonly", Direction::RecvOnly),
            (b"inactive", Direction::Inactive),
        ]
        .into_iter()
        .find(|(n, _)| name.eq_ignore_ascii_case(n))
        .map(|(_, d)| d)
    })
}

fn is_zero(addr: Option<IpAddr>) -> bool {
    addr == Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Where the session part ends and each media section (from its m-line to the next)
/// lies, as index ranges into `sdp.lines`.
fn layout(sdp: &Sdp) -> (usize, Vec<(usize, usize)>) {
    let starts: Vec<usize> = (0..sdp.lines.len())
        .filter(|&i| sdp.lines[i].kind == b'm')
        .collect();
    let session_end = starts.first().copied().unwrap_or(sdp.lines.len());
    let mut sections = Vec::with_capacity(starts.len());
    for (n, &s) in starts.iter().enumerate() {
        let e = starts.get(n + 1).copied().unwrap_or(sdp.lines.len());
        sections.push((s, e));
    }
    (session_end, sections)
}

pub(crate) fn media(sdp: &Sdp) -> Vec<MediaInfo> {
    let (session_end, sections) = layout(sdp);
    let session = &sdp.lines[..session_end];
    let session_c = session.iter().find(|l| l.kind == b'c');
    let session_ice = session.iter().any(is_ice);
    let session_dir = direction(session);
    let mut out = Vec::with_capacity(sections.len());
    for (index, &(s, e)) in sections.iter().enumerate() {
        let sec = &sdp.lines[s..e];
        // parse() validated every m-line; a failure here cannot happen, but a bad
        // m-line is skipped rather than panicking.
        let Ok(m) = parse_m(&sec[0].value) else {
            continue;
        };
        let c_line = sec.iter().find(|l| l.kind == b'c').or(session_c);
        let connection = c_line.and_then(|l| parse_c(&l.value));
        let rtcp = sec
            .iter()
            .find(|l| is_attr(l, b"rtcp"))
            .and_then(|l| parse_rtcp(attr(&l.value).1.unwrap_or_default()));
        out.push(MediaInfo {
            index,
            kind: m.kind,
            port: m.port,
            port_count: m.port_count,
            proto: m.proto,
            formats: m.formats,
            connection,
            hold_zero_address: is_zero(connection),
            rtcp,
            rtcp_mux: sec.iter().any(|l| is_attr(l, b"rtcp-mux")),
            direction: direction(sec)
                .or_else(|| session_dir.clone())
                .unwrap_or(Direction::SendRecv),
            has_ice: session_ice || sec.iter().any(is_ice),
            rejected: m.port == 0,
        });
    }
    out
}

/// What the rewrite needs to know of one media section: [`MediaInfo::rejected`] and
/// [`MediaInfo::hold_zero_address`] as [`media`] reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SectionFlags {
    rejected: bool,
    hold_zero_address: bool,
}

/// [`SectionFlags`] of each section (`None` for an m-line [`media`] skips), read without
/// building each section's [`MediaInfo`], whose kind, protocol and formats are strings:
/// the relay has read those already, and building them again was a fifth of a rewrite.
fn section_flags(
    sdp: &Sdp,
    session_end: usize,
    sections: &[(usize, usize)],
) -> Vec<Option<SectionFlags>> {
    let session_c = sdp.lines[..session_end].iter().find(|l| l.kind == b'c');
    sections
        .iter()
        .map(|&(s, e)| {
            let sec = &sdp.lines[s..e];
            let port = m_port(&sec[0].value).ok()?;
            let c_line = sec.iter().find(|l| l.kind == b'c').or(session_c);
            Some(SectionFlags {
                rejected: port == 0,
                hold_zero_address: is_zero(c_line.and_then(|l| parse_c(&l.value))),
            })
        })
        .collect()
}

/// `IN IP4 <addr>` / `IN IP6 <addr>`, as in `c=` and the tail of `a=rtcp`.
fn net_addr(addr: IpAddr) -> Value {
    let mut out = Value::new();
    out.extend_from_slice(if addr.is_ipv4() {
        b"IN IP4 "
    } else {
        b"IN IP6 "
    });
    push_addr(&mut out, addr);
    out
}

/// Appends an address as text; IPv4 digit by digit (no formatter, no allocation).
fn push_addr(out: &mut Value, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => {
            for (i, octet) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(out, octet.into());
            }
        }
        IpAddr::V6(a) => out.extend_from_slice(a.to_string().as_bytes()),
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Value, n: u32) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Builds the rewritten line list, remembering which ending new lines should use.
struct Out {
    lines: Vec<Line>,
    default_eol: Eol,
}

impl Out {
    fn keep(&mut self, l: &Line) {
        self.lines.push(l.clone());
    }

    fn with_value(&mut self, l: &Line, value: Value) {
        self.lines.push(Line {
            kind: l.kind,
            value,
            eol: l.eol,
        });
    }

    /// Appends a line that was not in the input: it ends like the line before it, and
    /// if that was the unterminated last line, that one gets the body's usual ending.
    fn add(&mut self, kind: u8, value: Value) {
        let mut eol = self.default_eol;
        if let Some(prev) = self.lines.last_mut() {
            eol = prev.eol;
            if prev.eol == Eol::None {
                prev.eol = self.default_eol;
            }
        }
        self.lines.push(Line { kind, value, eol });
    }
}

fn splice(v: &[u8], (s, e): (usize, usize), with: &[u8]) -> Value {
    let mut out = Value::with_capacity(v.len() + with.len());
    out.extend_from_slice(&v[..s]);
    out.extend_from_slice(with);
    out.extend_from_slice(&v[e..]);
    out
}

fn origin_with(v: &[u8], addr: IpAddr) -> Value {
    let t = tokens(v);
    let [.., ty, a] = t[..] else {
        return Value::from_slice(v);
    };
    let ty_text: &[u8] = if addr.is_ipv4() { b"IP4" } else { b"IP6" };
    let mut out = Value::with_capacity(v.len() + 8);
    out.extend_from_slice(&v[..ty.0]);
    out.extend_from_slice(ty_text);
    out.extend_from_slice(&v[ty.1..a.0]);
    push_addr(&mut out, addr);
    out.extend_from_slice(&v[a.1..]);
    out
}

/// `rtcp:<port>`, keeping an address part as the relay's (or as it was, on a
/// `0.0.0.0` hold).
fn rtcp_with(v: &[u8], plan: &MediaPlan, hold: bool) -> Value {
    let mut out = rtcp_attribute(plan.rtcp_port);
    let value = attr(v).1.unwrap_or_default();
    let t = tokens(value);
    if let [(_, first_end), _, ..] = t[..] {
        if hold {
            out.extend_from_slice(&value[first_end..]);
        } else {
            out.push(b' ');
            out.extend_from_slice(&net_addr(plan.address));
        }
    }
    out
}

/// `rtcp:<port>`.
fn rtcp_attribute(port: u16) -> Value {
    let mut out = Value::from_slice(b"rtcp:");
    push_decimal(&mut out, port.into());
    out
}

pub(crate) fn anchor(sdp: &mut Sdp, plans: &[MediaPlan], opts: &AnchorOptions) -> bool {
    let (session_end, sections) = layout(sdp);
    let flags = section_flags(sdp, session_end, &sections);
    let mut chosen: Vec<Option<&MediaPlan>> = vec![None; sections.len()];
    for p in plans {
        let Some(Some(f)) = flags.get(p.index) else {
            continue;
        };
        if !f.rejected && chosen[p.index].is_none() {
            chosen[p.index] = Some(p);
        }
    }
    let primary = chosen.iter().flatten().next().copied();

    let default_eol = match sdp.lines.first().map(|l| l.eol) {
        Some(Eol::Lf) => Eol::Lf,
        _ => Eol::CrLf,
    };
    let mut out = Out {
        lines: Vec::with_capacity(sdp.lines.len() + 2 * sections.len()),
        default_eol,
    };

    for l in &sdp.lines[..session_end] {
        match (l.kind, primary) {
            (b'a', _) if !opts.keep_ice && is_ice(l) => {}
            (b'c', Some(p)) if opts.replace_session_connection && !is_zero(parse_c(&l.value)) => {
                out.with_value(l, net_addr(p.address));
            }
            (b'o', Some(p)) if opts.replace_origin => {
                out.with_value(l, origin_with(&l.value, p.address));
            }
            _ => out.keep(l),
        }
    }

    for (n, &(s, e)) in sections.iter().enumerate() {
        let sec = &sdp.lines[s..e];
        let (Some(plan), Some(Some(f))) = (chosen[n], flags.get(n)) else {
            sec.iter().for_each(|l| out.keep(l));
            continue;
        };
        let hold = f.hold_zero_address;
        let m = &sec[0];
        match m_port_span(&m.value) {
            Some(span) => {
                let mut port = Value::new();
                push_decimal(&mut port, plan.rtp_port.into());
                out.with_value(m, splice(&m.value, span, &port));
            }
            None => out.keep(m),
        }
        // RFC 8866 §5 order: m=, i=, c=; a new c= goes after the title lines.
        let mut rest = &sec[1..];
        while let Some((l, tail)) = rest.split_first() {
            if l.kind != b'i' {
                break;
            }
            out.keep(l);
            rest = tail;
        }
        if !hold && !sec.iter().any(|l| l.kind == b'c') {
            out.add(b'c', net_addr(plan.address));
        }
        let (mut saw_rtcp, mut saw_mux) = (false, false);
        for l in rest {
            if l.kind == b'c' {
                if hold {
                    out.keep(l);
                } else {
                    out.with_value(l, net_addr(plan.address));
                }
            } else if is_attr(l, b"rtcp") {
                saw_rtcp = true;
                out.with_value(l, rtcp_with(&l.value, plan, hold));
            } else if is_attr(l, b"rtcp-mux") {
                if plan.rtcp_mux {
                    saw_mux = true;
                    out.keep(l);
                }
            } else if !opts.keep_ice && is_ice(l) {
                // dropped: the relay's address replaces the candidates
            } else {
                out.keep(l);
            }
        }
        if !saw_rtcp && opts.add_rtcp_attribute {
            out.add(b'a', rtcp_attribute(plan.rtcp_port));
        }
        if plan.rtcp_mux && !saw_mux {
            out.add(b'a', Value::from_slice(b"rtcp-mux"));
        }
    }

    let changed = out.lines != sdp.lines;
    if changed {
        sdp.lines = out.lines;
        sdp.bump_version();
    }
    changed
}

#[cfg(test)]
mod tests {
    use crate::{parse, AnchorOptions, Direction, MediaPlan};
    use proptest::prelude::*;

    /// Media sections with and without their own `c=`, rejected or not, on hold with
    /// `0.0.0.0` or not, under a session `c=` or none.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let section = (
            prop::sample::select(vec!["0", "4000", "4000/2", "70000", "x"]),
            prop::sample::select(vec![
                "",
                "c=IN IP4 0.0.0.0\r\n",
                "c=IN IP4 192.0.2.7\r\n",
                "c=IN IP6 ::\r\n",
            ]),
        )
            .prop_map(|(port, c)| format!("m=audio {port} RTP/AVP 0\r\n{c}a=sendrecv\r\n"));
        (
            prop::sample::select(vec!["", "c=IN IP4 0.0.0.0\r\n", "c=IN IP4 192.0.2.1\r\n"]),
            prop::collection::vec(section, 0..4),
        )
            .prop_map(|(c, secs)| {
                format!(
                    "v=0\r\no=- 1 5 IN IP4 192.0.2.1\r\ns=-\r\n{c}t=0 0\r\n{}",
                    secs.concat()
                )
                .into_bytes()
            })
    }

    proptest! {
        /// The rewrite's own reading of each section agrees with what `media()` reports.
        #[test]
        fn section_flags_agree_with_media(b in body()) {
            let Ok(sdp) = parse(&b) else { return Ok(()) };
            let (session_end, sections) = super::layout(&sdp);
            let flags = super::section_flags(&sdp, session_end, &sections);
            let from_media: Vec<_> = (0..sections.len())
                .map(|i| {
                    sdp.media().into_iter().find(|m| m.index == i).map(|m| super::SectionFlags {
                        rejected: m.rejected,
                        hold_zero_address: m.hold_zero_address,
                    })
                })
                .collect();
            prop_assert_eq!(flags, from_media);
        }
    }

    const BODY: &[u8] = b"v=0\r\no=- 1 5 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 4000 RTP/AVP 0\r\nc=IN IP4 host.example.com\r\na=recvonly\r\n\
        m=video 0 RTP/AVP 96\r\n";

    fn plan(index: usize, rtp_port: u16) -> MediaPlan {
        MediaPlan {
            index,
            address: "203.0.113.1".parse().unwrap(),
            rtp_port,
            rtcp_port: rtp_port + 1,
            rtcp_mux: false,
        }
    }

    #[test]
    fn media_info_of_a_hostname_connection() {
        let m = parse(BODY).unwrap().media();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].connection, None);
        assert!(!m[0].hold_zero_address);
        assert_eq!(m[0].direction, Direction::RecvOnly);
        assert!(m[1].rejected);
        assert_eq!(m[1].connection, None);
    }

    #[test]
    fn plans_for_missing_or_rejected_lines_change_nothing() {
        let mut sdp = parse(BODY).unwrap();
        assert!(!sdp.anchor(&[plan(1, 30000), plan(7, 30002)], &AnchorOptions::default()));
        assert_eq!(sdp.to_bytes(), BODY);
        assert_eq!(sdp.origin_version(), Some(5));
    }

    #[test]
    fn first_of_two_plans_wins_and_version_bumps_once() {
        let mut sdp = parse(BODY).unwrap();
        assert!(sdp.anchor(&[plan(0, 30000), plan(0, 40000)], &AnchorOptions::default()));
        let m = sdp.media();
        assert_eq!(m[0].port, 30000);
        assert_eq!(m[0].connection, Some("203.0.113.1".parse().unwrap()));
        assert_eq!(m[0].rtcp, Some((30001, None)));
        assert_eq!(sdp.origin_version(), Some(6));
        assert!(!sdp.anchor(&[plan(0, 30000)], &AnchorOptions::default()));
        assert_eq!(sdp.origin_version(), Some(6));
        // New ports on a re-offer: changed again, one more bump.
        assert!(sdp.anchor(&[plan(0, 30010)], &AnchorOptions::default()));
        assert_eq!(sdp.origin_version(), Some(7));
    }
}
