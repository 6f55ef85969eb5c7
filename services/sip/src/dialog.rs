//! Dialog state (RFC 3261 §12): identifiers, sequence numbers, remote target and
//! route set, and construction of in-dialog requests.

use crate::header::HeaderName;
use crate::message::{Request, Response};
use crate::method::Method;
use crate::name_addr::NameAddr;
use crate::text::header_bytes;
use crate::uri::Uri;
use crate::via::Via;
use serde::{Deserialize, Serialize};

/// One side's view of a dialog. Serialisable so a settled call can move to another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    /// Last CSeq number we used; the next request uses `local_seq + 1`.
    pub local_seq: u32,
    /// Highest CSeq number seen from the peer.
    pub remote_seq: Option<u32>,
    /// Our address-of-record as written in From of our requests (without tag).
    pub local_uri: NameAddr,
    /// The peer's, as written in To of our requests (without tag).
    pub remote_uri: NameAddr,
    pub remote_target: Uri,
    /// Route set in the order our requests must carry it.
    pub route_set: Vec<NameAddr>,
}

/// Why a dialog could not be created from a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    #[error("missing or malformed {0}")]
    Missing(&'static str),
}

/// `addr` as a header value with `;tag=<tag>` set (none when `tag` is empty), as
/// `set_param` and `Display` would write it. The dialog keeps its URIs without tags, so
/// the tag is appended to the formatted value instead of to a clone of the value: every
/// ACK and BYE builds two of these.
fn with_tag(addr: &NameAddr, tag: &str) -> bytes::Bytes {
    if tag.is_empty() {
        return header_bytes(addr);
    }
    if addr.param("tag").is_some() {
        let mut a = addr.clone();
        a.set_param("tag", Some(tag.to_string()));
        return header_bytes(&a);
    }
    header_bytes(&format_args!("{addr};tag={tag}"))
}

fn strip_tag(mut n: NameAddr) -> NameAddr {
    n.params.remove("tag");
    n
}

impl Dialog {
    /// The UAS side, created when we answer `req` with a 1xx/2xx carrying `local_tag`.
    pub fn uas(req: &Request, local_tag: &str) -> Result<Dialog, DialogError> {
        let h = &req.headers;
        let from = h.from_addr().ok_or(DialogError::Missing("From"))?;
        let to = h.to_addr().ok_or(DialogError::Missing("To"))?;
        let remote_tag = from.tag().unwrap_or_default().to_string();
        let call_id = String::from_utf8_lossy(h.call_id().ok_or(DialogError::Missing("Call-ID"))?)
            .into_owned();
        let cseq = h.cseq().ok_or(DialogError::Missing("CSeq"))?;
        // RFC 2543 clients may omit Contact (RFC 4475 §3.4.1): their From is then the
        // best remote target there is.
        let remote_target = match h.contact() {
            Some(c) => c.uri,
            None if h.get(HeaderName::Contact).is_none() => from.uri.clone(),
            None => return Err(DialogError::Missing("Contact")),
        };
        let route_set = h
            .name_addrs(HeaderName::RecordRoute)
            .ok_or(DialogError::Missing("Record-Route"))?;
        Ok(Dialog {
            call_id,
            local_tag: local_tag.to_string(),
            remote_tag,
            local_seq: 0,
            remote_seq: Some(cseq.seq),
            local_uri: strip_tag(to),
            remote_uri: strip_tag(from),
            remote_target,
            route_set,
        })
    }

