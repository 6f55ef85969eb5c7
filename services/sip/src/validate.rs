//! Semantic checks a border element applies to a parsed message before acting on it
//! (RFC 3261 §8.2, with the torture cases of RFC 4475).
//!
//! The parser only checks framing and syntax of the start line and header lines, so
//! a well-framed but invalid request can still be answered with the right status.
//! This module decides that status. Checks run in a fixed order and the first failure
//! wins: version (505), then structural errors (400), then the Request-URI scheme
//! (416), option tags (420), body type (415) and Accept (406), the same order
//! RFC 3261 §8.2 walks a request.

use crate::header::{Census, Header, HeaderName, Headers};
use crate::message::{parse_u32, Request, Response, SIP_2_0};
use crate::method::Method;
use crate::name_addr::NameAddrRef;
use crate::scan;
use crate::uri::{HostRef, Uri};
use std::collections::HashSet;
use std::net::IpAddr;
use thiserror::Error;

/// Why a request must be refused, and the headers the refusal must carry.
///
/// It is the `Err` of [`validate_request`]; turn it into a wire response with
/// [`rejection_response`]. An ACK is never answered (RFC 3261 §17.2.3), so a caller
/// that gets a rejection for an ACK drops the ACK instead.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{status} {reason}")]
pub struct Rejection {
    /// The status code to answer with.
    pub status: u16,
    /// Short reason phrase for the status line; it names the failed check so the
    /// sender (and our own packet captures) can see what was wrong.
    pub reason: &'static str,
    /// Headers the status code requires: `Unsupported` for 420, `Accept` for 415.
    pub extra_headers: Vec<Header>,
}

impl Rejection {
    fn new(status: u16, reason: &'static str) -> Self {
        Rejection {
            status,
            reason,
            extra_headers: Vec::new(),
        }
    }

    fn bad(reason: &'static str) -> Self {
        Rejection::new(400, reason)
    }
}

/// What this deployment supports, which decides 416, 420, 415 and 406.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Option tags we implement; any other tag in Require or Proxy-Require is
    /// answered 420 (a B2BUA terminates the request, so Proxy-Require binds it too).
    pub supported_extensions: Vec<&'static str>,
    /// Body types accepted in INVITE and UPDATE, lower-case, without parameters.
    pub accepted_content_types: Vec<&'static str>,
    /// URI schemes accepted in the Request-URI, and in To/From/Contact of REGISTER.
    pub uri_schemes: Vec<&'static str>,
}

impl Default for Policy {
    /// No extensions yet (the stack implements none of 100rel, timer, replaces...,
    /// so claiming one would break callers that rely on it), SDP offers either bare
    /// or in multipart/mixed, and the URI schemes the B2BUA can route.
    fn default() -> Self {
        Policy {
            supported_extensions: Vec::new(),
            accepted_content_types: vec!["application/sdp", "multipart/mixed"],
            uri_schemes: vec!["sip", "sips", "tel"],
        }
    }
}

impl Policy {
    fn scheme_ok(&self, uri: &Uri) -> bool {
        self.scheme_name_ok(uri.scheme())
    }

    fn scheme_name_ok(&self, scheme: &str) -> bool {
        self.uri_schemes
            .iter()
            .any(|k| k.eq_ignore_ascii_case(scheme))
    }
}

/// Headers that may appear once only, with the reason phrase used when they don't.
const SINGLE_VALUED: &[(HeaderName, &str)] = &[
    (HeaderName::To, "Bad Request - multiple To"),
    (HeaderName::From, "Bad Request - multiple From"),
    (HeaderName::CallId, "Bad Request - multiple Call-ID"),
    (HeaderName::CSeq, "Bad Request - multiple CSeq"),
    (
        HeaderName::MaxForwards,
        "Bad Request - multiple Max-Forwards",
    ),
    (
        HeaderName::ContentLength,
        "Bad Request - multiple Content-Length",
    ),
    (
        HeaderName::ContentType,
        "Bad Request - multiple Content-Type",
    ),
];

/// Headers every request must carry for a response to be addressable and matched.
/// Max-Forwards is not here: RFC 2543 peers omit it (RFC 4475 §3.4.1).
const MANDATORY: &[(HeaderName, &str)] = &[
    (HeaderName::Via, "Bad Request - missing Via"),
    (HeaderName::From, "Bad Request - missing From"),
    (HeaderName::To, "Bad Request - missing To"),
    (HeaderName::CallId, "Bad Request - missing Call-ID"),
    (HeaderName::CSeq, "Bad Request - missing CSeq"),
];

