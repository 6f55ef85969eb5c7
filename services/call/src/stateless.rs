//! Answers the node gives without a call: validation failures, OPTIONS pings,
//! REGISTER challenges, requests for calls that do not exist.

use bytes::Bytes;
use trunkline_sip::validate::{rejection_response, Rejection};
use trunkline_sip::{HeaderName, Method, Request, Response};

/// Methods the node implements, advertised in Allow.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, MESSAGE, NOTIFY";

/// The local tag of a stateless response. RFC 3261 §8.2.6.2 lets it be anything
/// stable for retransmissions of one request; deriving it from the branch keeps it so.
fn local_tag(req: &Request, node: &str) -> String {
    let branch = req
        .headers
        .top_via()
        .and_then(|v| v.branch().map(str::to_string))
        .unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in branch.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    format!("{node}-{:012x}", h >> 16)
}

/// A response with our tag (when the request had none).
pub fn respond(req: &Request, status: u16, node: &str) -> Response {
    let mut r = req.make_response(status, None);
    finish(req, &mut r, node);
    r
}

fn finish(req: &Request, r: &mut Response, node: &str) {
    if r.status > 100 {
        r.set_to_tag(&local_tag(req, node));
    }
    if matches!(r.status, 405 | 501) || (req.method == Method::Options && r.status == 200) {
        r.headers.add(HeaderName::Allow, ALLOW);
    }
}

/// The answer to a request validation refused.
pub fn reject(req: &Request, rejection: &Rejection, node: &str) -> Response {
    let mut r = rejection_response(req, rejection);
    finish(req, &mut r, node);
    r
}

/// OPTIONS outside a dialog: the node is alive and says what it supports.
pub fn options(req: &Request, node: &str, draining: bool) -> Response {
    if draining {
        return unavailable(req, node);
    }
    let mut r = respond(req, 200, node);
    r.headers.add(HeaderName::Accept, "application/sdp");
    r
}

/// 403: the source is not one the node serves (see `trust`).
pub fn forbidden(req: &Request, node: &str) -> Response {
    respond(req, 403, node)
}

/// 503 with Retry-After: overload or drain, try another node.
pub fn unavailable(req: &Request, node: &str) -> Response {
    let mut r = respond(req, 503, node);
    r.headers.add(HeaderName::RetryAfter, "5");
    r
}

/// REGISTER: the node has no subscriber database yet, so every REGISTER is
/// challenged (RFC 3261 §22.4) and any credentials are refused. An unknown
/// Authorization scheme is ignored, which is the RFC 4475 §3.3.7 behaviour.
pub fn register(req: &Request, node: &str, nonce: u64) -> Response {
    let has_digest = req
        .headers
        .get_all(HeaderName::Authorization)
        .any(|v| v.len() >= 6 && v[..6].eq_ignore_ascii_case(b"digest"));
    if has_digest {
        return respond(req, 403, node);
    }
    let mut r = respond(req, 401, node);
    r.headers.add(
        HeaderName::WwwAuthenticate,
        Bytes::from(format!(
            "Digest realm=\"trunkline\", nonce=\"{nonce:016x}\", algorithm=MD5, qop=\"auth\""
        )),
    );
    r
}

/// A request outside any dialog the node knows and of a method it does not serve
/// outside one.
pub fn no_dialog(req: &Request, node: &str) -> Response {
    let has_to_tag = req.headers.to_addr().is_some_and(|t| t.tag().is_some());
    let status = match &req.method {
        Method::Extension(_) => 501,
        _ if has_to_tag => 481,
        Method::Bye
        | Method::Cancel
        | Method::Prack
        | Method::Update
        | Method::Info
        | Method::Notify => 481,
        _ => 405,
    };
    respond(req, status, node)
}
