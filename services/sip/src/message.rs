//! Requests, responses and their wire encoding.

use crate::header::{Header, HeaderName, Headers};
use crate::method::Method;
use crate::name_addr::NameAddr;
use crate::text::header_bytes;
use crate::uri::Uri;
use crate::via::{Via, ViaRef};
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// The CSeq header: sequence number and method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    /// Parses `1*DIGIT LWS Method`. Values above 2^31-1 are invalid (RFC 3261 §8.1.1.5).
    pub fn parse(v: &[u8]) -> Option<CSeq> {
        let (s, e) = crate::scan::trim(v);
        let v = &v[s..e];
        let ds = v.iter().take_while(|c| c.is_ascii_digit()).count();
        let seq = crate::scan::decimal(&v[..ds]).filter(|&n| n <= 0x7fff_ffff)?;
        let ms = crate::scan::skip_ws(v, ds);
        if ms == ds {
            return None;
        }
        let method = Method::from_token(&v[ms..])?;
        Some(CSeq {
            seq: seq as u32,
            method,
        })
    }
}

impl std::fmt::Display for CSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

/// A SIP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: Uri,
    /// The SIP-Version token as received (`SIP/2.0` for anything we accept).
    pub version: Bytes,
    pub headers: Headers,
    pub body: Bytes,
}

/// A SIP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: Bytes,
    pub version: Bytes,
    pub headers: Headers,
    pub body: Bytes,
}

/// Either kind of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// The protocol version this stack speaks.
pub const SIP_2_0: &[u8] = b"SIP/2.0";

impl Headers {
    /// The Call-ID value.
    pub fn call_id(&self) -> Option<&Bytes> {
        self.get(HeaderName::CallId)
    }

    /// The CSeq, parsed.
    pub fn cseq(&self) -> Option<CSeq> {
        CSeq::parse(self.get(HeaderName::CSeq)?)
    }

    /// The From header, parsed.
    pub fn from_addr(&self) -> Option<NameAddr> {
        NameAddr::parse(self.get(HeaderName::From)?)
    }

    /// The To header, parsed.
    pub fn to_addr(&self) -> Option<NameAddr> {
        NameAddr::parse(self.get(HeaderName::To)?)
    }

    /// The topmost Via value, parsed.
    pub fn top_via(&self) -> Option<Via> {
        let first = self.get(HeaderName::Via)?;
        Via::parse(crate::scan::first_comma_part(first)?)
    }

    /// The topmost Via value, checked but not built.
    pub fn top_via_ref(&self) -> Option<ViaRef<'_>> {
        let first = self.get(HeaderName::Via)?;
        ViaRef::parse(crate::scan::first_comma_part(first)?)
    }

    /// True when every Via value parses (as [`Headers::vias`] would) and `check`
    /// accepts each; nothing is built.
    pub fn check_vias(&self, mut check: impl FnMut(&ViaRef<'_>) -> bool) -> bool {
        self.each_value(HeaderName::Via, |v| {
            ViaRef::parse(v).is_some_and(|v| check(&v))
        })
    }

    /// Every Via value in order, parsed; `None` if any is malformed.
    pub fn vias(&self) -> Option<Vec<Via>> {
        self.parse_each(HeaderName::Via, Via::parse)
    }

    /// Every value of a name-addr list header (Contact, Route, Record-Route).
    pub fn name_addrs(&self, kind: HeaderName) -> Option<Vec<NameAddr>> {
        self.parse_each(kind, NameAddr::parse)
    }

    /// Each comma-separated value of every line of `kind`, parsed with `parse`, in
    /// order; `None` when a line is unbalanced or a value does not parse.
    fn parse_each<T>(&self, kind: HeaderName, parse: fn(&[u8]) -> Option<T>) -> Option<Vec<T>> {
        let mut out = Vec::new();
        self.each_value(kind, |v| parse(v).map(|p| out.push(p)).is_some())
            .then_some(out)
    }

    /// Hands `each` every comma-separated value of every line of `kind`, in order, until
    /// it returns false. False when it did, or when a line is unbalanced.
    fn each_value(&self, kind: HeaderName, mut each: impl FnMut(&[u8]) -> bool) -> bool {
        for line in self.get_all(kind) {
            let mut ok = true;
            let split = crate::scan::for_each_comma_part(line, |s, e| {
                ok = ok && each(&line[s..e]);
            });
            if split.is_none() || !ok {
                return false;
            }
        }
        true
    }

    /// The first Contact, parsed (ignores `*`).
    pub fn contact(&self) -> Option<NameAddr> {
        self.name_addrs(HeaderName::Contact)?.into_iter().next()
    }

    /// Max-Forwards as a number; `None` when absent or malformed.
    pub fn max_forwards(&self) -> Option<u32> {
        parse_u32(self.get(HeaderName::MaxForwards)?)
    }

    /// Option tags of a Require/Supported-style header, lower-cased.
    pub fn option_tags(&self, kind: HeaderName) -> Vec<String> {
        let mut out = Vec::new();
        for line in self.get_all(kind) {
            for t in line.split(|c| *c == b',') {
                let (s, e) = crate::scan::trim(t);
                if e > s {
                    out.push(String::from_utf8_lossy(&t[s..e]).to_ascii_lowercase());
                }
            }
        }
        out
    }

    /// Content-Type without parameters, lower-cased.
    pub fn content_type(&self) -> Option<String> {
        let v = self.get(HeaderName::ContentType)?;
        let base = v.split(|c| *c == b';').next().unwrap_or(v);
        let (s, e) = crate::scan::trim(base);
        Some(String::from_utf8_lossy(&base[s..e]).to_ascii_lowercase())
    }
}