/// Checks a parsed request; the first failed check decides the answer.
///
/// `Ok(())` means the request may be processed. It says nothing about routing:
/// Max-Forwards 0 passes here because only forwarding answers 483, and a method we
/// do not implement passes because 405/501 is the dispatcher's decision.
pub fn validate_request(req: &Request, policy: &Policy) -> Result<(), Rejection> {
    if !req.version.eq_ignore_ascii_case(SIP_2_0) {
        return Err(Rejection::new(505, "Version Not Supported"));
    }
    check_structure(req)?;
    check_schemes(req, policy)?;
    check_extensions(req, policy)?;
    check_body(req, policy)?;
    check_accept(req)?;
    Ok(())
}

/// Everything that makes a request malformed rather than unsupported: 400.
fn check_structure(req: &Request) -> Result<(), Rejection> {
    let h = &req.headers;
    let census = h.census();
    for (kind, reason) in MANDATORY {
        if census.count(*kind) == 0 {
            return Err(Rejection::bad(reason));
        }
    }
    check_single_valued(h, &census).map_err(Rejection::bad)?;
    if !h.check_vias(|_| true) {
        return Err(Rejection::bad("Bad Request - malformed Via"));
    }
    let cseq = h
        .cseq()
        .ok_or(Rejection::bad("Bad Request - malformed CSeq"))?;
    if cseq.method != req.method {
        return Err(Rejection::bad("Bad Request - CSeq method mismatch"));
    }
    if h.call_id().is_some_and(|c| c.is_empty()) {
        return Err(Rejection::bad("Bad Request - empty Call-ID"));
    }
    if let Some(mf) = h.get(HeaderName::MaxForwards) {
        if parse_u32(mf).is_none_or(|v| v > 255) {
            return Err(Rejection::bad("Bad Request - malformed Max-Forwards"));
        }
    }
    if let Some(e) = h.get(HeaderName::Expires) {
        // delta-seconds: parse_u32 refuses anything above 2^32-1.
        if parse_u32(e).is_none() {
            return Err(Rejection::bad("Bad Request - malformed Expires"));
        }
    }
    if req.uri.as_sip().is_some_and(|u| u.headers.is_some()) {
        // RFC 3261 §19.1.5: headers in a Request-URI are not allowed (RFC 4475 escruri).
        return Err(Rejection::bad("Bad Request - headers in Request-URI"));
    }
    check_addr(h, HeaderName::To).map_err(Rejection::bad)?;
    check_addr(h, HeaderName::From).map_err(Rejection::bad)?;
    check_contacts(req)?;
    if !req.body.is_empty() && h.count(HeaderName::ContentType) == 0 {
        // RFC 3261 §20.15: a non-empty body MUST be labelled.
        return Err(Rejection::bad("Bad Request - body without Content-Type"));
    }
    Ok(())
}

/// One line and one value for each single-valued header (RFC 4475 multi01, mcl01).
fn check_single_valued(h: &Headers, census: &Census) -> Result<(), &'static str> {
    for (kind, reason) in SINGLE_VALUED {
        match census.count(*kind) {
            0 => continue,
            1 => {}
            _ => return Err(reason),
        }
        let Some(v) = h.get(*kind) else { continue };
        let several = match kind {
            // Values that may hold quoted strings or <URI>s: split with care.
            HeaderName::To | HeaderName::From | HeaderName::ContentType => {
                scan::comma_part_count(v).is_none_or(|n| n > 1)
            }
            // Call-ID words may contain quotes and brackets but never a comma;
            // the numeric ones cannot contain one either.
            _ => v.contains(&b','),
        };
        if several {
            return Err(reason);
        }
    }
    Ok(())
}

/// A To or From value must parse, and an addr-spec (no `<>`) may not carry URI
/// headers or it is ambiguous (RFC 3261 §20.10).
fn check_addr(h: &Headers, kind: HeaderName) -> Result<(), &'static str> {
    let Some(v) = h.get(kind) else { return Ok(()) };
    let malformed = match kind {
        HeaderName::To => "Bad Request - malformed To",
        _ => "Bad Request - malformed From",
    };
    match parse_addr(v) {
        Some(_) => Ok(()),
        None => Err(malformed),
    }
}