    /// The UAC side, created from our request and the peer's 1xx/2xx with a To-tag.
    pub fn uac(req: &Request, resp: &Response) -> Result<Dialog, DialogError> {
        let h = &req.headers;
        let from = h.from_addr().ok_or(DialogError::Missing("From"))?;
        let to = resp.headers.to_addr().ok_or(DialogError::Missing("To"))?;
        let remote_tag = to.tag().ok_or(DialogError::Missing("To tag"))?.to_string();
        let local_tag = from.tag().unwrap_or_default().to_string();
        let call_id = String::from_utf8_lossy(h.call_id().ok_or(DialogError::Missing("Call-ID"))?)
            .into_owned();
        let cseq = h.cseq().ok_or(DialogError::Missing("CSeq"))?;
        let contact = resp
            .headers
            .contact()
            .ok_or(DialogError::Missing("Contact"))?;
        let mut route_set = resp
            .headers
            .name_addrs(HeaderName::RecordRoute)
            .ok_or(DialogError::Missing("Record-Route"))?;
        route_set.reverse();
        let to_req = h.to_addr().ok_or(DialogError::Missing("To"))?;
        Ok(Dialog {
            call_id,
            local_tag,
            remote_tag,
            local_seq: cseq.seq,
            remote_seq: None,
            local_uri: strip_tag(from),
            remote_uri: strip_tag(to_req),
            remote_target: contact.uri,
            route_set,
        })
    }

    /// The confirmed dialog a 2xx makes of this early one (a UAC dialog whose remote
    /// tag is the 2xx's To-tag): remote target and route set are taken from the 2xx
    /// (RFC 3261 §12.1.2, §13.2.2.4), the rest kept. What [`Dialog::uac`] would build
    /// from the request and the 2xx, without parsing the request's From and To again.
    /// `None` when the 2xx belongs to another dialog (another To-tag), so the caller
    /// builds that one from scratch.
    pub fn confirmed(&self, resp: &Response) -> Option<Result<Dialog, DialogError>> {
        if resp.headers.to_tag()? != self.remote_tag.as_bytes() {
            return None;
        }
        let Some(contact) = resp.headers.contact() else {
            return Some(Err(DialogError::Missing("Contact")));
        };
        let Some(mut route_set) = resp.headers.name_addrs(HeaderName::RecordRoute) else {
            return Some(Err(DialogError::Missing("Record-Route")));
        };
        route_set.reverse();
        Some(Ok(Dialog {
            remote_target: contact.uri,
            route_set,
            ..self.clone()
        }))
    }

    /// Checks a request from the peer against the dialog's CSeq ordering (§12.2.2).
    /// Returns false for an out-of-order request, which must get a 500.
    pub fn accept_remote_cseq(&mut self, seq: u32, method: &Method) -> bool {
        if matches!(method, Method::Ack | Method::Cancel) {
            return true;
        }
        match self.remote_seq {
            Some(r) if seq <= r => false,
            _ => {
                self.remote_seq = Some(seq);
                true
            }
        }
    }

    /// A target refresh (re-INVITE/UPDATE with Contact) replaces the remote target.
    pub fn refresh_target(&mut self, contact: Option<NameAddr>) {
        if let Some(c) = contact {
            self.remote_target = c.uri;
        }
    }

    /// Request-URI and Route values per §12.2.1.1 (loose and strict routing).
    fn uri_and_routes(&self) -> (Uri, Vec<String>) {
        match self.route_set.first() {
            None => (self.remote_target.clone(), Vec::new()),
            Some(first) if first.uri.as_sip().is_some_and(|u| u.is_lr()) => (
                self.remote_target.clone(),
                self.route_set.iter().map(|r| r.to_string()).collect(),
            ),
            Some(first) => {
                let mut uri = first.uri.clone();
                if let Uri::Sip(u) = &mut uri {
                    u.params.clear();
                    u.headers = None;
                }
                let mut routes: Vec<String> =
                    self.route_set[1..].iter().map(|r| r.to_string()).collect();
                routes.push(format!("<{}>", self.remote_target));
                (uri, routes)
            }
        }
    }

    /// Where an in-dialog request is sent first: the top Route, or the Request-URI.
    pub fn next_hop(&self) -> Uri {
        let (uri, _) = self.uri_and_routes();
        match self.route_set.first() {
            Some(r) if r.uri.as_sip().is_some_and(|u| u.is_lr()) => r.uri.clone(),
            _ => uri,
        }
    }