/// Parses an unsigned decimal header value (leading zeros allowed).
pub fn parse_u32(v: &[u8]) -> Option<u32> {
    let (s, e) = crate::scan::trim(v);
    crate::scan::decimal(&v[s..e]).and_then(|n| u32::try_from(n).ok())
}

fn encode_headers(out: &mut BytesMut, headers: &Headers, body: &Bytes) {
    for h in headers.iter() {
        if h.kind == HeaderName::ContentLength {
            continue;
        }
        out.put_slice(&h.name);
        out.put_slice(b": ");
        out.put_slice(&h.value);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"Content-Length: ");
    put_decimal(out, body.len());
    out.put_slice(b"\r\n\r\n");
    out.put_slice(body);
}

/// Writes `n` in decimal (status codes and Content-Length of every message sent).
fn put_decimal(out: &mut BytesMut, n: usize) {
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn encoded_len(headers: &Headers, body: &Bytes) -> usize {
    headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 4)
        .sum::<usize>()
        + body.len()
        + 32
}

impl Request {
    /// Serialises the request. Content-Length is always written from the body so
    /// framing is right whatever the headers said.
    pub fn encode(&self) -> Bytes {
        // The URI is written in place; 128 bytes of room covers any ordinary one.
        let mut out = BytesMut::with_capacity(encoded_len(&self.headers, &self.body) + 160);
        out.put_slice(self.method.as_str().as_bytes());
        out.put_u8(b' ');
        let _ = write!(out, "{}", self.uri);
        out.put_u8(b' ');
        out.put_slice(&self.version);
        out.put_slice(b"\r\n");
        encode_headers(&mut out, &self.headers, &self.body);
        out.freeze()
    }

    /// A new request with no headers.
    pub fn new(method: Method, uri: Uri) -> Request {
        Request {
            method,
            uri,
            version: Bytes::from_static(SIP_2_0),
            headers: Headers::with_capacity(12),
            body: Bytes::new(),
        }
    }

    /// Builds a response as RFC 3261 §8.2.6.2 says: Via, From, To, Call-ID and CSeq
    /// copied; a To-tag is added by the caller when it creates a dialog or answers
    /// a request that had none.
    pub fn make_response(&self, status: u16, reason: Option<&str>) -> Response {
        let mut headers = Headers::with_capacity(8);
        for h in self.headers.iter() {
            if matches!(
                h.kind,
                HeaderName::Via
                    | HeaderName::From
                    | HeaderName::To
                    | HeaderName::CallId
                    | HeaderName::CSeq
            ) {
                headers.push(h.clone());
            }
        }
        Response {
            status,
            reason: Bytes::copy_from_slice(reason.unwrap_or(reason_phrase(status)).as_bytes()),
            version: Bytes::from_static(SIP_2_0),
            headers,
            body: Bytes::new(),
        }
    }

    /// A short human summary for logs: method and Call-ID, never the whole message.
    pub fn summary(&self) -> String {
        format!(
            "{} {} call-id={}",
            self.method,
            self.uri,
            self.headers
                .call_id()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .unwrap_or_default()
        )
    }
}