/// Checks one name-addr/addr-spec value, refusing an addr-spec whose URI has
/// headers: without angle brackets `?` belongs to the URI only by accident.
fn parse_addr(v: &[u8]) -> Option<NameAddrRef<'_>> {
    let na = NameAddrRef::parse(v)?;
    let bracketed = v.contains(&b'<');
    if !bracketed && na.uri.as_sip().is_some_and(|u| u.headers.is_some()) {
        return None;
    }
    Some(na)
}

/// Contact values must parse; `*` is only for a REGISTER that removes every
/// binding: alone, and with `Expires: 0` (RFC 3261 §10.3 step 6).
fn check_contacts(req: &Request) -> Result<(), Rejection> {
    let h = &req.headers;
    if h.count(HeaderName::Contact) == 0 {
        return Ok(());
    }
    let values = h
        .values(HeaderName::Contact)
        .ok_or(Rejection::bad("Bad Request - malformed Contact"))?;
    let stars = values.iter().filter(|v| v.as_ref() == b"*").count();
    if stars > 0 {
        if req.method != Method::Register {
            return Err(Rejection::bad("Bad Request - Contact * outside REGISTER"));
        }
        if values.len() > 1 {
            return Err(Rejection::bad(
                "Bad Request - Contact * with other contacts",
            ));
        }
        if h.get(HeaderName::Expires).and_then(|e| parse_u32(e)) != Some(0) {
            return Err(Rejection::bad("Bad Request - Contact * needs Expires 0"));
        }
        return Ok(());
    }
    for v in &values {
        if parse_addr(v).is_none() {
            return Err(Rejection::bad("Bad Request - malformed Contact"));
        }
    }
    Ok(())
}

/// 416 for a Request-URI we cannot route, and for a REGISTER binding URIs we
/// could never reach (RFC 4475 unkscm, novelsc, unksm2).
fn check_schemes(req: &Request, policy: &Policy) -> Result<(), Rejection> {
    if !policy.scheme_ok(&req.uri) {
        return Err(Rejection::new(416, "Unsupported URI Scheme"));
    }
    if req.method != Method::Register {
        return Ok(());
    }
    let h = &req.headers;
    for (kind, reason) in [
        (HeaderName::To, "Unsupported URI Scheme in To"),
        (HeaderName::From, "Unsupported URI Scheme in From"),
        (HeaderName::Contact, "Unsupported URI Scheme in Contact"),
    ] {
        // Already checked to parse; `*` is the only Contact without a URI.
        for v in h.values(kind).unwrap_or_default() {
            if let Some(na) = NameAddrRef::parse(&v) {
                if !policy.scheme_name_ok(na.uri.scheme()) {
                    return Err(Rejection::new(416, reason));
                }
            }
        }
    }
    Ok(())
}

/// 420 naming every Require/Proxy-Require tag we lack (RFC 3261 §8.2.2.3). ACK and
/// CANCEL are exempt: neither can be refused for an extension.
fn check_extensions(req: &Request, policy: &Policy) -> Result<(), Rejection> {
    if matches!(req.method, Method::Ack | Method::Cancel) {
        return Ok(());
    }
    let mut unknown: Vec<String> = Vec::new();
    // Lower-cased tags already listed. A set, not a scan of `unknown`: a 16 KB
    // Require of distinct short tags made that scan quadratic (~12 ms a request).
    let mut listed: HashSet<String> = HashSet::new();
    let lines = req
        .headers
        .get_all(HeaderName::Require)
        .chain(req.headers.get_all(HeaderName::ProxyRequire));
    for line in lines {
        for tag in line.split(|c| *c == b',') {
            let (s, e) = scan::trim(tag);
            if e == s {
                continue;
            }
            let tag = String::from_utf8_lossy(&tag[s..e]).into_owned();
            let known = policy
                .supported_extensions
                .iter()
                .any(|k| k.eq_ignore_ascii_case(&tag));
            if !known && listed.insert(tag.to_ascii_lowercase()) {
                unknown.push(tag);
            }
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    let mut r = Rejection::new(420, "Bad Extension");
    r.extra_headers
        .push(Header::new(HeaderName::Unsupported, unknown.join(", ")));
    Err(r)
}

/// 415 for an INVITE/UPDATE body we cannot read: an unlisted type (with `Accept`
/// listing ours) or a content coding (with `Accept-Encoding: identity`).
fn check_body(req: &Request, policy: &Policy) -> Result<(), Rejection> {
    if !matches!(req.method, Method::Invite | Method::Update) || req.body.is_empty() {
        return Ok(());
    }
    let ct = req.headers.content_type().unwrap_or_default();
    if !policy
        .accepted_content_types
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&ct))
    {
        let mut r = Rejection::new(415, "Unsupported Media Type");
        r.extra_headers.push(Header::new(
            HeaderName::Accept,
            policy.accepted_content_types.join(", "),
        ));
        return Err(r);
    }
    for line in req.headers.get_all(HeaderName::ContentEncoding) {
        for coding in line.split(|c| *c == b',') {
            let (s, e) = scan::trim(coding);
            if e > s && !coding[s..e].eq_ignore_ascii_case(b"identity") {
                let mut r = Rejection::new(415, "Unsupported Media Type");
                r.extra_headers
                    .push(Header::other(&b"Accept-Encoding"[..], &b"identity"[..]));
                return Err(r);
            }
        }
    }
    Ok(())
}