    /// Builds an in-dialog request. `seq` is the CSeq number (use `next_seq` for new
    /// requests; ACK and CANCEL reuse the INVITE's).
    pub fn request(
        &self,
        method: Method,
        seq: u32,
        via: &Via,
        contact: Option<&NameAddr>,
    ) -> Request {
        let (uri, routes) = self.uri_and_routes();
        let mut req = Request::new(method.clone(), uri);
        let h = &mut req.headers;
        h.add(HeaderName::Via, header_bytes(&via));
        h.add(HeaderName::MaxForwards, "70");
        h.add(HeaderName::From, with_tag(&self.local_uri, &self.local_tag));
        h.add(HeaderName::To, with_tag(&self.remote_uri, &self.remote_tag));
        h.add(HeaderName::CallId, self.call_id.clone());
        h.add(
            HeaderName::CSeq,
            [itoa::Buffer::new().format(seq), " ", method.as_str()].concat(),
        );
        for r in routes {
            h.add(HeaderName::Route, r);
        }
        if let Some(c) = contact {
            h.add(HeaderName::Contact, header_bytes(&c));
        }
        req
    }

    /// Allocates the next local CSeq number.
    pub fn next_seq(&mut self) -> u32 {
        self.local_seq = self.local_seq.wrapping_add(1) & 0x7fff_ffff;
        self.local_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::parse::parse_message;
    use bytes::Bytes;

    fn req(s: &str) -> Request {
        match parse_message(Bytes::from(s.to_string())).unwrap() {
            Message::Request(r) => r,
            _ => panic!(),
        }
    }
    fn resp(s: &str) -> Response {
        match parse_message(Bytes::from(s.to_string())).unwrap() {
            Message::Response(r) => r,
            _ => panic!(),
        }
    }

    const INVITE: &str = "INVITE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP a.example;branch=z9hG4bK1\r\nFrom: <sip:alice@a.example>;tag=at\r\nTo: <sip:bob@b.example>\r\nCall-ID: c1\r\nCSeq: 10 INVITE\r\nContact: <sip:alice@192.0.2.1:5070>\r\nRecord-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\nl: 0\r\n\r\n";

    /// The early dialog's 2xx confirms it as `Dialog::uac` would build it from the
    /// request and the 2xx (target and route set from the 2xx), except that the CSeq
    /// numbers the early dialog used carry over; a 2xx with another To-tag is another
    /// dialog.
    #[test]
    fn a_2xx_confirms_the_early_dialog_as_uac_builds_it() {
        let invite = req(INVITE);
        let ringing = resp("SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP a.example;branch=z9hG4bK1\r\nFrom: <sip:alice@a.example>;tag=at\r\nTo: \"Bob\" <sip:bob@b.example>;tag=bt\r\nCall-ID: c1\r\nCSeq: 10 INVITE\r\nContact: <sip:bob@192.0.2.9:5060>\r\nRecord-Route: <sip:p2.example;lr>, <sip:p1.example;lr>\r\nl: 0\r\n\r\n");
        let ok = resp("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a.example;branch=z9hG4bK1\r\nFrom: <sip:alice@a.example>;tag=at\r\nTo: \"Bob\" <sip:bob@b.example>;tag=bt\r\nCall-ID: c1\r\nCSeq: 10 INVITE\r\nContact: <sip:bob@192.0.2.10:5062;transport=tcp>\r\nRecord-Route: <sip:p3.example;lr>\r\nl: 0\r\n\r\n");
        let mut early = Dialog::uac(&invite, &ringing).unwrap();
        let fresh = early.confirmed(&ok).unwrap().unwrap();
        assert_eq!(fresh, Dialog::uac(&invite, &ok).unwrap());
        assert_eq!(
            fresh.remote_target.to_string(),
            "sip:bob@192.0.2.10:5062;transport=tcp"
        );
        // An UPDATE in the early dialog took CSeq 11: the confirmed dialog goes on from it.
        let update_seq = early.next_seq();
        let confirmed = early.confirmed(&ok).unwrap().unwrap();
        assert_eq!(confirmed.local_seq, update_seq);
        let other = resp(&String::from_utf8_lossy(&ok.encode()).replace("tag=bt", "tag=ct"));
        assert!(early.confirmed(&other).is_none());
        let no_contact = Response {
            headers: {
                let mut h = ok.headers.clone();
                h.remove(HeaderName::Contact);
                h
            },
            ..ok.clone()
        };
        assert_eq!(
            early.confirmed(&no_contact),
            Some(Err(DialogError::Missing("Contact")))
        );
    }

    #[test]
    fn uas_dialog_routes_in_record_route_order() {
        let r = req(INVITE);
        let mut d = Dialog::uas(&r, "bt").unwrap();
        assert_eq!(d.remote_tag, "at");
        assert_eq!(d.remote_seq, Some(10));
        let seq = d.next_seq();
        let via = Via::new(
            "UDP",
            crate::uri::Host::Domain("me".into()),
            None,
            "z9hG4bKx".into(),
        );
        let bye = d.request(Method::Bye, seq, &via, None);
        assert_eq!(bye.uri.to_string(), "sip:alice@192.0.2.1:5070");
        let routes: Vec<_> = bye.headers.get_all(HeaderName::Route).collect();
        assert_eq!(routes[0], &Bytes::from("<sip:p1.example;lr>"));
        assert_eq!(bye.headers.to_addr().unwrap().tag(), Some("at"));
        assert_eq!(bye.headers.from_addr().unwrap().tag(), Some("bt"));
        assert_eq!(d.next_hop().to_string(), "sip:p1.example;lr");
        assert!(!d.accept_remote_cseq(10, &Method::Bye));
        assert!(d.accept_remote_cseq(11, &Method::Bye));
    }

    #[test]
    fn tags_are_written_as_set_param_writes_them() {
        for v in [
            "<sip:a@b.example>",
            "\"Al\" <sip:a@b.example;transport=tcp>;x=1",
            "<sip:a@b.example>;tag=old;y",
            "sip:a@b.example",
        ] {
            let na = NameAddr::parse(v.as_bytes()).unwrap();
            for tag in ["", "t-1"] {
                let mut set = na.clone();
                if !tag.is_empty() {
                    set.set_param("tag", Some(tag.to_string()));
                }
                assert_eq!(
                    with_tag(&na, tag),
                    Bytes::from(set.to_string()),
                    "{v} {tag}"
                );
            }
        }
    }

    #[test]
    fn uac_dialog_reverses_route_set_and_strict_routes() {
        let r = req(INVITE);
        let ok = resp("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a.example;branch=z9hG4bK1\r\nFrom: <sip:alice@a.example>;tag=at\r\nTo: <sip:bob@b.example>;tag=bt\r\nCall-ID: c1\r\nCSeq: 10 INVITE\r\nContact: <sip:bob@192.0.2.2>\r\nRecord-Route: <sip:p2.example>, <sip:p1.example>\r\nl: 0\r\n\r\n");
        let d = Dialog::uac(&r, &ok).unwrap();
        assert_eq!(d.local_seq, 10);
        let via = Via::new(
            "UDP",
            crate::uri::Host::Domain("me".into()),
            None,
            "z9hG4bKy".into(),
        );
        let bye = d.request(Method::Bye, 11, &via, None);
        // strict routing: the first route becomes the Request-URI
        assert_eq!(bye.uri.to_string(), "sip:p1.example");
        let routes: Vec<_> = bye.headers.get_all(HeaderName::Route).cloned().collect();
        assert_eq!(
            routes,
            vec![
                Bytes::from("<sip:p2.example>"),
                Bytes::from("<sip:bob@192.0.2.2>")
            ]
        );
    }
}