impl Response {
    /// Serialises the response (Content-Length written from the body).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(encoded_len(&self.headers, &self.body) + 64);
        out.put_slice(&self.version);
        out.put_u8(b' ');
        put_decimal(&mut out, self.status.into());
        out.put_u8(b' ');
        out.put_slice(&self.reason);
        out.put_slice(b"\r\n");
        encode_headers(&mut out, &self.headers, &self.body);
        out.freeze()
    }

    /// Adds a To-tag if the To header has none (RFC 3261 §8.2.6.2).
    pub fn set_to_tag(&mut self, tag: &str) {
        let Some(raw) = self.headers.get(HeaderName::To) else {
            return;
        };
        if crate::tags::name_addr_tag(raw).is_some() {
            // Tagged already (every response after the first of a dialog): the tag
            // reader agrees with the parser on what it accepts, and a To the parser
            // refuses is left alone below as well.
            return;
        }
        if crate::tags::name_addr_param(raw, b"tag").is_none()
            && crate::name_addr::NameAddrRef::parse(raw).is_some()
        {
            // No tag parameter at all: append one to the value as received (header
            // parameters come last in both forms), sparing a parse and re-format.
            let (s, e) = crate::scan::trim(raw);
            let value = format_args!("{};tag={tag}", String::from_utf8_lossy(&raw[s..e]));
            let value = header_bytes(&value);
            self.headers.set(HeaderName::To, value);
            return;
        }
        if let Some(mut to) = self.headers.to_addr() {
            if to.tag().is_none() {
                to.set_param("tag", Some(tag.to_string()));
                self.headers.set(HeaderName::To, header_bytes(&to));
            }
        }
    }

    /// 1xx.
    pub fn is_provisional(&self) -> bool {
        self.status < 200
    }

    /// 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl Message {
    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }

    pub fn headers_mut(&mut self) -> &mut Headers {
        match self {
            Message::Request(r) => &mut r.headers,
            Message::Response(r) => &mut r.headers,
        }
    }

    pub fn encode(&self) -> Bytes {
        match self {
            Message::Request(r) => r.encode(),
            Message::Response(r) => r.encode(),
        }
    }
}

/// Adds a header line to a request or response under a header kind's canonical name.
pub fn header(kind: HeaderName, value: impl Into<Bytes>) -> Header {
    Header::new(kind, value)
}

/// The default reason phrase of a status code (RFC 3261 §21 and common extensions).
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => match code / 100 {
            1 => "Session Progress",
            2 => "OK",
            3 => "Redirected",
            4 => "Request Failure",
            5 => "Server Failure",
            _ => "Global Failure",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response_with_to(to: &str) -> Response {
        let mut h = Headers::with_capacity(1);
        h.add(HeaderName::To, to.to_string());
        Response {
            status: 200,
            reason: Bytes::from_static(b"OK"),
            version: Bytes::from_static(SIP_2_0),
            headers: h,
            body: Bytes::new(),
        }
    }

    #[test]
    fn set_to_tag_adds_a_tag_only_where_none_is() {
        let cases = [
            (
                "\"Bob\" <sip:bob@example.com> ",
                "\"Bob\" <sip:bob@example.com>;tag=t1",
            ),
            ("sip:bob@example.com;x=1", "sip:bob@example.com;x=1;tag=t1"),
            (
                "<sip:bob@example.com;tag=uri>",
                "<sip:bob@example.com;tag=uri>;tag=t1",
            ),
            (
                "<sip:bob@example.com>;tag=old",
                "<sip:bob@example.com>;tag=old",
            ),
            // A valueless `tag` is given the value rather than repeated.
            ("<sip:bob@example.com>;tag", "<sip:bob@example.com>;tag=t1"),
            ("not a name-addr <", "not a name-addr <"),
            ("not a name-addr <;tag=x", "not a name-addr <;tag=x"),
            ("\"A;tag=q\" <sip:a@b>", "\"A;tag=q\" <sip:a@b>;tag=t1"),
        ];
        for (to, want) in cases {
            let mut r = response_with_to(to);
            r.set_to_tag("t1");
            assert_eq!(
                r.headers.get(HeaderName::To).map(|v| &v[..]),
                Some(want.as_bytes()),
                "{to}"
            );
        }
    }
}