/// 406 when an INVITE's Accept rules out SDP: every answer a B2BUA gives to an
/// INVITE carries an SDP offer or answer (RFC 4475 sdp01). An empty Accept is
/// "no body wanted", which a bodiless error answer can still satisfy, so it passes.
fn check_accept(req: &Request) -> Result<(), Rejection> {
    if req.method != Method::Invite || req.headers.count(HeaderName::Accept) == 0 {
        return Ok(());
    }
    let mut any = false;
    for line in req.headers.get_all(HeaderName::Accept) {
        for range in line.split(|c| *c == b',') {
            let base = range.split(|c| *c == b';').next().unwrap_or(range);
            let (s, e) = scan::trim(base);
            if e == s {
                continue;
            }
            any = true;
            let r = &base[s..e];
            if r.eq_ignore_ascii_case(b"*/*")
                || r.eq_ignore_ascii_case(b"application/*")
                || r.eq_ignore_ascii_case(b"application/sdp")
            {
                return Ok(());
            }
        }
    }
    if any {
        return Err(Rejection::new(406, "Not Acceptable"));
    }
    Ok(())
}

/// Checks a response before it is matched to a transaction. `Err` carries a short
/// cause for logs and metrics; the response is then dropped, never answered.
pub fn validate_response(resp: &Response) -> Result<(), &'static str> {
    let h = &resp.headers;
    if !resp.version.eq_ignore_ascii_case(SIP_2_0) {
        return Err("unsupported SIP version");
    }
    let census = h.census();
    for (kind, _) in MANDATORY {
        if census.count(*kind) == 0 {
            return Err(match kind {
                HeaderName::Via => "missing Via",
                HeaderName::From => "missing From",
                HeaderName::To => "missing To",
                HeaderName::CallId => "missing Call-ID",
                _ => "missing CSeq",
            });
        }
    }
    check_single_valued(h, &census).map_err(|_| "repeated single-valued header")?;
    let mut non_unicast = false;
    if !h.check_vias(|v| {
        non_unicast |= v.host.ip().is_some_and(is_non_unicast)
            || v.param("received")
                .flatten()
                .and_then(HostRef::parse)
                .and_then(|r| r.ip())
                .is_some_and(is_non_unicast);
        true
    }) {
        return Err("malformed Via");
    }
    if non_unicast {
        return Err("broadcast, multicast or unspecified Via address");
    }
    h.cseq().ok_or("malformed CSeq")?;
    if h.call_id().is_some_and(|c| c.is_empty()) {
        return Err("empty Call-ID");
    }
    check_addr(h, HeaderName::To).map_err(|_| "malformed To")?;
    check_addr(h, HeaderName::From).map_err(|_| "malformed From")?;
    if let Some(v) = h.get(HeaderName::RetryAfter) {
        let digits = v.iter().take_while(|c| c.is_ascii_digit()).count();
        if parse_u32(&v[..digits]).is_none() {
            return Err("malformed Retry-After");
        }
    }
    if let Some(v) = h.get(HeaderName::Expires) {
        if parse_u32(v).is_none() {
            return Err("malformed Expires");
        }
    }
    Ok(())
}

/// Broadcast, multicast and unspecified addresses: no response may be sent there,
/// and a Via naming one is an amplification attempt (RFC 4475 bcast).
fn is_non_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_broadcast() || a.is_multicast() || a.is_unspecified(),
        IpAddr::V6(a) => a.is_multicast() || a.is_unspecified(),
    }
}

/// The error response for a rejection: RFC 3261 §8.2.6 copies (via
/// [`Request::make_response`]) plus the headers the status requires. The caller
/// adds the To-tag, since only it knows the tag of the transaction.
pub fn rejection_response(req: &Request, r: &Rejection) -> Response {
    let mut resp = req.make_response(r.status, Some(r.reason));
    for h in &r.extra_headers {
        resp.headers.push(h.clone());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::parse::parse_message;
    use bytes::Bytes;

    const BASE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
Max-Forwards: 70\r\n\
To: <sip:bob@example.com>\r\n\
From: <sip:alice@example.org>;tag=1\r\n\
Call-ID: abc\r\n\
CSeq: 1 INVITE\r\n";

    fn req(extra: &str, body: &str) -> Request {
        let s = format!("{BASE}{extra}Content-Length: {}\r\n\r\n{body}", body.len());
        match parse_message(Bytes::from(s)) {
            Ok(Message::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn status(r: &Request) -> Option<u16> {
        validate_request(r, &Policy::default())
            .err()
            .map(|e| e.status)
    }

    #[test]
    fn a_plain_invite_passes() {
        assert_eq!(status(&req("", "")), None);
        assert_eq!(
            status(&req("Content-Type: application/sdp\r\n", "v=0\r\n")),
            None
        );
        assert_eq!(
            status(&req("Max-Forwards: 0\r\n", "")),
            Some(400),
            "second line"
        );
        let mut r = req("", "");
        r.headers.set(HeaderName::MaxForwards, "0");
        assert_eq!(status(&r), None, "483 is the forwarder's answer");
    }

    #[test]
    fn contact_star_rules() {
        let mut r = req("Contact: *\r\n", "");
        assert_eq!(status(&r), Some(400));
        r.method = Method::Register;
        r.headers.set(HeaderName::CSeq, "1 REGISTER");
        assert_eq!(status(&r), Some(400), "needs Expires: 0");
        r.headers.add(HeaderName::Expires, "0");
        assert_eq!(status(&r), None);
        r.headers.add(HeaderName::Contact, "<sip:a@b>");
        assert_eq!(status(&r), Some(400));
    }

    #[test]
    fn extensions_encoding_and_accept() {
        let r = req("Require: 100rel, Timer\r\nProxy-Require: timer\r\n", "");
        let e = validate_request(&r, &Policy::default()).unwrap_err();
        assert_eq!(e.status, 420);
        assert_eq!(&e.extra_headers[0].value[..], b"100rel, Timer");
        let policy = Policy {
            supported_extensions: vec!["100rel", "timer"],
            ..Policy::default()
        };
        assert!(validate_request(&r, &policy).is_ok());
        let r = req(
            "Content-Type: application/sdp\r\nContent-Encoding: gzip\r\n",
            "x",
        );
        assert_eq!(status(&r), Some(415));
        assert_eq!(
            status(&req("Accept: application/*;q=0.5, text/plain\r\n", "")),
            None
        );
        assert_eq!(status(&req("Accept: text/plain\r\n", "")), Some(406));
        assert_eq!(status(&req("Accept: \r\n", "")), None);
        assert_eq!(status(&req("", "body")), Some(400));
    }

    #[test]
    fn rejection_response_carries_extra_headers() {
        let r = req("Require: foo\r\n", "");
        let rej = validate_request(&r, &Policy::default()).unwrap_err();
        let resp = rejection_response(&r, &rej);
        assert_eq!(resp.status, 420);
        assert_eq!(&resp.reason[..], b"Bad Extension");
        assert_eq!(
            &resp.headers.get(HeaderName::Unsupported).unwrap()[..],
            b"foo"
        );
        assert_eq!(resp.headers.call_id().unwrap().as_ref(), b"abc");
    }

    #[test]
    fn responses_with_non_unicast_via_are_dropped() {
        let ok = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
To: <sip:b@x>;tag=2\r\nFrom: <sip:a@x>;tag=1\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n";
        let resp = |s: String| match parse_message(Bytes::from(s)) {
            Ok(Message::Response(r)) => r,
            other => panic!("not a response: {other:?}"),
        };
        assert_eq!(validate_response(&resp(ok.to_string())), Ok(()));
        for bad in [
            "224.0.0.1",
            "0.0.0.0",
            "[ff02::1]",
            "192.0.2.1;received=255.255.255.255",
        ] {
            let s = ok.replace("192.0.2.1;branch", &format!("{bad};branch"));
            assert!(validate_response(&resp(s)).is_err(), "{bad}");
        }
    }
}
